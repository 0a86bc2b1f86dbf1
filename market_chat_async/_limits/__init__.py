"""Per-cabinet limits: a quota per resource and one parallel cap, kept exactly.

The guarantee, for one cabinet (``businessId``) and every request made through its limiter: **for
each resource (API operation), no more than ``quota.limit`` requests in any window of
``quota.period`` seconds, whether the server counts fixed or sliding windows; and never more than
``max_parallel`` requests in flight, all resources together.**

How it is kept. Each resource has ``limit`` quota tokens. A request takes one before it is sent
and gives it back ``period`` (+ a small ``margin``) seconds *after its response arrived* (or after
it was abandoned). The server counts a request at some moment between sending and response, so
for any ``limit + 1`` requests it counts within ``period`` seconds, the last one sent would have
needed a token while the other ``limit`` still held theirs: impossible. A token bucket such as
``aiolimiter.AsyncLimiter(1000, 3600)`` starts full and refills continuously, so it admits about
2,000 requests in the first hour; this does not.

Server feedback covers what this process cannot see (other processes, a restart mid-window).
When an answer's ``Remaining`` is no less than what our own tokens of that resource leave, the
server knows of nothing we do not, and the tokens alone decide (own requests are never counted
twice). When it is less, someone else is using the cabinet, and ``Remaining`` gives a safe lower
bound of what is left: ``Remaining`` minus every request of ours that overlapped it in flight
(they may or may not be counted yet) minus every request started since. The best such bound,
while its window lasts, caps admissions too. With no bound known (first contact, or its window
has passed) one request of the resource at a time goes out to learn it, so a restarted process
overshoots a nearly spent quota by at most one request.

The parallel cap is the cabinet's, shared by all its resources and with whoever else calls for
it. When the server refuses a request for it, this process lowers its own cap to what it had in
flight less one, and raises it again by one after a run of calm answers, doubling that run
whenever a raise is refused again (like TCP's congestion window): others' load costs a few
refused calls, not a stream of them (:class:`~._adaptive.AdaptiveCap`).

Optionally a resource is *paced*: ``Quota(burst=N)`` spreads its requests at ``limit / period``
per second with bursts of up to ``N`` (the generic cell rate algorithm), so a service spends
the hour evenly instead of in its first seconds. Pacing only shapes the rate; the tokens keep
the guarantee.

Waiters are served first come, first served among the resources whose quota admits them; a
waiter whose resource is spent does not hold up another resource. A cancelled waiter takes
nothing. A request abandoned in flight keeps its token as if it had completed then, and its
parallel slot until the slowest recent answer would have come back: the server may still be
serving it, and a new request in its place would be refused for the parallel cap.

Two stores keep this state: in process (``_local``: one limiter per cabinet for the whole
process, whatever thread or event loop calls) and Redis (``_redis``: shared by every process
and host). Both use :class:`~._adaptive.AdaptiveCap` and :class:`~._adaptive.LatencyTracker`
as they are; the token and bound rules of :class:`~._ledger.ResourceLedger` are the Redis
scripts' too, and one contract test suite runs against both. Nothing here knows HTTP: the
client reports what the server said as an :class:`Answer` when it releases a :class:`Lease`.
"""

from ._adaptive import AdaptiveCap, LatencyTracker
from ._local import CabinetLimiter, forget_all, limiter_for
from ._quota import Answer, Lease, Limiter, Quota, QuotaState

__all__ = [
    "AdaptiveCap",
    "Answer",
    "CabinetLimiter",
    "LatencyTracker",
    "Lease",
    "Limiter",
    "Quota",
    "QuotaState",
    "forget_all",
    "limiter_for",
]
