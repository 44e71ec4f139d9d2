"""The feedback loop through the whole gateway (in-process, SQLite and PostgreSQL):
captured samples are redacted before storage, feedback is scoped to the caller's
organisation, and a dataset built from both is the file a training recipe reads."""

from __future__ import annotations

import itertools
import json
import shlex
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from modelmint import accounts
from modelmint.clock import utcnow
from modelmint.feedback.datasets import BuildOptions, build_from_feedback, resolve_dataset
from modelmint.feedback.feedback import MAX_COMMENT_CHARS, feedback_summary
from modelmint.feedback.samples import (
    CapturedSample,
    SampleRecorder,
    purge_expired,
    set_policy,
    store_sample,
)
from modelmint.storage.tables import Feedback, RequestSample
from modelmint.training.cards import feedback_section
from modelmint.training.chats import read_chats
from modelmint.training.ratings import Columns, read_ratings
from tests.integration.test_gateway_remote import (  # noqa: F401 - fixtures
    ADMIN_TOKEN,
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


async def test_feedback_takes_the_response_id_the_sdk_returns(
    gw: Gateway, mock: MockUpstream
) -> None:
    await gw.serve("fb-chat", mock)
    chat = await gw.sdk.chat.completions.with_raw_response.create(
        model="fb-chat", messages=[{"role": "user", "content": "hello"}]
    )
    completion = await gw.sdk.completions.with_raw_response.create(model="fb-chat", prompt="hello")
    for raw, prefix in ((chat, "chatcmpl-"), (completion, "cmpl-")):
        response_id = raw.parse().id
        assert response_id.startswith(prefix)
        rated = await gw.http.post("/v1/feedback", json={"request_id": response_id, "score": "up"})
        assert rated.status_code == 200, rated.text
        # Stored under the request's own id, the one usage records and samples use.
        assert rated.json()["request_id"] == raw.headers["x-request-id"]
    with gw.database.session() as session:
        stored = {r.request_id for r in session.scalars(select(Feedback))}
    assert stored == {chat.headers["x-request-id"], completion.headers["x-request-id"]}

    unknown = await gw.http.post(
        "/v1/feedback", json={"request_id": "chatcmpl-0000", "score": "up"}
    )
    assert unknown.status_code == 404
    message = unknown.json()["error"]["message"]
    assert "chatcmpl-" in message and "cmpl-" in message and "X-Request-ID" in message


async def test_a_comment_is_stored_with_the_rating_and_shown_in_the_summary(
    gw: Gateway, mock: MockUpstream
) -> None:
    await gw.serve("fb-chat", mock)
    request_id = await _chat(gw, "hello")
    comment = "Right answer, but far too formal for our users."
    rated = await gw.http.post(
        "/v1/feedback", json={"request_id": request_id, "score": 4, "comment": comment}
    )
    assert rated.status_code == 200, rated.text
    assert rated.json()["comment"] == comment
    too_long = await gw.http.post(
        "/v1/feedback",
        json={"request_id": request_id, "score": 4, "comment": "x" * (MAX_COMMENT_CHARS + 1)},
    )
    assert too_long.status_code == 400
    assert too_long.json()["error"]["param"] == "comment"
    with gw.database.session() as session:
        row = session.get(Feedback, request_id)
        assert row is not None and row.comment == comment  # the refused one changed nothing
        summary = feedback_summary(session, row.model_version_id or "")
    assert summary.comments == [comment]
    assert comment in feedback_section(summary)


def _readme_feedback_call() -> tuple[dict[str, str], str]:
    """The headers and body of the README's ``curl ... /v1/feedback`` example, as curl
    would send them (``-d`` without a Content-Type header sends a form)."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("curl -s localhost:8000/v1/feedback")
    lines = []
    for line in readme[start:].splitlines():
        lines.append(line.rstrip().removesuffix("\\"))
        if not line.rstrip().endswith("\\"):
            break
    words = shlex.split(" ".join(lines))
    headers: dict[str, str] = {"Content-Type": "application/x-www-form-urlencoded"}
    body = ""
    for flag, value in itertools.pairwise(words):
        if flag == "-H":
            name, _, text = value.partition(":")
            headers[name.strip()] = text.strip()
        elif flag in ("-d", "--data"):
            body = value
    return headers, body


async def test_the_readme_feedback_example_works_as_written(
    gw: Gateway, mock: MockUpstream
) -> None:
    await gw.serve("fb-chat", mock)
    request_id = await _chat(gw, "hello")
    headers, body = _readme_feedback_call()
    headers["Authorization"] = gw.http.headers["Authorization"]  # the README's $KEY
    given = json.loads(body)
    given["request_id"] = request_id
    response = await gw.http.post(
        "/v1/feedback", content=json.dumps(given).encode(), headers=headers
    )
    assert response.status_code == 200, response.text


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


async def test_purge_removes_samples_past_their_retention(gw: Gateway, mock: MockUpstream) -> None:
    recorder = await _serve_with_capture(gw, mock)
    for i in range(3):
        await _chat(gw, f"question {i}")
    recorder.close()
    with gw.database.session() as session:
        assert purge_expired(session, utcnow()) == 0
        assert purge_expired(session, utcnow() + timedelta(days=8)) == 3
        assert session.scalars(select(RequestSample)).all() == []


async def test_a_streamed_answer_is_captured_as_the_text_the_client_received(
    gw: Gateway, mock: MockUpstream
) -> None:
    recorder = await _serve_with_capture(gw, mock)
    stream = await gw.sdk.chat.completions.create(
        model="fb-chat", messages=[{"role": "user", "content": PII_QUESTION}], stream=True
    )
    received = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    recorder.close()
    assert text == REPLY
    with gw.database.session() as session:
        sample = session.get(RequestSample, stream.response.headers["x-request-id"])
        assert sample is not None
        assert json.loads(sample.response_text) == [
            {
                "index": 0,
                "message": {"role": "assistant", "content": REPLY},
                "finish_reason": "stop",
            }
        ]
        assert "jane.doe@example.com" not in sample.request_text
        assert sample.endpoint == "chat.completions"


async def test_deleting_an_organisation_erases_its_data_and_keeps_its_books(
    gw: Gateway, mock: MockUpstream, tmp_path: Path
) -> None:
    recorder = await _serve_with_capture(gw, mock)
    ids = [await _chat(gw, f"question {i}") for i in range(3)]
    recorder.close()
    for request_id in ids:
        response = await gw.http.post(
            "/v1/feedback", json={"request_id": request_id, "score": True}
        )
        assert response.status_code == 200
    with gw.database.session() as session:
        build_from_feedback(session, tmp_path, BuildOptions(model="fb-chat", name="kept"))
    usage_before = len(await gw.usage_rows())
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    response = await gw.http.delete(f"/admin/organizations/{gw.org_id}", headers=admin)

    assert response.status_code == 200, response.text
    erasure = response.json()
    assert erasure["revoked_keys"] == [gw.key_id]
    assert (erasure["samples_deleted"], erasure["feedback_deleted"]) == (3, 3)
    assert erasure["datasets_with_its_requests"] == ["kept@1"]
    assert erasure["already_deleted"] is False
    # The key is refused at once in this process (the cache was told), with the
    # usual 401, and nothing of the customer's content is left.
    refused = await gw.http.post(
        "/v1/chat/completions",
        json={"model": "fb-chat", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "revoked_api_key"
    with gw.database.session() as session:
        assert session.scalars(select(RequestSample)).all() == []
        assert session.scalars(select(Feedback)).all() == []
        org = accounts.get_org(session, gw.org_id)
        assert org.deleted_at is not None
    # The books stay: every usage row of the served requests is still there.
    assert len(await gw.usage_rows()) == usage_before >= 3
    again = await gw.http.delete(f"/admin/organizations/{gw.org_id}", headers=admin)
    assert again.status_code == 200 and again.json()["already_deleted"] is True
    new_key = await gw.http.post(
        "/admin/keys", json={"organization": gw.org_id, "name": "after"}, headers=admin
    )
    assert new_key.status_code == 409
    assert "was deleted" in new_key.json()["error"]["message"]
    missing = await gw.http.delete("/admin/organizations/nobody-here", headers=admin)
    assert missing.status_code == 404


async def test_a_recommender_dataset_holds_the_items_users_chose(
    gw: Gateway, tmp_path: Path
) -> None:
    shown = {"user": "u1", "items": [{"item": "i9", "score": 4.5}, {"item": "i3", "score": 4.1}]}
    rated = {  # request id -> (query, feedback)
        "req_a": ({"user": "u1", "k": 2, "exclude": []}, {"score": 1.0, "corrected_label": "i3"}),
        "req_b": ({"user": "u2", "k": 2, "exclude": []}, {"score": 1.0}),  # liked: top item
        "req_c": ({"user": "u3", "k": 2, "exclude": []}, {"score": 0.0}),  # disliked: nothing
    }
    with gw.database.session() as session:
        for request_id, (query, feedback) in rated.items():
            sample = CapturedSample(
                request_id, gw.org_id, gw.key_id, "recs", None, "recommendations", query, shown
            )
            store_sample(session, sample, retention_days=7)
            session.add(
                Feedback(
                    request_id=request_id,
                    organization_id=gw.org_id,
                    api_key_id=gw.key_id,
                    model="recs",
                    score_kind="thumbs",
                    **feedback,
                )
            )
        session.flush()
        dataset = build_from_feedback(session, tmp_path, BuildOptions(model="recs"))
        assert (dataset.format, dataset.rows) == ("csv", 2)
        path = Path(dataset.path)
    interactions = read_ratings(path, columns=Columns(rating=None), require_rating=False)
    assert path.read_text().splitlines() == ["item,user", "i3,u1", "i9,u2"]  # noqa: ASYNC240
    assert sorted(interactions.users.tolist()) == ["u1", "u2"]
