import CFusebox
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Per-CPU slots for state that every core would otherwise write on every call (the lanes below, the
/// distributed adapter's success stripes).
package enum CPUSlots {
    /// Slots per structure: a power of two covering the CPUs, at most 16 (more CPUs share slots).
    package static let count: Int = {
        let cpus = max(1, min(16, Int(sysconf(Int32(_SC_NPROCESSORS_CONF)))))
        var count = 1
        while count < cpus { count *= 2 }
        return count
    }()

    /// The slot of the CPU the calling thread runs on, given `mask` (``count`` − 1, which the caller keeps: reading
    /// the lazily made ``count`` would cost a once-check on every call). A thread may move to another CPU right
    /// after: slots spread the writes, they never own data exclusively.
    @inline(__always)
    package static func current(mask: Int) -> Int { Int(fusebox_current_cpu()) & mask }
}

/// What a ``BreakerPermit`` holds on to: one of a breaker's per-CPU lanes, each a small object that keeps the
/// backend alive.
///
/// A permit must keep its backend alive until it reports, and retaining one shared object from every core writes
/// one reference count on every call: with two cores on one breaker, that single cache line cost more than the
/// rest of the hot path. A permit retains the lane of the CPU it was taken on instead, so permits taken on
/// different cores write different lines, and the lane calls the backend without retaining it. Lanes hold the
/// backend; the backend does not know them (no cycle). Made through ``make(backend:)``, as a ``TypedLane``.
class BackendLane: @unchecked Sendable {  // Immutable; subclasses add only immutable state.
    /// Only ``TypedLane`` makes lanes (through ``make(backend:)``), and it overrides ``record(_:for:)``.
    fileprivate init() {}

    /// Records an outcome on the backend without writing its reference count.
    func record(_ outcome: CallOutcome, for token: PermitToken) {}

    /// A lane of `backend`, typed so that it can call the backend through an unretained reference.
    static func make(backend: some BreakerBackend) -> BackendLane { TypedLane(backend: backend) }
}

/// A lane of a backend of a known type: `Unmanaged` needs a class type, which an existential is not.
final class TypedLane<Backend: BreakerBackend>: BackendLane, @unchecked Sendable {  // Immutable.
    /// Keeps the backend alive as long as the lane.
    private let backend: Backend
    /// The same reference, for calls that must not write the backend's reference count.
    private let unretained: Unmanaged<Backend>
    // Keeps two lanes' reference counts (each at the start of its object) on different cache lines: with the
    // 16-byte object header and the two references, a lane takes 160 bytes.
    private let padding: (Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64) =
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

    init(backend: Backend) {
        self.backend = backend
        self.unretained = .passUnretained(backend)
    }

    override func record(_ outcome: CallOutcome, for token: PermitToken) {
        // The lane, which the caller holds, keeps the backend alive for the call.
        unretained._withUnsafeGuaranteedRef { $0.record(outcome, for: token) }
    }
}

/// A breaker's lanes, one per ``CPUSlots`` slot. Made
/// once per breaker by the registry; every handle of the breaker shares them.
final class BackendLanes: Sendable {
    let backend: any BreakerBackend
    /// A plain allocation, not an array: reading an array property would retain its buffer, one shared reference
    /// count written on every call. Written only in `init` and `deinit`.
    nonisolated(unsafe) private let lanes: UnsafeMutablePointer<BackendLane>
    private let mask = CPUSlots.count - 1

    init(backend: any BreakerBackend) {
        self.backend = backend
        lanes = .allocate(capacity: CPUSlots.count)
        for index in 0..<CPUSlots.count { (lanes + index).initialize(to: BackendLane.make(backend: backend)) }
    }

    deinit {
        lanes.deinitialize(count: mask + 1)
        lanes.deallocate()
    }

    /// The lane of the CPU the calling thread runs on.
    @inline(__always)
    var current: BackendLane { lanes[CPUSlots.current(mask: mask)] }
}
