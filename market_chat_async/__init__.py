"""Asyncio client for Yandex Market chat messages, with the cabinet's limits built in.

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
    RateLimitError,
    ServerError,
    UnauthorizedError,
)
from ._limits import Quota, QuotaState
from ._models import ApiErrorItem, Attachment, ChatMessage, Sender
from ._protocol import RetryPolicy
from ._version import __version__

__all__ = [
    "ApiErrorItem",
    "Attachment",
    "BadRequestError",
    "BulkResult",
    "ChatMessage",
    "ForbiddenError",
    "LimiterUnavailableError",
    "MalformedResponseError",
    "MarketApiError",
    "MarketChatClient",
    "MarketConnectionError",
    "NotFoundError",
    "Progress",
    "Quota",
    "QuotaState",
    "RateLimitError",
    "RetryPolicy",
    "Sender",
    "ServerError",
    "UnauthorizedError",
    "__version__",
]
