import FuseboxTestKit
import PropertyBased
import Testing
import TestKinds

@testable import Hiredis

@Suite("Redis Cluster slots, slot maps and redirections", .kind(.integration), .timeLimit(.minutes(2)))
struct ClusterSlotsTests {
    @Test("CRC16 and key slots match the cluster specification's examples")
    func specificationVectors() {
        #expect(ClusterSlot.crc16(Array("123456789".utf8)[...]) == 0x31C3)
        #expect(ClusterSlot.of(key: "foo") == 12182)
        #expect(ClusterSlot.of(key: "bar") == 5061)
        #expect(ClusterSlot.of(key: "{user1000}.following") == ClusterSlot.of(key: "{user1000}.followers"))
        #expect(ClusterSlot.of(key: "{user1000}.following") == ClusterSlot.of(key: "user1000"))
        // An empty tag does not count: the whole key is hashed. Only the first '{' and the next '}' count.
        #expect(ClusterSlot.of(key: "foo{}{bar}") == Int(ClusterSlot.crc16(Array("foo{}{bar}".utf8)[...])) % 16384)
        #expect(ClusterSlot.of(key: "foo{{bar}}zap") == ClusterSlot.of(key: "{bar"))
        #expect(ClusterSlot.of(key: "foo{bar}{zap}") == ClusterSlot.of(key: "bar"))
    }

    @Test("redirections parse, and nothing else does")
    func redirections() {
        #expect(ClusterRedirect(errorMessage: "MOVED 3999 127.0.0.1:6381") == ClusterRedirect(kind: .moved, slot: 3999, endpoint: .tcp(host: "127.0.0.1", port: 6381)))
        #expect(ClusterRedirect(errorMessage: "ASK 12 [::1]:7000")?.endpoint == .tcp(host: "::1", port: 7000))
        #expect(ClusterRedirect(errorMessage: "MOVED 3999 127.0.0.1:6381 (a hint)")?.slot == 3999)
        for text in ["MOVED", "MOVED 16384 h:1", "MOVED -1 h:1", "MOVED 1 h", "MOVED 1 :1", "MOVED 1 h:0", "ERR MOVED 1 h:1", "WRONGTYPE x y"] {
            #expect(ClusterRedirect(errorMessage: text) == nil, "\(text)")
        }
    }

    @Test("the slot of any key is the one the cluster computes (CLUSTER KEYSLOT)")
    func slotsMatchTheServer() async throws { try await SharedCluster.use { cluster in
        let connection = try RedisClient(configuration: cluster.nodes[0].configuration())
        defer { connection.close() }
        let keys = Gen.element(of: Array("ab{}:-_ 0é😀".unicodeScalars).map(Character.init)).array(of: 0...12).map { String($0.compactMap { $0 }) }
        await propertyCheck(count: 300, input: keys) { key in
            let server = try await connection.send("CLUSTER", "KEYSLOT", key).int
            #expect(server == ClusterSlot.of(key: key), "\(key.debugDescription)")
        }
    } }

    @Test("the slot maps of CLUSTER SHARDS and CLUSTER SLOTS agree, cover every slot, and route keys to the node that takes them")
    func slotMapsRoute() async throws { try await SharedCluster.use { cluster in
        let connection = try RedisClient(configuration: cluster.nodes[1].configuration())
        defer { connection.close() }
        let fromShards = try ClusterSlotMap(shards: try await connection.send("CLUSTER", "SHARDS"))
        let fromSlots = try ClusterSlotMap(slots: try await connection.send("CLUSTER", "SLOTS"))
        #expect(fromShards.coveredSlots == ClusterSlot.count)
        #expect(fromShards.ranges.map(\.slots) == fromSlots.ranges.map(\.slots))
        #expect(fromShards.ranges.map(\.primary) == fromSlots.ranges.map(\.primary))
        #expect(fromShards.primaries.count == 3 && fromShards.ranges.allSatisfy { $0.replicas.count == 1 })
        #expect(Set(fromShards.ranges.flatMap { [$0.primary] + $0.replicas }) == Set(cluster.nodes.map { RedisConfiguration.Endpoint.tcp(host: "127.0.0.1", port: $0.port) }))

        var connections: [RedisConfiguration.Endpoint: RedisClient] = [:]
        for node in cluster.nodes { connections[.tcp(host: "127.0.0.1", port: node.port)] = try RedisClient(configuration: node.configuration()) }
        defer { for connection in connections.values { connection.close() } }
        for index in 0..<60 {
            let key = "route:{breaker-\(index)}:state"
            let owner = try #require(fromShards.primary(forKey: key))
            _ = try await connections[owner]!.send("SET", key, "1")
            // Any other node answers MOVED naming the owner; the message also says the server is a cluster node.
            let other = try #require(connections.keys.first { $0 != owner })
            do {
                _ = try await connections[other]!.send("GET", key)
                Issue.record("\(other) served \(key), which the map gives to \(owner)")
            } catch let error as RedisError {
                let redirect = try #require(ClusterRedirect(errorMessage: error.message))
                #expect(redirect.kind == .moved && redirect.endpoint == owner && redirect.slot == ClusterSlot.of(key: key))
                #expect(error.message.contains("redis+cluster://"), "\(error.message)")
                #expect(error.mayBeRetried)
            }
        }
    } }

    @Test("replies that are not slot maps are refused with a typed error")
    func badSlotMaps() {
        let bad: [RESPValue] = [
            .integer(1), .array([.integer(1)]), .array([.array([.bulk(Array("slots".utf8))])]),
            .array([.array([.integer(0), .integer(20000), .array([.bulk(Array("h".utf8)), .integer(1)])])]),
            .array([.array([.integer(5), .integer(1), .array([.bulk(Array("h".utf8)), .integer(1)])])]),
        ]
        for reply in bad {
            #expect(throws: RedisError.self) { try ClusterSlotMap(slots: reply) }
            #expect(throws: RedisError.self) { try ClusterSlotMap(shards: reply) }
        }
        let overlapping = RESPValue.array([
            .array([.integer(0), .integer(100), .array([.bulk(Array("a".utf8)), .integer(1)])]),
            .array([.integer(100), .integer(200), .array([.bulk(Array("b".utf8)), .integer(1)])]),
        ])
        #expect(throws: RedisError.self) { try ClusterSlotMap(slots: overlapping) }
    }
}
