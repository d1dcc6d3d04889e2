import Dispatch
import Fusebox
import FuseboxLocking
import Hiredis
import Logging
import Metrics
import Synchronization

/// The outcome buffer and its writer: outcomes are counted (plain successes per CPU, the rest in ``PendingOutcomes``
/// under the cache's lock) and written as batches with sequence numbers, at the next flush, after the quiet hold,
/// or at once when ``Cache/mustWriteNow(after:slow:policy:)`` says a failure may trip the breaker.
extension DistributedBackend {
    func record(_ outcome: CallOutcome, for token: PermitToken) {
        guard token.isRecorded else { return }
        let now = self.now
        let duration = now - token.startedAt
        let isSlow = duration > slowCallNanoseconds.load(ordering: .relaxed)
        let isPlainSuccess: Bool
        if case .success = outcome, !isSlow, !token.isProbe, token.version >= 0, !writeThrough {
            isPlainSuccess = true
            if countOnStripe(version: token.version, now: now) {
                instruments.recorded(outcome, nanoseconds: duration)
                return
            }
        } else {
            isPlainSuccess = false
        }
        let (writeNow, mayTrip, transition) = cache.withLock { cache -> (Bool, Bool, BreakerTransition?) in
            if isPlainSuccess {
                // Set this CPU's stripe up for the token's version and the current bucket; what it held goes first.
                if token.version == cache.version && (cache.state == .closed || cache.state == .metricsOnly) {
                    let slot = cache.slot(at: now, widthMilliseconds: cache.rules.bucketMilliseconds)
                    let held = stripes[currentStripe].cell.withLock { cell -> SuccessStripe.Cell in
                        let taken = cell
                        cell = SuccessStripe.Cell(
                            version: token.version, created: cache.created, bucket: slot.bucket, start: slot.start, end: slot.end,
                            count: 1, firstAt: now)
                        return taken
                    }
                    move(held, into: &cache)
                    return (false, false, nil)
                }
            } else {
                // Successes counted per CPU happened before this outcome.
                drainStripes(into: &cache)
            }
            var transition: BreakerTransition?
            var version = token.version
            if case .failure(let type) = outcome { cache.rememberName(of: type) }
            if token.version < 0 {
                // Admitted by the in-process fallback: it decides; the outcome still counts in the shared totals.
                if cache.fallback != nil {
                    var original = token
                    original.version = -2 - token.version
                    transition = cache.fallback!.record(outcome, token: original, now: now)
                }
                version = -1
            }
            if token.isProbe && token.version == cache.probesHeldVersion { cache.probesHeld = max(0, cache.probesHeld - 1) }
            let bucket = cache.bucket(at: now, widthMilliseconds: cache.rules.bucketMilliseconds)
            let isProbe = cache.pending.append(
                outcome, slow: isSlow, version: version, created: cache.created, probe: token.isProbe && version >= 0,
                bucket: bucket, now: now, limit: maxBufferedOutcomes)
            let urgent = version == cache.version && cache.mustWriteNow(after: outcome, slow: isSlow, policy: cache.rules.policy)
            return (isProbe || writeThrough, urgent, transition)
        }
        instruments.recorded(outcome, nanoseconds: duration)
        if let transition { instruments.transitioned(transition) }
        if writeNow || mayTrip {
            // A probe's outcome, a failure beyond the budget or that may cross a threshold, and every outcome with
            // writeThrough are submitted now, without waiting for the reply (the next admission request is then
            // queued behind them).
            flush()
        }
    }

    /// Takes every buffered outcome and submits it, in order. Call with `core.sendOrder` held.
    private func submitPending() {
        core.submit(takePending())
    }

