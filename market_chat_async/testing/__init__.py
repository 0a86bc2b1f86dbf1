"""A bundled fake of the Market chat API, for tests: the library's and yours.

:class:`MarketTestServer` is an in-memory, aiohttp.web model of the seven chat methods of the
Market partner API as the official OpenAPI files describe them:

========================= ========================================================= ==========
operation                 request                                                   documented
========================= ========================================================= ==========
``getChats``              ``POST /v2/businesses/{businessId}/chats`` + filters      5,000/h
``getChat``               ``GET  /v2/businesses/{businessId}/chat?chatId=``         1,000/h
``getChatHistory``        ``POST /v2/businesses/{businessId}/chats/history``        10,000/h
``getChatMessage``        ``GET  /v2/businesses/{businessId}/chats/message``        1,000/h
``sendMessageToChat``     ``POST /v2/businesses/{businessId}/chats/message``        1,000/h
``sendFileToChat``        ``POST /v2/businesses/{businessId}/chats/file/send``      1,000/h
``createChat``            ``POST /v2/businesses/{businessId}/chats/new``            1,000/h
========================= ========================================================= ==========

with credentials, parameter and body validation, a resource quota per operation and cabinet
and one parallel-request cap per cabinet shared by all operations, with their ``420`` answers
and ``X-RateLimit-Resource-*`` headers, ``404`` for unknown chats and messages and
``200 {"status": "OK", "result": {...}}`` otherwise. It writes its JSON by hand and imports
nothing from the library's private modules, so a parsing bug in the client cannot hide by being
on both sides of the wire.

Usage, on a real localhost port::

    from market_chat_async import MarketChatClient
    from market_chat_async.testing import Fault, MarketTestServer, serve

    async def test_my_service() -> None:
        server = MarketTestServer(quota=1000, period=3600.0)
        async with serve(server) as running:
            async with MarketChatClient(api_key="test-api-key", base_url=running.url) as client:
                server.inject(Fault.SERVER_ERROR)  # the next request gets a 500
                message = await client.get_message(12345, 1, 2)
        assert server.stats.requests == 2  # the 500, then the retry

or from a shell: ``python -m market_chat_async.testing --port 8080 --quota 1000``.

Data
    A cabinet holds the chats :meth:`~MarketTestServer.add_chat` (or
    :meth:`~MarketTestServer.load` with a :func:`corpus`) registered, and createChat created:
    context (``ORDER`` with its order id, ``RETURN`` with return and order id, or ``DIRECT``),
    type, status, customer, dates, and messages in ``messageId`` order. Only these chats exist
    for getChats, getChat, getChatHistory and the writes. getChatMessage answers a registered
    chat's own messages (the same JSON text getChatHistory gives); for any other chat every id
    pair that looks valid has a message (``messages="auto"``): a deterministic synthetic one
    (see :func:`auto_message`), unless :meth:`~MarketTestServer.add_message` stored one for it
    or ``not_found`` lists it.

What each operation does (where the spec is silent, the choice is marked *chosen*)
    * getChats: filters ``contexts``, ``contextTypes``, ``types``, ``statuses`` and the
      deprecated ``orderIds``, each ``null`` or a non-empty array of unique valid items; all
      given filters must match. *Chosen*: chats come in ``chatId`` order, so pages are stable
      while chats change. ``limit`` 1..20 (10); ``page_token`` or ``pageToken``.
    * getChatHistory: messages with ``messageId >= messageIdFrom`` (*chosen*: inclusive;
      default from the first), oldest first, ``limit`` 1..100 (50); the result carries
      ``context``, the deprecated ``orderId`` (when there is an order) and ``paging``.
    * Paging: ``paging.nextPageToken`` is present exactly when another non-empty page follows
      (``"paging": {}`` on the last page); tokens are opaque and tied to the operation (and
      for history to the chat): a foreign one is a ``400``.
    * sendMessageToChat (``{"message": text}``, 1..4,096 characters) and sendFileToChat
      (multipart field ``file``, at most 5 MB = 5,242,880 bytes) append a ``PARTNER`` message
      with the next id of the cabinet (above every id it has) and ``createdAt`` = now, set the
      chat's ``updatedAt`` to it and, *chosen*, its status from ``NEW``,
      ``WAITING_FOR_PARTNER``, ``WAITING_FOR_CUSTOMER`` or ``FINISHED`` to
      ``WAITING_FOR_CUSTOMER`` (a chat waiting for an arbiter or the Market keeps its status);
      ``{"status": "OK"}``.
    * createChat (``{"context": {"type": "ORDER" | "RETURN", "id": n}}``, or the deprecated
      ``{"orderId": n}``): the chat of that context if there is one, else a new ``CHAT`` in
      status ``NEW`` with the next chat id; ``{"chatId": n}``. *Chosen*: any valid id is an
      existing order or return.

Order of checks for each request
    1. ``redirect_to`` set → ``307`` to it (not counted; a request for the target itself is
       answered normally, so a same-origin redirect does not loop).
    2. Credentials: neither ``Api-Key`` nor ``Authorization`` → ``401``; any credential sent
       that is not accepted (or an ``Authorization`` that is not ``Bearer <token>``) → ``403``.
       Not counted.
    3. ``businessId`` not an integer in ``[1, 2**63 - 1]`` written in plain decimal → ``400``.
       Not counted: there is no cabinet to count it against.
    4. The operation's quota (if set) used up → ``420``
       ``Resource limit exceeded for businessId ...``. Not counted. Otherwise the request is
       counted now, at its arrival time, against its operation's quota.
    5. Parallel cap (``max_parallel`` set): as many requests of the cabinet in flight, of any
       operation, as the cap (:meth:`~MarketTestServer.hold_parallel` slots included) →
       ``420`` ``Hit rate limit of 4 parallel requests for businessId 12345``. This one **is**
       counted.
    6. The request is now *in flight* until its response has been handed to the socket. Its
       query and body are read; the next injected :class:`Fault` for it, if any, is taken
       (not for an invalid request); it waits ``latency`` seconds. Invalid query or body →
       ``400`` (counted).
    7. A fault decides the answer instead of the operation (counted), unless made with
       :meth:`Fault.after_acting`: then the operation is performed first.
    8. ``404`` if the chat or message does not exist, else ``200``. Both counted.

So a request spends quota once it passed the credentials, named a valid cabinet and found quota
left; only the quota's own ``420`` (and ``401``/``403``/``307``) is free. The ``fixed`` window
allows ``quota`` counted requests in each ``[k*period, (k+1)*period)`` of the server clock; the
``sliding`` window allows ``quota`` in every ``(t - period, t]``. The docs do not say which one
the service uses, so test a client against both.

Headers
    Every response carries a ``Date`` read from the server clock (``epoch`` + loop time since
    the server started, whole seconds, rounded down), so it agrees with ``looptime``'s virtual
    time. When the operation has a quota (``quota=`` for getChatMessage, ``quotas=`` for any;
    ``quotas="documented"`` gives all seven theirs, as the real API always sends them) and the
    path names a valid cabinet, responses also carry that resource's
    ``X-RateLimit-Resource-Limit``, ``-Remaining`` (after counting this request) and
    ``-Until``: the end of the fixed window, or for the sliding window the moment its oldest
    counted request leaves it (now + period when it is empty), rounded *up* to a whole second.
    ``Until - Date`` is therefore never shorter than the real wait.

Faults (:meth:`~MarketTestServer.inject`, first in first out, one per request; with
``operation=`` only for that operation's requests)
    ``SERVER_ERROR`` ``500`` with an error body; ``UNAVAILABLE`` ``503``; ``Fault.error(status)``
    any status with an error body; ``DROP`` closes the connection without an answer;
    ``MALFORMED`` ``200`` ``application/json`` whose body is not JSON; ``WRONG_SHAPE`` ``200``
    valid JSON of the wrong shape; ``Fault.slow(seconds)`` answers normally after an extra delay;
    ``Fault.redirect(url)`` answers ``307`` to ``url`` (for a standing redirect of every request,
    set ``redirect_to`` instead). ``fault.after_acting()`` applies any of them after a write
    was performed. aiohttp's ``ClientSession`` resends a GET whose connection was dropped once
    by itself, so it takes two ``DROP`` in a row to make one ``session.get`` fail.

Only the seven routes above are modelled: other methods and paths get aiohttp's own plain
``405``/``404`` and do not appear in :class:`ServerStats`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from . import _quota, _server
from ._cli import _parser, main
from ._corpus import ChatSeed, Corpus, corpus
from ._data import auto_message
from ._faults import Fault
from ._quota import QuotaWindow
from ._running import RunningServer, serve
from ._server import MarketTestServer
from ._stats import ServerStats

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_OAUTH_TOKEN",
    "DOCUMENTED_QUOTAS",
    "OPERATIONS",
    "ChatSeed",
    "Corpus",
    "Fault",
    "MarketTestServer",
    "QuotaWindow",
    "RunningServer",
    "ServerStats",
    "auto_message",
    "corpus",
    "main",
    "serve",
]

DEFAULT_API_KEY: Final = _server.DEFAULT_API_KEY
"""The ``Api-Key`` a :class:`MarketTestServer` accepts unless told otherwise."""

DEFAULT_OAUTH_TOKEN: Final = _server.DEFAULT_OAUTH_TOKEN
"""The ``Authorization: Bearer`` token a :class:`MarketTestServer` accepts unless told otherwise."""

OPERATIONS: Final[tuple[str, ...]] = _quota.OPERATIONS
"""The seven operations by their OpenAPI ``operationId``: the keys of ``quotas=`` and stats."""

DOCUMENTED_QUOTAS: Final[Mapping[str, int]] = _quota.DOCUMENTED_QUOTAS
"""Requests per hour per cabinet of each operation, as the OpenAPI files give them."""

_parser = _parser  # the command line's parser: the docs tests check its options
