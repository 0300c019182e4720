"""
The Lua scripts that keep the cluster's shared state in Redis.

They hold no room rule: a node decides every room action by the rules of
:mod:`chatd.rooms.rules` on what it read (``LOOK``), and a script applies
the changes only if what the rule read is still so (the guards), else the
node reads again and decides again.  What the scripts keep is mechanics,
each step atomic: the hot path (numbering, storing and publishing a
message), entering and leaving a room (its indexes, its channel's events,
and the room's end with its last member), the node registry and leases,
and a node's resync.  docs/scaling.md describes the keys; in short, with P
the prefix (``chatd:``):

- ``P room:ID``          hash: seq, last_id, bytes (-1: not counted),
  largest, v (the room's version, bumped by every change the rules read),
  and the fields the node gives at creation (a persistent room's include
  persistent '1' and owner_user: it stays when its last member leaves,
  and the store, PostgreSQL, keeps it for when Redis does not)
- ``P sets:ID``          hash: each of the room's sets (a full key) ->
  'r' (the room's), 'm' (of members: a member leaving leaves it), 'h' (of
  one member, who is replaced when leaving it: the channel says ``h``)
- ``P rooms``            sorted set: room ID by creation sequence (``list``)
- ``P members:ID``       sorted set: client ID by join sequence
- ``P claims:ID``        hash: a claimed name -> the client holding it
- ``P counts:ID``        hash: a counted name -> how many members have it
- ``P history:ID``       list, newest first: "ID PAYLOAD"
- ``P client:ID``        hash: node, who (what its events carry after its
  ID), claim (the name it holds in its rooms' claims), counted (the name
  its rooms count it under), user
- ``P client-rooms:ID``  set: the rooms of this shard the client is in
- ``P user-clients:USER`` set: an authenticated user's clients, on any node
- ``P node:NODE``        the node's lease (a key with a TTL)
- ``P node-clients:NODE`` set: the node's clients
- ``P nodes``            set: every node that has registered
- channel ``P r:ID``     the room's broadcasts and events
- channel ``P d:NODE``   direct messages for the node's clients:
  ``<sender> <client>,<client>...`` then a newline and the encoded message

Messages on a room's channel start with one letter:
``M<id> <sender> <payload>`` broadcasts, one per line (a batch: the
messages one node published to the room in one reactor iteration; the
payloads are JSON with ASCII escapes, so never hold a newline), framed once
by each node; ``e<kind> <client> <who>`` a room event; ``k<client> <by>
<reason>`` the client is put out of the room (its leave event follows);
``h`` the holder of one of the room's 'h' sets left it (the nodes pick a
successor, and one of them wins); ``x`` the (persistent) room is deleted:
its members here are out of it, and told so.  chatd.backplane.lines reads them.

Every script takes the prefix as ARGV[1].  Keys inside the JSON a node
sends (reads, guards, changes) are without it.
"""

from __future__ import annotations

from chatd.backplane.prelude import PRELUDE as _PRELUDE

#: ARGV: prefix, node, candidate client ID, who.  The ID, or false if taken.
REGISTER = _PRELUDE + r"""
local node, client = ARGV[2], ARGV[3]
local ckey = P .. 'client:' .. client
if redis.call('EXISTS', ckey) == 1 then
  return false
end
redis.call('HSET', ckey, 'node', node, 'who', ARGV[4], 'claim', '', 'counted', '', 'user', '')
redis.call('SADD', P .. 'node-clients:' .. node, client)
return client
"""

#: ARGV: prefix, reader's room, reader ('' for none), the reads as JSON
#: (see ``read``).  The answers in order; or 'notin' or 'gone' when the
#: reader is not in that room (any more) or this Redis has no record of it.
LOOK = _PRELUDE + r"""
if ARGV[3] ~= '' then
  local refused = reader_in(ARGV[2], ARGV[3])
  if refused then
    return refused
  end
end
return read(cjson.decode(ARGV[4]))
"""

