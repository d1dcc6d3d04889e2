import Fusebox
import Logging

/// Something the conformance scenarios can run against: an adapter plus a way to move its clock.
///
/// The `local` adapter runs on a ``ManualClock``; the `distributed` adapter supplies its own way to move time.
public protocol ConformanceSubject: Sendable {
    /// A fresh backend for a breaker no other scenario uses.
    func makeBackend(name: String, policy: BreakerPolicy) async throws -> any BreakerBackend
    /// Moves the subject's clock forward by `duration`.
    func advance(by duration: Duration) async throws
    /// How far apart expected and reported durations may be (0 for a manual clock; a few ms for Redis time).
    var timeTolerance: Duration { get }
}

/// The `local` adapter on a manual clock.
public struct LocalSubject: ConformanceSubject {
    /// The clock the scenarios advance.
    public let clock = ManualClock()
    public var timeTolerance: Duration { .zero }

    /// A subject with its clock at zero.
    public init() {}

    public func makeBackend(name: String, policy: BreakerPolicy) async throws -> any BreakerBackend {
        try LocalAdapter(clock: clock).makeBackend(name: name, policy: policy.validated(), logger: Logger(label: "test"))
    }

    public func advance(by duration: Duration) async throws { clock.advance(by: duration) }
}

/// Failure types whose names appear in snapshots' error breakdowns.
public struct ConformanceErrorA: Error {}
/// A second failure type.
public struct ConformanceErrorB: Error {}

/// One step of a scenario.
public enum ConformanceStep: Sendable {
    /// `count` calls, each taking `duration` (the clock advances during the call), that succeed.
    case succeed(Int = 1, taking: Duration = .zero)
    /// `count` calls that fail with ``ConformanceErrorA`` (or B when `otherError`).
    case fail(Int = 1, taking: Duration = .zero, otherError: Bool = false)
    /// `count` calls whose outcome is ignored.
    case ignore(Int = 1)
    /// `count` attempts that must be rejected, in `state`, with `retryAfter` when given.
    case rejected(Int = 1, in: BreakerState, retryAfter: Duration? = nil, reason: String? = nil)
    /// Acquires a permit and keeps it under `label` (it must be admitted; `probe` says whether as a probe).
    case hold(String, probe: Bool)
    /// Reports the outcome of the permit held under `label`.
    case settle(String, Outcome)
    /// Moves the clock.
    case advance(Duration)
    /// Manual control.
    case isolate(String)
    /// Isolation that ends by itself after the duration.
    case isolateFor(String, Duration)
    /// Manual reset.
    case reset
    /// Manual half-open.
    case forceHalfOpen
    /// The backend runs another policy from now on (`BreakerBackend.updatePolicy(_:)`).
    case updatePolicy(BreakerPolicy)
    /// The snapshot's state must be this.
    case expectState(BreakerState)
    /// The snapshot must match every given figure.
    case expect([Figure])
    /// The timeline must hold exactly these transitions (from, to), oldest first.
    case expectTimeline([(BreakerState, BreakerState)])

    /// An outcome reported for a held permit.
    public enum Outcome: Sendable {
        /// The call succeeded.
        case success
        /// The call failed with ``ConformanceErrorA``.
        case failure
        /// The outcome counts neither way.
        case ignored
    }

