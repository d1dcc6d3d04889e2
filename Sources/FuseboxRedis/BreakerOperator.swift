import Fusebox
import FuseboxLocking
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

    /// The stream of operator actions (`AuditEntry`): the last ``auditCapacity`` of the namespace.
    public var auditKey: String { "\(namespace):audit" }
    /// How many actions the audit stream keeps.
    public static let auditCapacity = 10_000

    /// Appends an action to the audit stream, in the name of `AuditContext.actor` or, without one, ``actor``.
    func audit(_ action: String, _ name: String, reason: String?) async throws(FuseboxError) {
        var fields: [any RedisArgument] = ["breaker", name, "action", action, "by", AuditContext.actor ?? actor]
        if let reason { fields += ["reason", reason] }
        do {
            _ = try await connection.send(RedisCommand("XADD", arguments: [auditKey, "MAXLEN", Self.auditCapacity, "*"] + fields))
        } catch {
            throw Self.unavailable(error)
        }
    }

    /// The last `limit` actions of the namespace (of `name` only, when given), newest first.
    public func auditTrail(of name: String? = nil, limit: Int = 100) async throws(FuseboxError) -> [AuditEntry] {
        let entries: RESPValue
        do {
            entries = try await connection.send("XREVRANGE", auditKey, "+", "-", "COUNT", name == nil ? max(1, limit) : Self.auditCapacity)
        } catch {
            throw Self.unavailable(error)
        }
        var trail: [AuditEntry] = []
        for entry in entries.array ?? [] {
            guard let parts = entry.array, parts.count == 2, let id = parts[0].string, let flat = parts[1].array else { continue }
            var fields: [String: String] = [:]
            var index = 0
            while index + 1 < flat.count {
                if let field = flat[index].string { fields[field] = flat[index + 1].string }
                index += 2
            }
            guard let breaker = fields["breaker"], let action = fields["action"] else { continue }
            if let name, breaker != name { continue }
            let at = Int64(id.split(separator: "-").first ?? "") ?? 0
            trail.append(AuditEntry(atMilliseconds: at, breaker: breaker, action: action, by: fields["by"] ?? "unknown", reason: fields["reason"]))
            if trail.count >= limit { break }
        }
        return trail
    }

    /// Every breaker name registered in the namespace, sorted.
    public func names() async throws(FuseboxError) -> [String] {
        do {
            return try await connection.send("SMEMBERS", "\(namespace):breakers").decodeStrings().sorted()
        } catch {
            throw Self.unavailable(error)
        }
    }

    /// The snapshot of `name`, applying due time-based transitions as any read does, scored against the policy in
    /// force (as ``readings(of:)`` reads it).
    public func snapshot(of name: String) async throws(FuseboxError) -> BreakerSnapshot {
        try await requireKnown(name)
        return try await readings(of: [name])[0].snapshot.get()
    }

    /// Snapshots of every breaker, sorted by name, read as ``readings(of:)`` does; the first breaker that cannot be
    /// read throws.
    public func snapshots() async throws(FuseboxError) -> [BreakerSnapshot] {
        var result: [BreakerSnapshot] = []
        for reading in try await readings() { result.append(try reading.snapshot.get()) }
        return result
    }

    /// The snapshot of every breaker in `chosen` (default: every registered one, sorted) and the policy each last
    /// stored, read in one round trip whatever their number: the script's `read` for up to 32 breakers per call
    /// (in a cluster, one call per slot), an `HGET` of each stored policy and the operators' overrides (`HGETALL`),
    /// all written together. With `chosen` `nil` the names are read first (`SMEMBERS`), one round trip more.
    ///
    /// Each snapshot's health score is measured against the policy in force: the override when one is set, else
    /// the policy the instances stored.
    ///
    /// A breaker whose keys are corrupt gets its error in place; the others are read as usual. Only an unreachable
    /// Redis throws.
    public func readings(of chosen: [String]? = nil) async throws(FuseboxError) -> [BreakerReading] {
        let names: [String]
        if let chosen { names = chosen } else { names = try await self.names() }
        guard !names.isEmpty else { return [] }
        let results = ReadingResults(count: names.count)
        let policies = Locked<Result<[RESPValue], RedisError>?>(nil)
        let calls = names.enumerated().map { index, name in
            ScriptCall(keys: keys(of: name), arguments: ["read", name] + Array(repeating: "", count: 16)) { result in
                results.deliver(result, at: index)
            }
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            results.whenComplete = { continuation.resume() }
            connection.submit(names.map { RedisCommand("HGET", keys(of: $0)[0], "policy") } + [RedisCommand("HGETALL", overridesKey)]) { result in
                policies.withLock { $0 = result }
                results.deliverExtra()
            }
            let header: [any RedisArgument] = [channel, actor, "", "1000", "", "0", "0"]
            for batch in DistributedCore.batches(of: calls, header: header, isCluster: DistributedCore.isCluster(connection)) {
                DistributedCore.send(batch, on: connection)
            }
        }
        var readings: [BreakerReading] = []
        let stored = policies.withLock { $0 }.flatMap { try? $0.get() }
        var overrides: [String: String] = [:]
        if let stored, stored.count == names.count + 1, let flat = stored[names.count].array {
            var index = 0
            while index + 1 < flat.count {
                if let field = flat[index].string, let value = flat[index + 1].string { overrides[field] = value }
                index += 2
            }
        }
        // Redis' clock, from the replies: an override whose time is up is not in force.
        let redisNow = (0..<names.count).lazy.compactMap { index -> Int64? in
            if case .success(let reply) = results.value(at: index) { return reply.now }
            return nil
        }.first
        for (index, name) in names.enumerated() {
            var snapshot: Result<BreakerSnapshot, FuseboxError>
            switch results.value(at: index) {
            case .failure(let error) where Self.isRefusal(error) || error.code == .unexpectedReply:
                snapshot = .failure(Self.corrupt(name, error))
            case .failure(let error):
                throw Self.unavailable(error)
            case .success(let reply):
                snapshot = Result { () throws(FuseboxError) in try BreakerSnapshot(name: name, reply: reply, totalsKey: keys(of: name)[2]) }
            }
            let policyJSON = stored.flatMap { index < $0.count ? $0[index].string : nil }
            let override = overrides[name].flatMap { try? PolicyOverride(json: $0) }.flatMap { $0.hasExpired(at: redisNow ?? .min) ? nil : $0 }
            let inForce = override?.policy ?? policyJSON.flatMap { try? PolicyJSON.decode($0) }
            if let inForce { snapshot = snapshot.map { var scored = $0; scored.rescore(against: BreakerHealth(policy: inForce)); return scored } }
            readings.append(BreakerReading(name: name, snapshot: snapshot, policyJSON: policyJSON))
        }
        return readings
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

    /// Forces `name` open on every instance until reset, or for `duration` when given: the isolation then ends by
    /// itself at the time Redis' clock says (the breaker returns to its base state as after a reset). A breaker no
    /// instance has used yet (or whose keys Redis lost) is made isolated: the first instance to use it honours the
    /// isolation.
    public func isolate(_ name: String, reason: String, for duration: Duration? = nil) async throws(FuseboxError) -> BreakerSnapshot {
        try BreakerRegistry.validate(name: name)
        try LocalBackend.checkIsolation(duration)
        _ = try await call("isolate", on: name, extra: [reason, duration.map { String($0.milliseconds) } ?? ""], requiringKnown: false)
        do {
            _ = try await connection.send("SADD", "\(namespace):breakers", name)
        } catch {
            throw Self.unavailable(error)
        }
        try await audit("isolate", name, reason: duration.map { "\(reason) (for \(FuseboxError.format($0)))" } ?? reason)
        return try await snapshot(of: name)
    }

    /// Closes `name` on every instance, with an empty window; repairs corrupt keys. With `baseline`, the relative
    /// threshold's baseline is forgotten too (`BreakerPolicy.relativeFailureRate`).
    public func reset(_ name: String, baseline: Bool = false) async throws(FuseboxError) -> BreakerSnapshot {
        _ = try await call("reset", on: name, extra: baseline ? ["baseline"] : [])
        try await audit(baseline ? "reset-baseline" : "reset", name, reason: nil)
        return try await snapshot(of: name)
    }

    /// Moves `name` to half-open on every instance.
    public func forceHalfOpen(_ name: String) async throws(FuseboxError) -> BreakerSnapshot {
        _ = try await call("half_open", on: name)
        try await audit("half-open", name, reason: nil)
        return try await snapshot(of: name)
    }

    private func keys(of name: String) -> [String] { DistributedBackend.keys(namespace: namespace, name: name) }

    /// Whether `name` is registered in the namespace (one `SISMEMBER`).
    public func contains(_ name: String) async throws(FuseboxError) -> Bool {
        do {
            return try await connection.send("SISMEMBER", "\(namespace):breakers", name).decodeInt() == 1
        } catch {
            throw Self.unavailable(error)
        }
    }

    private func requireKnown(_ name: String) async throws(FuseboxError) {
        try BreakerRegistry.validate(name: name)
        guard try await contains(name) else {
            throw FuseboxError(code: .unknownBreaker, message: "unknown breaker '\(name)' in namespace '\(namespace)' (see `fusebox list`)", breakerName: name)
        }
    }

    private func call(
        _ op: String, on name: String, extra: [any RedisArgument] = [], requiringKnown: Bool = true
    ) async throws(FuseboxError) -> StateReply {
        if requiringKnown { try await requireKnown(name) }
        // A[3…18] empty: the script uses the policy and break durations stored with the breaker.
        let breaker: [any RedisArgument] = [op, name] + Array(repeating: "", count: 16) + extra
        let arguments: [any RedisArgument] = [channel, actor, "", "1000", "", "0", "0", breaker.count] + breaker
        let value: RESPValue
        do throws(RedisError) {
            let replies = try await connection.run(LuaScript.breaker, keys: keys(of: name), arguments: arguments)
            guard let reply = replies.array?.first, replies.array?.count == 1 else {
                throw RedisError(code: .unexpectedReply, message: "the breaker script answered \(replies) for one breaker")
            }
            if case .error(let message) = reply { throw RedisError(code: .serverError, message: message) }
            value = reply
        } catch {
            throw Self.isRefusal(error) ? Self.corrupt(name, error) : Self.unavailable(error)
        }
        return try StateReply(value, key: keys(of: name)[0])
    }

    /// The script refused to work on the breaker's keys (malformed, no policy, another key schema).
    static func isRefusal(_ error: RedisError) -> Bool {
        ["CORRUPT", "NOPOLICY", "SCHEMA"].contains(error.serverErrorPrefix ?? "")
    }

    static func corrupt(_ name: String, _ error: RedisError) -> FuseboxError {
        let detail = error.code == .serverError ? String(error.message.drop(while: { $0 != " " }).dropFirst()) : error.message
        return FuseboxError(code: .corruptState, message: "breaker '\(name)': \(detail)", breakerName: name, underlying: error)
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

/// One breaker as ``BreakerOperator/readings(of:)`` read it.
public struct BreakerReading: Sendable {
    /// The breaker's name.
    public var name: String
    /// Its snapshot, or why it could not be read (`FuseboxError/Code/corruptState`).
    public var snapshot: Result<BreakerSnapshot, FuseboxError>
    /// The policy JSON the last instance stored with it (`nil` when none is: isolated before any instance used it).
    public var policyJSON: String?
}

/// The replies of one batched read, gathered from the connection's thread; calls `whenComplete` once every
/// breaker's reply and the policies have arrived.
private final class ReadingResults: Sendable {
    private struct State {
        var values: [Result<StateReply, RedisError>?]
        var waiting: Int
        var whenComplete: (@Sendable () -> Void)?
    }
    private let state: Locked<State>

    init(count: Int) { state = Locked(State(values: Array(repeating: nil, count: count), waiting: count + 1)) }

    /// Set before anything is submitted.
    var whenComplete: @Sendable () -> Void {
        get { state.withLock { $0.whenComplete ?? {} } }
        set { state.withLock { $0.whenComplete = newValue } }
    }

    func deliver(_ result: Result<StateReply, RedisError>, at index: Int) {
        let done = state.withLock { state -> (@Sendable () -> Void)? in
            state.values[index] = result
            state.waiting -= 1
            return state.waiting == 0 ? state.whenComplete : nil
        }
        done?()
    }

    func deliverExtra() {
        let done = state.withLock { state -> (@Sendable () -> Void)? in
            state.waiting -= 1
            return state.waiting == 0 ? state.whenComplete : nil
        }
        done?()
    }

    func value(at index: Int) -> Result<StateReply, RedisError> {
        state.withLock { $0.values[index] } ?? .failure(RedisError(code: .unexpectedReply, message: "no reply"))
    }
}
