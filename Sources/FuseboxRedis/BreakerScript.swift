// Generated from lua/breaker.lua by `make lua`: edit the Lua file, then run `make lua`.
// A test (FuseboxRedisTests) fails when the two differ.
import Hiredis

enum BreakerScript {
    /// lua/breaker.lua: every change to a breaker's state in Redis.
    static let script = RedisScript(source)

    static let source = #"""
    -- Fusebox key schema 2: every change to a breaker's shared state goes through this script.
    --
    -- It mirrors Sources/Fusebox/BreakerStateMachine.swift rule for rule; the conformance suite runs the same
    -- scenarios against both. The only clock is Redis TIME; ARGV[5], empty in production, lets tests pin it.
    -- Instances ship outcomes as counts (Docs/architecture.md): the rules are evaluated when a batch arrives.
    --
    -- KEYS[1] NS:{NAME}:state   hash    KEYS[2] NS:{NAME}:window  hash
    -- KEYS[3] NS:{NAME}:totals  hash    KEYS[4] NS:{NAME}:events  stream
    -- KEYS[5] NS:{NAME}:senders hash: per sender (one adapter object) "SEQ:LAST_MS", the highest batch sequence
    --         applied (a batch sent again after a timeout is applied once) and when it was last heard from
    --
    -- ARGV[1]  op: acquire | record | isolate | reset | half_open | read
    -- ARGV[2]  channel for transition and recall messages  ARGV[3]  breaker name
    -- ARGV[4]  instance id (events, quorum)                ARGV[5]  '' (use TIME), or a fixed time in ms for tests
    -- ARGV[6]  failure ratio threshold, '' = off           ARGV[7]  consecutive-failure threshold, '' = off
    -- ARGV[8]  slow-call ratio threshold, '' = off         ARGV[9]  minimum throughput
    -- ARGV[10] window kind: time | count                   ARGV[11] buckets (time) or size (count)
    -- ARGV[12] bucket width in ms (time)                   ARGV[13] permitted calls in half-open
    -- ARGV[14] success threshold                           ARGV[15] max half-open duration in ms
    -- ARGV[16] mode: normal | metrics_only | disabled      ARGV[17] minimum distinct failing instances
    -- ARGV[18] policy fingerprint                          ARGV[19] the policy as JSON, or '' when the instance
    --          knows Redis holds this fingerprint already (the JSON is written only when the fingerprint changes)
    -- ARGV[20] base attempt b                              ARGV[21] break durations in ms for attempts b+1.. (comma-separated)
    -- ARGV[22] how long (ms) the sender may hold outcomes before it writes them (its flush interval)
    --   When ARGV[9] is '' (the fusebox command, which does not know the policy), ARGV[6..21] come from the stored
    --   JSON and the stored break_base and break_durations: those of the last instance call that changed them.
    -- op record: ARGV[23] sender ('' = no dedupe)           ARGV[24] batch sequence number of that sender
    --            ARGV[25] version and ARGV[26] incarnation ('created') the outcomes were admitted under
    --            ARGV[27] 1 if they are recent enough to enter the window   ARGV[28] 1 for half-open probe outcomes
    --            ARGV[29] ignored    ARGV[30] calls rejected by the instance's cache
    --            ARGV[31] failures before the first success  ARGV[32] longest failure run  ARGV[33] trailing failures
    --            ARGV[34] E, the number of error types, then ARGV[35 .. 34+2E]: name, count, name, count, ...
    --            then groups of five until the end: the time bucket the calls happened in (the sender maps its clock
    --            to Redis TIME; 0 = unknown, use the current bucket), successes, slow successes, failures, slow failures
    -- op isolate: ARGV[23] reason
    --
    -- Reply: { state, version, since, open_until, now, attempt, reason, isolation_reason, consecutive_failures,
    --          probes, probe_successes, granted (acquire: 0 denied, 1 admitted, 2 admitted as probe),
    --          window calls, window failures, window slow, 1 if this call made a transition,
    --          created (the state's incarnation: it changes when the hash is made anew, e.g. after a Redis restart),
    --          totals (op read: the totals hash as a flat field/value array), failure budget (-1: none applies),
    --          1 if the stored policy fingerprint is ARGV[18], 1 if the batch was a duplicate }

    local SCHEMA = '2'
    local op = ARGV[1]

    local function refuse(text) error({ refusal = text }) end

    -- A read or write that meets a key of the wrong type refuses with CORRUPT naming the key (reset deletes it).
    -- No TYPE check runs on the normal path: Redis' own WRONGTYPE answer is the signal.
    local expected = { 'hash', 'hash', 'hash', 'stream', 'hash' }
    local function checked(index, command, ...)
      local reply = redis.pcall(command, KEYS[index], ...)
      if type(reply) == 'table' and reply.err then
        if string.find(reply.err, 'WRONGTYPE', 1, true) then
          if op == 'reset' then
            redis.call('DEL', KEYS[index])
            return redis.call(command, KEYS[index], ...)
          end
          local kind = redis.call('TYPE', KEYS[index])['ok']
          refuse('CORRUPT ' .. KEYS[index] .. ' is a ' .. kind .. ', expected a ' .. expected[index] .. ' (fusebox reset repairs it)')
        end
        error(reply)
      end
      return reply
    end

    local function main()
      local now = tonumber(ARGV[5])
      if now == nil then
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      local function optional_number(text) if text == '' then return nil end return tonumber(text) end

      -- The state hash: only the fields the rules use (the policy JSON and the break durations stay unread).
      local fields = { 'state', 'version', 'since', 'open_until', 'attempt', 'reason', 'isolation_reason',
        'consecutive_failures', 'probes', 'probe_successes', 'created', 'budget', 'policy_fp', 'schema', 'pruned' }
      local values = checked(1, 'HMGET', unpack(fields))
      local exists = values[1] ~= false

      if ARGV[9] == '' then
        local stored = exists and redis.call('HGET', KEYS[1], 'policy')
        if not stored and op ~= 'reset' then
          refuse('NOPOLICY ' .. KEYS[1] .. ' has no stored policy: no instance has used this breaker yet')
        end
        local ok, p = pcall(cjson.decode, stored or '')
        if not ok or type(p) ~= 'table' or type(p.window) ~= 'table' then
          if op ~= 'reset' then
            refuse('CORRUPT ' .. KEYS[1] .. " field 'policy' is not the JSON Fusebox writes (fusebox reset repairs it)")
          end
          p = { window = { kind = 'time', samplingMs = 10000, buckets = 10 }, minimumThroughput = 10, failureRateThreshold = 0.5,
                permittedCallsInHalfOpen = 1, successThreshold = 1, maxHalfOpenDurationMs = 60000, mode = 'normal' }
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
        ARGV[18] = values[13] or ''; ARGV[19] = ''
        -- Break durations are computed only in Swift (BreakerPolicy.BreakDuration): reuse those an instance sent.
        local stored_breaks = redis.call('HMGET', KEYS[1], 'break_base', 'break_durations')
        ARGV[20] = stored_breaks[1] or '0'
        ARGV[21] = stored_breaks[2] or '30000'
      end

      local policy = {
        failure_rate = optional_number(ARGV[6]), consecutive = optional_number(ARGV[7]), slow_rate = optional_number(ARGV[8]),
        minimum = tonumber(ARGV[9]), window_kind = ARGV[10], window_size = tonumber(ARGV[11]), width = tonumber(ARGV[12]),
        permitted = tonumber(ARGV[13]), successes = tonumber(ARGV[14]), max_half_open = tonumber(ARGV[15]),
        mode = ARGV[16], instances = tonumber(ARGV[17]), base_attempt = tonumber(ARGV[20]), durations = {},
        hold = tonumber(ARGV[22]) or 1000
      }
      for value in string.gmatch(ARGV[21], '[^,]+') do table.insert(policy.durations, tonumber(value)) end

      local base_state = 'closed'
      if policy.mode == 'metrics_only' then base_state = 'metrics_only' elseif policy.mode == 'disabled' then base_state = 'disabled' end

      -- Load and validate the state. Only fields that change are written back at the end.
      local valid_states = { closed = true, open = true, half_open = true, isolated = true, disabled = true, metrics_only = true }
      local numeric = { version = true, since = true, open_until = true, attempt = true, consecutive_failures = true,
        probes = true, probe_successes = true, created = true }
      local st, old = {}, {}
      local corrupt = nil
      local function fresh(version, reason)
        return { state = base_state, version = version, since = now, open_until = 0, attempt = 0, reason = reason,
                 isolation_reason = '', consecutive_failures = 0, probes = 0, probe_successes = 0, created = now,
                 budget = -1, policy_fp = '', schema = SCHEMA, pruned = now }
      end
      if not exists then
        st = fresh(0, 'created')
      else
        for i, field in ipairs(fields) do
          local value = values[i]
          if value == false then value = nil end
          if numeric[field] then
            local number = tonumber(value or '')
            if number == nil and corrupt == nil then corrupt = "field '" .. field .. "' is '" .. tostring(value) .. "'" end
            value = number or 0
          end
          st[field] = value
          old[field] = value
        end
        if not valid_states[st.state or ''] then corrupt = "field 'state' is '" .. tostring(st.state) .. "'" end
        st.reason = st.reason or ''
        st.isolation_reason = st.isolation_reason or ''
        st.budget = tonumber(st.budget or '') or -1
        st.pruned = tonumber(st.pruned or '') or 0
        st.policy_fp = st.policy_fp or ''
        if st.schema == nil then
          -- A breaker last written by schema 1: its window is laid out differently; start it empty.
          redis.call('DEL', KEYS[2])
          st.schema = SCHEMA
        elseif st.schema ~= SCHEMA then
          refuse('SCHEMA ' .. KEYS[1] .. ' was written by Fusebox key schema ' .. st.schema .. '; this instance runs schema ' .. SCHEMA)
        end
      end
      if corrupt ~= nil then
        if op ~= 'reset' then refuse('CORRUPT ' .. KEYS[1] .. ' ' .. corrupt .. ' (fusebox reset repairs it)') end
        -- A repairing reset starts versions at the current time, so every instance takes it as newer than its cache.
        redis.call('DEL', KEYS[1], KEYS[2])
        st = fresh(now, 'repaired')
        old = {}
      end

      -- The sliding window. Time: running sums `calls` `failures` `slow` over the buckets in the window, one field
      -- per bucket `<b>` = "calls failures slow" (and `<b>:q`, the failing instances, with a quorum); buckets that age
      -- out are subtracted and deleted when a batch is written. Count: the last N calls as a string of flags.
      local window = { calls = 0, failures = 0, slow = 0 }
      local win = {}            -- what was read, to write back
      local failing_instances = {}
      local bucket = 0
      if policy.window_kind == 'time' then bucket = math.floor(now / policy.width) end
      local window_loaded = false

      local function unpack_bucket(text)
        if not text then return 0, 0, 0 end
        local c, f, s = string.match(text, '^(%d+) (%d+) (%d+)$')
        if c == nil then refuse('CORRUPT ' .. KEYS[2] .. " bucket holds '" .. text .. "' (fusebox reset repairs it)") end
        return tonumber(c), tonumber(f), tonumber(s)
      end

      local function number_field(text, name)
        if not text then return 0 end
        local n = tonumber(text)
        if n == nil then refuse('CORRUPT ' .. KEYS[2] .. " field '" .. name .. "' is '" .. text .. "' (fusebox reset repairs it)") end
        return n
      end

      -- Reads the window as of now. With `writing`, buckets that aged out are deleted and the sums corrected.
      local function load_window(writing)
        if window_loaded then return end
        window_loaded = true
        win.writing = writing
        if policy.window_kind == 'time' then
          local v = checked(2, 'HMGET', 'newest', 'calls', 'failures', 'slow', tostring(bucket))
          local newest = tonumber(v[1] or '')
          if newest ~= nil and newest > bucket then
            -- Redis' clock went back (a failover): count in the newest bucket.
            bucket = newest
            v[5] = redis.call('HGET', KEYS[2], tostring(bucket))
          end
          window.calls = number_field(v[2], 'calls'); window.failures = number_field(v[3], 'failures'); window.slow = number_field(v[4], 'slow')
          win.current = v[5] or nil
          if newest ~= nil and bucket > newest then
            if bucket - newest >= policy.window_size then
              window = { calls = 0, failures = 0, slow = 0 }
              win.current = nil
              if writing then redis.call('DEL', KEYS[2]) end
            else
              local aged = {}
              for b = newest - policy.window_size + 1, bucket - policy.window_size do table.insert(aged, tostring(b)) end
              if #aged > 0 then
                local old_values = redis.call('HMGET', KEYS[2], unpack(aged))
                for i = 1, #aged do
                  local c, f, s = unpack_bucket(old_values[i] or nil)
                  window.calls = window.calls - c; window.failures = window.failures - f; window.slow = window.slow - s
                end
                if writing then
                  local dead = {}
                  for i = 1, #aged do table.insert(dead, aged[i]); table.insert(dead, aged[i] .. ':q') end
                  redis.call('HDEL', KEYS[2], unpack(dead))
                end
              end
            end
            win.dirty = true
          elseif newest == nil then
            win.dirty = true
          end
          win.newest = bucket
          if policy.instances > 1 then
            local q = {}
            for b = bucket - policy.window_size + 1, bucket do table.insert(q, b .. ':q') end
            local ids = redis.call('HMGET', KEYS[2], unpack(q))
            for i = 1, #ids do
              if ids[i] then for id in string.gmatch(ids[i], '%S+') do failing_instances[id] = true end end
            end
          end
        else
          local v = checked(2, 'HMGET', 'ring', 'next', 'calls', 'failures', 'slow')
          win.ring = v[1] or ''
          win.next = number_field(v[2], 'next')
          window.calls = number_field(v[3], 'calls'); window.failures = number_field(v[4], 'failures'); window.slow = number_field(v[5], 'slow')
        end
      end

      local function count_instances()
        local n = 0
        for _ in pairs(failing_instances) do n = n + 1 end
        return n
      end

      local function format2(x) return string.format('%.2f', x) end

      local function ratio_reason()
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
      local event = nil
      local function transition(to, reason)
        local from = st.state
        st.version = st.version + 1
        st.state = to
        st.since = now
        st.reason = reason
        st.probes = 0
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

      local totals_add = {}
      local function add_total(field, n) if n ~= 0 then totals_add[field] = (totals_add[field] or 0) + n end end

      local granted = 0
      local duplicate = false
      local sender = nil
      local sender_seq = nil
      if op == 'acquire' then
        advance()
        if st.state == 'closed' or st.state == 'metrics_only' or st.state == 'disabled' then
          granted = 1
        elseif st.state == 'half_open' and st.probes < policy.permitted then
          st.probes = st.probes + 1
          granted = 2
        else
          add_total('rejected', 1)
        end
      elseif op == 'record' then
        local version = tonumber(ARGV[25])
        local same_state = version == st.version and tonumber(ARGV[26]) == st.created
        local window_ok = ARGV[27] == '1'
        local probes = ARGV[28] == '1'
        local ignored, rejected = tonumber(ARGV[29]), tonumber(ARGV[30])
        local leading, longest, trailing = tonumber(ARGV[31]), tonumber(ARGV[32]), tonumber(ARGV[33])
        local error_end = 34 + 2 * tonumber(ARGV[34])
        local first_error = ARGV[35]
        if error_end < 35 then first_error = nil end
        local groups = {}
        local s, S, f, F = 0, 0, 0, 0
        for i = error_end + 1, #ARGV, 5 do
          local g = { bucket = tonumber(ARGV[i]), s = tonumber(ARGV[i + 1]), S = tonumber(ARGV[i + 2]), f = tonumber(ARGV[i + 3]), F = tonumber(ARGV[i + 4]) }
          s = s + g.s; S = S + g.S; f = f + g.f; F = F + g.F
          table.insert(groups, g)
        end
        if ARGV[23] ~= '' then
          sender = ARGV[23]
          sender_seq = tonumber(ARGV[24])
          local seen = checked(5, 'HGET', sender)
          local high = seen and tonumber(string.match(seen, '^(%d+)')) or 0
          duplicate = sender_seq <= high
        end
        if duplicate then
          same_state = false
        else
          local successes, failures = s + S, f + F
          add_total('calls', successes + failures + ignored)
          add_total('successes', successes)
          add_total('failures', failures)
          add_total('slow', S + F)
          add_total('ignored', ignored)
          add_total('rejected', rejected)
          for i = 35, error_end, 2 do add_total('error:' .. ARGV[i], tonumber(ARGV[i + 1])) end

          if probes then
            if same_state and st.state == 'half_open' then
              st.probes = math.max(0, st.probes - ignored - successes - failures)
              if failures > 0 then
                trip('probe failed (' .. (first_error or 'Error') .. ')')
              elseif successes > 0 then
                st.probe_successes = st.probe_successes + successes
                if st.probe_successes >= policy.successes then
                  local n = st.probe_successes
                  local plural = 'es'
                  if n == 1 then plural = '' end
                  transition(base_state, n .. ' probe success' .. plural .. ' ≥ ' .. policy.successes)
                end
              end
            end
          elseif same_state and window_ok and (st.state == 'closed' or st.state == 'metrics_only') and successes + failures > 0 then
            load_window(true)
            local added = { c = 0, f = 0, s = 0 }
            if policy.window_kind == 'count' then
              added = { c = successes + failures, f = failures, s = S + F }
              -- Within one batch, successes enter the ring before failures (the order inside a batch is not shipped).
              local entries = string.rep('0', s) .. string.rep('2', S) .. string.rep('1', f) .. string.rep('3', F)
              local size = policy.window_size
              local ring, nxt = win.ring, win.next
              local function forget(text)
                for i = 1, #text do
                  local flag = string.byte(text, i) - 48
                  window.calls = window.calls - 1
                  if flag % 2 == 1 then window.failures = window.failures - 1 end
                  if flag >= 2 then window.slow = window.slow - 1 end
                end
              end
              if #ring > size then forget(string.sub(ring, size + 1)); ring = string.sub(ring, 1, size) end
              if #entries >= size then
                forget(ring)
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
                  forget(string.sub(ring, nxt + 1, nxt + n))
                  ring = string.sub(ring, 1, nxt) .. string.sub(entries, 1, n) .. string.sub(ring, nxt + n + 1)
                  entries = string.sub(entries, n + 1)
                  nxt = (nxt + n) % size
                end
              end
              win.ring, win.next = ring, nxt
            else
              -- Calls count in the bucket they happened in; those older than the window count in the totals only.
              win.adds = {}
              for _, g in ipairs(groups) do
                local b = g.bucket
                if b <= 0 or b > bucket then b = bucket end
                if b > bucket - policy.window_size then
                  local key = tostring(b)
                  local a = win.adds[key] or { c = 0, f = 0, s = 0 }
                  a.c = a.c + g.s + g.S + g.f + g.F; a.f = a.f + g.f + g.F; a.s = a.s + g.S + g.F
                  win.adds[key] = a
                  added.c = added.c + g.s + g.S + g.f + g.F; added.f = added.f + g.f + g.F; added.s = added.s + g.S + g.F
                end
              end
            end
            window.calls = window.calls + added.c
            window.failures = window.failures + added.f
            window.slow = window.slow + added.s
            win.dirty = true
            if added.f > 0 then failing_instances[ARGV[4]] = true end
            win.failed = added.f > 0
            -- The streak: successes in the batch end it; the batch's own runs say how far it went.
            local peak
            if successes > 0 then
              peak = math.max(st.consecutive_failures + leading, longest)
              st.consecutive_failures = trailing
            else
              st.consecutive_failures = st.consecutive_failures + failures
              peak = st.consecutive_failures
            end
            if st.state == 'closed' and policy.mode == 'normal' and not (policy.instances > 1 and count_instances() < policy.instances) then
              local reason = nil
              if policy.consecutive and peak >= policy.consecutive then
                reason = peak .. ' consecutive failures ≥ ' .. policy.consecutive
              else
                reason = ratio_reason()
              end
              if reason then trip(reason) end
            end
          end
        end
      elseif op == 'isolate' then
        st.isolation_reason = ARGV[23]
        transition('isolated', 'isolated: ' .. ARGV[23])
      elseif op == 'reset' then
        transition(base_state, corrupt and 'reset (repaired ' .. corrupt .. ')' or 'reset')
        st.isolation_reason = ''
      elseif op == 'half_open' then
        transition('half_open', 'forced half-open')
      elseif op == 'read' then
        advance()
        if st.state == 'closed' or st.state == 'metrics_only' then load_window(false) end
      end

      -- The failure budget: how many failures (or slow calls) each live sender may hold before it must write them,
      -- so that all of them together cannot cross a threshold unseen (Docs/architecture.md, "Failure budget").
      local senders = 1
      local budget = -1
      if st.state == 'closed' and policy.mode == 'normal' then
        if op ~= 'record' or sender == nil or duplicate then
          -- Only a sender that has written is counted among those who share the headroom.
          budget = 0
        else
          load_window(false)
          local headroom = math.huge
          if policy.instances > 1 and count_instances() < policy.instances then headroom = 0 end
          if policy.consecutive then headroom = math.min(headroom, policy.consecutive - st.consecutive_failures) end
          if policy.failure_rate or policy.slow_rate then
            -- Buckets that may age out before the sender writes again take their calls and failures with them, which
            -- can raise a ratio: the headroom is the least over every such moment (k oldest buckets gone).
            local gone = { { c = 0, f = 0, s = 0 } }
            if policy.window_kind == 'time' then
              local leaving = math.min(policy.window_size, math.floor((now + policy.hold) / policy.width) - bucket)
              if leaving > 0 then
                local oldest = {}
                for b = bucket - policy.window_size + 1, bucket - policy.window_size + leaving do table.insert(oldest, tostring(b)) end
                local old_values = redis.call('HMGET', KEYS[2], unpack(oldest))
                local sum = gone[1]
                for i = 1, #oldest do
                  local c, f, sl = unpack_bucket(old_values[i] or nil)
                  sum = { c = sum.c + c, f = sum.f + f, s = sum.s + sl }
                  table.insert(gone, sum)
                end
              end
            end
            local function needed(calls, bad, rate)
              -- The fewest added failures that break `bad / calls ≥ rate` once calls reach the minimum.
              if calls < 0 then calls = 0 end
              if bad < 0 then bad = 0 end
              local size = policy.window_kind == 'count' and policy.window_size or math.huge
              local n = math.max(0, policy.minimum - calls)
              if rate < 1 then
                n = math.max(n, math.ceil((rate * calls - bad) / (1 - rate) - 1e-9))
              elseif bad < calls then
                n = math.huge
              end
              if calls + n > size then
                -- A full count window: each failure pushes out the oldest call (assumed a success).
                if size < policy.minimum then return math.huge end
                n = math.max(size - calls, math.ceil(rate * size - bad - 1e-9))
              end
              return math.max(1, n)
            end
            for _, g in ipairs(gone) do
              if policy.failure_rate then headroom = math.min(headroom, needed(window.calls - g.c, window.failures - g.f, policy.failure_rate)) end
              if policy.slow_rate then headroom = math.min(headroom, needed(window.calls - g.c, window.slow - g.s, policy.slow_rate)) end
            end
          end
          senders = math.max(1, redis.call('HLEN', KEYS[5]))
          if redis.call('HEXISTS', KEYS[5], sender) == 0 then senders = senders + 1 end
          if headroom == math.huge then
            budget = 1048576
          else
            budget = math.floor((headroom - 1) / senders)
            if budget < 0 then budget = 0 end
          end
          -- Powers of two, so the stored grant changes rarely.
          if budget > 1048576 then budget = 1048576 end
          if budget > 0 then budget = 2 ^ math.floor(math.log(budget) / math.log(2) + 1e-9) end
          if budget < st.budget then
            -- Instances may hold more than is safe now: ask every instance to write what it holds.
            redis.call('PUBLISH', ARGV[2], cjson.encode({ name = ARGV[3], version = st.version, created = st.created, recall = budget }))
          end
          st.budget = budget
        end
      end

      -- Writes, the totals first: a key of the wrong type is refused before anything else changes.
      local totals_fields = {}
      for field, n in pairs(totals_add) do table.insert(totals_fields, field) end
      table.sort(totals_fields)
      for _, field in ipairs(totals_fields) do checked(3, 'HINCRBY', field, totals_add[field]) end

      if event then
        checked(4, 'XADD', 'MAXLEN', '~', 100, '*', 'from', event.from, 'to', event.to, 'reason', event.reason,
          'version', st.version, 'instance', ARGV[4], 'at', now)
        local probe_in = 0
        if st.state == 'open' then probe_in = st.open_until - now end
        redis.call('PUBLISH', ARGV[2], cjson.encode({ name = ARGV[3], version = st.version, state = st.state,
          probe_in_ms = probe_in, reason = st.reason, isolation_reason = st.isolation_reason, attempt = st.attempt,
          created = st.created }))
      end

      if win.cleared then
        redis.call('DEL', KEYS[2])
      elseif win.dirty and win.writing then
        if policy.window_kind == 'time' then
          local set = { 'newest', win.newest, 'calls', window.calls, 'failures', window.failures, 'slow', window.slow }
          if win.adds then
            for key, a in pairs(win.adds) do
              local current = win.current
              if key ~= tostring(bucket) then current = redis.call('HGET', KEYS[2], key) or nil end
              local c, f, s = unpack_bucket(current)
              table.insert(set, key)
              table.insert(set, (c + a.c) .. ' ' .. (f + a.f) .. ' ' .. (s + a.s))
            end
            if win.failed and policy.instances > 1 then
              local q = redis.call('HGET', KEYS[2], bucket .. ':q') or ''
              if not string.find(' ' .. q .. ' ', ' ' .. ARGV[4] .. ' ', 1, true) then
                table.insert(set, bucket .. ':q'); table.insert(set, q .. ' ' .. ARGV[4])
              end
            end
          end
          redis.call('HSET', KEYS[2], unpack(set))
        else
          redis.call('HSET', KEYS[2], 'ring', win.ring, 'next', win.next, 'calls', window.calls, 'failures', window.failures, 'slow', window.slow)
        end
      end

      -- Senders: the high-water mark of the batch just applied; senders silent for 10 minutes are forgotten.
      if sender and not duplicate then
        checked(5, 'HSET', sender, sender_seq .. ':' .. now)
        if now - st.pruned >= 60000 then
          local all = redis.call('HGETALL', KEYS[5])
          local dead = {}
          for i = 1, #all, 2 do
            local last = tonumber(string.match(all[i + 1], ':(%d+)$') or '0')
            if now - last > 600000 then table.insert(dead, all[i]) end
          end
          if #dead > 0 then redis.call('HDEL', KEYS[5], unpack(dead)) end
          st.pruned = now
        end
      end

      -- The policy (for operators) is written only when its fingerprint changes; break durations with transitions.
      local set = {}
      local function put(field, value) table.insert(set, field); table.insert(set, value) end
      for _, field in ipairs(fields) do
        if field ~= 'policy_fp' and st[field] ~= nil and tostring(st[field]) ~= tostring(old[field]) then put(field, st[field]) end
      end
      if ARGV[19] ~= '' and ARGV[18] ~= st.policy_fp then
        put('policy_fp', ARGV[18]); put('policy', ARGV[19])
        st.policy_fp = ARGV[18]
      end
      if (transitioned or not exists) and ARGV[19] ~= nil then
        local stored_breaks = exists and redis.call('HMGET', KEYS[1], 'break_base', 'break_durations') or {}
        if stored_breaks[1] ~= ARGV[20] then put('break_base', ARGV[20]) end
        if stored_breaks[2] ~= ARGV[21] then put('break_durations', ARGV[21]) end
      end
      -- A read writes only to create the breaker or to apply a transition that time made due.
      if #set > 0 and (op ~= 'read' or transitioned or not exists) then redis.call('HSET', KEYS[1], unpack(set)) end

      local totals = {}
      if op == 'read' then totals = checked(3, 'HGETALL') end
      return { st.state, st.version, st.since, st.open_until, now, st.attempt, st.reason, st.isolation_reason,
               st.consecutive_failures, st.probes, st.probe_successes, granted, window.calls, window.failures, window.slow,
               transitioned and 1 or 0, st.created, totals, budget, st.policy_fp == ARGV[18] and 1 or 0, duplicate and 1 or 0 }
    end

    local ok, result = pcall(main)
    if ok then return result end
    if type(result) == 'table' and result.refusal then return redis.error_reply(result.refusal) end
    error(result)

    """#
}
