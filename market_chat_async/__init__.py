"""Asyncio client for Yandex Market chats, with the cabinet's limits built in.

The HTTP stack (aiohttp) loads with the first client's first request, so
``import market_chat_async`` and the command line's ``--help`` stay quick.

>>> import market_chat_async
>>> market_chat_async.Sender.CUSTOMER.value
'CUSTOMER'
"""

from ._bulk import BulkResult, Progress
from ._client import MarketChatClient
from ._errors import (
    BadRequestError,
    ForbiddenError,
    LimiterUnavailableError,
    MalformedResponseError,
    MarketApiError,
    MarketConnectionError,
    NotFoundError,
    OutcomeUnknownError,
    RateLimitError,
    ServerError,
    UnauthorizedError,
)
from ._limits import Quota, QuotaState
from ._models import (
    ApiErrorItem,
    Attachment,
    Chat,
    ChatContext,
    ChatContextType,
    ChatMessage,
    ChatStatus,
    ChatType,
    Customer,
    Sender,
)
from ._protocol import DEFAULT_QUOTAS
from ._retry import RetryPolicy
from ._transport import AiohttpTransport, HttpRequest, HttpResponse, Transport
from ._version import __version__
from ._wire import to_api_dict

__all__ = [
    "DEFAULT_QUOTAS",
    "AiohttpTransport",
    "ApiErrorItem",
    "Attachment",
    "BadRequestError",
    "BulkResult",
    "Chat",
    "ChatContext",
    "ChatContextType",
    "ChatMessage",
    "ChatStatus",
    "ChatType",
    "Customer",
    "ForbiddenError",
    "HttpRequest",
    "HttpResponse",
    "LimiterUnavailableError",
    "MalformedResponseError",
    "MarketApiError",
    "MarketChatClient",
    "MarketConnectionError",
    "NotFoundError",
    "OutcomeUnknownError",
    "Progress",
    "Quota",
    "QuotaState",
    "RateLimitError",
    "RetryPolicy",
    "Sender",
    "ServerError",
    "Transport",
    "UnauthorizedError",
    "__version__",
    "to_api_dict",
]
