import ArgumentParser
import Foundation
import Fusebox
import FuseboxRedis
import FuseboxTestKit
import Hiredis

/// `fusebox-bench fleet`: a fleet of N instances on one Redis (or a three-primary Cluster), each a full
/// `DistributedAdapter` with its own connections and instance id, many per process so that hundreds fit on two
/// cores. Measures what the fleet costs Redis in its steady state, whether Redis' totals match the calls made to
/// the call, and, for one breaker that starts failing, how many calls reach the failing dependency before every
/// instance rejects (against N per-process breakers of the same policy) and how many probes the fleet sends at the
/// end of each break. One JSON object per phase.
struct Fleet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "fleet", abstract: "Measure a fleet of many instances on one Redis.")

    @Option(help: "Instances (adapters), spread over the worker processes.") var instances = 200
    @Option(help: "Breakers per instance.") var breakers = 100
    @Option(help: "Calls per second per breaker per instance.") var rate = 1
    @Option(help: "Measured seconds of the steady state (default: two quiet holds at the default quietFleetWritesPerSecond, 2 × min(instances ÷ 2, 120), at least 20): a window shorter than the hold can miss every write.")
    var seconds: Int?
    @Option(help: "Seconds of calls before the steady state is measured (default: the quiet hold at the default quietFleetWritesPerSecond, min(instances ÷ 2, 120), plus 5).")
    var warmup: Int?
    @Option(help: "Worker processes (default: up to 4).") var processes: Int?
    @Option(help: "End-of-break trials (probes counted fleet-wide each time; 0 skips the trip).") var probeTrials = 20
    @Flag(help: "On a three-primary Redis Cluster.") var cluster = false
    @Flag(help: "Skip the GET + SET baseline.") var skipBaseline = false
    @Option(help: "Only the trip, for these comma-separated instance counts, drawn as an SVG chart to this path.") var chart: String?
    @Option(help: "Instance counts for --chart.") var chartInstances = "1,10,50,100,200"

    func run() async throws {
        let scale = try Scale.parse(["--seconds", String(measuredSeconds)])
        // Hundreds of instances hold two connections each.
        let (servers, redis) = try await Scale.startServers(cluster: cluster, options: .init(extraArguments: ["--maxclients", "10000"]))
        defer { for node in servers { node.kill() } }
        if let chart {
            try await drawChart(to: chart, counts: chartInstances.split(separator: ",").compactMap { Int($0) }, redis: redis)
            return
        }
        let quiet = try await scale.info(redis)
        try await Task.sleep(for: .seconds(3))
        let floor = (scale.cpu(try await scale.info(redis)) - scale.cpu(quiet)) / 3
        emit(["machine": scale.machineDescription(), "redis": try await scale.redisVersion(redis), "redis_idle_floor_cpu_ms_per_s": floor * 1000,
              "topology": cluster ? "cluster of 3 primaries" : "one redis-server"])

        let steady = try await runPhase("steady", redis: redis, scale: scale, floor: floor)
        var baselineCPU = Double.nan
        if !skipBaseline {
            let baseline = try await runPhase("baseline", redis: redis, scale: scale, floor: floor)
            baselineCPU = baseline["redis_cpu_us_per_call"] as? Double ?? .nan
        }
        var line = steady
        line["baseline_redis_cpu_us_per_call"] = baselineCPU
        line["redis_cpu_ratio_to_baseline"] = (steady["redis_cpu_us_per_call"] as? Double ?? .nan) / baselineCPU
        emit(line)
        if probeTrials > 0 {
            emit(try await runTrip(instances: instances, redis: redis))
        }
        for node in Scale.nodes.isEmpty ? [redis] : Scale.nodes { _ = try? await node.send("FLUSHALL") }
    }

    var processCount: Int { processes ?? min(instances, 4) }
    var measuredSeconds: Int { seconds ?? max(20, 2 * quietHoldSeconds) }
    /// The quiet hold at the default ``DistributedOptions/quietFleetWritesPerSecond`` (2): senders ÷ 2 s, at most 120.
    var quietHoldSeconds: Int { min(120, instances / 2) }

    /// Starts the workers for `phase` and waits for them; returns their reports.
    func spawn(_ phase: String, namespace: String, instances: Int, startAt: Int64, measureMs: Int, warmupMs: Int64 = 2000) async throws -> [[String: Any]] {
        let count = min(processes ?? 4, instances)
        let outputs = (0..<count).map { "/tmp/fusebox-fleet-\(namespace)-\($0).json" }
        var first = 0
        var workers: [ChildProcess] = []
        for index in 0..<count {
            let share = instances / count + (index < instances % count ? 1 : 0)
            workers.append(try spawnSelf([
                "fleet-worker", "--phase", phase, "--redis", Scale.url, "--namespace", namespace, "--first", String(first),
                "--count", String(share), "--breakers", String(breakers), "--rate", String(rate), "--start-at", String(startAt),
                "--measure-ms", String(measureMs), "--output", outputs[index], "--probe-trials", String(probeTrials),
                "--warmup-ms", String(warmupMs),
            ]))
            first += share
        }
        defer { for worker in workers { worker.kill() } }
        for worker in workers {
            guard await worker.waitForExit(upTo: .seconds(600)) == 0 else { throw ValidationError("a fleet worker failed; see /tmp/fusebox-bench-worker.log") }
        }
        return try outputs.map { output in
            defer { try? FileManager.default.removeItem(atPath: output) }
            return try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: output))) as! [String: Any]
        }
    }

    /// The steady state (`steady`: the fleet's breakers at `rate`) or its baseline (`baseline`: GET + SET per call
    /// from as many connections): Redis' counters around the measured window.
    func runPhase(_ phase: String, redis: RedisClient, scale: Scale, floor: Double) async throws -> [String: Any] {
        let namespace = "fleet\(UInt32.random(in: 0...UInt32.max))"
        // Time to start every instance and settle (first reads, the first quiet holds) before measuring.
        // Calls start `warmupMs` before it: a quiet breaker's successes wait (instances ÷ 2 s by default, at most 120) before
        // their first write, so the measured window must come after one whole hold.
        let warmupMs = phase == "steady" ? Int64(1000 * (warmup ?? max(2, quietHoldSeconds + 5))) : 2000
        let startAt = wallMilliseconds() + 8000 + Int64(instances * breakers / 20) + warmupMs
        let measureMs = measuredSeconds * 1000
        let collector = Task { () throws -> ([String: String], [String: String], Double, Int) in
            try await Task.sleep(for: .milliseconds(max(0, startAt - wallMilliseconds())))
            let before = try await scale.info(redis)
            let began = ContinuousClock.now
            try await Task.sleep(for: .milliseconds(measureMs))
            let after = try await scale.info(redis)
            let elapsed = ContinuousClock.now - began
            let clients = Int(Double(after["connected_clients"] ?? "") ?? 0)
            return (before, after, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18, clients)
        }
        let reports = try await spawn(phase, namespace: namespace, instances: instances, startAt: startAt, measureMs: measureMs, warmupMs: warmupMs)
        let (before, after, elapsed, clients) = try await collector.value
        let windowCalls = reports.reduce(0) { $0 + ($1["calls_in_window"] as? Int ?? 0) }
        let madeCalls = reports.reduce(0) { $0 + ($1["calls_made"] as? Int ?? 0) }
        let cpuSeconds = max(0, scale.cpu(after) - scale.cpu(before) - floor * elapsed)
        let commands = scale.commandTotal(after) - scale.commandTotal(before)
        let scripts = scale.commandCalls("evalsha", after) - scale.commandCalls("evalsha", before)
        var line: [String: Any] = [
            "phase": phase, "instances": instances, "breakers": breakers, "calls_per_breaker_per_instance_per_s": rate,
            "seconds": elapsed, "guarded_calls_per_s": Double(windowCalls) / elapsed, "connections": clients,
            "redis_cpu_ms_per_s": cpuSeconds * 1000 / elapsed, "redis_cpu_us_per_call": cpuSeconds * 1e6 / Double(max(1, windowCalls)),
            "commands_per_s": Double(commands) / elapsed, "commands_per_call": Double(commands) / Double(max(1, windowCalls)),
            "script_calls_per_s": Double(scripts) / elapsed,
        ]
        var breakdown: [String: [String: Double]] = [:]
        for key in after.keys where key.hasPrefix("cmdstat_") {
            let name = String(key.dropFirst(8))
            let calls = scale.commandCalls(name, after) - scale.commandCalls(name, before)
            let usec = scale.commandMicroseconds(name, after) - scale.commandMicroseconds(name, before)
            if calls > 0 && !["info", "memory", "flushall"].contains(name) {
                breakdown[name] = ["per_s": Double(calls) / elapsed, "us_per_call": usec / Double(calls)]
            }
        }
        line["commands"] = breakdown
        if phase == "steady" {
            line["redis_cpu_us_per_breaker_per_instance_per_s"] = cpuSeconds * 1e6 / elapsed / Double(breakers * instances)
            line["script_calls_per_breaker_per_instance_per_s"] = Double(scripts) / elapsed / Double(breakers * instances)
            let startups = reports.flatMap { $0["startup_ms"] as? [Double] ?? [] }
            line["instance_startup_ms_p50"] = median(startups)
            line["instance_startup_ms_max"] = startups.max() ?? .nan
            // Exactness: every breaker's totals against the calls made, to the call.
            var counted = 0
            var bytes = 0
            let sample = min(breakers, 20)
            for index in 0..<breakers {
                counted += try await redis.send("HGET", "\(namespace):{b\(index)}:totals", "calls").decodeInt()
                if index < sample {
                    for key in ["state", "window", "totals", "events"] {
                        if case .integer(let size) = try await redis.send("MEMORY", "USAGE", "\(namespace):{b\(index)}:\(key)", "SAMPLES", "0") { bytes += size }
                    }
                }
            }
            line["calls_made"] = madeCalls
            line["calls_counted_by_redis"] = counted
            line["lost_outcomes"] = madeCalls - counted
            line["redis_memory_bytes_per_breaker"] = Double(bytes) / Double(sample)
        }
        for node in Scale.nodes.isEmpty ? [redis] : Scale.nodes { _ = try? await node.send("FLUSHALL") }
        return line
    }

    /// One idle breaker starts failing at 2 calls/s per instance; each instance also runs a per-process (local)
    /// breaker of the same policy on the same calls. Then `probeTrials` ends of a break, probes counted fleet-wide.
    func runTrip(instances: Int, redis: RedisClient) async throws -> [String: Any] {
        let namespace = "trip\(UInt32.random(in: 0...UInt32.max))"
        let startAt = wallMilliseconds() + 6000 + Int64(instances * 10)
        let reports = try await spawn("trip", namespace: namespace, instances: instances, startAt: startAt, measureMs: 0)
        var failures: [Double] = []              // when each failing call (admitted by the shared breaker) ran
        var firstRejections: [Double] = []       // each instance's first rejection by the shared breaker
        var openSeen: [Double] = []              // when each instance learned that the shared breaker opened
        var localWasted = 0
        var localRejections: [Double] = []
        var probes: [Int: Int] = [:]             // half-open version → probes admitted fleet-wide
        for report in reports {
            failures += report["failures_ms"] as? [Double] ?? []
            firstRejections += report["first_rejection_ms"] as? [Double] ?? []
            openSeen += report["open_seen_ms"] as? [Double] ?? []
            localWasted += report["local_wasted"] as? Int ?? 0
            localRejections += report["local_first_rejection_ms"] as? [Double] ?? []
            for (version, count) in report["probes_by_version"] as? [String: Int] ?? [:] { probes[Int(version) ?? -1, default: 0] += count }
        }
        failures.sort()
        // The crossing: the idle breaker's window holds the policy's minimum throughput of calls, all failures.
        let minimum = 20
        let crossing = failures.count >= minimum ? failures[minimum - 1] : .nan
        let lastRejection = firstRejections.max() ?? .nan
        let wasted = failures.filter { $0 <= lastRejection }.count
        let delays = firstRejections.map { $0 - crossing }
        let learned = openSeen.map { $0 - crossing }
        let localDelays = localRejections.map { $0 - (Double(startAt) + 1000) }
        // The last half-open period may be cut short by the end of the run: it is not a trial.
        let perTrial = Array(probes.keys.sorted().map { probes[$0]! }.dropLast())
        return [
            "phase": "trip", "instances": instances, "policy": "time window 10 s / 10 buckets, failure ratio 0.5, minimum throughput 20, break 1 s, 2 probes",
            // An instance calling twice a second first rejects up to 500 ms after it knows: "known" is the figure
            // for the fleet's reaction, "rejecting" for the calls it makes.
            "shared_calls_to_failing_dependency": wasted, "shared_instances_rejecting": firstRejections.count,
            "shared_rejecting_after_crossing_ms_p50": median(delays), "shared_rejecting_after_crossing_ms_p99": percentile(delays, 99),
            "shared_rejecting_after_crossing_ms_max": delays.max() ?? .nan,
            "shared_open_known_after_crossing_ms_p50": median(learned), "shared_open_known_after_crossing_ms_p99": percentile(learned, 99),
            "shared_open_known_after_crossing_ms_max": learned.max() ?? .nan, "shared_instances_knowing": learned.count,
            "per_process_calls_to_failing_dependency": localWasted, "per_process_instances_rejecting": localRejections.count,
            "per_process_rejecting_after_first_failure_ms_max": localDelays.max() ?? .nan,
            "probe_trials": perTrial.count, "probes_per_trial": perTrial,
            "probe_trials_with_exactly_2": perTrial.filter { $0 == 2 }.count, "probe_trials_over_2": perTrial.filter { $0 > 2 }.count,
        ]
    }

    /// Calls wasted before the fleet stops calling a failing dependency, shared against per-process breakers, for
    /// each instance count: an SVG chart.
    func drawChart(to path: String, counts: [Int], redis: RedisClient) async throws {
        var rows: [(Int, Int, Int)] = []
        for count in counts {
            let line = try await runTrip(instances: count, redis: redis)
            emit(line)
            rows.append((count, line["shared_calls_to_failing_dependency"] as? Int ?? 0, line["per_process_calls_to_failing_dependency"] as? Int ?? 0))
            for node in Scale.nodes.isEmpty ? [redis] : Scale.nodes { _ = try? await node.send("FLUSHALL") }
        }
        try FleetChart(rows: rows).svg.write(toFile: path, atomically: true, encoding: .utf8)
        print("wrote \(path)")
    }

    func emit(_ line: [String: Any]) {
        // JSON has no NaN: a figure that was not measured is null.
        let line = line.mapValues { value -> Any in
            if let number = value as? Double, !number.isFinite { return NSNull() }
            return value
        }
        let data = try! JSONSerialization.data(withJSONObject: line, options: [.sortedKeys])
        print(String(decoding: data, as: UTF8.self))
        fflush(nil)
    }
}

