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

    /// The policy as JSON (`PolicyDocument`), for operators reading the `policy` field with redis-cli.
    static func policyJSON(_ policy: BreakerPolicy, minimumInstances: Int = 1) -> String {
        PolicyDocument(policy, minimumInstances: minimumInstances).text
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
    /// The thresholds of a policy stored in Redis as JSON (the `policy` field of `NS:{NAME}:state`, a
    /// `PolicyDocument`); `nil` when the text is not such a policy.
    public init?(storedPolicyJSON text: String) {
        guard let stored = try? PolicyDocument(text: text) else { return nil }
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
        self.window = window.kind == "count"
            ? "count(\(window.size ?? 0))" : "time(\(format(window.samplingMs)), \(window.buckets ?? 0) buckets)"
        let rule = stored.breakDuration
        breakDuration = switch rule.kind {
        case "fixed": "fixed(\(format(rule.ms)))"
        case "exponential": "exponential(\(format(rule.baseMs)) × \(rule.factor ?? 0), at most \(format(rule.maximumMs)))"
        case "linear": "linear(\(format(rule.baseMs)) + \(format(rule.incrementMs)), at most \(format(rule.maximumMs)))"
        case "custom": "custom(\(rule.id ?? "?"))"
        default: rule.kind
        }
    }
}

/// The policy as Fusebox stores it in Redis: the `policy` field of a state hash (for operators, and for the `fusebox`
/// command, which does not know the instances' code) and an override's `policy`. Keys are camelCase, durations whole
/// milliseconds; it is encoded in the order of the properties below, and `adaptiveThrottling` and
/// `relativeFailureRate` only when set (a policy without them reads as it did before they existed).
struct PolicyDocument: Codable, Equatable {
    struct Window: Codable, Equatable {
        var kind: String
        var samplingMs: Int64?
        var buckets: Int?
        var size: Int?
    }

    struct BreakRule: Codable, Equatable {
        var kind: String
        var ms: Int64?
        var baseMs: Int64?
        var incrementMs: Int64?
        var factor: Double?
        var maximumMs: Int64?
        var id: String?
    }

    struct Throttling: Codable, Equatable { var multiplier: Double }

    struct Relative: Codable, Equatable {
        var factor: Double
        var floor: Double
        var horizonMs: Int64
        var warmupCalls: Int
    }

    var minimumInstances: Int?
    var failureRateThreshold: Double?
    var consecutiveFailureThreshold: Int?
    var slowCallRateThreshold: Double?
    var slowCallDurationMs: Int64
    var minimumThroughput: Int
    var window: Window
    var breakDuration: BreakRule
    var permittedCallsInHalfOpen: Int
    var successThreshold: Int
    var maxHalfOpenDurationMs: Int64
    var mode: String
    var adaptiveThrottling: Throttling?
    var relativeFailureRate: Relative?

    private enum CodingKeys: String, CodingKey, CaseIterable {
        case minimumInstances, failureRateThreshold, consecutiveFailureThreshold, slowCallRateThreshold, slowCallDurationMs
        case minimumThroughput, window, breakDuration, permittedCallsInHalfOpen, successThreshold, maxHalfOpenDurationMs
        case mode, adaptiveThrottling, relativeFailureRate
    }

