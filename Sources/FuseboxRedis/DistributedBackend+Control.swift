import Dispatch
import Fusebox
import FuseboxLocking
import Hiredis
import Logging
import Metrics
import Synchronization

/// An operator's actions on one breaker (isolate, reset, force half-open) and what reads it whole (snapshot,
/// timeline): each first writes this instance's outcomes, then runs in the script behind them.
extension DistributedBackend {
    private func control(_ op: String, _ extra: [any RedisArgument]) async throws(FuseboxError) {
        // This instance's outcomes reach Redis first (a write outstanding would hold them back).
        await flushAndWait()
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<StateReply, RedisError>, Never>) in
            core.sendOrder.withLock { _ in
                core.submit(takePending() + [scriptCall(op, extra) { continuation.resume(returning: $0) }])
            }
        }
        switch result {
        case .success(let reply): apply(reply, ownCall: true)
        case .failure(let error): throw storeError(error)
        }
    }

    /// A batch's rejections as the script reads them: `R`, `R:T` with adaptive throttling, then `/W` for calls that
    /// ran in shadow mode although rejected (R counts only calls that were turned away).
    static func rejections(_ batch: PendingOutcomes.Batch, throttling: Bool) -> String {
        let turnedAway = batch.rejected - batch.wouldReject
        let text = throttling ? "\(turnedAway):\(batch.throttled)" : String(turnedAway)
        return batch.wouldReject > 0 ? "\(text)/\(batch.wouldReject)" : text
    }

    func isolate(reason: String, for duration: Duration?) async throws(FuseboxError) {
        try LocalBackend.checkIsolation(duration)
        try await control("isolate", [reason, duration.map { String($0.milliseconds) } ?? ""])
    }
    func reset() async throws(FuseboxError) { try await control("reset", []) }
    func resetWithBaseline() async throws(FuseboxError) { try await control("reset", ["baseline"]) }
    func forceHalfOpen() async throws(FuseboxError) { try await control("half_open", []) }

    func snapshot() async throws(FuseboxError) -> BreakerSnapshot {
        // Whether this instance was deciding without Redis when asked (the read's own reply ends an overdue spell).
        let (onFallback, health) = cache.withLock {
            ($0.fallback != nil || !$0.health.isHealthy || $0.admissionOverdue, BreakerHealth(policy: $0.rules.policy))
        }
        // This instance's own outcomes are in the figures (a write outstanding would hold them back).
        await flushAndWait()
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<StateReply, RedisError>, Never>) in
            core.sendOrder.withLock { _ in
                core.submit(takePending() + [scriptCall("read", []) { continuation.resume(returning: $0) }])
            }
        }
        let reply: StateReply
        switch result {
        case .success(let value): reply = value
        case .failure(let error): throw storeError(error)
        }
        apply(reply, ownCall: true)
        var snapshot = try BreakerSnapshot(name: name, reply: reply, totalsKey: keys[2])
        snapshot.isOnStoreDownFallback = onFallback
        snapshot.rescore(against: health)
        return snapshot
    }

    func timeline() async throws(FuseboxError) -> [BreakerTransition] {
        do {
            return try await BreakerOperator.timeline(of: name, eventsKey: keys[3], connection: core.connection)
        } catch let error as RedisError {
            throw storeError(error)
        } catch {
            throw error as! FuseboxError
        }
    }

    func events() -> AsyncStream<BreakerEvent> { instruments.stream() }
}
