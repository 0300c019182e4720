"""
The Lua scripts that keep the cluster's shared state in Redis.

Each runs atomically in Redis, so two nodes can never both take a room's
last member out and leave a room without members, or join a room that is
being deleted.  docs/scaling.md describes the keys; in short, with P the
prefix (``chatd:``):

- ``P room:ID``          hash: name, created_at, created_by, seq, last_id, bytes
- ``P rooms``            sorted set: room ID by creation sequence (``list``)
- ``P members:ID``       sorted set: client ID by join sequence (``members``)
- ``P nicks:ID``         hash: case-folded nick -> client ID (unique per room)
- ``P users:ID``         hash: case-folded user name -> client ID, for the
  authenticated members (no one else may take it as a nick)
- ``P history:ID``       list, newest first: "ID PAYLOAD" (``history``)
- ``P client:ID``        hash: node, room, nick, folded, user, ufolded
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
by each node;
``e<kind> <client> <length> <user><nick>`` a room event (join, leave, nick,
create): the user name (empty for a guest) is ``length`` bytes long, and the
nick is the rest.

Every script takes the prefix as ARGV[1].
"""

from __future__ import annotations

# Helpers shared by every script (Lua has no modules inside Redis).
_PRELUDE = r"""
local P = ARGV[1]

local function publish_event(room, kind, client, nick, user)
  user = user or ''
  redis.call('PUBLISH', P .. 'r:' .. room,
             'e' .. kind .. ' ' .. client .. ' ' .. #user .. ' ' .. user .. (nick or ''))
end

-- A room's hash of names (nicks:, users:) no longer holds ``folded`` for
-- ``client``.
local function release_name(hash, folded, client)
  if folded and folded ~= '' and redis.call('HGET', hash, folded) == client then
    redis.call('HDEL', hash, folded)
  end
end

-- Take a client out of its room; the room goes when its last member does.
-- Returns the room ID ('' if none) and 1 if the room was deleted.
local function leave_room(client)
  local ckey = P .. 'client:' .. client
  local room = redis.call('HGET', ckey, 'room')
  if not room or room == '' then
    return '', 0
  end
  local folded, nick, user, ufolded = unpack(redis.call('HMGET', ckey, 'folded', 'nick', 'user', 'ufolded'))
  redis.call('HSET', ckey, 'room', '')
  redis.call('ZREM', P .. 'members:' .. room, client)
  release_name(P .. 'nicks:' .. room, folded, client)
  release_name(P .. 'users:' .. room, ufolded, client)
  if redis.call('ZCARD', P .. 'members:' .. room) == 0 then
    redis.call('DEL', P .. 'room:' .. room, P .. 'members:' .. room,
               P .. 'nicks:' .. room, P .. 'users:' .. room, P .. 'history:' .. room)
    redis.call('ZREM', P .. 'rooms', room)
    return room, 1
  end
  publish_event(room, 'leave', client, nick, user)
  return room, 0
end

local function enter_room(client, room, kind)
  local ckey = P .. 'client:' .. client
  local folded, nick, user, ufolded = unpack(redis.call('HMGET', ckey, 'folded', 'nick', 'user', 'ufolded'))
  redis.call('ZADD', P .. 'members:' .. room, redis.call('INCR', P .. 'seq:join'), client)
  if folded and folded ~= '' then
    redis.call('HSET', P .. 'nicks:' .. room, folded, client)
  end
  if ufolded and ufolded ~= '' then
    redis.call('HSET', P .. 'users:' .. room, ufolded, client)
  end
  redis.call('HSET', ckey, 'room', room)
  publish_event(room, kind, client, nick, user)
end

-- Whether another member of the room has this nick, or is the
-- authenticated user of that name.
local function nick_taken(room, folded, client)
  if not folded or folded == '' then
    return false
  end
  local holder = redis.call('HGET', P .. 'nicks:' .. room, folded)
  if holder and holder ~= client then
    return true
  end
  holder = redis.call('HGET', P .. 'users:' .. room, folded)
  return holder and holder ~= client
end

-- A client no longer counts among its user's connections.
local function forget_user(client)
  local user = redis.call('HGET', P .. 'client:' .. client, 'user')
  if user and user ~= '' then
    redis.call('SREM', P .. 'user-clients:' .. user, client)
  end
end

-- Everything a node has in Redis goes: its clients leave their rooms.
local function purge_node(node)
  local clients = redis.call('SMEMBERS', P .. 'node-clients:' .. node)
  for _, client in ipairs(clients) do
    if redis.call('HGET', P .. 'client:' .. client, 'node') == node then
      leave_room(client)
      forget_user(client)
      redis.call('DEL', P .. 'client:' .. client)
    end
  end
  redis.call('DEL', P .. 'node-clients:' .. node, P .. 'node:' .. node)
  redis.call('SREM', P .. 'nodes', node)
  return #clients
end
"""

