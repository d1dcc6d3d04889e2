import Foundation
import Fusebox
import FuseboxLocking
import FuseboxRedis
import FuseboxTestKit
import Hiredis
import Synchronization
import Testing
import TestKinds

@testable import FuseboxCLI

/// Faults that need a whole process to die: a `fusebox run` process is an instance like any other.
@Suite("Fault injection: instance processes killed", .kind(.timingBound), .timeLimit(.minutes(2)))
struct ProcessFaultInjectionTests {
    @Test("the process holding the only half-open permit is SIGKILLed: its lease ends within 5 s and exactly one new probe follows, long before the half-open maximum")
    func probeHolderKilled() async throws {
        try await RedisServerProcess.with { server in
            // Another process takes the only probe permit (a lease of 5 s: `fusebox run` sets no call timeout) and
            // dies holding it.
            let (breaker, running, holder) = try await Self.probeTakenByAnotherProcess("probe-holder", server: server, command: ["/bin/sleep", "10"])
            defer { running.cancel() }
            let granted = ContinuousClock.now
            holder.kill()

            // Eight tasks race for a probe, holding any they get (never reporting it), for 8 s: the lease ends 5 s
            // after the grant and frees the permit once; the half-open maximum (60 s) is far away.
            let end = granted + .seconds(8)
            let probes = ProbesSeen()
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<8 {
                    group.addTask {
                        while ContinuousClock.now < end {
                            if let permit = (try? await breaker.acquireAsync()) {
                                if permit.token.isProbe {
                                    probes.saw()
                                    // Held until every task has stopped asking: giving it back would let another
                                    // task take it, rightly.
                                    try? await Task.sleep(until: end + .milliseconds(500), clock: .continuous)
                                }
                                permit.ignore()
                            }
                            try? await Task.sleep(for: .milliseconds(2))
                        }
                    }
                }
            }
            #expect(probes.count == 1)
            let newProbe = try #require(probes.first)
            // The lease (5 s) after the grant, which came before `granted` was read; a second of margin.
            #expect(newProbe - granted < .seconds(6))
            #expect(newProbe - granted > .seconds(3))
            let transitions = try await breaker.timeline()
            #expect(!transitions.contains { $0.from == .halfOpen && $0.to == .open })
            print("fault-figure | probe holder SIGKILLed | one new probe fleet-wide, \(newProbe - granted) after the holder's grant (lease 5 s; the half-open maximum, 60 s, never reached)")
        }
    }

    @Test("a `fusebox run` probe that outlives its lease keeps it: the process renews it while the command runs")
    func longProbeKeepsItsLease() async throws {
        try await RedisServerProcess.with { server in
            let (breaker, running, holder) = try await Self.probeTakenByAnotherProcess("long-probe", server: server, command: ["/bin/sleep", "8"])
            defer { running.cancel() }
            defer { holder.kill() }
            // Past the 5 s lease, nobody else gets a probe while the holder's command runs.
            let end = ContinuousClock.now + .seconds(7)
            var others = 0
            while ContinuousClock.now < end {
                if let permit = (try? await breaker.acquireAsync()) {
                    if permit.token.isProbe { others += 1 }
                    permit.ignore()
                }
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(others == 0)
            // The command succeeds: its probe closes the breaker.
            #expect(await poll(within: .seconds(10)) { (try? await breaker.snapshot())?.state == .closed })
        }
    }
}

