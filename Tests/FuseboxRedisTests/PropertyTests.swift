import Foundation
import Fusebox
import FuseboxTestKit
import Hiredis
import PropertyBased
import Testing
import TestKinds

@testable import FuseboxRedis

/// Random policies and names through Redis: what an instance writes, the script and operators must read back.
@Suite("Properties of the Redis layout", .kind(.integration), .timeLimit(.minutes(2)))
struct RedisPropertyTests {
    /// Valid policies with every kind of window and break duration, and custom names with any character.
    static let policies: Generator<BreakerPolicy, Shrink.None<BreakerPolicy>> = Generator { rng in
        func pick<T>(_ values: [T]) -> T { values.randomElement(using: &rng)! }
        var policy = BreakerPolicy()
        policy.failureRateThreshold = pick([nil, 1e-9, 0.1, 0.5, 1])
        policy.consecutiveFailureThreshold = pick([nil, 1, 7, 1_000_000])
        policy.slowCallRateThreshold = pick([nil, 0.25, 1])
        if policy.failureRateThreshold == nil && policy.consecutiveFailureThreshold == nil && policy.slowCallRateThreshold == nil {
            policy.failureRateThreshold = 0.5
        }
        policy.slowCallDuration = pick([.milliseconds(1), .milliseconds(1500), .seconds(86_400)])
        policy.minimumThroughput = pick([1, 10, 1_000_000])
        policy.window = pick([.count(1), .count(100_000), .time(samplingDuration: .milliseconds(1), buckets: 1),
                              .time(samplingDuration: .seconds(10), buckets: 10), .time(samplingDuration: .seconds(3600), buckets: 1000)])
        policy.breakDuration = pick([
            .fixed(.milliseconds(1)), .fixed(.seconds(86_400 * 365)),
            .exponential(base: .milliseconds(10), factor: 1e300, maximum: .seconds(86_400)),
            .linear(base: .seconds(1), increment: .zero, maximum: .seconds(1)), .adaptive,
            .custom(id: pick(["jitter", "quote\"back\\slash", "line\nbreak\ttab\u{1}\u{7F}", "ünïcødé 😀", "}{,:[]"])) { .seconds($0) },
        ])
        policy.permittedCallsInHalfOpen = pick([1, 10_000])
        policy.successThreshold = pick([1, 10_000])
        policy.maxHalfOpenDuration = pick([.milliseconds(1), .seconds(60)])
        policy.mode = pick([.normal, .metricsOnly, .disabled])
        return policy
    }

    @Test("the policy JSON an instance stores is valid JSON with the policy's values, and the script reads it")
    func policyJSONRoundTrips() async throws {
        let server = try await SharedServer.get()
        let redis = try RedisClient(configuration: server.configuration())
        var index = 0
        await propertyCheck(count: 60, input: Self.policies) { policy in
            index += 1
            let name = "json-\(index)"
            let subject = try DistributedSubject(server: server)
            let backend = try await subject.makeBackend(name: name, policy: policy)
            if case .admitted(let token) = await backend.admit() { backend.record(.success, for: token) }
            await subject.adapter.flush()

            let namespace = subject.adapter.options.namespace
            let key = DistributedBackend.keys(namespace: namespace, name: name)[0]
            let stored = try await redis.send("HGET", key, "policy").string ?? ""
            let object = try #require(try JSONSerialization.jsonObject(with: Data(stored.utf8)) as? [String: Any], "\(stored)")
            #expect(object["minimumThroughput"] as? Int == policy.minimumThroughput)
            #expect(object["failureRateThreshold"] as? Double == policy.failureRateThreshold, "\(stored)")
            #expect(object["mode"] as? String == policy.mode.rawValue)
            #expect(object["maxHalfOpenDurationMs"] as? Int64 == policy.maxHalfOpenDuration.milliseconds)
            if case .custom(let id, _) = policy.breakDuration {
                #expect((object["breakDuration"] as? [String: Any])?["id"] as? String == id, "\(stored)")
            }

            // The operators' path: the script decodes the stored JSON (no policy is sent) and applies it.
            let operatorSide = BreakerOperator(connection: redis, namespace: namespace)
            let isolated = try await operatorSide.isolate(name, reason: "json")
            #expect(isolated.state == .isolated)
            let reset = try await operatorSide.reset(name)
            let base: BreakerState = switch policy.mode {
            case .normal, .shadow: .closed
            case .metricsOnly: .metricsOnly
            case .disabled: .disabled
            }
            #expect(reset.state == base, "\(reset.state) for \(policy.mode)")
        }
    }

