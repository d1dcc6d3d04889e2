import ArgumentParser
import Foundation
import Fusebox
import FuseboxTracing
import FuseboxRedis
import FuseboxTestKit
import Hiredis
import Logging
import Synchronization

/// `fusebox-bench`: the fleet benchmark. The same executable is the coordinator and, with `worker`, each of the
/// instance processes it starts.
@main
struct FleetBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fusebox-bench",
        abstract: "Measure Fusebox's hot path and its fleet behaviour across processes.",
        subcommands: [Coordinate.self, Worker.self, PubSubLatency.self, Scale.self, ScaleWorker.self, Fleet.self, FleetWorker.self],
        defaultSubcommand: Coordinate.self)

    /// The breakers log through `Logger.current`: here warnings and errors only, to standard error, so that the
    /// thousands of transitions a run makes do not bury its figures.
    static func main() async {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .warning
            return handler
        }
        do {
            var command = try parseAsRoot()
            if var command = command as? any AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}

struct Failure: Error {}

/// A policy that never trips: every call stays on the closed-state path.
func closedPolicy() -> BreakerPolicy {
    var policy = BreakerPolicy()
    policy.failureRateThreshold = 1
    policy.minimumThroughput = 1_000_000
    return policy
}

/// Trips on the first failure; a short break; `permits` probes.
func tripPolicy(breakMs: Int64, permits: Int = 1) -> BreakerPolicy {
    var policy = BreakerPolicy()
    policy.failureRateThreshold = nil
    policy.consecutiveFailureThreshold = 1
    policy.breakDuration = .fixed(.milliseconds(breakMs))
    policy.permittedCallsInHalfOpen = permits
    policy.maxHalfOpenDuration = .seconds(30)
    return policy
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    guard !sorted.isEmpty else { return .nan }
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

func percentile(_ values: [Double], _ p: Double) -> Double {
    let sorted = values.sorted()
    guard !sorted.isEmpty else { return .nan }
    let rank = Int((p / 100 * Double(sorted.count - 1)).rounded(.up))
    return sorted[min(sorted.count - 1, rank)]
}

func nanoseconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) * 1e9 + Double(duration.components.attoseconds) / 1e9
}

/// Wall-clock time in ns, comparable across processes on one machine.
func wallNanoseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}

/// Makes a distributed registry with its background work running.
func makeInstance(redis: RedisConfiguration, namespace: String, id: String) throws -> (DistributedAdapter<ContinuousClock>, BreakerRegistry, Task<Void, Never>) {
    var options = DistributedOptions(redis: redis)
    options.namespace = namespace
    options.instanceID = id
    let adapter = try DistributedAdapter(options: options)
    let registry = BreakerRegistry(adapter: adapter)
    let runner = Task { _ = try? await registry.run() }
    return (adapter, registry, runner)
}

/// The figures, as printed with `--json`.
struct Figures: Codable {
    var guarded_call_ns_p50 = 0.0
    var guarded_call_two_tasks_ns_p50 = 0.0
    var local_call_ns_p50 = 0.0
    /// A local guarded call with FuseboxTracing installed and no span active (no tracer bootstrapped).
    var local_call_tracing_installed_ns_p50 = 0.0
    var local_call_coarse_clock_ns_p50 = 0.0
    var local_rejected_call_ns_p50 = 0.0
    var rejected_call_ns_p50 = 0.0
    var redis_roundtrip_ns_p50 = 0.0
    var redis_commands_per_call = 0.0
    var calls_per_second_one_instance = 0.0
    var propagation_ms_p50 = 0.0
    var propagation_ms_p99 = 0.0
    /// The two halves of propagation, split at the script's own timestamp of the trip (ms resolution).
    var propagation_to_redis_ms_p99 = 0.0
    var propagation_from_redis_ms_p99 = 0.0
    var probe_overshoot = 0
    var lost_outcomes = 0
    var roundtrip_to_guarded_ratio = 0.0
}

