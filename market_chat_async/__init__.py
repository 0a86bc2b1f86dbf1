"""Asyncio client for Yandex Market chats, with the cabinet's limits built in.

The names below are imported on first use, so ``import market_chat_async`` stays cheap (the
HTTP stack loads with the client).

>>> import market_chat_async
>>> market_chat_async.Sender.CUSTOMER.value
'CUSTOMER'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from ._bulk import BulkResult as BulkResult
    from ._bulk import Progress as Progress
    from ._client import MarketChatClient as MarketChatClient
    from ._errors import (
        BadRequestError as BadRequestError,
    )
    from ._errors import (
        ForbiddenError as ForbiddenError,
    )
    from ._errors import (
        LimiterUnavailableError as LimiterUnavailableError,
    )
    from ._errors import (
        MalformedResponseError as MalformedResponseError,
    )
    from ._errors import (
        MarketApiError as MarketApiError,
    )
    from ._errors import (
        MarketConnectionError as MarketConnectionError,
    )
    from ._errors import (
        NotFoundError as NotFoundError,
    )
    from ._errors import (
        OutcomeUnknownError as OutcomeUnknownError,
    )
    from ._errors import (
        RateLimitError as RateLimitError,
    )
    from ._errors import (
        ServerError as ServerError,
    )
    from ._errors import (
        UnauthorizedError as UnauthorizedError,
    )
    from ._limits import Quota as Quota
    from ._limits import QuotaState as QuotaState
    from ._models import (
        ApiErrorItem as ApiErrorItem,
    )
    from ._models import (
        Attachment as Attachment,
    )
    from ._models import (
        Chat as Chat,
    )
    from ._models import (
        ChatContext as ChatContext,
    )
    from ._models import (
        ChatContextType as ChatContextType,
    )
    from ._models import (
        ChatMessage as ChatMessage,
    )
    from ._models import (
        ChatStatus as ChatStatus,
    )
    from ._models import (
        ChatType as ChatType,
    )
    from ._models import (
        Customer as Customer,
    )
    from ._models import (
        Sender as Sender,
    )
    from ._protocol import DEFAULT_QUOTAS as DEFAULT_QUOTAS
    from ._retry import RetryPolicy as RetryPolicy
    from ._transport import AiohttpTransport as AiohttpTransport
    from ._transport import HttpRequest as HttpRequest
    from ._transport import HttpResponse as HttpResponse
    from ._transport import Transport as Transport
    from ._wire import to_api_dict as to_api_dict

_WHERE = {
    "BulkResult": "_bulk",
    "Progress": "_bulk",
    "MarketChatClient": "_client",
    "BadRequestError": "_errors",
    "ForbiddenError": "_errors",
    "LimiterUnavailableError": "_errors",
    "MalformedResponseError": "_errors",
    "MarketApiError": "_errors",
    "MarketConnectionError": "_errors",
    "NotFoundError": "_errors",
    "OutcomeUnknownError": "_errors",
    "RateLimitError": "_errors",
    "ServerError": "_errors",
    "UnauthorizedError": "_errors",
    "Quota": "_limits",
    "QuotaState": "_limits",
    "ApiErrorItem": "_models",
    "Attachment": "_models",
    "Chat": "_models",
    "ChatContext": "_models",
    "ChatContextType": "_models",
    "ChatMessage": "_models",
    "ChatStatus": "_models",
    "ChatType": "_models",
    "Customer": "_models",
    "Sender": "_models",
    "DEFAULT_QUOTAS": "_protocol._endpoints",
    "RetryPolicy": "_retry",
    "AiohttpTransport": "_transport",
    "HttpRequest": "_transport",
    "HttpResponse": "_transport",
    "Transport": "_transport",
    "to_api_dict": "_wire",
}

__all__ = [*sorted(_WHERE), "__version__"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return __all__
