/// How a breaker decides: when it trips, how long it stays open, how it probes, which outcomes count.
///
/// Build one and call ``validated()`` (the registry does it for you): a bad value throws ``FuseboxError`` with
/// code ``FuseboxError/Code/invalidPolicy`` naming the field and its allowed range. Every field has a default;
/// `Docs/semantics.md` gives the reason for each.
///
/// The *state rules* (everything but ``classification`` and ``callTimeout``) are shared by every handle of a
/// breaker and, with the distributed adapter, by every instance; ``classification`` and ``callTimeout`` belong
/// to the handle that was asked for with this policy.
public struct BreakerPolicy: Sendable {
    // MARK: Trip rules (any of them trips the breaker)

    /// Trip when failures / calls ≥ this ratio, once ``minimumThroughput`` calls are in the window.
    /// `nil` turns the rule off. Range 0 < R ≤ 1. Default 0.5.
    public var failureRateThreshold: Double? = 0.5
    /// Trip after this many failures in a row (any success resets the streak). `nil` (default) turns it off.
    /// Range ≥ 1.
    public var consecutiveFailureThreshold: Int? = nil
    /// Trip when slow calls / calls ≥ this ratio, once ``minimumThroughput`` calls are in the window.
    /// `nil` (default) turns it off. Range 0 < R ≤ 1.
    public var slowCallRateThreshold: Double? = nil
    /// A call that takes longer than this is slow. Default 5 s. Range > 0.
    public var slowCallDuration: Duration = .seconds(5)
    /// The ratio rules wait until the window holds at least this many calls. Default 10. Range ≥ 1.
    public var minimumThroughput: Int = 10
    /// Which recent calls the ratio rules look at. Default: the last 10 s, in 10 buckets of 1 s.
    public var window: Window = .time(samplingDuration: .seconds(10), buckets: 10)

    // MARK: Open and half-open

    /// How long the breaker stays open before it lets probes through. Default: a fixed 30 s.
    public var breakDuration: BreakDuration = .fixed(.seconds(30))
    /// Probes allowed in flight at once while half-open. Default 1. Range 1…10,000.
    public var permittedCallsInHalfOpen: Int = 1
    /// Probe successes needed to close. Default 1. Range 1…10,000.
    public var successThreshold: Int = 1
    /// A half-open breaker that has not closed within this time reopens (it covers probes whose outcome is
    /// never reported, e.g. a process that died holding a permit). Default 60 s. Range > 0.
    public var maxHalfOpenDuration: Duration = .seconds(60)

    /// Trip only when the failures in the window come from at least this many distinct instances (the
    /// `distributed` adapter, time windows only; one process is one instance to the `local` adapter). `nil`
    /// (default): the adapter's ``minimumInstances`` option decides. Range 1…1,000.
    public var minimumInstances: Int? = nil

    /// Makes the failure-ratio rule follow the dependency's own long-run failure rate (its *baseline*): trip at
    /// `min(1, max(floor, factor × baseline))` instead of ``failureRateThreshold``, once the baseline has learned
    /// from ``RelativeFailureRate/warmupCalls`` calls (until then ``failureRateThreshold`` applies, when set). The
    /// baseline is an exponentially weighted failure rate over ``RelativeFailureRate/horizon``, learned from the
    /// calls recorded while closed (never while open or half-open); with the distributed adapter, the fleet's,
    /// kept in Redis with the breaker. `nil` (default): a fixed threshold.
    public var relativeFailureRate: RelativeFailureRate? = nil

    // MARK: Adaptive throttling

    /// Sheds load before, and more gently than, a trip: while closed, a call is rejected with probability
    /// `max(0, (requests − multiplier × accepts) / (requests + 1))` (client-side adaptive throttling, as in Google's
    /// SRE book, "Handling Overload"), where requests are the window's calls plus the calls throttled in it and
    /// accepts its successes; with the distributed adapter, the fleet's, from the shared window. Rejections throw
    /// ``FuseboxError/Code/throttled``. The trip rules still apply. `nil` (default): off. Time windows only.
    public var adaptiveThrottling: AdaptiveThrottling? = nil

    // MARK: Mode

