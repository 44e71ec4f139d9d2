"""Registering models and versions, deploying them under public names, reading the routes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelmint.clock import utcnow
from modelmint.errors import Conflict, InvalidRequest, NotFound
from modelmint.ids import new_id
from modelmint.storage.tables import Deployment, ModelVersion, RegisteredModel

__all__ = [
    "TASKS",
    "DeploymentSpec",
    "RouteSpec",
    "ServingCosts",
    "add_remote_model",
    "add_version",
    "deploy",
    "ensure_model",
    "load_routes",
    "remove_public_name",
    "routes_version",
    "set_costs",
]

TASKS = ("chat", "embedding", "classification", "recommendation")
# fullmatch, not match with "$": "$" also matches before a trailing newline.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    """Everything the serving layer needs to build and address one backend."""

    id: str
    public_name: str
    task: str
    model_name: str
    version: int
    model_version_id: str
    format: str
    artifact_uri: str
    backend: str
    config: dict[str, Any] = field(default_factory=dict)
    weight: int = 100
    fallback: str | None = None
    costs: ServingCosts | None = None
    # Why a gateway could not start it; such a deployment is reported, never retried.
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ServingCosts:
    """What one deployment costs to run: hardware per hour for a local engine (shared
    among requests by measured engine time), or an upstream's per-token prices."""

    per_hour: Decimal | None = None
    per_1m_input: Decimal | None = None
    per_1m_output: Decimal | None = None

    def of(self, engine_ms: float, input_tokens: int, output_tokens: int) -> Decimal:
        """The cost of one request's measured use, to 12 decimal places.

        An hourly rate shared by the microsecond does not divide evenly (3.6e9 has a
        factor 9), so every request's cost is rounded once, here, to a pico-unit;
        sums of stored costs are then exact.
        """
        cost = Decimal(0)
        if self.per_hour is not None:
            # engine_ms is a float measurement: whole microseconds, like compute_seconds.
            micros = Decimal(round(engine_ms * 1000))
            cost += self.per_hour * micros / _MICROS_PER_HOUR
        if self.per_1m_input is not None:
            cost += self.per_1m_input * input_tokens / _MILLION
        if self.per_1m_output is not None:
            cost += self.per_1m_output * output_tokens / _MILLION
        return cost.quantize(_PICO, rounding=ROUND_HALF_EVEN)