#: ARGV: prefix, node, acting client ('' for none), guards as JSON (see
#: ``holds``), changes as JSON (see ``apply``).  'ok'; 'stale' (a guard no
#: longer holds: read again and decide again); 'gone' (the acting client
#: is not this node's here).
CHANGE = _PRELUDE + r"""
local node, client = ARGV[2], ARGV[3]
if client ~= '' and redis.call('HGET', P .. 'client:' .. client, 'node') ~= node then
  return 'gone'
end
if not holds(cjson.decode(ARGV[4])) then
  return 'stale'
end
apply(cjson.decode(ARGV[5]))
return 'ok'
"""

#: ARGV: prefix, sender, to (a client ID, else a user name), the encoded
#: message, and 'n' for a notice (for those who asked for events) or nothing.  How many
#: connections it went to, or -1: nobody of that name.
DIRECT = _PRELUDE + r"""
local sender, to, payload = ARGV[2], ARGV[3], ARGV[4]
local kind = ARGV[5] and (' ' .. ARGV[5]) or ''
local by_node = {}
local node = redis.call('HGET', P .. 'client:' .. to, 'node')
if node then
  by_node[node] = {to}
else
  local clients = redis.call('SMEMBERS', P .. 'user-clients:' .. to)
  if #clients == 0 then
    return -1
  end
  for _, client in ipairs(clients) do
    local at = redis.call('HGET', P .. 'client:' .. client, 'node')
    if at then
      by_node[at] = by_node[at] or {}
      table.insert(by_node[at], client)
    end
  end
end
local total = 0
for at, clients in pairs(by_node) do
  redis.call('PUBLISH', P .. 'd:' .. at, sender .. ' ' .. table.concat(clients, ',') .. kind .. '\n' .. payload)
  total = total + #clients
end
return total
"""

#: ARGV: prefix, node, client.  {the last room left, 1 if it was deleted}.
UNREGISTER = _PRELUDE + r"""
local node, client = ARGV[2], ARGV[3]
local ckey = P .. 'client:' .. client
if redis.call('HGET', ckey, 'node') ~= node then
  return {'', 0}
end
local room, deleted = leave_rooms(client, '*')
forget_user(client)
redis.call('DEL', ckey, P .. 'client-rooms:' .. client)
redis.call('SREM', P .. 'node-clients:' .. node, client)
return {room, deleted}
"""

#: ARGV: prefix, node, client, candidate room ID, the client as adopt
#: takes it (who, claim, counted, user), the number of shards and this
#: one's position, the room's fields as JSON ([field, value, ...]), its
#: sets as JSON ([key, kind, ...]), changes as JSON (see ``apply``), and
#: the rooms to leave first ('*': all here, '': none, or a room ID).
#: {'ok', room ID, seq, old room, old deleted} or {'taken'} or {'gone'}.
CREATE = _PRELUDE + r"""
local node, client, room = ARGV[2], ARGV[3], ARGV[4]
local stride, offset = tonumber(ARGV[9]), tonumber(ARGV[10])
if not adopt(node, client, ARGV[5], ARGV[6], ARGV[7], ARGV[8]) then
  return {'gone'}
end
if redis.call('EXISTS', P .. 'room:' .. room) == 1 then
  return {'taken'}
end
local old, deleted = leave_rooms(client, ARGV[14])
-- The creation sequence orders rooms across shards: Redis's clock in steps
-- of 100 us since 2025 (rising by one step at least), times the number of
-- shards, plus this one's position, so that no two shards give the same
-- (and the product stays below 2^53 for centuries).  Written out with %d:
-- Redis would write a Lua number this large as 1.2e+14.
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1735689600) * 10000 + math.floor(tonumber(t[2]) / 100)
local last = math.floor(tonumber(redis.call('GET', P .. 'seq:room') or '0') / stride)
local seq = string.format('%d', math.max(last + 1, now) * stride + offset)
redis.call('SET', P .. 'seq:room', seq)
local rkey = P .. 'room:' .. room
redis.call('HSET', rkey, 'seq', seq, 'last_id', 0, 'bytes', 0, unpack(cjson.decode(ARGV[11])))
local sets = cjson.decode(ARGV[12])
for i = 1, #sets, 2 do
  redis.call('HSET', P .. 'sets:' .. room, P .. sets[i], sets[i + 1])
end
redis.call('ZADD', P .. 'rooms', seq, room)
enter_room(client, room, 'create')
apply(cjson.decode(ARGV[13]))
return {'ok', room, seq, old, deleted}
"""

