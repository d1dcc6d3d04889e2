import Configuration
import FuseboxLocking
import Logging
import ServiceLifecycle
import Synchronization

/// Where an application's breakers come from: one registry per process, built with an adapter.
///
/// The application chooses the adapter in configuration (``FuseboxConfiguration``); its code asks the
/// registry for breakers by name and does not change with the adapter.
///
/// A name is created on first request with the policy given, or without one, with the configured policy
/// (``FuseboxConfiguration/policy(for:)``). Asking again with a policy that has the same state rules returns a
/// handle on the same breaker (with the new request's classification and call timeout); asking with different
/// state rules throws ``FuseboxError/Code/policyConflict``.
///
/// A registry made from a configuration with a reader watches it in ``run()``: when a reloading provider changes
/// the policy of a breaker that takes its policy from configuration, or `fusebox.enabled`, the live breakers
/// follow without a restart. A value the reload cannot use is logged and the breaker keeps its policy. Names: 1 to 200 bytes of
/// UTF-8, no control characters, no `{` or `}` (they delimit the Redis Cluster hash tag).
public final class BreakerRegistry: Service {
    /// The adapter breakers are made with.
    public let adapter: any BreakerAdapter
    private let logger: Logger
    private let breakers = Locked<[String: BackendLanes]>([:])
    /// What each breaker was asked for with (code or configuration), which reloads and conflicts compare with.
    private let requested = Locked<[String: (policy: BreakerPolicy, origin: PolicyOrigin)]>([:])
    private let switchboard = FuseboxSwitch()
    /// The configuration policies come from when code gives none.
    public let configuration: FuseboxConfiguration

    /// Makes a registry with an adapter; transitions are logged through `logger`: by default `Logger.current`, the
    /// logger the application bound with swift-log's `withLogger` (else its bootstrapped default), as swift-log asks
    /// of libraries.
    public init(adapter: any BreakerAdapter, logger: Logger = Logger.current) {
        self.adapter = adapter
        self.logger = logger
        self.configuration = FuseboxConfiguration(adapter: adapter.kind)
    }

    /// Makes a registry with an adapter, taking policies and the global switch from `configuration`.
    public init(adapter: any BreakerAdapter, configuration: FuseboxConfiguration, logger: Logger = Logger.current) {
        self.adapter = adapter
        self.logger = logger
        self.configuration = configuration
        switchboard.isEnabled = configuration.isEnabled
    }

    /// The breaker `name`, made on first request with `policy`, or when `policy` is `nil`, with the configured
    /// one (``FuseboxConfiguration/policy(for:)``; `BreakerPolicy()` when nothing is configured).
    public func breaker(_ name: String, policy: BreakerPolicy? = nil) throws(FuseboxError) -> CircuitBreaker {
        try Self.validate(name: name)
        let chosen: (policy: BreakerPolicy, origin: PolicyOrigin)
        if let policy {
            chosen = (try policy.validated(), .code)
        } else {
            chosen = try configuration.policy(for: name)
        }
        let (policy, origin) = chosen
        let lanes = try breakers.withLock { (breakers) throws(FuseboxError) -> BackendLanes in
            if let existing = breakers[name] {
                let asked = requested.withLock { $0[name] }
                // Without a policy, any existing breaker will do; with one, its state rules must match.
                guard origin != .code || asked.map({ $0.policy.hasSameStateRules(as: policy) }) ?? true else {
                    throw FuseboxError(
                        code: .policyConflict,
                        message: "breaker '\(name)' already exists with other state rules: existing [\(asked!.policy.stateRulesDescription)], requested [\(policy.stateRulesDescription)]",
                        breakerName: name)
                }
                return existing
            }
            let made = BackendLanes(backend: try adapter.makeBackend(name: name, policy: policy, logger: logger))
            breakers[name] = made
            requested.withLock { $0[name] = (policy, origin) }
            return made
        }
        return CircuitBreaker(lanes: lanes, policy: policy, switchboard: switchboard)
    }

    /// The policy breaker `name` runs now and where it came from (an operator's override first); `nil` when no
    /// breaker of that name has been made.
    public func policyInForce(of name: String) -> (policy: BreakerPolicy, origin: PolicyOrigin)? {
        guard let backend = breakers.withLock({ $0[name]?.backend }), let asked = requested.withLock({ $0[name] }) else { return nil }
        return backend.isOverridden ? (backend.policy, .override) : (backend.policy, asked.origin)
    }

