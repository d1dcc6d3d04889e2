import Benchmark
import Fusebox
import FuseboxRedis
import FuseboxTestKit
import Hiredis

struct Failure: Error {}

/// A breaker that never trips, so every call stays on the closed-state path.
private func closedPolicy() -> BreakerPolicy {
    var policy = BreakerPolicy()
    policy.failureRateThreshold = 1
    policy.minimumThroughput = 1_000_000
    return policy
}

/// One private redis-server for the benchmarks that need Redis, started on first use.
private let redisServer = Task { try await RedisServerProcess.start() }

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .mallocCountTotal],
        timeUnits: .nanoseconds,
        warmupIterations: 1000,
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 1_000_000,
        // Allocation counts hold steady on a noisy machine: they are the guarded figure.
        thresholds: [.mallocCountTotal: .init(absolute: [.p50: 0, .p90: 0])]
    )

    Benchmark("local: acquire + success (closed)") { benchmark in
        let breaker = try BreakerRegistry(adapter: LocalAdapter()).breaker("local", policy: closedPolicy())
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let permit = try breaker.acquire()
            permit.success()
        }
    }

    Benchmark("local: acquire + failure (closed)") { benchmark in
        let breaker = try BreakerRegistry(adapter: LocalAdapter()).breaker("local-failure", policy: closedPolicy())
        let error = Failure()
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let permit = try breaker.acquire()
            permit.failure(error)
        }
    }

    Benchmark("local: rejection (open)") { benchmark in
        let breaker = try BreakerRegistry(adapter: LocalAdapter()).breaker("local-open")
        try await breaker.isolate(reason: "benchmark")
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            do throws(FuseboxError) {
                let permit = try breaker.acquire()
                permit.ignore()
            } catch {
                blackHole(error.state)
            }
        }
    }

    Benchmark("distributed: acquire + success (closed, Redis up)") { benchmark in
        let server = try await redisServer.value
        let adapter = try DistributedAdapter(options: DistributedOptions(redis: server.configuration()))
        let registry = BreakerRegistry(adapter: adapter)
        let background = Task { try await registry.run() }
        defer { background.cancel() }
        let breaker = try registry.breaker("distributed", policy: closedPolicy())
        try await breaker.acquireAsync().success()
        _ = try await breaker.snapshot()
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let permit = try breaker.acquire()
            permit.success()
        }
        benchmark.stopMeasurement()
        await adapter.flush()
    }

    Benchmark("distributed: rejection (open, Redis up)") { benchmark in
        let server = try await redisServer.value
        let adapter = try DistributedAdapter(options: DistributedOptions(redis: server.configuration()))
        let registry = BreakerRegistry(adapter: adapter)
        let background = Task { try await registry.run() }
        defer { background.cancel() }
        let breaker = try registry.breaker("distributed-open")
        try await breaker.isolate(reason: "benchmark")
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            do throws(FuseboxError) {
                let permit = try breaker.acquire()
                permit.ignore()
            } catch {
                blackHole(error.state)
            }
        }
        benchmark.stopMeasurement()
        await adapter.flush()
    }

    Benchmark(
        "redis: EVALSHA round trip (reference)",
        configuration: .init(
            metrics: [.wallClock, .mallocCountTotal], timeUnits: .microseconds, scalingFactor: .one,
            maxDuration: .seconds(2), maxIterations: 5000, thresholds: [:])
    ) { benchmark in
        let server = try await redisServer.value
        let redis = try RedisConnection(configuration: server.configuration())
        let script = RedisScript("return redis.call('HINCRBY', KEYS[1], 'n', 1)")
        _ = try await redis.run(script, keys: ["bench:{roundtrip}"])
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try await redis.run(script, keys: ["bench:{roundtrip}"]))
        }
    }
}
