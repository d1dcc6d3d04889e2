import Configuration

/// Where a breaker's policy in force came from.
public enum PolicyOrigin: String, Sendable, Hashable, Codable, CustomStringConvertible {
    /// `BreakerPolicy()`: nothing configured it.
    case defaults
    /// The configuration: `fusebox.breakers.NAME.*`, or `fusebox.defaultPolicy.*` for every breaker.
    case configuration
    /// The application's code (`registry.breaker(name, policy:)`).
    case code
    /// An operator's fleet-wide override (`fusebox policy set`), in force until cleared.
    case override

    /// The origin as the admin API and `fusebox policy show` write it.
    public var description: String { rawValue }
}

/// The configuration an application gives Fusebox: which adapter, where Redis is, how the distributed adapter
/// paces its writes, and the breakers' policies. Read it from any swift-configuration provider with
/// ``init(config:)`` (environment variables, a JSON file, several in order), or build it in code.
///
/// Every key, its default and its rule is listed in Docs/configuration.md. A value that is not valid is refused
/// by ``init(config:)`` with the key, the value and the rule it broke.
public struct FuseboxConfiguration: Sendable {
    /// The global switch (`fusebox.enabled`): when `false`, every breaker admits every call and records nothing.
    public var isEnabled = true
    /// `local` or `distributed` (`fusebox.adapter`).
    public var adapter: AdapterKind
    /// The Redis URL for the `distributed` adapter (`fusebox.redis.url`).
    public var redisURL: String
    /// The key prefix in Redis (`fusebox.namespace`).
    public var namespace: String
    /// What the distributed adapter does while Redis is unreachable (`fusebox.storeDownPolicy`).
    public var storeDownPolicy = StoreDownPolicy.local
    /// How long, at most, a call waits for Redis before the store-down policy decides it
    /// (`fusebox.admissionBudget`).
    public var admissionBudget: Duration = .milliseconds(50)
    /// How often buffered outcomes are written (`fusebox.flushInterval`).
    public var flushInterval: Duration = .seconds(1)
    /// How long successes may wait while a breaker is quiet (`fusebox.quietFlushInterval`).
    public var quietFlushInterval: Duration = .seconds(5)
    /// How often every cached state is read again (`fusebox.refreshInterval`).
    public var refreshInterval: Duration = .seconds(30)
    /// How often, at most, the fleet writes one quiet breaker (`fusebox.quietFleetWritesPerSecond`): the quiet hold
    /// grows with the instances up.
    public var quietFleetWritesPerSecond = 2
    /// How often each instance tells Redis it is up (`fusebox.membershipInterval`).
    public var membershipInterval: Duration = .seconds(1)
    /// Distinct failing instances needed to trip, for breakers whose policy does not say (`fusebox.minimumInstances`).
    public var minimumInstances = 1
    /// The policy of every breaker that neither code nor `fusebox.breakers.NAME.*` configures
    /// (`fusebox.defaultPolicy.*`).
    public var defaultPolicy = BreakerPolicy()
    /// Policies set in code for named breakers; the reader's `fusebox.breakers.NAME.*` keys take precedence.
    public var policies: [String: BreakerPolicy] = [:]
    /// The reader the policies of named breakers are read from, and watched by the registry for changes.
    public private(set) var reader: ConfigReader?

    /// Makes a configuration in code.
    public init(adapter: AdapterKind = .local, redisURL: String = "redis://127.0.0.1:6379", namespace: String = "fusebox") {
        self.adapter = adapter
        self.redisURL = redisURL
        self.namespace = namespace
    }

    /// Reads the configuration from `config` (keys under `fusebox.`), checking every value it finds: the global
    /// keys, `fusebox.defaultPolicy.*`, and `fusebox.breakers.NAME.*` for each name in `fusebox.breakerNames`
    /// (the policies of other names are read, and checked, when the breaker is first asked for).
    ///
    /// Throws ``FuseboxError/Code/invalidConfiguration`` naming the key, its value and the rule it broke.
    public init(config: ConfigReader) throws(FuseboxError) {
        try self.init(snapshot: config.snapshot())
        reader = config
    }

    /// Reads `FUSEBOX_*` variables from `environment` the way ``init(config:)`` reads them from an
    /// `EnvironmentVariablesProvider` (`FUSEBOX_ADAPTER`, `FUSEBOX_REDIS_URL`,
    /// `FUSEBOX_BREAKERS_PAYMENTS_FAILURE_RATIO`, …).
    public init(environment: [String: String]) throws(FuseboxError) {
        try self.init(config: ConfigReader(provider: EnvironmentVariablesProvider(environmentVariables: environment)))
    }

