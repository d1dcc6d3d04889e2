import Foundation
import Fusebox

extension ConformanceScenario {
    private static func policy(_ edit: (inout BreakerPolicy) -> Void) -> BreakerPolicy {
        var policy = BreakerPolicy()
        edit(&policy)
        return policy
    }

    /// Trips on the first failure, so scenarios about open and half-open start quickly.
    private static func tripsOnFirstFailure(_ edit: (inout BreakerPolicy) -> Void = { _ in }) -> BreakerPolicy {
        policy {
            $0.failureRateThreshold = nil
            $0.consecutiveFailureThreshold = 1
            edit(&$0)
        }
    }

    /// Every scenario: each transition, each policy field, the boundaries.
    public static let all: [ConformanceScenario] = tripRules + windows + breakDurations + halfOpen + manualControl + modes + accounting
        + policyChanges + health

    /// The health score's inputs each adapter keeps (Docs/semantics.md, "Health score"): the window against the
    /// thresholds, and the transitions of the last ten minutes.
    public static let health: [ConformanceScenario] = [
        ConformanceScenario("the health score follows the window against the thresholds and the state's ceiling", policy: policy {
            $0.consecutiveFailureThreshold = 4
        }, [
            .expect([.healthScore(100), .recentTransitions(0)]),
            .succeed(8), .fail(2),
            // failure rate 0.2 of 0.5 over a full window: pressure 0.4; the streak 2 of 4: 0.5, the larger.
            .expect([.healthScore(75)]),
            .succeed(1), .expect([.healthScore(82)]),
            .fail(4), .expectState(.open), .expect([.healthScore(10), .recentTransitions(1)]),
            .advance(.seconds(30)), .expectState(.halfOpen), .expect([.healthScore(50), .recentTransitions(2)]),
            .isolate("maintenance"), .expect([.healthScore(0)]),
        ]),
        // Throttling sheds at random: the window is built before it is turned on, so every call of the script runs.
        ConformanceScenario("adaptive throttling: the shedding probability follows the window and the policy; no failure, no shedding", policy: policy {
            $0.failureRateThreshold = nil
            $0.consecutiveFailureThreshold = 12
        }, [
            .succeed(2), .fail(8), .expect([.throttleProbability(0), .healthScore(67)]),
            .updatePolicy(policy {
                $0.failureRateThreshold = nil
                $0.consecutiveFailureThreshold = 12
                $0.adaptiveThrottling = .init(multiplier: 2)
            }),
            // requests 10, accepts 2: (10 − 2 × 2) / 11; the health score loses 50 × that, and 50 × the streak 8 of 12.
            .expect([.throttleProbability(6.0 / 11.0), .healthScore(39)]),
            .updatePolicy(policy {
                $0.failureRateThreshold = nil
                $0.consecutiveFailureThreshold = 12
                $0.adaptiveThrottling = .init(multiplier: 4)
            }),
            .expect([.throttleProbability(2.0 / 11.0)]),
            .advance(.seconds(11)), .expect([.throttleProbability(0), .windowCalls(0)]),
        ]),
        ConformanceScenario("a relative threshold: the fixed one until the baseline is warm, then a multiple of the baseline, not below the floor", policy: policy {
            $0.failureRateThreshold = 0.5
            $0.relativeFailureRate = .init(factor: 4, floor: 0.05, horizon: .seconds(3600), warmupCalls: 100)
        }, [
            .succeed(50), .expect([.failureRateThresholdInForce(0.5)]),
            .succeed(150), .expect([.failureRateThresholdInForce(0.05)]),
            // A clean window; the baseline (0 failures in 200 calls, decayed) holds the threshold at the floor: one
            // failure in ten trips it, where the fixed 0.5 would have waited for five.
            .advance(.seconds(11)), .succeed(18), .expectState(.closed), .fail(1), .expectState(.open),
        ]),
        ConformanceScenario("a relative threshold: a dependency that always fails 8 % does not trip at 20 %, and the baseline does not learn while isolated", policy: policy {
            $0.failureRateThreshold = 0.1
            $0.relativeFailureRate = .init(factor: 4, floor: 0.02, horizon: .seconds(3600), warmupCalls: 50)
        }, [
            .succeed(46), .fail(4), .expect([.failureRateThresholdInForce(0.32)]),
            .advance(.seconds(11)), .succeed(8), .fail(2), .expectState(.closed),
            .expect([.failureRateThresholdInForce(4 * (4 * exp(-11.0 / 3600) + 2) / (50 * exp(-11.0 / 3600) + 10))]),
            .isolate("maintenance"), .rejected(3, in: .isolated), .reset,
            .expect([.failureRateThresholdInForce(4 * (4 * exp(-11.0 / 3600) + 2) / (50 * exp(-11.0 / 3600) + 10))]),
        ]),
        ConformanceScenario("transitions in the last ten minutes cost 10 each beyond three, and leave the count after ten minutes", policy: BreakerPolicy(), [
            .reset, .forceHalfOpen, .reset, .expect([.recentTransitions(3), .healthScore(100)]),
            .forceHalfOpen, .reset, .expect([.recentTransitions(5), .healthScore(80)]),
            .forceHalfOpen, .reset, .forceHalfOpen, .reset, .expect([.recentTransitions(9), .healthScore(70)]),
            .advance(.seconds(601)), .expect([.recentTransitions(0), .healthScore(100)]),
        ]),
    ]

