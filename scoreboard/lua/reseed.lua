-- reseed.lua: swap a rebuilt board in, atomically, with the stream entries that came meanwhile
-- KEYS[1] = sb:{<board>}:scores:reseed:<token>  the rebuilt sorted set (absent: empty board)
-- KEYS[2] = sb:{<board>}:scores      sorted set, member = user id, score = -points
-- KEYS[3] = sb:{<board>}:top         hash v = version, d = top-100 JSON, t = updated ms
-- KEYS[4] = sb:{<board>}:seq         per-board event sequence (user_scores.version)
-- KEYS[5] = sb:{<board>}:events      stream drained by the sink
-- KEYS[6] = sb:{<board>}:reseeding   the reseed's lock; deleted here when it is ours
-- ARGV[1] = last stream id already folded into KEYS[1] ('0-0': none)
-- ARGV[2] = newest sequence number in the database (the board's seq moves past it)
-- ARGV[3] = now (unix ms)   ARGV[4] = channel   ARGV[5] = board id   ARGV[6] = reseed token
-- ARGV[7] = top channel (gets the same message)
-- returns: {version, users, stream entries applied here}

-- Entries after ARGV[1] were written after the database snapshot was taken, so
-- each one is newer than what KEYS[1] holds for its user: apply them in order.
local tail = redis.call('XRANGE', KEYS[5], '(' .. ARGV[1], '+')
local top_seq = tonumber(ARGV[2])
for _, entry in ipairs(tail) do
  local fields = entry[2]
  local f = {}
  for i = 1, #fields, 2 do f[fields[i]] = fields[i + 1] end
  if f['k'] == 'score' then
    redis.call('ZADD', KEYS[1], string.format('%d', -tonumber(f['s'])), f['u'])
  elseif f['k'] == 'erase' then
    redis.call('ZREM', KEYS[1], f['u'])
  end
  local q = tonumber(f['q'] or '0')
  if q > top_seq then top_seq = q end
end

if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[2])
else
  redis.call('DEL', KEYS[2])
end

-- Versions never move backwards: past both the live sequence and the database's.
local current = tonumber(redis.call('GET', KEYS[4]) or '0')
if current > top_seq then top_seq = current end
local version = top_seq + 1
redis.call('SET', KEYS[4], version)

local flat = redis.call('ZRANGE', KEYS[2], 0, 99, 'WITHSCORES')
local parts = {}
for i = 1, #flat, 2 do
  parts[#parts + 1] = '["' .. flat[i] .. '",' .. string.format('%d', -tonumber(flat[i + 1])) .. ']'
end
redis.call('HSET', KEYS[3], 'v', version, 'd', '[' .. table.concat(parts, ',') .. ']', 't', ARGV[3])

if redis.call('GET', KEYS[6]) == ARGV[6] then redis.call('DEL', KEYS[6]) end

local message = '{"type":"reseed","boardId":"' .. ARGV[5] .. '","version":' .. version ..
  ',"topChanged":true,"ts":' .. ARGV[3] .. '}'
redis.call('PUBLISH', ARGV[4], message)
redis.call('PUBLISH', ARGV[7], message)
return {version, redis.call('ZCARD', KEYS[2]), #tail}
