import Foundation
import Fusebox
import FuseboxRedis
import FuseboxTestKit
import Hiredis
import Testing
import TestKinds

/// The documented way to a TLS server with this build's hiredis (0.14, no TLS): a local stunnel, started exactly as
/// Docs/operations.md shows, in front of a real `redis-server --tls-port` that asks for client certificates.
@Suite("TLS through the documented stunnel tunnel", .kind(.integration), .timeLimit(.minutes(2)))
struct TLSTunnelTests {
    /// The ```ini block of Docs/operations.md: the tunnel's configuration as documented.
    private func documentedConfiguration() throws -> String {
        let text = try String(contentsOf: repositoryRoot.appendingPathComponent("Docs/operations.md"), encoding: .utf8)
        let start = try #require(text.range(of: "```ini\n"))
        let end = try #require(text.range(of: "```", range: start.upperBound..<text.endIndex))
        return String(text[start.upperBound..<end.lowerBound])
    }

    /// Runs a shell script in `directory`; fails the test with its output when it does not exit 0.
    private func shell(_ script: String, in directory: URL) async throws {
        let log = directory.appendingPathComponent("shell-\(UUID().uuidString).log").path
        let child = try ChildProcess(executable: "/bin/sh", arguments: ["-c", "cd '\(directory.path)' && \(script)"], outputPath: log)
        let status = await child.waitForExit(upTo: .seconds(30))
        #expect(status == 0, "\(script): \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        if status != 0 { throw RedisServerProcess.Failure(description: "\(script) failed") }
    }

    @Test("a breaker trips and is listed through the tunnel; a plain client on the TLS port and a rediss:// URL get clear errors")
    func throughTheTunnel() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        // A CA, a server certificate for localhost, a client certificate: EC keys, one day.
        try await shell("""
            set -e
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=fusebox-test-ca 2>/dev/null
            printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > server.ext
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
            openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 1 -extfile server.ext 2>/dev/null
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout client.key -out client.csr -subj /CN=fusebox-instance 2>/dev/null
            openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 1 2>/dev/null
            """, in: directory)

        let tlsPort = try RedisServerProcess.freePort()
        try await RedisServerProcess.with(.init(extraArguments: [
            "--tls-port", String(tlsPort), "--tls-cert-file", directory.appendingPathComponent("server.crt").path,
            "--tls-key-file", directory.appendingPathComponent("server.key").path,
            "--tls-ca-cert-file", directory.appendingPathComponent("ca.crt").path, "--tls-auth-clients", "yes",
        ])) { server in
            let tunnelPort = try RedisServerProcess.freePort()
            let configuration = try documentedConfiguration()
                .replacingOccurrences(of: "127.0.0.1:6380", with: "127.0.0.1:\(tunnelPort)")
                .replacingOccurrences(of: "redis.example.internal:6379", with: "127.0.0.1:\(tlsPort)")
                .replacingOccurrences(of: "checkHost = redis.example.internal", with: "checkHost = localhost")
                .replacingOccurrences(of: "/etc/fusebox/tls/", with: directory.path + "/")
            try configuration.write(to: directory.appendingPathComponent("fusebox-tunnel.conf"), atomically: true, encoding: .utf8)
            let tunnel = try ChildProcess(
                executable: "/bin/sh", arguments: ["-c", "cd '\(directory.path)' && exec stunnel4 fusebox-tunnel.conf"],
                outputPath: directory.appendingPathComponent("stunnel.log").path,
                environment: ["PATH": "/usr/bin:/bin:/usr/sbin:/sbin"])
            defer { tunnel.kill() }

            let url = "redis://127.0.0.1:\(tunnelPort)"
            var redis = try RedisConfiguration(url: url)
            redis.clientName = "through-tunnel"
            let client = try RedisClient(configuration: redis)
            defer { client.close() }
            let reachable = await poll(within: .seconds(10)) { (try? await client.send("PING").string) == "PONG" }
            #expect(reachable, "\((try? String(contentsOfFile: directory.appendingPathComponent("stunnel.log").path, encoding: .utf8)) ?? "")")
            // The connection arrived on the TLS port.
            let plain = try RedisClient(configuration: server.configuration())
            defer { plain.close() }
            let clients = try await plain.send("CLIENT", "LIST").string ?? ""
            let ours = clients.split(separator: "\n").first { $0.contains("name=through-tunnel") } ?? ""
            #expect(ours.contains("laddr=127.0.0.1:\(tlsPort)"), "\(clients)")

            // A breaker used through the tunnel trips, and the command lists it through the tunnel.
            var options = DistributedOptions(redis: redis)
            options.namespace = "tls"
            let adapter = try DistributedAdapter(options: options)
            let registry = BreakerRegistry(adapter: adapter)
            var policy = BreakerPolicy()
            policy.failureRateThreshold = nil
            policy.consecutiveFailureThreshold = 1
            let breaker = try registry.breaker("billing", policy: policy)
            try await breaker.acquireAsync().failure(CLIDocsError())
            #expect(await poll { (try? await breaker.snapshot().state) == .open })
            let listed = try await fusebox(["--redis", url, "--namespace", "tls", "list"])
            #expect(listed.status == 0 && listed.output.contains("billing") && listed.output.contains("OPEN"), "\(listed.output)")

            // Plain RESP to the TLS port: a typed error within the timeouts, never a hang.
            let wrong = try RedisClient(configuration: RedisConfiguration(
                host: "127.0.0.1", port: tlsPort, connectTimeout: .milliseconds(500), commandTimeout: .milliseconds(500)))
            defer { wrong.close() }
            let started = ContinuousClock.now
            await #expect(throws: RedisError.self) { _ = try await wrong.send("PING") }
            #expect(ContinuousClock.now - started < .seconds(2))

            // rediss:// says, in one line, what to do instead.
            let refused = try await fusebox(["--redis", "rediss://127.0.0.1:\(tlsPort)", "list"])
            #expect(refused.status == 64, "\(refused.output)")
            #expect(refused.output.contains("stunnel") && refused.output.contains("Docs/operations.md"), "\(refused.output)")
            #expect(refused.output.split(separator: "\n").count == 1, "\(refused.output)")
        }
    }
}
