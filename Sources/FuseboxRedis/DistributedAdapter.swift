import Foundation
import Fusebox
import FuseboxLocking
import Hiredis
import Logging
import ServiceLifecycle
import Synchronization

/// The `distributed` adapter: every instance that names a breaker shares one state, kept in Redis and changed
/// only by `lua/breaker.lua`, while admission and recording stay in-process.
///
/// Start its background work with ``run()`` (it is a swift-service-lifecycle `Service`): a flusher that writes
/// buffered outcomes every ``DistributedOptions/flushInterval`` (failures at once when they exceed the budget
/// Redis granted, or may cross a threshold), a pub/sub subscriber on `NAMESPACE:transitions` that applies
/// transitions and budget recalls, and a refresher that reads every state once per
/// ``DistributedOptions/refreshInterval`` (in slices of at least 32 breakers spread over the interval, one pipeline
/// of plain reads each) and all of them
/// after the subscriber reconnects. On cancellation it writes what is still buffered, then returns.
/// See Docs/architecture.md.
public final class DistributedAdapter<C: Clock>: BreakerAdapter where C.Duration == Duration {
    /// The options it runs with.
    public let options: DistributedOptions
    /// `distributed`.
    public var kind: AdapterKind { .distributed }
    let core: DistributedCore
    private let clock: C
    private let choosesClockPerPolicy: Bool
    private let subscriber: RedisSubscriber
    private let backends = BackendTable()
    private let overrides: OverrideTable

    /// The key schema this build reads and writes (`NS:schema`, and the `schema` field of each state hash).
    public static var keySchema: String { DistributedCore.keySchema }

    /// Makes the adapter; nothing is connected until the first breaker is used or ``run()`` starts.
    /// `clock` measures call durations (the slow-call rule); decisions use Redis time only.
    public convenience init(options: DistributedOptions, clock: C, logger: Logger) throws(FuseboxError) {
        try self.init(options: options, clock: clock, choosesClockPerPolicy: false, logger: logger)
    }

    init(options: DistributedOptions, clock: C, choosesClockPerPolicy: Bool, logger: Logger) throws(FuseboxError) {
        self.choosesClockPerPolicy = choosesClockPerPolicy
        let options = try options.validated()
        self.options = options
        self.clock = clock
        var configuration = options.redis
        if configuration.clientName == nil { configuration.clientName = "fusebox:\(options.instanceID)" }
        do {
            let connection = try RedisClient(configuration: configuration)
            core = DistributedCore(options: options, connection: connection, logger: logger)
            let backends = self.backends
            let overrides = OverrideTable(core: core, backends: backends)
            self.overrides = overrides
            // Transition messages are applied on the subscriber's own thread as they arrive: no task switch.
            let logger = logger
            subscriber = try RedisSubscriber(
                configuration: configuration, channels: [core.channel],
                healthCheckInterval: min(options.refreshInterval, .seconds(1)),
                onMessage: { message in
                    guard let decoded = BreakerMessage(json: message.payload) else {
                        logger.debug("ignored a malformed message on \(message.channel): \(message.text.prefix(200))")
                        return
                    }
                    if decoded.override != nil { return overrides.load(decoded.name) }
                    guard let backend = backends.withLock({ $0[decoded.name] }) else { return }
                    if decoded.recall != nil { backend.applyRecall(decoded) } else { backend.apply(decoded) }
                })
        } catch {
            throw FuseboxError(code: .backendUnavailable, message: error.message, underlying: error)
        }
    }

    /// Makes the backend of breaker `name` and reads its shared state at once (one script call); throws
    /// `FuseboxError` code `invalidPolicy` for a quorum with a count window.
    public func makeBackend(name: String, policy: BreakerPolicy, logger: Logger) throws(FuseboxError) -> any BreakerBackend {
        _ = try DistributedBackend.check(policy, name: name, minimumInstances: options.minimumInstances)
        let reader = choosesClockPerPolicy ? NanosecondClock.automatic(for: policy) : NanosecondClock(clock)
        let backend = DistributedBackend(name: name, policy: policy, core: core, clock: reader, logger: logger)
        backends.withLock { $0[name] = backend }
        overrides.applyKnown(to: backend)
        // Learn the shared state now rather than at the first call.
        backend.refresh()
        return backend
    }

