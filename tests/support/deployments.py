"""A deployment spec for building a backend directly, as the registry would hand it over."""

from __future__ import annotations

from typing import Any

from modelmint.registry.catalog import DeploymentSpec


def deployment_spec(
    backend: str, artifact_uri: str, *, name: str, task: str, format: str, config: dict[str, Any]
) -> DeploymentSpec:
    return DeploymentSpec(
        id="dep-1",
        public_name=name,
        task=task,
        model_name=name,
        version=1,
        model_version_id="ver-1",
        format=format,
        artifact_uri=artifact_uri,
        backend=backend,
        config=config,
    )
