"""The Lua scripts the nodes run: each is atomic on its node.

Keys are passed as KEYS so that a lease over several resources is all-or-nothing
per node; no script ever blocks or waits, so competing clients that name the same
resources in any order cannot deadlock (one wins on each node, the others back off).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Script:
    """A Lua body and its SHA1, as EVALSHA needs it (nodes load every script at login)."""

    body: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.body.encode()).hexdigest())


# KEYS: the lock keys of the lease; ARGV[1]: token; ARGV[2]: ttl in ms.
# Returns the status "OK" (as SET NX does) when every key was free and now holds
# the token, 0 when any key is held. No other script replies "OK". The other keys
# are checked first, so the first one can be taken with NX in the same call that
# checks it: one redis.call per key fewer than checking every key, then setting it.
ACQUIRE_MANY = Script("""
for i = 2, #KEYS do
  if redis.call('exists', KEYS[i]) == 1 then return 0 end
end
if not redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2], 'nx') then return 0 end
for i = 2, #KEYS do
  redis.call('set', KEYS[i], ARGV[1], 'px', ARGV[2])
end
return redis.status_reply('OK')
""")

# The node's fence status (KEYS[2n + 1] below, the fence prefix itself: no resource
# name is empty) says which of its counters can be trusted (`locking.fencing`):
# "trusted": all of them (an absent counter is 0); "recovering": the node lost its
# state once, and only counters written back since (present ones) are (any other
# value, "repairing <nonce>" while `REPAIR_NODE` runs, means the same); absent:
# the node is new or lost its state, and none is until a client decides which.

# KEYS: n lock keys, then their n fence counters, then the node's fence status;
# ARGV[1]: token; ARGV[2]: ttl in ms.
# Returns -1 when any lock key is held. Otherwise sets every lock key and returns
# {"fence", proposal, trust}: proposal is one more than the highest of the n
# counters; trust is 1 when every counter is trusted (then all n counters are set
# to the proposal), 0 when the node is recovering and one is not, -1 when the
# node has no status; with trust <= 0 no counter is written. The first lock key is
# taken with NX after the others were checked, as in ACQUIRE_MANY.
ACQUIRE_FENCED = Script("""
local n = (#KEYS - 1) / 2
for i = 2, n do
  if redis.call('exists', KEYS[i]) == 1 then return -1 end
end
if not redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2], 'nx') then return -1 end
local status = redis.call('get', KEYS[2 * n + 1])
local trust = 1
if status == false then trust = -1 end
local high = 0
for i = 1, n do
  if i > 1 then redis.call('set', KEYS[i], ARGV[1], 'px', ARGV[2]) end
  local seen = redis.call('get', KEYS[n + i])
  if seen == false then
    if status ~= 'trusted' and trust == 1 then trust = 0 end
    seen = '0'
  end
  seen = tonumber(seen)
  if seen > high then high = seen end
end
high = high + 1
if trust == 1 then
  for i = 1, n do
    redis.call('set', KEYS[n + i], high)
  end
end
return {'fence', high, trust}
""")

# KEYS: n fence counters, then the node's fence status; no ARGV.
# Returns {"counter", highest, trust} like ACQUIRE_FENCED, without a lease and
# without writing (highest is the counter itself, not one more).
READ_FENCE = Script("""
local n = #KEYS - 1
local status = redis.call('get', KEYS[n + 1])
local trust = 1
if status == false then trust = -1 end
local high = 0
for i = 1, n do
  local seen = redis.call('get', KEYS[i])
  if seen == false then
    if status ~= 'trusted' and trust == 1 then trust = 0 end
    seen = '0'
  end
  seen = tonumber(seen)
  if seen > high then high = seen end
