import Fusebox
import FuseboxTestKit
import Logging
import Testing
import TestKinds

@Suite("Conformance: the local adapter", .kind(.unit))
struct LocalConformanceTests {
    @Test("scenario", arguments: ConformanceScenario.all.map(\.name))
    func scenario(name: String) async throws {
        let scenario = try #require(ConformanceScenario.all.first { $0.name == name })
        let problems = try await scenario.run(against: LocalSubject(), breakerName: "conformance")
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
    }

    @Test("1,000 concurrent tasks give exact totals")
    func concurrentTotals() async throws {
        let problems = try await ConformanceChecks.concurrentTotals(against: LocalSubject(), breakerName: "concurrent")
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
    }

    @Test("the runner reports expectations that do not hold")
    func runnerCatchesMismatches() async throws {
        let wrong = ConformanceScenario("deliberately wrong", policy: BreakerPolicy(), [
            .fail(1), .expectState(.open), .expect([.windowCalls(7), .totals(calls: 0, successes: 0, failures: 0, ignored: 0, rejected: 0, slow: 0)]),
            .rejected(1, in: .open),
        ])
        let problems = try await wrong.run(against: LocalSubject(), breakerName: "wrong")
        #expect(problems.count == 4, "\(problems)")
        #expect(problems.first?.contains("state CLOSED, expected OPEN") == true)
    }

    @Test("the table covers every state and every break-duration kind")
    func coverage() {
        #expect(ConformanceScenario.all.count >= 25)
        let names = ConformanceScenario.all.map(\.name).joined(separator: " ")
        for word in ["fixed", "exponential", "linear", "adaptive", "custom", "metrics-only", "disabled", "isolation", "count window", "time window"] {
            #expect(names.contains(word), "no scenario about \(word)")
        }
    }
}
