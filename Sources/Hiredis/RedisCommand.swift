/// A value that can be sent as one argument of a Redis command.
public protocol RedisArgument: Sendable {
    /// Appends this argument's bytes (without RESP framing) to `buffer`.
    func appendBytes(to buffer: inout [UInt8])
}

extension String: RedisArgument {
    public func appendBytes(to buffer: inout [UInt8]) { buffer.append(contentsOf: utf8) }
}

extension Substring: RedisArgument {
    public func appendBytes(to buffer: inout [UInt8]) { buffer.append(contentsOf: utf8) }
}

extension Int: RedisArgument {
    public func appendBytes(to buffer: inout [UInt8]) { buffer.append(contentsOf: String(self).utf8) }
}

extension Array: RedisArgument where Element == UInt8 {
    public func appendBytes(to buffer: inout [UInt8]) { buffer.append(contentsOf: self) }
}

/// One Redis command, encoded once as a RESP array of bulk strings (binary-safe).
///
/// ```swift
/// let command = RedisCommand("HSET", "fusebox:{payments}:state", "state", "open")
/// ```
public struct RedisCommand: Sendable, Hashable, CustomStringConvertible {
    /// The command's bytes on the wire.
    public let encoded: [UInt8]
    /// The command name, upper-cased, for errors and logs.
    public let name: String
    /// Where the key that routes this command in a cluster lies in ``encoded``; `nil` for a command without keys.
    let keyBytes: Range<Int>?

    /// Makes a command from its name and arguments.
    public init(_ name: String, _ arguments: any RedisArgument...) {
        self.init(name, arguments: arguments)
    }

    /// Makes a command from its name and an array of arguments.
    public init(_ name: String, arguments: [any RedisArgument]) {
        var buffer: [UInt8] = []
        buffer.reserveCapacity(16 + name.utf8.count + arguments.count * 24)
        Self.appendHeader(UInt8(ascii: "*"), arguments.count + 1, to: &buffer)
        Self.appendBulk(name, to: &buffer)
        let upper = name.uppercased()
        var keyIndex = Self.keyArgumentIndex(upper, argumentCount: arguments.count)
        var keyBytes: Range<Int>?
        var scratch: [UInt8] = []
        for (index, argument) in arguments.enumerated() {
            scratch.removeAll(keepingCapacity: true)
            argument.appendBytes(to: &scratch)
            Self.appendHeader(UInt8(ascii: "$"), scratch.count, to: &buffer)
            if index == keyIndex { keyBytes = buffer.count..<(buffer.count + scratch.count) }
            if index == 1, keyIndex == 2, Self.scriptCommands.contains(upper) {
                // EVAL script numkeys key…: a script without keys runs anywhere.
                if Int(String(decoding: scratch, as: UTF8.self)) ?? 0 <= 0 { keyIndex = nil }
            }
            buffer.append(contentsOf: scratch)
            buffer.append(contentsOf: [13, 10])
        }
        self.encoded = buffer
        self.name = upper
        self.keyBytes = keyBytes
    }

    /// The cluster slot of the command's key; `nil` for a command without keys (any node answers it).
    public var slot: Int? {
        keyBytes.map { ClusterSlot.of(key: encoded[$0]) }
    }

    private static let scriptCommands: Set<String> = ["EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"]
    private static let secondArgumentKeyed: Set<String> = ["MEMORY", "OBJECT", "XINFO"]
    private static let keyless: Set<String> = [
        "ACL", "ASKING", "AUTH", "BGREWRITEAOF", "BGSAVE", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "DBSIZE", "DEBUG",
        "ECHO", "EXEC", "FLUSHALL", "FLUSHDB", "FUNCTION", "HELLO", "INFO", "KEYS", "LASTSAVE", "LATENCY", "MONITOR",
        "MULTI", "PING", "PSUBSCRIBE", "PUBLISH", "PUNSUBSCRIBE", "QUIT", "RANDOMKEY", "READONLY", "READWRITE", "RESET",
        "ROLE", "SAVE", "SCAN", "SCRIPT", "SELECT", "SENTINEL", "SHUTDOWN", "SLOWLOG", "SUBSCRIBE", "SWAPDB", "TIME",
        "UNSUBSCRIBE", "WAIT",
    ]

    /// Which argument names the key that routes a command: the first, for the commands this package sends and most
    /// others; the third for scripts (after the script and the key count); none for server and connection commands.
    private static func keyArgumentIndex(_ name: String, argumentCount: Int) -> Int? {
        let index = scriptCommands.contains(name) ? 2 : secondArgumentKeyed.contains(name) ? 1 : keyless.contains(name) ? nil : 0
        return index.flatMap { $0 < argumentCount ? $0 : nil }
    }

    /// The command's name only: arguments may hold secrets.
    public var description: String { name }

    private static func appendBulk(_ text: String, to buffer: inout [UInt8]) {
        appendHeader(UInt8(ascii: "$"), text.utf8.count, to: &buffer)
        buffer.append(contentsOf: text.utf8)
        buffer.append(contentsOf: [13, 10])
    }

    private static func appendHeader(_ marker: UInt8, _ count: Int, to buffer: inout [UInt8]) {
        buffer.append(marker)
        buffer.append(contentsOf: String(count).utf8)
        buffer.append(contentsOf: [13, 10])
    }
}
