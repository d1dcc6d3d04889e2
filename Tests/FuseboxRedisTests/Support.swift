import Fusebox
import FuseboxTestKit
import Hiredis
import Logging
import Testing

@testable import FuseboxRedis

/// One redis-server shared by the tests of this module that need no faults (each uses its own namespace).
enum SharedServer {
    private static let started = Task { try await RedisServerProcess.start() }
    static func get() async throws -> RedisServerProcess { try await started.value }
}

/// A fresh namespace, so tests sharing a server never see each other's breakers.
func uniqueNamespace(_ label: String = "t") -> String {
    "\(label)\(UInt32.random(in: 0...UInt32.max))"
}

/// Options for tests: short timeouts, a unique namespace, no local pause after a denied probe.
func testOptions(_ server: RedisServerProcess, namespace: String = uniqueNamespace(), timeout: Duration = .milliseconds(500)) -> DistributedOptions {
    testOptions(redis: server.configuration(), namespace: namespace, timeout: timeout)
}

/// The same for any topology's configuration (a cluster's, Sentinel's).
func testOptions(redis: RedisConfiguration, namespace: String = uniqueNamespace(), timeout: Duration = .milliseconds(500)) -> DistributedOptions {
    var redis = redis
    redis.connectTimeout = timeout
    redis.commandTimeout = timeout
    var options = DistributedOptions(redis: redis)
    options.namespace = namespace
    options.halfOpenRetryInterval = .zero
    options.refreshInterval = .milliseconds(200)
    // Admission waits as long as a command may: the suites assert who gets a probe on a loaded machine, under
    // sanitizers too (FaultTests "admission budget" set the default's 50 ms themselves).
    options.admissionBudget = timeout
    return options
}

/// The distributed adapter on a manual clock, with the scripts' clock pinned to it.
struct DistributedSubject: ConformanceSubject {
    let clock = ManualClock()
    let adapter: DistributedAdapter<ManualClock>

    init(server: RedisServerProcess) throws {
        adapter = try DistributedAdapter(options: testOptions(server), clock: clock, logger: Logger(label: "test"))
        // A whole number of seconds, so buckets line up with the local adapter's (which counts from 0).
        adapter.pinClock(atMilliseconds: 1_800_000_000_000)
    }

    var timeTolerance: Duration { .milliseconds(1) }

    func makeBackend(name: String, policy: BreakerPolicy) async throws -> any BreakerBackend {
        try adapter.makeBackend(name: name, policy: policy.validated(), logger: Logger(label: "test"))
    }

    func advance(by duration: Duration) async throws {
        // Outcomes are stamped with Redis time when written: write them before time moves on.
        await adapter.flush()
        clock.advance(by: duration)
        adapter.shiftClock(by: duration)
    }
}

/// Polls `condition` every 5 ms for up to `limit`.
func eventually(within limit: Duration = .seconds(5), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + limit
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return try await condition()
}

struct Boom: Error {}

/// Waits (up to 10 s) until `count` connections listen on the namespace's transitions channel: recalls and
/// transition messages published before an instance has subscribed never reach it.
func waitForSubscribers(_ count: Int, namespace: String, server: RedisServerProcess) async throws {
    let redis = try RedisClient(configuration: server.configuration())
    let listening = await eventually(within: .seconds(10)) {
        let reply = try? await redis.send("PUBSUB", "NUMSUB", "\(namespace):transitions")
        return (reply?.array?.last?.int ?? 0) >= count
    }
    #expect(listening, "\(count) instances did not subscribe within 10 s")
}
