/// One reply from Redis, converted once from hiredis' `redisReply` (which is freed straight after).
///
/// Bulk strings are kept as bytes, so values are binary-safe; the decoding helpers turn them into
/// `String`, `Int`, dictionaries and arrays and throw ``RedisError`` (``RedisError/Code/unexpectedReply``)
/// when the shape is not what was asked for.
public enum RESPValue: Sendable, Hashable {
    /// The null bulk string or null array.
    case null
    /// A simple status reply such as `OK` or `PONG`.
    case status(String)
    /// An error reply; the server's text, e.g. `WRONGTYPE Operation against a key holding the wrong kind of value`.
    case error(String)
    /// An integer reply.
    case integer(Int)
    /// A bulk string, byte for byte.
    case bulk([UInt8])
    /// An array reply (also used for RESP3 maps, sets and pushes when built against hiredis 1.x).
    case array([RESPValue])
}

extension RESPValue {
    /// `true` for ``null``.
    public var isNull: Bool { if case .null = self { true } else { false } }

    /// The value as text: bulk strings (decoded as UTF-8, invalid sequences repaired), statuses and integers.
    public var string: String? {
        switch self {
        case .bulk(let bytes): String(decoding: bytes, as: UTF8.self)
        case .status(let text): text
        case .integer(let value): String(value)
        default: nil
        }
    }

    /// The value as an integer: integer replies, and bulk strings or statuses holding a decimal integer.
    public var int: Int? {
        switch self {
        case .integer(let value): value
        case .bulk, .status: string.flatMap { Int($0) }
        default: nil
        }
    }

    /// The bytes of a bulk string or status.
    public var bytes: [UInt8]? {
        switch self {
        case .bulk(let bytes): bytes
        case .status(let text): Array(text.utf8)
        default: nil
        }
    }

    /// The elements of an array reply.
    public var array: [RESPValue]? {
        if case .array(let values) = self { values } else { nil }
    }

    /// Throws the error reply as ``RedisError`` and returns any other value unchanged.
    public func get(endpoint: String = "") throws(RedisError) -> RESPValue {
        if case .error(let message) = self {
            throw RedisError(code: .serverError, message: message, endpoint: endpoint)
        }
        return self
    }

    /// Decodes a text reply; throws when the reply is not one.
    public func decodeString() throws(RedisError) -> String {
        guard let value = try get().string else { throw mismatch("a string") }
        return value
    }

    /// Decodes an integer reply; throws when the reply is not one.
    public func decodeInt() throws(RedisError) -> Int {
        guard let value = try get().int else { throw mismatch("an integer") }
        return value
    }

    /// Decodes an array of text values (`null` elements are skipped); throws when the reply is not an array.
    public func decodeStrings() throws(RedisError) -> [String] {
        guard let values = try get().array else { throw mismatch("an array") }
        var result: [String] = []
        result.reserveCapacity(values.count)
        for value in values where !value.isNull {
            guard let text = value.string else { throw mismatch("an array of strings") }
            result.append(text)
        }
        return result
    }

    /// Decodes an `HGETALL`-style flat array of field/value pairs into a dictionary.
    public func decodeDictionary() throws(RedisError) -> [String: String] {
        guard let values = try get().array else { throw mismatch("an array of field/value pairs") }
        guard values.count.isMultiple(of: 2) else { throw mismatch("an even number of field/value elements") }
        var result: [String: String] = [:]
        result.reserveCapacity(values.count / 2)
        var index = 0
        while index < values.count {
            guard let field = values[index].string, let value = values[index + 1].string else {
                throw mismatch("string fields and values")
            }
            result[field] = value
            index += 2
        }
        return result
    }

    private func mismatch(_ expected: String) -> RedisError {
        RedisError(code: .unexpectedReply, message: "expected \(expected), got \(self.summary)")
    }

    /// A short description for error messages: the type and a prefix of the content.
    var summary: String {
        switch self {
        case .null: return "null"
        case .status(let text): return "status '\(text.prefix(40))'"
        case .error(let text): return "error '\(text.prefix(80))'"
        case .integer(let value): return "integer \(value)"
        case .bulk(let bytes): return "bulk string of \(bytes.count) bytes"
        case .array(let values): return "array of \(values.count) elements"
        }
    }
}
