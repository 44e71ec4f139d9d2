"""Organisations and API keys against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

from modelmint.accounts import (
    create_key,
    create_org,
    ensure_org,
    get_org,
    hash_secret,
    list_keys,
    list_orgs,
    lookup_key,
    revoke_key,
)
from modelmint.clock import utcnow
from modelmint.errors import Conflict, InvalidRequest, NotFound
from modelmint.storage import Database
from modelmint.storage.tables import ApiKey


def test_key_secret_is_never_stored(database: Database) -> None:
    with database.session() as session:
        org = create_org(session, "Acme")
        row, secret = create_key(session, org, name="prod", models=["chat-a"], rpm_limit=60)
        key_id = row.id
    assert secret.startswith("mm-")
    assert len(secret) == 3 + 43  # 32 random bytes, base64url without padding
    with database.engine.connect() as connection:
        stored = connection.execute(text("SELECT * FROM api_keys")).mappings().one()
    assert stored["id"] == key_id
    assert stored["key_hash"] == hash_secret(secret)
    assert stored["prefix"] == secret[:11]
    for column, value in stored.items():
        assert secret not in str(value), column
        assert secret[11:] not in str(value), column


def test_lookup_by_secret(database: Database) -> None:
    with database.session() as session:
        org = create_org(session, "Acme")
        row, secret = create_key(
            session, org, models=["b-model", " a-model ", "b-model", ""], rpm_limit=5, tpm_limit=9
        )
        key_id, org_id = row.id, org.id
    with database.session() as session:
        info = lookup_key(session, secret)
        assert lookup_key(session, secret + "x") is None
        assert lookup_key(session, "mm-" + "A" * 43) is None
    assert info is not None
    assert (info.id, info.organization_id, info.prefix) == (key_id, org_id, secret[:11])
    assert info.models == frozenset({"a-model", "b-model"})
    assert (info.rpm_limit, info.tpm_limit) == (5, 9)
    assert info.revoked is False
    assert info.expires_at is None
    assert info.usable_at(utcnow())
    assert info.allows("a-model") and not info.allows("c-model")


def test_key_without_model_list_allows_every_model(database: Database) -> None:
    with database.session() as session:
        _, secret = create_key(session, create_org(session, "Acme"))
    with database.session() as session:
        info = lookup_key(session, secret)
    assert info is not None
    assert info.models is None
    assert info.allows("anything")


def test_expired_key_is_found_but_not_usable(database: Database) -> None:
    expires = utcnow() + timedelta(hours=1)
    with database.session() as session:
        _, secret = create_key(session, create_org(session, "Acme"), expires_at=expires)
    with database.session() as session:
        info = lookup_key(session, secret)
    assert info is not None
    assert info.expires_at == expires
    assert info.usable_at(expires - timedelta(seconds=1))
    assert not info.usable_at(expires)
    assert info.revoked is False


def test_revoke_by_prefix(database: Database) -> None:
    with database.session() as session:
        org = create_org(session, "Acme")
        _, secret = create_key(session, org)
        _, other = create_key(session, org)
    with database.session() as session:
        row = revoke_key(session, secret[:11])
        first_revoked_at = row.revoked_at
    assert first_revoked_at is not None
    with database.session() as session:
        info = lookup_key(session, secret)
        assert info is not None and info.revoked is True
        assert not info.usable_at(utcnow())
        untouched = lookup_key(session, other)
        assert untouched is not None and untouched.revoked is False
        # Revoking twice keeps the first time.
        assert revoke_key(session, secret[:11]).revoked_at == first_revoked_at


def test_revoke_by_id(database: Database) -> None:
    with database.session() as session:
        row, secret = create_key(session, create_org(session, "Acme"))
        key_id = row.id
    with database.session() as session:
        assert revoke_key(session, key_id).id == key_id
    with database.session() as session:
        info = lookup_key(session, secret)
    assert info is not None and info.revoked is True


def test_revoke_by_full_secret(database: Database) -> None:
    with database.session() as session:
        org = create_org(session, "Acme")
        row, secret = create_key(session, org)
        _, other = create_key(session, org)
        key_id = row.id
    with database.session() as session:
        assert revoke_key(session, secret).id == key_id
    with database.session() as session:
        info, untouched = lookup_key(session, secret), lookup_key(session, other)
    assert info is not None and info.revoked is True
    assert untouched is not None and untouched.revoked is False


def test_revoke_by_an_unknown_secret_never_repeats_it(database: Database) -> None:
    with database.session() as session:
        _, secret = create_key(session, create_org(session, "Acme"))
    wrong = secret[:11] + "x" * (len(secret) - 11)
    with database.session() as session, pytest.raises(NotFound) as caught:
        revoke_key(session, wrong)
    assert caught.value.param == "key"
    assert wrong not in caught.value.message and "xxxxxxxx" not in caught.value.message
    with database.session() as session:
        info = lookup_key(session, secret)
    assert info is not None and info.revoked is False


def test_revoke_by_a_secret_without_its_prefix_never_repeats_it(database: Database) -> None:
    with database.session() as session:
        _, secret = create_key(session, create_org(session, "Acme"))
    with database.session() as session, pytest.raises(NotFound) as caught:
        revoke_key(session, secret.removeprefix("mm-"))
    assert secret[14:] not in caught.value.message


def test_revoke_unknown_key_is_not_found(database: Database) -> None:
    with database.session() as session, pytest.raises(NotFound) as caught:
        revoke_key(session, "mm-nothere")
    assert caught.value.param == "key"
    assert caught.value.status_code == 404


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"rpm_limit": 0}, "rpm"),
        ({"rpm_limit": -5}, "rpm"),
        ({"tpm_limit": 0}, "tpm"),
        ({"expires_at": "past"}, "expires"),
        ({"expires_at": "naive"}, "expires"),
        ({"models": ["", "  "]}, "models"),
    ],
)
def test_bad_key_settings_are_invalid_requests(
    database: Database, kwargs: dict[str, object], param: str
) -> None:
    if kwargs.get("expires_at") == "past":
        kwargs = {"expires_at": utcnow() - timedelta(seconds=1)}
    if kwargs.get("expires_at") == "naive":  # a local time of unknown zone, even if future
        kwargs = {"expires_at": (utcnow() + timedelta(days=1)).replace(tzinfo=None)}
    with database.session() as session:
        org = create_org(session, "Acme")
        with pytest.raises(InvalidRequest) as caught:
            create_key(session, org, **kwargs)  # type: ignore[arg-type]
        assert caught.value.param == param
        assert session.scalars(select(ApiKey)).all() == []


def test_list_keys_by_organisation(database: Database) -> None:
    with database.session() as session:
        acme, beta = create_org(session, "Acme"), create_org(session, "Beta")
        a1, _ = create_key(session, acme, name="one")
        b1, _ = create_key(session, beta, name="two")
        assert {k.id for k in list_keys(session)} == {a1.id, b1.id}
        assert [k.id for k in list_keys(session, acme)] == [a1.id]
        assert [k.id for k in list_keys(session, beta)] == [b1.id]


def test_duplicate_org_is_a_conflict(database: Database) -> None:
    with database.session() as session:
        create_org(session, "Acme Corp")
    with database.session() as session, pytest.raises(Conflict) as caught:
        create_org(session, "  Acme Corp ")
    assert caught.value.status_code == 409
    assert caught.value.param == "name"


@pytest.mark.parametrize("name", ["", "   ", "-acme", "acme!", "a" * 101, "ac\nme"])
def test_bad_org_name_is_an_invalid_request(database: Database, name: str) -> None:
    with database.session() as session, pytest.raises(InvalidRequest) as caught:
        create_org(session, name)
    assert caught.value.param == "name"


def test_org_lookup_by_name_or_id_and_ensure(database: Database) -> None:
    with database.session() as session:
        org = create_org(session, "Acme")
        org_id = org.id
        assert ensure_org(session, "Acme").id == org_id
        beta = ensure_org(session, "Beta")
    with database.session() as session:
        assert get_org(session, "Acme").id == org_id
        assert get_org(session, org_id).name == "Acme"
        assert [o.name for o in list_orgs(session)] == ["Acme", "Beta"]
        assert beta.name == "Beta"
        with pytest.raises(NotFound) as caught:
            get_org(session, "Nobody")
        assert caught.value.param == "organization"


def test_ensure_org_finds_an_organisation_by_id_too(database: Database) -> None:
    with database.session() as session:
        org_id = create_org(session, "Acme").id
    with database.session() as session:
        assert ensure_org(session, org_id).id == org_id
        assert [o.name for o in list_orgs(session)] == ["Acme"]


def test_org_created_concurrently_is_a_conflict_not_a_crash(database: Database) -> None:
    def rival_creates_it_first(session: Session, *_: object) -> None:
        # Another process inserts the same name after our existence check, before our insert.
        with database.session() as rival:
            create_org(rival, "Acme")

    with pytest.raises(Conflict) as caught, database.session() as session:
        event.listen(session, "before_flush", rival_creates_it_first, once=True)
        create_org(session, "Acme")
    assert caught.value.param == "name"
    with database.session() as session:
        assert [o.name for o in list_orgs(session)] == ["Acme"]