    /// Reads everything but the breakers' own policies from one snapshot.
    init(snapshot: ConfigSnapshotReader) throws(FuseboxError) {
        self.init()
        let values = ConfigValues(snapshot)
        if let enabled = try values.bool("fusebox.enabled") { isEnabled = enabled }
        if let kind = try values.choice("fusebox.adapter", AdapterKind.self) { adapter = kind }
        if let url = try values.text("fusebox.redis.url") { redisURL = url }
        if let namespace = try values.text("fusebox.namespace") {
            guard !namespace.isEmpty, !namespace.contains(where: { $0 == "{" || $0 == "}" || $0.isWhitespace }) else {
                throw values.refusal("fusebox.namespace", namespace, "non-empty, without spaces, '{' or '}'")
            }
            self.namespace = namespace
        }
        if let policy = try values.choice("fusebox.storeDownPolicy", StoreDownPolicy.self) { storeDownPolicy = policy }
        if let budget = try values.duration("fusebox.admissionBudget", positive: true) { admissionBudget = budget }
        if let interval = try values.duration("fusebox.flushInterval", positive: true) { flushInterval = interval }
        if let interval = try values.duration("fusebox.quietFlushInterval", positive: true) { quietFlushInterval = interval }
        if let interval = try values.duration("fusebox.refreshInterval", positive: true) { refreshInterval = interval }
        if let rate = try values.integer("fusebox.quietFleetWritesPerSecond", in: 1...1_000_000) { quietFleetWritesPerSecond = rate }
        if let interval = try values.duration("fusebox.membershipInterval", positive: true) {
            guard interval >= .milliseconds(10) else { throw values.refusal("fusebox.membershipInterval", "\(interval)", "≥ 10 ms") }
            membershipInterval = interval
        }
        if let instances = try values.integer("fusebox.minimumInstances", in: 1...1000) { minimumInstances = instances }
        defaultPolicy = try values.policy(at: "fusebox.defaultPolicy", base: BreakerPolicy())
        for name in try values.list("fusebox.breakerNames") {
            _ = try values.policy(at: Self.policyKey(of: name), base: defaultPolicy)
        }
    }

    /// The policy breaker `name` gets when code does not give one, and where it comes from: the reader's
    /// `fusebox.breakers.NAME.*` keys over ``defaultPolicy`` (read now, so a reloading provider's latest values),
    /// else ``policies``, else ``defaultPolicy``. Throws ``FuseboxError/Code/invalidConfiguration`` for a bad value.
    public func policy(for name: String) throws(FuseboxError) -> (policy: BreakerPolicy, origin: PolicyOrigin) {
        try policy(for: name, in: reader?.snapshot())
    }

    /// ``policy(for:)`` read from `snapshot` (the registry passes each new snapshot of a reloading provider).
    func policy(for name: String, in snapshot: ConfigSnapshotReader?) throws(FuseboxError) -> (policy: BreakerPolicy, origin: PolicyOrigin) {
        if let snapshot {
            let values = ConfigValues(snapshot)
            let key = Self.policyKey(of: name)
            if values.hasAny(under: key, ConfigValues.policyFields) {
                return (try values.policy(at: key, base: policies[name] ?? defaultPolicy), .configuration)
            }
        }
        if let policy = policies[name] { return (policy, .code) }
        return (defaultPolicy, defaultPolicy.hasSameStateRules(as: BreakerPolicy()) && defaultPolicy.callTimeout == nil ? .defaults : .configuration)
    }

    /// A copy with the global values re-read from `snapshot` (the reader stays).
    func reloaded(from snapshot: ConfigSnapshotReader) throws(FuseboxError) -> FuseboxConfiguration {
        var next = try FuseboxConfiguration(snapshot: snapshot)
        next.policies = policies
        next.reader = reader
        return next
    }

    /// The key prefix of breaker `name`'s policy.
    static func policyKey(of name: String) -> ConfigKey { ConfigKey(["fusebox", "breakers", name]) }
}

/// Typed reads of configuration values that refuse what they cannot use, naming the key, the value and the rule.
struct ConfigValues {
    let snapshot: ConfigSnapshotReader

    init(_ snapshot: ConfigSnapshotReader) { self.snapshot = snapshot }

