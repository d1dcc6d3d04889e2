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
    @Option(help: "Every N-th call fails; 0: none.") var failEvery = 0
    @Option(help: "Where to append one JSON line a second (elapsed s, calls, rejected, resident KB), and a last one with done: true once what the adapter held is written.")
    var stats: String

    func run() async throws {
        try await reportingErrors {
            guard breakers >= 1, rate >= 1, seconds >= 1, failEvery >= 0 else { throw CLIError.usage("breakers, rate and seconds must be ≥ 1") }
            var options = try DistributedOptions(url: redis)
            options.namespace = namespace
            var logger = Logger(label: "fusebox-load")
            logger.logLevel = .warning
            let registry = BreakerRegistry(adapter: try DistributedAdapter(options: options, logger: logger), logger: logger)
            let background = Task { try? await registry.run() }
            let guarded = try (0..<breakers).map { try registry.breaker("load-\($0)") }
            guard let output = FileHandle(forWritingAtPath: stats) ?? {
                FileManager.default.createFile(atPath: stats, contents: nil)
                return FileHandle(forWritingAtPath: stats)
            }() else { throw CLIError.failed("cannot write \(stats)") }
            output.seekToEndOfFile()

            // Calls in ticks of 10 ms, so that the rate holds whatever the scheduler does with one sleep.
            let clock = ContinuousClock()
            let start = clock.now
            var (calls, rejected, next) = (0, 0, 1)
            while clock.now - start < .seconds(seconds) {
                let due = Int((clock.now - start) / .milliseconds(10)) * rate / 100
                while calls + rejected < due {
                    let breaker = guarded[(calls + rejected) % breakers]
                    do {
                        let permit = try breaker.acquire()
                        calls += 1
                        if failEvery > 0 && calls % failEvery == 0 { permit.failure(LoadFailure()) } else { permit.success() }
                    } catch {
                        rejected += 1
                    }
                }
                if clock.now - start >= .seconds(next) {
                    let line = #"{"elapsed": \#(next), "calls": \#(calls), "rejected": \#(rejected), "rss_kb": \#(Self.residentKilobytes())}"#
                    output.write(Data((line + "\n").utf8))
                    next += 1
                }
                try await Task.sleep(for: .milliseconds(10))
            }
            // The adapter writes what it holds when its run ends; the last line says so.
            background.cancel()
            await background.value
            let line = #"{"elapsed": \#(seconds), "calls": \#(calls), "rejected": \#(rejected), "rss_kb": \#(Self.residentKilobytes()), "done": true}"#
            output.write(Data((line + "\n").utf8))
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