#: ARGV: prefix, node, client, room, since (-1: none), the client as adopt
#: takes it (who, claim, counted, user), guards as JSON (see ``holds``),
#: changes to apply after the join as JSON (see ``apply``), the room's
#: fields to answer as JSON, reads as JSON (see ``read``), and the rooms to
#: leave first ('*': all here, '': none, or a room ID).
#: {'ok', {fields}, {reads}, old room, old deleted, {payloads after since,
#: oldest first}}, {'same', ...} when already in it, or {'nf'} (no such
#: room), {'stale'} (a guard no longer holds), {'gone'}.
ENTER = _PRELUDE + r"""
local node, client, room, since = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])

-- What a client that saw the room up to ``since`` missed, from its history
-- (kept at publication, in this same step as the join: each message is
-- either in here or reaches the client live, never both, never neither).
local function missed(last_id)
  local found = {}
  if since < 0 then
    return found
  end
  for _, entry in ipairs(redis.call('LRANGE', P .. 'history:' .. room, 0, -1)) do
    local space = string.find(entry, ' ', 1, true)
    if tonumber(string.sub(entry, 1, space - 1)) <= since and since <= last_id then
      break
    end
    table.insert(found, 1, string.sub(entry, space + 1))
  end
  return found
end
if not adopt(node, client, ARGV[6], ARGV[7], ARGV[8], ARGV[9]) then
  return {'gone'}
end
local rkey = P .. 'room:' .. room
if redis.call('EXISTS', rkey) == 0 then
  return {'nf'}
end
local outcome, old, deleted = 'same', '', 0
if redis.call('SISMEMBER', P .. 'client-rooms:' .. client, room) == 0 then
  if not holds(cjson.decode(ARGV[10])) then
    return {'stale'}
  end
  outcome = 'ok'
  old, deleted = leave_rooms(client, ARGV[14])
  enter_room(client, room, 'join')
  apply(cjson.decode(ARGV[11]))
elseif ARGV[14] ~= '' and ARGV[14] ~= '*' and ARGV[14] ~= room then
  -- Back to a room it kept, the seed's way: out of the one it was in.
  old, deleted = leave_rooms(client, ARGV[14])
end
local fields = redis.call('HMGET', rkey, 'last_id', unpack(cjson.decode(ARGV[12])))
for i, value in ipairs(fields) do
  fields[i] = result(value)
end
return {outcome, fields, read(cjson.decode(ARGV[13])), old, deleted, missed(tonumber(fields[1]))}
"""

#: ARGV: prefix, room, seq, last_id, the room's fields as JSON ([field,
#: value, ...]), its sets as JSON ([key, kind, ...]), changes as JSON (see
#: ``apply``).  A persistent room that Redis does not have (emptied, or
#: after FLUSHALL) is put back as the store keeps it: 1; 0 if Redis had it.
REVIVE = _PRELUDE + r"""
local room, seq = ARGV[2], ARGV[3]
local rkey = P .. 'room:' .. room
if redis.call('EXISTS', rkey) == 1 then
  return 0
end
redis.call('HSET', rkey, 'seq', seq, 'last_id', ARGV[4], 'bytes', 0, unpack(cjson.decode(ARGV[5])))
local sets = cjson.decode(ARGV[6])
for i = 1, #sets, 2 do
  redis.call('HSET', P .. 'sets:' .. room, P .. sets[i], sets[i + 1])
end
redis.call('ZADD', P .. 'rooms', seq, room)
apply(cjson.decode(ARGV[7]))
return 1
"""

