"""The feedback loop through the whole gateway (in-process, SQLite and PostgreSQL):
captured samples are redacted before storage, feedback is scoped to the caller's
organisation, and a dataset built from both is the file a training recipe reads."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from modelmint import accounts
from modelmint.feedback.datasets import BuildOptions, build_from_feedback, resolve_dataset
from modelmint.feedback.samples import (
    SampleRecorder,
    delete_organization_samples,
    purge_expired,
    set_policy,
)
from modelmint.storage.db import utcnow
from modelmint.storage.tables import Feedback, RequestSample
from modelmint.training.chats import read_chats
from tests.integration.test_gateway_remote import (  # noqa: F401 - fixtures
    REPLY,
    Gateway,
    gateway,
    upstream,
)
from tests.support.mock_upstream import MockUpstream


@pytest.fixture
def gw(gateway: Gateway) -> Gateway:  # noqa: F811 - the imported fixture
    return gateway


@pytest.fixture
def mock(upstream: MockUpstream) -> MockUpstream:  # noqa: F811 - the imported fixture
    return upstream


PII_QUESTION = "Mail jane.doe@example.com or call +1 415 555 0100 about card 4111 1111 1111 1111"


async def _chat(gw: Gateway, content: str) -> str:
    response = await gw.http.post(
        "/v1/chat/completions",
        json={"model": "fb-chat", "messages": [{"role": "user", "content": content}]},
    )
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


async def _serve_with_capture(gw: Gateway, mock: MockUpstream) -> SampleRecorder:
    await gw.serve("fb-chat", mock)
    with gw.database.session() as session:
        set_policy(session, "organization", gw.org_id, retention_days=7)
    return _recorder(gw)


def _recorder(gw: Gateway) -> SampleRecorder:
    """The platform's own recorder, with the policies just written loaded."""
    recorder = gw.platform.samples
    assert recorder is not None, "the platform starts sample capture"
    recorder.refresh()
    return recorder


async def test_captured_samples_are_redacted_before_they_are_stored(
    gw: Gateway, mock: MockUpstream
) -> None:
    recorder = await _serve_with_capture(gw, mock)
    request_id = await _chat(gw, PII_QUESTION)
    recorder.close()  # writes everything queued

    with gw.database.session() as session:
        sample = session.get(RequestSample, request_id)
        assert sample is not None
        assert "jane.doe@example.com" not in sample.request_text
        assert "4111 1111 1111 1111" not in sample.request_text
        assert "555 0100" not in sample.request_text
        assert sample.redactions.get("email") == 1 and sample.redactions.get("card") == 1
        assert REPLY in sample.response_text
        assert sample.expires_at - sample.created_at == timedelta(days=7)


async def test_requests_of_callers_who_did_not_opt_in_are_not_captured(
    gw: Gateway, mock: MockUpstream
) -> None:
    await gw.serve("fb-chat", mock)
    recorder = _recorder(gw)
    request_id = await _chat(gw, "hello")
    recorder.close()
    with gw.database.session() as session:
        assert session.get(RequestSample, request_id) is None
    assert not recorder.wants(gw.org_id, gw.key_id)


async def test_feedback_is_stored_updated_and_limited_to_the_callers_organisation(
    gw: Gateway, mock: MockUpstream
) -> None:
    await gw.serve("fb-chat", mock)
    request_id = await _chat(gw, "hello")

    first = await gw.http.post("/v1/feedback", json={"request_id": request_id, "score": 2})
    assert first.status_code == 200, first.text
    assert first.json()["kind"] == "stars" and first.json()["score"] == 2.0
    again = await gw.http.post(
        "/v1/feedback",
        json={"request_id": request_id, "score": "down", "corrected_output": "Better."},
    )
    assert again.status_code == 200 and again.json()["kind"] == "thumbs"
    with gw.database.session() as session:
        rows = list(session.scalars(select(Feedback)))
        assert [(r.score, r.corrected_output) for r in rows] == [(0.0, "Better.")]

    with gw.database.session() as session:
        other = accounts.ensure_org(session, "someone-else")
        _, secret = accounts.create_key(session, other, name="other")
    stranger = await gw.http.post(
        "/v1/feedback",
        json={"request_id": request_id, "score": True},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert stranger.status_code == 404
    assert stranger.json()["error"]["param"] == "request_id"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"score": 6}, "score"),
        ({"score": 1.5, "kind": "stars"}, "score"),
        ({"score": "meh", "kind": "thumbs"}, "score"),
        ({"score": 1, "unknown": 1}, None),
        ({}, None),
    ],
)
async def test_bad_feedback_gets_a_400_in_the_openai_shape(
    gw: Gateway, mock: MockUpstream, body: dict[str, object], param: str | None
) -> None:
    await gw.serve("fb-chat", mock)
    request_id = await _chat(gw, "hello")
    response = await gw.http.post("/v1/feedback", json={"request_id": request_id, **body})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param


async def test_a_chat_dataset_uses_corrections_and_good_answers_once_each(
    gw: Gateway, mock: MockUpstream, tmp_path: Path
) -> None:
    recorder = await _serve_with_capture(gw, mock)
    good = [await _chat(gw, "What jumps?") for _ in range(2)]  # same text: one row
    corrected = await _chat(gw, "Who is lazy?")
    bad = await _chat(gw, "Anything else?")
    recorder.close()
    for request_id, body in (
        (good[0], {"score": True}),
        (good[1], {"score": True}),
        (corrected, {"score": False, "corrected_output": "The dog is lazy."}),
        (bad, {"score": False}),
    ):
        response = await gw.http.post("/v1/feedback", json={"request_id": request_id, **body})
        assert response.status_code == 200

    with gw.database.session() as session:
        dataset = build_from_feedback(session, tmp_path, BuildOptions(model="fb-chat"))
        assert (dataset.name, dataset.version, dataset.format, dataset.rows) == (
            "fb-chat", 1, "jsonl", 2,
        )  # fmt: skip
        assert dataset.request_ids == sorted([good[0], corrected])
        assert dataset.data_hash.startswith("sha256:")
        path = resolve_dataset(session, "dataset:fb-chat@1").path
    chats = read_chats(Path(path))
    chats_text = Path(path).read_text()  # noqa: ASYNC240 - a small local file
    answers = [c.messages[-1].content for c in chats]
    assert answers == [REPLY, "The dog is lazy."]
    lines = [json.loads(line) for line in chats_text.splitlines()]
    assert lines[1]["messages"][0] == {"role": "user", "content": "Who is lazy?"}


async def test_purge_and_organisation_deletion_remove_samples(
    gw: Gateway, mock: MockUpstream
) -> None:
    recorder = await _serve_with_capture(gw, mock)
    ids = [await _chat(gw, f"question {i}") for i in range(3)]
    recorder.close()
    with gw.database.session() as session:
        assert purge_expired(session, utcnow()) == 0
        assert purge_expired(session, utcnow() + timedelta(days=8)) == 3
    recorder.start()  # closed above to flush its queue; capture goes on
    await _chat(gw, "one more")
    recorder.close()
    with gw.database.session() as session:
        assert delete_organization_samples(session, gw.org_id) == 1
        assert session.scalars(select(RequestSample)).all() == []
        assert not set(ids) & {r.request_id for r in session.scalars(select(RequestSample))}
