import Fusebox
import FuseboxTestKit
import Hiredis
import PropertyBased
import Testing
import TestKinds

@testable import FuseboxRedis

/// The model-based test for what instances really send: batches of counts from several senders, interleaved,
/// with held successes and more calls in one batch than a count window holds. Each batch goes to
/// `lua/breaker.lua` as one `record` and to the Swift state machine as one ``OutcomeBatch``; after every step the
/// two must agree on the state, the window, the streak and the totals.
///
/// It found a count window whose `calls` grew by every call of a batch while only the last `size` entered the
/// ring: the ratio then never reached its threshold again (Docs/architecture.md, "Exactly once").
@Suite("Model-based: batches from several senders, Swift and Lua agree", .kind(.integration), .timeLimit(.minutes(3)))
struct BatchModelTests {
    enum Step: Sendable, CustomStringConvertible {
        /// Sender `sender` writes a batch admitted under the current version (or the one before, `stale`).
        case batch(sender: Int, successes: Int, slowSuccesses: Int, failures: Int, slowFailures: Int, ignored: Int, stale: Bool)
        /// Sender `sender` asks for a permit and, if it is a probe, reports `failed` or a success at once.
        case probe(sender: Int, failed: Bool)
        case advance(milliseconds: Int64)
        case reset

        var description: String {
            switch self {
            case .batch(let sender, let s, let ss, let f, let sf, let i, let stale):
                "\(["a", "b", "c"][sender]):[\(s)s \(ss)S \(f)f \(sf)F \(i)i\(stale ? " stale" : "")]"
            case .probe(let sender, let failed): "\(["a", "b", "c"][sender]):probe(\(failed ? "f" : "s"))"
            case .advance(let ms): "+\(ms)ms"
            case .reset: "reset"
            }
        }
    }

    struct Case: Sendable, CustomStringConvertible {
        var policy: BreakerPolicy
        var steps: [Step]
        var description: String { "\(policy.stateRulesDescription)\n\(steps.map(\.description).joined(separator: " "))" }
    }

    static let cases: Generator<Case, Shrink.None<Case>> = Generator { rng in
        func pick<T>(_ values: [T]) -> T { values.randomElement(using: &rng)! }
        func count(_ upTo: Int) -> Int { Int.random(in: 0...upTo, using: &rng) }
        var policy = BreakerPolicy()
        policy.failureRateThreshold = pick([0.5, 0.34, 0.8, nil])
        policy.consecutiveFailureThreshold = pick([nil, nil, 3, 8])
        policy.slowCallRateThreshold = pick([nil, 0.5])
        if policy.failureRateThreshold == nil && policy.consecutiveFailureThreshold == nil && policy.slowCallRateThreshold == nil {
            policy.failureRateThreshold = 0.5
        }
        policy.minimumThroughput = pick([1, 5, 10])
        policy.window = pick([.count(4), .count(10), .count(20), .time(samplingDuration: .seconds(10), buckets: 10)])
        policy.breakDuration = .fixed(.seconds(1))
        policy.permittedCallsInHalfOpen = pick([1, 2])
        policy.successThreshold = pick([1, 2])
        policy.maxHalfOpenDuration = .seconds(60)
        let steps: [Step] = (0..<30).map { _ in
            switch Int.random(in: 0..<100, using: &rng) {
            case 0..<30:
                // Held successes: more than any window here holds.
                .batch(sender: count(2), successes: pick([0, 25, 40, 120]), slowSuccesses: 0, failures: count(3), slowFailures: 0, ignored: 0, stale: false)
            case 30..<70:
                .batch(sender: count(2), successes: count(6), slowSuccesses: pick([0, 0, 1, 3]), failures: count(8), slowFailures: pick([0, 0, 2]),
                       ignored: pick([0, 0, 1]), stale: Int.random(in: 0..<10, using: &rng) == 0)
            case 70..<82: .probe(sender: count(2), failed: pick([true, false]))
            case 82..<96: .advance(milliseconds: pick([300, 1000, 1500, 4000]))
            default: .reset
            }
        }
        return Case(policy: policy, steps: steps)
    }

    @Test("random batches from three senders")
    func batches() async throws {
        let server = try await SharedServer.get()
        let redis = try RedisClient(configuration: server.configuration())
        var index = 0
        var trips = 0
        await propertyCheck(count: 150, input: Self.cases) { testCase in
            index += 1
            let (problems, tripped) = try await Self.run(testCase, redis: redis, name: "batch-\(index)")
            trips += tripped
            #expect(problems.isEmpty, "\(testCase)\n\(problems.joined(separator: "\n"))")
            await Task.yield()
        }
        #expect(trips > 20, "the generated batches tripped the breaker only \(trips) times")
    }