    /// The policy keys under `fusebox.breakers.NAME` and `fusebox.defaultPolicy`.
    static let policyFields = [
        "failureRatio", "consecutiveFailures", "slowCallRatio", "slowCallDuration", "minimumThroughput", "window",
        "windowDuration", "windowBuckets", "windowSize", "breakDuration", "breakBackoff", "breakBackoffFactor",
        "breakBackoffIncrement", "maxBreakDuration", "halfOpenPermits", "successThreshold", "maxHalfOpenDuration",
        "mode", "callTimeout", "minimumInstances", "adaptiveThrottling", "relativeFailureFactor", "relativeFailureFloor",
        "relativeFailureHorizon", "relativeFailureWarmupCalls",
    ]

    func refusal(_ key: ConfigKey, _ value: String, _ rule: String) -> FuseboxError {
        FuseboxError(code: .invalidConfiguration, message: "configuration key '\(Self.name(of: key))' is '\(value)'; allowed: \(rule)")
    }

    static func name(of key: ConfigKey) -> String { key.components.joined(separator: ".") }

    /// The value at `key` as text, whatever type the provider holds it as (a JSON number, an environment string).
    func raw(_ key: ConfigKey) -> String? {
        if let text = snapshot.string(forKey: key) { return text }
        if let number = snapshot.int(forKey: key) { return String(number) }
        if let number = snapshot.double(forKey: key) { return String(number) }
        if let flag = snapshot.bool(forKey: key) { return String(flag) }
        return nil
    }

    func hasAny(under prefix: ConfigKey, _ fields: [String]) -> Bool {
        fields.contains { raw(ConfigKey(prefix.components + [$0])) != nil }
    }

    func text(_ key: ConfigKey) throws(FuseboxError) -> String? { raw(key) }

    func bool(_ key: ConfigKey) throws(FuseboxError) -> Bool? {
        guard let text = raw(key) else { return nil }
        switch text.lowercased() {
        case "true", "yes", "on", "1": return true
        case "false", "no", "off", "0": return false
        default: throw refusal(key, text, "true or false")
        }
    }

    func integer(_ key: ConfigKey, in range: ClosedRange<Int>) throws(FuseboxError) -> Int? {
        guard let text = raw(key) else { return nil }
        guard let value = Int(text.trimmed), range.contains(value) else {
            throw refusal(key, text, "a whole number in \(range.lowerBound)…\(range.upperBound)")
        }
        return value
    }

    /// A number, or `nil` when the key is absent; `.some(nil)` for `off` (the rule turned off).
    func ratio(_ key: ConfigKey) throws(FuseboxError) -> Double?? {
        guard let text = raw(key) else { return nil }
        if ["off", "none", "null"].contains(text.lowercased()) { return .some(nil) }
        guard let value = Double(text.trimmed), value > 0, value <= 1 else {
            throw refusal(key, text, "a ratio 0 < R ≤ 1, or off")
        }
        return value
    }

    func number(_ key: ConfigKey, atLeast minimum: Double) throws(FuseboxError) -> Double? {
        guard let text = raw(key) else { return nil }
        guard let value = Double(text.trimmed), value.isFinite, value >= minimum else {
            throw refusal(key, text, "a number ≥ \(minimum)")
        }
        return value
    }

    /// A duration: `250ms`, `30s`, `5m`, `1h`, or a bare number of seconds.
    func duration(_ key: ConfigKey, positive: Bool) throws(FuseboxError) -> Duration? {
        guard let text = raw(key) else { return nil }
        guard let value = Duration(parsing: text), positive ? value > .zero : value >= .zero else {
            throw refusal(key, text, "a duration such as 250ms, 30s, 5m or 1h (a bare number is seconds)\(positive ? ", > 0" : ""), at most 10 years")
        }
        return value
    }

    /// A duration, or `.some(nil)` for `off`.
    func optionalDuration(_ key: ConfigKey) throws(FuseboxError) -> Duration?? {
        guard let text = raw(key) else { return nil }
        if ["off", "none", "null"].contains(text.lowercased()) { return .some(nil) }
        return try duration(key, positive: true)
    }

    func choice<T: RawRepresentable & CaseIterable>(_ key: ConfigKey, _ type: T.Type) throws(FuseboxError) -> T? where T.RawValue == String {
        guard let text = raw(key) else { return nil }
        // `failOpen`, `fail_open`, `fail-open` and `FAIL_OPEN` all name the same case.
        func folded(_ name: String) -> String { name.lowercased().filter { $0 != "_" && $0 != "-" } }
        guard let value = T.allCases.first(where: { folded($0.rawValue) == folded(text) }) else {
            throw refusal(key, text, T.allCases.map(\.rawValue).joined(separator: ", "))
        }
        return value
    }

