import Fusebox
import FuseboxTestKit
import Hiredis
import Logging
import Synchronization
import Testing
import TestKinds

@testable import FuseboxRedis

/// One instance of a service: its own adapter, connections and registry, with its background work running.
final class Instance: Sendable {
    let adapter: DistributedAdapter<ContinuousClock>
    let registry: BreakerRegistry
    private let runner: Task<Void, Never>

    init(_ options: DistributedOptions, logger: Logger = Logger(label: "test")) throws {
        adapter = try DistributedAdapter(options: options, logger: logger)
        registry = BreakerRegistry(adapter: adapter, logger: logger)
        let registry = self.registry
        runner = Task { try? await registry.run() }
    }

    func stop() async {
        runner.cancel()
        await runner.value
    }

    static func fleet(_ count: Int, _ options: DistributedOptions) throws -> [Instance] {
        try (0..<count).map { index in
            var options = options
            options.instanceID = "instance-\(index)"
            return try Instance(options)
        }
    }
}

func tripsOnFirstFailure(_ edit: (inout BreakerPolicy) -> Void = { _ in }) -> BreakerPolicy {
    var policy = BreakerPolicy()
    policy.failureRateThreshold = nil
    policy.consecutiveFailureThreshold = 1
    edit(&policy)
    return policy
}

func isRejected(_ breaker: CircuitBreaker) async -> Bool {
    do {
        let permit = try await breaker.acquireAsync()
        permit.ignore()
        return false
    } catch {
        return true
    }
}

@Suite("Several instances share one breaker", .kind(.timingBound), .timeLimit(.minutes(2)))
struct FleetTests {
    @Test("a trip in one instance is seen by another within milliseconds")
    func tripPropagates() async throws {
        let server = try await SharedServer.get()
        let fleet = try Instance.fleet(2, testOptions(server))
        defer { Task { for instance in fleet { await instance.stop() } } }
        let a = try fleet[0].registry.breaker("payments", policy: tripsOnFirstFailure())
        let b = try fleet[1].registry.breaker("payments", policy: tripsOnFirstFailure())
        #expect(await !isRejected(b))
        let started = ContinuousClock.now
        try await a.acquireAsync().failure(Boom())
        #expect(await eventually(within: .seconds(3)) { await isRejected(b) })
        // About a millisecond when the machine is idle (Docs/performance.md, propagation); the bound leaves room for
        // the whole suite running in parallel on two cores.
        #expect(ContinuousClock.now - started < .seconds(2))
        let snapshot = try await b.snapshot()
        #expect(snapshot.state == .open)
        #expect(snapshot.errorCounts == ["Boom": 1])
    }