#: ARGV: prefix, node, client, which ('*': every room here, or a room ID).
#: {the last room left, 1 if deleted} ('' if in none).
LEAVE = _PRELUDE + r"""
local node, client = ARGV[2], ARGV[3]
if redis.call('HGET', P .. 'client:' .. client, 'node') ~= node then
  return {'', 0}
end
local room, deleted = leave_rooms(client, ARGV[4])
return {room, deleted}
"""

#: ARGV: prefix, node, room, history size, history bytes, then for each
#: message of this node's batch for the room, in order: sender, payload
#: head, payload tail.  Each message's id, or -1 if its sender is not in
#: the room (any more) in Redis.  One PUBLISH carries the whole batch.
PUBLISH = _PRELUDE + r"""
local room = ARGV[3]
local keep, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local rkey = P .. 'room:' .. room
local in_room, count = {}, 0
for i = 6, #ARGV, 3 do
  local client = ARGV[i]
  local ok = in_room[client]
  if ok == nil then
    ok = redis.call('SISMEMBER', P .. 'client-rooms:' .. client, room) == 1
    in_room[client] = ok
  end
  if ok then
    count = count + 1
  end
end
-- The channel message is built from pieces, joined once: 'M', then for
-- each message its id, sender and payload, a newline between messages.
local ids, pieces, entries = {}, {'M'}, {}
local n, m, total, biggest = 1, 0, 0, 0
local id = 0
if count > 0 then
  id = redis.call('HINCRBY', rkey, 'last_id', count) - count
end
for i = 6, #ARGV, 3 do
  local client = ARGV[i]
  if in_room[client] then
    id = id + 1
    -- Written once, as an integer: Lua writes a number it concatenates
    -- with '%.14g', an exact float formatting that is dear in Redis.
    local text = string.format('%d', id)
    local head, tail = ARGV[i + 1], ARGV[i + 2]
    if n > 1 then
      n = n + 1
      pieces[n] = '\n'
    end
    -- The payload (head, id, tail) is never a string of its own: Redis's
    -- Lua hashes every byte of every string it makes, so only the history
    -- entry and the channel message are made.
    pieces[n + 1], pieces[n + 2], pieces[n + 3], pieces[n + 4] = text, ' ', client, ' '
    pieces[n + 5], pieces[n + 6], pieces[n + 7] = head, text, tail
    n = n + 7
    local size = #head + #text + #tail
    if keep > 0 and size <= budget then
      m = m + 1
      entries[m] = text .. ' ' .. head .. text .. tail
      total = total + size
      if size > biggest then
        biggest = size
      end
    end
    ids[#ids + 1] = id
  else
    ids[#ids + 1] = -1
  end
end
if n > 1 then
  redis.call('PUBLISH', P .. 'r:' .. room, table.concat(pieces))
end
if m > 0 then
  local hkey = P .. 'history:' .. room
  local length = redis.call('LPUSH', hkey, unpack(entries))
  -- 'largest': the largest payload the room's history has taken.  While
  -- `keep` of those fit in the byte bound, only the count can bind: the
  -- history is trimmed to `keep` without reading back what goes, and its
  -- byte count is left undone ('bytes' -1), since reading the dropped
  -- entries back would cost Redis more than the trim itself.
  local meta = redis.call('HMGET', rkey, 'bytes', 'largest')
  local bytes, largest = tonumber(meta[1] or 0), tonumber(meta[2] or 0)
  if biggest > largest then
    largest = biggest
    redis.call('HSET', rkey, 'largest', largest)
  end
  if largest * keep <= budget then
    if length > keep then
      redis.call('LTRIM', hkey, 0, keep - 1)
    end
    if bytes ~= -1 then
      redis.call('HSET', rkey, 'bytes', -1)
    end
  else
    -- Counted exactly: from the list, the first time; then the oldest
    -- entries go, a batch's worth in one RPOP, until the history is
    -- within both bounds, and the count is written once.
    if bytes == -1 then
      bytes = 0
      for _, entry in ipairs(redis.call('LRANGE', hkey, 0, -1)) do
        bytes = bytes + #entry - string.find(entry, ' ', 1, true)
      end
    else
      bytes = bytes + total
    end
    local function drop(dropped)
      bytes = bytes - (#dropped - string.find(dropped, ' ', 1, true))
      length = length - 1
    end
    if length > keep then
      for _, dropped in ipairs(redis.call('RPOP', hkey, length - keep)) do
        drop(dropped)
      end
    end
    while length > 0 and bytes > budget do
      drop(redis.call('RPOP', hkey))
    end
    redis.call('HSET', rkey, 'bytes', bytes)
  end
end
return ids
"""

