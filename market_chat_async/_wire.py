"""The one place that knows the Market's wire format: a single configured cattrs converter.

Rules registered here, not on the classes:

* keys are camelCase on the wire (``messageId``) and snake_case in Python (``message_id``);
* dates (``createdAt``, ``updatedAt``) are ISO 8601 with an offset (``+03:00`` or ``Z``,
  fractional seconds allowed) and become aware ``datetime`` objects that keep that offset and
  the text they were read from, so writing them back gives the API's own text; a time without
  an offset is refused;
* ints and strings are taken as they are: ``"5"`` is not an int and ``5`` is not a string, so a
  changed API shows up as an error instead of being quietly coerced;
* ``payload`` absent or ``null`` is an empty tuple;
* unknown keys are not errors: they land in the model's ``extra`` (``ChatMessage``, ``Chat``),
  and an enum value this release does not know becomes a pseudo-member (see ``OpenEnum``).

>>> msg = converter.structure(
...     {"messageId": 7, "createdAt": "2017-11-21T00:00:00.002Z", "sender": "CUSTOMER",
...      "message": "hi"},
...     ChatMessage,
... )
>>> msg.message_id, msg.created_at.isoformat(), msg.sender
(7, '2017-11-21T00:00:00.002000+00:00', <Sender.CUSTOMER: 'CUSTOMER'>)
>>> to_api_dict(msg)
{'messageId': 7, 'createdAt': '2017-11-21T00:00:00.002Z', 'sender': 'CUSTOMER', 'message': 'hi'}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from ._models import (
    ApiErrorItem,
    Attachment,
    Chat,
    ChatContext,
    ChatMessage,
    Customer,
    OpenEnum,
)

__all__ = [
    "ApiDateTime",
    "converter",
    "make_converter",
    "parse_api_datetime",
    "to_api_dict",
    "to_camel",
]

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
        if value.__class__ is kind or (isinstance(value, kind) and not isinstance(value, bool)):
            return value
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")

    return structure


class ApiDateTime(datetime):
    """A ``datetime`` read from the API that remembers the text it was read from.

    It is a ``datetime`` in every way; :func:`to_api_dict` writes ``api_text`` back, so what the
    API sent (``...01.002Z``) is what gets written, not a re-formatting of it.

    >>> when = parse_api_datetime("2024-05-01T10:00:01.002Z")
    >>> when.api_text, when.isoformat()
    ('2024-05-01T10:00:01.002Z', '2024-05-01T10:00:01.002000+00:00')
    """

    api_text: str


def parse_api_datetime(value: object) -> datetime:
    """The one date rule: an ISO 8601 string with a UTC offset, to an aware ``datetime``.

    >>> parse_api_datetime("2017-11-21T00:00:00+03:00").utcoffset()
    datetime.timedelta(seconds=10800)
    >>> parse_api_datetime("2017-11-21T00:00:00")
    Traceback (most recent call last):
    ValueError: date-time '2017-11-21T00:00:00' has no UTC offset
    """
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO 8601 string, got {type(value).__name__}")
    parsed = ApiDateTime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"date-time {value!r} has no UTC offset")
    parsed.api_text = value
    return parsed


def _unstructure_datetime(value: datetime) -> str:
    text: str | None = getattr(value, "api_text", None)
    return text if text is not None else value.isoformat()


def _structure_open_enum(value: Any, cls: type[OpenEnum]) -> OpenEnum:
    if not isinstance(value, str):
        raise TypeError(f"expected a {cls.__name__} string, got {type(value).__name__}")
    known: OpenEnum | None = cls._value2member_map_.get(value)  # type: ignore[assignment]
    return known if known is not None else cls(value)  # Enum's __call__ only when it must


def make_converter(*, forbid_extra_keys: bool = False) -> cattrs.Converter:
    """Build the converter; tests build a strict twin (``forbid_extra_keys=True``) to catch drift.

    >>> make_converter(forbid_extra_keys=True).structure({"code": "X"}, ApiErrorItem)
    ApiErrorItem(code='X', message=None)
    """
    # Without detailed validation cattrs generates straight-line code: 2x faster, and an error
    # still names what was wrong (the first problem rather than all of them).
    conv = cattrs.Converter(forbid_extra_keys=forbid_extra_keys, detailed_validation=False)
    conv.register_structure_hook(int, _strict(int))
    conv.register_structure_hook(str, _strict(str))
    conv.register_structure_hook(datetime, lambda value, _: parse_api_datetime(value))
    conv.register_unstructure_hook(datetime, _unstructure_datetime)
    # On the base class, so singledispatch prefers it to the ``str`` rule for every OpenEnum.
    conv.register_structure_hook(OpenEnum, _structure_open_enum)
    conv.register_unstructure_hook(OpenEnum, str)

    def camel(cls: type[Any]) -> dict[str, Any]:
        return {a.name: override(rename=to_camel(a.name)) for a in attrs.fields(cls)}

    for cls in (Attachment, ApiErrorItem, Customer, ChatContext):
        conv.register_structure_hook(cls, make_dict_structure_fn(cls, conv, **camel(cls)))
        conv.register_unstructure_hook(
            cls, make_dict_unstructure_fn(cls, conv, _cattrs_omit_if_default=True, **camel(cls))
        )

    def with_extra(cls: type[Any], **special: Any) -> None:
        """Structure ``cls`` keeping unknown keys in its ``extra``, and write them back."""
        fields = camel(cls)
        fields["extra"] = override(omit=True)
        known = frozenset(to_camel(a.name) for a in attrs.fields(cls) if a.name != "extra")
        structure_base = make_dict_structure_fn(cls, conv, **dict(fields, **special))
        unstructure_base = make_dict_unstructure_fn(
            cls, conv, _cattrs_omit_if_default=True, **fields
        )

        def structure(value: Any, _: type[Any]) -> Any:
            if value.__class__ is not dict and not isinstance(value, Mapping):
                raise TypeError(f"expected a {cls.__name__} object, got {type(value).__name__}")
            if forbid_extra_keys:
                unknown = sorted(set(value) - known)
                if unknown:
                    raise cattrs.ForbiddenExtraKeysError("", cls, set(unknown))
            model = structure_base(value, cls)
            if known.issuperset(value):
                return model
            extra = {k: v for k, v in value.items() if k not in known}
            return attrs.evolve(model, extra=extra)

        def unstructure(model: Any) -> dict[str, Any]:
            data: dict[str, Any] = unstructure_base(model)
            for key, val in model.extra.items():
                data.setdefault(key, val)
            return data

        conv.register_structure_hook(cls, structure)
        conv.register_unstructure_hook(cls, unstructure)

    attachment = conv.get_structure_hook(Attachment)

    def structure_payload(value: Any, _: Any) -> tuple[Attachment, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise TypeError(f"expected a list of attachments, got {type(value).__name__}")
        return tuple([attachment(item, Attachment) for item in value])

    with_extra(ChatMessage, payload=override(rename="payload", struct_hook=structure_payload))
    with_extra(Chat)
    return conv


converter = make_converter()
"""The production converter: tolerant of fields the service adds later."""


def to_api_dict(model: ChatMessage | Chat) -> dict[str, Any]:
    """A model as the API's own JSON object: camelCase keys, dates in the text the API sent,
    unknown fields kept.

    >>> from datetime import datetime, timezone
    >>> from ._models import Sender
    >>> when = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> to_api_dict(ChatMessage(message_id=1, created_at=when, sender=Sender.PARTNER))
    {'messageId': 1, 'createdAt': '2024-01-01T00:00:00+00:00', 'sender': 'PARTNER'}
    """
    data: dict[str, Any] = converter.unstructure(model)
    return data
