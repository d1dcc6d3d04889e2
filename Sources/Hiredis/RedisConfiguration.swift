/// Where and how to connect to Redis: topology, endpoint, credentials, database, timeouts and client name.
///
/// Build one from a URL, then adjust the timeouts:
/// - `redis://[user[:password]@]host[:port][/db]`: one server;
/// - `unix:///path/to.sock[?db=N][&user=U][&password=P]`: one server on a Unix socket;
/// - `redis+cluster://[user[:password]@]host:port[,host:port…]`: a Redis Cluster, found from its seed nodes;
/// - `redis+sentinel://[user[:password]@]host:port[,host:port…]/PRIMARY-NAME[/db][?sentinel_user=U&sentinel_password=P]`:
///   the primary that the sentinels name (user and password are the data nodes'; the sentinels' are in the query).
///
/// A bad URL throws ``RedisError`` with code ``RedisError/Code/invalidConfiguration``
/// and a message quoting the part that is wrong (passwords are never quoted).
public struct RedisConfiguration: Sendable, Hashable, CustomStringConvertible {
    /// Where the server listens.
    public enum Endpoint: Sendable, Hashable, CustomStringConvertible {
        /// A TCP host (name, IPv4 or IPv6 address) and port.
        case tcp(host: String, port: Int)
        /// A Unix domain socket.
        case unix(path: String)

        /// `host:port`, the socket path, or the list of seeds or sentinels.
        public var description: String {
            switch self {
            case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            case .unix(let path): path
            }
        }
    }

    /// How the servers are laid out.
    public enum Topology: Sendable, Hashable {
        /// One server, at ``RedisConfiguration/endpoint``.
        case standalone
        /// A Redis Cluster: the seed nodes asked for the slot map (``RedisConfiguration/endpoint`` is the first).
        case cluster(seeds: [Endpoint])
        /// The primary named `primaryName` by the sentinels at `sentinels`, reached with the sentinels' own
        /// credentials (``RedisConfiguration/endpoint`` is the first sentinel until the primary is known).
        case sentinel(sentinels: [Endpoint], primaryName: String, username: String?, password: String?)
    }

    /// How the servers are laid out; ``Topology/standalone`` unless the URL says otherwise.
    public var topology: Topology = .standalone
    /// Where the server listens (for a cluster, the first seed; for Sentinel, the first sentinel).
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
    /// Set for a node that must be a primary (Sentinel): the handshake asks `ROLE` and refuses a replica.
    var requiresPrimary = false

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

    /// Parses any URL form listed above.
    ///
    /// User and password may be percent-encoded. The default port is 6379 (26379 for a sentinel) and the default
    /// database 0.
    public init(url: String) throws(RedisError) {
        self = try RedisURLParser(url: url).parse()
    }

    /// This configuration for one node of its topology: same credentials and timeouts, standalone, at `endpoint`.
    public func node(_ endpoint: Endpoint) -> RedisConfiguration {
        var copy = self
        copy.topology = .standalone
        copy.endpoint = endpoint
        return copy
    }

    /// The configuration that reaches the sentinels (their credentials, no database); `nil` unless ``topology`` is
    /// ``Topology/sentinel(sentinels:primaryName:username:password:)``.
    var sentinelConfiguration: RedisConfiguration? {
        guard case .sentinel(let sentinels, _, let username, let password) = topology else { return nil }
        var copy = self
        copy.topology = .standalone
        copy.endpoint = sentinels[0]
        copy.username = username
        copy.password = password
        copy.database = 0
        return copy
    }

    /// The URL form of this configuration, with every password replaced by `***`.
    public var redactedURL: String {
        var userInfo = ""
        if username != nil || password != nil {
            userInfo += username ?? ""
            if password != nil { userInfo += ":***" }
            userInfo += "@"
        }
        switch (topology, endpoint) {
        case (.cluster(let seeds), _):
            return "redis+cluster://" + userInfo + seeds.map(\.description).joined(separator: ",")
        case (.sentinel(let sentinels, let name, let sentinelUser, let sentinelPassword), _):
            var text = "redis+sentinel://" + userInfo + sentinels.map(\.description).joined(separator: ",") + "/" + name
            if database != 0 { text += "/\(database)" }
            var query: [String] = []
            if let sentinelUser { query.append("sentinel_user=\(sentinelUser)") }
            if sentinelPassword != nil { query.append("sentinel_password=***") }
            return text + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))
        case (.standalone, .tcp):
            var text = "redis://" + userInfo + endpoint.description
            if database != 0 { text += "/\(database)" }
            return text
        case (.standalone, .unix(let path)):
            var query: [String] = []
            if database != 0 { query.append("db=\(database)") }
            if password != nil { query.append("password=***") }
            return "unix://\(path)" + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))
        }
    }

    /// The URL with any password replaced by `***`.
    public var description: String { redactedURL }
}

/// The URL grammar of ``RedisConfiguration/init(url:)``, one rule per method so each error names its part.
private struct RedisURLParser {
    let url: String

    func parse() throws(RedisError) -> RedisConfiguration {
        if let rest = url.dropPrefix("redis://") { return try parseTCP(rest) }
        if let rest = url.dropPrefix("unix://") { return try parseUnix(rest) }
        if let rest = url.dropPrefix("redis+cluster://") { return try parseCluster(rest) }
        if let rest = url.dropPrefix("redis+sentinel://") { return try parseSentinel(rest) }
        if url.hasPrefix("rediss://") || url.hasPrefix("rediss+") { throw invalid(Self.tlsRefusal) }
        // Quote the scheme only when it looks like one (the text may be a password pasted in the wrong place).
        if let colon = url.firstIndex(of: ":"), url[..<colon].allSatisfy({ $0.isLetter || $0.isNumber || "+-.".contains($0) }), colon > url.startIndex {
            throw invalid("scheme '\(url[..<colon])' is not supported; use redis, redis+cluster, redis+sentinel or unix")
        }
        throw invalid("no scheme; write redis://host:port or unix:///path/to.sock")
    }

