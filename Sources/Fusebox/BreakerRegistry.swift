import FuseboxLocking
import Logging
import ServiceLifecycle
import Synchronization

/// Where an application's breakers come from: one registry per process, built with an adapter.
///
/// The application chooses the adapter in configuration (``FuseboxConfiguration``); its code asks the
/// registry for breakers by name and does not change with the adapter.
///
/// A name is created on first request with the policy given. Asking again with a policy that has the same
/// state rules returns a handle on the same breaker (with the new request's classification and call timeout);
/// asking with different state rules throws ``FuseboxError/Code/policyConflict``. Names: 1 to 200 bytes of
/// UTF-8, no control characters, no `{` or `}` (they delimit the Redis Cluster hash tag).
public final class BreakerRegistry: Service {
    /// The adapter breakers are made with.
    public let adapter: any BreakerAdapter
    private let logger: Logger
    private let breakers = Locked<[String: BackendLanes]>([:])
    private let switchboard = FuseboxSwitch()

    /// Makes a registry with an adapter; transitions are logged through `logger` (default: not logged).
    public init(adapter: any BreakerAdapter, logger: Logger = Logger(label: "fusebox", factory: { _ in SwiftLogNoOpLogHandler() })) {
        self.adapter = adapter
        self.logger = logger
    }

    /// Makes a registry with the `local` adapter when the configuration says `local`.
    ///
    /// For `distributed`, import `FuseboxRedis` and use its `BreakerRegistry.make(configuration:logger:)`,
    /// which handles both.
    public convenience init(configuration: FuseboxConfiguration, logger: Logger = Logger(label: "fusebox", factory: { _ in SwiftLogNoOpLogHandler() })) throws(FuseboxError) {
        guard configuration.adapter == .local else {
            throw FuseboxError(
                code: .invalidConfiguration,
                message: "adapter 'distributed' is provided by the FuseboxRedis module: import it and call BreakerRegistry.make(configuration:logger:)")
        }
        self.init(adapter: LocalAdapter(), logger: logger)
    }

    /// The breaker `name`, made with `policy` on first request.
    public func breaker(_ name: String, policy: BreakerPolicy = BreakerPolicy()) throws(FuseboxError) -> CircuitBreaker {
        try Self.validate(name: name)
        let policy = try policy.validated()
        let lanes = try breakers.withLock { (breakers) throws(FuseboxError) -> BackendLanes in
            if let existing = breakers[name] {
                guard existing.backend.policy.hasSameStateRules(as: policy) else {
                    throw FuseboxError(
                        code: .policyConflict,
                        message: "breaker '\(name)' already exists with other state rules: existing [\(existing.backend.policy.stateRulesDescription)], requested [\(policy.stateRulesDescription)]",
                        breakerName: name)
                }
                return existing
            }
            let made = BackendLanes(backend: try adapter.makeBackend(name: name, policy: policy, logger: logger))
            breakers[name] = made
            return made
        }
        return CircuitBreaker(lanes: lanes, policy: policy, switchboard: switchboard)
    }

    /// Runs the adapter's background work (see ``BreakerAdapter``) until cancellation or graceful shutdown.
    /// Add the registry to the application's `ServiceGroup`, or run it in a task of its own.
    public func run() async throws { try await adapter.run() }

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

/// The configuration an application gives Fusebox: which adapter, and for `distributed`, where Redis is.
public struct FuseboxConfiguration: Sendable, Hashable {
    /// `local` or `distributed`.
    public var adapter: AdapterKind
    /// The Redis URL for the `distributed` adapter.
    public var redisURL: String
    /// The key prefix in Redis.
    public var namespace: String

    /// Makes a configuration.
    public init(adapter: AdapterKind = .local, redisURL: String = "redis://127.0.0.1:6379", namespace: String = "fusebox") {
        self.adapter = adapter
        self.redisURL = redisURL
        self.namespace = namespace
    }

    /// Reads `FUSEBOX_ADAPTER` (`local` or `distributed`, default `local`), `FUSEBOX_REDIS_URL` and
    /// `FUSEBOX_NAMESPACE` from `environment`; an unknown adapter throws ``FuseboxError/Code/invalidConfiguration``.
    public init(environment: [String: String]) throws(FuseboxError) {
        self.init()
        if let adapter = environment["FUSEBOX_ADAPTER"] {
            guard let kind = AdapterKind(rawValue: adapter.lowercased()) else {
                throw FuseboxError(code: .invalidConfiguration, message: "FUSEBOX_ADAPTER is '\(adapter)'; use 'local' or 'distributed'")
            }
            self.adapter = kind
        }
        if let url = environment["FUSEBOX_REDIS_URL"], !url.isEmpty { redisURL = url }
        if let namespace = environment["FUSEBOX_NAMESPACE"], !namespace.isEmpty { self.namespace = namespace }
    }
}
