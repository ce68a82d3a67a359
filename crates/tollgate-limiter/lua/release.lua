-- Tollgate: give back hits that acquire.lua took, for a call whose counters span several
-- Redis Cluster slots and that another slot refused (reserve-then-release), or that the
-- caller refused because the answer came after its deadline. Releasing
-- twice is harmless: sliding_log removes named members, and the request record is
-- rewritten as refused so a retry of the call is neither charged nor released again.
--
-- KEYS[1], KEYS[2] request records of the slot and their expiry (as given to acquire.lua)
-- KEYS[3..n+2]  counter keys
-- ARGV[1]       request id; "" when the call had none
-- ARGV[2]       request record TTL in milliseconds
-- ARGV[3]       member prefix used by acquire.lua
-- ARGV[4+3(i-1)..] per counter i: algorithm (0 sliding_log, 1 sliding_window), cost,
--               bucket returned by acquire.lua
--
-- Returns the number of counters released.

if ARGV[1] ~= '' then
  local previous = redis.call('HGET', KEYS[1], ARGV[1])
  if previous then
    local record = cjson.decode(previous)
    if record[1] == 0 then return 0 end
    record[1] = 0
    redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
  end
end

local n = #KEYS - 2
for i = 1, n do
  local key = KEYS[i + 2]
  local base = 4 + (i - 1) * 3
  local cost = tonumber(ARGV[base + 1])
  local algorithm = tonumber(ARGV[base])
  -- A key converted to the other algorithm since (a reload) carried its hits over without
  -- their names: it is left as it is, which can only under-admit.
  local kind = redis.call('TYPE', key).ok
  if (algorithm == 0 and kind ~= 'zset') or (algorithm == 1 and kind ~= 'hash') then
    -- nothing to give back here
  elseif algorithm == 0 then
    -- In chunks: Lua's unpack refuses a few thousand values.
    local members = {}
    for unit = 1, cost do
      members[#members + 1] = ARGV[3] .. ':' .. i .. ':' .. unit
      if #members == 1000 or unit == cost then
        redis.call('ZREM', key, unpack(members))
        members = {}
      end
    end
  else
    local bucket = tonumber(ARGV[base + 2])
    local stored = tonumber(redis.call('HGET', key, 'b'))
    local field = nil
    if stored == bucket then field = 'c' elseif stored == bucket + 1 then field = 'p' end
    if field then
      local left = (tonumber(redis.call('HGET', key, field)) or 0) - cost
      redis.call('HSET', key, field, math.max(left, 0))
    end
  end
end
return n
