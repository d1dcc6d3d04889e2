import Foundation
import Fusebox
import FuseboxLocking
import Hiredis
import Logging

/// An operator's fleet-wide policy for one breaker, kept in the hash `NS:overrides` (field: the breaker's name)
/// until cleared. Every instance applies it within one refresh (at once when the publish reaches it), over the
/// policy its code or configuration gives, and says so in its snapshots. It survives restarts of instances and
/// of the operator's tools; it is checked before it is stored, and an instance that cannot honour it (a count
/// window with a quorum, a field this build does not know) logs why and keeps its own.
public struct PolicyOverride: Sendable {
    /// The state rules in force while the override is set (classification and call timeout stay each handle's).
    public var policy: BreakerPolicy
    /// Who set it (`user@host` for the `fusebox` command).
    public var setBy: String
    /// When it was set, in ms since 1970 (Redis `TIME` is not read: this is for people).
    public var setAtMilliseconds: Int64
    /// Why, as the operator wrote it.
    public var reason: String?
    /// When it ends by itself, in Redis time (ms since 1970, from `TIME`); `nil`: it stays until cleared. Every
    /// instance returns to its own policy at that time, and the first to notice removes it from `NS:overrides`.
    public var expiresAtMilliseconds: Int64?

    /// Makes an override.
    public init(policy: BreakerPolicy, setBy: String, setAtMilliseconds: Int64, reason: String? = nil, expiresAtMilliseconds: Int64? = nil) {
        self.policy = policy
        self.setBy = setBy
        self.setAtMilliseconds = setAtMilliseconds
        self.reason = reason
        self.expiresAtMilliseconds = expiresAtMilliseconds
    }

    /// The JSON stored in `NS:overrides`: `{"policy": {…the policy JSON…}, "set_by": …, "set_at_ms": …, "reason": …,
    /// "expires_at_ms": …}` (the last two only when set).
    public var json: String {
        let document = Document(
            policy: PolicyDocument(policy, minimumInstances: policy.minimumInstances), setBy: setBy, setAtMilliseconds: setAtMilliseconds,
            reason: reason, expiresAtMilliseconds: expiresAtMilliseconds)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? encoder.encode(document)) ?? Data(), as: UTF8.self)
    }

    /// Whether it has ended at `redisMilliseconds` (Redis time).
    public func hasExpired(at redisMilliseconds: Int64) -> Bool { expiresAtMilliseconds.map { redisMilliseconds >= $0 } ?? false }

    /// Reads what ``json`` wrote; anything else throws `FuseboxError/Code/corruptState` saying what is wrong.
    public init(json text: String) throws(FuseboxError) {
        let document: Document
        do {
            document = try JSONDecoder().decode(Document.self, from: Data(text.utf8))
        } catch let error as FuseboxError {
            throw error
        } catch let DecodingError.typeMismatch(_, context) where context.codingPath.first?.stringValue == "expires_at_ms",
            let DecodingError.dataCorrupted(context) where context.codingPath.first?.stringValue == "expires_at_ms"
        {
            throw FuseboxError(code: .corruptState, message: "the override's 'expires_at_ms' is not a time in ms: \(text.prefix(200))")
        } catch {
            throw FuseboxError(code: .corruptState, message: "the override is not the JSON Fusebox writes: \(text.prefix(200))")
        }
        self.policy = try document.policy.policy()
        self.setBy = document.setBy ?? "unknown"
        self.setAtMilliseconds = document.setAtMilliseconds ?? 0
        self.reason = document.reason
        if let expires = document.expiresAtMilliseconds {
            guard expires >= 0, expires < 1_000_000_000_000_000 else {
                throw FuseboxError(code: .corruptState, message: "the override's 'expires_at_ms' is not a time in ms: \(text.prefix(200))")
            }
            self.expiresAtMilliseconds = expires
        }
    }

    /// The stored form: snake_case keys, as `redis-cli HGET NS:overrides NAME` shows them.
    private struct Document: Codable {
        var policy: PolicyDocument
        var setBy: String?
        var setAtMilliseconds: Int64?
        var reason: String?
        var expiresAtMilliseconds: Int64?

        enum CodingKeys: String, CodingKey {
            case policy
            case setBy = "set_by"
            case setAtMilliseconds = "set_at_ms"
            case reason
            case expiresAtMilliseconds = "expires_at_ms"
        }
    }
}

