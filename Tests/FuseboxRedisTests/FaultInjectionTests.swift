import Fusebox
import FuseboxLocking
import FuseboxTestKit
import Hiredis
import Logging
import Synchronization
import Testing
import TestKinds

@testable import FuseboxRedis

/// Calls through one breaker from one task, about one every millisecond, until stopped: what it recorded and the
/// longest any call waited.
final class Load: Sendable {
    struct Figures: Sendable {
        var successes = 0
        var rejected = 0
        /// Calls decided by the store-down policy (counted only when the load was given a way to tell).
        var storeDown = 0
        var longestWait: Duration = .zero
    }

    private final class Recorder: Sendable {
        let figures = Locked(Figures())
    }

    private let recorder = Recorder()
    private let task: Task<Void, Never>

    /// `isStoreDown`, when given, tells whether a call is decided by the store-down policy.
    init(_ breaker: CircuitBreaker, isStoreDown: (@Sendable () -> Bool)? = nil) {
        let recorder = self.recorder
        task = Task {
            while !Task.isCancelled {
                if isStoreDown?() == true { recorder.figures.withLock { $0.storeDown += 1 } }
                let started = ContinuousClock.now
                do {
                    let permit = try await breaker.acquireAsync()
                    permit.success()
                    recorder.figures.withLock { $0.successes += 1 }
                } catch {
                    recorder.figures.withLock { $0.rejected += 1 }
                }
                let waited = ContinuousClock.now - started
                recorder.figures.withLock { $0.longestWait = max($0.longestWait, waited) }
                try? await Task.sleep(for: .milliseconds(1))
            }
        }
    }

    /// Stops the load and returns its figures, having checked that the store-down policy covered every call
    /// (none rejected, unless `allowingRejections`) and that none waited `bound` or more.
    func stop(bound: Duration, allowingRejections: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) async -> Figures {
        let figures = await stop()
        #expect(allowingRejections || figures.rejected == 0, "\(figures.rejected) calls rejected", sourceLocation: sourceLocation)
        #expect(figures.longestWait < bound, "a call waited \(figures.longestWait)", sourceLocation: sourceLocation)
        return figures
    }

    /// Stops the load and returns its figures.
    func stop() async -> Figures {
        task.cancel()
        await task.value
        return recorder.figures.withLock { $0 }
    }
}

/// Counts kept by concurrent tasks.
final class Counts: Sendable {
    private let counts: Locked<[Int]>
    init(_ size: Int) { counts = Locked(Array(repeating: 0, count: size)) }
    func add(_ count: Int, at index: Int) { counts.withLock { $0[index] += count } }
    var values: [Int] { counts.withLock { $0 } }
}

/// What a fault did, printed for Docs/reliability.md (`make test-faults` shows these lines).
func report(_ fault: String, _ figures: String) {
    print("fault-figure | \(fault) | \(figures)")
}

/// Waits until the breaker's totals in Redis count `successes` successes; `false` (and what they count) after
/// `limit`.
func totalsReach(_ breaker: CircuitBreaker, _ instance: Instance, successes: Int, within limit: Duration = .seconds(5)) async -> Bool {
    let reached = await eventually(within: limit) {
        await instance.adapter.flush()
        return (try? await breaker.snapshot().totals.successes) == successes
    }
    if !reached {
        let totals = try? await breaker.snapshot().totals
        Issue.record("expected \(successes) successes in Redis' totals, found \(totals.map { String(describing: $0) } ?? "no snapshot")")
    }
    return reached
}

/// Faults injected into a real redis-server while instances drive breakers through the public API. Each test
/// asserts: no crash, no wait past the configured timeout (with a stated margin), the store-down policy covers the
/// outage, shared state works again within a stated bound, and no outcome is lost or counted twice.
@Suite("Fault injection under load", .kind(.timingBound), .timeLimit(.minutes(3)))
struct FaultInjectionTests {
    /// The command timeout the instances use, and the margin every bounded wait is checked against.
    static let timeout = Duration.milliseconds(300)
    static let bound = timeout * 4

