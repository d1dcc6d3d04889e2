import Foundation
import Hiredis

/// A Redis Cluster on loopback for tests: `primaries` nodes (each with `replicasPerPrimary` replicas), every node a
/// `RedisServerProcess` started with `--cluster-enabled yes`, joined by `redis-cli --cluster create`.
public final class RedisClusterProcess: Sendable {
    /// Every node, primaries first as `redis-cli` was given them.
    public let nodes: [RedisServerProcess]

    private init(nodes: [RedisServerProcess]) {
        self.nodes = nodes
    }

    /// Starts the nodes, creates the cluster, and returns once every node reports `cluster_state:ok` and every
    /// replica is online (at most a minute).
    public static func start(primaries: Int = 3, replicasPerPrimary: Int = 0) async throws -> RedisClusterProcess {
        let options = RedisServerProcess.Options(extraArguments: [
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
            "--repl-diskless-sync-delay", "0",
        ])
        var nodes: [RedisServerProcess] = []
        do {
            for _ in 0..<(primaries * (1 + replicasPerPrimary)) { nodes.append(try await RedisServerProcess.start(options)) }
            let cluster = RedisClusterProcess(nodes: nodes)
            try await cluster.create(replicasPerPrimary: replicasPerPrimary)
            try await cluster.waitUntilHealthy(replicas: replicasPerPrimary)
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
        // start() then waits until every node reports the cluster healthy.
    }
}

/// The one cluster of a test run, 3 primaries and 3 replicas, started by the first test that asks and shared by every
/// test after it (each test uses keys of its own). Its nodes end with the test process (their watchdogs see to that).
///
/// Tests that only send commands hold it shared (``use(_:)``); a test that kills a node or moves slots holds it
/// alone (``useAlone(_:)``), waits for the shared users to finish, and hands it back healthy.
public enum SharedCluster {
    private static let started = Task { try await RedisClusterProcess.start(primaries: 3, replicasPerPrimary: 1) }
    private static let lease = Lease()

    /// Runs `body` with the cluster, alongside other shared users.
    public static func use<T: Sendable>(_ body: (RedisClusterProcess) async throws -> T) async throws -> T {
        try await holding(alone: false, body)
    }

    /// Runs `body` with the cluster and no other user.
    public static func useAlone<T: Sendable>(_ body: (RedisClusterProcess) async throws -> T) async throws -> T {
        try await holding(alone: true, body)
    }

    private static func holding<T: Sendable>(alone: Bool, _ body: (RedisClusterProcess) async throws -> T) async throws -> T {
        let cluster = try await started.value
        await lease.acquire(alone: alone)
        do {
            // Whoever held it alone before may have failed before handing it back whole.
            if alone { try await cluster.waitUntilHealthy() }
            let result = try await body(cluster)
            await lease.release(alone: alone)
            return result
        } catch {
            await lease.release(alone: alone)
            throw error
        }
    }

    /// A readers–writer lease, fair to a waiting writer (new readers queue behind it).
    private actor Lease {
        private var readers = 0
        private var writer = false
        private var queue: [(alone: Bool, resume: CheckedContinuation<Void, Never>)] = []

        func acquire(alone: Bool) async {
            if queue.isEmpty && !writer && (!alone || readers == 0) {
                if alone { writer = true } else { readers += 1 }
                return
            }
            await withCheckedContinuation { queue.append((alone, $0)) }
        }

        func release(alone: Bool) {
            if alone { writer = false } else { readers -= 1 }
            while let next = queue.first, !writer, !next.alone || readers == 0 {
                queue.removeFirst()
                if next.alone { writer = true } else { readers += 1 }
                next.resume.resume()
            }
        }
    }
}

extension RedisClusterProcess {
    /// The `redis+cluster://` URL naming the first node as the seed.
    public var url: String { "redis+cluster://127.0.0.1:\(nodes[0].port)" }

    /// Waits until every running node reports `cluster_state:ok` and agrees on one primary per slot range, each
    /// with `replicas` replicas online (at most `timeout`).
    public func waitUntilHealthy(replicas: Int = 1, timeout: Duration = .seconds(30)) async throws {
        let started = ContinuousClock.now
        try await waitUntil("the cluster is healthy", timeout: timeout) {
            // Every node must also name the same primary for every slot: gossip spreads a failover or a reshard
            // node by node, and a test that reads the map from one node must not see a view the others left.
            var views: Set<[String]> = []
            var healthy = true
            for node in nodes {
                let client = try RedisClient(configuration: node.configuration(connectTimeout: .milliseconds(500), commandTimeout: .milliseconds(500)))
                defer { client.close() }
                guard let info = try? await client.send("CLUSTER", "INFO").string, info.contains("cluster_state:ok"),
                      let map = try? ClusterSlotMap(shards: try await client.send("CLUSTER", "SHARDS")),
                      map.coveredSlots == ClusterSlot.count, map.ranges.allSatisfy({ $0.replicas.count >= replicas }) else {
                    healthy = false
                    continue
                }
                views.insert(map.ranges.map { "\($0.slots) \($0.primary)" })
            }
            if !healthy && ContinuousClock.now - started > .seconds(5) { await claimForgottenSlots() }
            return healthy && views.count == 1
        }
    }

    /// A failover that races a reshard can leave the promoted primary without a slot that every other node says it
    /// serves (Redis 7.0: `cluster_state:fail` on that node alone, for good). That node claims such slots again.
    private func claimForgottenSlots() async {
        var maps: [(node: RedisServerProcess, map: ClusterSlotMap)] = []
        for node in nodes {
            guard let client = try? RedisClient(configuration: node.configuration(connectTimeout: .milliseconds(500), commandTimeout: .milliseconds(500))) else { continue }
            defer { client.close() }
            if let map = try? ClusterSlotMap(shards: try await client.send("CLUSTER", "SHARDS")) { maps.append((node, map)) }
        }
        for (node, own) in maps {
            let endpoint = RedisConfiguration.Endpoint.tcp(host: "127.0.0.1", port: node.port)
            let others = maps.filter { $0.node !== node }.map(\.map)
            guard !others.isEmpty else { continue }
            let forgotten = (0..<ClusterSlot.count).filter { slot in
                own.primary(forSlot: slot) == nil && others.allSatisfy { $0.primary(forSlot: slot) == endpoint }
            }
            guard !forgotten.isEmpty, let client = try? RedisClient(configuration: node.configuration()) else { continue }
            defer { client.close() }
            _ = try? await client.send(RedisCommand("CLUSTER", arguments: ["ADDSLOTS"] + forgotten.map(String.init)))
        }
    }

    /// The node listening on `endpoint`.
    public func node(at endpoint: RedisConfiguration.Endpoint) -> RedisServerProcess? {
        nodes.first { endpoint == .tcp(host: "127.0.0.1", port: $0.port) }
    }
}
