/// Redis Cluster's key space: 16,384 hash slots, each served by one primary.
///
/// Pure values, no I/O: the slot of a key, the slot map a cluster reports (`CLUSTER SHARDS`, or `CLUSTER SLOTS` on
/// servers before 7.0), and the redirections (`MOVED`, `ASK`) a node answers with when it does not serve a slot.
public enum ClusterSlot {
    /// The number of hash slots.
    public static let count = 16_384

    /// The slot of `key`: CRC16 (XMODEM) of the key modulo 16,384, or of its hash tag, the text between the first
    /// `{` and the next `}` when that text is not empty. All keys of one Fusebox breaker share the tag `{NAME}`.
    public static func of(key: String) -> Int {
        of(key: Array(key.utf8))
    }

    /// The slot of a key given as bytes.
    public static func of(key: [UInt8]) -> Int {
        of(key: key[...])
    }

    /// The slot of a key given as a slice of bytes.
    public static func of(key: ArraySlice<UInt8>) -> Int {
        var hashed = key
        if let open = key.firstIndex(of: UInt8(ascii: "{")),
           let close = key[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1 {
            hashed = key[(open + 1)..<close]
        }
        return Int(crc16(hashed)) & (count - 1)
    }

    /// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), as the cluster specification defines it.
    static func crc16(_ bytes: ArraySlice<UInt8>) -> UInt16 {
        var crc: UInt16 = 0
        for byte in bytes {
            crc = (crc << 8) ^ table[Int(UInt8(truncatingIfNeeded: crc >> 8) ^ byte)]
        }
        return crc
    }

    private static let table: [UInt16] = (0..<256).map { index in
        var value = UInt16(index) << 8
        for _ in 0..<8 { value = value & 0x8000 != 0 ? (value << 1) ^ 0x1021 : value << 1 }
        return value
    }
}

/// Which primary serves each slot, as a cluster node reported it.
public struct ClusterSlotMap: Sendable, Hashable {
    /// One contiguous run of slots and the nodes that hold it.
    public struct Range: Sendable, Hashable {
        /// The slots, first to last.
        public var slots: ClosedRange<Int>
        /// The node that serves them.
        public var primary: RedisConfiguration.Endpoint
        /// Its replicas that are online.
        public var replicas: [RedisConfiguration.Endpoint]

        /// Makes a range.
        public init(slots: ClosedRange<Int>, primary: RedisConfiguration.Endpoint, replicas: [RedisConfiguration.Endpoint] = []) {
            self.slots = slots
            self.primary = primary
            self.replicas = replicas
        }
    }

    /// The runs of slots, sorted by their first slot.
    public private(set) var ranges: [Range]

    /// Makes a map from ranges (sorted here); overlapping ranges are refused.
    public init(ranges: [Range]) throws(RedisError) {
        let sorted = ranges.sorted { $0.slots.lowerBound < $1.slots.lowerBound }
        for (earlier, later) in zip(sorted, sorted.dropFirst()) where earlier.slots.upperBound >= later.slots.lowerBound {
            throw RedisError(code: .unexpectedReply, message: "the cluster reported slots \(earlier.slots) and \(later.slots), which overlap")
        }
        guard sorted.allSatisfy({ $0.slots.lowerBound >= 0 && $0.slots.upperBound < ClusterSlot.count }) else {
            throw RedisError(code: .unexpectedReply, message: "the cluster reported a slot outside 0…\(ClusterSlot.count - 1)")
        }
        self.ranges = sorted
    }

    /// The primary serving `slot`, or `nil` when no node serves it (the cluster is incomplete).
    public func primary(forSlot slot: Int) -> RedisConfiguration.Endpoint? {
        var low = 0
        var high = ranges.count - 1
        while low <= high {
            let middle = (low + high) / 2
            let range = ranges[middle].slots
            if slot < range.lowerBound { high = middle - 1 } else if slot > range.upperBound { low = middle + 1 } else { return ranges[middle].primary }
        }
        return nil
    }

    /// The primary serving `key`.
    public func primary(forKey key: String) -> RedisConfiguration.Endpoint? {
        primary(forSlot: ClusterSlot.of(key: key))
    }

    /// Every primary, once, in slot order.
    public var primaries: [RedisConfiguration.Endpoint] {
        var seen: Set<RedisConfiguration.Endpoint> = []
        return ranges.map(\.primary).filter { seen.insert($0).inserted }
    }

    /// The number of slots some primary serves (16,384 when the cluster covers them all).
    public var coveredSlots: Int { ranges.reduce(0) { $0 + $1.slots.count } }

