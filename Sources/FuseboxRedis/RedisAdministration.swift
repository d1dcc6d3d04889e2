import Foundation
import Fusebox
import FuseboxLocking
import Hiredis
import Logging
import ServiceLifecycle

/// Every breaker of one Redis namespace, whichever instance made it: what `fusebox serve` administers.
///
/// Reads go through `BreakerOperator/readings(of:)`: two round trips whatever the number of breakers
/// (`SMEMBERS`, then one pipeline of script reads and policy reads). Concurrent requests share one read, and a
/// read is reused for ``surveyMaxAge`` unless a transition message or an action made here says it is stale, so
/// a hundred dashboards and scrapers cost Redis what one does.
///
/// ``run()`` (a swift-service-lifecycle `Service`) holds one subscription to `NS:transitions`: it feeds
/// ``transitions()`` to any number of consumers and counts transitions for `fusebox_transitions_total`.
public final class RedisAdministration: BreakerAdministration, Service {
    /// The operator every read and action goes through.
    public let breakers: BreakerOperator
    /// How long one survey is reused when no transition has been seen since.
    public let surveyMaxAge: Duration
    private let subscriber: RedisSubscriber
    private let logger: Logger
    private let shared = Locked(Shared())

    private struct Shared {
        var consumers: [Int: AsyncStream<TransitionNotice>.Continuation] = [:]
        var nextConsumer = 0
        var counts: [TransitionKey: Int] = [:]
        /// +1 on every transition seen or action made: a survey read under an older generation is stale.
        var generation = 0
        var last: (survey: BreakerSurvey, generation: Int, at: ContinuousClock.Instant)?
        var inFlight: (task: Task<Result<BreakerSurvey, FuseboxError>, Never>, generation: Int)?
    }

    /// Administers `namespace` on the Redis `configuration` names (any topology).
    public init(
        configuration: RedisConfiguration, namespace: String = "fusebox", actor: String = "fusebox-serve",
        surveyMaxAge: Duration = .milliseconds(250), logger: Logger = Logger.current
    ) throws(FuseboxError) {
        do {
            let client = try RedisClient(configuration: configuration)
            breakers = BreakerOperator(connection: client, namespace: namespace, actor: actor)
            subscriber = try RedisSubscriber(configuration: configuration, channels: [breakers.channel])
        } catch {
            throw FuseboxError(code: .invalidConfiguration, message: "Redis: \(error.message)", underlying: error)
        }
        self.surveyMaxAge = surveyMaxAge
        self.logger = logger
    }

    /// Where the breakers live, for people.
    public var scope: String { "namespace '\(breakers.namespace)' at \(breakers.connection.configuration.redactedURL)" }

