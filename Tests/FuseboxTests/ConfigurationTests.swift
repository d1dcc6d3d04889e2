import Configuration
import Foundation
import Fusebox
import FuseboxTestKit
import Testing
import TestKinds

/// `FuseboxConfiguration(config:)`: every key from the environment and from a JSON and a YAML file, precedence, reload, and
/// each kind of bad value.
@Suite("Configuration", .kind(.integration))
struct ConfigurationTests {
    /// Every global key and every policy key, as environment variables.
    static let everyKey: [String: String] = [
        "FUSEBOX_ENABLED": "true", "FUSEBOX_ADAPTER": "distributed", "FUSEBOX_REDIS_URL": "redis://r:7000",
        "FUSEBOX_NAMESPACE": "shop", "FUSEBOX_STORE_DOWN_POLICY": "fail_closed", "FUSEBOX_FLUSH_INTERVAL": "250ms",
        "FUSEBOX_QUIET_FLUSH_INTERVAL": "3s", "FUSEBOX_REFRESH_INTERVAL": "1m", "FUSEBOX_MINIMUM_INSTANCES": "2",
        "FUSEBOX_QUIET_FLEET_WRITES_PER_SECOND": "4", "FUSEBOX_MEMBERSHIP_INTERVAL": "500ms", "FUSEBOX_ADMISSION_BUDGET": "20ms",
        "FUSEBOX_DEFAULT_POLICY_FAILURE_RATIO": "0.4", "FUSEBOX_DEFAULT_POLICY_MINIMUM_THROUGHPUT": "20",
        "FUSEBOX_BREAKERS_PAYMENTS_FAILURE_RATIO": "0.3",
        "FUSEBOX_BREAKERS_PAYMENTS_CONSECUTIVE_FAILURES": "5",
        "FUSEBOX_BREAKERS_PAYMENTS_SLOW_CALL_RATIO": "0.8",
        "FUSEBOX_BREAKERS_PAYMENTS_SLOW_CALL_DURATION": "2s",
        "FUSEBOX_BREAKERS_PAYMENTS_MINIMUM_THROUGHPUT": "50",
        "FUSEBOX_BREAKERS_PAYMENTS_WINDOW": "time",
        "FUSEBOX_BREAKERS_PAYMENTS_WINDOW_DURATION": "30s",
        "FUSEBOX_BREAKERS_PAYMENTS_WINDOW_BUCKETS": "15",
        "FUSEBOX_BREAKERS_PAYMENTS_BREAK_DURATION": "10s",
        "FUSEBOX_BREAKERS_PAYMENTS_BREAK_BACKOFF": "exponential",
        "FUSEBOX_BREAKERS_PAYMENTS_BREAK_BACKOFF_FACTOR": "3",
        "FUSEBOX_BREAKERS_PAYMENTS_MAX_BREAK_DURATION": "5m",
        "FUSEBOX_BREAKERS_PAYMENTS_HALF_OPEN_PERMITS": "3",
        "FUSEBOX_BREAKERS_PAYMENTS_SUCCESS_THRESHOLD": "2",
        "FUSEBOX_BREAKERS_PAYMENTS_MAX_HALF_OPEN_DURATION": "45s",
        "FUSEBOX_BREAKERS_PAYMENTS_MODE": "metrics-only",
        "FUSEBOX_BREAKERS_PAYMENTS_CALL_TIMEOUT": "1500ms",
        "FUSEBOX_BREAKERS_PAYMENTS_MINIMUM_INSTANCES": "3",
        "FUSEBOX_BREAKERS_PAYMENTS_ADAPTIVE_THROTTLING": "3",
        "FUSEBOX_BREAKERS_SEARCH_WINDOW_SIZE": "200",
        "FUSEBOX_BREAKERS_SEARCH_BREAK_BACKOFF": "linear",
        "FUSEBOX_BREAKERS_SEARCH_BREAK_BACKOFF_INCREMENT": "5s",
        "FUSEBOX_BREAKERS_SEARCH_FAILURE_RATIO": "off",
        "FUSEBOX_BREAKERS_SEARCH_CONSECUTIVE_FAILURES": "4",
    ]

