-- Tollgate: check-and-take the hits of one tool call on a batch of rate-limit counters.
--
-- All keys share one Redis Cluster slot (the caller groups counters by hash tag). Either
-- every counter has room for its cost and all of them take it, or none takes anything.
-- Time comes from Redis (TIME), never from the caller, so callers with skewed clocks agree.
--
-- KEYS[1]       request record: the answer to `request id`, so a retry is not charged twice
-- KEYS[2..n+1]  counter keys
-- KEYS[n+2..2n+1] per counter, its live-key registry: a sorted set of the counter's live keys
--               in this slot, scored by a time (µs) after which each key is surely gone
-- ARGV[1]       request id; "" disables the request record
-- ARGV[2]       request record TTL in milliseconds
-- ARGV[3]       member prefix, unique to this call (sliding_log entries are "<prefix>:<i>:<unit>")
-- ARGV[4+4(i-1)..] per counter i: algorithm (0 sliding_log, 1 sliding_window), window (µs),
--               max, cost
-- ARGV[4+4n]    most live keys a registry may hold
--
-- Returns {admitted (1|0), then per counter: remaining, reset_after_us,
--          retry_after_us (-1 when the counter had room), bucket (sliding_window only, else 0)},
-- or {-1} when a counter key would be created while its registry is full (nothing written).
--
-- sliding_log: a sorted set, one member per hit unit scored by its time in µs; at most `max`
--   members; a hit at t counts while now < t + window.
-- sliding_window: a hash {b = bucket index, c = hits in bucket b, p = hits in bucket b-1};
--   the estimate is p * (window - elapsed) / window + c.

if ARGV[1] ~= '' then
  local previous = redis.call('GET', KEYS[1])
  if previous then
    return cjson.decode(previous)
  end
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = (#KEYS - 1) / 2
local max_keys = tonumber(ARGV[4 + 4 * n])
local out = {1}
local state = {}

-- Scope values come from callers: a counter may create only so many keys.
for i = 1, n do
  local key = KEYS[i + 1]
  if redis.call('EXISTS', key) == 0 then
    local registry = KEYS[n + 1 + i]
    redis.call('ZREMRANGEBYSCORE', registry, '-inf', now)
    if not redis.call('ZSCORE', registry, key) and redis.call('ZCARD', registry) >= max_keys then
      return {-1}
    end
  end
end

for i = 1, n do
  local key = KEYS[i + 1]
  local base = 4 + (i - 1) * 4
  local algorithm = tonumber(ARGV[base])
  local window = tonumber(ARGV[base + 1])
  local max = tonumber(ARGV[base + 2])
  local cost = tonumber(ARGV[base + 3])
  local remaining, reset, retry, bucket = 0, 0, -1, 0

  if algorithm == 0 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    local count = redis.call('ZCARD', key)
    if count + cost <= max then
      remaining, reset = max - count - cost, window
    else
      remaining = math.max(max - count, 0)
      local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
      if newest[2] then reset = tonumber(newest[2]) + window - now end
      if cost > max then
        retry = 0
      else
        -- The call fits once the `need` oldest units have expired.
        local need = count + cost - max
        local entry = redis.call('ZRANGE', key, need - 1, need - 1, 'WITHSCORES')
        retry = tonumber(entry[2]) + window - now
      end
    end
  else
    bucket = math.floor(now / window)
    local h = redis.call('HMGET', key, 'b', 'c', 'p')
    local stored, c, p = tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3]) or 0
    if stored == bucket - 1 then
      p, c = c, 0
    elseif stored ~= bucket then
      p, c = 0, 0
    end
    local elapsed = now - bucket * window
    local estimate = p * (window - elapsed) / window + c
    if c > 0 then reset = 2 * window - elapsed elseif p > 0 then reset = window - elapsed end
    if estimate + cost <= max then
      remaining = math.floor(max - estimate - cost)
      reset = math.max(reset, window - elapsed)
    else
      remaining = math.floor(math.max(max - estimate, 0))
      local until_next = window - elapsed
      if cost > max then
        retry = 0
      elseif c + cost > max then
        retry = until_next + math.max(window * (1 - (max - cost) / c), 0)
      else
        retry = math.max(until_next - window * (max - c - cost) / p, 0)
      end
      retry = math.ceil(retry)
    end
    state[i] = {bucket, c, p}
  end
  if retry >= 0 then out[1] = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
  out[#out + 1] = bucket
end

if out[1] == 1 then
  for i = 1, n do
    local key = KEYS[i + 1]
    local base = 4 + (i - 1) * 4
    local window = tonumber(ARGV[base + 1])
    local cost = tonumber(ARGV[base + 3])
    local ttl_ms = math.ceil(window / 1000) + 1
    if tonumber(ARGV[base]) == 0 then
      local args = {}
      for unit = 1, cost do
        args[#args + 1] = now
        args[#args + 1] = ARGV[3] .. ':' .. i .. ':' .. unit
      end
      redis.call('ZADD', key, unpack(args))
      redis.call('PEXPIRE', key, ttl_ms)
    else
      local s = state[i]
      ttl_ms = 2 * ttl_ms
      redis.call('HSET', key, 'b', s[1], 'c', s[2] + cost, 'p', s[3])
      redis.call('PEXPIRE', key, ttl_ms)
    end
    -- The registry entry outlives its key: it is set to expire two TTLs ahead, and renewed
    -- only once less than one TTL is left (a read on most calls, a write once per TTL).
    local registry = KEYS[n + 1 + i]
    local expires = tonumber(redis.call('ZSCORE', registry, key))
    if not expires or expires < now + ttl_ms * 1000 then
      redis.call('ZADD', registry, now + 2 * ttl_ms * 1000, key)
      redis.call('PEXPIRE', registry, 2 * ttl_ms)
    end
  end
end

if ARGV[1] ~= '' then
  redis.call('SET', KEYS[1], cjson.encode(out), 'PX', ARGV[2])
end
return out
