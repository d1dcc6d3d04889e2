import Fusebox
import Testing
import TestKinds

/// One row of the table in Docs/semantics.md ("Health score").
struct HealthCase: Sendable, CustomTestStringConvertible {
    var what: String
    var state: BreakerState = .closed
    var calls = 0
    var failures = 0
    var slow = 0
    var streak = 0
    var transitions = 0
    var fallback = false
    var policy: @Sendable (inout BreakerPolicy) -> Void = { _ in }
    var score: Int

    var testDescription: String { what }

    var snapshot: BreakerSnapshot {
        var rules = BreakerPolicy()
        policy(&rules)
        return BreakerSnapshot(
            name: "health", state: state, version: transitions, timeInState: .seconds(1), windowCalls: calls, windowFailures: failures,
            windowSlowCalls: slow, consecutiveFailures: streak, errorCounts: [:], totals: BreakerTotals(), timeUntilProbe: nil,
            isolationReason: nil, attempt: 0, probesInFlight: 0, probeSuccesses: 0, lastReason: "test", recentTransitions: transitions,
            isOnStoreDownFallback: fallback, health: BreakerHealth(policy: rules))
    }
}

@Suite("Health score", .kind(.unit))
struct HealthScoreTests {
    @Test("each row of the table in Docs/semantics.md", arguments: [
        HealthCase(what: "closed, nothing in the window", score: 100),
        HealthCase(what: "closed, 2 of 10 calls failed (0.2 of a 0.5 threshold)", calls: 10, failures: 2, score: 80),
        HealthCase(what: "closed, 2 of 4 calls failed (rate at the threshold, window 4 of 10 calls)", calls: 4, failures: 2, score: 80),
        HealthCase(what: "closed, 3 failures in a row of a threshold of 5", calls: 3, failures: 3, streak: 3,
                   policy: { $0.failureRateThreshold = nil; $0.consecutiveFailureThreshold = 5 }, score: 70),
        HealthCase(what: "closed, 3 of 10 calls slow (0.3 of a 0.6 threshold)", calls: 10, slow: 3,
                   policy: { $0.slowCallRateThreshold = 0.6 }, score: 88),
        HealthCase(what: "metrics-only, every call failing (pressure capped at 1)", state: .metricsOnly, calls: 20, failures: 20, score: 50),
        HealthCase(what: "half-open", state: .halfOpen, transitions: 2, score: 50),
        HealthCase(what: "open", state: .open, transitions: 1, score: 10),
        HealthCase(what: "open and flapping", state: .open, transitions: 7, score: 10),
        HealthCase(what: "isolated", state: .isolated, transitions: 1, score: 0),
        HealthCase(what: "disabled", state: .disabled, score: 100),
        HealthCase(what: "closed after one trip and its recovery (3 transitions in 10 minutes)", transitions: 3, score: 100),
        HealthCase(what: "closed, 5 transitions in 10 minutes", transitions: 5, score: 80),
        HealthCase(what: "closed, 9 transitions in 10 minutes (flapping costs at most 30)", transitions: 9, score: 70),
        HealthCase(what: "closed, this instance on the store-down fallback", fallback: true, score: 75),
        HealthCase(what: "closed, 4 of 10 failed, 5 transitions, on the fallback", calls: 10, failures: 4, transitions: 5, fallback: true, score: 15),
        HealthCase(what: "closed, every rule at its threshold and everything else wrong: never below 0", calls: 10, failures: 10, slow: 10,
                   transitions: 20, fallback: true, policy: { $0.slowCallRateThreshold = 0.5 }, score: 0),
    ])
    func row(_ row: HealthCase) {
        #expect(row.snapshot.healthScore == row.score)
    }

    @Test("without a policy only the state, flapping and the fallback count")
    func unknownPolicy() {
        var snapshot = HealthCase(what: "", calls: 10, failures: 10, streak: 10, score: 0).snapshot
        snapshot.rescore(against: .unknownPolicy)
        #expect(snapshot.healthScore == 100)
        snapshot.isOnStoreDownFallback = true
        snapshot.rescore(against: .unknownPolicy)
        #expect(snapshot.healthScore == 75)
    }

    @Test("the terms add up to the score")
    func terms() {
        let row = HealthCase(what: "", calls: 10, failures: 4, slow: 5, transitions: 4, policy: { $0.slowCallRateThreshold = 1 }, score: 0)
        var rules = BreakerPolicy()
        rules.slowCallRateThreshold = 1
        let terms = BreakerHealth(policy: rules).assess(row.snapshot)
        #expect(terms.ceiling == 100)
        #expect(abs(terms.failurePressure - 0.8) < 1e-9)
        #expect(abs(terms.slowPressure - 0.5) < 1e-9)
        #expect(terms.flapping == 10)
        #expect(terms.fallback == 0)
        #expect(terms.score == 38)  // 100 − 40 − 12.5 − 10 = 37.5, rounded half away from zero
        #expect(row.snapshot.healthScore == terms.score)
    }

    @Test("a local breaker's score follows its state machine: failures lower it, a trip caps it, time forgets flapping")
    func stateMachine() throws {
        var policy = BreakerPolicy()
        policy.consecutiveFailureThreshold = 4
        var machine = BreakerStateMachine(name: "m", policy: policy, now: 0)
        func call(_ failing: Bool, at now: Int64) {
            guard case .admitted(let token) = machine.acquire(now: now).0 else { return }
            _ = machine.record(failing ? .failure(Boom.self) : .success, token: token, now: now)
        }
        #expect(machine.snapshot(now: 1).0.healthScore == 100)
        for _ in 0..<8 { call(false, at: 2) }
        call(true, at: 3)
        call(true, at: 3)
        #expect(machine.snapshot(now: 4).0.healthScore == 75)
        for _ in 0..<2 { call(true, at: 5) }
        let open = machine.snapshot(now: 6).0
        #expect(open.state == .open && open.healthScore == 10 && open.recentTransitions == 1)
        let later = machine.snapshot(now: 6 + Duration.seconds(601).nanoseconds).0
        #expect(later.state == .halfOpen && later.recentTransitions == 1, "the trip left the count; the move to half-open did not")
        #expect(later.healthScore == 50)
    }
}

private struct Boom: Error {}
