"""Every Lua script rayr runs in Redis.

Scripts build key names from the cluster prefix passed as ARGV[1] rather than taking them
as KEYS, because the keys they touch (one per waiter inbox) are only known inside the
script. The tables' keys share one hash tag, so those scripts stay within one slot; the
object scripts stay within an object's spread tag on a Redis Cluster (see SPREAD). The key
families, consumer groups and inbox kinds they spell are ``<<name>>`` placeholders, filled
at import from ``keys.FAMILIES``, the group names and ``records`` (see ``_fill``).
"""

from __future__ import annotations

import re

from rayr.gcs.records import MSG_FREED, MSG_OBJECT
from rayr.keys import ACTOR_GROUP, FAMILIES, OBJECT_TAG_DIGIT, TASK_GROUP

_NAMES = {**FAMILIES, "TASK_GROUP": TASK_GROUP, "ACTOR_GROUP": ACTOR_GROUP, "MSG_FREED": MSG_FREED.decode(),
          "MSG_OBJECT": chr(MSG_OBJECT), "TAG_POS": str(OBJECT_TAG_DIGIT + 1)}


def _fill(script: str) -> str:
    """``script`` with every ``<<name>>`` replaced by the name it stands for."""
    return re.sub(r"<<(\w+)>>", lambda m: _NAMES[m.group(1)], script)

# What the object scripts share. An object's keys live under its spread tag, a hex digit of
# its id (keys.object_tag), and inboxes are passed and kept as whole key names. On a Redis
# Cluster (ARGV[2] = '1') a script may touch only its own slot: the caller groups objects by
# tag, and the script hands back what belongs to other slots, as a flat list of
#   'P', inbox key, message                      (a message to push)
#   'R', object id, object hex, member, owner     (a holder to release: RELEASE_HOLDERS)
# which the caller sends to those slots. Anywhere else the script does it all itself.
# ARGV[1]  keys.spread_base (a spread prefix without its tag and closing)
# ARGV[2]  '1' on a Redis Cluster, else '0'
SPREAD = _fill("""
local base, spread_only = ARGV[1], ARGV[2] == '1'
local remote = {}
local function prefix_of(ohex)
  return base .. tonumber(string.sub(ohex, <<TAG_POS>>, <<TAG_POS>>), 16) .. '}:'
end
local function push(p, inbox, msg)
  if spread_only and string.sub(inbox, 1, #p) ~= p then
    remote[#remote + 1] = 'P'
    remote[#remote + 1] = inbox
    remote[#remote + 1] = msg
  else
    redis.call('RPUSH', inbox, msg)
  end
end
""")

# Store objects and wake everyone waiting for them, atomically, so a waiter that
# registers concurrently either finds the record or is in the set the store reads.
# ARGV[1], ARGV[2] as for SPREAD, then per object:
#   object id (20 raw bytes) | object id hex | record | owner's inbox key ('' = none)
# Returns {number of objects stored, what is left to other slots (see SPREAD)}.
STORE_OBJECTS = SPREAD + _fill("""
if #ARGV == 6 then  -- one object (a put, a sync task's result): the plainest path
  local oid, ohex, rec, owner = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local p = prefix_of(ohex)
  redis.call('SET', p .. '<<obj>>' .. ohex, rec)
  local msg = '<<MSG_OBJECT>>' .. oid .. rec
  if owner ~= '' then
    push(p, owner, msg)
  end
  local wkey = p .. '<<objw>>' .. ohex
  local waiters = redis.call('SMEMBERS', wkey)
  for _, w in ipairs(waiters) do
    if w ~= owner then
      push(p, w, msg)
    end
  end
  if #waiters > 0 then
    redis.call('DEL', wkey)
  end
  return {1, remote}
end
-- a command per batch, not per object: each redis.call costs more than the SET it runs
local function chunked(cmd, head, items)  -- Lua's unpack takes a bounded number of values
  local total = 0
  for first = 1, #items, 1000 do
    local last = math.min(first + 999, #items)
    local r
    if head then
      r = redis.call(cmd, head, unpack(items, first, last))
    else
      r = redis.call(cmd, unpack(items, first, last))
    end
    if type(r) == 'number' then total = total + r end
  end
  return total
end
local sets, wkeys, msgs, owners, inboxes = {}, {}, {}, {}, {}
local function queue(p, inbox, msg)  -- messages to one inbox go in one RPUSH, in order
  if spread_only and string.sub(inbox, 1, #p) ~= p then
    push(p, inbox, msg)  -- another slot's: handed back
    return
  end
  local list = inboxes[inbox]
  if not list then
    list = {}
    inboxes[inbox] = list
    owners[#owners + 1] = inbox
  end
  list[#list + 1] = msg
end
local n = 0
for i = 3, #ARGV, 4 do
  local oid, ohex, rec, owner = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local p = prefix_of(ohex)
  sets[#sets + 1] = p .. '<<obj>>' .. ohex
  sets[#sets + 1] = rec
  wkeys[#wkeys + 1] = p .. '<<objw>>' .. ohex
  local msg = '<<MSG_OBJECT>>' .. oid .. rec
  msgs[#msgs + 1] = msg
  if owner ~= '' then
    queue(p, owner, msg)
  end
  n = n + 1
end
chunked('MSET', nil, sets)
if chunked('EXISTS', nil, wkeys) > 0 then  -- rare: someone other than the owner waits
  for k, wkey in ipairs(wkeys) do
    local waiters = redis.call('SMEMBERS', wkey)
    if #waiters > 0 then
      local owner = ARGV[4 * k + 2]
      local p = prefix_of(ARGV[4 * k])
      for _, w in ipairs(waiters) do
        if w ~= owner then
          queue(p, w, msgs[k])
        end
      end
      redis.call('DEL', wkey)
    end
  end
end
for _, inbox in ipairs(owners) do
  chunked('RPUSH', inbox, inboxes[inbox])
end
return {n, remote}
""")

