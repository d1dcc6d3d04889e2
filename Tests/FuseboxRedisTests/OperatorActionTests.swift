import Fusebox
import FuseboxTestKit
import Hiredis
import Logging
import Testing
import TestKinds

@testable import FuseboxRedis

/// Operator actions that end by themselves, fleet-wide, on Redis' clock, and shadow mode set by an override.
@Suite("Operator actions that expire, and shadow mode, across instances", .kind(.timingBound), .timeLimit(.minutes(2)))
struct OperatorActionTests {
    @Test("an isolation for a time rejects on every instance with the time left, then ends by itself everywhere")
    func isolationForATime() async throws {
        let server = try await SharedServer.get()
        let options = testOptions(server)
        let fleet = try Instance.fleet(2, options)
        defer { Task { for instance in fleet { await instance.stop() } } }
        try await waitForSubscribers(2, namespace: options.namespace, server: server)
        let breakers = try fleet.map { try $0.registry.breaker("timed", policy: tripsOnFirstFailure()) }
        for breaker in breakers { try await breaker.acquireAsync().success() }

        let operatorSide = BreakerOperator(connection: try RedisClient(configuration: server.configuration()), namespace: options.namespace)
        let isolatedAt = ContinuousClock.now
        let isolated = try await operatorSide.isolate("timed", reason: "deploy", for: .milliseconds(1500))
        #expect(isolated.state == .isolated)
        let left = try #require(isolated.isolationEndsIn)
        #expect(left > .milliseconds(500) && left <= .milliseconds(1500), "\(left)")

        // Both instances learn it from the transition message and reject with the time left.
        for breaker in breakers {
            #expect(await eventually { await isRejected(breaker) })
            do {
                try await breaker.acquireAsync().ignore()
                Issue.record("admitted while isolated")
            } catch {
                #expect(error.state == .isolated && error.isolationReason == "deploy")
                let retry = try #require(error.retryAfter)
                #expect(retry > .zero && retry <= .milliseconds(1500), "\(retry)")
            }
        }
        // At the end of it each admits again, having asked Redis, whose script moved the breaker back to closed.
        for breaker in breakers {
            #expect(await eventually(within: .seconds(5)) { !(await isRejected(breaker)) })
        }
        #expect(ContinuousClock.now - isolatedAt >= .milliseconds(1450), "admitted before the isolation's end")
        let after = try await operatorSide.snapshot(of: "timed")
        #expect(after.state == .closed)
        #expect(after.isolationEndsIn == nil)
        let timeline = try await operatorSide.timeline(of: "timed")
        #expect(timeline.last?.reason.hasPrefix("isolation for 1.5 s ended") == true, "\(timeline.map(\.reason))")
        let trail = try await operatorSide.auditTrail(of: "timed")
        #expect(trail.first?.action == "isolate" && trail.first?.reason == "deploy (for 1.5 s)")
    }

    @Test("an isolation nobody calls through ends when it is read; an isolation of zero or over a year is refused")
    func isolationEndsOnRead() async throws {
        let server = try await SharedServer.get()
        let options = testOptions(server)
        let operatorSide = BreakerOperator(connection: try RedisClient(configuration: server.configuration()), namespace: options.namespace)
        // Before any instance used it: the isolation is stored and ends all the same.
        let isolatedAt = ContinuousClock.now
        _ = try await operatorSide.isolate("quiet", reason: "before first use", for: .seconds(2))
        // Read before the 2 s are over (a loaded two-core machine once took 2 s to answer the read: then it says
        // nothing of the isolation, and the elapsed time is in the message).
        let read = try await operatorSide.snapshot(of: "quiet").state
        let elapsed = ContinuousClock.now - isolatedAt
        #expect(read == .isolated || elapsed >= .milliseconds(1900), "\(read) after \(elapsed)")
        try await Task.sleep(until: isolatedAt + .milliseconds(2200))
        #expect(try await operatorSide.snapshot(of: "quiet").state == .closed)

        for bad in [Duration.zero, .seconds(-5), .seconds(367 * 86_400)] {
            await #expect(throws: FuseboxError.self) { _ = try await operatorSide.isolate("quiet", reason: "x", for: bad) }
        }
        #expect(try await operatorSide.snapshot(of: "quiet").state == .closed, "a refused isolation changes nothing")
    }