/// The chart `fusebox-bench fleet --chart` draws: calls that reach a failing dependency before the fleet stops
/// calling it, against the number of instances, for one shared breaker and for per-process breakers.
struct FleetChart {
    /// (instances, shared, per-process)
    var rows: [(Int, Int, Int)]

    var svg: String {
        let width = 640.0, height = 400.0, left = 70.0, right = 20.0, top = 50.0, bottom = 60.0
        let maxN = Double(rows.map(\.0).max() ?? 1)
        let maxY = max(10, Double(rows.map { max($0.1, $0.2) }.max() ?? 10)) * 1.1
        func x(_ n: Int) -> Double { left + (width - left - right) * Double(n) / maxN }
        func y(_ v: Int) -> Double { height - bottom - (height - top - bottom) * Double(v) / maxY }
        func polyline(_ values: [(Int, Int)], color: String) -> String {
            let points = values.map { String(format: "%.1f,%.1f", x($0.0), y($0.1)) }.joined(separator: " ")
            let dots = values.map { String(format: #"<circle cx="%.1f" cy="%.1f" r="3.5" fill="%@"/>"#, x($0.0), y($0.1), color) }.joined()
            return #"<polyline fill="none" stroke="\#(color)" stroke-width="2.5" points="\#(points)"/>"# + dots
        }
        var text = #"<svg xmlns="http://www.w3.org/2000/svg" width="\#(Int(width))" height="\#(Int(height))" font-family="sans-serif" font-size="12">"#
        text += #"<rect width="100%" height="100%" fill="white"/>"#
        text += #"<text x="\#(Int(left))" y="24" font-size="15" font-weight="bold">Calls that reach a failing dependency before the fleet stops calling it</text>"#
        // Axes and ticks.
        text += String(format: #"<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>"#, left, height - bottom, width - right, height - bottom)
        text += String(format: #"<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>"#, left, top, left, height - bottom)
        for row in rows {
            text += String(format: #"<text x="%.1f" y="%.0f" text-anchor="middle">%d</text>"#, x(row.0), height - bottom + 18, row.0)
        }
        for step in 0...4 {
            let value = Int(maxY / 1.1 * Double(step) / 4)
            text += String(format: #"<text x="%.0f" y="%.1f" text-anchor="end">%d</text>"#, left - 8, y(value) + 4, value)
            text += String(format: ##"<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#ddd"/>"##, left, y(value), width - right, y(value))
        }
        text += #"<text x="\#(Int((left + width - right) / 2))" y="\#(Int(height - 18))" text-anchor="middle">instances</text>"#
        text += polyline(rows.map { ($0.0, $0.2) }, color: "#c0392b")
        text += polyline(rows.map { ($0.0, $0.1) }, color: "#2471a3")
        text += ##"<text x="\##(Int(left + 12))" y="\##(Int(top + 10))" fill="#c0392b">per-process breakers (each instance trips on its own)</text>"##
        text += ##"<text x="\##(Int(left + 12))" y="\##(Int(top + 28))" fill="#2471a3">one Fusebox breaker shared by the fleet</text>"##
        return text + "</svg>\n"
    }
}

/// The instances of one `fusebox-bench fleet` worker process.
struct FleetWorker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "fleet-worker", abstract: "Instances of a fleet run.", shouldDisplay: false)

    @Option var phase: String
    @Option var redis: String
    @Option var namespace: String
    @Option var first: Int
    @Option var count: Int
    @Option var breakers: Int
    @Option var rate: Int
    @Option var startAt: Int64
    @Option var measureMs: Int
    @Option var output: String
    @Option var probeTrials = 20
    @Option var warmupMs: Int64 = 2000

    func run() async throws {
        let configuration = try RedisConfiguration(url: redis)
        var report: [String: Any] = [:]
        switch phase {
        case "steady": report = try await steady(configuration)
        case "baseline": report = try await baseline(configuration)
        case "trip": report = try await trip(configuration)
        default: throw ValidationError("unknown phase \(phase)")
        }
        try JSONSerialization.data(withJSONObject: report).write(to: URL(fileURLWithPath: output))
    }

    /// Counts kept by an instance's task.
    final class Tally: @unchecked Sendable {  // Each written by one task, read after it has ended.
        var made = 0
        var inWindow = 0
    }

    /// Calls `body(call)` at `perSecond` from `begin` until `end` (wall-clock ms), in 5 ms ticks, starting at a
    /// random phase; counts the calls made and those inside the measured window.
    static func pace(perSecond: Double, begin: Int64, measured: Range<Int64>, end: Int64, tally: Tally, _ body: (Int) async throws -> Void) async throws {
        let phase = Int64.random(in: 0..<1000)
        while wallMilliseconds() < begin { try await Task.sleep(for: .milliseconds(5)) }
        var issued = 0
        while true {
            let now = wallMilliseconds()
            if now >= end { break }
            let target = Int((Double(now - begin + phase) / 1000 * perSecond).rounded(.down))
            while issued < target {
                try await body(issued)
                issued += 1
                tally.made += 1
                if measured.contains(now) { tally.inWindow += 1 }
            }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    func makeInstances(_ configuration: RedisConfiguration, policy: BreakerPolicy, names: [String]) async throws
        -> [(adapter: DistributedAdapter<ContinuousClock>, runner: Task<Void, Never>, breakers: [CircuitBreaker], startupMs: Double)]
    {
        try await withThrowingTaskGroup(of: (Int, DistributedAdapter<ContinuousClock>, Task<Void, Never>, [CircuitBreaker], Double).self) { group in
            for index in 0..<count {
                group.addTask {
                    // Spread the starts, as a rolling deploy would.
                    try await Task.sleep(for: .milliseconds(Int.random(in: 0..<2000)))
                    let started = ContinuousClock.now
                    let (adapter, registry, runner) = try makeInstance(redis: configuration, namespace: namespace, id: "fleet-\(first + index)")
                    let made = try names.map { try registry.breaker($0, policy: policy) }
                    _ = try await made.last?.snapshot()
                    let startup = ContinuousClock.now - started
                    return (index, adapter, runner, made, Double(startup.components.seconds) * 1000 + Double(startup.components.attoseconds) / 1e15)
                }
            }
            var all: [(Int, DistributedAdapter<ContinuousClock>, Task<Void, Never>, [CircuitBreaker], Double)] = []
            for try await made in group { all.append(made) }
            return all.sorted { $0.0 < $1.0 }.map { ($0.1, $0.2, $0.3, $0.4) }
        }
    }

    func steady(_ configuration: RedisConfiguration) async throws -> [String: Any] {
        var policy = BreakerPolicy()
        policy.minimumThroughput = 20
        let fleet = try await makeInstances(configuration, policy: policy, names: (0..<breakers).map { "b\($0)" })
        let end = startAt + Int64(measureMs) + 500
        let tallies = fleet.map { _ in Tally() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (instance, tally) in zip(fleet, tallies) {
                let targets = instance.breakers
                group.addTask {
                    try await Self.pace(perSecond: Double(breakers * rate), begin: startAt - warmupMs, measured: startAt..<(startAt + Int64(measureMs)), end: end, tally: tally) { call in
                        if let permit = (try? targets[call % targets.count].acquire()) { permit.success() }
                    }
                }
            }
            try await group.waitForAll()
        }
        for instance in fleet { instance.runner.cancel() }
        for instance in fleet { await instance.adapter.flush() }
        return [
            "calls_made": tallies.reduce(0) { $0 + $1.made }, "calls_in_window": tallies.reduce(0) { $0 + $1.inWindow },
            "startup_ms": fleet.map(\.startupMs),
        ]
    }

    func baseline(_ configuration: RedisConfiguration) async throws -> [String: Any] {
        // What a library that asks Redis on every call does: read the breaker's state, write it back; one
        // connection per instance, as the fleet has.
        let connections = try (0..<count).map { _ in try RedisClient(configuration: configuration) }
        let end = startAt + Int64(measureMs) + 500
        let tallies = connections.map { _ in Tally() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (connection, tally) in zip(connections, tallies) {
                group.addTask {
                    try await Self.pace(perSecond: Double(breakers * rate), begin: startAt - warmupMs, measured: startAt..<(startAt + Int64(measureMs)), end: end, tally: tally) { call in
                        let key = "\(namespace):baseline:b\(call % breakers)"
                        _ = try await connection.send("GET", key)
                        _ = try await connection.send("SET", key, "closed")
                    }
                }
            }
            try await group.waitForAll()
        }
        return ["calls_made": tallies.reduce(0) { $0 + $1.made }, "calls_in_window": tallies.reduce(0) { $0 + $1.inWindow }]
    }

    /// Per instance: an idle breaker whose dependency fails every call from `startAt + 1000`, called at 2 calls/s,
    /// through the shared breaker and, separately, a local breaker of the same policy; after the shared trip,
    /// probes are held 300 ms and fail, for `probeTrials` ends of a break.
    func trip(_ configuration: RedisConfiguration) async throws -> [String: Any] {
        var policy = BreakerPolicy()
        policy.failureRateThreshold = 0.5
        policy.minimumThroughput = 20
        policy.window = .time(samplingDuration: .seconds(10), buckets: 10)
        policy.breakDuration = .fixed(.seconds(1))
        policy.permittedCallsInHalfOpen = 2
        let fleet = try await makeInstances(configuration, policy: policy, names: ["trip"])
        let failAt = startAt + 1000
        // Long enough for every per-process breaker (20 failures at 2/s) and the probe trials.
        let end = failAt + 12_000 + Int64(probeTrials) * 1500
        final class Record: @unchecked Sendable {  // Written by one task, read after it has ended.
            var failures: [Double] = []
            var firstRejection: Double?
            var localWasted = 0
            var localFirstRejection: Double?
            var probes: [String: Int] = [:]
            /// When this instance learned that the shared breaker opened (its transition event).
            var openSeen: Double?
        }
        let records = fleet.map { _ in Record() }
        var watchers: [Task<Void, Never>] = []
        defer { for watcher in watchers { watcher.cancel() } }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (instance, record) in zip(fleet, records) {
                let breaker = instance.breakers[0]
                let local = try BreakerRegistry(adapter: LocalAdapter()).breaker("trip-local", policy: policy)
                let events = breaker.events()
                watchers.append(Task {
                    for await event in events {
                        if case .stateChanged(let transition) = event, transition.to == .open {
                            record.openSeen = Double(wallNanoseconds()) / 1e6
                            break
                        }
                    }
                })
                group.addTask {
                    try await withThrowingTaskGroup(of: Void.self) { probes in
                        try await Self.pace(perSecond: 2, begin: startAt, measured: 0..<0, end: end, tally: Tally()) { _ in
                            // The breaker is idle until its dependency starts failing every call.
                            let now = Double(wallNanoseconds()) / 1e6
                            guard now >= Double(failAt) else { return }
                            if let permit = (try? local.acquire()) {
                                permit.failure(Failure())
                                if record.localFirstRejection == nil { record.localWasted += 1 }
                            } else if record.localFirstRejection == nil {
                                record.localFirstRejection = now
                            }
                            switch await breaker.backend.admit() {
                            case .admitted(let token) where token.isProbe:
                                record.probes[String(token.version), default: 0] += 1
                                // A slow dependency: the probe fails after 300 ms.
                                probes.addTask {
                                    try await Task.sleep(for: .milliseconds(300))
                                    breaker.backend.record(.failure(Failure.self), for: token)
                                }
                            case .admitted(let token):
                                record.failures.append(now)
                                breaker.backend.record(.failure(Failure.self), for: token)
                            case .rejected:
                                if record.firstRejection == nil { record.firstRejection = now }
                            }
                        }
                        try await probes.waitForAll()
                    }
                }
            }
            try await group.waitForAll()
        }
        for instance in fleet { instance.runner.cancel() }
        var merged: [String: Int] = [:]
        for record in records { for (version, count) in record.probes { merged[version, default: 0] += count } }
        return [
            "failures_ms": records.flatMap(\.failures), "first_rejection_ms": records.compactMap(\.firstRejection),
            "open_seen_ms": records.compactMap(\.openSeen),
            "local_wasted": records.reduce(0) { $0 + $1.localWasted }, "local_first_rejection_ms": records.compactMap(\.localFirstRejection),
            "probes_by_version": merged,
        ]
    }
}