# Read object records; for each one not stored yet, register the inbox as a waiter.
# ARGV[1]  keys.spread_base
# ARGV[2]  the caller's inbox key
# ARGV[3..] object id hexes (on a Redis Cluster, of one spread tag)
# Returns one entry per object: the record, or false when the caller now waits for it.
FETCH_OR_WAIT = _fill("""
local base, inbox = ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV do
  local ohex = ARGV[i]
  local p = base .. tonumber(string.sub(ohex, <<TAG_POS>>, <<TAG_POS>>), 16) .. '}:'
  local rec = redis.call('GET', p .. '<<obj>>' .. ohex)
  if not rec then
    redis.call('SADD', p .. '<<objw>>' .. ohex, inbox)
  end
  out[#out + 1] = rec
end
return out
""")

# Create an actor's table entry and claim its name, atomically (its mailbox, under the
# actor's spread tag, is created just before: GcsClient.register_actor).
# ARGV[1]  cluster key prefix
# ARGV[2]  actor id hex
# ARGV[3]  namespace
# ARGV[4]  name ('' = unnamed)
# ARGV[5]  job id hex ('' = detached: not killed when the job ends)
# ARGV[6..] field, value pairs for the actor hash
# Returns {1, actor hex} when created, or {0, existing actor hex} when the name is taken
# by a live actor.
REGISTER_ACTOR = _fill("""
local prefix, actor, ns, name, job = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if name ~= '' then
  local names = prefix .. '<<actor_names>>' .. ns
  local existing = redis.call('HGET', names, name)
  if existing then
    local state = redis.call('HGET', prefix .. '<<actor>>' .. existing, 'state')
    if state and state ~= 'DEAD' then
      return {0, existing}
    end
  end
  redis.call('HSET', names, name, actor)
end
local fields = {}
for i = 6, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', prefix .. '<<actor>>' .. actor, unpack(fields))
if job ~= '' then
  redis.call('SADD', prefix .. '<<job_actors>>' .. job, actor)
end
redis.call('SADD', prefix .. '<<actors>>', actor)
return {1, actor}
""")

