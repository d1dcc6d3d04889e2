import Foundation
import Fusebox

/// The policy as Redis sees it: the script's arguments (`A[3…18]` in lua/breaker.lua), the keys of a breaker, the
/// JSON operators read in the `policy` field, and its fingerprint.
extension DistributedBackend {
    static func policyArguments(_ policy: BreakerPolicy, minimumInstances: Int) -> [String] {
        let (kind, size, width): (String, Int, Int64) = switch policy.window {
        case .time(let sampling, let buckets): ("time", buckets, max(1, (sampling / buckets).milliseconds))
        case .count(let size): ("count", size, 1)
        }
        // A relative threshold rides with the fixed one (the script's A[3]): '~FACTOR:FLOOR:HORIZON_MS:WARMUP_CALLS'.
        let relative = policy.relativeFailureRate.map {
            "~\($0.factor):\($0.floor):\(max(1, $0.horizon.milliseconds)):\($0.warmupCalls)"
        } ?? ""
        return [
            (policy.failureRateThreshold.map { "\($0)" } ?? "") + relative,
            policy.consecutiveFailureThreshold.map { "\($0)" } ?? "",
            policy.slowCallRateThreshold.map { "\($0)" } ?? "",
            String(policy.minimumThroughput), kind, String(size), String(width),
            String(policy.permittedCallsInHalfOpen), String(policy.successThreshold),
            String(policy.maxHalfOpenDuration.milliseconds), policy.mode.rawValue, String(minimumInstances),
        ]
    }

    /// The keys of breaker `name`, in the order `lua/breaker.lua` takes them.
    static func keys(namespace: String, name: String) -> [String] {
        let prefix = "\(namespace):{\(name)}"
        return ["\(prefix):state", "\(prefix):window", "\(prefix):totals", "\(prefix):events"]
    }

    /// A short fingerprint of the policy (FNV-1a, 64 bits): the script writes the JSON only when it changes.
    static func fingerprint(_ text: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return String(hash, radix: 16)
    }

    /// `text` as a JSON string literal (quotes, backslashes and control characters escaped).
    static func jsonString(_ text: String) -> String {
        var literal = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": literal += "\\\""
            case "\\": literal += "\\\\"
            case "\n": literal += "\\n"
            case "\r": literal += "\\r"
            case "\t": literal += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                let hex = String(scalar.value, radix: 16)
                literal += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: literal.unicodeScalars.append(scalar)
            }
        }
        return literal + "\""
    }

    /// The policy as JSON, for operators reading the `policy` field with redis-cli.
    static func policyJSON(_ policy: BreakerPolicy, minimumInstances: Int = 1) -> String {
        func ms(_ duration: Duration) -> String { String(duration.milliseconds) }
        func optional<T>(_ value: T?) -> String { value.map { "\($0)" } ?? "null" }
        let window: String = switch policy.window {
        case .time(let sampling, let buckets): #"{"kind":"time","samplingMs":\#(ms(sampling)),"buckets":\#(buckets)}"#
        case .count(let size): #"{"kind":"count","size":\#(size)}"#
        }
        let breakDuration: String = switch policy.breakDuration {
        case .fixed(let d): #"{"kind":"fixed","ms":\#(ms(d))}"#
        case .exponential(let base, let factor, let maximum): #"{"kind":"exponential","baseMs":\#(ms(base)),"factor":\#(factor),"maximumMs":\#(ms(maximum))}"#
        case .linear(let base, let increment, let maximum): #"{"kind":"linear","baseMs":\#(ms(base)),"incrementMs":\#(ms(increment)),"maximumMs":\#(ms(maximum))}"#
        case .adaptive: #"{"kind":"adaptive"}"#
        case .custom(let id, _): #"{"kind":"custom","id":\#(jsonString(id))}"#
        }
        // Adaptive throttling is written only when set, so the JSON (and fingerprint) of a policy without it is
        // what it was before the option existed.
        var throttling = policy.adaptiveThrottling.map { #","adaptiveThrottling":{"multiplier":\#($0.multiplier)}"# } ?? ""
        if let relative = policy.relativeFailureRate {
            throttling += #","relativeFailureRate":{"factor":\#(relative.factor),"floor":\#(relative.floor),"horizonMs":\#(ms(relative.horizon)),"warmupCalls":\#(relative.warmupCalls)}"#
        }
        return #"{"minimumInstances":\#(minimumInstances),"failureRateThreshold":\#(optional(policy.failureRateThreshold)),"consecutiveFailureThreshold":\#(optional(policy.consecutiveFailureThreshold)),"slowCallRateThreshold":\#(optional(policy.slowCallRateThreshold)),"slowCallDurationMs":\#(ms(policy.slowCallDuration)),"minimumThroughput":\#(policy.minimumThroughput),"window":\#(window),"breakDuration":\#(breakDuration),"permittedCallsInHalfOpen":\#(policy.permittedCallsInHalfOpen),"successThreshold":\#(policy.successThreshold),"maxHalfOpenDurationMs":\#(ms(policy.maxHalfOpenDuration)),"mode":"\#(policy.mode.rawValue)"\#(throttling)}"#
    }
}