#: ARGV: prefix, after (a creation sequence), how many, the key prefix of
#: the set to look the keys up in, the keys as JSON, the fields as JSON.
#: For each of the first rooms after ``after``: {ID, seq, members,
#: {fields}, {1 or 0 for each key: in the room's set}}.  The node chooses
#: which it shows (chatd.rooms.rules.visible).
LIST = _PRELUDE + r"""
local after, limit, set = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local keys, fields = cjson.decode(ARGV[5]), cjson.decode(ARGV[6])
local out = {}
local ids = redis.call('ZRANGEBYSCORE', P .. 'rooms', '(' .. after, '+inf', 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #ids, 2 do
  local room = ids[i]
  local meta = redis.call('HMGET', P .. 'room:' .. room, unpack(fields))
  for j = 1, #fields do
    meta[j] = result(meta[j])
  end
  local listed = {}
  if #keys > 0 then
    listed = redis.call('SMISMEMBER', P .. set .. room, unpack(keys))
  end
  out[#out + 1] = {room, ids[i + 1], redis.call('ZCARD', P .. 'members:' .. room), meta, listed}
end
return out
"""

#: ARGV: prefix, room, limit, before (0: none), client.  Payloads, oldest
#: first; or 'notin' or 'gone', as for MEMBERS.
HISTORY = _PRELUDE + r"""
local room, limit, before = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local reader = reader_in(room, ARGV[5])
if reader then
  return reader
end
local found = {}
for _, entry in ipairs(redis.call('LRANGE', P .. 'history:' .. room, 0, -1)) do
  local space = string.find(entry, ' ', 1, true)
  local id = tonumber(string.sub(entry, 1, space - 1))
  if before == 0 or id < before then
    table.insert(found, string.sub(entry, space + 1))
    if #found == limit then
      break
    end
  end
end
local out = {}
for i = #found, 1, -1 do
  table.insert(out, found[i])
end
return out
"""

#: ARGV: prefix, node, lease in ms.  1 if the lease was renewed, 0 if it had
#: gone (Redis restarted, or the node was taken for dead): time to resync.
HEARTBEAT = _PRELUDE + r"""
if redis.call('SET', P .. 'node:' .. ARGV[2], '1', 'PX', ARGV[3], 'XX') then
  return 1
end
return 0
"""

#: ARGV: prefix.  A flat list: node, clients removed, for every node whose
#: lease has run out.
REAP = _PRELUDE + r"""
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  if redis.call('EXISTS', P .. 'node:' .. node) == 0 then
    table.insert(out, node)
    table.insert(out, purge_node(node))
  end
end
return out
"""

#: ARGV: prefix, node.  Clients removed.
GOODBYE = _PRELUDE + r"""
return purge_node(ARGV[2])
"""

