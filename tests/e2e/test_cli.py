"""The `modelmint` command line as a user runs it: real processes, real exit codes."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from modelmint.cli.up import _seed
from modelmint.config import Settings
from tests.support.processes import cli, cli_json


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"MODELMINT_HOME": str(tmp_path)}


def test_keys_create_list_revoke(env: dict[str, str]) -> None:
    created = cli_json(
        env,
        "keys",
        "create",
        "--org",
        "acme",
        "--create-org",
        "--models",
        "a,b",
        "--rpm",
        "5",
        "--tpm",
        "100",
        "--expires",
        "2099-01-01",
    )
    assert created["key"].startswith(created["prefix"]) and created["key"].startswith("mm-")
    assert created["models"] == ["a", "b"] and created["rpm"] == 5 and created["tpm"] == 100
    listed = cli_json(env, "keys", "list", "--org", "acme")
    assert [k["id"] for k in listed] == [created["id"]]
    assert created["key"] not in orjson.dumps(listed).decode()  # only the prefix, never the key
    cli(env, "keys", "revoke", created["prefix"])
    assert cli_json(env, "keys", "list")[0]["revoked_at"] is not None


def test_an_organisation_is_deleted_only_when_confirmed(env: dict[str, str]) -> None:
    created = cli_json(env, "keys", "create", "--org", "leaving", "--create-org")
    unconfirmed = cli(env, "orgs", "delete", "leaving", check=False)  # no terminal: no "yes"
    assert unconfirmed.returncode == 1
    assert cli_json(env, "keys", "list")[0]["revoked_at"] is None

    erased = cli_json(env, "orgs", "delete", "leaving", "--yes")

    assert erased["revoked_keys"] == [created["id"]] and erased["already_deleted"] is False
    assert cli_json(env, "keys", "list")[0]["revoked_at"] is not None
    assert cli_json(env, "orgs", "list")[0]["deleted_at"] == erased["deleted_at"]
    again = cli(env, "orgs", "delete", "leaving", "--yes")
    assert "already deleted" in again.stdout
    refused = cli(env, "keys", "create", "--org", "leaving", check=False)
    assert refused.returncode != 0 and "was deleted" in refused.stderr


def test_a_key_for_an_unknown_organisation_is_refused_unless_asked_to_create_it(
    env: dict[str, str],
) -> None:
    refused = cli(env, "keys", "create", "--org", "nosuch", check=False)

    assert refused.returncode == 4 and "no organisation" in refused.stderr
    assert "--create-org" in refused.stderr
    assert cli_json(env, "orgs", "list") == [] and cli_json(env, "keys", "list") == []
    created = cli_json(env, "keys", "create", "--org", "nosuch", "--create-org")
    assert created["organization"] == "nosuch"
    [org] = cli_json(env, "orgs", "list")
    assert org["id"] == created["organization_id"]
    # Asked again, the organisation is reused, by name or by id.
    again = cli_json(env, "keys", "create", "--org", org["id"], "--create-org")
    assert again["organization_id"] == org["id"] and len(cli_json(env, "orgs", "list")) == 1


def test_a_key_is_revoked_by_its_full_secret_which_is_never_printed(env: dict[str, str]) -> None:
    created = cli_json(env, "keys", "create", "--org", "acme", "--create-org")
    secret = created["key"]

    revoked = cli(env, "keys", "revoke", secret)

    assert created["id"] in revoked.stdout and secret not in revoked.stdout + revoked.stderr
    assert cli_json(env, "keys", "list")[0]["revoked_at"] is not None
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    missing = cli(env, "keys", "revoke", wrong, check=False)
    assert missing.returncode == 4 and "no API key" in missing.stderr
    assert wrong not in missing.stdout + missing.stderr
    assert wrong[11:20] not in missing.stdout + missing.stderr


NEW_KEY = ("keys", "create", "--org", "acme", "--create-org")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("keys", "revoke", "key_missing"), 4, "no API key"),
        ((*NEW_KEY, "--rpm", "0"), 2, "rpm must be a positive"),
        ((*NEW_KEY, "--expires", "soon"), 2, "is not a date"),
        ((*NEW_KEY, "--expires", "2001-01-01"), 2, "in the past"),
        (("keys", "create", "--org", "ghost"), 4, "no organisation"),
        (("keys", "list", "--org", "ghost"), 4, "no organisation"),
        (("models", "add-remote", "x", "--base-url", "ftp://h"), 2, "http(s) URL"),
        (("models", "remove", "ghost"), 4, "no deployed model"),
        (("orgs", "create", "bad/name"), 2, "organisation name"),
        (("orgs", "delete", "ghost", "--yes"), 4, "no organisation"),
    ],
)
def test_bad_input_gives_a_message_and_exit_code(
    env: dict[str, str], args: tuple[str, ...], code: int, message: str
) -> None:
    result = cli(env, *args, check=False)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_remote_models_are_added_listed_and_removed(env: dict[str, str]) -> None:
    cli(
        env,
        "models",
        "add-remote",
        "gpt-up",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--api-key-env",
        "UPSTREAM_KEY",
        "--upstream-model",
        "real-name",
        "--max-retries",
        "1",
    )
    [row] = cli_json(env, "models", "list")
    assert (row["name"], row["backend"], row["target"]) == (
        "gpt-up",
        "openai_remote",
        "http://127.0.0.1:9/v1",
    )
    duplicate = cli(env, "models", "add-remote", "gpt-up", "--base-url", "http://h/v1", check=False)
    assert duplicate.returncode == 5 and "already deployed" in duplicate.stderr
    cli(env, "models", "remove", "gpt-up")
    assert cli_json(env, "models", "list") == []


def test_up_seeding_reuses_the_database(tmp_path: Path) -> None:
    config = Settings(home=tmp_path, load_bundled_models=True)
    first = _seed(config)
    secret = first.secret
    assert secret is not None and first.prefix is None
    assert sorted(k["organization"] for k in first.billing_keys) == [
        "demo-prepaid",
        "demo-subscription",
    ]
    again = _seed(config)
    assert again.secret is None and again.prefix == secret[: len(again.prefix or "")]
    assert again.billing_keys == []  # secrets are made, and shown, once
    models = cli_json({"MODELMINT_HOME": str(tmp_path)}, "models", "list")
    assert sorted(m["name"] for m in models) == ["all-minilm-l6-v2", "smollm2-135m-instruct"]