    /// Applies a new configuration snapshot: the global switch, and the policy of every breaker whose policy
    /// comes from configuration. Returns the names whose policy changed. A bad value is logged; nothing changes
    /// for the breaker concerned.
    @discardableResult
    func reload(from snapshot: ConfigSnapshotReader) -> [String] {
        let next: FuseboxConfiguration
        do {
            next = try configuration.reloaded(from: snapshot)
        } catch {
            logger.info("configuration reload refused: \(error.message); nothing changed")
            return []
        }
        switchboard.isEnabled = next.isEnabled
        var changed: [String] = []
        for (name, asked) in requested.withLock({ $0 }) where asked.origin != .code {
            guard let backend = breakers.withLock({ $0[name]?.backend }) else { continue }
            do {
                let (policy, origin) = try next.policy(for: name, in: snapshot)
                guard !policy.hasSameStateRules(as: asked.policy) else { continue }
                try backend.updatePolicy(policy)
                requested.withLock { $0[name] = (policy, origin) }
                changed.append(name)
            } catch {
                logger.info("breaker '\(name)' keeps its policy: the reloaded configuration has \(error.message)", metadata: ["breaker.name": "\(name)"])
            }
        }
        return changed.sorted()
    }

    /// Runs the adapter's background work (see ``BreakerAdapter``) until cancellation or graceful shutdown.
    /// Add the registry to the application's `ServiceGroup`, or run it in a task of its own.
    public func run() async throws {
        guard let reader = configuration.reader else { return try await adapter.run() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await self.adapter.run() }
            group.addTask {
                try await reader.watchSnapshot { snapshots in
                    for await snapshot in snapshots { self.reload(from: snapshot) }
                }
            }
            // The adapter ends on cancellation or graceful shutdown; the watch with it.
            try await group.next()
            group.cancelAll()
        }
    }

    /// The breaker `name` if it has been made, with the policy it was made with; `nil` otherwise. Unlike
    /// ``breaker(_:policy:)`` it never makes one: for operators' tools (the admin router) that steer what exists.
    public func existingBreaker(named name: String) -> CircuitBreaker? {
        guard let lanes = breakers.withLock({ $0[name] }) else { return nil }
        return CircuitBreaker(lanes: lanes, policy: lanes.backend.policy, switchboard: switchboard)
    }

    /// The names of every breaker made so far, sorted.
    public var names: [String] { breakers.withLock { $0.keys.sorted() } }

    /// A snapshot of every breaker, sorted by name.
    public func snapshots() async throws(FuseboxError) -> [BreakerSnapshot] {
        var result: [BreakerSnapshot] = []
        for backend in breakers.withLock({ $0.values.map(\.backend).sorted { $0.name < $1.name } }) {
            result.append(try await backend.snapshot())
        }
        return result
    }

    /// Resets every breaker.
    public func resetAll() async throws(FuseboxError) {
        for backend in breakers.withLock({ $0.values.map(\.backend) }) { try await backend.reset() }
    }

    /// The global switch: when `false`, every breaker of this registry admits every call and records nothing.
    public var isEnabled: Bool {
        get { switchboard.isEnabled }
        set { switchboard.isEnabled = newValue }
    }

    /// Checks a breaker name; throws ``FuseboxError/Code/invalidName`` saying what is wrong.
    public static func validate(name: String) throws(FuseboxError) {
        func fail(_ reason: String) -> FuseboxError {
            FuseboxError(code: .invalidName, message: "breaker name \(reason)", breakerName: name)
        }
        if name.isEmpty { throw fail("is empty") }
        if name.utf8.count > 200 { throw fail("is \(name.utf8.count) bytes long; at most 200 are allowed") }
        if let bad = name.unicodeScalars.first(where: { $0.properties.generalCategory == .control || $0 == "{" || $0 == "}" }) {
            let shown = bad.properties.generalCategory == .control ? "U+\(String(bad.value, radix: 16, uppercase: true))" : "'\(bad)'"
            let printable = name.unicodeScalars.map { $0.properties.generalCategory == .control ? "?" : String($0) }.joined()
            throw fail("'\(printable)' contains \(shown); control characters, '{' and '}' are not allowed")
        }
    }
}
