-- trim.lua: drop stream entries the sink has committed, unless a reseed is running
-- KEYS[1] = sb:{<board>}:events      stream drained by the sink
-- KEYS[2] = sb:{<board>}:reseeding   set while `scoreboard reseed` rebuilds the board
-- ARGV[1] = least id to keep (every entry below it is acknowledged = committed)
-- returns: entries removed, or -1 when a reseed holds trimming off
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
return redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
