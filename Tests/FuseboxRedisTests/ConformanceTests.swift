import Foundation
import Fusebox
import FuseboxTestKit
import Hiredis
import Testing

@testable import FuseboxRedis

@Suite("Conformance: the distributed adapter against Redis", .timeLimit(.minutes(2)))
struct DistributedConformanceTests {
    @Test("scenario", arguments: ConformanceScenario.all.map(\.name))
    func scenario(name: String) async throws {
        let scenario = try #require(ConformanceScenario.all.first { $0.name == name })
        let subject = try DistributedSubject(server: try await SharedServer.get())
        let problems = try await scenario.run(against: subject, breakerName: "conformance")
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
    }

    @Test("1,000 concurrent tasks give exact totals")
    func concurrentTotals() async throws {
        let subject = try DistributedSubject(server: try await SharedServer.get())
        let problems = try await ConformanceChecks.concurrentTotals(against: subject, breakerName: "concurrent")
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
    }

    @Test("lua/breaker.lua and the copy the module carries are the same")
    func scriptCopyMatches() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let file = try String(contentsOf: root.appendingPathComponent("lua/breaker.lua"), encoding: .utf8)
        #expect(file == BreakerScript.source, "lua/breaker.lua changed: run `make lua`")
    }

    @Test("the SHA-1 the module carries is the one Redis names the script by")
    func scriptSHAMatches() async throws {
        let redis = try RedisClient(configuration: try await SharedServer.get().configuration())
        let loaded = try await redis.send("SCRIPT", "LOAD", BreakerScript.source).string
        #expect(loaded != nil && loaded == BreakerScript.script.sha1, "run `make lua`")
    }
}
