#if FUSEBOX_HTTP
import AsyncHTTPClient
import Foundation
import Fusebox
import FuseboxRedis
import FuseboxTestKit
import Hiredis
import NIOCore
import Testing
import TestKinds

/// A running `fusebox serve`, its address read from what it prints.
final class ServeProcess: Sendable {
    let child: ChildProcess
    let log: String
    let base: String

    init(_ arguments: [String], environment: [String: String] = [:]) async throws {
        log = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-serve-\(UUID().uuidString).log").path
        child = try ChildProcess(
            executable: fuseboxExecutable, arguments: ["serve", "--port", "0"] + arguments, outputPath: log,
            environment: ["NO_COLOR": "1", "PATH": "/usr/bin:/bin"].merging(environment) { $1 })
        var found: String?
        for _ in 0..<1000 {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("dashboard: ") }) {
                found = String(line.dropFirst("dashboard: ".count).dropLast())
                break
            }
            guard child.isRunning else { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        guard let found else {
            child.kill()
            throw RedisServerProcess.Failure(description: "fusebox serve did not start: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        }
        base = found
    }

    var output: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    func stop() async -> Int32? {
        child.send(SIGTERM)
        let status = await child.waitForExit(upTo: .seconds(10))
        if status == nil { child.kill() }
        try? FileManager.default.removeItem(atPath: log)
        return status
    }
}

/// What the server has done so far: commands (inside scripts too), script calls, CPU seconds.
func redisCost(_ client: RedisClient) async throws -> (commands: Int, cpu: Double, scripts: Int) {
    let counts = try await commandCounts(client)
    return (counts.values.reduce(0, +), try await cpuSeconds(client), (counts["evalsha"] ?? 0) + (counts["eval"] ?? 0))
}

@Suite("fusebox serve", .kind(.alone), .timeLimit(.minutes(3)))
struct ServeTests {
    @Test("the event stream carries a trip made by another process within a second, and the routes show it")
    func liveTrip() async throws {
        try await RedisServerProcess.with { server in
            #expect(try await fusebox(["run", "payments", "--redis", server.url, "--consecutive-failures", "1", "--", "true"]).status == 0)
            let serve = try await ServeProcess(["--redis", server.url])
            #expect(serve.output.contains("no token: listening on loopback only"))
            let http = HTTPClient(eventLoopGroupProvider: .singleton)
            do {
                let response = try await http.execute(HTTPClientRequest(url: serve.base + "/events"), timeout: .seconds(5))
                #expect(response.status == .ok)
                #expect(response.headers.first(name: "content-type") == "text/event-stream")
                var body = response.body.makeAsyncIterator()
                var received = ""
                while !received.contains(": connected") { received += String(buffer: try #require(await body.next())) }
                let tripped = ContinuousClock.now
                let trip = try await fusebox(["run", "payments", "--redis", server.url, "--consecutive-failures", "1", "--", "false"])
                #expect(trip.status == 1)
                while !received.contains("event: transition") { received += String(buffer: try #require(await body.next())) }
                let seen = ContinuousClock.now - tripped
                // The bound covers the trip's own process start (about 0.1 s) and the message: within 1 s.
                #expect(seen < .seconds(1), "transition seen \(seen) after the trip started")
                #expect(received.contains(#""name":"payments""#) && received.contains(#""state":"open""#) && received.contains(#""from":"closed""#))
                print("serve-figure | trip to event-stream message | \(seen) (including the fusebox run process)")

                let list = try await http.execute(HTTPClientRequest(url: serve.base + "/circuit-breakers"), timeout: .seconds(5))
                let text = String(buffer: try await list.body.collect(upTo: 1 << 20))
                #expect(text.contains(#""open":1"#))
            } catch {
                Issue.record(error)
            }
            try await http.shutdown()
            #expect(await serve.stop() == 0)
        }
    }

    @Test("without a token it refuses a host that is not loopback; a bad port or Redis URL is a usage error")
    func refusals() async throws {
        let dead = "redis://127.0.0.1:\(try RedisServerProcess.freePort())"
        let open = try await fusebox(["serve", "--host", "0.0.0.0", "--port", "0", "--redis", dead])
        #expect(open.status == 64)
        #expect(open.output.contains("refusing to serve on 0.0.0.0 without a token"))
        let port = try await fusebox(["serve", "--port", "70000", "--redis", dead])
        #expect(port.status == 64)
        #expect(port.output.contains("--port 70000"))
        let down = try await fusebox(["serve", "--port", "0", "--redis", dead])
        #expect(down.status == 69)
        let url = try await fusebox(["serve", "--redis", "redis://host:notaport"])
        #expect(url.status == 64)
    }

    @Test("200 concurrent scrapes and dashboard clients: every request answered; what a scrape costs Redis")
    func underLoad() async throws {
        try await RedisServerProcess.with { server in
            // 100 breakers made by one instance, then served fleet-wide.
            let redis = try RedisClient(configuration: server.configuration())
            let adapter = try DistributedAdapter(options: DistributedOptions(redis: server.configuration()))
            let registry = BreakerRegistry(adapter: adapter)
            for index in 0..<100 { try await registry.breaker("svc-\(index)").run { () } }
            await adapter.flush()
            let serve = try await ServeProcess(["--redis", server.url, "--token", "load-token"])
            let http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(connectionPool: .init(idleTimeout: .seconds(30), concurrentHTTP1ConnectionsPerHostSoftLimit: 250)))
            let before = try await redisCost(redis)
            let started = ContinuousClock.now
            let failures = try await withThrowingTaskGroup(of: Int.self) { group in
                // 20 dashboards: an open event stream each, plus their periodic list reads.
                for _ in 0..<20 {
                    group.addTask {
                        let events = try await http.execute(HTTPClientRequest(url: serve.base + "/events"), timeout: .seconds(10))
                        var failed = events.status == .ok ? 0 : 1
                        var body = events.body.makeAsyncIterator()
                        _ = try await body.next()
                        for _ in 0..<5 {
                            let list = try await http.execute(HTTPClientRequest(url: serve.base + "/circuit-breakers"), timeout: .seconds(10))
                            let bytes = try await list.body.collect(upTo: 8 << 20)
                            if list.status != .ok || !String(buffer: bytes).contains(#""total_breakers":100"#) { failed += 1 }
                        }
                        return failed
                    }
                }
                // 180 scrapers, five scrapes each.
                for _ in 0..<180 {
                    group.addTask {
                        var failed = 0
                        for _ in 0..<5 {
                            let scrape = try await http.execute(HTTPClientRequest(url: serve.base + "/metrics"), timeout: .seconds(10))
                            let bytes = try await scrape.body.collect(upTo: 8 << 20)
                            if scrape.status != .ok || !String(buffer: bytes).contains("fusebox_breakers{state=\"closed\"} 100") { failed += 1 }
                        }
                        return failed
                    }
                }
                return try await group.reduce(0, +)
            }
            let elapsed = ContinuousClock.now - started
            let after = try await redisCost(redis)
            #expect(failures == 0)
            let requests = 20 * 5 + 180 * 5
            let commands = after.commands - before.commands - 2  // the two INFO commands of the first reading
            print("serve-figure | \(requests) reads (900 scrapes, 100 lists) by 200 clients over 100 breakers | \(elapsed); "
                + "\(commands) Redis commands (\(after.scripts - before.scripts) script calls), "
                + String(format: "%.2f commands and %.1f µs of Redis CPU per request", Double(commands) / Double(requests), (after.cpu - before.cpu) * 1e6 / Double(requests)))
            try await http.shutdown()
            #expect(await serve.stop() == 0)
        }
    }
}

#endif
