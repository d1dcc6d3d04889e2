import Fusebox
import FuseboxTestKit
import Logging
import PropertyBased
import Testing
import TestKinds

/// Random names and policies, checked against the rules the registry states.
@Suite("Properties of names and policies", .kind(.unit))
struct FuseboxPropertyTests {
    @Test("a name is accepted exactly when it is 1…200 bytes without control characters or braces")
    func namesFollowTheRule() async {
        let scalars: [Character] = ["a", "Z", "0", "-", "_", ":", ".", " ", "é", "漢", "😀", "{", "}", "\u{0}", "\n", "\t", "\u{7F}", "\u{85}", "\u{200B}"]
        let names = Gen.element(of: scalars).array(of: 0...8).map { String($0.compactMap { $0 }) }
        await propertyCheck(count: 500, input: names, Gen.int(in: 0...60)) { base, repeats in
            await Task.yield()  // CPU-bound cases: leave the shared pool to the suites that time things
            let name = repeats > 40 ? String(repeating: base.isEmpty ? "x" : base, count: repeats * 2) : base
            let allowed = !name.isEmpty && name.utf8.count <= 200
                && !name.unicodeScalars.contains { $0.properties.generalCategory == .control || $0 == "{" || $0 == "}" }
            do throws(FuseboxError) {
                try BreakerRegistry.validate(name: name)
                #expect(allowed, "accepted \(name.debugDescription)")
            } catch {
                #expect(!allowed, "refused \(name.debugDescription): \(error.message)")
                #expect(error.code == .invalidName)
                // The message is one printable line: no control character reaches a log or a terminal.
                #expect(!error.message.unicodeScalars.contains { $0.properties.generalCategory == .control }, "\(error.message.debugDescription)")
            }
        }
    }

    /// Policies with every field drawn from values at and past the edges of its range.
    static let policies: Generator<BreakerPolicy, Shrink.None<BreakerPolicy>> = Generator { rng in
        func pick<T>(_ values: [T]) -> T { values.randomElement(using: &rng)! }
        let durations: [Duration] = [.zero, .nanoseconds(1), .microseconds(999), .milliseconds(1), .milliseconds(250), .seconds(1), .seconds(30),
                                     .seconds(86_400 * 365 * 10), .seconds(86_400 * 365 * 11), .seconds(-1), .seconds(Int64.max / 2)]
        let ratios: [Double?] = [nil, 0, 1e-9, 0.5, 1, 1.0000001, -1, .nan, .infinity]
        let counts = [Int.min, -1, 0, 1, 2, 10, 1000, 10_000, 10_001, 100_000, 100_001, 1_000_000, 1_000_001, Int.max]
        // Each field keeps its default three times in four, so that a fair share of the policies are valid.
        func sometimes(_ edit: (inout BreakerPolicy) -> Void, _ policy: inout BreakerPolicy) {
            if Int.random(in: 0..<4, using: &rng) == 0 { edit(&policy) }
        }
        var policy = BreakerPolicy()
        sometimes({ $0.failureRateThreshold = pick(ratios) }, &policy)
        sometimes({ $0.slowCallRateThreshold = pick(ratios) }, &policy)
        sometimes({ $0.consecutiveFailureThreshold = pick([nil] + counts.map(Optional.some)) }, &policy)
        sometimes({ $0.slowCallDuration = pick(durations) }, &policy)
        sometimes({ $0.minimumThroughput = pick(counts) }, &policy)
        sometimes({ $0.window = .count(pick(counts)) }, &policy)
        sometimes({ $0.window = .time(samplingDuration: pick(durations), buckets: pick(counts)) }, &policy)
        let breaks: [BreakerPolicy.BreakDuration] = [
            .fixed(pick(durations)),
            .exponential(base: pick(durations), factor: pick([0.5, 1, 2, 1e300, .infinity, .nan]), maximum: pick(durations)),
            .linear(base: pick(durations), increment: pick(durations), maximum: pick(durations)),
            .adaptive,
            .custom(id: pick(["", "jitter", "a\"b\\c\n"])) { attempt in .seconds(attempt) },
        ]
        policy.breakDuration = pick(breaks)
        sometimes({ $0.permittedCallsInHalfOpen = pick(counts) }, &policy)
        sometimes({ $0.successThreshold = pick(counts) }, &policy)
        sometimes({ $0.maxHalfOpenDuration = pick(durations) }, &policy)
        sometimes({ $0.mode = pick([.normal, .metricsOnly, .disabled]) }, &policy)
        sometimes({ $0.callTimeout = pick([nil] + durations.map(Optional.some)) }, &policy)
        return policy
    }

    @Test("any policy is refused with the field it breaks, or runs: every break duration computes, calls go through")
    func policiesAreRefusedOrRun() async throws {
        var ran = 0
        await propertyCheck(count: 500, input: Self.policies) { policy in
            await Task.yield()  // CPU-bound cases: leave the shared pool to the suites that time things
            let valid: BreakerPolicy
            do throws(FuseboxError) {
                valid = try policy.validated()
                ran += 1
            } catch {
                #expect(error.code == .invalidPolicy)
                #expect(error.message.hasPrefix("policy field '"), "\(error.message)")
                return
            }
            for attempt in [Int.min, 0, 1, 2, 3, 10, 64, 1000, 1_000_000, Int.max] {
                let duration = valid.breakDuration.duration(forAttempt: attempt)
                #expect(duration >= .zero, "\(valid.breakDuration) at attempt \(attempt)")
                _ = duration.milliseconds
            }
            _ = valid.stateRulesDescription
            let clock = ManualClock()
            let backend = try LocalAdapter(clock: clock).makeBackend(name: "p", policy: valid, logger: Logger(label: "test"))
            for call in 0..<50 {
                guard case .admitted(let token) = backend.admitWithoutWaiting() else {
                    clock.advance(by: .seconds(1))
                    continue
                }
                clock.advance(by: call % 7 == 0 ? valid.slowCallDuration : .milliseconds(1))
                backend.record(call % 3 == 0 ? .success : .failure(ConformanceErrorA.self), for: token)
            }
            let snapshot = try await backend.snapshot()
            #expect(snapshot.totals.calls + snapshot.totals.rejected == 50 || valid.mode == .disabled)
        }
        #expect(ran >= 25, "only \(ran) of 500 random policies were valid: the generator tests little")
    }
}