    /// Normal, metrics-only, disabled or shadow. Default normal.
    public var mode: Mode = .normal

    // MARK: Per handle

    /// Which errors and results are failures. Default: every error but `CancellationError` is a failure.
    public var classification: Classification = .init()
    /// A call running longer than this is cancelled and counts as a failure. `nil` (default): no limit.
    public var callTimeout: Duration? = nil

    /// The default policy.
    public init() {}

    /// A failure-ratio threshold relative to the dependency's baseline (``BreakerPolicy/relativeFailureRate``).
    public struct RelativeFailureRate: Sendable, Hashable {
        /// Trip at this many times the baseline. Default 4. Range > 0 … 1,000.
        public var factor: Double
        /// Never trip below this ratio. Default 0.02. Range 0 < R ≤ 1.
        public var floor: Double
        /// The baseline's time constant: outcomes this long ago weigh 1/e of today's. Default 1 hour. Range ≥ 1 s.
        public var horizon: Duration
        /// Calls the baseline must have learned from (decayed with it) before it applies. Default 100. Range ≥ 1.
        public var warmupCalls: Int

        /// A relative threshold; every argument has a default.
        public init(factor: Double = 4, floor: Double = 0.02, horizon: Duration = .seconds(3600), warmupCalls: Int = 100) {
            self.factor = factor
            self.floor = floor
            self.horizon = horizon
            self.warmupCalls = warmupCalls
        }

        /// The threshold in force for a baseline of `failures` in `calls` (both decayed), or `fixed` while the
        /// baseline has not learned from ``warmupCalls`` calls.
        public func threshold(baselineCalls calls: Double, baselineFailures failures: Double, fixed: Double?) -> Double? {
            guard calls >= Double(warmupCalls), calls > 0 else { return fixed }
            return Swift.min(1, Swift.max(floor, factor * failures / calls))
        }
    }

    /// Client-side adaptive throttling (``BreakerPolicy/adaptiveThrottling``).
    public struct AdaptiveThrottling: Sendable, Hashable {
        /// K: how many requests per accepted one the breaker lets through before it sheds. 2 (the SRE book's
        /// default) spends up to one rejected request per accepted one on the dependency; lower sheds sooner. Range
        /// 1…100.
        public var multiplier: Double

        /// Throttling with multiplier `multiplier` (default 2).
        public init(multiplier: Double = 2) { self.multiplier = multiplier }

        /// The probability of rejecting the next call, given the window's figures: `max(0, (requests − K ×
        /// accepts) / (requests + 1))` with requests = calls + throttled, accepts = calls − failures; 0 while the
        /// window holds no failure (the dependency accepts all it is sent).
        public func rejectionProbability(calls: Int, failures: Int, throttled: Double) -> Double {
            guard failures > 0 else { return 0 }
            let requests = Double(calls) + max(0, throttled)
            let accepts = Double(max(0, calls - failures))
            return max(0, (requests - multiplier * accepts) / (requests + 1))
        }
    }

    /// The sliding window the ratio rules read.
    public enum Window: Sendable, Hashable, Codable {
        /// The calls of the last `samplingDuration`, counted in `buckets` equal buckets: a whole bucket ages out
        /// at a time. Range: samplingDuration ≥ 1 ms, buckets 1…1,000, samplingDuration / buckets ≥ 1 ms.
        case time(samplingDuration: Duration, buckets: Int)
        /// The last `size` calls. Range 1…100,000.
        case count(Int)
    }

    /// How long the breaker stays open; `attempt` counts consecutive opens (1 for the first) and resets on close.
    public enum BreakDuration: Sendable, CustomStringConvertible {
        /// Always `duration`.
        case fixed(Duration)
        /// `base × factor^(attempt−1)`, at most `maximum`.
        case exponential(base: Duration, factor: Double, maximum: Duration)
        /// `base + increment × (attempt−1)`, at most `maximum`.
        case linear(base: Duration, increment: Duration, maximum: Duration)
        /// 30 s for the 1st and 2nd consecutive open, 60 s for the 3rd to 5th, 120 s after.
        case adaptive
        /// Any function of the attempt. `id` names it: two policies with the same `id` are the same rule.
        case custom(id: String, @Sendable (Int) -> Duration)

