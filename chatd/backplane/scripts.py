"""
The Lua scripts that keep the cluster's shared state in Redis.

Each runs atomically in Redis, so two nodes can never both take a room's
last member out and leave a room without members, or join a room that is
being deleted.  docs/scaling.md describes the keys; in short, with P the
prefix (``chatd:``):

- ``P room:ID``          hash: name, created_at, created_by, seq, last_id, bytes
  (-1: not counted), largest, owner (a client ID), private ('1' or '0')
- ``P mods:ID``          set: the room's moderators (client IDs)
- ``P invited:ID``       set: who may join a private room: ``c:CLIENT`` or
  ``u:USER``
- ``P banned:ID``        set: who may not join the room, the same way
- ``P rooms``            sorted set: room ID by creation sequence (``list``)
- ``P members:ID``       sorted set: client ID by join sequence (``members``)
- ``P nicks:ID``         hash: case-folded nick -> client ID (unique per room)
- ``P users:ID``         hash: case-folded user name -> how many of its
  connections are members (no one else may take it as a nick)
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
create, op, deop, owner): the user name (empty for a guest) is ``length``
bytes long, and the nick is the rest;
``k<client> <by> <reason>`` the client is kicked out of the room (its leave
event follows).

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

-- One more (or, with -1, one fewer) connection of a user in a room.
local function count_user(room, ufolded, by)
  if ufolded and ufolded ~= '' then
    if redis.call('HINCRBY', P .. 'users:' .. room, ufolded, by) <= 0 then
      redis.call('HDEL', P .. 'users:' .. room, ufolded)
    end
  end
end

-- A room's hash of nicks no longer holds ``folded`` for
-- ``client``.
local function release_name(hash, folded, client)
  if folded and folded ~= '' and redis.call('HGET', hash, folded) == client then
    redis.call('HDEL', hash, folded)
  end
end

-- The keys a client's invitations and bans are found under.
local function names_of(client)
  local user = redis.call('HGET', P .. 'client:' .. client, 'user')
  if user and user ~= '' then
    return {'c:' .. client, 'u:' .. user}
  end
  return {'c:' .. client}
end

-- Whether any of ``names`` is in the set ``key``.
local function listed(key, names)
  for _, name in ipairs(names) do
    if redis.call('SISMEMBER', key, name) == 1 then
      return true
    end
  end
  return false
end

local function overlap(names, others)
  for _, name in ipairs(names) do
    for _, other in ipairs(others) do
      if name == other then
        return true
      end
    end
  end
  return false
end

-- A member's event about itself, with its nick and user.
local function publish_about(room, kind, client)
  local nick, user = unpack(redis.call('HMGET', P .. 'client:' .. client, 'nick', 'user'))
  publish_event(room, kind, client, nick, user)
end

-- The room changed in what a rule reads (members, their users, roles,
-- invitations, bans): a decision made on the room as it was is stale.
local function bump(room)
  redis.call('HINCRBY', P .. 'room:' .. room, 'v', 1)
end

-- The owner is gone: the longest-present moderator owns the room, else
-- the longest-present member (members are scored by when they joined).
local function succeed_owner(room)
  local members = redis.call('ZRANGE', P .. 'members:' .. room, 0, -1)
  local heir = members[1]
  for _, member in ipairs(members) do
    if redis.call('SISMEMBER', P .. 'mods:' .. room, member) == 1 then
      heir = member
      break
    end
  end
  redis.call('HSET', P .. 'room:' .. room, 'owner', heir)
  bump(room)
  publish_about(room, 'owner', heir)
end

-- The room's owner; a room whose owner is no member (after Redis lost its
-- data with the owner's node gone too) gets one first.
local function owner_of(room)
  local owner = redis.call('HGET', P .. 'room:' .. room, 'owner')
  if not owner or owner == '' or not redis.call('ZSCORE', P .. 'members:' .. room, owner) then
    if redis.call('ZCARD', P .. 'members:' .. room) == 0 then
      return ''
    end
    succeed_owner(room)
    owner = redis.call('HGET', P .. 'room:' .. room, 'owner')
  end
  return owner
end

-- A member's role, given the room's owner (owner_of, looked up once).
local function role_of(room, client, owner)
  if owner == client then
    return 'owner'
  end
  if redis.call('SISMEMBER', P .. 'mods:' .. room, client) == 1 then
    return 'moderator'
  end
  return 'member'
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
  count_user(room, ufolded, -1)
  if redis.call('ZCARD', P .. 'members:' .. room) == 0 then
    redis.call('DEL', P .. 'room:' .. room, P .. 'members:' .. room,
               P .. 'nicks:' .. room, P .. 'users:' .. room, P .. 'history:' .. room,
               P .. 'mods:' .. room, P .. 'invited:' .. room, P .. 'banned:' .. room)
    redis.call('ZREM', P .. 'rooms', room)
    return room, 1
  end
  publish_event(room, 'leave', client, nick, user)
  bump(room)
  redis.call('SREM', P .. 'mods:' .. room, client)
  if redis.call('HGET', P .. 'room:' .. room, 'owner') == client then
    succeed_owner(room)
  end
  return room, 0
end

local function enter_room(client, room, kind)
  local ckey = P .. 'client:' .. client
  local folded, nick, user, ufolded = unpack(redis.call('HMGET', ckey, 'folded', 'nick', 'user', 'ufolded'))
  redis.call('ZADD', P .. 'members:' .. room, redis.call('INCR', P .. 'seq:join'), client)
  if folded and folded ~= '' then
    redis.call('HSET', P .. 'nicks:' .. room, folded, client)
  end
  count_user(room, ufolded, 1)
  redis.call('HSET', ckey, 'room', room)
  bump(room)
  publish_event(room, kind, client, nick, user)
end

-- Whether another member of the room has this nick, or is the
-- authenticated user of that name (a user's own connections share them).
-- A user's own name is never taken by another's nick (see take_nick).
local function nick_taken(room, folded, client)
  if not folded or folded == '' then
    return false
  end
  local mine = redis.call('HGET', P .. 'client:' .. client, 'ufolded') or ''
  if folded == mine then
    return false
  end
  local holder = redis.call('HGET', P .. 'nicks:' .. room, folded)
  if holder and holder ~= client
      and (mine == '' or redis.call('HGET', P .. 'client:' .. holder, 'ufolded') ~= mine) then
    return true
  end
  return redis.call('HEXISTS', P .. 'users:' .. room, folded) == 1
end

-- The member of the room (another user's connection aside) whose nick
-- reads as the client's user name, and that name; nil if none.
local function name_holder(room, client)
  local ufolded = redis.call('HGET', P .. 'client:' .. client, 'ufolded')
  if not ufolded or ufolded == '' then
    return nil
  end
  local holder = redis.call('HGET', P .. 'nicks:' .. room, ufolded)
  if not holder or holder == client
      or redis.call('HGET', P .. 'client:' .. holder, 'ufolded') == ufolded then
    return nil
  end
  return holder, ufolded
end

-- A user's own name wins over a nick: the holder (name_holder) loses it,
-- and a 'nick' event with no nick tells everyone.
local function take_nick(room, holder, name)
  local hkey = P .. 'client:' .. holder
  release_name(P .. 'nicks:' .. room, name, holder)
  redis.call('HSET', hkey, 'nick', '', 'folded', '')
  publish_event(room, 'nick', holder, '', redis.call('HGET', hkey, 'user'))
end

-- Why ``client`` may not read ``room``: 'notin' (it is not a member, any
-- more), 'gone' (no record of it here: a resync is due); nil: it may.
local function reader_in(room, client)
  local current = redis.call('HGET', P .. 'client:' .. client, 'room')
  if not current then
    return 'gone'
  end
  if current ~= room then
    return 'notin'
  end
  return nil
end

-- A client of a live node that this Redis has no record of (a shard that
-- was away when it connected, or registered it too late for the resync) is
-- recorded as its node knows it.  False if another node holds the ID, or
-- this node's lease is gone (its resync is due).
local function adopt(node, client, nick, folded, user, ufolded)
  local holder = redis.call('HGET', P .. 'client:' .. client, 'node')
  if holder then
    return holder == node
  end
  if redis.call('EXISTS', P .. 'node:' .. node) == 0 then
    return false
  end
  redis.call('HSET', P .. 'client:' .. client, 'node', node, 'room', '', 'nick', nick, 'folded', folded,
             'user', user, 'ufolded', ufolded)
  redis.call('SADD', P .. 'node-clients:' .. node, client)
  if user ~= '' then
    redis.call('SADD', P .. 'user-clients:' .. user, client)
  end
  return true
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

#: ARGV: prefix, node, client, user, folded user.  'ok', 'gone', or
#: 'banned': the user is banned from the client's room (as a join would be).
AUTH = _PRELUDE + r"""
local node, client, user, ufolded = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ckey = P .. 'client:' .. client
if redis.call('HGET', ckey, 'node') ~= node then
  return 'gone'
