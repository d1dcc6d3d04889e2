import Fusebox
import Hiredis
import Testing
import TestKinds

@testable import FuseboxRedis

/// The distributed adapter's decisions, on its cache alone: no Redis, no threads, the clock a number. What Redis would
/// answer is a script reply made here; the rules checked are the ones in `Cache.swift` and `PendingOutcomes.swift`,
/// the same code the adapter runs under its lock.
@Suite("Cache decisions without Redis: admission, writing at once, flush urgency, recall, retransmission", .kind(.unit))
struct CacheDecisionTests {
    struct PaymentError: Error {}

    /// 1 s on this instance's clock is Redis time 1,000 ms: no offset.
    static let second: Int64 = 1_000_000_000

    static func cache(_ configure: (inout BreakerPolicy) -> Void = { _ in }) -> Subject {
        var policy = BreakerPolicy()
        policy.window = .time(samplingDuration: .seconds(10), buckets: 10)
        policy.failureRateThreshold = 0.5
        policy.minimumThroughput = 10
        configure(&policy)
        let options = DistributedOptions(redis: try! RedisConfiguration(url: "redis://127.0.0.1:1"))
        return Subject(Cache(state: .closed, rules: PolicyRules(policy, options: options)))
    }

    /// A reply of lua/breaker.lua, element by element (see the reply's description at the top of the script).
    static func reply(
        state: BreakerState = .closed, version: Int = 1, at milliseconds: Int64 = 1_000, openUntil: Int64 = 0,
        window: (calls: Int, failures: Int, slow: Int) = (0, 0, 0), consecutiveFailures: Int = 0, budget: Int = 0,
        created: Int64 = 7
    ) -> StateReply {
        func text(_ value: String) -> RESPValue { .bulk(Array(value.utf8)) }
        let values: [RESPValue] = [
            text(state.rawValue), .integer(version), .integer(Int(milliseconds)), .integer(Int(openUntil)), .integer(Int(milliseconds)),
            .integer(0), text("a reason"), text(""), .integer(consecutiveFailures), .integer(0), .integer(0), .integer(1),
            .integer(window.calls), .integer(window.failures), .integer(window.slow), .integer(0), .integer(Int(created)),
            .array([]), .integer(budget), .integer(1), .integer(0),
        ]
        return try! StateReply(.array(values), key: "fusebox:{test}:state")
    }

    // MARK: - Writing at once

    @Test("a first failure is written at once; then the budget Redis granted is held, and the one past it is written")
    func budget() {
        let cache = Self.cache()
        _ = cache.apply(Self.reply(window: (100, 0, 0)), now: Self.second)
        #expect(cache.recorded(.failure(PaymentError.self), now: Self.second), "no budget granted yet: written at once")

        let granted = Self.cache()
        _ = granted.apply(Self.reply(window: (100, 0, 0), budget: 2), now: Self.second)
        #expect(!granted.recorded(.failure(PaymentError.self), now: Self.second))
        #expect(!granted.recorded(.failure(PaymentError.self), now: Self.second))
        #expect(granted.recorded(.failure(PaymentError.self), now: Self.second), "the third failure is past a budget of 2")
        #expect(!granted.recorded(.success, now: Self.second), "a success is never urgent")
    }

    @Test("a failure that may cross the failure ratio, by the last window plus what is held, is written at once whatever the budget")
    func failureRatio() {
        let cache = Self.cache()
        _ = cache.apply(Self.reply(window: (10, 4, 0), budget: 100), now: Self.second)
        #expect(!cache.recorded(.failure(PaymentError.self), now: Self.second), "5 of 11: 0.45")
        #expect(cache.recorded(.failure(PaymentError.self), now: Self.second), "6 of 12: 0.50")
    }

    @Test("a failure that completes the consecutive-failure streak is written at once; a success in between restarts it")
    func streak() {
        let cache = Self.cache { $0.consecutiveFailureThreshold = 3 }
        _ = cache.apply(Self.reply(window: (100, 1, 0), consecutiveFailures: 1, budget: 100), now: Self.second)
        #expect(!cache.recorded(.failure(PaymentError.self), now: Self.second), "streak 2")
        #expect(cache.recorded(.failure(PaymentError.self), now: Self.second), "streak 3")

        let broken = Self.cache { $0.consecutiveFailureThreshold = 3 }
        _ = broken.apply(Self.reply(window: (100, 1, 0), consecutiveFailures: 1, budget: 100), now: Self.second)
        #expect(!broken.recorded(.failure(PaymentError.self), now: Self.second))
        #expect(!broken.recorded(.success, now: Self.second))
        #expect(!broken.recorded(.failure(PaymentError.self), now: Self.second), "streak 1 after the success")
        #expect(!broken.recorded(.failure(PaymentError.self), now: Self.second), "streak 2")
        #expect(broken.recorded(.failure(PaymentError.self), now: Self.second), "streak 3")
    }

