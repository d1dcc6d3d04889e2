import Fusebox

/// Whether this instance can use the shared state.
enum StoreHealth: Sendable, Equatable, CustomStringConvertible {
    case healthy
    /// Redis cannot be reached, refuses a command, or times out.
    case unavailable(String)
    /// The breaker's keys are malformed; `reset` repairs them.
    case corrupt(String)

    var isHealthy: Bool { self == .healthy }

    var description: String {
        switch self {
        case .healthy: "healthy"
        case .unavailable(let text), .corrupt(let text): text
        }
    }
}

/// One instance's view of a shared breaker, plus the outcomes it has not written yet.
struct Cache: Sendable {
    /// `false` until the first reply or message: admission asks Redis until then.
    var isKnown = false
    var state: BreakerState
    var version = 0
    /// The incarnation of the state hash the cache reflects; a different one is newer whatever its version.
    var created: Int64 = 0
    /// While open: when (ns on this instance's clock) the break ends; while isolated for a time: when the isolation
    /// does (admission then asks Redis, whose script ends it); else 0.
    var probeAt: Int64 = 0
    /// After Redis denied a probe permit: reject locally until then (ns).
    var halfOpenDeniedUntil: Int64 = 0
    /// Calls this instance runs as probes of half-open version ``probesHeldVersion`` (their permits are leased), and
    /// when (ns) it renews their leases next.
    var probesHeld = 0
    var probesHeldVersion = -1
    var probeLeaseRenewAt: Int64 = 0
    var attempt = 0
    var isolationReason: String?
    /// The window as of the last reply, to guess whether an outcome may trip the breaker.
    var windowCalls = 0
    var windowFailures = 0
    var windowSlow = 0
    var consecutiveFailures = 0
    /// A recall arrived since the last script reply: the shared window may no longer be quiet.
    var isRecalled = false
    /// How many failures (and slow calls) this instance may hold for the cached version before it must write
    /// them: its share of the headroom left before a threshold, from the last reply or recall message. 0 until
    /// Redis has granted one; ``unlimited`` when no threshold applies (open, isolated, metrics-only).
    var budget = 0
    /// The last recall for the cached version: its budget, and when (Redis time, ms) the write that sent it ran.
    /// A reply to a write that ran no later cannot raise the budget above it (that write's grant is older news).
    var recallCeiling: (budget: Int, at: Int64)?
    /// Redis holds this instance's policy JSON (its fingerprint matched in the last reply).
    var policyStored = false
    /// Redis `TIME` minus this instance's clock, in ms, from the last reply; `nil` until one arrives.
    var redisOffsetMilliseconds: Int64?
    /// The Redis time bucket the current slot of this instance's clock falls in, and that slot's range (ns).
    private var slotBucket: Int64 = 0
    private var slotStart = Int64.max
    private var slotEnd = Int64.min
    var health = StoreHealth.healthy
    /// A request for admission went unanswered past the admission budget and no script reply came since: what would
    /// ask Redis (half-open, a state not known yet) is decided by the store-down policy until one does.
    var admissionOverdue = false
    /// The in-process breaker used while Redis is unavailable (policy `local`).
    var fallback: BreakerStateMachine?
    /// The share of calls adaptive throttling sheds, from the shared window of the last reply (0 without it).
    var throttleProbability = 0.0
    /// Draws for adaptive throttling.
    var random = SplitMix64(seed: UInt64.random(in: 0...UInt64.max))
    var pending = PendingOutcomes()
    private var errorNames: [ObjectIdentifier: String] = [:]

    /// The policy in force and what follows from it.
    var rules: PolicyRules

    init(state: BreakerState, rules: PolicyRules) {
        self.state = state
        self.rules = rules
    }