    /// A figure of the snapshot.
    public enum Figure: Sendable {
        /// Calls in the window.
        case windowCalls(Int)
        /// Failures in the window.
        case windowFailures(Int)
        /// Slow calls in the window.
        case windowSlowCalls(Int)
        /// The window's failure rate.
        case failureRate(Double)
        /// The window's slow-call rate.
        case slowCallRate(Double)
        /// The failure streak.
        case consecutiveFailures(Int)
        /// Consecutive opens.
        case attempt(Int)
        /// Half-open permits out.
        case probesInFlight(Int)
        /// The state's version.
        case version(Int)
        /// The lifetime counts.
        case totals(calls: Int, successes: Int, failures: Int, ignored: Int, rejected: Int, slow: Int)
        /// Failures of the named error type.
        case errorCount(String, Int)
        /// The time until the break ends (`nil`: not open), within the subject's tolerance.
        case timeUntilProbe(Duration?)
        /// The isolation reason.
        case isolationReason(String?)
        /// Transitions in the last ten minutes.
        case recentTransitions(Int)
        /// The health score (`BreakerHealth`) against the scenario's policy.
        case healthScore(Int)
        /// The share of calls adaptive throttling sheds now (within 0.001).
        case throttleProbability(Double)
        /// The failure-ratio threshold in force (within 0.001; `nil`: none applies).
        case failureRateThresholdInForce(Double?)
        /// Calls shadow mode let run although the breaker rejected them (`BreakerTotals.wouldReject`).
        case wouldReject(Int)
        /// While isolated for a time: the time until the isolation ends.
        case isolationEndsIn(Duration?)
    }
}

/// A named policy and a script of steps with their expectations.
public struct ConformanceScenario: Sendable {
    /// What the scenario shows.
    public var name: String
    /// The policy it runs under.
    public var policy: BreakerPolicy
    /// The script.
    public var steps: [ConformanceStep]

    /// Makes a scenario.
    public init(_ name: String, policy: BreakerPolicy, _ steps: [ConformanceStep]) {
        self.name = name
        self.policy = policy
        self.steps = steps
    }

