-- page.lua: a slice of the board in board order, with competition ranks
-- KEYS[1] = sb:{<board>}:scores   sorted set (score = -points)
-- KEYS[2] = sb:{<board>}:top      hash with the version in field v
-- ARGV[1] = first position (0-based)   ARGV[2] = last position (inclusive)
-- returns: {version, user1, points1, rank1, user2, ...}
local flat = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES')
local version = tonumber(redis.call('HGET', KEYS[2], 'v') or '0')
local out = {version}
local pos = tonumber(ARGV[1])
local prev_score = nil
local rank = 0
for i = 1, #flat, 2 do
  local s = flat[i + 1]
  if prev_score == nil then
    rank = 1 + redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. s)
  elseif s ~= prev_score then
    rank = pos + 1
  end
  prev_score = s
  out[#out + 1] = flat[i]
  out[#out + 1] = string.format('%d', -tonumber(s))
  out[#out + 1] = rank
  pos = pos + 1
end
return out
