// A tight loop over the local adapter's closed-state path, for perf and callgrind:
//   hotpath-profile [coarse] [ITERATIONS]   (default: the precise ContinuousClock, 5,000,000 pairs)
import Fusebox

var policy = BreakerPolicy()
policy.failureRateThreshold = 1
policy.minimumThroughput = 1_000_000
let arguments = CommandLine.arguments.dropFirst()
let adapter: any BreakerAdapter = arguments.contains("coarse") ? LocalAdapter(clock: CoarseMonotonicClock()) : LocalAdapter(clock: ContinuousClock())
let breaker = try BreakerRegistry(adapter: adapter).breaker("profile", policy: policy)
let iterations = arguments.compactMap { Int($0) }.first ?? 5_000_000
let start = ContinuousClock.now
for _ in 0..<iterations {
    try breaker.acquire().success()
}
let elapsed = ContinuousClock.now - start
print("\(iterations) calls, \(Double(elapsed.components.attoseconds) / 1e9 / Double(iterations) + Double(elapsed.components.seconds) * 1e9 / Double(iterations)) ns per call")