extension ProcessFaultInjectionTests {
    @Test("two instance processes under load, Redis SIGKILLed and restarted from its AOF: no crash, no rejection, every outcome counted once")
    func restartFromAOFUnderInstanceProcesses() async throws {
        let persistence = RedisServerProcess.Options(extraArguments: ["--appendonly", "yes", "--appendfsync", "always"])
        try await RedisServerProcess.with(persistence) { server in
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-aof-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            // Each instance: two workers, a call every 20 ms, all healthy for 4 s (the schedule's outage is 1 ms).
            let instances = try (0..<2).map { index in
                try ChildProcess(
                    executable: fuseboxExecutable,
                    arguments: ["demo-instance", "--index", "\(index)", "--redis", server.url, "--namespace", "aof",
                                "--schedule", "4000,1,1", "--stats", directory.appendingPathComponent("\(index).json").path],
                    environment: ["PATH": "/usr/bin:/bin", "NO_COLOR": "1"])
            }
            defer { for instance in instances { instance.kill() } }
            try await Task.sleep(for: .milliseconds(1500))
            try await server.restart(kill: true)
            let restarted = ContinuousClock.now

            for instance in instances {
                let status = await instance.waitForExit(upTo: .seconds(20))
                #expect(status == 0, "an instance ended with \(status.map(String.init) ?? "no exit")")
            }
            let stats = try (0..<2).map { index in
                try JSONDecoder().decode(InstanceStats.self, from: Data(contentsOf: directory.appendingPathComponent("\(index).json")))
            }
            let reached = stats.reduce(0) { $0 + $1.reached }
            #expect(stats.allSatisfy { $0.done && $0.rejected == 0 }, "\(stats)")
            #expect(reached > 200, "the load was too light to mean anything: \(reached) calls")

            // Every outcome, written before the kill (kept by the AOF) or buffered through it, counted exactly once.
            let operatorSide = BreakerOperator(connection: try RedisClient(configuration: server.configuration()), namespace: "aof")
            let totals = try await operatorSide.snapshot(of: "inventory-service").totals
            #expect(totals.successes + totals.failures == reached, "Redis counted \(totals), the instances reached the dependency \(reached) times")
            print("fault-figure | SIGKILL, restarted from AOF, 2 instance processes | \(reached) calls, counted once; both instances exited cleanly \(ContinuousClock.now - restarted) after the restart")
        }
    }
}

extension ProcessFaultInjectionTests {
    @Test("rolling restart of 20 instance processes under load, probe holders SIGKILLed: no half-open stall past the lease, at most one new probe per dead holder, totals exact for every instance that flushed")
    func rollingRestart() async throws {
        try await RedisServerProcess.with { server in try await Self.roll(server) }
    }

    private static func roll(_ server: RedisServerProcess) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-roll-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let (healthy, outage, recovery) = (Int64(2000), Int64(7000), Int64(4000))
        let startAt = Int64(Date().timeIntervalSince1970 * 1000) + 2500
        // One probe permit, leased for twice the 300 ms call timeout; a probe runs 250 ms; no half-open maximum in
        // reach (60 s), so a dead holder that kept its permit would stall the fleet for the rest of the test.
        func launch(_ index: Int, _ generation: Int) throws -> (process: ChildProcess, journal: URL) {
            let journal = directory.appendingPathComponent("\(index)-\(generation).log")
            let process = try ChildProcess(
                executable: fuseboxExecutable,
                arguments: ["demo-instance", "--index", "\(index)", "--redis", server.url, "--namespace", "roll",
                            "--schedule", "\(healthy),\(outage),\(recovery)", "--start-at", "\(startAt)", "--break-ms", "300",
                            "--permits", "1", "--max-half-open-ms", "60000", "--call-timeout-ms", "300", "--probe-hold-ms", "250",
                            "--journal", journal.path],
                environment: ["PATH": "/usr/bin:/bin", "NO_COLOR": "1"])
            return (process, journal)
        }
        var live = try (0..<20).map { try launch($0, 0) }
        var generations = [Int](repeating: 0, count: 20)
        var killed: [URL] = []
        var holderKills = 0
        let redis = try RedisClient(configuration: server.configuration())
        let stateKey = "roll:{inventory-service}:state"
        defer { for instance in live { instance.process.kill() } }

        // The roll: every 450 ms during the outage, the process holding a probe (as its journal says) is killed;
        // while the breaker is closed, every other tick the next process in turn. Each is replaced at once.
        var next = 0
        var tick = 0
        let rollEnd = startAt + healthy + outage + recovery - 1000
        while Int64(Date().timeIntervalSince1970 * 1000) < rollEnd {
            try await Task.sleep(for: .milliseconds(150))
            tick += 1
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            let inOutage = now >= startAt + healthy && now < startAt + healthy + outage
            var victim: Int?
            if inOutage && tick % 3 == 0 {
                // Every 450 ms, so that other probes live to report their failure and half-open periods end.
                victim = live.indices.first { !Journal.openProbes(in: live[$0].journal).isEmpty }
                if victim != nil { holderKills += 1 }
            } else if tick % 2 == 0, now >= startAt, (try? await redis.send("HGET", stateKey, "state").string) == "closed" {
                victim = next
                next = (next + 1) % live.count
            }
            guard let victim else { continue }
            live[victim].process.kill()
            _ = await live[victim].process.waitForExit(upTo: .seconds(5))
            killed.append(live[victim].journal)
            generations[victim] += 1
            live[victim] = try launch(victim, generations[victim])
        }
        for instance in live {
            let status = await instance.process.waitForExit(upTo: .seconds(30))
            #expect(status == 0, "an instance ended with \(status.map(String.init) ?? "no exit")")
        }
        #expect(holderKills >= 3, "only \(holderKills) probe holders were killed: the test proved little")
        #expect(killed.count >= 15, "only \(killed.count) processes were killed")

