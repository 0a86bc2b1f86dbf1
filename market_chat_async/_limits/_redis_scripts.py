"""The Lua side of the Redis store: the rules of ``_ledger`` kept atomically on the Redis clock.

Every key of one cabinet shares one ``{...}`` hash tag, so each script touches one hash slot and
runs unchanged on Redis Cluster. Times are whole milliseconds of the Redis server's ``TIME``.
The names of the keys are listed once, in :data:`CABINET_KEYS` and :data:`RESOURCE_KEYS`; the
module docstring of ``_redis`` says what each holds.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "ACQUIRE",
    "CABINET_KEYS",
    "RELEASE",
    "RENEW",
    "RESOURCE_KEYS",
    "STATE",
    "Script",
]

# The cabinet's keys, shared by all its resources; then the keys each resource has of its own.
CABINET_KEYS = ("leases", "overlap", "void", "wake")
RESOURCE_KEYS = ("tokens", "bound", "local", "pace", "queue", "seen")


class Script:
    """A Lua script and its SHA1, run with EVALSHA (EVAL when the server has not cached it)."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # Redis names a script by its SHA1

    def __repr__(self) -> str:
        return f"<script {self.name}>"


_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: leases overlap void tokens bound local pace queue seen wake
# ARGV: 1 ticket (the lease id, chosen by the client), 2 limit, 3 max_parallel,
#       4 period + margin, 5 lease ttl, 6 token hold while in flight (at least the ttl: the
#       longest exchange), 7 key ttl, 8 ms a request is expected to take at most (the slowest
#       recent answer this process saw: for the wait hint), 9 pace interval
#       (0: no pacing), 10 pace tolerance, 11 ms a ticket may be late back before it is
#       dropped (its waiter died), 12 the ticket of the next waiter in this process ('':
#       none), queued if this one is granted (the reply's wait and flight are then its),
#       13 the longest wait a waiter sleeps before asking again, 14 the item of `wake` that
#       woke the waiter ('0': none): how many waiters it has woken, passed on (up to 3) if
#       others may start and this one may not.
# Returns {1, ms, flight} granted (ms and flight: the next ticket's, as below); {0, ms, flight}:
# wait about that long and ask again (blocked on `wake` when flight is 1: a request ending
# helps); {-1, 0, 0} void (the ticket was given back before this ran).
ACQUIRE = Script(
    "acquire",
    _NOW
    + """
local leases, overlap, void, tokens, bound, local_key, pace, queue, seen, wake = unpack(KEYS)
local ticket, limit, max_parallel = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local hold, ttl, in_flight_hold = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local key_ttl, expected = tonumber(ARGV[7]), tonumber(ARGV[8])
local interval, tolerance, stale = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local next_ticket, longest, woken = ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[14])

-- A reply lost on the way back and the call retried: it was granted already.
if redis.call('HEXISTS', overlap, ticket) == 1 then return {1, 0, 0} end
redis.call('ZREMRANGEBYSCORE', void, '-inf', now)
if redis.call('ZSCORE', void, ticket) then return {-1, 0, 0} end

-- Leases past their expiry: their workers died or hung. The slot frees now; the token was
-- set to return a period after the latest moment the server could count the request.
local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
for _, id in ipairs(expired) do redis.call('HDEL', overlap, id) end
redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
redis.call('ZREMRANGEBYSCORE', tokens, '-inf', now)

-- First come, first served: this ticket's place among the waiters that are still asking.
local queued = redis.call('ZCARD', queue) > 0
if queued then
  -- `seen`: by when each waiter is due back (the wait it was given, and some grace).
  local stale_ids = redis.call('ZRANGEBYSCORE', seen, '-inf', now)
  for _, id in ipairs(stale_ids) do redis.call('ZREM', queue, id) end
  redis.call('ZREMRANGEBYSCORE', seen, '-inf', now)
end

-- Where `id` stands in the queue: {may it start now, else ms to wait, whether a request
-- ending would help; whether a bound is in force, the pacing's arrival time}.
local function evaluate(id, enqueue)
  local rank = 0
  if enqueue then  -- (with nobody waiting, it is first: it queues only if it must wait)
    redis.call('ZADD', queue, 'NX', now, id)
    redis.call('PEXPIRE', queue, longest + 2 * stale)
    rank = redis.call('ZRANK', queue, id)
  end

  -- How many may start now, and when the one `rank` places behind the head could; `flight`
  -- says whether a request ending would help (a slot, or the probe), not only time.
  local flight_wait = 0
  local fits, wait, flight = math.huge, 0, 0
  local function limit_to(n, ms, by_flight)
    if n < fits then fits = n end
    if n <= rank then
      if by_flight then flight = 1 else wait = math.max(wait, ms) end
      if by_flight and flight_wait < ms then flight_wait = ms end
    end
  end
  -- When slots free: a lingering one at its score, one in flight about the slowest recent
  -- answer time after its grant (its expiry less the ttl, unless renewed since).
  local taken = redis.call('ZRANGE', leases, 0, -1, 'WITHSCORES')
  local slots = max_parallel - #taken / 2
  local function frees_at(i)
    local at = tonumber(taken[i + 1])
    if redis.call('HEXISTS', overlap, taken[i]) == 1 then at = at - ttl + expected end
    return at
  end
  if slots <= rank then
    local times = {}
    for i = 1, #taken, 2 do times[#times + 1] = frees_at(i) end
    table.sort(times)
    local at = times[rank - slots + 1]
    limit_to(slots, at and at > now and at - now or expected / max_parallel, true)
  end
  local used = redis.call('ZCARD', tokens)
  local free = limit - used
  if free <= rank then
    local nth = redis.call('ZRANGE', tokens, rank - free, rank - free, 'WITHSCORES')
    local ms = tonumber(nth[2]) - now
    -- Still in flight: it returns no sooner than a period after an answer still to come.
    if ms > hold then ms = hold end
    limit_to(free, ms)
  end
  local b = redis.call('HMGET', bound, 'budget', 'until')
  local bounded = b[1] and tonumber(b[2]) > now
  if bounded then
    limit_to(tonumber(b[1]), tonumber(b[2]) - now)
  elseif redis.call('GET', local_key) ~= '1' then
    -- Nothing known of the server's count: one request of the resource probes first.
    -- (A token held past a period from now is a request in flight, or one whose lease expired.)
    local flying, at = 0, math.huge
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', tokens, '(' .. (now + hold), '+inf')) do
      local expiry = redis.call('ZSCORE', leases, id)
      if expiry and redis.call('HEXISTS', overlap, id) == 1 then
        flying = flying + 1
        at = math.min(at, tonumber(expiry) - ttl + expected)
      end
    end
    limit_to(flying == 0 and 1 or 0, at > now and at - now or expected / max_parallel, true)
  end
  local tat = now
  if interval > 0 then
    tat = math.max(tonumber(redis.call('GET', pace)) or now, now)
    local n = math.floor((tolerance - (tat - now)) / interval) + 1
    limit_to(math.max(n, 0), tat - tolerance + rank * interval - now)
  end
  -- Time first: while a token, bound or pacing holds it back, a request ending cannot help.
  if wait > 0 then
    wait, flight = math.ceil(wait), 0
  else
    wait = math.max(1, math.ceil(flight_wait))
  end
  if enqueue then
    redis.call('ZADD', seen, now + math.min(wait, longest) + stale, id)
    redis.call('PEXPIRE', seen, longest + 2 * stale)
  end
  return {rank < fits, wait, flight, bounded and true or false, tat, fits}
end

-- A waiter woken from `wake` that may not start while others may (they are older): pass the
-- wake-up on to them.
local function pass_on(fits)
  if woken > 0 and woken < 3 and fits > 0 and fits < math.huge then
    redis.call('LPUSH', wake, woken + 1)
    redis.call('LTRIM', wake, 0, 3)
  end
end

local ok, wait, flight, bounded, tat, fits = unpack(evaluate(ticket, queued))
if not ok then
  if not queued then evaluate(ticket, true) end
  pass_on(fits)
  return {0, wait, flight}
end

if queued then
  redis.call('ZREM', queue, ticket)
  redis.call('ZREM', seen, ticket)
end
local flying = redis.call('HKEYS', overlap)
for _, id in ipairs(flying) do redis.call('HINCRBY', overlap, id, 1) end
redis.call('HSET', overlap, ticket, #flying)
redis.call('ZADD', leases, now + ttl, ticket)
redis.call('ZADD', tokens, now + in_flight_hold + hold, ticket)
if bounded then redis.call('HINCRBY', bound, 'budget', -1) end
if interval > 0 then redis.call('SET', pace, tat + interval, 'PX', tat + interval - now) end
for _, key in ipairs({leases, overlap, tokens}) do redis.call('PEXPIRE', key, key_ttl) end
-- The next waiter of the same process takes its place in the queue now, and learns its wait.
if next_ticket ~= '' then
  local next_ok, next_wait, next_flight, _, _, next_fits = unpack(evaluate(next_ticket, true))
  if not next_ok then pass_on(next_fits) end
  return {1, next_wait, next_flight}
end
return {1, 0, 0}
""",
)

