/// How healthy one breaker looks, as a score from 0 (down) to 100 (nothing to worry about): one number for a
/// dashboard, an alert or a load balancer's weight, computed from a ``BreakerSnapshot`` and the limits of the
/// policy in force.
///
/// The rule (Docs/semantics.md, "Health score", has a table of cases):
/// ```
/// score = clamp(min(ceiling(state), 100 − 50·failurePressure − 25·slowPressure − 50·shedding − flapping − fallback), 0, 100)
/// ```
/// - **ceiling**: 100 closed, metrics-only or disabled; 50 half-open (only probes pass); 10 open; 0 isolated. The
///   states that reject calls score low whatever else holds, and an open breaker stays above an isolated one;
/// - **failurePressure** (0–1): the larger of the window's failure rate over `failureRateThreshold`, weighted by
///   how full the window is (calls / `minimumThroughput`, at most 1: three calls are weak evidence), and the
///   failure streak over `consecutiveFailureThreshold`. A rule that is off does not count;
/// - **slowPressure** (0–1): the slow-call rate over `slowCallRateThreshold`, weighted the same way;
/// - **shedding** (0–1): the share of calls the policy's adaptive throttling rejects now;
/// - **flapping**: 10 for each transition beyond 3 in the last 10 minutes, at most 30 (one trip and its recovery
///   is three transitions: closed → open → half-open → closed);
/// - **fallback**: 25 while this instance decides without Redis (store-down policy `local`, an admission past its
///   budget, or the breaker's keys corrupt).
///
/// With no policy known (a breaker isolated before any instance used it) the pressures count as 0.
public struct BreakerHealth: Sendable, Hashable {
    /// The limits the pressures are measured against: those of the policy in force.
    public var failureRateThreshold: Double?
    /// Trip after this many failures in a row (`nil`: rule off).
    public var consecutiveFailureThreshold: Int?
    /// Trip at this slow-call ratio (`nil`: rule off).
    public var slowCallRateThreshold: Double?
    /// The ratio rules apply from this many calls.
    public var minimumThroughput: Int
    /// The policy's adaptive throttling, if any: the share of calls it sheds costs points.
    public var adaptiveThrottling: BreakerPolicy.AdaptiveThrottling?
    /// The policy's relative failure threshold, if any: failure pressure is measured against the threshold in force.
    public var relativeFailureRate: BreakerPolicy.RelativeFailureRate?

    /// How far back transitions count as flapping.
    public static let flappingPeriod: Duration = .seconds(600)
    /// Transitions in ``flappingPeriod`` that cost nothing: one trip and its recovery.
    public static let usualTransitions = 3

    /// The limits of `policy`.
    public init(policy: BreakerPolicy) {
        failureRateThreshold = policy.failureRateThreshold
        consecutiveFailureThreshold = policy.consecutiveFailureThreshold
        slowCallRateThreshold = policy.slowCallRateThreshold
        minimumThroughput = policy.minimumThroughput
        adaptiveThrottling = policy.adaptiveThrottling
        relativeFailureRate = policy.relativeFailureRate
    }

    /// The failure-ratio threshold in force for the baseline `snapshot` shows.
    public func failureRateThresholdInForce(of snapshot: BreakerSnapshot) -> Double? {
        guard let relativeFailureRate else { return failureRateThreshold }
        return relativeFailureRate.threshold(
            baselineCalls: snapshot.baselineCalls, baselineFailures: (snapshot.failureBaseline ?? 0) * snapshot.baselineCalls,
            fixed: failureRateThreshold)
    }

    /// No limits known: only the state, flapping and the fallback count.
    public static let unknownPolicy = BreakerHealth(
        failureRateThreshold: nil, consecutiveFailureThreshold: nil, slowCallRateThreshold: nil, minimumThroughput: 1)

    /// These limits (a policy's, as an admin view holds them).
    public init(
        failureRateThreshold: Double?, consecutiveFailureThreshold: Int?, slowCallRateThreshold: Double?, minimumThroughput: Int,
        adaptiveThrottling: BreakerPolicy.AdaptiveThrottling? = nil
    ) {
        self.failureRateThreshold = failureRateThreshold
        self.consecutiveFailureThreshold = consecutiveFailureThreshold
        self.slowCallRateThreshold = slowCallRateThreshold
        self.minimumThroughput = minimumThroughput
        self.adaptiveThrottling = adaptiveThrottling
    }

    /// The share of calls adaptive throttling sheds in the state `snapshot` shows (0 without throttling, or
    /// unless closed).
    public func throttleProbability(of snapshot: BreakerSnapshot) -> Double {
        guard snapshot.state == .closed, let adaptiveThrottling else { return 0 }
        return adaptiveThrottling.rejectionProbability(
            calls: snapshot.windowCalls, failures: snapshot.windowFailures, throttled: snapshot.windowThrottled)
    }

    /// The highest score a breaker in `state` can have.
    public static func ceiling(of state: BreakerState) -> Int {
        switch state {
        case .closed, .metricsOnly, .disabled: 100
        case .halfOpen: 50
        case .open: 10
        case .isolated: 0
        }
    }

    /// The score of `snapshot` against these limits (its ``BreakerSnapshot/healthScore`` is this, for the policy
    /// that was in force when it was taken).
    public func score(of snapshot: BreakerSnapshot) -> Int { assess(snapshot).score }

    /// The score of `snapshot` and what made it, term by term.
    public func assess(_ snapshot: BreakerSnapshot) -> Assessment {
        let confidence = min(1, Double(snapshot.windowCalls) / Double(max(1, minimumThroughput)))
        var failurePressure = 0.0
        if let threshold = snapshot.failureRateThresholdInForce ?? failureRateThreshold, threshold > 0 {
            failurePressure = max(failurePressure, snapshot.failureRate / threshold * confidence)
        }
        if let threshold = consecutiveFailureThreshold, threshold > 0 {
            failurePressure = max(failurePressure, Double(snapshot.consecutiveFailures) / Double(threshold))
        }
        var slowPressure = 0.0
        if let threshold = slowCallRateThreshold, threshold > 0 {
            slowPressure = snapshot.slowCallRate / threshold * confidence
        }
        return Assessment(
            ceiling: Self.ceiling(of: snapshot.state), failurePressure: min(1, failurePressure), slowPressure: min(1, slowPressure),
            shedding: throttleProbability(of: snapshot),
            flapping: min(30, 10 * max(0, snapshot.recentTransitions - Self.usualTransitions)),
            fallback: snapshot.isOnStoreDownFallback ? 25 : 0)
    }

    /// The terms of one score.
    public struct Assessment: Sendable, Hashable {
        /// The state's ceiling (``BreakerHealth/ceiling(of:)``).
        public var ceiling: Int
        /// 0–1: how close the failure rules are to tripping; costs up to 50.
        public var failurePressure: Double
        /// 0–1: how close the slow-call rule is to tripping; costs up to 25.
        public var slowPressure: Double
        /// 0–1: the share of calls adaptive throttling sheds now; costs up to 50.
        public var shedding: Double
        /// Points lost to transitions in the last ten minutes (0–30).
        public var flapping: Int
        /// Points lost to deciding without Redis (0 or 25).
        public var fallback: Int

        /// The score: `clamp(min(ceiling, 100 − 50·failurePressure − 25·slowPressure − 50·shedding − flapping −
        /// fallback), 0, 100)`.
        public var score: Int {
            let raw = 100 - 50 * failurePressure - 25 * slowPressure - 50 * shedding - Double(flapping + fallback)
            return max(0, min(ceiling, Int(raw.rounded())))
        }
    }
}