    /// Why `rediss://` is refused: this build's hiredis (0.14) has no TLS.
    static let tlsRefusal = "scheme 'rediss' (TLS) needs hiredis 1.0 or later with hiredis_ssl, and this build has hiredis 0.14 "
        + "without TLS; reach a TLS server through a local TLS tunnel (stunnel) and a redis:// URL to it: see Docs/operations.md"

    private func parseTCP(_ rest: Substring) throws(RedisError) -> RedisConfiguration {
        if rest.contains("?") || rest.contains("#") {
            // The query is not quoted: it may hold a password.
            throw invalid("a query or fragment ('?…', '#…') is not supported in a redis:// URL; write a password as redis://:PASSWORD@host")
        }
        let authorityEnd = rest.firstIndex(of: "/") ?? rest.endIndex
        var config = RedisConfiguration()
        let hosts = try parseAuthority(rest[..<authorityEnd], into: &config, defaultPort: 6379)
        guard hosts.count == 1 else {
            throw invalid("a redis:// URL names one server; list several nodes as redis+cluster://host:port,host:port")
        }
        config.endpoint = hosts[0]
        config.database = try parseDatabase(rest[authorityEnd...])
        return config
    }

    private func parseCluster(_ rest: Substring) throws(RedisError) -> RedisConfiguration {
        if rest.contains("?") || rest.contains("#") {
            throw invalid("a query or fragment ('?…', '#…') is not supported in a redis+cluster:// URL")
        }
        let authorityEnd = rest.firstIndex(of: "/") ?? rest.endIndex
        var config = RedisConfiguration()
        let seeds = try parseAuthority(rest[..<authorityEnd], into: &config, defaultPort: 6379)
        guard try parseDatabase(rest[authorityEnd...]) == 0 else {
            throw invalid("a Redis Cluster has database 0 only; leave the database out of a redis+cluster:// URL")
        }
        config.endpoint = seeds[0]
        config.topology = .cluster(seeds: seeds)
        return config
    }

    private func parseSentinel(_ rest: Substring) throws(RedisError) -> RedisConfiguration {
        if rest.contains("#") { throw invalid("a fragment ('#…') is not supported in a redis+sentinel:// URL") }
        let queryStart = rest.firstIndex(of: "?") ?? rest.endIndex
        let beforeQuery = rest[..<queryStart]
        let authorityEnd = beforeQuery.firstIndex(of: "/") ?? beforeQuery.endIndex
        var config = RedisConfiguration()
        let sentinels = try parseAuthority(beforeQuery[..<authorityEnd], into: &config, defaultPort: 26379)
        let path = beforeQuery[authorityEnd...].dropFirst().split(separator: "/", omittingEmptySubsequences: false)
        guard let name = path.first, !name.isEmpty else {
            throw invalid("the primary's name is missing: write redis+sentinel://host:port/PRIMARY-NAME")
        }
        let primaryName = try decode(name, part: "primary name")
        guard primaryName.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }) else {
            throw invalid("primary name '\(name)' may hold no space or control character")
        }
        if path.count > 2 { throw invalid("unexpected '\(path[2...].joined(separator: "/"))' after the database") }
        if path.count == 2 { config.database = try parseDatabase("/" + path[1]) }
        var sentinelUser: String?
        var sentinelPassword: String?
        if queryStart < rest.endIndex {
            for pair in rest[rest.index(after: queryStart)...].split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let value = parts.count > 1 ? parts[1] : ""
                switch parts[0] {
                case "sentinel_password": sentinelPassword = try decode(value, part: "password")
                case "sentinel_user": sentinelUser = try decode(value, part: "user")
                default: throw invalid("query parameter '\(parts[0])' is not supported; use sentinel_user or sentinel_password")
                }
            }
        }
        config.endpoint = sentinels[0]
        config.topology = .sentinel(sentinels: sentinels, primaryName: primaryName, username: sentinelUser, password: sentinelPassword)
        return config
    }

    private func parseDatabase(_ path: Substring) throws(RedisError) -> Int {
        let dbText = path.drop(while: { $0 == "/" })
        guard !dbText.isEmpty else { return 0 }
        guard path.dropFirst().first != "/", let db = Int(dbText), db >= 0 else {
            throw invalid("database '\(path.dropFirst())' is not a non-negative number")
        }
        return db
    }

    /// Reads `[user[:password]@]host[:port][,host[:port]…]`: the credentials into `config`, and the hosts.
    private func parseAuthority(_ authority: Substring, into config: inout RedisConfiguration, defaultPort: Int) throws(RedisError) -> [RedisConfiguration.Endpoint] {
        var hostList = authority
        if let at = authority.lastIndex(of: "@") {
            let userInfo = authority[..<at]
            hostList = authority[authority.index(after: at)...]
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
        var endpoints: [RedisConfiguration.Endpoint] = []
        for hostPort in hostList.split(separator: ",", omittingEmptySubsequences: false) {
            endpoints.append(try parseHostPort(hostPort, defaultPort: defaultPort))
        }
        return endpoints
    }

    private func parseHostPort(_ hostPort: Substring, defaultPort: Int) throws(RedisError) -> RedisConfiguration.Endpoint {
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
        var port = defaultPort
        if let portText {
            guard let value = Int(portText), (1...65535).contains(value) else {
                throw invalid("port '\(portText)' is not a number between 1 and 65535")
            }
            port = value
        }
        return .tcp(host: String(host), port: port)
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