        /// The break for the `attempt`-th consecutive open (values below 1 count as 1).
        public func duration(forAttempt attempt: Int) -> Duration {
            let attempt = max(1, attempt)
            switch self {
            case .fixed(let duration):
                return duration
            case .exponential(let base, let factor, let maximum):
                let scaled = base.seconds * pow(factor, Double(attempt - 1))
                return scaled.isFinite && scaled < maximum.seconds ? .seconds(scaled) : maximum
            case .linear(let base, let increment, let maximum):
                let steps = Int64(min(attempt - 1, 1_000_000))
                let total = base + increment * steps
                return total < maximum ? total : maximum
            case .adaptive:
                switch attempt {
                case 1...2: return .seconds(30)
                case 3...5: return .seconds(60)
                default: return .seconds(120)
                }
            case .custom(_, let function):
                return min(max(.zero, function(attempt)), BreakerPolicy.longestDuration)
            }
        }

        /// The break rule as written in code, e.g. `fixed(30 s)`.
        public var description: String {
            switch self {
            case .fixed(let duration): "fixed(\(duration))"
            case .exponential(let base, let factor, let maximum): "exponential(base: \(base), factor: \(factor), maximum: \(maximum))"
            case .linear(let base, let increment, let maximum): "linear(base: \(base), increment: \(increment), maximum: \(maximum))"
            case .adaptive: "adaptive"
            case .custom(let id, _): "custom(\(id))"
            }
        }
    }

    /// What the breaker does with calls.
    public enum Mode: String, Sendable, Hashable, Codable, CaseIterable {
        /// Trips, rejects, probes.
        case normal
        /// Records outcomes and keeps figures, never trips and never rejects (to try a policy in production).
        case metricsOnly = "metrics_only"
        /// Admits every call and records nothing.
        case disabled
        /// Trips, probes and closes exactly as `normal` (the same window, the same transitions) but never rejects:
        /// a call the breaker would have rejected runs, unrecorded, and counts in ``BreakerTotals/wouldReject``.
        /// Set fleet-wide by an override (`fusebox policy set NAME --mode shadow`) to try a policy on live traffic.
        case shadow
    }

    /// Which outcomes are failures, which are ignored.
    public struct Classification: Sendable {
        /// What to make of an error.
        public enum Verdict: Sendable, Hashable {
            /// Counts as a failure.
            case failure
            /// Counts neither way; a half-open permit is given back.
            case ignored
        }

        /// Classifies an error thrown by the call. Default: `CancellationError` is ignored, the rest are failures.
        public var classifyError: @Sendable (any Error) -> Verdict {
            didSet { isDefault = false }
        }
        /// `true` for the default rule, which permits apply without boxing the error.
        private(set) var isDefault: Bool

        /// The default classification: `CancellationError` is ignored, every other error is a failure.
        public init() {
            self.classifyError = Classification.defaultVerdict
            self.isDefault = true
        }

        /// A classification by `classifyError`.
        public init(classifyError: @escaping @Sendable (any Error) -> Verdict) {
            self.classifyError = classifyError
            self.isDefault = false
        }

        /// Treats errors of the given types as ignored, and every other error but `CancellationError` as a failure.
        public static func ignoring(_ types: [any Error.Type]) -> Classification {
            let identifiers = Set(types.map { ObjectIdentifier($0) })
            return Classification { error in
                identifiers.contains(ObjectIdentifier(type(of: error))) ? .ignored : defaultVerdict(error)
            }
        }

        /// Counts only errors for which `isFailure` is true as failures; others (and `CancellationError`) are ignored.
        public static func failures(where isFailure: @escaping @Sendable (any Error) -> Bool) -> Classification {
            Classification { error in
                error is CancellationError ? .ignored : (isFailure(error) ? .failure : .ignored)
            }
        }

        /// `CancellationError` is ignored; every other error is a failure.
        @Sendable public static func defaultVerdict(_ error: any Error) -> Verdict {
            error is CancellationError ? .ignored : .failure
        }
    }
}

// MARK: - Validation