    func list(_ key: ConfigKey) throws(FuseboxError) -> [String] {
        if let names = snapshot.stringArray(forKey: key) { return names.map { $0.trimmed }.filter { !$0.isEmpty } }
        return raw(key).map { $0.split(separator: ",").map { $0.trimmed }.filter { !$0.isEmpty } } ?? []
    }

    /// The policy under `prefix` (`failureRatio`, `breakDuration`, …) over `base`, checked as a whole.
    func policy(at prefix: ConfigKey, base: BreakerPolicy) throws(FuseboxError) -> BreakerPolicy {
        func key(_ field: String) -> ConfigKey { ConfigKey(prefix.components + [field]) }
        var policy = base
        if let ratio = try self.ratio(key("failureRatio")) { policy.failureRateThreshold = ratio }
        if let ratio = try self.ratio(key("slowCallRatio")) { policy.slowCallRateThreshold = ratio }
        if let text = raw(key("consecutiveFailures")) {
            if ["off", "none", "null"].contains(text.lowercased()) {
                policy.consecutiveFailureThreshold = nil
            } else {
                policy.consecutiveFailureThreshold = try integer(key("consecutiveFailures"), in: 1...1_000_000)
            }
        }
        if let duration = try duration(key("slowCallDuration"), positive: true) { policy.slowCallDuration = duration }
        if let count = try integer(key("minimumThroughput"), in: 1...1_000_000) { policy.minimumThroughput = count }

        enum WindowKind: String, CaseIterable { case time, count }
        let kind = try choice(key("window"), WindowKind.self)
        let sampling = try duration(key("windowDuration"), positive: true)
        let buckets = try integer(key("windowBuckets"), in: 1...1000)
        let size = try integer(key("windowSize"), in: 1...100_000)
        if kind != nil || sampling != nil || buckets != nil || size != nil {
            let currentCount: Int? = if case .count(let size) = policy.window { size } else { nil }
            let currentTime: (Duration, Int)? = if case .time(let s, let b) = policy.window { (s, b) } else { nil }
            let wantsCount = kind.map { $0 == .count } ?? (size != nil || (currentCount != nil && sampling == nil && buckets == nil))
            if wantsCount {
                policy.window = .count(size ?? currentCount ?? 100)
            } else {
                policy.window = .time(samplingDuration: sampling ?? currentTime?.0 ?? .seconds(10), buckets: buckets ?? currentTime?.1 ?? 10)
            }
        }

        enum Backoff: String, CaseIterable { case fixed, exponential, linear, adaptive }
        let backoff = try choice(key("breakBackoff"), Backoff.self)
        let breakBase = try duration(key("breakDuration"), positive: true)
        let factor = try number(key("breakBackoffFactor"), atLeast: 1)
        let increment = try duration(key("breakBackoffIncrement"), positive: false)
        let maximum = try duration(key("maxBreakDuration"), positive: true)
        if backoff != nil || breakBase != nil || factor != nil || increment != nil || maximum != nil {
            let (currentKind, currentBase, currentMaximum): (Backoff, Duration, Duration?) = switch policy.breakDuration {
            case .fixed(let d): (.fixed, d, nil)
            case .exponential(let b, _, let m): (.exponential, b, m)
            case .linear(let b, _, let m): (.linear, b, m)
            case .adaptive, .custom: (.adaptive, .seconds(30), nil)
            }
            let base = breakBase ?? currentBase
            // Without a maximum, backoff stops growing at ten minutes (or the base, when that is longer).
            let ceiling = maximum ?? currentMaximum ?? max(base, .seconds(600))
            switch backoff ?? currentKind {
            case .fixed: policy.breakDuration = .fixed(base)
            case .exponential: policy.breakDuration = .exponential(base: base, factor: factor ?? 2, maximum: ceiling)
            case .linear: policy.breakDuration = .linear(base: base, increment: increment ?? base, maximum: ceiling)
            case .adaptive: policy.breakDuration = .adaptive
            }
        }
        if let permits = try integer(key("halfOpenPermits"), in: 1...10_000) { policy.permittedCallsInHalfOpen = permits }
        if let count = try integer(key("successThreshold"), in: 1...10_000) { policy.successThreshold = count }
        if let duration = try duration(key("maxHalfOpenDuration"), positive: true) { policy.maxHalfOpenDuration = duration }
        if let mode = try choice(key("mode"), BreakerPolicy.Mode.self) { policy.mode = mode }
        if let timeout = try optionalDuration(key("callTimeout")) { policy.callTimeout = timeout }
        if let instances = try integer(key("minimumInstances"), in: 1...1000) { policy.minimumInstances = instances }
        if let multiplier = try number(key("adaptiveThrottling"), atLeast: 1) { policy.adaptiveThrottling = .init(multiplier: multiplier) }
        let relativeFactor = try number(key("relativeFailureFactor"), atLeast: 0)
        let relativeFloor = try self.ratio(key("relativeFailureFloor"))
        let relativeHorizon = try duration(key("relativeFailureHorizon"), positive: true)
        let relativeWarmup = try integer(key("relativeFailureWarmupCalls"), in: 1...1_000_000_000)
        if relativeFactor != nil || relativeFloor != nil || relativeHorizon != nil || relativeWarmup != nil {
            var relative = policy.relativeFailureRate ?? .init()
            if let relativeFactor { relative.factor = relativeFactor }
            if let floor = relativeFloor ?? nil { relative.floor = floor }
            if let relativeHorizon { relative.horizon = relativeHorizon }
            if let relativeWarmup { relative.warmupCalls = relativeWarmup }
            policy.relativeFailureRate = relative
        }
        do {
            return try policy.validated()
        } catch {
            throw FuseboxError(code: .invalidConfiguration, message: "configuration keys '\(Self.name(of: prefix)).*': \(error.message)")
        }
    }
}

