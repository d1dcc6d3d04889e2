import Fusebox
import Testing
import TestKinds

@Suite("Policy validation and names", .kind(.unit))
struct PolicyTests {
    private static func policy(_ edit: @Sendable (inout BreakerPolicy) -> Void) -> BreakerPolicy {
        var policy = BreakerPolicy()
        edit(&policy)
        return policy
    }

    @Test("the default policy is valid")
    func defaultIsValid() throws {
        let policy = try BreakerPolicy().validated()
        #expect(policy.failureRateThreshold == 0.5)
        #expect(policy.minimumThroughput == 10)
        #expect(policy.window == .time(samplingDuration: .seconds(10), buckets: 10))
    }

    @Test("a bad value names the field and its range", arguments: [
        (policy { $0.failureRateThreshold = 0 }, "failureRateThreshold"),
        (policy { $0.failureRateThreshold = 1.5 }, "failureRateThreshold"),
        (policy { $0.failureRateThreshold = .nan }, "failureRateThreshold"),
        (policy { $0.slowCallRateThreshold = -0.1 }, "slowCallRateThreshold"),
        (policy { $0.consecutiveFailureThreshold = 0 }, "consecutiveFailureThreshold"),
        (policy { $0.slowCallDuration = .zero }, "slowCallDuration"),
        (policy { $0.minimumThroughput = 0 }, "minimumThroughput"),
        (policy { $0.window = .time(samplingDuration: .seconds(10), buckets: 0) }, "window.buckets"),
        (policy { $0.window = .time(samplingDuration: .microseconds(10), buckets: 1) }, "window.samplingDuration"),
        (policy { $0.window = .time(samplingDuration: .milliseconds(5), buckets: 10) }, "per bucket"),
        (policy { $0.window = .count(0) }, "window.size"),
        (policy { $0.window = .count(100_001) }, "window.size"),
        (policy { $0.breakDuration = .fixed(.zero) }, "breakDuration"),
        (policy { $0.breakDuration = .exponential(base: .seconds(1), factor: 0.5, maximum: .seconds(10)) }, "breakDuration.factor"),
        (policy { $0.breakDuration = .exponential(base: .seconds(10), factor: 2, maximum: .seconds(1)) }, "breakDuration.maximum"),
        (policy { $0.breakDuration = .linear(base: .seconds(1), increment: .seconds(-1), maximum: .seconds(5)) }, "breakDuration.increment"),
        (policy { $0.breakDuration = .custom(id: "") { _ in .seconds(1) } }, "breakDuration.id"),
        (policy { $0.permittedCallsInHalfOpen = 0 }, "permittedCallsInHalfOpen"),
        (policy { $0.successThreshold = 0 }, "successThreshold"),
        (policy { $0.maxHalfOpenDuration = .zero }, "maxHalfOpenDuration"),
        (policy { $0.maxHalfOpenDuration = .seconds(Int64.max / 2) }, "'maxHalfOpenDuration' is 4.611686018427388e+18 seconds; allowed: at most 10 years"),
        (policy { $0.breakDuration = .linear(base: .seconds(1), increment: .seconds(400_000_000), maximum: .seconds(5)) }, "at most 10 years"),
        (policy { $0.callTimeout = .seconds(-1) }, "callTimeout"),
        (policy { $0.failureRateThreshold = nil }, "at least one trip rule"),
    ])
    func rejectsBadValue(policy: BreakerPolicy, field: String) {
        #expect {
            try policy.validated()
        } throws: { error in
            let error = error as! FuseboxError
            return error.code == .invalidPolicy && error.message.contains(field) && error.message.contains("allowed")
        }
    }

    @Test("break durations by attempt")
    func breakDurations() {
        let exponential = BreakerPolicy.BreakDuration.exponential(base: .milliseconds(500), factor: 2, maximum: .seconds(3))
        #expect((1...5).map { exponential.duration(forAttempt: $0) } == [.milliseconds(500), .seconds(1), .seconds(2), .seconds(3), .seconds(3)])
        #expect(exponential.duration(forAttempt: 10_000) == .seconds(3))
        let linear = BreakerPolicy.BreakDuration.linear(base: .seconds(1), increment: .seconds(1), maximum: .seconds(3))
        #expect((1...4).map { linear.duration(forAttempt: $0) } == [.seconds(1), .seconds(2), .seconds(3), .seconds(3)])
        #expect((1...7).map { BreakerPolicy.BreakDuration.adaptive.duration(forAttempt: $0) }
            == [30, 30, 60, 60, 60, 120, 120].map { .seconds($0) })
        #expect(BreakerPolicy.BreakDuration.custom(id: "neg") { _ in .seconds(-5) }.duration(forAttempt: 1) == .zero)
    }

    @Test("state rules ignore classification and call timeout, compare custom functions by id")
    func stateRules() {
        var a = BreakerPolicy()
        var b = BreakerPolicy()
        b.callTimeout = .seconds(1)
        b.classification = .ignoring([CancellationError.self])
        #expect(a.hasSameStateRules(as: b))
        b.minimumThroughput = 11
        #expect(!a.hasSameStateRules(as: b))
        a.breakDuration = .custom(id: "f") { _ in .seconds(1) }
        b = a
        b.breakDuration = .custom(id: "f") { _ in .seconds(2) }
        #expect(a.hasSameStateRules(as: b))
        b.breakDuration = .custom(id: "g") { _ in .seconds(1) }
        #expect(!a.hasSameStateRules(as: b))
    }

    @Test("bad names are typed errors that say what is wrong", arguments: [
        ("", "is empty"),
        (String(repeating: "x", count: 201), "201 bytes"),
        (String(repeating: "é", count: 101), "202 bytes"),
        ("pay\nments", "U+A"),
        ("pay\u{7F}", "U+7F"),
        ("a{b}", "'{'"),
    ])
    func badNames(name: String, expected: String) {
        #expect {
            try BreakerRegistry.validate(name: name)
        } throws: { error in
            let error = error as! FuseboxError
            return error.code == .invalidName && error.message.contains(expected)
        }
    }

    @Test("good names", arguments: ["payments", "svc:orders/v2", "東京-api", String(repeating: "x", count: 200), "with space"])
    func goodNames(name: String) throws {
        try BreakerRegistry.validate(name: name)
    }
}