end
local room = redis.call('HGET', ckey, 'room')
if room and room ~= '' then
  if redis.call('SISMEMBER', P .. 'banned:' .. room, 'u:' .. user) == 1 then
    return 'banned'
  end
  count_user(room, redis.call('HGET', ckey, 'ufolded'), -1)
  count_user(room, ufolded, 1)
  bump(room)
end
forget_user(client)
redis.call('HSET', ckey, 'user', user, 'ufolded', ufolded)
redis.call('SADD', P .. 'user-clients:' .. user, client)
if room and room ~= '' then
  local holder, name = name_holder(room, client)
  if holder then
    take_nick(room, holder, name)
  end
end
return 'ok'
"""

#: ARGV: prefix, sender, to (a client ID, else a user name), the encoded
#: message, and 'n' for a notice (an invitation) or nothing.  How many
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
local count = 0
for at, clients in pairs(by_node) do
  redis.call('PUBLISH', P .. 'd:' .. at, sender .. ' ' .. table.concat(clients, ',') .. kind .. '\n' .. payload)
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

#: ARGV: prefix, node, client, candidate room ID, name, created_at, private
#: ('1' or '0'), the client's nick, folded nick, user, folded user (see
#: adopt), the number of shards and this one's position.  {'ok', room ID,
#: seq, old room, old deleted} or {'taken'} or {'gone'}.
CREATE = _PRELUDE + r"""
local node, client, room, name, created_at, private = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local stride, offset = tonumber(ARGV[12]), tonumber(ARGV[13])
if not adopt(node, client, ARGV[8], ARGV[9], ARGV[10], ARGV[11]) then
  return {'gone'}