    static func checkEveryKey(_ configuration: FuseboxConfiguration) throws {
        #expect(configuration.isEnabled)
        #expect(configuration.adapter == .distributed)
        #expect(configuration.redisURL == "redis://r:7000")
        #expect(configuration.namespace == "shop")
        #expect(configuration.storeDownPolicy == .failClosed)
        #expect(configuration.flushInterval == .milliseconds(250))
        #expect(configuration.quietFlushInterval == .seconds(3))
        #expect(configuration.refreshInterval == .seconds(60))
        #expect(configuration.minimumInstances == 2)
        #expect(configuration.quietFleetWritesPerSecond == 4)
        #expect(configuration.membershipInterval == .milliseconds(500))
        #expect(configuration.admissionBudget == .milliseconds(20))
        #expect(configuration.defaultPolicy.failureRateThreshold == 0.4)
        #expect(configuration.defaultPolicy.minimumThroughput == 20)

        let (payments, origin) = try configuration.policy(for: "payments")
        #expect(origin == .configuration)
        #expect(payments.failureRateThreshold == 0.3)
        #expect(payments.consecutiveFailureThreshold == 5)
        #expect(payments.slowCallRateThreshold == 0.8)
        #expect(payments.slowCallDuration == .seconds(2))
        #expect(payments.minimumThroughput == 50)
        #expect(payments.window == .time(samplingDuration: .seconds(30), buckets: 15))
        #expect(payments.breakDuration.description == BreakerPolicy.BreakDuration.exponential(base: .seconds(10), factor: 3, maximum: .seconds(300)).description)
        #expect(payments.permittedCallsInHalfOpen == 3)
        #expect(payments.successThreshold == 2)
        #expect(payments.maxHalfOpenDuration == .seconds(45))
        #expect(payments.mode == .metricsOnly)
        #expect(payments.callTimeout == .milliseconds(1500))
        #expect(payments.minimumInstances == 3)
        #expect(payments.adaptiveThrottling?.multiplier == 3)

        let (search, _) = try configuration.policy(for: "search")
        #expect(search.window == .count(200))
        #expect(search.breakDuration.description == BreakerPolicy.BreakDuration.linear(base: .seconds(30), increment: .seconds(5), maximum: .seconds(600)).description)
        #expect(search.failureRateThreshold == nil)
        #expect(search.consecutiveFailureThreshold == 4)
        // Unconfigured names take the default policy, which inherits into named ones.
        let (other, otherOrigin) = try configuration.policy(for: "inventory")
        #expect(otherOrigin == .configuration)
        #expect(other.failureRateThreshold == 0.4 && other.minimumThroughput == 20)
        #expect(search.minimumThroughput == 20)
    }

    @Test("every key from environment variables")
    func everyKeyFromEnvironment() throws {
        let reader = ConfigReader(provider: EnvironmentVariablesProvider(environmentVariables: Self.everyKey))
        try Self.checkEveryKey(try FuseboxConfiguration(config: reader))
        // The environment convenience reads the same keys.
        try Self.checkEveryKey(try FuseboxConfiguration(environment: Self.everyKey))
    }

    @Test("every key from a JSON file")
    func everyKeyFromJSONFile() async throws {
        let json = """
            {"fusebox": {
              "enabled": true, "adapter": "distributed", "redis": {"url": "redis://r:7000"}, "namespace": "shop",
              "storeDownPolicy": "failClosed", "flushInterval": "250ms", "quietFlushInterval": 3, "refreshInterval": "1m",
              "minimumInstances": 2, "quietFleetWritesPerSecond": 4, "membershipInterval": "500ms", "admissionBudget": "20ms",
              "defaultPolicy": {"failureRatio": 0.4, "minimumThroughput": 20},
              "breakers": {
                "payments": {"failureRatio": 0.3, "consecutiveFailures": 5, "slowCallRatio": 0.8, "slowCallDuration": "2s",
                  "minimumThroughput": 50, "window": "time", "windowDuration": "30s", "windowBuckets": 15,
                  "breakDuration": "10s", "breakBackoff": "exponential", "breakBackoffFactor": 3, "maxBreakDuration": "5m",
                  "halfOpenPermits": 3, "successThreshold": 2, "maxHalfOpenDuration": "45s", "mode": "metrics_only",
                  "callTimeout": "1500ms", "minimumInstances": 3, "adaptiveThrottling": 3},
                "search": {"windowSize": 200, "breakBackoff": "linear", "breakBackoffIncrement": "5s", "failureRatio": "off",
                  "consecutiveFailures": 4}
              }
            }}
            """
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-config-\(UInt32.random(in: 0...UInt32.max)).json").path
        try json.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let file = try await FileProvider<JSONSnapshot>(config: ConfigReader(provider: InMemoryProvider(values: ["filePath": .init(.string(path), isSecret: false)])))
        try Self.checkEveryKey(try FuseboxConfiguration(config: ConfigReader(provider: file)))
    }