extension BreakerPolicy {
    /// The longest any duration of a policy may be: ten years. Longer ones mean nothing to a breaker, and the
    /// arithmetic on durations (backoff steps, milliseconds for Redis) stays far from overflow.
    public static let longestDuration = Duration.seconds(10 * 365 * 86_400)

    /// The policy, checked: throws ``FuseboxError/Code/invalidPolicy`` naming the first bad field and its range.
    public func validated() throws(FuseboxError) -> BreakerPolicy {
        func fail(_ field: String, _ value: Any, _ range: String) -> FuseboxError {
            FuseboxError(code: .invalidPolicy, message: "policy field '\(field)' is \(value); allowed: \(range)")
        }
        let longest = Self.longestDuration
        func tooLong(_ field: String, _ duration: Duration) -> FuseboxError {
            fail(field, duration, "at most 10 years (\(longest))")
        }
        var durations: [(String, Duration)] = [("slowCallDuration", slowCallDuration), ("maxHalfOpenDuration", maxHalfOpenDuration)]
        if let callTimeout { durations.append(("callTimeout", callTimeout)) }
        if case .time(let sampling, _) = window { durations.append(("window.samplingDuration", sampling)) }
        switch breakDuration {
        case .fixed(let duration): durations.append(("breakDuration", duration))
        case .exponential(let base, _, let maximum): durations += [("breakDuration.base", base), ("breakDuration.maximum", maximum)]
        case .linear(let base, let increment, let maximum):
            durations += [("breakDuration.base", base), ("breakDuration.increment", increment), ("breakDuration.maximum", maximum)]
        case .adaptive, .custom: break
        }
        if let (field, duration) = durations.first(where: { $0.1 > longest }) { throw tooLong(field, duration) }

        if let ratio = failureRateThreshold, !(ratio > 0 && ratio <= 1) {
            throw fail("failureRateThreshold", ratio, "0 < value ≤ 1, or nil to turn the rule off")
        }
        if let ratio = slowCallRateThreshold, !(ratio > 0 && ratio <= 1) {
            throw fail("slowCallRateThreshold", ratio, "0 < value ≤ 1, or nil to turn the rule off")
        }
        if let count = consecutiveFailureThreshold, !(1...1_000_000).contains(count) {
            throw fail("consecutiveFailureThreshold", count, "1…1,000,000, or nil to turn the rule off")
        }
        if slowCallDuration <= .zero { throw fail("slowCallDuration", slowCallDuration, "> 0") }
        if !(1...1_000_000).contains(minimumThroughput) { throw fail("minimumThroughput", minimumThroughput, "1…1,000,000") }
        switch window {
        case .time(let sampling, let buckets):
            if !(1...1000).contains(buckets) { throw fail("window.buckets", buckets, "1…1,000") }
            if sampling < .milliseconds(1) { throw fail("window.samplingDuration", sampling, "≥ 1 ms") }
            if sampling / buckets < .milliseconds(1) {
                throw fail("window.samplingDuration / window.buckets", sampling / buckets, "≥ 1 ms per bucket")
            }
        case .count(let size):
            if !(1...100_000).contains(size) { throw fail("window.size", size, "1…100,000") }
        }
        if let throttling = adaptiveThrottling {
            if !(throttling.multiplier >= 1 && throttling.multiplier <= 100) {
                throw fail("adaptiveThrottling.multiplier", throttling.multiplier, "1…100")
            }
            if case .count = window {
                throw fail("adaptiveThrottling", "set with a count window", "a time window (throttling counts requests over time)")
            }
        }
        if let relative = relativeFailureRate {
            if !(relative.factor > 0 && relative.factor <= 1000) { throw fail("relativeFailureRate.factor", relative.factor, "0 < value ≤ 1,000") }
            if !(relative.floor > 0 && relative.floor <= 1) { throw fail("relativeFailureRate.floor", relative.floor, "0 < value ≤ 1") }
            if relative.horizon < .seconds(1) || relative.horizon > longest {
                throw fail("relativeFailureRate.horizon", relative.horizon, "1 s … 10 years")
            }
            if !(1...1_000_000_000).contains(relative.warmupCalls) {
                throw fail("relativeFailureRate.warmupCalls", relative.warmupCalls, "1…1,000,000,000")
            }
        }
        if failureRateThreshold == nil && slowCallRateThreshold == nil && consecutiveFailureThreshold == nil && (mode == .normal || mode == .shadow)
            && adaptiveThrottling == nil && relativeFailureRate == nil
        {
            throw fail("failureRateThreshold, slowCallRateThreshold and consecutiveFailureThreshold", "nil", "at least one trip rule (or adaptiveThrottling)")
        }
        switch breakDuration {
        case .fixed(let duration):
            if duration <= .zero { throw fail("breakDuration", duration, "> 0") }
        case .exponential(let base, let factor, let maximum):
            if base <= .zero { throw fail("breakDuration.base", base, "> 0") }
            if !(factor >= 1 && factor.isFinite) { throw fail("breakDuration.factor", factor, "≥ 1") }
            if maximum < base { throw fail("breakDuration.maximum", maximum, "≥ base (\(base))") }
        case .linear(let base, let increment, let maximum):
            if base <= .zero { throw fail("breakDuration.base", base, "> 0") }
            if increment < .zero { throw fail("breakDuration.increment", increment, "≥ 0") }
            if maximum < base { throw fail("breakDuration.maximum", maximum, "≥ base (\(base))") }
        case .adaptive:
            break
        case .custom(let id, _):
            if id.isEmpty { throw fail("breakDuration.id", "empty", "a non-empty name for the function") }
        }
        if let instances = minimumInstances, !(1...1000).contains(instances) {
            throw fail("minimumInstances", instances, "1…1,000, or nil for the adapter's option")
        }
        if !(1...10_000).contains(permittedCallsInHalfOpen) {
            throw fail("permittedCallsInHalfOpen", permittedCallsInHalfOpen, "1…10,000")
        }
        if !(1...10_000).contains(successThreshold) { throw fail("successThreshold", successThreshold, "1…10,000") }
        if maxHalfOpenDuration <= .zero { throw fail("maxHalfOpenDuration", maxHalfOpenDuration, "> 0") }
        if let timeout = callTimeout, timeout <= .zero { throw fail("callTimeout", timeout, "> 0, or nil for no limit") }
        return self
    }

