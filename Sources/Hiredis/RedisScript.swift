/// A Lua script: its source, and the SHA-1 Redis knows it by.
///
/// ``RedisClient/run(_:keys:arguments:)`` and ``RedisClient/submit(_:keys:arguments:completion:)`` run it
/// with `EVALSHA`, from the first call: the SHA-1 is the hash of the source, computed here as Redis computes it, and
/// a `SCRIPT LOAD` that names the script otherwise is an error. Whenever the server answers `NOSCRIPT` (a restart, a
/// `SCRIPT FLUSH`, a node that has not seen it), the call sends `SCRIPT LOAD` and retries once, so callers never see it.
public struct RedisScript: Sendable {
    /// The Lua source.
    public let source: String
    /// The lowercase hex SHA-1 of ``source``: the name `EVALSHA` and `SCRIPT LOAD` use.
    public let sha1: String

    /// Makes a script value and hashes its source (once; nothing is sent until it is first run).
    public init(_ source: String) {
        self.source = source
        self.sha1 = SHA1.hex(of: source.utf8)
    }

    /// Checks what `SCRIPT LOAD` returned: anything but this script's SHA-1 is refused.
    func check(loadReply reply: RESPValue, endpoint: String) throws(RedisError) {
        guard let sha = reply.string, sha == sha1 else {
            throw RedisError(
                code: .unexpectedReply, message: "SCRIPT LOAD returned \(reply.summary), expected SHA-1 \(sha1)", endpoint: endpoint)
        }
    }
}
