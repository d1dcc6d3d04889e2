import Foundation
import Fusebox
import FuseboxTestKit
import Hiredis
import Testing
import TestKinds

@testable import FuseboxRedis

@Suite("Conformance: the distributed adapter against Redis", .kind(.integration), .timeLimit(.minutes(2)))
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

    @Test("a registry made from configuration runs the adapter it names, local or distributed, with its store-down policy")
    func registryFromConfiguration() async throws {
        let local = try BreakerRegistry.make(configuration: FuseboxConfiguration(adapter: .local))
        #expect(local.adapter.kind == .local)
        var configuration = FuseboxConfiguration(adapter: .distributed, redisURL: try await SharedServer.get().url, namespace: "registry-test")
        configuration.storeDownPolicy = .failClosed
        let distributed = try BreakerRegistry.make(configuration: configuration)
        let adapter = try #require(distributed.adapter as? DistributedAdapter<ContinuousClock>)
        #expect(adapter.kind == .distributed && adapter.options.whenUnavailable == .failClosed)
    }

    /// Every script the module carries, with the file in lua/ it is embedded from.
    static let scripts: [(file: String, script: RedisScript)] = [
        ("breaker", LuaScript.breaker), ("lease", LuaScript.lease), ("members", LuaScript.members),
        ("override", LuaScript.override),
    ]

    @Test("each script the module runs is the file in lua/, byte for byte")
    func scriptIsTheFile() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        for (name, script) in Self.scripts {
            let file = try String(contentsOf: root.appendingPathComponent("lua/\(name).lua"), encoding: .utf8)
            #expect(file == script.source, "lua/\(name).lua and the embedded script differ")
        }
    }

    @Test("the SHA-1 the client runs each script by is the one Redis names it by")
    func scriptSHAMatches() async throws {
        let redis = try RedisClient(configuration: try await SharedServer.get().configuration())
        for (name, script) in Self.scripts {
            let loaded = try await redis.send("SCRIPT", "LOAD", script.source).string
            #expect(loaded == script.sha1, "lua/\(name).lua: SCRIPT LOAD answered \(loaded ?? "nothing"), the client uses \(script.sha1)")
        }
    }
}
