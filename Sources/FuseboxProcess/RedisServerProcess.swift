import Foundation
import FuseboxLocking
import Hiredis
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A private `redis-server` on a free loopback port, for tests, benchmarks and the demo.
///
/// It never uses port 6379 or a shared server. It can be stopped, killed, paused (`SIGSTOP`), resumed and
/// restarted on the same port for fault tests, and started with `requirepass` or ACL users. A watchdog process
/// kills it if the process that started it dies, so a crashed test run leaves no server behind.
public final class RedisServerProcess: Sendable {
    /// How to start the server.
    public struct Options: Sendable {
        /// `requirepass`: clients must `AUTH` with this password.
        public var requirePassword: String?
        /// ACL users, each as the words of a `user` directive, e.g. `["alice", "on", ">secret", "~fusebox:*", "+@all"]`.
        public var aclUsers: [[String]]
        /// More `redis-server` arguments, e.g. `["--maxmemory", "10mb"]`.
        public var extraArguments: [String]
        /// Set for a Redis Sentinel: the lines of its configuration file (written once, in the server's own
        /// directory, where the sentinel rewrites it), and the server runs with `--sentinel`.
        public var sentinelConfiguration: [String]?
        /// Set to run the server in a network namespace (`ip netns exec NAME`, as root): the namespace's name and
        /// the address the server binds there, by which clients in other namespaces reach it over a veth link.
        public var networkNamespace: (name: String, address: String)?

        /// Makes options.
        public init(
            requirePassword: String? = nil, aclUsers: [[String]] = [], extraArguments: [String] = [], sentinelConfiguration: [String]? = nil,
            networkNamespace: (name: String, address: String)? = nil
        ) {
            self.requirePassword = requirePassword
            self.aclUsers = aclUsers
            self.extraArguments = extraArguments
            self.sentinelConfiguration = sentinelConfiguration
            self.networkNamespace = networkNamespace
        }
    }

    /// An error starting or controlling the server.
    public struct Failure: Error, CustomStringConvertible {
        /// What went wrong, with what to do about it.
        public var description: String
        /// Makes a failure.
        public init(description: String) { self.description = description }
    }

    /// The loopback port the server listens on; the same across restarts.
    public let port: Int
    /// The options it was started with.
    public let options: Options
    /// The address the server listens on: 127.0.0.1, or its address in its network namespace.
    public var host: String { options.networkNamespace?.address ?? "127.0.0.1" }
    /// `redis://HOST:PORT`, without credentials.
    public var url: String { "redis://\(host):\(port)" }

    /// The server and its watchdog while running.
    private let children = Locked<(server: ChildProcess, watchdog: ChildProcess)?>(nil)
    private let directory: URL
    private let executable: String

    private init(port: Int, options: Options, executable: String, directory: URL) {
        self.port = port
        self.options = options
        self.executable = executable
        self.directory = directory
    }

    deinit {
        kill()
        try? FileManager.default.removeItem(at: directory)
    }

    /// Starts a server on a free loopback port and returns once it answers `PING`.
    ///
    /// Throws when `redis-server` is not installed, naming the command that installs it.
    public static func start(_ options: Options = Options()) async throws -> RedisServerProcess {
        let executable = try locateServer()
        var lastError: (any Error)?
        for _ in 0..<5 {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-redis-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let port = options.extraArguments.contains("--cluster-enabled") ? try freeClusterPort() : try freePort()
            let server = RedisServerProcess(port: port, options: options, executable: executable, directory: directory)
            do {
                try await server.launch()
                return server
            } catch {
                // Most likely the port was taken between choosing and binding it: try another.
                lastError = error
                server.kill()
            }
        }
        throw lastError ?? Failure(description: "could not start redis-server")
    }

    /// Runs `body` with a fresh server and stops the server afterwards, also when `body` throws.
    public static func with<T>(
        _ options: Options = Options(), _ body: (RedisServerProcess) async throws -> T
    ) async throws -> T {
        let server = try await start(options)
        do {
            let result = try await body(server)
            await server.stop()
            return result
        } catch {
            server.kill()
            throw error
        }
    }

    /// The process id of the running server, or `nil` when it is not running.
    public var processIdentifier: Int32? {
        children.withLock { $0.flatMap { $0.server.isRunning ? $0.server.processIdentifier : nil } }
    }

    /// A configuration for this server, with short timeouts suited to tests.
    public func configuration(
        username: String? = nil, password: String? = nil,
        connectTimeout: Duration = .seconds(2), commandTimeout: Duration = .seconds(2)
    ) -> RedisConfiguration {
        RedisConfiguration(
            host: host, port: port, username: username, password: password,
            connectTimeout: connectTimeout, commandTimeout: commandTimeout)
    }

    /// Stops the server with `SIGTERM` (resuming it first if paused) and waits for it to exit.
    public func stop() async {
        guard let server = children.withLock({ $0?.server }) else { return }
        server.send(SIGCONT)
        server.send(SIGTERM)
        await server.waitForExit(upTo: .seconds(5))
        kill()
    }

    /// Kills the server with `SIGKILL`, at once.
    public func kill() {
        guard let running = children.withLock({ children in defer { children = nil }; return children }) else { return }
        running.server.kill()
        running.watchdog.kill()
    }

    /// Freezes the server with `SIGSTOP`: connections stay open, nothing is answered.
    public func pause() {
        if let pid = processIdentifier { Glibc.kill(pid, SIGSTOP) }
    }

    /// Thaws a paused server with `SIGCONT`.
    public func resume() {
        if let pid = processIdentifier { Glibc.kill(pid, SIGCONT) }
    }

