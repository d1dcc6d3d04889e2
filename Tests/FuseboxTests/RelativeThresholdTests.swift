import Foundation
import Testing
import TestKinds

@testable import Fusebox

@Suite("Relative failure threshold", .kind(.unit))
struct RelativeThresholdTests {
    private struct Failure: Error {}

    private func call(_ machine: inout BreakerStateMachine, failing: Bool, at now: Int64) {
        guard case .admitted(let token) = machine.acquire(now: now).0 else { return }
        _ = machine.record(failing ? .failure(Failure.self) : .success, token: token, now: now)
    }

    @Test("the baseline learns only while closed: probes and calls while open or half-open leave it as it was")
    func learnsOnlyWhileClosed() throws {
        var policy = BreakerPolicy()
        policy.failureRateThreshold = 0.5
        policy.consecutiveFailureThreshold = 3
        policy.relativeFailureRate = .init(factor: 2, floor: 0.1, horizon: .seconds(3600), warmupCalls: 10)
        var machine = BreakerStateMachine(name: "r", policy: try policy.validated(), now: 0)
        for index in 0..<20 { call(&machine, failing: index % 5 == 0, at: 1) }
        let before = machine.snapshot(now: 2).0
        #expect(abs((before.failureBaseline ?? 0) - 0.2) < 1e-12 && before.failureRateThresholdInForce == 0.4)
        for _ in 0..<3 { call(&machine, failing: true, at: 3) }
        #expect(machine.state == .open)
        let tripped = machine.snapshot(now: 3).0
        // The three failures that tripped it were learned (closed when recorded): 7 of 23.
        #expect(abs((tripped.failureBaseline ?? 0) - 7.0 / 23.0) < 1e-12)
        let later = Duration.seconds(31).nanoseconds
        call(&machine, failing: true, at: later)  // the probe fails: open again
        call(&machine, failing: true, at: later + 1)  // rejected
        let after = machine.snapshot(now: later + 2).0
        #expect(after.baselineCalls == tripped.baselineCalls, "nothing added")
        #expect(abs((after.failureBaseline ?? 0) - 7.0 / 23.0) < 1e-12)
    }

    @Test("an outcome one horizon old weighs 1/e of a new one")
    func horizon() throws {
        var policy = BreakerPolicy()
        policy.relativeFailureRate = .init(factor: 2, floor: 0.01, horizon: .seconds(100), warmupCalls: 1)
        var machine = BreakerStateMachine(name: "h", policy: try policy.validated(), now: 0)
        call(&machine, failing: true, at: 0)
        call(&machine, failing: false, at: Duration.seconds(100).nanoseconds)
        let snapshot = machine.snapshot(now: Duration.seconds(100).nanoseconds).0
        let weight = exp(-1.0)
        #expect(abs(snapshot.baselineCalls - (1 + weight)) < 1e-12)
        #expect(abs((snapshot.failureBaseline ?? 0) - weight / (1 + weight)) < 1e-12)
    }

    @Test("values out of range are refused with the field and its range", arguments: [
        (BreakerPolicy.RelativeFailureRate(factor: 0), "relativeFailureRate.factor"),
        (BreakerPolicy.RelativeFailureRate(floor: 1.5), "relativeFailureRate.floor"),
        (BreakerPolicy.RelativeFailureRate(horizon: .milliseconds(10)), "relativeFailureRate.horizon"),
        (BreakerPolicy.RelativeFailureRate(warmupCalls: 0), "relativeFailureRate.warmupCalls"),
    ])
    func validation(relative: BreakerPolicy.RelativeFailureRate, field: String) {
        var policy = BreakerPolicy()
        policy.relativeFailureRate = relative
        #expect { try policy.validated() } throws: { ($0 as? FuseboxError)?.message.contains(field) == true }
    }
}