# Mark an actor DEAD and free its name (then GcsClient.mark_actor_dead closes its mailbox).
# ARGV[1]  cluster key prefix
# ARGV[2]  actor id hex
# ARGV[3]  death cause (shown to callers)
# ARGV[4]  time of death
# Returns 1, or 0 if it was already dead or unknown.
MARK_ACTOR_DEAD = _fill("""
local prefix, actor = ARGV[1], ARGV[2]
local key = prefix .. '<<actor>>' .. actor
local state = redis.call('HGET', key, 'state')
if (not state) or state == 'DEAD' then
  return 0
end
redis.call('HSET', key, 'state', 'DEAD', 'death_cause', ARGV[3], 'end_time', ARGV[4])
local name = redis.call('HGET', key, 'name')
if name and name ~= '' then
  local names = prefix .. '<<actor_names>>' .. redis.call('HGET', key, 'namespace')
  if redis.call('HGET', names, name) == actor then
    redis.call('HDEL', names, name)
  end
end
local job = redis.call('HGET', key, 'job')
if job and job ~= '' then
  redis.call('SREM', prefix .. '<<job_actors>>' .. job, actor)
end
redis.call('ZADD', prefix .. '<<dead_actors>>', ARGV[4], actor)
redis.call('PUBLISH', prefix .. '<<actor_events>>', actor .. ':DEAD')
return 1
""")

# Close a dead actor's mailbox: take every call still in it and delete it and its control
# stream. A call added after this finds no mailbox (XADD NOMKSTREAM): the dead-actor path.
# KEYS[1]  the mailbox; KEYS[2] the control stream
# Returns the encoded specs of the calls that will never run.
CLOSE_MAILBOX = """
local specs = {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 's' then
      specs[#specs + 1] = fields[i + 1]
    end
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
return specs
"""

# Update an actor's hash unless it is already DEAD (a kill may race a state change).
# KEYS[1]  actor hash
# ARGV[1]  events channel; ARGV[2] message; ARGV[3..] field, value pairs
# Returns 1 if updated, 0 if the actor is dead or unknown.
UPDATE_LIVE_ACTOR = _fill("""
local state = redis.call('HGET', KEYS[1], 'state')
if (not state) or state == 'DEAD' then
  return 0
end
local fields = {}
for i = 3, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
""")

# Cancel a task queued on a stream: delete it if no raylet took it yet, else name the
# consumer that took it (the pending-entries list's). The task's cancel marker is set just
# before, in the tables' slot; the caller tells the consumer's node.
# KEYS[1]  task stream
# ARGV[1]  stream entry id
# Returns {'deleted'} (the caller resolves it), {'gone'} (already finished) or
# {'node', consumer}: '<node>' or, for a leased worker, '<node>.<worker>'.
CANCEL_TASK = _fill("""
local pending = redis.call('XPENDING', KEYS[1], '<<TASK_GROUP>>', ARGV[1], ARGV[1], 1)
if #pending == 0 then
  if redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then
    return {'deleted'}
  end
  return {'gone'}
end
return {'node', pending[1][2]}
""")

# Give back tasks a leased worker took but has not started, because the task it runs
# blocked in get (what it waits for may be one of them): each is queued again at the
# stream's tail with the same fields, and the taken entry acknowledged and deleted, at once.
# KEYS[1]  task stream
# ARGV     entry ids
# Returns how many were queued again (an entry deleted meanwhile, e.g. cancelled, is not).
GIVE_BACK_TASKS = _fill("""
local queued = 0
for i = 1, #ARGV do
  local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #found == 1 then
    redis.call('XADD', KEYS[1], '*', unpack(found[1][2]))
    queued = queued + 1
  end
  redis.call('XACK', KEYS[1], '<<TASK_GROUP>>', ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
end
return queued
""")

# Cancel an actor call: delete it if the actor has not read it yet, else tell the actor
# (the call's cancel marker is set just before, in the tables' slot).
# KEYS[1]  actor mailbox
# KEYS[2]  actor control stream
# ARGV[1]  mailbox entry id
# ARGV[2]  task id hex
# Returns 'deleted', 'gone' or 'delivered'.
CANCEL_ACTOR_CALL = _fill("""
local pending = redis.call('XPENDING', KEYS[1], '<<ACTOR_GROUP>>', ARGV[1], ARGV[1], 1)
if #pending == 0 then
  if redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then
    return 'deleted'
  end
  return 'gone'
end
redis.call('XADD', KEYS[2], '*', 'cancel', ARGV[2])
return 'delivered'
""")

# A raylet's heartbeat, unless the node was declared dead (then it must rejoin as a new node).
# KEYS: node hash, liveness key, heartbeat channel
# ARGV[1] liveness TTL (ms), ARGV[2] heartbeat message, ARGV[3..] node-hash field, value pairs
# Returns 1, or 0 when the node is DEAD.
HEARTBEAT = _fill("""
if redis.call('HGET', KEYS[1], 'state') == 'DEAD' then
  return 0
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PUBLISH', KEYS[3], ARGV[2])
return 1
""")

