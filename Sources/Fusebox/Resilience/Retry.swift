import FuseboxLocking
import Metrics

/// When and how often a failed call is tried again: attempts, backoff, a maximum delay, an overall deadline,
/// which errors are worth retrying, and a ``RetryBudget`` shared by the calls of a service so that retries
/// cannot multiply load in an outage.
///
/// A rejection by a breaker (open, isolated, half-open without a permit) or a bulkhead is never retried: the
/// breaker already says when to come back (`retryAfter`), and trying again before then only adds load. Used as a
/// stage of a ``ResiliencePipeline``.
public struct RetryPolicy: Sendable {
    /// How long to wait before retry number `n` (1 for the first retry).
    public enum Backoff: Sendable, Hashable {
        /// Always `delay`.
        case constant(Duration)
        /// `delay × n`.
        case linear(Duration)
        /// `base × factor^(n−1)`.
        case exponential(base: Duration, factor: Double = 2)
        /// AWS's "decorrelated jitter": a random delay between `base` and three times the previous delay, so that
        /// clients that failed together do not retry together.
        case decorrelatedJitter(base: Duration)
    }

    /// Attempts in all, the first call included. Default 3. Range 1…100.
    public var maxAttempts = 3
    /// Default: exponential from 100 ms, doubling.
    public var backoff = Backoff.exponential(base: .milliseconds(100))
    /// No delay is longer than this. Default 30 s.
    public var maxDelay: Duration = .seconds(30)
    /// No retry starts, and no delay runs, past this time after the first attempt began. `nil` (default): none.
    public var deadline: Duration?
    /// Whether an error is worth another attempt. Default: every error but `CancellationError` and rejections by
    /// a breaker or bulkhead (which are never retried whatever this says).
    public var shouldRetry: @Sendable (any Error) -> Bool = { _ in true }
    /// The budget retries draw from; `nil` (default): attempts alone limit them.
    public var budget: RetryBudget?
    /// The name in metrics (`fusebox_retries_total{retry=NAME}`) and events.
    public var name = "retry"
    /// Told of every retry and of how the call ended.
    public var onEvent: (@Sendable (RetryEvent) -> Void)?

    /// The default policy.
    public init() {}

    /// A policy of `maxAttempts` attempts with `backoff`.
    public init(maxAttempts: Int, backoff: Backoff = .exponential(base: .milliseconds(100)), budget: RetryBudget? = nil) {
        self.maxAttempts = maxAttempts
        self.backoff = backoff
        self.budget = budget
    }

    /// The policy, checked: throws ``FuseboxError/Code/invalidPolicy`` naming the bad field.
    public func validated() throws(FuseboxError) -> RetryPolicy {
        func fail(_ text: String) -> FuseboxError { FuseboxError(code: .invalidPolicy, message: "retry '\(name)': \(text)") }
        guard (1...100).contains(maxAttempts) else { throw fail("maxAttempts is \(maxAttempts); allowed: 1…100") }
        guard maxDelay >= .zero else { throw fail("maxDelay must be ≥ 0") }
        if let deadline, deadline <= .zero { throw fail("deadline must be > 0, or nil for none") }
        switch backoff {
        case .constant(let d), .linear(let d), .decorrelatedJitter(let d):
            guard d >= .zero else { throw fail("the backoff delay must be ≥ 0") }
        case .exponential(let base, let factor):
            guard base >= .zero, factor >= 1, factor.isFinite else { throw fail("exponential backoff needs base ≥ 0 and factor ≥ 1") }
        }
        return self
    }

    /// The delay before retry `retry` (1 for the first), given the previous delay (for decorrelated jitter).
    public func delay(beforeRetry retry: Int, previous: Duration, using random: inout some RandomNumberGenerator) -> Duration {
        switch backoff {
        case .constant(let d): return min(d, maxDelay)
        case .linear(let d): return retry > 1_000_000 ? maxDelay : min(d * retry, maxDelay)
        default: break
        }
        let seconds: Double = switch backoff {
        case .constant, .linear: 0
        case .exponential(let base, let factor): base.seconds * pow(factor, Double(retry - 1))
        case .decorrelatedJitter(let base):
            Double.random(in: base.seconds...max(base.seconds, previous.seconds * 3), using: &random)
        }
        guard seconds.isFinite, seconds < maxDelay.seconds else { return maxDelay }
        return .seconds(max(0, seconds))
    }

