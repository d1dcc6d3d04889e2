import FuseboxLocking
import Metrics
import Synchronization

/// A limit on concurrent calls: at most ``maxConcurrent`` run at once, up to ``maxQueued`` more wait (each for
/// at most ``queueTimeout``), and the rest are turned away at once with ``FuseboxError/Code/bulkheadFull``, a
/// rejection distinct from an open circuit.
///
/// A slot is given back however the call ends: success, error, or cancellation of the waiting or running task.
/// A free slot goes to the longest waiter first. While nobody waits, taking and giving back a slot is one
/// compare-and-swap each; the queue is behind a lock. Waiting tasks suspend, they never block a thread. The
/// figures (``snapshot``) are also gauges and counters in metrics.
public final class Bulkhead: Sendable {
    /// The name in errors, snapshots and metrics (`fusebox_bulkhead_*{bulkhead=NAME}`).
    public let name: String
    /// Calls allowed to run at once now: the fixed limit, or where an adaptive limit stands.
    public var maxConcurrent: Int { limitWord.load(ordering: .relaxed) }
    /// Whether the limit follows measured latency (``Limit/adaptive(_:)``).
    public let isAdaptive: Bool
    /// Calls allowed to wait for a slot; 0 (default) turns every call beyond the limit away at once.
    public let maxQueued: Int
    /// The longest a call waits for a slot; `nil`: as long as it takes.
    public let queueTimeout: Duration?

    private struct Waiter {
        let id: UInt64
        let continuation: CheckedContinuation<Void, any Error>
    }

    /// The calls running in the low 32 bits, and above them the calls waiting (queued, or between the decision to
    /// wait and their place in the queue). Taking and giving back a slot while nobody waits is one compare-and-swap
    /// on it; `word < maxConcurrent` says at once that nobody waits and a slot is free.
    private let word = Atomic<Int>(0)
    private static let waitingUnit = 1 << 32
    private static let runningMask = waitingUnit - 1
    private let admittedCount = Atomic<Int>(0)
    private let peakCount = Atomic<Int>(0)
    /// The limit in force (changes only with an adaptive limit, under ``controller``'s lock).
    private let limitWord: Atomic<Int>
    /// The adaptive limit's controller; `nil` for a fixed limit.
    private let controller: Locked<AdaptiveConcurrency?>
    private let epoch = ContinuousClock.now

    /// The queue, behind the lock. The waiting count in `word` changes only under it.
    private struct State {
        var waiters: [Waiter] = []
        /// Waiters between the decision to wait and their place in the queue, and why any of them was given up
        /// meanwhile (the cancellation handler or the timer ran first).
        var joining: [UInt64: Abandonment?] = [:]
        var nextID: UInt64 = 0
        var rejected = 0
    }

    private let state = Locked(State())
    private let runningGauge: Gauge
    private let peakGauge: Gauge
    private let rejections: Counter

    /// What a bulkhead is doing now.
    public struct Snapshot: Sendable, Hashable {
        /// Calls running now.
        public var running: Int
        /// The most calls that ever ran at once.
        public var peak: Int
        /// Calls waiting for a slot.
        public var queued: Int
        /// Calls let through since the bulkhead was made.
        public var admitted: Int
        /// Calls turned away (full, or their wait timed out).
        public var rejected: Int
        /// The limit now (``Bulkhead/maxConcurrent``).
        public var limit: Int
        /// An adaptive limit's no-load latency, as last measured; `nil` for a fixed limit or before the first measure.
        public var noLoadLatency: Duration?
    }

    /// How many calls may run at once.
    public enum Limit: Sendable, Hashable {
        /// Always this many.
        case fixed(Int)
        /// As many as the dependency serves without queueing, measured from the calls' latency
        /// (``AdaptiveConcurrencyLimit``).
        case adaptive(AdaptiveConcurrencyLimit)
    }

    /// Makes a bulkhead with a fixed limit; throws ``FuseboxError/Code/invalidPolicy`` for limits out of range.
    public convenience init(name: String, maxConcurrent: Int, maxQueued: Int = 0, queueTimeout: Duration? = nil) throws(FuseboxError) {
        try self.init(name: name, limit: .fixed(maxConcurrent), maxQueued: maxQueued, queueTimeout: queueTimeout)
    }

