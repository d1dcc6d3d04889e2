/// An error from the Redis wrapper: what went wrong (``code``), a message a person can act on, and the endpoint.
///
/// Every failure of this module is a `RedisError`; nothing in it traps on input from a user or from the network.
public struct RedisError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is. Compare with the static members, e.g. `error.code == .timeout`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let raw: String
        private init(_ raw: String) { self.raw = raw }

        /// The URL or an option of ``RedisConfiguration`` is not valid.
        public static let invalidConfiguration = Code("invalid configuration")
        /// Nothing listens at the endpoint.
        public static let connectionRefused = Code("connection refused")
        /// The connection could not be made for another reason (unknown host, no route, socket error).
        public static let connectionFailed = Code("connection failed")
        /// The operation did not finish within its configured timeout.
        public static let timeout = Code("timeout")
        /// The connection was closed, by the server or by ``RedisClient/close()``.
        public static let connectionClosed = Code("connection closed")
        /// The server sent bytes that are not valid RESP.
        public static let protocolError = Code("protocol error")
        /// The server answered with an error reply; ``RedisError/message`` holds the server's text.
        public static let serverError = Code("server error")
        /// `AUTH` was refused.
        public static let authenticationFailed = Code("authentication failed")
        /// A reply did not have the type or shape the caller asked for.
        public static let unexpectedReply = Code("unexpected reply")

        /// The code as a word, e.g. `timeout`.
        public var description: String { raw }
    }

    /// What kind of failure this is.
    public var code: Code
    /// A message a person can act on; for ``Code/serverError`` the server's own text.
    public var message: String
    /// The endpoint concerned, e.g. `127.0.0.1:6379` or `/run/redis.sock`; empty when there is none.
    public var endpoint: String
    /// The error this one wraps, if any.
    public var underlying: (any Error & Sendable)?
    /// The command was never written to a connection (none could be made, the reconnect pause was running, or
    /// the client was closing): the server cannot have run it.
    public var wasNotSent = false

    /// Makes an error. A server's `MOVED` or `ASK` answer gets a hint: the server is a Redis Cluster node.
    public init(code: Code, message: String, endpoint: String = "", underlying: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        if code == .serverError, ClusterRedirect(errorMessage: message) != nil, !message.contains(Self.clusterHint) {
            self.message += " (\(Self.clusterHint))"
        }
        self.endpoint = endpoint
        self.underlying = underlying
    }

    /// What a `MOVED` or `ASK` answer on a standalone connection means for the user.
    static let clusterHint = "the server is a Redis Cluster node; a cluster is reached with a redis+cluster://HOST:PORT URL"

    /// The server error's prefix, such as `NOSCRIPT`, `WRONGTYPE` or `NOPERM`; `nil` for other codes.
    public var serverErrorPrefix: Substring? {
        guard code == .serverError else { return nil }
        return message.split(separator: " ", maxSplits: 1).first
    }

    /// Error-reply prefixes by which the server refuses a command for its condition of the moment, before running
    /// it: the same command may succeed later, unchanged.
    public static let transientServerErrorPrefixes: Set<Substring> = [
        "OOM", "NOPERM", "NOAUTH", "BUSY", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "MISCONF",
        "NOREPLICAS", "MOVED", "ASK",
    ]

    /// `true` when sending the same command again may succeed: the connection failed or timed out (the command may
    /// or may not have run), or the server refused it for a condition that can pass (see
    /// ``transientServerErrorPrefixes``). `false` for configuration errors and replies that will not change.
    public var mayBeRetried: Bool {
        switch code {
        case .connectionRefused, .connectionFailed, .timeout, .connectionClosed, .protocolError: true
        case .serverError: serverErrorPrefix.map(Self.transientServerErrorPrefixes.contains) ?? false
        default: false
        }
    }

    /// `true` when the server certainly did not run the command: it was never sent (``wasNotSent``), or the server
    /// refused it for its condition before running it (see ``transientServerErrorPrefixes``). A write that failed
    /// this way can be merged with later ones; one that timed out or lost its connection may have run.
    public var certainlyNotRun: Bool {
        wasNotSent || (serverErrorPrefix.map(Self.transientServerErrorPrefixes.contains) ?? false)
    }

    /// A copy marked as never sent.
    func notSent() -> RedisError {
        var error = self
        error.wasNotSent = true
        return error
    }

    /// The code, the server's or the library's message, and the endpoint.
    public var description: String {
        var text = "Redis \(code)"
        if !endpoint.isEmpty { text += " (\(endpoint))" }
        text += ": \(message)"
        if let underlying { text += " [\(underlying)]" }
        return text
    }
}
