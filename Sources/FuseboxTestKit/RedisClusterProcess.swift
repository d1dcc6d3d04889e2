import Foundation
import Hiredis

/// A Redis Cluster on loopback for tests: `primaries` nodes (each with `replicasPerPrimary` replicas), every node a
/// ``RedisServerProcess`` started with `--cluster-enabled yes`, joined by `redis-cli --cluster create`.
public final class RedisClusterProcess: Sendable {
    /// Every node, primaries first as `redis-cli` was given them.
    public let nodes: [RedisServerProcess]

    private init(nodes: [RedisServerProcess]) {
        self.nodes = nodes
    }

    /// Starts the nodes, creates the cluster, and returns once every node reports `cluster_state:ok` (at most 30 s).
    public static func start(primaries: Int = 3, replicasPerPrimary: Int = 0) async throws -> RedisClusterProcess {
        let options = RedisServerProcess.Options(extraArguments: [
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
        ])
        var nodes: [RedisServerProcess] = []
        do {
            for _ in 0..<(primaries * (1 + replicasPerPrimary)) { nodes.append(try await RedisServerProcess.start(options)) }
            let cluster = RedisClusterProcess(nodes: nodes)
            try await cluster.create(replicasPerPrimary: replicasPerPrimary)
            return cluster
        } catch {
            for node in nodes { node.kill() }
            throw error
        }
    }

    /// Stops every node.
    public func stop() async {
        for node in nodes { await node.stop() }
    }

    /// `127.0.0.1:PORT` of every node.
    public var addresses: [String] { nodes.map { "127.0.0.1:\($0.port)" } }

    private func create(replicasPerPrimary: Int) async throws {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-cluster-create-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: output) }
        let create = try ChildProcess(
            executable: "redis-cli",
            arguments: ["--cluster", "create"] + addresses + ["--cluster-replicas", String(replicasPerPrimary), "--cluster-yes"],
            outputPath: output, searchPath: true)
        let status = await create.waitForExit(upTo: .seconds(30))
        guard status == 0 else {
            let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
            throw RedisServerProcess.Failure(description: "redis-cli --cluster create ended with \(status.map(String.init) ?? "no exit"): \(text.suffix(500))")
        }
        let deadline = ContinuousClock.now + .seconds(30)
        for node in nodes {
            let connection = try RedisConnection(configuration: node.configuration())
            defer { connection.close() }
            while true {
                let info = (try? await connection.send("CLUSTER", "INFO").string) ?? ""
                if info.contains("cluster_state:ok") { break }
                guard ContinuousClock.now < deadline else {
                    throw RedisServerProcess.Failure(description: "node \(node.port) did not report cluster_state:ok within 30 s")
                }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }
}

/// The one cluster of a test run, started by the first test that asks and shared by every test after it (each
/// test uses keys of its own). Its nodes end with the test process (their watchdogs see to that).
public enum SharedCluster {
    private static let started = Task { try await RedisClusterProcess.start() }

    /// The cluster, once it reports `cluster_state:ok`.
    public static func get() async throws -> RedisClusterProcess { try await started.value }
}
