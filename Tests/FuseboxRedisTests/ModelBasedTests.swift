import Foundation
import Fusebox
import FuseboxTestKit
import Hiredis
import PropertyBased
import Testing
import TestKinds

@testable import FuseboxRedis

/// The conformance suite generalised: random policies and random operation sequences run in lockstep against the
/// Swift state machine (the `local` adapter) and `lua/breaker.lua` (the `distributed` adapter), which must agree on
/// every admission and on the state and counters after every step.
@Suite("Model-based: the state machine and the Lua script agree on random sequences", .kind(.integration), .timeLimit(.minutes(3)))
struct ModelBasedTests {
    enum Outcome: Sendable, CaseIterable { case success, failure, ignored }

    enum Operation: Sendable, CustomStringConvertible {
        /// One call: acquire, take `taking` (the clocks move), report the outcome.
        case call(Outcome, taking: Duration)
        /// Acquire a permit and keep it.
        case hold
        /// Report the outcome of the oldest permit kept.
        case settle(Outcome)
        case advance(Duration)
        case isolate(Duration?), reset, forceHalfOpen

        var description: String {
            switch self {
            case .call(let outcome, let taking): taking == .zero ? "\(outcome)" : "\(outcome)(\(taking.milliseconds)ms)"
            case .hold: "hold"
            case .settle(let outcome): "settle(\(outcome))"
            case .advance(let duration): "+\(duration.milliseconds)ms"
            case .isolate(let lasting): lasting.map { "isolate(\($0.milliseconds)ms)" } ?? "isolate"
            case .reset: "reset"
            case .forceHalfOpen: "halfOpen"
            }
        }
    }

    struct Case: Sendable, CustomStringConvertible {
        var policy: BreakerPolicy
        var operations: [Operation]
        var description: String { "\(policy.stateRulesDescription)\n\(operations.map(\.description).joined(separator: " "))" }
    }

    /// Small policies that trip within a few calls, so that sequences of 40 steps visit every state.
    static let cases: Generator<Case, Shrink.None<Case>> = Generator { rng in
        func pick<T>(_ values: [T]) -> T { values.randomElement(using: &rng)! }
        var policy = BreakerPolicy()
        policy.failureRateThreshold = pick([nil, 0.5, 0.34, 1.0])
        policy.consecutiveFailureThreshold = pick([nil, 2, 3])
        policy.slowCallRateThreshold = pick([nil, 0.5])
        if policy.failureRateThreshold == nil && policy.consecutiveFailureThreshold == nil && policy.slowCallRateThreshold == nil {
            policy.consecutiveFailureThreshold = 2
        }
        policy.slowCallDuration = .milliseconds(100)
        policy.minimumThroughput = pick([1, 2, 4])
        policy.window = pick([.count(4), .count(10), .time(samplingDuration: .seconds(10), buckets: 10), .time(samplingDuration: .seconds(2), buckets: 2)])
        policy.breakDuration = pick([.fixed(.seconds(1)), .fixed(.seconds(5)),
                                     .exponential(base: .seconds(1), factor: 2, maximum: .seconds(8)),
                                     .linear(base: .seconds(1), increment: .milliseconds(500), maximum: .seconds(3))])
        policy.permittedCallsInHalfOpen = pick([1, 2, 3])
        policy.successThreshold = pick([1, 2])
        policy.maxHalfOpenDuration = pick([.seconds(3), .seconds(60)])
        policy.mode = pick([.normal, .normal, .normal, .normal, .metricsOnly, .shadow])
        // A relative failure threshold, warm within a few calls, its baseline decaying over the steps' advances.
        policy.relativeFailureRate = pick([
            nil, nil, .init(factor: 2, floor: 0.25, horizon: .seconds(5), warmupCalls: 3), .init(factor: 3, floor: 0.1, horizon: .seconds(60), warmupCalls: 6),
        ])
        // A held probe keeps its permit however far the steps move time: its lease (twice the call timeout) is
        // the distributed adapter's own rule for holders that die, which one process cannot have.
        policy.callTimeout = .seconds(3600)

        let operations: [Operation] = (0..<40).map { _ in
            switch Int.random(in: 0..<100, using: &rng) {
            case 0..<55: .call(pick([.success, .failure, .failure, .ignored]), taking: pick([.zero, .zero, .milliseconds(150)]))
            case 55..<63: .hold
            case 63..<71: .settle(pick(Outcome.allCases))
            case 71..<93: .advance(pick([.milliseconds(300), .seconds(1), .seconds(2), .seconds(6)]))
            case 93..<95: .reset
            case 95..<97: .forceHalfOpen
            default: .isolate(pick([nil, .milliseconds(1500), .seconds(4)]))
            }
        }
        return Case(policy: policy, operations: operations)
    }

    @Test("random policies and operation sequences")
    func lockstep() async throws {
        let server = try await SharedServer.get()
        var sequence = 0
        var visited: Set<BreakerState> = []
        await propertyCheck(count: 100, input: Self.cases) { testCase in
            sequence += 1
            let (problems, states) = try await Self.run(testCase, server: server, name: "model-\(sequence)")
            visited.formUnion(states)
            #expect(problems.isEmpty, "\(testCase)\n\(problems.joined(separator: "\n"))")
        }
        // The generator is worth something only if the sequences reach every state.
        #expect(visited.isSuperset(of: [.closed, .open, .halfOpen, .isolated, .metricsOnly]), "visited only \(visited)")
    }

