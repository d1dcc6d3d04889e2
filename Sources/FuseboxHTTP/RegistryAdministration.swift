import Foundation
import Fusebox
import FuseboxLocking

/// The breakers of one application's `BreakerRegistry`, on either adapter: what an application mounts the admin
/// router over.
///
/// Only breakers the application has made are known; it cannot make one (it would not know its policy). Actions
/// go through each breaker's backend, so with the `distributed` adapter they reach every instance.
public struct RegistryAdministration: BreakerAdministration {
    /// The registry administered.
    public let registry: BreakerRegistry
    /// The actions made through this administration, newest last (at most ``auditCapacity``).
    private let trail = AuditTrail()
    /// How many actions the in-memory audit trail keeps.
    public static let auditCapacity = 10_000

    /// Administers `registry`.
    public init(registry: BreakerRegistry) {
        self.registry = registry
    }

    private func record(_ action: String, _ name: String, reason: String? = nil) {
        let entry = AuditEntry(
            atMilliseconds: Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)), breaker: name, action: action,
            by: AuditContext.actor ?? "application", reason: reason)
        trail.entries.withLock { trail in
            trail.append(entry)
            if trail.count > Self.auditCapacity { trail.removeFirst(trail.count - Self.auditCapacity) }
        }
    }

    /// The last `limit` operator actions (of `name` only, when given), newest first.
    public func audit(of name: String?, limit: Int) async throws(FuseboxError) -> [AuditEntry] {
        Array(trail.entries.withLock { $0.reversed().filter { name == nil || $0.breaker == name }.prefix(max(0, limit)) })
    }

    /// Where the breakers live, for people.
    public var scope: String {
        registry.adapter.kind == .local ? "this process (local adapter)" : "this application's breakers (distributed adapter)"
    }

    /// Every breaker, sorted by name.
    public func survey() async throws(FuseboxError) -> BreakerSurvey {
        var statuses: [BreakerStatus] = []
        var unreadable: [(name: String, error: FuseboxError)] = []
        for name in registry.names {
            do {
                statuses.append(try await status(of: name))
            } catch where error.code == .corruptState {
                unreadable.append((name, error))
            }
        }
        return BreakerSurvey(breakers: statuses, unreadable: unreadable)
    }

    /// One breaker; an unknown name throws `unknownBreaker`.
    public func status(of name: String) async throws(FuseboxError) -> BreakerStatus {
        let breaker = try existing(name)
        let inForce = registry.policyInForce(of: name)
        return BreakerStatus(
            snapshot: try await breaker.snapshot(), thresholds: BreakerThresholds(policy: inForce?.policy ?? breaker.backend.policy),
            policyOrigin: inForce?.origin.rawValue)
    }

    /// The last transitions of `name` (up to 100), oldest first, with wall-clock times.
    public func timeline(of name: String) async throws(FuseboxError) -> [TimedTransition] {
        let breaker = try existing(name)
        let transitions = try await breaker.timeline()
        guard registry.adapter.kind == .local else {
            // The distributed adapter's transitions carry Redis time: milliseconds since the Unix epoch.
            return transitions.map { TimedTransition($0, at: Date(timeIntervalSince1970: $0.at.seconds)) }
        }
        // The local adapter's times count from its clock's epoch. The last transition began the current state,
        // which has lasted `timeInState`: that places the clock's "now", and every other time with it.
        let snapshot = try await breaker.snapshot()
        let now = Date()
        guard let last = transitions.last else { return [] }
        let clockNow = last.at + snapshot.timeInState
        return transitions.map { TimedTransition($0, at: now.addingTimeInterval(-(clockNow - $0.at).seconds)) }
    }

    /// Forces `name` open until reset, or for `duration` when given; records the action.
    public func isolate(_ name: String, reason: String, for duration: Duration?) async throws(FuseboxError) -> BreakerStatus {
        try await existing(name).backend.isolate(reason: reason, for: duration)
        record("isolate", name, reason: duration.map { "\(reason) (for \(FuseboxError.format($0)))" } ?? reason)
        return try await status(of: name)
    }

    /// Closes `name` with an empty window; records the action.
    public func reset(_ name: String) async throws(FuseboxError) -> BreakerStatus {
        try await existing(name).reset()
        record("reset", name)
        return try await status(of: name)
    }

    /// Closes `name` and forgets its relative threshold's baseline; records the action.
    public func resetWithBaseline(_ name: String) async throws(FuseboxError) -> BreakerStatus {
        try await existing(name).resetWithBaseline()
        record("reset-baseline", name)
        return try await status(of: name)
    }

    /// Moves `name` to half-open; records the action.
    public func forceHalfOpen(_ name: String) async throws(FuseboxError) -> BreakerStatus {
        try await existing(name).forceHalfOpen()
        record("half-open", name)
        return try await status(of: name)
    }

    /// Resets every breaker; returns them afterwards.
    public func resetAll() async throws(FuseboxError) -> BreakerSurvey {
        try await registry.resetAll()
        for name in registry.names { record("reset", name) }
        return try await survey()
    }

    /// Merges the events of every breaker made so far, and of those made later (looked for twice a second).
    public func transitions() -> AsyncStream<TransitionNotice> {
        let (stream, continuation) = AsyncStream.makeStream(of: TransitionNotice.self, bufferingPolicy: .bufferingNewest(1024))
        let registry = self.registry
        let forwarder = Task {
            await withTaskGroup(of: Void.self) { group in
                var watched: Set<String> = []
                while !Task.isCancelled {
                    for name in registry.names where !watched.contains(name) {
                        guard let breaker = registry.existingBreaker(named: name) else { continue }
                        watched.insert(name)
                        let events = breaker.events()
                        group.addTask {
                            for await event in events {
                                guard case .stateChanged(let transition) = event else { continue }
                                continuation.yield(TransitionNotice(
                                    name: name, from: transition.from, to: transition.to, version: transition.version,
                                    reason: transition.reason, timeUntilProbe: nil))
                            }
                        }
                    }
                    try? await Task.sleep(for: .milliseconds(500))
                }
                group.cancelAll()
            }
        }
        continuation.onTermination = { _ in forwarder.cancel() }
        return stream
    }

    /// Transitions counted since this administration started, or `nil` where the breakers' metrics count them.
    public func transitionCounts() -> [TransitionKey: Int]? { nil }

    private func existing(_ name: String) throws(FuseboxError) -> CircuitBreaker {
        try BreakerRegistry.validate(name: name)
        guard let breaker = registry.existingBreaker(named: name) else {
            throw FuseboxError(code: .unknownBreaker, message: "unknown breaker '\(name)' (this registry has \(registry.names.count))", breakerName: name)
        }
        return breaker
    }
}

/// An application's admin actions, in memory (a class: ``RegistryAdministration`` is a value that copies share).
private final class AuditTrail: Sendable {
    let entries = Locked<[AuditEntry]>([])
}
