-- Fusebox: an operator's policy override set for a time ends. Whichever instance sees it first removes it, only if it is
-- still the value that expired (an override set again meanwhile stays), and tells every instance on the transitions
-- channel, as `fusebox policy clear` does. The only clock is Redis TIME.
--
-- KEYS[1] NS:overrides   hash: breaker name -> the override's JSON
-- ARGV[1] breaker name   ARGV[2] the override's JSON as it was read   ARGV[3] its expiry (Redis time, ms)
-- ARGV[4] the transitions channel   ARGV[5] the message to publish
--
-- Reply: 1 when this call removed it, 0 when it was gone or changed, -1 when it has not expired yet by Redis' clock.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now < tonumber(ARGV[3]) then return -1 end
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
