-- Tollgate: check-and-take the hits of one tool call on a batch of rate-limit counters.
--
-- All keys share one Redis Cluster slot (the caller groups counters by hash tag). Either
-- every counter has room for its cost and all of them take it, or none takes anything.
-- Time comes from Redis (TIME), never from the caller, so callers with skewed clocks agree.
--
-- KEYS[1]       request records of this slot: a hash, request id -> the answer, so a retry is
--               not charged twice
-- KEYS[2]       when each request record expires: a sorted set, request id scored by µs.
--               Both are long-lived keys of the slot (not one new key per call): while a Cluster
--               moves the slot, a call's keys all exist on one side or the other, so the script
--               meets ASK (followed) rather than TRYAGAIN for the whole move
-- KEYS[3..n+2]  counter keys
-- KEYS[n+3..2n+2] per counter, its live-key registry: a sorted set of the counter's live keys
--               in this slot, scored by a time (µs) after which each key is surely gone
-- ARGV[1]       request id; "" disables the request record
-- ARGV[2]       request record TTL in milliseconds
-- ARGV[3]       member prefix, unique to this call (sliding_log entries are "<prefix>:<i>:<unit>");
--               "" only reads: the counters' statuses as they are, nothing taken or recorded
--               (for the groups after the one that refused a call: they are never asked to take)
-- ARGV[4+4(i-1)..] per counter i: algorithm (0 sliding_log, 1 sliding_window), window (µs),
--               max, cost (the caller checked: 1 <= cost, max <= 100000 for sliding_log)
-- ARGV[4+4n]    most live keys a registry may hold
--
-- Returns {admitted (1|0), then per counter: remaining (after this call when admitted; as
--          it is when refused), reset_after_us,
--          retry_after_us (-1 when the counter had room), bucket (sliding_window only, else 0)},
-- or {-1} when a counter key would be created while its registry is full (nothing written).
--
-- sliding_log: a sorted set, one member per hit unit scored by its time in µs; at most `max`
--   members; a hit at t counts while now < t + window.
-- sliding_window: a hash {b = bucket index, c = hits in bucket b, p = hits in bucket b-1,
--   w = window (µs) the buckets are measured in}; the estimate is
--   p * (window - elapsed) / window + c. A bucket never moves backwards: when Redis's clock
--   steps back, the counter stays in its stored bucket.
--
-- A counter whose algorithm or window changed (a policy reload) keeps its hits: its key is
-- converted in place before it is checked (see log_from_window, window_from_log).
--
-- Every check happens before the first counter is written, and the writes cannot fail
-- (members are added in chunks, far below Lua's unpack limit), so a call is never charged
-- on some counters and not others.

-- Members per ZADD / ZREM: Lua's unpack refuses a few thousand values.
local CHUNK = 1000

-- Adds members `prefix .. unit` for unit = 1..count, all scored `score`.
local function add_units(key, score, prefix, count)
  local args = {}
  for unit = 1, count do
    args[#args + 1] = score
    args[#args + 1] = prefix .. unit
    if #args == 2 * CHUNK then
      redis.call('ZADD', key, unpack(args))
      args = {}
    end
  end
  if #args > 0 then redis.call('ZADD', key, unpack(args)) end
end

local function ttl_ms(window)
  return math.ceil(window / 1000) + 1
end

-- The key holds a sliding_window hash; the policy now says sliding_log. The hash only has
-- counts per bucket, so each hit is placed at the latest time it can have happened (it
-- counts at least as long as it did), and at most `max` of them are kept, the latest first:
-- with `max` entries the log refuses exactly as it would with more.
local function log_from_window(key, now, window, max, prefix)
  local h = redis.call('HMGET', key, 'b', 'c', 'p', 'w')
  redis.call('DEL', key)
  local b, c, p = tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3]) or 0
  if not b then return end
  local w = tonumber(h[4]) or window
  local start = b * w
  local current_at = math.max(math.min(now, start + w - 1), start)
  local current = math.min(c, max)
  local previous = math.min(p, max - current)
  if current > 0 and current_at + window > now then
    add_units(key, current_at, prefix .. ':c', current)
  end
  if previous > 0 and start - 1 + window > now then
    add_units(key, start - 1, prefix .. ':p', previous)
  end
  redis.call('PEXPIRE', key, ttl_ms(window))
end

-- The key holds a sliding_log sorted set; the policy now says sliding_window: the hits that
-- still count are counted into the current and previous bucket, as sliding_window would have.
local function window_from_log(key, now, window)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local bucket = math.floor(now / window)
  local start = bucket * window
  local c = redis.call('ZCOUNT', key, start, '+inf')
  local p = redis.call('ZCOUNT', key, start - window, start - 1)
  redis.call('DEL', key)
  if c + p > 0 then
    redis.call('HSET', key, 'b', bucket, 'c', c, 'p', p, 'w', window)
    redis.call('PEXPIRE', key, 2 * ttl_ms(window))
  end
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local read_only = ARGV[3] == ''

if ARGV[1] ~= '' and not read_only then
  -- Expired records go first (a bounded number per call: at most one is added per call).
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 64)
  if #expired > 0 then
    redis.call('HDEL', KEYS[1], unpack(expired))
    redis.call('ZREM', KEYS[2], unpack(expired))
  end
  local previous = redis.call('HGET', KEYS[1], ARGV[1])
  if previous then
    return cjson.decode(previous)
  end
