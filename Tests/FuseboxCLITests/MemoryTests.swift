import Foundation
import FuseboxTestKit
import Hiredis
import Testing
import TestKinds

/// An instance's memory while Redis is away: it must level off, whatever the call rate and however long the
/// outage, because what it holds is counts (one batch per breaker and version), not calls or attempts.
@Suite("Memory while Redis is away", .kind(.integration), .timeLimit(.minutes(8)))
struct MemoryTests {
    /// One line of `fusebox load --stats`.
    struct Sample: Decodable {
        var elapsed: Double
        var calls: Int
        var rejected: Int
        var rss_kb: Int
        var rejecting: [Int]
        var done: Bool?
        var breaker_calls: [Int]?
    }

    static func samples(_ path: String) -> [Sample] {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { try? JSONDecoder().decode(Sample.self, from: Data($0.utf8)) }
    }

    /// Starts `fusebox load` on `url`: 1,000 calls/s over 10 breakers for `seconds`.
    static func load(_ url: String, seconds: Int, stats: String) throws -> ChildProcess {
        try ChildProcess(
            executable: fuseboxExecutable,
            arguments: ["load", "--redis", url, "--breakers", "10", "--rate", "1000", "--seconds", String(seconds), "--stats", stats],
            outputPath: stats + ".log", environment: ["PATH": "/usr/bin:/bin"])
    }

    /// The resident size's growth after the first 10 s (KB), and the figures for the report.
    static func growth(_ samples: [Sample], until end: Int) -> (kilobytes: Int, text: String) {
        let settled = samples.first { $0.elapsed >= 10 }?.rss_kb ?? 0
        let peak = samples.filter { $0.elapsed >= 10 && $0.elapsed <= Double(end) }.map(\.rss_kb).max() ?? 0
        return (peak - settled, "RSS \(settled) KB at 10 s, at most \(peak) KB until \(end) s")
    }

    @Test("5 minutes unreachable and 5 minutes frozen at 1,000 calls/s over 10 breakers: RSS grows < 2 MB after the first 10 s; every outcome is counted once after")
    func memoryWhileRedisAway() async throws {
        let outage = 300
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-memory-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let unreachableStats = directory.appendingPathComponent("unreachable.jsonl").path
        let frozenStats = directory.appendingPathComponent("frozen.jsonl").path

        try await RedisServerProcess.with { unreachable in
            try await RedisServerProcess.with { frozen in
                // One server is stopped (its port refuses connections), the other frozen (connections hang): both for
                // the whole outage, then back, and the load runs 15 s more so that what it held is written.
                await unreachable.stop()
                let away = try Self.load(unreachable.url, seconds: outage + 15, stats: unreachableStats)
                let stuck = try Self.load(frozen.url, seconds: outage + 15, stats: frozenStats)
                defer {
                    away.kill()
                    stuck.kill()
                }
                try await Task.sleep(for: .seconds(2))
                frozen.pause()
                try await Task.sleep(for: .seconds(outage - 2))
                frozen.resume()
                try await unreachable.restart()
                #expect(await away.waitForExit(upTo: .seconds(60)) == 0)
                #expect(await stuck.waitForExit(upTo: .seconds(60)) == 0)

                for (name, stats, server) in [("unreachable", unreachableStats, unreachable), ("frozen", frozenStats, frozen)] {
                    let samples = Self.samples(stats)
                    let last = try #require(samples.last, "\(name): no samples")
                    #expect(last.done == true, "\(name): the load did not finish")
                    #expect(samples.count >= outage, "\(name): \(samples.count) samples")
                    let (growth, figures) = Self.growth(samples, until: outage)
                    #expect(growth < 2048, "\(name): \(figures)")
                    #expect(last.rejected == 0, "\(name): \(last.rejected) calls rejected (the local fallback admits them)")

                    // Every call the load made is in Redis' totals, once.
                    let redis = try RedisClient(configuration: server.configuration())
                    var counted = 0
                    for index in 0..<10 {
                        counted += Int(try await redis.send("HGET", "fusebox:{load-\(index)}:totals", "calls").string ?? "0") ?? 0
                    }
                    #expect(counted == last.calls, "\(name): \(counted) calls in Redis, \(last.calls) made")
                    print("fault-figure | Redis \(name) for \(outage) s, 1,000 calls/s over 10 breakers | \(figures) (growth \(growth) KB); \(counted) of \(last.calls) calls counted after")
                }
            }
        }
    }
}
