import Foundation

/// Debian's `promtool` and `prometheus`, as `make prometheus-tools` unpacks them into `.build/prometheus/usr/bin`
/// (or, when that is missing, as installed on `PATH`): the operator kit's checks run the real tools.
public struct PrometheusTools: Sendable {
    /// The directory holding both binaries.
    public let directory: String

    /// The tools of the checkout at `repositoryRoot`; throws, saying how to get them, when neither place has them.
    public init(repositoryRoot: String) throws {
        let candidates = [repositoryRoot + "/.build/prometheus/usr/bin", "/usr/bin", "/usr/local/bin"]
        guard let found = candidates.first(where: { directory in
            ["promtool", "prometheus"].allSatisfy { FileManager.default.isExecutableFile(atPath: directory + "/" + $0) }
        }) else {
            throw RedisServerProcess.Failure(
                description: "promtool and prometheus are not in \(candidates): run `make prometheus-tools` (Debian's prometheus package)")
        }
        directory = found
    }

    /// What a finished tool printed (standard output and error together) and its exit status.
    public struct Outcome: Sendable {
        /// The exit status.
        public var status: Int32
        /// Standard output and error.
        public var output: String
    }

    /// Runs `promtool ARGUMENTS`, with standard input from `inputPath` when given, for at most `limit`.
    public func promtool(_ arguments: [String], input inputPath: String? = nil, limit: Duration = .seconds(60)) async throws -> Outcome {
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("promtool-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: log) }
        let child: ChildProcess
        if let inputPath {
            // posix_spawn's file actions give the child /dev/null as input: a shell redirects the file instead.
            let quoted = ([directory + "/promtool"] + arguments).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }
            child = try ChildProcess(
                executable: "/bin/sh", arguments: ["-c", quoted.joined(separator: " ") + " < '\(inputPath)'"], outputPath: log)
        } else {
            child = try ChildProcess(executable: directory + "/promtool", arguments: arguments, outputPath: log)
        }
        guard let status = await child.waitForExit(upTo: limit) else {
            child.kill()
            throw RedisServerProcess.Failure(description: "promtool \(arguments) did not finish within \(limit)")
        }
        return Outcome(status: status, output: (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
    }

    /// A `prometheus` server on a free loopback port, with its configuration and storage in a directory of its own.
    public final class Server: Sendable {
        /// Its process.
        public let child: ChildProcess
        /// `http://127.0.0.1:PORT`.
        public let base: String
        /// Its working directory (configuration, storage, log).
        public let directory: String

        /// Starts `prometheus` with `configuration` (the YAML of its configuration file).
        public init(tools: PrometheusTools, configuration: String) throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("prometheus-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try configuration.write(toFile: directory + "/prometheus.yml", atomically: true, encoding: .utf8)
            let port = try RedisServerProcess.freePort()
            base = "http://127.0.0.1:\(port)"
            child = try ChildProcess(
                executable: tools.directory + "/prometheus",
                arguments: [
                    "--config.file=\(directory)/prometheus.yml", "--storage.tsdb.path=\(directory)/data",
                    "--web.listen-address=127.0.0.1:\(port)",
                ],
                outputPath: directory + "/prometheus.log")
        }

        /// What it logged.
        public var log: String { (try? String(contentsOfFile: directory + "/prometheus.log", encoding: .utf8)) ?? "" }

        /// Stops it (SIGTERM, then SIGKILL after 10 s) and removes its directory.
        public func stop() async {
            child.send(SIGTERM)
            if await child.waitForExit(upTo: .seconds(10)) == nil { child.kill() }
            try? FileManager.default.removeItem(atPath: directory)
        }
    }
}
