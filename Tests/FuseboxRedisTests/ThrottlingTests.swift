import Fusebox
import FuseboxTestKit
import Logging
import Synchronization
import Testing
import TestKinds

@testable import FuseboxRedis

/// A dependency that accepts at most `perSecond` calls a second (a token bucket, refilled continuously, holding
/// at most a tenth of a second's worth) and refuses the rest at once.
final class LimitedDependency: Sendable {
    struct Refused: Error {}
    private let perSecond: Double
    private let state: Mutex<(tokens: Double, at: ContinuousClock.Instant)>

    init(perSecond: Double) {
        self.perSecond = perSecond
        state = Mutex((perSecond / 10, .now))
    }

    func call() throws {
        let accepted = state.withLock { state in
            let now = ContinuousClock.now
            let elapsed = now - state.at
            state.tokens = min(perSecond / 10, state.tokens + perSecond * Double(elapsed.components.seconds) + perSecond * Double(elapsed.components.attoseconds) / 1e18)
            state.at = now
            guard state.tokens >= 1 else { return false }
            state.tokens -= 1
            return true
        }
        if !accepted { throw Refused() }
    }
}

/// What reached the dependency and what it accepted, per second of a run.
final class LoadLedger: Sendable {
    private let counts: Mutex<[(sent: Int, accepted: Int, shed: Int)]>
    let started = ContinuousClock.now

    init(seconds: Int) { counts = Mutex(Array(repeating: (0, 0, 0), count: seconds + 2)) }

    func note(sent: Bool, accepted: Bool, shed: Bool) {
        let second = Int((ContinuousClock.now - started).components.seconds)
        counts.withLock { counts in
            guard second < counts.count else { return }
            if sent { counts[second].sent += 1 }
            if accepted { counts[second].accepted += 1 }
            if shed { counts[second].shed += 1 }
        }
    }

    /// Calls sent and accepted per second over seconds `range`.
    func rates(_ range: Range<Int>) -> (sent: Double, accepted: Double, shed: Double) {
        counts.withLock { counts in
            let slice = counts[range]
            let n = Double(range.count)
            return (Double(slice.map(\.sent).reduce(0, +)) / n, Double(slice.map(\.accepted).reduce(0, +)) / n,
                    Double(slice.map(\.shed).reduce(0, +)) / n)
        }
    }
}

/// Offers `perSecond` calls a second through `breaker` to `dependency` for `seconds`, one every 1/perSecond.
private func offer(_ breaker: CircuitBreaker, perSecond: Int, seconds: Int, to dependency: LimitedDependency, ledger: LoadLedger) async {
    let interval = Duration.seconds(1) / perSecond
    var next = ledger.started
    let end = ledger.started + .seconds(seconds)
    while next < end {
        next += interval
        try? await Task.sleep(until: next)
        do {
            try await breaker.run {
                do {
                    try dependency.call()
                    ledger.note(sent: true, accepted: true, shed: false)
                } catch {
                    ledger.note(sent: true, accepted: false, shed: false)
                    throw error
                }
            }
        } catch let error as FuseboxError where error.code == .throttled {
            ledger.note(sent: false, accepted: false, shed: true)
        } catch {}
    }
}

/// Sheds load by the SRE book's rule only (no trip rule), K = 2.
private func throttlingPolicy() -> BreakerPolicy {
    var policy = BreakerPolicy()
    policy.failureRateThreshold = nil
    policy.adaptiveThrottling = .init(multiplier: 2)
    return policy
}

@Suite("Adaptive throttling", .kind(.timingBound), .timeLimit(.minutes(2)))
struct ThrottlingTests {
    static let seconds = 12
    static let offered = 100  // calls a second, per instance

    /// Four instances offer 100 calls a second each to a dependency that accepts 30 % of the 400: what is sent
    /// should settle near K × accepts (240 a second), within 10 s.
    private static func fleetRun(_ breakers: [CircuitBreaker]) async -> LoadLedger {
        let dependency = LimitedDependency(perSecond: 0.3 * Double(offered * breakers.count))
        let ledger = LoadLedger(seconds: seconds)
        await withTaskGroup(of: Void.self) { group in
            for breaker in breakers {
                group.addTask { await offer(breaker, perSecond: offered, seconds: seconds, to: dependency, ledger: ledger) }
            }
        }
        return ledger
    }

    private static func judge(_ ledger: LoadLedger, _ label: String) -> (sent: Double, target: Double) {
        let unthrottled = ledger.rates(0..<2)
        let settled = ledger.rates(6..<10)
        let end = ledger.rates(10..<12)
        let target = 2 * settled.accepted
        print("""
            throttling, \(label): first 2 s sent \(unthrottled.sent)/s; seconds 6-10: sent \(settled.sent)/s, accepted \
            \(settled.accepted)/s, shed \(settled.shed)/s, K x accepts \(target)/s; seconds 10-12: sent \(end.sent)/s, accepted \(end.accepted)/s
            """)
        return (settled.sent, target)
    }

