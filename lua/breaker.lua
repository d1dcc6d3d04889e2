-- Fusebox key schema 2: every change to a breaker's shared state goes through this script.
--
-- It mirrors Sources/Fusebox/BreakerStateMachine.swift rule for rule; the conformance suite runs the same
-- scenarios against both. The only clock is Redis TIME, read once per call; ARGV[3], empty in production, lets
-- tests pin it. Instances ship outcomes as counts (Docs/architecture.md): the rules are evaluated when a batch
-- arrives. One call carries one breaker or several (an instance's periodic flush): their keys are KEYS[4i-3..4i].
--
-- KEYS[4i-3] NS:{NAME}:state   hash    KEYS[4i-2] NS:{NAME}:window  hash
-- KEYS[4i-1] NS:{NAME}:totals  hash    KEYS[4i]   NS:{NAME}:events  stream
-- The state hash's fields `marks:C` hold, per sender (one adapter object, named by the nonce after the last ':' of
-- its id; C is the nonce's last character), ' NONCE:SEQ:LAST_S': the highest batch sequence applied (a batch sent
-- again after a timeout is applied once) and when (s) it was last heard from; about 30 bytes a sender, in at most 36
-- fields, so a write copies a few senders' marks rather than all of them. Field `leases` holds the half-open probe permits,
-- ' NONCE:EXPIRES_MS' each: a permit whose holder neither reports nor renews it by then is free again.
-- Publishes a transition message per transition, and a recall when the failure budget shrinks (instances then write
-- the failures they hold beyond it) or a quiet breaker (no failure in its window) gets its first one; a recall says
-- whether the window is quiet: when it is not, instances write the successes they held too (Docs/architecture.md).
--
-- ARGV[1] channel for transition and recall messages   ARGV[2] instance id (events, quorum)
-- ARGV[3] '' (use TIME), or a fixed time in ms for tests
-- ARGV[4] how long (ms) the sender may hold outcomes before it writes them (its flush interval)
-- ARGV[5] sender ('' = no dedupe)
-- ARGV[6] live senders, ARGV[7] live instances, as the caller last read the membership (`NS:{members}:*`; 0 = not
--         known): the failure budget is shared among min(live senders, senders with a mark); a quorum above the
--         live instances is lowered to them
-- Then, per breaker, L followed by L arguments A[1..L]:
-- A[1]  op: acquire | renew | record | isolate | reset | half_open | read      A[2]  breaker name
-- A[3]  failure ratio threshold, '' = off, then with a relative threshold '~FACTOR:FLOOR:HORIZON_MS:WARMUP_CALLS'
--                                             A[4]  consecutive-failure threshold, '' = off
-- A[5]  slow-call ratio threshold, '' = off   A[6]  minimum throughput
-- A[7]  window kind: time | count             A[8]  buckets (time) or size (count)
-- A[9]  bucket width in ms (time)             A[10] permitted calls in half-open
-- A[11] success threshold                     A[12] max half-open duration in ms
-- A[13] mode: normal | metrics_only | disabled | shadow    A[14] minimum distinct failing instances
-- A[15] policy fingerprint                    A[16] the policy as JSON, or '' when the instance knows Redis holds
--       this fingerprint already (the JSON is written only when the fingerprint changes)
-- A[17] base attempt b                        A[18] break durations in ms for attempts b+1.. (comma-separated)
--   When A[6] is '' (the fusebox command, which does not know the policy), A[3..18] come from the stored JSON and
--   the stored break_base and break_durations: those of the last instance call that changed them.
-- op record: A[19] batch sequence number of the sender
--            A[20] version and A[21] incarnation ('created') the outcomes were admitted under
--            A[22] 1 if they are recent enough to enter the window   A[23] 1 for half-open probe outcomes
--            A[24] ignored    A[25] calls rejected by the instance's cache: R, or R:T when the sender's policy has
--            adaptive throttling (T of the R were shed by it; the reply then carries the window's throttled count),
--            either followed by '/W' when W calls ran in shadow mode that the breaker rejected (totals: would_reject)
--            A[26] failures before the first success  A[27] longest failure run  A[28] trailing failures
--            A[29] E, the number of error types, then A[30 .. 29+2E]: name, count, name, count, ...
--            then groups of five until the end: the time bucket the calls happened in (the sender maps its clock
--            to Redis TIME; 0 = unknown, use the current bucket), successes, slow successes, failures, slow failures
-- op acquire, renew: A[19] the probe permit's lease in ms (default 5000): a granted permit, or (renew) every permit
--            this sender holds, is held until then
-- op isolate: A[19] reason   A[20] for how long (ms), '' = until reset: the isolation then ends by itself (held in
--            open_until; any call that finds it over, acquire or read, moves the breaker back to its base state)
-- op reset: A[19] 'baseline' forgets the relative threshold's baseline too
--
-- Reply: one element per breaker, either an error (a refusal: CORRUPT, NOPOLICY, SCHEMA) or
--        { state, version, since, open_until, now, attempt, reason, isolation_reason, consecutive_failures,
--          probes, probe_successes, granted (acquire: 0 denied, 1 admitted, 2 admitted as probe),
--          window calls, window failures, window slow, 1 if this call made a transition,
--          created (the state's incarnation: it changes when the hash is made anew, e.g. after a Redis restart),
--          totals (op read: the totals hash as a flat field/value array, whole numbers only), failure budget (-1:
--          none applies), 1 if the stored policy fingerprint is A[15], 1 if the batch was a duplicate,
--          what was wrong with the statistics (totals, events) and was made anew, or (read) is unreadable: '' if nothing,
--          (op read) transitions in the last 10 minutes from the events stream, up to 30,
--          (time window, op read or a record in the R:T form) the calls shed by adaptive throttling, a decaying
--          count ('%.4f'); '' otherwise,
--          (op read) the relative threshold's baseline 'CALLS FAILURES AT_MS', or '' }

local SCHEMA = '2'
local channel, instance, hold, sender = ARGV[1], ARGV[2], tonumber(ARGV[4]) or 1000, ARGV[5]
local live_senders, live_instances = tonumber(ARGV[6]) or 0, tonumber(ARGV[7]) or 0
if sender == '' then sender = nil end
-- The sender's name in `marks` and `leases`: the nonce after the last ':' of its id.
local SENDER_KEY = sender and (string.match(sender, '([^: ]+)$') or sender) or '-'
local MARKS_FIELD = 'marks:' .. string.sub(SENDER_KEY, -1)

local now = tonumber(ARGV[3])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- This sender's high-water mark in `marks` (nil when it has none).
local function mark_of(marks)
  if not sender or not marks then return nil end
  local at = string.find(marks, ' ' .. SENDER_KEY .. ':', 1, true)
  if not at then return nil end
  return tonumber(string.match(marks, '^ [^ ]-:(%d+):', at))
end

-- `marks` with this sender's high-water mark set to `seq`, heard from now.
local function with_mark(marks, seq)
  marks = marks or ''
  local record = ' ' .. SENDER_KEY .. ':' .. seq .. ':' .. math.floor(now / 1000)
  local at = string.find(marks, ' ' .. SENDER_KEY .. ':', 1, true)
  if not at then return marks .. record end
  local after = string.find(marks, ' ', at + 1, true)
  if after then return string.sub(marks, 1, at - 1) .. record .. string.sub(marks, after) end
  return string.sub(marks, 1, at - 1) .. record
end

-- A totals value Fusebox could have written: a whole number of at most 18 digits (HINCRBY stops at 2^63, and Swift
-- reads these as Int).
local WHOLE = '^%-?' .. string.rep('%d?', 17) .. '%d$'

-- A number that Fusebox could have written: nil for anything else, NaN and infinities included (redis-cli can
-- write `nan`, and Lua's tonumber takes it).
local function finite(text)
  local n = tonumber(text or '')
  if n == nil or n ~= n or n == math.huge or n == -math.huge then return nil end
  return n
end

-- Statistics never stop the state machine: a totals field that is not a whole number (or a totals key or events
-- stream of another type) is made anew by the write that meets it, and the first such repair of a call is reported
-- in its reply (element 22) so that instances can say so, once a minute at most.
local repaired = nil
local function count_total(key, field, n)
  local reply = redis.pcall('HINCRBY', key, field, n)
  if type(reply) == 'table' and reply.err then
    -- Only what the value itself causes is repaired; anything else (OOM, a read-only replica) fails the call as
    -- before, having changed nothing.
    if string.find(reply.err, 'WRONGTYPE', 1, true) then
      repaired = repaired or (key .. ' was a ' .. redis.call('TYPE', key)['ok'] .. ', not a hash: made anew')
      redis.call('DEL', key)
    elseif not (string.find(reply.err, 'not an integer', 1, true) or string.find(reply.err, 'overflow', 1, true)) then
      error(reply)
    else
      local was = redis.call('HGET', key, field)
      repaired = repaired or (key .. " field '" .. field .. "' was '" .. string.sub(tostring(was), 1, 40)
        .. "', not a whole number: counted anew from this write")
      redis.call('HDEL', key, field)
    end
    redis.call('HINCRBY', key, field, n)
  end
end

-- What the lean path reads of the state hash (and, last, the senders' high-water marks).
local LEAN_READ = { 'state', 'version', 'since', 'open_until', 'attempt', 'reason', 'isolation_reason', 'consecutive_failures',
  'probes', 'probe_successes', 'created', 'policy_fp', 'schema', 'pruned', MARKS_FIELD }

-- The common write, kept lean: plain successes for a closed breaker with a time window, from a sender Redis knows,
-- admitted under the state Redis holds, while the window holds no failure (and no slow call where a slow-call rule
-- counts them) and there is no streak, and the window's newest bucket is the current one. Such successes cannot
-- move the breaker: they are counted and answered as `run` would, without a failure budget (0: a first failure is
-- written at once, and its reply grants one). Anything else returns nil, before writing, and goes to `run`.
-- Redis pays for every Lua value and closure a call makes; this path makes few (Docs/architecture.md).
local function lean_record(A, K)
  if A[1] ~= 'record' or not sender or A[7] ~= 'time' or A[6] == '' or A[16] ~= '' or A[22] ~= '1' or A[23] ~= '0'
    or A[24] ~= '0' or A[25] ~= '0' or A[29] ~= '0' or string.find(A[3], '~', 1, true) then
    return nil
  end
  local width, size, seq = tonumber(A[9]), tonumber(A[8]), tonumber(A[19])
  if not (width and size and seq) then return nil end
  local bucket = math.floor(now / width)
  -- One pass over the groups: plain successes only, summed per window bucket (a group the sender could not place,
  -- 0, or ahead of Redis' clock belongs to the current bucket; one older than the window counts in the totals only).
  local n, adds, order = 0, {}, {}
  for i = 30, #A, 5 do
    if A[i + 2] ~= '0' or A[i + 3] ~= '0' or A[i + 4] ~= '0' then return nil end
    local b, c = tonumber(A[i]), tonumber(A[i + 1])
    if b == nil or c == nil then return nil end
    n = n + c
    if b <= 0 or b > bucket then b = bucket end
    if b > bucket - size then
      local had = adds[b]
      if had then adds[b] = had + c else adds[b] = c; order[#order + 1] = b end
    end
  end
  if n <= 0 then return nil end
  local v = redis.pcall('HMGET', K[1], unpack(LEAN_READ))
  if v.err then return nil end
  local state, mode = v[1], A[13]
  if not ((state == 'closed' and (mode == 'normal' or mode == 'shadow')) or (state == 'metrics_only' and mode == 'metrics_only')) then
    return nil
  end
  local version, created = finite(v[2]), finite(v[11])
  if version == nil or version ~= tonumber(A[20]) or created == nil or created ~= tonumber(A[21]) or v[13] ~= SCHEMA
    or v[8] ~= '0' or now - (tonumber(v[14] or '') or 0) >= 60000 then
    return nil
  end
  local since, open_until, attempt = finite(v[3]), finite(v[4]), finite(v[5])
  local probes, probe_successes = finite(v[9]), finite(v[10])
  if not (since and open_until and attempt and probes and probe_successes) then return nil end
  local marks = v[#LEAN_READ]
  local high = mark_of(marks)
  if high == nil or seq <= high then return nil end
  -- One read of the window: its sums and the slots of the buckets written (a quiet instance's batch spans them all).
  local names = { 'newest', 'calls', 'failures', 'slow' }
  local text_of = {}
  for j = 1, #order do names[4 + j] = tostring(order[j] % size) end
  local w = redis.pcall('HMGET', K[2], unpack(names))
  if w.err then return nil end
  for j = 5, #names do text_of[names[j]] = w[j] or false end
  local newest = finite(w[1])
  local calls, failures, slow = finite(w[2]), finite(w[3]), finite(w[4])
  if newest == nil or newest > bucket or calls == nil or failures ~= 0 or slow == nil or (A[5] ~= '' and slow > 0) then
    return nil
  end
  if bucket - newest >= size then
    calls, slow = 0, 0
  elseif newest < bucket then
    -- Buckets newest+1 .. bucket take the slots of buckets leaving the window: what those still counted goes
    -- (calls and slow calls only: the window holds no failure). Slots not read above are read now.
    local missing = {}
    for b = newest + 1, bucket do
      local slot = tostring(b % size)
      if text_of[slot] == nil then missing[#missing + 1] = slot end
    end
    if #missing > 0 then
      local old = redis.pcall('HMGET', K[2], unpack(missing))
      if old.err then return nil end
      for j = 1, #missing do text_of[missing[j]] = old[j] or false end
    end
    for b = newest + 1, bucket do
      local text = text_of[tostring(b % size)]
      if text then
        local pb, pc, pf, ps = string.match(text, '^(%-?%d+) (%d+) (%d+) (%d+)$')
        if pb == nil then return nil end
        pb = tonumber(pb)
        if pb > newest - size and pb <= newest then calls = calls - tonumber(pc); slow = slow - tonumber(ps) end
      end
    end
  end
  local set = { 'calls', 0, 'newest', bucket, 'slow', slow }
  for j = 1, #order do
    local b, slot = order[j], names[4 + j]
    local c = adds[b]
    local text = text_of[slot]
    local value = b .. ' ' .. c .. ' 0 0'
    if text then
      local pb, pc, pf, ps = string.match(text, '^(%-?%d+) (%d+) (%d+) (%d+)$')
      if pb == nil then return nil end
      if tonumber(pb) == b then
        if pf ~= '0' or (A[5] ~= '' and ps ~= '0') then return nil end
        value = b .. ' ' .. (tonumber(pc) + c) .. ' 0 ' .. ps
      end
    end
    set[#set + 1] = slot; set[#set + 1] = value
    calls = calls + c
  end
  set[2] = calls
  count_total(K[3], 'calls', n)
  count_total(K[3], 'successes', n)
  redis.call('HSET', K[2], unpack(set))
  redis.call('HSET', K[1], MARKS_FIELD, with_mark(marks, seq))
  local budget = -1
  if state == 'closed' then budget = 0 end
  return { state, version, since, open_until, now, attempt, v[6] or '', v[7] or '', 0, probes, probe_successes, 0,
           calls, 0, slow, 0, created, {}, budget, v[12] == A[15] and 1 or 0, 0, repaired or '' }
end

-- Every rule, for every operation: made only when a call needs more than the lean path (below), since Redis pays
-- for each table and closure a script call makes.
local function make_rules()
  -- The state hash fields the rules use (the policy JSON and the break durations stay unread).
  -- (and, last, the senders' high-water marks).
  local FIELDS = { 'state', 'version', 'since', 'open_until', 'attempt', 'reason', 'isolation_reason',
    'consecutive_failures', 'probes', 'probe_successes', 'created', 'budget', 'policy_fp', 'schema', 'pruned', 'senders',
    'streak_at', 'leases', 'baseline' }
  local NUMERIC = { 'version', 'since', 'open_until', 'attempt', 'consecutive_failures', 'probes', 'probe_successes', 'created' }
  local VALID_STATES = { closed = true, open = true, half_open = true, isolated = true, disabled = true, metrics_only = true }
  local NUMERIC_INDEX = { version = 2, since = 3, open_until = 4, attempt = 5, consecutive_failures = 8, probes = 9,
    probe_successes = 10, created = 11 }
  local EXPECTED = { 'hash', 'hash', 'hash', 'stream' }
  local READ = { unpack(FIELDS) }
  READ[#READ + 1] = MARKS_FIELD

  local function refuse(text) error({ refusal = text }) end

  local function format2(x) return string.format('%.2f', x) end

  local function format_duration(ms)
    if ms < 1000 then return ms .. ' ms' end
    if ms < 60000 then
      local tenths = math.floor((ms + 50) / 100)
      return math.floor(tenths / 10) .. '.' .. (tenths % 10) .. ' s'
    end
    return math.floor(ms / 60000) .. ' min ' .. math.floor((ms % 60000) / 1000) .. ' s'
  end

  -- The fewest added failures that can make `bad / calls ≥ rate` with calls at least `minimum`, whatever number of
  -- successes other instances add meanwhile (successes never lower it: the failure budget stays stable as they
  -- arrive). `size`: a count window's size (math.huge for a time window), where failures also push out old calls.
  local function needed(calls, bad, rate, minimum, size)
    if calls < 0 then calls = 0 end
    if bad < 0 then bad = 0 end
    local n
    if rate < 1 then
      n = math.max(rate * minimum - bad, (rate * calls - bad) / (1 - rate))
      if calls + n > size then n = math.huge end
      if size < math.huge and size >= minimum then
        -- A full count window: each call pushes out the oldest (assumed a success).
        n = math.min(n, rate * size - bad)
      end
    elseif bad < calls then
      n = math.huge
    else
      n = minimum - calls
    end
    if n == math.huge then return n end
    return math.max(1, math.ceil(n - 1e-9))
  end

  -- One breaker: A its arguments, K its four keys. In order: the state read and checked (a corrupt key refused, or
  -- repaired by reset), the policy from A (or, for the fusebox command, the stored JSON), the window and its
  -- helpers, transitions, then one function per operation (acquire_or_renew, record with apply_probe_outcomes and
  -- add_to_window, isolate, reset, force_half_open, read), and, common to all, the failure budget, the writes and
  -- the reply.
  local function run(A, K)
    local op = A[1]

    -- A read or write that meets a key of the wrong type refuses with CORRUPT naming the key (reset deletes it).
    -- No TYPE check runs on the normal path: Redis' own WRONGTYPE answer is the signal.
    local function checked(index, command, ...)
      local reply = redis.pcall(command, K[index], ...)
      if type(reply) == 'table' and reply.err then
        if string.find(reply.err, 'WRONGTYPE', 1, true) then
          if op == 'reset' then
            redis.call('DEL', K[index])
            return redis.call(command, K[index], ...)
          end
          local kind = redis.call('TYPE', K[index])['ok']
          refuse('CORRUPT ' .. K[index] .. ' is a ' .. kind .. ', expected a ' .. EXPECTED[index] .. ' (fusebox reset repairs it)')
        end
        error(reply)
      end
      return reply
    end

    -- reset repairs every key of the breaker, also those this call would not otherwise touch.
    if op == 'reset' then
      for index = 2, #EXPECTED do
        local kind = redis.call('TYPE', K[index])['ok']
        if kind ~= 'none' and kind ~= EXPECTED[index] then redis.call('DEL', K[index]) end
      end
    end

    local values = checked(1, 'HMGET', unpack(READ))
    local exists = values[1] ~= false

    if A[6] == '' then
      -- An operator's call. Before any instance has used the breaker (or after Redis lost its keys) only `isolate`
      -- may make it: the first instance to use it then finds it isolated, and stores its policy.
      local stored = exists and redis.call('HGET', K[1], 'policy')
      if not exists and op ~= 'reset' and op ~= 'isolate' then
        refuse('NOPOLICY ' .. K[1] .. ' has no stored policy: no instance has used this breaker yet')
      end
      local ok, p = pcall(cjson.decode, stored or '')
      if not ok or type(p) ~= 'table' or type(p.window) ~= 'table' then
        if stored and op ~= 'reset' then
          refuse('CORRUPT ' .. K[1] .. " field 'policy' is not the JSON Fusebox writes (fusebox reset repairs it)")
        end
        -- reset repairs it: the garbage goes, and the fingerprint with it, so the next instance to write stores its
        -- policy again (its reply says Redis no longer holds it).
        if stored then redis.call('HDEL', K[1], 'policy', 'policy_fp'); values[13] = nil end
        p = { window = { kind = 'time', samplingMs = 10000, buckets = 10 }, minimumThroughput = 10, failureRateThreshold = 0.5,
              permittedCallsInHalfOpen = 1, successThreshold = 1, maxHalfOpenDurationMs = 60000, mode = 'normal' }
      end
      local function text(v) if v == nil or v == cjson.null then return '' end return tostring(v) end
      A[3] = text(p.failureRateThreshold); A[4] = text(p.consecutiveFailureThreshold)
      local rel = p.relativeFailureRate
      if type(rel) == 'table' then
        A[3] = A[3] .. '~' .. text(rel.factor) .. ':' .. text(rel.floor) .. ':' .. text(rel.horizonMs) .. ':' .. text(rel.warmupCalls)
      end
      A[5] = text(p.slowCallRateThreshold); A[6] = text(p.minimumThroughput)
      A[7] = text(p.window.kind)
      if p.window.kind == 'time' then
        A[8] = text(p.window.buckets); A[9] = tostring(math.max(1, math.floor(p.window.samplingMs / p.window.buckets)))
      else
        A[8] = text(p.window.size); A[9] = '1'
      end
      A[10] = text(p.permittedCallsInHalfOpen); A[11] = text(p.successThreshold)
      A[12] = text(p.maxHalfOpenDurationMs); A[13] = text(p.mode); A[14] = text(p.minimumInstances or 1)
      A[15] = values[13] or ''; A[16] = ''
      -- Break durations are computed only in Swift (BreakerPolicy.BreakDuration): reuse those an instance sent.
      local stored_breaks = redis.call('HMGET', K[1], 'break_base', 'break_durations')
      A[17] = stored_breaks[1] or '0'
      A[18] = stored_breaks[2] or '30000'
    end

    -- A[3]: the fixed ratio, then with a relative threshold '~FACTOR:FLOOR:HORIZON_MS:WARMUP_CALLS'.
    local fixed_rate, relative_text = string.match(A[3], '^([^~]*)~(.*)$')
    local relative = nil
    if relative_text then
      local factor, floor, horizon, warmup = string.match(relative_text, '^([^:]+):([^:]+):([^:]+):([^:]+)$')
      relative = { factor = tonumber(factor), floor = tonumber(floor), horizon = tonumber(horizon), warmup = tonumber(warmup) }
      if not (relative.factor and relative.floor and relative.horizon and relative.warmup and relative.horizon > 0) then relative = nil end
    else
      fixed_rate = A[3]
    end
    local failure_rate, consecutive, slow_rate = tonumber(fixed_rate), tonumber(A[4]), tonumber(A[5])
    local minimum, window_kind, window_size, width = tonumber(A[6]), A[7], tonumber(A[8]), tonumber(A[9])
    local permitted, successes_needed, max_half_open = tonumber(A[10]), tonumber(A[11]), tonumber(A[12])
    local mode, instances, base_attempt = A[13], tonumber(A[14]), tonumber(A[17])
    -- The quorum: at most the instances that are up (a fleet that shrank below it can still trip).
    local quorum = instances
    if live_instances > 0 and live_instances < quorum then quorum = live_instances end
    local is_time = window_kind == 'time'
    -- Mode shadow decides as normal does; its instances run the calls it would reject (counted as would_reject).
    local trips = mode == 'normal' or mode == 'shadow'
    local rejected_field = mode == 'shadow' and 'would_reject' or 'rejected'

    local base_state = 'closed'
    if mode == 'metrics_only' then base_state = 'metrics_only' elseif mode == 'disabled' then base_state = 'disabled' end

    -- Load and validate the state. Only fields that change are written back at the end.
    local st, old = {}, {}
    local corrupt = nil
    local function fresh(version, reason)
      return { state = base_state, version = version, since = now, open_until = 0, attempt = 0, reason = reason,
               isolation_reason = '', consecutive_failures = 0, probes = 0, probe_successes = 0, created = now,
               budget = -1, policy_fp = '', schema = SCHEMA, pruned = now, senders = 0, leases = '' }
    end
    if not exists then
      st = fresh(0, 'created')
    else
      local v = values
      st = { state = v[1], version = finite(v[2]), since = finite(v[3]), open_until = finite(v[4]),
        attempt = finite(v[5]), reason = v[6] or '', isolation_reason = v[7] or '',
        consecutive_failures = finite(v[8]), probes = finite(v[9]), probe_successes = finite(v[10]),
        created = finite(v[11]), budget = finite(v[12]) or -1, policy_fp = v[13] or '', schema = v[14] or nil,
        pruned = finite(v[15]) or 0, senders = finite(v[16]) or 0, streak_at = finite(v[17]),
        leases = v[18] or '', baseline = v[19] or nil }
      for i = 1, #NUMERIC do
        local field = NUMERIC[i]
        -- Counters, versions and times are whole numbers ≥ 0: a negative version would put the breaker below what
        -- the instances have cached, and they would ignore it. Above 2^53 a double no longer counts by one (a version
        -- of 1e23 + 1 is 1e23) and Swift cannot read it as an integer: such a value is corrupt too.
        if st[field] ~= nil and (st[field] < 0 or st[field] ~= math.floor(st[field]) or st[field] > 9007199254740991) then st[field] = nil end
        if st[field] == nil then
          if corrupt == nil then corrupt = "field '" .. field .. "' is '" .. tostring(v[NUMERIC_INDEX[field]] or nil) .. "'" end
          st[field] = 0
        end
      end
      if not VALID_STATES[st.state or ''] then corrupt = "field 'state' is '" .. tostring(st.state) .. "'" end
      old = { state = st.state, version = st.version, since = st.since, open_until = st.open_until, attempt = st.attempt,
        reason = st.reason, isolation_reason = st.isolation_reason, consecutive_failures = st.consecutive_failures,
        probes = st.probes, probe_successes = st.probe_successes, created = st.created, budget = st.budget,
        policy_fp = st.policy_fp, schema = st.schema, pruned = st.pruned, senders = st.senders, streak_at = st.streak_at,
        leases = st.leases, baseline = st.baseline }
      if v[16] == false then old.senders = nil end
      if st.schema == nil then
        -- A breaker last written by schema 1: its window is laid out differently; start it empty.
        redis.call('DEL', K[2])
        st.schema = SCHEMA
      elseif st.schema ~= SCHEMA then
        if string.match(st.schema, '^[1-9]%d?%d?$') then
          -- Another version of Fusebox wrote it: never overwritten, not even by reset.
          refuse('SCHEMA ' .. K[1] .. ' was written by Fusebox key schema ' .. st.schema .. '; this instance runs schema ' .. SCHEMA)
        end
        if corrupt == nil then corrupt = "field 'schema' is '" .. string.sub(st.schema, 1, 40) .. "'" end
      end
    end
    if corrupt ~= nil then
      if op ~= 'reset' then refuse('CORRUPT ' .. K[1] .. ' ' .. corrupt .. ' (fusebox reset repairs it)') end
      -- A repairing reset starts versions at the current time, so every instance takes it as newer than its cache.
      redis.call('DEL', K[1], K[2])
      st = fresh(now, 'repaired')
      old = {}
    end

    -- Calls the sender's adaptive throttling shed (nil: its policy has none), and how many enter the count.
    local throttled, throttle_add = nil, 0

    -- The record's outcomes, parsed first: their buckets decide which window fields to read.
    local groups, s, S, f, F = {}, 0, 0, 0, 0
    local error_end = 28
    if op == 'record' then
      error_end = 29 + 2 * tonumber(A[29])
      for i = error_end + 1, #A, 5 do
        local g = { tonumber(A[i]), tonumber(A[i + 1]), tonumber(A[i + 2]), tonumber(A[i + 3]), tonumber(A[i + 4]) }
        s = s + g[2]; S = S + g[3]; f = f + g[4]; F = F + g[5]
        groups[#groups + 1] = g
      end
    end

    -- The sliding window. Time: running sums `calls` `failures` `slow` over the buckets in the window and `newest`,
    -- the newest bucket; bucket b lives in field `<b mod buckets>` = "b calls failures slow" (and `<b mod buckets>:q`
    -- = "b instance ...", the failing instances, with a quorum). A slot whose bucket left the window is stale: it no
    -- longer counts and is overwritten when its slot comes round again. Count: the last N calls as a string of flags.
    local window = { calls = 0, failures = 0, slow = 0 }
    local win = {}            -- what was read, to write back
    local slots = {}          -- time: slot -> { bucket, calls, failures, slow } as read (stale ones included)
    local failing_instances = {}
    local bucket = 0
    if is_time then bucket = math.floor(now / width) end
    local window_loaded = false

    local function parse_slot(text)
      if not text then return nil end
      local b, c, fl, sl = string.match(text, '^(%-?%d+) (%d+) (%d+) (%d+)$')
      if b == nil then refuse('CORRUPT ' .. K[2] .. " slot holds '" .. text .. "' (fusebox reset repairs it)") end
      return { tonumber(b), tonumber(c), tonumber(fl), tonumber(sl) }
    end

    local function number_field(text, name)
      if not text then return 0 end
      local n = finite(text)
      if n == nil then refuse('CORRUPT ' .. K[2] .. " field '" .. name .. "' is '" .. text .. "' (fusebox reset repairs it)") end
      return n
    end

    -- What slot `slot` holds that still counts in the window ending at `bucket`: calls, failures, slow.
    local function counted(slot)
      local v = slots[slot]
      if v == nil or v[1] <= bucket - window_size or v[1] > bucket then return 0, 0, 0 end
      return v[2], v[3], v[4]
    end

    -- A count window's sums, counted from its ring (flags: 0 success, 1 failure, 2 slow success, 3 slow failure).
    local function count_ring()
      local ring = win.ring
      if #ring > window_size then ring = string.sub(ring, 1, window_size) end
      local _, failed = string.gsub(ring, '[13]', '')
      local _, slowed = string.gsub(ring, '[23]', '')
      window.calls, window.failures, window.slow = #ring, failed, slowed
    end

    -- Reads the window as of now, with the slots named in `wanted` (bucket numbers). With `writing`, the sums are
    -- corrected for buckets that left the window, to be written back.
    local function load_window(writing, wanted)
      if window_loaded then return end
      window_loaded = true
      win.writing = writing
      if is_time then
        local current = bucket % window_size
        local names, asked = { 'newest', 'calls', 'failures', 'slow', current }, { [current] = true }
        for i = 1, #wanted do
          local slot = wanted[i] % window_size
          if not asked[slot] then asked[slot] = true; names[#names + 1] = slot end
        end
        local v = checked(2, 'HMGET', unpack(names))
        for i = 5, #names do
          if v[i] then slots[names[i]] = parse_slot(v[i]) end
        end
        local newest = tonumber(v[1] or '')
        window.calls = number_field(v[2], 'calls'); window.failures = number_field(v[3], 'failures'); window.slow = number_field(v[4], 'slow')
        if newest ~= nil and newest > bucket then
          -- Redis' clock went back (a failover): count in the newest bucket.
          bucket = newest
          local slot = bucket % window_size
          if not asked[slot] then slots[slot] = parse_slot(redis.call('HGET', K[2], tostring(slot)) or nil) end
        end
        if newest ~= nil and bucket > newest then
          if bucket - newest >= window_size then
            window = { calls = 0, failures = 0, slow = 0 }
          else
            -- Buckets newest+1 .. bucket take the slots of those leaving the window: subtract what still counted.
            local missing = {}
            for b = newest + 1, bucket do
              if not asked[b % window_size] then missing[#missing + 1] = tostring(b % window_size) end
            end
            if #missing > 0 then
              local more = redis.call('HMGET', K[2], unpack(missing))
              for i = 1, #missing do slots[tonumber(missing[i])] = parse_slot(more[i] or nil) end
            end
            for b = newest + 1, bucket do
              local held = slots[b % window_size]
              if held ~= nil and held[1] > newest - window_size and held[1] <= newest then
                window.calls = window.calls - held[2]; window.failures = window.failures - held[3]; window.slow = window.slow - held[4]
              end
            end
          end
          win.dirty = true
        elseif newest == nil then
          win.dirty = true
        end
        win.newest = bucket
        if instances > 1 then
          local q = {}
          for b = bucket - window_size + 1, bucket do q[#q + 1] = (b % window_size) .. ':q' end
          local ids = redis.call('HMGET', K[2], unpack(q))
          for i = 1, #ids do
            if ids[i] then
              local b, rest = string.match(ids[i], '^(%-?%d+)(.*)$')
              b = tonumber(b or '')
              if b ~= nil and b > bucket - window_size and b <= bucket then
                for id in string.gmatch(rest, '%S+') do failing_instances[id] = true end
              end
              if i == #ids then win.quorum = (b == bucket) and ids[i] or nil end
            end
          end
        end
      else
        local v = checked(2, 'HMGET', 'ring', 'next')
        win.ring = v[1] or ''
        if string.find(win.ring, '[^0-3]') then
          refuse('CORRUPT ' .. K[2] .. " field 'ring' holds '" .. string.sub(win.ring, 1, 40) .. "' (fusebox reset repairs it)")
        end
        win.next = number_field(v[2], 'next')
        count_ring()
      end
    end

    local function count_instances()
      local n = 0
      for _ in pairs(failing_instances) do n = n + 1 end
      return n
    end

    -- The relative threshold's baseline: 'CALLS FAILURES AT_MS', both counts decayed with the horizon as their
    -- time constant. Statistics: a value that does not read as that is an empty baseline (and is written anew).
    local function read_baseline()
      local c, f, at = string.match(st.baseline or '', '^(%S+) (%S+) (%d+)$')
      c, f, at = tonumber(c), tonumber(f), tonumber(at)
      if c == nil or f == nil or at == nil or c ~= c or f ~= f or c < 0 or f < 0 or f > c or c > 1e15 then return nil end
      return { calls = c, failures = f, at = at }
    end
    local baseline = relative and read_baseline() or nil
    if relative and baseline and baseline.calls >= relative.warmup and baseline.calls > 0 then
      failure_rate = math.min(1, math.max(relative.floor, relative.factor * baseline.failures / baseline.calls))
    end
    local function learn_baseline(calls, failures)
      if not relative or calls + failures == 0 then return end
      local b = baseline or { calls = 0, failures = 0, at = now }
      local keep = math.exp(-math.max(0, now - b.at) / relative.horizon)
      baseline = { calls = b.calls * keep + calls, failures = b.failures * keep + failures, at = math.max(b.at, now) }
      st.baseline = string.format('%.17g %.17g %d', baseline.calls, baseline.failures, baseline.at)
    end

    local function ratio_reason()
      if window.calls < minimum then return nil end
      if failure_rate then
        local ratio = window.failures / window.calls
        if ratio >= failure_rate then
          return 'failure ratio ' .. format2(ratio) .. ' ≥ ' .. format2(failure_rate) .. ' over ' .. window.calls .. ' calls'
        end
      end
      if slow_rate then
        local ratio = window.slow / window.calls
        if ratio >= slow_rate then
          return 'slow-call ratio ' .. format2(ratio) .. ' ≥ ' .. format2(slow_rate) .. ' over ' .. window.calls .. ' calls'
        end
      end
      return nil
    end

    local function break_for(attempt)
      local durations = {}
      for value in string.gmatch(A[18], '[^,]+') do durations[#durations + 1] = tonumber(value) end
      local index = attempt - base_attempt
      if index < 1 then index = 1 end
      if index > #durations then index = #durations end
      return durations[index]
    end

    local transitioned = false
    local event = nil
    local function transition(to, reason)
      local from = st.state
      st.version = st.version + 1
      st.state = to
      st.since = now
      st.reason = reason
      st.probes = 0
      st.leases = ''
      st.probe_successes = 0
      st.consecutive_failures = 0
      st.budget = -1
      window = { calls = 0, failures = 0, slow = 0 }
      win = { cleared = true }
      window_loaded = true
      failing_instances = {}
      if to == 'isolated' or to == 'half_open' then
        st.open_until = 0
      elseif to ~= 'open' then
        st.attempt = 0
        st.open_until = 0
      end
      if to ~= 'isolated' then st.isolation_reason = '' end
      event = { from = from, to = to, reason = reason }
      transitioned = true
    end

    local function trip(reason)
      st.attempt = st.attempt + 1
      st.open_until = now + break_for(st.attempt)
      transition('open', reason)
    end

    -- Time alone: open -> half_open when the break is over, half_open -> open after max_half_open, isolated for a
    -- time -> the base state when that time is over.
    local function advance()
      if st.state == 'open' and now >= st.open_until then
        transition('half_open', 'break of ' .. format_duration(st.open_until - st.since) .. ' ended')
      elseif st.state == 'half_open' and now - st.since >= max_half_open then
        trip('half-open for ' .. format_duration(max_half_open) .. ' without closing')
      elseif st.state == 'isolated' and st.open_until > 0 and now >= st.open_until then
        transition(base_state, 'isolation for ' .. format_duration(st.open_until - st.since) .. ' ended')
      end
    end

    -- A policy mode change moves a breaker between the base states.
    if (st.state == 'closed' or st.state == 'metrics_only' or st.state == 'disabled') and st.state ~= base_state then
      transition(base_state, 'mode is ' .. mode)
    end

    -- Whether this call hands out a failure budget (Docs/architecture.md, "Failure budget"), and the buckets that
    -- may leave the window before the sender writes again (their calls and failures leave with them).
    local wants_budget = false
    local leaving = 0
    local wanted = {}
    if op == 'record' then
      for i = 1, #groups do wanted[#wanted + 1] = groups[i][1] end
      if is_time and (failure_rate or slow_rate) then
        leaving = math.min(window_size, math.floor((now + hold) / width) - bucket)
        for k = 1, leaving do wanted[#wanted + 1] = bucket + k end
      end
    end

    -- What the totals hash gains, as field, count pairs (written first, in this order).
    local totals_add = {}
    local function add_total(field, n) if n ~= 0 then totals_add[#totals_add + 1] = field; totals_add[#totals_add + 1] = n end end

    -- A quiet breaker (closed, no failure in the window, and no slow call or streak where a rule counts them) lets
    -- instances hold successes longer; the record that ends the quiet recalls what every instance holds.
    local quiet_before, quiet_after = false, false
    local function quiet()
      return window.failures == 0 and (not slow_rate or window.slow == 0) and (not consecutive or st.consecutive_failures == 0)
    end

    -- The probe permits held: { sender, expires (ms) } for each whose lease has not run out.
    local function live_leases()
      local held = {}
      for key, expires in string.gmatch(st.leases or '', ' ([^ ]-):(%d+)') do
        if tonumber(expires) > now then held[#held + 1] = { key, tonumber(expires) } end
      end
      return held
    end
    local function set_leases(held)
      local parts = {}
      for i = 1, #held do parts[i] = ' ' .. held[i][1] .. ':' .. held[i][2] end
      st.leases = table.concat(parts)
      st.probes = #held
    end

    local granted = 0
    local duplicate = false
    local sender_seq = nil
    local sender_known = true
    -- acquire: may a call run? In half-open it takes a probe permit (a lease) if one is free; renew: extends the
    -- leases this sender holds.
    local function acquire_or_renew()
      advance()
      local lease = tonumber(A[19] or '') or 5000
      if st.state == 'half_open' then
        -- Permits whose lease ran out are free again (their holder died, or lost Redis for longer than the lease).
        local held = live_leases()
        if op == 'renew' then
          for i = 1, #held do if held[i][1] == SENDER_KEY then held[i][2] = now + lease end end
        elseif #held < permitted then
          held[#held + 1] = { SENDER_KEY, now + lease }
          granted = 2
        end
        set_leases(held)
      end
      if op == 'renew' then
        -- nothing is admitted
      elseif st.state == 'closed' or st.state == 'metrics_only' or st.state == 'disabled' then
        granted = 1
      elseif granted == 0 then
        add_total(rejected_field, 1)
      end
    end

    -- record, half-open probes' outcomes under the state that admitted them: they free this sender's permits; then
    -- a failure reopens the breaker, and enough successes close it.
    local function apply_probe_outcomes(successes, failures, ignored, first_error)
      -- The outcomes free this sender's permits (not another's: a permit whose lease ran out may be held
      -- by someone else now).
      local held, freeing, kept = live_leases(), ignored + successes + failures, {}
      for i = 1, #held do
        if freeing > 0 and (held[i][1] == SENDER_KEY or not sender) then freeing = freeing - 1 else kept[#kept + 1] = held[i] end
      end
      set_leases(kept)
      if failures > 0 then
        trip('probe failed (' .. (first_error or 'Error') .. ')')
      elseif successes > 0 then
        st.probe_successes = st.probe_successes + successes
        if st.probe_successes >= successes_needed then
          local n = st.probe_successes
          local plural = 'es'
          if n == 1 then plural = '' end
          transition(base_state, n .. ' probe success' .. plural .. ' ≥ ' .. successes_needed)
        end
      end
    end

    -- record, closed (or metrics-only), same state: the outcomes enter the window (a time window by the bucket they
    -- happened in, a count window as its last `size`), the streak follows the batch's failure runs, then the trip rules.
    local function add_to_window(successes, failures, leading, longest, trailing)
      load_window(true, wanted)
      quiet_before = quiet()
      local added_c, added_f, added_s = 0, 0, 0
      if not is_time then
        -- Within one batch, successes enter the ring before failures (the order inside a batch is not shipped).
        -- A batch may carry more calls than the ring holds (successes held while the breaker was quiet): only its
        -- last `size` enter, and the sums are counted from the ring itself, never added, so they cannot drift.
        local size = window_size
        local keep_F = math.min(F, size)
        local keep_f = math.min(f, size - keep_F)
        local keep_S = math.min(S, size - keep_F - keep_f)
        local keep_s = math.min(s, size - keep_F - keep_f - keep_S)
        local entries = string.rep('0', keep_s) .. string.rep('2', keep_S) .. string.rep('1', keep_f) .. string.rep('3', keep_F)
        local ring, nxt = win.ring, win.next
        if #ring > size then ring = string.sub(ring, 1, size) end
        if nxt >= size then nxt = 0 end
        if #entries >= size then
          ring = string.sub(entries, #entries - size + 1)
          nxt = 0
        else
          if #ring < size then
            local take = math.min(size - #ring, #entries)
            ring = ring .. string.sub(entries, 1, take)
            entries = string.sub(entries, take + 1)
            nxt = #ring % size
          end
          while #entries > 0 do
            local n = math.min(#entries, size - nxt)
            ring = string.sub(ring, 1, nxt) .. string.sub(entries, 1, n) .. string.sub(ring, nxt + n + 1)
            entries = string.sub(entries, n + 1)
            nxt = (nxt + n) % size
          end
        end
        win.ring, win.next = ring, nxt
        count_ring()
      else
        -- Calls count in the bucket they happened in; those older than the window count in the totals only.
        win.adds = {}             -- slot -> its new content
        for i = 1, #groups do
          local g = groups[i]
          local b = g[1]
          if b <= 0 or b > bucket then b = bucket end
          if b > bucket - window_size then
            local slot = b % window_size
            local held = slots[slot]
            if held == nil or held[1] ~= b then held = { b, 0, 0, 0 }; slots[slot] = held end
            win.adds[slot] = held
            local c, fl, sl = g[2] + g[3] + g[4] + g[5], g[4] + g[5], g[3] + g[5]
            held[2] = held[2] + c; held[3] = held[3] + fl; held[4] = held[4] + sl
            added_c = added_c + c; added_f = added_f + fl; added_s = added_s + sl
          end
        end
      end
      window.calls = window.calls + added_c
      window.failures = window.failures + added_f
      window.slow = window.slow + added_s
      win.dirty = true
      if added_f > 0 then failing_instances[instance] = true end
      win.failed = added_f > 0
      -- The baseline learns the batch; the rules below judge it against what it knew before.
      learn_baseline(successes + failures, failures)
      -- The streak: successes in the batch end it; the batch's own runs say how far it went. Successes that all
      -- happened in buckets before the streak's first failure (held by a quiet instance) leave it as it is.
      local streak_before = st.consecutive_failures
      local newest_success, oldest_failure = nil, nil
      if is_time then
        for i = 1, #groups do
          local g = groups[i]
          local b = g[1]
          if b <= 0 or b > bucket then b = bucket end
          if g[2] + g[3] > 0 and (newest_success == nil or b > newest_success) then newest_success = b end
          if g[4] + g[5] > 0 and (oldest_failure == nil or b < oldest_failure) then oldest_failure = b end
        end
      end
      local peak
      if failures == 0 and streak_before > 0 and newest_success ~= nil and newest_success < (st.streak_at or 0) then
        peak = streak_before
      elseif successes > 0 then
        peak = math.max(st.consecutive_failures + leading, longest)
        st.consecutive_failures = trailing
        if trailing > 0 and newest_success ~= nil then st.streak_at = newest_success end
      else
        st.consecutive_failures = st.consecutive_failures + failures
        peak = st.consecutive_failures
        if streak_before == 0 and oldest_failure ~= nil then st.streak_at = oldest_failure end
      end
      quiet_after = quiet()
      if st.state == 'closed' and trips and not (instances > 1 and count_instances() < quorum) then
        local reason = nil
        if consecutive and peak >= consecutive then
          reason = peak .. ' consecutive failures ≥ ' .. consecutive
        else
          reason = ratio_reason()
        end
        if reason then trip(reason) end
      end
    end

    -- record: a sender's batch of outcome counts, applied once (its sequence number against the sender's high-water
    -- mark); its totals always count, its window and probe effects only under the state that admitted the calls.
    local function record()
      local same_state = tonumber(A[20]) == st.version and tonumber(A[21]) == st.created
      -- 'R/W' (any form of R): W calls ran in shadow mode although the breaker rejected them.
      local counted, would_reject = string.match(A[25], '^([^/]*)/(%d+)$')
      if counted then A[25] = counted; add_total('would_reject', tonumber(would_reject)) end
      local ignored, rejected = tonumber(A[24]), tonumber(A[25])
      if rejected == nil then
        -- 'R:T': T of the R rejections were shed by adaptive throttling (the sender's policy has it on).
        local r, t = string.match(A[25], '^(%d+):(%d+)$')
        rejected, throttled = tonumber(r) or 0, tonumber(t) or 0
      end
      local leading, longest, trailing = tonumber(A[26]), tonumber(A[27]), tonumber(A[28])
      local first_error = nil
      if error_end >= 30 then first_error = A[30] end
      if sender then
        sender_seq = tonumber(A[19])
        local high = nil
        if exists and not corrupt then high = mark_of(values[#READ] or nil) end
        sender_known = high ~= nil
        duplicate = sender_seq <= (high or 0)
      end
      if not duplicate then
        local successes, failures = s + S, f + F
        add_total('calls', successes + failures + ignored)
        add_total('successes', successes)
        add_total('failures', failures)
        add_total('slow', S + F)
        add_total('ignored', ignored)
        add_total('rejected', rejected)
        for i = 30, error_end, 2 do add_total('error:' .. A[i], tonumber(A[i + 1])) end
        if throttled and throttled > 0 and st.state == 'closed' then throttle_add = throttled end

        if A[23] == '1' then
          if same_state and st.state == 'half_open' then apply_probe_outcomes(successes, failures, ignored, first_error) end
        elseif same_state and A[22] == '1' and (st.state == 'closed' or st.state == 'metrics_only') and successes + failures > 0 then
          add_to_window(successes, failures, leading, longest, trailing)
        end
      end
    end

    -- isolate: forced open until reset, or until A[20] ms from now.
    local function isolate()
      st.isolation_reason = A[19]
      transition('isolated', 'isolated: ' .. A[19])
      local lasting = tonumber(A[20] or '')
      if lasting and lasting > 0 then st.open_until = now + math.floor(lasting) end
    end

    -- reset: the base state with an empty window, after repairing whatever Fusebox did not write.
    local function reset()
      -- Totals that are whole numbers stay; any other value goes (the key itself, when of another type, went above).
      local all = redis.call('HGETALL', K[3])
      for i = 1, #all, 2 do
        if not string.match(all[i + 1], WHOLE) then
          redis.call('HDEL', K[3], all[i])
          local what = "totals field '" .. all[i] .. "' was '" .. string.sub(all[i + 1], 1, 40) .. "'"
          corrupt = corrupt and (corrupt .. '; ' .. what) or what
        end
      end
      -- Fields of the state hash that Fusebox does not write go too (the policy and its break durations stay).
      local known = { policy = true, break_durations = true, break_base = true }
      for i = 1, #FIELDS do known[FIELDS[i]] = true end
      -- (HGETALL, not HKEYS: the documented ACL grants the one, not the other.)
      local present = redis.call('HGETALL', K[1])
      for i = 1, #present, 2 do
        local field = present[i]
        if not known[field] and string.sub(field, 1, 6) ~= 'marks:' then
          redis.call('HDEL', K[1], field)
          local what = "unknown state field '" .. string.sub(field, 1, 40) .. "'"
          corrupt = corrupt and (corrupt .. '; ' .. what) or what
        end
      end
      transition(base_state, corrupt and 'reset (repaired ' .. corrupt .. ')' or 'reset')
      st.isolation_reason = ''
      -- A[19] 'baseline': the relative threshold's baseline is forgotten too (it learns again from the next call).
      if A[19] == 'baseline' then
        redis.call('HDEL', K[1], 'baseline')
        st.baseline = nil; old.baseline = nil; baseline = nil
      end
    end

    -- half_open: forced half-open, every probe permit free.
    local function force_half_open()
      transition('half_open', 'forced half-open')
    end

    -- read: the state as of now (a transition time made due is applied), with the window for a closed breaker.
    local function read()
      advance()
      if st.state == 'closed' or st.state == 'metrics_only' then load_window(false, wanted) end
    end

    -- The operation, by name; the failure budget, the writes and the reply below are common to all.
    local OPERATIONS = { acquire = acquire_or_renew, renew = acquire_or_renew, record = record, isolate = isolate,
      reset = reset, half_open = force_half_open, read = read }
    local operation = OPERATIONS[op]
    if operation then operation() end


    -- The failure budget: how many failures (or slow calls) each live sender may hold before it must write them,
    -- so that all of them together cannot cross a threshold unseen (Docs/architecture.md, "Failure budget").
    local budget = -1
    if st.state == 'closed' and trips then
      if op ~= 'record' or sender == nil or duplicate then
        -- Only a sender that has written is counted among those who share the headroom.
        budget = 0
      else
        load_window(false, wanted)
        local headroom = math.huge
        if instances > 1 and count_instances() < quorum then headroom = 0 end
        if consecutive then headroom = math.min(headroom, consecutive - st.consecutive_failures) end
        if failure_rate or slow_rate then
          -- Buckets that may leave the window before the sender writes again take their calls and failures with
          -- them, which can raise a ratio: the headroom is the least over every such moment (k oldest buckets gone).
          local size = is_time and math.huge or window_size
          local gc, gf, gs = 0, 0, 0
          for k = 0, leaving do
            if k == window_size then
              gc, gf, gs = window.calls, window.failures, window.slow
            elseif k > 0 then
              local c, fl, sl = counted((bucket + k) % window_size)
              gc = gc + c; gf = gf + fl; gs = gs + sl
            end
            if failure_rate then headroom = math.min(headroom, needed(window.calls - gc, window.failures - gf, failure_rate, minimum, size)) end
            if slow_rate then headroom = math.min(headroom, needed(window.calls - gc, window.slow - gs, slow_rate, minimum, size)) end
          end
        end
        if not sender_known then st.senders = st.senders + 1 end
        -- Those who may hold failures: senders with a mark that are up (either count alone is an upper bound).
        local senders = math.max(1, st.senders)
        if live_senders > 0 and live_senders < senders then senders = live_senders end
        if headroom == math.huge then
          budget = 1048576
        else
          budget = math.floor((headroom - 1) / senders)
          if budget < 0 then budget = 0 end
        end
        -- Powers of two, so the stored grant changes rarely.
        if budget > 1048576 then budget = 1048576 end
        if budget > 0 then budget = 2 ^ math.floor(math.log(budget) / math.log(2) + 1e-9) end
        if budget < st.budget or (quiet_before and not quiet_after) then
          -- Instances may hold more than is safe now: failures beyond the new budget, and, once the window is not
          -- quiet ("quiet": false), the successes they held while it was, which the window needs now. While it is
          -- still quiet, a smaller budget asks for failures only: held successes cannot cross a threshold.
          redis.call('PUBLISH', channel, '{"name":' .. cjson.encode(A[2]) .. ',"version":' .. st.version .. ',"created":'
            .. st.created .. ',"recall":' .. budget .. ',"at":' .. now .. ',"quiet":' .. tostring(quiet()) .. '}')
        end
        st.budget = budget
      end
    elseif sender and not duplicate and op == 'record' and not sender_known then
      st.senders = st.senders + 1
    end

    -- Writes. The statistics (totals, events) heal themselves: what they hold never stops a decision.
    for i = 1, #totals_add, 2 do count_total(K[3], totals_add[i], totals_add[i + 1]) end

    if event then
      local fields = { 'from', event.from, 'to', event.to, 'reason', event.reason, 'version', st.version, 'instance', instance, 'at', now }
      local added = redis.pcall('XADD', K[4], 'MAXLEN', '~', 100, '*', unpack(fields))
      if type(added) == 'table' and added.err and not (string.find(added.err, 'WRONGTYPE', 1, true) or string.find(added.err, 'ID', 1, true)) then
        error(added)
      elseif type(added) == 'table' and added.err then
        repaired = repaired or (K[4] .. ' could not take an event (' .. added.err .. '): made anew')
        redis.call('DEL', K[4])
        redis.call('XADD', K[4], 'MAXLEN', '~', 100, '*', unpack(fields))
      end
      local probe_in = 0
      if st.state == 'open' or st.state == 'isolated' then probe_in = math.max(0, st.open_until - now) end
      redis.call('PUBLISH', channel, cjson.encode({ name = A[2], version = st.version, from = event.from, state = st.state,
        probe_in_ms = probe_in, reason = st.reason, isolation_reason = st.isolation_reason, attempt = st.attempt,
        created = st.created }))
    end

    if win.cleared then
      redis.call('DEL', K[2])
    elseif win.dirty and win.writing then
      if is_time then
        local set = { 'newest', win.newest, 'calls', window.calls, 'failures', window.failures, 'slow', window.slow }
        if win.adds then
          for slot, held in pairs(win.adds) do
            set[#set + 1] = tostring(slot)
            set[#set + 1] = held[1] .. ' ' .. held[2] .. ' ' .. held[3] .. ' ' .. held[4]
          end
          if win.failed and instances > 1 then
            local q = win.quorum
            if q == nil then
              set[#set + 1] = (bucket % window_size) .. ':q'; set[#set + 1] = bucket .. ' ' .. instance
            elseif not string.find(q .. ' ', ' ' .. instance .. ' ', 1, true) then
              set[#set + 1] = (bucket % window_size) .. ':q'; set[#set + 1] = q .. ' ' .. instance
            end
          end
        end
        redis.call('HSET', K[2], unpack(set))
      else
        redis.call('HSET', K[2], 'ring', win.ring, 'next', win.next, 'calls', window.calls, 'failures', window.failures, 'slow', window.slow)
      end
    end

    -- The policy (for operators) is written only when its fingerprint changes; break durations with transitions.
    local set = {}
    -- Senders: the high-water mark of the batch just applied; senders silent for 10 minutes are forgotten.
    if sender and sender_seq and not duplicate then
      set[1] = MARKS_FIELD; set[2] = with_mark(exists and not corrupt and values[#READ] or nil, sender_seq)
      if now - st.pruned >= 60000 then
        -- Once a minute: marks of senders silent for 10 minutes go (and the one-field-per-sender marks of
        -- Fusebox 0.x, `seq:SENDER`), and the senders left are counted.
        local all = redis.call('HGETALL', K[1])
        local dead, live = {}, 0
        for i = 1, #all, 2 do
          local field = all[i]
          if string.sub(field, 1, 6) == 'marks:' then
            local marks = field == MARKS_FIELD and set[2] or all[i + 1]
            local kept, seen = {}, 0
            for record, last in string.gmatch(marks, '( [^ ]-:%d+:(%d+))') do
              seen = seen + 1
              if now - tonumber(last) * 1000 <= 600000 then kept[#kept + 1] = record; live = live + 1 end
            end
            if #kept == 0 then
              dead[#dead + 1] = field
            elseif field == MARKS_FIELD then
              set[2] = table.concat(kept)
            elseif #kept < seen then
              redis.call('HSET', K[1], field, table.concat(kept))
            end
          elseif string.sub(field, 1, 4) == 'seq:' then
            dead[#dead + 1] = field
          end
        end
        if #dead > 0 then redis.call('HDEL', K[1], unpack(dead)) end
        st.senders = live
        st.pruned = now
      end
    end
    for i = 1, #FIELDS do
      local field = FIELDS[i]
      local value = st[field]
      if field ~= 'policy_fp' and value ~= nil and value ~= old[field] then
        set[#set + 1] = field; set[#set + 1] = value
      end
    end
    if A[16] ~= '' and A[15] ~= st.policy_fp then
      set[#set + 1] = 'policy_fp'; set[#set + 1] = A[15]
      set[#set + 1] = 'policy'; set[#set + 1] = A[16]
      st.policy_fp = A[15]
    end
    if (transitioned or not exists) and A[16] ~= nil then
      local stored_breaks = exists and redis.call('HMGET', K[1], 'break_base', 'break_durations') or {}
      if stored_breaks[1] ~= A[17] then set[#set + 1] = 'break_base'; set[#set + 1] = A[17] end
      if stored_breaks[2] ~= A[18] then set[#set + 1] = 'break_durations'; set[#set + 1] = A[18] end
    end
    -- A read writes only to create the breaker or to apply a transition that time made due.
    if #set > 0 and (op ~= 'read' or transitioned or not exists) then redis.call('HSET', K[1], unpack(set)) end

    -- A read returns the totals that are whole numbers and names what is not (it repairs nothing: reset does).
    local totals = {}
    if op == 'read' then
      local all = redis.pcall('HGETALL', K[3])
      if type(all) == 'table' and all.err then
        repaired = repaired or (K[3] .. ' is a ' .. redis.call('TYPE', K[3])['ok'] .. ', not a hash (the next write makes it anew)')
      else
        for i = 1, #all, 2 do
          if string.match(all[i + 1], WHOLE) then
            totals[#totals + 1] = all[i]; totals[#totals + 1] = all[i + 1]
          else
            repaired = repaired or (K[3] .. " field '" .. all[i] .. "' is '" .. string.sub(all[i + 1], 1, 40)
              .. "', not a whole number (the next write counts it anew)")
          end
        end
      end
    end
    -- Adaptive throttling (a time window; a sender with it on, or a read): the calls shed, as a count in the window
    -- hash that decays with the sampling duration as its time constant, `throttled` as of `throttled_at` (ms).
    -- Statistics: a value that is not a number counts as 0 and is written anew. A transition empties it with the window.
    local throttle_value = ''
    if is_time and (throttled ~= nil or op == 'read') then
      local value = 0
      if not transitioned then
        local held = redis.pcall('HMGET', K[2], 'throttled', 'throttled_at')
        if type(held) == 'table' and not held.err then
          value = tonumber(held[1] or '') or 0
          local at = tonumber(held[2] or '') or now
          if value ~= value or value < 0 or value > 1e15 or at ~= at then value, at = 0, now end
          value = value * math.exp(-math.max(0, now - at) / (width * window_size))
        end
        if throttle_add > 0 then
          value = value + throttle_add
          redis.call('HSET', K[2], 'throttled', string.format('%.4f', value), 'throttled_at', now)
        end
      end
      throttle_value = string.format('%.4f', value)
    end

    -- A read counts the transitions of the last ten minutes (up to 30), newest first, for the health score.
    local recent = 0
    if op == 'read' then
      local entries = redis.pcall('XREVRANGE', K[4], '+', '-', 'COUNT', 30)
      if type(entries) == 'table' and not entries.err then
        for _, entry in ipairs(entries) do
          local at = nil
          for j = 1, #entry[2], 2 do if entry[2][j] == 'at' then at = tonumber(entry[2][j + 1]) end end
          if at == nil or at < now - 600000 then break end
          recent = recent + 1
        end
      end
    end
    return { st.state, st.version, st.since, st.open_until, now, st.attempt, st.reason, st.isolation_reason,
             st.consecutive_failures, st.probes, st.probe_successes, granted, window.calls, window.failures, window.slow,
             transitioned and 1 or 0, st.created, totals, budget, st.policy_fp == A[15] and 1 or 0, duplicate and 1 or 0,
             repaired or '', recent, throttle_value, (op == 'read' and st.baseline) or '' }
  end
  return run
end

-- Each breaker runs on its own: a refusal (or any error) answers for that breaker alone.
local run = nil
local replies = {}
local position = 8
for i = 1, #KEYS / 4 do
  local count = tonumber(ARGV[position])
  local A = { unpack(ARGV, position + 1, position + count) }
  position = position + count + 1
  local K = { KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i] }
  repaired = nil
  local ok, result = pcall(lean_record, A, K)
  if not ok or result == nil then
    run = run or make_rules()
    ok, result = pcall(run, A, K)
  end
  if ok then
    replies[i] = result
  elseif type(result) == 'table' and result.refusal then
    replies[i] = redis.error_reply(result.refusal)
  elseif type(result) == 'table' and result.err then
    replies[i] = result
  else
    replies[i] = redis.error_reply(tostring(result))
  end
end
return replies
