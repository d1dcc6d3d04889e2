import FuseboxLocking
import Logging
import Synchronization

/// The `local` adapter: breakers that live in this process.
///
/// `LocalAdapter()` picks each breaker's clock from its policy (``NanosecondClock/automatic(for:)``): the cheap
/// ``CoarseMonotonicClock`` when every duration in the policy is far above its resolution (the default policy's
/// are), else the precise `ContinuousClock`. `LocalAdapter(clock:)` uses the clock given, e.g. a test's manual clock.
public struct LocalAdapter<C: Clock>: BreakerAdapter where C.Duration == Duration {
    /// The clock every breaker of this adapter reads, unless it chooses per policy.
    public let clock: C
    private let choosesClockPerPolicy: Bool

    /// Makes the adapter with a clock.
    public init(clock: C) {
        self.clock = clock
        self.choosesClockPerPolicy = false
    }

    public var kind: AdapterKind { .local }

    public func makeBackend(name: String, policy: BreakerPolicy, logger: Logger) throws(FuseboxError) -> any BreakerBackend {
        let reader = choosesClockPerPolicy ? NanosecondClock.automatic(for: policy) : NanosecondClock(clock)
        return LocalBackend(name: name, policy: policy, clock: reader, logger: logger)
    }
}

extension LocalAdapter where C == ContinuousClock {
    /// The adapter that picks each breaker's clock from its policy (see the type's documentation).
    public init() {
        self.clock = ContinuousClock()
        self.choosesClockPerPolicy = true
    }
}

/// One breaker of the `local` adapter: a `BreakerStateMachine` behind a `Mutex`.
///
/// The lock is held only for the state machine's arithmetic (tens of nanoseconds); logging, metrics and events
/// happen after it is released. Not generic: the clock is reduced to a ``NanosecondClock`` when the backend is
/// made, so the hot path runs specialised code.
public final class LocalBackend: BreakerBackend {
    public let name: String
    public var policy: BreakerPolicy { machine.withLock { $0.policy } }
    private let clock: NanosecondClock
    private let machine: Locked<BreakerStateMachine>
    private let instruments: BreakerInstruments

    /// Makes a breaker in its base state; `policy` must be validated.
    public convenience init<C: Clock>(name: String, policy: BreakerPolicy, clock: C, logger: Logger) where C.Duration == Duration {
        self.init(name: name, policy: policy, clock: NanosecondClock(clock), logger: logger)
    }

    /// Makes a breaker reading `clock`; `policy` must be validated.
    public init(name: String, policy: BreakerPolicy, clock: NanosecondClock, logger: Logger) {
        self.name = name
        self.clock = clock
        let machine = BreakerStateMachine(name: name, policy: policy, now: 0)
        self.instruments = BreakerInstruments(name: name, initialState: machine.state, slowCallDuration: policy.slowCallDuration, logger: logger)
        self.machine = Locked(machine)
    }

    private var now: Int64 { clock.now }

    /// The local adapter always decides at once.
    public func admitWithoutWaiting() -> BreakerAdmission? { decide() }

    /// ``admitWithoutWaiting()``: the local adapter never waits.
    public func admit() async -> BreakerAdmission { decide() }

    /// The state machine's answer, the common cases under one short lock (`BreakerStateMachine/quickAdmission(now:)`).
    private func decide() -> BreakerAdmission {
        let now = self.now
        switch machine.withLock({ $0.quickAdmission(now: now) }) {
        case .admitted(let token):
            return .admitted(token)
        case .rejectedOpen(let wait):
            instruments.rejected(in: .open)
            return .rejected(.rejection(name: name, state: .open, retryAfterNanoseconds: wait, isolationReason: nil))
        case .rejectedIsolated(let reason, let endsIn):
            instruments.rejected(in: .isolated)
            return .rejected(.rejection(name: name, state: .isolated, retryAfterNanoseconds: endsIn, isolationReason: reason))
        case .undecided:
            break
        }
        let (admission, transition, state) = machine.withLock { machine in
            let (admission, transition) = machine.acquire(now: now)
            return (admission, transition, machine.state)
        }
        if let transition { instruments.transitioned(transition) }
        switch admission {
        case .rejected(let error): instruments.rejected(in: error.state ?? .open)
        case .admitted(let token) where token.ranInShadow: instruments.wouldReject(in: state)
        case .admitted: break
        }
        return admission
    }

    public func record(_ outcome: CallOutcome, for token: PermitToken) {
        guard token.isRecorded else { return }
        let now = self.now
        let transition = machine.withLock { $0.record(outcome, token: token, now: now) }
        instruments.recorded(outcome, nanoseconds: now - token.startedAt)
        if let transition { instruments.transitioned(transition) }
    }

    public func updatePolicy(_ policy: BreakerPolicy) throws(FuseboxError) {
        let policy = try policy.validated()
        let now = self.now
        if let transition = machine.withLock({ $0.replacePolicy(policy, now: now) }) { instruments.transitioned(transition) }
    }

    public func isolate(reason: String, for duration: Duration?) async throws(FuseboxError) {
        try Self.checkIsolation(duration)
        let now = self.now
        instruments.transitioned(machine.withLock { $0.isolate(reason: reason, until: duration.map { now + $0.nanoseconds }, now: now) })
    }

    /// Whether `duration` may be the time of an operator's action that ends by itself (an isolation, an override):
    /// more than zero and at most a year. The one rule the library, `fusebox` and the HTTP routes check.
    package static func isValidActionTime(_ duration: Duration) -> Bool { duration > .zero && duration <= .seconds(366 * 86_400) }

    /// Refuses an isolation time that is not positive or longer than a year.
    package static func checkIsolation(_ duration: Duration?) throws(FuseboxError) {
        guard let duration else { return }
        guard isValidActionTime(duration) else {
            throw FuseboxError(code: .invalidPolicy, message: "an isolation's time must be > 0 and at most a year; got \(FuseboxError.format(duration))")
        }
    }

    public func reset() async throws(FuseboxError) {
        let now = self.now
        instruments.transitioned(machine.withLock { $0.reset(now: now) })
    }

    public func resetWithBaseline() async throws(FuseboxError) {
        let now = self.now
        instruments.transitioned(machine.withLock { machine in
            machine.resetBaseline()
            return machine.reset(now: now)
        })
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
