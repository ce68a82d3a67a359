-- Tool pinning: writes changed pin records if nobody changed them since they were read
-- (compare-and-set; the caller reads again and retries on 0).
-- KEYS[1]: the records (a hash: field per name), KEYS[2]: definition id -> field.
-- ARGV[1]: n records; ARGV[2]: names kept at most; then n triples (field, the record as
-- read or '' for none, the new record); then m, then m pairs (id, field) to index; then
-- the ids to forget.
local n = tonumber(ARGV[1])
local most = tonumber(ARGV[2])
local added = 0
for i = 0, n - 1 do
  local field = ARGV[3 + 3 * i]
  local expected = ARGV[4 + 3 * i]
  local now = redis.call('HGET', KEYS[1], field)
  if (now or '') ~= expected then
    return 0
  end
  if not now then
    added = added + 1
  end
end
if added > 0 and redis.call('HLEN', KEYS[1]) + added > most then
  return -1
end
for i = 0, n - 1 do
  redis.call('HSET', KEYS[1], ARGV[3 + 3 * i], ARGV[5 + 3 * i])
end
local at = 3 + 3 * n
local m = tonumber(ARGV[at])
for j = 0, m - 1 do
  redis.call('HSET', KEYS[2], ARGV[at + 1 + 2 * j], ARGV[at + 2 + 2 * j])
end
for k = at + 1 + 2 * m, #ARGV do
  redis.call('HDEL', KEYS[2], ARGV[k])
end
return 1
