/// One operator action in the audit trail: who did what to which breaker, when and why.
///
/// The distributed adapter's trail is the Redis stream `NAMESPACE:audit` (the last 10,000 actions of the
/// namespace, written by `fusebox` and `fusebox serve`); an application's admin routes over a local registry keep
/// theirs in memory.
public struct AuditEntry: Sendable, Hashable {
    /// When, in milliseconds since the Unix epoch (Redis time for the stream).
    public var atMilliseconds: Int64
    /// The breaker acted on.
    public var breaker: String
    /// `isolate`, `reset`, `reset-baseline`, `half-open`, `policy-set` or `policy-clear`.
    public var action: String
    /// Who: `fusebox --by NAME` (default `USER@HOST`), or over HTTP the `X-Fusebox-Actor` header, else
    /// `http:CLIENT-ADDRESS`.
    public var by: String
    /// Why, when given (an isolation's reason, an override's).
    public var reason: String?

    /// Makes an entry.
    public init(atMilliseconds: Int64, breaker: String, action: String, by: String, reason: String?) {
        self.atMilliseconds = atMilliseconds
        self.breaker = breaker
        self.action = action
        self.by = by
        self.reason = reason
    }
}

/// Who is acting, for the audit trail of the actions made in a task (an HTTP request's, say): a task-local value
/// set with ``withActor(_:isolation:_:)``.
public enum AuditContext {
    @TaskLocal static var current: String?

    /// The actor of the current task; `nil`: the tool's own default.
    public static var actor: String? { current }

    /// Runs `operation` with `actor` as who acts, for every action it makes.
    public static func withActor<T>(
        _ actor: String, isolation: isolated (any Actor)? = #isolation, _ operation: () async throws -> T
    ) async rethrows -> T {
        try await $current.withValue(actor, operation: operation, isolation: isolation)
    }
}
