-- Fusebox live membership: which senders (adapter objects) and instances are up, fleet-wide. Each adapter beats
-- every DistributedOptions.membershipInterval; one that stops (SIGKILL, a lost host, a closed connection) drops out
-- when its entry expires. The breaker script gets the counts in its ARGV[6] and ARGV[7]: the failure budget is
-- shared among the senders that are up, and a quorum is at most the instances that are up. The only clock is Redis
-- TIME.
--
-- KEYS[1] NS:{members}:senders     sorted set: member = sender id (INSTANCE-ID:NONCE), score = expiry (ms)
-- KEYS[2] NS:{members}:instances   sorted set: member = instance id, score = expiry (ms)
-- ARGV[1] op: beat | leave    ARGV[2] sender id    ARGV[3] instance id    ARGV[4] time to live in ms (beat)
--
-- Reply: { senders up, instances up } (after the beat or the leave). Each key expires with its last entry.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, sender, instance = ARGV[1], ARGV[2], ARGV[3]

if op == 'leave' then
  redis.call('ZREM', KEYS[1], sender)
  -- The instance stays until its entry expires: another adapter of the same instance may still be up.
elseif op == 'beat' then
  local ttl = tonumber(ARGV[4])
  if ttl == nil or ttl < 1 then return redis.error_reply('BADARG time to live must be a positive number of ms') end
  local until_ms = now + ttl
  redis.call('ZADD', KEYS[1], until_ms, sender)
  redis.call('ZADD', KEYS[2], 'GT', until_ms, instance)
  -- Each key lives as long as its longest entry: its expiry only moves later (GT), and a key without one (just
  -- made) gets this entry's (NX).
  for i = 1, 2 do
    if redis.call('PEXPIREAT', KEYS[i], until_ms, 'GT') == 0 then redis.call('PEXPIREAT', KEYS[i], until_ms, 'NX') end
  end
else
  return redis.error_reply('BADARG op must be beat or leave')
end
-- Entries whose time has passed go; the counts are of those left.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return { redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2]) }