/// What a policy means to the distributed backend, worked out once per policy: the script's arguments, the JSON
/// for operators, and the figures the hot path and the flusher read.
struct PolicyRules: Sendable {
    let policy: BreakerPolicy
    let arguments: [String]
    let fingerprint: String
    let json: String
    let slowCallNanoseconds: Int64
    /// The time window's bucket width in ms (0 for a count window).
    let bucketMilliseconds: Int64
    /// How long successes may wait before the flusher writes them while the breaker is quiet (ns).
    let quietHoldNanoseconds: Int64
    /// How old outcomes may be and still enter the window (ns).
    let windowAgeNanoseconds: Int64
    /// How long a probe permit is held for its caller (ms): twice the call timeout, or 5 s without one. A caller
    /// still running renews it; one that died loses it then (lua/breaker.lua, `leases`).
    let probeLeaseMilliseconds: Int64

    init(_ policy: BreakerPolicy, options: DistributedOptions) {
        self.policy = policy
        let instances = policy.minimumInstances ?? options.minimumInstances
        arguments = DistributedBackend.policyArguments(policy, minimumInstances: instances)
        json = DistributedBackend.policyJSON(policy, minimumInstances: instances)
        fingerprint = DistributedBackend.fingerprint(json + "|" + arguments.joined(separator: ","))
        slowCallNanoseconds = policy.slowCallDuration.nanoseconds
        bucketMilliseconds = switch policy.window {
        case .time(let sampling, let buckets): max(1, (sampling / buckets).milliseconds)
        case .count: 0
        }
        var quietHold = max(options.flushInterval, options.quietFlushInterval)
        if case .time(let sampling, _) = policy.window { quietHold = max(options.flushInterval, min(quietHold, sampling / 2)) }
        quietHoldNanoseconds = quietHold.nanoseconds
        windowAgeNanoseconds = switch policy.window {
        case .time(let sampling, _): sampling.nanoseconds
        case .count: 10_000_000_000
        }
        probeLeaseMilliseconds = policy.callTimeout.map { max(1, ($0 * 2).milliseconds) } ?? 5000
    }
}

extension BreakerThresholds {
    /// The thresholds of a policy stored in Redis as JSON (the `policy` field of `NS:{NAME}:state`, written by
    /// ``DistributedBackend/policyJSON(_:minimumInstances:)``); `nil` when the text is not such a policy.
    public init?(storedPolicyJSON text: String) {
        guard let stored = try? JSONDecoder().decode(StoredPolicy.self, from: Data(text.utf8)) else { return nil }
        func format(_ milliseconds: Int64?) -> String { Self.format(.milliseconds(milliseconds ?? 0)) }
        self.init(policy: BreakerPolicy())
        failureRate = stored.failureRateThreshold
        consecutiveFailures = stored.consecutiveFailureThreshold
        slowCallRate = stored.slowCallRateThreshold
        slowCallDuration = .milliseconds(stored.slowCallDurationMs)
        minimumThroughput = stored.minimumThroughput
        permittedCallsInHalfOpen = stored.permittedCallsInHalfOpen
        successThreshold = stored.successThreshold
        maxHalfOpenDuration = .milliseconds(stored.maxHalfOpenDurationMs)
        mode = stored.mode
        adaptiveThrottling = stored.adaptiveThrottling?.multiplier
        relativeFailureRate = stored.relativeFailureRate.map {
            .init(factor: $0.factor, floor: $0.floor, horizon: .milliseconds($0.horizonMs), warmupCalls: $0.warmupCalls)
        }
        let window = stored.window
        self.window = window?.kind == "count"
            ? "count(\(window?.size ?? 0))" : "time(\(format(window?.samplingMs)), \(window?.buckets ?? 0) buckets)"
        let rule = stored.breakDuration
        breakDuration = switch rule?.kind {
        case "fixed": "fixed(\(format(rule?.ms)))"
        case "exponential": "exponential(\(format(rule?.baseMs)) × \(rule?.factor ?? 0), at most \(format(rule?.maximumMs)))"
        case "linear": "linear(\(format(rule?.baseMs)) + \(format(rule?.incrementMs)), at most \(format(rule?.maximumMs)))"
        case "custom": "custom(\(rule?.id ?? "?"))"
        default: rule?.kind ?? "unknown"
        }
    }
}

/// The policy JSON as stored in Redis (camelCase keys, durations in ms), as far as reading it back needs.
private struct StoredPolicy: Decodable {
    struct Window: Decodable {
        var kind: String
        var size: Int?
        var samplingMs: Int64?
        var buckets: Int?
    }

    struct BreakRule: Decodable {
        var kind: String
        var ms: Int64?
        var baseMs: Int64?
        var incrementMs: Int64?
        var maximumMs: Int64?
        var factor: Double?
        var id: String?
    }

    struct Throttling: Decodable { var multiplier: Double }

    struct Relative: Decodable {
        var factor: Double
        var floor: Double
        var horizonMs: Int64
        var warmupCalls: Int
    }

    var failureRateThreshold: Double?
    var consecutiveFailureThreshold: Int?
    var slowCallRateThreshold: Double?
    var slowCallDurationMs: Int64
    var minimumThroughput: Int
    var permittedCallsInHalfOpen: Int
    var successThreshold: Int
    var maxHalfOpenDurationMs: Int64
    var mode: String
    var window: Window?
    var breakDuration: BreakRule?
    var adaptiveThrottling: Throttling?
    var relativeFailureRate: Relative?
}
