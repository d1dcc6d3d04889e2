/// A connection to one Redis server, shared by any number of concurrent tasks.
///
/// The socket is owned by a thread of the connection's own (started on first use): hiredis' blocking work
/// never runs on Swift's cooperative pool. Callers enqueue and await; requests that arrive while a round trip
/// is in flight are written together (automatic pipelining), and replies are matched to callers in order.
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
public final class RedisConnection: Sendable {
    /// What this connection connects to.
    public let configuration: RedisConfiguration
    private let loop: CommandLoop

    /// Makes a connection; nothing is connected until the first command.
    public init(configuration: RedisConfiguration) throws(RedisError) {
        self.configuration = configuration
        self.loop = try CommandLoop(configuration: configuration)
    }

    /// Makes a connection from a URL (see ``RedisConfiguration/init(url:)``).
    public convenience init(url: String) throws(RedisError) {
        try self.init(configuration: RedisConfiguration(url: url))
    }

    deinit { loop.shutdown() }

    /// Closes the connection: commands queued or in flight fail with ``RedisError/Code/connectionClosed``,
    /// and so does every later command.
    public func close() { loop.shutdown() }

    /// Sends one command and returns its reply; an error reply throws ``RedisError/Code/serverError``.
    public func send(_ command: RedisCommand) async throws(RedisError) -> RESPValue {
        let replies = try await exchange(command.encoded, replyCount: 1)
        return try replies[0].get(endpoint: configuration.endpoint.description)
    }

    /// Sends one command built from its name and arguments, e.g. `send("HGETALL", key)`.
    public func send(_ name: String, _ arguments: any RedisArgument...) async throws(RedisError) -> RESPValue {
        try await send(RedisCommand(name, arguments: arguments))
    }

    /// Sends many commands in one write and returns their replies in the same order.
    ///
    /// Error replies are returned in place as ``RESPValue/error(_:)``, so one failing command does not hide
    /// the others' results; only a connection failure or timeout throws.
    public func pipeline(_ commands: [RedisCommand]) async throws(RedisError) -> [RESPValue] {
        guard !commands.isEmpty else { return [] }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(commands.reduce(0) { $0 + $1.encoded.count })
        for command in commands { bytes.append(contentsOf: command.encoded) }
        return try await exchange(bytes, replyCount: commands.count)
    }

    /// Runs a script with `EVALSHA`. Before its SHA-1 is known, or when the server answers `NOSCRIPT`, it sends
    /// `SCRIPT LOAD` first (and retries once after `NOSCRIPT`).
    ///
    /// A script error (a Lua `error_reply` or runtime error) throws ``RedisError/Code/serverError`` with the
    /// server's message.
    public func run(_ script: RedisScript, keys: [String] = [], arguments: [any RedisArgument] = []) async throws(RedisError) -> RESPValue {
        let endpoint = configuration.endpoint.description
        func evalsha(_ sha: String) -> RedisCommand { RedisCommand("EVALSHA", arguments: [sha, keys.count] + keys + arguments) }
        func load() async throws(RedisError) -> String {
            try script.record(loadReply: try await send(RedisCommand("SCRIPT", "LOAD", script.source)), endpoint: endpoint)
        }
        let sha: String
        if let known = script.sha1 { sha = known } else { sha = try await load() }
        do {
            return try await send(evalsha(sha))
        } catch where error.serverErrorPrefix == "NOSCRIPT" {
            return try await send(evalsha(try await load()))
        }
    }

    // MARK: - Callbacks

    /// Queues `commands` (written together) and calls `completion` with their replies, in order, on the
    /// connection's thread. Keep `completion` short: the next replies wait for it.
    ///
    /// Requests are written in the order they are submitted, so a caller that submits A then B knows the server
    /// runs A first. Error replies are returned in place, as with ``pipeline(_:)``.
    public func submit(_ commands: [RedisCommand], completion: @escaping @Sendable (Result<[RESPValue], RedisError>) -> Void) {
        guard !commands.isEmpty else { return completion(.success([])) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(commands.reduce(0) { $0 + $1.encoded.count })
        for command in commands { bytes.append(contentsOf: command.encoded) }
        loop.submit(CommandLoop.Request(bytes: bytes, replyCount: commands.count, complete: completion))
    }

    /// Runs a script and calls `completion` with its reply on the connection's thread. Before its SHA-1 is known
    /// it sends `SCRIPT LOAD` and `EVAL` in one write (the script runs in submission order); on `NOSCRIPT` it sends
    /// `SCRIPT LOAD` and `EVALSHA` again in one write. An error reply is delivered as ``RedisError/Code/serverError``.
    public func submit(
        _ script: RedisScript, keys: [String], arguments: [any RedisArgument],
        completion: @escaping @Sendable (Result<RESPValue, RedisError>) -> Void
    ) {
        let endpoint = configuration.endpoint.description
        let load = RedisCommand("SCRIPT", "LOAD", script.source)
        /// Delivers the script's reply after a `SCRIPT LOAD` sent with it, recording the SHA-1 it returned.
        @Sendable func afterLoad(_ result: Result<[RESPValue], RedisError>) {
            completion(result.flatMap { replies in
                Result { () throws(RedisError) in
                    _ = try script.record(loadReply: try replies[0].get(endpoint: endpoint), endpoint: endpoint)
                    return try replies[1].get(endpoint: endpoint)
                }
            })
        }
        guard let sha = script.sha1 else {
            submit([load, RedisCommand("EVAL", arguments: [script.source, keys.count] + keys + arguments)], completion: afterLoad)
            return
        }
        let command = RedisCommand("EVALSHA", arguments: [sha, keys.count] + keys + arguments)
        submit([command]) { [loop] result in
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
        }
    }

    private func exchange(_ bytes: [UInt8], replyCount: Int) async throws(RedisError) -> [RESPValue] {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<[RESPValue], RedisError>, Never>) in
            loop.submit(CommandLoop.Request(bytes: bytes, replyCount: replyCount) { continuation.resume(returning: $0) })
        }
        return try result.get()
    }
}
