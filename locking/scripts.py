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
# Returns 1 when every key was free and now holds the token, 0 when any key is held.
ACQUIRE_MANY = Script("""
for i = 1, #KEYS do
  if redis.call('exists', KEYS[i]) == 1 then return 0 end
end
for i = 1, #KEYS do
  redis.call('set', KEYS[i], ARGV[1], 'px', ARGV[2])
end
return 1
""")

# KEYS: n lock keys, then their n fence counter keys; ARGV[1]: token; ARGV[2]: ttl in ms.
# Returns -1 when any lock key is held; otherwise sets every lock key, sets all n
# counters to one more than the highest of them and returns that new value (the
# node's fence for this lease; 1 when no counter was ever written).
ACQUIRE_FENCED = Script("""
local n = #KEYS / 2
for i = 1, n do
  if redis.call('exists', KEYS[i]) == 1 then return -1 end
end
local high = 0
for i = 1, n do
  redis.call('set', KEYS[i], ARGV[1], 'px', ARGV[2])
  local seen = tonumber(redis.call('get', KEYS[n + i]) or '0')
  if seen > high then high = seen end
end
high = high + 1
for i = 1, n do
  redis.call('set', KEYS[n + i], high)
end
return high
""")

# KEYS: n lock keys, then their n fence counter keys; ARGV[1]: token; ARGV[2]: fence.
# Returns 1 when every lock key still holds the token and every counter is now
# >= fence; 0 (and writes nothing) when the lease is gone on this node.
COMMIT_FENCE = Script("""
local n = #KEYS / 2
for i = 1, n do
  if redis.call('get', KEYS[i]) ~= ARGV[1] then return 0 end
end
local fence = tonumber(ARGV[2])
for i = 1, n do
  if tonumber(redis.call('get', KEYS[n + i]) or '0') < fence then
    redis.call('set', KEYS[n + i], ARGV[2])
  end
end
return 1
""")

# KEYS: fence counter keys; ARGV[1]: a fence value.
# Raises every counter below ARGV[1] to it (never lowers one); returns 1.
ADVANCE_FENCE = Script("""
for i = 1, #KEYS do
  if tonumber(redis.call('get', KEYS[i]) or '0') < tonumber(ARGV[1]) then
    redis.call('set', KEYS[i], ARGV[1])
  end
end
return 1
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
# ARGV[3...]: the wake-up list of each lock key, in the same order.
# Returns how many keys held the token and were deleted; keys held by another
# token are left alone. Each deleted key leaves one element in its wake-up list
# (never more), which wakes one client blocked on it (`Redlock.wait_released`).
# The lists are not declared as KEYS and are written with pcall, on purpose: a
# node whose ACL predates them (no ~redlock-wake:*) still releases; its waiters
# just wait out their timeouts.
RELEASE = Script("""
local released = 0
for i = 1, #KEYS do
  if redis.call('get', KEYS[i]) == ARGV[1] then
    redis.call('del', KEYS[i])
    local wake = ARGV[2 + i]
    redis.pcall('rpush', wake, 1)
    redis.pcall('ltrim', wake, -1, -1)
    redis.pcall('pexpire', wake, ARGV[2])
    released = released + 1
  end
end
return released
""")

ALL_SCRIPTS = (ACQUIRE_MANY, ACQUIRE_FENCED, COMMIT_FENCE, ADVANCE_FENCE, EXTEND, RELEASE)
