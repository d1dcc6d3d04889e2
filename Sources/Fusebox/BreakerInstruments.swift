import FuseboxLocking
import Logging
import Metrics
import Synchronization

/// A breaker's events fanned out to any number of `AsyncStream` consumers.
///
/// Publishing checks an atomic count first, so with no consumer an event costs one relaxed load.
final class EventBroadcaster: Sendable {
    private let consumers = Locked<[Int: AsyncStream<BreakerEvent>.Continuation]>([:])
    private let consumerCount = Atomic<Int>(0)
    private let nextID = Atomic<Int>(0)

    /// `true` when someone listens; compute an event's payload only then.
    var isObserved: Bool { consumerCount.load(ordering: .relaxed) > 0 }

    func stream() -> AsyncStream<BreakerEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: BreakerEvent.self, bufferingPolicy: .bufferingNewest(1024))
        let id = nextID.add(1, ordering: .relaxed).newValue
        consumers.withLock { $0[id] = continuation }
        consumerCount.add(1, ordering: .relaxed)
        continuation.onTermination = { [weak self] _ in
            guard let self else { return }
            if consumers.withLock({ $0.removeValue(forKey: id) }) != nil {
                consumerCount.subtract(1, ordering: .relaxed)
            }
        }
        return stream
    }

    func publish(_ event: BreakerEvent) {
        guard isObserved else { return }
        consumers.withLock { consumers in
            for continuation in consumers.values { continuation.yield(event) }
        }
    }

    deinit {
        consumers.withLock { consumers in
            for continuation in consumers.values { continuation.finish() }
        }
    }
}

/// The metrics, log lines and events of one breaker, shared by both adapters so they report alike.
///
/// Metric names (documented in Docs/semantics.md), each with dimension `breaker`:
/// `fusebox_breaker_state` (gauge: 0 closed, 1 half-open, 2 open), `fusebox_calls_total` (counter, dimension
/// `outcome`: success, failure, ignored), `fusebox_slow_calls_total`, `fusebox_rejections_total`,
/// `fusebox_transitions_total` (dimensions `from`, `to`).
public final class BreakerInstruments: Sendable {
    /// The breaker's name.
    public let name: String
    /// The logger transitions go to, with `breaker.name` set.
    public let logger: Logger
    let events = EventBroadcaster()
    private let stateGauge: Gauge
    private let successes: Counter
    private let failures: Counter
    private let ignored: Counter
    private let slowCalls: Counter
    private let rejections: Counter
    private let wouldRejections: Counter
    private let slowCallNanoseconds: Int64

    /// Makes the instruments of breaker `name`; `logger` gets the transitions; calls longer than
    /// `slowCallDuration` count as slow.
    public init(name: String, initialState: BreakerState, slowCallDuration: Duration, logger: Logger) {
        self.slowCallNanoseconds = slowCallDuration.nanoseconds
        self.name = name
        var logger = logger
        logger[metadataKey: "breaker.name"] = .string(name)
        self.logger = logger
        let breaker = [("breaker", name)]
        stateGauge = Gauge(label: "fusebox_breaker_state", dimensions: breaker)
        successes = Counter(label: "fusebox_calls_total", dimensions: breaker + [("outcome", "success")])
        failures = Counter(label: "fusebox_calls_total", dimensions: breaker + [("outcome", "failure")])
        ignored = Counter(label: "fusebox_calls_total", dimensions: breaker + [("outcome", "ignored")])
        slowCalls = Counter(label: "fusebox_slow_calls_total", dimensions: breaker)
        rejections = Counter(label: "fusebox_rejections_total", dimensions: breaker)
        wouldRejections = Counter(label: "fusebox_would_reject_total", dimensions: breaker)
        stateGauge.record(initialState.gaugeValue)
    }

    /// A new event stream.
    public func stream() -> AsyncStream<BreakerEvent> { events.stream() }

    /// Logs, counts and publishes a transition.
    ///
    /// `observedRemotely` marks a transition another instance made (seen through the shared store): it is
    /// logged at debug, since the instance that made it logs it at info.
    public func transitioned(_ transition: BreakerTransition, observedRemotely: Bool = false) {
        logger.log(
            level: observedRemotely ? .debug : .info,
            "CircuitBreaker '\(name)': \(transition.from.label) → \(transition.to.label) (\(transition.reason))",
            metadata: ["breaker.state": .string(transition.to.rawValue), "breaker.version": .stringConvertible(transition.version)])
        stateGauge.record(transition.to.gaugeValue)
        Counter(label: "fusebox_transitions_total", dimensions: [("breaker", name), ("from", transition.from.rawValue), ("to", transition.to.rawValue)])
            .increment()
        events.publish(.stateChanged(transition))
        if !observedRemotely, let observer = BreakerCallObservation.current { observer.transitioned(breaker: name, transition) }
    }

    /// Counts and publishes a rejection.
    public func rejected(in state: BreakerState) {
        rejections.increment()
        events.publish(.callRejected(state: state))
    }

    /// Counts and publishes a call that shadow mode let run although the breaker rejected it in `state`.
    public func wouldReject(in state: BreakerState) {
        wouldRejections.increment()
        events.publish(.callWouldBeRejected(state: state))
    }

    /// Counts and publishes an outcome of a call that took `nanoseconds`.
    public func recorded(_ outcome: CallOutcome, nanoseconds: Int64) {
        switch outcome {
        case .success:
            successes.increment()
            if nanoseconds > slowCallNanoseconds { slowCalls.increment() }
            if events.isObserved { events.publish(.success(duration: .nanoseconds(nanoseconds))) }
        case .failure(let type):
            failures.increment()
            if nanoseconds > slowCallNanoseconds { slowCalls.increment() }
            if events.isObserved { events.publish(.failure(duration: .nanoseconds(nanoseconds), errorType: String(describing: type))) }
        case .ignored:
            ignored.increment()
            events.publish(.ignored)
        }
    }
}