    /// Subscribes to the transitions channel and fans its messages out until cancelled or shut down gracefully.
    public func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.subscriber.run() }
            group.addTask {
                for await event in self.subscriber.events.cancelOnGracefulShutdown() {
                    switch event {
                    case .message(let message): self.received(message.text)
                    case .reconnected: self.invalidate()
                    case .disconnected(let error): self.logger.info("transitions channel lost: \(error.message); reconnecting")
                    case .subscribed: break
                    }
                }
            }
            await group.next()
            group.cancelAll()
        }
        shared.withLock { shared in
            for consumer in shared.consumers.values { consumer.finish() }
            shared.consumers = [:]
        }
    }

    /// Handles one message of `NS:transitions`: recalls are for instances and are skipped.
    func received(_ text: String) {
        guard let message = BreakerMessage(json: Array(text.utf8)), message.recall == nil,
            let to = message.state.flatMap(BreakerState.init(rawValue:))
        else { return }
        let from = message.from.flatMap(BreakerState.init(rawValue:))
        let name = message.name
        let notice = TransitionNotice(
            name: name, from: from, to: to, version: message.version, reason: message.reason ?? "",
            timeUntilProbe: to == .open ? .milliseconds(message.probeInMilliseconds ?? 0) : nil)
        shared.withLock { shared in
            shared.generation += 1
            shared.counts[TransitionKey(name: name, from: from?.rawValue ?? "unknown", to: to.rawValue), default: 0] += 1
            for consumer in shared.consumers.values { consumer.yield(notice) }
        }
    }

    private func invalidate() { shared.withLock { $0.generation += 1 } }

    /// Every breaker, sorted by name.
    public func survey() async throws(FuseboxError) -> BreakerSurvey {
        enum Next {
            case cached(BreakerSurvey)
            case wait(Task<Result<BreakerSurvey, FuseboxError>, Never>)
        }
        let next: Next = shared.withLock { shared in
            if let last = shared.last, last.generation == shared.generation, last.at.duration(to: .now) < surveyMaxAge {
                return .cached(last.survey)
            }
            if let inFlight = shared.inFlight, inFlight.generation == shared.generation { return .wait(inFlight.task) }
            let generation = shared.generation
            let task = Task { [breakers] () -> Result<BreakerSurvey, FuseboxError> in
                let result = await Result(awaiting: { () async throws(FuseboxError) in try await Self.read(breakers) })
                self.shared.withLock { shared in
                    if case .success(let survey) = result { shared.last = (survey, generation, .now) }
                    if shared.inFlight?.generation == generation { shared.inFlight = nil }
                }
                return result
            }
            shared.inFlight = (task, generation)
            return .wait(task)
        }
        switch next {
        case .cached(let survey): return survey
        case .wait(let task): return try await task.value.get()
        }
    }

    private static func read(_ breakers: BreakerOperator) async throws(FuseboxError) -> BreakerSurvey {
        let now = Date()
        var statuses: [BreakerStatus] = []
        var unreadable: [(name: String, error: FuseboxError)] = []
        let overrides = try await breakers.overrides()
        for reading in try await breakers.readings() {
            switch reading.snapshot {
            case .success(let snapshot):
                let (thresholds, origin) = Self.policy(of: reading, overrides: overrides)
                statuses.append(BreakerStatus(
                    snapshot: snapshot, thresholds: thresholds, policyOrigin: origin,
                    overrideExpiresAt: Self.expiry(of: overrides[reading.name]), observedAt: now))
            case .failure(let error):
                unreadable.append((reading.name, error))
            }
        }
        return BreakerSurvey(breakers: statuses, unreadable: unreadable, observedAt: now)
    }

    /// One breaker; an unknown name throws `unknownBreaker`.
    public func status(of name: String) async throws(FuseboxError) -> BreakerStatus {
        try BreakerRegistry.validate(name: name)
        guard try await breakers.contains(name) else { throw unknown(name) }
        let reading = try await breakers.readings(of: [name])[0]
        let overrides = try await breakers.overrides()
        let (thresholds, origin) = Self.policy(of: reading, overrides: overrides)
        return BreakerStatus(
            snapshot: try reading.snapshot.get(), thresholds: thresholds, policyOrigin: origin, overrideExpiresAt: Self.expiry(of: overrides[name]))
    }

    /// When `override` ends by itself (Redis time read as this host's wall clock).
    static func expiry(of override: PolicyOverride?) -> Date? {
        override?.expiresAtMilliseconds.map { Date(timeIntervalSince1970: Double($0) / 1000) }
    }

    /// The policy in force and where it came from: an operator's override (which every instance applies within
    /// one refresh) when one is set, else the one the instances stored (`instances`), else none.
    static func policy(of reading: BreakerReading, overrides: [String: PolicyOverride]) -> (BreakerThresholds?, String?) {
        if let override = overrides[reading.name] { return (BreakerThresholds(policy: override.policy), "override") }
        let stored = reading.policyJSON.flatMap(BreakerThresholds.init(storedPolicyJSON:))
        return (stored, stored == nil ? nil : "instances")
    }

    /// The last transitions of `name` (up to 100), oldest first, with wall-clock times.
    public func timeline(of name: String) async throws(FuseboxError) -> [TimedTransition] {
        try await breakers.timeline(of: name).map { TimedTransition($0, at: Date(timeIntervalSince1970: $0.at.seconds)) }
    }

    /// Forces `name` open until reset, or for `duration` when given; records the action.
    public func isolate(_ name: String, reason: String, for duration: Duration?) async throws(FuseboxError) -> BreakerStatus {
        // `BreakerOperator.isolate` makes an unknown breaker isolated (operators may isolate before first use);
        // the HTTP route answers 404 instead.
        try BreakerRegistry.validate(name: name)
        guard try await breakers.contains(name) else { throw unknown(name) }
        _ = try await breakers.isolate(name, reason: reason, for: duration)
        invalidate()
        return try await status(of: name)
    }

    /// Closes `name` with an empty window; records the action.
    public func reset(_ name: String) async throws(FuseboxError) -> BreakerStatus {
        _ = try await breakers.reset(name)
        invalidate()
        return try await status(of: name)
    }

    /// The last `limit` operator actions (of `name` only, when given), newest first.
    public func audit(of name: String?, limit: Int) async throws(FuseboxError) -> [AuditEntry] {
        try await breakers.auditTrail(of: name, limit: limit)
    }

    /// Closes `name` and forgets its relative threshold's baseline; records the action.
    public func resetWithBaseline(_ name: String) async throws(FuseboxError) -> BreakerStatus {
        _ = try await breakers.reset(name, baseline: true)
        invalidate()
        return try await status(of: name)
    }

    /// Moves `name` to half-open; records the action.
    public func forceHalfOpen(_ name: String) async throws(FuseboxError) -> BreakerStatus {
        _ = try await breakers.forceHalfOpen(name)
        invalidate()
        return try await status(of: name)
    }

    /// Resets every breaker; returns them afterwards.
    public func resetAll() async throws(FuseboxError) -> BreakerSurvey {
        for name in try await breakers.names() { _ = try await breakers.reset(name) }
        invalidate()
        return try await survey()
    }

    /// Transitions from now on, as they happen.
    public func transitions() -> AsyncStream<TransitionNotice> {
        let (stream, continuation) = AsyncStream.makeStream(of: TransitionNotice.self, bufferingPolicy: .bufferingNewest(1024))
        let id = shared.withLock { shared in
            shared.nextConsumer += 1
            shared.consumers[shared.nextConsumer] = continuation
            return shared.nextConsumer
        }
        continuation.onTermination = { [weak self] _ in _ = self?.shared.withLock { $0.consumers.removeValue(forKey: id) } }
        return stream
    }

    /// Transitions counted since this administration started, or `nil` where the breakers' metrics count them.
    public func transitionCounts() -> [TransitionKey: Int]? { shared.withLock { $0.counts } }

    /// Closes the Redis connection.
    public func close() { breakers.connection.close() }

    private func unknown(_ name: String) -> FuseboxError {
        FuseboxError(code: .unknownBreaker, message: "unknown breaker '\(name)' in namespace '\(breakers.namespace)'", breakerName: name)
    }
}

extension Result where Failure == FuseboxError {
    /// The result of an async throwing body.
    fileprivate init(awaiting body: () async throws(FuseboxError) -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