#: ARGV: prefix, node, lease in ms, the node's state as JSON:
#: {"clients": [[id, [room, ...], who, claim, counted, user], ...],
#:  "rooms": {id: {"fields": [field, value, ...], "seq": s, "last_id": n,
#:                 "sets": [key, kind, ...]}, ...},
#:  "sets": [[room, key, member, client], ...]}
#: (seq and last_id as text: Redis writes large Lua numbers as 1.2e+14).
#: Makes Redis agree with the node (after a restart of Redis, or after the
#: node was taken for dead): its clients, the rooms each is in, memberships, each
#: room's message counter at least what the node has seen, and the members
#: of the room's sets the node knows of (a set's member named with a
#: client of the node's that another node holds is left out).  Clients
#: whose ID another node holds are listed in the reply (they cannot be
#: kept).
RESYNC = _PRELUDE + r"""
local node, lease, state = ARGV[2], ARGV[3], cjson.decode(ARGV[4])
local wanted = {}
for _, c in ipairs(state.clients) do
  wanted[c[1]] = c
end
-- Clients Redis has for this node that the node no longer has.
for _, client in ipairs(redis.call('SMEMBERS', P .. 'node-clients:' .. node)) do
  if not wanted[client] and redis.call('HGET', P .. 'client:' .. client, 'node') == node then
    leave_rooms(client, '*')
    forget_user(client)
    redis.call('DEL', P .. 'client:' .. client, P .. 'client-rooms:' .. client)
    redis.call('SREM', P .. 'node-clients:' .. node, client)
  end
end
-- Rooms the node has members in.
local maxseq = 0
for room, r in pairs(state.rooms) do
  local rkey = P .. 'room:' .. room
  if redis.call('EXISTS', rkey) == 0 then
    redis.call('HSET', rkey, 'seq', r.seq, 'last_id', r.last_id, 'bytes', 0, unpack(r.fields))
    for i = 1, #r.sets, 2 do
      redis.call('HSET', P .. 'sets:' .. room, P .. r.sets[i], r.sets[i + 1])
    end
    redis.call('ZADD', P .. 'rooms', r.seq, room)
  elseif tonumber(redis.call('HGET', rkey, 'last_id')) < tonumber(r.last_id) then
    redis.call('HSET', rkey, 'last_id', r.last_id)
  end
  if tonumber(r.seq) > maxseq then
    maxseq = tonumber(r.seq)
  end
end
if tonumber(redis.call('GET', P .. 'seq:room') or '0') < maxseq then
  redis.call('SET', P .. 'seq:room', string.format('%d', maxseq))
end
-- The node's clients, each in its room.
local refused, kept = {}, {}
for id, c in pairs(wanted) do
  local ckey = P .. 'client:' .. id
  local holder = redis.call('HGET', ckey, 'node')
  if holder and holder ~= node then
    table.insert(refused, id)
  else
    kept[id] = true
    local rooms, who, claim, counted, user = c[2], c[3], c[4], c[5], c[6]
    local in_them = {}
    for _, room in ipairs(rooms) do
      in_them[room] = true
    end
    for _, room in ipairs(rooms_of(id)) do
      if not in_them[room] then
        leave_room(id, room)
      end
    end
    redis.call('HSET', ckey, 'node', node, 'who', who, 'claim', claim, 'counted', counted, 'user', user)
    redis.call('SADD', P .. 'node-clients:' .. node, id)
    if user ~= '' then
      redis.call('SADD', P .. 'user-clients:' .. user, id)
    end
    for _, room in ipairs(rooms) do
      redis.call('SADD', P .. 'client-rooms:' .. id, room)
      if redis.call('ZADD', P .. 'members:' .. room, 'NX', redis.call('INCR', P .. 'seq:join'), id) == 1 then
        count(room, counted, 1)
      end
      if claim ~= '' then
        redis.call('HSETNX', P .. 'claims:' .. room, claim, id)
      end
    end
  end
end
for _, s in ipairs(state.sets) do
  if kept[s[4]] then
    apply({{'sadd', s[1], s[2], s[3]}})
  end
end
-- A set of one left empty here is not filled now: the other nodes may not
-- have told Redis of its holder yet.  A read that finds it empty has its
-- next holder picked first.
for room, _ in pairs(state.rooms) do
  if redis.call('EXISTS', P .. 'room:' .. room) == 1 then
    bump(room)
  end
end
redis.call('SET', P .. 'node:' .. node, '1', 'PX', lease)
redis.call('SADD', P .. 'nodes', node)
return refused
"""


#: Every script, loaded into Redis as a node connects (RedisBackplane).
ALL = (REGISTER, UNREGISTER, LOOK, CHANGE, DIRECT, CREATE, ENTER, REVIVE, LEAVE, PUBLISH, LIST, HISTORY,
       HEARTBEAT, REAP, GOODBYE, RESYNC)