    /// Applies a script reply; returns the transition it reveals and whether the store just became usable again.
    mutating func apply(_ reply: StateReply, now: Int64) -> (BreakerTransition?, Bool) {
        let offset = reply.now - now / 1_000_000
        if redisOffsetMilliseconds.map({ abs($0 - offset) > 2 }) ?? true {
            redisOffsetMilliseconds = offset
            slotStart = .max
            slotEnd = .min
        }
        // A corrupt breaker heals on a script reply only (or a transition message): the script checked every key it
        // needs, where the refresher's plain read of the state hash (no window) did not, and a refresh that healed it
        // would alternate with the next refused write, a pair of log lines per refresh.
        var recovered = !health.isHealthy
        if case .corrupt = health, reply.window == nil { recovered = false }
        if recovered {
            health = .healthy
            fallback = nil
        }
        if admissionOverdue {
            admissionOverdue = false
            if health.isHealthy { fallback = nil }
        }
        let isNewIncarnation = reply.created != created
        if reply.budget != nil { policyStored = reply.policyStored }
        guard !isKnown || isNewIncarnation || reply.version >= version else { return (nil, recovered) }
        let transition = isKnown && (reply.version > version || (isNewIncarnation && reply.state != state))
            ? BreakerTransition(from: state, to: reply.state, reason: reply.reason, version: reply.version, at: .milliseconds(reply.since))
            : nil
        isKnown = true
        state = reply.state
        version = reply.version
        created = reply.created
        attempt = reply.attempt
        isolationReason = reply.isolationReason
        probeAt = reply.endsAt(now: now)
        if transition != nil { halfOpenDeniedUntil = 0 }
        if let window = reply.window {
            windowCalls = window.calls
            windowFailures = window.failures
            windowSlow = window.slow
            isRecalled = false
            if transition != nil { throttleProbability = 0 }
            if let throttling = rules.policy.adaptiveThrottling, reply.state == .closed {
                if let throttled = reply.windowThrottled {
                    throttleProbability = throttling.rejectionProbability(calls: window.calls, failures: window.failures, throttled: throttled)
                }
            } else {
                throttleProbability = 0
            }
        }
        consecutiveFailures = reply.consecutiveFailures
        if transition != nil || isNewIncarnation { recallCeiling = nil }
        if let granted = reply.budget {
            budget = granted < 0 ? Self.unlimited : granted
            if let ceiling = recallCeiling {
                if reply.now <= ceiling.at { budget = min(budget, ceiling.budget) } else { recallCeiling = nil }
            }
        } else if transition != nil || isNewIncarnation {
            budget = 0
        }
        return (transition, recovered)
    }

    /// The Redis time bucket (of `widthMilliseconds`) that `now` on this instance's clock falls in; 0 while the
    /// offset to Redis is unknown (the script then uses its current bucket). Divides only when the slot changes.
    @inline(__always)
    mutating func bucket(at now: Int64, widthMilliseconds: Int64) -> Int64 {
        if now >= slotStart && now < slotEnd { return slotBucket }
        guard let offset = redisOffsetMilliseconds, widthMilliseconds > 0 else { return 0 }
        let redisMilliseconds = now / 1_000_000 + offset
        slotBucket = redisMilliseconds / widthMilliseconds
        slotStart = (slotBucket * widthMilliseconds - offset) * 1_000_000
        slotEnd = slotStart + widthMilliseconds * 1_000_000
        return slotBucket
    }

    /// The Redis time bucket of `now` with the span of this instance's clock it covers (`start ..< end`), for the
    /// per-CPU success counters, which count in one bucket until the clock leaves it.
    mutating func slot(at now: Int64, widthMilliseconds: Int64) -> (bucket: Int64, start: Int64, end: Int64) {
        let bucket = bucket(at: now, widthMilliseconds: widthMilliseconds)
        guard now >= slotStart && now < slotEnd else {
            // The offset to Redis is not known yet (bucket 0): count until it is, at most a second.
            return (bucket, now, now + 1_000_000_000)
        }
        return (bucket, slotStart, slotEnd)
    }

    /// The budget that stands for "no threshold applies".
    static let unlimited = Int.max

    /// Applies a recall: Redis found that the instances may hold more than is safe now. Returns `true` when this
    /// instance holds more than the new budget and must write at once. `windowQuiet`: the recall says the shared
    /// window is still quiet, so held successes may keep waiting.
    mutating func applyRecall(version: Int, created: Int64, budget newBudget: Int, at: Int64?, windowQuiet: Bool) -> Bool {
        guard isKnown, version == self.version, created == self.created else { return false }
        budget = min(budget, max(0, newBudget))
        // Without a time (an older script), every reply until the next transition is held to it.
        recallCeiling = (min(max(0, newBudget), recallCeiling?.budget ?? .max), max(at ?? .max, recallCeiling?.at ?? .min))
        if !windowQuiet { isRecalled = true }
        return heldBad > budget
    }

    /// Whether successes may wait for ``DistributedOptions/quietFlushInterval``: the breaker is known, healthy and
    /// closed (or metrics-only), the last reply showed no failure in the shared window, no slow call where the
    /// slow-call rule counts them and no streak where the consecutive-failure rule does, and no recall came since.
    func isQuiet(for policy: BreakerPolicy) -> Bool {
        isKnown && health.isHealthy && !isRecalled && (state == .closed || state == .metricsOnly) && windowFailures == 0
            && (policy.slowCallRateThreshold == nil || windowSlow == 0)
            && (policy.consecutiveFailureThreshold == nil || consecutiveFailures == 0)
    }

