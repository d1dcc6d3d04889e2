/// Where and how to connect to Redis: endpoint, credentials, database, timeouts and client name.
///
/// Build one from a URL, `redis://[user[:password]@]host[:port][/db]` or `unix:///path/to.sock[?db=N]`,
/// then adjust the timeouts. A bad URL throws ``RedisError`` with code ``RedisError/Code/invalidConfiguration``
/// and a message quoting the part that is wrong (passwords are never quoted).
public struct RedisConfiguration: Sendable, Hashable, CustomStringConvertible {
    /// Where the server listens.
    public enum Endpoint: Sendable, Hashable, CustomStringConvertible {
        /// A TCP host (name, IPv4 or IPv6 address) and port.
        case tcp(host: String, port: Int)
        /// A Unix domain socket.
        case unix(path: String)

        public var description: String {
            switch self {
            case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            case .unix(let path): path
            }
        }
    }

    /// Where the server listens.
    public var endpoint: Endpoint
    /// The ACL user for `AUTH user password`; `nil` with a password means `AUTH password`.
    public var username: String?
    /// The password for `AUTH`; `nil` sends no `AUTH`.
    public var password: String?
    /// The logical database to `SELECT`; 0 sends no `SELECT`.
    public var database: Int
    /// The longest a connection attempt (including `AUTH`, `SELECT` and `CLIENT SETNAME`) may take.
    public var connectTimeout: Duration
    /// The longest the server may make no progress on a written command (no reply to it or to those ahead of it);
    /// a command that waits longer fails with ``RedisError/Code/timeout`` and the connection is re-made.
    public var commandTimeout: Duration
    /// The name set with `CLIENT SETNAME`, visible in `CLIENT LIST`; `nil` sets none.
    public var clientName: String?

    /// Makes a configuration for a TCP endpoint.
    public init(
        host: String = "127.0.0.1", port: Int = 6379, username: String? = nil, password: String? = nil,
        database: Int = 0, connectTimeout: Duration = .seconds(2), commandTimeout: Duration = .seconds(1),
        clientName: String? = nil
    ) {
        self.init(
            endpoint: .tcp(host: host, port: port), username: username, password: password, database: database,
            connectTimeout: connectTimeout, commandTimeout: commandTimeout, clientName: clientName)
    }

    /// Makes a configuration for any endpoint.
    public init(
        endpoint: Endpoint, username: String? = nil, password: String? = nil, database: Int = 0,
        connectTimeout: Duration = .seconds(2), commandTimeout: Duration = .seconds(1), clientName: String? = nil
    ) {
        self.endpoint = endpoint
        self.username = username
        self.password = password
        self.database = database
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.clientName = clientName
    }

    /// Parses `redis://[user[:password]@]host[:port][/db]` or `unix:///path/to.sock[?db=N][&password=P]`.
    ///
    /// User and password may be percent-encoded. The default port is 6379 and the default database 0.
    public init(url: String) throws(RedisError) {
        self = try RedisURLParser(url: url).parse()
    }

    /// The URL form of this configuration, with the password replaced by `***`.
    public var redactedURL: String {
        switch endpoint {
        case .tcp:
            var text = "redis://"
            if username != nil || password != nil {
                text += username ?? ""
                if password != nil { text += ":***" }
                text += "@"
            }
            text += endpoint.description
            if database != 0 { text += "/\(database)" }
            return text
        case .unix(let path):
            var query: [String] = []
            if database != 0 { query.append("db=\(database)") }
            if password != nil { query.append("password=***") }
            return "unix://\(path)" + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))
        }
    }

    public var description: String { redactedURL }
}

/// The URL grammar of ``RedisConfiguration/init(url:)``, one rule per method so each error names its part.
private struct RedisURLParser {
    let url: String

    func parse() throws(RedisError) -> RedisConfiguration {
        if let rest = url.dropPrefix("redis://") { return try parseTCP(rest) }
        if let rest = url.dropPrefix("unix://") { return try parseUnix(rest) }
        if url.hasPrefix("rediss://") { throw invalid("scheme 'rediss' (TLS) is not supported; use 'redis' or 'unix'") }
        for (scheme, topology) in [("redis+cluster", "Redis Cluster"), ("redis+sentinel", "Redis Sentinel")] where url.hasPrefix(scheme + "://") {
            throw invalid("scheme '\(scheme)' (\(topology)) is not supported by this version yet; use 'redis' or 'unix'")
        }
        // Quote the scheme only when it looks like one (the text may be a password pasted in the wrong place).
        if let colon = url.firstIndex(of: ":"), url[..<colon].allSatisfy({ $0.isLetter || $0.isNumber || "+-.".contains($0) }), colon > url.startIndex {
            throw invalid("scheme '\(url[..<colon])' is not supported; use 'redis' or 'unix'")
        }
        throw invalid("no scheme; write redis://host:port or unix:///path/to.sock")
    }

