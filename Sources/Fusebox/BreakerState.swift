/// The state of a breaker.
public enum BreakerState: String, Sendable, Hashable, Codable, CaseIterable, CustomStringConvertible {
    /// Calls pass; outcomes are counted; a trip rule may open it.
    case closed
    /// Calls are rejected until the break ends.
    case open
    /// A limited number of probe calls pass; their outcomes close or reopen it.
    case halfOpen = "half_open"
    /// Forced open by an operator until reset; rejections carry the reason.
    case isolated
    /// Mode `disabled`: every call passes, nothing is recorded.
    case disabled
    /// Mode `metricsOnly`: every call passes, outcomes are recorded, it never trips.
    case metricsOnly = "metrics_only"

    /// `CLOSED`, `OPEN`, `HALF_OPEN`, … as in logs and the CLI.
    public var label: String { rawValue.uppercased() }

    /// The value of the state gauge: 0 closed (and the modes that never reject), 1 half-open, 2 open or isolated.
    public var gaugeValue: Int {
        switch self {
        case .closed, .disabled, .metricsOnly: 0
        case .halfOpen: 1
        case .open, .isolated: 2
        }
    }

    /// The state as logs and tables show it: `CLOSED`, `OPEN`, `HALF_OPEN`, ….
    public var description: String { label }
}

/// One state change.
public struct BreakerTransition: Sendable, Hashable, CustomStringConvertible {
    /// The state before.
    public var from: BreakerState
    /// The state after.
    public var to: BreakerState
    /// Why, e.g. `failure ratio 0.62 ≥ 0.50 over 13 calls` or `isolated: maintenance`.
    public var reason: String
    /// The breaker's version after the change (+1 on every transition).
    public var version: Int
    /// When, as time since the backend's epoch (the local adapter) or since the Unix epoch (distributed).
    public var at: Duration

    /// Makes a transition.
    public init(from: BreakerState, to: BreakerState, reason: String, version: Int, at: Duration) {
        self.from = from
        self.to = to
        self.reason = reason
        self.version = version
        self.at = at
    }

    /// `FROM → TO (reason)`, as the transition is logged.
    public var description: String { "\(from.label) → \(to.label) (\(reason))" }
}

/// Lifetime counts of a breaker.
public struct BreakerTotals: Sendable, Hashable, Codable {
    /// Calls whose outcome was recorded: successes + failures + ignored.
    public var calls = 0
    /// Successful calls (slow or not).
    public var successes = 0
    /// Failed calls.
    public var failures = 0
    /// Calls whose outcome was ignored.
    public var ignored = 0
    /// Calls rejected without running.
    public var rejected = 0
    /// Calls slower than the policy's `slowCallDuration` (successes and failures).
    public var slow = 0
    /// Calls that mode ``BreakerPolicy/Mode/shadow`` let run although the breaker's decision was to reject them
    /// (their outcomes are not recorded, as a rejected call's would not be).
    public var wouldReject = 0

    /// All zero.
    public init() {}

    private enum CodingKeys: String, CodingKey { case calls, successes, failures, ignored, rejected, slow, wouldReject }

    /// Reads what `encode(to:)` wrote; `wouldReject` may be missing (written before shadow mode existed).
    public init(from decoder: any Decoder) throws {
        let values = try decoder.container(keyedBy: CodingKeys.self)
        calls = try values.decode(Int.self, forKey: .calls)
        successes = try values.decode(Int.self, forKey: .successes)
        failures = try values.decode(Int.self, forKey: .failures)
        ignored = try values.decode(Int.self, forKey: .ignored)
        rejected = try values.decode(Int.self, forKey: .rejected)
        slow = try values.decode(Int.self, forKey: .slow)
        wouldReject = try values.decodeIfPresent(Int.self, forKey: .wouldReject) ?? 0
    }
}

