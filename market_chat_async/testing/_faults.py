"""Injected misbehaviour: :class:`Fault` values and the queues that hand them to requests."""

from __future__ import annotations

import collections
from typing import ClassVar, Literal

import attrs

from ._quota import OPERATIONS

FaultKind = Literal["error", "drop", "malformed", "wrong_shape", "slow", "redirect"]


@attrs.frozen
class Fault:
    """One injected misbehaviour, used by exactly one request (see :meth:`MarketTestServer.inject`).

    A fault is taken by the next request that passes credentials, validation and the limits,
    so it is counted in the quota like any answer the "backend" gives. The constants:

    * ``Fault.SERVER_ERROR``: ``500`` with ``{"status": "ERROR", "errors": [...]}``.
    * ``Fault.UNAVAILABLE``: ``503`` with an error body.
    * ``Fault.DROP``: the connection is closed without a byte of answer. Note that aiohttp's
      ``ClientSession`` silently resends an idempotent request once when that happens, so a plain
      ``session.get`` needs two ``DROP`` in a row before it raises ``ServerDisconnectedError``.
    * ``Fault.MALFORMED``: ``200``, ``Content-Type: application/json``, body not JSON.
    * ``Fault.WRONG_SHAPE``: ``200`` with ``{"status": "OK", "result": {"messageId": "x"}}``.

    and the factories ``Fault.slow(seconds)`` (answer normally, ``seconds`` later: for client
    timeouts), ``Fault.error(status)`` (any status with an error body) and ``Fault.redirect(url)``
    (``307 Temporary Redirect`` to ``url``: for a client's redirect and credential handling).

    By default a fault takes the place of the operation: a write (``sendMessageToChat``,
    ``sendFileToChat``, ``createChat``) that gets one has **not** acted. :meth:`after_acting`
    makes the server act first and only then answer with the fault, as a service that failed
    after committing would: the message is in the history although the client saw a ``500``, a
    dropped connection or (with ``slow``) a timeout.

    >>> Fault.slow(30.0).seconds
    30.0
    >>> Fault.error(423).status
    423
    >>> Fault.DROP.kind
    'drop'
    >>> Fault.SERVER_ERROR.after_acting().after
    True
    """

    kind: FaultKind
    status: int = 200
    seconds: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    code: str = ""
    url: str | None = None
    after: bool = False
    """``True``: the server performs the operation, then answers with the fault."""

    SERVER_ERROR: ClassVar[Fault]
    UNAVAILABLE: ClassVar[Fault]
    DROP: ClassVar[Fault]
    MALFORMED: ClassVar[Fault]
    WRONG_SHAPE: ClassVar[Fault]

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Answer normally, but only after ``seconds`` more (on top of the server's latency).

        >>> Fault.slow(5)
        Fault(kind='slow', status=200, seconds=5, code='', url=None, after=False)
        """
        return cls("slow", seconds=seconds)

    @classmethod
    def error(cls, status: int, code: str | None = None) -> Fault:
        """Answer ``status`` with a documented error body whose code is ``code``.

        >>> Fault.error(423, "LOCKED").code
        'LOCKED'
        """
        if not 400 <= status <= 599:
            raise ValueError(f"an error fault needs a 4xx or 5xx status, got {status}")
        return cls("error", status=status, code=code or f"HTTP_{status}")

    @classmethod
    def redirect(cls, url: str) -> Fault:
        """Answer ``307 Temporary Redirect`` with ``Location: url`` (once: it is one fault).

        >>> Fault.redirect("http://127.0.0.1:9/elsewhere").status
        307
        """
        return cls("redirect", status=307, url=url)

    def after_acting(self) -> Fault:
        """This fault, applied after the server has performed the operation.

        For reads nothing changes; for writes the message is appended (or the chat created)
        and then the client gets the fault, so a test can check that a client does not send
        the same message twice when the outcome was unknown.

        >>> Fault.DROP.after_acting()
        Fault(kind='drop', status=200, seconds=0.0, code='', url=None, after=True)
        """
        return attrs.evolve(self, after=True)


Fault.SERVER_ERROR = Fault.error(500, "INTERNAL_ERROR")
Fault.UNAVAILABLE = Fault.error(503, "SERVICE_UNAVAILABLE")
Fault.DROP = Fault("drop")
Fault.MALFORMED = Fault("malformed")
Fault.WRONG_SHAPE = Fault("wrong_shape")


class FaultQueues:
    """Faults waiting for requests: one queue for any operation, one per operation.

    A request takes from its own operation's queue first, else from the shared one, so
    ``inject(f, operation="sendMessageToChat")`` cannot be used up by a read.

    >>> queues = FaultQueues()
    >>> queues.put([Fault.DROP], None)
    >>> queues.put([Fault.SERVER_ERROR], "createChat")
    >>> queues.take("createChat").status, queues.take("getChat").kind, queues.pending()
    (500, 'drop', 0)
    """

    def __init__(self) -> None:
        self._any: collections.deque[Fault] = collections.deque()
        self._by_operation: dict[str, collections.deque[Fault]] = {
            name: collections.deque() for name in OPERATIONS
        }

    def put(self, faults: list[Fault], operation: str | None) -> None:
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"inject() takes Fault values, got {fault!r}")
        if operation is not None and operation not in self._by_operation:
            raise ValueError(f"unknown operation {operation!r}; one of {', '.join(OPERATIONS)}")
        queue = self._any if operation is None else self._by_operation[operation]
        queue.extend(faults)

    def take(self, operation: str) -> Fault | None:
        own = self._by_operation[operation]
        if own:
            return own.popleft()
        return self._any.popleft() if self._any else None

    def pending(self, operation: str | None = None) -> int:
        if operation is None:
            return len(self._any) + sum(map(len, self._by_operation.values()))
        return len(self._by_operation[operation])
