import Foundation
import Fusebox
import FuseboxTestKit
import Hiredis
import Logging
import Synchronization
import Testing
import TestKinds

@testable import FuseboxRedis

/// A policy that never trips, so a breaker stays on the closed path.
func neverTrips() -> BreakerPolicy {
    var policy = BreakerPolicy()
    policy.failureRateThreshold = 1
    policy.minimumThroughput = 1_000_000
    return policy
}

/// Two subscribed instances that flush every 100 ms and hold a quiet breaker's successes for a minute.
func quietFleet() async throws -> (RedisServerProcess, DistributedOptions, [Instance]) {
    let server = try await SharedServer.get()
    var options = testOptions(server)
    options.flushInterval = .milliseconds(100)
    options.quietFlushInterval = .seconds(60)
    let fleet = try Instance.fleet(2, options)
    try await waitForSubscribers(2, namespace: options.namespace, server: server)
    return (server, options, fleet)
}

/// Breaker `name` on both instances of a quiet fleet, each of which has written once; then A holds 50 successes
/// (checked: Redis counts 2). Returns A's and B's handles and a reader of the successes Redis counts.
func quietBreakerWithHeldSuccesses(_ name: String, policy: BreakerPolicy, server: RedisServerProcess, options: DistributedOptions, fleet: [Instance])
    async throws -> (a: CircuitBreaker, b: CircuitBreaker, successesInRedis: @Sendable () async throws -> Int)
{
    let a = try fleet[0].registry.breaker(name, policy: policy)
    let b = try fleet[1].registry.breaker(name, policy: policy)
    let redis = try RedisClient(configuration: server.configuration())
    let totalsKey = DistributedBackend.keys(namespace: options.namespace, name: name)[2]
    let successesInRedis: @Sendable () async throws -> Int = { Int(try await redis.send("HGET", totalsKey, "successes").string ?? "0") ?? 0 }
    // Both instances have written once (a new sender shrinks every budget, which recalls too).
    try await a.acquireAsync().success()
    await fleet[0].adapter.flush()
    try await b.acquireAsync().success()
    await fleet[1].adapter.flush()
    try await Task.sleep(for: .milliseconds(300))
    for _ in 0..<50 { try a.acquire().success() }
    try await Task.sleep(for: .milliseconds(400))
    #expect(try await successesInRedis() == 2, "a quiet instance holds its successes")
    return (a, b, successesInRedis)
}

@Suite("What sharing costs Redis", .kind(.timingBound), .timeLimit(.minutes(2)))
struct ScaleTests {
    @Test("a success-only breaker sends at most one script call per second, whatever its call rate")
    func successesAreCheap() async throws {
        try await RedisServerProcess.with { server in
            var options = testOptions(server)
            options.flushInterval = .seconds(1)
            options.refreshInterval = .seconds(1)
            let instance = try Instance(options)
            defer { Task { await instance.stop() } }
            let breaker = try instance.registry.breaker("busy")
            try await breaker.acquireAsync().success()
            await instance.adapter.flush()
            let stats = try RedisClient(configuration: server.configuration())
            _ = try await stats.send("CONFIG", "RESETSTAT")
            let started = ContinuousClock.now
            var calls = 1
            while ContinuousClock.now - started < .seconds(3) {
                for _ in 0..<2000 { try breaker.acquire().success() }
                calls += 2000
                try await Task.sleep(for: .milliseconds(2))
            }
            let elapsed = ContinuousClock.now - started
            let scripts = try await commandCounts(stats)["evalsha", default: 0]
            #expect(calls > 20_000, "too few calls to show that the call rate does not matter")
            #expect(scripts <= Int(elapsed / .seconds(1)) + 1, "\(scripts) script calls in \(elapsed) for \(calls) calls")
            await instance.adapter.flush()
            #expect(try await breaker.snapshot().totals.successes == calls)
        }
    }

