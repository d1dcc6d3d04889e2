import FuseboxLocking
import Synchronization

/// A clock that moves only when told to, so tests advance time instead of sleeping.
public final class ManualClock: Clock, Sendable {
    /// A point on a ``ManualClock``.
    public struct Instant: InstantProtocol, Sendable {
        /// Time since the clock was made.
        public var offset: Duration
        /// The instant `duration` later.
        public func advanced(by duration: Duration) -> Instant { Instant(offset: offset + duration) }
        /// The time from this instant to `other`.
        public func duration(to other: Instant) -> Duration { other.offset - offset }
        public static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.offset < rhs.offset }
    }

    private let current = Locked(Instant(offset: .zero))
    private let advancesOnSleep: Bool
    private let slept = Locked<[Duration]>([])

    /// A clock at offset zero. With `advancesOnSleep`, a sleep moves the clock to its deadline at once (and is
    /// recorded in ``sleeps``): code that waits runs through its waits without real time passing.
    public init(advancesOnSleep: Bool = false) {
        self.advancesOnSleep = advancesOnSleep
    }

    /// Every sleep asked of a clock that advances on sleep, in order.
    public var sleeps: [Duration] { slept.withLock { $0 } }

    /// Where the clock stands.
    public var now: Instant { current.withLock { $0 } }
    /// One nanosecond.
    public var minimumResolution: Duration { .nanoseconds(1) }

    /// Moves the clock forward.
    public func advance(by duration: Duration) {
        current.withLock { $0.offset += duration }
    }

    /// Waits (polling every millisecond of real time) until the clock reaches `deadline`; a clock that advances on
    /// sleep moves there at once instead.
    public func sleep(until deadline: Instant, tolerance: Duration?) async throws {
        if advancesOnSleep {
            try Task.checkCancellation()
            let length = current.withLock { current -> Duration in
                let length = current.duration(to: deadline)
                if current < deadline { current = deadline }
                return length
            }
            slept.withLock { $0.append(length) }
            return
        }
        while now < deadline { try await Task.sleep(for: .milliseconds(1)) }
    }
}