/// The policy as the JSON Fusebox stores (the `policy` field of a state hash, an override's `policy`), and back:
/// `PolicyDocument` in text.
public enum PolicyJSON {
    /// `policy` as JSON; `minimumInstances` is written when the policy or the caller sets it.
    public static func encode(_ policy: BreakerPolicy, minimumInstances: Int? = nil) -> String {
        PolicyDocument(policy, minimumInstances: minimumInstances ?? policy.minimumInstances).text
    }

    /// The policy in `text`; throws `FuseboxError/Code/corruptState` for JSON Fusebox did not write, and
    /// `FuseboxError/Code/invalidPolicy` for values out of range or a field this build does not know.
    public static func decode(_ text: String) throws(FuseboxError) -> BreakerPolicy {
        try PolicyDocument(text: text).policy()
    }
}

extension BreakerOperator {
    /// The hash of overrides.
    var overridesKey: String { "\(namespace):overrides" }

    /// The override of `name`, if one is set and has not ended by Redis' clock. A stored value Fusebox cannot read
    /// throws `FuseboxError/Code/corruptState`; `fusebox policy clear` removes it.
    public func override(of name: String) async throws(FuseboxError) -> PolicyOverride? {
        let replies: [RESPValue]
        do {
            replies = try await connection.pipeline([RedisCommand("HGET", overridesKey, name), RedisCommand("TIME")])
        } catch {
            throw Self.unavailable(error)
        }
        guard let text = replies.first?.string else { return nil }
        let override = try PolicyOverride(json: text)
        if let now = Self.milliseconds(time: replies.last), override.hasExpired(at: now) { return nil }
        return override
    }

    /// Redis time in ms from a `TIME` reply.
    static func milliseconds(time reply: RESPValue?) -> Int64? {
        guard let parts = reply?.array, parts.count == 2, let seconds = parts[0].string.flatMap({ Int64($0) }),
            let micros = parts[1].string.flatMap({ Int64($0) })
        else { return nil }
        return seconds * 1000 + micros / 1000
    }

    /// Redis' clock (`TIME`), in ms since 1970.
    public func redisTime() async throws(FuseboxError) -> Int64 {
        let reply: RESPValue
        do {
            reply = try await connection.send("TIME")
        } catch {
            throw Self.unavailable(error)
        }
        guard let now = Self.milliseconds(time: reply) else {
            throw FuseboxError(code: .backendUnavailable, message: "Redis answered TIME with something that is not a time")
        }
        return now
    }

    /// Every override in force, by breaker name (`HGETALL`); one Fusebox cannot read, or that has ended by Redis'
    /// clock, is left out.
    public func overrides() async throws(FuseboxError) -> [String: PolicyOverride] {
        let table: [String: String]
        let now: Int64?
        do {
            let replies = try await connection.pipeline([RedisCommand("HGETALL", overridesKey), RedisCommand("TIME")])
            table = try replies[0].decodeDictionary()
            now = Self.milliseconds(time: replies[1])
        } catch {
            throw Self.unavailable(error)
        }
        return table.compactMapValues { text in
            guard let override = try? PolicyOverride(json: text), !override.hasExpired(at: now ?? .min) else { return nil }
            return override
        }
    }

    /// The policy the instances last stored with `name` (the `policy` field of its state hash), if any.
    public func storedPolicy(of name: String) async throws(FuseboxError) -> BreakerPolicy? {
        let reply: RESPValue
        do {
            reply = try await connection.send("HGET", "\(namespace):{\(name)}:state", "policy")
        } catch {
            throw Self.unavailable(error)
        }
        guard let text = reply.string else { return nil }
        var policy = try PolicyJSON.decode(text)
        // The stored JSON always names the quorum the instances resolved; an override keeps it only if set.
        if policy.minimumInstances == 1 { policy.minimumInstances = nil }
        return policy
    }

