import AsyncHTTPClient
import Foundation
import Fusebox
import FuseboxLocking
import Logging
import NIOCore
import NIOHTTP1

/// An `HTTPClient` whose requests go through a circuit breaker per destination, with retries that honour
/// `Retry-After`, all inside one deadline.
///
/// - **Breaker per destination**: by default `scheme:host:port` (``destination(of:)``), so one failing host trips
///   its own breaker and no other; ``Options/breakerName`` may name it otherwise (per route, per provider). The
///   breakers come from the registry given, so with the distributed adapter every instance shares them.
/// - **Classification**: a connect error, a timeout, a 5xx or a 429 is a failure; any other answer (404 included)
///   is a success: the dependency answered. ``Options/isFailure`` changes it.
/// - **Retries** (``Options/retry``; 3 attempts by default) for requests that may be sent again: idempotent
///   methods whose body is empty, or that ``execute(_:deadline:replayable:logger:)`` is told may be replayed.
///   A `Retry-After` (seconds, or an HTTP date) on a 429 or 503 sets the delay before the next attempt; when it is
///   longer than the breaker's break, calls to that destination are turned away until it has passed (in this
///   process) as the breaker's own rejections are. A rejection is never retried.
/// - **One deadline** covers every attempt and every delay.
///
/// A rejection throws `FuseboxError` (code `circuitOpen`) with the breaker's name and `retryAfter`, and opens no
/// connection. A final 5xx or 429 is returned, not thrown, after it has been counted.
public final class ResilientHTTPClient: Sendable {
    /// How the client names, classifies and retries.
    public struct Options: Sendable {
        /// The state rules of every destination's breaker (`BreakerRegistry.breaker(_:policy:)`); `nil` (default):
        /// the registry's configured policy for the name.
        public var policy: BreakerPolicy?
        /// The breaker of a request; default ``ResilientHTTPClient/destination(of:)``.
        public var breakerName: @Sendable (HTTPClientRequest) throws -> String = { try ResilientHTTPClient.destination(of: $0) }
        /// Whether an answer counts as a failure of the dependency; default: 5xx and 429.
        public var isFailure: @Sendable (HTTPResponseStatus) -> Bool = { $0.code >= 500 || $0.code == 429 }
        /// Attempts and backoff; `maxAttempts` 1 turns retries off. Default: 3 attempts, exponential from 100 ms.
        public var retry = RetryPolicy()
        /// The longest `Retry-After` honoured; a longer one ends the call with the answer received. Default 60 s.
        public var maxRetryAfter: Duration = .seconds(60)

        /// The defaults.
        public init() {}
    }

    /// The client that sends the requests.
    public let client: HTTPClient
    /// Where the breakers come from.
    public let registry: BreakerRegistry
    /// How requests are named, classified and retried.
    public let options: Options
    /// Per breaker: until when (this process's clock) a `Retry-After` longer than the break holds calls back.
    private let holds = Locked<[String: ContinuousClock.Instant]>([:])
    private let warned = Locked<Set<String>>([])

    /// A client over `client`, with breakers from `registry`. Throws `FuseboxError` (`invalidPolicy`) for
    /// options out of range.
    public init(client: HTTPClient = .shared, registry: BreakerRegistry, options: Options = Options()) throws(FuseboxError) {
        _ = try options.retry.validated()
        if let policy = options.policy { _ = try policy.validated() }
        guard options.maxRetryAfter >= .zero else {
            throw FuseboxError(code: .invalidPolicy, message: "maxRetryAfter must be ≥ 0")
        }
        self.client = client
        self.registry = registry
        self.options = options
    }

    /// `scheme:host:port` of the request's URL (the port the scheme implies when none is written): the default
    /// breaker name. Throws `FuseboxError` (`invalidName`) for a URL without a scheme or host.
    public static func destination(of request: HTTPClientRequest) throws(FuseboxError) -> String {
        guard let url = URL(string: request.url), let scheme = url.scheme?.lowercased(), let host = url.host?.lowercased(), !host.isEmpty else {
            throw FuseboxError(code: .invalidName, message: "no breaker for '\(request.url.prefix(200))': it has no scheme and host")
        }
        let port = url.port ?? (scheme == "https" ? 443 : scheme == "http" ? 80 : 0)
        return "\(scheme):\(host):\(port)"
    }

    /// The failure recorded for an answer that ``Options/isFailure`` flags (its error type in the breaker's figures).
    public struct StatusFailure: Error, Sendable {
        /// The answer's status.
        public var status: HTTPResponseStatus
    }

