import Benchmark
import Dispatch
#if canImport(Glibc)
import Glibc
#endif
import Fusebox
import FuseboxRedis
import FuseboxTestKit
import Hiredis

struct Failure: Error {}

/// Work shaped like a guarded call, with nothing shared: two clock reads and some arithmetic per call.
@inline(never)
private func unsharedWork(_ calls: Int) -> Int64 {
    var sum: Int64 = 0
    let clock = ContinuousClock()
    for index in 0..<calls {
        let start = clock.now
        let end = clock.now
        sum &+= Int64((end - start).components.attoseconds / 1_000) &+ Int64(index)
    }
    return sum
}

/// A breaker that never trips, so every call stays on the closed-state path.
private func closedPolicy() -> BreakerPolicy {
    var policy = BreakerPolicy()
    policy.failureRateThreshold = 1
    policy.minimumThroughput = 1_000_000
    return policy
}

/// One private redis-server for the benchmarks that need Redis, started on first use.
private let redisServer = Task { try await RedisServerProcess.start() }

/// A distributed registry on the private server, with its background work running.
private func distributedRegistry() async throws -> (DistributedAdapter<ContinuousClock>, BreakerRegistry, Task<Void, Error>) {
    let server = try await redisServer.value
    let adapter = try DistributedAdapter(options: DistributedOptions(redis: server.configuration()))
    let registry = BreakerRegistry(adapter: adapter)
    return (adapter, registry, Task { try await registry.run() })
}

/// A closed breaker `name` on a fresh distributed registry, its state known (one call made and read back), so that
/// every measured call takes the cached, closed path.
private func knownClosedBreaker(_ name: String) async throws -> (DistributedAdapter<ContinuousClock>, CircuitBreaker, Task<Void, Error>) {
    let (adapter, registry, background) = try await distributedRegistry()
    let breaker = try registry.breaker(name, policy: closedPolicy())
    try await breaker.acquireAsync().success()
    _ = try await breaker.snapshot()
    return (adapter, breaker, background)
}

