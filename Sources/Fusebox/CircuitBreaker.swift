import Dispatch
import FuseboxLocking
import Synchronization

/// A handle on one named breaker: run calls through it, or take permits for code that cannot wrap a closure.
///
/// Handles are cheap values; every handle of a name shares one state (with the distributed adapter, across
/// every instance). The handle applies the ``BreakerPolicy/classification`` and ``BreakerPolicy/callTimeout``
/// of the policy it was asked for with.
public struct CircuitBreaker: Sendable {
    /// The breaker's name.
    public var name: String { backend.name }
    /// The state behind the handle.
    public var backend: any BreakerBackend { lanes.backend }
    /// How this handle classifies errors.
    public let classification: BreakerPolicy.Classification
    /// This handle's call timeout.
    public let callTimeout: Duration?
    let switchboard: FuseboxSwitch
    /// What permits hold on to (one object per CPU, so cores never share a reference count).
    let lanes: BackendLanes

    init(lanes: BackendLanes, policy: BreakerPolicy, switchboard: FuseboxSwitch) {
        self.lanes = lanes
        self.classification = policy.classification
        self.callTimeout = policy.callTimeout
        self.switchboard = switchboard
    }

    // MARK: - Permits

    /// Asks to run one call now, synchronously; throws a rejection (code ``FuseboxError/Code/circuitOpen``) when
    /// the breaker will not let it through.
    ///
    /// For code that cannot wrap a call in a closure: report the outcome on the permit (a permit dropped without one
    /// is released as ignored). Allocation-free, and it never blocks a task. When the decision needs the store (the
    /// distributed adapter when a break has ended and probe permits are handed out fleet-wide, or before its first
    /// reply), a call made inside a task is decided without it (``BreakerBackend/admitNow()``): a probe permit is
    /// not waited for (``FuseboxError/Code/wouldWait``), and a state not known yet is decided by the store-down
    /// policy, as past the admission budget. A call made on a thread of its own (no task) waits for the store's
    /// answer, at most the adapter's admission budget. In async code ``acquireAsync()`` and ``run(isFailure:_:)``
    /// wait without blocking a thread.
    public func acquire() throws(FuseboxError) -> BreakerPermit {
        guard switchboard.isEnabled else { return BreakerPermit(lane: lanes.current, token: .unrecorded, classification: classification) }
        guard let admission = lanes.backend.admitWithoutWaiting() else { return try acquireNeedingStore() }
        switch admission {
        case .admitted(let token): return permit(token)
        case .rejected(let error): throw rejection(error)
        }
    }

    /// ``acquire()`` when the backend needs its store: kept out of line, off the common path.
    @inline(never)
    private func acquireNeedingStore() throws(FuseboxError) -> BreakerPermit {
        switch waitOffTask() {
        case .admitted(let token): return permit(token)
        case .rejected(let error): throw rejection(error)
        }
    }

    /// Asks to run one call, suspending (never blocking a thread) while the store decides; throws a rejection
    /// (code ``FuseboxError/Code/circuitOpen``) when the breaker will not let it through.
    /// ``run(isFailure:_:)`` uses it when the breaker cannot decide at once.
    public func acquireAsync() async throws(FuseboxError) -> BreakerPermit {
        guard switchboard.isEnabled else { return BreakerPermit(lane: lanes.current, token: .unrecorded, classification: classification) }
        switch await lanes.backend.admit() {
        case .admitted(let token): return permit(token)
        case .rejected(let error): throw rejection(error)
        }
    }

    /// ``acquire()`` when the backend can decide now, without waiting (every decision of the local adapter; the
    /// distributed adapter's closed and open states); `nil` when only ``acquireAsync()`` can. Synchronous, so that
    /// ``run(isFailure:_:)`` and the pipeline's breaker stage make no async call on the common path.
    @usableFromInline
    func acquireWithoutWaiting() throws(FuseboxError) -> BreakerPermit? {
        guard switchboard.isEnabled else { return BreakerPermit(lane: lanes.current, token: .unrecorded, classification: classification) }
        switch lanes.backend.admitWithoutWaiting() {
        case .admitted(let token): return permit(token)
        case .rejected(let error): throw rejection(error)
        case nil: return nil
        }
    }

    /// What ``acquire()`` does when the backend needs its store: inside a task, the backend decides without it
    /// (``BreakerBackend/admitNow()``: blocking would stall the cooperative pool's thread, and every task queued on
    /// it); on a thread of its own, the store's answer, waited for while a task asks (bounded by the admission budget).
    private func waitOffTask() -> BreakerAdmission {
        let backend = lanes.backend
        if withUnsafeCurrentTask(body: { $0 != nil }) { return backend.admitNow() }
        let answer = AdmissionAnswer()
        Task { answer.give(await backend.admit()) }
        return answer.wait()
    }

