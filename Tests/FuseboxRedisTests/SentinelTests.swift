import Foundation
import Fusebox
import FuseboxTestKit
import Hiredis
import Logging
import Synchronization
import Testing
import TestKinds

@testable import FuseboxRedis

/// Options for instances behind the group's sentinels.
func sentinelOptions(_ group: RedisSentinelGroup, timeout: Duration) throws -> DistributedOptions {
    testOptions(redis: try RedisConfiguration(url: group.url), namespace: uniqueNamespace("s"), timeout: timeout)
}

/// Records when the sentinels announce `+switch-master` (as a subscriber to the first sentinel that answers).
final class SwitchWatch: Sendable {
    private let subscriber: RedisSubscriber
    private let task: Task<Void, Never>
    private final class Stamp: Sendable {
        let instant = Mutex<ContinuousClock.Instant?>(nil)
    }

    private let switched = Stamp()

    init(_ group: RedisSentinelGroup) throws {
        let switched = self.switched
        subscriber = try RedisSubscriber(configuration: group.sentinels[2].configuration(), channels: ["+switch-master"]) { _ in
            switched.instant.withLock { $0 = $0 ?? .now }
        }
        let subscriber = self.subscriber
        task = Task { await subscriber.run() }
    }

    var instant: ContinuousClock.Instant? { switched.instant.withLock { $0 } }

    func stop() async {
        task.cancel()
        await task.value
    }
}

/// The client and the distributed adapter behind Redis Sentinel: 1 primary, 1 replica, 3 sentinels, all real.
@Suite("Redis Sentinel: the primary found, followed after a failover", .kind(.integration), .timeLimit(.minutes(3)))
struct SentinelTests {
    static let timeout = Duration.milliseconds(500)
    static let bound = timeout * 4

    @Test("the client asks the sentinels for the primary, writes there, and follows a manual failover (the old primary alive)")
    func manualFailover() async throws {
        let group = try await RedisSentinelGroup.start()
        defer { Task { await group.stop() } }
        let options = try sentinelOptions(group, timeout: Self.timeout)
        let client = try RedisClient(configuration: options.redis)
        defer { client.close() }
        #expect(try await client.send("SET", "sentinel-test", "1").string == "OK")
        #expect(try await client.send("ROLE").array?.first?.string == "master")
        let first = try await client.primaries()
        #expect(first.map(\.endpoint) == [.tcp(host: "127.0.0.1", port: group.servers[0].port)])

        let instance = try Instance(options)
        defer { Task { await instance.stop() } }
        let breaker = try instance.registry.breaker("orders", policy: tripsOnFirstFailure())
        _ = try await breaker.snapshot()
        let load = Load(breaker) { instance.adapter.isUsingStoreDownPolicy("orders") }
        let watch = try SwitchWatch(group)
        try await Task.sleep(for: .milliseconds(300))

        let sentinel = try RedisClient(configuration: group.sentinels[0].configuration())
        defer { sentinel.close() }
        _ = try await sentinel.send("SENTINEL", "FAILOVER", group.primaryName)
        #expect(await eventually(within: .seconds(20)) { watch.instant != nil }, "no +switch-master within 20 s")
        let switched = try #require(watch.instant)
        // Writes reach the new primary: a trip is applied (a replica would refuse it with READONLY).
        let followed = await eventually(within: .seconds(5)) {
            (try? await client.send("SET", "sentinel-test", "2").string) == "OK"
        }
        #expect(followed && ContinuousClock.now - switched < .seconds(5))
        #expect(try await client.primaries().map(\.endpoint) == [.tcp(host: "127.0.0.1", port: group.servers[1].port)])
        try await breaker.acquireAsync().failure(Boom())
        #expect(await eventually(within: .seconds(5)) { (try? await breaker.snapshot().state) == .open })
        let figures = await load.stop(bound: Self.bound, allowingRejections: true)
        await watch.stop()
        let newPrimary = try RedisClient(configuration: group.servers[1].configuration())
        defer { newPrimary.close() }
        #expect(try await newPrimary.send("HGET", "\(options.namespace):{orders}:state", "state").string == "open")
        print("fault-figure | Sentinel manual failover | writes on the new primary \(ContinuousClock.now - switched) after +switch-master (bounded by the checks); \(figures.storeDown) of \(figures.successes + figures.rejected) calls used the store-down policy; longest call \(figures.longestWait)")
    }

    @Test("the primary SIGKILLed under load: instances follow the new primary within 5 s of +switch-master")
    func primaryKilled() async throws {
        let group = try await RedisSentinelGroup.start()
        defer { Task { await group.stop() } }
        let options = try sentinelOptions(group, timeout: Self.timeout)
        let fleet = try Instance.fleet(2, options)
        defer { Task { for instance in fleet { await instance.stop() } } }
        let breakers = try fleet.map { try $0.registry.breaker("payments", policy: tripsOnFirstFailure()) }
        for breaker in breakers { _ = try await breaker.snapshot() }
        let loads = zip(fleet, breakers).map { instance, breaker in Load(breaker) { instance.adapter.isUsingStoreDownPolicy("payments") } }
        let watch = try SwitchWatch(group)
        try await Task.sleep(for: .milliseconds(300))

        let killed = ContinuousClock.now
        group.servers[0].kill()
        #expect(await eventually(within: .seconds(30)) { watch.instant != nil }, "no +switch-master within 30 s")
        let switched = try #require(watch.instant)
        var followed: ContinuousClock.Instant?
        while followed == nil, ContinuousClock.now - switched < .seconds(10) {
            if (try? await breakers[0].snapshot()) != nil, (try? await breakers[1].snapshot()) != nil {
                followed = .now
            } else {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        let follow = try #require(followed, "the instances did not reach the new primary within 10 s of +switch-master")
        #expect(follow - switched < .seconds(5))
        try await breakers[0].acquireAsync().failure(Boom())
        #expect(await eventually(within: .seconds(5)) { await isRejected(breakers[1]) }, "the trip did not reach the other instance")

        var figures: [Load.Figures] = []
        for load in loads { figures.append(await load.stop(bound: Self.bound, allowingRejections: true)) }
        await watch.stop()
        let storeDown = figures.map(\.storeDown).reduce(0, +)
        let calls = figures.map { $0.successes + $0.rejected }.reduce(0, +)
        print("fault-figure | Sentinel primary SIGKILLed | +switch-master \(switched - killed) after the kill; instances followed \(follow - switched) after it; \(storeDown) of \(calls) calls used the store-down policy; longest call \(figures.map(\.longestWait).max()!)")
    }

    @Test("sentinels that do not know the name, or cannot be reached, give a typed error within the timeouts")
    func unknownPrimary() async throws {
        let group = try await RedisSentinelGroup.start()
        defer { Task { await group.stop() } }
        var configuration = try RedisConfiguration(url: group.url.replacingOccurrences(of: group.primaryName, with: "nobody"))
        configuration.connectTimeout = .milliseconds(300)
        let client = try RedisClient(configuration: configuration)
        defer { client.close() }
        let started = ContinuousClock.now
        await #expect { _ = try await client.send("PING") } throws: { error in
            (error as? RedisError)?.message.contains("knows no primary named 'nobody'") == true
        }
        #expect(ContinuousClock.now - started < .seconds(2))
    }
}
