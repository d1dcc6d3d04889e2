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

/// `GET /circuit-breakers/NAME`: the breaker and its last transitions, oldest first.
struct BreakerDetailBody: Encodable, Sendable {
    var timestamp: String
    var breaker: BreakerBody
    var transitions: [TransitionBody]
}

/// One transition of a breaker's timeline.
struct TransitionBody: Encodable, Sendable {
    var from: String
    var to: String
    var reason: String
    var version: Int
    var at: String

    init(_ timed: TimedTransition) {
        from = timed.transition.from.rawValue
        to = timed.transition.to.rawValue
        reason = timed.transition.reason
        version = timed.transition.version
        at = AdminJSON.timestamp(timed.at)
    }
}

/// `GET /circuit-breakers/NAME/health`: the score and its terms (`BreakerHealth.Assessment`).
struct BreakerHealthBody: Encodable, Sendable {
    struct Terms: Encodable, Sendable {
        var stateCeiling: Int
        var failurePressure: Double
        var slowCallPressure: Double
        var shedding: Double
        var flapping: Int
        var storeDownFallback: Int

        enum CodingKeys: String, CodingKey {
            case shedding, flapping
            case stateCeiling = "state_ceiling"
            case failurePressure = "failure_pressure"
            case slowCallPressure = "slow_call_pressure"
            case storeDownFallback = "store_down_fallback"
        }
    }

    var name: String
    var healthScore: Int
    var state: String
    var timestamp: String
    var terms: Terms
    var failureRate: Double
    var slowCallRate: Double
    var windowCalls: Int
    var consecutiveFailures: Int
    var recentTransitions: Int
    @Null var thresholds: ThresholdsBody?

    enum CodingKeys: String, CodingKey {
        case name, state, timestamp, terms, thresholds
        case healthScore = "health_score"
        case failureRate = "failure_rate"
        case slowCallRate = "slow_call_rate"
        case windowCalls = "window_calls"
        case consecutiveFailures = "consecutive_failures"
        case recentTransitions = "recent_transitions"
    }

    init(_ status: BreakerStatus, at date: Date) {
        let snapshot = status.snapshot
        let limits = status.thresholds.map {
            BreakerHealth(
                failureRateThreshold: $0.failureRate, consecutiveFailureThreshold: $0.consecutiveFailures, slowCallRateThreshold: $0.slowCallRate,
                minimumThroughput: $0.minimumThroughput, adaptiveThrottling: $0.adaptiveThrottling.map { .init(multiplier: $0) })
        } ?? .unknownPolicy
        // The snapshot carries the threshold in force (relative or fixed): failure pressure is measured against it.
        let assessment = limits.assess(snapshot)
        name = snapshot.name
        healthScore = snapshot.healthScore
        state = snapshot.state.rawValue
        timestamp = AdminJSON.timestamp(date)
        terms = Terms(
            stateCeiling: assessment.ceiling, failurePressure: assessment.failurePressure, slowCallPressure: assessment.slowPressure,
            shedding: assessment.shedding, flapping: assessment.flapping, storeDownFallback: assessment.fallback)
        failureRate = snapshot.failureRate
        slowCallRate = snapshot.slowCallRate
        windowCalls = snapshot.windowCalls
        consecutiveFailures = snapshot.consecutiveFailures
        recentTransitions = snapshot.recentTransitions
        thresholds = status.thresholds.map(ThresholdsBody.init)
    }
}

/// The list's and `GET /health`'s `summary`.
struct SummaryBody: Encodable, Sendable {
    var totalBreakers, open, halfOpen, closed, isolated, disabled, metricsOnly, unreadable: Int
    var health: String

    enum CodingKeys: String, CodingKey {
        case open, closed, isolated, disabled, unreadable, health
        case totalBreakers = "total_breakers"
        case halfOpen = "half_open"
        case metricsOnly = "metrics_only"
    }

    init(_ health: FleetHealth) {
        totalBreakers = health.total
        open = health.open
        halfOpen = health.halfOpen
        closed = health.closed
        isolated = health.isolated
        disabled = health.disabled
        metricsOnly = health.metricsOnly
        unreadable = health.unreadable
        self.health = health.verdict.rawValue
    }
}

