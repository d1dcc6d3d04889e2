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

    /// Every script the module carries, with the file in lua/ it is generated from (`make lua`).
    static let scripts: [(file: String, script: RedisScript)] = [
        ("breaker", BreakerScript.script), ("lease", LeaseScript.script), ("members", MembersScript.script),
        ("override", OverrideScript.script),
    ]

    @Test("each script in lua/ and the copy the module carries are the same")
    func scriptCopyMatches() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        for (name, script) in Self.scripts {
            let file = try String(contentsOf: root.appendingPathComponent("lua/\(name).lua"), encoding: .utf8)
            #expect(file == script.source, "lua/\(name).lua changed: run `make lua`")
        }
    }

    @Test("the SHA-1 the module carries for each script is the one Redis names it by")
    func scriptSHAMatches() async throws {
        let redis = try RedisClient(configuration: try await SharedServer.get().configuration())
        for (name, script) in Self.scripts {
            let loaded = try await redis.send("SCRIPT", "LOAD", script.source).string
            #expect(loaded != nil && loaded == script.sha1, "lua/\(name).lua: run `make lua`")
        }
    }
}