extension ConfigValues {
    func bool(_ key: String) throws(FuseboxError) -> Bool? { try bool(ConfigKey(key)) }
    func text(_ key: String) throws(FuseboxError) -> String? { try text(ConfigKey(key)) }
    func integer(_ key: String, in range: ClosedRange<Int>) throws(FuseboxError) -> Int? { try integer(ConfigKey(key), in: range) }
    func duration(_ key: String, positive: Bool) throws(FuseboxError) -> Duration? { try duration(ConfigKey(key), positive: positive) }
    func choice<T: RawRepresentable & CaseIterable>(_ key: String, _ type: T.Type) throws(FuseboxError) -> T? where T.RawValue == String {
        try choice(ConfigKey(key), type)
    }
    func list(_ key: String) throws(FuseboxError) -> [String] { try list(ConfigKey(key)) }
    func policy(at key: String, base: BreakerPolicy) throws(FuseboxError) -> BreakerPolicy { try policy(at: ConfigKey(key), base: base) }
    func refusal(_ key: String, _ value: String, _ rule: String) -> FuseboxError { refusal(ConfigKey(key), value, rule) }
}

extension Duration {
    /// A duration written for people: `250us`, `500ms`, `30s`, `5m`, `1h`, `1d`, or a bare number of seconds
    /// (decimals allowed; case and surrounding spaces ignored). `nil` for anything else, a negative or non-finite
    /// number, or more than ``BreakerPolicy/longestDuration`` (ten years). Configuration and the `fusebox` command
    /// read durations with it.
    package init?(parsing text: String) {
        let trimmed = text.trimmed.lowercased()
        let units: [(suffix: String, seconds: Double)] = [("us", 1e-6), ("ms", 1e-3), ("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)]
        let unit = units.first { trimmed.hasSuffix($0.suffix) } ?? ("", 1)
        guard let number = Double(trimmed.dropLast(unit.suffix.count)), number.isFinite, number >= 0,
            number * unit.seconds <= Double(BreakerPolicy.longestDuration.components.seconds)
        else { return nil }
        // Scaled in the unit's own terms, so that 0.001ms is exactly 1 µs.
        switch unit.suffix {
        case "us": self = .microseconds(number)
        case "ms": self = .milliseconds(number)
        default: self = .seconds(number * unit.seconds)
        }
    }
}

extension StringProtocol {
    /// Without leading and trailing spaces and tabs.
    var trimmed: String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}

/// What the `distributed` adapter does while Redis cannot be reached, or a breaker's keys in it are corrupt: the
/// one type for it, in configuration (`fusebox.storeDownPolicy`) and in `DistributedOptions.whenUnavailable`.
public enum StoreDownPolicy: String, Sendable, Hashable, CaseIterable, Codable {
    /// Keep protecting this instance with an in-process breaker of the same policy until Redis is back; it takes up
    /// the state Redis last had (a breaker known open stays open until its break ends).
    case local
    /// Admit every call.
    case failOpen
    /// Reject every call (with code `FuseboxError/Code/backendUnavailable`).
    case failClosed
}
