import Fusebox
import FuseboxLocking
import FuseboxTestKit
import Logging
import Metrics
import MetricsTestKit
import Synchronization
import Testing
import TestKinds

struct ServiceUnavailable: Error {}
struct BadRequest: Error {}

private func makeRegistry(clock: ManualClock = ManualClock(), logger: Logger = Logger(label: "test")) -> BreakerRegistry {
    BreakerRegistry(adapter: LocalAdapter(clock: clock), logger: logger)
}

private func tripsOnFirstFailure(_ edit: (inout BreakerPolicy) -> Void = { _ in }) -> BreakerPolicy {
    var policy = BreakerPolicy()
    policy.failureRateThreshold = nil
    policy.consecutiveFailureThreshold = 1
    edit(&policy)
    return policy
}

/// `true` when the breaker rejects a call now (an admitted permit is dropped, i.e. released as ignored).
private func isRejected(_ breaker: CircuitBreaker) -> Bool {
    if case .none = (try? breaker.acquire()) { true } else { false }
}

@Suite("Breaker handle and registry", .kind(.integration))
struct CircuitBreakerTests {
    @Test("run returns the value, rethrows the error, and rejects with name, state and time to the next probe")
    func runAndReject() async throws {
        let clock = ManualClock()
        let breaker = try makeRegistry(clock: clock).breaker("payments", policy: tripsOnFirstFailure { $0.breakDuration = .fixed(.seconds(4)) })
        #expect(try await breaker.run { 42 } == 42)
        await #expect(throws: ServiceUnavailable.self) { try await breaker.run { () async throws -> Int in throw ServiceUnavailable() } }
        clock.advance(by: .milliseconds(800))
        var ran = false
        do {
            _ = try await breaker.run { 1 }
            ran = true
        } catch let error as FuseboxError {
            #expect(error.code == .circuitOpen)
            #expect(error.breakerName == "payments")
            #expect(error.state == .open)
            #expect(error.retryAfter == .milliseconds(3200))
            #expect(error.message == "circuit 'payments' is OPEN; next probe in 3.2 s")
        }
        #expect(!ran)
    }

