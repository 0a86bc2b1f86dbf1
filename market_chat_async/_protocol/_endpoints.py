"""Each chat method described once, as data, and the requests built from them.

An :class:`Endpoint` is everything the funnel needs to send a method: its operation name (which
is also its quota's resource name), HTTP method, path, query parameters, body kind, documented
hourly quota, and whether it acts on the customer's side (then it is never sent twice). A new
method is one more line in :data:`ENDPOINTS` and one small builder function below.

Builders validate every value the way the official schema does, so a bad id, page size, filter
or text fails with ``TypeError`` / ``ValueError`` before anything is sent.

>>> request = message_request(12345, 2, 3)
>>> request.endpoint.operation, request.path, dict(request.params)
('getChatMessage', '/v2/businesses/12345/chats/message', {'chatId': '2', 'messageId': '3'})
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final, Literal, TypeVar

import attrs

from market_chat_async._limits import Quota
from market_chat_async._models import ChatContextType, ChatStatus, ChatType, OpenEnum

__all__ = [
    "CREATE_CHAT",
    "DEFAULT_QUOTAS",
    "ENDPOINTS",
    "GET_CHAT",
    "GET_CHATS",
    "GET_CHAT_HISTORY",
    "GET_CHAT_MESSAGE",
    "INT64_MAX",
    "MAX_FILE_BYTES",
    "MAX_TEXT_LENGTH",
    "SEND_FILE",
    "SEND_MESSAGE",
    "ApiRequest",
    "ChatFilters",
    "Endpoint",
    "FilePart",
    "chat_request",
    "chats_request",
    "create_chat_request",
    "history_request",
    "message_request",
    "send_file_request",
    "send_message_request",
    "validate_id",
]

INT64_MAX: Final = 2**63 - 1
MAX_TEXT_LENGTH: Final = 4096  # SendMessageToChatRequest.message: 1..4096 characters
MAX_FILE_BYTES: Final = 5 * 1024 * 1024  # SendFileToChatRequest.file: "at most 5 MB"

BodyKind = Literal["none", "json", "multipart"]


@attrs.frozen
class Endpoint:
    """One API method: enough to send it and to keep its quota.

    >>> GET_CHAT_HISTORY.hourly_quota, GET_CHAT_HISTORY.writes
    (10000, False)
    """

    operation: str
    method: Literal["GET", "POST"]
    path: str  # with a {businessId} placeholder
    query: tuple[str, ...]
    body: BodyKind
    hourly_quota: int
    writes: bool = False  # acts on the customer's side: retried only when it surely did not act

    def path_for(self, business_id: int) -> str:
        """The path for one cabinet."""
        return self.path.replace("{businessId}", str(business_id))


_B = "/v2/businesses/{businessId}"
GET_CHATS = Endpoint("getChats", "POST", f"{_B}/chats", ("limit", "page_token"), "json", 5000)
GET_CHAT = Endpoint("getChat", "GET", f"{_B}/chat", ("chatId",), "none", 1000)
GET_CHAT_HISTORY = Endpoint(
    "getChatHistory", "POST", f"{_B}/chats/history", ("chatId", "limit", "page_token"), "json",
    10000,
)  # fmt: skip
GET_CHAT_MESSAGE = Endpoint(
    "getChatMessage", "GET", f"{_B}/chats/message", ("chatId", "messageId"), "none", 1000
)
SEND_MESSAGE = Endpoint(
    "sendMessageToChat", "POST", f"{_B}/chats/message", ("chatId",), "json", 1000, writes=True
)
SEND_FILE = Endpoint(
    "sendFileToChat", "POST", f"{_B}/chats/file/send", ("chatId",), "multipart", 1000, writes=True
)
CREATE_CHAT = Endpoint("createChat", "POST", f"{_B}/chats/new", (), "json", 1000, writes=True)

ENDPOINTS: Final[Mapping[str, Endpoint]] = MappingProxyType(
    {
        e.operation: e
        for e in (
            GET_CHATS,
            GET_CHAT,
            GET_CHAT_HISTORY,
            GET_CHAT_MESSAGE,
            SEND_MESSAGE,
            SEND_FILE,
            CREATE_CHAT,
        )
    }
)
"""Every chat method by operation name."""

DEFAULT_QUOTAS: Final[Mapping[str, Quota]] = MappingProxyType(
    {name: Quota(limit=e.hourly_quota, period=3600.0) for name, e in ENDPOINTS.items()}
)
"""The documented resource quota of every chat method, per cabinet, by operation name.

