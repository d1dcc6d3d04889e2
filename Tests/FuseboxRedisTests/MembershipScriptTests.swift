import FuseboxTestKit
import Hiredis
import Testing
import TestKinds

@testable import FuseboxRedis

/// lua/members.lua on its own: the counts it answers, and that each key lives as long as its longest entry.
@Suite("Membership script", .kind(.integration))
struct MembershipScriptTests {
    @Test("beats count senders and instances; a key's expiry only moves later; leave and expiry drop a sender")
    func beatsLeavesAndExpiry() async throws {
        let redis = try RedisClient(configuration: try await SharedServer.get().configuration())
        let namespace = uniqueNamespace("members")
        let keys = ["\(namespace):{members}:senders", "\(namespace):{members}:instances"]
        func beat(_ sender: String, _ instance: String, ttl: Int) async throws -> [Int] {
            try await redis.run(LuaScript.members, keys: keys, arguments: ["beat", sender, instance, String(ttl)]).array?.compactMap(\.int) ?? []
        }
        func expiry() async throws -> [Int] {
            var left: [Int] = []
            for key in keys { left.append(try await redis.send("PTTL", key).int ?? -99) }
            return left
        }

        // Times long enough for a loaded machine: only the entry of `c` is meant to expire.
        #expect(try await beat("a:1", "a", ttl: 30000) == [1, 1])
        let first = try await expiry()
        #expect(first.allSatisfy { (1...30000).contains($0) }, "each key expires with its entry: \(first)")
        #expect(try await beat("b:1", "b", ttl: 120_000) == [2, 2])
        #expect(try await expiry().allSatisfy { $0 > 60000 })
        // A shorter beat after a longer one leaves the key's expiry where the longer one put it.
        #expect(try await beat("a:1", "a", ttl: 30000) == [2, 2])
        #expect(try await expiry().allSatisfy { $0 > 60000 })

        let leave = try await redis.run(LuaScript.members, keys: keys, arguments: ["leave", "b:1", "b", "1"]).array?.compactMap(\.int)
        #expect(leave == [1, 2], "the instance stays until its entry expires")

        #expect(try await beat("c:1", "c", ttl: 1) == [2, 3])
        try await Task.sleep(for: .milliseconds(20))
        #expect(try await beat("a:1", "a", ttl: 30000) == [1, 2], "c's entries have expired")

        await #expect(throws: RedisError.self) {
            try await redis.run(LuaScript.members, keys: keys, arguments: ["beat", "a:1", "a", "0"])
        }
    }
}
