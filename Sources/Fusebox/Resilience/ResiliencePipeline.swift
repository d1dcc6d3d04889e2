/// Timeout, retry, breaker, bulkhead and fallback composed at one call site: `try await pipeline.run { … }`.
///
/// Stages run in the order they are added, the first outermost, as in Polly's resilience pipelines:
/// ```swift
/// let quotes = ResiliencePipeline<Quote>()
///     .fallback { _ in Quote.cached }                        // 1. whatever happens inside, answer
///     .retry(RetryPolicy(maxAttempts: 3))                    // 2. try again…
///     .breaker(try registry.breaker("pricing"))              // 3. …through the shared breaker (never a rejection)
///     .bulkhead(try Bulkhead(name: "pricing", maxConcurrent: 20))
///     .timeout(.seconds(2))                                  // 5. each attempt gets 2 s
/// let quote = await quotes.run { try await pricing.quote(for: item) }
/// ```
/// A pipeline is an immutable value: build it once and share it. Without a timeout stage a call allocates
/// nothing beyond what its stages do; a timeout runs the inner stages in a child task.
///
/// Two ways to run, one behaviour. A pipeline with no timeout stage, at most one retry stage and at most one
/// breaker (without a call timeout of its own) runs in one frame: it enters every stage in order, runs the call,
/// and leaves the stages in reverse, each seeing the outcome the stage inside it left; only a retry's further
/// attempts run the inner stages nested. Any other pipeline runs each stage as a call around the next.
public struct ResiliencePipeline<Output: Sendable>: Sendable {
    @usableFromInline
    enum Stage: Sendable {
        case timeout(Duration)
        case retry(RetryStage)
        case breaker(CircuitBreaker)
        case bulkhead(Bulkhead)
        case fallback(@Sendable (any Error) async throws -> Output)
    }

    /// Each stage's kind alone, so that the one-frame path reads a stage's payload only where it uses it.
    @usableFromInline
    enum Kind: UInt8, Sendable { case timeout, retry, breaker, bulkhead, fallback }

    @usableFromInline let stages: [Stage]
    @usableFromInline let kinds: [Kind]
    /// Whether ``run(_:)`` takes the one-frame path (see above).
    @usableFromInline let runsFlat: Bool
    /// Whether the retry stage counts calls (a budget or a deadline): only then does entering it do anything.
    @usableFromInline let retryCountsCalls: Bool

    /// An empty pipeline: `run` calls the operation as it is.
    public init() { self.init([]) }

    private init(_ stages: [Stage]) {
        self.stages = stages
        var breakers = 0
        var retries = 0
        var nests = false
        var counts = false
        kinds = stages.map { stage in
            switch stage {
            case .timeout: nests = true; return .timeout
            case .breaker(let breaker): breakers += 1; nests = nests || breaker.callTimeout != nil; return .breaker
            case .retry(let retry): retries += 1; counts = counts || retry.countsCalls; return .retry
            // An adaptive bulkhead learns from each call's latency, which the nested path times in its frame.
            case .bulkhead(let bulkhead): nests = nests || bulkhead.isAdaptive; return .bulkhead
            case .fallback: return .fallback
            }
        }
        runsFlat = !nests && breakers <= 1 && retries <= 1
        retryCountsCalls = counts
    }

    private func adding(_ stage: Stage) -> Self { Self(stages + [stage]) }

    /// Cancels the inner stages after `duration` and throws ``FuseboxError/Code/callTimedOut``.
    public func timeout(_ duration: Duration) -> Self { adding(.timeout(duration)) }

    /// Runs the inner stages again on failure as `policy` says (validated here: a bad policy traps in debug
    /// builds only; call ``RetryPolicy/validated()`` to check one from input).
    public func retry(_ policy: RetryPolicy) -> Self { retry(policy, clock: ContinuousClock()) }

    /// Like ``retry(_:)``, sleeping on `clock` (a test's manual clock).
    public func retry<C: Clock>(_ policy: RetryPolicy, clock: C) -> Self where C.Duration == Duration {
        assert((try? policy.validated()) != nil, "invalid retry policy")
        return adding(.retry(RetryStage(policy: policy, clock: clock)))
    }

    /// Runs the inner stages through `breaker`; a rejection throws without running them.
    public func breaker(_ breaker: CircuitBreaker) -> Self { adding(.breaker(breaker)) }

    /// Runs the inner stages in a slot of `bulkhead`.
    public func bulkhead(_ bulkhead: Bulkhead) -> Self { adding(.bulkhead(bulkhead)) }

    /// Answers with `fallback(error)` when the inner stages throw (a rejection, a timeout, the call's error).
    public func fallback(_ fallback: @escaping @Sendable (any Error) async throws -> Output) -> Self { adding(.fallback(fallback)) }

