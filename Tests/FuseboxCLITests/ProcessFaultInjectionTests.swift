import Foundation
import Fusebox
import FuseboxLocking
import FuseboxRedis
import FuseboxTestKit
import Hiredis
import Synchronization
import Testing

@testable import FuseboxCLI

/// Faults that need a whole process to die: a `fusebox run` process is an instance like any other.
@Suite("Fault injection: instance processes killed", .timeLimit(.minutes(2)))
struct ProcessFaultInjectionTests {
    @Test("the process holding the only half-open permit is SIGKILLed: its lease ends within 5 s and exactly one new probe follows, long before the half-open maximum")
    func probeHolderKilled() async throws {
        try await RedisServerProcess.with { server in
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
            let running = Task { try? await registry.run() }
            defer { running.cancel() }
            let breaker = try registry.breaker("probe-holder", policy: policy)
            // Known before the failure, so the failure is admitted under the shared state (not the fallback's).
            _ = try await breaker.snapshot()
            try await breaker.acquireAsync().failure(CLIDocsError())
            await adapter.flush()
            // Polled: on a loaded machine the first flush may time out, and its batch goes with the next one.
            #expect(await poll(within: .seconds(5)) { (try? await breaker.snapshot())?.state == .open })
            try await Task.sleep(for: .milliseconds(1100))

            // Another process takes the only probe permit (a lease of 5 s: `fusebox run` sets no call timeout) and
            // dies holding it.
            let holder = try ChildProcess(
                executable: fuseboxExecutable, arguments: ["--redis", server.url, "run", "probe-holder"] + flags + ["--", "/bin/sleep", "10"],
                environment: ["PATH": "/usr/bin:/bin", "NO_COLOR": "1"])
            #expect(await poll(within: .seconds(10)) { (try? await breaker.snapshot())?.probesInFlight == 1 })
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
                            if let permit = breaker.tryAcquire() {
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
            var policy = BreakerPolicy()
            policy.failureRateThreshold = nil
            policy.consecutiveFailureThreshold = 1
            policy.breakDuration = .fixed(.seconds(1))
            let flags = ["--consecutive-failures", "1", "--break-duration", "1s"]
            var options = DistributedOptions(redis: server.configuration())
            options.halfOpenRetryInterval = .zero
            let adapter = try DistributedAdapter(options: options)
            let registry = BreakerRegistry(adapter: adapter)
            let running = Task { try? await registry.run() }
            defer { running.cancel() }
            let breaker = try registry.breaker("long-probe", policy: policy)
            _ = try await breaker.snapshot()
            try await breaker.acquireAsync().failure(CLIDocsError())
            await adapter.flush()
            #expect(await poll(within: .seconds(5)) { (try? await breaker.snapshot())?.state == .open })
            try await Task.sleep(for: .milliseconds(1100))
            let holder = try ChildProcess(
                executable: fuseboxExecutable, arguments: ["--redis", server.url, "run", "long-probe"] + flags + ["--", "/bin/sleep", "8"],
                environment: ["PATH": "/usr/bin:/bin", "NO_COLOR": "1"])
            defer { holder.kill() }
            #expect(await poll(within: .seconds(10)) { (try? await breaker.snapshot())?.probesInFlight == 1 })
            // Past the 5 s lease, nobody else gets a probe while the holder's command runs.
            let end = ContinuousClock.now + .seconds(7)
            var others = 0
            while ContinuousClock.now < end {
                if let permit = breaker.tryAcquire() {
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

/// Probe permits seen by racing tasks: how many, and when the first came.
private final class ProbesSeen: Sendable {
    private let seen = Locked<(count: Int, first: ContinuousClock.Instant?)>((0, nil))
    func saw() { seen.withLock { $0.count += 1; $0.first = $0.first ?? .now } }
    var count: Int { seen.withLock { $0.count } }
    var first: ContinuousClock.Instant? { seen.withLock { $0.first } }
}
