import Foundation
import Fusebox
import FuseboxTestKit
import Hiredis
import Logging
import Testing
import TestKinds

@testable import FuseboxRedis

/// Options for instances of a test on the run's cluster.
func clusterOptions(_ cluster: RedisClusterProcess, timeout: Duration = .milliseconds(500)) throws -> DistributedOptions {
    testOptions(redis: try RedisConfiguration(url: cluster.url), namespace: uniqueNamespace("c"), timeout: timeout)
}

/// One breaker name per primary of `map` (by the slot of its keys in `namespace`), in the map's order.
func namesCoveringPrimaries(_ map: ClusterSlotMap, namespace: String) -> [String] {
    var names: [RedisConfiguration.Endpoint: String] = [:]
    var index = 0
    while names.count < map.primaries.count {
        let name = "svc-\(index)"
        if let owner = map.primary(forKey: "\(namespace):{\(name)}:state"), names[owner] == nil { names[owner] = name }
        index += 1
    }
    return map.primaries.map { names[$0]! }
}

func slotMap(_ cluster: RedisClusterProcess) async throws -> ClusterSlotMap {
    let client = try RedisClient(url: cluster.url)
    defer { client.close() }
    return try ClusterSlotMap(shards: try await client.send("CLUSTER", "SHARDS"))
}

/// The distributed adapter on a real Redis Cluster (3 primaries, 3 replicas): breakers on every primary, a primary
/// killed under load, slots resharded under load.
@Suite("The distributed adapter on a Redis Cluster", .kind(.integration), .timeLimit(.minutes(4)))
struct ClusterTests {
    static let timeout = Duration.milliseconds(500)
    static let bound = timeout * 4

