// A tight loop over a breaker's hot path, for perf and callgrind:
//   hotpath-profile [coarse] [distributed] [open] [threads=N] [async=KIND] [ITERATIONS]
// Default: the local adapter with the precise ContinuousClock, one thread, 5,000,000 pairs per thread.
// `distributed` starts a private redis-server and runs the distributed adapter against it; `threads=N` runs N
// threads on the one breaker and prints the time per call in each thread; `open` isolates the breaker first, so
// every call is a rejection.
import Dispatch
import Foundation
import Fusebox
import FuseboxRedis
import FuseboxTestKit

var policy = BreakerPolicy()
policy.failureRateThreshold = 1
policy.minimumThroughput = 1_000_000
let arguments = CommandLine.arguments.dropFirst()
let iterations = arguments.compactMap { Int($0) }.first ?? 5_000_000
let threads = arguments.compactMap { $0.hasPrefix("threads=") ? Int($0.dropFirst(8)) : nil }.first ?? 1

var server: RedisServerProcess?
let adapter: any BreakerAdapter
if arguments.contains("distributed") {
    let started = try await RedisServerProcess.start()
    server = started
    adapter = try DistributedAdapter(options: DistributedOptions(redis: started.configuration()))
} else {
    adapter = arguments.contains("coarse") ? LocalAdapter(clock: CoarseMonotonicClock()) : LocalAdapter(clock: ContinuousClock())
}
let registry = BreakerRegistry(adapter: adapter)
let background = Task { try await registry.run() }
let breaker = try registry.breaker("profile", policy: policy)
try await breaker.acquireAsync().success()
_ = try await breaker.snapshot()
if arguments.contains("open") { try await breaker.isolate(reason: "profile") }

// `async=KIND`: an async loop instead, of `try await breaker.run { 1 }` (KIND `run`) or of the same call through a
// pipeline (`pipeline`: retry + breaker + bulkhead; `pipeline-breaker`: the breaker alone), for callgrind's count
// of what a pipeline adds; `async=compare` times all three in alternating rounds and prints each one's median.
if let kind = arguments.compactMap({ $0.hasPrefix("async=") ? String($0.dropFirst(6)) : nil }).first {
    let full = ResiliencePipeline<Int>()
        .retry(RetryPolicy(maxAttempts: 3))
        .breaker(breaker)
        .bulkhead(try Bulkhead(name: "profile", maxConcurrent: 64))
    let alone = ResiliencePipeline<Int>().breaker(breaker)
    // Off the main actor (top-level code runs on it): every call would otherwise hop to the pool and back.
    @Sendable nonisolated func loop(_ kind: String, _ count: Int) async throws -> Double {
        let start = ContinuousClock.now
        var sum = 0
        switch kind {
        case "run": for _ in 0..<count { sum &+= try await breaker.run { 1 } }
        case "pipeline": for _ in 0..<count { sum &+= try await full.run { 1 } }
        case "pipeline-breaker": for _ in 0..<count { sum &+= try await alone.run { 1 } }
        default: fatalError("async=run|pipeline|pipeline-breaker|compare")
        }
        precondition(sum == count)
        let elapsed = ContinuousClock.now - start
        return (Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9) / Double(count)
    }
    if kind == "compare" {
        let kinds = ["run", "pipeline-breaker", "pipeline"]
        var times = [String: [Double]]()
        for _ in 0..<15 {
            for kind in kinds { times[kind, default: []].append(try await Task.detached { try await loop(kind, iterations / 15) }.value) }
        }
        func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        let run = median(times["run"]!)
        for kind in kinds {
            let value = median(times[kind]!)
            print("\(kind): median of 15 rounds \(String(format: "%.1f", value)) ns per call (\(String(format: "%+.1f", value - run)) ns over run)")
        }
    } else {
        print("\(kind): \(try await Task.detached { try await loop(kind, iterations) }.value) ns per call")
    }
    background.cancel()
    await server?.stop()
    exit(0)
}

let start = ContinuousClock.now
DispatchQueue.concurrentPerform(iterations: threads) { _ in
    for _ in 0..<iterations {
        guard let permit = (try? breaker.acquire()) else { continue }
        permit.success()
    }
}
let elapsed = ContinuousClock.now - start
let nanoseconds = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
print("\(threads) thread(s) × \(iterations) calls: \(nanoseconds / Double(iterations)) ns per call in each thread")
background.cancel()
await server?.stop()
