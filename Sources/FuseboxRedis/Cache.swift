import Fusebox

/// Whether this instance can use the shared state.
enum StoreHealth: Sendable, Equatable, CustomStringConvertible {
    case healthy
    /// Redis cannot be reached, refuses a command, or times out.
    case unavailable(String)
    /// The breaker's keys are malformed; `reset` repairs them.
    case corrupt(String)

    var isHealthy: Bool { self == .healthy }

    var description: String {
        switch self {
        case .healthy: "healthy"
        case .unavailable(let text), .corrupt(let text): text
        }
    }
}

/// One instance's view of a shared breaker, plus the outcomes it has not written yet.
struct Cache: Sendable {
    /// `false` until the first reply or message: admission asks Redis until then.
    var isKnown = false
    var state: BreakerState
    var version = 0
    /// The incarnation of the state hash the cache reflects; a different one is newer whatever its version.
    var created: Int64 = 0
    /// While open: when (ns on this instance's clock) the break ends.
    var probeAt: Int64 = 0
    /// After Redis denied a probe permit: reject locally until then (ns).
    var halfOpenDeniedUntil: Int64 = 0
    var attempt = 0
    var isolationReason: String?
    /// The window as of the last reply, to guess whether an outcome may trip the breaker.
    var windowCalls = 0
    var windowFailures = 0
    var consecutiveFailures = 0
    var health = StoreHealth.healthy
    /// The in-process breaker used while Redis is unavailable (policy `local`).
    var fallback: BreakerStateMachine?
    var pending = PendingOutcomes()
    private var errorNames: [ObjectIdentifier: String] = [:]

    init(state: BreakerState) { self.state = state }

    /// Applies a script reply; returns the transition it reveals and whether the store just became usable again.
    mutating func apply(_ reply: StateReply, now: Int64) -> (BreakerTransition?, Bool) {
        let recovered = !health.isHealthy
        if recovered {
            health = .healthy
            fallback = nil
        }
        let isNewIncarnation = reply.created != created
        guard !isKnown || isNewIncarnation || reply.version >= version else { return (nil, recovered) }
        let transition = isKnown && (reply.version > version || (isNewIncarnation && reply.state != state))
            ? BreakerTransition(from: state, to: reply.state, reason: reply.reason, version: reply.version, at: .milliseconds(reply.since))
            : nil
        isKnown = true
        state = reply.state
        version = reply.version
        created = reply.created
        attempt = reply.attempt
        isolationReason = reply.isolationReason
        probeAt = reply.state == .open ? now + max(0, reply.openUntil - reply.now) * 1_000_000 : 0
        if transition != nil { halfOpenDeniedUntil = 0 }
        windowCalls = reply.windowCalls
        windowFailures = reply.windowFailures
        consecutiveFailures = reply.consecutiveFailures
        return (transition, recovered)
    }

    /// Sets the health; returns `true` when it changed (to log once).
    mutating func setHealth(_ new: StoreHealth) -> Bool {
        guard health != new else { return false }
        let wasHealthy = health.isHealthy
        health = new
        if !wasHealthy && new.isHealthy { fallback = nil }
        return wasHealthy
    }

    /// A cheap guess, from the last reply plus what is buffered, of whether `outcome` may trip the breaker;
    /// when it may, the flusher is woken at once instead of at its next tick.
    func mayTrip(after outcome: CallOutcome, policy: BreakerPolicy) -> Bool {
        guard case .failure = outcome, state == .closed else { return false }
        let batch = pending.current
        if let threshold = policy.consecutiveFailureThreshold,
            (batch.outcomes.count == batch.trailingFailures ? consecutiveFailures : 0) + batch.trailingFailures >= threshold {
            return true
        }
        let calls = windowCalls + batch.outcomes.count
        guard calls >= policy.minimumThroughput, let ratio = policy.failureRateThreshold else { return false }
        return Double(windowFailures + batch.failures) >= ratio * Double(calls)
    }

    /// The name recorded for an error type (`String(describing:)`, computed once per type).
    func errorName(_ key: ObjectIdentifier) -> String { errorNames[key] ?? "Error" }

    mutating func rememberName(of type: any Error.Type) {
        let key = ObjectIdentifier(type)
        if errorNames[key] == nil { errorNames[key] = String(describing: type) }
    }
}

