"""Feedback names a request by the id the client saw: the response body's ``id`` (what
the SDKs return) or the X-Request-ID header; both lead to the one usage record."""

from __future__ import annotations

import pytest

from modelmint.feedback.feedback import request_id_of
from modelmint.inference.envelope import Envelope
from modelmint.web.middleware import new_request_id


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_the_response_id_of_a_chat_or_completion_leads_back_to_its_request(kind: str) -> None:
    request_id = new_request_id()
    response_id = Envelope(request_id, "m", kind).id
    assert response_id != request_id  # what the SDK user sees is not the header's id
    assert request_id_of(response_id) == request_id


@pytest.mark.parametrize("given", ["req_0123abcd", "something-else", "chatcmpl-", "cmpl-"])
def test_other_ids_are_taken_as_they_are(given: str) -> None:
    assert request_id_of(given) == given
