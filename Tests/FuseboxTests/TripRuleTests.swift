import Testing
import TestKinds

@testable import Fusebox

/// The trip rules on counts alone (``TripRule``): the rule the state machine trips by and the distributed adapter
/// decides its urgent writes by.
@Suite("Trip rule: which rule a window breaks, in order", .kind(.unit))
struct TripRuleTests {
    static func policy(_ configure: (inout BreakerPolicy) -> Void) -> BreakerPolicy {
        var policy = BreakerPolicy()
        configure(&policy)
        return policy
    }

    func broken(_ calls: Int, _ failures: Int, _ slow: Int, _ streak: Int, _ policy: BreakerPolicy, _ rate: Double) -> TripRule? {
        TripRule.broken(
            calls: calls, failures: failures, slow: slow, streak: streak, consecutiveFailureThreshold: policy.consecutiveFailureThreshold,
            failureRateThreshold: rate, slowCallRateThreshold: policy.slowCallRateThreshold, minimumThroughput: policy.minimumThroughput)
    }

    @Test("the streak is judged first and whatever the throughput; the ratios only from the minimum throughput on")
    func order() {
        let policy = Self.policy {
            $0.consecutiveFailureThreshold = 3
            $0.failureRateThreshold = 0.5
            $0.slowCallRateThreshold = 0.5
            $0.minimumThroughput = 10
        }
        #expect(broken(3, 3, 0, 3, policy, 0.5)
            == .consecutiveFailures(3, threshold: 3))
        #expect(broken(9, 9, 9, 2, policy, 0.5) == nil)
        #expect(broken(10, 5, 10, 0, policy, 0.5)
            == .failureRatio(0.5, threshold: 0.5, calls: 10))
        #expect(broken(10, 4, 5, 0, policy, 0.5)
            == .slowCallRatio(0.5, threshold: 0.5, calls: 10))
        #expect(broken(10, 4, 4, 2, policy, 0.5) == nil)
        // The ratio in force is the caller's (a relative threshold's current value), not the policy's fixed one.
        #expect(broken(10, 2, 0, 0, policy, 0.2)
            == .failureRatio(0.2, threshold: 0.2, calls: 10))
        #expect(broken(0, 0, 0, 0, Self.policy { $0.minimumThroughput = 1 }, 0.5) == nil)
    }

    @Test("the reason a transition carries")
    func reasons() {
        #expect("\(TripRule.consecutiveFailures(5, threshold: 5))" == "5 consecutive failures ≥ 5")
        #expect("\(TripRule.failureRatio(8.0 / 13.0, threshold: 0.5, calls: 13))" == "failure ratio 0.62 ≥ 0.50 over 13 calls")
        #expect("\(TripRule.slowCallRatio(1, threshold: 0.05, calls: 20))" == "slow-call ratio 1.00 ≥ 0.05 over 20 calls")
        // As lua/breaker.lua's string.format('%.2f') writes it: 5 of 8 is 0.625 exactly, which printf rounds to even.
        #expect("\(TripRule.failureRatio(5.0 / 8.0, threshold: 0.5, calls: 8))" == "failure ratio 0.62 ≥ 0.50 over 8 calls")
    }
}