        // Totals: exact for every process that ended and flushed; a killed one counted at least what its last
        // flush covered and at most what it recorded.
        var exact = 0
        var (lower, upper) = (0, 0)
        for instance in live {
            let entries = Journal.read(instance.journal)
            #expect(entries.last == "done")
            exact += entries.filter { $0 == "c" }.count
        }
        for journal in killed {
            let entries = Journal.read(journal)
            lower += entries.last { $0.hasPrefix("f ") }.flatMap { Int($0.dropFirst(2)) } ?? 0
            upper += entries.filter { $0 == "c" }.count
        }
        let operatorSide = BreakerOperator(connection: redis, namespace: "roll")
        let snapshot = try await operatorSide.snapshot(of: "inventory-service")
        let counted = snapshot.totals.successes + snapshot.totals.failures
        #expect(counted >= exact + lower && counted <= exact + upper,
                "Redis counted \(counted); the instances that flushed recorded \(exact), the killed ones between \(lower) and \(upper)")

        // Probes: per half-open period (its version), at most one plus the holders killed in it, plus the live
        // holders that stalled past the point where their lease needed a renewal (half the 600 ms lease): a holder
        // that cannot renew in time loses its permit, as Docs/architecture.md's "Probe leases" says any lease must.
        // On an unloaded machine a probe takes its 250 ms and none is excused.
        var granted: [Int: Int] = [:]
        var orphaned: [Int: Int] = [:]
        var stalled: [Int: Int] = [:]
        var slowest: [Int: Int64] = [:]
        for journal in live.map(\.journal) + killed {
            let wasKilled = killed.contains(journal)
            for probe in Journal.probes(in: journal) {
                granted[probe.version, default: 0] += 1
                guard let ended = probe.ended else {
                    // A live instance reports every probe it was granted; only a killed one leaves one open.
                    if wasKilled { orphaned[probe.version, default: 0] += 1 }
                    continue
                }
                slowest[probe.version] = max(slowest[probe.version] ?? 0, ended - probe.granted)
                if ended - probe.granted > 300 { stalled[probe.version, default: 0] += 1 }
            }
        }
        print("fault-figure | rolling restart | \(granted.values.reduce(0, +)) probes in \(granted.count) half-open periods, \(orphaned.values.reduce(0, +)) holders killed, \(stalled.values.reduce(0, +)) held past half their lease")
        for (version, count) in granted {
            let excused = orphaned[version, default: 0] + stalled[version, default: 0]
            #expect(
                count <= 1 + excused,
                "half-open version \(version): \(count) probes, \(orphaned[version, default: 0]) holders killed, \(stalled[version, default: 0]) held past 300 ms (slowest \(slowest[version] ?? 0) ms)")
        }

        // No stall: each half-open period ended within a lease (600 ms) per holder killed in it, plus the probe's
        // 250 ms each, plus a second of margin for a loaded machine.
        let events = try await redis.send("XRANGE", "roll:{inventory-service}:events", "-", "+").array ?? []
        var periods: [(version: Int, began: Int64, ended: Int64?)] = []
        for event in events {
            guard let pair = event.array, pair.count == 2, let fields = pair[1].array else { continue }
            var values: [String: String] = [:]
            for index in stride(from: 0, to: fields.count - 1, by: 2) { values[fields[index].string ?? ""] = fields[index + 1].string }
            guard let at = values["at"].flatMap({ Int64($0) }), let version = values["version"].flatMap({ Int($0) }) else { continue }
            if values["from"] == "half_open", let last = periods.indices.last, periods[last].ended == nil { periods[last].ended = at }
            if values["to"] == "half_open" { periods.append((version, at, nil)) }
        }
        #expect(periods.count >= 5, "only \(periods.count) half-open periods")
        var longest: Int64 = 0
        for period in periods {
            guard let ended = period.ended else { continue }
            let bound = Int64(1 + orphaned[period.version, default: 0]) * 850 + 1000
            longest = max(longest, ended - period.began)
            #expect(ended - period.began <= bound, "half-open version \(period.version) lasted \(ended - period.began) ms (bound \(bound) ms)")
        }
        #expect(snapshot.state == .closed)
        print("fault-figure | rolling restart, 20 instance processes | \(killed.count) SIGKILLs (\(holderKills) of probe holders), \(periods.count) half-open periods, the longest \(longest) ms; Redis counted \(counted) outcomes: \(exact) of instances that flushed + \(counted - exact) of killed ones (their flushes covered \(lower), they recorded \(upper))")
    }
}