    private func parseTCP(_ rest: Substring) throws(RedisError) -> RedisConfiguration {
        if rest.contains("?") || rest.contains("#") {
            // The query is not quoted: it may hold a password.
            throw invalid("a query or fragment ('?…', '#…') is not supported in a redis:// URL; write a password as redis://:PASSWORD@host")
        }
        let authorityEnd = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<authorityEnd]
        let path = rest[authorityEnd...]

        var config = RedisConfiguration()
        var hostPort = authority
        if let at = authority.lastIndex(of: "@") {
            let userInfo = authority[..<at]
            hostPort = authority[authority.index(after: at)...]
            if let colon = userInfo.firstIndex(of: ":") {
                let user = try decode(userInfo[..<colon], part: "user")
                config.username = user.isEmpty ? nil : user
                config.password = try decode(userInfo[userInfo.index(after: colon)...], part: "password")
            } else {
                // `redis://secret@host` is the common password-only spelling: the part is a password, never quoted.
                let password = try decode(userInfo, part: "password")
                guard !password.isEmpty else { throw invalid("empty password before '@'") }
                config.password = password
            }
        }

        var host: Substring
        var portText: Substring?
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else {
                throw invalid("host '\(hostPort)' opens '[' without a closing ']'")
            }
            host = hostPort[hostPort.index(after: hostPort.startIndex)..<close]
            let after = hostPort[hostPort.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw invalid("unexpected '\(after)' after host '[\(host)]'") }
                portText = after.dropFirst()
            }
        } else if let colon = hostPort.lastIndex(of: ":") {
            host = hostPort[..<colon]
            portText = hostPort[hostPort.index(after: colon)...]
        } else {
            host = hostPort
        }
        guard !host.isEmpty else { throw invalid("host is missing") }
        guard host.allSatisfy({ $0.isLetter || $0.isNumber || "-._:%".contains($0) }) else {
            throw invalid("host '\(host)' contains characters a host name cannot have")
        }
        var port = 6379
        if let portText {
            guard let value = Int(portText), (1...65535).contains(value) else {
                throw invalid("port '\(portText)' is not a number between 1 and 65535")
            }
            port = value
        }
        config.endpoint = .tcp(host: String(host), port: port)

        let dbText = path.drop(while: { $0 == "/" })
        if !dbText.isEmpty {
            guard path.dropFirst().first != "/", let db = Int(dbText), db >= 0 else {
                throw invalid("database '\(path.dropFirst())' is not a non-negative number")
            }
            config.database = db
        }
        return config
    }

    private func parseUnix(_ rest: Substring) throws(RedisError) -> RedisConfiguration {
        let queryStart = rest.firstIndex(of: "?") ?? rest.endIndex
        let path = rest[..<queryStart]
        guard path.hasPrefix("/"), path.count > 1 else {
            throw invalid("socket path '\(path)' must be absolute, as in unix:///run/redis.sock")
        }
        var config = RedisConfiguration(endpoint: .unix(path: String(path)))
        guard queryStart < rest.endIndex else { return config }
        for pair in rest[rest.index(after: queryStart)...].split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = parts[0]
            let value = parts.count > 1 ? parts[1] : ""
            switch key {
            case "db":
                guard let db = Int(value), db >= 0 else {
                    throw invalid("database '\(value)' is not a non-negative number")
                }
                config.database = db
            case "password": config.password = try decode(value, part: "password")
            case "user": config.username = try decode(value, part: "user")
            default: throw invalid("query parameter '\(key)' is not supported; use db, user or password")
            }
        }
        return config
    }

    private func decode(_ text: Substring, part: String) throws(RedisError) -> String {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else { bytes.append(byte); continue }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                // Never quote a password, even a malformed one.
                throw invalid(part == "password" ? "password has a bad percent-escape" : "\(part) '\(text)' has a bad percent-escape")
            }
            bytes.append(high << 4 | low)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    private func invalid(_ reason: String) -> RedisError {
        RedisError(code: .invalidConfiguration, message: "invalid Redis URL '\(redacted)': \(reason)")
    }

    /// The URL with its user information (before the authority's last `@`) and every `password=` value replaced by
    /// `***`, so errors never print a password.
    private var redacted: String {
        var text = url
        if let schemeEnd = text.firstRange(of: "://") {
            let rest = text[schemeEnd.upperBound...]
            let authority = rest.prefix(while: { !"/?#".contains($0) })
            if let at = authority.lastIndex(of: "@") {
                let userInfo = authority[..<at]
                let masked = userInfo.firstIndex(of: ":").map { userInfo[..<$0] + ":***" } ?? "***"
                text.replaceSubrange(userInfo.startIndex..<at, with: masked)
            }
        }
        var result = ""
        var remaining = text[...]
        while let found = remaining.firstRange(of: "password=") {
            result += remaining[..<found.upperBound] + "***"
            remaining = remaining[found.upperBound...].drop(while: { $0 != "&" && $0 != "#" })
        }
        return result + remaining
    }
}

extension String {
    fileprivate func dropPrefix(_ prefix: String) -> Substring? {
        hasPrefix(prefix) ? self[index(startIndex, offsetBy: prefix.count)...] : nil
    }
}