    @Test("every key from a YAML file")
    func everyKeyFromYAML() async throws {
        let yaml = """
            fusebox:
              enabled: true
              adapter: distributed
              redis:
                url: redis://r:7000
              namespace: shop
              storeDownPolicy: failClosed
              flushInterval: 250ms
              quietFlushInterval: 3
              refreshInterval: 1m
              minimumInstances: 2
              quietFleetWritesPerSecond: 4
              membershipInterval: 500ms
              admissionBudget: 20ms
              defaultPolicy:
                failureRatio: 0.4
                minimumThroughput: 20
              breakers:
                payments:
                  failureRatio: 0.3
                  consecutiveFailures: 5
                  slowCallRatio: 0.8
                  slowCallDuration: 2s
                  minimumThroughput: 50
                  window: time
                  windowDuration: 30s
                  windowBuckets: 15
                  breakDuration: 10s
                  breakBackoff: exponential
                  breakBackoffFactor: 3
                  maxBreakDuration: 5m
                  halfOpenPermits: 3
                  successThreshold: 2
                  maxHalfOpenDuration: 45s
                  mode: metrics_only
                  callTimeout: 1500ms
                  minimumInstances: 3
                  adaptiveThrottling: 3
                search:
                  windowSize: 200
                  breakBackoff: linear
                  breakBackoffIncrement: 5s
                  failureRatio: "off"
                  consecutiveFailures: 4
            """
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-config-\(UInt32.random(in: 0...UInt32.max)).yaml").path
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let file = try await FileProvider<YAMLSnapshot>(config: ConfigReader(provider: InMemoryProvider(values: ["filePath": .init(.string(path), isSecret: false)])))
        try Self.checkEveryKey(try FuseboxConfiguration(config: ConfigReader(provider: file)))
    }

    @Test("precedence: the first provider wins, configuration over code's defaults, code's explicit policy over both")
    func precedence() throws {
        let environment = EnvironmentVariablesProvider(environmentVariables: ["FUSEBOX_BREAKERS_PAYMENTS_FAILURE_RATIO": "0.3"])
        let file = InMemoryProvider(values: [
            "fusebox.breakers.payments.failureRatio": .init(.double(0.9), isSecret: false),
            "fusebox.breakers.payments.minimumThroughput": .init(.int(7), isSecret: false),
        ])
        var configuration = try FuseboxConfiguration(config: ConfigReader(providers: [environment, file]))
        var fromCode = BreakerPolicy()
        fromCode.successThreshold = 4
        configuration.policies["payments"] = fromCode
        configuration.policies["search"] = fromCode
        let (payments, origin) = try configuration.policy(for: "payments")
        #expect(origin == .configuration)
        #expect(payments.failureRateThreshold == 0.3, "the environment comes first")
        #expect(payments.minimumThroughput == 7, "the file fills in what the environment does not say")
        #expect(payments.successThreshold == 4, "configuration keys apply over the policy set in code")
        #expect(try configuration.policy(for: "search").origin == .code)
        #expect(try configuration.policy(for: "other").origin == .defaults)

        let registry = BreakerRegistry(adapter: LocalAdapter(), configuration: configuration)
        #expect(try registry.breaker("payments").backend.policy.failureRateThreshold == 0.3)
        var explicit = BreakerPolicy()
        explicit.failureRateThreshold = 0.6
        #expect(try registry.breaker("inventory", policy: explicit).backend.policy.failureRateThreshold == 0.6)
        #expect(registry.policyInForce(of: "inventory")?.origin == .code)
        #expect(registry.policyInForce(of: "payments")?.origin == .configuration)
        // Asking again without a policy returns the breaker as made.
        #expect(try registry.breaker("inventory").backend.policy.failureRateThreshold == 0.6)
    }