    /// The permit of an admitted call; the installed ``BreakerCallObserver`` (if any) is told.
    @inline(__always)
    private func permit(_ token: PermitToken) -> BreakerPermit {
        if let observer = BreakerCallObservation.current { observer.admitted(breaker: name, adapter: adapterKind, token: token) }
        return BreakerPermit(lane: lanes.current, token: token, classification: classification)
    }

    /// A rejection, after the installed ``BreakerCallObserver`` (if any) is told.
    @inline(__always)
    private func rejection(_ error: FuseboxError) -> FuseboxError {
        if let observer = BreakerCallObservation.current { observer.rejected(breaker: name, adapter: adapterKind, error: error) }
        return error
    }

    /// Which adapter keeps this breaker (for observers; not on the hot path).
    var adapterKind: AdapterKind { lanes.backend is LocalBackend ? .local : .distributed }

    // MARK: - Running calls

    /// Runs `operation` if the breaker lets it through and records its outcome.
    ///
    /// Throws a rejection (``FuseboxError/Code/circuitOpen``) without running it when the breaker is open;
    /// rethrows the operation's own error; throws ``FuseboxError/Code/callTimedOut`` (and cancels the
    /// operation) when the policy's call timeout passes first. A value for which `isFailure` returns `true`
    /// (e.g. an HTTP 503) is returned to the caller and counted as a failure. A flagged result and a call timeout
    /// count as failures whatever the policy's error classification says (it classifies the operation's errors).
    public func run<T: Sendable>(
        isFailure: (@Sendable (T) -> Bool)? = nil, _ operation: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        // No suspension point for the permit when the backend can decide now (the closed and open states).
        let permit: BreakerPermit
        switch try acquireWithoutWaiting() {
        case .some(let now): permit = now
        case nil: permit = try await acquireAsync()
        }
        let value: T
        do {
            if let callTimeout {
                value = try await Self.run(operation, timeout: callTimeout, name: name)
            } else {
                value = try await operation()
            }
        } catch let error as FuseboxError where error.code == .callTimedOut {
            // The breaker's own verdicts: counted as failures whatever the error classification says (it cannot
            // name these types, and a classification written for the operation's errors must not ignore them).
            permit.countFailure(CallTimedOut.self)
            throw error
        } catch {
            permit.failure(error)
            throw error
        }
        if let isFailure, isFailure(value) {
            permit.countFailure(UnacceptableResult.self)
        } else {
            permit.success()
        }
        return value
    }

    /// Runs `operation` through the breaker; on a rejection or any error, returns `fallback(error)` instead.
    ///
    /// Throws only what `fallback` throws: with a fallback that cannot fail, no `try` is needed.
    public func run<T: Sendable, E: Error>(
        isFailure: (@Sendable (T) -> Bool)? = nil, _ operation: @escaping @Sendable () async throws -> T,
        fallback: (any Error) async throws(E) -> T
    ) async throws(E) -> T {
        do {
            return try await run(isFailure: isFailure, operation)
        } catch {
            return try await fallback(error)
        }
    }

    private static func run<T: Sendable>(
        _ operation: @escaping @Sendable () async throws -> T, timeout: Duration, name: String
    ) async throws -> T {
        try await withTimeout(timeout, operation) {
            FuseboxError(
                code: .callTimedOut, message: "call through circuit '\(name)' exceeded its timeout of \(FuseboxError.format(timeout)) and was cancelled",
                breakerName: name)
        }
    }

    // MARK: - Control and inspection

    /// Forces the breaker open until ``reset()``; rejections carry `reason`.
    public func isolate(reason: String) async throws(FuseboxError) { try await backend.isolate(reason: reason, for: nil) }
    /// Forces the breaker open for `duration` (more than zero, at most a year), fleet-wide with the distributed
    /// adapter: then it closes by itself, at the time the store's clock (Redis `TIME`) says, as ``reset()`` would.
    /// ``reset()`` ends it sooner. Rejections carry `reason` and the time left as `retryAfter`.
    public func isolate(reason: String, for duration: Duration) async throws(FuseboxError) {
        try await backend.isolate(reason: reason, for: duration)
    }
    /// Closes the breaker with an empty window.
    public func reset() async throws(FuseboxError) { try await backend.reset() }
    /// Moves the breaker to half-open with every probe permit free.
    public func forceHalfOpen() async throws(FuseboxError) { try await backend.forceHalfOpen() }
    /// Closes the breaker and forgets the relative threshold's baseline (``BreakerPolicy/relativeFailureRate``).
    public func resetWithBaseline() async throws(FuseboxError) { try await backend.resetWithBaseline() }
    /// Everything known about the breaker now.
    public func snapshot() async throws(FuseboxError) -> BreakerSnapshot { try await backend.snapshot() }
    /// The last transitions (up to 100), oldest first.
    public func timeline() async throws(FuseboxError) -> [BreakerTransition] { try await backend.timeline() }
    /// The breaker's events from now on.
    public func events() -> AsyncStream<BreakerEvent> { backend.events() }
}