    @Test("four instances share what they learn: the fleet sends about K x accepts within 10 s, and sheds what the dependency refuses")
    func fleet() async throws {
        let server = try await SharedServer.get()
        let fleet = try Instance.fleet(4, testOptions(server))
        defer { Task { for instance in fleet { await instance.stop() } } }
        let breakers = try fleet.map { try $0.registry.breaker("throttled", policy: throttlingPolicy()) }
        for breaker in breakers { _ = try await breaker.snapshot() }
        let ledger = await Self.fleetRun(breakers)
        let (sent, target) = Self.judge(ledger, "4 instances, distributed")
        #expect(abs(sent - target) <= 0.2 * target, "sent \(sent)/s, K x accepts \(target)/s")
        #expect(sent < 0.8 * Double(Self.offered * 4), "throttling shed load")
        // One shared window: every instance sheds with the same probability.
        let probabilities = try await breakers.asyncMap { try await $0.snapshot().throttleProbability }
        #expect(probabilities.max()! - probabilities.min()! < 0.05, "\(probabilities)")
        let snapshot = try await breakers[0].snapshot()
        #expect(snapshot.windowThrottled > 0 && snapshot.state == .closed)
    }

    @Test("four instances each learning alone (local adapter): the same rule, each from its own quarter of the calls")
    func eachAlone() async throws {
        let registries = (0..<4).map { _ in BreakerRegistry(adapter: LocalAdapter()) }
        let breakers = try registries.map { try $0.breaker("throttled", policy: throttlingPolicy()) }
        let ledger = await Self.fleetRun(breakers)
        let (sent, target) = Self.judge(ledger, "4 instances, each alone")
        #expect(abs(sent - target) <= 0.2 * target, "sent \(sent)/s, K x accepts \(target)/s")
    }

    @Test("one process (local adapter): the same rule converges")
    func oneProcess() async throws {
        let breaker = try BreakerRegistry(adapter: LocalAdapter()).breaker("throttled", policy: throttlingPolicy())
        let ledger = await Self.fleetRun([breaker])
        let (sent, target) = Self.judge(ledger, "1 process, local")
        #expect(abs(sent - target) <= 0.2 * target, "sent \(sent)/s, K x accepts \(target)/s")
    }

    @Test("throttling composes with the trip rules: a healthy dependency that goes down opens the breaker before throttling sheds a call", arguments: [false, true])
    func stillTrips(distributed: Bool) async throws {
        let server = try await SharedServer.get()
        let instance = try Instance(testOptions(server))
        defer { Task { await instance.stop() } }
        var policy = throttlingPolicy()
        policy.failureRateThreshold = 0.5
        policy.minimumThroughput = 20
        let registry = distributed ? instance.registry : BreakerRegistry(adapter: LocalAdapter())
        let breaker = try registry.breaker("throttled-trips", policy: policy)
        for _ in 0..<100 { try await breaker.run {} }
        // With K = 2, shedding starts once requests exceed twice the 100 accepted: after 100 failures, where the
        // failure ratio reaches 0.5 and trips.
        var shed = 0
        var failed = 0
        for _ in 0..<400 {
            do {
                try await breaker.run { throw LimitedDependency.Refused() }
            } catch let error as FuseboxError where error.code == .throttled {
                shed += 1
            } catch let error as FuseboxError where error.code == .circuitOpen {
                break
            } catch {
                failed += 1
            }
        }
        #expect(try await breaker.snapshot().state == .open)
        // Locally the 100th failure trips; a distributed instance learns of the trip from Redis' reply, a few
        // failures later.
        #expect(shed == 0 && (distributed ? failed >= 100 : failed == 100), "shed \(shed), failed \(failed)")
    }

    @Test("a policy with throttling is refused with a count window or a multiplier out of range")
    func validation() {
        var count = throttlingPolicy()
        count.window = .count(50)
        #expect(throws: FuseboxError.self) { try count.validated() }
        for multiplier in [0.5, 101, .nan] {
            var policy = throttlingPolicy()
            policy.adaptiveThrottling = .init(multiplier: multiplier)
            #expect { try policy.validated() } throws: { ($0 as? FuseboxError)?.message.contains("adaptiveThrottling.multiplier") == true }
        }
    }
}

extension Array {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var result: [T] = []
        for element in self { result.append(try await transform(element)) }
        return result
    }
}