    @Test("a count window shared by senders that held successes still trips on failures (found tried as a user)")
    func heldSuccessesThenFailures() async throws {
        let server = try await SharedServer.get()
        let redis = try RedisClient(configuration: server.configuration())
        var policy = BreakerPolicy()
        policy.window = .count(20)
        policy.failureRateThreshold = 0.5
        policy.minimumThroughput = 10
        // 699 successes held by three instances, then the first instance's dependency fails every call.
        let steps: [Step] = [
            .batch(sender: 0, successes: 500, slowSuccesses: 0, failures: 0, slowFailures: 0, ignored: 0, stale: false),
            .batch(sender: 1, successes: 100, slowSuccesses: 0, failures: 0, slowFailures: 0, ignored: 0, stale: false),
            .batch(sender: 2, successes: 99, slowSuccesses: 0, failures: 0, slowFailures: 0, ignored: 0, stale: false),
        ] + Array(repeating: Step.batch(sender: 0, successes: 0, slowSuccesses: 0, failures: 2, slowFailures: 0, ignored: 0, stale: false), count: 10)
        let (problems, trips) = try await Self.run(Case(policy: policy, steps: steps), redis: redis, name: "held-\(UInt32.random(in: 0...UInt32.max))")
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
        #expect(trips == 1)
    }

    @Test("plain successes on a quiet time window take the script's lean path, and agree with the full rules")
    func leanSuccesses() async throws {
        let server = try await SharedServer.get()
        let redis = try RedisClient(configuration: server.configuration())
        var policy = BreakerPolicy()
        policy.window = .time(samplingDuration: .seconds(10), buckets: 10)
        policy.failureRateThreshold = 0.5
        policy.minimumThroughput = 10
        func successes(_ sender: Int, _ count: Int) -> Step {
            .batch(sender: sender, successes: count, slowSuccesses: 0, failures: 0, slowFailures: 0, ignored: 0, stale: false)
        }
        func failures(_ sender: Int, _ count: Int) -> Step {
            .batch(sender: sender, successes: 0, slowSuccesses: 0, failures: count, slowFailures: 0, ignored: 0, stale: false)
        }
        // Each sender's first write makes it known (the full path); the rest are lean until a failure is in the window.
        let steps: [Step] = [
            successes(0, 3), successes(1, 4), successes(2, 5), successes(0, 6), successes(1, 7), successes(2, 8), .advance(milliseconds: 9000),
            successes(1, 5), successes(2, 2), .advance(milliseconds: 1000),
            // The oldest bucket's slot comes round again: what it held leaves the window (on the lean path).
            successes(0, 4), successes(1, 3), .advance(milliseconds: 1000), successes(2, 2), .advance(milliseconds: 12000),
            successes(0, 2), successes(1, 1), .advance(milliseconds: 1000),
            successes(0, 2), successes(1, 9), failures(2, 1), successes(1, 3), .advance(milliseconds: 4000),
            successes(0, 1), successes(2, 2), failures(1, 60),
        ]
        let (problems, trips) = try await Self.run(Case(policy: policy, steps: steps), redis: redis, name: "lean-\(UInt32.random(in: 0...UInt32.max))")
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
        #expect(trips == 1)
    }

