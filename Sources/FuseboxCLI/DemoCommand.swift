import ArgumentParser
import Foundation
import Fusebox
import FuseboxProcess
import Hiredis

/// `fusebox demo`: N instance processes call a failing dependency through one breaker; the summary shows
/// what sharing the breaker saves.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run N instances of a service through an outage, sharing one breaker (or not, with --adapter local).",
        discussion: "With no --redis, a private redis-server is started on a free port and stopped after.")

    @Option(name: .long, help: "distributed (one shared breaker) or local (one per process).") var adapter = "distributed"
    @Option(name: .long, help: "How many instance processes.") var instances = 3
    @Option(name: .long, help: "Redis URL; default: a private redis-server.") var redis: String?
    @Flag(name: .long, help: "Run both adapters, one after the other, and compare.") var compare = false
    @Flag(name: .long, help: "A 4-second schedule (for tests).") var short = false

    func run() async throws {
        try await reportingErrors {
            guard (1...16).contains(instances) else { throw CLIError.usage("--instances must be 1…16") }
            let kinds: [AdapterKind] = compare ? [.distributed, .local] : [try AdapterKind(rawValue: adapter).orThrow(CLIError.usage("--adapter must be distributed or local"))]
            var server: RedisServerProcess?
            var url = redis
            if url == nil && kinds.contains(.distributed) {
                do {
                    server = try await RedisServerProcess.start()
                } catch {
                    throw CLIError.unavailable("could not start a private redis-server: \(error)")
                }
                url = server!.url
                print("started a private redis-server at \(url!)")
            }
            defer { server?.kill() }
            if let url, redis != nil {
                let connection = try RedisClient(url: url)
                do { _ = try await connection.send("PING") } catch {
                    throw CLIError.unavailable("Redis at \(url.redactingPassword) is unavailable: \(error)")
                }
            }

            let schedule = short
                ? Schedule(healthy: .milliseconds(800), outage: .milliseconds(2000), recovery: .milliseconds(1200))
                : Schedule(healthy: .milliseconds(2500), outage: .milliseconds(5000), recovery: .milliseconds(4500))
            let breakMs: Int64 = short ? 400 : 1200
            var results: [(AdapterKind, [InstanceStats])] = []
            for kind in kinds {
                results.append((kind, try await runFleet(kind, url: url, schedule: schedule, breakMs: breakMs)))
            }
            for (kind, stats) in results { print(summary(kind, stats, schedule: schedule)) }
            if results.count == 2 { print(comparison(results[0].1, results[1].1)) }
            await server?.stop()
        }
    }

    private func runFleet(_ kind: AdapterKind, url: String?, schedule: Schedule, breakMs: Int64) async throws -> [InstanceStats] {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-demo-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let namespace = "demo\(UInt16.random(in: 0...UInt16.max))"
        let startAt = Int64(Date().timeIntervalSince1970 * 1000) + 700
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        print("\n\(Style.standardOutput.bold("\(kind.rawValue) adapter")): \(instances) instances; dependency healthy for \(formatDuration(schedule.healthy)), failing for \(formatDuration(schedule.outage)), then healthy again")
        var children: [ChildProcess] = []
        for index in 0..<instances {
            var arguments = [
                "demo-instance", "--index", String(index), "--adapter", kind.rawValue, "--namespace", namespace,
                "--start-at", String(startAt), "--schedule", schedule.text, "--break-ms", String(breakMs),
                "--stats", directory.appendingPathComponent("\(index).json").path,
            ]
            if let url { arguments += ["--redis", url] }
            children.append(try ChildProcess(executable: executable, arguments: arguments, outputPath: directory.appendingPathComponent("\(index).log").path))
        }
        defer { for child in children { child.kill() } }
        // The fleet's dashboard while the distributed run lasts: `fusebox serve` on a free loopback port.
        var dashboard: ChildProcess?
        if kind == .distributed, let url {
            let log = directory.appendingPathComponent("serve.log").path
            dashboard = try? ChildProcess(
                executable: executable, arguments: ["serve", "--redis", url, "--namespace", namespace, "--port", "0"], outputPath: log)
            for _ in 0..<300 {
                let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("dashboard: ") }) {
                    print("\(line) (the fleet's live dashboard, while this run lasts)")
                    flushOutput()
                    break
                }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        defer { dashboard?.kill() }

        let isTerminal = isatty(STDOUT_FILENO) == 1
        let deadline = ContinuousClock.now + schedule.total + .seconds(10)
        var lastPrinted = ContinuousClock.now - .seconds(10)
        while children.contains(where: \.isRunning) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(250))
            let stats = read(directory)
            if isTerminal {
                print("\u{1B}[\(instances + 2)A\u{1B}[J", terminator: "")
                print(liveTable(stats))
            } else if ContinuousClock.now - lastPrinted >= .seconds(2) {
                lastPrinted = .now
                print(stats.sorted { $0.index < $1.index }.map { "#\($0.index) \($0.phase) \($0.state) calls=\($0.calls) rejected=\($0.rejected)" }.joined(separator: " | "))
                flushOutput()
            }
            if isTerminal { flushOutput() }
        }
        for child in children where child.isRunning {
            throw CLIError.failed("instance \(child.processIdentifier) did not finish; see \(directory.path)")
        }
        let failed = children.enumerated().filter { $0.element.terminationStatus != 0 }
        if let (index, _) = failed.first {
            let log = (try? String(contentsOf: directory.appendingPathComponent("\(index).log"), encoding: .utf8)) ?? ""
            throw CLIError.failed("instance \(index) failed: \(log.split(separator: "\n").last ?? "no output")")
        }
        return read(directory).sorted { $0.index < $1.index }
    }

    private func read(_ directory: URL) -> [InstanceStats] {
        (0..<instances).compactMap { index in
            guard let data = FileManager.default.contents(atPath: directory.appendingPathComponent("\(index).json").path) else { return nil }
            return try? JSONDecoder().decode(InstanceStats.self, from: data)
        }
    }

    private func liveTable(_ stats: [InstanceStats]) -> String {
        let style = Style.standardOutput
        let rows = (0..<instances).map { index -> [String] in
            guard let s = stats.first(where: { $0.index == index }) else { return ["#\(index)", "starting", "", "", "", ""] }
            let state = BreakerState(rawValue: s.state).map(style.state) ?? s.state
            return ["#\(index)", s.phase, state, String(s.calls), String(s.reached), String(s.rejected)]
        }
        return renderTable(["INSTANCE", "DEPENDENCY", "BREAKER", "CALLS", "REACHED", "REJECTED"], rows)
    }

    private func summary(_ kind: AdapterKind, _ stats: [InstanceStats], schedule: Schedule) -> String {
        let style = Style.standardOutput
        let rows = stats.map { s in
            [
                "#\(s.index)", s.firstOpenAfterMs.map { String(format: "%.2f s", Double($0) / 1000) } ?? "never",
                String(s.reachedDuringOutage), String(s.rejectedDuringOutage), "\(s.probesDuringOutage) / \(s.probesDuringRecovery)",
            ]
        }
        let reached = stats.reduce(0) { $0 + $1.reachedDuringOutage }
        let rejected = stats.reduce(0) { $0 + $1.rejectedDuringOutage }
        let probesOutage = stats.reduce(0) { $0 + $1.probesDuringOutage }
        let probesRecovery = stats.reduce(0) { $0 + $1.probesDuringRecovery }
        let opened = stats.compactMap(\.firstOpenAfterMs)
        return """

            \(style.bold("Summary: \(kind.rawValue) adapter, \(stats.count) instances"))
            \(renderTable(["INSTANCE", "SAW OPEN AFTER", "REACHED FAILING DEPENDENCY", "REJECTED", "PROBES (OUTAGE / RECOVERY)"], rows))
            fleet: \(reached) calls reached the failing dependency, \(rejected) were rejected during the outage; \
            \(probesOutage) probes during the outage, \(probesRecovery) during recovery\
            \(opened.isEmpty ? "" : String(format: "; every instance saw OPEN within %.2f s of the first", Double(opened.max()! - opened.min()!) / 1000))
            """
    }

    private func comparison(_ shared: [InstanceStats], _ local: [InstanceStats]) -> String {
        func sum(_ stats: [InstanceStats], _ key: (InstanceStats) -> Int) -> Int { stats.reduce(0) { $0 + key($1) } }
        let rows = [
            ["calls that reached the failing dependency", String(sum(shared, \.reachedDuringOutage)), String(sum(local, \.reachedDuringOutage))],
            ["probes sent while it was failing", String(sum(shared, \.probesDuringOutage)), String(sum(local, \.probesDuringOutage))],
            ["probes sent during recovery", String(sum(shared, \.probesDuringRecovery)), String(sum(local, \.probesDuringRecovery))],
        ]
        return "\n" + Style.standardOutput.bold("Shared breaker vs one breaker per process") + "\n"
            + renderTable(["", "DISTRIBUTED", "LOCAL"], rows)
    }
}