    /// Whether `error` may be retried: never a rejection or a cancellation, else what ``shouldRetry`` says.
    func mayRetry(_ error: any Error) -> Bool {
        if error is CancellationError { return false }
        if let error = error as? FuseboxError, error.code == .circuitOpen || error.code == .throttled || error.code == .bulkheadFull { return false }
        return shouldRetry(error)
    }
}

/// What a retry stage saw: told to ``RetryPolicy/onEvent`` and counted in metrics.
public enum RetryEvent: Sendable {
    /// Attempt `attempt` failed with `error`; the next starts after `delay`.
    case retrying(attempt: Int, delay: Duration, error: any Error)
    /// The call succeeded at attempt `attempt`.
    case succeeded(attempt: Int)
    /// The call failed for good after `attempt` attempts, for `reason`.
    case gaveUp(attempt: Int, reason: GiveUpReason, error: any Error)

    /// Why no further attempt was made.
    public enum GiveUpReason: String, Sendable {
        /// Every attempt was used.
        case attempts
        /// The next delay would end past the deadline.
        case deadline
        /// The retry budget was spent.
        case budget
        /// The error is not retried (a rejection, a cancellation, or ``RetryPolicy/shouldRetry`` said no).
        case notRetryable = "not_retryable"
    }
}

/// Retries as a fraction of calls over a sliding window, with a small floor for quiet services: a retry is
/// allowed while the retries of the last ``window`` stay under `ratio × calls + minimumPerSecond × window`.
/// In an outage, where every call fails, load stays within `1 + ratio` times the calls instead of `maxAttempts`
/// times. Shared by every retry stage that names it; thread-safe (one lock held for a few additions).
public final class RetryBudget: Sendable {
    /// Retries allowed per first attempt. Default 0.2 (20 %).
    public let ratio: Double
    /// Retries allowed per second whatever the traffic. Default 10.
    public let minimumPerSecond: Double
    /// How far back calls and retries count. Default 10 s.
    public let window: Duration
    private let elapsed: @Sendable () -> Duration
    private let buckets = 10
    private let state: Locked<(calls: [Int], retries: [Int], bucket: Int64)>

    /// A budget reading `clock` (a test's manual clock, or the default continuous clock).
    public init<C: Clock>(ratio: Double = 0.2, minimumPerSecond: Double = 10, window: Duration = .seconds(10), clock: C) where C.Duration == Duration {
        self.ratio = max(0, ratio)
        self.minimumPerSecond = max(0, minimumPerSecond)
        self.window = max(window, .milliseconds(10))
        let start = clock.now
        self.elapsed = { start.duration(to: clock.now) }
        self.state = Locked((Array(repeating: 0, count: 10), Array(repeating: 0, count: 10), 0))
    }

    /// A budget on the continuous clock.
    public convenience init(ratio: Double = 0.2, minimumPerSecond: Double = 10, window: Duration = .seconds(10)) {
        self.init(ratio: ratio, minimumPerSecond: minimumPerSecond, window: window, clock: ContinuousClock())
    }

    /// Counts a first attempt.
    public func recordCall() {
        let bucket = currentBucket()
        state.withLock { state in
            Self.advance(&state, to: bucket, buckets: buckets)
            state.calls[Int(bucket % Int64(buckets))] += 1
        }
    }

    /// Takes one retry from the budget; `false` when it is spent.
    public func tryRetry() -> Bool {
        let bucket = currentBucket()
        let floor = minimumPerSecond * window.seconds
        return state.withLock { state in
            Self.advance(&state, to: bucket, buckets: buckets)
            let calls = state.calls.reduce(0, +)
            let retries = state.retries.reduce(0, +)
            guard Double(retries + 1) <= ratio * Double(calls) + floor else { return false }
            state.retries[Int(bucket % Int64(buckets))] += 1
            return true
        }
    }

