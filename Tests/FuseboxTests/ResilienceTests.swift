@testable import Fusebox
import FuseboxLocking
import FuseboxTestKit
import PropertyBased
import Synchronization
import Testing
import TestKinds

private struct Flaky: Error {}

/// Counts attempts and fails the first `failing` of them.
fileprivate final class Attempts: Sendable {
    let count = Atomic<Int>(0)
    let failing: Int
    init(failing: Int = .max) { self.failing = failing }
    func call() throws -> Int {
        let number = count.add(1, ordering: .relaxed).newValue
        if number <= failing { throw Flaky() }
        return number
    }
    var made: Int { count.load(ordering: .relaxed) }
}

private final class Events: Sendable {
    let list = Locked<[RetryEvent]>([])
    func add(_ event: RetryEvent) { list.withLock { $0.append(event) } }
    var gaveUp: RetryEvent.GiveUpReason? {
        list.withLock { $0 }.compactMap { if case .gaveUp(_, let reason, _) = $0 { reason } else { nil } }.last
    }
}

@Suite("Retry", .kind(.integration))
struct RetryTests {
    @Test("attempts and delays on a manual clock: exponential, capped by maxDelay")
    func exponential() async throws {
        let clock = ManualClock(advancesOnSleep: true)
        var policy = RetryPolicy(maxAttempts: 4, backoff: .exponential(base: .milliseconds(100), factor: 2))
        policy.maxDelay = .milliseconds(250)
        let events = Events()
        policy.onEvent = events.add
        let attempts = Attempts()
        let pipeline = ResiliencePipeline<Int>().retry(policy, clock: clock)
        await #expect(throws: Flaky.self) { try await pipeline.run { try attempts.call() } }
        #expect(attempts.made == 4)
        #expect(clock.sleeps == [.milliseconds(100), .milliseconds(200), .milliseconds(250)])
        #expect(events.gaveUp == .attempts)
    }

    @Test("constant, linear and decorrelated-jitter delays")
    func backoffs() {
        var random = SystemRandomNumberGenerator()
        let constant = RetryPolicy(maxAttempts: 5, backoff: .constant(.milliseconds(50)))
        #expect((1...3).map { constant.delay(beforeRetry: $0, previous: .zero, using: &random) } == Array(repeating: .milliseconds(50), count: 3))
        let linear = RetryPolicy(maxAttempts: 5, backoff: .linear(.milliseconds(50)))
        #expect((1...3).map { linear.delay(beforeRetry: $0, previous: .zero, using: &random) } == [.milliseconds(50), .milliseconds(100), .milliseconds(150)])
        let jitter = RetryPolicy(maxAttempts: 5, backoff: .decorrelatedJitter(base: .milliseconds(10)))
        var previous = Duration.milliseconds(10)
        for retry in 1...50 {
            let delay = jitter.delay(beforeRetry: retry, previous: previous, using: &random)
            #expect(delay >= .milliseconds(10) && delay <= previous * 3 + .milliseconds(1))
            previous = delay
        }
    }

    @Test("the deadline stops retries whose delay would end past it; success on a later attempt ends the loop")
    func deadline() async throws {
        let clock = ManualClock(advancesOnSleep: true)
        var policy = RetryPolicy(maxAttempts: 10, backoff: .constant(.milliseconds(100)))
        policy.deadline = .milliseconds(250)
        let events = Events()
        policy.onEvent = events.add
        let attempts = Attempts()
        await #expect(throws: Flaky.self) { try await ResiliencePipeline<Int>().retry(policy, clock: clock).run { try attempts.call() } }
        #expect(attempts.made == 3)
        #expect(events.gaveUp == .deadline)

        let recovering = Attempts(failing: 2)
        #expect(try await ResiliencePipeline<Int>().retry(policy, clock: clock).run { try recovering.call() } == 3)
    }