    /// Stores `override` for `name` (checked first: an invalid policy throws `FuseboxError/Code/invalidPolicy`
    /// and nothing is stored) and tells every instance on the transitions channel. With `lasting`, it ends by
    /// itself that long from now by Redis' clock (more than zero, at most a year): every instance then returns to
    /// its own policy.
    public func setOverride(_ override: PolicyOverride, for name: String, lasting: Duration? = nil) async throws(FuseboxError) {
        try BreakerRegistry.validate(name: name)
        var checked = override
        if let lasting {
            guard LocalBackend.isValidActionTime(lasting) else {
                throw FuseboxError(code: .invalidPolicy, message: "an override's time must be > 0 and at most a year; got \(FuseboxError.format(lasting))")
            }
            checked.expiresAtMilliseconds = try await redisTime() + lasting.milliseconds
        }
        checked.policy = try DistributedBackend.check(override.policy.validated(), name: name, minimumInstances: 1)
        // What is stored must read back as the same policy (a custom break duration cannot).
        _ = try PolicyOverride(json: checked.json)
        do {
            _ = try await connection.send("HSET", overridesKey, name, checked.json)
            _ = try await connection.send("PUBLISH", channel, Self.overrideMessage(name, "set"))
        } catch {
            throw Self.unavailable(error)
        }
        let lastingText = lasting.map { "for \(FuseboxError.format($0))" }
        try await audit(
            "policy-set", name, reason: [checked.policy.stateRulesDescription, override.reason, lastingText].compactMap { $0 }.joined(separator: "; "))
    }

    /// Removes the override of `name`; returns whether one was set. Every instance goes back to its own policy.
    @discardableResult
    public func clearOverride(of name: String) async throws(FuseboxError) -> Bool {
        let removed: Int
        do {
            removed = try await connection.send("HDEL", overridesKey, name).int ?? 0
            _ = try await connection.send("PUBLISH", channel, Self.overrideMessage(name, "cleared"))
        } catch {
            throw Self.unavailable(error)
        }
        if removed > 0 { try await audit("policy-clear", name, reason: nil) }
        return removed > 0
    }

    /// The message on the transitions channel that tells instances an override was set or cleared.
    static func overrideMessage(_ name: String, _ change: String) -> String {
        BreakerMessage(override: change, of: name).text
    }
}

/// The adapter's view of `NS:overrides`: read whole once per refresh round and after the subscriber
/// (re)connects, one name at a time when a publish says it changed; applied to each breaker as it is made.
/// A value read again unchanged is not applied (nor logged) again. An override set for a time ends on this
/// instance when Redis' clock (estimated from the `TIME` read with each load) passes its expiry, checked every
/// refresh tick (at most a second); the first instance to see it removes it (lua/override.lua) and says so in the
/// audit stream.
final class OverrideTable: Sendable {
    private struct State: Sendable {
        /// The last text read per name.
        var known: [String: String] = [:]
        /// Texts that have ended here (their breakers run their own policies), by name.
        var ended: [String: String] = [:]
        /// Redis time minus this host's wall clock, in ms, from the last `TIME` read.
        var redisOffset: Int64?
    }

    private let core: DistributedCore
    private let backends: BackendTable
    private let state = Locked(State())
    private let key: String

    init(core: DistributedCore, backends: BackendTable) {
        self.core = core
        self.backends = backends
        self.key = "\(core.options.namespace):overrides"
    }

