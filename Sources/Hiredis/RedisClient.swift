/// A client of Redis, shared by any number of concurrent tasks, whatever the topology: one server, a Redis Cluster
/// or a primary behind Redis Sentinel (see ``RedisConfiguration/Topology``).
///
/// Each server's socket is owned by a thread of its own (started on first use): hiredis' blocking work never runs
/// on Swift's cooperative pool. Callers enqueue and await; requests that arrive while a round trip is in flight are
/// written together (automatic pipelining), and replies are matched to callers in order.
///
/// - **One server**: one connection.
/// - **Cluster**: one connection per primary, commands routed by their key's slot; see `ClusterRouter`
///   (Sources/Hiredis/ClusterRouter.swift) for the redirections (`MOVED`, `ASK`), the retried states (`TRYAGAIN`,
///   `CLUSTERDOWN`) and the map refreshes.
/// - **Sentinel**: one connection to the primary that the sentinels name, checked with `ROLE` at each connection.
///   It is made anew when the sentinels announce `+switch-master` for that primary, when the server answers
///   `READONLY`, and after any loss, so writes never go to a replica.
///
/// Timeouts: a command fails with ``RedisError/Code/timeout`` when the server has made no progress on it (no reply
/// to it or to the commands ahead of it) for ``RedisConfiguration/commandTimeout``; a frozen server therefore fails a
/// single command within that time, while a long pipeline that keeps flowing is not cut off. Making the connection
/// first may add up to ``RedisConfiguration/connectTimeout``. After a timeout or a broken socket the connection is re-made on the
/// next command; after failed attempts, new attempts are spaced out (25 ms doubling to 1 s) and commands in
/// between fail at once.
///
/// Cancelling a waiting task does not take back a command already queued; the wait stays bounded by the
/// timeouts above.
public final class RedisClient: Sendable {
    /// What this client connects to.
    public let configuration: RedisConfiguration
    private let nodes: Nodes
    /// Sentinel only: the subscription to the sentinels' `+switch-master` events.
    private let switchWatch: Task<Void, Never>?

    private enum Nodes: Sendable {
        case single(CommandLoop)
        case cluster(ClusterRouter)
    }

    /// Makes a client; nothing is connected until the first command (with Sentinel, the sentinels' events are
    /// subscribed to at once).
    public init(configuration: RedisConfiguration) throws(RedisError) {
        self.configuration = configuration
        switch configuration.topology {
        case .standalone:
            nodes = .single(try CommandLoop(configuration: configuration))
            switchWatch = nil
        case .cluster:
            nodes = .cluster(ClusterRouter(configuration: configuration))
            switchWatch = nil
        case .sentinel:
            let resolver = SentinelResolver(configuration)!
            let loop = try CommandLoop(configuration: configuration) { deadline throws(RedisError) in try resolver.primary(deadline: deadline) }
            nodes = .single(loop)
            let watcher = try RedisSubscriber(
                configuration: resolver.sentinel(attempt: 0),
                connect: { attempt, deadline throws(RedisError) in try HiredisSocket.connect(resolver.sentinel(attempt: attempt), deadline: deadline) },
                channels: ["+switch-master"], patterns: [], healthCheckInterval: .seconds(1)
            ) { message in
                guard let primary = resolver.switchedPrimary(message) else { return }
                loop.retire(because: "the sentinels switched the primary to \(primary)", unlessConnectedTo: primary.description)
            }
            switchWatch = Task.detached { await watcher.run() }
        }
    }

    /// Makes a client from a URL (see ``RedisConfiguration/init(url:)``).
    public convenience init(url: String) throws(RedisError) {
        try self.init(configuration: RedisConfiguration(url: url))
    }

    deinit { close() }

    /// Closes the client: commands queued or in flight fail with ``RedisError/Code/connectionClosed``,
    /// and so does every later command.
    public func close() {
        switch nodes {
        case .single(let loop): loop.shutdown()
        case .cluster(let router): router.shutdown()
        }
        switchWatch?.cancel()
    }

    /// The primaries of a cluster as its slot map names them now (read anew); the one server otherwise (for
    /// Sentinel, the primary the sentinels name now).
    public func primaries() async throws(RedisError) -> [RedisConfiguration] {
        switch nodes {
        case .cluster(let router):
            return try await router.refreshedMap().primaries.map { configuration.node($0) }
        case .single:
            guard let resolver = SentinelResolver(configuration) else { return [configuration] }
            let deadline = ContinuousClock.now + configuration.connectTimeout
            let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<RedisConfiguration, RedisError>, Never>) in
                do throws(RedisError) {
                    try startThread(name: "fusebox-sentinel") {
                        continuation.resume(returning: Result { () throws(RedisError) in try resolver.primary(deadline: deadline) })
                    }
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
            var primary = try result.get()
            primary.requiresPrimary = false
            return [primary]
        }
    }

