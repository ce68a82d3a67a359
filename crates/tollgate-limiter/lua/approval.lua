-- Tollgate: approval records (see src/approvals.rs). Every key carries the hash tag
-- {approvals}, so a Redis Cluster keeps them in one slot and each run is atomic.
--
-- Records are JSON strings at "<prefix>a:<id>"; "<prefix>bind:<digest>" holds the id an
-- identical call finds; "<prefix>index" is a sorted set of ids by creation time (ms).
--
-- KEYS[1]  the index
-- KEYS[2]  claim: the binding key; resolve: the record key
-- ARGV[1]  'claim' | 'resolve' | 'list'
-- ARGV[2]  record key prefix ("<prefix>a:")
-- ARGV[3]  retention after expiry, in ms
--
-- claim    ARGV[4] a new id, ARGV[5] the new record as JSON (times are set here),
--          ARGV[6] timeout in ms, ARGV[7] most pending approvals per grant, ARGV[8] the
--          prefix of the per-grant pending sets ("<prefix>pending:", then the SHA-1 of the
--          grant). Returns {outcome, record JSON} with outcome one of 'pending',
--          'created', 'approved' (now consumed), 'denied', 'expired', or {'too_many', ''}.
-- resolve  ARGV[4] 'approved' | 'denied', ARGV[5] operator, ARGV[6] reason, ARGV[7] the
--          channel to PUBLISH the id on, so calls held on any edge wake up at once,
--          ARGV[8] the traceparent of the operator's audit span ('' for none), ARGV[9] the
--          prefix of the per-grant pending sets.
--          Returns {'resolved' | 'not_pending' | 'not_found', record JSON or ''}.
-- get      KEYS[2] the record key. Returns {record JSON} or {}.
-- pending  ARGV[4] the prefix of the pending sets. Returns the number of approvals pending
--          in the whole cluster (the set "<prefix>pending:all", ids scored by expiry).
-- list     ARGV[4] most records. Returns the newest records' JSON, newest first.
-- restore  KEYS[2] the record key; ARGV[4] the binding key prefix ("<prefix>bind:").
--          A consumed, unexpired record becomes approved and bound again, unless another
--          record is bound to its call meanwhile. Returns {'restored' | 'unchanged', ''}.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode, prefix, retention = ARGV[1], ARGV[2], tonumber(ARGV[3])

local function save(key, record)
  -- The record outlives its expiry by the retention, whatever happens to it.
  local ttl = record.expires_ms + retention - now
  if ttl < 1 then ttl = 1 end
  redis.call('SET', key, cjson.encode(record), 'PX', math.floor(ttl))
end

if mode == 'claim' then
  local id = redis.call('GET', KEYS[2])
  if id then
    local key = prefix .. id
    local raw = redis.call('GET', key)
    if raw then
      local r = cjson.decode(raw)
      local live = now < r.expires_ms
      if r.status == 'pending' and live then
        return {'pending', raw}
      end
      local outcome = nil
      if r.status == 'approved' and live then
        r.status = 'consumed'
        outcome = 'approved'
      elseif r.status == 'pending' or r.status == 'approved' then
        r.status = 'expired'
        outcome = 'expired'
      elseif r.status == 'denied' or r.status == 'expired' then
        outcome = r.status
      end
      redis.call('DEL', KEYS[2])
      if outcome then
        save(key, r)
        return {outcome, cjson.encode(r)}
      end
    else
      redis.call('DEL', KEYS[2])
    end
  end
  -- A grant's pending approvals: ids scored by expiry; expired ones drop out here.
  local pending = ARGV[8] .. redis.sha1hex(cjson.decode(ARGV[5]).grant)
  redis.call('ZREMRANGEBYSCORE', pending, '-inf', now)
  if redis.call('ZCARD', pending) >= tonumber(ARGV[7]) then
    return {'too_many', ''}
  end
  local r = cjson.decode(ARGV[5])
  r.id = ARGV[4]
  r.status = 'pending'
  r.created_ms = now
  r.expires_ms = now + tonumber(ARGV[6])
  save(prefix .. r.id, r)
  redis.call('SET', KEYS[2], r.id, 'PX', tonumber(ARGV[6]) + retention)
  redis.call('ZADD', KEYS[1], now, r.id)
  redis.call('ZADD', pending, r.expires_ms, r.id)
  redis.call('PEXPIRE', pending, tonumber(ARGV[6]) + retention)
  -- Every grant's pending approvals together, for the pending gauge.
  redis.call('ZREMRANGEBYSCORE', ARGV[8] .. 'all', '-inf', now)
  redis.call('ZADD', ARGV[8] .. 'all', r.expires_ms, r.id)
  -- Index entries whose records are surely gone (older than a year and the retention).
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - retention - 31622400000)
  return {'created', cjson.encode(r)}
end

if mode == 'resolve' then
  local raw = redis.call('GET', KEYS[2])
  if not raw then return {'not_found', ''} end
  local r = cjson.decode(raw)
  if r.status == 'pending' and now >= r.expires_ms then
    r.status = 'expired'
    save(KEYS[2], r)
    return {'not_pending', cjson.encode(r)}
  end
  if r.status ~= 'pending' then return {'not_pending', raw} end
  r.status = ARGV[4]
  r.resolved_ms = now
  r.resolved_by = ARGV[5]
  if ARGV[6] ~= '' then r.reason = ARGV[6] end
  if ARGV[8] ~= '' then r.resolved_trace = ARGV[8] end
  save(KEYS[2], r)
  redis.call('ZREM', ARGV[9] .. redis.sha1hex(r.grant), r.id)
  redis.call('ZREM', ARGV[9] .. 'all', r.id)
  redis.call('PUBLISH', ARGV[7], r.id)
  return {'resolved', cjson.encode(r)}
end

if mode == 'restore' then
  local raw = redis.call('GET', KEYS[2])
  if not raw then return {'unchanged', ''} end
  local r = cjson.decode(raw)
  if r.status ~= 'consumed' or now >= r.expires_ms then return {'unchanged', ''} end
  local bind = ARGV[4] .. r.digest
  if redis.call('EXISTS', bind) == 1 then return {'unchanged', ''} end
  r.status = 'approved'
  save(KEYS[2], r)
  redis.call('SET', bind, r.id, 'PX', math.floor(r.expires_ms + retention - now))
  return {'restored', ''}
end

if mode == 'pending' then
  local all = ARGV[4] .. 'all'
  redis.call('ZREMRANGEBYSCORE', all, '-inf', now)
  return {tostring(redis.call('ZCARD', all))}
end

if mode == 'get' then
  local raw = redis.call('GET', KEYS[2])
  if raw then return {raw} end
  return {}
end

-- list
local most = tonumber(ARGV[4])
local ids = redis.call('ZREVRANGE', KEYS[1], 0, most - 1)
local out = {}
for _, id in ipairs(ids) do
  local raw = redis.call('GET', prefix .. id)
  if raw then
    out[#out + 1] = raw
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