    @Test("ten minutes at 100 calls/s from two instances: the keys stay under 4 KB + 200 B per sender")
    func memoryBounded() async throws {
        let server = try await SharedServer.get()
        let options = testOptions(server)
        let adapters = try (0..<2).map { _ in try DistributedAdapter(options: options, clock: ContinuousClock(), logger: Logger(label: "test")) }
        let breakers = try adapters.map { adapter in
            adapter.pinClock(atMilliseconds: 1_800_000_000_000)
            return try BreakerRegistry(adapter: adapter).breaker("memory")
        }
        for _ in 0..<600 {
            for breaker in breakers {
                for call in 0..<100 {
                    let permit = try breaker.acquire()
                    if call % 50 == 0 { permit.failure(Boom()) } else { permit.success() }
                }
            }
            for adapter in adapters {
                await adapter.flush()
                adapter.shiftClock(by: .seconds(1))
            }
        }
        let redis = try RedisClient(configuration: server.configuration())
        var bytes = 0
        for key in DistributedBackend.keys(namespace: options.namespace, name: "memory") {
            if case .integer(let size) = try await redis.send("MEMORY", "USAGE", key, "SAMPLES", "0") { bytes += size }
        }
        #expect(bytes <= 4096 + 200 * 2, "\(bytes) bytes")
        let state = try await redis.send("HGETALL", DistributedBackend.keys(namespace: options.namespace, name: "memory")[0]).decodeDictionary()
        // One high-water mark per sender (` NONCE:SEQ:LAST_S` each, in the `marks:C` fields).
        let marks = state.filter { $0.key.hasPrefix("marks:") }.values.flatMap { $0.split(separator: " ") }
        #expect(marks.count == 2, "\(marks)")
        #expect(state["senders"] == "2")
        let snapshot = try await breakers[0].snapshot()
        #expect(snapshot.totals.calls == 120_000)
        #expect(snapshot.totals.failures == 2_400)
        #expect(snapshot.state == .closed)
    }