    /// Makes a bulkhead whose limit is `limit`; throws ``FuseboxError/Code/invalidPolicy`` for values out of range.
    public init(name: String, limit: Limit, maxQueued: Int = 0, queueTimeout: Duration? = nil) throws(FuseboxError) {
        let start: Int
        switch limit {
        case .fixed(let maxConcurrent):
            guard (1...1_000_000).contains(maxConcurrent) else {
                throw FuseboxError(code: .invalidPolicy, message: "bulkhead '\(name)': maxConcurrent is \(maxConcurrent); allowed: 1…1,000,000")
            }
            start = maxConcurrent
            controller = Locked(nil)
            isAdaptive = false
        case .adaptive(let settings):
            try settings.validate(name: name)
            let adaptive = AdaptiveConcurrency(settings, seed: name.utf8.reduce(0x2545_F491_4F6C_DD1D) { ($0 &* 31) &+ UInt64($1) })
            start = adaptive.effectiveLimit
            controller = Locked(adaptive)
            isAdaptive = true
        }
        limitWord = Atomic(start)
        guard (0...1_000_000).contains(maxQueued) else {
            throw FuseboxError(code: .invalidPolicy, message: "bulkhead '\(name)': maxQueued is \(maxQueued); allowed: 0…1,000,000")
        }
        if let queueTimeout, queueTimeout <= .zero {
            throw FuseboxError(code: .invalidPolicy, message: "bulkhead '\(name)': queueTimeout must be > 0, or nil to wait as long as it takes")
        }
        self.name = name
        self.maxQueued = maxQueued
        self.queueTimeout = queueTimeout
        runningGauge = Gauge(label: "fusebox_bulkhead_running_calls", dimensions: [("bulkhead", name)])
        peakGauge = Gauge(label: "fusebox_bulkhead_peak_calls", dimensions: [("bulkhead", name)])
        rejections = Counter(label: "fusebox_bulkhead_rejections_total", dimensions: [("bulkhead", name)])
    }

    /// The figures now.
    public var snapshot: Snapshot {
        let (queued, rejected) = state.withLock { ($0.waiters.count, $0.rejected) }
        return Snapshot(
            running: word.load(ordering: .acquiring) & Self.runningMask, peak: peakCount.load(ordering: .relaxed), queued: queued,
            admitted: admittedCount.load(ordering: .relaxed), rejected: rejected, limit: maxConcurrent,
            noLoadLatency: controller.withLock { $0?.noLoad.map { .nanoseconds($0) } })
    }

    /// Runs `operation` in a slot, waiting for one if the queue allows; throws ``FuseboxError/Code/bulkheadFull``
    /// without running it when none comes. With an adaptive limit, the call's latency is a sample for it (a
    /// cancelled call's is not).
    public func run<T>(_ operation: () async throws -> T) async throws -> T {
        try await acquire()
        guard isAdaptive else {
            defer { release() }
            return try await operation()
        }
        let started = nanosecondsSinceEpoch
        do {
            let value = try await operation()
            release()
            learn(started: started)
            return value
        } catch {
            release()
            if !(error is CancellationError) { learn(started: started) }
            throw error
        }
    }

    private var nanosecondsSinceEpoch: Int64 { (ContinuousClock.now - epoch).nanoseconds }

    /// Gives the adaptive limit one call's latency, and applies the limit it decides.
    private func learn(started: Int64) {
        let running = word.load(ordering: .relaxed) & Self.runningMask
        let grew = controller.withLock { adaptive -> Bool? in
            guard let limit = adaptive?.sample(started: started, ended: nanosecondsSinceEpoch, running: running + 1) else { return nil }
            let old = limitWord.load(ordering: .relaxed)
            limitWord.store(limit, ordering: .releasing)
            return limit > old
        }
        if grew == true { promote() }
        if grew != nil { record() }
    }

    /// Lets waiters run while the (grown) limit has room.
    private func promote() {
        var resumed: [Waiter] = []
        state.withLock { state in
            while !state.waiters.isEmpty {
                let current = word.load(ordering: .relaxed)
                guard current & Self.runningMask < limitWord.load(ordering: .relaxed) else { break }
                // One call fewer waiting, one more running.
                word.wrappingAdd(1 - Self.waitingUnit, ordering: .acquiringAndReleasing)
                admittedCount.wrappingAdd(1, ordering: .relaxed)
                resumed.append(state.waiters.removeFirst())
            }
        }
        for waiter in resumed { waiter.continuation.resume() }
    }

