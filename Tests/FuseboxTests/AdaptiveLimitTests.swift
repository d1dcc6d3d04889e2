import Synchronization
import Testing
import TestKinds

@testable import Fusebox

/// A dependency that serves `knee` calls at once in 20 ms each; above that, calls slow down in proportion (each
/// gets its share of `knee` workers): its throughput is flat beyond the knee, its latency rises.
final class KneeDependency: Sendable {
    let knee: Atomic<Int>
    private let inFlight = Atomic<Int>(0)
    static let base = Duration.milliseconds(20)

    init(knee: Int) { self.knee = Atomic(knee) }

    /// The latency of a call that starts with `running` calls in the dependency.
    static func latency(running: Int, knee: Int) -> Duration { base * max(1, Double(running) / Double(knee)) }

    func call() async throws {
        let running = inFlight.wrappingAdd(1, ordering: .relaxed).newValue
        defer { inFlight.wrappingSubtract(1, ordering: .relaxed) }
        try await Task.sleep(for: Self.latency(running: running, knee: knee.load(ordering: .relaxed)))
    }
}

@Suite("Adaptive concurrency limit (the controller, on simulated time)", .kind(.unit))
struct AdaptiveLimitTests {
    /// Rounds of `limit` calls started together against the knee model; returns the limit after each round and when.
    private func simulate(
        _ controller: inout AdaptiveConcurrency, from start: Int64, until end: Int64, knee: (Int64) -> Int
    ) -> [(at: Int64, limit: Int)] {
        var now = start
        var trace: [(Int64, Int)] = []
        while now < end {
            let concurrency = controller.effectiveLimit
            let latency = KneeDependency.latency(running: concurrency, knee: knee(now)).nanoseconds
            let started = now
            now += latency
            for _ in 0..<concurrency { _ = controller.sample(started: started, ended: now, running: concurrency) }
            // The next round starts a moment after this one ended.
            now += 1
            trace.append((now, controller.effectiveLimit))
        }
        return trace
    }

    @Test("from 50 against a knee at 8: measures the no-load latency at the minimum, then settles at 8 to 11, and grows again when the knee moves up")
    func settlesAndGrows() {
        var controller = AdaptiveConcurrency(.init(initial: 50), seed: 1)
        #expect(controller.effectiveLimit == 3, "the first measure runs at the minimum")
        let second: Int64 = 1_000_000_000
        let settling = simulate(&controller, from: 0, until: 20 * second) { _ in 8 }
        #expect(controller.noLoad == KneeDependency.base.nanoseconds)
        let first = settling.first { $0.limit != 3 }!
        #expect(first.limit >= 8 && first.limit <= 50)
        let late = settling.filter { $0.at > 2 * second }.map(\.limit)
        #expect(late.allSatisfy { (8...11).contains($0) }, "\(Set(late).sorted())")
        let grown = simulate(&controller, from: 20 * second, until: 25 * second) { _ in 32 }
        #expect(grown.last!.limit >= 30, "\(grown.last!.limit)")
        #expect(grown.map(\.limit).allSatisfy { $0 <= 36 || $0 == 3 })
    }

    @Test("measures the no-load latency again every interval, at the minimum, and keeps the limit it had")
    func remeasures() {
        var controller = AdaptiveConcurrency(.init(initial: 10, remeasureInterval: .seconds(5), measureCalls: 10), seed: 7)
        let trace = simulate(&controller, from: 0, until: 12_000_000_000) { _ in 8 }
        let measuring = trace.filter { $0.limit == 3 }.map(\.at)
        #expect(measuring.contains { $0 > 4_000_000_000 && $0 < 7_000_000_000 }, "a second measure near 5 s (±10 %)")
        #expect(measuring.contains { $0 > 9_000_000_000 }, "and a third")
        #expect((8...11).contains(trace.last!.limit))
    }

    @Test("a round the application did not load (fewer than half the limit running) changes nothing")
    func applicationLimited() {
        var controller = AdaptiveConcurrency(.init(initial: 20, measureCalls: 5), seed: 3)
        for index in 0..<5 { _ = controller.sample(started: Int64(index), ended: Int64(index) + 20_000_000, running: 1) }
        #expect(controller.effectiveLimit == 20)
        // Two calls at a time, 40 rounds: the latency says nothing about 20 at once.
        var now: Int64 = 100_000_000
        for _ in 0..<40 {
            for _ in 0..<10 { _ = controller.sample(started: now, ended: now + 20_000_000, running: 2) }
            now += 20_000_001
        }
        #expect(controller.effectiveLimit == 20)
    }

    @Test("limits out of range are refused with the field and its range")
    func validation() {
        for (limit, field) in [
            (AdaptiveConcurrencyLimit(minimum: 0), "minimum"), (AdaptiveConcurrencyLimit(minimum: 10, maximum: 5), "maximum"),
            (AdaptiveConcurrencyLimit(initial: 2000), "initial"), (AdaptiveConcurrencyLimit(alpha: 4, beta: 3), "beta"),
            (AdaptiveConcurrencyLimit(remeasureInterval: .zero), "remeasureInterval"), (AdaptiveConcurrencyLimit(measureCalls: 0), "measureCalls"),
        ] {
            #expect { try Bulkhead(name: "b", limit: .adaptive(limit)) } throws: {
                let error = $0 as? FuseboxError
                return error?.code == .invalidPolicy && error?.message.contains(field) == true
            }
        }
    }
}

