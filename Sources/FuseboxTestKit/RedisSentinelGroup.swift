import Foundation
import Hiredis

/// A Redis Sentinel group on loopback for tests: one primary, one replica and three sentinels that watch them under
/// the name ``primaryName`` with a quorum of 2 and a short `down-after-milliseconds`, so a failover takes a few
/// seconds.
public final class RedisSentinelGroup: Sendable {
    /// The name the sentinels know the primary by.
    public let primaryName: String
    /// The data nodes: the primary as started, then the replica.
    public let servers: [RedisServerProcess]
    /// The sentinels.
    public let sentinels: [RedisServerProcess]

    private init(primaryName: String, servers: [RedisServerProcess], sentinels: [RedisServerProcess]) {
        self.primaryName = primaryName
        self.servers = servers
        self.sentinels = sentinels
    }

    /// Starts the group and returns once every sentinel knows the primary, its replica and the other sentinels.
    /// With `networkNamespace`, every process runs in that namespace, bound to its address.
    public static func start(
        primaryName: String = "fusebox-primary", downAfter: Duration = .milliseconds(1000),
        networkNamespace: (name: String, address: String)? = nil
    ) async throws -> RedisSentinelGroup {
        var started: [RedisServerProcess] = []
        let host = networkNamespace?.address ?? "127.0.0.1"
        do {
            let primary = try await RedisServerProcess.start(.init(extraArguments: ["--repl-diskless-sync-delay", "0"], networkNamespace: networkNamespace))
            started.append(primary)
            let replica = try await RedisServerProcess.start(.init(extraArguments: ["--replicaof", host, String(primary.port)], networkNamespace: networkNamespace))
            started.append(replica)
            var sentinels: [RedisServerProcess] = []
            for _ in 0..<3 {
                let sentinel = try await RedisServerProcess.start(.init(sentinelConfiguration: [
                    "sentinel monitor \(primaryName) \(host) \(primary.port) 2",
                    "sentinel down-after-milliseconds \(primaryName) \(downAfter.components.seconds * 1000 + downAfter.components.attoseconds / 1_000_000_000_000_000)",
                    "sentinel failover-timeout \(primaryName) 10000",
                    "sentinel parallel-syncs \(primaryName) 1",
                ], networkNamespace: networkNamespace))
                started.append(sentinel)
                sentinels.append(sentinel)
            }
            let group = RedisSentinelGroup(primaryName: primaryName, servers: [primary, replica], sentinels: sentinels)
            try await group.waitUntilSettled()
            return group
        } catch {
            for server in started { server.kill() }
            throw error
        }
    }

    /// The `redis+sentinel://` URL naming every sentinel and the primary's name.
    public var url: String {
        "redis+sentinel://" + sentinels.map { "\($0.host):\($0.port)" }.joined(separator: ",") + "/" + primaryName
    }

    /// The primary's port as the first sentinel that answers names it.
    public func primaryPort() async throws -> Int {
        for sentinel in sentinels {
            let client = try RedisClient(configuration: sentinel.configuration(connectTimeout: .milliseconds(300), commandTimeout: .milliseconds(500)))
            defer { client.close() }
            if let reply = try? await client.send("SENTINEL", "GET-MASTER-ADDR-BY-NAME", primaryName).array, reply.count == 2,
               let port = reply[1].string.flatMap({ Int($0) }) {
                return port
            }
        }
        throw RedisServerProcess.Failure(description: "no sentinel names the primary '\(primaryName)'")
    }

    /// The data node listening on `port`.
    public func server(port: Int) -> RedisServerProcess? { servers.first { $0.port == port } }

    /// Waits (at most 30 s) until every sentinel sees one replica of the primary and the two other sentinels.
    public func waitUntilSettled(timeout: Duration = .seconds(30)) async throws {
        try await waitUntil("the sentinels settle", timeout: timeout) {
            for sentinel in sentinels {
                let client = try RedisClient(configuration: sentinel.configuration(connectTimeout: .milliseconds(300), commandTimeout: .milliseconds(500)))
                defer { client.close() }
                let fields = (try? await client.send("SENTINEL", "MASTER", primaryName).array) ?? []
                var values: [String: String] = [:]
                for index in stride(from: 0, to: fields.count - 1, by: 2) {
                    if let name = fields[index].string { values[name] = fields[index + 1].string ?? "" }
                }
                if values["num-slaves"] != "1" || values["num-other-sentinels"] != "2" || values["flags"] != "master" { return false }
            }
            return true
        }
    }

    /// Stops every process.
    public func stop() async {
        for process in sentinels + servers { await process.stop() }
    }
}