extension ProcessFaultInjectionTests {
    /// This process's breaker `name` (trips on its first failure; break 1 s; half-open maximum 60 s), tripped and
    /// its break over; then a `fusebox run` process of the same policy that takes the only probe permit to run
    /// `command`. Returns the breaker, the adapter's background work (cancel it) and the process.
    static func probeTakenByAnotherProcess(_ name: String, server: RedisServerProcess, command: [String]) async throws
        -> (breaker: CircuitBreaker, running: Task<Void, Never>, holder: ChildProcess)
    {
        var policy = BreakerPolicy()
        policy.failureRateThreshold = nil
        policy.consecutiveFailureThreshold = 1
        policy.breakDuration = .fixed(.seconds(1))
        policy.maxHalfOpenDuration = .seconds(60)
        let flags = ["--consecutive-failures", "1", "--break-duration", "1s", "--max-half-open", "60s"]
        var options = DistributedOptions(redis: server.configuration())
        options.halfOpenRetryInterval = .zero
        let adapter = try DistributedAdapter(options: options)
        let registry = BreakerRegistry(adapter: adapter)
        let running = Task<Void, Never> { try? await registry.run() }
        let breaker = try registry.breaker(name, policy: policy)
        // Known before the failure, so the failure is admitted under the shared state (not the fallback's).
        _ = try await breaker.snapshot()
        try await breaker.acquireAsync().failure(CLIDocsError())
        await adapter.flush()
        // Polled: on a loaded machine the first flush may time out, and its batch goes with the next one.
        #expect(await poll(within: .seconds(5)) { (try? await breaker.snapshot())?.state == .open })
        try await Task.sleep(for: .milliseconds(1100))
        let holder = try ChildProcess(
            executable: fuseboxExecutable, arguments: ["--redis", server.url, "run", name] + flags + ["--"] + command,
            environment: ["PATH": "/usr/bin:/bin", "NO_COLOR": "1"])
        #expect(await poll(within: .seconds(10)) { (try? await breaker.snapshot())?.probesInFlight == 1 })
        return (breaker, running, holder)
    }
}

/// Reads a demo instance's journal (`fusebox demo-instance --journal`).
private enum Journal {
    static func read(_ url: URL) -> [String] {
        ((try? String(contentsOf: url, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    /// The probes the journal shows: each one's half-open version, when it was granted and when its outcome was
    /// recorded (`nil`: not yet), in milliseconds since 1970. An `e` ends the earliest probe still open.
    static func probes(in url: URL) -> [(version: Int, granted: Int64, ended: Int64?)] {
        var probes: [(version: Int, granted: Int64, ended: Int64?)] = []
        for entry in read(url) {
            let words = entry.split(separator: " ")
            if words.first == "p", words.count == 3 {
                probes.append((Int(words[1]) ?? -1, Int64(words[2]) ?? 0, nil))
            } else if words.first == "e", words.count == 2, let open = probes.firstIndex(where: { $0.ended == nil }) {
                probes[open].ended = Int64(words[1]) ?? 0
            }
        }
        return probes
    }

    /// The half-open versions of the probes the journal shows granted and not yet ended.
    static func openProbes(in url: URL) -> [Int] { probes(in: url).filter { $0.ended == nil }.map(\.version) }
}

/// Probe permits seen by racing tasks: how many, and when the first came.
private final class ProbesSeen: Sendable {
    private let seen = Locked<(count: Int, first: ContinuousClock.Instant?)>((0, nil))
    func saw() { seen.withLock { $0.count += 1; $0.first = $0.first ?? .now } }
    var count: Int { seen.withLock { $0.count } }
    var first: ContinuousClock.Instant? { seen.withLock { $0.first } }
}