end
if redis.call('EXISTS', P .. 'room:' .. room) == 1 then
  return {'taken'}
end
local old, deleted = leave_room(client)
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
redis.call('HSET', P .. 'room:' .. room, 'name', name, 'created_at', created_at,
           'created_by', client, 'seq', seq, 'last_id', 0, 'bytes', 0, 'owner', client, 'private', private)
if private == '1' then
  -- Its creator may come back while it lives, like anyone invited.
  redis.call('SADD', P .. 'invited:' .. room, unpack(names_of(client)))
end
redis.call('ZADD', P .. 'rooms', seq, room)
enter_room(client, room, 'create')
return {'ok', room, seq, old, deleted}
"""

#: ARGV: prefix, node, client, room, since (-1: none), the client's nick,
#: folded nick, user, folded user (see adopt).
#: {'ok', name, created_at, created_by, seq, last_id, old room, old deleted,
#: recovered (1, 0; -1 without since), {payloads after since}, owner,
#: private}, {'same', ...} when already in it, or {'nf'} (no such room, or
#: a private one the client is not invited to), {'banned'}, {'nick'},
#: {'gone'}.
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
if not adopt(node, client, ARGV[6], ARGV[7], ARGV[8], ARGV[9]) then
  return {'gone'}
end
local rkey = P .. 'room:' .. room
if redis.call('EXISTS', rkey) == 0 then
  return {'nf'}
end
local meta = redis.call('HMGET', rkey, 'name', 'created_at', 'created_by', 'seq', 'last_id', 'owner', 'private')
if redis.call('HGET', ckey, 'room') == room then
  local r = recovery(tonumber(meta[5]))
  return {'same', meta[1], meta[2], meta[3], meta[4], meta[5], '', 0, r[1], r[2], meta[6], meta[7]}
end
local names = names_of(client)
if meta[7] == '1' and not listed(P .. 'invited:' .. room, names) then
  return {'nf'}  -- as if there were none, a ban included: nothing leaks
end
if listed(P .. 'banned:' .. room, names) then
  return {'banned'}
end
if nick_taken(room, redis.call('HGET', ckey, 'folded'), client) then
  return {'nick'}
end
local holder, name = name_holder(room, client)  -- before its own nick takes the name
local old, deleted = leave_room(client)
enter_room(client, room, 'join')
if holder then
  take_nick(room, holder, name)
end
local r = recovery(tonumber(meta[5]))
return {'ok', meta[1], meta[2], meta[3], meta[4], meta[5], old, deleted, r[1], r[2], meta[6], meta[7]}
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

#: ARGV: prefix, after (a creation sequence), limit, client.  A flat list:
#: ID, name, members, created_at, seq, private for up to limit + 1 rooms the
#: client may see (a private room only by its members and whoever is
#: invited).
LIST = _PRELUDE + r"""
local after, limit, client = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local names = names_of(client)
local mine = redis.call('HGET', P .. 'client:' .. client, 'room')
local out, found = {}, 0
local cursor = '(' .. after
while found <= limit do
  local ids = redis.call('ZRANGEBYSCORE', P .. 'rooms', cursor, '+inf', 'WITHSCORES', 'LIMIT', 0, limit + 1)
  for i = 1, #ids, 2 do
    local room = ids[i]
    local meta = redis.call('HMGET', P .. 'room:' .. room, 'name', 'created_at', 'private')
    if meta[3] ~= '1' or room == mine or listed(P .. 'invited:' .. room, names) then
      table.insert(out, room)
      table.insert(out, meta[1] or '')
      table.insert(out, redis.call('ZCARD', P .. 'members:' .. room))
      table.insert(out, meta[2] or '')
      table.insert(out, ids[i + 1])
      table.insert(out, meta[3] or '0')
      found = found + 1
      if found > limit then
        break
      end
    end
    cursor = '(' .. ids[i + 1]
  end
  if #ids < 2 * (limit + 1) then
    break
  end
