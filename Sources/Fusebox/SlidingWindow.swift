#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The calls, failures and slow calls of the recent past, by time buckets or by count.
///
/// Recording allocates nothing (the storage is sized once) and, while time stays within the current bucket,
/// does no division: the bucket's time range is cached. Times are nanoseconds from the owner's epoch. `lua/`
/// keeps the same rules for Redis, and the conformance suite holds the two to the same results.
struct SlidingWindow: Sendable {
    private struct Bucket: Sendable {
        /// The bucket's number (time / width), or `.min` when empty.
        var number = Int64.min
        var calls: Int32 = 0
        var failures: Int32 = 0
        var slow: Int32 = 0
    }

    /// Nanoseconds per bucket for a time window; `nil` for a count window.
    private let bucketWidth: Int64?
    private var buckets: [Bucket]
    /// The newest bucket number seen, its slot, and its time range [start, end).
    private var newestBucket = Int64.min
    private var newestSlot = 0
    private var newestStart = Int64.max
    private var newestEnd = Int64.min
    // Count window: a ring of the last N calls' flags (bit 0 failure, bit 1 slow).
    private var flags: [UInt8]
    private var next = 0
    private var filled = 0

    private(set) var calls = 0
    private(set) var failures = 0
    private(set) var slow = 0
    /// Calls shed by adaptive throttling, as a count that decays with the window's sampling duration as its time
    /// constant (`lua/breaker.lua` keeps the same count in the window hash): `value × e^(−Δt/τ)` plus what is added.
    private var throttledValue = 0.0
    private var throttledAt: Int64 = 0
    private let throttleTimeConstant: Double

    init(_ window: BreakerPolicy.Window) {
        switch window {
        case .time(let sampling, let count):
            throttleTimeConstant = Double(max(1, sampling.nanoseconds))
            bucketWidth = max(1, (sampling / count).nanoseconds)
            buckets = Array(repeating: Bucket(), count: count)
            flags = []
        case .count(let size):
            throttleTimeConstant = 1
            bucketWidth = nil
            buckets = []
            flags = Array(repeating: 0, count: size)
        }
    }

    /// Moves the window to `now`: buckets that aged out are emptied. A no-op for the count window, and cheap
    /// while `now` stays within the newest bucket.
    mutating func expire(now: Int64) {
        guard let width = bucketWidth else { return }
        if now >= newestStart && now < newestEnd { return }
        let current = now / width
        guard current > newestBucket else { return }
        newestBucket = current
        newestSlot = Int(current % Int64(buckets.count))
        newestStart = current * width
        newestEnd = newestStart + width
        let oldestKept = current - Int64(buckets.count) + 1
        for slot in buckets.indices where buckets[slot].number != .min && buckets[slot].number < oldestKept {
            empty(slot)
        }
    }

    /// Adds one call at `now` (a time earlier than the newest bucket counts in the newest bucket).
    mutating func record(failure: Bool, slow isSlow: Bool, now: Int64) {
        if bucketWidth != nil {
            expire(now: now)
            let slot = newestSlot
            if buckets[slot].number != newestBucket {
                empty(slot)
                buckets[slot].number = newestBucket
            }
            buckets[slot].calls += 1
            if failure { buckets[slot].failures += 1 }
            if isSlow { buckets[slot].slow += 1 }
        } else {
            if filled == flags.count {
                let old = flags[next]
                calls -= 1
                if old & 1 != 0 { failures -= 1 }
                if old & 2 != 0 { slow -= 1 }
            } else {
                filled += 1
            }
            flags[next] = (failure ? 1 : 0) | (isSlow ? 2 : 0)
            next = next + 1 == flags.count ? 0 : next + 1
        }
        calls += 1
        if failure { failures += 1 }
        if isSlow { slow += 1 }
    }

    /// Adds `count` calls of one kind at `now`. A count window keeps only its last `size` calls, so at most that
    /// many are recorded one by one.
    mutating func record(count: Int, failure: Bool, slow isSlow: Bool, now: Int64) {
        guard count > 0 else { return }
        if bucketWidth != nil {
            // One bucket takes them all: record one to place the bucket, then add the rest to it.
            record(failure: failure, slow: isSlow, now: now)
            let rest = Int32(clamping: count - 1)
            buckets[newestSlot].calls += rest
            if failure { buckets[newestSlot].failures += rest }
            if isSlow { buckets[newestSlot].slow += rest }
            calls += Int(rest)
            if failure { failures += Int(rest) }
            if isSlow { slow += Int(rest) }
            return
        }
        for _ in 0..<min(count, flags.count) { record(failure: failure, slow: isSlow, now: now) }
    }

    /// The throttled count at `now`.
    func throttled(at now: Int64) -> Double {
        guard throttledValue > 0 else { return 0 }
        return throttledValue * exp(-Double(max(0, now - throttledAt)) / throttleTimeConstant)
    }

    /// Counts one call shed by adaptive throttling at `now`.
    mutating func recordThrottled(now: Int64) {
        throttledValue = throttled(at: now) + 1
        throttledAt = max(throttledAt, now)
    }

    /// Empties the window.
    mutating func clear() {
        throttledValue = 0
        throttledAt = 0
        for slot in buckets.indices { empty(slot) }
        for index in flags.indices { flags[index] = 0 }
        next = 0
        filled = 0
        calls = 0
        failures = 0
        slow = 0
    }

    private mutating func empty(_ slot: Int) {
        calls -= Int(buckets[slot].calls)
        failures -= Int(buckets[slot].failures)
        slow -= Int(buckets[slot].slow)
        buckets[slot] = Bucket()
    }
}