    @Test("a policy override for a time is applied by every instance and ends by itself, removed once, with a trail")
    func overrideForATime() async throws {
        let server = try await SharedServer.get()
        let options = testOptions(server)
        let fleet = try Instance.fleet(2, options)
        defer { Task { for instance in fleet { await instance.stop() } } }
        try await waitForSubscribers(2, namespace: options.namespace, server: server)
        let breakers = try fleet.map { try $0.registry.breaker("steered", policy: tripsOnFirstFailure()) }
        for breaker in breakers { try await breaker.acquireAsync().success() }

        let redis = try RedisClient(configuration: server.configuration())
        let operatorSide = BreakerOperator(connection: redis, namespace: options.namespace)
        var shadow = tripsOnFirstFailure()
        shadow.mode = .shadow
        try await operatorSide.setOverride(
            PolicyOverride(policy: shadow, setBy: "ops@test", setAtMilliseconds: 0, reason: "trying shadow"), for: "steered",
            lasting: .milliseconds(1500))
        let stored = try #require(try await operatorSide.override(of: "steered"))
        let redisNow = try await operatorSide.redisTime()
        let expires = try #require(stored.expiresAtMilliseconds)
        #expect(expires - redisNow > 300 && expires - redisNow <= 1500)
        for breaker in breakers {
            #expect(await eventually { breaker.backend.isOverridden })
        }

        // In shadow mode a trip still happens, and every instance lets the calls through, counting them.
        try await breakers[0].acquireAsync().failure(Boom())
        await fleet[0].adapter.flush()
        #expect(try await eventually { try await breakers[1].snapshot().state == .open })
        for breaker in breakers {
            for _ in 0..<3 { try await breaker.acquireAsync().success() }
        }
        for instance in fleet { await instance.adapter.flush() }
        let open = try await operatorSide.snapshot(of: "steered")
        #expect(open.state == .open)
        #expect(open.totals.wouldReject == 6 && open.totals.rejected == 0, "\(open.totals)")

        // The override ends by itself on both instances; one of them removes it from Redis and writes the trail.
        for breaker in breakers {
            #expect(await eventually(within: .seconds(5)) { !breaker.backend.isOverridden })
        }
        #expect(try await eventually { try await redis.send("HEXISTS", "\(options.namespace):overrides", "steered").decodeInt() == 0 })
        #expect(try await operatorSide.override(of: "steered") == nil)
        #expect(try await eventually {
            try await operatorSide.auditTrail(of: "steered").contains { $0.action == "policy-expired" && $0.reason == "the override set by ops@test ended" }
        })
        let actions = try await operatorSide.auditTrail(of: "steered").map(\.action)
        #expect(actions.filter { $0 == "policy-expired" }.count == 1, "\(actions)")
        // Back on their own policy, the open breaker rejects again.
        for breaker in breakers { #expect(await isRejected(breaker)) }
    }

    @Test("an override past its time is not in force for readers, even with no instance running to remove it")
    func expiredOverrideIgnored() async throws {
        let server = try await SharedServer.get()
        let options = testOptions(server)
        let operatorSide = BreakerOperator(connection: try RedisClient(configuration: server.configuration()), namespace: options.namespace)
        try await operatorSide.setOverride(
            PolicyOverride(policy: tripsOnFirstFailure(), setBy: "ops", setAtMilliseconds: 0), for: "lapsed", lasting: .seconds(2))
        let setAt = ContinuousClock.now
        #expect(try await operatorSide.overrides()["lapsed"] != nil)
        try await Task.sleep(until: setAt + .milliseconds(2200))
        #expect(try await operatorSide.override(of: "lapsed") == nil)
        #expect(try await operatorSide.overrides()["lapsed"] == nil)
        await #expect(throws: FuseboxError.self) {
            try await operatorSide.setOverride(
                PolicyOverride(policy: tripsOnFirstFailure(), setBy: "ops", setAtMilliseconds: 0), for: "lapsed", lasting: .zero)
        }
    }
}