    @Test("bad values are refused with the key, the value and the rule", arguments: [
        ("FUSEBOX_ADAPTER", "remote", "fusebox.adapter", "local, distributed"),
        ("FUSEBOX_ENABLED", "maybe", "fusebox.enabled", "true or false"),
        ("FUSEBOX_NAMESPACE", "a b", "fusebox.namespace", "without spaces"),
        ("FUSEBOX_STORE_DOWN_POLICY", "panic", "fusebox.storeDownPolicy", "failOpen"),
        ("FUSEBOX_FLUSH_INTERVAL", "0s", "fusebox.flushInterval", "> 0"),
        ("FUSEBOX_REFRESH_INTERVAL", "soon", "fusebox.refreshInterval", "a duration"),
        ("FUSEBOX_ADMISSION_BUDGET", "0ms", "fusebox.admissionBudget", "> 0"),
        ("FUSEBOX_QUIET_FLUSH_INTERVAL", "1e300s", "fusebox.quietFlushInterval", "at most 10 years"),
        ("FUSEBOX_MINIMUM_INSTANCES", "0", "fusebox.minimumInstances", "1…1000"),
        ("FUSEBOX_DEFAULT_POLICY_FAILURE_RATIO", "1.5", "fusebox.defaultPolicy.failureRatio", "0 < R ≤ 1"),
        ("FUSEBOX_DEFAULT_POLICY_MINIMUM_THROUGHPUT", "ten", "fusebox.defaultPolicy.minimumThroughput", "whole number"),
        ("FUSEBOX_DEFAULT_POLICY_WINDOW_BUCKETS", "5000", "fusebox.defaultPolicy.windowBuckets", "1…1000"),
        ("FUSEBOX_DEFAULT_POLICY_MODE", "loud", "fusebox.defaultPolicy.mode", "metrics_only"),
        ("FUSEBOX_DEFAULT_POLICY_BREAK_BACKOFF_FACTOR", "0.5", "fusebox.defaultPolicy.breakBackoffFactor", "≥ 1.0"),
        ("FUSEBOX_DEFAULT_POLICY_CALL_TIMEOUT", "-1s", "fusebox.defaultPolicy.callTimeout", "a duration"),
        ("FUSEBOX_DEFAULT_POLICY_ADAPTIVE_THROTTLING", "0.5", "fusebox.defaultPolicy.adaptiveThrottling", "≥ 1.0"),
    ])
    func badValues(variable: String, value: String, key: String, rule: String) throws {
        #expect {
            try FuseboxConfiguration(environment: [variable: value])
        } throws: { error in
            let error = error as! FuseboxError
            return error.code == .invalidConfiguration && error.message.contains(key) && error.message.contains("'\(value)'")
                && error.message.contains(rule)
        }
    }

    @Test("a whole policy that breaks a rule across keys is refused at start-up for the names listed in fusebox.breakerNames")
    func crossFieldRules() throws {
        let environment = [
            "FUSEBOX_BREAKER_NAMES": "payments,search",
            "FUSEBOX_BREAKERS_SEARCH_FAILURE_RATIO": "off",
        ]
        #expect {
            try FuseboxConfiguration(environment: environment)
        } throws: { error in
            let message = (error as! FuseboxError).message
            return message.contains("fusebox.breakers.search") && message.contains("at least one trip rule")
        }
        // A name not listed is checked when the breaker is first asked for.
        let lazy = try FuseboxConfiguration(environment: ["FUSEBOX_BREAKERS_SEARCH_FAILURE_RATIO": "off"])
        let registry = BreakerRegistry(adapter: LocalAdapter(), configuration: lazy)
        #expect(throws: FuseboxError.self) { try registry.breaker("search") }
        #expect(registry.names.isEmpty)
    }

    @Test("fusebox.enabled = false makes every breaker a pass-through")
    func disabled() async throws {
        var policy = BreakerPolicy()
        policy.consecutiveFailureThreshold = 1
        let configuration = try FuseboxConfiguration(environment: ["FUSEBOX_ENABLED": "false"])
        #expect(!configuration.isEnabled)
        let registry = BreakerRegistry(adapter: LocalAdapter(), configuration: configuration)
        let breaker = try registry.breaker("payments", policy: policy)
        for _ in 0..<5 { try breaker.acquire().failure(Boom()) }
        _ = try breaker.acquire()
        #expect(try await breaker.snapshot().totals.calls == 0, "a disabled registry records nothing")
    }

    @Test("a reloading provider changes live breakers' policies, and the global switch, without a restart")
    func reload() async throws {
        let provider = MutableInMemoryProvider(initialValues: [
            "fusebox.breakers.payments.consecutiveFailures": .init(.int(5), isSecret: false),
        ])
        let configuration = try FuseboxConfiguration(config: ConfigReader(provider: provider))
        let clock = ManualClock()
        let registry = BreakerRegistry(adapter: LocalAdapter(clock: clock), configuration: configuration)
        let payments = try registry.breaker("payments")
        var fixed = BreakerPolicy()
        fixed.consecutiveFailureThreshold = 5
        let fromCode = try registry.breaker("search", policy: fixed)
        #expect(payments.backend.policy.consecutiveFailureThreshold == 5)
        let running = Task { try await registry.run() }
        defer { running.cancel() }

        provider.setValue(.init(.int(2), isSecret: false), forKey: ["fusebox", "breakers", "payments", "consecutiveFailures"])
        // Immediate when idle (the watch task runs at once); 10 s leaves room for a loaded two-core machine, where the
        // whole first test group runs beside it and this took over 2 s once.
        #expect(await eventually(within: .seconds(10)) { payments.backend.policy.consecutiveFailureThreshold == 2 })
        #expect(fromCode.backend.policy.consecutiveFailureThreshold == 5, "a policy given in code is not the configuration's")
        // The new rule trips the live breaker at two failures.
        try payments.acquire().failure(Boom())
        try payments.acquire().failure(Boom())
        #expect(try await payments.snapshot().state == .open)

        // A bad value is refused for its breaker, which keeps what it has; the global switch follows.
        provider.setValue(.init(.string("many"), isSecret: false), forKey: ["fusebox", "breakers", "payments", "consecutiveFailures"])
        provider.setValue(.init(.bool(false), isSecret: false), forKey: ["fusebox", "enabled"])
        #expect(await eventually(within: .seconds(10)) { !registry.isEnabled })
        #expect(payments.backend.policy.consecutiveFailureThreshold == 2)
        provider.setValue(.init(.int(3), isSecret: false), forKey: ["fusebox", "breakers", "payments", "consecutiveFailures"])
        #expect(await eventually(within: .seconds(10)) { payments.backend.policy.consecutiveFailureThreshold == 3 })
    }

    @Test("a JSON file watched by ReloadingFileProvider: an edited policy reaches the live breaker")
    func reloadingFile() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-reload-\(UInt32.random(in: 0...UInt32.max)).json").path
        try #"{"fusebox": {"breakers": {"payments": {"consecutiveFailures": 5}}}}"#.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let file = try await ReloadingFileProvider<JSONSnapshot>(config: ConfigReader(provider: InMemoryProvider(values: [
            "filePath": .init(.string(path), isSecret: false), "pollIntervalSeconds": .init(.int(1), isSecret: false),
        ])))
        let registry = BreakerRegistry(adapter: LocalAdapter(), configuration: try FuseboxConfiguration(config: ConfigReader(provider: file)))
        let payments = try registry.breaker("payments")
        #expect(payments.backend.policy.consecutiveFailureThreshold == 5)
        let running = [Task { try await file.run() }, Task { try await registry.run() }]
        defer { running.forEach { $0.cancel() } }
        try await Task.sleep(for: .milliseconds(100))
        try #"{"fusebox": {"breakers": {"payments": {"consecutiveFailures": 2}}}}"#.write(toFile: path, atomically: true, encoding: .utf8)
        #expect(await eventually(within: .seconds(10)) { payments.backend.policy.consecutiveFailureThreshold == 2 })
        #expect(registry.policyInForce(of: "payments")?.origin == .configuration)
    }
}

private struct Boom: Error {}

func eventually(within limit: Duration = .seconds(2), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + limit
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return try await condition()
}
