import Dispatch
import Fusebox
import FuseboxLocking
import Hiredis
import Logging
import Metrics
import Synchronization

/// How the cache of the shared state is kept: every script reply and transition message updates it (one with a
/// lower version than the cache's is ignored), the refresher's reads and recalls, and what an error from Redis
/// means for it (unavailable, or the breaker's keys corrupt).
extension DistributedBackend {
    /// Runs `body` on the cache and republishes what lock-free admission reads. When that changes (a transition,
    /// a new incarnation, a change of health) or the clock's offset to Redis moves (the stripes' buckets with it),
    /// the per-CPU successes are moved into the pending batches and the stripes set up again on their next call.
    func updateCache<T: Sendable>(_ body: (inout Cache) -> T) -> T {
        cache.withLock { cache in
            let (created, offset) = (cache.created, cache.redisOffsetMilliseconds)
            let result = body(&cache)
            // Lock-free admission is for a breaker that admits every call: not while adaptive throttling sheds some.
            let admitting = cache.health == .healthy && cache.isKnown && (cache.state == .closed || cache.state == .metricsOnly)
                && cache.throttleProbability == 0 ? cache.version : -1
            if admission.load(ordering: .relaxed) != admitting || cache.created != created || cache.redisOffsetMilliseconds != offset {
                drainStripes(into: &cache, invalidate: true)
                admission.store(admitting, ordering: .releasing)
            }
            return result
        }
    }

    /// Reads the state, window and budget with the script (when the breaker is made, and when the refresher's
    /// plain read finds something unusual: a missing or malformed hash).
    func refresh() {
        submitScript("read", []) { [self] result in
            switch result {
            case .success(let reply): apply(reply, ownCall: false)
            case .failure(let error): markFailure(error)
            }
        }
        registerIfNeeded()
    }

    /// Applies the refresher's read of the state hash (``StateReply/refreshedFields``); `nil` values or anything
    /// unusual send the breaker to the script instead, which creates, repairs or explains.
    func applyRefreshed(_ values: RESPValue, now redisNow: Int64) {
        guard let fields = values.array, let reply = StateReply(refreshed: fields, now: redisNow) else {
            if case .error(let message) = values {
                markFailure(RedisError(code: .serverError, message: message))
            }
            refresh()
            return
        }
        apply(reply, ownCall: false)
    }

    /// Applies a recall message: write what is held now if it is more than the new budget, or if successes were
    /// held because the breaker was quiet and the window no longer is (the write that ended the quiet asks for them).
    /// A recall while the window stays quiet (a budget that shrank as calls left the window) leaves held successes
    /// where they are: they cannot cross a threshold, and in a large fleet such recalls would make every instance
    /// write every breaker several times a minute.
    func applyRecall(_ message: BreakerMessage) {
        guard let budget = message.recall else { return }
        let stillQuiet = message.quiet ?? false
        let (mustWrite, wasQuiet) = cache.withLock { cache in
            let wasQuiet = cache.isQuiet(for: cache.rules.policy)
            let mustWrite = cache.applyRecall(
                version: message.version, created: message.created ?? 0, budget: budget, at: message.at, windowQuiet: stillQuiet)
            return (mustWrite, wasQuiet)
        }
        if mustWrite || (wasQuiet && !stillQuiet && hasPending) { flush() }
    }

    func apply(_ reply: StateReply, ownCall: Bool) {
        if !core.hasAnswered.load(ordering: .relaxed) { core.hasAnswered.store(true, ordering: .relaxed) }
        let now = self.now
        if let note = reply.statisticsNote { noteStatistics(note, now: now) }
        let (transition, recovered, reborn) = updateCache { cache in
            // A state hash of another incarnation: Redis lost the keys (restart, FLUSHALL, eviction) and the script
            // made them again, so the breaker index may have lost the name too.
            let reborn = cache.isKnown && reply.created != cache.created
            let (transition, recovered) = cache.apply(reply, now: now)
            return (transition, recovered, reborn)
        }
        if recovered {
            instruments.logger.info("Redis is reachable again; breaker '\(name)' uses the shared state", metadata: ["breaker.state": .string(reply.state.rawValue)])
        }
        if reborn {
            isRegistered.store(false, ordering: .relaxed)
            registerIfNeeded()
        }
        if let transition { instruments.transitioned(transition, observedRemotely: !(ownCall && reply.transitioned)) }
    }