    /// A policy changed while the breaker runs (a reloaded configuration, an operator's override).
    public static let policyChanges: [ConformanceScenario] = [
        ConformanceScenario("a live policy change keeps the streak; the new threshold trips at the next failure", policy: tripsOnFirstFailure {
            $0.consecutiveFailureThreshold = 5
        }, [
            .fail(3), .expectState(.closed), .expect([.consecutiveFailures(3)]),
            .updatePolicy(tripsOnFirstFailure { $0.consecutiveFailureThreshold = 2 }),
            .fail(1), .expectState(.open), .expect([.attempt(1), .version(1)]),
        ]),
        ConformanceScenario("a live mode change moves the breaker between base states", policy: BreakerPolicy(), [
            .succeed(2),
            .updatePolicy(policy { $0.mode = .metricsOnly }), .expectState(.metricsOnly),
            .fail(20), .expectState(.metricsOnly),
            .updatePolicy(BreakerPolicy()), .expectState(.closed),
            .expect([.totals(calls: 22, successes: 2, failures: 20, ignored: 0, rejected: 0, slow: 0)]),
        ]),
    ]

    /// Failure ratio, consecutive failures, slow-call ratio, with their boundaries.
    public static let tripRules: [ConformanceScenario] = [
        ConformanceScenario("failure ratio trips exactly at the threshold", policy: BreakerPolicy(), [
            .succeed(5), .fail(4),
            .expect([.windowCalls(9), .windowFailures(4), .failureRate(4.0 / 9.0), .consecutiveFailures(4), .version(0)]),
            .expectState(.closed),
            .fail(1),
            .expectState(.open),
            .expect([.attempt(1), .timeUntilProbe(.seconds(30)), .windowCalls(0), .version(1)]),
            .rejected(2, in: .open, retryAfter: .seconds(30)),
            .expect([.totals(calls: 10, successes: 5, failures: 5, ignored: 0, rejected: 2, slow: 0), .errorCount("ConformanceErrorA", 5)]),
            .expectTimeline([(.closed, .open)]),
        ]),
        ConformanceScenario("one call below minimumThroughput never trips", policy: BreakerPolicy(), [
            .fail(9), .expectState(.closed), .expect([.failureRate(1), .windowCalls(9)]),
            .fail(1), .expectState(.open),
        ]),
        ConformanceScenario("just below the failure ratio stays closed", policy: BreakerPolicy(), [
            .fail(4), .succeed(6), .expectState(.closed),
            .fail(1), .expectState(.closed), .expect([.windowCalls(11), .windowFailures(5)]),
            .fail(1), .expectState(.open),
        ]),
        ConformanceScenario("consecutive failures: a success resets the streak", policy: policy {
            $0.failureRateThreshold = nil
            $0.consecutiveFailureThreshold = 3
        }, [
            .fail(2), .succeed(1), .fail(2),
            .expect([.consecutiveFailures(2)]), .expectState(.closed),
            .fail(1), .expectState(.open), .expect([.consecutiveFailures(0)]),
        ]),
        ConformanceScenario("slow-call ratio trips; a call of exactly slowCallDuration is not slow", policy: policy {
            $0.failureRateThreshold = nil
            $0.slowCallRateThreshold = 0.5
            $0.slowCallDuration = .seconds(1)
            $0.minimumThroughput = 4
        }, [
            .succeed(2, taking: .seconds(1)),
            .expect([.windowSlowCalls(0), .windowCalls(2)]),
            .succeed(1, taking: .milliseconds(1001)),
            .expectState(.closed), .expect([.windowSlowCalls(1), .slowCallRate(1.0 / 3.0)]),
            .succeed(1, taking: .seconds(2)),
            .expectState(.open),
            .expect([.totals(calls: 4, successes: 4, failures: 0, ignored: 0, rejected: 0, slow: 2)]),
        ]),
        ConformanceScenario("a slow failure counts in both ratios", policy: policy {
            $0.failureRateThreshold = 0.9
            $0.slowCallRateThreshold = 0.5
            $0.slowCallDuration = .milliseconds(100)
            $0.minimumThroughput = 2
        }, [
            .succeed(1), .fail(1, taking: .milliseconds(200)),
            .expectState(.open),
            .expect([.totals(calls: 2, successes: 1, failures: 1, ignored: 0, rejected: 0, slow: 1)]),
        ]),
    ]

