#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Every rule of the breaker, as a pure value: no clock, no lock, no I/O.
///
/// Time comes in as `now`, in nanoseconds from an epoch the owner chooses (integers keep the hot path free of
/// `Duration`'s 128-bit arithmetic). Each mutating method returns the
/// transition it caused, if any; the owner logs it, publishes it and updates metrics outside its lock.
/// The `local` adapter holds one of these behind a `Mutex`; `lua/breaker.lua` implements the same rules for
/// Redis, and the conformance suite runs the same scenarios against both.
///
/// `package`: the machinery behind ``LocalAdapter`` and the distributed adapter's fallback, not an API of its own.
package struct BreakerStateMachine: Sendable {
    /// The breaker's name.
    public let name: String
    /// Its policy (validated by the caller); ``replacePolicy(_:now:)`` changes it.
    public private(set) var policy: BreakerPolicy

    /// The current state.
    public private(set) var state: BreakerState
    /// +1 on every transition.
    public private(set) var version = 0
    /// When the current state began (ns since the epoch).
    public private(set) var since: Int64
    /// While open: when probes may start; while isolated for a time: when the isolation ends; else 0 (ns since the
    /// epoch).
    public private(set) var openUntil: Int64 = 0
    /// Consecutive opens; 0 once closed.
    public private(set) var attempt = 0
    /// The reason of the last transition.
    public private(set) var reason = "created"
    /// While isolated: the operator's reason.
    public private(set) var isolationReason: String?
    /// The current failure streak.
    public private(set) var consecutiveFailures = 0
    /// Half-open permits out.
    public private(set) var probesInFlight = 0
    /// Half-open successes so far.
    public private(set) var probeSuccesses = 0
    /// Lifetime counts.
    public private(set) var totals = BreakerTotals()

    private var window: SlidingWindow
    private var slowCallNanoseconds: Int64
    private var maxHalfOpenNanoseconds: Int64
    private var errorCounts: [ObjectIdentifier: Int] = [:]
    private var errorNames: [ObjectIdentifier: String] = [:]
    private var recentTransitions: [BreakerTransition] = []
    /// Draws for adaptive throttling: deterministic from the breaker's name, so a test with a manual clock replays.
    private var random: SplitMix64
    /// The relative threshold's baseline: calls and failures recorded while closed, both decayed with the
    /// policy's horizon as their time constant, as of `at` (ns).
    private var baseline: (calls: Double, failures: Double, at: Int64) = (0, 0, 0)
    private var oldestTransition = 0

    /// How many transitions ``timeline`` keeps.
    public static let timelineCapacity = 100

    /// A new breaker in its mode's base state (closed, metrics-only or disabled).
    public init(name: String, policy: BreakerPolicy, now: Int64) {
        self.name = name
        self.policy = policy
        self.slowCallNanoseconds = policy.slowCallDuration.nanoseconds
        self.maxHalfOpenNanoseconds = policy.maxHalfOpenDuration.nanoseconds
        self.state = Self.baseState(of: policy.mode)
        self.since = now
        self.window = SlidingWindow(policy.window)
        self.random = SplitMix64(seed: name.utf8.reduce(0x9E37_79B9_7F4A_7C15) { ($0 &* 31) &+ UInt64($1) })
        recentTransitions.reserveCapacity(Self.timelineCapacity)
    }

    /// Runs `policy`'s rules from `now` on (validated by the caller), keeping the state, the streak, the break
    /// already under way and the totals. A window of another shape starts empty (its buckets cannot be mapped);
    /// a breaker in its mode's base state moves to the new mode's base state. New thresholds apply from the next
    /// outcome.
    public mutating func replacePolicy(_ policy: BreakerPolicy, now: Int64) -> BreakerTransition? {
        let old = self.policy
        self.policy = policy
        slowCallNanoseconds = policy.slowCallDuration.nanoseconds
        maxHalfOpenNanoseconds = policy.maxHalfOpenDuration.nanoseconds
        if old.window != policy.window { window = SlidingWindow(policy.window) }
        if old.mode != policy.mode, state == Self.baseState(of: old.mode) {
            return transition(to: Self.baseState(of: policy.mode), reason: "policy mode is now \(policy.mode.rawValue)", now: now)
        }
        return nil
    }

    private static func baseState(of mode: BreakerPolicy.Mode) -> BreakerState {
        switch mode {
        case .normal, .shadow: .closed
        case .metricsOnly: .metricsOnly
        case .disabled: .disabled
        }
    }

    // MARK: - Admission

    /// A small answer for the common cases, so the hot path copies little.
    public enum QuickAdmission: Sendable {
        /// Closed or metrics-only: admitted.
        case admitted(PermitToken)
        /// Open and its break has not ended: rejected, with the nanoseconds until it does.
        case rejectedOpen(Int64)
        /// Isolated: rejected, with the operator's reason and, for an isolation set for a time, the nanoseconds until
        /// it ends.
        case rejectedIsolated(String?, endsIn: Int64?)
        /// Anything else (a break that has ended, half-open, disabled): use ``acquire(now:)``.
        case undecided
    }

    /// Decides the common cases without applying any transition; counts a rejection it makes.
    @inline(__always)
    public mutating func quickAdmission(now: Int64) -> QuickAdmission {
        switch state {
        case .closed where policy.adaptiveThrottling == nil, .metricsOnly:
            return .admitted(PermitToken(version: version, isProbe: false, isRecorded: true, startedAt: now))
        case .open where now < openUntil && policy.mode != .shadow:
            totals.rejected += 1
            return .rejectedOpen(openUntil - now)
        case .isolated where (openUntil == 0 || now < openUntil) && policy.mode != .shadow:
            totals.rejected += 1
            return .rejectedIsolated(isolationReason, endsIn: openUntil > 0 ? openUntil - now : nil)
        default:
            return .undecided
        }
    }

    /// Decides whether a call may run at `now`. Applies a due time-based transition first (end of the break,
    /// half-open timeout) and returns it with the decision.
    public mutating func acquire(now: Int64) -> (BreakerAdmission, BreakerTransition?) {
        let transition = advance(now: now)
        let admission = decide(now: now)
        guard case .rejected = admission else { return (admission, transition) }
        guard policy.mode == .shadow else {
            totals.rejected += 1
            return (admission, transition)
        }
        // Shadow mode: the decision stands (a shed call still counts as shed) but the call runs, unrecorded.
        totals.wouldReject += 1
        return (.admitted(.shadow(version: version, startedAt: now)), transition)
    }

    /// The decision at `now`, after ``advance(now:)``; counts nothing in the totals.
    private mutating func decide(now: Int64) -> BreakerAdmission {
        switch state {
        case .closed where policy.adaptiveThrottling != nil:
            if shedsNextCall(now: now) {
                window.recordThrottled(now: now)
                return .rejected(.throttling(name: name))
            }
            return .admitted(PermitToken(version: version, isProbe: false, isRecorded: true, startedAt: now))
        case .closed, .metricsOnly:
            return .admitted(PermitToken(version: version, isProbe: false, isRecorded: true, startedAt: now))
        case .disabled:
            return .admitted(.unrecorded)
        case .halfOpen where probesInFlight < policy.permittedCallsInHalfOpen:
            probesInFlight += 1
            return .admitted(PermitToken(version: version, isProbe: true, isRecorded: true, startedAt: now))
        case .halfOpen:
            return .rejected(.rejection(name: name, state: .halfOpen, retryAfterNanoseconds: nil, isolationReason: nil))
        case .open:
            return .rejected(.rejection(name: name, state: .open, retryAfterNanoseconds: max(0, openUntil - now), isolationReason: nil))
        case .isolated:
            return .rejected(.rejection(
                name: name, state: .isolated, retryAfterNanoseconds: openUntil > 0 ? max(0, openUntil - now) : nil, isolationReason: isolationReason))
        }
    }

    /// The probability that adaptive throttling sheds the next call at `now` (0 when the policy has none, or the
    /// breaker is not closed).
    private mutating func throttleProbability(now: Int64) -> Double {
        guard state == .closed, let throttling = policy.adaptiveThrottling else { return 0 }
        window.expire(now: now)
        return throttling.rejectionProbability(calls: window.calls, failures: window.failures, throttled: window.throttled(at: now))
    }

    /// Draws whether adaptive throttling sheds the next call.
    private mutating func shedsNextCall(now: Int64) -> Bool {
        let probability = throttleProbability(now: now)
        guard probability > 0 else { return false }
        return random.nextUnitInterval() < probability
    }

    /// Applies the transitions time alone causes: open → half-open when the break has ended, half-open → open
    /// when it has lasted ``BreakerPolicy/maxHalfOpenDuration`` without closing, isolated for a time → the mode's
    /// base state when that time is up.
    public mutating func advance(now: Int64) -> BreakerTransition? {
        switch state {
        case .open where now >= openUntil:
            return transition(to: .halfOpen, reason: "break of \(FuseboxError.format(.nanoseconds(openUntil - since))) ended", now: now)
        case .halfOpen where now - since >= maxHalfOpenNanoseconds:
            return trip(reason: "half-open for \(FuseboxError.format(policy.maxHalfOpenDuration)) without closing", now: now)
        case .isolated where openUntil > 0 && now >= openUntil:
            return transition(
                to: Self.baseState(of: policy.mode), reason: "isolation for \(FuseboxError.format(.nanoseconds(openUntil - since))) ended", now: now)
        default:
            return nil
        }
    }

    // MARK: - Outcomes

    /// Records the outcome of a call admitted with `token`; returns the transition it caused, if any.
    public mutating func record(_ outcome: CallOutcome, token: PermitToken, now: Int64) -> BreakerTransition? {
        guard token.isRecorded else { return nil }
        let isSlow: Bool
        let isFailure: Bool
        switch outcome {
        case .success:
            isFailure = false
            isSlow = now - token.startedAt > slowCallNanoseconds
            totals.successes += 1
        case .failure(let type):
            isFailure = true
            isSlow = now - token.startedAt > slowCallNanoseconds
            totals.failures += 1
            let key = ObjectIdentifier(type)
            if let count = errorCounts[key] {
                errorCounts[key] = count + 1
            } else {
                errorCounts[key] = 1
                errorNames[key] = String(describing: type)
            }
        case .ignored:
            totals.calls += 1
            totals.ignored += 1
            if token.isProbe && token.version == version && state == .halfOpen { probesInFlight -= 1 }
            return nil
        }
        totals.calls += 1
        if isSlow { totals.slow += 1 }
        guard token.version == version else { return nil }

        switch state {
        case .closed, .metricsOnly:
            window.record(failure: isFailure, slow: isSlow, now: now)
            consecutiveFailures = isFailure ? consecutiveFailures + 1 : 0
            // The baseline learns the call after the rules have judged it against what it knew before.
            defer { learnBaseline(calls: 1, failures: isFailure ? 1 : 0, now: now) }
            // Only a failure can complete a streak; the ratio rules need the minimum throughput first.
            guard state == .closed, isFailure || window.calls >= policy.minimumThroughput,
                let rule = brokenRule(streak: consecutiveFailures)
            else { return nil }
            return trip(reason: rule.description, now: now)
        case .halfOpen where token.isProbe:
            probesInFlight -= 1
            if isFailure {
                return trip(reason: "probe failed (\(errorName(of: outcome)))", now: now)
            }
            probeSuccesses += 1
            guard probeSuccesses >= policy.successThreshold else { return nil }
            return transition(
                to: Self.baseState(of: policy.mode),
                reason: "\(probeSuccesses) probe success\(probeSuccesses == 1 ? "" : "es") ≥ \(policy.successThreshold)", now: now)
        default:
            return nil
        }
    }

    /// Records a batch: outcomes of calls admitted under one version, sent together as counts (the distributed
    /// adapter's unit of writing, which `lua/breaker.lua` applies by the same rule). The window takes them in the
    /// order successes, slow successes, failures, slow failures (a count window keeps only its last `size`); the
    /// streak follows the batch's own failure runs; the trip rules are checked once, after the whole batch. A
    /// batch of one outcome has the effect of ``record(_:token:now:)``.
    package mutating func record(_ batch: OutcomeBatch, now: Int64) -> BreakerTransition? {
        let successes = batch.successes + batch.slowSuccesses
        let failures = batch.failures + batch.slowFailures
        totals.calls += successes + failures + batch.ignored
        totals.successes += successes
        totals.failures += failures
        totals.slow += batch.slowSuccesses + batch.slowFailures
        totals.ignored += batch.ignored
        guard batch.version == version else { return nil }
        if batch.isProbe {
            guard state == .halfOpen else { return nil }
            probesInFlight = max(0, probesInFlight - batch.ignored - successes - failures)
            if failures > 0 { return trip(reason: "probe failed (\(batch.firstError ?? "Error"))", now: now) }
            guard successes > 0 else { return nil }
            probeSuccesses += successes
            guard probeSuccesses >= policy.successThreshold else { return nil }
            return transition(
                to: Self.baseState(of: policy.mode),
                reason: "\(probeSuccesses) probe success\(probeSuccesses == 1 ? "" : "es") ≥ \(policy.successThreshold)", now: now)
        }
        guard state == .closed || state == .metricsOnly, successes + failures > 0 else { return nil }
        window.record(count: batch.successes, failure: false, slow: false, now: now)
        window.record(count: batch.slowSuccesses, failure: false, slow: true, now: now)
        window.record(count: batch.failures, failure: true, slow: false, now: now)
        window.record(count: batch.slowFailures, failure: true, slow: true, now: now)
        defer { learnBaseline(calls: successes + failures, failures: failures, now: now) }
        let peak: Int
        if successes > 0 {
            peak = max(consecutiveFailures + batch.leadingFailures, batch.longestFailureRun)
            consecutiveFailures = batch.trailingFailures
        } else {
            consecutiveFailures += failures
            peak = consecutiveFailures
        }
        guard state == .closed, let rule = brokenRule(streak: peak) else { return nil }
        return trip(reason: rule.description, now: now)
    }

    /// The first trip rule the window and `streak` break (``TripRule``); `nil` when none does.
    private func brokenRule(streak: Int) -> TripRule? {
        TripRule.broken(
            calls: window.calls, failures: window.failures, slow: window.slow, streak: streak,
            consecutiveFailureThreshold: policy.consecutiveFailureThreshold, failureRateThreshold: failureRateThresholdInForce,
            slowCallRateThreshold: policy.slowCallRateThreshold, minimumThroughput: policy.minimumThroughput)
    }

    /// The failure-ratio threshold in force: relative to the baseline once it has learned enough, else the fixed one.
    public var failureRateThresholdInForce: Double? {
        guard let relative = policy.relativeFailureRate else { return policy.failureRateThreshold }
        return relative.threshold(baselineCalls: baseline.calls, baselineFailures: baseline.failures, fixed: policy.failureRateThreshold)
    }

    /// Adds calls recorded while closed (or metrics-only) to the baseline, after decaying it to `now`.
    private mutating func learnBaseline(calls: Int, failures: Int, now: Int64) {
        guard let relative = policy.relativeFailureRate else { return }
        let keep = exp(-Double(max(0, now - baseline.at)) / Double(relative.horizon.nanoseconds))
        baseline = (baseline.calls * keep + Double(calls), baseline.failures * keep + Double(failures), max(baseline.at, now))
    }

    /// Forgets the baseline (an operator's `reset --baseline`).
    public mutating func resetBaseline() { baseline = (0, 0, 0) }

    // MARK: - Manual control

    /// Forces the breaker open until ``reset(now:)``, or until `until` (ns since the epoch) when given: then it
    /// returns to the mode's base state by itself, as a reset does. Rejections carry `reason`. Works from every state.
    public mutating func isolate(reason: String, until: Int64? = nil, now: Int64) -> BreakerTransition {
        isolationReason = reason
        let change = transition(to: .isolated, reason: "isolated: \(reason)", now: now)
        if let until { openUntil = max(now, until) }
        return change
    }

    /// Returns to the mode's base state (closed, unless metrics-only or disabled) with an empty window,
    /// no streak and attempt 0. Works from every state.
    public mutating func reset(now: Int64) -> BreakerTransition {
        transition(to: Self.baseState(of: policy.mode), reason: "reset", now: now)
    }

    /// Moves to half-open at once, with every probe permit free. Works from every state.
    public mutating func forceHalfOpen(now: Int64) -> BreakerTransition {
        transition(to: .halfOpen, reason: "forced half-open", now: now)
    }

    /// Takes up where a shared breaker was known to be (the distributed adapter's in-process fallback, when Redis
    /// stops answering): open until `openUntil` (then half-open, with this process's own probes), half-open, or
    /// isolated with `isolationReason`; any other state leaves this one as it is. Nothing is reported: the breaker
    /// did not change, only who decides for it.
    package mutating func takeUp(_ shared: BreakerState, openUntil: Int64, attempt: Int, isolationReason: String?, reason: String, now: Int64) {
        switch shared {
        case .open:
            _ = transition(to: .open, reason: reason, now: now)
            self.attempt = max(1, attempt)
            self.openUntil = openUntil
        case .halfOpen:
            _ = transition(to: .halfOpen, reason: reason, now: now)
            self.attempt = max(1, attempt)
        case .isolated:
            _ = isolate(reason: isolationReason ?? reason, until: openUntil > 0 ? openUntil : nil, now: now)
        case .closed, .metricsOnly, .disabled:
            break
        }
    }

    // MARK: - Reading

    /// Everything known at `now`, after applying due time-based transitions (returned too).
    public mutating func snapshot(now: Int64) -> (BreakerSnapshot, BreakerTransition?) {
        let transition = advance(now: now)
        window.expire(now: now)
        var errors: [String: Int] = [:]
        for (key, count) in errorCounts { errors[errorNames[key] ?? "Error", default: 0] += count }
        let snapshot = BreakerSnapshot(
            name: name, state: state, version: version, timeInState: .nanoseconds(now - since), windowCalls: window.calls,
            windowFailures: window.failures, windowSlowCalls: window.slow, consecutiveFailures: consecutiveFailures,
            errorCounts: errors, totals: totals, timeUntilProbe: state == .open ? .nanoseconds(max(0, openUntil - now)) : nil,
            isolationReason: state == .isolated ? isolationReason : nil, attempt: attempt, probesInFlight: probesInFlight,
            probeSuccesses: probeSuccesses, lastReason: reason, recentTransitions: transitions(since: now - BreakerHealth.flappingPeriod.nanoseconds),
            windowThrottled: window.throttled(at: now),
            failureBaseline: baseline.calls > 0 ? baseline.failures / baseline.calls : nil,
            baselineCalls: baseline.calls, failureRateThresholdInForce: failureRateThresholdInForce,
            isolationEndsIn: state == .isolated && openUntil > 0 ? .nanoseconds(max(0, openUntil - now)) : nil,
            health: BreakerHealth(policy: policy))
        return (snapshot, transition)
    }

    /// How many transitions happened at `start` or later.
    private func transitions(since start: Int64) -> Int {
        recentTransitions.reduce(0) { $0 + ($1.at.nanoseconds >= start ? 1 : 0) }
    }

    /// The last ``timelineCapacity`` transitions, oldest first.
    public var timeline: [BreakerTransition] {
        Array(recentTransitions[oldestTransition...] + recentTransitions[..<oldestTransition])
    }

    // MARK: - Transitions

    private mutating func trip(reason: String, now: Int64) -> BreakerTransition {
        attempt += 1
        openUntil = now + policy.breakDuration.duration(forAttempt: attempt).nanoseconds
        return transition(to: .open, reason: reason, now: now)
    }

    private mutating func transition(to next: BreakerState, reason: String, now: Int64) -> BreakerTransition {
        let change = BreakerTransition(from: state, to: next, reason: reason, version: version + 1, at: .nanoseconds(now))
        version += 1
        state = next
        since = now
        self.reason = reason
        probesInFlight = 0
        probeSuccesses = 0
        consecutiveFailures = 0
        window.clear()
        switch next {
        case .open: break
        case .isolated, .halfOpen: openUntil = 0
        case .closed, .metricsOnly, .disabled:
            attempt = 0
            openUntil = 0
            isolationReason = nil
        }
        if next != .isolated { isolationReason = nil }
        if recentTransitions.count < Self.timelineCapacity {
            recentTransitions.append(change)
        } else {
            recentTransitions[oldestTransition] = change
            oldestTransition = (oldestTransition + 1) % Self.timelineCapacity
        }
        return change
    }

    private func errorName(of outcome: CallOutcome) -> String {
        if case .failure(let type) = outcome { return errorNames[ObjectIdentifier(type)] ?? String(describing: type) }
        return "ignored"
    }
}