# KEYS: leases overlap void tokens bound local queue seen wake
# ARGV: 1 lease id, 2 sent ('0': never reached the server), 3 answered ('1': the server
#       answered, 4 and 5 say what), 4 remaining (-1: not said), 5 resets in (ms, -1: not
#       said), 6 period + margin, 7 margin of a reset time (whole-second headers), 8 linger
#       (ms the slot stays taken), 9 limit,
#       10 reset wait assumed when a Remaining came without one, 11 key ttl, 12 void ttl.
# Returns 1 if the lease was in flight, 0 if not (never granted, or expired).
RELEASE = Script(
    "release",
    _NOW
    + """
local leases, overlap, void, tokens, bound, local_key, queue, seen, wake = unpack(KEYS)
local lease, sent, answered = ARGV[1], ARGV[2] == '1', ARGV[3] == '1'
local remaining, resets = tonumber(ARGV[4]), tonumber(ARGV[5])
local hold, margin, linger = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local limit, key_ttl = tonumber(ARGV[9]), tonumber(ARGV[11])
local returns = now + hold
local overlapped = redis.call('HGET', overlap, lease)
if not overlapped then
  -- (A granted ticket left the queue when it was granted.)
  redis.call('ZREM', queue, lease)
  redis.call('ZREM', seen, lease)
  local held = redis.call('ZSCORE', tokens, lease)
  if not held then
    -- Never granted: a cancelled acquire. Should its script still be on its way, it must
    -- not grant a lease that nobody holds.
    redis.call('ZADD', void, now + tonumber(ARGV[12]), lease)
    redis.call('PEXPIRE', void, tonumber(ARGV[12]))
    return 0
  end
  -- Its lease expired (a hung worker): the slot is gone; an answer that came only now
  -- counts a period from now.
  if sent and tonumber(held) < returns then redis.call('ZADD', tokens, returns, lease) end
  redis.call('ZREM', leases, lease)
  return 0
end
redis.call('HDEL', overlap, lease)
-- Wake the waiter (of any process) blocked longest on `wake`: a slot, or a probe, is free.
redis.call('LPUSH', wake, 1)
redis.call('LTRIM', wake, 0, 3)
redis.call('PEXPIRE', wake, key_ttl)
if not sent then
  redis.call('ZREM', leases, lease)
  redis.call('ZREM', tokens, lease)
  -- Nothing was sent, so the bound gets its start back.
  if redis.call('EXISTS', bound) == 1 then redis.call('HINCRBY', bound, 'budget', 1) end
  return 1
end
redis.call('ZADD', tokens, returns, lease)
if linger > 0 then
  redis.call('ZADD', leases, now + linger, lease)
else
  redis.call('ZREM', leases, lease)
end
for _, key in ipairs({leases, overlap, tokens}) do redis.call('PEXPIRE', key, key_ttl) end
if not answered then return 1 end

if remaining < 0 then
  -- No Remaining: with no reset time either the server says nothing, and the tokens decide.
  if resets < 0 then
    redis.call('SET', local_key, '1', 'PX', key_ttl)
  else
    redis.call('DEL', local_key)
  end
  return 1
end
redis.call('ZREMRANGEBYSCORE', tokens, '-inf', now)
if remaining >= limit - redis.call('ZCARD', tokens) then
  -- Our tokens account for all the server counts: a bound would count them twice.
  redis.call('SET', local_key, '1', 'PX', key_ttl)
  redis.call('DEL', bound)
  return 1
end
redis.call('DEL', local_key)
if resets < 0 then resets = tonumber(ARGV[10]) end
local budget = remaining - tonumber(overlapped)
local untl = now + resets + margin
local b = redis.call('HMGET', bound, 'budget', 'until')
if b[1] and tonumber(b[2]) > now and tonumber(b[1]) > budget then
  redis.call('HSET', bound, 'reported', remaining)  -- the bound in force leaves more: keep it
else
  redis.call('HSET', bound, 'budget', budget, 'until', untl, 'reported', remaining)
  redis.call('PEXPIRE', bound, math.max(1, untl - now))
end
return 1
""",
)