#: ARGV: prefix, node, candidate client ID.  The ID, or false if taken.
REGISTER = _PRELUDE + r"""
local node, client = ARGV[2], ARGV[3]
local ckey = P .. 'client:' .. client
if redis.call('EXISTS', ckey) == 1 then
  return false
end
redis.call('HSET', ckey, 'node', node, 'room', '', 'nick', '', 'folded', '', 'user', '', 'ufolded', '')
redis.call('SADD', P .. 'node-clients:' .. node, client)
return client
"""

#: ARGV: prefix, node, client, user, folded user.  'ok' or 'gone'.
AUTH = _PRELUDE + r"""
local node, client, user, ufolded = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ckey = P .. 'client:' .. client
if redis.call('HGET', ckey, 'node') ~= node then
  return 'gone'
end
local room = redis.call('HGET', ckey, 'room')
if room and room ~= '' then
  release_name(P .. 'users:' .. room, redis.call('HGET', ckey, 'ufolded'), client)
  redis.call('HSET', P .. 'users:' .. room, ufolded, client)
end
forget_user(client)
redis.call('HSET', ckey, 'user', user, 'ufolded', ufolded)
redis.call('SADD', P .. 'user-clients:' .. user, client)
return 'ok'
"""

#: ARGV: prefix, sender, to (a client ID, else a user name), the encoded
#: message.  How many connections it went to, or -1: nobody of that name.
DIRECT = _PRELUDE + r"""
local sender, to, payload = ARGV[2], ARGV[3], ARGV[4]
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
local count = 0
for at, clients in pairs(by_node) do
  redis.call('PUBLISH', P .. 'd:' .. at, sender .. ' ' .. table.concat(clients, ',') .. '\n' .. payload)
  count = count + #clients
end
return count
"""

#: ARGV: prefix, node, client.  {room left, 1 if it was deleted}.
UNREGISTER = _PRELUDE + r"""
local node, client = ARGV[2], ARGV[3]
local ckey = P .. 'client:' .. client
if redis.call('HGET', ckey, 'node') ~= node then
  return {'', 0}
end
local room, deleted = leave_room(client)
forget_user(client)
redis.call('DEL', ckey)
redis.call('SREM', P .. 'node-clients:' .. node, client)
return {room, deleted}
"""

#: ARGV: prefix, node, client, candidate room ID, name, created_at.
#: {'ok', room ID, seq, old room, old deleted} or {'taken'} or {'gone'}.
CREATE = _PRELUDE + r"""
local node, client, room, name, created_at = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('HGET', P .. 'client:' .. client, 'node') ~= node then
  return {'gone'}
end
if redis.call('EXISTS', P .. 'room:' .. room) == 1 then
  return {'taken'}
end
local old, deleted = leave_room(client)
local seq = redis.call('INCR', P .. 'seq:room')
redis.call('HSET', P .. 'room:' .. room, 'name', name, 'created_at', created_at,
           'created_by', client, 'seq', seq, 'last_id', 0, 'bytes', 0)
redis.call('ZADD', P .. 'rooms', seq, room)
enter_room(client, room, 'create')
return {'ok', room, seq, old, deleted}
"""

