"""The Redis store's numbers, in one place.

They are tuned against each other (a lease is renewed well within its ttl even across a blip; a
block on a ``wake`` list ends before the socket times out), so they are read side by side; and
both the connection and the cabinets' limiters take theirs from here without importing each
other.
"""

_PREFIX = "market-chat-async"
LEASE_TTL = 4.0  # seconds a slot outlives the last renewal of its lease (a killed worker's)
# A lease in flight for this share of its ttl since its last renewal is renewed (checked every
# eighth of the ttl): with the default 4 s, a Redis blip or a stalled loop has 2 s to pass.
RENEW_AFTER = 3 / 8
BLIP = 1.5  # seconds a failing Redis call is retried before the limiter fails closed
RETRY_REDIS = 5.0  # with fallback on: seconds on the in-process store before asking Redis again
# A waiting ticket not back this long after the wait it was given is dropped (its waiter died).
TICKET_STALE = 3.0
WAIT_MAX = 1.0  # while a request ending could help, a waiter asks again at least this often
WAIT_LONGEST = 30.0  # the longest a waiter sleeps before asking again
WAIT_MIN = 0.001
WAIT_FLIGHT = 0.005  # the least wait for a slot or a probe elsewhere to end
BLOCK_MAX = 0.3  # the longest block on a `wake` list (under the 0.5 s socket timeout)
VOID_TTL = 60.0  # how long a ticket given back stays void
DEFAULT_EXCHANGE_TIMEOUT = 60.0
DEFAULT_MAX_CONNECTIONS = 32