>>> DEFAULT_QUOTAS["getChats"].limit, DEFAULT_QUOTAS["getChatHistory"].limit
(5000, 10000)
"""


@attrs.frozen
class FilePart:
    """A file to upload as the multipart field ``file``."""

    filename: str
    content: bytes = attrs.field(repr=lambda content: f"<{len(content)} bytes>")
    content_type: str = "application/octet-stream"


@attrs.frozen(slots=False)  # one per request: attrs inits a dict-backed frozen class faster
class ApiRequest:
    """One call of an endpoint, validated and ready to send (no HTTP library involved)."""

    endpoint: Endpoint
    business_id: int
    params: Mapping[str, str] = attrs.field(factory=dict)
    json: Any = None
    file: FilePart | None = None

    @property
    def path(self) -> str:
        """The URL path, cabinet filled in."""
        return self.endpoint.path_for(self.business_id)


def validate_id(name: str, value: object) -> int:
    """Check an id the way the API's schema does (int64, minimum 1), before anything is sent.

    >>> validate_id("chat_id", 5)
    5
    >>> validate_id("chat_id", True)
    Traceback (most recent call last):
    TypeError: chat_id must be an int, not bool
    >>> validate_id("chat_id", 0)
    Traceback (most recent call last):
    ValueError: chat_id must be between 1 and 9223372036854775807, got 0
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 1 <= value <= INT64_MAX:
        raise ValueError(f"{name} must be between 1 and {INT64_MAX}, got {value}")
    return value


