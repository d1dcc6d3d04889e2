import ArgumentParser
import Foundation
import Fusebox
import FuseboxRedis
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Drives breakers at a steady rate and reports this process's memory once a second: what the memory and soak tests
/// run, as a process of its own, so that its resident size is its alone.
struct LoadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "load", abstract: "Drives breakers at a steady rate, reporting memory (memory and soak tests).", shouldDisplay: false)

    @Option(help: "The Redis URL of the distributed adapter.") var redis: String
    @Option var namespace = "fusebox"
    @Option(help: "How many breakers the calls are spread over.") var breakers = 10
    @Option(help: "Calls per second, over all breakers.") var rate = 1000
    @Option(help: "How long to run, in seconds.") var seconds = 60
    @Option(help: "From this second on, every call of the first breaker (load-0) fails; 0: never.") var failFrom = 0
    @Option(help: "How often a stats line is written, in ms.") var reportMs = 1000
    @Option(help: "Where to append a JSON line every --report-ms (elapsed s, calls, rejected, resident KB, the breakers whose last call was rejected), and a last one with done: true and the calls admitted per breaker once what the adapter held is written.")
    var stats: String

    func run() async throws {
        try await reportingErrors {
            guard breakers >= 1, rate >= 1, seconds >= 1, failFrom >= 0, reportMs >= 1 else {
                throw CLIError.usage("breakers, rate, seconds and report-ms must be ≥ 1")
            }
            var options = try DistributedOptions(url: redis)
            options.namespace = namespace
            var logger = Logger(label: "fusebox-load")
            logger.logLevel = .warning
            let registry = BreakerRegistry(adapter: try DistributedAdapter(options: options, logger: logger), logger: logger)
            let background = Task { try? await registry.run() }
            let guarded = try (0..<breakers).map { try registry.breaker("load-\($0)") }
            guard let output = FileHandle(forWritingAtPath: stats) ?? {
                _ = FileManager.default.createFile(atPath: stats, contents: nil)
                return FileHandle(forWritingAtPath: stats)
            }() else { throw CLIError.failed("cannot write \(stats)") }
            output.seekToEndOfFile()

            // Calls in ticks of 10 ms, so that the rate holds whatever the scheduler does with one sleep.
            let clock = ContinuousClock()
            let start = clock.now
            var (calls, rejected, reports) = (0, 0, 1)
            var admitted = [Int](repeating: 0, count: breakers)
            var rejecting = [Bool](repeating: false, count: breakers)
            func report(done: Bool) {
                let elapsed = Double((clock.now - start) / .milliseconds(1)) / 1000
                let open = rejecting.indices.filter { rejecting[$0] }.map(String.init).joined(separator: ", ")
                var line = #"{"elapsed": \#(elapsed), "calls": \#(calls), "rejected": \#(rejected), "rss_kb": \#(Self.residentKilobytes()), "rejecting": [\#(open)]"#
                if done { line += #", "done": true, "breaker_calls": [\#(admitted.map(String.init).joined(separator: ", "))]"# }
                output.write(Data((line + "}\n").utf8))
            }
            while clock.now - start < .seconds(seconds) {
                let due = Int((clock.now - start) / .milliseconds(10)) * rate / 100
                let failing = failFrom > 0 && clock.now - start >= .seconds(failFrom)
                while calls + rejected < due {
                    let index = (calls + rejected) % breakers
                    do {
                        let permit = try guarded[index].acquire()
                        calls += 1
                        admitted[index] += 1
                        rejecting[index] = false
                        if failing && index == 0 {
                            permit.failure(LoadFailure())
                        } else {
                            permit.success()
                        }
                    } catch {
                        rejected += 1
                        rejecting[index] = true
                    }
                }
                if clock.now - start >= .milliseconds(reportMs * reports) {
                    report(done: false)
                    reports += 1
                }
                try await Task.sleep(for: .milliseconds(10))
            }
            // The adapter writes what it holds when its run ends; the last line says so.
            background.cancel()
            await background.value
            report(done: true)
            try output.close()
        }
    }

    /// This process's resident set size (`VmRSS` in /proc/self/status), in KB; -1 where it cannot be read.
    static func residentKilobytes() -> Int {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
        else { return -1 }
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? -1
    }
}

struct LoadFailure: Error {}
