import Fusebox
import Hiredis

/// Inspects and steers the breakers of one namespace in Redis, without knowing their policies: the operator's
/// side of Fusebox, used by the `fusebox` command.
///
/// Every change goes through `lua/breaker.lua`, which takes the policy an instance stored with the breaker, so
/// a transition made here is published to and seen by every instance.
public struct BreakerOperator: Sendable {
    /// The connection used.
    public let connection: RedisClient
    /// The key prefix.
    public let namespace: String
    /// The name written to the events stream for changes made here.
    public let actor: String

    /// Makes an operator for `namespace` on `connection`.
    public init(connection: RedisClient, namespace: String = "fusebox", actor: String = "fusebox-cli") {
        self.connection = connection
        self.namespace = namespace
        self.actor = actor
    }

    /// The channel transitions are published on.
    public var channel: String { "\(namespace):transitions" }

    /// Every breaker name registered in the namespace, sorted.
    public func names() async throws(FuseboxError) -> [String] {
        do {
            return try await connection.send("SMEMBERS", "\(namespace):breakers").decodeStrings().sorted()
        } catch {
            throw Self.unavailable(error)
        }
    }

    /// The snapshot of `name`, applying due time-based transitions as any read does.
    public func snapshot(of name: String) async throws(FuseboxError) -> BreakerSnapshot {
        let reply = try await call("read", on: name)
        return try BreakerSnapshot(name: name, reply: reply, totalsKey: keys(of: name)[2])
    }

    /// Snapshots of every breaker, sorted by name.
    public func snapshots() async throws(FuseboxError) -> [BreakerSnapshot] {
        var result: [BreakerSnapshot] = []
        for name in try await names() { result.append(try await snapshot(of: name)) }
        return result
    }

    /// The last transitions of `name` (up to 100), oldest first.
    public func timeline(of name: String) async throws(FuseboxError) -> [BreakerTransition] {
        try await requireKnown(name)
        do {
            return try await Self.timeline(of: name, eventsKey: keys(of: name)[3], connection: connection)
        } catch let error as FuseboxError {
            throw error
        } catch {
            throw Self.unavailable(error as! RedisError)
        }
    }

    /// Forces `name` open on every instance until reset. A breaker no instance has used yet (or whose keys Redis
    /// lost) is made isolated: the first instance to use it honours the isolation.
    public func isolate(_ name: String, reason: String) async throws(FuseboxError) -> BreakerSnapshot {
        try BreakerRegistry.validate(name: name)
        _ = try await call("isolate", on: name, extra: [reason], requiringKnown: false)
        do {
            _ = try await connection.send("SADD", "\(namespace):breakers", name)
        } catch {
            throw Self.unavailable(error)
        }
        return try await snapshot(of: name)
    }

    /// Closes `name` on every instance, with an empty window; repairs corrupt keys.
    public func reset(_ name: String) async throws(FuseboxError) -> BreakerSnapshot {
        _ = try await call("reset", on: name)
        return try await snapshot(of: name)
    }

    /// Moves `name` to half-open on every instance.
    public func forceHalfOpen(_ name: String) async throws(FuseboxError) -> BreakerSnapshot {
        _ = try await call("half_open", on: name)
        return try await snapshot(of: name)
    }

    private func keys(of name: String) -> [String] { DistributedBackend.keys(namespace: namespace, name: name) }

    private func requireKnown(_ name: String) async throws(FuseboxError) {
        try BreakerRegistry.validate(name: name)
        let known: Bool
        do {
            known = try await connection.send("SISMEMBER", "\(namespace):breakers", name).decodeInt() == 1
        } catch {
            throw Self.unavailable(error)
        }
        guard known else {
            throw FuseboxError(code: .invalidConfiguration, message: "unknown breaker '\(name)' in namespace '\(namespace)' (see `fusebox list`)", breakerName: name)
        }
    }

    private func call(
        _ op: String, on name: String, extra: [any RedisArgument] = [], requiringKnown: Bool = true
    ) async throws(FuseboxError) -> StateReply {
        if requiringKnown { try await requireKnown(name) }
        // A[3…18] empty: the script uses the policy and break durations stored with the breaker.
        let breaker: [any RedisArgument] = [op, name] + Array(repeating: "", count: 16) + extra
        let arguments: [any RedisArgument] = [channel, actor, "", "1000", "", breaker.count] + breaker
        let value: RESPValue
        do throws(RedisError) {
            let replies = try await connection.run(BreakerScript.script, keys: keys(of: name), arguments: arguments)
            guard let reply = replies.array?.first, replies.array?.count == 1 else {
                throw RedisError(code: .unexpectedReply, message: "the breaker script answered \(replies) for one breaker")
            }
            if case .error(let message) = reply { throw RedisError(code: .serverError, message: message) }
            value = reply
        } catch {
            if error.serverErrorPrefix == "CORRUPT" || error.serverErrorPrefix == "NOPOLICY" || error.serverErrorPrefix == "SCHEMA" {
                throw FuseboxError(
                    code: .corruptState, message: "breaker '\(name)': \(error.message.drop(while: { $0 != " " }).dropFirst())",
                    breakerName: name, underlying: error)
            }
            throw Self.unavailable(error)
        }
        return try StateReply(value, key: keys(of: name)[0])
    }

    static func unavailable(_ error: RedisError) -> FuseboxError {
        FuseboxError(code: .backendUnavailable, message: "Redis at \(error.endpoint.isEmpty ? "?" : error.endpoint) is unavailable: \(error.code): \(error.message)", underlying: error)
    }

    /// Reads the events stream of a breaker into transitions, oldest first.
    static func timeline(of name: String, eventsKey: String, connection: RedisClient) async throws -> [BreakerTransition] {
        let entries = try await connection.send("XREVRANGE", eventsKey, "+", "-", "COUNT", BreakerStateMachine.timelineCapacity)
        var transitions: [BreakerTransition] = []
        for entry in entries.array ?? [] {
            guard let parts = entry.array, parts.count == 2, let flat = parts[1].array else { continue }
            var fields: [String: String] = [:]
            var index = 0
            while index + 1 < flat.count {
                fields[flat[index].string ?? ""] = flat[index + 1].string
                index += 2
            }
            guard let from = fields["from"].flatMap(BreakerState.init(rawValue:)), let to = fields["to"].flatMap(BreakerState.init(rawValue:)),
                let version = fields["version"].flatMap({ Int($0) }), let at = fields["at"].flatMap({ Int64($0) })
            else {
                throw FuseboxError(code: .corruptState, message: "breaker '\(name)': \(eventsKey) has a malformed entry \(fields)", breakerName: name)
            }
            transitions.append(BreakerTransition(from: from, to: to, reason: fields["reason"] ?? "", version: version, at: .milliseconds(at)))
        }
        return transitions.reversed()
    }
}