    @Test("every key of a valid breaker name carries the name as its one hash tag")
    func keysShareOneHashTag() async {
        let characters: [Character] = ["a", "Z", "0", ":", "-", " ", "é", "😀", "@", "#", "*", "[", "]"]
        let names = Gen.element(of: characters).array(of: 1...12).map { String($0.compactMap { $0 }) }
        await propertyCheck(count: 500, input: names, Gen.element(of: ["fusebox", "ns:a", "a-b.c"])) { name, namespace in
            await Task.yield()  // CPU-bound cases: leave the shared pool to the suites that time things
            let namespace = namespace ?? "fusebox"
            guard (try? BreakerRegistry.validate(name: name)) != nil else { return }
            for key in DistributedBackend.keys(namespace: namespace, name: name) {
                // Redis Cluster hashes the text between the first '{' and the next '}' when it is not empty.
                guard let open = key.firstIndex(of: "{"), let close = key[key.index(after: open)...].firstIndex(of: "}") else {
                    Issue.record("\(key) has no hash tag")
                    continue
                }
                let tag = key[key.index(after: open)..<close]
                #expect(tag == name, "\(key): tag '\(tag)'")
            }
        }
    }
}

/// Whatever redis-cli can write into a breaker's keys, `reset` repairs it and the breaker works again.
@Suite("Repair by reset", .kind(.integration), .timeLimit(.minutes(3)))
struct RepairPropertyTests {
    /// Values a person or a script gone wrong may write: not numbers, not finite, too large, not JSON, empty.
    static let garbage = [
        "", "nan", "-nan", "inf", "-inf", "1e999", "-1", "abc", "{", "[1,2", "99999999999999999999999", "0x10", " 5", "5 ",
        "3.5", "ünïcødé 😀", "closed", "half_open", "null", "true",
    ]

    /// A corruption: for each of the breaker's keys, nothing, other values in some fields (and unknown fields), or
    /// the key replaced by another type.
    struct Corruption: Sendable, CustomStringConvertible {
        enum Damage: Sendable { case none, fields([(String, String)]), type(String) }
        var damage: [Damage]
        var description: String {
            damage.enumerated().map { index, damage in
                switch damage {
                case .none: "key \(index): intact"
                case .fields(let fields): "key \(index): " + fields.map { "\($0.0)=\($0.1)" }.joined(separator: " ")
                case .type(let type): "key \(index): a \(type)"
                }
            }.joined(separator: "; ")
        }
    }

    /// Every field Fusebox writes in the state hash, the window and the totals, and one it does not.
    static let fields = [
        "state", "version", "since", "open_until", "attempt", "reason", "isolation_reason", "consecutive_failures", "probes",
        "probe_successes", "created", "budget", "policy_fp", "schema", "pruned", "senders", "streak_at", "leases", "policy",
        "break_base", "break_durations", "ring", "next", "calls", "failures", "slow", "successes", "ignored", "rejected", "0",
        "1", "9", "unknown",
    ]

    static let corruptions: Generator<Corruption, Shrink.None<Corruption>> = Generator { rng in
        func pick<T>(_ values: [T]) -> T { values.randomElement(using: &rng)! }
        return Corruption(damage: (0..<4).map { _ in
            switch Int.random(in: 0..<10, using: &rng) {
            case 0..<3: .none
            case 3..<8: .fields((0..<Int.random(in: 1...4, using: &rng)).map { _ in
                (pick(Self.fields), pick(Self.garbage))
            })
            default: .type(pick(["string", "list", "set", "zset"]))
            }
        })
    }

