import Dispatch
import Fusebox
import FuseboxLocking
import Hiredis
import Logging
import Metrics
import Synchronization

/// One breaker of the `distributed` adapter, as seen by this instance.
///
/// The hot path reads and writes ``Cache`` under a `Mutex`, nothing else: admission in the closed and open
/// states answers from the cached state; outcomes are added to counters that the flusher writes with one
/// `EVALSHA` per breaker and flush interval. A failure is written at once when this instance holds more than its
/// failure budget, or when it may cross a threshold by what the instance knows. Only when a break has ended
/// (probe permits are handed out fleet-wide) or the state is not known yet does admission ask Redis. Every reply
/// and every message refreshes the cache; one with a lower version than the cache's is ignored.
final class DistributedBackend: BreakerBackend {
    let name: String
    /// The policy in force: an operator's override (``applyOverride(_:)``) when one is set, else this instance's own.
    var policy: BreakerPolicy { cache.withLock { $0.rules.policy } }
    /// Whether an operator's override is in force.
    var isOverridden: Bool { policies.withLock { $0.override != nil } }
    let core: DistributedCore
    let clock: NanosecondClock
    let keys: [String]
    /// This instance's own policy (code or configuration) and the operator's override.
    private let policies: Locked<(own: BreakerPolicy, override: BreakerPolicy?)>
    let instruments: BreakerInstruments
    /// Repairs of the breaker's statistics the script reported (``noteStatistics(_:now:)``).
    let statisticsRepairs: Counter
    /// When (this instance's clock, ns) a statistics note was last logged.
    let lastStatisticsLog = Locked<Int64?>(nil)
    let cache: Locked<Cache>
    // The options the hot path reads, copied out once (the options struct holds strings: copying it costs).
    let whenUnavailable: StoreDownPolicy
    let writeThrough: Bool
    let maxBufferedOutcomes: Int
    let admissionBudget: Duration
    /// Admission requests that Redis answered past the admission budget (``overBudget()``).
    let admissionOverruns: Counter
    /// The policy's slow-call duration (ns), for the hot path outside the cache's lock.
    let slowCallNanoseconds: Atomic<Int64>
    let flushNanoseconds: Int64
    let isRegistered = Atomic<Bool>(false)
    let batchSequence = Atomic<Int>(0)
    /// Script calls submitted and not yet answered, and who waits for them all to be answered.
    let inFlight = Locked<(count: Int, waiters: [CheckedContinuation<Void, Never>])>((0, []))
    /// The version a call is admitted under without a lock (``admitWhileClosed()``), or -1: set, under the cache's
    /// lock, to the cached version while the breaker is known, healthy and closed (or metrics-only).
    let admission = Atomic<Int>(-1)
    /// Plain successes, counted per CPU so that tasks on different cores never share a lock; moved into the
    /// pending batches (under the cache's lock) before anything else is recorded or taken, so order is kept.
    /// A plain allocation, not an array: reading an array property would retain its buffer, one reference count
    /// that every core would write on every call.
    nonisolated(unsafe) let stripes: UnsafeMutablePointer<SuccessStripe>
    let stripeMask: Int

    init(name: String, policy: BreakerPolicy, core: DistributedCore, clock: NanosecondClock, logger: Logger) {
        self.name = name
        self.core = core
        self.clock = clock
        self.keys = Self.keys(namespace: core.options.namespace, name: name)
        self.policies = Locked((policy, nil))
        self.whenUnavailable = core.options.whenUnavailable
        self.writeThrough = core.options.writeThrough
        self.maxBufferedOutcomes = core.options.maxBufferedOutcomes
        self.admissionBudget = core.options.admissionBudget
        self.slowCallNanoseconds = Atomic(policy.slowCallDuration.nanoseconds)
        self.flushNanoseconds = core.options.flushInterval.nanoseconds
        let base: BreakerState = switch policy.mode {
        case .normal, .shadow: .closed
        case .metricsOnly: .metricsOnly
        case .disabled: .disabled
        }
        self.instruments = BreakerInstruments(name: name, initialState: base, slowCallDuration: policy.slowCallDuration, logger: logger)
        self.statisticsRepairs = Counter(label: "fusebox_statistics_repairs_total", dimensions: [("breaker", name)])
        self.admissionOverruns = Counter(label: "fusebox_admission_overruns_total", dimensions: [("breaker", name)])
        self.cache = Locked(Cache(state: base, rules: PolicyRules(policy, options: core.options)))
        let count = CPUSlots.count
        self.stripes = .allocate(capacity: count)
        for index in 0..<count { (stripes + index).initialize(to: SuccessStripe()) }
        self.stripeMask = count - 1
    }

    deinit {
        stripes.deinitialize(count: stripeMask + 1)
        stripes.deallocate()
    }

    /// Nanoseconds on this instance's clock (call durations, when a cached break ends).
    var now: Int64 { clock.now }
    var stateKey: String { keys[0] }

