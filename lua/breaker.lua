-- Fusebox: every change to a breaker's shared state goes through this script.
--
-- It mirrors Sources/Fusebox/BreakerStateMachine.swift rule for rule; the conformance suite runs the same
-- scenarios against both. The only clock is Redis TIME; ARGV[5], empty in production, lets tests pin it.
--
-- KEYS[1] NS:{NAME}:state   hash    KEYS[2] NS:{NAME}:window  hash
-- KEYS[3] NS:{NAME}:totals  hash    KEYS[4] NS:{NAME}:events  stream
-- KEYS[5] NS:{NAME}:batches sorted set of outcome batches already applied (ids, scored by time), so a batch
--         sent again after a timeout is applied once
--
-- ARGV[1]  op: acquire | record | isolate | reset | half_open | read
-- ARGV[2]  channel for transition messages        ARGV[3]  breaker name
-- ARGV[4]  instance id                            ARGV[5]  '' (use TIME), or a fixed time in ms for tests
-- ARGV[6]  failure ratio threshold, '' = off      ARGV[7]  consecutive-failure threshold, '' = off
-- ARGV[8]  slow-call ratio threshold, '' = off    ARGV[9]  minimum throughput
-- ARGV[10] window kind: time | count              ARGV[11] buckets (time) or size (count)
-- ARGV[12] bucket width in ms (time)              ARGV[13] permitted calls in half-open
-- ARGV[14] success threshold                      ARGV[15] max half-open duration in ms
-- ARGV[16] mode: normal | metrics_only | disabled ARGV[17] minimum distinct failing instances
-- ARGV[18] the policy as JSON (stored for operators). When ARGV[9] is '' (the fusebox command, which does
--          not know the policy), ARGV[6..18] come from the stored JSON and ARGV[19..20] from the stored
--          break_base and break_durations: the last instance call's.
-- ARGV[19] base attempt b                         ARGV[20] break durations in ms for attempts b+1.. (comma-separated)
-- op record:  ARGV[21] version and ARGV[22] incarnation ('created') the outcomes were admitted under,
--             ARGV[23] 1 if they are recent enough to enter the window,
--             ARGV[24] outcomes in order: s success, S slow success, f failure, F slow failure,
--             ARGV[25] ignored count, ARGV[26] 1 if these are half-open probe outcomes,
--             ARGV[27] calls rejected by the instance's cache, ARGV[28] batch id ('' = none),
--             ARGV[29..] error type name, count, name, count, ...
-- op isolate: ARGV[21] reason
--
-- Reply: { state, version, since, open_until, now, attempt, reason, isolation_reason, consecutive_failures,
--          probes, probe_successes, granted (acquire: 0 denied, 1 admitted, 2 admitted as probe),
--          window calls, window failures, window slow, 1 if this call made a transition,
--          created (the state's incarnation: it changes when the hash is made anew, e.g. after a Redis restart),
--          and for op read: the totals hash as a flat field/value array }

local op = ARGV[1]
local now = tonumber(ARGV[5])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Keys edited by hand must give a clear error, never a crash or a silent misreading.
local expected_types = { 'hash', 'hash', 'hash', 'stream', 'zset' }
for i = 1, 5 do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'none' and kind ~= expected_types[i] then
    if op == 'reset' then
      redis.call('DEL', KEYS[i])
    else
      return redis.error_reply('CORRUPT ' .. KEYS[i] .. ' is a ' .. kind .. ', expected a ' .. expected_types[i] .. ' (fusebox reset repairs it)')
    end
  end
end

local function optional_number(text) if text == '' then return nil end return tonumber(text) end

if ARGV[9] == '' then
  local stored = redis.call('HGET', KEYS[1], 'policy')
  if not stored then
    return redis.error_reply('NOPOLICY ' .. KEYS[1] .. ' has no stored policy: no instance has used this breaker yet')
  end
  local ok, p = pcall(cjson.decode, stored)
  if not ok or type(p) ~= 'table' or type(p.window) ~= 'table' then
    return redis.error_reply('CORRUPT ' .. KEYS[1] .. " field 'policy' is not the JSON Fusebox writes (fusebox reset repairs it)")
  end
  local function text(v) if v == nil or v == cjson.null then return '' end return tostring(v) end
  ARGV[6] = text(p.failureRateThreshold); ARGV[7] = text(p.consecutiveFailureThreshold)
  ARGV[8] = text(p.slowCallRateThreshold); ARGV[9] = text(p.minimumThroughput)
  ARGV[10] = text(p.window.kind)
  if p.window.kind == 'time' then
    ARGV[11] = text(p.window.buckets); ARGV[12] = tostring(math.max(1, math.floor(p.window.samplingMs / p.window.buckets)))
  else
    ARGV[11] = text(p.window.size); ARGV[12] = '1'
  end
  ARGV[13] = text(p.permittedCallsInHalfOpen); ARGV[14] = text(p.successThreshold)
  ARGV[15] = text(p.maxHalfOpenDurationMs); ARGV[16] = text(p.mode); ARGV[17] = text(p.minimumInstances or 1)
  ARGV[18] = stored
  -- Break durations are computed only in Swift (BreakerPolicy.BreakDuration): reuse those the last instance
  -- call sent, for the attempts after the one it knew.
  ARGV[19] = redis.call('HGET', KEYS[1], 'break_base') or '0'
  ARGV[20] = redis.call('HGET', KEYS[1], 'break_durations') or '30000'
end

local policy = {
  failure_rate = optional_number(ARGV[6]), consecutive = optional_number(ARGV[7]), slow_rate = optional_number(ARGV[8]),
  minimum = tonumber(ARGV[9]), window_kind = ARGV[10], window_size = tonumber(ARGV[11]), width = tonumber(ARGV[12]),
  permitted = tonumber(ARGV[13]), successes = tonumber(ARGV[14]), max_half_open = tonumber(ARGV[15]),
  mode = ARGV[16], instances = tonumber(ARGV[17]), base_attempt = tonumber(ARGV[19]), durations = {}
}
for value in string.gmatch(ARGV[20], '[^,]+') do table.insert(policy.durations, tonumber(value)) end

local base_state = 'closed'
if policy.mode == 'metrics_only' then base_state = 'metrics_only' elseif policy.mode == 'disabled' then base_state = 'disabled' end

-- Load and validate the state hash.
local valid_states = { closed = true, open = true, half_open = true, isolated = true, disabled = true, metrics_only = true }
local numeric_fields = { 'version', 'since', 'open_until', 'attempt', 'consecutive_failures', 'probes', 'probe_successes', 'created' }
local st = {}
local raw = redis.call('HGETALL', KEYS[1])
for i = 1, #raw, 2 do st[raw[i]] = raw[i + 1] end
local corrupt = nil
if #raw == 0 then
  st = { state = base_state, version = 0, since = now, open_until = 0, attempt = 0, reason = 'created',
         isolation_reason = '', consecutive_failures = 0, probes = 0, probe_successes = 0, created = now }
else
  if not valid_states[st.state or ''] then corrupt = "field 'state' is '" .. tostring(st.state) .. "'" end
  for _, field in ipairs(numeric_fields) do
    local value = tonumber(st[field] or '')
    if value == nil and corrupt == nil then corrupt = "field '" .. field .. "' is '" .. tostring(st[field]) .. "'" end
    st[field] = value or 0
  end
  st.reason = st.reason or ''
  st.isolation_reason = st.isolation_reason or ''
end
if corrupt ~= nil then
  if op ~= 'reset' then
    return redis.error_reply('CORRUPT ' .. KEYS[1] .. ' ' .. corrupt .. ' (fusebox reset repairs it)')
  end
  -- A repairing reset starts versions at the current time, so every instance takes it as newer than its cache.
  st = { state = base_state, version = now, since = now, open_until = 0, attempt = 0, reason = 'repaired',
         isolation_reason = '', consecutive_failures = 0, probes = 0, probe_successes = 0, created = now }
  redis.call('DEL', KEYS[2])
end

-- The sliding window.
local window = { calls = 0, failures = 0, slow = 0 }
local failing_instances = {}
local bucket = 0
if policy.window_kind == 'time' then bucket = math.floor(now / policy.width) end

local function load_window()
  if policy.window_kind == 'time' then
    local newest = tonumber(redis.call('HGET', KEYS[2], 'newest') or '')
    if newest ~= nil and bucket > newest then
      if bucket - newest >= policy.window_size then
        redis.call('DEL', KEYS[2])
      else
        for b = newest - policy.window_size + 1, bucket - policy.window_size do
          redis.call('HDEL', KEYS[2], b .. ':c', b .. ':f', b .. ':s', b .. ':q')
        end
      end
    end
    if newest == nil or bucket > newest then redis.call('HSET', KEYS[2], 'newest', bucket) end
    local fields = {}
    for b = bucket - policy.window_size + 1, bucket do
      table.insert(fields, b .. ':c'); table.insert(fields, b .. ':f'); table.insert(fields, b .. ':s'); table.insert(fields, b .. ':q')
    end
    local values = redis.call('HMGET', KEYS[2], unpack(fields))
    for i = 1, #values, 4 do
      window.calls = window.calls + (tonumber(values[i] or 0) or 0)
      window.failures = window.failures + (tonumber(values[i + 1] or 0) or 0)
      window.slow = window.slow + (tonumber(values[i + 2] or 0) or 0)
      if values[i + 3] then
        for id in string.gmatch(values[i + 3], '%S+') do failing_instances[id] = true end
      end
    end
  else
    local values = redis.call('HMGET', KEYS[2], 'calls', 'failures', 'slow')
    window.calls = tonumber(values[1] or 0) or 0
    window.failures = tonumber(values[2] or 0) or 0
    window.slow = tonumber(values[3] or 0) or 0
  end
end

local function count_instances()
  local n = 0
  for _ in pairs(failing_instances) do n = n + 1 end
  return n
end

local function format2(x) return string.format('%.2f', x) end

local function trip_reason()
  if policy.instances > 1 and count_instances() < policy.instances then return nil end
  if policy.consecutive and st.consecutive_failures >= policy.consecutive then
    return st.consecutive_failures .. ' consecutive failures ≥ ' .. policy.consecutive
  end
  if window.calls < policy.minimum then return nil end
  if policy.failure_rate then
    local ratio = window.failures / window.calls
    if ratio >= policy.failure_rate then
      return 'failure ratio ' .. format2(ratio) .. ' ≥ ' .. format2(policy.failure_rate) .. ' over ' .. window.calls .. ' calls'
    end
  end
  if policy.slow_rate then
    local ratio = window.slow / window.calls
    if ratio >= policy.slow_rate then
      return 'slow-call ratio ' .. format2(ratio) .. ' ≥ ' .. format2(policy.slow_rate) .. ' over ' .. window.calls .. ' calls'
    end
  end
  return nil
end

local function format_duration(ms)
  if ms < 1000 then return ms .. ' ms' end
  if ms < 60000 then
    local tenths = math.floor((ms + 50) / 100)
    return math.floor(tenths / 10) .. '.' .. (tenths % 10) .. ' s'
  end
  return math.floor(ms / 60000) .. ' min ' .. math.floor((ms % 60000) / 1000) .. ' s'
end

local function break_for(attempt)
  local index = attempt - policy.base_attempt
  if index < 1 then index = 1 end
  if index > #policy.durations then index = #policy.durations end
  return policy.durations[index]
end

local transitioned = false
local function transition(to, reason)
  local from = st.state
  st.version = st.version + 1
  st.state = to
  st.since = now
  st.reason = reason
  st.probes = 0
  st.probe_successes = 0
  st.consecutive_failures = 0
  redis.call('DEL', KEYS[2])
  window = { calls = 0, failures = 0, slow = 0 }
  failing_instances = {}
  if to == 'isolated' or to == 'half_open' then
    st.open_until = 0
  elseif to ~= 'open' then
    st.attempt = 0
    st.open_until = 0
  end
  if to ~= 'isolated' then st.isolation_reason = '' end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100, '*', 'from', from, 'to', to, 'reason', reason,
    'version', st.version, 'instance', ARGV[4], 'at', now)
  local probe_in = 0
  if to == 'open' then probe_in = st.open_until - now end
  redis.call('PUBLISH', ARGV[2], cjson.encode({ name = ARGV[3], version = st.version, state = to,
    probe_in_ms = probe_in, reason = reason, isolation_reason = st.isolation_reason, attempt = st.attempt,
    created = st.created }))
  transitioned = true
