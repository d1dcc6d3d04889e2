import Fusebox
import Prometheus

/// The Prometheus series drawn from a survey, written through a swift-prometheus registry made for one scrape.
///
/// Two sets (Docs/http-api.md maps every name to the `circuit_breaker_*` names of the usage guides):
/// - **derived**, always: `fusebox_breaker_failure_rate`, `fusebox_breaker_slow_call_rate`,
///   `fusebox_breaker_window_calls`, `fusebox_breaker_time_in_state_seconds`, `fusebox_breaker_health_score`,
///   `fusebox_breaker_throttle_probability`, `fusebox_breaker_isolated` (0 or 1),
///   `fusebox_breaker_store_down_fallback` (0 or 1), `fusebox_breaker_recent_transitions`, `fusebox_breakers` (by
///   `state`), `fusebox_health` (0 healthy, 1 degraded, 2 critical), `fusebox_store_up` (1: the breakers could be
///   read; a scrape while they cannot writes 0, see `AdminRoutes`);
/// - **counted**, when no registry of the breakers' own metrics is exported beside them (`fusebox serve`): the
///   names the breakers record through swift-metrics, `fusebox_breaker_state`, `fusebox_calls_total` (by
///   `outcome`), `fusebox_slow_calls_total`, `fusebox_rejections_total`, `fusebox_would_reject_total`, here fleet-wide from the totals in Redis,
///   and `fusebox_transitions_total` (by `from`, `to`) from the transitions seen since the server started.
enum FleetMetrics {
    static func emit(
        survey: BreakerSurvey, health: FleetHealth, counted: Bool, transitions: [TransitionKey: Int]?, into buffer: inout [UInt8]
    ) {
        let registry = PrometheusCollectorRegistry()
        func descriptor(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "fusebox", metricName: name, unitName: unit, helpText: help)
        }
        let failureRate = descriptor("breaker_failure_rate", "", "Failures / calls in the sliding window (0 when empty).")
        let slowRate = descriptor("breaker_slow_call_rate", "", "Slow calls / calls in the sliding window (0 when empty).")
        let windowCalls = descriptor("breaker_window_calls", "", "Calls in the sliding window.")
        let timeInState = descriptor("breaker_time_in_state", "seconds", "Time since the breaker entered its state.")
        let healthScore = descriptor("breaker_health_score", "", "0-100: the breaker's health score (Docs/semantics.md).")
        let throttle = descriptor("breaker_throttle_probability", "", "0-1: the share of calls adaptive throttling sheds now.")
        let isolated = descriptor("breaker_isolated", "", "1 while an operator isolates the breaker, else 0.")
        let fallback = descriptor(
            "breaker_store_down_fallback", "", "1 while the instance serving the scrape decides the breaker without Redis, else 0.")
        let recent = descriptor("breaker_recent_transitions", "", "Transitions in the last 10 minutes (fleet-wide with Redis, up to 30).")
        let state = descriptor("breaker_state", "", "0 closed, 1 half-open, 2 open or isolated.")
        let calls = descriptor("calls", "total", "Calls whose outcome was recorded, by outcome.")
        let slow = descriptor("slow_calls", "total", "Calls slower than the policy's slow-call duration.")
        let rejections = descriptor("rejections", "total", "Calls rejected without running.")
        let wouldReject = descriptor("would_reject", "total", "Calls shadow mode let run although the breaker rejected them.")
        for status in survey.breakers {
            let snapshot = status.snapshot
            let breaker = [("breaker", snapshot.name)]
            registry.makeGauge(descriptor: failureRate, labels: breaker).set(snapshot.failureRate)
            registry.makeGauge(descriptor: slowRate, labels: breaker).set(snapshot.slowCallRate)
            registry.makeGauge(descriptor: windowCalls, labels: breaker).set(Int64(snapshot.windowCalls))
            registry.makeGauge(descriptor: timeInState, labels: breaker).set(snapshot.timeInState.seconds)
            registry.makeGauge(descriptor: healthScore, labels: breaker).set(Int64(snapshot.healthScore))
            registry.makeGauge(descriptor: throttle, labels: breaker).set(snapshot.throttleProbability)
            registry.makeGauge(descriptor: isolated, labels: breaker).set(Int64(snapshot.state == .isolated ? 1 : 0))
            registry.makeGauge(descriptor: fallback, labels: breaker).set(Int64(snapshot.isOnStoreDownFallback ? 1 : 0))
            registry.makeGauge(descriptor: recent, labels: breaker).set(Int64(snapshot.recentTransitions))
            guard counted else { continue }
            registry.makeGauge(descriptor: state, labels: breaker).set(Int64(snapshot.state.gaugeValue))
            let totals = snapshot.totals
            for (outcome, count) in [("success", totals.successes), ("failure", totals.failures), ("ignored", totals.ignored)] {
                registry.makeCounter(descriptor: calls, labels: breaker + [("outcome", outcome)]).increment(by: Int64(count))
            }
            registry.makeCounter(descriptor: slow, labels: breaker).increment(by: Int64(totals.slow))
            registry.makeCounter(descriptor: rejections, labels: breaker).increment(by: Int64(totals.rejected))
            registry.makeCounter(descriptor: wouldReject, labels: breaker).increment(by: Int64(totals.wouldReject))
        }
        if counted, let transitions {
            let transitionsTotal = descriptor("transitions", "total", "State transitions, by from and to.")
            for (key, count) in transitions.sorted(by: { ($0.key.name, $0.key.from, $0.key.to) < ($1.key.name, $1.key.from, $1.key.to) }) {
                registry.makeCounter(descriptor: transitionsTotal, labels: [("breaker", key.name), ("from", key.from), ("to", key.to)])
                    .increment(by: Int64(count))
            }
        }
        let byState = descriptor("breakers", "", "Breakers by state.")
        for (name, count) in [
            ("closed", health.closed), ("open", health.open), ("half_open", health.halfOpen), ("isolated", health.isolated),
            ("disabled", health.disabled), ("metrics_only", health.metricsOnly), ("unreadable", health.unreadable),
        ] {
            registry.makeGauge(descriptor: byState, labels: [("state", name)]).set(Int64(count))
        }
        let verdict = descriptor("health", "", "0 healthy, 1 degraded, 2 critical (the rule of GET /health).")
        registry.makeGauge(descriptor: verdict).set(Int64(health.verdict == .healthy ? 0 : health.verdict == .degraded ? 1 : 2))
        registry.makeGauge(descriptor: descriptor("store_up", "", "1: the breakers' store could be read for this scrape; 0: it could not.")).set(Int64(1))
        registry.emit(into: &buffer)
    }
}