    /// `true` when `other` has the same state rules (every field but ``classification`` and ``callTimeout``).
    /// A custom break duration is compared by its `id`.
    public func hasSameStateRules(as other: BreakerPolicy) -> Bool {
        stateRulesDescription == other.stateRulesDescription
    }

    /// The state rules as one line, e.g. for logs and for the `policy` field in Redis.
    public var stateRulesDescription: String {
        var parts: [String] = []
        parts.append("failureRateThreshold=\(failureRateThreshold.map { "\($0)" } ?? "off")")
        parts.append("consecutiveFailureThreshold=\(consecutiveFailureThreshold.map { "\($0)" } ?? "off")")
        parts.append("slowCallRateThreshold=\(slowCallRateThreshold.map { "\($0)" } ?? "off")")
        parts.append("slowCallDuration=\(slowCallDuration)")
        parts.append("minimumThroughput=\(minimumThroughput)")
        switch window {
        case .time(let sampling, let buckets): parts.append("window=time(\(sampling), \(buckets) buckets)")
        case .count(let size): parts.append("window=count(\(size))")
        }
        parts.append("breakDuration=\(breakDuration)")
        parts.append("permittedCallsInHalfOpen=\(permittedCallsInHalfOpen)")
        parts.append("successThreshold=\(successThreshold)")
        parts.append("maxHalfOpenDuration=\(maxHalfOpenDuration)")
        parts.append("mode=\(mode.rawValue)")
        if let minimumInstances { parts.append("minimumInstances=\(minimumInstances)") }
        if let adaptiveThrottling { parts.append("adaptiveThrottling=\(adaptiveThrottling.multiplier)") }
        if let relative = relativeFailureRate {
            parts.append("relativeFailureRate=\(relative.factor)x(floor \(relative.floor), horizon \(relative.horizon), warmup \(relative.warmupCalls))")
        }
        return parts.joined(separator: " ")
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
