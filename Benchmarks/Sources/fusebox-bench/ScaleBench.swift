import ArgumentParser
import Foundation
import Fusebox
import FuseboxRedis
import FuseboxTestKit
import Hiredis

/// `fusebox-bench scale`: what sharing breakers costs Redis, across breakers × calls/s × instance processes.
///
/// Starts its own redis-server. Each point runs P real instance processes (`scale-worker`) that drive B breakers
/// through the public API at R calls/s each (`acquire` → `success()`), and the same rates again as the baseline:
/// two plain commands per call (GET + SET of a small key) through the project's own connection. Redis' own counters
/// (INFO cpu, commandstats with commands run inside scripts, stats) are read at the start and end of the measured
/// window. One JSON line per point.
struct Scale: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "scale", abstract: "Measure Redis' cost per guarded call across a grid.")

    @Option(help: "Measured seconds per point.") var seconds = 5
    @Option(help: "Points as BxRxP, comma-separated (default: the issue's grid).") var points = "1x1000x1,10x100x1,100x10x1,100x10x4,1000x1x1"
    @Option(help: "Trip-latency trials (0 skips).") var tripTrials = 10
    @Flag(help: "Skip the idle and 10,000-breaker points.") var gridOnly = false
    @Flag(help: "Run the grid on a 3-primary Redis Cluster (figures summed over the primaries); no trip or idle points.")
    var cluster = false

    func run() async throws {
        let (servers, redis) = try await Self.startServers(cluster: cluster)
        let server = servers[0]
        defer { for node in servers { node.kill() } }
        // Redis' own floor (its timers, with no client but this one), subtracted from every point below.
        let quiet = try await info(redis)
        try await Task.sleep(for: .seconds(seconds))
        let quieter = try await info(redis)
        floorCPUPerSecond = (cpu(quieter) - cpu(quiet)) / Double(seconds)
        print(#"{"redis_idle_floor_cpu_ms_per_s":\#(floorCPUPerSecond * 1000)}"#)
        print(#"{"machine":"\#(machineDescription())","redis":"\#(try await redisVersion(redis))","seconds":\#(seconds)}"#)
        fflush(nil)
        for point in points.split(separator: ",") {
            let parts = point.split(separator: "x").compactMap { Int($0) }
            guard parts.count == 3 else { throw ValidationError("bad point '\(point)': write BxRxP") }
            let (b, r, p) = (parts[0], parts[1], parts[2])
            let shared = try await measure(server, redis, mode: "distributed", breakers: b, active: b, rate: r, instances: p)
            let baseline = try await measure(server, redis, mode: "baseline", breakers: b, active: b, rate: r, instances: p)
            var line = shared.json(point: String(point))
            line["baseline_redis_cpu_us_per_call"] = baseline.cpuMicrosecondsPerCall
            line["baseline_commands_per_call"] = baseline.commandsPerCall
            line["redis_cpu_ratio_to_baseline"] = shared.cpuMicrosecondsPerCall / baseline.cpuMicrosecondsPerCall
            emit(line)
        }
        if !gridOnly && !cluster {
            let idle = try await measure(server, redis, mode: "distributed", breakers: 1000, active: 0, rate: 0, instances: 1)
            emit(idle.json(point: "1000 idle x 1"))
            let many = try await measure(server, redis, mode: "distributed", breakers: 10_000, active: 1000, rate: 10, instances: 1)
            var line = many.json(point: "10000 (1000 at 10/s) x 1")
            line["create_ms"] = many.createMilliseconds
            line["instance_memory_bytes_per_breaker"] = many.instanceBytesPerBreaker
            emit(line)
        }
        if tripTrials > 0 && !cluster {
            emit(try await tripLatency(server, redis, trials: tripTrials))
        }
        await server.stop()
    }

    /// Starts a redis-server (or a three-primary cluster) on free loopback ports for a benchmark; sets ``url`` (and
    /// ``nodes`` for a cluster). Returns every server started and a client of it.
    static func startServers(cluster: Bool, options: RedisServerProcess.Options = .init()) async throws -> ([RedisServerProcess], RedisClient) {
        if cluster {
            let started = try await RedisClusterProcess.start(primaries: 3)
            url = started.url
            nodes = try started.nodes.map { try RedisClient(configuration: $0.configuration()) }
            return (started.nodes, try RedisClient(url: started.url))
        }
        let server = try await RedisServerProcess.start(options)
        url = server.url
        return ([server], try RedisClient(configuration: server.configuration()))
    }

    /// The URL the workers use; with `--cluster`, every node, whose figures `info` sums.
    nonisolated(unsafe) static var url = ""
    nonisolated(unsafe) static var nodes: [RedisClient] = []

    /// Redis CPU seconds per second with no traffic; set at the start of `run()`.
    nonisolated(unsafe) static var floor = 0.0
    var floorCPUPerSecond: Double {
        get { Self.floor }
        nonmutating set { Self.floor = newValue }
    }

    func cpu(_ values: [String: String]) -> Double {
        (Double(values["used_cpu_sys"] ?? "") ?? 0) + (Double(values["used_cpu_user"] ?? "") ?? 0)
    }

    func emit(_ line: [String: Any]) {
        let data = try! JSONSerialization.data(withJSONObject: line, options: [.sortedKeys])
        print(String(decoding: data, as: UTF8.self))
        fflush(nil)
    }

    struct Point {
        var breakers: Int, rate: Int, instances: Int
        var calls = 0
        var seconds = 0.0
        var cpuSeconds = 0.0
        var commands = 0
        var scripts = 0
        /// Outcome batches written per breaker (all instances), from the senders' sequence high-water marks.
        var breakerWrites = 0.0
        var networkBytes = 0
        var memoryBytesPerBreaker = 0.0
        var createMilliseconds = 0.0
        var instanceBytesPerBreaker = 0.0
        /// Calls and µs per call of each command in the window (inside scripts too).
        var breakdown: [String: [String: Double]] = [:]

        var cpuMicrosecondsPerCall: Double { calls == 0 ? .nan : cpuSeconds * 1e6 / Double(calls) }
        var commandsPerCall: Double { calls == 0 ? .nan : Double(commands) / Double(calls) }

        func json(point: String) -> [String: Any] {
            var line: [String: Any] = [
                "point": point, "breakers": breakers, "calls_per_breaker_per_s": rate, "instances": instances,
                "guarded_calls_per_s": Double(calls) / seconds,
                "script_calls_per_breaker_per_instance_per_s": Double(scripts) / Double(breakers * instances) / seconds,
                "breaker_writes_per_breaker_per_instance_per_s": breakerWrites / Double(instances) / seconds,
                "commands_per_s": Double(commands) / seconds,
                "redis_cpu_ms_per_s": cpuSeconds * 1000 / seconds,
                "network_bytes_per_s": Double(networkBytes) / seconds,
                "memory_bytes_per_breaker": memoryBytesPerBreaker,
                "commands": breakdown,
            ]
            if calls > 0 {
                line["commands_per_call"] = commandsPerCall
                line["redis_cpu_us_per_call"] = cpuMicrosecondsPerCall
                line["network_bytes_per_call"] = Double(networkBytes) / Double(calls)
            }
            return line
        }
    }

    /// Runs one point: P worker processes, Redis counters read around the measured window.
    func measure(
        _ server: RedisServerProcess, _ redis: RedisClient, mode: String, breakers: Int, active: Int, rate: Int, instances: Int
    ) async throws -> Point {
        let namespace = "scale\(UInt32.random(in: 0...UInt32.max))"
        // Time to start, make the breakers and settle (the first reads, a few flushes) before measuring.
        let setup = 3500 + breakers / 4
        let startAt = wallMilliseconds() + Int64(setup)
        let measureMs = seconds * 1000
        let outputs = (0..<instances).map { "/tmp/fusebox-scale-\(namespace)-\($0).json" }
        let workers = try (0..<instances).map { index in
            try spawnSelf([
                "scale-worker", "--mode", mode, "--redis", Self.url, "--namespace", namespace, "--breakers", String(breakers),
                "--active", String(active), "--rate", String(rate), "--start-at", String(startAt), "--measure-ms", String(measureMs),
                "--output", outputs[index],
            ])
        }
        defer { for worker in workers { worker.kill() } }
        try await Task.sleep(for: .milliseconds(max(0, startAt - wallMilliseconds())))
        let sample = min(breakers, 20)
        let batchesBefore = mode == "distributed" ? try await batchesWritten(redis, namespace: namespace, breakers: sample) : 0
        let before = try await info(redis)
        let began = ContinuousClock.now
        try await Task.sleep(for: .milliseconds(measureMs))
        let after = try await info(redis)
        let elapsed = ContinuousClock.now - began
        let batchesAfter = mode == "distributed" ? try await batchesWritten(redis, namespace: namespace, breakers: sample) : 0
        for worker in workers {
            guard await worker.waitForExit(upTo: .seconds(120)) == 0 else { throw ValidationError("a scale worker failed; see /tmp/fusebox-bench-worker.log") }
        }
        var point = Point(breakers: breakers, rate: rate, instances: instances)
        point.seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        for output in outputs {
            let report = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: output))) as! [String: Any]
            point.calls += report["calls"] as? Int ?? 0
            point.createMilliseconds = max(point.createMilliseconds, report["create_ms"] as? Double ?? 0)
            point.instanceBytesPerBreaker = report["bytes_per_breaker"] as? Double ?? 0
            try? FileManager.default.removeItem(atPath: output)
        }
        func number(_ key: String, _ values: [String: String]) -> Double { Double(values[key] ?? "") ?? 0 }
        point.cpuSeconds = max(0, cpu(after) - cpu(before) - floorCPUPerSecond * point.seconds)
        point.commands = commandTotal(after) - commandTotal(before)
        point.scripts = commandCalls("evalsha", after) - commandCalls("evalsha", before)
        for key in after.keys where key.hasPrefix("cmdstat_") {
            let name = String(key.dropFirst(8))
            let calls = commandCalls(name, after) - commandCalls(name, before)
            let usec = commandMicroseconds(name, after) - commandMicroseconds(name, before)
            if calls > 0 && !["info", "memory", "flushall"].contains(name) {
                point.breakdown[name] = ["per_s": Double(calls) / point.seconds, "us_per_call": usec / Double(calls)]
            }
        }
        point.networkBytes = Int(number("total_net_input_bytes", after) + number("total_net_output_bytes", after)
            - number("total_net_input_bytes", before) - number("total_net_output_bytes", before))
        point.breakerWrites = Double(batchesAfter - batchesBefore) / Double(sample)
        if mode == "distributed" {
            var bytes = 0
            for index in 0..<sample {
                for key in ["state", "window", "totals", "events"] {
                    if case .integer(let size) = try await redis.send("MEMORY", "USAGE", "\(namespace):{b\(index)}:\(key)", "SAMPLES", "0") { bytes += size }
                }
            }
            point.memoryBytesPerBreaker = Double(bytes) / Double(sample)
        }
        for node in Self.nodes.isEmpty ? [redis] : Self.nodes {
            // A replica refuses FLUSHALL (READONLY): its primary's flush reaches it.
            _ = try? await node.send("FLUSHALL")
        }
        return point
    }

    /// 4 instances at 200 calls/s each on one breaker switch from 0 % to 100 % failures. From every outcome's time,
    /// the moment the fleet-wide window crosses the threshold; then when Redis opened the breaker (its `since`,
    /// Redis time) and when the last instance first rejected a call.
    func tripLatency(_ server: RedisServerProcess, _ redis: RedisClient, trials: Int) async throws -> [String: Any] {
        var toRedis: [Double] = []
        var toEveryInstance: [Double] = []
        var ratiosAtTrip: [Double] = []
        var earlyTrips = 0
        for trial in 0..<trials {
            let namespace = "trip\(UInt32.random(in: 0...UInt32.max))"
            let startAt = wallMilliseconds() + 1500
            let switchAt = startAt + 2500
            let until = switchAt + 2500
            let outputs = (0..<4).map { "/tmp/fusebox-trip-\(namespace)-\($0).json" }
            let workers = try (0..<4).map { index in
                try spawnSelf([
                    "scale-worker", "--mode", "trip", "--redis", Self.url, "--namespace", namespace, "--breakers", "1", "--active", "1",
                    "--rate", "200", "--start-at", String(startAt), "--measure-ms", String(until - startAt), "--switch-at", String(switchAt),
                    "--output", outputs[index],
                ])
            }
            defer { for worker in workers { worker.kill() } }
            for worker in workers {
                guard await worker.waitForExit(upTo: .seconds(60)) == 0 else { throw ValidationError("a trip worker failed; see /tmp/fusebox-bench-worker.log") }
            }
            var outcomes: [(Double, Bool)] = []
            var firstRejections: [Double] = []
            for output in outputs {
                let report = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: output))) as! [String: Any]
                for pair in report["outcomes"] as? [[Double]] ?? [] { outcomes.append((pair[0], pair[1] == 1)) }
                if let first = report["first_rejection_ms"] as? Double { firstRejections.append(first) }
                try? FileManager.default.removeItem(atPath: output)
            }
            let state = try await redis.send("HGETALL", "\(namespace):{b0}:state").decodeDictionary()
            guard state["state"] == "open", let since = state["since"].flatMap(Double.init), firstRejections.count == 4 else {
                throw ValidationError("trial \(trial): no trip (state \(state["state"] ?? "?"), \(firstRejections.count) instances rejected)")
            }
            // The fleet-wide ratio (by outcome time) when Redis opened: below 0.5 means it opened early.
            let (calls, failures) = Self.window(outcomes.filter { $0.0 <= since + 1 }, at: since, bucketMilliseconds: 200, buckets: 10)
            ratiosAtTrip.append(Double(failures) / Double(max(1, calls)))
            if let crossing = Self.crossing(outcomes, bucketMilliseconds: 200, buckets: 10, minimum: 20, ratio: 0.5) {
                toRedis.append(since - crossing)
                toEveryInstance.append(firstRejections.max()! - crossing)
            } else {
                earlyTrips += 1
            }
            _ = try await redis.send("FLUSHALL")
        }
        return [
            "point": "trip latency: 4 instances x 200 calls/s, 0 % -> 100 % failures (window 2 s / 10 buckets, ratio 0.5, minimum 20)",
            "trials": trials,
            "open_in_redis_ms_p50": median(toRedis), "open_in_redis_ms_p99": percentile(toRedis, 99),
            "rejecting_everywhere_ms_p50": median(toEveryInstance), "rejecting_everywhere_ms_p99": percentile(toEveryInstance, 99),
            "opened_before_the_crossing": earlyTrips, "fleet_ratio_when_opened_min": ratiosAtTrip.min() ?? .nan,
            "fleet_ratio_when_opened_p50": median(ratiosAtTrip),
        ]
    }

    /// The time of the outcome after which the window (buckets of `bucketMilliseconds`, by outcome time) first
    /// holds at least `minimum` calls with failures / calls ≥ `ratio`.
    static func crossing(_ outcomes: [(Double, Bool)], bucketMilliseconds: Double, buckets: Int, minimum: Int, ratio: Double) -> Double? {
        var counts: [Int: (calls: Int, failures: Int)] = [:]
        for (time, failed) in outcomes.sorted(by: { $0.0 < $1.0 }) {
            let bucket = Int((time / bucketMilliseconds).rounded(.down))
            counts = counts.filter { $0.key > bucket - buckets }
            counts[bucket, default: (0, 0)].calls += 1
            if failed { counts[bucket, default: (0, 0)].failures += 1 }
            let calls = counts.values.reduce(0) { $0 + $1.calls }
            let failures = counts.values.reduce(0) { $0 + $1.failures }
            if failed && calls >= minimum && Double(failures) >= ratio * Double(calls) { return time }
        }
        return nil
    }

    /// Calls and failures in the window (by outcome time) at `time`.
    static func window(_ outcomes: [(Double, Bool)], at time: Double, bucketMilliseconds: Double, buckets: Int) -> (Int, Int) {
        let newest = Int((time / bucketMilliseconds).rounded(.down))
        var calls = 0
        var failures = 0
        for (at, failed) in outcomes where Int((at / bucketMilliseconds).rounded(.down)) > newest - buckets {
            calls += 1
            if failed { failures += 1 }
        }
        return (calls, failures)
    }

    /// The sum, over breakers b0 ..< `breakers`, of every sender's batch sequence high-water mark (`seq:*` fields).
    func batchesWritten(_ redis: RedisClient, namespace: String, breakers: Int) async throws -> Int {
        var total = 0
        for index in 0..<breakers {
            let state = try await redis.send("HGETALL", "\(namespace):{b\(index)}:state").decodeDictionary()
            for (field, value) in state where field.hasPrefix("seq:") {
                total += Int(value.split(separator: ":").first ?? "") ?? 0
            }
        }
        return total
    }

    /// INFO of the server, or with `--cluster` of every node, summed (CPU, bytes, and each command's calls and µs).
    func info(_ redis: RedisClient) async throws -> [String: String] {
        var merged: [String: String] = [:]
        for client in Self.nodes.isEmpty ? [redis] : Self.nodes {
            for line in try await client.send("INFO", "all").decodeString().split(whereSeparator: \.isNewline) {
                let parts = line.split(separator: ":", maxSplits: 1)
                guard parts.count == 2 else { continue }
                let (key, value) = (String(parts[0]), String(parts[1]))
                guard let existing = merged[key] else { merged[key] = value; continue }
                if key.hasPrefix("cmdstat_") {
                    func field(_ name: String, _ text: String) -> Double {
                        text.split(separator: ",").first { $0.hasPrefix(name + "=") }.flatMap { Double($0.dropFirst(name.count + 1)) } ?? 0
                    }
                    merged[key] = "calls=\(Int(field("calls", existing) + field("calls", value))),usec=\(Int(field("usec", existing) + field("usec", value)))"
                } else if let a = Double(existing), let b = Double(value) {
                    merged[key] = String(a + b)
                }
            }
        }
        return merged
    }

    /// Every command counted in commandstats (inside scripts too), less the benchmark's own INFO calls.
    func commandTotal(_ info: [String: String]) -> Int {
        info.keys.filter { $0.hasPrefix("cmdstat_") && $0 != "cmdstat_info" && $0 != "cmdstat_memory" && $0 != "cmdstat_flushall" }
            .reduce(0) { $0 + commandCalls(String($1.dropFirst(8)), info) }
    }

    func commandCalls(_ name: String, _ info: [String: String]) -> Int {
        guard let stats = info["cmdstat_\(name)"], let calls = stats.split(separator: ",").first(where: { $0.hasPrefix("calls=") }) else { return 0 }
        return Int(calls.dropFirst(6)) ?? 0
    }

    func commandMicroseconds(_ name: String, _ info: [String: String]) -> Double {
        guard let stats = info["cmdstat_\(name)"], let usec = stats.split(separator: ",").first(where: { $0.hasPrefix("usec=") }) else { return 0 }
        return Double(usec.dropFirst(5)) ?? 0
    }

    func redisVersion(_ redis: RedisClient) async throws -> String { try await info(redis)["redis_version"] ?? "?" }

    func machineDescription() -> String {
        let cpu = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?.split(separator: "\n")
            .first { $0.hasPrefix("model name") }?.split(separator: ":").last?.trimmingCharacters(in: .whitespaces) ?? "?"
        return "\(ProcessInfo.processInfo.activeProcessorCount) cores, \(cpu)"
    }
}

