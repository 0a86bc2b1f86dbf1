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
    "GRANT_BASE",
    "KEYS",
    "RELEASE",
    "RENEW",
    "RESOURCE_KEYS",
    "STATE",
    "Script",
]

# The cabinet's keys, shared by all its resources; then the keys each resource has of its own.
CABINET_KEYS = ("leases", "overlap", "void", "wake")
RESOURCE_KEYS = ("tokens", "bound", "local", "pace", "queue", "seen")
# The KEYS of ACQUIRE and RELEASE, in order.
KEYS = ("leases", "overlap", "void", "tokens", "bound", "local", "pace", "queue", "seen", "wake")
# What a reply of ACQUIRE packs into one integer: (wait * 2 + flight) * 4 + granted + 1.
GRANT_BASE = 4


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

# What ACQUIRE and RELEASE share: the clock, the keys, the resource's constants, and the one
# release rule. Arguments come as JSON (two ARGV, however many releases ride along: packing
# and parsing each ARGV costs the client more than Redis takes to decode them).
#
# KEYS: as in KEYS.
# ARGV[1]: the resource's constants, the same for both scripts (the client encodes them once):
#   [limit, max_parallel, period + margin, lease ttl, token hold while in flight (at least the
#   ttl: the longest exchange), key ttl, pace interval (0: no pacing), pace tolerance, ms a
#   ticket may be late back before it is dropped (its waiter died), the longest wait a waiter
#   sleeps before asking again, margin of a reset time (whole-second headers), reset wait
#   assumed when a Remaining came without one, how long a ticket given back stays void].
# A release: [lease id, sent (false: never reached the server), answered (true: the server
#   answered, the next two say what), remaining (-1: not said), resets in (ms, -1: not said),
#   linger (ms the slot stays taken)].
_SHARED = (
    _NOW
    + """
local leases, overlap, void, tokens, bound, local_key, pace, queue, seen, wake = unpack(KEYS)
local limit, max_parallel, hold, ttl, in_flight_hold, key_ttl, interval, tolerance, stale,
  longest, margin, reset_wait, void_ttl = unpack(cjson.decode(ARGV[1]))

-- Tokens returned by `now` leave once per call; `leases`, `overlap` and `tokens`, if
-- written, have their expiry refreshed once, as the call ends.
local purged, touched = false, false
local function purge_tokens()
  if not purged then
    redis.call('ZREMRANGEBYSCORE', tokens, '-inf', now)
    purged = true
  end
end

-- What this call has read or written already, so that it is not read again: the tokens held
-- (once purged), `overlap` (lease id in flight -> requests in flight at some moment during
-- it), and whether a release of this call removed the bound or set `local`.
local used, flying = nil, nil
local bound_gone, local_set = false, false
local function count_tokens()
  purge_tokens()
  if not used then used = redis.call('ZCARD', tokens) end
  return used
end
local function add_token(at, id)
  local added = redis.call('ZADD', tokens, at, id)
  if used then used = used + added end
end
local function overlaps()
  if not flying then
    flying = {}
    local all = redis.call('HGETALL', overlap)
    for i = 1, #all, 2 do flying[all[i]] = tonumber(all[i + 1]) end
  end
  return flying
end
local function landed(id)  -- no longer in flight
  redis.call('HDEL', overlap, id)
  overlaps()[id] = nil
end
local function refresh()
  if touched then
    for _, key in ipairs({leases, overlap, tokens}) do redis.call('PEXPIRE', key, key_ttl) end
  end
end

-- One item on the cabinet's `wake` list wakes the waiter (of any process) blocked longest.
-- (Four at most: with nobody blocked on it, one is as good as many.)
local function push_wake(item)
  local n = redis.call('LLEN', wake)
  if n < 4 then
    redis.call('LPUSH', wake, item)
    if n == 0 then redis.call('PEXPIRE', wake, key_ttl) end
  end
end

-- A request is over: take in the server's answer and free its slot. Returns 1 if the lease
-- was in flight, 0 if not (never granted, expired, or released already). Run twice (a reply
-- lost and the call retried), the second run finds the lease no longer in flight: the slot
-- and the bound are not touched again; its token may return later by the retry's delay,
-- never sooner.
local function release(lease, sent, answered, remaining, resets, linger)
  local returns = now + hold
  local overlapped = overlaps()[lease]
  if not overlapped then
    -- (A granted ticket left the queue when it was granted.)
    redis.call('ZREM', queue, lease)
    redis.call('ZREM', seen, lease)
    local held = redis.call('ZSCORE', tokens, lease)
    if not held then
      -- Never granted: a cancelled acquire. Should its script still be on its way, it must
      -- not grant a lease that nobody holds.
      redis.call('ZREMRANGEBYSCORE', void, '-inf', now)
      redis.call('ZADD', void, now + void_ttl, lease)
      redis.call('PEXPIRE', void, void_ttl)
      return 0
    end
    -- Its lease expired (a hung worker; the slot is gone with it): an answer that came only
    -- now counts a period from now. (A lease in `leases` but not in flight is lingering,
    -- released already: it stays until its linger ends.)
    if sent and tonumber(held) < returns then add_token(returns, lease) end
    return 0
  end
  landed(lease)
  push_wake(1)  -- a slot, or a probe, is free
  if not sent then
    redis.call('ZREM', leases, lease)
    if used then used = used - redis.call('ZREM', tokens, lease) else
      redis.call('ZREM', tokens, lease)
    end
    -- Nothing was sent, so the bound gets its start back.
    if redis.call('EXISTS', bound) == 1 then redis.call('HINCRBY', bound, 'budget', 1) end
    return 1
  end
  add_token(returns, lease)
  if linger > 0 then
    redis.call('ZADD', leases, now + linger, lease)
  else
    redis.call('ZREM', leases, lease)
  end
  touched = true
  if not answered then return 1 end

  if remaining < 0 then
    -- No Remaining: with no reset time either the server says nothing, and the tokens decide.
    if resets < 0 then
      redis.call('SET', local_key, '1', 'PX', key_ttl)
    else
      redis.call('DEL', local_key)
    end
    local_set = resets < 0
    return 1
  end
  if remaining >= limit - count_tokens() then
    -- Our tokens account for all the server counts: a bound would count them twice.
    redis.call('SET', local_key, '1', 'PX', key_ttl)
    redis.call('DEL', bound)
    local_set, bound_gone = true, true
    return 1
  end
  redis.call('DEL', local_key)
  local_set, bound_gone = false, false
  if resets < 0 then resets = reset_wait end
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
end

-- A list of releases; how many were in flight.
local function release_all(releases)
  local n = 0
  for _, r in ipairs(releases) do n = n + release(unpack(r)) end
  return n
end
"""
)

