/// The calls, failures and slow calls of the recent past, by time buckets or by count.
///
/// Recording is O(1) amortised for the count window and O(buckets) at most when time moves past a bucket;
/// it allocates nothing (the storage is sized once). Times are nanoseconds from the owner's epoch. `lua/` keeps
/// the same rules for Redis, and the conformance suite holds the two to the same results.
struct SlidingWindow: Sendable {
    /// Nanoseconds per bucket for a time window; `nil` for a count window.
    private let bucketWidth: Int64?
    // Time window: slot i holds bucket number slotBucket[i] (bucket number = time / width), or .min when empty.
    private var slotBucket: [Int64]
    private var slotCalls: [Int32]
    private var slotFailures: [Int32]
    private var slotSlow: [Int32]
    private var newestBucket = Int64.min
    // Count window: a ring of the last N calls' flags (bit 0 failure, bit 1 slow).
    private var flags: [UInt8]
    private var next = 0
    private var filled = 0

    private(set) var calls = 0
    private(set) var failures = 0
    private(set) var slow = 0

    init(_ window: BreakerPolicy.Window) {
        switch window {
        case .time(let sampling, let buckets):
            bucketWidth = max(1, (sampling / buckets).nanoseconds)
            slotBucket = Array(repeating: .min, count: buckets)
            slotCalls = Array(repeating: 0, count: buckets)
            slotFailures = Array(repeating: 0, count: buckets)
            slotSlow = Array(repeating: 0, count: buckets)
            flags = []
        case .count(let size):
            bucketWidth = nil
            slotBucket = []
            slotCalls = []
            slotFailures = []
            slotSlow = []
            flags = Array(repeating: 0, count: size)
        }
    }

    /// Drops buckets that have aged out by `now`; a no-op for the count window.
    mutating func expire(now: Int64) {
        guard let width = bucketWidth else { return }
        let current = now / width
        guard current > newestBucket else { return }
        newestBucket = current
        let oldestKept = current - Int64(slotBucket.count) + 1
        for slot in slotBucket.indices where slotBucket[slot] != .min && slotBucket[slot] < oldestKept {
            empty(slot)
        }
    }

    /// Adds one call at `now`.
    mutating func record(failure: Bool, slow isSlow: Bool, now: Int64) {
        if let width = bucketWidth {
            expire(now: now)
            let bucket = max(now / width, newestBucket)
            let slot = Int(bucket % Int64(slotBucket.count))
            if slotBucket[slot] != bucket {
                empty(slot)
                slotBucket[slot] = bucket
            }
            slotCalls[slot] += 1
            if failure { slotFailures[slot] += 1 }
            if isSlow { slotSlow[slot] += 1 }
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

    /// Empties the window.
    mutating func clear() {
        for slot in slotBucket.indices { empty(slot) }
        for index in flags.indices { flags[index] = 0 }
        next = 0
        filled = 0
        calls = 0
        failures = 0
        slow = 0
    }

    private mutating func empty(_ slot: Int) {
        calls -= Int(slotCalls[slot])
        failures -= Int(slotFailures[slot])
        slow -= Int(slotSlow[slot])
        slotBucket[slot] = .min
        slotCalls[slot] = 0
        slotFailures[slot] = 0
        slotSlow[slot] = 0
    }
}