    /// Time buckets ageing out, the count window wrapping.
    public static let windows: [ConformanceScenario] = [
        ConformanceScenario("time window: failures still inside the window count", policy: policy { $0.minimumThroughput = 4 }, [
            .fail(3), .advance(.seconds(9)), .succeed(1), .expectState(.open),
        ]),
        ConformanceScenario("time window: a whole bucket ages out", policy: policy { $0.minimumThroughput = 4 }, [
            .fail(3), .advance(.seconds(10)), .succeed(1),
            .expectState(.closed), .expect([.windowCalls(1), .windowFailures(0)]),
            .succeed(3), .expectState(.closed), .expect([.windowCalls(4), .failureRate(0)]),
        ]),
        ConformanceScenario("time window: buckets age out one by one", policy: policy { $0.minimumThroughput = 100 }, [
            .fail(3), .advance(.seconds(5)), .fail(1), .advance(.seconds(5)),
            .expect([.windowCalls(1), .windowFailures(1)]),
            .advance(.seconds(5)), .expect([.windowCalls(0)]),
        ]),
        ConformanceScenario("count window wraps: the oldest call drops out", policy: policy {
            $0.window = .count(5)
            $0.minimumThroughput = 5
            $0.failureRateThreshold = 0.6
        }, [
            .succeed(2), .fail(2), .succeed(1),
            .expectState(.closed), .expect([.windowCalls(5), .failureRate(0.4)]),
            .fail(1),
            .expectState(.open),
        ]),
        ConformanceScenario("count window ignores time", policy: policy {
            $0.window = .count(4)
            $0.minimumThroughput = 4
        }, [
            .fail(2), .advance(.seconds(3600)), .succeed(1), .fail(1),
            .expectState(.open),
        ]),
    ]