#: ARGV: prefix, node, client, room, since (-1: none).
#: {'ok', name, created_at, created_by, seq, last_id, old room, old deleted,
#: recovered (1, 0; -1 without since), {payloads after since}},
#: {'same', ...} when already in it, or {'nf'}, {'nick'}, {'gone'}.
JOIN = _PRELUDE + r"""
local node, client, room, since = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5] or '-1')

-- What a client that saw the room up to ``since`` missed, from its history
-- (kept at publication, in this same step as the join: each message is
-- either in here or reaches the client live, never both, never neither):
-- 1 if all of it is there, and the payloads oldest first.
local function recovery(last_id)
  if since < 0 then
    return {-1, {}}
  end
  local found = {}
  for _, entry in ipairs(redis.call('LRANGE', P .. 'history:' .. room, 0, -1)) do
    local space = string.find(entry, ' ', 1, true)
    local id = tonumber(string.sub(entry, 1, space - 1))
    if id <= since and since <= last_id then
      break
    end
    table.insert(found, string.sub(entry, space + 1))
  end
  local out = {}
  for i = #found, 1, -1 do
    table.insert(out, found[i])
  end
  local all = (since <= last_id and #found == last_id - since) and 1 or 0
  return {all, out}
end
local ckey = P .. 'client:' .. client
if redis.call('HGET', ckey, 'node') ~= node then
  return {'gone'}
end
local rkey = P .. 'room:' .. room
if redis.call('EXISTS', rkey) == 0 then
  return {'nf'}
end
local meta = redis.call('HMGET', rkey, 'name', 'created_at', 'created_by', 'seq', 'last_id')
if redis.call('HGET', ckey, 'room') == room then
  local r = recovery(tonumber(meta[5]))
  return {'same', meta[1], meta[2], meta[3], meta[4], meta[5], '', 0, r[1], r[2]}
end
if nick_taken(room, redis.call('HGET', ckey, 'folded'), client) then
  return {'nick'}
end
local old, deleted = leave_room(client)
enter_room(client, room, 'join')
local r = recovery(tonumber(meta[5]))
return {'ok', meta[1], meta[2], meta[3], meta[4], meta[5], old, deleted, r[1], r[2]}
"""

#: ARGV: prefix, node, client.  {room left, 1 if deleted} ('' if in none).
LEAVE = _PRELUDE + r"""
local node, client = ARGV[2], ARGV[3]
if redis.call('HGET', P .. 'client:' .. client, 'node') ~= node then
  return {'', 0}
end
local room, deleted = leave_room(client)
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
    ok = redis.call('HGET', P .. 'client:' .. client, 'room') == room
    in_room[client] = ok
  end
  if ok then
    count = count + 1
  end
end
local ids, lines, entries, total = {}, {}, {}, 0
local id = 0
if count > 0 then
  id = redis.call('HINCRBY', rkey, 'last_id', count) - count
end
for i = 6, #ARGV, 3 do
  local client = ARGV[i]
  if in_room[client] then
    id = id + 1
    local payload = ARGV[i + 1] .. id .. ARGV[i + 2]
    lines[#lines + 1] = id .. ' ' .. client .. ' ' .. payload
    if keep > 0 and #payload <= budget then
      entries[#entries + 1] = id .. ' ' .. payload
      total = total + #payload
    end
    ids[#ids + 1] = id
  else
    ids[#ids + 1] = -1
  end
end
if #lines > 0 then
  redis.call('PUBLISH', P .. 'r:' .. room, 'M' .. table.concat(lines, '\n'))
end
if #entries > 0 then
  -- The oldest entries go, a batch's worth in one RPOP, until the history
  -- is within both bounds; its byte count is written once.
  local hkey = P .. 'history:' .. room
  local length = redis.call('LPUSH', hkey, unpack(entries))
  local bytes = tonumber(redis.call('HGET', rkey, 'bytes') or 0) + total
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
return ids
"""

#: ARGV: prefix, after (a creation sequence), limit.
#: A flat list: ID, name, members, created_at, seq for up to limit + 1 rooms.
LIST = _PRELUDE + r"""
local after, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', P .. 'rooms', '(' .. after, '+inf',
                       'WITHSCORES', 'LIMIT', 0, limit + 1)
local out = {}
for i = 1, #ids, 2 do
  local room = ids[i]
  local meta = redis.call('HMGET', P .. 'room:' .. room, 'name', 'created_at')
  table.insert(out, room)
  table.insert(out, meta[1] or '')
  table.insert(out, redis.call('ZCARD', P .. 'members:' .. room))
  table.insert(out, meta[2] or '')
  table.insert(out, ids[i + 1])
end
return out
"""

#: ARGV: prefix, room.  A flat list: client ID, nick, user ('' for none),
#: in join order.
MEMBERS = _PRELUDE + r"""
local room = ARGV[2]
local out = {}
for _, client in ipairs(redis.call('ZRANGE', P .. 'members:' .. room, 0, -1)) do
  local nick, user = unpack(redis.call('HMGET', P .. 'client:' .. client, 'nick', 'user'))
  table.insert(out, client)
  table.insert(out, nick or '')
  table.insert(out, user or '')
end
return out
"""

