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
        var scratch: [UInt8] = []
        for argument in arguments {
            scratch.removeAll(keepingCapacity: true)
            argument.appendBytes(to: &scratch)
            Self.appendHeader(UInt8(ascii: "$"), scratch.count, to: &buffer)
            buffer.append(contentsOf: scratch)
            buffer.append(contentsOf: [13, 10])
        }
        self.encoded = buffer
        self.name = name.uppercased()
    }

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