# ARGV[2]: [ticket (the lease id, chosen by the client), ms a request is expected to take at
#   most (the slowest recent answer this process saw: for the wait hint), the ticket of the
#   next waiter in this process ('': none), queued if this one is granted (the reply's wait
#   and flight are then its), the item of `wake` that woke the waiter (0: none): how many
#   waiters it has woken, passed on (up to 3) if others may start and this one may not,
#   [releases of the same resource this process has on their way, applied first (as if sent
#   just before)]].
# Returns granted (1), wait (0: wait about `ms` and ask again, blocked on `wake` when `flight`
# is 1: a request ending helps) or void (-1: the ticket was given back before this ran), with
# `ms` and `flight` (when granted: the next ticket's), packed as
# (ms * 2 + flight) * GRANT_BASE + granted + 1.
ACQUIRE = Script(
    "acquire",
    _SHARED
    + """
local ticket, expected, next_ticket, woken, releases = unpack(cjson.decode(ARGV[2]))
local function reply(granted, ms, flight)
  return (ms * 2 + flight) * GRANT_BASE + granted + 1
end

-- A reply lost on the way back and the call retried: it was granted already (and the releases
-- it carried were applied then).
if overlaps()[ticket] then return reply(1, 0, 0) end

-- Leases past their expiry: their workers died or hung. The slot frees now; the token was
-- set to return a period after the latest moment the server could count the request.
local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
if #expired > 0 then
  for _, id in ipairs(expired) do landed(id) end
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
end
purge_tokens()
release_all(releases)

-- First come, first served: this ticket's place among the waiters that are still asking.
local queued = redis.call('ZCARD', queue) > 0
if queued then
  -- `seen`: by when each waiter is due back (the wait it was given, and some grace).
  local stale_ids = redis.call('ZRANGEBYSCORE', seen, '-inf', now)
  if #stale_ids > 0 then
    for _, id in ipairs(stale_ids) do redis.call('ZREM', queue, id) end
    redis.call('ZREMRANGEBYSCORE', seen, '-inf', now)
  end
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
  local slots = max_parallel - redis.call('ZCARD', leases)
  if slots <= rank then
    -- When slots free: a lingering one at its score, one in flight about the slowest recent
    -- answer time after its grant (its expiry less the ttl, unless renewed since).
    local taken = redis.call('ZRANGE', leases, 0, -1, 'WITHSCORES')
    local times = {}
    for i = 1, #taken, 2 do
      local at = tonumber(taken[i + 1])
      if overlaps()[taken[i]] then at = at - ttl + expected end
      times[#times + 1] = at
    end
    table.sort(times)
    local at = times[rank - slots + 1]
    limit_to(slots, at and at > now and at - now or expected / max_parallel, true)
  end
  local free = limit - count_tokens()
  if free <= rank then
    local nth = redis.call('ZRANGE', tokens, rank - free, rank - free, 'WITHSCORES')
    local ms = tonumber(nth[2]) - now
    -- Still in flight: it returns no sooner than a period after an answer still to come.
    if ms > hold then ms = hold end
    limit_to(free, ms)
  end
  local b = bound_gone and {} or redis.call('HMGET', bound, 'budget', 'until')
  local bounded = b[1] and tonumber(b[2]) > now
  if bounded then
    limit_to(tonumber(b[1]), tonumber(b[2]) - now)
  elseif not local_set and redis.call('GET', local_key) ~= '1' then
    -- Nothing known of the server's count: one request of the resource probes first.
    -- (A token held past a period from now is a request in flight, or one whose lease expired.)
    local flying, at = 0, math.huge
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', tokens, '(' .. (now + hold), '+inf')) do
      local expiry = redis.call('ZSCORE', leases, id)
      if expiry and overlaps()[id] then
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
  if woken > 0 and woken < 3 and fits > 0 and fits < math.huge then push_wake(woken + 1) end
end

local function acquire()
  local given_back = redis.call('ZSCORE', void, ticket)
  if given_back and tonumber(given_back) > now then return reply(-1, 0, 0) end
  local ok, wait, flight, bounded, tat, fits = unpack(evaluate(ticket, queued))
  if not ok then
    if not queued then evaluate(ticket, true) end
    pass_on(fits)
    return reply(0, wait, flight)
  end

  if queued then
    redis.call('ZREM', queue, ticket)
    redis.call('ZREM', seen, ticket)
  end
  local others = 0
  for id, n in pairs(overlaps()) do
    redis.call('HINCRBY', overlap, id, 1)
    flying[id] = n + 1
    others = others + 1
  end
  redis.call('HSET', overlap, ticket, others)
  flying[ticket] = others
  redis.call('ZADD', leases, now + ttl, ticket)
  add_token(now + in_flight_hold + hold, ticket)
  touched = true
  if bounded then redis.call('HINCRBY', bound, 'budget', -1) end
  if interval > 0 then redis.call('SET', pace, tat + interval, 'PX', tat + interval - now) end
  -- The next waiter of the same process takes its place in the queue now, and learns its wait.
  if next_ticket ~= '' then
    local next_ok, next_wait, next_flight, _, _, next_fits = unpack(evaluate(next_ticket, true))
    if not next_ok then pass_on(next_fits) end
    return reply(1, next_wait, next_flight)
  end
  return reply(1, 0, 0)
end

local granted = acquire()
refresh()
return granted
""".replace("GRANT_BASE", str(GRANT_BASE)),
)

# ARGV[2]: [releases]. Returns how many of the leases were in flight.
RELEASE = Script(
    "release",
    _SHARED
    + """
local n = release_all(cjson.decode(ARGV[2]))
refresh()
return n
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