end
return out
"""

#: ARGV: prefix, room, client.  A flat list: client ID, nick, user ('' for
#: none), role, in join order; or 'notin' if the client is not in the room
#: (any more), 'gone' if this Redis has no record of it.
MEMBERS = _PRELUDE + r"""
local room = ARGV[2]
local reader = reader_in(room, ARGV[3])
if reader then
  return reader
end
local out = {}
local owner = owner_of(room)
for _, client in ipairs(redis.call('ZRANGE', P .. 'members:' .. room, 0, -1)) do
  local nick, user = unpack(redis.call('HMGET', P .. 'client:' .. client, 'nick', 'user'))
  table.insert(out, client)
  table.insert(out, nick or '')
  table.insert(out, user or '')
  table.insert(out, role_of(room, client, owner))
end
return out
"""

#: ARGV: prefix, node, client, target client ('' for none).  What the room
#: rules read of the client's room (chatd.rooms.rules.manage), and the
#: room's version: {'ok', room, version, name, owner, private ('1'/'0'),
#: {moderators}, {invited}, {banned}, {member, user, ...} in join order,
#: target's user, target's room}, or {'noroom'}, {'gone'}.
ROOM = _PRELUDE + r"""
local node, client, target = ARGV[2], ARGV[3], ARGV[4]
local ckey = P .. 'client:' .. client
if redis.call('HGET', ckey, 'node') ~= node then
  return {'gone'}
end
local room = redis.call('HGET', ckey, 'room')
if not room or room == '' then
  return {'noroom'}