# KEYS: leases overlap, then the tokens key of each resource named in ARGV
# ARGV: 1 lease ttl, then (lease id, index of its tokens key in KEYS, its period + margin).
# Returns the ids whose lease had already expired (their slot may have gone to another).
RENEW = Script(
    "renew",
    _NOW
    + """
local leases, overlap = KEYS[1], KEYS[2]
local ttl = tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 3 do
  local id, tokens, hold = ARGV[i], KEYS[tonumber(ARGV[i + 1])], tonumber(ARGV[i + 2])
  local expiry = redis.call('ZSCORE', leases, id)
  if expiry and tonumber(expiry) > now and redis.call('HEXISTS', overlap, id) == 1 then
    redis.call('ZADD', leases, now + ttl, id)
    local held = redis.call('ZSCORE', tokens, id)
    if held and tonumber(held) < now + ttl + hold then
      redis.call('ZADD', tokens, now + ttl + hold, id)
    end
  else
    lost[#lost + 1] = id
  end
end
return lost
""",
)

# KEYS: leases overlap tokens bound ; ARGV: 1 period + margin
# Returns in flight (cabinet), slots taken (cabinet), tokens held (resource), then (false when
# none) the bound's budget, ms until it lapses, its reported Remaining, and ms until the first
# held token returns.
STATE = Script(
    "state",
    _NOW
    + """
local leases, overlap, tokens, bound = unpack(KEYS)
local hold = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
local in_flight = redis.call('HLEN', overlap)
for _, id in ipairs(expired) do in_flight = in_flight - redis.call('HEXISTS', overlap, id) end
local taken = redis.call('ZCOUNT', leases, '(' .. now, '+inf')
local used = redis.call('ZCOUNT', tokens, '(' .. now, '+inf')
local b = redis.call('HMGET', bound, 'budget', 'until', 'reported')
local budget, left, reported = false, false, false
if b[1] and tonumber(b[2]) > now then
  budget, left, reported = tonumber(b[1]), tonumber(b[2]) - now, tonumber(b[3])
end
local first = redis.call('ZRANGEBYSCORE', tokens, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local frees = false
if first[2] then frees = math.min(tonumber(first[2]) - now, hold) end
return {in_flight, taken, used, budget, left, reported, frees}
""",
)