/// Outcomes recorded by this instance and not yet written, grouped by the version that admitted them.
///
/// The current batch's storage is reused from flush to flush, so recording allocates nothing in steady state.
struct PendingOutcomes: Sendable {
    struct Batch: Sendable {
        var version: Int
        /// The incarnation of the state the outcomes were admitted under (see ``Cache/created``).
        var created: Int64 = 0
        var isProbe: Bool
        /// Set when first sent; a batch sent again after a timeout keeps it, so Redis applies it once.
        var id: String?
        /// In order: `s` success, `S` slow success, `f` failure, `F` slow failure.
        var outcomes: [UInt8] = []
        var ignored = 0
        var failures = 0
        var trailingFailures = 0
        var errors: [ObjectIdentifier: Int] = [:]
        var firstAt: Int64 = 0

        var isEmpty: Bool { outcomes.isEmpty && ignored == 0 }

        mutating func clear() {
            id = nil
            outcomes.removeAll(keepingCapacity: true)
            errors.removeAll(keepingCapacity: true)
            ignored = 0
            failures = 0
            trailingFailures = 0
        }
    }

    var current = Batch(version: 0, isProbe: false)
    private var others: [Batch] = []
    private var spare: Batch?
    private(set) var count = 0
    var rejected = 0
    private(set) var dropped = 0

    var isEmpty: Bool { current.isEmpty && others.isEmpty && rejected == 0 }

    /// Adds an outcome; returns `true` when it should be written at once (a probe's outcome).
    mutating func append(
        _ outcome: CallOutcome, slow: Bool, version: Int, created: Int64, probe: Bool, now: Int64, limit: Int
    ) -> Bool {
        guard count < limit else {
            dropped += 1
            return false
        }
        count += 1
        if !probe && (current.isEmpty || (current.version == version && current.created == created)) {
            if current.isEmpty {
                current.version = version
                current.created = created
                current.firstAt = now
            }
            Self.add(outcome, slow: slow, to: &current)
        } else if let index = others.firstIndex(where: {
            $0.id == nil && $0.version == version && $0.created == created && $0.isProbe == probe
        }) {
            Self.add(outcome, slow: slow, to: &others[index])
        } else {
            var batch = Batch(version: version, isProbe: probe)
            batch.created = created
            batch.firstAt = now
            Self.add(outcome, slow: slow, to: &batch)
            others.append(batch)
        }
        return probe
    }

    private static func add(_ outcome: CallOutcome, slow: Bool, to batch: inout Batch) {
        switch outcome {
        case .success:
            batch.outcomes.append(slow ? UInt8(ascii: "S") : UInt8(ascii: "s"))
            batch.trailingFailures = 0
        case .failure(let type):
            batch.outcomes.append(slow ? UInt8(ascii: "F") : UInt8(ascii: "f"))
            batch.failures += 1
            batch.trailingFailures += 1
            batch.errors[ObjectIdentifier(type), default: 0] += 1
        case .ignored:
            batch.ignored += 1
        }
    }

    /// Outcomes dropped since the last call (the buffer was full), for the log; resets the count.
    mutating func takeDropped() -> Int {
        defer { dropped = 0 }
        return dropped
    }

    /// Everything pending, oldest version first, and the count of local rejections; the buffer is left empty.
    mutating func take() -> ([Batch], Int) {
        var batches = others
        others.removeAll()
        if !current.isEmpty {
            batches.append(current)
            current = spare ?? Batch(version: current.version, isProbe: false)
            current.version = batches.last!.version
            spare = nil
        }
        batches.sort { $0.version < $1.version || ($0.version == $1.version && !$0.isProbe && $1.isProbe) }
        let taken = rejected
        rejected = 0
        count = 0
        return (batches, taken)
    }

    /// Hands a written batch's storage back for reuse.
    mutating func recycle(_ batch: Batch) {
        guard spare == nil, !batch.isProbe else { return }
        var reused = batch
        reused.clear()
        spare = reused
    }

    /// Puts back a batch that could not be written.
    mutating func restore(_ batch: Batch, rejected: Int) {
        self.rejected += rejected
        guard !batch.isEmpty else { return }
        count += batch.outcomes.count + batch.ignored
        others.insert(batch, at: 0)
    }
}