    /// Sends one command and returns its reply; an error reply throws ``RedisError/Code/serverError``.
    public func send(_ command: RedisCommand) async throws(RedisError) -> RESPValue {
        let replies = try await pipeline([command])
        return try replies[0].get(endpoint: configuration.endpoint.description)
    }

    /// Sends one command built from its name and arguments, e.g. `send("HGETALL", key)`.
    public func send(_ name: String, _ arguments: any RedisArgument...) async throws(RedisError) -> RESPValue {
        try await send(RedisCommand(name, arguments: arguments))
    }

    /// Sends many commands in one write (in a cluster, one write per node) and returns their replies in the same
    /// order.
    ///
    /// Error replies are returned in place as ``RESPValue/error(_:)``, so one failing command does not hide
    /// the others' results; only a connection failure or timeout throws.
    public func pipeline(_ commands: [RedisCommand]) async throws(RedisError) -> [RESPValue] {
        guard !commands.isEmpty else { return [] }
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<[RESPValue], RedisError>, Never>) in
            submit(commands) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Runs a script with `EVALSHA`; when the server (in a cluster, the node) answers `NOSCRIPT`, it sends
    /// `SCRIPT LOAD` and `EVALSHA` again, in one write.
    ///
    /// A script error (a Lua `error_reply` or runtime error) throws ``RedisError/Code/serverError`` with the
    /// server's message.
    public func run(_ script: RedisScript, keys: [String] = [], arguments: [any RedisArgument] = []) async throws(RedisError) -> RESPValue {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<RESPValue, RedisError>, Never>) in
            submit(script, keys: keys, arguments: arguments) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    // MARK: - Callbacks

    /// Queues `commands` (written together) and calls `completion` with their replies, in order, on the
    /// connection's thread. Keep `completion` short: the next replies wait for it.
    ///
    /// Requests are written in the order they are submitted, so a caller that submits A then B knows the server
    /// runs A first. Error replies are returned in place, as with ``pipeline(_:)``.
    public func submit(_ commands: [RedisCommand], completion: @escaping @Sendable (Result<[RESPValue], RedisError>) -> Void) {
        guard !commands.isEmpty else { return completion(.success([])) }
        guard case .single(let loop) = nodes else {
            if case .cluster(let router) = nodes { router.submit(commands, completion: completion) }
            return
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(commands.reduce(0) { $0 + $1.encoded.count })
        for command in commands { bytes.append(contentsOf: command.encoded) }
        loop.submit(CommandLoop.Request(bytes: bytes, replyCount: commands.count, complete: completion))
    }

    /// Runs a script with `EVALSHA` and calls `completion` with its reply on the connection's thread; on `NOSCRIPT`
    /// it sends `SCRIPT LOAD` and `EVALSHA` again in one write. An error reply is delivered as ``RedisError/Code/serverError``.
    public func submit(
        _ script: RedisScript, keys: [String], arguments: [any RedisArgument],
        completion: @escaping @Sendable (Result<RESPValue, RedisError>) -> Void
    ) {
        guard case .single(let loop) = nodes else {
            if case .cluster(let router) = nodes { router.submit(script, keys: keys, arguments: arguments, completion: completion) }
            return
        }
        let endpoint = configuration.endpoint.description
        let load = RedisCommand("SCRIPT", "LOAD", script.source)
        /// Delivers the script's reply after a `SCRIPT LOAD` sent with it, checking the SHA-1 it returned.
        @Sendable func afterLoad(_ result: Result<[RESPValue], RedisError>) {
            completion(result.flatMap { replies in
                Result { () throws(RedisError) in
                    try script.check(loadReply: try replies[0].get(endpoint: endpoint), endpoint: endpoint)
                    return try replies[1].get(endpoint: endpoint)
                }
            })
        }
        let command = RedisCommand("EVALSHA", arguments: [script.sha1, keys.count] + keys + arguments)
        loop.submit(CommandLoop.Request(bytes: command.encoded, replyCount: 1) { result in
            switch result {
            case .failure(let error):
                completion(.failure(error))
            case .success(let replies):
                if case .error(let message) = replies[0], message.hasPrefix("NOSCRIPT") {
                    var bytes = load.encoded
                    bytes.append(contentsOf: command.encoded)
                    loop.submit(CommandLoop.Request(bytes: bytes, replyCount: 2, complete: afterLoad))
                } else {
                    completion(Result { () throws(RedisError) in try replies[0].get(endpoint: endpoint) })
                }
            }
        })
    }
}