    /// Failures and slow calls held for the cached closed version.
    var heldBad: Int {
        let batch = pending.current
        guard batch.version == version, batch.created == created, !batch.isProbe else { return 0 }
        return batch.bad
    }

    /// Sets the health; returns `true` when it changed (to log once).
    mutating func setHealth(_ new: StoreHealth) -> Bool {
        guard health != new else { return false }
        let wasHealthy = health.isHealthy
        health = new
        if !wasHealthy && new.isHealthy { fallback = nil }
        return wasHealthy
    }

    /// Whether an outcome just recorded must be written now rather than at the next flush: the one rule for it.
    ///
    /// A failure or slow call is written at once when this instance holds more of them than its budget (its share,
    /// granted by Redis, of the headroom left before a threshold), or when what it knows, the shared window of the
    /// last reply plus what it holds, breaks a trip rule (``TripRule``, the rule the state machine and the script
    /// apply). A relative failure-ratio threshold is judged at its lowest (its floor, or the fixed threshold when that
    /// is lower), so the write is never late. Successes are never urgent: a success cannot trip a breaker.
    func mustWriteNow(after outcome: CallOutcome, slow: Bool, policy: BreakerPolicy) -> Bool {
        guard state == .closed else { return false }
        let isFailure: Bool
        switch outcome {
        case .failure: isFailure = true
        case .success: isFailure = false
        case .ignored: return false
        }
        guard isFailure || slow else { return false }
        if heldBad > budget { return true }
        let batch = pending.current
        guard batch.version == version, batch.created == created else { return false }
        let streak = isFailure ? (batch.hasSuccess ? 0 : consecutiveFailures) + batch.trailingFailures : 0
        let lowestFailureRate = policy.relativeFailureRate.map { min(policy.failureRateThreshold ?? 1, $0.floor) }
            ?? policy.failureRateThreshold
        return TripRule.broken(
            calls: windowCalls + batch.calls, failures: windowFailures + batch.failures + batch.slowFailures,
            slow: windowSlow + batch.slowSuccesses + batch.slowFailures, streak: streak,
            consecutiveFailureThreshold: policy.consecutiveFailureThreshold, failureRateThreshold: lowestFailureRate,
            slowCallRateThreshold: policy.slowCallRateThreshold, minimumThroughput: policy.minimumThroughput) != nil
    }

    /// The name recorded for an error type (`String(describing:)`, computed once per type).
    func errorName(_ key: ObjectIdentifier) -> String { errorNames[key] ?? "Error" }

    mutating func rememberName(of type: any Error.Type) {
        let key = ObjectIdentifier(type)
        if errorNames[key] == nil { errorNames[key] = String(describing: type) }
    }
}

// MARK: - Admission

extension Cache {
    /// What admission decided from the cache.
    enum Decision {
        case decided(BreakerAdmission)
        case askRedis
    }

    /// What admission can decide from the cache alone, or ``Decision/askRedis`` (a break that has ended: probe
    /// permits are handed out fleet-wide; a state not known yet). Every rejection is counted in the pending batches.
    /// Shadow mode is the caller's: it turns a rejection into a call that runs unrecorded.
    mutating func admission(
        name: String, now: Int64, storeDown: StoreDownPolicy, admissionBudget: Duration
    ) -> (Decision, BreakerTransition?) {
        // Made only when needed: the hot path's open rejections allocate nothing.
        func overdueReason() -> String { "no answer from Redis within the admission budget (\(admissionBudget))" }
        if !health.isHealthy {
            let reason = health.description
            return withoutRedis(name: name, reason: reason, now: now, storeDown: storeDown)
        }
        guard isKnown else {
            return admissionOverdue ? withoutRedis(name: name, reason: overdueReason(), now: now, storeDown: storeDown) : (.askRedis, nil)
        }
        switch state {
        case .closed where throttleProbability > 0 && random.nextUnitInterval() < throttleProbability:
            pending.rejected += 1
            pending.throttled += 1
            return (.decided(.rejected(.throttling(name: name))), nil)
        case .closed, .metricsOnly:
            return (.decided(.admitted(PermitToken(version: version, isProbe: false, isRecorded: true, startedAt: now))), nil)
        case .disabled:
            return (.decided(.admitted(.unrecorded)), nil)
        case .open where now < probeAt:
            pending.rejected += 1
            return (.decided(.rejected(.rejection(name: name, state: .open, retryAfterNanoseconds: probeAt - now, isolationReason: nil))), nil)
        case .halfOpen where now < halfOpenDeniedUntil:
            pending.rejected += 1
            return (.decided(.rejected(.rejection(name: name, state: .halfOpen, retryAfterNanoseconds: nil, isolationReason: nil))), nil)
        case .isolated where probeAt == 0 || now < probeAt:
            pending.rejected += 1
            return (.decided(.rejected(.rejection(
                name: name, state: .isolated, retryAfterNanoseconds: probeAt > 0 ? probeAt - now : nil,
                isolationReason: isolationReason))), nil)
        case .open, .halfOpen, .isolated:
            guard admissionOverdue else { return (.askRedis, nil) }
            // A break has ended and Redis is slow to hand out probe permits. The local fallback would send probes
            // the fleet does not count, so it waits until Redis counts as unavailable (the command timeout);
            // until then the call is rejected as if its permit were denied (failOpen still admits).
            guard storeDown == .local else { return withoutRedis(name: name, reason: overdueReason(), now: now, storeDown: storeDown) }
            pending.rejected += 1
            return (.decided(.rejected(.rejection(name: name, state: .halfOpen, retryAfterNanoseconds: nil, isolationReason: nil))), nil)
        }
    }

