"""Putting registered versions behind a public name, whole or as a weighted canary.

``deploy_version`` replaces whatever serves the public name today with the given
version (and optionally a canary version taking a share of the traffic) in one
transaction: gateways pick up the new route table within a second, and every usage
record names the version that served it, so the canary's numbers stay separable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelmint.clock import utcnow
from modelmint.errors import Conflict, InvalidRequest, NotFound
from modelmint.registry.catalog import ServingCosts, check_name, deploy, set_costs
from modelmint.registry.deployment_settings import check_settings
from modelmint.registry.versions import VersionRef, parse_ref, resolve
from modelmint.storage.tables import Deployment, ModelVersion, RegisteredModel

__all__ = [
    "Canary",
    "Rollout",
    "backend_for",
    "deploy_version",
    "parse_canary",
    "set_serving_costs",
]

_CANARY = re.compile(r"(?P<version>[^:]+):(?P<percent>\d{1,3})%?")

# (task, artifact format) -> the backend that serves it; None stands for any format.
_BACKENDS: dict[tuple[str, str | None], str] = {
    ("chat", "gguf"): "llama_cpp",
    ("embedding", "sentence-transformers"): "sentence_transformer",
    # Recipes' exports carry a manifest naming their predictor, whatever the format.
    ("classification", None): "predictor",
    ("recommendation", None): "predictor",
}


@dataclass(frozen=True, slots=True)
class Canary:
    ref: VersionRef
    percent: int


@dataclass(frozen=True, slots=True)
class Rollout:
    public_name: str
    versions: tuple[tuple[str, int, int], ...]  # (model name, version, weight)
    retired: int


def parse_canary(text: str, model_name: str) -> Canary:
    """``4:10%`` (version 4 of the same model) or ``other@2:25%``."""
    match = _CANARY.fullmatch(text.strip())
    if match is None:
        raise InvalidRequest(
            f"invalid canary {text!r}: use VERSION:PERCENT%, e.g. 4:10%", param="canary"
        )
    percent = int(match["percent"])
    if not 1 <= percent <= 99:
        raise InvalidRequest("a canary takes between 1% and 99% of traffic", param="canary")
    version = match["version"]
    ref = parse_ref(version if "@" in version else f"{model_name}@{version}")
    return Canary(ref, percent)


def backend_for(model: RegisteredModel, version: ModelVersion) -> str:
    if version.format == "remote":
        raise InvalidRequest(
            f"{model.name}@{version.version} is a remote upstream: "
            "use `modelmint models add-remote`"
        )
    backend = _BACKENDS.get((model.task, version.format)) or _BACKENDS.get((model.task, None))
    if backend is None:
        raise InvalidRequest(
            f"{model.name}@{version.version} is a {model.task} model in format "
            f"{version.format!r}, which no local backend serves"
        )
    return backend


def deploy_version(
    session: Session,
    ref: VersionRef | str,
    *,
    public_name: str,
    canary: Canary | None = None,
    costs: ServingCosts | None = None,
    config: dict[str, object] | None = None,
) -> Rollout:
    """Serve ``ref`` (plus an optional canary) as ``public_name``, replacing what served it."""
    check_name(public_name, "public_name")
    model, version = resolve(session, ref)
    chosen = [(model, version, 100 - (canary.percent if canary else 0))]
    if canary is not None:
        canary_model, canary_version = resolve(session, canary.ref)
        if canary_model.task != model.task:
            raise InvalidRequest(
                f"the canary is a {canary_model.task} model, not {model.task}", param="canary"
            )
        if canary_version.id == version.id:
            raise InvalidRequest("the canary is the version already deployed", param="canary")
        chosen.append((canary_model, canary_version, canary.percent))
    backends = [backend_for(m, v) for m, v, _ in chosen]
    # Every setting is checked before anything is retired: a deployment the gateway
    # could not start must never take the place of one it can.
    for backend in backends:
        check_settings(backend, config or {})
    current = list(
        session.scalars(
            select(Deployment).where(
                Deployment.public_name == public_name, Deployment.active.is_(True)
            )
        )
    )
    _check_same_task(session, current, model, public_name)
    for old in current:
        old.active = False
        old.updated_at = utcnow()
    for (_, chosen_version, weight), backend in zip(chosen, backends, strict=True):
        deployment = deploy(
            session,
            chosen_version,
            public_name=public_name,
            backend=backend,
            config=dict(config or {}),
            weight=weight,
            costs=costs,
        )
        # What comes back if this rollout fails to start (see record_start_failure).
        deployment.replaces = [old.id for old in current]
    session.flush()
    return Rollout(
        public_name,
        tuple((m.name, v.version, w) for m, v, w in chosen),
        retired=len(current),
    )


def _check_same_task(
    session: Session, current: list[Deployment], model: RegisteredModel, public_name: str
) -> None:
    """A public name keeps its task: clients calling it on /v1/embeddings must not
    suddenly reach a chat model."""
    for old in current:
        version = session.get(ModelVersion, old.model_version_id)
        old_model = session.get(RegisteredModel, version.model_id) if version else None
        if old_model is not None and old_model.task != model.task:
            raise Conflict(
                f"{public_name!r} serves a {old_model.task} model; "
                f"retire it first to serve a {model.task} model under that name",
                param="public_name",
            )


def set_serving_costs(session: Session, public_name: str, costs: ServingCosts) -> int:
    """Set the cost rates of every active deployment of ``public_name``."""
    rows = list(
        session.scalars(
            select(Deployment).where(
                Deployment.public_name == public_name, Deployment.active.is_(True)
            )
        )
    )
    if not rows:
        raise NotFound(f"no deployed model named {public_name!r}", param="model")
    for row in rows:
        set_costs(row, costs)
    return len(rows)