    @Test("an isolated breaker's rejection carries the reason")
    func isolationReason() async throws {
        let breaker = try makeRegistry().breaker("search")
        try await breaker.isolate(reason: "maintenance until 14:00")
        #expect {
            _ = try breaker.acquire()
        } throws: { error in
            let error = error as! FuseboxError
            return error.state == .isolated && error.isolationReason == "maintenance until 14:00"
                && error.message.contains("ISOLATED (maintenance until 14:00)") && error.retryAfter == nil
        }
    }

    @Test("fallback gets the rejection or the error")
    func fallback() async throws {
        let breaker = try makeRegistry().breaker("inventory", policy: tripsOnFirstFailure())
        let first = await breaker.run({ () async throws -> String in throw ServiceUnavailable() }, fallback: { error in "fallback: \(type(of: error))" })
        #expect(first == "fallback: ServiceUnavailable")
        let second = await breaker.run({ "live" }, fallback: { error in "fallback: \((error as? FuseboxError)?.code.description ?? "?")" })
        #expect(second == "fallback: circuit open")
    }

    @Test("a result predicate counts a returned value as a failure")
    func resultPredicate() async throws {
        let breaker = try makeRegistry().breaker("http", policy: tripsOnFirstFailure())
        let status = try await breaker.run(isFailure: { $0 >= 500 }) { 503 }
        #expect(status == 503)
        let snapshot = try await breaker.snapshot()
        #expect(snapshot.state == .open)
        #expect(snapshot.errorCounts == ["UnacceptableResult": 1])
    }

    @Test("a call over its timeout is cancelled and counts as a failure")
    func callTimeout() async throws {
        let breaker = try makeRegistry().breaker("slow", policy: tripsOnFirstFailure { $0.callTimeout = .milliseconds(50) })
        let cancelled = Atomic<Bool>(false)
        let started = ContinuousClock.now
        await #expect {
            try await breaker.run {
                do {
                    try await Task.sleep(for: .seconds(10))
                } catch {
                    cancelled.store(true, ordering: .relaxed)
                    throw error
                }
                return 1
            }
        } throws: { ($0 as? FuseboxError)?.code == .callTimedOut }
        #expect(ContinuousClock.now - started < .seconds(5))
        let wasCancelled = cancelled.load(ordering: .relaxed)
        #expect(wasCancelled)
        let snapshot = try await breaker.snapshot()
        #expect(snapshot.state == .open)
        #expect(snapshot.errorCounts == ["CallTimedOut": 1])
    }

    @Test("classification: CancellationError and chosen types are ignored")
    func classification() async throws {
        let breaker = try makeRegistry().breaker("classified", policy: tripsOnFirstFailure { $0.classification = .ignoring([BadRequest.self]) })
        await #expect(throws: BadRequest.self) { try await breaker.run { () async throws -> Int in throw BadRequest() } }
        await #expect(throws: CancellationError.self) { try await breaker.run { () async throws -> Int in throw CancellationError() } }
        var snapshot = try await breaker.snapshot()
        #expect(snapshot.state == .closed)
        #expect(snapshot.totals.ignored == 2)
        await #expect(throws: ServiceUnavailable.self) { try await breaker.run { () async throws -> Int in throw ServiceUnavailable() } }
        snapshot = try await breaker.snapshot()
        #expect(snapshot.state == .open)
    }

    @Test("a result flagged by isFailure and a call timeout are failures whatever the error classification says")
    func breakerVerdictsBypassClassification() async throws {
        struct PaymentError: Error {}
        let onlyPayments = BreakerPolicy.Classification.failures(where: { $0 is PaymentError })
        let flagged = try makeRegistry().breaker("flagged", policy: tripsOnFirstFailure { $0.classification = onlyPayments })
        let status = try await flagged.run(isFailure: { $0 >= 500 }) { 503 }
        #expect(status == 503)
        var snapshot = try await flagged.snapshot()
        #expect(snapshot.totals.failures == 1 && snapshot.totals.ignored == 0, "\(snapshot.totals)")
        #expect(snapshot.state == .open)

        let slow = try makeRegistry().breaker("timed-out", policy: tripsOnFirstFailure {
            $0.classification = onlyPayments
            $0.callTimeout = .milliseconds(20)
        })
        await #expect { try await slow.run { () async throws -> Int in try await Task.sleep(for: .seconds(5)); return 1 } } throws: {
            ($0 as? FuseboxError)?.code == .callTimedOut
        }
        snapshot = try await slow.snapshot()
        #expect(snapshot.totals.failures == 1 && snapshot.totals.ignored == 0, "\(snapshot.totals)")
        #expect(snapshot.state == .open)
        // The operation's own errors still go through the classification.
        let other = try makeRegistry().breaker("other-errors", policy: tripsOnFirstFailure { $0.classification = onlyPayments })
        await #expect(throws: BadRequest.self) { try await other.run { () async throws -> Int in throw BadRequest() } }
        #expect(try await other.snapshot().totals.ignored == 1)
    }

    @Test("the default classification: a CancellationError is ignored and a failure is counted under its own type, caught as `any Error` or not")
    func defaultClassification() async throws {
        let breaker = try makeRegistry().breaker("default-classification", policy: tripsOnFirstFailure { _ in })
        await #expect(throws: CancellationError.self) { try await breaker.run { () async throws -> Int in throw CancellationError() } }
        let caught: any Error = CancellationError()
        try breaker.acquire().failure(caught)
        try breaker.acquire().failure(CancellationError())
        var snapshot = try await breaker.snapshot()
        #expect(snapshot.state == .closed)
        #expect(snapshot.totals.ignored == 3 && snapshot.totals.failures == 0)
        await #expect(throws: ServiceUnavailable.self) { try await breaker.run { () async throws -> Int in throw ServiceUnavailable() } }
        snapshot = try await breaker.snapshot()
        #expect(snapshot.state == .open)
        #expect(snapshot.errorCounts == ["ServiceUnavailable": 1])
    }

    @Test("permits: outcomes reported synchronously; a dropped permit is released")
    func permits() async throws {
        let clock = ManualClock()
        let breaker = try makeRegistry(clock: clock).breaker("permits", policy: tripsOnFirstFailure { $0.breakDuration = .fixed(.seconds(1)) })
        let permit = try breaker.acquire()
        permit.failure(ServiceUnavailable())
        #expect(isRejected(breaker))
        clock.advance(by: .seconds(1))
        do {
            let probe = try breaker.acquire()
            #expect(probe.token.isProbe)
            #expect(isRejected(breaker))
            _ = consume probe  // dropped without an outcome
        }
        let again = try breaker.acquire()
        #expect(again.token.isProbe)
        again.success()
        #expect(try await breaker.snapshot().state == .closed)
        #expect(try await breaker.snapshot().totals.ignored == 1)
    }


    @Test("a permit keeps its breaker alive after the registry and every handle are gone; then the breaker is freed")
    func permitOwnsItsBreaker() async throws {
        weak var backend: (any BreakerBackend)?
        var first: BreakerPermit?
        var second: BreakerPermit?
        do {
            let breaker = try makeRegistry().breaker("lifetime")
            backend = breaker.backend
            // From many tasks, so that permits come from more than one CPU's lane where there are several CPUs.
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<64 {
                    group.addTask { if let permit = (try? breaker.acquire()) { permit.ignore() } }
                }
            }
            first = (try? breaker.acquire())
            second = (try? breaker.acquire())
        }
        #expect(backend != nil)
        first.take()?.success()
        let totals = try #require(try await backend?.snapshot().totals)
        #expect(totals.successes == 1 && totals.ignored == 64)
        second.take()?.failure(ServiceUnavailable())
        #expect(backend == nil)
    }

    @Test("the registry: same name and rules give one breaker; other rules are a conflict")
    func registry() async throws {
        let registry = makeRegistry()
        let a = try registry.breaker("orders")
        var timeout = BreakerPolicy()
        timeout.callTimeout = .seconds(2)
        let b = try registry.breaker("orders", policy: timeout)
        #expect(a.backend === b.backend)
        #expect(b.callTimeout == .seconds(2))
        var other = BreakerPolicy()
        other.minimumThroughput = 20
        #expect {
            try registry.breaker("orders", policy: other)
        } throws: { error in
            let error = error as! FuseboxError
            return error.code == .policyConflict && error.message.contains("minimumThroughput=10") && error.message.contains("minimumThroughput=20")
        }
        #expect(throws: FuseboxError.self) { try registry.breaker("") }
        _ = try registry.breaker("billing", policy: tripsOnFirstFailure())
        #expect(registry.names == ["billing", "orders"])
        let billing = try registry.breaker("billing", policy: tripsOnFirstFailure())
        try billing.acquire().failure(ServiceUnavailable())
        #expect(try await registry.snapshots().map(\.state) == [.open, .closed])
        try await registry.resetAll()
        #expect(try await registry.snapshots().map(\.state) == [.closed, .closed])
    }

    @Test("the global switch: off admits everything and records nothing")
    func globalSwitch() async throws {
        let registry = makeRegistry()
        let breaker = try registry.breaker("switch", policy: tripsOnFirstFailure())
        registry.isEnabled = false
        for _ in 0..<5 { await #expect(throws: ServiceUnavailable.self) { try await breaker.run { () async throws -> Int in throw ServiceUnavailable() } } }
        #expect(try await breaker.snapshot().totals.calls == 0)
        registry.isEnabled = true
        try breaker.acquire().failure(ServiceUnavailable())
        #expect(try await breaker.snapshot().state == .open)
    }

    @Test("events: transitions, rejections and outcomes, in order")
    func events() async throws {
        let breaker = try makeRegistry().breaker("events", policy: tripsOnFirstFailure())
        var iterator = breaker.events().makeAsyncIterator()
        try breaker.acquire().success()
        try breaker.acquire().failure(ServiceUnavailable())
        _ = (try? breaker.acquire())
        var received: [BreakerEvent] = []
        for _ in 0..<4 { if let event = await iterator.next() { received.append(event) } }
        guard received.count == 4 else { Issue.record("got \(received)"); return }
        guard case .success = received[0] else { Issue.record("first \(received[0])"); return }
        guard case .failure(_, let type) = received[1], type == "ServiceUnavailable" else { Issue.record("second \(received[1])"); return }
        guard case .stateChanged(let transition) = received[2] else { Issue.record("third \(received[2])"); return }
        #expect(transition.from == .closed && transition.to == .open && transition.reason == "1 consecutive failures ≥ 1")
        #expect(received[3] == .callRejected(state: .open))
    }

    @Test("transitions are logged at info with breaker.name and breaker.state")
    func logging() async throws {
        let sink = LogSink()
        let logger = Logger(label: "test") { _ in sink.handler() }
        var policy = BreakerPolicy()
        policy.minimumThroughput = 13
        let breaker = try makeRegistry(logger: logger).breaker("payments", policy: policy)
        for index in 0..<13 {
            let permit = try breaker.acquire()
            if index < 8 { permit.failure(ServiceUnavailable()) } else { permit.success() }
        }
        let lines = sink.lines
        #expect(lines.count == 1)
        #expect(lines.first?.level == .info)
        #expect(lines.first?.message == "CircuitBreaker 'payments': CLOSED → OPEN (failure ratio 0.62 ≥ 0.50 over 13 calls)")
        #expect(lines.first?.metadata["breaker.name"] == "payments")
        #expect(lines.first?.metadata["breaker.state"] == "open")
    }

    @Test("metrics: state gauge, calls by outcome, rejections, transitions")
    func metrics() async throws {
        // The only test that bootstraps the metrics system (it can be bootstrapped once per process).
        let metrics = TestMetrics()
        MetricsSystem.bootstrap(metrics)
        let breaker = try makeRegistry().breaker("metered", policy: tripsOnFirstFailure())
        try breaker.acquire().success()
        try breaker.acquire().ignore()
        try breaker.acquire().failure(ServiceUnavailable())
        _ = (try? breaker.acquire())
        let dims = [("breaker", "metered")]
        #expect(try metrics.expectCounter("fusebox_calls_total", dims + [("outcome", "success")]).totalValue == 1)
        #expect(try metrics.expectCounter("fusebox_calls_total", dims + [("outcome", "ignored")]).totalValue == 1)
        #expect(try metrics.expectCounter("fusebox_calls_total", dims + [("outcome", "failure")]).totalValue == 1)
        #expect(try metrics.expectCounter("fusebox_rejections_total", dims).totalValue == 1)
        #expect(try metrics.expectCounter("fusebox_transitions_total", dims + [("from", "closed"), ("to", "open")]).totalValue == 1)
        #expect(try metrics.expectGauge("fusebox_breaker_state", dims).lastValue == 2)
    }
}

