import Fusebox

/// Outcomes recorded by this instance and not yet written, as counts grouped by the version that admitted them.
///
/// Recording adds to counters: nothing grows with the number of calls, so recording allocates nothing in steady
/// state and a batch costs Redis the same whether it carries one outcome or a million.
struct PendingOutcomes: Sendable {
    struct Batch: Sendable {
        var version: Int
        /// The incarnation of the state the outcomes were admitted under (see ``Cache/created``).
        var created: Int64 = 0
        var isProbe: Bool
        /// This adapter's sequence number for the batch, set when first sent; a batch sent again after a timeout
        /// keeps it, so Redis (which keeps the highest number applied per sender) applies it once.
        var sequence: Int?
        /// An attempt to write it failed in a way that leaves open whether Redis ran it (a timeout, a broken
        /// connection): it keeps its sequence number until Redis answers, whatever later attempts say.
        var mayHaveRun = false
        var successes = 0
        var slowSuccesses = 0
        var failures = 0
        var slowFailures = 0
        var ignored = 0
        /// Calls this instance's cache rejected, sent with the batch so that they are counted once with it.
        var rejected = 0
        /// Of those, the calls adaptive throttling shed: they count in the shared window's throttled count.
        var throttled = 0
        /// Of those, the calls that ran anyway in shadow mode: counted as `would_reject`, not as rejected.
        var wouldReject = 0
        /// Failures before the first success, the longest run of failures, and the failures after the last
        /// success: what the consecutive-failure rule needs to know of the order.
        var leadingFailures = 0
        var longestFailureRun = 0
        var trailingFailures = 0
        var errors: [ObjectIdentifier: Int] = [:]
        var firstAt: Int64 = 0
        /// The same successes and failures, by the Redis time bucket they happened in (oldest first; usually one
        /// or two), so the shared window places them where they belong however late they are written.
        var groups: [Group] = []

        struct Group: Sendable {
            var bucket: Int64
            var successes = 0
            var slowSuccesses = 0
            var failures = 0
            var slowFailures = 0
        }

        var isEmpty: Bool { calls == 0 && ignored == 0 && rejected == 0 }
        /// Successes and failures (not ignored outcomes).
        var calls: Int { successes + slowSuccesses + failures + slowFailures }
        /// Outcomes that bring a breaker closer to a threshold: failures and slow calls.
        var bad: Int { failures + slowFailures + slowSuccesses }
        var hasSuccess: Bool { successes + slowSuccesses > 0 }

        /// Merges the groups of buckets before `bucket` (known buckets only) into one, under the oldest of them (so
        /// that the merged group is out of the window whenever any of its parts is).
        mutating func foldGroups(before bucket: Int64) {
            guard groups.count > 1, groups[0].bucket > 0, groups[0].bucket < bucket, groups[1].bucket > 0, groups[1].bucket < bucket
            else { return }
            var merged = groups[0]
            var taken = 1
            while taken < groups.count, groups[taken].bucket > 0, groups[taken].bucket < bucket {
                let group = groups[taken]
                merged.bucket = min(merged.bucket, group.bucket)
                merged.successes += group.successes
                merged.slowSuccesses += group.slowSuccesses
                merged.failures += group.failures
                merged.slowFailures += group.slowFailures
                taken += 1
            }
            groups.replaceSubrange(0..<taken, with: [merged])
        }

        mutating func clear() {
            sequence = nil
            mayHaveRun = false
            successes = 0
            slowSuccesses = 0
            failures = 0
            slowFailures = 0
            ignored = 0
            rejected = 0
            throttled = 0
            wouldReject = 0
            leadingFailures = 0
            longestFailureRun = 0
            trailingFailures = 0
            errors.removeAll(keepingCapacity: true)
            groups.removeAll(keepingCapacity: true)
        }
    }

    var current = Batch(version: 0, isProbe: false)
    private var others: [Batch] = []
    private var spare: Batch?
    private(set) var count = 0
    var rejected = 0
    /// Of ``rejected``, the calls adaptive throttling shed.
    var throttled = 0
    /// Of ``rejected``, the calls that ran anyway in shadow mode.
    var wouldReject = 0
    private(set) var dropped = 0
    /// Script calls carrying this breaker's batches that have not been answered. While one is, nothing more is
    /// taken: a sender has one write of a breaker outstanding at a time, so a batch that must be written again
    /// is never overtaken by a later one, and Redis' high-water mark per sender stays exact
    /// (Docs/architecture.md, "Exactly once"; Tests/Model/writes.pml).
    private(set) var writesOutstanding = 0

    var isEmpty: Bool { current.isEmpty && others.isEmpty && rejected == 0 }

    /// Whether everything held is plain successes not sent before (nothing that may need to travel fast); `true`
    /// when nothing is held.
    var holdsOnlySuccesses: Bool {
        func plain(_ batch: Batch) -> Bool {
            batch.isEmpty || (batch.bad == 0 && batch.ignored == 0 && !batch.isProbe && batch.sequence == nil)
        }
        return rejected == 0 && plain(current) && others.allSatisfy(plain)
    }