    /// Sends `request` through its destination's breaker, retrying what may be retried, within `deadline` (more
    /// than zero) from now. `replayable`: the body may be sent again (`nil`, the default: only when there is none).
    /// Returns the last answer; throws the breaker's rejection, the last transport error, or `FuseboxError`
    /// (`callTimedOut`) when the deadline passes.
    public func execute(
        _ request: HTTPClientRequest, deadline: Duration, replayable: Bool? = nil, logger: Logger? = nil
    ) async throws -> HTTPClientResponse {
        guard deadline > .zero else {
            throw FuseboxError(code: .invalidPolicy, message: "the deadline must be more than zero; got \(FuseboxError.format(deadline))")
        }
        let name: String
        do {
            name = try options.breakerName(request)
        } catch let error as FuseboxError {
            throw error
        } catch {
            throw FuseboxError(code: .invalidName, message: "the breaker name of '\(request.url.prefix(200))' could not be made: \(error)")
        }
        let breaker = try registry.breaker(name, policy: options.policy)
        options.retry.budget?.recordCall()
        let clock = ContinuousClock()
        let end = clock.now + deadline
        let idempotent: [HTTPMethod] = [.GET, .HEAD, .OPTIONS, .PUT, .DELETE, .TRACE]
        let mayRetry = options.retry.maxAttempts > 1 && idempotent.contains(request.method) && (replayable ?? (request.body == nil))
        var previousDelay = Duration.zero
        var random = SystemRandomNumberGenerator()
        var attempt = 1
        while true {
            if let until = holds.withLock({ $0[name] }), until > clock.now {
                throw FuseboxError.rejection(name: name, state: .open, retryAfter: until - clock.now, isolationReason: nil)
            }
            let remaining = end - clock.now
            guard remaining > .zero else { throw timedOut(name, deadline) }
            let permit = try await breaker.acquireAsync()
            let outcome: Result<HTTPClientResponse, any Error>
            do {
                outcome = .success(try await client.execute(request, deadline: .now() + .nanoseconds(remaining.nanoseconds), logger: logger))
            } catch {
                outcome = .failure(error)
            }
            var wait: Duration?
            switch outcome {
            case .success(let response):
                guard options.isFailure(response.status) else {
                    permit.success()
                    return response
                }
                permit.failure(StatusFailure(status: response.status))
                if response.status == .tooManyRequests || response.status == .serviceUnavailable,
                    let header = response.headers.first(name: "retry-after")
                {
                    if let after = Self.retryAfter(header, now: Date()) {
                        wait = after
                        await hold(name, breaker: breaker, for: after, clock: clock)
                    } else if warned.withLock({ $0.insert(name).inserted }) {
                        (logger ?? Logger.current).info("breaker '\(name)': ignored a Retry-After that is neither seconds nor an HTTP date: '\(header.prefix(100))'")
                    }
                }
                guard mayRetry, attempt < options.retry.maxAttempts, wait.map({ $0 <= options.maxRetryAfter }) ?? true,
                    options.retry.budget?.tryRetry() ?? true
                else { return response }
                // The answer is not the caller's: its body goes, so the connection can serve the next attempt.
                _ = try? await response.body.collect(upTo: 1 << 20)
            case .failure(let error):
                if let timeout = error as? HTTPClientError, timeout == .deadlineExceeded, end <= clock.now {
                    permit.failure(error)
                    throw timedOut(name, deadline)
                }
                permit.failure(error)
                guard mayRetry, attempt < options.retry.maxAttempts, !(error is CancellationError),
                    options.retry.budget?.tryRetry() ?? true
                else { throw error }
            }
            let backoff = min(options.retry.delay(beforeRetry: attempt, previous: previousDelay, using: &random), options.retry.maxDelay)
            let delay = max(backoff, wait ?? .zero)
            previousDelay = delay
            guard clock.now + delay < end else {
                if case .success(let response) = outcome { return response }
                throw timedOut(name, deadline)
            }
            try await Task.sleep(for: delay)
            attempt += 1
        }
    }


    private func timedOut(_ name: String, _ deadline: Duration) -> FuseboxError {
        FuseboxError(code: .callTimedOut, message: "request through circuit '\(name)' did not finish within its deadline of \(FuseboxError.format(deadline))", breakerName: name)
    }

    /// After a `Retry-After` of `after`: when the breaker is open and its break ends sooner, calls wait for the
    /// dependency's time instead.
    private func hold(_ name: String, breaker: CircuitBreaker, for after: Duration, clock: ContinuousClock) async {
        guard let snapshot = try? await breaker.snapshot(), snapshot.state == .open, let left = snapshot.timeUntilProbe, left < after else { return }
        let until = clock.now + after
        holds.withLock { holds in
            if holds[name].map({ $0 < until }) ?? true { holds[name] = until }
        }
    }

    /// A `Retry-After` value: whole seconds, or an HTTP date (RFC 9110, IMF-fixdate, and the two obsolete forms);
    /// `nil` for anything else. A date in the past is zero.
    public static func retryAfter(_ value: String, now: Date) -> Duration? {
        let text = value.trimmingCharacters(in: .whitespaces)
        if let seconds = Int64(text) { return seconds >= 0 ? .seconds(seconds) : nil }
        for format in ["EEE, dd MMM yyyy HH:mm:ss zzz", "EEEE, dd-MMM-yy HH:mm:ss zzz", "EEE MMM d HH:mm:ss yyyy"] {
            let formatter = DateFormatter()
            formatter.locale = Locale(identifier: "en_US_POSIX")
            formatter.timeZone = TimeZone(identifier: "GMT")
            formatter.dateFormat = format
            if let date = formatter.date(from: text) {
                return .milliseconds(max(0, Int64((date.timeIntervalSince(now) * 1000).rounded(.up))))
            }
        }
        return nil
    }
}
