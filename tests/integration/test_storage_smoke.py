from sqlalchemy import inspect

from modelmint.storage import Database, migrate


def test_migrations_create_every_table_and_are_idempotent(database: Database) -> None:
    migrate(database)  # a second run changes nothing and does not fail
    names = set(inspect(database.engine).get_table_names())
    assert {
        "organizations",
        "api_keys",
        "registered_models",
        "model_versions",
        "deployments",
        "usage_records",
    } <= names