_MICROS_PER_HOUR = Decimal(3_600_000_000)
_PICO = Decimal("1e-12")
_MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A public model name and the deployments that share its traffic."""

    public_name: str
    task: str
    deployments: tuple[DeploymentSpec, ...]
    created: int = 0


def check_name(name: str, param: str = "name") -> str:
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"invalid model name {name!r}: use letters, digits and . _ : / - (max 128)",
            param=param,
        )
    return name


def ensure_model(session: Session, name: str, task: str, description: str = "") -> RegisteredModel:
    check_name(name)
    if task not in TASKS:
        raise InvalidRequest(f"task must be one of {', '.join(TASKS)}", param="task")
    model = session.scalar(select(RegisteredModel).where(RegisteredModel.name == name))
    if model is None:
        model = RegisteredModel(id=new_id("mdl"), name=name, task=task, description=description)
        session.add(model)
        session.flush()
    elif model.task != task:
        raise Conflict(f"model {name!r} is registered for task {model.task!r}, not {task!r}")
    return model


def add_version(
    session: Session,
    model: RegisteredModel,
    *,
    format: str,
    artifact_uri: str,
    params: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> ModelVersion:
    """A new version of ``model``, numbered one past the highest so far."""
    highest = session.scalar(
        select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
    )
    version = ModelVersion(
        id=new_id("ver"),
        model_id=model.id,
        version=(highest or 0) + 1,
        format=format,
        artifact_uri=artifact_uri,
        params=params or {},
        metrics=metrics or {},
    )
    session.add(version)
    session.flush()
    return version


def deploy(
    session: Session,
    version: ModelVersion,
    *,
    public_name: str,
    backend: str,
    config: dict[str, Any] | None = None,
    weight: int = 100,
    fallback: str | None = None,
    costs: ServingCosts | None = None,
) -> Deployment:
    check_name(public_name, "public_name")
    if fallback is not None:
        check_name(fallback, "fallback")
        if fallback == public_name:
            raise InvalidRequest("a model cannot be its own fallback", param="fallback")
    deployment = Deployment(
        id=new_id("dep"),
        public_name=public_name,
        model_version_id=version.id,
        backend=backend,
        config=config or {},
        weight=weight,
        fallback=fallback,
    )
    if costs is not None:
        set_costs(deployment, costs)
    session.add(deployment)
    session.flush()
    return deployment


def set_costs(deployment: Deployment, costs: ServingCosts) -> None:
    for name, value in (
        ("cost per hour", costs.per_hour),
        ("cost per 1M input tokens", costs.per_1m_input),
        ("cost per 1M output tokens", costs.per_1m_output),
    ):
        if value is not None and (not value.is_finite() or value < 0):
            raise InvalidRequest(f"{name} must be a non-negative amount", param="cost")
    deployment.cost_per_hour = costs.per_hour
    deployment.cost_per_1m_input = costs.per_1m_input
    deployment.cost_per_1m_output = costs.per_1m_output
    deployment.updated_at = utcnow()


def _public_name_taken(session: Session, public_name: str) -> bool:
    query = select(Deployment.id).where(
        Deployment.public_name == public_name, Deployment.active.is_(True)
    )
    return session.scalar(query) is not None


def add_remote_model(
    session: Session,
    name: str,
    *,
    base_url: str,
    api_key_env: str | None = None,
    upstream_model: str | None = None,
    task: str = "chat",
    fallback: str | None = None,
    timeout_s: float | None = None,
    max_retries: int | None = None,
) -> Deployment:
    """Register an OpenAI-compatible upstream (vLLM, TGI, Ollama, llama.cpp, OpenAI) as ``name``.

    The upstream's secret is never stored: only the name of the environment variable
    that holds it, read by the gateway process when it calls the upstream.
    """
    check_name(name)
    parsed = urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidRequest("base_url must be an http(s) URL", param="base_url")
    if api_key_env is not None and not _ENV_VAR.fullmatch(api_key_env):
        raise InvalidRequest(
            "api_key_env must be an environment variable name", param="api_key_env"
        )
    if timeout_s is not None and timeout_s <= 0:
        raise InvalidRequest("timeout must be positive", param="timeout")
    if max_retries is not None and not 0 <= max_retries <= 10:
        raise InvalidRequest("max_retries must be between 0 and 10", param="max_retries")
    if _public_name_taken(session, name):
        raise Conflict(f"a model named {name!r} is already deployed", param="name")
    if fallback is not None and not _public_name_taken(session, fallback):
        raise InvalidRequest(f"fallback model {fallback!r} is not deployed", param="fallback")
    model = ensure_model(session, name, task)
    version = add_version(session, model, format="remote", artifact_uri=base_url.rstrip("/"))
    config: dict[str, Any] = {"upstream_model": upstream_model or name}
    if api_key_env:
        config["api_key_env"] = api_key_env
    if timeout_s is not None:
        config["timeout_s"] = timeout_s
    if max_retries is not None:
        config["max_retries"] = max_retries
    return deploy(
        session,
        version,
        public_name=name,
        backend="openai_remote",
        config=config,
        fallback=fallback,
    )


def remove_public_name(session: Session, public_name: str) -> int:
    """Stop serving ``public_name``; versions and past usage stay. Returns deployments retired."""
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
        row.active = False
    return len(rows)


def routes_version(session: Session) -> tuple[object, ...]:
    """A fingerprint that changes whenever the active route table does."""
    row = session.execute(
        select(
            func.count(Deployment.id),
            func.max(Deployment.created_at),
            func.sum(Deployment.weight),
            func.max(Deployment.updated_at),
        ).where(Deployment.active.is_(True))
    ).one()
    return tuple(row)


def load_routes(session: Session) -> dict[str, RouteSpec]:
    """Every public model name with its active deployments, in one query."""
    rows = session.execute(
        select(Deployment, ModelVersion, RegisteredModel)
        .join(ModelVersion, Deployment.model_version_id == ModelVersion.id)
        .join(RegisteredModel, ModelVersion.model_id == RegisteredModel.id)
        .where(Deployment.active.is_(True))
        .order_by(Deployment.created_at)
    ).all()
    grouped: dict[str, list[DeploymentSpec]] = {}
    created: dict[str, int] = {}
    for dep, ver, model in rows:
        grouped.setdefault(dep.public_name, []).append(
            DeploymentSpec(
                id=dep.id,
                public_name=dep.public_name,
                task=model.task,
                model_name=model.name,
                version=ver.version,
                model_version_id=ver.id,
                format=ver.format,
                artifact_uri=ver.artifact_uri,
                backend=dep.backend,
                config=dict(dep.config),
                weight=dep.weight,
                fallback=dep.fallback,
                costs=_costs(dep),
                error=dep.error if dep.failed_at is not None else None,
            )
        )
        created.setdefault(dep.public_name, int(dep.created_at.timestamp()))
    return {
        name: RouteSpec(name, deps[0].task, tuple(deps), created[name])
        for name, deps in grouped.items()
    }


def _costs(deployment: Deployment) -> ServingCosts | None:
    rates = (deployment.cost_per_hour, deployment.cost_per_1m_input, deployment.cost_per_1m_output)
    if all(rate is None for rate in rates):
        return None
    return ServingCosts(*rates)