    @Test("the retry budget caps retries during an outage")
    func budget() async throws {
        let clock = ManualClock(advancesOnSleep: true)
        let budget = RetryBudget(ratio: 0.1, minimumPerSecond: 0, window: .seconds(10), clock: clock)
        let policy = RetryPolicy(maxAttempts: 3, backoff: .constant(.zero), budget: budget)
        let pipeline = ResiliencePipeline<Int>().retry(policy, clock: clock)
        let attempts = Attempts()
        for _ in 0..<100 { _ = try? await pipeline.run { try attempts.call() } }
        // 100 calls may add 10 % retries, not the 200 that three attempts each would make.
        #expect(attempts.made == 110)
        #expect(budget.available == 0)
        // The window moves on: old calls stop counting.
        clock.advance(by: .seconds(11))
        #expect(budget.available == 0)
        budget.recordCall()
        for _ in 0..<9 { budget.recordCall() }
        #expect(budget.available == 1)
    }

    @Test("a rejection by an open breaker is never retried")
    func noRetryOfRejection() async throws {
        var policy = BreakerPolicy()
        policy.consecutiveFailureThreshold = 2
        policy.failureRateThreshold = nil
        let breaker = try BreakerRegistry(adapter: LocalAdapter()).breaker("payments", policy: policy)
        let events = Events()
        var retry = RetryPolicy(maxAttempts: 5, backoff: .constant(.zero))
        retry.onEvent = events.add
        let attempts = Attempts()
        let pipeline = ResiliencePipeline<Int>().retry(retry, clock: ManualClock(advancesOnSleep: true)).breaker(breaker)
        // Two failures trip it; the third attempt is a rejection, and the retry stops there.
        await #expect { try await pipeline.run { try attempts.call() } } throws: { ($0 as? FuseboxError)?.code == .circuitOpen }
        #expect(attempts.made == 2)
        #expect(events.gaveUp == .notRetryable)
        // Once open, a call is one rejection: no attempt, no retry.
        await #expect(throws: FuseboxError.self) { try await pipeline.run { try attempts.call() } }
        #expect(attempts.made == 2)
    }
}

