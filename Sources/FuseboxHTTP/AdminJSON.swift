import Foundation
import Fusebox

/// A JSON value written in the order its fields are given: the admin API's field names stay where a reader of
/// Docs/http-api.md expects them, and `null` is written, never left out.
enum JSON: Sendable {
    case object([(String, JSON)])
    case array([JSON])
    case string(String)
    case int(Int64)
    case double(Double)
    case bool(Bool)
    case null

    static func optional(_ value: String?) -> JSON { value.map(JSON.string) ?? .null }
    static func optional(_ value: Int?) -> JSON { value.map { .int(Int64($0)) } ?? .null }
    static func optional(_ value: Double?) -> JSON { value.map(JSON.double) ?? .null }
    static func number(_ value: Int) -> JSON { .int(Int64(value)) }

    /// The UTF-8 text.
    var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        write(into: &out)
        return out
    }

    func write(into out: inout [UInt8]) {
        switch self {
        case .object(let fields):
            out.append(UInt8(ascii: "{"))
            for (index, field) in fields.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                Self.write(field.0, into: &out)
                out.append(UInt8(ascii: ":"))
                field.1.write(into: &out)
            }
            out.append(UInt8(ascii: "}"))
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (index, item) in items.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                item.write(into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .string(let text): Self.write(text, into: &out)
        case .int(let value): out += Array(String(value).utf8)
        case .double(let value):
            // JSON has no NaN or infinity.
            guard value.isFinite else { return out += Array("null".utf8) }
            out += Array((value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)).utf8)
        case .bool(let value): out += Array((value ? "true" : "false").utf8)
        case .null: out += Array("null".utf8)
        }
    }

    private static func write(_ text: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case 0x0A: out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
            case 0x0D: out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
            case 0x09: out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
            case ..<0x20, 0x7F:
                let hex = String(byte, radix: 16)
                out += Array(("\\u" + String(repeating: "0", count: 4 - hex.count) + hex).utf8)
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

/// The JSON shapes of the admin API (Docs/http-api.md lists every field).
enum AdminJSON {
    /// `2026-12-01T19:20:03.120Z`.
    static func timestamp(_ date: Date) -> JSON { .string(Timestamps.iso8601(date)) }

    static func ratio(_ part: Int, of whole: Int) -> Double { whole == 0 ? 0 : Double(part) / Double(whole) }

    static func breaker(_ status: BreakerStatus) -> JSON {
        let snapshot = status.snapshot
        let totals = snapshot.totals
        let successes = snapshot.windowCalls - snapshot.windowFailures
        let isolationEndsInMs: JSON = snapshot.isolationEndsIn.map { .int($0.milliseconds) } ?? .null
        let isolatedUntil: JSON = snapshot.isolationEndsIn.map { timestamp(status.observedAt.addingTimeInterval(Double($0.milliseconds) / 1000)) } ?? .null
        let fields: [(String, JSON)] = [
            ("name", .string(snapshot.name)),
            ("state", .string(snapshot.state.rawValue)),
            ("version", .number(snapshot.version)),
            ("since", timestamp(status.since)),
            ("time_in_state_ms", .int(snapshot.timeInState.milliseconds)),
            ("time_until_retry", snapshot.timeUntilProbe.map { .double(Double($0.milliseconds) / 1000) } ?? .null),
            ("time_until_retry_ms", snapshot.timeUntilProbe.map { .int($0.milliseconds) } ?? .null),
            ("failure_count", .number(snapshot.windowFailures)),
            ("failure_rate", .double(snapshot.failureRate)),
            ("success_count", .number(successes)),
            ("success_rate", .double(ratio(successes, of: snapshot.windowCalls))),
            ("slow_call_count", .number(snapshot.windowSlowCalls)),
            ("slow_call_rate", .double(snapshot.slowCallRate)),
            ("rejection_count", .number(totals.rejected)),
            ("rejection_rate", .double(ratio(totals.rejected, of: totals.calls + totals.rejected))),
            ("window_calls", .number(snapshot.windowCalls)),
            ("consecutive_failures", .number(snapshot.consecutiveFailures)),
            ("attempt", .number(snapshot.attempt)),
            ("probes_in_flight", .number(snapshot.probesInFlight)),
            ("isolation_reason", .optional(snapshot.isolationReason)),
            ("isolation_ends_in_ms", isolationEndsInMs),
            ("isolated_until", isolatedUntil),
            ("would_reject", .number(totals.wouldReject)),
            ("last_reason", .string(snapshot.lastReason)),
            ("health_score", .number(snapshot.healthScore)),
            ("recent_transitions", .number(snapshot.recentTransitions)),
            ("store_down_fallback", .bool(snapshot.isOnStoreDownFallback)),
            ("throttle_probability", .double(snapshot.throttleProbability)),
            ("failure_baseline", .optional(snapshot.failureBaseline)),
            ("failure_rate_threshold_in_force", .optional(snapshot.failureRateThresholdInForce)),
            ("window_throttled", .double(snapshot.windowThrottled)),
            ("thresholds", status.thresholds.map(thresholds) ?? .null),
            ("policy_origin", .optional(status.policyOrigin)),
            ("override_expires_at", status.overrideExpiresAt.map(timestamp) ?? .null),
            ("totals", .object([
                ("calls", .number(totals.calls)), ("successes", .number(totals.successes)), ("failures", .number(totals.failures)),
                ("ignored", .number(totals.ignored)), ("rejected", .number(totals.rejected)), ("slow", .number(totals.slow)),
                ("would_reject", .number(totals.wouldReject)),
            ])),
            ("errors", .object(snapshot.errorCounts.sorted { $0.key < $1.key }.map { ($0.key, .number($0.value)) })),
        ]
        return .object(fields)
    }

    /// `GET /circuit-breakers/NAME/health`: the score and its terms (`BreakerHealth.Assessment`).
    static func health(of status: BreakerStatus, at date: Date) -> JSON {
        let snapshot = status.snapshot
        let limits = status.thresholds.map {
            BreakerHealth(
                failureRateThreshold: $0.failureRate, consecutiveFailureThreshold: $0.consecutiveFailures, slowCallRateThreshold: $0.slowCallRate,
                minimumThroughput: $0.minimumThroughput, adaptiveThrottling: $0.adaptiveThrottling.map { .init(multiplier: $0) })
        } ?? .unknownPolicy
        // The snapshot carries the threshold in force (relative or fixed): failure pressure is measured against it.
        let terms = limits.assess(snapshot)
        return .object([
            ("name", .string(snapshot.name)),
            ("health_score", .number(snapshot.healthScore)),
            ("state", .string(snapshot.state.rawValue)),
            ("timestamp", timestamp(date)),
            ("terms", .object([
                ("state_ceiling", .number(terms.ceiling)),
                ("failure_pressure", .double(terms.failurePressure)),
                ("slow_call_pressure", .double(terms.slowPressure)),
                ("shedding", .double(terms.shedding)),
                ("flapping", .number(terms.flapping)),
                ("store_down_fallback", .number(terms.fallback)),
            ])),
            ("failure_rate", .double(snapshot.failureRate)),
            ("slow_call_rate", .double(snapshot.slowCallRate)),
            ("window_calls", .number(snapshot.windowCalls)),
            ("consecutive_failures", .number(snapshot.consecutiveFailures)),
            ("recent_transitions", .number(snapshot.recentTransitions)),
            ("thresholds", status.thresholds.map(thresholds) ?? .null),
        ])
    }

    static func thresholds(_ thresholds: BreakerThresholds) -> JSON {
        .object([
            ("failure_rate", .optional(thresholds.failureRate)),
            ("consecutive_failures", .optional(thresholds.consecutiveFailures)),
            ("slow_call_rate", .optional(thresholds.slowCallRate)),
            ("slow_call_duration_ms", .int(thresholds.slowCallDuration.milliseconds)),
            ("minimum_throughput", .number(thresholds.minimumThroughput)),
            ("permitted_calls_in_half_open", .number(thresholds.permittedCallsInHalfOpen)),
            ("success_threshold", .number(thresholds.successThreshold)),
            ("max_half_open_duration_ms", .int(thresholds.maxHalfOpenDuration.milliseconds)),
            ("window", .string(thresholds.window)),
            ("break_duration", .string(thresholds.breakDuration)),
            ("mode", .string(thresholds.mode)),
            ("adaptive_throttling", .optional(thresholds.adaptiveThrottling)),
            ("relative_failure_rate", thresholds.relativeFailureRate.map {
                .object([
                    ("factor", .double($0.factor)), ("floor", .double($0.floor)), ("horizon_ms", .int($0.horizon.milliseconds)),
                    ("warmup_calls", .number($0.warmupCalls)),
                ])
            } ?? .null),
        ])
    }

    static func summary(_ health: FleetHealth) -> JSON {
        .object([
            ("total_breakers", .number(health.total)),
            ("open", .number(health.open)),
            ("half_open", .number(health.halfOpen)),
            ("closed", .number(health.closed)),
            ("isolated", .number(health.isolated)),
            ("disabled", .number(health.disabled)),
            ("metrics_only", .number(health.metricsOnly)),
            ("unreadable", .number(health.unreadable)),
            ("health", .string(health.verdict.rawValue)),
        ])
    }

    static func survey(_ survey: BreakerSurvey, scope: String) -> JSON {
        .object([
            ("timestamp", timestamp(survey.observedAt)),
            ("scope", .string(scope)),
            ("summary", summary(FleetHealth(survey))),
            ("breakers", .object(survey.breakers.map { ($0.name, breaker($0)) })),
            ("unreadable", .object(survey.unreadable.map { ($0.name, .string($0.error.message)) })),
        ])
    }

    static func transition(_ timed: TimedTransition) -> JSON {
        .object([
            ("from", .string(timed.transition.from.rawValue)),
            ("to", .string(timed.transition.to.rawValue)),
            ("reason", .string(timed.transition.reason)),
            ("version", .number(timed.transition.version)),
            ("at", timestamp(timed.at)),
        ])
    }

    static func notice(_ notice: TransitionNotice) -> JSON {
        .object([
            ("name", .string(notice.name)),
            ("from", .optional(notice.from?.rawValue)),
            ("state", .string(notice.to.rawValue)),
            ("version", .number(notice.version)),
            ("reason", .string(notice.reason)),
            ("time_until_retry_ms", notice.timeUntilProbe.map { .int($0.milliseconds) } ?? .null),
        ])
    }

    static func health(_ health: FleetHealth, at date: Date) -> JSON {
        .object([
            ("status", .string(health.verdict.rawValue)),
            ("timestamp", timestamp(date)),
            ("reasons", .array(health.reasons.map(JSON.string))),
            ("summary", summary(health)),
        ])
    }

    static func audit(_ entry: AuditEntry) -> JSON {
        .object([
            ("at", timestamp(Date(timeIntervalSince1970: Double(entry.atMilliseconds) / 1000))),
            ("breaker", .string(entry.breaker)),
            ("action", .string(entry.action)),
            ("by", .string(entry.by)),
            ("reason", .optional(entry.reason)),
        ])
    }

    static func error(_ code: String, _ message: String) -> JSON {
        .object([("error", .string(code)), ("message", .string(message))])
    }
}
