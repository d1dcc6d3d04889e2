#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// What the admin routes read and steer: the breakers of one process (`RegistryAdministration`, in FuseboxHTTP) or
/// of a whole Redis namespace, whichever instance made them (`RedisAdministration`, in FuseboxRedis). Here, in the
/// core, so that the HTTP surface needs no Redis client and the Redis administration no HTTP server.
///
/// ## Requirements for implementers
/// - Every method names breakers by their registered name; a name that does not exist throws
///   `FuseboxError/Code/unknownBreaker`, a malformed one `FuseboxError/Code/invalidName`, an unreachable store
///   `FuseboxError/Code/backendUnavailable`. Nothing traps on input from a request.
/// - ``survey()`` reads every breaker at a cost that does not grow in round trips with their number.
/// - ``transitions()`` yields every transition from the moment it is called, wherever it was made, until its
///   consumer stops iterating; it never blocks the caller.
public protocol BreakerAdministration: Sendable {
    /// Where the breakers live, for people: `this process (local adapter)`, `namespace 'fusebox' at redis://…`.
    var scope: String { get }
    /// Every breaker, sorted by name.
    func survey() async throws(FuseboxError) -> BreakerSurvey
    /// One breaker.
    func status(of name: String) async throws(FuseboxError) -> BreakerStatus
    /// The last transitions of `name` (up to 100), oldest first, with wall-clock times.
    func timeline(of name: String) async throws(FuseboxError) -> [TimedTransition]
    /// Forces `name` open until reset, or for `duration` when given (then it closes by itself, as a reset would).
    func isolate(_ name: String, reason: String, for duration: Duration?) async throws(FuseboxError) -> BreakerStatus
    /// Closes `name` with an empty window.
    func reset(_ name: String) async throws(FuseboxError) -> BreakerStatus
    /// Closes `name` and forgets its relative threshold's baseline.
    func resetWithBaseline(_ name: String) async throws(FuseboxError) -> BreakerStatus
    /// Moves `name` to half-open.
    func forceHalfOpen(_ name: String) async throws(FuseboxError) -> BreakerStatus
    /// Resets every breaker; returns them afterwards.
    func resetAll() async throws(FuseboxError) -> BreakerSurvey
    /// Transitions from now on, as they happen.
    func transitions() -> AsyncStream<TransitionNotice>
    /// The last `limit` operator actions (of `name` only, when given), newest first: the namespace's audit stream
    /// fleet-wide, the actions made through this administration for an application's registry. Actions record
    /// `AuditContext.actor` as who.
    func audit(of name: String?, limit: Int) async throws(FuseboxError) -> [AuditEntry]
    /// Transitions counted since this administration started, by breaker, from and to; `nil` when the breakers'
    /// own metrics count them (an application's registry).
    func transitionCounts() -> [TransitionKey: Int]?
}

/// Every breaker of an administration at one moment.
public struct BreakerSurvey: Sendable {
    /// The breakers that could be read, sorted by name.
    public var breakers: [BreakerStatus]
    /// The breakers whose stored state could not be read (corrupt keys), with why: `fusebox reset NAME` repairs them.
    public var unreadable: [(name: String, error: FuseboxError)]
    /// When it was read.
    public var observedAt: Date

    /// Makes a survey.
    public init(breakers: [BreakerStatus], unreadable: [(name: String, error: FuseboxError)] = [], observedAt: Date = Date()) {
        self.breakers = breakers
        self.unreadable = unreadable
        self.observedAt = observedAt
    }
}

/// One breaker as an operator sees it: its snapshot and the thresholds it runs with.
public struct BreakerStatus: Sendable {
    /// The snapshot.
    public var snapshot: BreakerSnapshot
    /// The thresholds of the policy in force; `nil` when no policy is known (isolated before any instance used it).
    public var thresholds: BreakerThresholds?
    /// Where the policy in force came from: `override` (an operator's, `fusebox policy set`), `code`,
    /// `configuration` or `defaults` (an application's registry), `instances` (fleet-wide: the instances' own,
    /// from their code or configuration); `nil` when no policy is known.
    public var policyOrigin: String?
    /// When the operator's override in force ends by itself (`fusebox policy set … --for`); `nil` without one, or
    /// when it stays until cleared.
    public var overrideExpiresAt: Date?
    /// When the snapshot was taken.
    public var observedAt: Date

    /// Makes a status.
    public init(
        snapshot: BreakerSnapshot, thresholds: BreakerThresholds?, policyOrigin: String? = nil, overrideExpiresAt: Date? = nil,
        observedAt: Date = Date()
    ) {
        self.snapshot = snapshot
        self.thresholds = thresholds
        self.policyOrigin = policyOrigin
        self.overrideExpiresAt = overrideExpiresAt
        self.observedAt = observedAt
    }

