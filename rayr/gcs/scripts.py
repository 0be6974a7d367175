"""Every Lua script rayr runs in Redis.

Scripts build key names from the cluster prefix passed as ARGV[1] rather than taking them
as KEYS, because the keys they touch (one per waiter inbox) are only known inside the
script. All of a cluster's keys share one hash tag, so this stays within one slot.
"""

from __future__ import annotations

# Store objects and wake everyone waiting for them, atomically, so a waiter that
# registers concurrently either finds the record or is in the set the store reads.
# ARGV[1]  cluster key prefix
# ARGV[2+4k .. 5+4k], per object:
#   object id (20 raw bytes) | object id hex | record | owner inbox name suffix ('' = none)
# Returns the number of objects stored.
STORE_OBJECTS = """
local prefix = ARGV[1]
local n = 0
for i = 2, #ARGV, 4 do
  local oid, ohex, rec, owner = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  redis.call('SET', prefix .. 'obj:' .. ohex, rec)
  local msg = 'O' .. oid .. rec
  if owner ~= '' then
    redis.call('RPUSH', prefix .. 'inbox:' .. owner, msg)
  end
  local wkey = prefix .. 'objw:' .. ohex
  local waiters = redis.call('SMEMBERS', wkey)
  for _, w in ipairs(waiters) do
    if w ~= owner then
      redis.call('RPUSH', prefix .. 'inbox:' .. w, msg)
    end
  end
  if #waiters > 0 then
    redis.call('DEL', wkey)
  end
  n = n + 1
end
return n
"""

# Read object records; for each one not stored yet, register the inbox as a waiter.
# ARGV[1]  cluster key prefix
# ARGV[2]  inbox name suffix of the caller
# ARGV[3..] object id hexes
# Returns one entry per object: the record, or false when the caller now waits for it.
FETCH_OR_WAIT = """
local prefix, inbox = ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV do
  local rec = redis.call('GET', prefix .. 'obj:' .. ARGV[i])
  if not rec then
    redis.call('SADD', prefix .. 'objw:' .. ARGV[i], inbox)
  end
  out[#out + 1] = rec
end
return out
"""