    /// Runs one case; returns the disagreements (the run stops at the first step with any) and the trips seen.
    static func run(_ testCase: Case, redis: RedisClient, name: String) async throws -> ([String], Int) {
        let policy = try testCase.policy.validated()
        var options = DistributedOptions(redis: redis.configuration)
        options.namespace = uniqueNamespace("bm")
        let rules = PolicyRules(policy, options: options)
        let keys = DistributedBackend.keys(namespace: options.namespace, name: name)
        var milliseconds: Int64 = 1_800_000_000_000
        var model = BreakerStateMachine(name: name, policy: policy, now: milliseconds * 1_000_000)
        var sequences = [0, 0, 0]
        var problems: [String] = []
        var trips = 0
        var policyStored = false

        func script(_ op: String, sender: Int, _ extra: [any RedisArgument]) async throws -> StateReply {
            let durations = (1...4).map { String(policy.breakDuration.duration(forAttempt: model.attempt + $0).milliseconds) }
            var breaker: [any RedisArgument] = [op, name]
            breaker += rules.arguments as [any RedisArgument]
            // The JSON only until Redis holds it, as instances send it (the script's lean path needs it absent).
            breaker += [rules.fingerprint, policyStored ? "" : rules.json, model.attempt, durations.joined(separator: ",")] as [any RedisArgument]
            breaker += extra
            let header: [any RedisArgument] = ["\(options.namespace):transitions", "instance-\(sender)", String(milliseconds), "1000", "sender-\(sender)", "0", "0"]
            let reply = try await redis.run(LuaScript.breaker, keys: keys, arguments: header + [breaker.count] + breaker)
            guard let first = reply.array?.first else { throw RedisError(code: .unexpectedReply, message: "\(reply)") }
            if case .error(let message) = first { throw RedisError(code: .serverError, message: message) }
            let parsed = try StateReply(first, key: keys[0])
            policyStored = parsed.policyStored
            return parsed
        }
        var lua = try await script("read", sender: 0, [])

        for (index, step) in testCase.steps.enumerated() {
            let now = milliseconds * 1_000_000
            let stateBefore = model.state
            switch step {
            case .batch(let sender, let s, let ss, let f, let sf, let ignored, let stale):
                var batch = OutcomeBatch(version: stale ? model.version - 1 : model.version)
                batch.successes = s
                batch.slowSuccesses = ss
                batch.failures = f
                batch.slowFailures = sf
                batch.ignored = ignored
                // The order the window takes them in is the order they happened: successes, then failures.
                batch.leadingFailures = s + ss == 0 ? f + sf : 0
                batch.longestFailureRun = f + sf
                batch.trailingFailures = f + sf
                batch.firstError = "ConformanceErrorA"
                guard s + ss + f + sf + ignored > 0 else { continue }
                _ = model.record(batch, now: now)
                sequences[sender] += 1
                var extra: [any RedisArgument] = [
                    sequences[sender], batch.version, Int(lua.created), "1", "0", ignored, 0,
                    batch.leadingFailures, batch.longestFailureRun, batch.trailingFailures,
                ]
                extra += f + sf > 0 ? [1, "ConformanceErrorA", f + sf] as [any RedisArgument] : [0]
                if rules.bucketMilliseconds > 0, s >= 2, ss + f + sf == 0 {
                    // Two groups of one bucket, as an instance can send them (one it could not place, 0, and one it
                    // placed in the current bucket): the script sums them.
                    extra += [0, s / 2, 0, 0, 0, Int(milliseconds / rules.bucketMilliseconds), s - s / 2, 0, 0, 0] as [any RedisArgument]
                } else {
                    extra += [0, s, ss, f, sf] as [any RedisArgument]
                }
                lua = try await script("record", sender: sender, extra)
            case .probe(let sender, let failed):
                let (admission, _) = model.acquire(now: now)
                lua = try await script("acquire", sender: sender, [])
                let modelProbe: Bool = if case .admitted(let token) = admission { token.isProbe } else { false }
                if modelProbe != (lua.granted == 2) {
                    problems.append("step \(index + 1) \(step): probe granted \(modelProbe) (Swift) vs \(lua.granted) (Lua)")
                    break
                }
                guard modelProbe else { continue }
                var batch = OutcomeBatch(version: model.version, isProbe: true)
                if failed { batch.failures = 1 } else { batch.successes = 1 }
                batch.firstError = "ConformanceErrorA"
                _ = model.record(batch, now: now)
                sequences[sender] += 1
                var extra: [any RedisArgument] = [sequences[sender], batch.version, Int(lua.created), "1", "1", 0, 0, failed ? 1 : 0, failed ? 1 : 0, failed ? 1 : 0]
                extra += failed ? [1, "ConformanceErrorA", 1] as [any RedisArgument] : [0]
                extra += [0, failed ? 0 : 1, 0, failed ? 1 : 0, 0] as [any RedisArgument]
                lua = try await script("record", sender: sender, extra)
            case .advance(let ms):
                milliseconds += ms
                _ = model.advance(now: milliseconds * 1_000_000)
                lua = try await script("read", sender: 0, [])
            case .reset:
                _ = model.reset(now: now)
                lua = try await script("reset", sender: 0, [])
            }
            if model.state == .open && stateBefore != .open { trips += 1 }
            lua = try await script("read", sender: 0, [])
            let (snapshot, _) = model.snapshot(now: milliseconds * 1_000_000)
            let luaTotals = { (field: String) in Int(lua.totals[field] ?? "0") ?? -1 }
            let figures: [(String, String, String)] = [
                ("state", "\(snapshot.state)", "\(lua.state)"),
                ("version", "\(snapshot.version)", "\(lua.version)"),
                ("windowCalls", "\(snapshot.windowCalls)", "\(lua.windowCalls)"),
                ("windowFailures", "\(snapshot.windowFailures)", "\(lua.windowFailures)"),
                ("windowSlowCalls", "\(snapshot.windowSlowCalls)", "\(lua.windowSlow)"),
                ("consecutiveFailures", "\(snapshot.consecutiveFailures)", "\(lua.consecutiveFailures)"),
                ("probesInFlight", "\(snapshot.probesInFlight)", "\(lua.probes)"),
                ("totals.calls", "\(snapshot.totals.calls)", "\(luaTotals("calls"))"),
                ("totals.failures", "\(snapshot.totals.failures)", "\(luaTotals("failures"))"),
                ("totals.slow", "\(snapshot.totals.slow)", "\(luaTotals("slow"))"),
            ]
            for (figure, swift, script) in figures where swift != script {
                problems.append("step \(index + 1) \(step): \(figure) \(swift) (Swift) vs \(script) (Lua)")
            }
            if !problems.isEmpty { break }
        }
        return (problems, trips)
    }
}