    @Test("failures spread over instances trip the breaker while others succeed: a ratio, not a streak")
    func ratioAcrossInstances() async throws {
        let server = try await SharedServer.get()
        let fleet = try Instance.fleet(4, testOptions(server))
        defer { Task { for instance in fleet { await instance.stop() } } }
        var policy = BreakerPolicy()
        policy.minimumThroughput = 40
        let breakers = try fleet.map { try $0.registry.breaker("inventory", policy: policy) }
        // Interleave: instances 0 and 1 fail, 2 and 3 succeed, in rounds, so a success always follows a failure.
        for _ in 0..<10 {
            for (index, breaker) in breakers.enumerated() {
                let permit = try await breaker.acquireAsync()
                if index < 2 { permit.failure(Boom()) } else { permit.success() }
            }
            await fleet[0].adapter.flush()
            await fleet[2].adapter.flush()
        }
        for instance in fleet { await instance.adapter.flush() }
        let snapshot = try await breakers[3].snapshot()
        #expect(snapshot.state == .open, "\(snapshot)")
        #expect(snapshot.totals.calls == 40)
        for breaker in breakers { #expect(await eventually { await isRejected(breaker) }) }
    }

    @Test("exactly permittedCalls probes are admitted with 8 instances × 16 tasks racing")
    func probesAcrossTheFleet() async throws {
        let server = try await SharedServer.get()
        let fleet = try Instance.fleet(8, testOptions(server))
        defer { Task { for instance in fleet { await instance.stop() } } }
        // A break long enough that checking all eight instances fits in it even on a loaded machine.
        let policy = tripsOnFirstFailure {
            $0.permittedCallsInHalfOpen = 3
            $0.breakDuration = .fixed(.seconds(2))
        }
        let breakers = try fleet.map { try $0.registry.breaker("search", policy: policy) }
        try await breakers[0].acquireAsync().failure(Boom())
        for breaker in breakers { #expect(await eventually(within: .milliseconds(1500)) { await isRejected(breaker) }) }
        let wait = try await breakers[0].snapshot().timeUntilProbe ?? .zero
        try await Task.sleep(for: wait + .milliseconds(20))

        // Every task keeps asking for a second; a probe it gets is held (its outcome never reported).
        let deadline = ContinuousClock.now + .seconds(1)
        let tokens = await withTaskGroup(of: PermitToken?.self) { group in
            for breaker in breakers {
                for _ in 0..<16 {
                    group.addTask {
                        while ContinuousClock.now < deadline {
                            if case .admitted(let token) = await breaker.backend.admit() {
                                if token.isProbe { return token }
                                breaker.backend.record(.ignored, for: token)
                            }
                            try? await Task.sleep(for: .milliseconds(2))
                        }
                        return nil
                    }
                }
            }
            return await group.compactMap { $0 }.reduce(into: [PermitToken]()) { $0.append($1) }
        }
        #expect(tokens.count == 3)
        #expect(tokens.filter { !$0.isProbe }.isEmpty)
        let snapshot = try await breakers[5].snapshot()
        #expect(snapshot.state == .halfOpen)
        #expect(snapshot.probesInFlight == 3)
        #expect(snapshot.totals.rejected >= 125)  // every task was turned away at least once
    }

    @Test("4 instances × 10,000 outcomes give exact totals")
    func exactTotals() async throws {
        let server = try await SharedServer.get()
        let fleet = try Instance.fleet(4, testOptions(server))
        defer { Task { for instance in fleet { await instance.stop() } } }
        var policy = BreakerPolicy()
        policy.failureRateThreshold = 1
        policy.minimumThroughput = 1_000_000
        let breakers = try fleet.map { try $0.registry.breaker("ledger", policy: policy) }
        await withTaskGroup(of: Void.self) { group in
            for breaker in breakers {
                group.addTask {
                    for call in 0..<10_000 {
                        guard let permit = (try? breaker.acquire()) else { continue }
                        switch call % 4 {
                        case 0: permit.failure(Boom())
                        case 1: permit.ignore()
                        default: permit.success()
                        }
                    }
                }
            }
        }
        for instance in fleet { await instance.adapter.flush() }
        // On a loaded machine a write may time out; its outcomes are kept and written on the next try (100 ms).
        _ = await eventually { (try? await breakers[0].snapshot().totals.calls) == 40_000 }
        let totals = try await breakers[0].snapshot().totals
        #expect(totals.calls == 40_000)
        #expect(totals.failures == 10_000)
        #expect(totals.ignored == 10_000)
        #expect(totals.successes == 20_000)
        #expect(totals.rejected == 0)
    }

    @Test("a stale message never overwrites a newer state; a newer one is applied")
    func staleMessages() async throws {
        let server = try await SharedServer.get()
        let options = testOptions(server)
        let fleet = try Instance.fleet(1, options)
        defer { Task { for instance in fleet { await instance.stop() } } }
        let breaker = try fleet[0].registry.breaker("stale")
        try await breaker.isolate(reason: "maintenance")
        try await breaker.reset()
        let version = try await breaker.snapshot().version
        #expect(version == 2)
        let publisher = try RedisClient(configuration: server.configuration())
        let stale = #"{"name":"stale","version":1,"state":"isolated","probe_in_ms":0,"reason":"isolated: old","isolation_reason":"old"}"#
        _ = try await publisher.send("PUBLISH", "\(options.namespace):transitions", stale)
        try await Task.sleep(for: .milliseconds(150))
        #expect(await !isRejected(breaker))

        let snapshot = try await breaker.snapshot()
        let newer = #"{"name":"stale","version":\#(version + 5),"state":"isolated","probe_in_ms":0,"reason":"isolated: new","isolation_reason":"new","created":\#(try await createdOf(breaker, publisher, options))}"#
        _ = snapshot
        _ = try await publisher.send("PUBLISH", "\(options.namespace):transitions", newer)
        #expect(await eventually { await isRejected(breaker) })
    }

    private func createdOf(_ breaker: CircuitBreaker, _ redis: RedisClient, _ options: DistributedOptions) async throws -> Int {
        try await redis.send("HGET", "\(options.namespace):{\(breaker.name)}:state", "created").decodeInt()
    }

    @Test("live membership: every running adapter is counted, and one that stops drops out at once")
    func membership() async throws {
        let server = try await SharedServer.get()
        var options = testOptions(server)
        options.membershipInterval = .milliseconds(100)
        let fleet = try Instance.fleet(3, options)
        defer { Task { for instance in fleet { await instance.stop() } } }
        let core = fleet[0].adapter.core
        #expect(await eventually(within: .seconds(3)) {
            core.liveSenders.load(ordering: .relaxed) == 3 && core.liveInstances.load(ordering: .relaxed) == 3
        })
        await fleet[2].stop()
        #expect(await eventually(within: .seconds(3)) { core.liveSenders.load(ordering: .relaxed) == 2 })
        let redis = try RedisClient(configuration: server.configuration())
        let members = try await redis.send("ZRANGE", "\(options.namespace):{members}:senders", "0", "-1").array ?? []
        #expect(members.count == 2)
        #expect(members.allSatisfy { $0.string?.hasPrefix("instance-") == true })
    }