    @Test("a slow call that may cross the slow-call ratio is written at once (the rule the state machine trips by)")
    func slowCallRatio() {
        let cache = Self.cache {
            $0.failureRateThreshold = nil
            $0.slowCallRateThreshold = 0.5
        }
        _ = cache.apply(Self.reply(window: (10, 0, 4), budget: 100), now: Self.second)
        #expect(!cache.recorded(.success, slow: true, now: Self.second), "5 slow of 11")
        #expect(cache.recorded(.success, slow: true, now: Self.second), "6 slow of 12")
    }

    @Test("nothing is urgent while the breaker is not closed, or for an ignored outcome")
    func notClosed() {
        let cache = Self.cache()
        _ = cache.apply(Self.reply(state: .open, openUntil: 6_000), now: Self.second)
        #expect(!cache.recorded(.failure(PaymentError.self), now: Self.second))
        let closed = Self.cache()
        _ = closed.apply(Self.reply(window: (100, 0, 0)), now: Self.second)
        #expect(!closed.recorded(.ignored, now: Self.second))
    }

    // MARK: - Admission

    @Test("open: rejected from the cache until the break ends, with the time left; then Redis is asked for a probe")
    func openAdmission() {
        let cache = Self.cache()
        _ = cache.apply(Self.reply(state: .open, openUntil: 6_000), now: Self.second)
        guard case (.decided(.rejected(let error)), _) = cache.admit(now: 2 * Self.second) else {
            Issue.record("an open breaker must reject")
            return
        }
        #expect(error.code == .circuitOpen && error.state == .open)
        #expect(error.retryAfter == .seconds(4))
        #expect(cache.pending.rejected == 1, "the rejection is counted, to be written with the next batch")
        guard case (.askRedis, _) = cache.admit(now: 6 * Self.second) else {
            Issue.record("a break that has ended asks Redis (probe permits are fleet-wide)")
            return
        }
    }

    @Test("closed: admitted under the cached version; not known yet: Redis is asked")
    func closedAndUnknown() {
        let unknown = Self.cache()
        guard case (.askRedis, _) = unknown.admit(now: Self.second) else {
            Issue.record("a state not known yet asks Redis")
            return
        }
        let cache = Self.cache()
        _ = cache.apply(Self.reply(version: 4), now: Self.second)
        guard case (.decided(.admitted(let token)), _) = cache.admit(now: Self.second) else {
            Issue.record("closed admits")
            return
        }
        #expect(token.version == 4 && !token.isProbe)
    }

    @Test("Redis unavailable: failClosed rejects, failOpen admits, local takes up the open state Redis last had")
    func storeDown() {
        func unavailable() -> Subject {
            let cache = Self.cache()
            _ = cache.apply(Self.reply(state: .open, openUntil: 6_000), now: Self.second)
            _ = cache.setHealth(.unavailable("connection refused"))
            return cache
        }
        let closedCache = unavailable()
        guard case (.decided(.rejected(let error)), _) = closedCache.admit(now: 2 * Self.second, storeDown: .failClosed) else {
            Issue.record("failClosed rejects")
            return
        }
        #expect(error.code == .backendUnavailable && error.message.contains("connection refused"))

        let openCache = unavailable()
        guard case (.decided(.admitted), _) = openCache.admit(now: 2 * Self.second, storeDown: .failOpen) else {
            Issue.record("failOpen admits")
            return
        }

        let localCache = unavailable()
        guard case (.decided(.rejected(let local)), _) = localCache.admit(now: 2 * Self.second, storeDown: .local) else {
            Issue.record("the local fallback takes up the open state")
            return
        }
        #expect(local.state == .open && localCache.fallback?.state == .open)
    }

    @Test("a reply older than the cache changes nothing")
    func olderReply() {
        let cache = Self.cache()
        _ = cache.apply(Self.reply(state: .open, version: 3, openUntil: 6_000), now: Self.second)
        let (transition, _) = cache.apply(Self.reply(state: .closed, version: 2), now: Self.second)
        #expect(transition == nil && cache.state == .open && cache.version == 3)
    }

    // MARK: - Flush urgency and recall

    @Test("quiet successes wait for the quiet hold, ride along from half of it, and are due at its end; a failure is due at once")
    func flushUrgency() {
        let cache = Self.cache()
        _ = cache.apply(Self.reply(window: (100, 0, 0), budget: 5), now: Self.second)
        let hold = cache.rules.quietHoldNanoseconds
        let flush: Int64 = 200_000_000
        func urgency(at now: Int64) -> FlushUrgency {
            cache.flushUrgency(oldestStriped: .max, now: now, flushNanoseconds: flush, quietHold: { base, _ in base })
        }
        #expect(urgency(at: Self.second) == FlushUrgency.none, "nothing held")
        _ = cache.recorded(.success, now: Self.second)
        #expect(urgency(at: Self.second + 1) == FlushUrgency.none)
        #expect(urgency(at: Self.second + hold / 2) == .halfway)
        #expect(urgency(at: Self.second + hold - flush) == .quietDue)
        _ = cache.recorded(.failure(PaymentError.self), now: Self.second + 1)
        #expect(urgency(at: Self.second + 2) == .due)
    }