    /// Waits for the key-schema check (``DistributedCore/afterSchemaCheck(_:)``); throws when the namespace
    /// holds another schema.
    private func verifySchema() async throws(FuseboxError) {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            core.afterSchemaCheck { continuation.resume() }
        }
        if let refusal = core.schemaRefusal.withLock({ $0 }) {
            throw FuseboxError(code: .invalidConfiguration, message: String(refusal.message.dropFirst("SCHEMA ".count)), underlying: refusal)
        }
    }

    /// Reads the state of `targets` with one pipeline of `HMGET`s (no script, no write) and applies it; a missing
    /// or unusual hash sends that breaker to the script.
    func refreshStates(_ targets: [DistributedBackend]) {
        guard !targets.isEmpty else { return }
        var commands = [RedisCommand("TIME")]
        for backend in targets {
            commands.append(RedisCommand("HMGET", arguments: [backend.stateKey] + StateReply.refreshedFields))
        }
        let core = self.core
        core.connection.submit(commands) { result in
            guard case .success(let replies) = result, replies.count == targets.count + 1 else { return }
            var now = core.pinnedTime.load(ordering: .relaxed)
            if now == 0, let time = replies[0].array, time.count == 2,
                let seconds = time[0].string.flatMap({ Int64($0) }), let micros = time[1].string.flatMap({ Int64($0) }) {
                now = seconds * 1000 + micros / 1000
            }
            for (backend, reply) in zip(targets, replies.dropFirst()) { backend.applyRefreshed(reply, now: now) }
        }
    }

    private var allBackends: [DistributedBackend] { backends.withLock { Array($0.values) } }

    /// The fewest breakers the refresher reads in one pipeline, unless the adapter has fewer.
    static var refreshSlice: Int { 32 }

    /// Writes every buffered outcome and waits until Redis has applied it (or refused it).
    public func flush() async {
        await withTaskGroup(of: Void.self) { group in
            for backend in allBackends {
                group.addTask { await backend.flushAndWait() }
            }
        }
    }

    /// Runs the flusher, the subscriber and the refresher until cancellation or graceful shutdown, then writes
    /// what is still buffered.
    public func run() async throws {
        try await verifySchema()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.subscriber.run() }
            group.addTask { await self.listen() }
            group.addTask {
                // Membership: this adapter is up (lua/members.lua); the counts come back with each beat.
                // The subscriber's health-check ping goes with each beat, so that Redis serves both in one wakeup
                // (Docs/performance.md); its own timer is then a fallback. In a large fleet both come less often
                // (DistributedCore.beatInterval).
                let ping = min(self.options.refreshInterval, .seconds(1))
                while !Task.isCancelled {
                    self.core.beat()
                    self.subscriber.pingNow()
                    let interval = self.core.beatInterval
                    let pingEvery = interval > self.options.membershipInterval ? max(ping, interval) : ping
                    let fallback = interval <= pingEvery ? pingEvery * 3 / 2 : pingEvery
                    if self.subscriber.healthCheckInterval != fallback { self.subscriber.setHealthCheckInterval(fallback) }
                    try? await Task.sleep(for: interval)
                }
            }
            group.addTask {
                // Rings every flush interval, and sooner (after DistributedCore.retryInterval) when a write failed.
                let tick = min(self.options.flushInterval, DistributedCore.retryInterval)
                var sinceFlush = Duration.zero
                while !Task.isCancelled {
                    try? await Task.sleep(for: tick)
                    sinceFlush += tick
                    let retry = self.core.retryWanted.exchange(false, ordering: .relaxed)
                    self.renewProbeLeases()
                    if sinceFlush >= self.options.flushInterval {
                        sinceFlush = .zero
                        self.core.doorbell.ring()
                    } else if retry {
                        self.core.doorbell.ring()
                    }
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    await self.core.doorbell.wait()
                    // One script call per up to DistributedCore.breakersPerCall breakers with something to write.
                    self.core.sendOrder.withLock { _ in
                        let urgencies = self.allBackends.map { (backend: $0, urgency: $0.flushUrgency()) }
                        self.core.submit(DistributedCore.toFlush(urgencies).flatMap { $0.takePending() })
                    }
                }
            }
            group.addTask {
                // Every breaker is read once per refreshInterval, in slices of at least `refreshSlice` breakers
                // (all of them when fewer) spread over the interval, one pipeline each: each pipeline costs Redis a
                // wakeup, so an adapter with 100 breakers sends 3 a round rather than 30, one with 3 breakers 1.
                let tick = min(self.options.refreshInterval, .seconds(1))
                let ticksPerRound = max(1, Int((self.options.refreshInterval / tick).rounded(.up)))
                var round: [DistributedBackend] = []
                var perSlice = 1
                var ticksPerSlice = 1
                var sinceSlice = 0
                var sinceOverrides = Duration.zero
                while !Task.isCancelled {
                    try? await Task.sleep(for: tick)
                    if Task.isCancelled { break }
                    // The overrides are read again once per refresh interval: one HGETALL, whatever the breakers.
                    sinceOverrides += tick
                    if sinceOverrides >= self.options.refreshInterval {
                        sinceOverrides = .zero
                        self.overrides.loadAll()
                    }
                    // An override set for a time ends here when Redis' clock passes its expiry.
                    self.overrides.expireDue()
                    sinceSlice += 1
                    guard sinceSlice >= ticksPerSlice else { continue }
                    sinceSlice = 0
                    if round.isEmpty {
                        round = self.allBackends
                        let slices = max(1, min(ticksPerRound, round.count / Self.refreshSlice))
                        perSlice = max(1, (round.count + slices - 1) / slices)
                        ticksPerSlice = max(1, ticksPerRound / slices)
                    }
                    let slice = Array(round.suffix(perSlice))
                    round.removeLast(slice.count)
                    self.refreshStates(slice)
                }
            }
            await gracefulShutdownOrCancellation()
            group.cancelAll()
        }
        await flush()
        await core.leave()
    }

    /// Renews the probe permits of calls still running whose lease is half over (a live holder keeps its permit
    /// however long its call takes; one that died loses it when the lease runs out).
    private func renewProbeLeases() {
        for backend in allBackends { backend.renewProbeLeaseIfDue() }
    }

    private func gracefulShutdownOrCancellation() async {
        let (never, _) = AsyncStream.makeStream(of: Never.self)
        for await _ in never.cancelOnGracefulShutdown() {}
    }

    private func listen() async {
        for await event in subscriber.events {
            switch event {
            case .message:
                break  // delivered to the onMessage handler instead
            case .reconnected:
                core.logger.info("Redis pub/sub reconnected; refreshing every breaker")
                overrides.loadAll()
                refreshStates(allBackends)
            case .disconnected(let error):
                core.logger.info("Redis pub/sub disconnected (\(error.code): \(error.message)); reconnecting")
            case .subscribed:
                overrides.loadAll()
                refreshStates(allBackends)
            }
        }
    }

    /// Whether breaker `name` decides by its store-down policy now (Redis unavailable for it): for tests and figures.
    package func isUsingStoreDownPolicy(_ name: String) -> Bool {
        backends.withLock { $0[name] }?.isUsingStoreDownPolicy ?? false
    }

    /// Makes the scripts of this adapter use `milliseconds` as the time instead of Redis `TIME`: for tests only.
    package func pinClock(atMilliseconds milliseconds: Int64) {
        core.pinnedTime.store(milliseconds, ordering: .relaxed)
    }

    /// Moves a pinned clock forward: for tests only.
    package func shiftClock(by duration: Duration) {
        core.pinnedTime.add(duration.milliseconds, ordering: .relaxed)
    }
}