    /// When the oldest outcome held was recorded (ns), or `nil` when nothing is held.
    var oldestRecordedAt: Int64? {
        var oldest: Int64? = current.isEmpty ? nil : current.firstAt
        for batch in others where !batch.isEmpty { oldest = min(oldest ?? .max, batch.firstAt) }
        return oldest
    }

    /// Adds an outcome; returns `true` when it should be written at once (a probe's outcome).
    mutating func append(
        _ outcome: CallOutcome, slow: Bool, version: Int, created: Int64, probe: Bool, bucket: Int64, now: Int64, limit: Int
    ) -> Bool {
        guard count < limit else {
            dropped += 1
            return false
        }
        count += 1
        withBatch(version: version, created: created, probe: probe, firstAt: now) { batch in
            Self.add(outcome, slow: slow, bucket: bucket, to: &batch)
        }
        return probe
    }

    /// Runs `body` on the batch that outcomes admitted under `version` (of incarnation `created`) join: the current
    /// one when it matches or is empty, else an unsent one that matches, else a new one.
    private mutating func withBatch(version: Int, created: Int64, probe: Bool, firstAt: Int64, _ body: (inout Batch) -> Void) {
        if !probe && (current.isEmpty || (current.version == version && current.created == created)) {
            if current.isEmpty {
                current.version = version
                current.created = created
                current.firstAt = firstAt
            }
            body(&current)
        } else if let index = others.firstIndex(where: {
            $0.sequence == nil && $0.version == version && $0.created == created && $0.isProbe == probe
        }) {
            body(&others[index])
        } else {
            var batch = Batch(version: version, isProbe: probe)
            batch.created = created
            batch.firstAt = firstAt
            body(&batch)
            others.append(batch)
        }
    }

    /// Adds `count` successes (not slow, not probes) counted per CPU, as ``append(_:slow:version:created:probe:bucket:now:limit:)``
    /// would one by one; `firstAt` is when the first of them was recorded.
    mutating func appendSuccesses(_ count: Int, version: Int, created: Int64, bucket: Int64, firstAt: Int64, limit: Int) {
        let kept = max(0, min(count, limit - self.count))
        dropped += count - kept
        guard kept > 0 else { return }
        self.count += kept
        withBatch(version: version, created: created, probe: false, firstAt: firstAt) { batch in
            if batch.groups.last?.bucket != bucket { batch.groups.append(Batch.Group(bucket: bucket)) }
            batch.successes += kept
            batch.groups[batch.groups.count - 1].successes += kept
            batch.trailingFailures = 0
        }
    }

    private static func add(_ outcome: CallOutcome, slow: Bool, bucket: Int64, to batch: inout Batch) {
        if case .ignored = outcome {
            batch.ignored += 1
            return
        }
        if batch.groups.last?.bucket != bucket { batch.groups.append(Batch.Group(bucket: bucket)) }
        let last = batch.groups.count - 1
        switch outcome {
        case .success:
            if slow {
                batch.slowSuccesses += 1
                batch.groups[last].slowSuccesses += 1
            } else {
                batch.successes += 1
                batch.groups[last].successes += 1
            }
            batch.trailingFailures = 0
        case .failure(let type):
            if slow {
                batch.slowFailures += 1
                batch.groups[last].slowFailures += 1
            } else {
                batch.failures += 1
                batch.groups[last].failures += 1
            }
            if !batch.hasSuccess { batch.leadingFailures += 1 }
            batch.trailingFailures += 1
            batch.longestFailureRun = max(batch.longestFailureRun, batch.trailingFailures)
            batch.errors[ObjectIdentifier(type), default: 0] += 1
        case .ignored:
            break
        }
    }

    /// Outcomes dropped since the last call (the buffer was full), for the log; resets the count.
    mutating func takeDropped() -> Int {
        defer { dropped = 0 }
        return dropped
    }

    /// Everything pending, the local rejections riding with the first batch not sent before (or a batch of their
    /// own); the buffer is left empty and the batches count as outstanding until ``settle(_:written:)``. Nothing
    /// while a write is outstanding. Batches sent before (and put back) come first, in the order of their sequence
    /// numbers, so Redis never sees a number lower than one it has applied for a batch it has not.
    mutating func take() -> [Batch] {
        guard writesOutstanding == 0 else { return [] }
        if others.contains(where: { $0.sequence != nil }) {
            // A write that may or may not have run goes again alone, until Redis answers it: new outcomes wait as
            // counts meanwhile, so however long Redis stays frozen, what is held does not grow with the attempts.
            let uncertain = others.filter { $0.sequence != nil }.sorted { $0.sequence! < $1.sequence! }
            others.removeAll { $0.sequence != nil }
            for batch in uncertain { count -= batch.calls + batch.ignored }
            writesOutstanding = uncertain.count
            return uncertain
        }
        var batches = others
        others.removeAll()
        if !current.isEmpty {
            batches.append(current)
            current = spare ?? Batch(version: current.version, isProbe: false)
            current.version = batches.last!.version
            current.created = batches.last!.created
            spare = nil
        }
        batches.sort { a, b in
            switch (a.sequence, b.sequence) {
            case (let x?, let y?): return x < y
            case (.some, .none): return true
            case (.none, .some): return false
            case (.none, .none): return a.version < b.version || (a.version == b.version && !a.isProbe && b.isProbe)
            }
        }
        if rejected > 0 {
            // Rejections never ride with a batch sent before: were it a copy Redis has applied, they would be lost.
            if let index = batches.firstIndex(where: { $0.sequence == nil }) {
                batches[index].rejected += rejected
                batches[index].throttled += throttled
                batches[index].wouldReject += wouldReject
            } else {
                var batch = Batch(version: -1, isProbe: false)
                batch.rejected = rejected
                batch.throttled = throttled
                batch.wouldReject = wouldReject
                batches.append(batch)
            }
            rejected = 0
            throttled = 0
            wouldReject = 0
        }
        count = 0
        writesOutstanding = batches.count
        return batches
    }

