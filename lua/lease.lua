-- Fusebox fleet-wide concurrency leases (`fusebox run --max-concurrent N`): at most N holders of one breaker's
-- leases at a time, across every host. The only clock is Redis TIME.
--
-- KEYS[1] NS:{NAME}:leases   sorted set: member = lease id, score = when the lease expires (ms, Redis TIME)
-- ARGV[1] op: acquire | renew | release     ARGV[2] lease id
-- ARGV[3] the limit N (acquire)             ARGV[4] time to live in ms (acquire, renew)
--
-- A holder renews its lease well before it expires; a holder that dies (SIGKILL, a lost host) stops renewing,
-- and its lease is dropped by the first call after it expires: no slot is lost for longer than the TTL. The key
-- itself expires with its last lease.
--
-- Reply: acquire { 1, holders } granted, or { 0, holders, ms until the first lease expires } refused;
--        renew { 1 } renewed, or { 0 } when the lease had expired (the holder lost it);  release { 1 }.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key, op, id = KEYS[1], ARGV[1], ARGV[2]
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)

if op == 'release' then
  redis.call('ZREM', key, id)
  return { 1 }
end

local ttl = tonumber(ARGV[4])
if ttl == nil or ttl < 1 then return redis.error_reply('BADARG time to live must be a positive number of ms') end

-- The key lives as long as its longest lease.
local function keep()
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', key, tonumber(last[2])) end
end

if op == 'renew' then
  if not redis.call('ZSCORE', key, id) then return { 0 } end
  redis.call('ZADD', key, 'XX', now + ttl, id)
  keep()
  return { 1 }
end

if op ~= 'acquire' then return redis.error_reply('BADARG unknown op ' .. tostring(op)) end
local limit = tonumber(ARGV[3])
if limit == nil or limit < 1 then return redis.error_reply('BADARG the limit must be a positive number') end
local holders = redis.call('ZCARD', key)
if not redis.call('ZSCORE', key, id) and holders >= limit then
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return { 0, holders, tonumber(first[2]) - now }
end
if not redis.call('ZSCORE', key, id) then holders = holders + 1 end
redis.call('ZADD', key, now + ttl, id)
keep()
return { 1, holders }
