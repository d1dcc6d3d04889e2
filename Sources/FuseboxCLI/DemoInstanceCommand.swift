import ArgumentParser
import Foundation
import Fusebox
import FuseboxLocking
import FuseboxRedis
import Hiredis
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What one demo instance reports (a JSON file rewritten every 200 ms).
struct InstanceStats: Codable, Sendable {
    var index: Int
    var phase = "starting"
    var state = "closed"
    var calls = 0
    /// Calls that reached the dependency.
    var reached = 0
    /// Calls that reached the dependency while it was failing.
    var reachedDuringOutage = 0
    var rejected = 0
    var rejectedDuringOutage = 0
    var probesDuringOutage = 0
    var probesDuringRecovery = 0
    /// When this instance first saw the breaker OPEN, in ms after the outage began.
    var firstOpenAfterMs: Int64?
    /// The policy in force (its state rules) and where it came from: `code`, `configuration` or `override`.
    var policy = ""
    var policyOrigin = ""
    var done = false
}

/// The simulated dependency's schedule: healthy, then failing, then healthy again.
struct Schedule: Sendable {
    var healthy: Duration
    var outage: Duration
    var recovery: Duration

    var total: Duration { healthy + outage + recovery }

    init(_ text: String) throws {
        let parts = text.split(separator: ",").compactMap { Int64($0) }
        guard parts.count == 3, parts.allSatisfy({ $0 > 0 }) else { throw CLIError.usage("bad schedule '\(text)': three positive millisecond values") }
        healthy = .milliseconds(parts[0])
        outage = .milliseconds(parts[1])
        recovery = .milliseconds(parts[2])
    }

    init(healthy: Duration, outage: Duration, recovery: Duration) {
        self.healthy = healthy
        self.outage = outage
        self.recovery = recovery
    }

    var text: String { "\(healthy.milliseconds),\(outage.milliseconds),\(recovery.milliseconds)" }

    func phase(at elapsed: Duration) -> String {
        if elapsed < healthy { return "healthy" }
        if elapsed < healthy + outage { return "outage" }
        return "recovery"
    }
}

struct DependencyDown: Error {}

