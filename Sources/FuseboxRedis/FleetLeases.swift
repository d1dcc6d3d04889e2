import Fusebox
import Hiredis

/// A concurrency limit across every host: at most ``limit`` holders of the leases of one name at a time, kept in
/// Redis (`NS:{NAME}:leases`, a sorted set changed only by `lua/lease.lua`) with a time to live.
///
/// A holder renews its lease while it works (``FleetLease/keepRenewing()``, every third of the TTL); a holder
/// killed without releasing stops renewing, and its slot returns when its lease expires: never later than the
/// TTL. Used by `fusebox run --max-concurrent`. Every decision uses Redis `TIME`.
public struct FleetBulkhead: Sendable {
    /// The connection the leases are taken on.
    public let connection: RedisClient
    /// The breaker (or job) name the limit is for.
    public let name: String
    /// Holders allowed at once.
    public let limit: Int
    /// How long a lease lasts without a renewal.
    public let ttl: Duration
    let key: String

    /// Makes the limit; throws `FuseboxError/Code/invalidPolicy` for a limit below 1 or a TTL under 100 ms.
    public init(connection: RedisClient, namespace: String, name: String, limit: Int, ttl: Duration) throws(FuseboxError) {
        try BreakerRegistry.validate(name: name)
        guard (1...1_000_000).contains(limit) else {
            throw FuseboxError(code: .invalidPolicy, message: "the fleet-wide limit is \(limit); allowed: 1…1,000,000")
        }
        guard ttl >= .milliseconds(100), ttl <= .seconds(86_400) else {
            throw FuseboxError(code: .invalidPolicy, message: "the lease time to live is \(ttl); allowed: 100 ms…24 h")
        }
        self.connection = connection
        self.name = name
        self.limit = limit
        self.ttl = ttl
        self.key = "\(namespace):{\(name)}:leases"
    }

    /// Takes a lease named `id`; throws `FuseboxError/Code/bulkheadFull` (saying how many hold one and when
    /// the first expires) when `limit` hosts hold one already, `FuseboxError/Code/backendUnavailable` when
    /// Redis cannot answer.
    public func acquire(id: String) async throws(FuseboxError) -> FleetLease {
        let reply = try await call("acquire", id, limit, Int(ttl.milliseconds))
        guard let values = reply.array, let granted = values.first?.int else {
            throw FuseboxError(code: .corruptState, message: "unexpected reply to a lease request: \(reply)")
        }
        guard granted == 1 else {
            let holders = values.count > 1 ? values[1].int ?? limit : limit
            let wait = values.count > 2 ? values[2].int ?? 0 : 0
            throw FuseboxError(
                code: .bulkheadFull,
                message: "'\(name)' is at its fleet-wide limit: \(holders) of \(limit) leases are held; the first expires in \(FuseboxError.format(.milliseconds(max(0, wait)))) unless renewed",
                breakerName: name)
        }
        return FleetLease(bulkhead: self, id: id)
    }

    /// The holders now (expired leases are not counted).
    public func holders() async throws(FuseboxError) -> Int {
        do {
            let now = try await connection.send("TIME")
            let milliseconds = (now.array?.first?.string.flatMap { Int64($0) } ?? 0) * 1000
            return try await connection.send("ZCOUNT", key, String(milliseconds), "+inf").decodeInt()
        } catch {
            throw BreakerOperator.unavailable(error)
        }
    }

    func call(_ arguments: any RedisArgument...) async throws(FuseboxError) -> RESPValue {
        do {
            return try await connection.run(LuaScript.lease, keys: [key], arguments: arguments)
        } catch {
            throw BreakerOperator.unavailable(error)
        }
    }
}

/// One held lease of a ``FleetBulkhead``.
public struct FleetLease: Sendable {
    /// The limit it belongs to.
    public let bulkhead: FleetBulkhead
    /// The lease's id (unique per holder).
    public let id: String

    /// Extends the lease by the TTL; `false` when it had already expired (another holder may have its slot).
    public func renew() async throws(FuseboxError) -> Bool {
        try await bulkhead.call("renew", id, "", Int(bulkhead.ttl.milliseconds)).array?.first?.int == 1
    }

    /// Renews every third of the TTL until cancelled; returns early (with `false`) if the lease was lost.
    public func keepRenewing() async -> Bool {
        while !Task.isCancelled {
            try? await Task.sleep(for: bulkhead.ttl / 3)
            if Task.isCancelled { break }
            // A failed renewal (Redis briefly away) is tried again next time; only an expired lease ends it.
            if let renewed = try? await renew(), !renewed { return false }
        }
        return true
    }

    /// Gives the slot back.
    public func release() async throws(FuseboxError) {
        _ = try await bulkhead.call("release", id, "", "")
    }
}