    /// Parses a `CLUSTER SHARDS` reply (Redis 7): per shard, `slots` as start/end pairs and `nodes`, each a map
    /// with `ip` (or `endpoint`), `port` (or `tls-port`), `role` and `health`. Nodes that are not `online` are left
    /// out; a shard without an online primary serves no slot.
    public init(shards reply: RESPValue) throws(RedisError) {
        guard let shards = reply.array else { throw Self.unexpected("CLUSTER SHARDS", reply) }
        var ranges: [Range] = []
        for shard in shards {
            let fields = try Self.map(shard, "a shard")
            guard let slotBounds = fields["slots"]?.array, let nodes = fields["nodes"]?.array else {
                throw Self.unexpected("CLUSTER SHARDS (a shard without slots or nodes)", shard)
            }
            var primary: RedisConfiguration.Endpoint?
            var replicas: [RedisConfiguration.Endpoint] = []
            for node in nodes {
                let node = try Self.map(node, "a node")
                guard node["health"]?.string.map({ $0 == "online" }) ?? true else { continue }
                let host = node["ip"]?.string ?? node["endpoint"]?.string ?? ""
                guard let port = node["port"]?.int ?? node["port"]?.string.flatMap({ Int($0) }), !host.isEmpty else { continue }
                let endpoint = RedisConfiguration.Endpoint.tcp(host: host, port: port)
                if node["role"]?.string == "master" { primary = endpoint } else { replicas.append(endpoint) }
            }
            guard let primary else { continue }
            var index = 0
            while index + 1 < slotBounds.count {
                guard let start = slotBounds[index].int ?? slotBounds[index].string.flatMap({ Int($0) }),
                      let end = slotBounds[index + 1].int ?? slotBounds[index + 1].string.flatMap({ Int($0) }), start <= end else {
                    throw Self.unexpected("CLUSTER SHARDS (slot bounds)", shard)
                }
                ranges.append(Range(slots: start...end, primary: primary, replicas: replicas))
                index += 2
            }
        }
        try self.init(ranges: ranges)
    }

    /// Parses a `CLUSTER SLOTS` reply: per range, start, end, then the primary and the replicas as
    /// `[host, port, id, …]`.
    public init(slots reply: RESPValue) throws(RedisError) {
        guard let entries = reply.array else { throw Self.unexpected("CLUSTER SLOTS", reply) }
        var ranges: [Range] = []
        for entry in entries {
            guard let parts = entry.array, parts.count >= 3, let start = parts[0].int, let end = parts[1].int, start <= end else {
                throw Self.unexpected("CLUSTER SLOTS (a range)", entry)
            }
            var nodes: [RedisConfiguration.Endpoint] = []
            for node in parts[2...] {
                guard let fields = node.array, fields.count >= 2, let host = fields[0].string, let port = fields[1].int else {
                    throw Self.unexpected("CLUSTER SLOTS (a node)", node)
                }
                nodes.append(.tcp(host: host, port: port))
            }
            ranges.append(Range(slots: start...end, primary: nodes[0], replicas: Array(nodes.dropFirst())))
        }
        try self.init(ranges: ranges)
    }

    /// A RESP2 map (a flat array of alternating names and values) as a dictionary.
    private static func map(_ value: RESPValue, _ what: String) throws(RedisError) -> [String: RESPValue] {
        guard let items = value.array, items.count % 2 == 0 else { throw unexpected("CLUSTER SHARDS (\(what))", value) }
        var fields: [String: RESPValue] = [:]
        for index in stride(from: 0, to: items.count, by: 2) {
            guard let name = items[index].string else { throw unexpected("CLUSTER SHARDS (\(what))", value) }
            fields[name] = items[index + 1]
        }
        return fields
    }

    private static func unexpected(_ what: String, _ value: RESPValue) -> RedisError {
        RedisError(code: .unexpectedReply, message: "\(what) answered \(String(describing: value).prefix(200))")
    }
}

/// A node's answer that another node serves the slot: `MOVED` (for good: refresh the map) or `ASK` (this one
/// command, during a migration: send `ASKING` then the command to that node).
public struct ClusterRedirect: Sendable, Hashable {
    /// Which redirection.
    public enum Kind: Sendable, Hashable {
        /// The slot lives on another node now: refresh the map and retry there.
        case moved
        /// The slot is migrating: retry once on that node, after `ASKING`.
        case ask
    }

    /// `MOVED` or `ASK`.
    public var kind: Kind
    /// The key's slot.
    public var slot: Int
    /// The node to ask instead.
    public var endpoint: RedisConfiguration.Endpoint

    /// Makes a redirection.
    public init(kind: Kind, slot: Int, endpoint: RedisConfiguration.Endpoint) {
        self.kind = kind
        self.slot = slot
        self.endpoint = endpoint
    }

    /// Parses `MOVED 3999 127.0.0.1:6381` or `ASK 3999 [::1]:6381` (the text of an error reply, and anything after
    /// it); `nil` otherwise.
    public init?(errorMessage: String) {
        let parts = errorMessage.split(separator: " ", maxSplits: 3)
        guard parts.count >= 3, let slot = Int(parts[1]), (0..<ClusterSlot.count).contains(slot) else { return nil }
        switch parts[0] {
        case "MOVED": kind = .moved
        case "ASK": kind = .ask
        default: return nil
        }
        let address = parts[2]
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]), (1...65535).contains(port) else {
            return nil
        }
        var host = address[..<colon]
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard !host.isEmpty else { return nil }
        self.slot = slot
        self.endpoint = .tcp(host: String(host), port: port)
    }
}