    /// Runs one case against both adapters; returns the first disagreements (the run stops at the first admission
    /// they disagree on) and the states visited.
    static func run(_ testCase: Case, server: RedisServerProcess, name: String) async throws -> ([String], Set<BreakerState>) {
        let local = LocalSubject()
        let distributed = try DistributedSubject(server: server)
        let model = try await local.makeBackend(name: name, policy: testCase.policy)
        let script = try await distributed.makeBackend(name: name, policy: testCase.policy)
        var held: [(PermitToken, PermitToken)] = []
        var problems: [String] = []
        var visited: Set<BreakerState> = []

        func advance(_ duration: Duration) async throws {
            try await local.advance(by: duration)
            try await distributed.advance(by: duration)
        }
        func record(_ outcome: Outcome, _ tokens: (PermitToken, PermitToken)) {
            let callOutcome: CallOutcome = switch outcome {
            case .success: .success
            case .failure: .failure(ConformanceErrorA.self)
            case .ignored: .ignored
            }
            model.record(callOutcome, for: tokens.0)
            script.record(callOutcome, for: tokens.1)
        }
        /// Both adapters' admission; `nil` (and a problem) when they disagree.
        func admit(at step: Int, _ operation: Operation) async -> (PermitToken, PermitToken)?? {
            switch (await model.admit(), await script.admit()) {
            case (.admitted(let a), .admitted(let b)):
                if a.isProbe != b.isProbe { problems.append("step \(step) \(operation): isProbe \(a.isProbe) (Swift) vs \(b.isProbe) (Lua)") }
                if a.isRecorded != b.isRecorded {
                    problems.append("step \(step) \(operation): isRecorded \(a.isRecorded) (Swift) vs \(b.isRecorded) (Lua)")
                }
                return .some((a, b))
            case (.rejected(let a), .rejected(let b)):
                if a.state != b.state { problems.append("step \(step) \(operation): rejected in \(a.state.map { "\($0)" } ?? "-") (Swift) vs \(b.state.map { "\($0)" } ?? "-") (Lua)") }
                return .some(nil)
            case (let a, let b):
                problems.append("step \(step) \(operation): Swift \(a), Lua \(b)")
                if case .admitted(let token) = a { model.record(.ignored, for: token) }
                if case .admitted(let token) = b { script.record(.ignored, for: token) }
                return nil
            }
        }

        steps: for (index, operation) in testCase.operations.enumerated() {
            let step = index + 1
            switch operation {
            case .call(let outcome, let taking):
                guard let admitted = await admit(at: step, operation) else { break steps }
                if let tokens = admitted {
                    if taking > .zero { try await advance(taking) }
                    record(outcome, tokens)
                }
            case .hold:
                guard let admitted = await admit(at: step, operation) else { break steps }
                if let tokens = admitted { held.append(tokens) }
            case .settle(let outcome):
                if !held.isEmpty { record(outcome, held.removeFirst()) }
            case .advance(let duration):
                try await advance(duration)
            case .isolate(let lasting):
                try await model.isolate(reason: "model", for: lasting)
                try await script.isolate(reason: "model", for: lasting)
            case .reset:
                try await model.reset()
                try await script.reset()
            case .forceHalfOpen:
                try await model.forceHalfOpen()
                try await script.forceHalfOpen()
            }

            await distributed.adapter.flush()
            let a = try await model.snapshot()
            let b = try await script.snapshot()
            visited.insert(a.state)
            let figures: [(String, String, String)] = [
                ("state", "\(a.state)", "\(b.state)"),
                ("version", "\(a.version)", "\(b.version)"),
                ("windowCalls", "\(a.windowCalls)", "\(b.windowCalls)"),
                ("windowFailures", "\(a.windowFailures)", "\(b.windowFailures)"),
                ("windowSlowCalls", "\(a.windowSlowCalls)", "\(b.windowSlowCalls)"),
                ("consecutiveFailures", "\(a.consecutiveFailures)", "\(b.consecutiveFailures)"),
                ("attempt", "\(a.attempt)", "\(b.attempt)"),
                ("probesInFlight", "\(a.probesInFlight)", "\(b.probesInFlight)"),
                ("totals", "\(a.totals)", "\(b.totals)"),
                ("isolationEndsIn", "\(a.isolationEndsIn.map { "\($0.milliseconds)ms" } ?? "-")", "\(b.isolationEndsIn.map { "\($0.milliseconds)ms" } ?? "-")"),
                ("lastReason", a.lastReason, b.lastReason),
                ("failureRateThresholdInForce", a.failureRateThresholdInForce.map { String(format: "%.9f", $0) } ?? "nil",
                 b.failureRateThresholdInForce.map { String(format: "%.9f", $0) } ?? "nil"),
            ]
            for (figure, swift, lua) in figures where swift != lua {
                problems.append("step \(step) \(operation): \(figure) \(swift) (Swift) vs \(lua) (Lua)")
            }
            if !problems.isEmpty { break }
        }
        for (a, b) in held {
            model.record(.ignored, for: a)
            script.record(.ignored, for: b)
        }
        return (problems, visited)
    }
}
