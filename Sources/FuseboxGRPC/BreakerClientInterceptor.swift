import Fusebox
import FuseboxLocking
import GRPCCore

/// A gRPC client interceptor (grpc-swift 2) that guards each call by a circuit breaker: one per service by default,
/// or per method, or as a closure names it.
///
/// - **Classification** of the status a call ends with: `unavailable`, `deadlineExceeded`, `resourceExhausted`,
///   `internalError` and `unknown` are failures of the dependency; `cancelled` (the caller gave up) is ignored;
///   every other status, `ok`, `invalidArgument`, `notFound` or `permissionDenied` among them, is a success: the
///   dependency answered. ``Options/isFailure`` changes it.
/// - **Streaming calls count once, when the call ends**: a response stream that ends with `ok`, or with a status,
///   settles the permit then; one the caller stops reading settles it as ignored.
/// - **A rejection** never reaches the transport: it surfaces as an `RPCError` with code `unavailable`, the
///   breaker's message, and the `FuseboxError` as its `cause` (with the breaker's name and `retryAfter`), so
///   callers handle it as they already handle an unavailable server.
public struct BreakerClientInterceptor: ClientInterceptor {
    /// How the interceptor names breakers and classifies statuses.
    public struct Options: Sendable {
        /// One breaker per service (the default), or per method.
        public enum Scope: Sendable, Hashable {
            /// `grpc:PACKAGE.SERVICE`.
            case service
            /// `grpc:PACKAGE.SERVICE/METHOD`.
            case method
        }

        /// Which breaker guards a call, when ``breakerName`` is `nil`.
        public var scope = Scope.service
        /// Names the breaker of a call (overrides ``scope``).
        public var breakerName: (@Sendable (MethodDescriptor) -> String)?
        /// The state rules of every breaker made (`BreakerRegistry.breaker(_:policy:)`); `nil` (default): the
        /// registry's configured policy for the name.
        public var policy: BreakerPolicy?
        /// Whether a call that ended with an error of this code is a failure of the dependency.
        public var isFailure: @Sendable (RPCError.Code) -> Bool = { BreakerClientInterceptor.defaultFailureCodes.contains($0) }

        /// The defaults.
        public init() {}
    }

    /// `unavailable`, `deadlineExceeded`, `resourceExhausted`, `internalError`, `unknown`.
    public static let defaultFailureCodes: Set<RPCError.Code> = [.unavailable, .deadlineExceeded, .resourceExhausted, .internalError, .unknown]

    /// The failure recorded for a status ``Options/isFailure`` flags (its error type in the breaker's figures).
    public struct StatusFailure: Error, Sendable {
        /// The status code the call ended with.
        public var code: RPCError.Code
    }

    /// Where the breakers come from.
    public let registry: BreakerRegistry
    /// How calls are named and classified.
    public let options: Options

    /// An interceptor taking breakers from `registry`; throws `FuseboxError` (`invalidPolicy`) for a policy out of
    /// range.
    public init(registry: BreakerRegistry, options: Options = Options()) throws(FuseboxError) {
        if let policy = options.policy { _ = try policy.validated() }
        self.registry = registry
        self.options = options
    }

    /// The breaker name of a call to `method`.
    public func breakerName(of method: MethodDescriptor) -> String {
        if let name = options.breakerName { return name(method) }
        switch options.scope {
        case .service: return "grpc:" + method.service.fullyQualifiedService
        case .method: return "grpc:" + method.fullyQualifiedMethod
        }
    }

    /// Guards the call: admitted, it runs and its outcome is recorded when it ends; rejected, it fails with
    /// `unavailable` without reaching the transport.
    public func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingClientRequest<Input>,
        context: ClientContext,
        next: (_ request: StreamingClientRequest<Input>, _ context: ClientContext) async throws -> StreamingClientResponse<Output>
    ) async throws -> StreamingClientResponse<Output> {
        let name = breakerName(of: context.descriptor)
        let permit: BreakerPermit
        do {
            permit = try await registry.breaker(name, policy: options.policy).acquireAsync()
        } catch {
            guard error.code == .circuitOpen || error.code == .throttled else {
                throw RPCError(code: .internalError, message: "circuit breaker '\(name)': \(error.message)", cause: error)
            }
            throw RPCError(code: .unavailable, message: error.message, cause: error)
        }
        let outcome = Outcome(permit, isFailure: options.isFailure)
        let response: StreamingClientResponse<Output>
        do {
            response = try await next(request, context)
        } catch {
            outcome.settle(with: error)
            throw error
        }
        switch response.accepted {
        case .failure(let error):
            outcome.settle(with: error)
            return response
        case .success(let contents):
            var settled = contents
            settled.bodyParts = RPCAsyncSequence(wrapping: SettlingSequence(base: contents.bodyParts, outcome: outcome))
            return StreamingClientResponse(accepted: .success(settled))
        }
    }
}

/// The permit of one call, settled once: when the response ends, fails, or is abandoned (ignored).
final class Outcome: Sendable {
    private let permit: Locked<BreakerPermit?>
    private let isFailure: @Sendable (RPCError.Code) -> Bool

    init(_ permit: consuming BreakerPermit, isFailure: @escaping @Sendable (RPCError.Code) -> Bool) {
        self.permit = Locked(Optional(permit))
        self.isFailure = isFailure
    }

    private func take() -> BreakerPermit? { permit.withLock { $0.take() } }

    func succeed() { take()?.success() }

    func settle(with error: any Error) {
        guard let permit = take() else { return }
        if let rpc = error as? RPCError {
            if rpc.code == .cancelled {
                permit.ignore()
            } else if isFailure(rpc.code) {
                permit.failure(BreakerClientInterceptor.StatusFailure(code: rpc.code))
            } else {
                permit.success()
            }
        } else if error is CancellationError {
            permit.ignore()
        } else {
            permit.failure(error)
        }
    }

    deinit {
        // The caller stopped reading before the end: it says nothing about the dependency.
        take()?.ignore()
    }
}

/// The response's body parts, settling the call's permit when they end.
struct SettlingSequence<Element: Sendable, Base: AsyncSequence<Element, any Error> & Sendable>: AsyncSequence, Sendable {
    typealias Failure = any Error
    let base: Base
    let outcome: Outcome

    struct AsyncIterator: AsyncIteratorProtocol {
        typealias Failure = any Error
        var base: Base.AsyncIterator
        let outcome: Outcome

        mutating func next() async throws -> Element? {
            do {
                guard let element = try await base.next() else {
                    outcome.succeed()
                    return nil
                }
                return element
            } catch {
                outcome.settle(with: error)
                throw error
            }
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: base.makeAsyncIterator(), outcome: outcome) }
}
