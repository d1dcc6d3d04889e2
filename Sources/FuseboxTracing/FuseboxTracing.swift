import Fusebox
import Tracing

/// Fusebox in distributed traces (apple/swift-distributed-tracing): a guarded call run inside a span gets the
/// breaker's attributes, and an event when it is rejected or its outcome changes the breaker's state.
///
/// Fusebox creates no span: it annotates the span active in the caller's task (the tracer's
/// `activeSpan(identifiedBy:)` for `ServiceContext.current`), and does nothing when there is none, or when the
/// tracer cannot say which span is active. Until ``install()`` runs, a guarded call pays one relaxed atomic load
/// for it.
///
/// On admission the span gets `fusebox.breaker.name`, `fusebox.breaker.adapter` (`local` or `distributed`),
/// `fusebox.breaker.state` (`closed`, or `half_open` for a probe) and `fusebox.breaker.probe`. A rejection adds
/// the event `fusebox.rejected` (`fusebox.breaker.name`, `fusebox.breaker.state`, `fusebox.rejection.code` (`circuit open`, `throttled`),
/// `fusebox.retry_after_ms` when known, `fusebox.isolation_reason` when isolated) and sets the same attributes. A
/// transition this call made adds the event `fusebox.transition` (`fusebox.breaker.name`, `fusebox.transition.from`,
/// `fusebox.transition.to`, `fusebox.transition.reason`).
public enum FuseboxTracing {
    /// Annotates the active span of every guarded call of the process from now on.
    public static func install() { BreakerCallObservation.install(annotator) }

    private static let annotator = SpanAnnotator()

    /// Stops annotating.
    public static func uninstall() { BreakerCallObservation.install(nil) }
}

/// The observer ``FuseboxTracing/install()`` installs.
struct SpanAnnotator: BreakerCallObserver {
    private func activeSpan() -> (any Span)? {
        guard let context = ServiceContext.current else { return nil }
        return InstrumentationSystem.tracer.activeSpan(identifiedBy: context)
    }

    func admitted(breaker: String, adapter: AdapterKind, token: PermitToken) {
        guard let span = activeSpan() else { return }
        span.attributes["fusebox.breaker.name"] = breaker
        span.attributes["fusebox.breaker.adapter"] = adapter.rawValue
        span.attributes["fusebox.breaker.state"] = token.isProbe ? BreakerState.halfOpen.rawValue : BreakerState.closed.rawValue
        span.attributes["fusebox.breaker.probe"] = token.isProbe
    }

    func rejected(breaker: String, adapter: AdapterKind, error: FuseboxError) {
        guard let span = activeSpan() else { return }
        let state = error.state?.rawValue ?? "unknown"
        span.attributes["fusebox.breaker.name"] = breaker
        span.attributes["fusebox.breaker.adapter"] = adapter.rawValue
        span.attributes["fusebox.breaker.state"] = state
        span.attributes["fusebox.breaker.probe"] = false
        var attributes: SpanAttributes = [:]
        attributes["fusebox.breaker.name"] = breaker
        attributes["fusebox.breaker.state"] = state
        attributes["fusebox.rejection.code"] = "\(error.code)"
        if let wait = error.retryAfter { attributes["fusebox.retry_after_ms"] = Int(wait.milliseconds) }
        if let reason = error.isolationReason { attributes["fusebox.isolation_reason"] = reason }
        span.addEvent(SpanEvent(name: "fusebox.rejected", attributes: attributes))
    }

    func transitioned(breaker: String, _ transition: BreakerTransition) {
        guard let span = activeSpan() else { return }
        var attributes: SpanAttributes = [:]
        attributes["fusebox.breaker.name"] = breaker
        attributes["fusebox.transition.from"] = transition.from.rawValue
        attributes["fusebox.transition.to"] = transition.to.rawValue
        attributes["fusebox.transition.reason"] = transition.reason
        span.addEvent(SpanEvent(name: "fusebox.transition", attributes: attributes))
    }
}