    /// Takes every buffered outcome as script calls to submit, in order. Call with `core.sendOrder` held, and
    /// submit them before releasing it.
    func takePending() -> [ScriptCall] {
        let now = self.now
        let (batches, dropped, windowAge, isTimeWindow, throttling) = cache.withLock { cache in
            drainStripes(into: &cache)
            var batches = cache.pending.take()
            let width = cache.rules.bucketMilliseconds
            if width > 0, case .time(_, let size) = cache.rules.policy.window {
                // Successes held longer than the window (a quiet breaker in a large fleet) count in the totals
                // only: their buckets travel as one group, which the script leaves out of the window. What is left
                // spans at most the window's buckets, one slot each, which the script's lean path needs.
                let current = cache.bucket(at: now, widthMilliseconds: width)
                if current > 0 {
                    for index in batches.indices { batches[index].foldGroups(before: current - Int64(size) + 1) }
                }
            }
            return (batches, cache.pending.takeDropped(), cache.rules.windowAgeNanoseconds, width > 0, cache.rules.policy.adaptiveThrottling != nil)
        }
        if dropped > 0 {
            instruments.logger.info(
                "breaker '\(name)': \(dropped) outcomes were dropped: more than \(maxBufferedOutcomes) waited to be written to Redis")
        }
        guard !batches.isEmpty else { return [] }
        var calls: [ScriptCall] = []
        for part in batches {
            var batch = part
            if batch.sequence == nil {
                batch.sequence = batchSequence.add(1, ordering: .relaxed).newValue
            }
            let names = cache.withLock { cache in batch.errors.map { (cache.errorName($0.key), $0.value) } }
            var extra: [any RedisArgument] = [
                // A time window places each group by its bucket (those that left it count in the totals only);
                // otherwise the batch enters the window only if its first outcome is recent enough.
                batch.sequence!, batch.version, Int(batch.created),
                (isTimeWindow && batch.groups.allSatisfy { $0.bucket > 0 }) || now - batch.firstAt <= windowAge ? "1" : "0",
                batch.isProbe ? "1" : "0", batch.ignored,
                // With adaptive throttling, `R:T`: the script then counts T shed calls and answers with the count;
                // `/W` after it: W of the rejections ran anyway in shadow mode.
                Self.rejections(batch, throttling: throttling),
                batch.leadingFailures, batch.longestFailureRun, batch.trailingFailures, names.count,
            ]
            for (name, count) in names.sorted(by: { $0.0 < $1.0 }) {
                extra.append(name)
                extra.append(count)
            }
            for group in batch.groups {
                extra += [Int(group.bucket), group.successes, group.slowSuccesses, group.failures, group.slowFailures] as [any RedisArgument]
            }
            let sent = batch
            calls.append(scriptCall("record", extra) { [self] result in
                switch result {
                case .success(let reply):
                    apply(reply, ownCall: true)
                    let (idle, urgent) = cache.withLock { cache in
                        (cache.pending.settle(sent, written: true), !cache.pending.holdsOnlySuccesses)
                    }
                    // What had to wait for this reply (a failure past the budget, a probe's outcome) goes now.
                    if idle && urgent { core.doorbell.ring() }
                case .failure(let error):
                    markFailure(error)
                    if error.mayBeRetried {
                        // Not written (or not known to be): keep it for the next flush (bounded by
                        // maxBufferedOutcomes). One that may have run keeps its sequence number, so Redis applies it
                        // once, whichever happened; one that certainly did not (never sent; refused for the server's
                        // condition: OOM, NOPERM, BUSY, LOADING, …) joins the outcomes recorded since.
                        _ = cache.withLock { $0.pending.settle(sent, written: false, certainlyNotRun: error.certainlyNotRun) }
                        core.retryWanted.store(true, ordering: .relaxed)
                    } else {
                        _ = cache.withLock { $0.pending.abandon() }
                    }
                }
            })
        }
        registerIfNeeded()
        return calls
    }

    /// Writes everything buffered now (without waiting for the replies).
    func flush() {
        core.sendOrder.withLock { _ in submitPending() }
    }

    /// Writes everything buffered and waits until Redis has answered for it: every script call of this breaker
    /// submitted so far, the background flusher's included. A write outstanding holds back what was recorded
    /// since (one write at a time), so this takes up to three rounds; it stops early when Redis is unavailable
    /// (what could not be written is kept for the flusher).
    func flushAndWait() async {
        for _ in 0..<3 {
            flush()
            await allAnswered()
            let (done, unavailable) = cache.withLock { ($0.pending.isEmpty && $0.pending.writesOutstanding == 0, !$0.health.isHealthy) }
            if done || unavailable { return }
        }
    }