    /// Takes a slot if one is free now and nobody waits for one, without waiting; `true` when it did (give it back
    /// with ``release()``). Synchronous and lock-free: the pipeline tries it before ``acquire()``, so that a free
    /// slot costs one compare-and-swap and no suspension point.
    public func tryAcquire() -> Bool {
        let maxConcurrent = self.maxConcurrent
        var current = word.load(ordering: .relaxed)
        while current < maxConcurrent {
            let (exchanged, original) = word.compareExchange(
                expected: current, desired: current + 1, successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
            if exchanged {
                admitted(running: current + 1)
                return true
            }
            current = original
        }
        return false
    }

    /// Takes a slot (waiting if the queue allows); give it back with ``release()`` exactly once.
    public func acquire() async throws {
        if tryAcquire() { return }
        enum Decision { case admitted(Int), full, wait(UInt64) }
        let maxConcurrent = self.maxConcurrent
        let decision = state.withLock { state -> Decision in
            var current = word.load(ordering: .relaxed)
            while true {
                let desired: Int
                if current < maxConcurrent {
                    desired = current + 1
                } else if current >> 32 < maxQueued {
                    desired = current + Self.waitingUnit
                } else {
                    state.rejected += 1
                    return .full
                }
                let (exchanged, original) = word.compareExchange(
                    expected: current, desired: desired, successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
                if exchanged { break }
                current = original
            }
            if current < maxConcurrent { return .admitted(current + 1) }
            state.nextID += 1
            state.joining[state.nextID] = .some(nil)
            return .wait(state.nextID)
        }
        switch decision {
        case .admitted(let running):
            admitted(running: running)
        case .full:
            rejections.increment()
            throw full("all \(maxConcurrent) slots are busy and \(maxQueued == 0 ? "it queues no calls" : "its \(maxQueued) queue places are taken")")
        case .wait(let id):
            try await wait(id)
            record()
        }
    }

    /// Gives a slot back: to the longest waiter if there is one.
    public func release() {
        var current = word.load(ordering: .relaxed)
        while current < Self.waitingUnit {
            let (exchanged, original) = word.compareExchange(
                expected: current, desired: current - 1, successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
            if exchanged { return }
            current = original
        }
        let next = state.withLock { state -> Waiter? in
            // Only calls on their way into the queue wait (free the slot, and the first of them to arrive takes it),
            // or an adaptive limit has shrunk below the calls running (the slot goes).
            guard !state.waiters.isEmpty, word.load(ordering: .relaxed) & Self.runningMask <= maxConcurrent else {
                word.wrappingSubtract(1, ordering: .acquiringAndReleasing)
                return nil
            }
            // The slot passes to the longest waiter: one call fewer waiting, as many running.
            word.wrappingSubtract(Self.waitingUnit, ordering: .acquiringAndReleasing)
            admittedCount.wrappingAdd(1, ordering: .relaxed)
            return state.waiters.removeFirst()
        }
        next?.continuation.resume()
    }

    private func admitted(running: Int) {
        admittedCount.wrappingAdd(1, ordering: .relaxed)
        var peak = peakCount.load(ordering: .relaxed)
        while running > peak {
            let (exchanged, original) = peakCount.compareExchange(expected: peak, desired: running, ordering: .relaxed)
            if exchanged { break }
            peak = original
        }
        if running == maxConcurrent { record() }
    }

    private func wait(_ id: UInt64) async throws {
        let timer = queueTimeout.map { timeout in
            Task { [weak self] in
                try await Task.sleep(for: timeout)
                self?.abandon(id, because: .timedOut)
            }
        }
        defer { timer?.cancel() }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let abandoned = state.withLock { state -> Abandonment? in
                    if let reason = state.joining.removeValue(forKey: id) ?? nil {
                        word.wrappingSubtract(Self.waitingUnit, ordering: .acquiringAndReleasing)
                        return reason
                    }
                    var current = word.load(ordering: .relaxed)
                    while current & Self.runningMask < maxConcurrent {
                        // A slot came free between the decision and now (released while only joiners waited): take it.
                        let (exchanged, original) = word.compareExchange(
                            expected: current, desired: current - Self.waitingUnit + 1,
                            successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
                        if exchanged {
                            admitted(running: (current & Self.runningMask) + 1)
                            continuation.resume()
                            return nil
                        }
                        current = original
                    }
                    state.waiters.append(Waiter(id: id, continuation: continuation))
                    return nil
                }
                switch abandoned {
                case .cancelled: continuation.resume(throwing: CancellationError())
                case .timedOut: continuation.resume(throwing: full("no slot came free within \(FuseboxError.format(queueTimeout ?? .zero))"))
                case nil: break
                }
            }
        } onCancel: {
            abandon(id, because: .cancelled)
        }
    }

    private enum Abandonment { case cancelled, timedOut }

    private func abandon(_ id: UInt64, because reason: Abandonment) {
        let waiter = state.withLock { state -> Waiter? in
            guard let index = state.waiters.firstIndex(where: { $0.id == id }) else {
                // Not queued yet: the enqueue sees this and gives up. Already given a slot: nothing to do.
                if state.joining[id] != nil {
                    state.joining[id] = .some(reason)
                    if reason == .timedOut { state.rejected += 1 }
                }
                return nil
            }
            if reason == .timedOut { state.rejected += 1 }
            word.wrappingSubtract(Self.waitingUnit, ordering: .acquiringAndReleasing)
            return state.waiters.remove(at: index)
        }
        guard let waiter else { return }
        switch reason {
        case .cancelled:
            waiter.continuation.resume(throwing: CancellationError())
        case .timedOut:
            rejections.increment()
            waiter.continuation.resume(throwing: full("no slot came free within \(FuseboxError.format(queueTimeout ?? .zero))"))
        }
    }

    private func record() {
        runningGauge.record(word.load(ordering: .relaxed) & Self.runningMask)
        peakGauge.record(peakCount.load(ordering: .relaxed))
    }

    private func full(_ detail: String) -> FuseboxError {
        FuseboxError(code: .bulkheadFull, message: "bulkhead '\(name)' is full: \(detail)")
    }
}