    @Test("a recall that shrinks the budget below what is held asks for a write; a reply to an older write cannot raise it again")
    func recall() {
        let cache = Self.cache()
        _ = cache.apply(Self.reply(window: (100, 0, 0), budget: 5), now: Self.second)
        for _ in 0..<3 { #expect(!cache.recorded(.failure(PaymentError.self), now: Self.second)) }
        #expect(cache.applyRecall(version: 1, created: 7, budget: 1, at: 1_500, windowQuiet: false))
        _ = cache.apply(Self.reply(window: (100, 0, 0), budget: 5), now: Self.second)
        #expect(cache.budget == 1, "the reply ran at 1,000 ms, before the recall's write at 1,500 ms")
        #expect(!cache.applyRecall(version: 2, created: 7, budget: 0, at: 1_600, windowQuiet: false), "another version's recall")
    }

    // MARK: - Retransmission

    @Test("a write that may have run goes again alone with its sequence number; what was recorded since waits behind it")
    func retransmission() {
        let cache = Self.cache()
        _ = cache.apply(Self.reply(window: (100, 0, 0), budget: 5), now: Self.second)
        _ = cache.recorded(.failure(PaymentError.self), now: Self.second)
        var first = cache.take()
        #expect(first.count == 1 && cache.take().isEmpty, "one write outstanding at a time")
        first[0].sequence = 1
        #expect(cache.settle(first[0], written: false))
        _ = cache.recorded(.success, now: Self.second)

        var again = cache.take()
        #expect(again.map(\.sequence) == [1] && again[0].failures == 1 && again[0].successes == 0)
        #expect(cache.settle(again[0], written: true))
        let next = cache.take()
        #expect(next.count == 1 && next[0].sequence == nil && next[0].successes == 1 && next[0].failures == 0)

        // One that certainly did not run (refused before it ran) joins what was recorded since, number dropped.
        let refused = Self.cache()
        _ = refused.apply(Self.reply(window: (100, 0, 0), budget: 5), now: Self.second)
        _ = refused.recorded(.failure(PaymentError.self), now: Self.second)
        again = refused.take()
        again[0].sequence = 9
        #expect(refused.settle(again[0], written: false, certainlyNotRun: true))
        _ = refused.recorded(.success, now: Self.second)
        let joined = refused.take()
        #expect(joined.count == 1 && joined[0].sequence == nil && joined[0].failures == 1 && joined[0].successes == 1)
    }
}

/// A cache behind a reference, so that `#expect` can call its mutating methods; properties read through.
@dynamicMemberLookup
final class Subject {
    var cache: Cache

    init(_ cache: Cache) { self.cache = cache }

    subscript<T>(dynamicMember keyPath: WritableKeyPath<Cache, T>) -> T {
        get { cache[keyPath: keyPath] }
        set { cache[keyPath: keyPath] = newValue }
    }

    /// Records an outcome as the adapter does under its lock, and answers whether it must be written at once.
    func recorded(_ outcome: CallOutcome, slow: Bool = false, now: Int64) -> Bool {
        _ = cache.pending.append(
            outcome, slow: slow, version: cache.version, created: cache.created, probe: false, bucket: 0, now: now, limit: .max)
        return cache.mustWriteNow(after: outcome, slow: slow, policy: cache.rules.policy)
    }

    func admit(now: Int64, storeDown: StoreDownPolicy = .failClosed) -> (Cache.Decision, BreakerTransition?) {
        cache.admission(name: "test", now: now, storeDown: storeDown, admissionBudget: .milliseconds(50))
    }

    func apply(_ reply: StateReply, now: Int64) -> (BreakerTransition?, Bool) { cache.apply(reply, now: now) }

    func applyRecall(version: Int, created: Int64, budget: Int, at: Int64?, windowQuiet: Bool) -> Bool {
        cache.applyRecall(version: version, created: created, budget: budget, at: at, windowQuiet: windowQuiet)
    }

    func setHealth(_ health: StoreHealth) -> Bool { cache.setHealth(health) }

    func take() -> [PendingOutcomes.Batch] { cache.pending.take() }

    func settle(_ batch: PendingOutcomes.Batch, written: Bool, certainlyNotRun: Bool = false) -> Bool {
        cache.pending.settle(batch, written: written, certainlyNotRun: certainlyNotRun)
    }

    func flushUrgency(oldestStriped: Int64, now: Int64, flushNanoseconds: Int64, quietHold: (Int64, Bool) -> Int64) -> FlushUrgency {
        cache.flushUrgency(oldestStriped: oldestStriped, now: now, flushNanoseconds: flushNanoseconds, quietHold: quietHold)
    }
}
