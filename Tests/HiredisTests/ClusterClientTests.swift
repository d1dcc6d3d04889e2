import FuseboxTestKit
import Testing
import TestKinds
@testable import Hiredis

/// The client against the run's real cluster (3 primaries, 3 replicas): every command's node is the one the cluster
/// itself says serves its slot.
@Suite("The client in a Redis Cluster: routing, redirections, scripts per node", .kind(.integration), .timeLimit(.minutes(3)))
struct ClusterClientTests {
    /// A client of one node, alone (no routing), to look at what that node holds.
    private func direct(_ endpoint: RedisConfiguration.Endpoint, in cluster: RedisClusterProcess) throws -> RedisClient {
        try RedisClient(configuration: try #require(cluster.node(at: endpoint)).configuration())
    }

    @Test("commands and pipelines reach the node serving each key, on all three primaries, replies in order")
    func routes() async throws { try await SharedCluster.use { cluster in
        let client = try RedisClient(url: cluster.url)
        defer { client.close() }
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let keys = (0..<60).map { "route-test:\(tag):{k\($0)}" }
        let written = try await client.pipeline(keys.map { RedisCommand("SET", $0, $0) } + [RedisCommand("PING")])
        #expect(written.allSatisfy { $0.string == "OK" || $0.string == "PONG" }, "\(written)")
        #expect(try await client.pipeline(keys.map { RedisCommand("GET", $0) }).map(\.string) == keys)
        #expect(try await client.send("GET", keys[7]).string == keys[7])

        let map = try ClusterSlotMap(shards: try await client.send("CLUSTER", "SHARDS"))
        let primaries = try await client.primaries()
        #expect(Set(primaries.map(\.endpoint)) == Set(map.primaries) && primaries.count == 3)
        // Each key is on the primary the cluster names, which answers it itself (no redirection).
        var owners: Set<RedisConfiguration.Endpoint> = []
        for key in keys {
            let owner = try #require(map.primary(forKey: key))
            owners.insert(owner)
            let node = try direct(owner, in: cluster)
            defer { node.close() }
            #expect(try await node.send("GET", key).string == key)
        }
        #expect(owners.count == 3, "the keys should cover every primary")
    } }

    @Test("a script runs on every primary; flushed on one node only, it is loaded there again")
    func scriptsPerNode() async throws { try await SharedCluster.use { cluster in
        let client = try RedisClient(url: cluster.url)
        defer { client.close() }
        let script = RedisScript("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])")
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let keys = (0..<30).map { "script-test:\(tag):{s\($0)}" }
        for key in keys { #expect(try await client.run(script, keys: [key], arguments: ["v1"]).string == "v1") }
        let map = try ClusterSlotMap(shards: try await client.send("CLUSTER", "SHARDS"))
        let key = keys[0]
        let node = try direct(try #require(map.primary(forKey: key)), in: cluster)
        defer { node.close() }
        let sha = script.sha1
        #expect(try await node.send("SCRIPT", "EXISTS", sha).array?.first?.int == 1)
        _ = try await node.send("SCRIPT", "FLUSH")
        #expect(try await node.send("SCRIPT", "EXISTS", sha).array?.first?.int == 0)
        #expect(try await client.run(script, keys: [key], arguments: ["v2"]).string == "v2")
        #expect(try await node.send("SCRIPT", "EXISTS", sha).array?.first?.int == 1)
        // A script error is the script's, typed, not a routing failure.
        let failing = RedisScript("return redis.error_reply('NOPE not today')")
        await #expect(throws: RedisError.self) { try await client.run(failing, keys: [key]) }
    } }

    @Test("a slot being migrated (ASK) and then moved (MOVED) is followed, with the value intact")
    func redirections() async throws { try await SharedCluster.useAlone { cluster in
        let client = try RedisClient(url: cluster.url)
        defer { client.close() }
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let key = "move-test:{\(tag)}:a"
        let second = "move-test:{\(tag)}:b"
        _ = try await client.send("SET", key, "before")
        let slot = ClusterSlot.of(key: key)
        let map = try ClusterSlotMap(shards: try await client.send("CLUSTER", "SHARDS"))
        let sourceEndpoint = try #require(map.primary(forSlot: slot))
        let targetEndpoint = try #require(map.primaries.first { $0 != sourceEndpoint })
        let source = try direct(sourceEndpoint, in: cluster)
        let target = try direct(targetEndpoint, in: cluster)
        defer { source.close(); target.close() }
        let sourceID = try #require(try await source.send("CLUSTER", "MYID").string)
        let targetID = try #require(try await target.send("CLUSTER", "MYID").string)

        // Mid-migration: the key is on the target; the source answers ASK for it (and for a key it does not hold).
        _ = try await target.send("CLUSTER", "SETSLOT", slot, "IMPORTING", sourceID)
        _ = try await source.send("CLUSTER", "SETSLOT", slot, "MIGRATING", targetID)
        guard case .tcp(let host, let port) = targetEndpoint else { return }
        _ = try await source.send("MIGRATE", host, port, "", 0, 5000, "KEYS", key)
        do {
            _ = try await source.send("GET", key)
            Issue.record("the source still served the migrated key")
        } catch let error as RedisError {
            #expect(ClusterRedirect(errorMessage: error.message)?.kind == .ask, "\(error.message)")
        }
        #expect(try await client.send("GET", key).string == "before")
        #expect(try await client.send("SET", second, "during").string == "OK")
        #expect(try await target.pipeline([RedisCommand("ASKING"), RedisCommand("GET", second)])[1].string == "during")

        // Done: every primary learns the slot's new owner; the client's map still names the source (MOVED).
        for endpoint in map.primaries {
            let node = try direct(endpoint, in: cluster)
            defer { node.close() }
            _ = try await node.send("CLUSTER", "SETSLOT", slot, "NODE", targetID)
        }
        #expect(try await client.send("GET", key).string == "before")
        #expect(try await client.pipeline([RedisCommand("GET", second), RedisCommand("SET", key, "after")]).map(\.string) == ["during", "OK"])
        #expect(try await target.send("GET", key).string == "after")
        try await cluster.waitUntilHealthy()
    } }

    @Test("a cluster URL whose seeds are all dead fails within the timeouts with a typed error")
    func deadSeeds() async throws {
        let port = try RedisServerProcess.freePort()
        var configuration = try RedisConfiguration(url: "redis+cluster://127.0.0.1:\(port),127.0.0.1:\(port)")
        configuration.connectTimeout = .milliseconds(300)
        configuration.commandTimeout = .milliseconds(300)
        let client = try RedisClient(configuration: configuration)
        defer { client.close() }
        let started = ContinuousClock.now
        await #expect(throws: RedisError.self) { _ = try await client.send("GET", "x") }
        #expect(started.duration(to: .now) < .seconds(2))
    }
}