    /// Runs the scenario against `subject`; returns one line per expectation that did not hold (empty: passed).
    public func run(against subject: some ConformanceSubject, breakerName: String) async throws -> [String] {
        let backend = try await subject.makeBackend(name: breakerName, policy: policy)
        var held: [String: PermitToken] = [:]
        var problems: [String] = []
        let tolerance = subject.timeTolerance

        func close(_ a: Duration?, _ b: Duration?) -> Bool {
            guard let a, let b else { return a == nil && b == nil }
            return a - b <= tolerance && b - a <= tolerance
        }

        for (index, step) in steps.enumerated() {
            func problem(_ text: String) { problems.append("\(name), step \(index + 1) (\(step)): \(text)") }

            func call(_ outcome: CallOutcome, taking duration: Duration) async throws {
                guard case .admitted(let token) = await backend.admit() else { return problem("a call was rejected") }
                if duration > .zero { try await subject.advance(by: duration) }
                backend.record(outcome, for: token)
            }

            switch step {
            case .succeed(let count, let duration):
                for _ in 0..<count { try await call(.success, taking: duration) }
            case .fail(let count, let duration, let other):
                for _ in 0..<count { try await call(.failure(other ? ConformanceErrorB.self : ConformanceErrorA.self), taking: duration) }
            case .ignore(let count):
                for _ in 0..<count { try await call(.ignored, taking: .zero) }
            case .rejected(let count, let state, let retryAfter, let reason):
                for _ in 0..<count {
                    switch await backend.admit() {
                    case .admitted(let token):
                        backend.record(.ignored, for: token)
                        problem("admitted, expected a rejection in \(state)")
                    case .rejected(let error):
                        if error.code != .circuitOpen { problem("rejection code \(error.code)") }
                        if error.state != state { problem("rejected in \(error.state.map { "\($0)" } ?? "nil"), expected \(state)") }
                        if error.breakerName != breakerName { problem("rejection names '\(error.breakerName ?? "")'") }
                        if let retryAfter, !close(error.retryAfter, retryAfter) {
                            problem("retryAfter \(error.retryAfter.map { "\($0)" } ?? "nil"), expected \(retryAfter)")
                        }
                        if let reason, error.isolationReason != reason {
                            problem("isolation reason \(error.isolationReason ?? "nil"), expected \(reason)")
                        }
                    }
                }
            case .hold(let label, let probe):
                switch await backend.admit() {
                case .admitted(let token):
                    if token.isProbe != probe { problem("permit isProbe \(token.isProbe), expected \(probe)") }
                    held[label] = token
                case .rejected(let error):
                    problem("rejected: \(error)")
                }
            case .settle(let label, let outcome):
                guard let token = held.removeValue(forKey: label) else { problem("no permit held as '\(label)'"); continue }
                switch outcome {
                case .success: backend.record(.success, for: token)
                case .failure: backend.record(.failure(ConformanceErrorA.self), for: token)
                case .ignored: backend.record(.ignored, for: token)
                }
            case .advance(let duration):
                try await subject.advance(by: duration)
            case .isolate(let reason):
                try await backend.isolate(reason: reason)
            case .isolateFor(let reason, let duration):
                try await backend.isolate(reason: reason, for: duration)
            case .reset:
                try await backend.reset()
            case .forceHalfOpen:
                try await backend.forceHalfOpen()
            case .updatePolicy(let policy):
                try backend.updatePolicy(policy)
            case .expectState(let state):
                let snapshot = try await backend.snapshot()
                if snapshot.state != state { problem("state \(snapshot.state), expected \(state)") }
            case .expect(let figures):
                let snapshot = try await backend.snapshot()
                for figure in figures {
                    switch figure {
                    case .windowCalls(let n) where snapshot.windowCalls != n: problem("windowCalls \(snapshot.windowCalls), expected \(n)")
                    case .windowFailures(let n) where snapshot.windowFailures != n: problem("windowFailures \(snapshot.windowFailures), expected \(n)")
                    case .windowSlowCalls(let n) where snapshot.windowSlowCalls != n: problem("windowSlowCalls \(snapshot.windowSlowCalls), expected \(n)")
                    case .failureRate(let r) where abs(snapshot.failureRate - r) > 1e-9: problem("failureRate \(snapshot.failureRate), expected \(r)")
                    case .slowCallRate(let r) where abs(snapshot.slowCallRate - r) > 1e-9: problem("slowCallRate \(snapshot.slowCallRate), expected \(r)")
                    case .consecutiveFailures(let n) where snapshot.consecutiveFailures != n:
                        problem("consecutiveFailures \(snapshot.consecutiveFailures), expected \(n)")
                    case .attempt(let n) where snapshot.attempt != n: problem("attempt \(snapshot.attempt), expected \(n)")
                    case .probesInFlight(let n) where snapshot.probesInFlight != n: problem("probesInFlight \(snapshot.probesInFlight), expected \(n)")
                    case .version(let n) where snapshot.version != n: problem("version \(snapshot.version), expected \(n)")
                    case .totals(let calls, let successes, let failures, let ignored, let rejected, let slow):
                        var expected = BreakerTotals()
                        (expected.calls, expected.successes, expected.failures) = (calls, successes, failures)
                        (expected.ignored, expected.rejected, expected.slow) = (ignored, rejected, slow)
                        expected.wouldReject = snapshot.totals.wouldReject  // its own figure
                        if snapshot.totals != expected { problem("totals \(snapshot.totals), expected \(expected)") }
                    case .errorCount(let type, let n) where snapshot.errorCounts[type, default: 0] != n:
                        problem("errorCounts[\(type)] \(snapshot.errorCounts[type, default: 0]), expected \(n)")
                    case .timeUntilProbe(let wait) where !close(snapshot.timeUntilProbe, wait):
                        problem("timeUntilProbe \(snapshot.timeUntilProbe.map { "\($0)" } ?? "nil"), expected \(wait.map { "\($0)" } ?? "nil")")
                    case .isolationReason(let reason) where snapshot.isolationReason != reason:
                        problem("isolationReason \(snapshot.isolationReason ?? "nil"), expected \(reason ?? "nil")")
                    case .recentTransitions(let n) where snapshot.recentTransitions != n:
                        problem("recentTransitions \(snapshot.recentTransitions), expected \(n)")
                    case .healthScore(let n) where snapshot.healthScore != n: problem("healthScore \(snapshot.healthScore), expected \(n)")
                    case .throttleProbability(let p) where abs(snapshot.throttleProbability - p) > 0.001:
                        problem("throttleProbability \(snapshot.throttleProbability), expected \(p)")
                    case .failureRateThresholdInForce(let t)
                    where (t == nil) != (snapshot.failureRateThresholdInForce == nil) || abs((t ?? 0) - (snapshot.failureRateThresholdInForce ?? 0)) > 0.001:
                        problem("failureRateThresholdInForce \(snapshot.failureRateThresholdInForce.map { "\($0)" } ?? "nil"), expected \(t.map { "\($0)" } ?? "nil")")
                    case .wouldReject(let n) where snapshot.totals.wouldReject != n:
                        problem("wouldReject \(snapshot.totals.wouldReject), expected \(n)")
                    case .isolationEndsIn(let left) where !close(snapshot.isolationEndsIn, left):
                        problem("isolationEndsIn \(snapshot.isolationEndsIn.map { "\($0)" } ?? "nil"), expected \(left.map { "\($0)" } ?? "nil")")
                    default: break
                    }
                }
            case .expectTimeline(let expected):
                let timeline = try await backend.timeline().map { ($0.from, $0.to) }
                if timeline.count != expected.count || zip(timeline, expected).contains(where: { $0.0 != $1.0 || $0.1 != $1.1 }) {
                    problem("timeline \(timeline), expected \(expected)")
                }
            }
        }
        for (_, token) in held { backend.record(.ignored, for: token) }
        return problems
    }
}

