/// An error from Fusebox: what went wrong (``code``), a message a person can act on, and the breaker concerned.
///
/// Rejections are `FuseboxError`s with code ``Code/circuitOpen``; they carry the breaker's name, its state, the
/// time until the next probe and the isolation reason, and build their message only when it is read, so
/// rejecting a call allocates nothing.
public struct FuseboxError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let raw: UInt8
        private init(_ raw: UInt8) { self.raw = raw }

        /// The breaker rejected the call: it is open, isolated, or half-open with every probe permit taken.
        public static let circuitOpen = Code(1)
        /// A policy value is out of its allowed range.
        public static let invalidPolicy = Code(2)
        /// A breaker name is empty, too long, or has control characters.
        public static let invalidName = Code(3)
        /// A breaker of that name already exists with different state rules.
        public static let policyConflict = Code(4)
        /// The call exceeded the policy's call timeout and was cancelled.
        public static let callTimedOut = Code(5)
        /// The store behind the breaker (Redis) could not be reached or answered in error.
        public static let backendUnavailable = Code(6)
        /// The breaker's stored state is malformed (for example a Redis key edited by hand).
        public static let corruptState = Code(7)
        /// The configuration (adapter name, URL, option) is not valid.
        public static let invalidConfiguration = Code(8)
        /// No breaker of that name exists (in the registry, or in the Redis namespace).
        public static let unknownBreaker = Code(9)
        /// A bulkhead turned the call away: every slot was busy and its wait queue full, or the wait timed out.
        public static let bulkheadFull = Code(10)
        /// A closed breaker shed the call: its policy's ``BreakerPolicy/adaptiveThrottling`` rejects a share of
        /// calls while the dependency accepts too few of those sent. Not an open circuit: most calls still pass.
        public static let throttled = Code(11)
        /// A synchronous ``CircuitBreaker/acquire()`` made inside a task needed the store's answer (the distributed
        /// adapter when a break has ended and probe permits are handed out fleet-wide, or before its first reply)
        /// and does not block a task for it: the call did not run. ``CircuitBreaker/acquireAsync()`` and
        /// ``CircuitBreaker/run(isFailure:_:)`` wait for the answer instead.
        public static let wouldWait = Code(12)

        /// The code in words, e.g. `circuit open`.
        public var description: String {
            switch raw {
            case 1: "circuit open"
            case 2: "invalid policy"
            case 3: "invalid name"
            case 4: "policy conflict"
            case 5: "call timed out"
            case 6: "backend unavailable"
            case 7: "corrupt state"
            case 9: "unknown breaker"
            case 10: "bulkhead full"
            case 11: "throttled"
            case 12: "would wait"
            default: "invalid configuration"
            }
        }
    }

    /// What kind of failure this is.
    public var code: Code
    /// For rejections: the state that rejected the call.
    public var state: BreakerState?
    /// The breaker concerned, if any.
    public var breakerName: String?
    /// For rejections of an isolated breaker: the reason given to `isolate(reason:)`.
    public var isolationReason: String?
    /// Nanoseconds until the next probe; negative for none. Kept as an integer so a rejection stays cheap.
    private var retryAfterNanoseconds: Int64 = -1
    /// The message and underlying error, boxed: rejections (the hot path) carry neither.
    private var extra: Extra?

    private final class Extra: Sendable {
        let detail: String?
        let underlying: (any Error & Sendable)?
        init(detail: String?, underlying: (any Error & Sendable)?) {
            self.detail = detail
            self.underlying = underlying
        }
    }

    /// For rejections: the time until the breaker lets a probe through; `nil` when isolated or when every
    /// half-open permit is taken.
    public var retryAfter: Duration? {
        get { retryAfterNanoseconds < 0 ? nil : .nanoseconds(retryAfterNanoseconds) }
        set { retryAfterNanoseconds = newValue.map { max(0, $0.nanoseconds) } ?? -1 }
    }

    /// The underlying error, if any.
    public var underlying: (any Error & Sendable)? { extra?.underlying }

    /// Makes an error with a message.
    public init(code: Code, message: String, breakerName: String? = nil, underlying: (any Error & Sendable)? = nil) {
        self.code = code
        self.breakerName = breakerName
        self.extra = Extra(detail: message, underlying: underlying)
    }

    /// Makes a rejection; its message is built when read.
    public static func rejection(
        name: String, state: BreakerState, retryAfter: Duration?, isolationReason: String?
    ) -> FuseboxError {
        rejection(name: name, state: state, retryAfterNanoseconds: retryAfter.map { max(0, $0.nanoseconds) }, isolationReason: isolationReason)
    }

    /// Makes a rejection with the wait in nanoseconds (no `Duration` arithmetic on the hot path).
    public static func rejection(
        name: String, state: BreakerState, retryAfterNanoseconds: Int64?, isolationReason: String?
    ) -> FuseboxError {
        FuseboxError(code: .circuitOpen, state: state, breakerName: name, isolationReason: isolationReason, retryAfterNanoseconds: retryAfterNanoseconds ?? -1)
    }

    /// Makes a throttling rejection (code ``Code/throttled``); its message is built when read.
    public static func throttling(name: String) -> FuseboxError {
        FuseboxError(code: .throttled, state: .closed, breakerName: name, isolationReason: nil, retryAfterNanoseconds: -1)
    }

    /// The error of a synchronous ``CircuitBreaker/acquire()`` inside a task whose decision needs the store
    /// (code ``Code/wouldWait``).
    public static func wouldWait(name: String) -> FuseboxError {
        FuseboxError(
            code: .wouldWait,
            message: "circuit '\(name)' needs Redis to decide this call (a probe permit handed out fleet-wide), and acquire() does not block a task: use acquireAsync() or run()",
            breakerName: name)
    }

    private init(code: Code, state: BreakerState, breakerName: String, isolationReason: String?, retryAfterNanoseconds: Int64) {
        self.code = code
        self.state = state
        self.breakerName = breakerName
        self.isolationReason = isolationReason
        self.retryAfterNanoseconds = retryAfterNanoseconds
    }

    /// A message a person can act on, e.g. `circuit 'payments' is OPEN; next probe in 4.2 s`.
    public var message: String {
        if let detail = extra?.detail { return detail }
        let name = breakerName ?? "?"
        if code == .throttled {
            return "circuit '\(name)' shed the call (adaptive throttling): the dependency accepts too few of the calls sent"
        }
        guard code == .circuitOpen else { return "\(code)" }
        switch state {
        case .isolated?:
            return "circuit '\(name)' is ISOLATED (\(isolationReason ?? "no reason given")): calls are rejected until it is reset"
        case .halfOpen?:
            return "circuit '\(name)' is HALF_OPEN and every probe permit is taken"
        default:
            let wait = retryAfter.map { "; next probe in \(Self.format($0))" } ?? ""
            return "circuit '\(name)' is \(state?.label ?? "OPEN")\(wait)"
        }
    }

    /// The message, with the underlying error when there is one.
    public var description: String {
        var text = message
        if let underlying { text += " [\(underlying)]" }
        return text
    }

    /// A duration for people, as messages show it: `1.3 s`, `320 ms`, `2 min 5 s`.
    public static func format(_ duration: Duration) -> String { DurationText.spoken(duration) }
}

// Conversions the package uses everywhere; `package`, not `public`: a library does not add members to the standard
// library's types in its users' code.
extension Duration {
    /// Whole milliseconds, rounded down (saturating at ±292 million years).
    package var milliseconds: Int64 { wholeUnits(perSecond: 1000) }

    /// Whole nanoseconds, rounded down (saturating at ±292 years).
    package var nanoseconds: Int64 { wholeUnits(perSecond: 1_000_000_000) }

    /// Whole units of which `perSecond` make a second (a divisor of 10¹⁸), rounded down, saturating at `Int64`'s ends.
    private func wholeUnits(perSecond: Int64) -> Int64 {
        let (seconds, attoseconds) = components
        let (product, overflow) = seconds.multipliedReportingOverflow(by: perSecond)
        let (sum, carried) = product.addingReportingOverflow(attoseconds / (1_000_000_000_000_000_000 / perSecond))
        if overflow || carried { return seconds < 0 ? .min : .max }
        return sum
    }

    /// The duration in seconds as a `Double`.
    package var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