    @Test("DEBUG SLEEP 2: waits stay bounded, the local fallback covers, every outcome is counted once")
    func debugSleep() async throws {
        try await RedisServerProcess.with(.init(extraArguments: ["--enable-debug-command", "local"])) { server in
            let instance = try Instance(testOptions(server, timeout: Self.timeout))
            defer { Task { await instance.stop() } }
            let breaker = try instance.registry.breaker("sleepy", policy: tripsOnFirstFailure())
            _ = try await breaker.snapshot()
            let load = Load(breaker)
            try await Task.sleep(for: .milliseconds(200))

            let sleeper = try RedisClient(configuration: server.configuration(commandTimeout: .seconds(5)))
            let asleep = Task { try await sleeper.send("DEBUG", "SLEEP", "2") }
            try await Task.sleep(for: .milliseconds(100))
            let asking = ContinuousClock.now
            await #expect { try await breaker.snapshot() } throws: { ($0 as? FuseboxError)?.code == .backendUnavailable }
            let snapshotWait = ContinuousClock.now - asking
            #expect(snapshotWait < Self.bound)
            #expect(try await asleep.value.string == "OK")

            let back = ContinuousClock.now
            let figures = await load.stop(bound: Self.bound)
            #expect(await totalsReach(breaker, instance, successes: figures.successes))
            report("DEBUG SLEEP 2", "snapshot failed after \(snapshotWait); longest call \(figures.longestWait); \(figures.successes) successes counted once, totals exact \(ContinuousClock.now - back) after the sleep")
        }
    }