    @Test("a batch sent again (same sender, same sequence number) is applied once; an older number too")
    func retransmissionAppliedOnce() async throws {
        let server = try await SharedServer.get()
        let options = testOptions(server)
        let instance = try Instance(options)
        defer { Task { await instance.stop() } }
        let policy = neverTrips()
        let breaker = try instance.registry.breaker("resent", policy: policy)
        try await breaker.acquireAsync().success()
        await instance.adapter.flush()
        let redis = try RedisClient(configuration: server.configuration())
        let keys = DistributedBackend.keys(namespace: options.namespace, name: "resent")
        let state = try await redis.send("HGETALL", keys[0]).decodeDictionary()
        func record(sequence: Int) async throws -> StateReply {
            let breaker: [any RedisArgument] =
                ["record", "resent"] + DistributedBackend.policyArguments(policy, minimumInstances: 1) as [any RedisArgument]
                + ["fp", "", 0, "30000,30000,30000,30000", sequence,
                   Int(state["version"]!)!, Int(state["created"]!)!, "1", "0", 1, 0, 0, 2, 2, 1, "Boom", 2, 0, 5, 0, 2, 0]
            let header: [any RedisArgument] = ["\(options.namespace):transitions", "probe-sender", "", "1000", "probe-sender:nonce", "0", "0"]
            let replies = try await redis.run(LuaScript.breaker, keys: keys, arguments: header + [breaker.count] + breaker)
            return try StateReply(try #require(replies.array?.first), key: keys[0])
        }
        #expect(try await record(sequence: 7).duplicate == false)
        #expect(try await record(sequence: 7).duplicate == true)
        #expect(try await record(sequence: 3).duplicate == true)
        #expect(try await record(sequence: 8).duplicate == false)
        let totals = try await breaker.snapshot().totals
        #expect(totals.calls == 1 + 2 * 8)
        #expect(totals.failures == 4)
        #expect(totals.ignored == 2)
    }

    @Test("calls count in the window bucket of when they happened, however late they are written")
    func bucketOfCallTime() async throws {
        let server = try await SharedServer.get()
        let clock = ManualClock()
        let adapter = try DistributedAdapter(options: testOptions(server), clock: clock, logger: Logger(label: "test"))
        adapter.pinClock(atMilliseconds: 1_800_000_000_000)
        let breaker = try BreakerRegistry(adapter: adapter).breaker("late", policy: neverTrips())
        _ = try await breaker.snapshot()  // the reply tells the instance how its clock maps to Redis time
        for _ in 0..<10 { try breaker.acquire().success() }
        clock.advance(by: .seconds(9))
        adapter.shiftClock(by: .seconds(9))
        await adapter.flush()  // written 9 s after the calls: they belong to the window's oldest bucket
        #expect(try await breaker.snapshot().windowCalls == 10)
        clock.advance(by: .seconds(1))
        adapter.shiftClock(by: .seconds(1))
        #expect(try await breaker.snapshot().windowCalls == 0)
        #expect(try await breaker.snapshot().totals.calls == 10)
    }

    @Test("two adapters from one options value (one instance id): 3 + 3 failures count 6 and open the breaker")
    func sameInstanceID() async throws {
        let server = try await SharedServer.get()
        let options = testOptions(server)
        let first = try Instance(options)
        let second = try Instance(options)
        defer { Task { await first.stop(); await second.stop() } }
        var policy = BreakerPolicy()
        policy.minimumThroughput = 6
        let a = try first.registry.breaker("pay", policy: policy)
        let b = try second.registry.breaker("pay", policy: policy)
        for _ in 0..<3 { try await a.acquireAsync().failure(Boom()) }
        await first.adapter.flush()
        for _ in 0..<3 { try await b.acquireAsync().failure(Boom()) }
        await second.adapter.flush()
        let snapshot = try await a.snapshot()
        #expect(snapshot.totals.failures == 6)
        #expect(snapshot.state == .open)

        let c = try first.registry.breaker("mixed", policy: neverTrips())
        let d = try second.registry.breaker("mixed", policy: neverTrips())
        for _ in 0..<7 { try await c.acquireAsync().failure(Boom()) }
        for _ in 0..<7 { try await d.acquireAsync().success() }
        await first.adapter.flush()
        await second.adapter.flush()
        let mixed = try await d.snapshot().totals
        #expect(mixed.failures == 7)
        #expect(mixed.successes == 7)
    }

    @Test("near a threshold, failures reach Redis long before the flush interval: budgets and recalls")
    func failuresTravelFast() async throws {
        let server = try await SharedServer.get()
        var options = testOptions(server)
        options.flushInterval = .seconds(60)  // the periodic flush never runs during this test
        let fleet = try Instance.fleet(2, options)
        defer { Task { for instance in fleet { await instance.stop() } } }
        try await waitForSubscribers(2, namespace: options.namespace, server: server)
        var policy = BreakerPolicy()
        policy.minimumThroughput = 20
        let breakers = try fleet.map { try $0.registry.breaker("fast", policy: policy) }
        for (index, breaker) in breakers.enumerated() {
            for _ in 0..<20 { try await breaker.acquireAsync().success() }
            await fleet[index].adapter.flush()
        }
        // 40 failures alternating between the instances: the 40th makes 40 of 80, the threshold. Nothing flushes.
        for call in 0..<39 { try breakers[call % 2].acquire().failure(Boom()) }
        let redis = try RedisClient(configuration: server.configuration())
        let stateKey = DistributedBackend.keys(namespace: options.namespace, name: "fast")[0]
        try await Task.sleep(for: .milliseconds(100))
        #expect(try await redis.send("HGET", stateKey, "state").string == "closed")
        try breakers[1].acquire().failure(Boom())
        #expect(await eventually(within: .seconds(5)) { (try? await redis.send("HGET", stateKey, "state").string) == "open" })
        for breaker in breakers { #expect(await eventually { await isRejected(breaker) }) }
        for instance in fleet { await instance.adapter.flush() }
        #expect(try await breakers[0].snapshot().totals.failures == 40)
    }

    @Test("the streak across instances: a success ends it when it reaches Redis, not before")
    func streakAcrossInstances() async throws {
        let server = try await SharedServer.get()
        var options = testOptions(server)
        options.flushInterval = .seconds(60)
        let fleet = try Instance.fleet(2, options)
        defer { Task { for instance in fleet { await instance.stop() } } }
        let policy = tripsOnFirstFailure { $0.consecutiveFailureThreshold = 3 }
        let a = try fleet[0].registry.breaker("streak", policy: policy)
        let b = try fleet[1].registry.breaker("streak", policy: policy)
        // B's success is written before A's third failure: the streak restarts.
        try await a.acquireAsync().failure(Boom())
        try await a.acquireAsync().failure(Boom())
        await fleet[0].adapter.flush()
        try await b.acquireAsync().success()
        await fleet[1].adapter.flush()
        try await a.acquireAsync().failure(Boom())
        await fleet[0].adapter.flush()
        #expect(try await a.snapshot().state == .closed)
        #expect(try await a.snapshot().consecutiveFailures == 1)
        // B's success is still held when A fails twice more: three in a row as Redis sees them.
        try await b.acquireAsync().success()
        try await a.acquireAsync().failure(Boom())
        try await a.acquireAsync().failure(Boom())
        #expect(await eventually { await isRejected(a) })
        await fleet[1].adapter.flush()
        let snapshot = try await b.snapshot()
        #expect(snapshot.state == .open)
        #expect(snapshot.totals.successes == 2)
    }

    @Test("refreshing idle breakers runs no script and writes nothing")
    func refreshIsReadOnly() async throws {
        try await RedisServerProcess.with { server in
            var options = testOptions(server)
            options.refreshInterval = .milliseconds(300)
            let instance = try Instance(options)
            defer { Task { await instance.stop() } }
            let breakers = try (0..<200).map { try instance.registry.breaker("idle-\($0)") }
            for breaker in breakers { _ = try await breaker.snapshot() }
            let stats = try RedisClient(configuration: server.configuration())
            _ = try await stats.send("CONFIG", "RESETSTAT")
            try await Task.sleep(for: .seconds(1))
            let counts = try await commandCounts(stats)
            // Membership beats (lua/members.lua: two ZADDs each) are the only scripts expected.
            #expect(counts["evalsha", default: 0] - counts["zadd", default: 0] / 2 == 0)
            for write in ["hset", "hincrby", "del", "hdel", "xadd", "sadd", "publish"] {
                #expect(counts[write, default: 0] == 0, "\(write): \(counts[write, default: 0])")
            }
            // Every breaker is read about once per refresh interval: 200 per 300 ms, in pipelines.
            #expect(counts["hmget", default: 0] >= 200)
            #expect(counts["hmget", default: 0] <= 200 * 5)
        }
    }

    @Test("tasks on every core: successes counted per CPU are exact, through flushes, a trip and a reset")
    func perCPUCountsExact() async throws {
        let server = try await SharedServer.get()
        var options = testOptions(server)
        options.flushInterval = .milliseconds(5)
        let instance = try Instance(options)
        defer { Task { await instance.stop() } }
        let breaker = try instance.registry.breaker("cores", policy: neverTrips())
        try await breaker.acquireAsync().success()
        let tasks = 8
        let perTask = 20_000
        await withTaskGroup(of: Void.self) { group in
            for task in 0..<tasks {
                group.addTask {
                    for call in 0..<perTask {
                        guard let permit = (try? breaker.acquire()) else { continue }
                        if call % 10 == task { permit.failure(Boom()) } else { permit.success() }
                    }
                }
            }
            // Transitions while the tasks run: their outcomes still count, once, under the version that admitted them.
            group.addTask {
                try? await Task.sleep(for: .milliseconds(20))
                try? await breaker.isolate(reason: "mid-run")
                try? await breaker.reset()
            }
        }
        await instance.adapter.flush()
        let totals = try await breaker.snapshot().totals
        #expect(totals.successes + totals.failures + totals.rejected == 1 + tasks * perTask)
        #expect(totals.failures + totals.rejected >= tasks * perTask / 10)
        #expect(totals.failures <= tasks * perTask / 10)
    }

    @Test("successes counted per CPU keep their place before a failure: a streak broken by a success does not trip")
    func perCPUOrderKept() async throws {
        let server = try await SharedServer.get()
        var options = testOptions(server)
        options.flushInterval = .seconds(60)
        let instance = try Instance(options)
        defer { Task { await instance.stop() } }
        var policy = BreakerPolicy()
        policy.failureRateThreshold = nil
        policy.consecutiveFailureThreshold = 3
        let breaker = try instance.registry.breaker("order", policy: policy)
        _ = try await breaker.snapshot()
        // S F F S F F: the longest streak is 2. Held as one batch, the successes must stay between the failures.
        for outcome in ["s", "f", "f", "s", "f", "f"] {
            let permit = try breaker.acquire()
            if outcome == "s" { permit.success() } else { permit.failure(Boom()) }
        }
        await instance.adapter.flush()
        var snapshot = try await breaker.snapshot()
        #expect(snapshot.state == .closed)
        #expect(snapshot.consecutiveFailures == 2)
        #expect(snapshot.totals.successes == 2 && snapshot.totals.failures == 4)
        try breaker.acquire().failure(Boom())
        await instance.adapter.flush()
        snapshot = try await breaker.snapshot()
        #expect(snapshot.state == .open)
    }

    @Test("a quiet breaker's successes wait for quietFlushInterval; once the window holds a failure, every flush writes")
    func quietBreakerHoldsSuccesses() async throws {
        try await RedisServerProcess.with { server in
            var options = testOptions(server)
            options.flushInterval = .milliseconds(100)
            options.quietFlushInterval = .seconds(3)
            let instance = try Instance(options)
            defer { Task { await instance.stop() } }
            let breaker = try instance.registry.breaker("quiet", policy: neverTrips())
            try await breaker.acquireAsync().success()
            await instance.adapter.flush()
            let stats = try RedisClient(configuration: server.configuration())

            func scriptCalls(whileCalling duration: Duration) async throws -> Int {
                _ = try await stats.send("CONFIG", "RESETSTAT")
                let started = ContinuousClock.now
                while ContinuousClock.now - started < duration {
                    try breaker.acquire().success()
                    try await Task.sleep(for: .milliseconds(10))
                }
                // Breaker scripts only: membership beats (two ZADDs each) run alongside.
                let counts = try await commandCounts(stats)
                return counts["evalsha", default: 0] - counts["zadd", default: 0] / 2
            }
            // Quiet: 2 s of successes at about 100 calls/s are held (the hold is 3 s), not written every 100 ms.
            let quiet = try await scriptCalls(whileCalling: .seconds(2))
            #expect(quiet <= 1, "\(quiet) script calls while quiet")
            // A failure in the window: the flush interval applies again.
            try breaker.acquire().failure(Boom())
            await instance.adapter.flush()
            let busy = try await scriptCalls(whileCalling: .seconds(1))
            #expect(busy >= 5, "\(busy) script calls while the window holds a failure")
            await instance.adapter.flush()
            #expect(try await breaker.snapshot().totals.failures == 1)
        }
    }

    @Test("the write that ends a breaker's quiet recalls the successes other instances hold")
    func quietEndRecallsSuccesses() async throws {
        let (server, options, fleet) = try await quietFleet()
        defer { Task { for instance in fleet { await instance.stop() } } }
        var policy = neverTrips()
        policy.window = .time(samplingDuration: .seconds(120), buckets: 12)
        let (_, b, successesInRedis) = try await quietBreakerWithHeldSuccesses("recall", policy: policy, server: server, options: options, fleet: fleet)
        // B's failure reaches Redis with B's next flush (100 ms): it ends the quiet, and A writes what it holds.
        try await b.acquireAsync().failure(Boom())
        #expect(await eventually(within: .seconds(2)) { (try? await successesInRedis()) == 52 })
    }

    @Test("a recall while the window stays quiet (a new sender shrank the budget) leaves held successes held")
    func quietRecallKeepsSuccesses() async throws {
        let (server, options, fleet) = try await quietFleet()
        defer { Task { for instance in fleet { await instance.stop() } } }
        // About 300 calls of headroom: shared by two senders 128 each, by three 64 (budgets are powers of two).
        var policy = BreakerPolicy()
        policy.failureRateThreshold = 0.5
        policy.minimumThroughput = 303
        policy.window = .time(samplingDuration: .seconds(120), buckets: 12)
        let (_, b, successesInRedis) = try await quietBreakerWithHeldSuccesses("kept", policy: policy, server: server, options: options, fleet: fleet)
        // A third sender's first write shrinks every budget: Redis recalls, saying the window is still quiet.
        // In a class: a local Mutex captured by the subscriber's thread and this task is one variable both access
        // (ThreadSanitizer reports the captures' accesses racing, whatever the lock orders inside).
        let recalls = RecallLog()
        let subscriber = try RedisSubscriber(configuration: server.configuration(), channels: ["\(options.namespace):transitions"]) { message in
            if let decoded = try? JSONDecoder().decode(BreakerMessage.self, from: Data(message.payload)), decoded.name == "kept", decoded.recall != nil {
                recalls.messages.withLock { $0.append(decoded) }
            }
        }
        let listening = Task { await subscriber.run() }
        defer { listening.cancel() }
        try await waitForSubscribers(3, namespace: options.namespace, server: server)
        let third = try Instance(options)
        defer { Task { await third.stop() } }
        try await third.registry.breaker("kept", policy: policy).acquireAsync().success()
        await third.adapter.flush()
        #expect(await eventually(within: .seconds(2)) { !recalls.messages.withLock { $0.isEmpty } }, "the third sender's first write recalls")
        let recall = recalls.messages.withLock { $0.first }
        #expect(recall?.quiet == true, "no recall, or one that says the window is not quiet: \(String(describing: recall))")
        try await Task.sleep(for: .milliseconds(500))
        #expect(try await successesInRedis() == 3, "a recall while quiet must not make A write the successes it holds")
        // The quiet still ends as before: B's failure brings A's 50.
        try await b.acquireAsync().failure(Boom())
        #expect(await eventually(within: .seconds(2)) { (try? await successesInRedis()) == 53 })
    }

    @Test("successes a quiet instance held from before a failure streak began do not end it")
    func heldSuccessesKeepLaterStreak() async throws {
        let (server, options, fleet) = try await quietFleet()
        defer { Task { for instance in fleet { await instance.stop() } } }
        let policy = tripsOnFirstFailure {
            $0.consecutiveFailureThreshold = 3
            $0.window = .time(samplingDuration: .seconds(20), buckets: 20)
        }
        let a = try fleet[0].registry.breaker("held", policy: policy)
        let b = try fleet[1].registry.breaker("held", policy: policy)
        try await a.acquireAsync().success()
        await fleet[0].adapter.flush()
        for _ in 0..<5 { try a.acquire().success() }
        // The streak starts in a later one-second bucket than A's held successes.
        try await Task.sleep(for: .milliseconds(1100))
        let redis = try RedisClient(configuration: server.configuration())
        let totalsKey = DistributedBackend.keys(namespace: options.namespace, name: "held")[2]
        try await b.acquireAsync().failure(Boom())
        #expect(await eventually(within: .seconds(2)) { (try? await redis.send("HGET", totalsKey, "successes").string) == "6" })
        try await b.acquireAsync().failure(Boom())
        try await b.acquireAsync().failure(Boom())
        #expect(await eventually(within: .seconds(2)) { await isRejected(a) })
        #expect(try await b.snapshot().state == .open)
    }

    @Test("an instance of another key schema is refused with one clear error")
    func schemaRefused() async throws {
        let server = try await SharedServer.get()
        let options = testOptions(server)
        let redis = try RedisClient(configuration: server.configuration())
        _ = try await redis.send("SET", "\(options.namespace):schema", "3")
        let adapter = try DistributedAdapter(options: options, logger: Logger(label: "test"))
        let registry = BreakerRegistry(adapter: adapter)
        let breaker = try registry.breaker("schema")
        await #expect {
            try await adapter.run()
        } throws: { error in
            let error = error as! FuseboxError
            return error.code == .invalidConfiguration && error.message.contains("key schema 3") && error.message.contains("schema 2")
        }
        await #expect {
            try await breaker.snapshot()
        } throws: { ($0 as? FuseboxError)?.message.contains("key schema 3") == true }
        // Nothing was written for the breaker.
        #expect(try await redis.send("EXISTS", DistributedBackend.keys(namespace: options.namespace, name: "schema")[0]).decodeInt() == 0)
    }
}

@Suite("Which breakers a flush writes", .kind(.unit))
struct FlushPlanTests {
    @Test("what is due goes; quiet breakers past half their hold ride along only with a quiet breaker whose hold is up")
    func quietBreakersShareCalls() {
        let urgent: [(backend: Int, urgency: FlushUrgency)] = [(1, .due), (2, .halfway), (3, .none)]
        #expect(DistributedCore.toFlush(urgent) == [1], "a failure's write must not wait for, or carry, quiet successes")
        let quiet: [(backend: Int, urgency: FlushUrgency)] = [(1, .halfway), (2, .quietDue), (3, .none), (4, .halfway), (5, .due)]
        #expect(DistributedCore.toFlush(quiet) == [2, 5, 1, 4], "due first, in order, then the riders")
        let early: [(backend: Int, urgency: FlushUrgency)] = [(1, .halfway), (2, .none)]
        #expect(DistributedCore.toFlush(early).isEmpty, "nothing is due: nothing is written")
    }
}

/// The recall messages a test's subscriber saw.
private final class RecallLog: Sendable {
    let messages = Mutex<[BreakerMessage]>([])
}
