"""Every error the client raises, as one tree::

    MarketApiError                 any failure of a Market API call (.status, .errors)
    ├── BadRequestError            400: the request was refused as malformed
    ├── UnauthorizedError          401: no credentials reached the service
    ├── ForbiddenError             403: wrong or expired key, or no access to the cabinet
    ├── NotFoundError              404: no such chat or message
    ├── RateLimitError             420: over the quota or the parallel cap for longer than allowed
    ├── ServerError                5xx, after the retries ran out
    ├── MalformedResponseError     a response that is not the documented JSON
    ├── MarketConnectionError      network failure or timeout, after the retries (status None)
    ├── OutcomeUnknownError        a write (send, create) failed where the service may have
    │                              acted; not retried, so it never happens twice
    └── LimiterUnavailableError    the shared (Redis) limiter cannot be reached; nothing was sent

Other statuses the service documents (405, 415, 423, ...) raise ``MarketApiError`` itself.
Exceptions carry plain data (status, parsed errors, rate-limit headers), never a live response
or an HTTP library's exception (those can hold the request's headers), so they pickle and print
safely; none of them ever holds a credential, even one the server echoed back. Invalid ids are
refused before any request with the built-in ``TypeError`` / ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._models import ApiErrorItem

__all__ = [
    "BadRequestError",
    "ForbiddenError",
    "LimiterUnavailableError",
    "MalformedResponseError",
    "MarketApiError",
    "MarketConnectionError",
    "NotFoundError",
    "OutcomeUnknownError",
    "RateLimitError",
    "ServerError",
    "UnauthorizedError",
    "error_class_for",
]


class MarketApiError(Exception):
    """A Market API call failed; the base of every error this library raises for a call.

    ``status`` is the HTTP status (``None`` when no response arrived), ``errors`` the parsed
    ``errors`` list of the body (empty when the body had none), ``headers`` the response headers
    (credentials are request headers, so they are never here).

    >>> err = MarketApiError(404, [ApiErrorItem("NOT_FOUND", "no such message")])
    >>> str(err)
    'HTTP 404: NOT_FOUND: no such message'
    >>> err.status, err.errors[0].code
    (404, 'NOT_FOUND')
    """

    def __init__(
        self,
        status: int | None,
        errors: Sequence[ApiErrorItem] = (),
        *,
        message: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.errors: list[ApiErrorItem] = list(errors)
        self.headers: dict[str, str] = dict(headers or {})
        self.message = message or _describe(errors) or "no error details in the response"
        super().__init__(status, self.errors, self.message)

    def __str__(self) -> str:
        prefix = f"HTTP {self.status}: " if self.status is not None else ""
        return prefix + self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields would be lost by the default BaseException pickling.
        return (_rebuild, (type(self), self.__dict__))


class BadRequestError(MarketApiError):
    """400: the service refused the request as malformed.

    >>> issubclass(BadRequestError, MarketApiError)
    True
    """


class UnauthorizedError(MarketApiError):
    """401: the request carried no credentials the service recognised as such.

    >>> UnauthorizedError(401).status
    401
    """


class ForbiddenError(MarketApiError):
    """403: the key or token is wrong, expired or lacks access to this cabinet.

    >>> ForbiddenError(403).status
    403
    """


class NotFoundError(MarketApiError):
    """404: no such chat or message in this cabinet.

    >>> NotFoundError(404).status
    404
    """


class ServerError(MarketApiError):
    """5xx: the Market failed, and kept failing through every retry.

    >>> ServerError(503).status
    503
    """


class RateLimitError(MarketApiError):
    """420: the cabinet's quota or parallel cap held a call back longer than allowed.

    Raised only when waiting would exceed the client's ``max_rate_limit_wait``; ``retry_after``
    says how many seconds until a call may go through (``None`` if nobody can tell) and
    ``reason`` is ``"quota"`` or ``"parallel"``.

    >>> err = RateLimitError(420, retry_after=12.0, reason="quota")
    >>> err.retry_after, err.reason
    (12.0, 'quota')
    """

    def __init__(
        self,
        status: int | None = 420,
        errors: Sequence[ApiErrorItem] = (),
        *,
        retry_after: float | None = None,
        reason: str = "quota",
        message: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.retry_after = retry_after
        self.reason = reason
        if message is None and not errors:
            message = f"rate limited ({reason})"
        if retry_after is not None:
            message = f"{message or _describe(errors)}; retry in {retry_after:.1f} s"
        super().__init__(status, errors, message=message, headers=headers)


class MalformedResponseError(MarketApiError):
    """The service answered, but not with the documented JSON.

    The original decoding error is chained as ``__cause__``.

    >>> MalformedResponseError(200, message="body is not JSON").status
    200
    """


class MarketConnectionError(MarketApiError):
    """The request never got an answer (connection failed or dropped, or it timed out).

    Raised after the retries ran out. The network error's type and text are in the message;
    nothing of the HTTP library is chained, since its errors can carry the request's headers.
    ``sent`` is ``False`` when the connection was refused before anything was sent.

    >>> MarketConnectionError(None, message="timed out after 30.0 s").sent
    True
    """

    def __init__(
        self,
        status: int | None = None,
        errors: Sequence[ApiErrorItem] = (),
        *,
        message: str | None = None,
        headers: Mapping[str, str] | None = None,
        sent: bool = True,
    ) -> None:
        self.sent = sent
        super().__init__(status, errors, message=message, headers=headers)


class OutcomeUnknownError(MarketApiError):
    """A write failed in a way that leaves open whether the service carried it out.

    After a 5xx, a timeout or a connection dropped mid-request, a message or file may or may
    not have reached the customer, and a chat may or may not have been created. The client does
    not try again, so nothing ever reaches a customer twice; check (for instance with
    ``iter_history``) before you send again. The failure is chained as ``__cause__``.

    >>> from market_chat_async import ServerError
    >>> err = OutcomeUnknownError.after("sendMessageToChat", ServerError(502))
    >>> err.status, err.operation
    (502, 'sendMessageToChat')
    """

    operation: str = ""

    @classmethod
    def after(cls, operation: str, error: MarketApiError) -> OutcomeUnknownError:
        """The unknown outcome of ``operation`` after ``error``."""
        err = cls(
            error.status,
            error.errors,
            message=(
                f"{operation} may or may not have been carried out ({error}); "
                "it was not retried, so that it never happens twice"
            ),
            headers=error.headers,
        )
        err.operation = operation
        err.__cause__ = error
        return err


class LimiterUnavailableError(MarketApiError):
    """The shared limiter (Redis) could not be reached, so no request was sent.

    The client fails closed: going over the cabinet's quota can lock it out, which is worse than
    failing a call. Opt in to ``redis_fallback=True`` to fall back to the in-process limiter.

    >>> LimiterUnavailableError(None, message="redis://localhost:6379/0 refused").status is None
    True
    """


_BY_STATUS: dict[int, type[MarketApiError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    420: RateLimitError,
}


def error_class_for(status: int) -> type[MarketApiError]:
    """The exception class for an HTTP error status.

    >>> error_class_for(404).__name__, error_class_for(502).__name__, error_class_for(423).__name__
    ('NotFoundError', 'ServerError', 'MarketApiError')
    """
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, MarketApiError)


def _describe(errors: Sequence[ApiErrorItem]) -> str:
    return "; ".join(f"{e.code}: {e.message}" if e.message else e.code for e in errors)


def _rebuild(cls: type[MarketApiError], state: dict[str, Any]) -> MarketApiError:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    Exception.__init__(err, state.get("status"), state.get("errors"), state.get("message"))
    return err