    /// Retries the budget still allows now.
    public var available: Int {
        let bucket = currentBucket()
        let floor = minimumPerSecond * window.seconds
        return state.withLock { state in
            Self.advance(&state, to: bucket, buckets: buckets)
            return max(0, Int(ratio * Double(state.calls.reduce(0, +)) + floor) - state.retries.reduce(0, +))
        }
    }

    private func currentBucket() -> Int64 {
        let width = window / buckets
        return Int64(elapsed() / width)
    }

    private static func advance(_ state: inout (calls: [Int], retries: [Int], bucket: Int64), to bucket: Int64, buckets: Int) {
        guard bucket > state.bucket else { return }
        let steps = min(Int64(buckets), bucket - state.bucket)
        for step in 1...steps {
            let index = Int((state.bucket + step) % Int64(buckets))
            state.calls[index] = 0
            state.retries[index] = 0
        }
        state.bucket = bucket
    }
}

/// A retry stage: the policy, its clock and its metrics, made once when the pipeline is built. The pipeline calls
/// ``begin()`` and the first attempt itself (nothing here runs when it succeeds), and ``afterFailure(_:started:_:)``
/// only when it fails.
@usableFromInline
final class RetryStage: Sendable {
    let policy: RetryPolicy
    /// Time on the stage's clock since the stage was made, and a sleep on it.
    private let now: @Sendable () -> Duration
    private let sleep: @Sendable (Duration) async throws -> Void
    private let retries: Counter
    private let successes: Counter
    private let failures: Counter
    private let delays: Timer
    /// Whether ``begin()`` has anything to do (a budget to count in, a deadline to start).
    @usableFromInline let countsCalls: Bool

    init<C: Clock>(policy: RetryPolicy, clock: C) where C.Duration == Duration {
        self.policy = policy
        let start = clock.now
        self.now = { start.duration(to: clock.now) }
        self.sleep = { try await clock.sleep(for: $0) }
        let dimensions = [("retry", policy.name)]
        retries = Counter(label: "fusebox_retries_total", dimensions: dimensions + [("outcome", "retried")])
        successes = Counter(label: "fusebox_retries_total", dimensions: dimensions + [("outcome", "succeeded")])
        failures = Counter(label: "fusebox_retries_total", dimensions: dimensions + [("outcome", "gave_up")])
        delays = Timer(label: "fusebox_retry_delay_seconds", dimensions: dimensions)
        countsCalls = policy.budget != nil || policy.deadline != nil
    }

    /// Counts the call in the budget and returns when it started (for the deadline; zero without one).
    @usableFromInline
    func begin() -> Duration {
        policy.budget?.recordCall()
        return policy.deadline == nil ? .zero : now()
    }

    /// After the first attempt failed with `error`: retries as the policy allows, then rethrows the last error.
    @usableFromInline
    func afterFailure<T>(_ error: any Error, started: Duration, _ attempt: () async throws -> T) async throws -> T {
        var number = 1
        var previous = Duration.zero
        var last = error
        var random = SystemRandomNumberGenerator()
        while true {
            let reason: RetryEvent.GiveUpReason?
            var delay = Duration.zero
            if !policy.mayRetry(last) {
                reason = .notRetryable
            } else if number >= policy.maxAttempts {
                reason = .attempts
            } else {
                delay = policy.delay(beforeRetry: number, previous: previous, using: &random)
                if let deadline = policy.deadline, now() - started + delay > deadline {
                    reason = .deadline
                } else if let budget = policy.budget, !budget.tryRetry() {
                    reason = .budget
                } else {
                    reason = nil
                }
            }
            if let reason {
                if number > 1 || reason != .notRetryable { failures.increment() }
                policy.onEvent?(.gaveUp(attempt: number, reason: reason, error: last))
                throw last
            }
            retries.increment()
            delays.recordNanoseconds(delay.nanoseconds)
            policy.onEvent?(.retrying(attempt: number, delay: delay, error: last))
            if delay > .zero { try await sleep(delay) }
            previous = delay
            number += 1
            do {
                let value = try await attempt()
                successes.increment()
                policy.onEvent?(.succeeded(attempt: number))
                return value
            } catch {
                last = error
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