# Reference holders other than the owner's own refs (distributed reference counting).
# objr:<hex> is the set of holders of an object: borrowing processes (their inbox name) and
# objects that contain a ref to it ('o:' .. container hex). objc:<hex> lists what an object
# contains, one entry per ref: 20-byte id .. 40-char hex .. owner's inbox key.
# When the last holder goes, the owner is told with 'F' .. id in its inbox.
local_release = SPREAD + _fill("""
local function release(oid, ohex, member, owner)
  local p = prefix_of(ohex)
  local key = p .. '<<objr>>' .. ohex
  if redis.call('SREM', key, member) == 1 and redis.call('SCARD', key) == 0 and owner ~= '' then
    push(p, owner, '<<MSG_FREED>>' .. oid)
  end
end
""")

# ARGV[1], ARGV[2] as for SPREAD, then (id, hex, member, owner's inbox key) per holder to drop.
# Returns {1, what is left to other slots}.
RELEASE_HOLDERS = local_release + _fill("""
for i = 3, #ARGV, 4 do
  release(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
end
return {1, remote}
""")

# Free objects (their record, holders and what they contain) unless someone holds them.
# ARGV[1], ARGV[2] as for SPREAD, then (hex, force) per object; force '1' frees even if held.
# Returns {one 1 (freed) or 0 (still held) per object, what is left to other slots}.
FREE_OBJECTS = local_release + _fill("""
local out = {}
for i = 3, #ARGV, 2 do
  local h, force = ARGV[i], ARGV[i + 1]
  local p = prefix_of(h)
  local holders = p .. '<<objr>>' .. h
  if force == '1' or redis.call('SCARD', holders) == 0 then
    local ckey = p .. '<<objc>>' .. h
    for _, e in ipairs(redis.call('LRANGE', ckey, 0, -1)) do
      local rid, rhex, owner = string.sub(e, 1, 20), string.sub(e, 21, 60), string.sub(e, 61)
      if spread_only and prefix_of(rhex) ~= p then
        for _, v in ipairs({'R', rid, rhex, 'o:' .. h, owner}) do
          remote[#remote + 1] = v
        end
      else
        release(rid, rhex, 'o:' .. h, owner)
      end
    end
    redis.call('DEL', p .. '<<obj>>' .. h, ckey, holders)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return {out, remote}
""")

# Record a batch of task events: each pair is a task id and the whole current view of one
# side (owner or executor) of that task, which replaces the last one. A job's table takes at
# most ARGV[1] tasks; views of tasks beyond that are dropped (and counted). Once the job has
# ended, the table expires after ARGV[3] ms, as its other tables are gone already.
# All three keys carry the job's spread tag (keys.spread_tag of the job id), so this runs on its master.
# KEYS[1]  the job's owner or executor table (hash)
# KEYS[2]  the job's dropped-events counter
# KEYS[3]  the job's end marker (set by finish_job)
# ARGV[1]  the most tasks a job's table holds
# ARGV[2]  the job id (unused; kept so the argument positions stay)
# ARGV[3]  retention after the job's end, ms
# ARGV[4+2k], ARGV[5+2k]  task id, view
# Returns how many views were dropped.
RECORD_TASK_EVENTS = _fill("""
local n = redis.call('HLEN', KEYS[1])
local cap = tonumber(ARGV[1])
local batch, dropped = {}, 0
for i = 4, #ARGV, 2 do
  if n < cap or redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    batch[#batch + 1] = ARGV[i]
    batch[#batch + 1] = ARGV[i + 1]
    n = n + 1
  else
    dropped = dropped + 1
  end
  if #batch >= 1000 then
    redis.call('HSET', KEYS[1], unpack(batch))
    batch = {}
  end
end
if #batch > 0 then
  redis.call('HSET', KEYS[1], unpack(batch))
end
if dropped > 0 then
  redis.call('INCRBY', KEYS[2], dropped)
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return dropped
""")

# Take up to ARGV[1] messages from an inbox (KEYS[1]) into its taken list (KEYS[2]), which
# first loses what it held: the caller handled those before asking for more. Returns them.
TAKE_INBOX = """
redis.call('DEL', KEYS[2])
local items = redis.call('LPOP', KEYS[1], ARGV[1])
if not items then return {} end
redis.call('RPUSH', KEYS[2], unpack(items))
return items
"""