end
return {'counter', high, trust}
""")

# KEYS: n lock keys, then their n fence counters, then the node's fence status;
# ARGV[1]: token; ARGV[2]: fence; ARGV[3]: the status to give the node if it has
# none ("trusted" or "recovering"), or "" to leave it.
# "recovering" is set whatever the token (it only withdraws trust); "trusted" only
# where the token still holds: the client decided it from replies that may be old,
# and the token proves the node has not lost its state since it replied.
# Returns 1 when every lock key still holds the token and every counter is now >=
# fence (which makes them trusted on a recovering node); 0 (and writes no counter)
# when the lease is gone on this node.
COMMIT_FENCE = Script("""
local n = (#KEYS - 1) / 2
local status = KEYS[2 * n + 1]
if ARGV[3] == 'recovering' then redis.call('set', status, ARGV[3], 'nx') end
for i = 1, n do
  if redis.call('get', KEYS[i]) ~= ARGV[1] then return 0 end
end
if ARGV[3] == 'trusted' then redis.call('set', status, ARGV[3], 'nx') end
local fence = tonumber(ARGV[2])
for i = 1, n do
  if tonumber(redis.call('get', KEYS[n + i]) or '0') < fence then
    redis.call('set', KEYS[n + i], ARGV[2])
  end
end
return 1
""")

# KEYS: fence counters, then the node's fence status; ARGV[1]: a fence value.
# Raises every counter below ARGV[1] to it (never lowers one); returns 1. Only a
# "trusted" node creates a missing counter: elsewhere a new counter would count
# as written back (trusted) once the node recovers, with no such guarantee.
ADVANCE_FENCE = Script("""
local n = #KEYS - 1
local trusted = redis.call('get', KEYS[n + 1]) == 'trusted'
for i = 1, n do
  local seen = redis.call('get', KEYS[i])
  if (seen ~= false or trusted) and tonumber(seen or '0') < tonumber(ARGV[1]) then
    redis.call('set', KEYS[i], ARGV[1])
  end
end
return 1
""")

# KEYS: counters of one node, any number; no ARGV.
# Returns each counter's value (as a string), or false where it is absent. For
# `Redlock.repair_node`, which reads the counters of every other node.
READ_COUNTERS = Script("""
local values = {}
for i = 1, #KEYS do
  values[i] = redis.call('get', KEYS[i])
end
return values
""")

# KEYS: counters of the node under repair, then its fence status; ARGV[1]: the
# status the repair gave it ("repairing <nonce>"); ARGV[2]: "start", "raise" or
# "finish"; ARGV[3...]: with "raise", one value per counter.
# "start" gives the node ARGV[1] unless it is "trusted" already (then returns 0:
# nothing to repair) and returns 1; a repair that was cut short is taken over.
# "raise" and "finish" act only while the status is still ARGV[1] (else -1: the
# node lost its state again, or another repair took over): "raise" lifts every
# counter below its value (never lowers one) and returns how many it lifted;
# "finish" makes the node "trusted" and returns 1.
REPAIR_NODE = Script("""
local n = #KEYS - 1
local status = KEYS[n + 1]
local now = redis.call('get', status)
if ARGV[2] == 'start' then
  if now == 'trusted' then return 0 end
  redis.call('set', status, ARGV[1])
  return 1
end
if now ~= ARGV[1] then return -1 end
if ARGV[2] == 'finish' then
  redis.call('set', status, 'trusted')
  return 1
end
local lifted = 0
for i = 1, n do
  local value = tonumber(ARGV[2 + i])
  if tonumber(redis.call('get', KEYS[i]) or '0') < value then
    redis.call('set', KEYS[i], ARGV[2 + i])
    lifted = lifted + 1
  end
end
return lifted
""")

# KEYS: the lock keys of the lease; ARGV[1]: token; ARGV[2]: ttl in ms.
# Returns 1 when every key still holds the token (and now lives ttl ms more),
# 0 otherwise; a key that expired is never recreated.
EXTEND = Script("""
for i = 1, #KEYS do
  if redis.call('get', KEYS[i]) ~= ARGV[1] then return 0 end
end
for i = 1, #KEYS do
  redis.call('pexpire', KEYS[i], ARGV[2])
end
return 1
""")

# KEYS: the lock keys of the lease; ARGV[1]: token; ARGV[2]: wake-up TTL in ms;
# ARGV[3]: wake-ups to leave per free key (1 to MAX_WAKES, `locking.commands`);
# ARGV[4...]: the wake-up list of each lock key, in the same order.
# Returns released, how many keys held the token and were deleted (keys held by
# another token are left alone), or -1 - released when a wake-up list this release
# pushed to was empty ("taken": a waiter took the previous release's wake-up, or it
# expired; a sign that others wait, `locking.waiting`). One integer, not a pair:
# with a Lua table returned, a call took 14.2 us inside EVALSHA against 12.2 for an
# integer (medians of 12 interleaved rounds, bench/lock_ab.py, loaded host). Each key
# that is free afterwards (deleted, or never held here: the holder may have
# skipped this node) leaves ARGV[3] elements in its wake-up
# list (never more), each waking one client blocked on it (`Redlock.wait_released`):
# a waiter blocks on one node, so every node the release reaches must wake it.
# A new list gets the wake-up TTL; one that still held wake-ups is trimmed back
# to ARGV[3] elements and keeps its TTL, so a wake-up lasts at most that long: two
# calls per wake-up either way, instead of push, trim and expire.
# The lists are not declared as KEYS and are written with pcall, on purpose: a
# node whose ACL predates them (no ~redlock-wake:*) still releases; its waiters
# just wait out their timeouts.
RELEASE = Script("""
local released = 0
local taken = 0
local wakes = tonumber(ARGV[3])
local ones = {}
for j = 1, wakes do ones[j] = 1 end
for i = 1, #KEYS do
  local held = redis.call('get', KEYS[i])
  if held == ARGV[1] then
    redis.call('del', KEYS[i])
    released = released + 1
  end
  if held == ARGV[1] or held == false then
    local wake = ARGV[3 + i]
    local length = redis.pcall('rpush', wake, unpack(ones))
    if length == wakes then
      redis.pcall('pexpire', wake, ARGV[2])
      taken = 1
    elseif type(length) == 'number' then
      redis.pcall('ltrim', wake, -wakes, -1)
    end
  end
end
if taken == 1 then return -1 - released end
return released
""")

ALL_SCRIPTS = (
    ACQUIRE_MANY,
    ACQUIRE_FENCED,
    READ_FENCE,
    COMMIT_FENCE,
    ADVANCE_FENCE,
    READ_COUNTERS,
    REPAIR_NODE,
    EXTEND,
    RELEASE,
)
