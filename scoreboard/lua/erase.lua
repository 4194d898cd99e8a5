-- erase.lua: remove a user from a board, atomically; refresh the snapshot, log, publish
-- KEYS[1] = sb:{<board>}:scores   sorted set, member = user id, score = -points
-- KEYS[2] = sb:{<board>}:top      hash v = version, d = top-100 JSON, t = updated ms
-- KEYS[3] = sb:{<board>}:seq      per-board event sequence (user_scores.version)
-- KEYS[4] = sb:{<board>}:events   stream drained by the sink (which erases the user there)
-- ARGV[1] = user id   ARGV[2] = now (unix ms)   ARGV[3] = channel   ARGV[4] = board id
-- ARGV[5] = top channel (gets the same message)
-- returns: {0, 0, 0, 0} when the user has no score, else {1, version, seq, top10_changed}

local user = ARGV[1]
local now = ARGV[2]
local pos = redis.call('ZRANK', KEYS[1], user)
if not pos then return {0, 0, 0, 0} end
redis.call('ZREM', KEYS[1], user)
local seq = redis.call('INCR', KEYS[3])

local version
if pos < 100 then
  local flat = redis.call('ZRANGE', KEYS[1], 0, 99, 'WITHSCORES')
  local parts = {}
  for i = 1, #flat, 2 do
    parts[#parts + 1] = '["' .. flat[i] .. '",' .. string.format('%d', -tonumber(flat[i + 1])) .. ']'
  end
  version = seq
  redis.call('HSET', KEYS[2], 'v', version, 'd', '[' .. table.concat(parts, ',') .. ']', 't', now)
else
  version = tonumber(redis.call('HGET', KEYS[2], 'v') or '0')
end

redis.call('XADD', KEYS[4], '*', 'k', 'erase', 'u', user, 'q', seq, 'ts', now)

local top_s = 'false'
local top10 = 0
if pos < 10 then top_s = 'true'; top10 = 1 end
local message = '{"type":"erase","boardId":"' .. ARGV[4] .. '","userId":"' .. user ..
  '","version":' .. version .. ',"topChanged":' .. top_s .. ',"ts":' .. now .. '}'
redis.call('PUBLISH', ARGV[3], message)
redis.call('PUBLISH', ARGV[5], message)
return {1, version, seq, top10}
