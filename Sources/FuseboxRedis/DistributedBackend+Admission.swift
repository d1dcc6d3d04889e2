import Dispatch
import Fusebox
import FuseboxLocking
import Hiredis
import Logging
import Metrics
import Synchronization

/// Admission, the hot path: a known, healthy, closed breaker admits without a lock (``admitWhileClosed()``); an
/// open or isolated one answers from the cache; only a break that has ended (probe permits are handed out
/// fleet-wide) or a state not known yet asks Redis, for at most the admission budget. While Redis is unavailable,
/// the store-down policy decides. What the cache decides is ``Cache/admission(name:now:storeDown:admissionBudget:)``.
extension DistributedBackend {
    /// The answer when Redis is not needed (``admitWhileClosed()``, then the cache); `nil` when it is.
    func admitWithoutWaiting() -> BreakerAdmission? {
        if let token = admitWhileClosed() { return .admitted(token) }
        if case .decided(let admission) = decide() { return admission }
        return nil
    }

    /// The answer without Redis, for a caller that does not wait (a synchronous acquire inside a task): what the cache
    /// cannot decide is decided as past the admission budget, for this call only: a state not known yet by the
    /// store-down policy; a break that has ended rejects (``FuseboxError/Code/wouldWait``), since the fleet's probe
    /// permits are Redis' to hand out.
    func admitNow() -> BreakerAdmission {
        if let admission = admitWithoutWaiting() { return admission }
        let now = self.now
        let fallback = cache.withLock { cache -> (BreakerAdmission, BreakerTransition?)? in
            guard !cache.isKnown else { return nil }
            let (decision, transition) = cache.withoutRedis(
                name: name, reason: "its first read from Redis is not back, and acquire() does not block a task", now: now,
                storeDown: whenUnavailable)
            guard case .decided(let admission) = decision else { return (.rejected(.wouldWait(name: name)), transition) }
            return (admission, transition)
        }
        guard let (admission, transition) = fallback else {
            // Known by now: a reply came in since the first look (decide again), or a probe permit is wanted.
            return admitWithoutWaiting() ?? .rejected(.wouldWait(name: name))
        }
        if let transition { instruments.transitioned(transition) }
        if case .rejected(let error) = admission, error.code == .circuitOpen { instruments.rejected(in: error.state ?? .open) }
        return admission
    }