    /// Settles one batch handed out by ``take()``: a written batch's storage is kept for reuse; one that was not
    /// written (or is not known to be) is put back with its sequence number and rejections, to be written again
    /// first. Returns `true` when no write of the breaker is outstanding any more.
    mutating func settle(_ batch: Batch, written: Bool, certainlyNotRun: Bool = false) -> Bool {
        writesOutstanding -= 1
        if written {
            if spare == nil, !batch.isProbe {
                var reused = batch
                reused.clear()
                spare = reused
            }
        } else if !batch.isEmpty {
            count += batch.calls + batch.ignored
            if certainlyNotRun && !batch.mayHaveRun {
                restoreUnsent(batch)
            } else {
                // An earlier attempt may have run even when this one did not (Tests/Model/writes.pml,
                // FORGET_EARLIER_ATTEMPTS): the number stays.
                var kept = batch
                kept.mayHaveRun = true
                let index = others.firstIndex { ($0.sequence ?? .max) > kept.sequence! } ?? others.count
                others.insert(kept, at: index)
            }
        }
        return writesOutstanding == 0
    }

    /// Puts back a batch that Redis certainly did not run (never sent, or refused before running): it gives up its
    /// sequence number and joins the unsent outcomes of the same version, before them, so that the attempts of an
    /// outage leave one batch per version, not one per attempt.
    private mutating func restoreUnsent(_ batch: Batch) {
        var batch = batch
        batch.sequence = nil
        if let index = others.firstIndex(where: {
            $0.sequence == nil && $0.version == batch.version && $0.created == batch.created && $0.isProbe == batch.isProbe
        }) {
            others[index] = Self.joined(batch, then: others[index])
        } else if !batch.isProbe && (current.isEmpty || (current.version == batch.version && current.created == batch.created)) {
            current = current.isEmpty ? batch : Self.joined(batch, then: current)
        } else {
            others.append(batch)
        }
    }

    /// One batch with the outcomes of `earlier`, then those of `later` (same version, incarnation and kind).
    static func joined(_ earlier: Batch, then later: Batch) -> Batch {
        var batch = earlier
        batch.sequence = nil
        batch.successes += later.successes
        batch.slowSuccesses += later.slowSuccesses
        batch.failures += later.failures
        batch.slowFailures += later.slowFailures
        batch.ignored += later.ignored
        batch.rejected += later.rejected
        batch.throttled += later.throttled
        batch.wouldReject += later.wouldReject
        batch.errors.merge(later.errors, uniquingKeysWith: +)
        batch.firstAt = min(earlier.firstAt, later.firstAt)
        // The failure runs of the two, the later one's leading run continuing the earlier one's trailing run.
        let earlierFailures = earlier.failures + earlier.slowFailures
        batch.leadingFailures = earlier.hasSuccess ? earlier.leadingFailures : earlierFailures + later.leadingFailures
        batch.trailingFailures = later.hasSuccess ? later.trailingFailures : earlier.trailingFailures + later.trailingFailures
        batch.longestFailureRun = max(earlier.longestFailureRun, later.longestFailureRun, earlier.trailingFailures + later.leadingFailures)
        // Groups stay one per bucket, oldest first.
        batch.groups = []
        for group in (earlier.groups + later.groups).sorted(by: { $0.bucket < $1.bucket }) {
            if let last = batch.groups.last, last.bucket == group.bucket {
                batch.groups[batch.groups.count - 1].successes += group.successes
                batch.groups[batch.groups.count - 1].slowSuccesses += group.slowSuccesses
                batch.groups[batch.groups.count - 1].failures += group.failures
                batch.groups[batch.groups.count - 1].slowFailures += group.slowFailures
            } else {
                batch.groups.append(group)
            }
        }
        return batch
    }

    /// Settles a batch that will not be written again (Redis refused it for good): it is dropped. Returns `true`
    /// when no write of the breaker is outstanding any more.
    mutating func abandon() -> Bool {
        writesOutstanding -= 1
        return writesOutstanding == 0
    }
}