    private static var wallMilliseconds: Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)) }

    /// Redis' clock now, as estimated from the last `TIME` read (`nil` before one).
    private var redisNow: Int64? { state.withLock { $0.redisOffset }.map { Self.wallMilliseconds + $0 } }

    private func learnTime(_ reply: RESPValue?) {
        guard let redis = BreakerOperator.milliseconds(time: reply) else { return }
        let offset = redis - Self.wallMilliseconds
        state.withLock { $0.redisOffset = offset }
    }

    /// Reads every override (`HGETALL`) and applies what changed; a breaker whose override is gone runs its own
    /// policy again.
    func loadAll() {
        core.connection.submit([RedisCommand("HGETALL", key), RedisCommand("TIME")]) { [self] result in
            guard case .success(let replies) = result, let flat = replies.first?.array else { return }
            learnTime(replies.last)
            var table: [String: String] = [:]
            var index = 0
            while index + 1 < flat.count {
                if let name = flat[index].string, let text = flat[index + 1].string { table[name] = text }
                index += 2
            }
            let before = state.withLock { state in
                defer { state.known = table }
                return state.known
            }
            for name in Set(before.keys).union(table.keys) where before[name] != table[name] {
                if let backend = backends.withLock({ $0[name] }) { apply(table[name], to: backend) }
            }
        }
    }

    /// Reads the override of `name` (`HGET`) and applies it.
    func load(_ name: String) {
        core.connection.submit([RedisCommand("HGET", key, name), RedisCommand("TIME")]) { [self] result in
            guard case .success(let replies) = result, let reply = replies.first else { return }
            if case .error = reply { return }
            learnTime(replies.last)
            let text = reply.string
            let changed = state.withLock { state in
                defer { state.known[name] = text }
                return state.known[name] != text
            }
            if changed, let backend = backends.withLock({ $0[name] }) { apply(text, to: backend) }
        }
    }

    /// Applies what is known for a breaker just made.
    func applyKnown(to backend: DistributedBackend) {
        if let text = state.withLock({ $0.known[backend.name] }) { apply(text, to: backend) }
    }

    /// Ends the overrides whose time is up by Redis' clock: their breakers return to their own policies here, and
    /// each is removed from Redis (once, by whichever instance gets there first).
    func expireDue() {
        guard let now = redisNow else { return }
        let due = state.withLock { state -> [(String, String, Int64)] in
            state.known.compactMap { name, text in
                guard state.ended[name] != text, let override = try? PolicyOverride(json: text), let expires = override.expiresAtMilliseconds,
                    now >= expires
                else { return nil }
                return (name, text, expires)
            }
        }
        for (name, text, expires) in due {
            if let backend = backends.withLock({ $0[name] }) { apply(text, to: backend) }
            let message = BreakerOperator.overrideMessage(name, "expired")
            core.connection.submit(
                LuaScript.override, keys: [key], arguments: [name, text, String(expires), core.channel, message]
            ) { [self] result in
                guard case .success(let reply) = result, reply.int == 1 else { return }
                let setBy = (try? PolicyOverride(json: text))?.setBy ?? "unknown"
                core.connection.submit([
                    RedisCommand(
                        "XADD", "\(core.options.namespace):audit", "MAXLEN", BreakerOperator.auditCapacity, "*", "breaker", name,
                        "action", "policy-expired", "by", "fusebox (instance \(core.options.instanceID))", "reason", "the override set by \(setBy) ended"),
                ]) { _ in }
            }
        }
    }

    private func apply(_ text: String?, to backend: DistributedBackend) {
        let logger = core.logger
        let metadata: Logger.Metadata = ["breaker.name": "\(backend.name)"]
        let override = text.flatMap { try? PolicyOverride(json: $0) }
        let now = redisNow
        if let text, let override, let now, override.hasExpired(at: now) {
            state.withLock { $0.ended[backend.name] = text }
            if backend.isOverridden {
                logger.info("breaker '\(backend.name)': the operator's override (set by \(override.setBy)) ended; back to this instance's own policy", metadata: metadata)
            }
            try? backend.applyOverride(nil)
            return
        }
        guard let text else {
            if backend.isOverridden {
                logger.info("breaker '\(backend.name)': the operator's override was cleared; back to this instance's own policy", metadata: metadata)
            }
            try? backend.applyOverride(nil)
            return
        }
        do {
            let override = try PolicyOverride(json: text)
            try backend.applyOverride(override.policy)
            logger.info("breaker '\(backend.name)': the operator's override (set by \(override.setBy)) is in force", metadata: metadata)
        } catch {
            logger.info(
                "breaker '\(backend.name)': the operator's override cannot be applied here (\(error.message)); running this instance's own policy",
                metadata: metadata)
            try? backend.applyOverride(nil)
        }
    }
}