    @Test("each field of each key, each kind of garbage: reset repairs it and a trip works after", arguments: [0, 1, 2])
    func resetRepairsEachField(key: Int) async throws {
        let server = try await SharedServer.get()
        let redis = try RedisClient(configuration: server.configuration())
        let options = testOptions(server)
        let instance = try Instance(options)
        defer { Task { await instance.stop() } }
        let operatorSide = BreakerOperator(connection: redis, namespace: options.namespace)
        var failures: [String] = []
        for field in Self.fields {
            for value in ["-1", "nan", "1e999", "abc", "", "3.5", "99999999999999999999999"] {
                let name = "each-\(key)-\(field)-\(value)"
                let breaker = try instance.registry.breaker(name, policy: tripsOnFirstFailure())
                try await breaker.acquireAsync().success()
                try await breaker.acquireAsync().failure(Boom())
                await instance.adapter.flush()
                try await breaker.reset()
                try await breaker.acquireAsync().success()
                await instance.adapter.flush()
                _ = try await redis.send("HSET", DistributedBackend.keys(namespace: options.namespace, name: name)[key], field, value)
                do {
                    _ = try await operatorSide.reset(name)
                } catch {
                    failures.append("\(field)=\(value): reset failed: \(error)")
                    continue
                }
                let tripped = await eventually(within: .seconds(2)) {
                    if let permit = try? await breaker.acquireAsync() { permit.failure(Boom()) }
                    await instance.adapter.flush()
                    return (try? await breaker.snapshot().state) == .open
                }
                if !tripped { failures.append("\(field)=\(value): no trip after reset") }
            }
        }
        #expect(failures.isEmpty, "key \(key): \(failures.joined(separator: "; "))")
    }

    @Test("random garbage in any field or key of a breaker: reset succeeds, says what it repaired, and a trip works after")
    func resetRepairsAnything() async throws {
        let server = try await SharedServer.get()
        let redis = try RedisClient(configuration: server.configuration())
        var index = 0
        await propertyCheck(count: 100, input: Self.corruptions) { corruption in
            index += 1
            let name = "repair-\(index)"
            let options = testOptions(server)
            let instance = try Instance(options)
            defer { Task { await instance.stop() } }
            let breaker = try instance.registry.breaker(name, policy: tripsOnFirstFailure())
            // Every key exists: calls, a trip (events), a reset.
            try await breaker.acquireAsync().success()
            try await breaker.acquireAsync().failure(Boom())
            await instance.adapter.flush()
            try await breaker.reset()
            try await breaker.acquireAsync().success()
            await instance.adapter.flush()

            let keys = DistributedBackend.keys(namespace: options.namespace, name: name)
            for (key, damage) in zip(keys, corruption.damage) {
                switch damage {
                case .none: break
                case .fields(let fields):
                    let type = try await redis.send("TYPE", key).string ?? "none"
                    for (field, value) in fields {
                        if type == "stream" {
                            _ = try? await redis.send("XADD", key, "*", field, value)
                        } else {
                            _ = try await redis.send("HSET", key, field, value)
                        }
                    }
                case .type(let type):
                    _ = try await redis.send("DEL", key)
                    switch type {
                    case "string": _ = try await redis.send("SET", key, "garbage")
                    case "list": _ = try await redis.send("RPUSH", key, "garbage")
                    case "set": _ = try await redis.send("SADD", key, "garbage")
                    default: _ = try await redis.send("ZADD", key, "1", "garbage")
                    }
                }
            }

            let operatorSide = BreakerOperator(connection: redis, namespace: options.namespace)
            let repaired = try await operatorSide.reset(name)
            #expect(repaired.state == .closed, "\(corruption)")
            // The instance comes back (the reset's transition message) and a failure trips the breaker again.
            #expect(await eventually { await !isRejected(breaker) }, "\(corruption): still rejected after reset")
            #expect(await eventually {
                if let permit = try? await breaker.acquireAsync() { permit.failure(Boom()) }
                await instance.adapter.flush()
                return (try? await breaker.snapshot().state) == .open
            }, "\(corruption): no trip after reset")
        }
    }
}

/// The buffer of outcomes an instance holds for a breaker between writes (`PendingOutcomes`), alone.
@Suite("Outcomes held between writes", .kind(.unit))
struct PendingOutcomesTests {
    struct Failure: Error {}

    /// What a batch says to Redis, as text (`Batch` is not `Equatable`: its error counts are keyed by type).
    static func summary(_ batch: PendingOutcomes.Batch) -> String {
        let groups = batch.groups.map { "\($0.bucket):\($0.successes)/\($0.slowSuccesses)/\($0.failures)/\($0.slowFailures)" }
        return "v\(batch.version) s\(batch.successes) S\(batch.slowSuccesses) f\(batch.failures) F\(batch.slowFailures) i\(batch.ignored) "
            + "runs \(batch.leadingFailures)/\(batch.longestFailureRun)/\(batch.trailingFailures) errors \(batch.errors.values.sorted()) "
            + "first \(batch.firstAt) groups \(groups)"
    }

