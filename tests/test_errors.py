"""The error tree: status -> class, plain data, no secrets."""

from __future__ import annotations

import pickle

import pytest

from market_chat_async import (
    ApiErrorItem,
    BadRequestError,
    ForbiddenError,
    MalformedResponseError,
    MarketApiError,
    MarketConnectionError,
    NotFoundError,
    RateLimitError,
    ServerError,
    UnauthorizedError,
)
from market_chat_async._errors import error_class_for

from .conftest import ALL_ERRORS


@pytest.mark.parametrize(("status", "cls"), ALL_ERRORS)
def test_status_maps_to_class(status: int, cls: type[MarketApiError]) -> None:
    assert error_class_for(status) is cls


@pytest.mark.parametrize(
    "cls",
    [
        BadRequestError,
        UnauthorizedError,
        ForbiddenError,
        NotFoundError,
        RateLimitError,
        ServerError,
        MalformedResponseError,
        MarketConnectionError,
    ],
)
def test_every_error_is_a_market_api_error(cls: type[MarketApiError]) -> None:
    assert issubclass(cls, MarketApiError)


def test_errors_pickle_with_their_data() -> None:
    err = RateLimitError(
        420,
        [ApiErrorItem("LIMIT_EXCEEDED", "too many")],
        retry_after=30.0,
        reason="quota",
        headers={"x-ratelimit-resource-remaining": "0"},
    )
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is RateLimitError
    assert (again.status, again.errors, again.retry_after, again.reason, again.headers) == (
        420,
        [ApiErrorItem("LIMIT_EXCEEDED", "too many")],
        30.0,
        "quota",
        {"x-ratelimit-resource-remaining": "0"},
    )
    assert str(again) == str(err)


def test_str_names_status_and_errors() -> None:
    err = NotFoundError(404, [ApiErrorItem("NOT_FOUND", "no such message"), ApiErrorItem("X")])
    assert str(err) == "HTTP 404: NOT_FOUND: no such message; X"
    assert str(MarketConnectionError(None, message="timed out")) == "timed out"