def _page_size(name: str, value: object, most: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 1 <= value <= most:
        raise ValueError(f"{name} must be between 1 and {most}, got {value}")
    return value


def _page_token(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"page_token must be a non-empty string or None, got {value!r}")
    return value


E = TypeVar("E", bound=OpenEnum)


def _enum_filter(name: str, values: Iterable[E | str] | None, kind: type[E]) -> list[str] | None:
    """A filter list: members (a pseudo-member the service added counts) or their known
    string values; not empty, repeats dropped."""
    if values is None:
        return None
    if isinstance(values, str):
        raise TypeError(f"{name} must be a list of {kind.__name__} values, not a single string")
    out: list[str] = []
    for value in values:
        if isinstance(value, kind):
            text = value.value
        elif isinstance(value, str) and value in kind.__members__:
            text = value
        else:
            known = ", ".join(kind.__members__)
            raise ValueError(f"{name}: {value!r} is not a {kind.__name__} ({known})")
        if text not in out:
            out.append(text)
    if not out:
        raise ValueError(f"{name} must not be empty; give None for no filter")
    return out


def _context_filter(values: Iterable[Any] | None) -> list[dict[str, Any]] | None:
    if values is None:
        return None
    out: list[dict[str, Any]] = []
    for value in values:
        if isinstance(value, Mapping):
            kind, ident = value.get("type"), value.get("id")
        elif isinstance(value, tuple) and len(value) == 2:
            kind, ident = value
        else:
            raise TypeError(f"contexts: expected (type, id) pairs, got {value!r}")
        if kind not in (ChatContextType.ORDER, ChatContextType.RETURN):
            raise ValueError(f"contexts: type must be ORDER or RETURN, got {kind!r}")
        item = {"type": str(kind), "id": validate_id("contexts id", ident)}
        if item not in out:
            out.append(item)
    if not out:
        raise ValueError("contexts must not be empty; give None for no filter")
    return out


def message_request(business_id: int, chat_id: int, message_id: int) -> ApiRequest:
    """getChatMessage: one message of a chat."""
    params = {
        "chatId": str(validate_id("chat_id", chat_id)),
        "messageId": str(validate_id("message_id", message_id)),
    }
    return ApiRequest(GET_CHAT_MESSAGE, validate_id("business_id", business_id), params)


def chat_request(business_id: int, chat_id: int) -> ApiRequest:
    """getChat: one chat."""
    params = {"chatId": str(validate_id("chat_id", chat_id))}
    return ApiRequest(GET_CHAT, validate_id("business_id", business_id), params)


@attrs.frozen
class ChatFilters:
    """getChats' body, validated once for every page of one listing.

    >>> ChatFilters.of(statuses=["NEW", ChatStatus.NEW]).body()
    {'statuses': ['NEW']}
    """

    types: list[str] | None = None
    statuses: list[str] | None = None
    context_types: list[str] | None = None
    contexts: list[dict[str, Any]] | None = None

    @classmethod
    def of(
        cls,
        *,
        types: Iterable[ChatType | str] | None = None,
        statuses: Iterable[ChatStatus | str] | None = None,
        context_types: Iterable[ChatContextType | str] | None = None,
        contexts: Iterable[Any] | None = None,
    ) -> ChatFilters:
        """Validate the filters; see :meth:`MarketChatClient.iter_chats`."""
        return cls(
            _enum_filter("types", types, ChatType),
            _enum_filter("statuses", statuses, ChatStatus),
            _enum_filter("context_types", context_types, ChatContextType),
            _context_filter(contexts),
        )

    def body(self) -> dict[str, Any]:
        """The request body: only the filters that are set."""
        fields = {
            "types": self.types,
            "statuses": self.statuses,
            "contextTypes": self.context_types,
            "contexts": self.contexts,
        }
        return {key: value for key, value in fields.items() if value is not None}


def chats_request(
    business_id: int, filters: ChatFilters, *, page_size: int, page_token: str | None = None
) -> ApiRequest:
    """getChats: one page of the cabinet's chats (``page_size`` 1..20)."""
    params = {"limit": str(_page_size("page_size", page_size, 20))}
    if (token := _page_token(page_token)) is not None:
        params["page_token"] = token
    return ApiRequest(GET_CHATS, validate_id("business_id", business_id), params, filters.body())


def history_request(
    business_id: int,
    chat_id: int,
    *,
    message_id_from: int | None = None,
    page_size: int,
    page_token: str | None = None,
) -> ApiRequest:
    """getChatHistory: one page of a chat's messages, oldest first (``page_size`` 1..100)."""
    params = {
        "chatId": str(validate_id("chat_id", chat_id)),
        "limit": str(_page_size("page_size", page_size, 100)),
    }
    if (token := _page_token(page_token)) is not None:
        params["page_token"] = token
    body = {}
    if message_id_from is not None:
        body["messageIdFrom"] = validate_id("message_id_from", message_id_from)
    return ApiRequest(GET_CHAT_HISTORY, validate_id("business_id", business_id), params, body)


def send_message_request(business_id: int, chat_id: int, text: str) -> ApiRequest:
    """sendMessageToChat: ``text`` of 1 to 4,096 characters."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    if not 1 <= len(text) <= MAX_TEXT_LENGTH:
        raise ValueError(f"text must be 1 to {MAX_TEXT_LENGTH} characters, got {len(text)}")
    params = {"chatId": str(validate_id("chat_id", chat_id))}
    body = {"message": text}
    return ApiRequest(SEND_MESSAGE, validate_id("business_id", business_id), params, body)


def send_file_request(business_id: int, chat_id: int, file: FilePart) -> ApiRequest:
    """sendFileToChat: a file of at most 5 MB, as the multipart field ``file``."""
    if len(file.content) > MAX_FILE_BYTES:
        raise ValueError(
            f"file {file.filename!r} has {len(file.content)} bytes; the Market accepts at most "
            f"{MAX_FILE_BYTES} (5 MB)"
        )
    if not file.content:
        raise ValueError(f"file {file.filename!r} is empty")
    params = {"chatId": str(validate_id("chat_id", chat_id))}
    return ApiRequest(SEND_FILE, validate_id("business_id", business_id), params, file=file)


def create_chat_request(
    business_id: int, *, order_id: int | None = None, return_id: int | None = None
) -> ApiRequest:
    """createChat: a chat about exactly one order or return."""
    if (order_id is None) == (return_id is None):
        raise ValueError("give exactly one of order_id and return_id")
    if order_id is not None:
        context = {"type": "ORDER", "id": validate_id("order_id", order_id)}
    else:
        context = {"type": "RETURN", "id": validate_id("return_id", return_id)}
    body = {"context": context}
    return ApiRequest(CREATE_CHAT, validate_id("business_id", business_id), json=body)