end

local function trip(reason)
  st.attempt = st.attempt + 1
  st.open_until = now + break_for(st.attempt)
  transition('open', reason)
end

-- Time alone: open -> half_open when the break is over, half_open -> open after max_half_open.
local function advance()
  if st.state == 'open' and now >= st.open_until then
    transition('half_open', 'break of ' .. format_duration(break_for(st.attempt)) .. ' ended')
  elseif st.state == 'half_open' and now - st.since >= policy.max_half_open then
    trip('half-open for ' .. format_duration(policy.max_half_open) .. ' without closing')
  end
end

-- A policy mode change moves a breaker between the base states.
if (st.state == 'closed' or st.state == 'metrics_only' or st.state == 'disabled') and st.state ~= base_state then
  transition(base_state, 'mode is ' .. policy.mode)
end

local granted = 0
if op == 'acquire' then
  advance()
  if st.state == 'closed' or st.state == 'metrics_only' or st.state == 'disabled' then
    granted = 1
  elseif st.state == 'half_open' and st.probes < policy.permitted then
    st.probes = st.probes + 1
    granted = 2
  else
    redis.call('HINCRBY', KEYS[3], 'rejected', 1)
  end
elseif op == 'record' then
  local version = tonumber(ARGV[21])
  local same_state = version == st.version and tonumber(ARGV[22]) == st.created
  local window_ok = ARGV[23] == '1'
  local outcomes = ARGV[24]
  local ignored = tonumber(ARGV[25])
  local probes = ARGV[26] == '1'
  local duplicate = false
  if ARGV[28] ~= '' then
    duplicate = redis.call('ZADD', KEYS[5], 'NX', now, ARGV[28]) == 0
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - 600000)
  end
  if duplicate then
    outcomes = ''
    ignored = 0
    same_state = false
  end
  local successes, failures, slow = 0, 0, 0
  for i = 1, #outcomes do
    local c = string.sub(outcomes, i, i)
    if c == 'f' or c == 'F' then failures = failures + 1 else successes = successes + 1 end
    if c == 'S' or c == 'F' then slow = slow + 1 end
  end
  if #outcomes + ignored > 0 then
    redis.call('HINCRBY', KEYS[3], 'calls', #outcomes + ignored)
    if successes > 0 then redis.call('HINCRBY', KEYS[3], 'successes', successes) end
    if failures > 0 then redis.call('HINCRBY', KEYS[3], 'failures', failures) end
    if slow > 0 then redis.call('HINCRBY', KEYS[3], 'slow', slow) end
    if ignored > 0 then redis.call('HINCRBY', KEYS[3], 'ignored', ignored) end
  end
  if not duplicate then
    local rejected = tonumber(ARGV[27])
    if rejected > 0 then redis.call('HINCRBY', KEYS[3], 'rejected', rejected) end
    for i = 29, #ARGV, 2 do redis.call('HINCRBY', KEYS[3], 'error:' .. ARGV[i], tonumber(ARGV[i + 1])) end
  end

  if probes then
    if same_state and st.state == 'half_open' then
      st.probes = math.max(0, st.probes - ignored)
      for i = 1, #outcomes do
        if st.state ~= 'half_open' then break end
        local c = string.sub(outcomes, i, i)
        st.probes = math.max(0, st.probes - 1)
        if c == 'f' or c == 'F' then
          trip('probe failed (' .. (ARGV[29] or 'Error') .. ')')
        else
          st.probe_successes = st.probe_successes + 1
          if st.probe_successes >= policy.successes then
            local n = st.probe_successes
            local plural = 'es'
            if n == 1 then plural = '' end
            transition(base_state, n .. ' probe success' .. plural .. ' ≥ ' .. policy.successes)
          end
        end
      end
    end
  elseif same_state and window_ok and (st.state == 'closed' or st.state == 'metrics_only') and #outcomes > 0 then
    load_window()
    local added = { c = 0, f = 0, s = 0 }
    local count_next, count_filled
    if policy.window_kind == 'count' then
      local values = redis.call('HMGET', KEYS[2], 'next', 'filled')
      count_next = tonumber(values[1] or 0) or 0
      count_filled = tonumber(values[2] or 0) or 0
    end
    local consumed = 0
    for i = 1, #outcomes do
      local c = string.sub(outcomes, i, i)
      local failed = (c == 'f' or c == 'F')
      local is_slow = (c == 'S' or c == 'F')
      if policy.window_kind == 'count' then
        if count_filled == policy.window_size then
          local old = tonumber(redis.call('HGET', KEYS[2], 'r' .. count_next) or 0) or 0
          window.calls = window.calls - 1
          if old % 2 == 1 then window.failures = window.failures - 1 end
          if old >= 2 then window.slow = window.slow - 1 end
        else
          count_filled = count_filled + 1
        end
        local flags = 0
        if failed then flags = flags + 1 end
        if is_slow then flags = flags + 2 end
        redis.call('HSET', KEYS[2], 'r' .. count_next, flags)
        count_next = (count_next + 1) % policy.window_size
      else
        added.c = added.c + 1
        if failed then added.f = added.f + 1 end
        if is_slow then added.s = added.s + 1 end
      end
      window.calls = window.calls + 1
      if is_slow then window.slow = window.slow + 1 end
      if failed then
        window.failures = window.failures + 1
        st.consecutive_failures = st.consecutive_failures + 1
        failing_instances[ARGV[4]] = true
      else
        st.consecutive_failures = 0
      end
      consumed = i
      if st.state == 'closed' and policy.mode == 'normal' then
        local reason = trip_reason()
        if reason then
          trip(reason)
          break
        end
      end
    end
    if not transitioned then
      if policy.window_kind == 'count' then
        redis.call('HSET', KEYS[2], 'next', count_next, 'filled', count_filled,
          'calls', window.calls, 'failures', window.failures, 'slow', window.slow)
      elseif added.c > 0 then
        redis.call('HINCRBY', KEYS[2], bucket .. ':c', added.c)
        if added.f > 0 then
          redis.call('HINCRBY', KEYS[2], bucket .. ':f', added.f)
          if policy.instances > 1 then
            local q = redis.call('HGET', KEYS[2], bucket .. ':q') or ''
            if not string.find(' ' .. q .. ' ', ' ' .. ARGV[4] .. ' ', 1, true) then
              redis.call('HSET', KEYS[2], bucket .. ':q', q .. ' ' .. ARGV[4])
            end
          end
        end
        if added.s > 0 then redis.call('HINCRBY', KEYS[2], bucket .. ':s', added.s) end
      end
    end
  end
elseif op == 'isolate' then
  st.isolation_reason = ARGV[21]
  transition('isolated', 'isolated: ' .. ARGV[21])
elseif op == 'reset' then
  transition(base_state, corrupt and 'reset (repaired ' .. corrupt .. ')' or 'reset')
  st.isolation_reason = ''
elseif op == 'half_open' then
  transition('half_open', 'forced half-open')
elseif op == 'read' then
  advance()
  if st.state == 'closed' or st.state == 'metrics_only' then load_window() end
end

redis.call('HSET', KEYS[1], 'state', st.state, 'version', st.version, 'since', st.since, 'open_until', st.open_until,
  'attempt', st.attempt, 'reason', st.reason, 'isolation_reason', st.isolation_reason,
  'consecutive_failures', st.consecutive_failures, 'probes', st.probes, 'probe_successes', st.probe_successes,
  'policy', ARGV[18], 'updated', now, 'created', st.created, 'break_base', ARGV[19], 'break_durations', ARGV[20])

local totals = {}
if op == 'read' then totals = redis.call('HGETALL', KEYS[3]) end
return { st.state, st.version, st.since, st.open_until, now, st.attempt, st.reason, st.isolation_reason,
         st.consecutive_failures, st.probes, st.probe_successes, granted, window.calls, window.failures, window.slow,
         transitioned and 1 or 0, st.created, totals }
