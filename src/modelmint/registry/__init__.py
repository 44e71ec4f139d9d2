"""Model registry: named models, their versions, and the deployments that serve them."""

from modelmint.registry.bundled import BUNDLED_MODELS, register_bundled_models
from modelmint.registry.catalog import (
    DeploymentSpec,
    RouteSpec,
    add_remote_model,
    add_version,
    deploy,
    ensure_model,
    load_routes,
    remove_public_name,
)

__all__ = [
    "BUNDLED_MODELS",
    "DeploymentSpec",
    "RouteSpec",
    "add_remote_model",
    "add_version",
    "deploy",
    "ensure_model",
    "load_routes",
    "register_bundled_models",
    "remove_public_name",
]