// Names are shell-safe (no spaces): the benchmark tool stores thresholds under cleaned-up file names but looks
// them up by the raw name.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .mallocCountTotal],
        timeUnits: .nanoseconds,
        warmupIterations: 1000,
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 1_000_000,
        // Allocation counts hold steady on a noisy machine: they are the guarded figure (Thresholds/, checked
        // by `make bench`). Stored values count per 1,000 calls; 25 absorbs the distributed adapter's
        // background flushes (about 12 per 1,000 calls) while one allocation per call (+1,000) fails the check.
        thresholds: [.mallocCountTotal: .init(absolute: [.p90: 25])]
    )

    Benchmark("local-closed-success") { benchmark in
        let breaker = try BreakerRegistry(adapter: LocalAdapter()).breaker("local", policy: closedPolicy())
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let permit = try breaker.acquire()
            permit.success()
        }
    }

    Benchmark("local-closed-failure") { benchmark in
        let breaker = try BreakerRegistry(adapter: LocalAdapter()).breaker("local-failure", policy: closedPolicy())
        let error = Failure()
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let permit = try breaker.acquire()
            permit.failure(error)
        }
    }

    Benchmark("local-open-rejection") { benchmark in
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

    // The adapter's background work (a flush every 10 ms) allocates too, so these two allow 150 per 1,000 calls:
    // still far below one allocation per call.
    let distributed = Benchmark.Configuration(
        metrics: Benchmark.defaultConfiguration.metrics, timeUnits: .nanoseconds, warmupIterations: 1000,
        scalingFactor: .kilo, maxDuration: .seconds(2), maxIterations: 1_000_000,
        thresholds: [.mallocCountTotal: .init(absolute: [.p90: 150])])

    Benchmark("distributed-closed-success", configuration: distributed) { benchmark in
        let (adapter, breaker, background) = try await knownClosedBreaker("distributed")
        defer { background.cancel() }
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let permit = try breaker.acquire()
            permit.success()
        }
        benchmark.stopMeasurement()
        await adapter.flush()
    }

    // One task per core on one breaker: the time per call in each task (the wall time over the calls of one
    // task), to compare with distributed-closed-success. A million calls per task and sample, so that waking the
    // threads (tens of microseconds) does not weigh on the time per call.
    let perCore = Benchmark.Configuration(
        metrics: [.wallClock, .cpuTotal], timeUnits: .nanoseconds, warmupIterations: 1,
        scalingFactor: .mega, maxDuration: .seconds(3), maxIterations: 40)
    Benchmark("distributed-closed-success-task-per-core", configuration: perCore) { benchmark in
        let (adapter, breaker, background) = try await knownClosedBreaker("distributed-cores")
        defer { background.cancel() }
        let tasks = max(2, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        let calls = benchmark.scaledIterations.count
        benchmark.startMeasurement()
        // Threads, not tasks: this harness runs a task group's children one after another.
        DispatchQueue.concurrentPerform(iterations: tasks) { _ in
            for _ in 0..<calls {
                guard let permit = (try? breaker.acquire()) else { continue }
                permit.success()
            }
        }
        benchmark.stopMeasurement()
        await adapter.flush()
    }

    // Controls for the two above: the same shape of work with nothing shared (two clock reads and a little
    // arithmetic per call), one task, then one task per core. Their ratio is what the machine itself gives.
    Benchmark("control-unshared-work", configuration: distributed) { benchmark in
        benchmark.startMeasurement()
        blackHole(unsharedWork(benchmark.scaledIterations.count))
        benchmark.stopMeasurement()
    }

    Benchmark("control-unshared-work-task-per-core", configuration: perCore) { benchmark in
        let tasks = max(2, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        let calls = benchmark.scaledIterations.count
        benchmark.startMeasurement()
        DispatchQueue.concurrentPerform(iterations: tasks) { _ in blackHole(unsharedWork(calls)) }
        benchmark.stopMeasurement()
    }

    Benchmark("distributed-open-rejection", configuration: distributed) { benchmark in
        let (adapter, registry, background) = try await distributedRegistry()
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

    // The pipeline's cost over a bare breaker call, nothing failing: each pair runs the same async call, once as
    // `breaker.run` and once through `ResiliencePipeline`. The differences are the figures Docs/performance.md
    // quotes ("The pipeline").
    Benchmark("local-breaker-run") { benchmark in
        let breaker = try BreakerRegistry(adapter: LocalAdapter()).breaker("run", policy: closedPolicy())
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try await breaker.run { 1 })
        }
    }

    Benchmark("local-pipeline-breaker") { benchmark in
        let breaker = try BreakerRegistry(adapter: LocalAdapter()).breaker("pipeline", policy: closedPolicy())
        let pipeline = ResiliencePipeline<Int>().breaker(breaker)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try await pipeline.run { 1 })
        }
    }

    Benchmark("bulkhead-try-acquire-release") { benchmark in
        let bulkhead = try Bulkhead(name: "bench-sync", maxConcurrent: 64)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(bulkhead.tryAcquire())
            bulkhead.release()
        }
    }

    Benchmark("local-pipeline-retry-breaker") { benchmark in
        let breaker = try BreakerRegistry(adapter: LocalAdapter()).breaker("pipeline-retry", policy: closedPolicy())
        let pipeline = ResiliencePipeline<Int>().retry(RetryPolicy(maxAttempts: 3)).breaker(breaker)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try await pipeline.run { 1 })
        }
    }

    Benchmark("local-pipeline-breaker-bulkhead") { benchmark in
        let breaker = try BreakerRegistry(adapter: LocalAdapter()).breaker("pipeline-bulkhead", policy: closedPolicy())
        let pipeline = ResiliencePipeline<Int>().breaker(breaker).bulkhead(try Bulkhead(name: "bench", maxConcurrent: 64))
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try await pipeline.run { 1 })
        }
    }

    Benchmark("local-pipeline-retry-breaker-bulkhead") { benchmark in
        let breaker = try BreakerRegistry(adapter: LocalAdapter()).breaker("pipeline-full", policy: closedPolicy())
        let pipeline = ResiliencePipeline<Int>()
            .retry(RetryPolicy(maxAttempts: 3))
            .breaker(breaker)
            .bulkhead(try Bulkhead(name: "bench", maxConcurrent: 64))
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try await pipeline.run { 1 })
        }
    }

    Benchmark("distributed-breaker-run", configuration: distributed) { benchmark in
        let (adapter, breaker, background) = try await knownClosedBreaker("distributed-run")
        defer { background.cancel() }
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try await breaker.run { 1 })
        }
        benchmark.stopMeasurement()
        await adapter.flush()
    }

    Benchmark("distributed-pipeline-retry-breaker-bulkhead", configuration: distributed) { benchmark in
        let (adapter, breaker, background) = try await knownClosedBreaker("distributed-pipeline")
        defer { background.cancel() }
        let pipeline = ResiliencePipeline<Int>()
            .retry(RetryPolicy(maxAttempts: 3))
            .breaker(breaker)
            .bulkhead(try Bulkhead(name: "bench", maxConcurrent: 64))
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try await pipeline.run { 1 })
        }
        benchmark.stopMeasurement()
        await adapter.flush()
    }

    Benchmark(
        "redis-evalsha-roundtrip",
        configuration: .init(
            metrics: [.wallClock, .mallocCountTotal], timeUnits: .microseconds, scalingFactor: .one,
            maxDuration: .seconds(2), maxIterations: 5000, thresholds: [:])
    ) { benchmark in
        let server = try await redisServer.value
        let redis = try RedisClient(configuration: server.configuration())
        let script = RedisScript("return redis.call('HINCRBY', KEYS[1], 'n', 1)")
        _ = try await redis.run(script, keys: ["bench:{roundtrip}"])
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(try await redis.run(script, keys: ["bench:{roundtrip}"]))
        }
    }
}
