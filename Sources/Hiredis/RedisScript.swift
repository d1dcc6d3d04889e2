import FuseboxLocking
import Synchronization

/// A Lua script: its source, and the SHA-1 Redis knows it by.
///
/// ``RedisClient/run(_:keys:arguments:)`` and ``RedisClient/submit(_:keys:arguments:completion:)`` run it
/// with `EVALSHA`. The SHA-1 is never computed here: it is either given (a build step hashed the source with a
/// standard tool, and `SCRIPT LOAD` must agree) or learnt from the first `SCRIPT LOAD`. Whenever the server answers
/// `NOSCRIPT` (a restart, a `SCRIPT FLUSH`), the call sends `SCRIPT LOAD` and retries once, so callers never see it.
public final class RedisScript: Sendable {
    /// The Lua source.
    public let source: String
    private let expected: String?
    private let loaded: Locked<String?>

    /// Makes a script value; nothing is sent until it is first run. `sha1`, when given, is the lowercase hex
    /// SHA-1 of `source` as a build step computed it: calls use it from the first, and a `SCRIPT LOAD` that
    /// returns another is an error.
    public init(_ source: String, sha1: String? = nil) {
        self.source = source
        self.expected = sha1
        self.loaded = Locked(sha1)
    }

    /// The lowercase hex SHA-1 of ``source``: the one given, or the one `SCRIPT LOAD` returned; `nil` before either.
    public var sha1: String? { loaded.withLock { $0 } }

    /// Records what `SCRIPT LOAD` returned; anything but 40 hex digits, or another SHA-1 than the one given, is
    /// refused.
    func record(loadReply reply: RESPValue, endpoint: String) throws(RedisError) -> String {
        guard let sha = reply.string, sha.utf8.count == 40, sha.utf8.allSatisfy({ isHexDigit($0) }) else {
            throw RedisError(code: .unexpectedReply, message: "SCRIPT LOAD returned \(reply.summary), not a SHA-1", endpoint: endpoint)
        }
        if let expected, expected != sha {
            throw RedisError(
                code: .unexpectedReply, message: "SCRIPT LOAD returned \(sha), expected SHA-1 \(expected)", endpoint: endpoint)
        }
        loaded.withLock { $0 = sha }
        return sha
    }

    private func isHexDigit(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
    }
}