    /// Every break-duration kind, with attempts counted and reset on close.
    public static let breakDurations: [ConformanceScenario] = [
        ConformanceScenario("fixed break: rejected until exactly its end, then one probe", policy: tripsOnFirstFailure(), [
            .fail(1), .expectState(.open),
            .advance(.milliseconds(29_999)), .rejected(1, in: .open, retryAfter: .milliseconds(1)),
            .advance(.milliseconds(1)),
            .hold("probe", probe: true), .expectState(.halfOpen),
            .rejected(1, in: .halfOpen),
            .settle("probe", .success),
            .expectState(.closed), .expect([.attempt(0), .version(3)]),
            .expectTimeline([(.closed, .open), (.open, .halfOpen), (.halfOpen, .closed)]),
        ]),
        ConformanceScenario("exponential break, capped, reset on close", policy: tripsOnFirstFailure {
            $0.breakDuration = .exponential(base: .seconds(1), factor: 2, maximum: .seconds(5))
        }, [
            .fail(1), .expect([.attempt(1), .timeUntilProbe(.seconds(1))]),
            .advance(.seconds(1)), .fail(1), .expect([.attempt(2), .timeUntilProbe(.seconds(2))]),
            .advance(.seconds(2)), .fail(1), .expect([.attempt(3), .timeUntilProbe(.seconds(4))]),
            .advance(.seconds(4)), .fail(1), .expect([.attempt(4), .timeUntilProbe(.seconds(5))]),
            .advance(.seconds(5)), .succeed(1), .expectState(.closed), .expect([.attempt(0)]),
            .fail(1), .expect([.attempt(1), .timeUntilProbe(.seconds(1))]),
        ]),
        ConformanceScenario("linear break, capped", policy: tripsOnFirstFailure {
            $0.breakDuration = .linear(base: .seconds(1), increment: .seconds(2), maximum: .seconds(4))
        }, [
            .fail(1), .expect([.timeUntilProbe(.seconds(1))]),
            .advance(.seconds(1)), .fail(1), .expect([.timeUntilProbe(.seconds(3))]),
            .advance(.seconds(3)), .fail(1), .expect([.timeUntilProbe(.seconds(4))]),
        ]),
        ConformanceScenario("adaptive break: 30 s, 30 s, 60 s × 3, then 120 s", policy: tripsOnFirstFailure { $0.breakDuration = .adaptive }, [
            .fail(1), .expect([.timeUntilProbe(.seconds(30))]),
            .advance(.seconds(30)), .fail(1), .expect([.timeUntilProbe(.seconds(30)), .attempt(2)]),
            .advance(.seconds(30)), .fail(1), .expect([.timeUntilProbe(.seconds(60)), .attempt(3)]),
            .advance(.seconds(60)), .fail(1), .expect([.timeUntilProbe(.seconds(60))]),
            .advance(.seconds(60)), .fail(1), .expect([.timeUntilProbe(.seconds(60)), .attempt(5)]),
            .advance(.seconds(60)), .fail(1), .expect([.timeUntilProbe(.seconds(120)), .attempt(6)]),
        ]),
        ConformanceScenario("custom break: a function of the attempt", policy: tripsOnFirstFailure {
            $0.breakDuration = .custom(id: "seven-per-attempt") { .seconds(7 * $0) }
        }, [
            .fail(1), .expect([.timeUntilProbe(.seconds(7))]),
            .advance(.seconds(7)), .fail(1), .expect([.timeUntilProbe(.seconds(14))]),
        ]),
    ]