    /// Random outcomes over a few buckets: (outcome, slow, bucket, when).
    static let outcomes: Generator<[(CallOutcome, Bool, Int64, Int64)], Shrink.None<[(CallOutcome, Bool, Int64, Int64)]>> = Generator { rng in
        let count = Int.random(in: 0...30, using: &rng)
        var bucket: Int64 = 100
        return (0..<count).map { index in
            if Int.random(in: 0..<5, using: &rng) == 0 { bucket += 1 }
            let outcome: CallOutcome = switch Int.random(in: 0..<5, using: &rng) {
            case 0, 1: .success
            case 2, 3: .failure(Failure.self)
            default: .ignored
            }
            return (outcome, Bool.random(using: &rng), bucket, Int64(1000 + index))
        }
    }

    static func batch(of outcomes: some Sequence<(CallOutcome, Bool, Int64, Int64)>) -> PendingOutcomes.Batch? {
        var pending = PendingOutcomes()
        for (outcome, slow, bucket, now) in outcomes {
            _ = pending.append(outcome, slow: slow, version: 3, created: 7, probe: false, bucket: bucket, now: now, limit: .max)
        }
        return pending.take().first
    }

    @Test("two batches joined say what one batch of all their outcomes, in order, says")
    func joinedIsSequential() async {
        await propertyCheck(count: 300, input: Self.outcomes) { outcomes in
            let split = outcomes.isEmpty ? 0 : Int.random(in: 0...outcomes.count)
            guard let whole = Self.batch(of: outcomes), let earlier = Self.batch(of: outcomes[..<split]),
                let later = Self.batch(of: outcomes[split...])
            else { return }
            #expect(Self.summary(PendingOutcomes.joined(earlier, then: later)) == Self.summary(whole), "split at \(split)")
        }
    }

    @Test("writes Redis certainly did not run join the outcomes held since: one batch however many attempts fail")
    func unsentWritesDoNotPileUp() {
        var pending = PendingOutcomes()
        for attempt in 0..<100 {
            for _ in 0..<10 { _ = pending.append(.success, slow: false, version: 1, created: 1, probe: false, bucket: 5, now: 1, limit: .max) }
            let batches = pending.take()
            #expect(batches.count == 1, "attempt \(attempt): \(batches.count) batches")
            for var batch in batches {
                batch.sequence = attempt + 1
                _ = pending.settle(batch, written: false, certainlyNotRun: true)
            }
        }
        let last = pending.take()
        #expect(last.count == 1)
        #expect(last.first?.successes == 1000)
        #expect(last.first?.sequence == nil)
    }

    @Test("a write that may have run keeps its number when a later attempt is certainly not run (SPIN: FORGET_EARLIER_ATTEMPTS)")
    func mayHaveRunKeepsItsNumber() {
        var pending = PendingOutcomes()
        _ = pending.append(.success, slow: false, version: 1, created: 1, probe: false, bucket: 5, now: 1, limit: .max)
        var first = pending.take()[0]
        first.sequence = 7
        _ = pending.settle(first, written: false)  // a timeout: it may have run
        let again = pending.take()
        _ = pending.settle(again[0], written: false, certainlyNotRun: true)  // then never sent: says nothing of the first attempt
        _ = pending.append(.success, slow: false, version: 1, created: 1, probe: false, bucket: 5, now: 2, limit: .max)
        let third = pending.take()
        #expect(third.count == 1)
        #expect(third.first?.sequence == 7 && third.first?.successes == 1)
    }

    @Test("a write that may have run goes again alone, with its number; what came since waits for its answer")
    func uncertainWriteGoesAlone() {
        var pending = PendingOutcomes()
        _ = pending.append(.failure(Failure.self), slow: false, version: 1, created: 1, probe: false, bucket: 5, now: 1, limit: .max)
        var first = pending.take()[0]
        first.sequence = 41
        _ = pending.settle(first, written: false)
        for _ in 0..<3 {
            _ = pending.append(.success, slow: false, version: 1, created: 1, probe: false, bucket: 5, now: 2, limit: .max)
            let again = pending.take()
            #expect(again.count == 1)
            #expect(again.first?.sequence == 41 && again.first?.failures == 1 && again.first?.successes == 0)
            _ = pending.settle(again[0], written: false)
        }
        let resent = pending.take()
        _ = pending.settle(resent[0], written: true)
        let rest = pending.take()
        #expect(rest.count == 1)
        #expect(rest.first?.sequence == nil && rest.first?.successes == 3)
    }
}