struct Coordinate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run every measurement (the default).")

    @Option(help: "Redis URL; default: a private redis-server on a free port.") var redis: String?
    @Flag(help: "Print one JSON object.") var json = false
    @Option(help: "Propagation trials.") var propagationTrials = 100
    @Option(help: "Probe-race trials.") var probeTrials = 50
    @Option(help: "Outcomes per process in the lost-outcomes run.") var outcomes = 50_000
    @Flag(help: "Only the fleet's guarantees: the probe race and the lost-outcomes run.") var guaranteesOnly = false

    func run() async throws {
        var server: RedisServerProcess?
        let url: String
        if let redis {
            url = redis
        } else {
            server = try await RedisServerProcess.start()
            url = server!.url
        }
        defer { server?.kill() }
        let configuration = try RedisConfiguration(url: url)
        let namespace = "bench\(UInt32.random(in: 0...UInt32.max))"
        var figures = Figures()
        func note(_ text: String) { if !json { print(text); fflush(nil) } }

        note("Redis: \(configuration.redactedURL); namespace \(namespace)")
        if guaranteesOnly {
            figures.probe_overshoot = try await measureProbes(configuration, namespace: namespace, trials: probeTrials)
            figures.lost_outcomes = try await measureLostOutcomes(configuration, namespace: namespace, perProcess: outcomes)
            note("probes beyond the permitted 2:  \(figures.probe_overshoot) over \(probeTrials) trials of 4 processes × 8 tasks")
            note("lost outcomes:                 \(figures.lost_outcomes) of \(4 * outcomes)")
            if json { print(String(decoding: try JSONEncoder().encode(figures), as: UTF8.self)) }
            await server?.stop()
            return
        }
        figures.redis_roundtrip_ns_p50 = try await measureRoundTrip(configuration)
        note(String(format: "EVALSHA round trip:            %9.0f ns (median of 2,000)", figures.redis_roundtrip_ns_p50))
        figures.local_call_ns_p50 = try measureLocal(LocalAdapter())
        figures.local_call_coarse_clock_ns_p50 = try measureLocal(LocalAdapter(clock: CoarseMonotonicClock()))
        FuseboxTracing.install()
        figures.local_call_tracing_installed_ns_p50 = try measureLocal(LocalAdapter())
        FuseboxTracing.uninstall()
        note(String(format: "local call, tracing installed: %9.1f ns (no span active; %.1f ns without it)", figures.local_call_tracing_installed_ns_p50, figures.local_call_ns_p50))
        figures.local_rejected_call_ns_p50 = try await measureLocalRejection()
        note(String(format: "local call (closed):           %9.1f ns; with CoarseMonotonicClock %.1f ns", figures.local_call_ns_p50, figures.local_call_coarse_clock_ns_p50))
        note(String(format: "local rejection (open):        %9.1f ns", figures.local_rejected_call_ns_p50))
        let (guarded, twoTasks, rejected, commands) = try await measureDistributed(configuration, namespace: namespace)
        figures.guarded_call_ns_p50 = guarded
        figures.guarded_call_two_tasks_ns_p50 = twoTasks
        figures.rejected_call_ns_p50 = rejected
        figures.redis_commands_per_call = commands
        figures.calls_per_second_one_instance = 1e9 / guarded
        figures.roundtrip_to_guarded_ratio = figures.redis_roundtrip_ns_p50 / guarded
        note(String(format: "distributed call (closed):     %9.1f ns, two tasks %.1f ns; %.0f× below the round trip", guarded, twoTasks, figures.roundtrip_to_guarded_ratio))
        note(String(format: "distributed rejection (open):  %9.1f ns", rejected))
        note(String(format: "Redis commands per call:       %12.6f", commands))

        let (propagation, toRedis, fromRedis) = try await measurePropagation(configuration, namespace: namespace, trials: propagationTrials)
        figures.propagation_ms_p50 = median(propagation)
        figures.propagation_ms_p99 = percentile(propagation, 99)
        figures.propagation_to_redis_ms_p99 = percentile(toRedis, 99)
        figures.propagation_from_redis_ms_p99 = percentile(fromRedis, 99)
        note(String(format: "  split at Redis: p50 %.3f ms to Redis, %.3f ms from Redis; p99 %.3f / %.3f ms", median(toRedis), median(fromRedis), figures.propagation_to_redis_ms_p99, figures.propagation_from_redis_ms_p99))
        note(String(format: "propagation to another process: p50 %.3f ms, p99 %.3f ms (%d trials)", figures.propagation_ms_p50, figures.propagation_ms_p99, propagation.count))

        figures.probe_overshoot = try await measureProbes(configuration, namespace: namespace, trials: probeTrials)
        note("probes beyond the permitted 2:  \(figures.probe_overshoot) over \(probeTrials) trials of 4 processes × 8 tasks")

        figures.lost_outcomes = try await measureLostOutcomes(configuration, namespace: namespace, perProcess: outcomes)
        note("lost outcomes:                 \(figures.lost_outcomes) of \(4 * outcomes)")

        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(figures), as: UTF8.self))
        }
        await server?.stop()
    }

    // MARK: - Measurements

    func measureRoundTrip(_ configuration: RedisConfiguration) async throws -> Double {
        let redis = try RedisClient(configuration: configuration)
        let script = RedisScript("return redis.call('HINCRBY', KEYS[1], 'n', 1)")
        var samples: [Double] = []
        for index in 0..<2200 {
            let start = ContinuousClock.now
            _ = try await redis.run(script, keys: ["bench:{roundtrip}"])
            if index >= 200 { samples.append(nanoseconds(ContinuousClock.now - start)) }
        }
        return median(samples)
    }

    /// Median over rounds of the mean cost of acquire + success.
    func rounds(_ count: Int = 15, iterations: Int = 200_000, _ body: () throws -> Void) rethrows -> Double {
        var samples: [Double] = []
        for round in 0..<(count + 2) {
            let start = ContinuousClock.now
            for _ in 0..<iterations { try body() }
            if round >= 2 { samples.append(nanoseconds(ContinuousClock.now - start) / Double(iterations)) }
        }
        return median(samples)
    }

    func measureLocal(_ adapter: some BreakerAdapter) throws -> Double {
        let breaker = try BreakerRegistry(adapter: adapter).breaker("local", policy: closedPolicy())
        return try rounds { try breaker.acquire().success() }
    }

    func measureLocalRejection() async throws -> Double {
        let breaker = try BreakerRegistry(adapter: LocalAdapter()).breaker("local-open")
        try await breaker.isolate(reason: "benchmark")
        return rounds {
            if let permit = (try? breaker.acquire()) { permit.ignore() }
        }
    }

    func measureDistributed(_ configuration: RedisConfiguration, namespace: String) async throws -> (Double, Double, Double, Double) {
        let (adapter, registry, runner) = try makeInstance(redis: configuration, namespace: namespace, id: "bench-main")
        defer { runner.cancel() }
        let breaker = try registry.breaker("guarded", policy: closedPolicy())
        try await breaker.acquireAsync().success()
        _ = try await breaker.snapshot()

        let stats = try RedisClient(configuration: configuration)
        let before = try await commandCount(stats)
        let guarded = try rounds { try breaker.acquire().success() }
        await adapter.flush()
        let after = try await commandCount(stats)
        let calls = Double(17 * 200_000)
        // The two INFO calls themselves are not the adapter's.
        let perCall = Double(after - before - 2) / calls

        let twoTasks = await withTaskGroup(of: Double.self) { group in
            for _ in 0..<2 {
                group.addTask { (try? self.rounds(9) { try breaker.acquire().success() }) ?? .nan }
            }
            return median(await group.reduce(into: [Double]()) { $0.append($1) })
        }

        let open = try registry.breaker("rejecting")
        try await open.isolate(reason: "benchmark")
        let rejected = rounds {
            if let permit = (try? open.acquire()) { permit.ignore() }
        }
        await adapter.flush()
        return (guarded, twoTasks, rejected, perCall)
    }

    func commandCount(_ redis: RedisClient) async throws -> Int {
        let info = try await redis.send("INFO", "commandstats").decodeString()
        var total = 0
        for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix("cmdstat_") {
            if let calls = line.split(separator: ":").last?.split(separator: ",").first(where: { $0.hasPrefix("calls=") }) {
                total += Int(calls.dropFirst(6)) ?? 0
            }
        }
        return total
    }

    func spawnWorker(_ arguments: [String]) throws -> ChildProcess {
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return try ChildProcess(executable: executable, arguments: ["worker"] + arguments, outputPath: "/tmp/fusebox-bench-worker.log")
    }

    /// A connection for BLPOP, whose timeout outlasts the wait.
    func waitingConnection(_ configuration: RedisConfiguration) throws -> RedisClient {
        var waiting = configuration
        waiting.commandTimeout = .seconds(30)
        return try RedisClient(configuration: waiting)
    }

    func pop(_ redis: RedisClient, _ key: String) async throws -> String {
        let reply = try await redis.send("BLPOP", key, 20)
        guard let value = reply.array?.last?.string else { throw ValidationError("no answer from a worker on \(key)") }
        return value
    }

    func measurePropagation(_ configuration: RedisConfiguration, namespace: String, trials: Int) async throws -> ([Double], [Double], [Double]) {
        let name = "propagation"
        let (adapter, registry, runner) = try makeInstance(redis: configuration, namespace: namespace, id: "bench-a")
        defer { runner.cancel() }
        let breaker = try registry.breaker(name, policy: tripPolicy(breakMs: 600_000))
        try await breaker.acquireAsync().success()
        await adapter.flush()
        let worker = try spawnWorker(["--role", "propagation", "--redis", urlOf(configuration), "--namespace", namespace, "--trials", String(trials)])
        defer { worker.kill() }
        let redis = try waitingConnection(configuration)
        var samples: [Double] = []
        var toRedis: [Double] = []
        var fromRedis: [Double] = []
        for _ in 0..<trials {
            try await breaker.reset()
            _ = try await pop(redis, "\(namespace):bench:ready")
            try await Task.sleep(for: .milliseconds(5))
            let started = wallNanoseconds()
            try breaker.acquire().failure(Failure())
            let seen = Int64(try await pop(redis, "\(namespace):bench:seen")) ?? 0
            samples.append(Double(seen - started) / 1e6)
            let tripped = Double(try await redis.send("HGET", "\(namespace):{\(name)}:state", "since").decodeInt())
            toRedis.append(tripped - Double(started) / 1e6)
            fromRedis.append(Double(seen) / 1e6 - tripped)
        }
        return (samples, toRedis, fromRedis)
    }

    func measureProbes(_ configuration: RedisConfiguration, namespace: String, trials: Int) async throws -> Int {
        let name = "probes"
        let (_, registry, runner) = try makeInstance(redis: configuration, namespace: namespace, id: "bench-p")
        defer { runner.cancel() }
        let breaker = try registry.breaker(name, policy: tripPolicy(breakMs: 150, permits: 2))
        try await breaker.acquireAsync().success()
        let workers = try (0..<4).map { index in
            try spawnWorker(["--role", "probes", "--index", String(index), "--redis", urlOf(configuration), "--namespace", namespace, "--trials", String(trials)])
        }
        defer { for worker in workers { worker.kill() } }
        let redis = try waitingConnection(configuration)
        var overshoot = 0
        for _ in 0..<trials {
            try await breaker.reset()
            for index in 0..<4 { _ = try await pop(redis, "\(namespace):bench:ready:\(index)") }
            try await breaker.acquireAsync().failure(Failure())
            _ = try await breaker.snapshot()
            for index in 0..<4 { _ = try await redis.send("RPUSH", "\(namespace):bench:go:\(index)", "go") }
            var admitted = 0
            for _ in 0..<4 { admitted += Int(try await pop(redis, "\(namespace):bench:probes")) ?? 0 }
            overshoot += max(0, admitted - 2)
            // Every process has stopped asking: only now do the probes end (an ended probe frees its permit, and a
            // process still racing would rightly take it: probes at once, not in all, are what is limited).
            for index in 0..<4 { _ = try await redis.send("RPUSH", "\(namespace):bench:release:\(index)", "go") }
        }
        return overshoot
    }

    func measureLostOutcomes(_ configuration: RedisConfiguration, namespace: String, perProcess: Int) async throws -> Int {
        let workers = try (0..<4).map { index in
            try spawnWorker(["--role", "outcomes", "--index", String(index), "--redis", urlOf(configuration), "--namespace", namespace, "--trials", String(perProcess)])
        }
        for worker in workers {
            guard await worker.waitForExit(upTo: .seconds(120)) == 0 else { throw ValidationError("an outcomes worker failed; see /tmp/fusebox-bench-worker.log") }
        }
        let redis = try RedisClient(configuration: configuration)
        let calls = try await redis.send("HGET", "\(namespace):{outcomes}:totals", "calls").decodeInt()
        return 4 * perProcess - calls
    }

    func urlOf(_ configuration: RedisConfiguration) -> String {
        var text = "redis://"
        if let password = configuration.password { text += "\(configuration.username ?? ""):\(password)@" }
        return text + configuration.endpoint.description + (configuration.database == 0 ? "" : "/\(configuration.database)")
    }
}

