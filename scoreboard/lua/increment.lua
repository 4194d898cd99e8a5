-- increment.lua: consume a nonce and add points, atomically; rank, snapshot, log, publish
-- KEYS[1] = sb:{<board>}:scores        sorted set, member = user id, score = -points
--                                      (negated so ZRANGE order is points desc, user id asc)
-- KEYS[2] = sb:{<board>}:top           hash v = version, d = top-100 JSON, t = updated ms
-- KEYS[3] = sb:{<board>}:seq           per-board event sequence (user_scores.version)
-- KEYS[4] = sb:{<board>}:nonce:<n>     string, the first result kept for 409 bodies
-- KEYS[5] = sb:{<board>}:rate:<u>:<w>  accepted increments of the user in this minute
-- KEYS[6] = sb:{<board>}:events        stream drained by the sink
-- ARGV[1] = user id        ARGV[2] = delta           ARGV[3] = nonce
-- ARGV[4] = event id       ARGV[5] = nonce ttl ms    ARGV[6] = rate limit (0 = off)
-- ARGV[7] = ms left in the rate window               ARGV[8] = now (unix ms)
-- ARGV[9] = source         ARGV[10] = channel        ARGV[11] = board id
-- ARGV[12] = largest allowed |score|                ARGV[13] = top channel
-- returns: {score, rank, previous_rank (0 = none), top10_changed (0/1), version, seq}
-- errors:  "SB_INVALID_DELTA <msg>", "SB_REPLAY <original json>", "SB_RATE_LIMITED <ms>"

local user = ARGV[1]
local delta = tonumber(ARGV[2])
local limit = tonumber(ARGV[6])
local now = ARGV[8]

local old_stored = redis.call('ZSCORE', KEYS[1], user)
local old = 0
if old_stored then old = -tonumber(old_stored) end
local new = old + delta
if math.abs(new) > tonumber(ARGV[12]) then
  return redis.error_reply('SB_INVALID_DELTA the new score would leave the allowed range')
end

local first = redis.call('GET', KEYS[4])
if first then return redis.error_reply('SB_REPLAY ' .. first) end

if limit > 0 then
  local used = tonumber(redis.call('GET', KEYS[5]) or '0')
  if used >= limit then
    local left = redis.call('PTTL', KEYS[5])
    if left < 0 then left = tonumber(ARGV[7]) end
    return redis.error_reply('SB_RATE_LIMITED ' .. left)
  end
end

-- A position (0-based, ties ordered by user id) is at least rank - 1, so the position
-- is looked up only for a rank within the top-100: most calls skip both ZRANKs.
local old_pos = nil
local previous_rank = 0
if old_stored then
  previous_rank = 1 + redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. old_stored)
  if previous_rank <= 100 then old_pos = redis.call('ZRANK', KEYS[1], user) end
end
local stored = string.format('%d', -new)
redis.call('ZADD', KEYS[1], stored, user)
local rank = 1 + redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. stored)
local new_pos = 100
if rank <= 100 then new_pos = redis.call('ZRANK', KEYS[1], user) end
local seq = redis.call('INCR', KEYS[3])

local top100 = new_pos < 100 or (old_pos ~= nil and old_pos < 100)
local top10 = new_pos < 10 or (old_pos ~= nil and old_pos < 10)
local version
if top100 then
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

local score_s = string.format('%d', new)
local rank_s = string.format('%d', rank)
redis.call('SET', KEYS[4],
  '{"eventId":"' .. ARGV[4] .. '","score":' .. score_s .. ',"rank":' .. rank_s .. '}',
  'PX', ARGV[5])
if limit > 0 then
  if redis.call('INCR', KEYS[5]) == 1 then redis.call('PEXPIRE', KEYS[5], ARGV[7]) end
end

redis.call('XADD', KEYS[6], '*',
  'k', 'score', 'e', ARGV[4], 'u', user, 'd', ARGV[2], 's', score_s, 'r', rank_s,
  'n', ARGV[3], 'src', ARGV[9], 'q', seq, 'ts', now)

local prev_s = 'null'
if previous_rank > 0 then prev_s = string.format('%d', previous_rank) end
local top_s = 'false'
if top10 then top_s = 'true' end
if top100 then
  redis.call('PUBLISH', ARGV[13],
    '{"type":"top","boardId":"' .. ARGV[11] .. '","version":' .. version ..
    ',"topChanged":' .. top_s .. ',"ts":' .. now .. '}')
end
redis.call('PUBLISH', ARGV[10],
  '{"type":"score","boardId":"' .. ARGV[11] .. '","userId":"' .. user ..
  '","score":' .. score_s .. ',"rank":' .. rank_s .. ',"previousRank":' .. prev_s ..
  ',"delta":' .. ARGV[2] .. ',"eventId":"' .. ARGV[4] .. '","version":' .. version ..
  ',"topChanged":' .. top_s .. ',"ts":' .. now .. '}')

local top10_n = 0
if top10 then top10_n = 1 end
return {new, rank, previous_rank, top10_n, version, seq}
