"""The models and the wire converter: every field variant of the official spec."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import cattrs
import pytest

from market_chat_async import Attachment, ChatMessage, Sender
from market_chat_async._wire import converter, make_converter

FIXTURES = Path(__file__).parent / "fixtures"
strict = make_converter(forbid_extra_keys=True)


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data["result"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("message_*.json")))
def test_recorded_fixtures_match_the_model_exactly(fixture: str) -> None:
    # The strict twin refuses unknown keys: a drifted API shows up here, not in production.
    raw = load(fixture)
    assert strict.structure(raw, ChatMessage) == converter.structure(raw, ChatMessage)


def test_message_only() -> None:
    msg = converter.structure(load("message_text.json"), ChatMessage)
    assert msg == ChatMessage(
        message_id=1,
        created_at=datetime(2017, 11, 21, tzinfo=timezone(timedelta(hours=3))),
        sender=Sender.PARTNER,
        message="example",
        payload=(),
    )
    assert msg.created_at.utcoffset() == timedelta(hours=3)


def test_payload_only_with_z_and_fractional_seconds() -> None:
    msg = converter.structure(load("message_payload.json"), ChatMessage)
    assert msg.message is None
    assert msg.payload == (
        Attachment(name="photo.jpg", url="https://market-files.invalid/1/2/photo.jpg", size=0),
    )
    assert msg.created_at == datetime(2017, 11, 21, 0, 0, 0, 213000, tzinfo=UTC)
    assert msg.sender is Sender.CUSTOMER


def test_message_and_payload_with_extreme_values() -> None:
    msg = converter.structure(load("message_both.json"), ChatMessage)
    assert msg.message_id == 2**63 - 1
    assert msg.message == "See attached"
    assert [a.size for a in msg.payload] == [2147483647, 12]
    assert msg.created_at.utcoffset() == -timedelta(hours=5, minutes=30)
    assert msg.created_at.microsecond == 123456


def test_null_payload_is_empty() -> None:
    raw = dict(load("message_text.json"), payload=None)
    assert converter.structure(raw, ChatMessage).payload == ()


def test_unknown_sender_is_kept_not_fatal() -> None:
    raw = dict(load("message_text.json"), sender="AI_ASSISTANT")
    msg = converter.structure(raw, ChatMessage)
    assert msg.sender == "AI_ASSISTANT"
    assert msg.sender.value == "AI_ASSISTANT"
    assert not msg.sender.is_known
    assert msg.sender not in list(Sender)
    assert Sender.PARTNER.is_known


def test_unknown_fields_are_kept_in_extra_and_round_trip() -> None:
    raw = dict(load("message_text.json"), readAt="2017-11-21T00:00:01+03:00", reactions=[1])
    msg = converter.structure(raw, ChatMessage)
    assert msg.extra == {"readAt": "2017-11-21T00:00:01+03:00", "reactions": [1]}
    assert converter.unstructure(msg) == raw
    with pytest.raises(cattrs.ForbiddenExtraKeysError):
        strict.structure(raw, ChatMessage)


@pytest.mark.parametrize(
    "fixture", ["message_text.json", "message_payload.json", "message_both.json"]
)
def test_unstructure_gives_the_api_shape_back(fixture: str) -> None:
    raw = load(fixture)
    again = converter.unstructure(converter.structure(raw, ChatMessage))
    assert converter.structure(again, ChatMessage) == converter.structure(raw, ChatMessage)
    assert set(again) == set(raw)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("messageId", "1"),  # a string is not an int, however it looks
        ("messageId", True),
        ("messageId", 1.0),
        ("createdAt", "2017-11-21T00:00:00"),  # no offset
        ("createdAt", "yesterday"),
        ("createdAt", 1511211600),
        ("sender", 3),
        ("message", 42),
        ("payload", {"name": "x"}),
        ("payload", [{"name": "x", "url": "u"}]),  # size missing
        ("payload", [{"name": "x", "url": "u", "size": "12"}]),
    ],
)
def test_wrong_types_are_refused(field: str, value: object) -> None:
    raw = dict(load("message_both.json"), **{field: value})
    with pytest.raises((cattrs.BaseValidationError, TypeError, ValueError, KeyError)):
        converter.structure(raw, ChatMessage)


@pytest.mark.parametrize("missing", ["messageId", "createdAt", "sender"])
def test_required_fields(missing: str) -> None:
    raw = load("message_both.json")
    del raw[missing]
    with pytest.raises((cattrs.BaseValidationError, KeyError), match=missing):
        converter.structure(raw, ChatMessage)


def test_models_are_frozen_slotted_and_picklable() -> None:
    msg = converter.structure(load("message_both.json"), ChatMessage)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        msg.message = "changed"  # type: ignore[misc]
    assert not hasattr(msg, "__dict__")
    assert pickle.loads(pickle.dumps(msg)) == msg
    assert hash(msg) == hash(pickle.loads(pickle.dumps(msg)))