/// Completed calls per second and the limits seen, from many tasks.
private final class Tally: Sendable {
    let completed: Mutex<[Int]>
    let limits = Mutex<[(Double, Int)]>([])
    init(seconds: Int) { completed = Mutex([Int](repeating: 0, count: seconds + 1)) }
}

@Suite("Adaptive concurrency limit (a bulkhead in real time)", .kind(.timingBound), .timeLimit(.minutes(2)))
struct AdaptiveLimitTimingTests {
    /// 64 tasks call `dependency` through `bulkhead` in a closed loop for `seconds`; returns completed calls per
    /// second and, every 250 ms, the limit.
    private func load(_ bulkhead: Bulkhead, _ dependency: KneeDependency, seconds: Int, tasks: Int = 64) async -> (perSecond: [Int], limits: [(Double, Int)]) {
        let started = ContinuousClock.now
        let tally = Tally(seconds: seconds)
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<tasks {
                group.addTask {
                    while ContinuousClock.now - started < .seconds(seconds) {
                        do {
                            try await bulkhead.run { try await dependency.call() }
                            let second = Int((ContinuousClock.now - started).components.seconds)
                            tally.completed.withLock { if second < $0.count { $0[second] += 1 } }
                        } catch {}
                    }
                }
            }
            group.addTask {
                while ContinuousClock.now - started < .seconds(seconds) {
                    let at = (ContinuousClock.now - started)
                    tally.limits.withLock { $0.append((Double(at.components.seconds) + Double(at.components.attoseconds) / 1e18, bulkhead.maxConcurrent)) }
                    try? await Task.sleep(for: .milliseconds(250))
                }
            }
        }
        return (tally.completed.withLock { Array($0.prefix(seconds)) }, tally.limits.withLock { $0 })
    }

    @Test("from 50 against a dependency whose latency rises above 8 at once: settles within 8 ± 3 within 20 s, goodput within 10 % of the best fixed limit, and grows when latency is back to normal")
    func settles() async throws {
        let best = try Bulkhead(name: "fixed-8", maxConcurrent: 8, maxQueued: 1000)
        let fixed = await load(best, KneeDependency(knee: 8), seconds: 4)
        let fixedGoodput = Double(fixed.perSecond[1...].reduce(0, +)) / 3

        let dependency = KneeDependency(knee: 8)
        let adaptive = try Bulkhead(name: "adaptive", limit: .adaptive(.init(initial: 50)), maxQueued: 1000)
        let run = await load(adaptive, dependency, seconds: 20)
        let settled = run.limits.filter { $0.0 >= 10 }.map(\.1)
        let goodput = Double(run.perSecond[12...].reduce(0, +)) / Double(run.perSecond.count - 12)
        print("adaptive limit: fixed 8 goodput \(fixedGoodput)/s; adaptive goodput (12-20 s) \(goodput)/s; limits 10-20 s \(Set(settled).sorted()); no-load latency \(adaptive.snapshot.noLoadLatency.map { "\($0)" } ?? "-")")
        #expect(!settled.isEmpty && settled.allSatisfy { (5...11).contains($0) }, "\(settled)")
        #expect(goodput >= 0.9 * fixedGoodput, "adaptive \(goodput)/s against \(fixedGoodput)/s at the best fixed limit")

        dependency.knee.store(32, ordering: .relaxed)
        let grown = await load(adaptive, dependency, seconds: 5)
        print("adaptive limit after the knee moved to 32: \(grown.limits.map(\.1))")
        #expect((grown.limits.last?.1 ?? 0) > 16, "\(grown.limits.map(\.1))")
    }
}

@Suite("Adaptive concurrency limit in a pipeline", .kind(.integration))
struct AdaptiveLimitPipelineTests {
    @Test("a pipeline's adaptive bulkhead learns from the calls it runs (it times them in its own frame)")
    func pipelineLearns() async throws {
        let bulkhead = try Bulkhead(name: "piped", limit: .adaptive(.init(initial: 10, measureCalls: 5)))
        let pipeline = ResiliencePipeline<Int>().bulkhead(bulkhead)
        #expect(bulkhead.snapshot.noLoadLatency == nil && bulkhead.snapshot.limit == 3)
        for _ in 0..<5 { _ = try await pipeline.run { try await Task.sleep(for: .milliseconds(2)); return 1 } }
        let snapshot = bulkhead.snapshot
        #expect((snapshot.noLoadLatency ?? .zero) >= .milliseconds(2))
        #expect(snapshot.limit == 10 && snapshot.running == 0 && snapshot.admitted == 5)
    }
}
