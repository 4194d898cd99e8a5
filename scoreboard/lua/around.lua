-- around.lua: a user's entry with up to n entries above and below, with competition ranks
-- KEYS[1] = sb:{<board>}:scores   sorted set (score = -points)
-- ARGV[1] = user id   ARGV[2] = n
-- returns: {} when the user has no score, else {user1, points1, rank1, user2, ...}
local pos = redis.call('ZRANK', KEYS[1], ARGV[1])
if not pos then return {} end
local n = tonumber(ARGV[2])
local first = pos - n
if first < 0 then first = 0 end
local flat = redis.call('ZRANGE', KEYS[1], first, pos + n, 'WITHSCORES')
local out = {}
local p = first
local prev_score = nil
local rank = 0
for i = 1, #flat, 2 do
  local s = flat[i + 1]
  if prev_score == nil then
    rank = 1 + redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. s)
  elseif s ~= prev_score then
    rank = p + 1
  end
  prev_score = s
  out[#out + 1] = flat[i]
  out[#out + 1] = string.format('%d', -tonumber(s))
  out[#out + 1] = rank
  p = p + 1
end
return out
