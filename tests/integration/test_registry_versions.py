"""Trained versions, references, aliases with history, canary rollouts and serving costs,
against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from modelmint.errors import Conflict, InvalidRequest, NotFound
from modelmint.registry import load_routes
from modelmint.registry.catalog import ServingCosts, routes_version
from modelmint.registry.rollout import deploy_version, parse_canary, set_serving_costs
from modelmint.registry.versions import (
    TrainedVersion,
    VersionRef,
    alias_history,
    aliases_of,
    move_alias,
    parse_ref,
    register_trained,
    resolve,
)
from modelmint.storage import Database


def trained(name: str = "risk", *, parent: VersionRef | None = None, task: str = "classification"):
    return TrainedVersion(
        name=name,
        task=task,
        recipe="tabular-classifier",
        format="torch",
        artifact_uri=f"/artifacts/{name}",
        params={"epochs": 3},
        metrics={"roc_auc": 0.97},
        data_hash="sha256:abc",
        lineage={"data": "credit.csv"},
        card="# risk",
        parent=parent,
    )


def test_references_parse_into_name_version_and_alias() -> None:
    assert parse_ref("risk") == VersionRef("risk")
    assert parse_ref("risk@3") == VersionRef("risk", version=3)
    assert parse_ref("risk@production") == VersionRef("risk", alias="production")
    for bad in ("@3", "risk@", "risk@Prod!"):
        with pytest.raises(InvalidRequest):
            parse_ref(bad)


def test_trained_versions_keep_lineage_and_resolve_by_number_alias_and_newest(
    database: Database,
) -> None:
    with database.session() as session:
        first = register_trained(session, trained())
        second = register_trained(session, trained(parent=VersionRef("risk", version=1)))
        assert (first.version, second.version) == (1, 2)
        assert second.parent_version_id == first.id
        assert second.lineage == {"data": "credit.csv"} and second.recipe == "tabular-classifier"
    with database.session() as session:
        assert resolve(session, "risk")[1].version == 2
        assert resolve(session, "risk@1")[1].version == 1
        move_alias(session, "risk@1", "production", "first good one")
        assert resolve(session, "risk@production")[1].version == 1
        with pytest.raises(NotFound):
            resolve(session, "risk@staging")
        with pytest.raises(NotFound):
            resolve(session, "risk@9")


def test_alias_moves_keep_their_history(database: Database) -> None:
    with database.session() as session:
        for _ in range(3):
            register_trained(session, trained())
        move_alias(session, "risk@1", "production")
        move = move_alias(session, "risk@3", "production", "better AUC")
        assert (move.from_version, move.to_version) == (1, 3)
        move_alias(session, "risk@2", "staging")
    with database.session() as session:
        assert aliases_of(session, "risk") == {"production": 3, "staging": 2}
        history = [(m.alias, m.from_version, m.to_version) for m in alias_history(session, "risk")]
        assert history == [("production", None, 1), ("production", 1, 3), ("staging", None, 2)]


def test_canary_splits_weights_and_a_redeploy_replaces_the_route(database: Database) -> None:
    with database.session() as session:
        for _ in range(2):
            register_trained(session, trained())
        before = routes_version(session)
        rollout = deploy_version(
            session, "risk@1", public_name="risk-api", canary=parse_canary("2:10%", "risk")
        )
        assert rollout.versions == (("risk", 1, 90), ("risk", 2, 10))
    with database.session() as session:
        route = load_routes(session)["risk-api"]
        assert sorted((d.version, d.weight, d.backend) for d in route.deployments) == [
            (1, 90, "predictor"),
            (2, 10, "predictor"),
        ]
        assert routes_version(session) != before
        again = deploy_version(session, "risk@2", public_name="risk-api")
        assert again.retired == 2
    with database.session() as session:
        route = load_routes(session)["risk-api"]
        assert [(d.version, d.weight) for d in route.deployments] == [(2, 100)]


def test_bad_canaries_and_task_changes_are_refused(database: Database) -> None:
    with database.session() as session:
        register_trained(session, trained())
        register_trained(session, trained("recs", task="recommendation"))
        for bad in ("2", "2:0%", "2:100%", "2:ten%"):
            with pytest.raises(InvalidRequest):
                canary = parse_canary(bad, "risk")
                deploy_version(session, "risk@1", public_name="risk-api", canary=canary)
        with pytest.raises(InvalidRequest):
            deploy_version(
                session, "risk@1", public_name="risk-api", canary=parse_canary("1:10%", "risk")
            )
        deploy_version(session, "risk@1", public_name="shared")
        with pytest.raises(Conflict):
            deploy_version(session, "recs@1", public_name="shared")


def test_serving_costs_reach_the_route_table_and_price_a_request_exactly(
    database: Database,
) -> None:
    with database.session() as session:
        register_trained(session, trained())
        deploy_version(
            session, "risk", public_name="risk-api", costs=ServingCosts(per_hour=Decimal("0.40"))
        )
    with database.session() as session:
        [spec] = load_routes(session)["risk-api"].deployments
        assert spec.costs == ServingCosts(per_hour=Decimal("0.40"))
        # 90 ms of a $0.40/h machine: 0.40 * 0.09 / 3600 = 0.00001 exactly.
        assert spec.costs.of(90.0, 0, 0) == Decimal("0.00001")
        before = routes_version(session)
        set_serving_costs(
            session, "risk-api", ServingCosts(per_1m_input=Decimal("0.2"), per_1m_output=Decimal(1))
        )
    with database.session() as session:
        assert routes_version(session) != before
        [spec] = load_routes(session)["risk-api"].deployments
        assert spec.costs is not None
        assert spec.costs.of(0.0, 1000, 500) == Decimal("0.0007")
        with pytest.raises(InvalidRequest):
            set_serving_costs(session, "risk-api", ServingCosts(per_hour=Decimal(-1)))
        with pytest.raises(NotFound):
            set_serving_costs(session, "nope", ServingCosts(per_hour=Decimal(1)))