/// Everything known about a breaker at one moment.
public struct BreakerSnapshot: Sendable, Hashable {
    /// The breaker's name.
    public var name: String
    /// Its state.
    public var state: BreakerState
    /// +1 on every transition.
    public var version: Int
    /// How long it has been in this state.
    public var timeInState: Duration
    /// Calls in the sliding window.
    public var windowCalls: Int
    /// Failures in the sliding window.
    public var windowFailures: Int
    /// Slow calls in the sliding window.
    public var windowSlowCalls: Int
    /// Failures / calls in the window (0 when empty).
    public var failureRate: Double
    /// Slow calls / calls in the window (0 when empty).
    public var slowCallRate: Double
    /// The current failure streak.
    public var consecutiveFailures: Int
    /// Failures by error type name since the breaker was made (not cleared by transitions or reset).
    public var errorCounts: [String: Int]
    /// Lifetime counts.
    public var totals: BreakerTotals
    /// While open: the time until probes are let through; otherwise `nil`.
    public var timeUntilProbe: Duration?
    /// While isolated: the reason given.
    public var isolationReason: String?
    /// While isolated for a time (``CircuitBreaker/isolate(reason:for:)``): the time until the isolation ends by
    /// itself; `nil` otherwise.
    public var isolationEndsIn: Duration?
    /// Consecutive opens so far (0 once closed).
    public var attempt: Int
    /// Half-open probe permits currently out.
    public var probesInFlight: Int
    /// Half-open probe successes so far.
    public var probeSuccesses: Int
    /// Why the last transition happened.
    public var lastReason: String
    /// Calls shed by adaptive throttling in the window: a count decaying with the window's sampling duration as
    /// its time constant (0 without throttling).
    public var windowThrottled: Double
    /// The share of calls adaptive throttling sheds now (``BreakerPolicy/adaptiveThrottling``; 0 without it).
    public var throttleProbability: Double
    /// The dependency's long-run failure rate as the relative threshold learned it (``BreakerPolicy/relativeFailureRate``);
    /// `nil` before it has learned anything, or without a relative threshold.
    public var failureBaseline: Double?
    /// The calls the baseline has learned from, decayed with it.
    public var baselineCalls: Double
    /// The failure-ratio threshold the breaker trips at now: relative to the baseline once it has learned enough,
    /// else ``BreakerPolicy/failureRateThreshold``; `nil` when no failure-ratio rule applies.
    public var failureRateThresholdInForce: Double?
    /// Transitions in the last ten minutes (``BreakerHealth/flappingPeriod``); the distributed adapter counts up to 30.
    public var recentTransitions: Int
    /// This instance decides the breaker's calls without Redis (the store-down policy's fallback, an admission past
    /// its budget, or corrupt keys); always `false` for the local adapter and for reads made by operators' tools.
    public var isOnStoreDownFallback: Bool
    /// 0–100: how healthy the breaker looks, by ``BreakerHealth``'s rule against the policy in force when the
    /// snapshot was taken.
    public var healthScore: Int

    /// Makes a snapshot; its ``healthScore`` is `health`'s score of it.
    public init(
        name: String, state: BreakerState, version: Int, timeInState: Duration, windowCalls: Int, windowFailures: Int,
        windowSlowCalls: Int, consecutiveFailures: Int, errorCounts: [String: Int], totals: BreakerTotals,
        timeUntilProbe: Duration?, isolationReason: String?, attempt: Int, probesInFlight: Int, probeSuccesses: Int,
        lastReason: String, recentTransitions: Int = 0, isOnStoreDownFallback: Bool = false, windowThrottled: Double = 0,
        failureBaseline: Double? = nil, baselineCalls: Double = 0, failureRateThresholdInForce: Double? = nil,
        isolationEndsIn: Duration? = nil, health: BreakerHealth = .unknownPolicy
    ) {
        self.name = name
        self.state = state
        self.version = version
        self.timeInState = timeInState
        self.windowCalls = windowCalls
        self.windowFailures = windowFailures
        self.windowSlowCalls = windowSlowCalls
        self.failureRate = windowCalls == 0 ? 0 : Double(windowFailures) / Double(windowCalls)
        self.slowCallRate = windowCalls == 0 ? 0 : Double(windowSlowCalls) / Double(windowCalls)
        self.consecutiveFailures = consecutiveFailures
        self.errorCounts = errorCounts
        self.totals = totals
        self.timeUntilProbe = timeUntilProbe
        self.isolationReason = isolationReason
        self.isolationEndsIn = isolationEndsIn
        self.attempt = attempt
        self.probesInFlight = probesInFlight
        self.probeSuccesses = probeSuccesses
        self.lastReason = lastReason
        self.recentTransitions = recentTransitions
        self.isOnStoreDownFallback = isOnStoreDownFallback
        self.windowThrottled = windowThrottled
        self.failureBaseline = failureBaseline
        self.baselineCalls = baselineCalls
        self.failureRateThresholdInForce = failureRateThresholdInForce
        self.throttleProbability = 0
        self.healthScore = 0
        rescore(against: health)
        // A snapshot the state machine made carries the threshold it judged with (not a recomputation of it).
        if let failureRateThresholdInForce { self.failureRateThresholdInForce = failureRateThresholdInForce }
        healthScore = health.score(of: self)
    }

    /// Works out ``throttleProbability`` and ``healthScore`` again against `health` (the limits of another
    /// policy, or after changing a field).
    public mutating func rescore(against health: BreakerHealth) {
        failureRateThresholdInForce = health.failureRateThresholdInForce(of: self)
        throttleProbability = health.throttleProbability(of: self)
        healthScore = health.score(of: self)
    }
}

/// What a breaker reports through ``BreakerBackend/events()``.
public enum BreakerEvent: Sendable, Hashable {
    /// The state changed.
    case stateChanged(BreakerTransition)
    /// A call was rejected in `state`.
    case callRejected(state: BreakerState)
    /// Mode ``BreakerPolicy/Mode/shadow``: the breaker rejected a call in `state`, and it ran anyway.
    case callWouldBeRejected(state: BreakerState)
    /// A call succeeded after `duration`.
    case success(duration: Duration)
    /// A call failed after `duration` with an error of type `errorType`.
    case failure(duration: Duration, errorType: String)
    /// A call's outcome was ignored.
    case ignored
}

/// The outcome of one admitted call, as reported to a backend.
public enum CallOutcome: Sendable {
    /// The call succeeded.
    case success
    /// The call failed with an error of this type (types are counted by name in ``BreakerSnapshot/errorCounts``).
    case failure(any Error.Type)
    /// The outcome counts neither way; a half-open permit is given back.
    case ignored
}