    @Test("breakers on all three primaries trip, are seen by every instance, and are listed")
    func breakersOnEveryPrimary() async throws { try await SharedCluster.use { cluster in
        let options = try clusterOptions(cluster)
        let names = namesCoveringPrimaries(try await slotMap(cluster), namespace: options.namespace)
        let fleet = try Instance.fleet(3, options)
        defer { Task { for instance in fleet { await instance.stop() } } }
        for name in names {
            let breakers = try fleet.map { try $0.registry.breaker(name, policy: tripsOnFirstFailure()) }
            for breaker in breakers { #expect(await !isRejected(breaker)) }
            try await breakers[0].acquireAsync().failure(Boom())
            for breaker in breakers.dropFirst() {
                #expect(await eventually(within: .seconds(5)) { await isRejected(breaker) }, "\(name) not seen open")
            }
            #expect(try await breakers[2].snapshot().state == .open)
        }
        let client = try RedisClient(configuration: options.redis)
        defer { client.close() }
        let operator_ = BreakerOperator(connection: client, namespace: options.namespace)
        #expect(try await operator_.names() == names.sorted())
        #expect(try await operator_.snapshots().map(\.state) == Array(repeating: .open, count: names.count))
        // An operator's reset reaches the instances too.
        _ = try await operator_.reset(names[1])
        #expect(await eventually(within: .seconds(5)) { await !isRejected(try! fleet[0].registry.breaker(names[1], policy: tripsOnFirstFailure())) })
    } }

    @Test("a flush of many breakers goes out as one script call per slot, and nothing is lost")
    func flushAcrossSlots() async throws { try await SharedCluster.use { cluster in
        let options = try clusterOptions(cluster)
        let instance = try Instance(options)
        defer { Task { await instance.stop() } }
        let breakers = try (0..<40).map { try instance.registry.breaker("many-\($0)", policy: BreakerPolicy()) }
        for breaker in breakers {
            for _ in 0..<3 { try await breaker.acquireAsync().success() }
        }
        await instance.adapter.flush()
        for breaker in breakers {
            #expect(await totalsReach(breaker, instance, successes: 3))
        }
    } }

    @Test("a primary SIGKILLed under load: its replica takes over, instances follow, waits stay bounded")
    func primaryKilled() async throws { try await SharedCluster.useAlone { cluster in
        let options = try clusterOptions(cluster, timeout: Self.timeout)
        let map = try await slotMap(cluster)
        let names = namesCoveringPrimaries(map, namespace: options.namespace)
        let fleet = try Instance.fleet(2, options)
        defer { Task { for instance in fleet { await instance.stop() } } }
        let breakers = try fleet.map { instance in try names.map { try instance.registry.breaker($0, policy: tripsOnFirstFailure()) } }
        for breaker in breakers.joined() { _ = try await breaker.snapshot() }
        let loads = zip(fleet, breakers).flatMap { instance, row in
            zip(names, row).map { name, breaker in Load(breaker) { instance.adapter.isUsingStoreDownPolicy(name) } }
        }
        try await Task.sleep(for: .milliseconds(300))

        // Kill the primary of the first name's slot.
        let victimEndpoint = map.primaries[0]
        let victim = try #require(cluster.node(at: victimEndpoint))
        let slot = ClusterSlot.of(key: "\(options.namespace):{\(names[0])}:state")
        let killed = ContinuousClock.now
        victim.kill()
        // The promotion: another node names a new primary for that slot.
        let watcher = try RedisClient(configuration: try #require(cluster.node(at: map.primaries[1])).configuration())
        defer { watcher.close() }
        var promoted: ContinuousClock.Instant?
        while promoted == nil, ContinuousClock.now - killed < .seconds(20) {
            if let now = try? ClusterSlotMap(shards: try await watcher.send("CLUSTER", "SHARDS")),
               let primary = now.primary(forSlot: slot), primary != victimEndpoint {
                promoted = .now
            } else {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        let promotion = try #require(promoted, "no replica was promoted within 20 s")

        // The instances follow: a trip written through the first instance reaches Redis and the second instance.
        var followed: ContinuousClock.Instant?
        while followed == nil, ContinuousClock.now - promotion < .seconds(10) {
            if (try? await breakers[0][0].snapshot()) != nil, (try? await breakers[1][0].snapshot()) != nil {
                followed = .now
            } else {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        let follow = try #require(followed, "the instances did not reach the new primary within 10 s of the promotion")
        #expect(follow - promotion < .seconds(5))
        try await breakers[0][0].acquireAsync().failure(Boom())
        #expect(await eventually(within: .seconds(5)) { await isRejected(breakers[1][0]) }, "the trip did not reach the other instance")

        var figures: [Load.Figures] = []
        for load in loads { figures.append(await load.stop(bound: Self.bound, allowingRejections: true)) }
        // Only the tripped breaker rejects; the others were covered throughout.
        #expect(figures.enumerated().allSatisfy { $0.offset % names.count == 0 || $0.element.rejected == 0 }, "\(figures)")
        let storeDown = figures.map(\.storeDown).reduce(0, +)
        let calls = figures.map { $0.successes + $0.rejected }.reduce(0, +)
        print("fault-figure | cluster primary SIGKILLed | promoted \(promotion - killed) after the kill; instances followed \(follow - promotion) after the promotion; \(storeDown) of \(calls) calls used the store-down policy; longest call \(figures.map(\.longestWait).max()!)")

        // Hand the cluster back whole: the old primary comes back as a replica.
        try await victim.restart()
        try await cluster.waitUntilHealthy()
    } }

    @Test("slots resharded under load (redis-cli --cluster reshard): redirections followed, every outcome counted once")
    func reshardUnderLoad() async throws { try await SharedCluster.useAlone { cluster in
        let options = try clusterOptions(cluster, timeout: Self.timeout)
        let map = try await slotMap(cluster)
        // A breaker among the first 200 slots of a primary's range: reshard moves the lowest slots first.
        let name = try #require((0..<100_000).lazy.map { "moving-\($0)" }.first { name in
            let slot = ClusterSlot.of(key: "\(options.namespace):{\(name)}:state")
            return map.ranges.contains { $0.slots.contains(slot) && slot - $0.slots.lowerBound < 200 }
        })
        let names = [name]
        let instance = try Instance(options)
        defer { Task { await instance.stop() } }
        let breaker = try instance.registry.breaker(names[0], policy: tripsOnFirstFailure())
        _ = try await breaker.snapshot()
        let load = Load(breaker) { instance.adapter.isUsingStoreDownPolicy(names[0]) }

        // Move the slot range holding the breaker (and 500 slots around it) to another primary.
        let slot = ClusterSlot.of(key: "\(options.namespace):{\(names[0])}:state")
        let source = try #require(map.primary(forSlot: slot))
        let target = try #require(map.primaries.first { $0 != source })
        let sourceClient = try RedisClient(configuration: try #require(cluster.node(at: source)).configuration())
        let targetClient = try RedisClient(configuration: try #require(cluster.node(at: target)).configuration())
        defer { sourceClient.close(); targetClient.close() }
        let sourceID = try #require(try await sourceClient.send("CLUSTER", "MYID").string)
        let targetID = try #require(try await targetClient.send("CLUSTER", "MYID").string)
        // reshard moves the source's lowest slots first, across all its ranges (other suites sharing the cluster may
        // have migrated slots, splitting them): ask for every slot it serves up to ours.
        let count = map.ranges.filter { $0.primary == source }.map { range in
            range.slots.lowerBound > slot ? 0 : min(range.slots.upperBound, slot) - range.slots.lowerBound + 1
        }.reduce(0, +)
        let started = ContinuousClock.now
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-reshard-\(UInt32.random(in: 0...UInt32.max)).log").path
        defer { try? FileManager.default.removeItem(atPath: output) }
        guard case .tcp(_, let port) = target else { return }
        let reshard = try ChildProcess(
            executable: "redis-cli",
            arguments: ["--cluster", "reshard", "127.0.0.1:\(port)", "--cluster-from", sourceID, "--cluster-to", targetID,
                        "--cluster-slots", String(count), "--cluster-yes", "--cluster-pipeline", "10"],
            outputPath: output, searchPath: true)
        let status = await reshard.waitForExit(upTo: .seconds(60))
        #expect(status == 0, "\((try? String(contentsOfFile: output, encoding: .utf8))?.suffix(400) ?? "")")
        let moved = ContinuousClock.now - started
        // The seed node learns the new owner by gossip, a moment after redis-cli has finished.
        #expect(await eventually { (try? await slotMap(cluster).primary(forSlot: slot)) == target })
        try await Task.sleep(for: .milliseconds(300))

        let figures = await load.stop(bound: Self.bound)
        #expect(await totalsReach(breaker, instance, successes: figures.successes))
        // Trips still work on the new owner.
        try await breaker.acquireAsync().failure(Boom())
        #expect(await eventually(within: .seconds(5)) { (try? await breaker.snapshot().state) == .open })
        print("fault-figure | cluster reshard of \(count) slots under load | \(moved) to move; \(figures.successes) calls counted once; \(figures.storeDown) used the store-down policy; longest call \(figures.longestWait)")
        try await cluster.waitUntilHealthy()
    } }
}