    /// Two instances share breaker `name` (one failure trips it, a 1 s break, one probe), tripped and past its
    /// break: the next call asks Redis for the probe permit.
    private static func pastBreak(_ server: RedisServerProcess, _ name: String, configure: (inout DistributedOptions) -> Void) async throws
        -> (first: Instance, other: Instance, breaker: CircuitBreaker, peer: CircuitBreaker)
    {
        // A command timeout far above the budget: the budget, not the timeout, must bound the wait.
        var options = testOptions(server, timeout: .seconds(3))
        options.admissionBudget = .milliseconds(50)
        configure(&options)
        let first = try Instance(options)
        let other = try Instance(testOptions(server, namespace: options.namespace, timeout: .seconds(3)))
        let policy = tripsOnFirstFailure { $0.breakDuration = .fixed(.seconds(1)) }
        let breaker = try first.registry.breaker(name, policy: policy)
        let peer = try other.registry.breaker(name, policy: policy)
        // Known first, so that the failure is admitted by the shared state (not by a fallback, on a slow first answer).
        _ = try await breaker.snapshot()
        _ = try await peer.snapshot()
        try await breaker.acquireAsync().failure(Boom())
        let tripped = ContinuousClock.now
        #expect(await eventually { (try? await breaker.snapshot().state) == .open })
        #expect(await eventually {
            let one = await isRejected(breaker)
            let two = await isRejected(peer)
            return one && two
        })
        try await Task.sleep(until: tripped + .milliseconds(1200))
        return (first, other, breaker, peer)
    }

    @Test("admission budget under SIGSTOP: a half-open call waits at most the budget, the next ones not at all, and the permit Redis grants late goes back")
    func admissionBudgetFrozen() async throws {
        try await RedisServerProcess.with { server in
            let (first, other, breaker, peer) = try await Self.pastBreak(server, "budget-frozen") { _ in }
            defer { Task { await first.stop(); await other.stop() } }

            server.pause()
            defer { server.resume() }
            let asking = ContinuousClock.now
            do {
                let permit = try await breaker.acquireAsync()
                permit.ignore()
                Issue.record("a half-open call was admitted while Redis could not count its probe")
            } catch let error as FuseboxError {
                // Policy `local`: rejected as if the permit were denied (the fallback would send probes the fleet does not count).
                #expect(error.code == .circuitOpen && error.state == .halfOpen)
            }
            let firstWait = ContinuousClock.now - asking
            #expect(firstWait < .milliseconds(400), "the first call waited \(firstWait); budget 50 ms")

            // Until Redis answers, calls that would ask it are decided at once: 20 calls take far less than 20 budgets.
            let following = ContinuousClock.now
            for _ in 0..<20 {
                let rejected = await isRejected(breaker)
                #expect(rejected)
            }
            let followingWait = ContinuousClock.now - following
            #expect(followingWait < .milliseconds(500), "20 calls took \(followingWait)")

            // A breaker this instance has not seen yet: the store-down policy (local: a fresh, closed breaker) decides.
            let fresh = try first.registry.breaker("budget-fresh")
            let freshAsking = ContinuousClock.now
            try fresh.acquire().success()
            let freshWait = ContinuousClock.now - freshAsking
            #expect(freshWait < .milliseconds(400), "a first call waited \(freshWait)")

            // Redis comes back and grants the first instance the probe permit it asked for: nobody waits for it any
            // more, so it goes back at once, and the other instance gets it (a kept permit would block it for its 5 s lease).
            server.resume()
            let back = ContinuousClock.now
            #expect(await eventually(within: .seconds(3)) {
                guard let permit = try? await peer.acquireAsync() else { return false }
                let isProbe = permit.token.isProbe
                permit.success()
                return isProbe
            })
            let handedOn = ContinuousClock.now - back
            #expect(await eventually { await !isRejected(breaker) })
            report("admission budget (50 ms), Redis SIGSTOP-ed in half-open", "first call answered after \(firstWait), 20 more in \(followingWait) together, a first call of a new breaker after \(freshWait); the permit granted late was given back and probed by the other instance \(handedOn) after SIGCONT")
        }
    }

    @Test("admission budget under DEBUG SLEEP 2: acquireAsync in half-open waits at most the budget, failClosed answers backendUnavailable, the breaker closes after")
    func admissionBudgetDebugSleep() async throws {
        try await RedisServerProcess.with(.init(extraArguments: ["--enable-debug-command", "local"])) { server in
            let (first, other, breaker, _) = try await Self.pastBreak(server, "budget-asleep") { $0.whenUnavailable = .failClosed }
            defer { Task { await first.stop(); await other.stop() } }

            let sleeper = try RedisClient(configuration: server.configuration(commandTimeout: .seconds(5)))
            let asleep = Task { try await sleeper.send("DEBUG", "SLEEP", "2") }
            try await Task.sleep(for: .milliseconds(100))
            let asking = ContinuousClock.now
            await #expect {
                _ = try await breaker.acquireAsync()
            } throws: { ($0 as? FuseboxError)?.code == .backendUnavailable }
            let waited = ContinuousClock.now - asking
            #expect(waited < .milliseconds(400), "waited \(waited); budget 50 ms, Redis asleep for 2 s")
            #expect(try await asleep.value.string == "OK")

            // Awake: the late answer (a probe permit, given back) updated the cache; a probe closes the breaker.
            let awake = ContinuousClock.now
            #expect(await eventually(within: .seconds(3)) {
                guard let permit = try? await breaker.acquireAsync() else { return false }
                permit.success()
                return true
            })
            #expect(await eventually { (try? await breaker.snapshot().state) == .closed })
            report("admission budget (50 ms), DEBUG SLEEP 2 in half-open, failClosed", "acquireAsync answered backendUnavailable after \(waited); a probe admitted again \(ContinuousClock.now - awake) after the sleep")
        }
    }

    @Test("CLIENT KILL TYPE normal, five times under load: reconnected, nothing lost or counted twice, trips still work")
    func clientKillNormal() async throws {
        try await RedisServerProcess.with { server in
            var options = testOptions(server, timeout: Self.timeout)
            options.flushInterval = .milliseconds(20)
            options.quietFlushInterval = .milliseconds(20)
            let instance = try Instance(options)
            defer { Task { await instance.stop() } }
            let breaker = try instance.registry.breaker("killed-clients", policy: tripsOnFirstFailure())
            _ = try await breaker.snapshot()
            let load = Load(breaker)
            let admin = try RedisClient(configuration: server.configuration())
            var killed = 0
            for _ in 0..<5 {
                // Each kill must find the instance connected again: on a loaded machine its reconnection (spaced
                // 25 ms, doubling) can take longer than the 100 ms between kills.
                let deadline = ContinuousClock.now + .seconds(3)
                var hit = 0
                while hit == 0 && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(100))
                    hit = try await admin.send("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes").int ?? 0
                }
                killed += hit
            }
            let figures = await load.stop(bound: Self.bound)
            #expect(killed >= 5)
            let ended = ContinuousClock.now
            #expect(await totalsReach(breaker, instance, successes: figures.successes))
            let exactAfter = ContinuousClock.now - ended
            try await breaker.acquireAsync().failure(Boom())
            #expect(await eventually { await isRejected(breaker) })
            report("CLIENT KILL TYPE normal ×5", "\(killed) connections killed; \(figures.successes) successes counted once, exact \(exactAfter) after; longest call \(figures.longestWait)")
        }
    }

    @Test("every outcome written at once while connections are killed 20 times: a batch written again is never overtaken, totals exact")
    func writeThroughAcrossKills() async throws {
        try await RedisServerProcess.with { server in
            // writeThrough submits a write per outcome: with the one-write-outstanding rule gone, a batch that
            // failed on a dying connection is overtaken by later ones on the next, and Redis' high-water mark
            // then takes it for a copy (Tests/Model/writes.pml, -DPIPELINED).
            var options = testOptions(server, timeout: Self.timeout)
            options.writeThrough = true
            options.flushInterval = .milliseconds(10)
            let instance = try Instance(options)
            defer { Task { await instance.stop() } }
            let breakers = try (0..<4).map { try instance.registry.breaker("through-\($0)", policy: neverTrips()) }
            for breaker in breakers { _ = try await breaker.snapshot() }
            let made = Counts(4)
            let workers = breakers.enumerated().map { index, breaker in
                Task {
                    while !Task.isCancelled {
                        if let permit = (try? breaker.acquire()) {
                            if Int.random(in: 0..<10) == 0 { permit.failure(Boom()) } else { permit.success() }
                            made.add(1, at: index)
                        }
                        try? await Task.sleep(for: .microseconds(200))
                    }
                }
            }
            let admin = try RedisClient(configuration: server.configuration())
            var killed = 0
            for _ in 0..<20 {
                try await Task.sleep(for: .milliseconds(40))
                killed += try await admin.send("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes").int ?? 0
            }
            for worker in workers { worker.cancel() }
            for worker in workers { await worker.value }
            let counts = made.values
            var exact = 0
            for (index, breaker) in breakers.enumerated() {
                let reached = await eventually(within: .seconds(5)) {
                    await instance.adapter.flush()
                    return (try? await breaker.snapshot().totals.calls) == counts[index]
                }
                if reached { exact += 1 }
                let totals = try? await breaker.snapshot().totals
                #expect(reached, "breaker \(index): \(counts[index]) calls made, Redis counts \(totals.map { "\($0.calls)" } ?? "?")")
            }
            #expect(killed >= 20)
            report("CLIENT KILL ×20 with writeThrough", "\(killed) connections killed; \(counts.reduce(0, +)) outcomes on 4 breakers, each written at once; \(exact) of 4 breakers' totals exact")
        }
    }

    @Test("CLIENT KILL TYPE pubsub: the subscriber comes back and catches up on a trip it may have missed")
    func clientKillPubsub() async throws {
        try await RedisServerProcess.with { server in
            var options = testOptions(server, timeout: Self.timeout)
            // No periodic refresh to fall back on: only the subscriber (and its catch-up on reconnecting) can
            // tell instance A about B's trip.
            options.refreshInterval = .seconds(60)
            let fleet = try Instance.fleet(2, options)
            defer { Task { for instance in fleet { await instance.stop() } } }
            let a = try fleet[0].registry.breaker("missed", policy: tripsOnFirstFailure())
            let b = try fleet[1].registry.breaker("missed", policy: tripsOnFirstFailure())
            _ = try await a.snapshot()
            _ = try await b.snapshot()
            try await waitForSubscribers(2, namespace: options.namespace, server: server)

            let admin = try RedisClient(configuration: server.configuration())
            let killed = try await admin.send("CLIENT", "KILL", "TYPE", "pubsub").int ?? 0
            #expect(killed == 2)
            try await b.acquireAsync().failure(Boom())
            await fleet[1].adapter.flush()
            let tripped = ContinuousClock.now
            #expect(await eventually(within: .seconds(3)) { await isRejected(a) })
            let seenAfter = ContinuousClock.now - tripped
            try await waitForSubscribers(2, namespace: options.namespace, server: server)
            report("CLIENT KILL TYPE pubsub", "both subscribers killed, a trip made at once; the other instance rejected \(seenAfter) after it")
        }
    }

    @Test("FLUSHALL while running: no crash, the breakers come back, a trip works again")
    func flushAll() async throws {
        try await RedisServerProcess.with { server in
            let instance = try Instance(testOptions(server, timeout: Self.timeout))
            defer { Task { await instance.stop() } }
            let breaker = try instance.registry.breaker("flushed-all", policy: tripsOnFirstFailure())
            try await breaker.isolate(reason: "before FLUSHALL")
            #expect(await isRejected(breaker))
            let load = Load(breaker)
            let admin = try RedisClient(configuration: server.configuration())
            _ = try await admin.send("FLUSHALL")
            let flushed = ContinuousClock.now
            // Everything Redis held is gone: the instance adopts the new, empty state (closed).
            #expect(await eventually(within: .seconds(5)) { await !isRejected(breaker) })
            let backAfter = ContinuousClock.now - flushed
            let figures = await load.stop(bound: Self.bound, allowingRejections: true)
            try await breaker.acquireAsync().failure(Boom())
            #expect(await eventually { await isRejected(breaker) })
            #expect(try await breaker.snapshot().state == .open)
            #expect(try await admin.send("SISMEMBER", "\(instance.adapter.core.options.namespace):breakers", "flushed-all").int == 1)
            report("FLUSHALL", "shared (empty) state adopted \(backAfter) after; longest call \(figures.longestWait)")
        }
    }

    @Test("maxmemory with noeviction: writes refused, reads work, the fallback covers, outcomes written once memory is back")
    func maxMemoryNoEviction() async throws {
        try await RedisServerProcess.with { server in
            let instance = try Instance(testOptions(server, timeout: Self.timeout))
            defer { Task { await instance.stop() } }
            let breaker = try instance.registry.breaker("full", policy: tripsOnFirstFailure())
            try await breaker.acquireAsync().success()
            await instance.adapter.flush()
            let admin = try RedisClient(configuration: server.configuration())
            _ = try await admin.send("CONFIG", "SET", "maxmemory-policy", "noeviction")
            _ = try await admin.send("CONFIG", "SET", "maxmemory", "1")
            let load = Load(breaker)
            try await Task.sleep(for: .milliseconds(300))
            // A write is refused with the server's OOM error; the local fallback goes on admitting.
            let direct = try RedisClient(configuration: server.configuration())
            await #expect { try await direct.send("SET", "x", "y") } throws: { ($0 as? RedisError)?.serverErrorPrefix == "OOM" }
            await instance.adapter.flush()
            #expect(try await admin.send("HGET", "\(instance.adapter.core.options.namespace):{full}:state", "state").string == "closed")
            _ = try await admin.send("CONFIG", "SET", "maxmemory", "0")
            let freed = ContinuousClock.now
            let figures = await load.stop(bound: Self.bound)
            #expect(await totalsReach(breaker, instance, successes: figures.successes + 1))
            report("maxmemory reached (noeviction)", "\(figures.successes) successes held while writes were refused, written once \(ContinuousClock.now - freed) after memory was back")
        }
    }

    @Test("an eviction policy drops the breaker's keys: the instance rebuilds them, a trip works again")
    func evicted() async throws {
        try await RedisServerProcess.with { server in
            let instance = try Instance(testOptions(server, timeout: Self.timeout))
            defer { Task { await instance.stop() } }
            let breaker = try instance.registry.breaker("evicted", policy: tripsOnFirstFailure())
            try await breaker.acquireAsync().success()
            await instance.adapter.flush()
            let admin = try RedisClient(configuration: server.configuration())
            let namespace = instance.adapter.core.options.namespace
            let stateKey = "\(namespace):{evicted}:state"
            #expect(try await admin.send("EXISTS", stateKey).int == 1)
            // Fill memory past a limit under allkeys-random until the breaker's state key has been evicted.
            let used = try await admin.send("INFO", "memory").string?.split(whereSeparator: \.isNewline)
                .first { $0.hasPrefix("used_memory:") }.flatMap { Int($0.dropFirst("used_memory:".count)) } ?? 0
            _ = try await admin.send("CONFIG", "SET", "maxmemory-policy", "allkeys-random")
            _ = try await admin.send("CONFIG", "SET", "maxmemory", String(used + 2_000_000))
            let filler = String(repeating: "x", count: 10_000)
            var written = 0
            var evicted = false
            while !evicted, written < 5_000 {
                _ = try await admin.pipeline((0..<100).map { RedisCommand("SET", "filler:\(written + $0)", filler) })
                written += 100
                // (The instance may make the key again soon after: its next refresh finds it missing.)
                evicted = try await admin.send("EXISTS", stateKey).int == 0
            }
            #expect(evicted)
            _ = try await admin.send("CONFIG", "SET", "maxmemory", "0")
            // The filler goes; whatever of the breaker's other keys survived stays.
            _ = try await admin.pipeline((0..<written).map { RedisCommand("DEL", "filler:\($0)") })
            let load = Load(breaker)
            // Once the instance has read the rebuilt state, its calls count there (calls admitted under the lost
            // state count in the totals only, as any call admitted under an older state).
            #expect(await eventually { (try? await breaker.snapshot()) != nil })
            try await breaker.acquireAsync().failure(Boom())
            #expect(await eventually(within: .seconds(5)) { await isRejected(breaker) })
            let snapshot = try await breaker.snapshot()
            #expect(snapshot.state == .open, "\(snapshot)")
            let figures = await load.stop(bound: Self.bound, allowingRejections: true)
            report("keys evicted (allkeys-random)", "\(written) filler keys written before the state key went; the breaker tripped again on its rebuilt keys; longest call \(figures.longestWait)")
        }
    }

    @Test("the ACL user's EVALSHA revoked mid-run, then restored: the fallback covers, nothing is lost")
    func aclRevoked() async throws {
        try await RedisServerProcess.with(.init(aclUsers: [appUser])) { server in
            var options = DistributedOptions(redis: server.configuration(
                username: "fusebox-app", password: "app-secret", connectTimeout: Self.timeout, commandTimeout: Self.timeout))
            options.halfOpenRetryInterval = .zero
            let instance = try Instance(options)
            defer { Task { await instance.stop() } }
            let breaker = try instance.registry.breaker("revoked", policy: tripsOnFirstFailure())
            try await breaker.acquireAsync().success()
            await instance.adapter.flush()
            let admin = try RedisClient(configuration: server.configuration())
            let load = Load(breaker)
            _ = try await admin.send("ACL", "SETUSER", "fusebox-app", "-evalsha")
            await #expect { try await breaker.snapshot() } throws: { error in
                let error = error as? FuseboxError
                return error?.code == .backendUnavailable && error?.message.contains("NOPERM") == true
            }
            try await Task.sleep(for: .milliseconds(300))
            _ = try await admin.send("ACL", "SETUSER", "fusebox-app", "+evalsha")
            let restored = ContinuousClock.now
            let figures = await load.stop(bound: Self.bound)
            #expect(await totalsReach(breaker, instance, successes: figures.successes + 1))
            report("ACL: EVALSHA revoked, then restored", "NOPERM named in the error; \(figures.successes) successes written once, \(ContinuousClock.now - restored) after the grant")
        }
    }

    @Test("restarted from its RDB file: isolation and totals survive exactly")
    func restartFromRDB() async throws {
        try await RedisServerProcess.with { server in
            let instance = try Instance(testOptions(server, timeout: Self.timeout))
            defer { Task { await instance.stop() } }
            let breaker = try instance.registry.breaker("persisted", policy: tripsOnFirstFailure())
            for _ in 0..<100 { try await breaker.acquireAsync().success() }
            await instance.adapter.flush()
            try await breaker.isolate(reason: "kept across a restart")
            let admin = try RedisClient(configuration: server.configuration())
            _ = try await admin.send("SAVE")
            admin.close()
            try await server.restart(kill: true)
            let restarted = ContinuousClock.now
            #expect(await eventually(within: .seconds(5)) { (try? await breaker.snapshot()) != nil })
            let snapshot = try await breaker.snapshot()
            #expect(snapshot.state == .isolated && snapshot.isolationReason == "kept across a restart")
            #expect(snapshot.totals.successes == 100)
            #expect(await isRejected(breaker))
            try await breaker.reset()
            #expect(await eventually { await !isRejected(breaker) })
            report("SIGKILL, restarted from RDB", "isolation and 100 successes intact, read \(ContinuousClock.now - restarted) after the restart")
        }
    }

    @Test("a server that speaks garbage, never answers, or closes at once: typed errors within the timeout, calls go on",
          arguments: MisbehavingServer.Behaviour.allCases)
    func misbehavingServer(_ behaviour: MisbehavingServer.Behaviour) async throws {
        let server = try MisbehavingServer(behaviour)
        defer { server.stop() }
        let configuration = try RedisConfiguration(url: server.url)
        var short = configuration
        short.connectTimeout = Self.timeout
        short.commandTimeout = Self.timeout

        let started = ContinuousClock.now
        let expected: RedisError.Code = switch behaviour {
        case .garbage: .protocolError
        case .silent: .timeout
        case .closing: .connectionClosed
        }
        do {
            let connection = try RedisClient(configuration: short)
            defer { connection.close() }
            _ = try await connection.send("PING")
            Issue.record("PING answered by a \(behaviour) server")
        } catch {
            #expect(error.code == expected, "\(behaviour): \(error)")
        }
        let pingWait = ContinuousClock.now - started
        #expect(pingWait < Self.bound)

        var options = DistributedOptions(redis: short)
        options.namespace = uniqueNamespace()
        let instance = try Instance(options)
        defer { Task { await instance.stop() } }
        let breaker = try instance.registry.breaker("misbehaving")
        let asking = ContinuousClock.now
        await #expect { try await breaker.snapshot() } throws: { ($0 as? FuseboxError)?.code == .backendUnavailable }
        let admitting = ContinuousClock.now
        // The state is not known: admission asks once, waits at most the timeouts, then the local fallback decides.
        let permit = try await breaker.acquireAsync()
        permit.success()
        let admitWait = ContinuousClock.now - admitting
        #expect(ContinuousClock.now - asking < Self.bound * 2)
        #expect(admitWait < Self.bound)
        report("a server that \(behaviour == .garbage ? "answers garbage" : behaviour == .silent ? "never answers" : "closes at once")", "PING failed with \(expected) after \(pingWait); first call admitted by the fallback after \(admitWait)")
    }

    @Test("a snapshot read while this instance decides without Redis (an admission past its budget) says so, and scores it")
    func fallbackInSnapshot() async throws {
        try await RedisServerProcess.with { server in
            let proxy = try DelayProxy(upstreamPort: server.port, delay: .milliseconds(300))
            defer { proxy.stop() }
            var options = DistributedOptions(redis: try RedisConfiguration(url: proxy.url))
            options.redis.connectTimeout = .seconds(3)
            options.redis.commandTimeout = .seconds(3)
            options.admissionBudget = .milliseconds(50)
            options.namespace = uniqueNamespace()
            let instance = try Instance(options)
            defer { Task { await instance.stop() } }
            let breaker = try instance.registry.breaker("far", policy: tripsOnFirstFailure { $0.breakDuration = .fixed(.seconds(1)) })
            #expect(try await breaker.snapshot().isOnStoreDownFallback == false)
            try await breaker.acquireAsync().failure(Boom())
            #expect(await eventually { (try? await breaker.snapshot().state) == .open })
            try await Task.sleep(for: .milliseconds(1100))
            // The break is over: admission asks Redis for a probe permit, which takes 600 ms to come back.
            let asking = ContinuousClock.now
            await #expect { try await breaker.acquireAsync() } throws: { ($0 as? FuseboxError)?.code == .circuitOpen }
            #expect(ContinuousClock.now - asking < .milliseconds(500), "the budget, not the round trip, bounds the wait")
            let snapshot = try await breaker.snapshot()
            #expect(snapshot.isOnStoreDownFallback)
            let terms = BreakerHealth(policy: tripsOnFirstFailure()).assess(snapshot)
            #expect(terms.fallback == 25 && snapshot.healthScore == terms.score)
            #expect(try await breaker.snapshot().isOnStoreDownFallback == false, "a reply ends the spell")
        }
    }

    @Test("a slow network (5 ms and 200 ms each way) with every connection dropped mid-run: calls never wait on it, trips cross it, nothing is lost",
          arguments: [5, 200])
    func slowNetwork(_ milliseconds: Int) async throws {
        try await RedisServerProcess.with { server in
            let delay = Duration.milliseconds(milliseconds)
            let proxy = try DelayProxy(upstreamPort: server.port, delay: delay)
            defer { proxy.stop() }
            // Timeouts above the round trip (twice the delay), as an operator would set them for such a link.
            let timeout = Self.timeout + delay * 4
            var slow = DistributedOptions(redis: try RedisConfiguration(url: proxy.url))
            slow.redis.connectTimeout = timeout
            slow.redis.commandTimeout = timeout
            slow.namespace = uniqueNamespace()
            slow.halfOpenRetryInterval = .zero
            slow.instanceID = "behind-the-slow-link"
            var direct = testOptions(server, namespace: slow.namespace, timeout: Self.timeout)
            direct.instanceID = "direct"
            let far = try Instance(slow)
            let near = try Instance(direct)
            defer { Task { await far.stop(); await near.stop() } }
            let farBreaker = try far.registry.breaker("slow-link", policy: tripsOnFirstFailure())
            let nearBreaker = try near.registry.breaker("slow-link", policy: tripsOnFirstFailure())
            _ = try await farBreaker.snapshot()
            _ = try await nearBreaker.snapshot()
            try await waitForSubscribers(2, namespace: slow.namespace, server: server)

            let load = Load(farBreaker)
            try await Task.sleep(for: .milliseconds(300))
            proxy.dropConnections()
            try await Task.sleep(for: .milliseconds(300))
            let figures = await load.stop(bound: Self.bound)
            #expect(await totalsReach(farBreaker, far, successes: figures.successes, within: .seconds(10)))

            try await waitForSubscribers(2, namespace: slow.namespace, server: server)
            try await nearBreaker.acquireAsync().failure(Boom())
            await near.adapter.flush()
            let tripped = ContinuousClock.now
            #expect(await eventually(within: .seconds(3)) { (try? farBreaker.acquire()) == nil })
            let seenAfter = ContinuousClock.now - tripped
            #expect(seenAfter < delay * 2 + .seconds(1))
            report("slow network, \(milliseconds) ms each way, connections dropped once", "longest call \(figures.longestWait); \(figures.successes) successes counted once; a trip seen across the link \(seenAfter) after it")
        }
    }
}