struct Worker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "worker", abstract: "One instance process (started by the coordinator).", shouldDisplay: false)

    @Option var role: String
    @Option var index = 0
    @Option var redis: String
    @Option var namespace: String
    @Option var trials = 1

    func run() async throws {
        let configuration = try RedisConfiguration(url: redis)
        var waiting = configuration
        waiting.commandTimeout = .seconds(30)
        let control = try RedisClient(configuration: waiting)
        let (adapter, registry, runner) = try makeInstance(redis: configuration, namespace: namespace, id: "bench-\(role)-\(index)")
        defer { runner.cancel() }
        switch role {
        case "propagation":
            let breaker = try registry.breaker("propagation", policy: tripPolicy(breakMs: 600_000))
            for _ in 0..<trials {
                // Wait until the reset has reached this process, then spin until the trip does.
                while true {
                    if let permit = (try? breaker.acquire()) { permit.ignore(); break }
                    try await Task.sleep(for: .microseconds(200))
                }
                _ = try await control.send("RPUSH", "\(namespace):bench:ready", "1")
                // Poll as a busy service would see it: a call every 50 µs, not a spinning core.
                while true {
                    if let permit = (try? breaker.acquire()) { permit.ignore() } else { break }
                    usleep(UInt32(ProcessInfo.processInfo.environment["FUSEBOX_BENCH_POLL_US"] ?? "50") ?? 50)
                }
                _ = try await control.send("RPUSH", "\(namespace):bench:seen", String(wallNanoseconds()))
            }
        case "probes":
            let breaker = try registry.breaker("probes", policy: tripPolicy(breakMs: 150, permits: 2))
            for _ in 0..<trials {
                while true {
                    if let permit = (try? breaker.acquire()) { permit.ignore(); break }
                    try await Task.sleep(for: .milliseconds(1))
                }
                _ = try await control.send("RPUSH", "\(namespace):bench:ready:\(index)", "1")
                _ = try await control.send("BLPOP", "\(namespace):bench:go:\(index)", 20)
                // 8 tasks race for permits from just before the break ends until well after.
                let deadline = ContinuousClock.now + .milliseconds(400)
                let probes = await withTaskGroup(of: [PermitToken].self) { group in
                    for _ in 0..<8 {
                        group.addTask {
                            var held: [PermitToken] = []
                            while ContinuousClock.now < deadline {
                                if case .admitted(let token) = await breaker.backend.admit() {
                                    if token.isProbe { held.append(token) } else { breaker.backend.record(.ignored, for: token) }
                                } else {
                                    try? await Task.sleep(for: .microseconds(500))
                                }
                            }
                            return held
                        }
                    }
                    return await group.reduce(into: [PermitToken]()) { $0 += $1 }
                }
                _ = try await control.send("RPUSH", "\(namespace):bench:probes", String(probes.count))
                _ = try await control.send("BLPOP", "\(namespace):bench:release:\(index)", 20)
                for token in probes { breaker.backend.record(.ignored, for: token) }
            }
        case "outcomes":
            let breaker = try registry.breaker("outcomes", policy: closedPolicy())
            for call in 0..<trials {
                let permit = try breaker.acquire()
                switch call % 4 {
                case 0: permit.failure(Failure())
                case 1: permit.ignore()
                default: permit.success()
                }
                if call % 5000 == 0 { await Task.yield() }
            }
            await adapter.flush()
        default:
            throw ValidationError("unknown role \(role)")
        }
        await adapter.flush()
    }
}

/// `fusebox-bench pubsub`: how long a PUBLISH takes to reach a `RedisSubscriber`'s message handler.
struct PubSubLatency: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pubsub", abstract: "Measure PUBLISH → subscriber latency.")
    @Option var messages = 500

    func run() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.kill() }
        let received = Mutex<[Double]>([])
        let subscriber = try RedisSubscriber(configuration: server.configuration(), channels: ["latency"], onMessage: { message in
            let now = wallNanoseconds()
            let sent = Int64(message.text) ?? now
            received.withLock { $0.append(Double(now - sent) / 1e6) }
        })
        let runner = Task { await subscriber.run() }
        defer { runner.cancel() }
        var events = subscriber.events.makeAsyncIterator()
        _ = await events.next()
        let publisher = try RedisClient(configuration: server.configuration())
        for _ in 0..<messages {
            _ = try await publisher.send("PUBLISH", "latency", String(wallNanoseconds()))
            try await Task.sleep(for: .milliseconds(2))
        }
        try await Task.sleep(for: .milliseconds(100))
        let samples = received.withLock { $0 }
        print(String(format: "PUBLISH → handler: p50 %.3f ms, p99 %.3f ms over %d messages", median(samples), percentile(samples, 99), samples.count))
    }
}
