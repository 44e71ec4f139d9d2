"""Samples are redacted before storage; the recorder costs a lookup when capture is off."""

from __future__ import annotations

from modelmint.feedback.samples import CapturedSample, SampleRecorder, redact
from modelmint.storage import Database


def test_emails_phones_cards_and_api_keys_are_replaced_before_storage() -> None:
    secret = "sk-proj-" + "aB3xQ9mZ7kLp2Rt8Vw4Yc6Nd"
    text, counts = redact(
        [
            {
                "role": "user",
                "content": f"me@corp.io, +44 20 7946 0958, 4242 4242 4242 4242, {secret}",
            }
        ]
    )
    for raw in ("me@corp.io", "7946 0958", "4242 4242 4242 4242", secret):
        assert raw not in text
    assert counts["email"] == 1 and counts["card"] == 1 and counts["phone"] == 1
    assert sum(counts.values()) == 4


def test_image_bytes_are_summarised_not_stored() -> None:
    text, counts = redact([b"\x89PNG" + bytes(60)])
    assert text == '["<64 bytes>"]' and counts == {}


def test_only_opted_in_callers_are_queued(sqlite_database: Database) -> None:
    recorder = SampleRecorder(sqlite_database)
    assert not recorder.wants("org-1", "key-1")
    recorder.retention = {"key-1": 7}
    assert recorder.wants("org-2", "key-1") and not recorder.wants("org-2", "key-2")


def test_a_full_queue_drops_samples_instead_of_blocking(sqlite_database: Database) -> None:
    recorder = SampleRecorder(sqlite_database, max_queued=1)
    sample = CapturedSample("r1", "org", "key", "m", None, "classifications", [1], [2])
    recorder.offer(sample)
    recorder.offer(sample)
    assert recorder.dropped == 1


def test_numbers_are_not_mistaken_for_phones_or_cards() -> None:
    value = [{"score": 0.3341234567891234, "id": 4111111111111111, "note": "call 415 555 0100"}]
    text, counts = redact(value)
    assert '"score":0.3341234567891234' in text and "4111111111111111" in text
    assert "555 0100" not in text and counts == {"phone": 1}
