"""The one place that knows the Market's wire format: a single configured cattrs converter.

Rules registered here, not on the classes:

* keys are camelCase on the wire (``messageId``) and snake_case in Python (``message_id``);
* ``createdAt`` is ISO 8601 with an offset (``+03:00`` or ``Z``, fractional seconds allowed) and
  becomes an aware ``datetime`` that keeps that offset; a time without an offset is refused;
* ints and strings are taken as they are: ``"5"`` is not an int and ``5`` is not a string, so a
  changed API shows up as an error instead of being quietly coerced;
* ``payload`` absent or ``null`` is an empty tuple;
* unknown keys are not errors: they land in ``ChatMessage.extra``, and a sender this release does
  not know becomes a pseudo-member of ``Sender`` (see there).

>>> msg = converter.structure(
...     {"messageId": 7, "createdAt": "2017-11-21T00:00:00+03:00", "sender": "CUSTOMER",
...      "message": "hi"},
...     ChatMessage,
... )
>>> msg.message_id, msg.created_at.isoformat(), msg.sender
(7, '2017-11-21T00:00:00+03:00', <Sender.CUSTOMER: 'CUSTOMER'>)
>>> converter.unstructure(msg)
{'messageId': 7, 'createdAt': '2017-11-21T00:00:00+03:00', 'sender': 'CUSTOMER', 'message': 'hi'}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from ._models import ApiErrorItem, Attachment, ChatMessage, Sender

__all__ = ["converter", "make_converter", "to_camel"]

T = TypeVar("T")


def to_camel(name: str) -> str:
    """``message_id`` -> ``messageId``.

    >>> to_camel("created_at")
    'createdAt'
    """
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def _strict(kind: type[T]) -> Callable[[Any, type[T]], T]:
    def structure(value: Any, _: type[T]) -> T:
        # bool is an int subclass, but `true` is never a valid id or size.
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return structure


def _structure_datetime(value: Any, _: type[datetime]) -> datetime:
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO 8601 string, got {type(value).__name__}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"date-time {value!r} has no UTC offset")
    return parsed


def _structure_sender(value: Any, _: type[Sender]) -> Sender:
    if not isinstance(value, str):
        raise TypeError(f"expected a sender string, got {type(value).__name__}")
    return Sender(value)


def make_converter(*, forbid_extra_keys: bool = False) -> cattrs.Converter:
    """Build the converter; tests build a strict twin (``forbid_extra_keys=True``) to catch drift.

    >>> make_converter(forbid_extra_keys=True).structure({"code": "X"}, ApiErrorItem)
    ApiErrorItem(code='X', message=None)
    """
    conv = cattrs.Converter(forbid_extra_keys=forbid_extra_keys)
    conv.register_structure_hook(int, _strict(int))
    conv.register_structure_hook(str, _strict(str))
    conv.register_structure_hook(datetime, _structure_datetime)
    conv.register_unstructure_hook(datetime, datetime.isoformat)
    conv.register_structure_hook(Sender, _structure_sender)
    conv.register_unstructure_hook(Sender, lambda sender: sender.value)

    def camel(cls: type[Any]) -> dict[str, Any]:
        return {a.name: override(rename=to_camel(a.name)) for a in attrs.fields(cls)}

    for cls in (Attachment, ApiErrorItem):
        conv.register_structure_hook(cls, make_dict_structure_fn(cls, conv, **camel(cls)))
        conv.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, conv, **camel(cls)))

    def structure_payload(value: Any, _: Any) -> tuple[Attachment, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise TypeError(f"expected a list of attachments, got {type(value).__name__}")
        return tuple(conv.structure(item, Attachment) for item in value)

    fields = camel(ChatMessage)
    fields["extra"] = override(omit=True)
    structure_fields = dict(
        fields, payload=override(rename="payload", struct_hook=structure_payload)
    )
    known = frozenset(to_camel(a.name) for a in attrs.fields(ChatMessage) if a.name != "extra")
    structure_base = make_dict_structure_fn(ChatMessage, conv, **structure_fields)
    unstructure_base = make_dict_unstructure_fn(
        ChatMessage, conv, _cattrs_omit_if_default=True, **fields
    )

    def structure_message(value: Any, _: type[ChatMessage]) -> ChatMessage:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a message object, got {type(value).__name__}")
        if forbid_extra_keys:
            unknown = sorted(set(value) - known)
            if unknown:
                raise cattrs.ForbiddenExtraKeysError("", ChatMessage, set(unknown))
        msg = structure_base(value, ChatMessage)
        extra = {k: v for k, v in value.items() if k not in known}
        return attrs.evolve(msg, extra=extra) if extra else msg

    def unstructure_message(msg: ChatMessage) -> dict[str, Any]:
        data = unstructure_base(msg)
        for key, val in msg.extra.items():
            data.setdefault(key, val)
        return data

    conv.register_structure_hook(ChatMessage, structure_message)
    conv.register_unstructure_hook(ChatMessage, unstructure_message)
    return conv


converter = make_converter()
"""The production converter: tolerant of fields the service adds later."""