    /// Runs `operation` through every stage.
    ///
    /// Inlinable, so that the stages run specialised for `Output` in the caller's module: with nothing failing, a
    /// stage costs what it does itself (a bulkhead's compare-and-swap, a retry's budget count) and allocates nothing.
    @inlinable
    public func run(_ operation: @escaping @Sendable () async throws -> Output) async throws -> Output {
        if runsFlat { return try await runFlat(operation) }
        return try await execute(from: 0, operation)
    }

    /// Every stage in one frame: enter them in order, run the call, leave them in reverse. The only async calls on
    /// the common path are the operation itself (and a wait for a bulkhead slot or a probe permit, when one is due).
    @inlinable
    func runFlat(_ operation: @escaping @Sendable () async throws -> Output) async throws -> Output {
        var permit: BreakerPermit? = nil
        var started = Duration.zero
        var entered = 0
        var outcome: Result<Output, any Error>
        do {
            while entered < kinds.count {
                switch kinds[entered] {
                case .breaker:
                    guard case .breaker(let breaker) = stages[entered] else { preconditionFailure() }
                    switch try breaker.acquireWithoutWaiting() {
                    case .some(let now): permit = consume now
                    case nil: permit = try await breaker.acquireAsync()
                    }
                case .bulkhead:
                    guard case .bulkhead(let bulkhead) = stages[entered] else { preconditionFailure() }
                    if !bulkhead.tryAcquire() { try await bulkhead.acquire() }
                case .retry:
                    if retryCountsCalls, case .retry(let stage) = stages[entered] { started = stage.begin() }
                case .fallback, .timeout:
                    break
                }
                entered += 1
            }
            outcome = .success(try await operation())
        } catch {
            // A stage that refused (a rejection, a full bulkhead) was not entered: the stages outside it see why.
            outcome = .failure(error)
        }
        var index = entered
        while index > 0 {
            index -= 1
            switch kinds[index] {
            case .breaker:
                switch permit.take() {
                case .some(let held):
                    switch outcome {
                    case .success: held.success()
                    case .failure(let error): held.failure(error)
                    }
                case nil: break
                }
            case .bulkhead:
                if case .bulkhead(let bulkhead) = stages[index] { bulkhead.release() }
            case .retry:
                guard case .failure(let error) = outcome, case .retry(let stage) = stages[index] else { break }
                let inner = index + 1
                do {
                    outcome = .success(try await stage.afterFailure(error, started: started) { try await execute(from: inner, operation) })
                } catch {
                    outcome = .failure(error)
                }
            case .fallback:
                guard case .failure(let error) = outcome, case .fallback(let fallback) = stages[index] else { break }
                do {
                    outcome = .success(try await fallback(error))
                } catch {
                    outcome = .failure(error)
                }
            case .timeout:
                break
            }
        }
        return try outcome.get()
    }

    @inlinable
    func execute(from index: Int, _ operation: @escaping @Sendable () async throws -> Output) async throws -> Output {
        guard index < stages.count else { return try await operation() }
        switch stages[index] {
        case .breaker(let breaker):
            if breaker.callTimeout != nil { return try await breaker.run { try await execute(from: index + 1, operation) } }
            let permit: BreakerPermit
            switch try breaker.acquireWithoutWaiting() {
            case .some(let now): permit = now
            case nil: permit = try await breaker.acquireAsync()
            }
            let value: Output
            do {
                value = try await execute(from: index + 1, operation)
            } catch {
                permit.failure(error)
                throw error
            }
            permit.success()
            return value
        case .bulkhead(let bulkhead):
            if bulkhead.isAdaptive { return try await bulkhead.run { try await execute(from: index + 1, operation) } }
            if !bulkhead.tryAcquire() { try await bulkhead.acquire() }
            let value: Output
            do {
                value = try await execute(from: index + 1, operation)
            } catch {
                bulkhead.release()
                throw error
            }
            bulkhead.release()
            return value
        case .retry(let stage):
            // The first attempt runs here; the stage's loop only after it fails.
            let started = stage.countsCalls ? stage.begin() : .zero
            do {
                return try await execute(from: index + 1, operation)
            } catch {
                return try await stage.afterFailure(error, started: started) { try await execute(from: index + 1, operation) }
            }
        case .fallback(let fallback):
            do {
                return try await execute(from: index + 1, operation)
            } catch {
                return try await fallback(error)
            }
        case .timeout(let duration):
            return try await Self.run(inner: { try await execute(from: index + 1, operation) }, timeout: duration)
        }
    }

    @usableFromInline
    static func run(inner: @escaping @Sendable () async throws -> Output, timeout duration: Duration) async throws -> Output {
        try await withTimeout(duration, inner) {
            FuseboxError(code: .callTimedOut, message: "the call did not finish within \(FuseboxError.format(duration)) (pipeline timeout)")
        }
    }
}