@Suite("Bulkhead", .kind(.integration))
struct BulkheadTests {
    @Test("at most maxConcurrent run; beyond the queue, bulkheadFull at once; the peak is kept")
    func limits() async throws {
        let bulkhead = try Bulkhead(name: "db", maxConcurrent: 2)
        let gate = AsyncStream<Void>.makeStream()
        let inside = Attempts()
        let running = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<2 {
                    group.addTask {
                        try await bulkhead.run {
                            inside.count.add(1, ordering: .relaxed)
                            for await _ in gate.stream { break }
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        while inside.made < 2 { try await Task.sleep(for: .milliseconds(1)) }
        await #expect { try await bulkhead.run { 0 } } throws: { ($0 as? FuseboxError)?.code == .bulkheadFull }
        #expect(bulkhead.snapshot.running == 2 && bulkhead.snapshot.peak == 2 && bulkhead.snapshot.rejected == 1)
        gate.continuation.finish()
        try await running.value
        #expect(bulkhead.snapshot.running == 0)
        #expect(try await bulkhead.run { 7 } == 7)
    }

    @Test("a queued call waits for a slot, and fails with bulkheadFull when its queue timeout passes first")
    func queueTimeout() async throws {
        let bulkhead = try Bulkhead(name: "db", maxConcurrent: 1, maxQueued: 1, queueTimeout: .milliseconds(50))
        let gate = AsyncStream<Void>.makeStream()
        let holder = Task { try await bulkhead.run { for await _ in gate.stream { break } } }
        while bulkhead.snapshot.running < 1 { try await Task.sleep(for: .milliseconds(1)) }
        let started = ContinuousClock.now
        await #expect { try await bulkhead.run { 0 } } throws: { ($0 as? FuseboxError)?.code == .bulkheadFull }
        #expect(ContinuousClock.now - started >= .milliseconds(50))
        #expect(bulkhead.snapshot.queued == 0)
        // A waiter that gets the slot in time runs.
        let waiter = Task { try await bulkhead.run { 42 } }
        while bulkhead.snapshot.queued < 1 { try await Task.sleep(for: .milliseconds(1)) }
        gate.continuation.finish()
        #expect(try await waiter.value == 42)
        try await holder.value
        #expect(bulkhead.snapshot.running == 0)
    }

    @Test("no slot leaks when a waiting or running task is cancelled, or the call throws")
    func cancellationAndErrors() async throws {
        let bulkhead = try Bulkhead(name: "db", maxConcurrent: 1, maxQueued: 5)
        let running = Task { try await bulkhead.run { try await Task.sleep(for: .seconds(60)) } }
        while bulkhead.snapshot.running < 1 { try await Task.sleep(for: .milliseconds(1)) }
        let waiter = Task { try await bulkhead.run { 1 } }
        while bulkhead.snapshot.queued < 1 { try await Task.sleep(for: .milliseconds(1)) }
        waiter.cancel()
        await #expect(throws: CancellationError.self) { try await waiter.value }
        #expect(bulkhead.snapshot.queued == 0)
        running.cancel()
        _ = await running.result
        #expect(bulkhead.snapshot.running == 0)
        await #expect(throws: Flaky.self) { try await bulkhead.run { throw Flaky() } }
        #expect(bulkhead.snapshot.running == 0)
        #expect(try await bulkhead.run { 3 } == 3)
    }

    @Test("under a crowd (tasks taking slots without waiting, queueing, timing out, cancelled): never more than the limit, every call accounted for, nothing left held")
    func crowd() async throws {
        let bulkhead = try Bulkhead(name: "crowd", maxConcurrent: 3, maxQueued: 4, queueTimeout: .milliseconds(2))
        final class Counts: Sendable {
            let inside = Atomic<Int>(0)
            let most = Atomic<Int>(0)
            let ran = Atomic<Int>(0)
            let full = Atomic<Int>(0)
            let refused = Atomic<Int>(0)
            let cancelled = Atomic<Int>(0)
            /// A call that runs to its end, cancelled or not (a cancellation shows only while a call waits).
            func body() async {
                let now = inside.add(1, ordering: .relaxed).newValue
                _ = most.max(now, ordering: .relaxed)
                ran.add(1, ordering: .relaxed)
                try? await Task.sleep(for: .microseconds(Int.random(in: 0...300)))
                inside.subtract(1, ordering: .relaxed)
            }
        }
        let counts = Counts()
        let calls = 600
        await withTaskGroup(of: Void.self) { group in
            for number in 0..<calls {
                let start = Duration.microseconds(Int.random(in: 0...30_000))
                let task = Task {
                    try? await Task.sleep(for: start)
                    do {
                        if number % 3 == 0, bulkhead.tryAcquire() {
                            defer { bulkhead.release() }
                            await counts.body()
                        } else if number % 3 == 0 {
                            counts.refused.add(1, ordering: .relaxed)
                        } else {
                            try await bulkhead.run { await counts.body() }
                        }
                    } catch let error as FuseboxError where error.code == .bulkheadFull {
                        counts.full.add(1, ordering: .relaxed)
                    } catch {
                        counts.cancelled.add(1, ordering: .relaxed)
                    }
                }
                if number % 7 == 0 { group.addTask { try? await Task.sleep(for: start + .microseconds(Int.random(in: 0...3000))); task.cancel() } }
                group.addTask { await task.value }
            }
        }
        let snapshot = bulkhead.snapshot
        #expect(counts.most.load(ordering: .relaxed) <= 3 && snapshot.peak <= 3, "at most 3 at once")
        let (ran, full, refused, cancelled) = (
            counts.ran.load(ordering: .relaxed), counts.full.load(ordering: .relaxed), counts.refused.load(ordering: .relaxed),
            counts.cancelled.load(ordering: .relaxed))
        #expect(ran + full + refused + cancelled == calls)
        #expect(snapshot.running == 0 && snapshot.queued == 0, "\(snapshot)")
        #expect(snapshot.admitted == ran && snapshot.rejected == full, "\(snapshot): ran \(ran), full \(full)")
        // Nothing is left counted as running or waiting: every slot can be taken again at once.
        #expect((0..<3).allSatisfy { _ in bulkhead.tryAcquire() })
        #expect(!bulkhead.tryAcquire())
        for _ in 0..<3 { bulkhead.release() }
        #expect(bulkhead.snapshot.running == 0)
    }

    @Test("bad limits are typed errors")
    func badLimits() {
        #expect(throws: FuseboxError.self) { try Bulkhead(name: "x", maxConcurrent: 0) }
        #expect(throws: FuseboxError.self) { try Bulkhead(name: "x", maxConcurrent: 1, maxQueued: -1) }
        #expect(throws: FuseboxError.self) { try Bulkhead(name: "x", maxConcurrent: 1, queueTimeout: .zero) }
    }
}

/// A stage of a generated pipeline.
fileprivate enum StageKind: CustomStringConvertible {
    case retry(attempts: Int)
    case breaker(isolated: Bool)
    case bulkhead(full: Bool)
    case fallback(answers: Bool)

    var description: String {
        switch self {
        case .retry(let attempts): "retry(\(attempts))"
        case .breaker(let isolated): isolated ? "breaker(isolated)" : "breaker"
        case .bulkhead(let full): full ? "bulkhead(full)" : "bulkhead"
        case .fallback(let answers): answers ? "fallback(-1)" : "fallback(throws)"
        }
    }
}

/// The error a throwing fallback answers with.
fileprivate struct Replaced: Error {}

/// What one call through a generated pipeline did: its answer, the attempts made, and every stage's counts.
fileprivate struct Trace: Equatable, CustomStringConvertible {
    var answer: String
    var attempts: Int
    var breaker: [Int]
    var bulkheads: [[Int]]
    var description: String { "\(answer), \(attempts) attempts, breaker \(breaker), bulkheads \(bulkheads)" }
}

@Suite("Resilience pipeline", .kind(.integration))
struct PipelineTests {
    /// Up to one retry and one breaker (the one-frame path's limit), up to two bulkheads and two fallbacks, in any
    /// order; a breaker isolated and a bulkhead full one time in four.
    fileprivate static let shapes: Generator<[StageKind], Shrink.None<[StageKind]>> = Generator { rng in
        var kinds: [StageKind] = []
        if Bool.random(using: &rng) { kinds.append(.retry(attempts: Int.random(in: 1...3, using: &rng))) }
        if Bool.random(using: &rng) { kinds.append(.breaker(isolated: Int.random(in: 0..<4, using: &rng) == 0)) }
        for _ in 0..<Int.random(in: 0...2, using: &rng) { kinds.append(.bulkhead(full: Int.random(in: 0..<4, using: &rng) == 0)) }
        for _ in 0..<Int.random(in: 0...2, using: &rng) { kinds.append(.fallback(answers: Bool.random(using: &rng))) }
        kinds.shuffle(using: &rng)
        return kinds
    }

    /// Builds `kinds` (behind an outer timeout stage when `nested`, which makes every stage a call around the next),
    /// runs one call whose first `failing` attempts throw, and reports what happened.
    private static func trace(_ kinds: [StageKind], failing: Int, nested: Bool) async throws -> Trace {
        let registry = BreakerRegistry(adapter: LocalAdapter())
        var policy = BreakerPolicy()
        policy.consecutiveFailureThreshold = 1000
        var pipeline = nested ? ResiliencePipeline<Int>().timeout(.seconds(60)) : ResiliencePipeline<Int>()
        var breaker: CircuitBreaker?
        var bulkheads: [Bulkhead] = []
        for kind in kinds {
            switch kind {
            case .retry(let attempts):
                pipeline = pipeline.retry(RetryPolicy(maxAttempts: attempts, backoff: .constant(.zero)))
            case .breaker(let isolated):
                let made = try registry.breaker("generated", policy: policy)
                if isolated { try await made.isolate(reason: "generated") }
                breaker = made
                pipeline = pipeline.breaker(made)
            case .bulkhead(let full):
                let made = try Bulkhead(name: "generated-\(bulkheads.count)", maxConcurrent: 1)
                if full { #expect(made.tryAcquire()) }
                bulkheads.append(made)
                pipeline = pipeline.bulkhead(made)
            case .fallback(let answers):
                pipeline = pipeline.fallback { _ in
                    if answers { return -1 }
                    throw Replaced()
                }
            }
        }
        #expect(pipeline.runsFlat == !nested)
        let attempts = Attempts(failing: failing)
        let answer: String
        do {
            answer = "value \(try await pipeline.run { try attempts.call() })"
        } catch let error as FuseboxError {
            answer = "FuseboxError \(error.code)"
        } catch {
            answer = "\(type(of: error))"
        }
        let totals = try await breaker?.snapshot().totals
        return Trace(
            answer: answer, attempts: attempts.made,
            breaker: totals.map { [$0.calls, $0.successes, $0.failures, $0.rejected] } ?? [],
            bulkheads: bulkheads.map { [$0.snapshot.running, $0.snapshot.admitted, $0.snapshot.rejected] })
    }

    @Test("the one-frame path and the nested one agree on every generated pipeline: answer, attempts, every stage's counts")
    func flatAgreesWithNested() async throws {
        await propertyCheck(count: 400, input: Self.shapes, Gen.int(in: 0...4)) { kinds, failing in
            await Task.yield()  // CPU-bound cases: leave the shared pool to the suites that time things
            do {
                let flat = try await Self.trace(kinds, failing: failing, nested: false)
                let nested = try await Self.trace(kinds, failing: failing, nested: true)
                #expect(flat == nested, "\(kinds), first \(failing) attempts failing")
            } catch {
                Issue.record("\(kinds): \(error)")
            }
        }
    }

    @Test("cancelled while waiting for a bulkhead slot, or while running: no slot and no permit is kept, on both paths", arguments: [false, true])
    func cancellation(nested: Bool) async throws {
        let breaker = try BreakerRegistry(adapter: LocalAdapter()).breaker("cancelled-\(nested)")
        let bulkhead = try Bulkhead(name: "cancelled", maxConcurrent: 1, maxQueued: 1)
        let base = nested ? ResiliencePipeline<Int>().timeout(.seconds(60)) : ResiliencePipeline<Int>()
        let pipeline = base.retry(RetryPolicy(maxAttempts: 3, backoff: .constant(.zero))).breaker(breaker).bulkhead(bulkhead)
        #expect(pipeline.runsFlat == !nested)
        let running = Task { try await pipeline.run { try await Task.sleep(for: .seconds(30)); return 1 } }
        #expect(await eventually { bulkhead.snapshot.running == 1 })
        let waiting = Task { try await pipeline.run { 2 } }
        #expect(await eventually { bulkhead.snapshot.queued == 1 })
        waiting.cancel()
        await #expect(throws: CancellationError.self) { try await waiting.value }
        #expect(bulkhead.snapshot.queued == 0 && bulkhead.snapshot.running == 1)
        running.cancel()
        await #expect(throws: CancellationError.self) { try await running.value }
        #expect(bulkhead.snapshot.running == 0)
        // Both calls were admitted by the breaker and ended cancelled: ignored, neither success nor failure.
        let totals = try await breaker.snapshot().totals
        #expect(totals.ignored == 2 && totals.failures == 0 && totals.successes == 0, "\(totals)")
        #expect(try await pipeline.run { 3 } == 3, "the slot and the breaker serve the next call")
    }

    @Test("which pipelines run in one frame: no timeout stage, no breaker with a call timeout, one retry and one breaker at most")
    func whichRunFlat() throws {
        let registry = BreakerRegistry(adapter: LocalAdapter())
        let breaker = try registry.breaker("plain")
        var timed = BreakerPolicy()
        timed.callTimeout = .seconds(1)
        let timedBreaker = try registry.breaker("timed", policy: timed)
        let bulkhead = try Bulkhead(name: "flat", maxConcurrent: 2)
        let retry = RetryPolicy(maxAttempts: 2)
        #expect(ResiliencePipeline<Int>().runsFlat)
        #expect(ResiliencePipeline<Int>().fallback { _ in 0 }.retry(retry).breaker(breaker).bulkhead(bulkhead).bulkhead(bulkhead).runsFlat)
        #expect(!ResiliencePipeline<Int>().retry(retry).breaker(breaker).timeout(.seconds(1)).runsFlat)
        #expect(!ResiliencePipeline<Int>().breaker(timedBreaker).runsFlat)
        #expect(!ResiliencePipeline<Int>().breaker(breaker).breaker(breaker).runsFlat)
        #expect(!ResiliencePipeline<Int>().retry(retry).retry(retry).runsFlat)
    }

    @Test("order matters and is honoured: a fallback inside a retry ends it, outside it answers after the last attempt")
    func order() async throws {
        let clock = ManualClock(advancesOnSleep: true)
        let retry = RetryPolicy(maxAttempts: 3, backoff: .constant(.milliseconds(10)))
        let inner = Attempts()
        let fallbackInside = ResiliencePipeline<Int>().retry(retry, clock: clock).fallback { _ in -1 }
        #expect(try await fallbackInside.run { try inner.call() } == -1)
        #expect(inner.made == 1)
        let outer = Attempts()
        let fallbackOutside = ResiliencePipeline<Int>().fallback { _ in -1 }.retry(retry, clock: clock)
        #expect(try await fallbackOutside.run { try outer.call() } == -1)
        #expect(outer.made == 3)
    }

    @Test("a timeout inside a retry limits each attempt; outside, the whole call")
    func timeouts() async throws {
        let retry = RetryPolicy(maxAttempts: 3, backoff: .constant(.zero))
        let slowFirst = Attempts()
        let perAttempt = ResiliencePipeline<Int>().retry(retry).timeout(.milliseconds(30))
        let value = try await perAttempt.run {
            let number = slowFirst.count.add(1, ordering: .relaxed).newValue
            if number == 1 { try await Task.sleep(for: .seconds(10)) }
            return number
        }
        #expect(value == 2)
        let overall = ResiliencePipeline<Int>().timeout(.milliseconds(30)).retry(retry)
        await #expect { try await overall.run { try await Task.sleep(for: .seconds(10)); return 0 } } throws: {
            ($0 as? FuseboxError)?.code == .callTimedOut
        }
    }

    @Test("breaker, bulkhead and retry record one outcome per attempt")
    func outcomes() async throws {
        let breaker = try BreakerRegistry(adapter: LocalAdapter()).breaker("search")
        let bulkhead = try Bulkhead(name: "search", maxConcurrent: 4)
        let pipeline = ResiliencePipeline<Int>()
            .retry(RetryPolicy(maxAttempts: 3, backoff: .constant(.zero)))
            .breaker(breaker)
            .bulkhead(bulkhead)
        let attempts = Attempts(failing: 2)
        #expect(try await pipeline.run { try attempts.call() } == 3)
        let totals = try await breaker.snapshot().totals
        #expect(totals.failures == 2 && totals.successes == 1)
        #expect(bulkhead.snapshot.admitted == 3 && bulkhead.snapshot.running == 0)
    }
}