/// Checks that are not a script of steps: concurrency.
public enum ConformanceChecks {
    /// `tasks` concurrent tasks each record `callsPerTask` outcomes (a fixed mix of successes, failures and
    /// ignored); the totals must be exact. Returns the problems found (empty: passed).
    public static func concurrentTotals(
        against subject: some ConformanceSubject, breakerName: String, tasks: Int = 1000, callsPerTask: Int = 10
    ) async throws -> [String] {
        var policy = BreakerPolicy()
        policy.failureRateThreshold = 1.0
        policy.minimumThroughput = 1_000_000
        let backend = try await subject.makeBackend(name: breakerName, policy: policy)
        let rejected = await withTaskGroup(of: Int.self) { group in
            for task in 0..<tasks {
                group.addTask {
                    var rejected = 0
                    for call in 0..<callsPerTask {
                        guard case .admitted(let token) = await backend.admit() else { rejected += 1; continue }
                        switch (task + call) % 3 {
                        case 0: backend.record(.success, for: token)
                        case 1: backend.record(.failure(ConformanceErrorA.self), for: token)
                        default: backend.record(.ignored, for: token)
                        }
                    }
                    return rejected
                }
            }
            return await group.reduce(0, +)
        }
        var expected = BreakerTotals()
        for task in 0..<tasks {
            for call in 0..<callsPerTask {
                expected.calls += 1
                switch (task + call) % 3 {
                case 0: expected.successes += 1
                case 1: expected.failures += 1
                default: expected.ignored += 1
                }
            }
        }
        var problems: [String] = []
        if rejected != 0 { problems.append("\(rejected) calls were rejected; none should be") }
        let snapshot = try await subject.settledSnapshot(of: backend, expectedCalls: expected.calls)
        if snapshot.totals != expected { problems.append("totals \(snapshot.totals), expected \(expected)") }
        if snapshot.errorCounts["ConformanceErrorA"] != expected.failures {
            problems.append("errorCounts \(snapshot.errorCounts), expected \(expected.failures) ConformanceErrorA")
        }
        return problems
    }
}

extension ConformanceSubject {
    /// The snapshot once every recorded outcome has reached the store; a local subject has nothing to wait for.
    public func settledSnapshot(of backend: any BreakerBackend, expectedCalls: Int) async throws -> BreakerSnapshot {
        try await backend.snapshot()
    }
}