/// `GET /circuit-breakers` and `POST /circuit-breakers/reset-all`: every breaker, keyed by name.
struct SurveyBody: Encodable, Sendable {
    var timestamp: String
    var scope: String
    var summary: SummaryBody
    var breakers: [String: BreakerBody]
    /// Name → why its keys cannot be read.
    var unreadable: [String: String]

    init(_ survey: BreakerSurvey, scope: String) {
        timestamp = AdminJSON.timestamp(survey.observedAt)
        self.scope = scope
        summary = SummaryBody(FleetHealth(survey))
        breakers = Dictionary(survey.breakers.map { ($0.name, BreakerBody($0)) }, uniquingKeysWith: { first, _ in first })
        unreadable = Dictionary(survey.unreadable.map { ($0.name, $0.error.message) }, uniquingKeysWith: { first, _ in first })
    }
}

/// An event-stream notice (`GET /events`, `event: transition`).
struct NoticeBody: Encodable, Sendable {
    var name: String
    @Null var from: String?
    var state: String
    var version: Int
    var reason: String
    @Null var timeUntilRetryMs: Int64?

    enum CodingKeys: String, CodingKey {
        case name, from, state, version, reason
        case timeUntilRetryMs = "time_until_retry_ms"
    }

    init(_ notice: TransitionNotice) {
        name = notice.name
        from = notice.from?.rawValue
        state = notice.to.rawValue
        version = notice.version
        reason = notice.reason
        timeUntilRetryMs = notice.timeUntilProbe?.milliseconds
    }
}

/// `GET /health`: the verdict, why, and the counts it was made from.
struct FleetHealthBody: Encodable, Sendable {
    var status: String
    var timestamp: String
    var reasons: [String]
    var summary: SummaryBody

    init(_ health: FleetHealth, at date: Date) {
        status = health.verdict.rawValue
        timestamp = AdminJSON.timestamp(date)
        reasons = health.reasons
        summary = SummaryBody(health)
    }
}

/// `GET /audit`: operators' actions, newest first.
struct AuditBody: Encodable, Sendable {
    struct Entry: Encodable, Sendable {
        var at: String
        var breaker: String
        var action: String
        var by: String
        @Null var reason: String?

        init(_ entry: AuditEntry) {
            at = AdminJSON.timestamp(Date(timeIntervalSince1970: Double(entry.atMilliseconds) / 1000))
            breaker = entry.breaker
            action = entry.action
            by = entry.by
            reason = entry.reason
        }
    }

    var timestamp: String
    var entries: [Entry]
}

/// Every refusal: `{"error": CODE, "message": "…"}`.
struct ErrorBody: Encodable, Sendable {
    var error: String
    var message: String
}

/// `POST …/isolate`'s body: `{"reason": "…"}`, optionally `"for"`: a duration as `fusebox isolate --for` takes it
/// (`"30m"`) or a number of seconds.
struct IsolateRequest: Decodable, Sendable {
    enum Lasting: Decodable, Sendable {
        case text(String)
        case seconds(Double)

        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let text = try? container.decode(String.self) {
                self = .text(text)
            } else {
                self = .seconds(try container.decode(Double.self))
            }
        }

        /// The duration it names, if it names one.
        var duration: Duration? {
            switch self {
            case .text(let text): Duration(parsing: text)
            case .seconds(let seconds): seconds.isFinite && abs(seconds) < 1e12 ? .milliseconds(Int64(seconds * 1000)) : nil
            }
        }
    }

    var reason: String?
    var lasting: Lasting?
    /// Whether `reason` was there but not a string (told apart from absent for the message).
    var reasonIsNotText = false
    /// Whether `for` was there but neither a string nor a number.
    var lastingIsMalformed = false

    enum CodingKeys: String, CodingKey {
        case reason
        case lasting = "for"
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        do {
            reason = try container.decodeIfPresent(String.self, forKey: .reason)
        } catch {
            reasonIsNotText = true
        }
        do {
            lasting = try container.decodeIfPresent(Lasting.self, forKey: .lasting)
        } catch {
            lastingIsMalformed = true
        }
    }
}
