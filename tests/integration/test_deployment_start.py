"""A rollout either starts or gives way to what it replaced: settings are checked before
anything is retired, and a deployment whose backend fails to start is recorded as
failed, with the previous deployment serving on (real database, real router)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from modelmint.errors import InvalidRequest, NotFound, ServiceUnavailable
from modelmint.gateway.routes.health import readyz
from modelmint.registry.catalog import DeploymentSpec, load_routes, routes_version
from modelmint.registry.deployment_status import (
    deployment_statuses,
    record_start_failure,
    record_started,
)
from modelmint.registry.rollout import deploy_version, parse_canary
from modelmint.registry.versions import TrainedVersion, register_trained
from modelmint.serving.router import Router
from modelmint.serving.types import Prediction
from modelmint.storage import Database
from modelmint.storage.tables import Deployment

BROKEN = "/artifacts/broken"


def register(database: Database, name: str, uris: list[str]) -> None:
    with database.session() as session:
        for uri in uris:
            register_trained(
                session,
                TrainedVersion(
                    name=name,
                    task="classification",
                    recipe="tabular-classifier",
                    format="onnx",
                    artifact_uri=uri,
                    params={},
                    metrics={},
                    data_hash="sha256:0",
                    lineage={},
                    card="",
                ),
            )


class FakeClassifier:
    def __init__(self, spec: DeploymentSpec) -> None:
        self.spec = spec
        self.closed = False

    async def start(self) -> None:
        if self.spec.artifact_uri == BROKEN:
            raise NotFound(f"model artifact {BROKEN!r} not found")

    async def close(self) -> None:
        self.closed = True

    def validate(self, item: Any) -> Any:
        return item

    async def predict(self, items: list[Any]) -> Prediction:
        raise NotImplementedError


class Gateway:
    """A router wired to the registry the way the platform (modelmint.platform) wires it."""

    def __init__(self, database: Database) -> None:
        self.built: list[FakeClassifier] = []

        def routes() -> dict[str, Any]:
            with database.session() as session:
                return load_routes(session)

        def version() -> object:
            with database.session() as session:
                return routes_version(session)

        def started(dep_id: str) -> None:
            with database.session() as session:
                record_started(session, dep_id)

        def failed(dep_id: str, error: str) -> bool:
            with database.session() as session:
                return record_start_failure(session, dep_id, error)

        def build(spec: DeploymentSpec) -> FakeClassifier:
            backend = FakeClassifier(spec)
            self.built.append(backend)
            return backend

        self.router = Router(
            routes, build, refresh_s=3600, version=version, started=started, failed=failed
        )

    def serving(self, name: str) -> FakeClassifier:
        backend = self.router.pick(self.router.route(name)).backend
        assert isinstance(backend, FakeClassifier)
        return backend

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        response = await readyz(SimpleNamespace(router=self.router))  # type: ignore[arg-type]
        return response.status_code, orjson.loads(response.body)


@pytest.fixture
async def gateway(database: Database) -> AsyncIterator[Gateway]:
    running = Gateway(database)
    yield running
    await running.router.close()


def statuses(database: Database) -> list[tuple[str, int, int, str, str | None]]:
    with database.session() as session:
        return [
            (s.public_name, s.version, s.weight, s.status, s.error)
            for s in deployment_statuses(session)
        ]


@pytest.mark.parametrize(
    ("config", "param"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": True}, "max_batch_size"),
        ({"max_wait_ms": -1.0}, "max_wait_ms"),
        ({"max_wait_ms": float("nan")}, "max_wait_ms"),
        ({"timeout_ms": 0}, "timeout_ms"),
        ({"slots": 4}, "slots"),  # an LLM setting: a classifier would silently ignore it
    ],
)
def test_bad_settings_are_refused_before_the_deployment_replaces_anything(
    database: Database, config: dict[str, object], param: str
) -> None:
    register(database, "digits", ["/artifacts/v1", "/artifacts/v2"])
    with database.session() as session:
        deploy_version(session, "digits@1", public_name="digits")
    before = statuses(database)
    with database.session() as session, pytest.raises(InvalidRequest) as caught:
        deploy_version(session, "digits@2", public_name="digits", config=config)
    assert caught.value.param == param and param in caught.value.message
    with database.session() as session, pytest.raises(InvalidRequest):
        canary = parse_canary("2:10%", "digits")
        deploy_version(session, "digits@1", public_name="digits", canary=canary, config=config)
    assert statuses(database) == before == [("digits", 1, 100, "starting", None)]


def test_good_settings_are_kept_for_the_backend(database: Database) -> None:
    register(database, "digits", ["/artifacts/v1"])
    config: dict[str, object] = {"max_batch_size": 16, "max_wait_ms": 2.5}
    with database.session() as session:
        deploy_version(session, "digits@1", public_name="digits", config=config)
    with database.session() as session:
        [spec] = load_routes(session)["digits"].deployments
    assert spec.config == config


async def test_a_deployment_that_cannot_start_gives_way_to_the_one_it_replaced(
    database: Database, gateway: Gateway
) -> None:
    register(database, "digits", ["/artifacts/v1", BROKEN])
    with database.session() as session:
        deploy_version(session, "digits@1", public_name="digits")
    await gateway.router.start()
    old = gateway.serving("digits")
    assert statuses(database) == [("digits", 1, 100, "serving", None)]

    with database.session() as session:
        deploy_version(session, "digits@2", public_name="digits")
    await gateway.router.refresh()

    # The old backend never stopped: no request in between found the name without one.
    assert gateway.serving("digits") is old and not old.closed
    assert statuses(database) == [
        ("digits", 1, 100, "serving", None),
        ("digits", 2, 0, "failed", f"model artifact {BROKEN!r} not found"),
    ]
    assert await gateway.readyz() == (200, {"status": "ready", "models": ["digits"], "failed": []})

    # A newer rollout that starts retires the report of the failed one.
    register(database, "digits", ["/artifacts/v3"])
    with database.session() as session:
        deploy_version(session, "digits@3", public_name="digits")
    await gateway.router.refresh()
    assert gateway.serving("digits").spec.version == 3 and old.closed
    assert statuses(database) == [("digits", 3, 100, "serving", None)]


async def test_a_failed_canary_rolls_the_whole_rollout_back(
    database: Database, gateway: Gateway
) -> None:
    register(database, "digits", ["/artifacts/v1", "/artifacts/v2", BROKEN])
    with database.session() as session:
        deploy_version(session, "digits@1", public_name="digits")
    await gateway.router.start()
    with database.session() as session:
        canary = parse_canary("3:10%", "digits")
        deploy_version(session, "digits@2", public_name="digits", canary=canary)
    await gateway.router.refresh()
    assert gateway.serving("digits").spec.version == 1
    assert [(v, w, s) for _, v, w, s, _ in statuses(database)] == [
        (1, 100, "serving"),
        (3, 0, "failed"),
    ]


async def test_a_first_deployment_that_cannot_start_is_reported_and_answers_503(
    database: Database, gateway: Gateway
) -> None:
    register(database, "digits", [BROKEN])
    with database.session() as session:
        deploy_version(session, "digits", public_name="digits")
    await gateway.router.start()

    with pytest.raises(ServiceUnavailable, match="failed to start"):
        gateway.serving("digits")
    assert statuses(database) == [
        ("digits", 1, 100, "failed", f"model artifact {BROKEN!r} not found")
    ]
    assert await gateway.readyz() == (
        503,
        {"status": "degraded", "models": [], "failed": ["digits"]},
    )
    with database.session() as session:
        [row] = session.scalars(select(Deployment))
        assert row.active  # still routed: nothing else to serve the name

    # Another gateway takes the recorded failure as it is, without loading it again.
    other = Gateway(database)
    await other.router.start()
    try:
        assert other.built == [] and other.router.unavailable() == ["digits"]
    finally:
        await other.router.close()
