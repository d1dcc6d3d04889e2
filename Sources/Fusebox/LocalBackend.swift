import Logging
import Synchronization

/// The `local` adapter: breakers that live in this process.
///
/// Generic over the `Clock` so tests can drive time; production uses `ContinuousClock`.
public struct LocalAdapter<C: Clock>: BreakerAdapter where C.Duration == Duration {
    /// The clock every breaker of this adapter reads.
    public let clock: C

    /// Makes the adapter with a clock.
    public init(clock: C) { self.clock = clock }

    public var kind: AdapterKind { .local }

    public func makeBackend(name: String, policy: BreakerPolicy, logger: Logger) throws(FuseboxError) -> any BreakerBackend {
        LocalBackend(name: name, policy: policy, clock: clock, logger: logger)
    }
}

extension LocalAdapter where C == ContinuousClock {
    /// The adapter on the continuous clock.
    public init() { self.init(clock: ContinuousClock()) }
}

/// One breaker of the `local` adapter: a ``BreakerStateMachine`` behind a `Mutex`.
///
/// The lock is held only for the state machine's arithmetic (tens of nanoseconds); logging, metrics and events
/// happen after it is released.
public final class LocalBackend<C: Clock>: BreakerBackend where C.Duration == Duration {
    public let name: String
    public let policy: BreakerPolicy
    private let clock: C
    private let epoch: C.Instant
    private let machine: Mutex<BreakerStateMachine>
    private let instruments: BreakerInstruments

    /// Makes a breaker in its base state; `policy` must be validated.
    public init(name: String, policy: BreakerPolicy, clock: C, logger: Logger) {
        self.name = name
        self.policy = policy
        self.clock = clock
        self.epoch = clock.now
        let machine = BreakerStateMachine(name: name, policy: policy, now: .zero)
        self.instruments = BreakerInstruments(name: name, initialState: machine.state, logger: logger)
        self.machine = Mutex(machine)
    }

    private var now: Duration { epoch.duration(to: clock.now) }

    public func acquire() -> BreakerAdmission {
        let now = self.now
        let (admission, transition) = machine.withLock { $0.acquire(now: now) }
        if let transition { instruments.transitioned(transition) }
        if case .rejected(let error) = admission { instruments.rejected(in: error.state ?? .open) }
        return admission
    }

    public func record(_ outcome: CallOutcome, for token: PermitToken) {
        guard token.isRecorded else { return }
        let now = self.now
        let transition = machine.withLock { $0.record(outcome, token: token, now: now) }
        instruments.recorded(outcome, duration: now - token.startedAt, slowCallDuration: policy.slowCallDuration)
        if let transition { instruments.transitioned(transition) }
    }

    public func isolate(reason: String) async throws(FuseboxError) {
        let now = self.now
        instruments.transitioned(machine.withLock { $0.isolate(reason: reason, now: now) })
    }

    public func reset() async throws(FuseboxError) {
        let now = self.now
        instruments.transitioned(machine.withLock { $0.reset(now: now) })
    }

    public func forceHalfOpen() async throws(FuseboxError) {
        let now = self.now
        instruments.transitioned(machine.withLock { $0.forceHalfOpen(now: now) })
    }

    public func snapshot() async throws(FuseboxError) -> BreakerSnapshot {
        let now = self.now
        let (snapshot, transition) = machine.withLock { $0.snapshot(now: now) }
        if let transition { instruments.transitioned(transition) }
        return snapshot
    }

    public func timeline() async throws(FuseboxError) -> [BreakerTransition] {
        machine.withLock { $0.timeline }
    }

    public func events() -> AsyncStream<BreakerEvent> { instruments.stream() }
}