    /// `policy`, with `minimumInstances` when given (the state hash always carries the quorum in force; an override
    /// only the one it sets).
    init(_ policy: BreakerPolicy, minimumInstances: Int?) {
        func ms(_ duration: Duration) -> Int64 { duration.milliseconds }
        self.minimumInstances = minimumInstances
        failureRateThreshold = policy.failureRateThreshold
        consecutiveFailureThreshold = policy.consecutiveFailureThreshold
        slowCallRateThreshold = policy.slowCallRateThreshold
        slowCallDurationMs = ms(policy.slowCallDuration)
        minimumThroughput = policy.minimumThroughput
        window = switch policy.window {
        case .time(let sampling, let buckets): Window(kind: "time", samplingMs: ms(sampling), buckets: buckets)
        case .count(let size): Window(kind: "count", size: size)
        }
        breakDuration = switch policy.breakDuration {
        case .fixed(let duration): BreakRule(kind: "fixed", ms: ms(duration))
        case .exponential(let base, let factor, let maximum): BreakRule(kind: "exponential", baseMs: ms(base), factor: factor, maximumMs: ms(maximum))
        case .linear(let base, let increment, let maximum): BreakRule(kind: "linear", baseMs: ms(base), incrementMs: ms(increment), maximumMs: ms(maximum))
        case .adaptive: BreakRule(kind: "adaptive")
        case .custom(let id, _): BreakRule(kind: "custom", id: id)
        }
        permittedCallsInHalfOpen = policy.permittedCallsInHalfOpen
        successThreshold = policy.successThreshold
        maxHalfOpenDurationMs = ms(policy.maxHalfOpenDuration)
        mode = policy.mode.rawValue
        adaptiveThrottling = policy.adaptiveThrottling.map { Throttling(multiplier: $0.multiplier) }
        relativeFailureRate = policy.relativeFailureRate.map {
            Relative(factor: $0.factor, floor: $0.floor, horizonMs: ms($0.horizon), warmupCalls: $0.warmupCalls)
        }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encodeIfPresent(minimumInstances, forKey: .minimumInstances)
        // The thresholds are written as null when off: a reader sees every rule.
        try container.encode(failureRateThreshold, forKey: .failureRateThreshold)
        try container.encode(consecutiveFailureThreshold, forKey: .consecutiveFailureThreshold)
        try container.encode(slowCallRateThreshold, forKey: .slowCallRateThreshold)
        try container.encode(slowCallDurationMs, forKey: .slowCallDurationMs)
        try container.encode(minimumThroughput, forKey: .minimumThroughput)
        try container.encode(window, forKey: .window)
        try container.encode(breakDuration, forKey: .breakDuration)
        try container.encode(permittedCallsInHalfOpen, forKey: .permittedCallsInHalfOpen)
        try container.encode(successThreshold, forKey: .successThreshold)
        try container.encode(maxHalfOpenDurationMs, forKey: .maxHalfOpenDurationMs)
        try container.encode(mode, forKey: .mode)
        try container.encodeIfPresent(adaptiveThrottling, forKey: .adaptiveThrottling)
        try container.encodeIfPresent(relativeFailureRate, forKey: .relativeFailureRate)
    }

    /// Reads what ``encode(to:)`` wrote. A field this build does not know throws `FuseboxError/Code/invalidPolicy` (an
    /// instance never applies half of a newer build's policy); anything else Fusebox did not write throws
    /// `FuseboxError/Code/corruptState` naming the field.
    init(from decoder: any Decoder) throws {
        let names = try decoder.container(keyedBy: AnyKey.self)
        let known = Set(CodingKeys.allCases.map(\.stringValue))
        if let unknown = names.allKeys.map(\.stringValue).sorted().first(where: { !known.contains($0) }) {
            throw FuseboxError(code: .invalidPolicy, message: "the policy has a field this build does not know: '\(unknown)'")
        }
        let container = try decoder.container(keyedBy: CodingKeys.self)
        // The thresholds must be present (null when off): a policy without them is not one Fusebox wrote.
        guard container.contains(.failureRateThreshold), container.contains(.consecutiveFailureThreshold),
            container.contains(.slowCallRateThreshold)
        else {
            let missing = [CodingKeys.failureRateThreshold, .consecutiveFailureThreshold, .slowCallRateThreshold].first { !container.contains($0) }!
            throw Self.corrupt(missing.stringValue)
        }
        minimumInstances = try container.decodeIfPresent(Int.self, forKey: .minimumInstances)
        failureRateThreshold = try container.decodeIfPresent(Double.self, forKey: .failureRateThreshold)
        consecutiveFailureThreshold = try container.decodeIfPresent(Int.self, forKey: .consecutiveFailureThreshold)
        slowCallRateThreshold = try container.decodeIfPresent(Double.self, forKey: .slowCallRateThreshold)
        slowCallDurationMs = try container.decode(Int64.self, forKey: .slowCallDurationMs)
        minimumThroughput = try container.decode(Int.self, forKey: .minimumThroughput)
        window = try container.decode(Window.self, forKey: .window)
        breakDuration = try container.decode(BreakRule.self, forKey: .breakDuration)
        permittedCallsInHalfOpen = try container.decode(Int.self, forKey: .permittedCallsInHalfOpen)
        successThreshold = try container.decode(Int.self, forKey: .successThreshold)
        maxHalfOpenDurationMs = try container.decode(Int64.self, forKey: .maxHalfOpenDurationMs)
        mode = try container.decode(String.self, forKey: .mode)
        adaptiveThrottling = try container.decodeIfPresent(Throttling.self, forKey: .adaptiveThrottling)
        relativeFailureRate = try container.decodeIfPresent(Relative.self, forKey: .relativeFailureRate)
    }