    /// The store-down policy's answer (Redis unavailable, the breaker's keys corrupt, or an admission overdue). The
    /// in-process fallback of policy `local` takes up the state last known from Redis: a breaker known open stays
    /// open until its break ends and then sends this process's own probes; one known isolated stays isolated.
    mutating func withoutRedis(
        name: String, reason: String, now: Int64, storeDown: StoreDownPolicy
    ) -> (Decision, BreakerTransition?) {
        switch storeDown {
        case .failOpen:
            return (.decided(.admitted(PermitToken(version: version, isProbe: false, isRecorded: true, startedAt: now))), nil)
        case .failClosed:
            pending.rejected += 1
            return (.decided(.rejected(Cache.unavailableRejection(name: name, reason: reason))), nil)
        case .local:
            if fallback == nil {
                var machine = BreakerStateMachine(name: name, policy: rules.policy, now: now)
                if isKnown {
                    machine.takeUp(
                        state, openUntil: probeAt, attempt: attempt, isolationReason: isolationReason,
                        reason: "taken up from Redis (\(state))", now: now)
                }
                fallback = machine
            }
            let (admission, transition) = fallback!.acquire(now: now)
            switch admission {
            case .admitted(let token) where token.ranInShadow:
                // Shadow mode: the fallback rejected it and let it run; the caller does the same for the cache.
                pending.rejected += 1
                let state = fallback!.state
                return (.decided(.rejected(.rejection(name: name, state: state, retryAfterNanoseconds: nil, isolationReason: nil))), transition)
            case .admitted(let token):
                var mapped = token
                mapped.version = -2 - token.version
                return (.decided(.admitted(mapped)), transition)
            case .rejected:
                pending.rejected += 1
                return (.decided(admission), transition)
            }
        }
    }

    /// The rejection of policy `failClosed` while Redis is unavailable.
    static func unavailableRejection(name: String, reason: String) -> FuseboxError {
        FuseboxError(
            code: .backendUnavailable, message: "circuit '\(name)' rejects calls: Redis is unavailable (\(reason)) and the policy is failClosed",
            breakerName: name)
    }
}

// MARK: - Writing

/// How soon a breaker's held outcomes should be written (``DistributedBackend/flushUrgency()``).
enum FlushUrgency: Sendable {
    /// Nothing held, or quiet successes held for less than half the quiet hold.
    case none
    /// Quiet successes held for half the hold or more: written along with another quiet breaker's write.
    case halfway
    /// Quiet successes whose hold is up.
    case quietDue
    /// Anything else held: written at this flush.
    case due
}

extension Cache {
    /// How soon the held outcomes should be written (see ``FlushUrgency``). `oldestStriped` is when the oldest plain
    /// success counted per CPU was recorded (`Int64.max`: none); `quietHold` gives the quiet hold (ns) for a policy's
    /// base hold and whether its window is a time window (``DistributedCore/quietHold(base:isTimeWindow:)``).
    func flushUrgency(
        oldestStriped: Int64, now: Int64, flushNanoseconds: Int64, quietHold: (_ base: Int64, _ isTimeWindow: Bool) -> Int64
    ) -> FlushUrgency {
        guard pending.holdsOnlySuccesses else { return .due }
        var oldest = oldestStriped
        if let held = pending.oldestRecordedAt { oldest = min(oldest, held) }
        guard oldest != .max else { return .none }
        guard isQuiet(for: rules.policy) else { return .due }
        let hold = quietHold(rules.quietHoldNanoseconds, rules.bucketMilliseconds > 0)
        let held = now - oldest
        if held >= hold - flushNanoseconds { return .quietDue }
        return held >= hold / 2 ? .halfway : .none
    }
}
