import Foundation
import Fusebox

// The admin API's answers around a breaker (AdminJSON.swift has the breaker itself, the encoder and `@Null`), and
// the one request body it reads.

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

    /// `nil` when absent or not a string (the route answers both with one message).
    var reason: String?
    var lasting: Lasting?
    /// Whether `for` was there but neither a string nor a number.
    var lastingIsMalformed = false

    enum CodingKeys: String, CodingKey {
        case reason
        case lasting = "for"
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        reason = (try? container.decodeIfPresent(String.self, forKey: .reason)) ?? nil
        do {
            lasting = try container.decodeIfPresent(Lasting.self, forKey: .lasting)
        } catch {
            lastingIsMalformed = true
        }
    }
}