    @Test("a quorum above the instances that are up is lowered to them: two instances trip a breaker whose quorum is three")
    func quorumFollowsMembership() async throws {
        let server = try await SharedServer.get()
        var options = testOptions(server)
        options.minimumInstances = 3
        options.membershipInterval = .milliseconds(100)
        let fleet = try Instance.fleet(2, options)
        defer { Task { for instance in fleet { await instance.stop() } } }
        #expect(await eventually(within: .seconds(3)) {
            fleet.allSatisfy { $0.adapter.core.liveInstances.load(ordering: .relaxed) == 2 }
        })
        var policy = BreakerPolicy()
        policy.minimumThroughput = 4
        let a = try fleet[0].registry.breaker("quorum-live", policy: policy)
        let b = try fleet[1].registry.breaker("quorum-live", policy: policy)
        for _ in 0..<10 { try await a.acquireAsync().failure(Boom()) }
        await fleet[0].adapter.flush()
        #expect(try await a.snapshot().state == .closed)
        try await b.acquireAsync().failure(Boom())
        await fleet[1].adapter.flush()
        #expect(try await a.snapshot().state == .open)
    }

    @Test("a probe permit whose holder stopped without a word is free again when its lease ends (twice the call timeout), once")
    func probeLeaseOfAStoppedHolder() async throws {
        let server = try await SharedServer.get()
        var options = testOptions(server)
        options.halfOpenRetryInterval = .zero
        let fleet = try Instance.fleet(3, options)
        defer { Task { for instance in fleet { await instance.stop() } } }
        let policy = tripsOnFirstFailure {
            $0.breakDuration = .fixed(.milliseconds(500))
            $0.callTimeout = .milliseconds(500)
        }
        let breakers = try fleet.map { try $0.registry.breaker("lease", policy: policy) }
        try await breakers[0].acquireAsync().failure(Boom())
        await fleet[0].adapter.flush()
        // Open, or already half-open: the break is 500 ms, which a loaded machine can outlast between two polls.
        #expect(await eventually(within: .seconds(5)) { [.open, .halfOpen].contains((try? await breakers[1].snapshot())?.state) })
        // Instance 0 takes the probe and stops: no outcome, no renewal (its background work ends with it).
        await fleet[0].stop()
        var held: PermitToken?
        let deadline = ContinuousClock.now + .seconds(3)
        while held == nil && ContinuousClock.now < deadline {
            if case .admitted(let token) = await breakers[0].backend.admit() {
                if token.isProbe { held = token } else { breakers[0].backend.record(.ignored, for: token) }
            }
            try await Task.sleep(for: .milliseconds(5))
        }
        try #require(held != nil)
        let granted = ContinuousClock.now
        // The two others race for 2.5 s, holding any probe they get.
        let end = granted + .milliseconds(2500)
        let firsts = await withTaskGroup(of: ContinuousClock.Instant?.self) { group in
            for breaker in breakers.dropFirst() {
                for _ in 0..<4 {
                    group.addTask {
                        while ContinuousClock.now < end {
                            if case .admitted(let token) = await breaker.backend.admit() {
                                if token.isProbe { return ContinuousClock.now }
                                breaker.backend.record(.ignored, for: token)
                            }
                            try? await Task.sleep(for: .milliseconds(2))
                        }
                        return nil
                    }
                }
            }
            return await group.compactMap { $0 }.reduce(into: [ContinuousClock.Instant]()) { $0.append($1) }
        }
        #expect(firsts.count == 1)
        // The lease is 1 s from the grant (which came just before `granted`); 700 ms of margin on a loaded machine.
        if let first = firsts.first {
            #expect(first - granted > .milliseconds(700))
            #expect(first - granted < .milliseconds(1700))
        }
    }

    @Test("quorum: failures from one instance do not trip; from two they do")
    func quorum() async throws {
        let server = try await SharedServer.get()
        var options = testOptions(server)
        options.minimumInstances = 2
        let fleet = try Instance.fleet(2, options)
        defer { Task { for instance in fleet { await instance.stop() } } }
        var policy = BreakerPolicy()
        policy.minimumThroughput = 4
        let a = try fleet[0].registry.breaker("quorum", policy: policy)
        let b = try fleet[1].registry.breaker("quorum", policy: policy)
        for _ in 0..<20 { try await a.acquireAsync().failure(Boom()) }
        await fleet[0].adapter.flush()
        var snapshot = try await a.snapshot()
        #expect(snapshot.state == .closed)
        #expect(snapshot.windowFailures == 20)
        try await b.acquireAsync().failure(Boom())
        await fleet[1].adapter.flush()
        snapshot = try await a.snapshot()
        #expect(snapshot.state == .open)
        #expect(snapshot.lastReason.hasPrefix("failure ratio 1.00"))

        var countPolicy = BreakerPolicy()
        countPolicy.window = .count(10)
        #expect {
            try fleet[0].registry.breaker("quorum-count", policy: countPolicy)
        } throws: { ($0 as? FuseboxError)?.code == .invalidPolicy }
    }

    @Test("two namespaces on one server never see each other's breakers")
    func namespaces() async throws {
        let server = try await SharedServer.get()
        let first = try Instance(testOptions(server, namespace: uniqueNamespace("a")))
        let second = try Instance(testOptions(server, namespace: uniqueNamespace("b")))
        defer { Task { await first.stop(); await second.stop() } }
        let one = try first.registry.breaker("shared-name")
        let two = try second.registry.breaker("shared-name")
        try await one.isolate(reason: "only here")
        try await Task.sleep(for: .milliseconds(100))
        #expect(await isRejected(one))
        #expect(await !isRejected(two))
        #expect(try await two.snapshot().state == .closed)
    }

    @Test("a transition the fusebox command causes uses the break durations the instances computed")
    func operatorUsesInstanceBreakDurations() async throws {
        let server = try await SharedServer.get()
        let options = testOptions(server)
        let instance = try Instance(options)
        defer { Task { await instance.stop() } }
        let breaker = try instance.registry.breaker("backoff", policy: tripsOnFirstFailure {
            $0.breakDuration = .exponential(base: .milliseconds(500), factor: 4, maximum: .seconds(30))
            $0.maxHalfOpenDuration = .milliseconds(200)
        })
        try await breaker.acquireAsync().failure(Boom())
        await instance.adapter.flush()
        #expect(try await breaker.snapshot().attempt == 1)

        // The operator knows no policy: it forces half-open, and a read after maxHalfOpenDuration reopens it.
        let operatorSide = BreakerOperator(connection: try RedisClient(configuration: server.configuration()), namespace: options.namespace)
        _ = try await operatorSide.forceHalfOpen("backoff")
        try await Task.sleep(for: .milliseconds(250))
        let reopened = try await operatorSide.snapshot(of: "backoff")
        #expect(reopened.state == .open)
        #expect(reopened.attempt == 2)
        // Attempt 2 of exponential(500 ms × 4): 2 s, as Swift computed it (not a default: 30 s, nor attempt 1's
        // 500 ms). The instance's own read may have reopened it earlier than the operator's read, so the break is
        // what is left of it plus the time already spent open.
        let wait = try #require(reopened.timeUntilProbe)
        let breakDuration = wait + reopened.timeInState
        #expect(breakDuration > .milliseconds(1980) && breakDuration <= .milliseconds(2020), "\(wait) left + \(reopened.timeInState) open")
    }

    @Test("the keys are readable with redis-cli and documented fields are there")
    func keyLayout() async throws {
        let server = try await SharedServer.get()
        let options = testOptions(server)
        let instance = try Instance(options)
        defer { Task { await instance.stop() } }
        let breaker = try instance.registry.breaker("layout", policy: tripsOnFirstFailure())
        try await breaker.acquireAsync().failure(Boom())
        await instance.adapter.flush()
        _ = try await breaker.snapshot()
        let redis = try RedisClient(configuration: server.configuration())
        let ns = options.namespace
        let state = try await redis.send("HGETALL", "\(ns):{layout}:state").decodeDictionary()
        for field in ["state", "version", "since", "open_until", "attempt", "reason", "consecutive_failures", "probes", "probe_successes", "policy"] {
            #expect(state[field] != nil, "missing field \(field)")
        }
        #expect(state["state"] == "open")
        #expect(state["policy"]?.contains(#""consecutiveFailureThreshold":1"#) == true)
        let totals = try await redis.send("HGETALL", "\(ns):{layout}:totals").decodeDictionary()
        #expect(totals["failures"] == "1" && totals["error:Boom"] == "1")
        #expect(try await redis.send("XLEN", "\(ns):{layout}:events").decodeInt() == 1)
        #expect(try await redis.send("SISMEMBER", "\(ns):breakers", "layout").decodeInt() == 1)
        #expect(try await redis.send("TYPE", "\(ns):{layout}:window") != .status("string"))
    }
}
