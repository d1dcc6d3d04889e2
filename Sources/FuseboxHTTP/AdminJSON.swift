import Foundation
import Fusebox

// The admin API's JSON (Docs/http-api.md lists every field): one Encodable type per answer, its snake_case keys named
// in its `CodingKeys`, all encoded by `AdminJSON.bytes` with sorted keys. An absent value is written `null` (`@Null`),
// never left out: a client tells "no value" from "a field this server does not know".

/// Encodes the admin API's answers.
enum AdminJSON {
    /// The UTF-8 JSON of `value`, keys sorted, slashes as they are. These types hold strings, whole numbers and
    /// finite doubles only (a non-finite double is written `null`), so encoding cannot fail; were it to, the answer
    /// is the error body, not a crash.
    static func bytes(_ value: some Encodable) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.nonConformingFloatEncodingStrategy = .throw
        do {
            return Array(try encoder.encode(value))
        } catch {
            return Array(#"{"error":"error","message":"the answer could not be written as JSON"}"#.utf8)
        }
    }

    /// `2026-12-01T19:20:03.120Z`.
    static func timestamp(_ date: Date) -> String { Timestamps.iso8601(date) }

    static func ratio(_ part: Int, of whole: Int) -> Double { whole == 0 ? 0 : Double(part) / Double(whole) }

    /// Seconds to the millisecond, so that `time_until_retry` agrees with `time_until_retry_ms` (the core's
    /// `Duration.seconds` keeps every digit).
    static func seconds(_ duration: Duration) -> Double { Double(duration.milliseconds) / 1000 }
}

/// An optional written as `null` when absent (synthesized `Encodable` would leave the key out). A non-finite double
/// is absent too: JSON has no NaN or infinity.
@propertyWrapper
struct Null<Value: Encodable & Sendable>: Encodable, Sendable {
    var wrappedValue: Value?

    init(wrappedValue: Value?) { self.wrappedValue = wrappedValue }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if let value = wrappedValue, !((value as? Double).map { !$0.isFinite } ?? false) {
            try container.encode(value)
        } else {
            try container.encodeNil()
        }
    }
}

/// A breaker (`GET /circuit-breakers/NAME`'s `breaker`, each of the list's `breakers`, every action's answer).
struct BreakerBody: Encodable, Sendable {
    struct Totals: Encodable, Sendable {
        var calls, successes, failures, ignored, rejected, slow, wouldReject: Int

        enum CodingKeys: String, CodingKey {
            case calls, successes, failures, ignored, rejected, slow
            case wouldReject = "would_reject"
        }
    }

    var name: String
    var state: String
    var version: Int
    var since: String
    var timeInStateMs: Int64
    @Null var timeUntilRetry: Double?
    @Null var timeUntilRetryMs: Int64?
    var failureCount: Int
    var failureRate: Double
    var successCount: Int
    var successRate: Double
    var slowCallCount: Int
    var slowCallRate: Double
    var rejectionCount: Int
    var rejectionRate: Double
    var windowCalls: Int
    var consecutiveFailures: Int
    var attempt: Int
    var probesInFlight: Int
    @Null var isolationReason: String?
    @Null var isolationEndsInMs: Int64?
    @Null var isolatedUntil: String?
    var wouldReject: Int
    var lastReason: String
    var healthScore: Int
    var recentTransitions: Int
    var storeDownFallback: Bool
    var throttleProbability: Double
    @Null var failureBaseline: Double?
    @Null var failureRateThresholdInForce: Double?
    var windowThrottled: Double
    @Null var thresholds: ThresholdsBody?
    @Null var policyOrigin: String?
    @Null var overrideExpiresAt: String?
    var totals: Totals
    var errors: [String: Int]

    enum CodingKeys: String, CodingKey {
        case name, state, version, since, attempt, thresholds, totals, errors
        case timeInStateMs = "time_in_state_ms"
        case timeUntilRetry = "time_until_retry"
        case timeUntilRetryMs = "time_until_retry_ms"
        case failureCount = "failure_count"
        case failureRate = "failure_rate"
        case successCount = "success_count"
        case successRate = "success_rate"
        case slowCallCount = "slow_call_count"
        case slowCallRate = "slow_call_rate"
        case rejectionCount = "rejection_count"
        case rejectionRate = "rejection_rate"
        case windowCalls = "window_calls"
        case consecutiveFailures = "consecutive_failures"
        case probesInFlight = "probes_in_flight"
        case isolationReason = "isolation_reason"
        case isolationEndsInMs = "isolation_ends_in_ms"
        case isolatedUntil = "isolated_until"
        case wouldReject = "would_reject"
        case lastReason = "last_reason"
        case healthScore = "health_score"
        case recentTransitions = "recent_transitions"
        case storeDownFallback = "store_down_fallback"
        case throttleProbability = "throttle_probability"
        case failureBaseline = "failure_baseline"
        case failureRateThresholdInForce = "failure_rate_threshold_in_force"
        case windowThrottled = "window_throttled"
        case policyOrigin = "policy_origin"
        case overrideExpiresAt = "override_expires_at"
    }