    /// Waits until every script call of this breaker submitted so far has been answered.
    private func allAnswered() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let isIdle = inFlight.withLock { state in
                if state.count == 0 { return true }
                state.waiters.append(continuation)
                return false
            }
            if isIdle { continuation.resume() }
        }
    }

    /// Whether outcomes are waiting to be written.
    var hasPending: Bool {
        (0...stripeMask).contains { stripes[$0].cell.withLock { $0.count > 0 } } || cache.withLock { !$0.pending.isEmpty }
    }

    /// How soon the flusher should write this breaker's outcomes: at once (``FlushUrgency/due``) when it holds
    /// anything but plain successes or the breaker is not quiet; a quiet breaker's successes when the oldest held
    /// would reach the quiet hold before the next flush (``FlushUrgency/quietDue``), and, from half the hold on,
    /// along with another quiet breaker's write (``FlushUrgency/halfway``).
    func flushUrgency() -> FlushUrgency {
        let now = self.now
        var oldest = Int64.max
        for index in 0...stripeMask {
            stripes[index].cell.withLock { cell in if cell.count > 0 { oldest = min(oldest, cell.firstAt) } }
        }
        return cache.withLock { cache in
            cache.flushUrgency(oldestStriped: oldest, now: now, flushNanoseconds: flushNanoseconds, quietHold: core.quietHold)
        }
    }

    /// Renews this instance's probe permits (their leases) when calls admitted as probes are still running for
    /// the half-open version Redis holds and half the lease has passed since it was granted or last renewed.
    func renewProbeLeaseIfDue() {
        let now = self.now
        let lease: Int64? = cache.withLock { cache in
            guard cache.probesHeld > 0, cache.state == .halfOpen, cache.version == cache.probesHeldVersion,
                now >= cache.probeLeaseRenewAt else { return nil }
            cache.probeLeaseRenewAt = now + cache.rules.probeLeaseMilliseconds * 500_000
            return cache.rules.probeLeaseMilliseconds
        }
        guard let lease else { return }
        submitScript("renew", [Int(lease)]) { [self] result in
            switch result {
            case .success(let reply): apply(reply, ownCall: true)
            case .failure(let error): markFailure(error)
            }
        }
    }

    /// Moves the per-CPU success counts into the pending batches. Call with the cache's lock held (the order is
    /// always the cache's lock, then a stripe's).
    func drainStripes(into cache: inout Cache, invalidate: Bool = false) {
        for index in 0...stripeMask {
            let cell = stripes[index].cell.withLock { cell -> SuccessStripe.Cell in
                let taken = cell
                cell.count = 0
                if invalidate { cell.version = -1 }
                return taken
            }
            move(cell, into: &cache)
        }
    }

    /// Adds what a stripe held to the pending batches.
    private func move(_ cell: SuccessStripe.Cell, into cache: inout Cache) {
        guard cell.count > 0 else { return }
        cache.pending.appendSuccesses(
            cell.count, version: cell.version, created: cell.created, bucket: cell.bucket, firstAt: cell.firstAt,
            limit: maxBufferedOutcomes)
    }

    /// The stripe of the CPU this thread runs on.
    private var currentStripe: Int { CPUSlots.current(mask: stripeMask) }

    /// Counts a plain success on this CPU's stripe; `false` when the stripe is set up for another version or time
    /// bucket (the caller then records it under the cache's lock, which sets the stripe up again).
    @inline(__always)
    private func countOnStripe(version: Int, now: Int64) -> Bool {
        return stripes[currentStripe].cell.withLock { cell in
            guard cell.version == version, now >= cell.start, now < cell.end else { return false }
            if cell.count == 0 { cell.firstAt = now }
            cell.count += 1
            return true
        }
    }
}

/// One CPU's count of plain successes for one breaker: the version and Redis time bucket they count under, and
/// the span of this instance's clock the bucket covers. Padded so that two stripes never share a cache line.
struct SuccessStripe: ~Copyable {
    struct Cell: Sendable {
        var version = -1
        var created: Int64 = 0
        var bucket: Int64 = 0
        var start: Int64 = .max
        var end: Int64 = .min
        var count = 0
        var firstAt: Int64 = 0
    }

    let cell = Locked(Cell())
    private let padding: (Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64) = (0, 0, 0, 0, 0, 0, 0, 0)
}
