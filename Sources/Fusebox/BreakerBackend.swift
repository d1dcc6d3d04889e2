import Logging
import ServiceLifecycle

/// The state behind one named breaker. Both adapters, `local` and `distributed`, implement it; the
/// ``CircuitBreaker`` handle and the ``BreakerRegistry`` work with either unchanged.
///
/// ## Requirements for implementers
/// - ``admitWithoutWaiting()`` and ``record(_:for:)`` are the hot path: synchronous, they never block or do I/O,
///   must not allocate in the closed state, and take a lock for nanoseconds at most. An implementation backed by a
///   remote store serves them from a local cache and writes behind; ``admit()`` is the one place it may wait for
///   the store (one bounded round trip), suspended, never blocking a thread.
/// - The rules are those of `BreakerStateMachine`: same trip rules with `≥` thresholds, same window, same
///   half-open permits, same versioning of tokens, same manual transitions. The conformance suite
///   (`Tests/FuseboxTests/Conformance`) checks an implementation against them scenario by scenario.
/// - Every admitted call's token must be accepted by ``record(_:for:)`` exactly once; a token whose version is
///   stale counts in the totals only. A half-open permit is given back by an ignored outcome.
/// - Every transition is logged at info level through the `Logger` the adapter was given, as
///   `CircuitBreaker 'NAME': FROM → TO (reason)` with metadata `breaker.name` and `breaker.state`, published to
///   ``events()``, and reflected in the metrics named in `Docs/semantics.md`.
/// - Manual transitions (``isolate(reason:)``, ``reset()``, ``forceHalfOpen()``) apply from every state.
/// - Errors are ``FuseboxError``s; nothing traps on bad input or a failing store.
public protocol BreakerBackend: AnyObject, Sendable {
    /// The breaker's name.
    var name: String { get }
    /// The validated policy it runs.
    var policy: BreakerPolicy { get }

    /// Decides whether a call may run now, if that needs no word from the store; `nil` when it does (the
    /// distributed adapter when a break has ended and probe permits are handed out fleet-wide, or before its first
    /// reply): then ``admit()`` decides. Hot path: synchronous, never blocks. The local adapter always decides.
    func admitWithoutWaiting() -> BreakerAdmission?
    /// Decides whether a call may run, asking the store when it must, suspended meanwhile (bounded by the
    /// adapter's admission budget). ``CircuitBreaker/acquireAsync()`` and ``CircuitBreaker/run(isFailure:_:)`` use it
    /// when ``admitWithoutWaiting()`` answers `nil`.
    func admit() async -> BreakerAdmission
    /// Decides now, whatever the store would have said: what ``admitWithoutWaiting()`` cannot decide is decided as
    /// if the store had not answered in time. ``CircuitBreaker/acquire()`` uses it inside a task, which it never
    /// blocks. The default rejects such a call with ``FuseboxError/Code/wouldWait``.
    func admitNow() -> BreakerAdmission
    /// Records the outcome of a call admitted with `token`. Hot path: synchronous, no I/O.
    func record(_ outcome: CallOutcome, for token: PermitToken)

    /// Runs `policy`'s state rules from now on (a reloaded configuration, an operator's override), keeping the
    /// state: see `BreakerStateMachine/replacePolicy(_:now:)`. `policy` is validated; a backend that cannot
    /// honour it throws ``FuseboxError/Code/invalidPolicy`` and keeps the rules it has. Not the hot path.
    func updatePolicy(_ policy: BreakerPolicy) throws(FuseboxError)
    /// Whether an operator's fleet-wide override is in force rather than the policy this process gave.
    var isOverridden: Bool { get }

    /// Forces the breaker open until reset, or for `duration` when given (then it closes by itself, on the
    /// store's clock, as a reset would); rejections carry `reason`.
    func isolate(reason: String, for duration: Duration?) async throws(FuseboxError)
    /// Closes the breaker with an empty window.
    func reset() async throws(FuseboxError)
    /// Moves the breaker to half-open with every probe permit free.
    func forceHalfOpen() async throws(FuseboxError)
    /// Closes the breaker as ``reset()`` does and forgets the relative threshold's baseline
    /// (``BreakerPolicy/relativeFailureRate``), which then learns again from the next call.
    func resetWithBaseline() async throws(FuseboxError)
    /// Everything known about the breaker now.
    func snapshot() async throws(FuseboxError) -> BreakerSnapshot
    /// The last transitions (up to 100), oldest first.
    func timeline() async throws(FuseboxError) -> [BreakerTransition]
    /// A new stream of this breaker's events from now on; it ends when the consumer stops iterating.
    func events() -> AsyncStream<BreakerEvent>
}

extension BreakerBackend {
    /// Forces the breaker open until reset; rejections carry `reason`.
    public func isolate(reason: String) async throws(FuseboxError) { try await isolate(reason: reason, for: nil) }

    public func admitNow() -> BreakerAdmission { admitWithoutWaiting() ?? .rejected(.wouldWait(name: name)) }
    /// `false`: only the distributed adapter knows operators' overrides.
    public var isOverridden: Bool { false }
    /// ``reset()``: a backend without a baseline has none to forget.
    public func resetWithBaseline() async throws(FuseboxError) { try await reset() }
}

extension BreakerAdapter {
    /// Waits until the task is cancelled or the service group shuts down: there is no background work.
    public func run() async throws {
        let (never, _) = AsyncStream.makeStream(of: Never.self)
        for await _ in never.cancelOnGracefulShutdown() {}
    }
}

/// Makes backends: the one thing that differs between the `local` and `distributed` adapters.
///
/// An adapter is a swift-service-lifecycle `Service`: its background work (the distributed adapter's flusher,
/// subscriber and refresher) runs in ``run()``, started by the application, until cancellation or graceful
/// shutdown. The `local` adapter has none, and its ``run()`` just waits.
public protocol BreakerAdapter: Service {
    /// `local` or `distributed`.
    var kind: AdapterKind { get }
    /// Makes the backend of the breaker `name`; called once per name by the registry.
    func makeBackend(name: String, policy: BreakerPolicy, logger: Logger) throws(FuseboxError) -> any BreakerBackend
}

/// Which adapter a registry uses, as written in configuration.
public enum AdapterKind: String, Sendable, Hashable, CaseIterable, Codable {
    /// Breakers live in this process.
    case local
    /// Breakers live in Redis, shared by every instance.
    case distributed
}