    /// Probe permits, success threshold, probe failure, half-open timeout, ignored probes.
    public static let halfOpen: [ConformanceScenario] = [
        ConformanceScenario("half-open permits run out; an ignored probe gives its permit back", policy: tripsOnFirstFailure {
            $0.permittedCallsInHalfOpen = 2
            $0.successThreshold = 2
            $0.breakDuration = .fixed(.seconds(1))
        }, [
            .fail(1), .advance(.seconds(1)),
            .hold("a", probe: true), .hold("b", probe: true),
            .rejected(1, in: .halfOpen), .expect([.probesInFlight(2)]),
            .settle("a", .ignored), .expect([.probesInFlight(1)]), .expectState(.halfOpen),
            .hold("c", probe: true),
            .settle("b", .success), .expectState(.halfOpen),
            .settle("c", .success), .expectState(.closed),
            .expect([.totals(calls: 4, successes: 2, failures: 1, ignored: 1, rejected: 1, slow: 0)]),
        ]),
        ConformanceScenario("successThreshold probes are needed to close", policy: tripsOnFirstFailure {
            $0.successThreshold = 3
            $0.breakDuration = .fixed(.seconds(1))
        }, [
            .fail(1), .advance(.seconds(1)),
            .succeed(2), .expectState(.halfOpen),
            .succeed(1), .expectState(.closed),
        ]),
        ConformanceScenario("any probe failure reopens, even after successes", policy: tripsOnFirstFailure {
            $0.permittedCallsInHalfOpen = 2
            $0.successThreshold = 2
            $0.breakDuration = .exponential(base: .seconds(1), factor: 3, maximum: .seconds(100))
        }, [
            .fail(1), .advance(.seconds(1)),
            .hold("a", probe: true), .hold("b", probe: true),
            .settle("a", .success), .settle("b", .failure),
            .expectState(.open), .expect([.attempt(2), .timeUntilProbe(.seconds(3))]),
        ]),
        ConformanceScenario("a half-open breaker whose probe never reports reopens after maxHalfOpenDuration", policy: tripsOnFirstFailure {
            $0.breakDuration = .fixed(.seconds(1))
            $0.maxHalfOpenDuration = .seconds(5)
        }, [
            .fail(1), .advance(.seconds(1)),
            .hold("lost", probe: true),
            .advance(.milliseconds(4999)), .rejected(1, in: .halfOpen),
            .advance(.milliseconds(1)), .rejected(1, in: .open, retryAfter: .seconds(1)),
            .expect([.attempt(2)]),
            .settle("lost", .success), .expectState(.open),
            .expect([.totals(calls: 2, successes: 1, failures: 1, ignored: 0, rejected: 2, slow: 0)]),
        ]),
    ]

    /// Isolation over every state, reset, forced half-open.
    public static let manualControl: [ConformanceScenario] = [
        ConformanceScenario("isolation holds over every state until reset", policy: tripsOnFirstFailure { $0.breakDuration = .fixed(.seconds(10)) }, [
            .isolate("maintenance"),
            .rejected(1, in: .isolated, reason: "maintenance"), .expect([.isolationReason("maintenance"), .timeUntilProbe(nil)]),
            .advance(.seconds(3600)), .expectState(.isolated),
            .reset, .expectState(.closed), .expect([.isolationReason(nil)]),
            .fail(1), .expectState(.open),
            .isolate("db migration"), .advance(.seconds(20)),
            .rejected(1, in: .isolated, reason: "db migration"),
            .forceHalfOpen, .expectState(.halfOpen),
            .isolate("again"), .expectState(.isolated),
            .reset, .expectState(.closed), .expect([.attempt(0)]),
            .expectTimeline([
                (.closed, .isolated), (.isolated, .closed), (.closed, .open), (.open, .isolated),
                (.isolated, .halfOpen), (.halfOpen, .isolated), (.isolated, .closed),
            ]),
        ]),
        ConformanceScenario("an isolation for a time ends by itself, as a reset would; rejections carry the time left", policy: tripsOnFirstFailure {
            $0.breakDuration = .fixed(.seconds(10))
        }, [
            .fail(1), .expectState(.open),
            .isolateFor("deploy", .seconds(30)),
            .rejected(1, in: .isolated, retryAfter: .seconds(30), reason: "deploy"),
            .expect([.isolationReason("deploy"), .isolationEndsIn(.seconds(30)), .timeUntilProbe(nil), .attempt(1)]),
            .advance(.seconds(29)), .rejected(1, in: .isolated, retryAfter: .seconds(1)), .expect([.isolationEndsIn(.seconds(1))]),
            .advance(.seconds(1)), .expectState(.closed), .expect([.isolationReason(nil), .isolationEndsIn(nil), .attempt(0)]),
            .succeed(1),
            .isolateFor("short", .seconds(5)), .isolate("until reset"), .advance(.seconds(60)), .expectState(.isolated),
            .expect([.isolationEndsIn(nil)]),
            .reset, .expectState(.closed),
            .expectTimeline([
                (.closed, .open), (.open, .isolated), (.isolated, .closed), (.closed, .isolated), (.isolated, .isolated),
                (.isolated, .closed),
            ]),
        ]),
        ConformanceScenario("reset clears the window and the streak; forceHalfOpen from closed", policy: policy { $0.consecutiveFailureThreshold = 5 }, [
            .fail(4), .reset,
            .expect([.windowCalls(0), .consecutiveFailures(0)]),
            .fail(4), .expectState(.closed),
            .forceHalfOpen, .expect([.windowCalls(0), .probesInFlight(0)]),
            .hold("p", probe: true), .settle("p", .success),
            .expectState(.closed),
        ]),
        ConformanceScenario("a straggler from before a reset counts in totals only", policy: tripsOnFirstFailure {
            $0.consecutiveFailureThreshold = 2
        }, [
            .hold("old", probe: false), .reset,
            .settle("old", .failure),
            .expectState(.closed),
            .expect([.consecutiveFailures(0), .windowCalls(0), .totals(calls: 1, successes: 0, failures: 1, ignored: 0, rejected: 0, slow: 0)]),
            .fail(1), .expect([.consecutiveFailures(1)]), .expectState(.closed),
        ]),
    ]