    init(_ status: BreakerStatus) {
        let snapshot = status.snapshot
        let totals = snapshot.totals
        let successes = snapshot.windowCalls - snapshot.windowFailures
        name = snapshot.name
        state = snapshot.state.rawValue
        version = snapshot.version
        since = AdminJSON.timestamp(status.since)
        timeInStateMs = snapshot.timeInState.milliseconds
        timeUntilRetry = snapshot.timeUntilProbe.map(AdminJSON.seconds)
        timeUntilRetryMs = snapshot.timeUntilProbe?.milliseconds
        failureCount = snapshot.windowFailures
        failureRate = snapshot.failureRate
        successCount = successes
        successRate = AdminJSON.ratio(successes, of: snapshot.windowCalls)
        slowCallCount = snapshot.windowSlowCalls
        slowCallRate = snapshot.slowCallRate
        rejectionCount = totals.rejected
        rejectionRate = AdminJSON.ratio(totals.rejected, of: totals.calls + totals.rejected)
        windowCalls = snapshot.windowCalls
        consecutiveFailures = snapshot.consecutiveFailures
        attempt = snapshot.attempt
        probesInFlight = snapshot.probesInFlight
        isolationReason = snapshot.isolationReason
        isolationEndsInMs = snapshot.isolationEndsIn?.milliseconds
        isolatedUntil = snapshot.isolationEndsIn.map { AdminJSON.timestamp(status.observedAt.addingTimeInterval(AdminJSON.seconds($0))) }
        wouldReject = totals.wouldReject
        lastReason = snapshot.lastReason
        healthScore = snapshot.healthScore
        recentTransitions = snapshot.recentTransitions
        storeDownFallback = snapshot.isOnStoreDownFallback
        throttleProbability = snapshot.throttleProbability
        failureBaseline = snapshot.failureBaseline
        failureRateThresholdInForce = snapshot.failureRateThresholdInForce
        windowThrottled = snapshot.windowThrottled
        thresholds = status.thresholds.map(ThresholdsBody.init)
        policyOrigin = status.policyOrigin
        overrideExpiresAt = status.overrideExpiresAt.map(AdminJSON.timestamp)
        self.totals = Totals(
            calls: totals.calls, successes: totals.successes, failures: totals.failures, ignored: totals.ignored,
            rejected: totals.rejected, slow: totals.slow, wouldReject: totals.wouldReject)
        errors = snapshot.errorCounts
    }
}

/// The policy's thresholds as the admin API shows them (`null`: the rule is off).
struct ThresholdsBody: Encodable, Sendable {
    struct Relative: Encodable, Sendable {
        var factor: Double
        var floor: Double
        var horizonMs: Int64
        var warmupCalls: Int

        enum CodingKeys: String, CodingKey {
            case factor, floor
            case horizonMs = "horizon_ms"
            case warmupCalls = "warmup_calls"
        }
    }

    @Null var failureRate: Double?
    @Null var consecutiveFailures: Int?
    @Null var slowCallRate: Double?
    var slowCallDurationMs: Int64
    var minimumThroughput: Int
    var permittedCallsInHalfOpen: Int
    var successThreshold: Int
    var maxHalfOpenDurationMs: Int64
    var window: String
    var breakDuration: String
    var mode: String
    @Null var adaptiveThrottling: Double?
    @Null var relativeFailureRate: Relative?

    enum CodingKeys: String, CodingKey {
        case window, mode
        case failureRate = "failure_rate"
        case consecutiveFailures = "consecutive_failures"
        case slowCallRate = "slow_call_rate"
        case slowCallDurationMs = "slow_call_duration_ms"
        case minimumThroughput = "minimum_throughput"
        case permittedCallsInHalfOpen = "permitted_calls_in_half_open"
        case successThreshold = "success_threshold"
        case maxHalfOpenDurationMs = "max_half_open_duration_ms"
        case breakDuration = "break_duration"
        case adaptiveThrottling = "adaptive_throttling"
        case relativeFailureRate = "relative_failure_rate"
    }

    init(_ thresholds: BreakerThresholds) {
        failureRate = thresholds.failureRate
        consecutiveFailures = thresholds.consecutiveFailures
        slowCallRate = thresholds.slowCallRate
        slowCallDurationMs = thresholds.slowCallDuration.milliseconds
        minimumThroughput = thresholds.minimumThroughput
        permittedCallsInHalfOpen = thresholds.permittedCallsInHalfOpen
        successThreshold = thresholds.successThreshold
        maxHalfOpenDurationMs = thresholds.maxHalfOpenDuration.milliseconds
        window = thresholds.window
        breakDuration = thresholds.breakDuration
        mode = thresholds.mode
        adaptiveThrottling = thresholds.adaptiveThrottling
        relativeFailureRate = thresholds.relativeFailureRate.map {
            Relative(factor: $0.factor, floor: $0.floor, horizonMs: $0.horizon.milliseconds, warmupCalls: $0.warmupCalls)
        }
    }
}