/// One instance process of `fusebox-bench scale`.
struct ScaleWorker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "scale-worker", abstract: "One instance of a scale point.", shouldDisplay: false)

    @Option var mode: String
    @Option var redis: String
    @Option var namespace: String
    @Option var breakers: Int
    @Option var active: Int
    @Option var rate: Int
    @Option var startAt: Int64
    @Option var measureMs: Int
    @Option var switchAt: Int64 = 0
    @Option var output: String

    func run() async throws {
        let configuration = try RedisConfiguration(url: redis)
        let end = startAt + Int64(measureMs)
        var report: [String: Any] = [:]
        switch mode {
        case "distributed":
            let (adapter, registry, runner) = try makeInstance(redis: configuration, namespace: namespace, id: "scale-\(getpid())")
            let before = residentBytes()
            let started = ContinuousClock.now
            var policy = BreakerPolicy()
            policy.minimumThroughput = 20
            let all = try (0..<breakers).map { try registry.breaker("b\($0)", policy: policy) }
            let created = ContinuousClock.now - started
            report["create_ms"] = Double(created.components.seconds) * 1000 + Double(created.components.attoseconds) / 1e15
            report["bytes_per_breaker"] = Double(residentBytes() - before) / Double(breakers)
            let targets = Array(all.prefix(active))
            report["calls"] = try await pace(until: end + 300) { index in
                if let permit = (try? targets[index % targets.count].acquire()) { permit.success() }
            }
            runner.cancel()
            await adapter.flush()
        case "baseline":
            // What a library that asks Redis on every call does: read the state, write it back.
            let connection = try RedisClient(configuration: configuration)
            let keys = (0..<max(1, active)).map { "\(namespace):baseline:\($0)" }
            report["calls"] = try await pace(until: end + 300) { index in
                let key = keys[index % keys.count]
                _ = try await connection.send("GET", key)
                _ = try await connection.send("SET", key, "closed")
            }
        case "trip":
            let (adapter, registry, runner) = try makeInstance(redis: configuration, namespace: namespace, id: "trip-\(getpid())")
            var policy = BreakerPolicy()
            policy.minimumThroughput = 20
            policy.window = .time(samplingDuration: .seconds(2), buckets: 10)
            policy.breakDuration = .fixed(.seconds(60))
            let breaker = try registry.breaker("b0", policy: policy)
            var outcomes: [[Double]] = []
            var firstRejection: Double?
            _ = try await pace(warmup: 0, until: end) { _ in
                let now = Double(wallNanoseconds()) / 1e6
                guard let permit = (try? breaker.acquire()) else {
                    if firstRejection == nil && now >= Double(switchAt) { firstRejection = now }
                    return
                }
                if now >= Double(switchAt) {
                    permit.failure(Failure())
                    outcomes.append([now, 1])
                } else {
                    permit.success()
                    outcomes.append([now, 0])
                }
            }
            report["outcomes"] = outcomes
            report["first_rejection_ms"] = firstRejection
            runner.cancel()
            await adapter.flush()
        default:
            throw ValidationError("unknown mode \(mode)")
        }
        try JSONSerialization.data(withJSONObject: report).write(to: URL(fileURLWithPath: output))
    }

    /// Calls `body` at `active × rate` calls per second in total, from `startAt` until `end` (wall-clock ms), spread
    /// over 2 ms ticks; returns how many calls fell in the measured window.
    func pace(warmup: Int64 = 1000, until end: Int64, _ body: (Int) async throws -> Void) async throws -> Int {
        let perSecond = Double(active * rate)
        let begin = startAt - warmup
        while wallMilliseconds() < begin { try await Task.sleep(for: .milliseconds(1)) }
        let measureEnd = startAt + Int64(measureMs)
        var issued = 0
        var counted = 0
        while true {
            let now = wallMilliseconds()
            if now >= end { break }
            let target = Int(Double(now - begin) / 1000 * perSecond)
            while issued < target {
                try await body(issued)
                issued += 1
                if now >= startAt && now < measureEnd { counted += 1 }
            }
            try await Task.sleep(for: .milliseconds(2))
        }
        return counted
    }

    func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        return fields.count > 1 ? (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE))) : 0
    }
}

func wallMilliseconds() -> Int64 { wallNanoseconds() / 1_000_000 }

/// Starts this executable again with `arguments`.
func spawnSelf(_ arguments: [String]) throws -> ChildProcess {
    let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    return try ChildProcess(executable: executable, arguments: arguments, outputPath: "/tmp/fusebox-bench-worker.log")
}
