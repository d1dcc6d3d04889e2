import Foundation
import Fusebox
import FuseboxRedis
import FuseboxTestKit
import Hiredis
import Testing
import TestKinds

/// The repository's root.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// Every command line the README and Docs show: the lines of ```sh blocks, and lines after a `$ ` prompt in any
/// block; comments after two spaces and a `#` are dropped.
func documentedCommandLines() throws -> [(file: String, line: String)] {
    let docs = try FileManager.default.contentsOfDirectory(atPath: repositoryRoot.appendingPathComponent("Docs").path)
        .filter { $0.hasSuffix(".md") }.sorted().map { "Docs/\($0)" }
    var lines: [(String, String)] = []
    for file in ["README.md"] + docs {
        let text = try String(contentsOf: repositoryRoot.appendingPathComponent(file), encoding: .utf8)
        var fence: String?
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let line = String(raw)
            if line.hasPrefix("```") {
                fence = fence == nil ? String(line.dropFirst(3)) : nil
                continue
            }
            guard let language = fence else { continue }
            var command: String?
            if line.hasPrefix("$ ") {
                command = String(line.dropFirst(2))
            } else if ["sh", "bash", "shell"].contains(language), !line.trimmingCharacters(in: .whitespaces).isEmpty {
                command = line
            }
            guard var command else { continue }
            if let comment = command.range(of: #"\s{2,}# .*$"#, options: .regularExpression) { command.removeSubrange(comment) }
            lines.append((file, command.trimmingCharacters(in: .whitespaces)))
        }
    }
    return lines
}

@Suite("Every documented command line", .kind(.integration), .timeLimit(.minutes(3)))
struct DocumentedCommandsTests {
    /// Lines that a test here does not start, each with what runs it: the lines that build and run everything.
    static let runElsewhere: [String: String] = [
        "make demo": "CI and the README's first step; `fusebox demo --short --compare` is tested in CLITests",
        "make test": "CI itself (.ci/run)",
        "make bench": "the benchmark package: minutes of release builds and measuring, not a test",
        "swift run -c release --package-path Benchmarks fusebox-bench scale --seconds 20": "make bench (with --seconds 5)",
        "swift run -c release --package-path Benchmarks fusebox-bench --json": "make bench",
        "swift run -c release --package-path Benchmarks fusebox-bench --redis redis://127.0.0.1:6380": "needs a Redis the reader runs; the same command with a private server is in make bench",
        "swift build -c release --package-path Benchmarks --product hotpath-profile": "make bench builds the Benchmarks package",
        "stunnel4 fusebox-tunnel.conf": "TLSTunnelTests runs it as written, beside the documented configuration (the test's addresses and paths in it)",
        "valgrind --tool=callgrind Benchmarks/.build/release/hotpath-profile coarse 200000": "a profiling recipe; valgrind is not a test dependency",
    ]