    /// The JSON text (the form the fingerprint is taken of).
    var text: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding plain numbers and strings cannot fail.
        return String(decoding: (try? encoder.encode(self)) ?? Data("{}".utf8), as: UTF8.self)
    }

    /// The document in `text`; `FuseboxError` as ``init(from:)`` says, or `corruptState` for text that is not JSON.
    init(text: String) throws(FuseboxError) {
        do {
            self = try JSONDecoder().decode(Self.self, from: Data(text.utf8))
        } catch let error as FuseboxError {
            throw error
        } catch let DecodingError.keyNotFound(key, context) {
            throw Self.corrupt((context.codingPath + [key]).map(\.stringValue).joined(separator: "."))
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context),
            let DecodingError.dataCorrupted(context)
        {
            if context.codingPath.isEmpty {
                throw FuseboxError(code: .corruptState, message: "the policy is not the JSON Fusebox writes: \(text.prefix(200))")
            }
            throw Self.corrupt(context.codingPath.map(\.stringValue).joined(separator: "."))
        } catch {
            throw FuseboxError(code: .corruptState, message: "the policy is not the JSON Fusebox writes: \(text.prefix(200))")
        }
    }

    /// The policy it describes, validated; a custom break duration cannot be applied from Redis (a function does
    /// not travel), and a value out of range throws `FuseboxError/Code/invalidPolicy`.
    func policy() throws(FuseboxError) -> BreakerPolicy {
        func duration(_ milliseconds: Int64?, _ field: String) throws(FuseboxError) -> Duration {
            guard let milliseconds, milliseconds >= 0, milliseconds < 1_000_000_000_000_000 else { throw Self.corrupt(field) }
            return .milliseconds(milliseconds)
        }
        var policy = BreakerPolicy()
        policy.failureRateThreshold = failureRateThreshold
        policy.consecutiveFailureThreshold = consecutiveFailureThreshold
        policy.slowCallRateThreshold = slowCallRateThreshold
        policy.slowCallDuration = try duration(slowCallDurationMs, "slowCallDurationMs")
        policy.minimumThroughput = minimumThroughput
        switch window.kind {
        case "time":
            guard let buckets = window.buckets else { throw Self.corrupt("window.buckets") }
            policy.window = .time(samplingDuration: try duration(window.samplingMs, "window.samplingMs"), buckets: buckets)
        case "count":
            guard let size = window.size else { throw Self.corrupt("window.size") }
            policy.window = .count(size)
        default:
            throw Self.corrupt("window.kind")
        }
        switch breakDuration.kind {
        case "fixed":
            policy.breakDuration = .fixed(try duration(breakDuration.ms, "breakDuration.ms"))
        case "exponential":
            guard let factor = breakDuration.factor else { throw Self.corrupt("breakDuration.factor") }
            policy.breakDuration = .exponential(
                base: try duration(breakDuration.baseMs, "breakDuration.baseMs"), factor: factor,
                maximum: try duration(breakDuration.maximumMs, "breakDuration.maximumMs"))
        case "linear":
            policy.breakDuration = .linear(
                base: try duration(breakDuration.baseMs, "breakDuration.baseMs"),
                increment: try duration(breakDuration.incrementMs, "breakDuration.incrementMs"),
                maximum: try duration(breakDuration.maximumMs, "breakDuration.maximumMs"))
        case "adaptive":
            policy.breakDuration = .adaptive
        case "custom":
            throw FuseboxError(code: .invalidPolicy, message: "a custom break duration cannot be stored or applied from Redis")
        default:
            throw Self.corrupt("breakDuration.kind")
        }
        policy.permittedCallsInHalfOpen = permittedCallsInHalfOpen
        policy.successThreshold = successThreshold
        policy.maxHalfOpenDuration = try duration(maxHalfOpenDurationMs, "maxHalfOpenDurationMs")
        guard let mode = BreakerPolicy.Mode(rawValue: mode) else { throw Self.corrupt("mode") }
        policy.mode = mode
        policy.adaptiveThrottling = adaptiveThrottling.map { .init(multiplier: $0.multiplier) }
        if let relative = relativeFailureRate {
            policy.relativeFailureRate = .init(
                factor: relative.factor, floor: relative.floor, horizon: try duration(relative.horizonMs, "relativeFailureRate.horizonMs"),
                warmupCalls: relative.warmupCalls)
        }
        policy.minimumInstances = minimumInstances
        return try policy.validated()
    }

    static func corrupt(_ field: String) -> FuseboxError {
        FuseboxError(code: .corruptState, message: "the policy's field '\(field)' is missing or not what Fusebox writes")
    }
}

/// Any key of a JSON object, to see every key it has.
struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}