    /// The answer, asking Redis when the cache cannot decide (half-open, or a state not known yet): the reply
    /// arrives on the connection's own thread; past the admission budget, the store-down policy decides.
    func admit() async -> BreakerAdmission {
        if let token = admitWhileClosed() { return .admitted(token) }
        switch decide() {
        case .decided(let admission): return admission
        case .askRedis:
            return await withCheckedContinuation { continuation in
                let request = AdmissionRequest()
                askRedis { [self] admission in
                    if request.answer(admission) { continuation.resume(returning: admission) } else { giveBack(admission) }
                }
                DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(admissionWait.nanoseconds))) { [self] in
                    if request.answer(nil) { continuation.resume(returning: overBudget()) }
                }
            }
        }
    }

    /// How long an admission waits for Redis: the admission budget, once this adapter has had a reply; before, as
    /// long as a command may (see ``DistributedCore/hasAnswered``).
    private var admissionWait: Duration {
        if core.hasAnswered.load(ordering: .relaxed) { return admissionBudget }
        return max(admissionBudget, core.options.redis.connectTimeout + core.options.redis.commandTimeout + .milliseconds(100))
    }

    /// Past the admission budget: the store-down policy decides this call, and every call that would ask Redis until
    /// a reply comes (``Cache/admissionOverdue``); with policy `local`, a breaker whose break has ended rejects.
    func overBudget() -> BreakerAdmission {
        let first = cache.withLock { cache in
            defer { cache.admissionOverdue = true }
            return !cache.admissionOverdue
        }
        admissionOverruns.increment()
        if first {
            core.logger.debug("Redis did not answer an admission request within the budget; the store-down policy decides until it does", metadata: [
                "breaker": "\(name)", "budget": "\(admissionBudget)",
            ])
        }
        if case .decided(let admission) = decide() { return admission }
        return .rejected(unavailableRejection("no answer from Redis within \(admissionBudget)"))
    }

    /// What Redis granted after its caller stopped waiting: a probe permit goes back at once (an ignored outcome
    /// frees it for another caller), anything else needs nothing.
    private func giveBack(_ admission: BreakerAdmission) {
        if case .admitted(let token) = admission, token.isProbe { record(.ignored, for: token) }
    }

    /// The common case, kept small: a healthy, known, closed (or metrics-only) breaker admits at once.
    @inline(__always)
    func admitWhileClosed() -> PermitToken? {
        let version = admission.load(ordering: .acquiring)
        guard version >= 0 else { return nil }
        return PermitToken(version: version, isProbe: false, isRecorded: true, startedAt: now)
    }

    /// The cache's admission decision (``Cache/admission(name:now:storeDown:admissionBudget:)``), with shadow mode
    /// and the instruments around it.
    private func decide() -> Cache.Decision {
        let now = self.now
        let (decided, transition, shadowed) = cache.withLock { cache -> (Cache.Decision, BreakerTransition?, BreakerState?) in
            let (decision, transition) = cache.admission(name: name, now: now, storeDown: whenUnavailable, admissionBudget: admissionBudget)
            // Shadow mode: what the breaker rejected runs anyway, unrecorded, and counts as `would_reject`.
            guard case .decided(.rejected(let error)) = decision, cache.rules.policy.mode == .shadow else {
                return (decision, transition, nil)
            }
            cache.pending.wouldReject += 1
            return (.decided(.admitted(.shadow(version: cache.version, startedAt: now))), transition, error.state ?? cache.state)
        }
        if let transition { instruments.transitioned(transition) }
        if case .decided(.rejected(let error)) = decided { instruments.rejected(in: error.state ?? .open) }
        if let shadowed { instruments.wouldReject(in: shadowed) }
        return decided
    }

    /// Asks the script for admission (and, when a break has ended, a probe permit).
    private func askRedis(_ completion: @escaping @Sendable (BreakerAdmission) -> Void) {
        let lease = cache.withLock { $0.rules.probeLeaseMilliseconds }
        submitScript("acquire", [Int(lease)]) { [self] result in
            switch result {
            case .success(let reply):
                apply(reply, ownCall: true)
                let now = self.now
                switch reply.granted {
                case 1:
                    let token = reply.state == .disabled
                        ? PermitToken.unrecorded : PermitToken(version: reply.version, isProbe: false, isRecorded: true, startedAt: now)
                    completion(.admitted(token))
                case 2:
                    cache.withLock { cache in
                        if cache.probesHeldVersion != reply.version { cache.probesHeld = 0 }
                        cache.probesHeldVersion = reply.version
                        cache.probesHeld += 1
                        cache.probeLeaseRenewAt = now + lease * 500_000
                    }
                    completion(.admitted(PermitToken(version: reply.version, isProbe: true, isRecorded: true, startedAt: now)))
                default:
                    if reply.state == .halfOpen {
                        let retry = core.options.halfOpenRetryInterval.nanoseconds
                        cache.withLock { $0.halfOpenDeniedUntil = now + retry }
                    }
                    if cache.withLock({ $0.rules.policy.mode == .shadow }) {
                        // Shadow mode: the script counted it as `would_reject`; it runs, unrecorded.
                        instruments.wouldReject(in: reply.state)
                        return completion(.admitted(.shadow(version: reply.version, startedAt: now)))
                    }
                    instruments.rejected(in: reply.state)
                    completion(.rejected(.rejection(
                        name: name, state: reply.state, retryAfter: reply.timeUntilProbe,
                        isolationReason: reply.state == .isolated ? reply.isolationReason : nil)))
                }
            case .failure(let error):
                markFailure(error)
                if case .decided(let admission) = decide() {
                    completion(admission)
                } else {
                    completion(.rejected(unavailableRejection(error.message)))
                }
            }
        }
    }
}

/// One request for admission that Redis or the admission budget answers, whichever comes first.
private final class AdmissionRequest: Sendable {
    private let state = Locked<(isAnswered: Bool, admission: BreakerAdmission?)>((false, nil))

    /// Answers the request with Redis's `admission`, or `nil` when the budget ran out; `false` when it was
    /// answered already (the other side won).
    func answer(_ admission: BreakerAdmission?) -> Bool {
        state.withLock { state in
            guard !state.isAnswered else { return false }
            state = (true, admission)
            return true
        }
    }
}