    /// Metrics-only and disabled.
    public static let modes: [ConformanceScenario] = [
        ConformanceScenario("metrics-only records and never trips", policy: tripsOnFirstFailure { $0.mode = .metricsOnly }, [
            .expectState(.metricsOnly),
            .fail(20), .expectState(.metricsOnly),
            .expect([.windowCalls(20), .failureRate(1), .totals(calls: 20, successes: 0, failures: 20, ignored: 0, rejected: 0, slow: 0)]),
        ]),
        ConformanceScenario("shadow decides as normal, never rejects, and counts what it would have rejected", policy: tripsOnFirstFailure {
            $0.mode = .shadow
            $0.breakDuration = .fixed(.seconds(10))
            $0.permittedCallsInHalfOpen = 1
        }, [
            .expectState(.closed),
            .fail(1), .expectState(.open), .expect([.attempt(1), .wouldReject(0)]),
            // Rejected by the breaker, run anyway: their outcomes are not recorded.
            .fail(3), .succeed(2), .expectState(.open),
            .expect([.wouldReject(5), .totals(calls: 1, successes: 0, failures: 1, ignored: 0, rejected: 0, slow: 0)]),
            .advance(.seconds(10)),
            .hold("probe", probe: true), .succeed(2), .expect([.wouldReject(7), .probesInFlight(1)]),
            .settle("probe", .success), .expectState(.closed),
            .expect([.wouldReject(7), .totals(calls: 2, successes: 1, failures: 1, ignored: 0, rejected: 0, slow: 0)]),
            .isolate("tried"), .succeed(1), .expect([.wouldReject(8)]), .expectState(.isolated),
        ]),
        ConformanceScenario("disabled admits everything and records nothing", policy: tripsOnFirstFailure { $0.mode = .disabled }, [
            .expectState(.disabled),
            .fail(20), .succeed(5), .expectState(.disabled),
            .expect([.windowCalls(0), .totals(calls: 0, successes: 0, failures: 0, ignored: 0, rejected: 0, slow: 0)]),
        ]),
    ]

    /// Ignored outcomes, error breakdown.
    public static let accounting: [ConformanceScenario] = [
        ConformanceScenario("ignored outcomes stay out of the window", policy: BreakerPolicy(), [
            .ignore(20), .fail(9), .expectState(.closed),
            .expect([.windowCalls(9), .totals(calls: 29, successes: 0, failures: 9, ignored: 20, rejected: 0, slow: 0)]),
        ]),
        ConformanceScenario("failures are broken down by error type", policy: policy { $0.minimumThroughput = 100 }, [
            .fail(2), .fail(1, otherError: true),
            .expect([.errorCount("ConformanceErrorA", 2), .errorCount("ConformanceErrorB", 1)]),
        ]),
    ]
}