    /// Stops the server (killing it when `kill` is true) and starts it again on the same port, with no data.
    public func restart(kill: Bool = false) async throws {
        if kill { self.kill() } else { await stop() }
        var lastError: (any Error)?
        for _ in 0..<20 {
            do {
                try await launch()
                return
            } catch {
                lastError = error
                self.kill()
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        throw lastError ?? Failure(description: "could not restart redis-server on port \(port)")
    }

    private func launch() async throws {
        var arguments = [
            "--port", String(port), "--bind", host, "--save", "", "--appendonly", "no",
            "--dir", directory.path, "--logfile", directory.appendingPathComponent("redis.log").path,
            "--daemonize", "no", "--protected-mode", "no",
        ]
        if let password = options.requirePassword { arguments += ["--requirepass", password] }
        for user in options.aclUsers { arguments += ["--user"] + user }
        arguments += options.extraArguments
        if let lines = options.sentinelConfiguration {
            let file = directory.appendingPathComponent("sentinel.conf")
            if !FileManager.default.fileExists(atPath: file.path) {
                try (lines.joined(separator: "\n") + "\n").write(to: file, atomically: true, encoding: .utf8)
            }
            arguments = [file.path] + arguments + ["--sentinel"]
        }

        let server = if let namespace = options.networkNamespace {
            // `ip netns exec` enters the namespace and execs the server: the process id stays the server's.
            try ChildProcess(executable: "ip", arguments: ["netns", "exec", namespace.name, executable] + arguments, searchPath: true)
        } else {
            try ChildProcess(executable: executable, arguments: arguments)
        }
        // Kills the server if this process dies without stopping it (a crash, a timeout of the test runner): the
        // watchdog blocks reading a pipe that only this process writes, and reads end-of-file when it dies. No
        // polling of process ids, which the system may reuse.
        let watchdog = try ChildProcess(
            executable: "/bin/sh", arguments: ["-c", "read _; kill -9 \(server.processIdentifier) 2>/dev/null"], inputPipe: true)
        children.withLock { $0 = (server, watchdog) }

        let deadline = ContinuousClock.now + .seconds(10)
        let probe = try RedisClient(configuration: configuration(
            password: options.requirePassword, connectTimeout: .milliseconds(200), commandTimeout: .milliseconds(500)))
        defer { probe.close() }
        while ContinuousClock.now < deadline {
            guard server.isRunning else {
                throw Failure(description: "redis-server exited at start (port \(port)): \(logTail())")
            }
            do {
                // The server that answers must be the one started here, not another test's on a port that was
                // taken between choosing and binding it.
                let info = try await probe.send("INFO", "server").string ?? ""
                let answering = info.split(whereSeparator: \.isNewline).first { $0.hasPrefix("process_id:") }
                    .flatMap { Int32($0.dropFirst("process_id:".count)) }
                guard answering == server.processIdentifier else {
                    throw Failure(description: "port \(port) is answered by another redis-server (process \(answering.map(String.init) ?? "?"), not \(server.processIdentifier))")
                }
                return
            } catch let failure as Failure {
                throw failure
            } catch let error as RedisError where error.code == .serverError {
                // NOAUTH with ACL users only: the server is up and demands credentials; it is ours if it still runs
                // (a server that cannot bind its port exits at once).
                try await Task.sleep(for: .milliseconds(100))
                if server.isRunning { return }
            } catch {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        throw Failure(description: "redis-server did not answer PING on port \(port) within 10 s: \(logTail())")
    }

    private func logTail() -> String {
        let log = (try? String(contentsOf: directory.appendingPathComponent("redis.log"), encoding: .utf8)) ?? ""
        return log.split(separator: "\n").suffix(3).joined(separator: " | ")
    }

    /// Finds `redis-server`: `$FUSEBOX_REDIS_SERVER`, then `PATH`, then the usual places.
    public static func locateServer() throws -> String {
        let environment = ProcessInfo.processInfo.environment
        if let explicit = environment["FUSEBOX_REDIS_SERVER"], FileManager.default.isExecutableFile(atPath: explicit) {
            return explicit
        }
        let directories = (environment["PATH"] ?? "").split(separator: ":").map(String.init)
            + ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/opt/homebrew/bin"]
        for directory in directories {
            let candidate = directory + "/redis-server"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw Failure(description: "redis-server is not installed: run `make test` (it installs libhiredis-dev, redis-server and redis-tools), or `sudo apt-get install redis-server`")
    }

    /// A TCP port on 127.0.0.1 that was free a moment ago (never 6379).
    public static func freePort() throws -> Int {
        for _ in 0..<20 {
            guard let (fd, port) = try? bindLoopback(listening: false) else { continue }
            close(fd)
            if port != 6379 { return port }
        }
        throw Failure(description: "could not find a free loopback port")
    }

    /// A free loopback port for a cluster node: its cluster bus listens 10,000 ports higher, so the port is at most
    /// 55,535 (redis-server refuses to start otherwise) and the bus port must be free too. Chosen at random in
    /// 20,000…45,000, below the kernel's usual ephemeral range (32,768 and up) for the bus port's sake where it can.
    public static func freeClusterPort() throws -> Int {
        for _ in 0..<200 {
            let port = Int.random(in: 20_000...45_000)
            if port == 6379 { continue }
            guard let (fd, _) = try? bindLoopback(port: port, listening: false) else { continue }
            defer { close(fd) }
            guard let (bus, _) = try? bindLoopback(port: port + 10_000, listening: false) else { continue }
            close(bus)
            return port
        }
        throw Failure(description: "could not find a free loopback port whose cluster bus port (10,000 higher) is free too")
    }
}
