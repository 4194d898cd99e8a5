-- user.lua: one user's points and competition rank
-- KEYS[1] = sb:{<board>}:scores   sorted set (score = -points)
-- ARGV[1] = user id
-- returns: {} when the user has no score, else {points, rank}
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s then return {} end
return {string.format('%d', -tonumber(s)), 1 + redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. s)}