    /// Applies a transition message; messages older than the cache are ignored. A transition ends a corrupt state
    /// at once: the script made it, so the keys it needs read well again (a repairing reset, typically), and the
    /// instance need not wait for its own next reply to use the shared state again.
    func apply(_ message: BreakerMessage) {
        guard let state = message.state.flatMap(BreakerState.init(rawValue:)) else { return }
        let now = self.now
        let (transition, healed) = updateCache { cache -> (BreakerTransition?, Bool) in
            let isNewIncarnation = message.created.map { $0 != cache.created } ?? false
            guard !cache.isKnown || isNewIncarnation || message.version > cache.version else { return (nil, false) }
            var healed = false
            if case .corrupt = cache.health {
                _ = cache.setHealth(.healthy)
                healed = true
            }
            let change = cache.isKnown
                ? BreakerTransition(from: cache.state, to: state, reason: message.reason ?? "", version: message.version, at: .nanoseconds(now)) : nil
            cache.isKnown = true
            cache.state = state
            cache.version = message.version
            cache.created = message.created ?? cache.created
            cache.attempt = message.attempt ?? cache.attempt
            cache.isolationReason = message.isolationReason.flatMap { $0.isEmpty ? nil : $0 }
            let endsIn = message.probeInMilliseconds ?? 0
            cache.probeAt = state == .open || (state == .isolated && endsIn > 0) ? now + endsIn * 1_000_000 : 0
            cache.halfOpenDeniedUntil = 0
            // A new closed period: no budget until Redis grants one (the first failure is written at once).
            cache.budget = 0
            cache.recallCeiling = nil
            cache.windowCalls = 0
            cache.windowFailures = 0
            cache.windowSlow = 0
            cache.throttleProbability = 0
            cache.consecutiveFailures = 0
            cache.isRecalled = false
            return (change, healed)
        }
        if healed {
            instruments.logger.info("breaker '\(name)' was repaired (\(message.reason ?? "a transition")); it uses the shared state again")
        }
        if let transition { instruments.transitioned(transition, observedRemotely: true) }
    }

    func markFailure(_ error: RedisError) {
        if error.serverErrorPrefix == "CORRUPT" {
            let corrupt = corruptError(error)
            let changed = updateCache { $0.setHealth(.corrupt(corrupt.message)) }
            if changed { instruments.logger.info("\(corrupt.message); falling back to the '\(core.options.whenUnavailable.rawValue)' policy") }
            return
        }
        markUnavailable(error)
    }

    private func markUnavailable(_ error: RedisError) {
        let text = error.serverErrorPrefix == "NOPERM"
            ? "the Redis user may not run what Fusebox needs (\(error.message)); see the ACL line in Docs/operations.md"
            : "\(error.code): \(error.message)"
        let changed = updateCache { $0.setHealth(.unavailable(text)) }
        if changed {
            instruments.logger.info(
                "Redis is unavailable for breaker '\(name)' (\(text)); falling back to the '\(core.options.whenUnavailable.rawValue)' policy")
        }
    }

    /// Reports what the script found wrong with the breaker's statistics: counted in
    /// `fusebox_statistics_repairs_total`, logged once a minute at most (a corrupt field meets every write until
    /// one makes it anew, and a read only names it).
    func noteStatistics(_ note: String, now: Int64) {
        statisticsRepairs.increment()
        let due = lastStatisticsLog.withLock { last in
            guard last == nil || now - last! >= 60_000_000_000 else { return false }
            last = now
            return true
        }
        if due { instruments.logger.info("breaker '\(name)': statistics: \(note); decisions are not affected") }
    }

    /// The script's `CORRUPT <key> …` refusal as a `FuseboxError` naming the breaker and the key.
    private func corruptError(_ error: RedisError) -> FuseboxError {
        FuseboxError(code: .corruptState, message: "breaker '\(name)': \(error.message.dropFirst("CORRUPT ".count))", breakerName: name, underlying: error)
    }

    func unavailableRejection(_ reason: String) -> FuseboxError { Cache.unavailableRejection(name: name, reason: reason) }

    func storeError(_ error: RedisError) -> FuseboxError {
        markFailure(error)
        if error.serverErrorPrefix == "CORRUPT" { return corruptError(error) }
        return FuseboxError(code: .backendUnavailable, message: "breaker '\(name)': Redis \(error.code): \(error.message)", breakerName: name, underlying: error)
    }
}