/// The adapter's breakers by name, shared with the subscriber's message handler.
final class BackendTable: Sendable {
    private let table = Locked<[String: DistributedBackend]>([:])
    func withLock<T>(_ body: (inout [String: DistributedBackend]) -> T) -> T { table.withLock { body(&$0) } }
}

extension DistributedAdapter where C == ContinuousClock {
    /// Makes the adapter; each breaker's clock (for call durations) is picked from its policy, as
    /// `LocalAdapter()` does (`NanosecondClock/automatic(for:)`).
    public convenience init(options: DistributedOptions, logger: Logger = Logger.current) throws(FuseboxError) {
        try self.init(options: options, clock: ContinuousClock(), choosesClockPerPolicy: true, logger: logger)
    }
}

extension BreakerRegistry {
    /// Makes a registry with the adapter the configuration names: `local`, or `distributed` on
    /// `FuseboxConfiguration/redisURL` with `FuseboxConfiguration/namespace`. Start it with `run()`.
    public static func make(
        configuration: FuseboxConfiguration, logger: Logger = Logger.current
    ) throws(FuseboxError) -> BreakerRegistry {
        switch configuration.adapter {
        case .local:
            return BreakerRegistry(adapter: LocalAdapter(), configuration: configuration, logger: logger)
        case .distributed:
            return BreakerRegistry(adapter: try DistributedAdapter(options: try DistributedOptions(configuration: configuration), logger: logger), configuration: configuration, logger: logger)
        }
    }
}

extension DistributedOptions {
    /// The options a configuration gives: its Redis URL, namespace, store-down policy, admission budget, intervals
    /// and quorum.
    public init(configuration: FuseboxConfiguration) throws(FuseboxError) {
        try self.init(url: configuration.redisURL)
        namespace = configuration.namespace
        whenUnavailable = configuration.storeDownPolicy
        admissionBudget = configuration.admissionBudget
        flushInterval = configuration.flushInterval
        quietFlushInterval = configuration.quietFlushInterval
        refreshInterval = configuration.refreshInterval
        quietFleetWritesPerSecond = configuration.quietFleetWritesPerSecond
        membershipInterval = configuration.membershipInterval
        minimumInstances = configuration.minimumInstances
    }
}
