"""
The Lua helpers every script of :mod:`chatd.backplane.scripts` begins with
(Lua has no modules inside Redis): entering and leaving a room, a client's
record, and the generic reads, guards and changes a node's decisions are
applied through.  The keys they use are described in ``scripts``.
"""

from __future__ import annotations

PRELUDE = r"""
local P = ARGV[1]

local function publish_event(room, kind, client, who)
  redis.call('PUBLISH', P .. 'r:' .. room, 'e' .. kind .. ' ' .. client .. ' ' .. (who or '0 '))
end

-- One more (or, with -1, one fewer) member counted under ``name``.
local function count(room, name, by)
  if name and name ~= '' then
    if redis.call('HINCRBY', P .. 'counts:' .. room, name, by) <= 0 then
      redis.call('HDEL', P .. 'counts:' .. room, name)
    end
  end
end

-- The room's claims no longer give ``name`` to ``client``.
local function release(room, name, client)
  if name and name ~= '' and redis.call('HGET', P .. 'claims:' .. room, name) == client then
    redis.call('HDEL', P .. 'claims:' .. room, name)
  end
end

-- The room changed in what a rule reads: a decision on it as it was is stale.
local function bump(room)
  redis.call('HINCRBY', P .. 'room:' .. room, 'v', 1)
end

-- Every key of a room goes (its members are out of it already, or are
-- put out by the caller).
local function drop_keys(room)
  local sets = redis.call('HGETALL', P .. 'sets:' .. room)
  local keys = {P .. 'room:' .. room, P .. 'members:' .. room, P .. 'claims:' .. room,
                P .. 'counts:' .. room, P .. 'history:' .. room, P .. 'sets:' .. room}
  for i = 1, #sets, 2 do
    keys[#keys + 1] = sets[i]
  end
  redis.call('DEL', unpack(keys))
  redis.call('ZREM', P .. 'rooms', room)
end

-- The rooms a client is in here (those of this shard): its set, and the
-- 'room' field a client recorded by an older chatd may still have.
local function rooms_of(client)
  local rooms = redis.call('SMEMBERS', P .. 'client-rooms:' .. client)
  local legacy = redis.call('HGET', P .. 'client:' .. client, 'room')
  if legacy and legacy ~= '' and redis.call('SISMEMBER', P .. 'client-rooms:' .. client, legacy) == 0 then
    rooms[#rooms + 1] = legacy
  end
  return rooms
end

-- Take a client out of ``room``; the room goes when its last member does,
-- unless it lasts (a persistent room's stays, empty, as in the store).
-- Returns the room ID ('' if the client was not in it) and 1 if the room
-- was deleted.
local function leave_room(client, room)
  local ckey = P .. 'client:' .. client
  if redis.call('SREM', P .. 'client-rooms:' .. client, room) == 0 then
    if redis.call('HGET', ckey, 'room') ~= room then
      return '', 0
    end
  end
  if redis.call('HEXISTS', ckey, 'room') == 1 then
    redis.call('HDEL', ckey, 'room')  -- an older chatd's record
  end
  local claim, counted, who = unpack(redis.call('HMGET', ckey, 'claim', 'counted', 'who'))
  redis.call('ZREM', P .. 'members:' .. room, client)
  release(room, claim, client)
  count(room, counted, -1)
  local sets = redis.call('HGETALL', P .. 'sets:' .. room)
  if redis.call('ZCARD', P .. 'members:' .. room) == 0
      and redis.call('HGET', P .. 'room:' .. room, 'persistent') ~= '1' then
    drop_keys(room)
    return room, 1
  end
  publish_event(room, 'leave', client, who)
  bump(room)
  for i = 1, #sets, 2 do
    if sets[i + 1] ~= 'r' and redis.call('SREM', sets[i], client) == 1 and sets[i + 1] == 'h' then
      redis.call('PUBLISH', P .. 'r:' .. room, 'h')
    end
  end
  return room, 0
end

-- Take a client out of its rooms here: ``which`` '*' for all of them, ''
-- for none, or a room's ID.  The last room left ('' if none), and 1 if it
-- was deleted.
local function leave_rooms(client, which)
  local last, deleted = '', 0
  local rooms = (which == '*') and rooms_of(client) or ((which ~= '') and {which} or {})
  for _, room in ipairs(rooms) do
    local left, gone = leave_room(client, room)
    if left ~= '' then
      last, deleted = left, gone
    end
  end
  return last, deleted
end

local function enter_room(client, room, kind)
  local ckey = P .. 'client:' .. client
  local claim, counted, who = unpack(redis.call('HMGET', ckey, 'claim', 'counted', 'who'))
  redis.call('ZADD', P .. 'members:' .. room, redis.call('INCR', P .. 'seq:join'), client)
  if claim and claim ~= '' then
    redis.call('HSET', P .. 'claims:' .. room, claim, client)
  end
  count(room, counted, 1)
  redis.call('SADD', P .. 'client-rooms:' .. client, room)
  bump(room)
  publish_event(room, kind, client, who)
end

-- Why ``client`` may not read ``room``: 'notin' (it is not a member, any
-- more), 'gone' (no record of it here: a resync is due); nil: it may.
local function reader_in(room, client)
  if redis.call('SISMEMBER', P .. 'client-rooms:' .. client, room) == 1 then
    return nil
  end
  if redis.call('EXISTS', P .. 'client:' .. client) == 0 then
    return 'gone'
  end
  return 'notin'
end

-- A client of a live node that this Redis has no record of (a shard that
-- was away when it connected, or registered it too late for the resync) is
-- recorded as its node knows it.  False if another node holds the ID, or
-- this node's lease is gone (its resync is due).
local function adopt(node, client, who, claim, counted, user)
  local holder = redis.call('HGET', P .. 'client:' .. client, 'node')
  if holder then
    return holder == node
  end
  if redis.call('EXISTS', P .. 'node:' .. node) == 0 then
    return false
  end
  redis.call('HSET', P .. 'client:' .. client, 'node', node, 'who', who, 'claim', claim,
             'counted', counted, 'user', user)
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
      leave_rooms(client, '*')
      forget_user(client)
      redis.call('DEL', P .. 'client:' .. client, P .. 'client-rooms:' .. client)
    end
  end
  redis.call('DEL', P .. 'node-clients:' .. node, P .. 'node:' .. node)
  redis.call('SREM', P .. 'nodes', node)
  return #clients
end

-- The commands a read or a guard may run: reads only.
local READS = {HGET = true, HMGET = true, HEXISTS = true, SISMEMBER = true, SMISMEMBER = true,
               SMEMBERS = true, SCARD = true, ZRANGE = true, ZSCORE = true, ZCARD = true}

local function result(value)
  if value == false or value == nil then
    return ''
  end
  return value
end

-- Run reads: each {command, key, args...}, where '$N' in an argument is
-- the N-th read's answer (a read naming an empty answer is empty itself);
-- {'EACH', N, key prefix, field}: HGET of that field for each element of
-- the N-th answer.
local function read(reads)
  local out = {}
  for i, r in ipairs(reads) do
    if r[1] == 'EACH' then
      local each = {}
      for j, element in ipairs(out[r[2]]) do
        each[j] = result(redis.call('HGET', P .. r[3] .. element, r[4]))
      end
      out[i] = each
    else
      if not READS[r[1]] then
        error('not a read: ' .. tostring(r[1]))
      end
      local args, empty = {}, false
      for j = 2, #r do
        local arg = string.gsub(tostring(r[j]), '%$(%d+)', function(n)
          local v = out[tonumber(n)]
          if type(v) ~= 'string' or v == '' then
            empty = true
            return ''
          end
          return v
        end)
        args[j - 1] = (j == 2) and (P .. arg) or arg
      end
      out[i] = empty and '' or result(redis.call(r[1], unpack(args)))
    end
  end
  return out
end

-- Whether every guard, {command, key, args..., expected}, still reads as
-- expected ('*': anything but nothing).
local function holds(guards)
  for _, g in ipairs(guards) do
    if not READS[g[1]] then
      error('not a read: ' .. tostring(g[1]))
    end
    local args = {P .. g[2]}
    for j = 3, #g - 1 do
      args[#args + 1] = g[j]
    end
    local value = tostring(result(redis.call(g[1], unpack(args))))
    local expected = g[#g]
    if (expected == '*' and (value == '' or value == '0')) or (expected ~= '*' and value ~= expected) then
      return false
    end
  end
  return true
end

-- Apply changes, in order:
-- {'sadd', room, key, members...}: into one of the room's sets (an 'h' set
-- holds the new one only); {'srem', key, members...};
-- {'hset', key, field, value, ...}; {'publish', room, line} on the room's
-- channel; {'leave', client, room}: out of the room;
-- {'claim', room ('' for none), client, name ('' for none)}: the client's
-- claimed name; {'identity', client, who, counted, user}; {'bump', room};
-- {'drop', room}: a room and everything in it goes, its members out.
local function apply(changes)
  for _, c in ipairs(changes) do
    local kind = c[1]
    if kind == 'sadd' then
      local key = P .. c[3]
      if redis.call('HGET', P .. 'sets:' .. c[2], key) == 'h' then
        redis.call('DEL', key)
      end
      redis.call('SADD', key, unpack(c, 4))
    elseif kind == 'srem' then
      redis.call('SREM', P .. c[2], unpack(c, 3))
    elseif kind == 'hset' then
      redis.call('HSET', P .. c[2], unpack(c, 3))
    elseif kind == 'publish' then
      redis.call('PUBLISH', P .. 'r:' .. c[2], c[3])
    elseif kind == 'leave' then
      leave_room(c[2], c[3])
    elseif kind == 'claim' then
      local ckey = P .. 'client:' .. c[3]
      if c[2] ~= '' then
        release(c[2], redis.call('HGET', ckey, 'claim'), c[3])
        if c[4] ~= '' then
          redis.call('HSET', P .. 'claims:' .. c[2], c[4], c[3])
        end
      end
      redis.call('HSET', ckey, 'claim', c[4])
    elseif kind == 'identity' then
      local ckey = P .. 'client:' .. c[2]
      local old = redis.call('HGET', ckey, 'counted')
      for _, room in ipairs(rooms_of(c[2])) do
        count(room, old, -1)
        count(room, c[4], 1)
        bump(room)
      end
      forget_user(c[2])
      redis.call('HSET', ckey, 'who', c[3], 'counted', c[4], 'user', c[5])
      if c[5] ~= '' then
        redis.call('SADD', P .. 'user-clients:' .. c[5], c[2])
      end
    elseif kind == 'drop' then
      -- A persistent room deleted: its members are out, then every key goes.
      for _, member in ipairs(redis.call('ZRANGE', P .. 'members:' .. c[2], 0, -1)) do
        redis.call('SREM', P .. 'client-rooms:' .. member, c[2])
      end
      drop_keys(c[2])
    elseif kind == 'bump' then
      if redis.call('EXISTS', P .. 'room:' .. c[2]) == 1 then
        bump(c[2])
      end
    else
      error('not a change: ' .. tostring(kind))
    end
  end
end
"""