    @Test("the fusebox and redis-cli lines of the README and Docs run as written, against a private server")
    func documentedLinesRun() async throws {
        #if FUSEBOX_HTTP
        let lines = try documentedCommandLines()
        #else
        // A sanitizer build has no `fusebox serve`: its lines (and the curl lines that need it) run in `make test`.
        let lines = try documentedCommandLines().filter { !$0.line.hasPrefix("curl ") && !$0.line.hasPrefix("fusebox serve") }
        #endif
        let run = lines.filter { Self.runElsewhere[$0.line] == nil }
        #expect(run.count >= 15, "only \(run.count) documented lines found: is the extraction broken?")
        // The list above names exactly the documented lines that are not run here: none is left out silently.
        let elsewhere = Set(lines.map(\.line)).subtracting(run.map(\.line))
        #expect(elsewhere == Set(Self.runElsewhere.keys), "documented lines not run here changed: \(elsewhere.symmetricDifference(Self.runElsewhere.keys))")
        for (file, line) in run {
            let program = line.split(separator: " ").first.map(String.init) ?? ""
            #expect(["fusebox", "redis-cli", "curl"].contains(program), "\(file): `\(line)` is neither a fusebox, a redis-cli nor a curl line: add how to run it")
        }

        try await RedisServerProcess.with { server in
            // A place to run them: `fusebox` and a `redis-cli` that reaches the private server on PATH, the
            // environment's Redis URL pointing at it, and the ./export.sh the examples run.
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-docs-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let bin = directory.appendingPathComponent("bin")
            try FileManager.default.createDirectory(at: bin, withIntermediateDirectories: true)
            // The documented port 8080 becomes a free one: `fusebox serve --port 8080` binds port 0, and curl's
            // http://127.0.0.1:8080 reaches the `fusebox serve` started here.
            try executable(
                bin.appendingPathComponent("fusebox"),
                "#!/bin/bash\nargs=(); for a in \"$@\"; do [ \"$a\" = 8080 ] && a=0; args+=(\"$a\"); done; exec '\(fuseboxExecutable)' \"${args[@]}\"\n")
            try executable(bin.appendingPathComponent("redis-cli"), "#!/bin/sh\nexec /usr/bin/redis-cli -p \(server.port) \"$@\"\n")
            let token = "docs-token"
            #if FUSEBOX_HTTP
            let serve = try await ServeProcess(["--redis", server.url, "--token", token])
            defer { serve.child.kill() }
            let servedPort = try #require(serve.base.split(separator: ":").last)
            try executable(
                bin.appendingPathComponent("curl"),
                "#!/bin/bash\nargs=(); for a in \"$@\"; do args+=(\"${a//127.0.0.1:8080/127.0.0.1:\(servedPort)}\"); done; exec /usr/bin/curl -sS --noproxy '*' \"${args[@]}\"\n")
            #endif
            try executable(directory.appendingPathComponent("export.sh"), "#!/bin/sh\nexit 0\n")

            // The breaker the examples name, made by an instance as an application would.
            var options = DistributedOptions(redis: try RedisConfiguration(url: server.url))
            options.instanceID = "docs"
            let adapter = try DistributedAdapter(options: options)
            let registry = BreakerRegistry(adapter: adapter)
            var policy = BreakerPolicy()
            policy.consecutiveFailureThreshold = 2
            let payments = try registry.breaker("payments", policy: policy)
            try await payments.acquireAsync().success()
            try await payments.acquireAsync().failure(CLIDocsError())
            try await payments.acquireAsync().failure(CLIDocsError())
            await adapter.flush()

            for (file, line) in run {
                let log = directory.appendingPathComponent("out-\(UUID().uuidString).log").path
                let child = try ChildProcess(
                    executable: "/bin/sh", arguments: ["-c", "cd '\(directory.path)' && exec \(line)"], outputPath: log,
                    environment: [
                        "PATH": "\(bin.path):/usr/bin:/bin", "FUSEBOX_REDIS_URL": server.url, "NO_COLOR": "1", "FUSEBOX_ADMIN_TOKEN": token,
                    ])
                // `watch`, `SUBSCRIBE`, `serve` and an event stream run until interrupted: they pass when they say
                // they listen and still run.
                if line.contains("fusebox watch") || line.contains("SUBSCRIBE") || line.contains("fusebox serve") || line.contains("/events") {
                    func printed() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
                    let listening = await poll(within: .seconds(15)) {
                        printed().contains("watching fusebox:transitions") || printed().contains("subscribe")
                            || printed().contains("dashboard: http://") || printed().contains(": connected")
                    }
                    #expect(listening && child.isRunning, "\(file): `\(line)` printed \(printed())")
                    child.kill()
                } else {
                    let status = await child.waitForExit(upTo: .seconds(30))
                    let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                    #expect(status == 0, "\(file): `\(line)` exited \(String(describing: status)): \(output)")
                    #expect(!output.isEmpty || line.contains("run "), "\(file): `\(line)` printed nothing")
                    // redis-cli exits 0 after an error reply: the reply says it.
                    #expect(!output.hasPrefix("ERR") && !output.contains("WRONGTYPE"), "\(file): `\(line)` answered \(output)")
                    #expect(!output.contains(#""error":"#), "\(file): `\(line)` answered \(output)")
                }
            }
        }
    }
}

