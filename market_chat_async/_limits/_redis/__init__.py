"""The Redis store: one cabinet's limits shared by every process and host, Cluster-safe.

The guarantee is the one of ``_limits``, for every client in any process or host that uses the
same Redis, namespace and cabinet. The rules are ``_ledger``'s, kept by Lua scripts
(``_redis_scripts``) on the Redis server's clock (``TIME``), so clock skew between hosts does
not matter. What stays in each process: the :class:`~._adaptive.AdaptiveCap` (the server's
parallel-cap refusal reaches only the process that got it, and it is fed with that process's
own requests in flight) and the :class:`~._adaptive.LatencyTracker`.

Round trips. A request costs one or two script calls: the acquire script (wait or grant), and
the release that takes in the server's answer and gives the slot back. A release is not waited
for (the caller has its answer): it waits in its resource's ``pending`` list, and the next
acquire of the same resource in this process carries it (one script call per request for a
worker making request after request; the same Lua function applies it in either script);
failing that, it is sent on the loop's next turn, so no waiter elsewhere waits for it. If the
acquire carrying it fails or is cancelled, it is sent again by itself (twice is harmless).
:meth:`_RedisLimiter.state`, :meth:`RedisLimiters.flush` and ``close`` wait for releases.
Within a process only the head waiter of a cabinet's resource asks Redis; the script puts its
ticket in a per-resource queue (first come, first served across processes: it grants only to
the oldest tickets that fit) and says how long until the slot, token, bound or pacing its place
in the queue waits for can lift; a grant queues the next local waiter's ticket in the same
call. A waiter that needs a slot blocks on the cabinet's ``wake`` list, to which every release
pushes (a waiter woken out of turn passes it on).

Leases. An in-flight slot is a lease that expires :data:`LEASE_TTL` seconds after it was last
renewed; a background task renews the leases of this process's requests while they are in
flight, so a killed worker's slots come back within ``LEASE_TTL`` seconds. Its quota tokens
stay out until a period (+ margin) after the latest moment the server could have counted the
request (``exchange_timeout`` after the grant).

Faults. A failed Redis call is retried for up to :data:`BLIP` seconds (a blip, a failover)
before the limiter fails closed with :class:`LimiterUnavailableError` (or, with
``fallback=True``, uses the in-process store and asks Redis again after
:data:`RETRY_REDIS` seconds). A release never raises: an answer in hand is the caller's, and a
release that cannot reach Redis is retried in the background until it can (meanwhile the
lease expires by itself). A cancelled acquire gives its ticket back, shielded, so a lease the
script granted as the cancellation landed is returned, and one still on its way is void.
Calls to Redis are bounded by a semaphore of ``max_connections``, so many cabinets in flight
queue for a connection instead of failing.

Modules. The connection every cabinet of a client shares (``_connection``: retries,
fallback, renewals, background work) owns the cabinets' limiters (``_cabinet``: waiting,
granting, giving back), which see it only through a small protocol; a resource's keys, script
arguments and replies are ``_resource``'s; the numbers all use are in ``_constants``.

Keys, all under ``market-chat-async:{<namespace>|<business_id>}:`` (the braces are the hash
tag; ``namespace`` is the API origin); a resource's keys add ``<resource>:``. Each has an
expiry, refreshed when written.

=========== ======== ===================================================================
key         of       holds (zset scores and times in ms of the Redis clock)
=========== ======== ===================================================================
``leases``  cabinet  zset: lease id -> when its slot frees (expiry while in flight, or the
                     end of an abandoned request's linger)
``overlap`` cabinet  hash: lease id in flight -> requests in flight at some moment during it
``void``    cabinet  zset: ids given back before their acquire ran -> until when
``wake``    cabinet  list: one item per release (a few at most), for waiters blocked on it
``tokens``  resource zset: lease id -> when its quota token returns
``bound``   resource hash: ``budget``, ``until``, ``reported``: the server's best figure
``local``   resource ``1`` while the server says nothing the tokens do not
``pace``    resource with ``Quota(burst=N)``: the GCRA theoretical arrival time
``queue``   resource zset: waiting ticket -> when it arrived
``seen``    resource zset: waiting ticket -> by when its waiter must ask again
=========== ======== ===================================================================
"""

from ._connection import RedisLimiters
from ._constants import _PREFIX as _PREFIX
from ._constants import BLIP as BLIP
from ._constants import LEASE_TTL as LEASE_TTL
from ._constants import RETRY_REDIS as RETRY_REDIS

__all__ = ["RedisLimiters"]