/// One instance of the demo service (started by `fusebox demo`, or by docker compose with `--forever`).
struct DemoInstanceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "demo-instance", abstract: "One instance of the demo service.", shouldDisplay: false)

    @Option var index = 0
    @Option var adapter = "distributed"
    @Option var redis: String?
    @Option var namespace = "fusebox"
    @Option(help: "Unix time (ms) when the schedule starts; default now.") var startAt: Int64?
    @Option(help: "healthy,outage,recovery in ms.") var schedule = "3000,6000,5000"
    @Option(help: "Break duration in ms.") var breakMs: Int64 = 1500
    @Option(help: "Where to write the stats JSON; none when empty.") var stats = ""
    @Flag(help: "Repeat the schedule until stopped.") var forever = false
    @Option(help: "How often every state (and the operators' overrides) is read again, in ms.") var refreshMs: Int64 = 30_000
    @Option(help: "Probe permits in half-open.") var permits = 1
    @Option(help: "The longest half-open period in ms.") var maxHalfOpenMs: Int64 = 5000
    @Option(help: "The call timeout in ms (a probe permit's lease is twice it); 0: none.") var callTimeoutMs: Int64 = 0
    @Option(help: "How long a probe runs before its outcome, in ms.") var probeHoldMs: Int64 = 0
    @Option(help: "An append-only journal, written before each event takes effect (survives SIGKILL): 'c' per outcome, 'p VERSION MS' per probe granted, 'e MS' when its outcome is recorded (MS: milliseconds since 1970), 'f N' after a flush covering N outcomes, 'done'.")
    var journal = ""

    func run() async throws {
        try await reportingErrors {
            let schedule = try Schedule(self.schedule)
            let kind = try AdapterKind(rawValue: adapter).orThrow(CLIError.usage("adapter '\(adapter)': use distributed or local"))
            var logger = Logger(label: "demo-\(index)")
            logger.logLevel = .info
            // The demo prints its own lines; the breakers' log stays out of them.
            let quiet = Logger(label: "demo-\(index)", factory: { _ in SwiftLogNoOpLogHandler() })
            let registry: BreakerRegistry
            var distributed: DistributedAdapter<ContinuousClock>?
            switch kind {
            case .local:
                registry = BreakerRegistry(adapter: LocalAdapter(), logger: quiet)
            case .distributed:
                var options = try DistributedOptions(url: redis ?? ProcessInfo.processInfo.environment["FUSEBOX_REDIS_URL"] ?? "redis://127.0.0.1:6379")
                options.namespace = namespace
                options.instanceID = "demo-\(index)-\(getpid())"
                options.refreshInterval = .milliseconds(max(1, refreshMs))
                let made = try DistributedAdapter(options: options, logger: quiet)
                distributed = made
                registry = BreakerRegistry(adapter: made, logger: quiet)
            }
            let background = Task { try? await registry.run() }
            defer { background.cancel() }

            var policy = BreakerPolicy()
            // Either rule trips: a ratio over the window, or a streak of 5 failures.
            policy.failureRateThreshold = 0.5
            policy.minimumThroughput = 20
            policy.consecutiveFailureThreshold = 5
            policy.window = .time(samplingDuration: .seconds(5), buckets: 5)
            policy.breakDuration = .fixed(.milliseconds(breakMs))
            policy.maxHalfOpenDuration = .milliseconds(maxHalfOpenMs)
            policy.permittedCallsInHalfOpen = permits
            if callTimeoutMs > 0 { policy.callTimeout = .milliseconds(callTimeoutMs) }
            let breaker = try registry.breaker("inventory-service", policy: policy)

            let journal = try Journal(path: self.journal)
            // With a journal, a flush every 250 ms says how many outcomes Redis holds for sure.
            let adapter = distributed
            let flusher = Task {
                guard let journal, let distributed = adapter else { return }
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(250))
                    let covered = journal.recorded.load(ordering: .relaxed)
                    await distributed.flush()
                    journal.write("f \(covered)")
                }
            }
            repeat {
                let start = startAt.map { Date(timeIntervalSince1970: Double($0) / 1000) } ?? Date()
                try await drive(breaker, registry: registry, schedule: schedule, start: start, journal: journal)
            } while forever
            flusher.cancel()
            await flusher.value
            await distributed?.flush()
            journal?.write("f \(journal?.recorded.load(ordering: .relaxed) ?? 0)")
            journal?.write("done")
        }
    }

    private func drive(_ breaker: CircuitBreaker, registry: BreakerRegistry, schedule: Schedule, start: Date, journal: Journal?) async throws {
        let probeHold = Duration.milliseconds(probeHoldMs)
        let shared = SharedStats(InstanceStats(index: index))
        let statsPath = stats
        let outageStart = start.addingTimeInterval(schedule.healthy.seconds)
        let end = start.addingTimeInterval(schedule.total.seconds)
        if start > Date() { try await Task.sleep(for: .seconds(start.timeIntervalSinceNow)) }

        let watcher = Task {
            for await event in breaker.events() {
                guard case .stateChanged(let transition) = event else { continue }
                let now = Date()
                shared.withLock { stats in
                    stats.state = transition.to.rawValue
                    if transition.to == .open, stats.firstOpenAfterMs == nil, now >= outageStart {
                        stats.firstOpenAfterMs = Int64(now.timeIntervalSince(outageStart) * 1000)
                    }
                }
            }
        }
        defer { watcher.cancel() }
        let writer = Task {
            while !Task.isCancelled {
                if let (policy, origin) = registry.policyInForce(of: breaker.name) {
                    shared.withLock { stats in
                        stats.policy = policy.stateRulesDescription
                        stats.policyOrigin = origin.rawValue
                    }
                }
                Self.write(shared.withLock { $0 }, to: statsPath)
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
        defer { writer.cancel() }

        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<2 {
                group.addTask {
                    while Date() < end {
                        let now = Date()
                        let phase = schedule.phase(at: .seconds(now.timeIntervalSince(start)))
                        do {
                            let permit = try await breaker.acquireAsync()
                            let isProbe = permit.token.isProbe
                            if isProbe { journal?.write("p \(permit.token.version) \(Journal.milliseconds())") }
                            shared.withLock { stats in
                                stats.phase = phase
                                stats.calls += 1
                                stats.reached += 1
                                if phase == "outage" { stats.reachedDuringOutage += 1 }
                                if isProbe && phase == "outage" { stats.probesDuringOutage += 1 }
                                if isProbe && phase == "recovery" { stats.probesDuringRecovery += 1 }
                            }
                            try? await Task.sleep(for: isProbe && probeHold > .zero ? probeHold : .milliseconds(5))
                            // The phase when the call ends decides its outcome.
                            let ended = schedule.phase(at: .seconds(Date().timeIntervalSince(start)))
                            journal?.write("c")
                            if ended == "outage" { permit.failure(DependencyDown()) } else { permit.success() }
                            if let journal {
                                journal.recorded.add(1, ordering: .relaxed)
                                if isProbe { journal.write("e \(Journal.milliseconds())") }
                            }
                            try? await Task.sleep(for: .milliseconds(15))
                        } catch {
                            shared.withLock { stats in
                                stats.phase = phase
                                stats.calls += 1
                                stats.rejected += 1
                                if phase == "outage" { stats.rejectedDuringOutage += 1 }
                                if stats.state == "closed" { stats.state = (error as? FuseboxError)?.state?.rawValue ?? "open" }
                                if stats.firstOpenAfterMs == nil, phase == "outage" {
                                    stats.firstOpenAfterMs = Int64(now.timeIntervalSince(outageStart) * 1000)
                                }
                            }
                            try? await Task.sleep(for: .milliseconds(20))
                        }
                    }
                }
            }
        }
        // The periodic writer stops first, so that it cannot overwrite the final figures with older ones.
        writer.cancel()
        await writer.value
        var final = shared.withLock { $0 }
        final.done = !forever
        Self.write(final, to: statsPath)
    }

    private static func write(_ stats: InstanceStats, to path: String) {
        guard !path.isEmpty, let data = try? JSONEncoder().encode(stats) else { return }
        let temporary = path + ".tmp"
        if FileManager.default.createFile(atPath: temporary, contents: data) {
            _ = rename(temporary, path)
        }
    }
}

/// An append-only file of one-line events, each written with one `write(2)` before the event takes effect, so that
/// what a SIGKILLed instance did can still be read (the rolling-restart test reads it).
final class Journal: Sendable {
    private let descriptor: Int32
    /// Outcomes recorded (counted after `record`, unlike the journal's `c` lines, which come before).
    let recorded = Atomic<Int>(0)

    init?(path: String) throws {
        guard !path.isEmpty else { return nil }
        descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw CLIError.failed("cannot open the journal \(path): \(String(cString: strerror(errno)))") }
    }

    deinit { close(descriptor) }

    /// Now, in milliseconds since 1970: when a probe was granted and when its outcome was recorded.
    static func milliseconds() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    func write(_ line: String) {
        var bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
    }
}

/// The stats shared by an instance's workers.
final class SharedStats: Sendable {
    private let stats: Locked<InstanceStats>
    init(_ stats: InstanceStats) { self.stats = Locked(stats) }
    func withLock<T>(_ body: (inout InstanceStats) -> T) -> T { stats.withLock { body(&$0) } }
}

extension Optional {
    func orThrow(_ error: @autoclosure () -> some Error) throws -> Wrapped {
        guard let self else { throw error() }
        return self
    }
}