/// The type of the error inside `error` (outside a generic context, `type(of:)` answers the dynamic type).
private func dynamicType(of error: any Error) -> any Error.Type { type(of: error) }

/// The failure recorded when a call exceeds its timeout.
struct CallTimedOut: Error {}
/// The failure recorded when a call's result is classified as a failure.
struct UnacceptableResult: Error {}

/// Permission to run one call; report its outcome exactly once.
///
/// Non-copyable, so an outcome cannot be reported twice; dropping it without an outcome releases it as
/// ignored, so a half-open permit is never leaked.
public struct BreakerPermit: ~Copyable, Sendable {
    /// Keeps the backend alive: the lane of the CPU the permit was taken on, not the backend itself (see
    /// ``BackendLane``).
    private let lane: BackendLane
    /// What the call was admitted under.
    public let token: PermitToken
    /// `nil` for the default classification (nothing to copy on the hot path).
    private let classification: BreakerPolicy.Classification?
    /// Set by the consuming methods, so `deinit` (which runs after them too) releases only a dropped permit.
    private var isSettled = false

    init(lane: BackendLane, token: PermitToken, classification: BreakerPolicy.Classification) {
        self.lane = lane
        self.token = token
        self.classification = classification.isDefault ? nil : classification
    }

    /// The call succeeded.
    public consuming func success() {
        lane.record(.success, for: token)
        isSettled = true
    }

    /// The call failed with `error`; the classification decides whether it counts as a failure or is ignored.
    ///
    /// Generic, so that with the default classification the error is never boxed: reporting a failure
    /// allocates nothing.
    public consuming func failure<E: Error>(_ error: E) {
        // In a generic context `type(of:)` answers the static type, and a caught error's is `any Error`: open the
        // existential for the error's own type (else a caught `CancellationError` would count as a failure).
        let errorType: any Error.Type = E.self == (any Error).self ? dynamicType(of: error as any Error) : E.self
        let verdict: BreakerPolicy.Classification.Verdict =
            classification?.classifyError(error) ?? (errorType == CancellationError.self ? .ignored : .failure)
        switch verdict {
        case .failure: lane.record(.failure(errorType), for: token)
        case .ignored: lane.record(.ignored, for: token)
        }
        isSettled = true
    }

    /// A failure of type `type` whatever the classification says: the call timeout and a result that
    /// `run(isFailure:)` flagged.
    consuming func countFailure(_ type: any Error.Type) {
        lane.record(.failure(type), for: token)
        isSettled = true
    }

    /// The outcome counts neither way (a half-open permit is given back).
    public consuming func ignore() {
        lane.record(.ignored, for: token)
        isSettled = true
    }

    deinit {
        if !isSettled { lane.record(.ignored, for: token) }
    }
}

/// The global enabled switch of a registry: when off, every breaker admits every call and records nothing.
final class FuseboxSwitch: Sendable {
    private let enabled = Atomic<Bool>(true)
    var isEnabled: Bool {
        get { enabled.load(ordering: .relaxed) }
        set { enabled.store(newValue, ordering: .relaxed) }
    }
}

/// Runs `operation` in a child task and cancels it after `timeout`, throwing `timedOut()` then: the call timeout of
/// a handle and the timeout stage of a pipeline.
@usableFromInline
func withTimeout<T: Sendable>(
    _ timeout: Duration, _ operation: @escaping @Sendable () async throws -> T, timedOut: () -> FuseboxError
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw timedOut() }
        return value
    }
}

/// One admission handed from a task to a thread (not a task) that waits for it.
private final class AdmissionAnswer: Sendable {
    private let ready = DispatchSemaphore(value: 0)
    private let admission = Locked<BreakerAdmission?>(nil)

    func give(_ value: BreakerAdmission) {
        admission.withLock { $0 = value }
        ready.signal()
    }

    func wait() -> BreakerAdmission {
        ready.wait()
        return admission.withLock { $0! }
    }
}