end
local rkey = P .. 'room:' .. room
local owner = owner_of(room)
local meta = redis.call('HMGET', rkey, 'name', 'private', 'v')
local members = {}
for _, member in ipairs(redis.call('ZRANGE', P .. 'members:' .. room, 0, -1)) do
  members[#members + 1] = member
  members[#members + 1] = redis.call('HGET', P .. 'client:' .. member, 'user') or ''
end
local tuser, troom = '', ''
if target ~= '' then
  local t = redis.call('HMGET', P .. 'client:' .. target, 'user', 'room')
  tuser, troom = t[1] or '', t[2] or ''
end
return {'ok', room, meta[3] or '0', meta[1], owner, meta[2] or '0',
        redis.call('SMEMBERS', P .. 'mods:' .. room), redis.call('SMEMBERS', P .. 'invited:' .. room),
        redis.call('SMEMBERS', P .. 'banned:' .. room), members, tuser, troom}
"""

#: ARGV: prefix, node, client, room, version (ROOM's), reason, and the
#: changes as JSON ({"ban": [...], "unban": [...], "invite": [...],
#: "uninvite": [...], "op": ID or "", "deop": ID or "", "remove": [...]}).
#: Applied only if the room is still as the rule read it: 'ok'; 'stale'
#: (decide again on a fresh ROOM); 'gone'.  No rule in here: the changes
#: were decided in Python.
APPLY = _PRELUDE + r"""
local node, client, room, version, reason = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local changes = cjson.decode(ARGV[7])
if redis.call('HGET', P .. 'client:' .. client, 'node') ~= node then
  return 'gone'
end
local rkey = P .. 'room:' .. room
if redis.call('HGET', P .. 'client:' .. client, 'room') ~= room
    or (redis.call('HGET', rkey, 'v') or '0') ~= version then
  return 'stale'
end
local banned, invited, mods = P .. 'banned:' .. room, P .. 'invited:' .. room, P .. 'mods:' .. room
for _, key in ipairs(changes.unban) do
  redis.call('SREM', banned, key)
end
for _, key in ipairs(changes.ban) do
  redis.call('SADD', banned, key)
end
for _, key in ipairs(changes.invite) do
  redis.call('SADD', invited, key)
end
for _, key in ipairs(changes.uninvite) do
  redis.call('SREM', invited, key)
end
if changes.op ~= '' then
  redis.call('SADD', mods, changes.op)
  publish_about(room, 'op', changes.op)
end
if changes.deop ~= '' then
  redis.call('SREM', mods, changes.deop)
  publish_about(room, 'deop', changes.deop)
end
for _, member in ipairs(changes.remove) do
  redis.call('PUBLISH', P .. 'r:' .. room, 'k' .. member .. ' ' .. client .. ' ' .. reason)
  leave_room(member)
end
if redis.call('EXISTS', rkey) == 1 then
  bump(room)
end
return 'ok'
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
#: {"clients": [[id, room, nick, folded, user, ufolded, role], ...],
#:  "rooms": {id: [name, created_at, created_by, seq, last_id, private], ...}}
#: (seq and last_id as text: Redis writes large Lua numbers as 1.2e+14).
#: Makes Redis agree with the node (after a restart of Redis, or after the
#: node was taken for dead): its clients, their rooms and memberships, each
#: room's message counter at least what the node has seen, and who owns and
#: moderates it (a private room's invitations are its members; other
#: invitations and bans are lost with Redis's data).  Clients whose ID
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
               'seq', meta[4], 'last_id', meta[5], 'bytes', 0, 'owner', '', 'private', meta[6])
    redis.call('ZADD', P .. 'rooms', meta[4], room)
  elseif tonumber(redis.call('HGET', rkey, 'last_id')) < tonumber(meta[5]) then
    redis.call('HSET', rkey, 'last_id', meta[5])
  end
  if seq > maxseq then
    maxseq = seq
  end
end
if tonumber(redis.call('GET', P .. 'seq:room') or '0') < maxseq then
  redis.call('SET', P .. 'seq:room', string.format('%d', maxseq))
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
      if redis.call('ZADD', P .. 'members:' .. room, 'NX', redis.call('INCR', P .. 'seq:join'), id) == 1 then
        count_user(room, ufolded, 1)
      end
      if folded ~= '' and not nick_taken(room, folded, id) then
        redis.call('HSET', P .. 'nicks:' .. room, folded, id)
      end
      if c[7] == 'owner' then
        redis.call('HSET', P .. 'room:' .. room, 'owner', id)
      elseif c[7] == 'moderator' then
        redis.call('SADD', P .. 'mods:' .. room, id)
      end
      if redis.call('HGET', P .. 'room:' .. room, 'private') == '1' then
        redis.call('SADD', P .. 'invited:' .. room, unpack(names_of(id)))
      end
    end
  end
end
for room, _ in pairs(state.rooms) do
  bump(room)
end
redis.call('SET', P .. 'node:' .. node, '1', 'PX', lease)
redis.call('SADD', P .. 'nodes', node)
return refused
"""


#: Every script, loaded into Redis as a node connects (RedisBackplane).
ALL = (REGISTER, UNREGISTER, AUTH, DIRECT, CREATE, JOIN, LEAVE, PUBLISH, LIST, MEMBERS, ROOM, APPLY, NICK, HISTORY,
       HEARTBEAT, REAP, GOODBYE, RESYNC)