    /// The breaker's name.
    public var name: String { snapshot.name }
    /// When the breaker entered its state.
    public var since: Date { observedAt.addingTimeInterval(-snapshot.timeInState.seconds) }
}

/// The trip rules and limits of a policy, as the admin API shows them.
public struct BreakerThresholds: Sendable, Hashable {
    /// Trip at this failure ratio or above (`nil`: rule off).
    public var failureRate: Double?
    /// Trip after this many failures in a row (`nil`: rule off).
    public var consecutiveFailures: Int?
    /// Trip at this slow-call ratio or above (`nil`: rule off).
    public var slowCallRate: Double?
    /// Calls slower than this are slow.
    public var slowCallDuration: Duration
    /// The ratio rules apply from this many calls in the window.
    public var minimumThroughput: Int
    /// Probe calls let through in half-open.
    public var permittedCallsInHalfOpen: Int
    /// Probe successes that close the breaker.
    public var successThreshold: Int
    /// How long half-open may last before it reopens.
    public var maxHalfOpenDuration: Duration
    /// The window, e.g. `time(10s, 10 buckets)` or `count(100)`.
    public var window: String
    /// The break duration rule, e.g. `fixed(30s)`.
    public var breakDuration: String
    /// `normal`, `metrics_only` or `disabled`.
    public var mode: String
    /// Adaptive throttling's multiplier K (`nil`: off).
    public var adaptiveThrottling: Double?
    /// The relative failure threshold (`nil`: a fixed one): factor, floor, horizon, warm-up calls.
    public var relativeFailureRate: BreakerPolicy.RelativeFailureRate?

    /// The thresholds of `policy`.
    public init(policy: BreakerPolicy) {
        failureRate = policy.failureRateThreshold
        consecutiveFailures = policy.consecutiveFailureThreshold
        slowCallRate = policy.slowCallRateThreshold
        slowCallDuration = policy.slowCallDuration
        minimumThroughput = policy.minimumThroughput
        permittedCallsInHalfOpen = policy.permittedCallsInHalfOpen
        successThreshold = policy.successThreshold
        maxHalfOpenDuration = policy.maxHalfOpenDuration
        window = switch policy.window {
        case .time(let sampling, let buckets): "time(\(Self.format(sampling)), \(buckets) buckets)"
        case .count(let size): "count(\(size))"
        }
        breakDuration = switch policy.breakDuration {
        case .fixed(let duration): "fixed(\(Self.format(duration)))"
        case .exponential(let base, let factor, let maximum): "exponential(\(Self.format(base)) × \(factor), at most \(Self.format(maximum)))"
        case .linear(let base, let increment, let maximum): "linear(\(Self.format(base)) + \(Self.format(increment)), at most \(Self.format(maximum)))"
        case .adaptive: "adaptive"
        case .custom(let id, _): "custom(\(id))"
        }
        mode = policy.mode.rawValue
        adaptiveThrottling = policy.adaptiveThrottling?.multiplier
        relativeFailureRate = policy.relativeFailureRate
    }

    package static func format(_ duration: Duration) -> String { DurationText.setting(duration) }
}

/// A transition with the wall-clock time it happened.
public struct TimedTransition: Sendable, Hashable {
    /// The transition.
    public var transition: BreakerTransition
    /// When it happened.
    public var at: Date

    /// Makes one.
    public init(_ transition: BreakerTransition, at: Date) {
        self.transition = transition
        self.at = at
    }
}

/// A transition as it happens, for live views (the dashboard's event stream).
public struct TransitionNotice: Sendable, Hashable {
    /// The breaker.
    public var name: String
    /// The state before, when known.
    public var from: BreakerState?
    /// The state after.
    public var to: BreakerState
    /// The version after.
    public var version: Int
    /// Why.
    public var reason: String
    /// While open: the time until the break ends.
    public var timeUntilProbe: Duration?

    /// Makes one.
    public init(name: String, from: BreakerState?, to: BreakerState, version: Int, reason: String, timeUntilProbe: Duration?) {
        self.name = name
        self.from = from
        self.to = to
        self.version = version
        self.reason = reason
        self.timeUntilProbe = timeUntilProbe
    }
}

/// A breaker and a pair of states, the labels of `fusebox_transitions_total`.
public struct TransitionKey: Sendable, Hashable {
    /// The breaker.
    public var name: String
    /// The state before (`unknown` when the message did not say).
    public var from: String
    /// The state after.
    public var to: String

    /// Makes one.
    public init(name: String, from: String, to: String) {
        self.name = name
        self.from = from
        self.to = to
    }
}