    // MARK: - Policy changes

    func updatePolicy(_ policy: BreakerPolicy) throws(FuseboxError) {
        let policy = try checked(policy)
        let inForce = policies.withLock { policies -> BreakerPolicy? in
            policies.own = policy
            return policies.override == nil ? policy : nil
        }
        if let inForce { install(inForce) }
    }

    /// Puts an operator's override in force (or, with `nil`, this instance's own policy again). An override this
    /// instance cannot honour is refused with the reason, and the policy in force stays.
    func applyOverride(_ override: BreakerPolicy?) throws(FuseboxError) {
        let override = try override.map { (policy) throws(FuseboxError) in try checked(policy) }
        let inForce = policies.withLock { policies -> BreakerPolicy? in
            let before = policies.override ?? policies.own
            policies.override = override
            let after = override ?? policies.own
            return before.hasSameStateRules(as: after) ? nil : after
        }
        if let inForce { install(inForce) }
    }

    /// `policy` validated, and possible for this adapter.
    private func checked(_ policy: BreakerPolicy) throws(FuseboxError) -> BreakerPolicy {
        try Self.check(policy.validated(), name: name, minimumInstances: core.options.minimumInstances)
    }

    /// `policy` if the distributed adapter can run it: a quorum (the policy's, else `minimumInstances`, the
    /// adapter's) needs a time window. The one place this rule is checked: for a new breaker, a policy update, an
    /// override an instance receives, and one an operator stores.
    static func check(_ policy: BreakerPolicy, name: String, minimumInstances: Int) throws(FuseboxError) -> BreakerPolicy {
        let instances = policy.minimumInstances ?? minimumInstances
        if instances > 1, case .count = policy.window {
            throw FuseboxError(
                code: .invalidPolicy,
                message: "breaker '\(name)': minimumInstances \(instances) needs a time window; a count window keeps no instances",
                breakerName: name)
        }
        return policy
    }

    /// Runs `policy` from now on: the next script call sends it (and its JSON, as its fingerprint is new).
    private func install(_ policy: BreakerPolicy) {
        let rules = PolicyRules(policy, options: core.options)
        let now = self.now
        let transition = updateCache { cache -> BreakerTransition? in
            guard cache.rules.fingerprint != rules.fingerprint else { return nil }
            // Successes counted per CPU go out under the old bucket width first.
            drainStripes(into: &cache, invalidate: true)
            cache.rules = rules
            cache.policyStored = false
            slowCallNanoseconds.store(rules.slowCallNanoseconds, ordering: .relaxed)
            return cache.fallback?.replacePolicy(policy, now: now)
        }
        if let transition { instruments.transitioned(transition) }
        instruments.logger.info("breaker '\(name)' runs a new policy: \(policy.stateRulesDescription)")
        // Redis learns it now, not at the next outcome.
        refresh()
    }

    /// Whether admission follows the store-down policy now (Redis is unavailable for this breaker).
    var isUsingStoreDownPolicy: Bool { cache.withLock { !$0.health.isHealthy } }

    // MARK: - Script calls

    func registerIfNeeded() {
        guard !isRegistered.load(ordering: .relaxed) else { return }
        core.connection.submit([RedisCommand("SADD", "\(core.options.namespace):breakers", name)]) { [self] result in
            if case .success(let replies) = result, case .integer = replies[0] { isRegistered.store(true, ordering: .relaxed) }
        }
    }

    func submitScript(_ op: String, _ extra: [any RedisArgument], completion: @escaping @Sendable (Result<StateReply, RedisError>) -> Void) {
        core.submit([scriptCall(op, extra, completion: completion)])
    }

    /// This breaker's part of a script call: `op` with the policy, then `extra` (lua/breaker.lua, `A[19…]`).
    func scriptCall(_ op: String, _ extra: [any RedisArgument], completion: @escaping @Sendable (Result<StateReply, RedisError>) -> Void) -> ScriptCall {
        let (attempt, durations, policyStored, rules) = cache.withLock { cache in
            (cache.attempt, (1...4).map { cache.rules.policy.breakDuration.duration(forAttempt: cache.attempt + $0).milliseconds },
             cache.policyStored, cache.rules)
        }
        var arguments: [any RedisArgument] = [op, name]
        arguments.reserveCapacity(18 + extra.count)
        arguments += rules.arguments as [any RedisArgument]
        arguments.append(rules.fingerprint)
        arguments.append(policyStored ? "" : rules.json)
        arguments.append(attempt)
        arguments.append(durations.map { String($0) }.joined(separator: ","))
        arguments += extra
        inFlight.withLock { $0.count += 1 }
        return ScriptCall(keys: keys, arguments: arguments) { [self] result in
            completion(result)
            let waiters = inFlight.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.count -= 1
                guard state.count == 0 else { return [] }
                defer { state.waiters.removeAll() }
                return state.waiters
            }
            for waiter in waiters { waiter.resume() }
        }
    }
}