struct CLIDocsError: Error {}

private func executable(_ url: URL, _ text: String) throws {
    try ChildProcess.writeExecutable(url.path, text)
}

@Suite("The README's figures", .kind(.unit))
struct ReadmeFiguresTests {
    /// The README quotes measured figures in its cost paragraph; each must be one Docs/performance.md holds now (a
    /// figure measured again there and not here, or the other way round, fails this).
    @Test("every decimal figure of the README's cost paragraph is on Docs/performance.md")
    func figuresMatch() throws {
        let readme = try String(contentsOf: repositoryRoot.appendingPathComponent("README.md"), encoding: .utf8)
        let performance = try String(contentsOf: repositoryRoot.appendingPathComponent("Docs/performance.md"), encoding: .utf8)
        let start = try #require(readme.range(of: "A guarded call costs"))
        let paragraph = readme[start.lowerBound...].prefix { $0 != "[" }
        let figures = paragraph.matches(of: /\d+\.\d+/).map { String($0.output) }
        #expect(figures.count >= 6, "figures found: \(figures)")
        for figure in figures {
            #expect(performance.contains(figure), "README quotes \(figure), which Docs/performance.md does not hold")
        }
    }
}

/// The README's table of what `make demo` shows, against a run of the command it runs (`fusebox demo --compare`).
@Suite("The README's demo table", .kind(.alone), .timeLimit(.minutes(3)))
struct ReadmeDemoTests {
    typealias Row = (label: String, distributed: Int, local: Int)

    /// The comparison table after its title line, in the README or in the demo's output.
    static func comparison(in text: String) throws -> [Row] {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let title = try #require(lines.firstIndex(of: "Shared breaker vs one breaker per process"), "no comparison table")
        return try lines[(title + 2)...].prefix(3).map { line in
            let words = line.split(separator: " ")
            let distributed = try #require(words.dropLast().last.flatMap { Int($0) }, "\(line)")
            let local = try #require(words.last.flatMap { Int($0) }, "\(line)")
            return (words.dropLast(2).joined(separator: " "), distributed, local)
        }
    }

    @Test("the labels and the probe counts are what a run prints; the reached calls are in the README's ranges; the shared breaker lets fewer through")
    func demoTable() async throws {
        let readme = try String(contentsOf: repositoryRoot.appendingPathComponent("README.md"), encoding: .utf8)
        let quoted = try Self.comparison(in: readme)
        let ranges = try #require(readme.firstMatch(of: /(\d+)–(\d+)\s+with the shared breaker and (\d+)–(\d+) with one breaker per process/))
        let shared = try #require(Int(ranges.output.1))...(try #require(Int(ranges.output.2)))
        let perProcess = try #require(Int(ranges.output.3))...(try #require(Int(ranges.output.4)))
        #expect(quoted.count == 3 && shared.contains(quoted[0].distributed) && perProcess.contains(quoted[0].local), "\(quoted)")

        let run = try await fusebox(["demo", "--compare"], limit: .seconds(120))
        #expect(run.status == 0, "\(run.output)")
        let printed = try Self.comparison(in: run.output)
        print("demo-figure | \(printed.map { "\($0.label): \($0.distributed) / \($0.local)" }.joined(separator: "; "))")
        #expect(printed.map(\.label) == quoted.map(\.label))
        for (row, expected) in zip(printed.dropFirst(), quoted.dropFirst()) {
            #expect(row.distributed == expected.distributed && row.local == expected.local, "\(row.label): printed \(row), README \(expected)")
        }
        let reached = try #require(printed.first)
        #expect(reached.distributed < reached.local, "the shared breaker let \(reached.distributed) calls through, one per process \(reached.local)")
    }
}