end

local n = (#KEYS - 2) / 2
local max_keys = tonumber(ARGV[4 + 4 * n])
local out = {1}
local state = {}

-- Scope values come from callers: a counter may create only so many keys (a read creates none).
for i = 1, read_only and 0 or n do
  local key = KEYS[i + 2]
  if redis.call('EXISTS', key) == 0 then
    local registry = KEYS[n + 2 + i]
    redis.call('ZREMRANGEBYSCORE', registry, '-inf', now)
    if not redis.call('ZSCORE', registry, key) and redis.call('ZCARD', registry) >= max_keys then
      return {-1}
    end
  end
end

for i = 1, n do
  local key = KEYS[i + 2]
  local base = 4 + (i - 1) * 4
  local algorithm = tonumber(ARGV[base])
  local window = tonumber(ARGV[base + 1])
  local max = tonumber(ARGV[base + 2])
  local cost = tonumber(ARGV[base + 3])
  local remaining, reset, retry, bucket = 0, 0, -1, 0

  if algorithm == 0 then
    local trimmed = redis.pcall('ZREMRANGEBYSCORE', key, '-inf', now - window)
    if type(trimmed) == 'table' and trimmed.err then
      log_from_window(key, now, window, max, 'moved:' .. ARGV[3] .. ':' .. i)
    end
    local count = redis.call('ZCARD', key)
    if count + cost <= max then
      remaining, reset = max - count - cost, window
    else
      remaining = math.max(max - count, 0)
      local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
      if newest[2] then reset = math.max(tonumber(newest[2]) + window - now, 0) end
      if cost > max then
        retry = 0
      else
        -- The call fits once the `need` oldest units have expired.
        local need = count + cost - max
        local entry = redis.call('ZRANGE', key, need - 1, need - 1, 'WITHSCORES')
        retry = math.max(tonumber(entry[2]) + window - now, 0)
      end
    end
  else
    local h = redis.pcall('HMGET', key, 'b', 'c', 'p', 'w')
    if h.err then
      window_from_log(key, now, window)
      h = redis.call('HMGET', key, 'b', 'c', 'p', 'w')
    end
    bucket = math.floor(now / window)
    local stored, c, p, w = tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3]) or 0, tonumber(h[4])
    if stored and w and w ~= window then
      -- The window changed: every hit still counting under the old window counts in the
      -- current bucket of the new one.
      local old_bucket = math.floor(now / w)
      local live = 0
      if stored >= old_bucket then live = c + p elseif stored == old_bucket - 1 then live = c end
      stored, c, p = bucket, live, 0
    end
    if stored and stored > bucket then
      bucket = stored
    elseif stored == bucket - 1 then
      p, c = c, 0
    elseif stored ~= bucket then
      p, c = 0, 0
    end
    local elapsed = math.max(now - bucket * window, 0)
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

if out[1] == 0 or read_only then
  -- Refused (or only read): nothing is taken, so a counter that had room keeps all of it.
  for i = 1, n do
    local at = 2 + 4 * (i - 1)
    if out[at + 2] < 0 then out[at] = out[at] + tonumber(ARGV[4 + (i - 1) * 4 + 3]) end
  end
else
  for i = 1, n do
    local key = KEYS[i + 2]
    local base = 4 + (i - 1) * 4
    local window = tonumber(ARGV[base + 1])
    local cost = tonumber(ARGV[base + 3])
    local ttl = ttl_ms(window)
    if tonumber(ARGV[base]) == 0 then
      add_units(key, now, ARGV[3] .. ':' .. i .. ':', cost)
      redis.call('PEXPIRE', key, ttl)
    else
      local s = state[i]
      ttl = 2 * ttl
      redis.call('HSET', key, 'b', s[1], 'c', s[2] + cost, 'p', s[3], 'w', window)
      redis.call('PEXPIRE', key, ttl)
    end
    -- The registry entry outlives its key: it is set to expire two TTLs ahead, and renewed
    -- only once less than one TTL is left (a read on most calls, a write once per TTL).
    local registry = KEYS[n + 2 + i]
    local expires = tonumber(redis.call('ZSCORE', registry, key))
    if not expires or expires < now + ttl * 1000 then
      redis.call('ZADD', registry, now + 2 * ttl * 1000, key)
      redis.call('PEXPIRE', registry, 2 * ttl)
    end
  end
end

if ARGV[1] ~= '' and not read_only then
  local ttl = tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(out))
  redis.call('ZADD', KEYS[2], now + ttl * 1000, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return out