#: ARGV: prefix, node, client, nick, folded.  'ok', or 'taken', or 'gone'.
NICK = _PRELUDE + r"""
local node, client, nick, folded = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ckey = P .. 'client:' .. client
if redis.call('HGET', ckey, 'node') ~= node then
  return 'gone'
end
local room = redis.call('HGET', ckey, 'room')
if room and room ~= '' then
  if nick_taken(room, folded, client) then
    return 'taken'
  end
  release_name(P .. 'nicks:' .. room, redis.call('HGET', ckey, 'folded'), client)
  redis.call('HSET', P .. 'nicks:' .. room, folded, client)
end
redis.call('HSET', ckey, 'nick', nick, 'folded', folded)
if room and room ~= '' then
  publish_event(room, 'nick', client, nick, redis.call('HGET', ckey, 'user'))
end
return 'ok'
"""

#: ARGV: prefix, room, limit, before (0: none).  Payloads, oldest first.
HISTORY = _PRELUDE + r"""
local room, limit, before = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
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
#: {"clients": [[id, room, nick, folded, user, ufolded], ...],
#:  "rooms": {id: [name, created_at, created_by, seq, last_id], ...}}.
#: Makes Redis agree with the node (after a restart of Redis, or after the
#: node was taken for dead): its clients, their rooms and memberships, each
#: room's message counter at least what the node has seen.  Clients whose ID
#: another node holds are listed in the reply (they cannot be kept).
RESYNC = _PRELUDE + r"""
local node, lease, state = ARGV[2], ARGV[3], cjson.decode(ARGV[4])
local wanted = {}
for _, c in ipairs(state.clients) do
  wanted[c[1]] = c
end
-- Clients Redis has for this node that the node no longer has.
for _, client in ipairs(redis.call('SMEMBERS', P .. 'node-clients:' .. node)) do
  if not wanted[client] and redis.call('HGET', P .. 'client:' .. client, 'node') == node then
    leave_room(client)
    forget_user(client)
    redis.call('DEL', P .. 'client:' .. client)
    redis.call('SREM', P .. 'node-clients:' .. node, client)
  end
end
-- Rooms the node has members in.
local maxseq = 0
for room, meta in pairs(state.rooms) do
  local rkey = P .. 'room:' .. room
  local seq = tonumber(meta[4])
  if redis.call('EXISTS', rkey) == 0 then
    redis.call('HSET', rkey, 'name', meta[1], 'created_at', meta[2], 'created_by', meta[3],
               'seq', seq, 'last_id', meta[5], 'bytes', 0)
    redis.call('ZADD', P .. 'rooms', seq, room)
  elseif tonumber(redis.call('HGET', rkey, 'last_id')) < tonumber(meta[5]) then
    redis.call('HSET', rkey, 'last_id', meta[5])
  end
  if seq > maxseq then
    maxseq = seq
  end
end
if tonumber(redis.call('GET', P .. 'seq:room') or '0') < maxseq then
  redis.call('SET', P .. 'seq:room', maxseq)
end
-- The node's clients, each in its room.
local refused = {}
for id, c in pairs(wanted) do
  local ckey = P .. 'client:' .. id
  local holder = redis.call('HGET', ckey, 'node')
  if holder and holder ~= node then
    table.insert(refused, id)
  else
    local room, nick, folded, user, ufolded = c[2], c[3], c[4], c[5], c[6]
    if redis.call('HGET', ckey, 'room') ~= room then
      leave_room(id)
    end
    redis.call('HSET', ckey, 'node', node, 'room', room, 'nick', nick, 'folded', folded,
               'user', user, 'ufolded', ufolded)
    redis.call('SADD', P .. 'node-clients:' .. node, id)
    if user ~= '' then
      redis.call('SADD', P .. 'user-clients:' .. user, id)
    end
    if room ~= '' then
      redis.call('ZADD', P .. 'members:' .. room, 'NX', redis.call('INCR', P .. 'seq:join'), id)
      if ufolded ~= '' then
        redis.call('HSET', P .. 'users:' .. room, ufolded, id)
      end
      if folded ~= '' and not nick_taken(room, folded, id) then
        redis.call('HSET', P .. 'nicks:' .. room, folded, id)
      end
    end
  end
end
redis.call('SET', P .. 'node:' .. node, '1', 'PX', lease)
redis.call('SADD', P .. 'nodes', node)
return refused
"""


#: Every script, loaded into Redis as a node connects (RedisBackplane).
ALL = (REGISTER, UNREGISTER, AUTH, DIRECT, CREATE, JOIN, LEAVE, PUBLISH, LIST, MEMBERS, NICK, HISTORY, HEARTBEAT,
       REAP, GOODBYE, RESYNC)
