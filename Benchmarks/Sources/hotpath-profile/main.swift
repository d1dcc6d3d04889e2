// A tight loop over a breaker's hot path, for perf and callgrind:
//   hotpath-profile [coarse] [distributed] [open] [threads=N] [ITERATIONS]
// Default: the local adapter with the precise ContinuousClock, one thread, 5,000,000 pairs per thread.
// `distributed` starts a private redis-server and runs the distributed adapter against it; `threads=N` runs N
// threads on the one breaker and prints the time per call in each thread; `open` isolates the breaker first, so
// every call is a rejection.
import Dispatch
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

let start = ContinuousClock.now
DispatchQueue.concurrentPerform(iterations: threads) { _ in
    for _ in 0..<iterations {
        guard let permit = breaker.tryAcquire() else { continue }
        permit.success()
    }
}
let elapsed = ContinuousClock.now - start
let nanoseconds = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
print("\(threads) thread(s) × \(iterations) calls: \(nanoseconds / Double(iterations)) ns per call in each thread")
background.cancel()
await server?.stop()
