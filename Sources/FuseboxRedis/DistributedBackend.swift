import Dispatch
import Fusebox
import FuseboxLocking
import Hiredis
import Logging
import Metrics
import Synchronization

/// How soon a breaker's held outcomes should be written (``DistributedBackend/flushUrgency()``).
enum FlushUrgency: Sendable {
    /// Nothing held, or quiet successes held for less than half the quiet hold.
    case none
    /// Quiet successes held for half the hold or more: written along with another quiet breaker's write.
    case halfway
    /// Quiet successes whose hold is up.
    case quietDue
    /// Anything else held: written at this flush.
    case due
}

/// What every breaker of one ``DistributedAdapter`` shares: the connection, the options, the flusher's doorbell.
final class DistributedCore: Sendable {
    let options: DistributedOptions
    let connection: RedisClient
    let logger: Logger
    let doorbell = Doorbell()
    let channel: String
    /// 0: scripts read Redis `TIME`. Otherwise the time (ms) scripts use instead: set only by tests
    /// (``DistributedAdapter/pinClock(atMilliseconds:)``), so that time moves only when they say.
    let pinnedTime = Atomic<Int64>(0)
    /// This adapter object's name as a sender of outcome batches: the instance id plus a random nonce made here,
    /// so two adapters that share an instance id never take each other's batches for retransmissions.
    let senderID: String
    /// How long (ms) an outcome may wait in this instance before it is written: the flush interval.
    let holdMilliseconds: String
    /// The senders and instances up, fleet-wide, as the last membership beat read them; 0 (not known) until this
    /// adapter has beaten for one entry lifetime (three intervals), since an instance that started with it may not
    /// have beaten yet: a count read sooner could be short, and lower a quorum it must not lower.
    /// Scripts get them in `ARGV[6]` and `ARGV[7]`; the quiet hold grows with the senders.
    let liveSenders = Atomic<Int>(0)
    let liveInstances = Atomic<Int>(0)
    /// This adapter's share of the grown quiet hold, in thousandths (800–1,000), drawn once.
    let holdSpread = Int64.random(in: 800...1_000)
    /// Set by the first script reply: from then on an admission waits at most the admission budget (before, it
    /// waits as long as a command may: connecting, TLS, authentication and loading the scripts are setting up, not
    /// a slow Redis).
    let hasAnswered = Atomic<Bool>(false)
    /// When this adapter's first beat was answered.
    private let firstBeat = Locked<ContinuousClock.Instant?>(nil)
    /// The membership keys: `NS:{members}:senders` and `NS:{members}:instances` (one slot in a cluster).
    let membershipKeys: [String]
    /// Set when the namespace holds another key schema: every script call is refused with this error.
    let schemaRefusal = Locked<RedisError?>(nil)
    private let schemaGate = Locked<SchemaGate>(.unchecked)

    private enum SchemaGate {
        case unchecked
        /// The check is in flight; what waits for it, in submission order.
        case checking([@Sendable () -> Void])
        case checked
    }

    /// Held while a breaker (or the flusher, for all of them) takes pending outcomes and submits them, so that
    /// whatever is submitted next runs after them: Redis applies each sender's batches in sequence order.
    let sendOrder = Locked<Void>(())

    /// Set when a write failed and its outcomes were kept: the flusher tries again after ``retryInterval``
    /// rather than a whole flush interval later (a kept failure may be the one that trips the breaker).
    let retryWanted = Atomic<Bool>(false)

    /// How soon the flusher tries again after a failed write. Commands to a connection that is being re-made fail
    /// at once, and the connection spaces its attempts (25 ms doubling to 1 s), so retries cost little.
    static let retryInterval = Duration.milliseconds(100)

    /// The key schema this build reads and writes (`NS:schema`, and the `schema` field of each state hash).
    static let keySchema = "2"

    /// The most breakers one script call carries: about a millisecond of Redis time.
    static let breakersPerCall = 32

    /// The breakers to write in one flush, given each one's ``FlushUrgency``: every one that is due, and, when a
    /// quiet breaker's hold is up, every quiet one past half its hold too, so that an instance's quiet breakers
    /// come to share their script calls (up to ``breakersPerCall`` a call) rather than each making its own.
    static func toFlush<Backend>(_ backends: [(backend: Backend, urgency: FlushUrgency)]) -> [Backend] {
        let quietDue = backends.contains { $0.urgency == .quietDue }
        let first = backends.filter { $0.urgency == .due || $0.urgency == .quietDue }
        let riders = quietDue ? backends.filter { $0.urgency == .halfway } : []
        return (first + riders).map(\.backend)
    }

    init(options: DistributedOptions, connection: RedisClient, logger: Logger) {
        self.options = options
        self.connection = connection
        self.logger = logger
        self.channel = "\(options.namespace):transitions"
        self.senderID = "\(options.instanceID):\(String(UInt64.random(in: 0...UInt64.max), radix: 36))"
        self.holdMilliseconds = String(max(1, options.flushInterval.milliseconds))
        self.membershipKeys = ["\(options.namespace):{members}:senders", "\(options.namespace):{members}:instances"]
    }

    /// The membership beats (and the subscribers' pings) a fleet sends Redis each second, about, however many
    /// adapters are up: each is a round trip, which costs Redis more than the little work it asks for.
    static let fleetBeatsPerSecond = 50

    /// How often this adapter beats: ``DistributedOptions/membershipInterval``, or, with more than
    /// ``fleetBeatsPerSecond`` senders up, (senders ÷ that) seconds (4 s at 200 senders), so that the fleet's beats
    /// stay near ``fleetBeatsPerSecond`` a second. A sender drops out three of its own intervals after its last beat.
    var beatInterval: Duration {
        let senders = liveSenders.load(ordering: .relaxed)
        return max(options.membershipInterval, .milliseconds(senders * 1000 / Self.fleetBeatsPerSecond))
    }

    /// Tells Redis this adapter is up until three beat intervals from now, and learns how many senders and
    /// instances are (lua/members.lua).
    func beat() {
        let ttl = max(1, (beatInterval * 3).milliseconds)
        connection.submit(MembersScript.script, keys: membershipKeys, arguments: ["beat", senderID, options.instanceID, String(ttl)]) {
            [self] result in
            if case .success(let reply) = result, let counts = reply.array, counts.count == 2,
                let senders = counts[0].int, let instances = counts[1].int {
                let now = ContinuousClock.now
                let since = firstBeat.withLock { first in
                    if first == nil { first = now }
                    return first!
                }
                if now - since >= options.membershipInterval * 3 {
                    liveSenders.store(senders, ordering: .relaxed)
                    liveInstances.store(instances, ordering: .relaxed)
                }
            }
        }
    }

    /// Takes this adapter out of the membership (a clean shutdown): the others' counts drop at once.
    func leave() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            connection.submit(MembersScript.script, keys: membershipKeys, arguments: ["leave", senderID, options.instanceID, "1"]) { _ in
                continuation.resume()
            }
        }
    }

    /// How long a quiet breaker's successes may wait (ns): `base` (the policy's), or longer when many senders are
    /// up and the window is a time window, so that the fleet writes it about ``DistributedOptions/quietFleetWritesPerSecond``
    /// times a second (at most 120 s).
    /// Each adapter's hold is its own fraction (``holdSpread``) of that, so that instances started together do not
    /// write together.
    func quietHold(base: Int64, isTimeWindow: Bool) -> Int64 {
        let senders = Int64(liveSenders.load(ordering: .relaxed))
        guard isTimeWindow, senders > 0 else { return base }
        let grown = min(senders * 1_000_000_000 / Int64(options.quietFleetWritesPerSecond), 120_000_000_000)
        return max(base, grown / 1_000 * holdSpread)
    }

    /// Runs `body` (which submits a script) once the namespace's key schema has been checked, in the order such
    /// bodies arrive: no script of this adapter reaches Redis before `SET NS:schema 2 NX` has answered. The first
    /// call starts the check; a check that could not reach Redis is made again by the next call.
    func afterSchemaCheck(_ body: @escaping @Sendable () -> Void) {
        enum Next { case run, wait, start }
        let next: Next = schemaGate.withLock { gate in
            switch gate {
            case .checked: return .run
            case .checking(var queue):
                queue.append(body)
                gate = .checking(queue)
                return .wait
            case .unchecked:
                gate = .checking([body])
                return .start
            }
        }
        switch next {
        case .run: body()
        case .wait: break
        case .start: checkSchema()
        }
    }

    /// Runs `calls` in as few script calls as ``breakersPerCall`` allows (one `EVALSHA`, one `TIME` and one round
    /// trip shared by up to that many breakers), in order, once the key schema has been checked. Each call's
    /// completion gets its breaker's reply, or the error for it alone (a refusal) or for the whole script call.
    func submit(_ calls: [ScriptCall]) {
        guard !calls.isEmpty else { return }
        let pinned = pinnedTime.load(ordering: .relaxed)
        let header: [any RedisArgument] = [
            channel, options.instanceID, pinned == 0 ? "" : String(pinned), holdMilliseconds, senderID,
            liveSenders.load(ordering: .relaxed), liveInstances.load(ordering: .relaxed),
        ]
        for batch in Self.batches(of: calls, header: header, isCluster: Self.isCluster(connection)) {
            afterSchemaCheck { [self] in
                if let refusal = schemaRefusal.withLock({ $0 }) {
                    for call in batch.calls { call.completion(.failure(refusal)) }
                    return
                }
                Self.send(batch, on: connection)
            }
        }
    }

    /// One script call: the breakers it carries, its keys, and its arguments (the header, then each breaker's).
    struct ScriptBatch: Sendable {
        var calls: [ScriptCall]
        var keys: [String]
        var arguments: [any RedisArgument]
    }

    /// `calls` as script calls (see ``parts(of:isCluster:)``), each with the header `ARGV[1…7]` first.
    static func batches(of calls: [ScriptCall], header: [any RedisArgument], isCluster: Bool) -> [ScriptBatch] {
        parts(of: calls, isCluster: isCluster).map { part in
            var batch = ScriptBatch(calls: part, keys: [], arguments: header)
            batch.keys.reserveCapacity(part.count * 4)
            for call in part {
                batch.keys += call.keys
                batch.arguments.append(call.arguments.count)
                batch.arguments += call.arguments
            }
            return batch
        }
    }

    /// Submits one script call; each breaker's completion gets its reply.
    static func send(_ batch: ScriptBatch, on connection: RedisClient) {
        connection.submit(BreakerScript.script, keys: batch.keys, arguments: batch.arguments) { result in
            deliver(result, to: batch.calls)
        }
    }

    /// Whether `connection` is to a Redis Cluster: a script call's keys must then share one slot.
    static func isCluster(_ connection: RedisClient) -> Bool {
        if case .cluster = connection.configuration.topology { true } else { false }
    }

    /// `calls` cut into script calls of at most ``breakersPerCall`` breakers, in order; in a cluster, one slot's
    /// breakers per call (a script's keys must share a slot), each slot's calls in their order. A breaker's
    /// consecutive calls (its batches of one write) always travel in one script call: were they split, the first
    /// call could fail on a connection that breaks while the second reaches the server on the next one, and the
    /// first batch, written again, would arrive behind a higher sequence number.
    static func parts(of calls: [ScriptCall], isCluster: Bool) -> [[ScriptCall]] {
        // Runs of consecutive calls for one breaker.
        var runs: [[ScriptCall]] = []
        for call in calls {
            if let last = runs.last?.last, last.keys[0] == call.keys[0] {
                runs[runs.count - 1].append(call)
            } else {
                runs.append([call])
            }
        }
        var parts: [[ScriptCall]] = []
        var breakers: [Int] = []
        if isCluster {
            var bySlot: [Int: Int] = [:]
            for run in runs {
                let slot = ClusterSlot.of(key: run[0].keys[0])
                if let index = bySlot[slot], breakers[index] < breakersPerCall {
                    parts[index] += run
                    breakers[index] += 1
                } else {
                    bySlot[slot] = parts.count
                    parts.append(run)
                    breakers.append(1)
                }
            }
            return parts
        }
        for run in runs {
            if let last = breakers.last, last < breakersPerCall {
                parts[parts.count - 1] += run
                breakers[breakers.count - 1] += 1
            } else {
                parts.append(run)
                breakers.append(1)
            }
        }
        return parts
    }

    private static func deliver(_ result: Result<RESPValue, RedisError>, to part: [ScriptCall]) {
        let replies: [RESPValue]
        switch result {
        case .failure(let error):
            for call in part { call.completion(.failure(error)) }
            return
        case .success(let value):
            guard let array = value.array, array.count == part.count else {
                let error = RedisError(code: .unexpectedReply, message: "the breaker script answered \(value) for \(part.count) breakers")
                for call in part { call.completion(.failure(error)) }
                return
            }
            replies = array
        }
        for (call, reply) in zip(part, replies) {
            if case .error(let message) = reply {
                call.completion(.failure(RedisError(code: .serverError, message: message)))
                continue
            }
            do throws(FuseboxError) {
                call.completion(.success(try StateReply(reply, key: call.keys[0])))
            } catch {
                call.completion(.failure(RedisError(code: .unexpectedReply, message: error.message)))
            }
        }
    }

    private func checkSchema() {
        let key = "\(options.namespace):schema"
        let namespace = options.namespace
        connection.submit([RedisCommand("SET", key, Self.keySchema, "NX"), RedisCommand("GET", key)]) { [self] result in
            if case .success(let replies) = result, case .error(let message) = replies[1] {
                logger.info("could not check the key schema of namespace '\(namespace)' (\(key)): \(message)")
            }
            if case .success(let replies) = result, let found = replies[1].string, found != Self.keySchema {
                let refusal = RedisError(
                    code: .serverError,
                    message: "SCHEMA namespace '\(namespace)' holds Fusebox key schema \(found) (\(key)); this instance runs schema "
                        + "\(Self.keySchema): run every instance of a namespace on one schema, or give this one its own namespace")
                schemaRefusal.withLock { $0 = refusal }
                logger.error("\(refusal.message.dropFirst("SCHEMA ".count))")
            }
            // What waited runs under the lock, so nothing submitted meanwhile overtakes it.
            schemaGate.withLock { gate in
                guard case .checking(let queue) = gate else { return }
                if case .success = result { gate = .checked } else { gate = .unchecked }
                for body in queue { body() }
            }
        }
    }
}

/// One breaker's part of a script call: its keys, its arguments (`A[1..]` in lua/breaker.lua) and what to do
/// with its reply.
struct ScriptCall: Sendable {
    var keys: [String]
    var arguments: [any RedisArgument]
    var completion: @Sendable (Result<StateReply, RedisError>) -> Void
}

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
    private let core: DistributedCore
    private let clock: NanosecondClock
    private let keys: [String]
    /// This instance's own policy (code or configuration) and the operator's override.
    private let policies: Locked<(own: BreakerPolicy, override: BreakerPolicy?)>
    private let instruments: BreakerInstruments
    /// Repairs of the breaker's statistics the script reported (``noteStatistics(_:now:)``).
    private let statisticsRepairs: Counter
    /// When (this instance's clock, ns) a statistics note was last logged.
    private let lastStatisticsLog = Locked<Int64?>(nil)
    private let cache: Locked<Cache>
    // The options the hot path reads, copied out once (the options struct holds strings: copying it costs).
    private let whenUnavailable: DistributedOptions.UnavailablePolicy
    private let writeThrough: Bool
    private let maxBufferedOutcomes: Int
    private let admissionBudget: Duration
    /// Admission requests that Redis answered past the admission budget (``overBudget()``).
    private let admissionOverruns: Counter
    /// The policy's slow-call duration (ns), for the hot path outside the cache's lock.
    private let slowCallNanoseconds: Atomic<Int64>
    private let flushNanoseconds: Int64
    private let isRegistered = Atomic<Bool>(false)
    private let batchSequence = Atomic<Int>(0)
    /// Script calls submitted and not yet answered, and who waits for them all to be answered.
    private let inFlight = Locked<(count: Int, waiters: [CheckedContinuation<Void, Never>])>((0, []))
    /// The version a call is admitted under without a lock (``admitWhileClosed()``), or -1: set, under the cache's
    /// lock, to the cached version while the breaker is known, healthy and closed (or metrics-only).
    private let admission = Atomic<Int>(-1)
    /// Plain successes, counted per CPU so that tasks on different cores never share a lock; moved into the
    /// pending batches (under the cache's lock) before anything else is recorded or taken, so order is kept.
    /// A plain allocation, not an array: reading an array property would retain its buffer, one reference count
    /// that every core would write on every call.
    nonisolated(unsafe) private let stripes: UnsafeMutablePointer<SuccessStripe>
    private let stripeMask: Int

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
    private var now: Int64 { clock.now }
    var stateKey: String { keys[0] }

    // MARK: - Hot path

    func acquire() -> BreakerAdmission {
        if let token = admitWhileClosed() { return .admitted(token) }
        switch decide() {
        case .decided(let admission): return admission
        case .askRedis:
            // Half-open, or the state is not known yet: wait for Redis, at most the admission budget. The reply arrives
            // on the connection's own thread, so this wait never needs Swift's cooperative pool to make progress.
            let done = DispatchSemaphore(value: 0)
            let request = AdmissionRequest()
            askRedis { [self] admission in
                if request.answer(admission) { done.signal() } else { giveBack(admission) }
            }
            if done.wait(timeout: .now() + .nanoseconds(Int(admissionWait.nanoseconds))) == .timedOut, request.answer(nil) {
                return overBudget()
            }
            if request.admission == nil { done.wait() }  // answered just as the budget ran out
            return request.admission!
        }
    }

    func admit() async -> BreakerAdmission {
        if let token = admitWhileClosed() { return .admitted(token) }
        switch decide() {
        case .decided(let admission): return admission
        case .askRedis:
            return await withCheckedContinuation { continuation in
                let request = AdmissionRequest()
                askRedis { [self] admission in
                    if request.answer(admission) { continuation.resume(returning: admission) } else { giveBack(admission) }
                }
                DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(admissionWait.nanoseconds))) { [self] in
                    if request.answer(nil) { continuation.resume(returning: overBudget()) }
                }
            }
        }
    }

    /// How long an admission waits for Redis: the admission budget, once this adapter has had a reply; before, as
    /// long as a command may (see ``DistributedCore/hasAnswered``).
    private var admissionWait: Duration {
        if core.hasAnswered.load(ordering: .relaxed) { return admissionBudget }
        return max(admissionBudget, core.options.redis.connectTimeout + core.options.redis.commandTimeout + .milliseconds(100))
    }

    /// Past the admission budget: the store-down policy decides this call, and every call that would ask Redis until
    /// a reply comes (``Cache/admissionOverdue``); with policy `local`, a breaker whose break has ended rejects.
    private func overBudget() -> BreakerAdmission {
        let first = cache.withLock { cache in
            defer { cache.admissionOverdue = true }
            return !cache.admissionOverdue
        }
        admissionOverruns.increment()
        if first {
            core.logger.debug("Redis did not answer an admission request within the budget; the store-down policy decides until it does", metadata: [
                "breaker": "\(name)", "budget": "\(admissionBudget)",
            ])
        }
        if case .decided(let admission) = decide() { return admission }
        return .rejected(unavailableRejection("no answer from Redis within \(admissionBudget)"))
    }

    /// What Redis granted after its caller stopped waiting: a probe permit goes back at once (an ignored outcome
    /// frees it for another caller), anything else needs nothing.
    private func giveBack(_ admission: BreakerAdmission) {
        if case .admitted(let token) = admission, token.isProbe { record(.ignored, for: token) }
    }

    func admitWithoutWaiting() -> BreakerAdmission? {
        if let token = admitWhileClosed() { return .admitted(token) }
        if case .decided(let admission) = decide() { return admission }
        return nil
    }

    /// The common case, kept small: a healthy, known, closed (or metrics-only) breaker admits at once.
    @inline(__always)
    private func admitWhileClosed() -> PermitToken? {
        let version = admission.load(ordering: .acquiring)
        guard version >= 0 else { return nil }
        return PermitToken(version: version, isProbe: false, isRecorded: true, startedAt: now)
    }

    /// Runs `body` on the cache and republishes what lock-free admission reads. When that changes (a transition,
    /// a new incarnation, a change of health) or the clock's offset to Redis moves (the stripes' buckets with it),
    /// the per-CPU successes are moved into the pending batches and the stripes set up again on their next call.
    private func updateCache<T: Sendable>(_ body: (inout Cache) -> T) -> T {
        cache.withLock { cache in
            let (created, offset) = (cache.created, cache.redisOffsetMilliseconds)
            let result = body(&cache)
            // Lock-free admission is for a breaker that admits every call: not while adaptive throttling sheds some.
            let admitting = cache.health == .healthy && cache.isKnown && (cache.state == .closed || cache.state == .metricsOnly)
                && cache.throttleProbability == 0 ? cache.version : -1
            if admission.load(ordering: .relaxed) != admitting || cache.created != created || cache.redisOffsetMilliseconds != offset {
                drainStripes(into: &cache, invalidate: true)
                admission.store(admitting, ordering: .releasing)
            }
            return result
        }
    }

    /// Moves the per-CPU success counts into the pending batches. Call with the cache's lock held (the order is
    /// always the cache's lock, then a stripe's).
    private func drainStripes(into cache: inout Cache, invalidate: Bool = false) {
        for index in 0...stripeMask {
            let cell = stripes[index].cell.withLock { cell -> SuccessStripe.Cell in
                let taken = cell
                cell.count = 0
                if invalidate { cell.version = -1 }
                return taken
            }
            move(cell, into: &cache)
        }
    }

    /// Adds what a stripe held to the pending batches.
    private func move(_ cell: SuccessStripe.Cell, into cache: inout Cache) {
        guard cell.count > 0 else { return }
        cache.pending.appendSuccesses(
            cell.count, version: cell.version, created: cell.created, bucket: cell.bucket, firstAt: cell.firstAt,
            limit: maxBufferedOutcomes)
    }

    /// The stripe of the CPU this thread runs on.
    private var currentStripe: Int { CPUSlots.current(mask: stripeMask) }

    /// Counts a plain success on this CPU's stripe; `false` when the stripe is set up for another version or time
    /// bucket (the caller then records it under the cache's lock, which sets the stripe up again).
    @inline(__always)
    private func countOnStripe(version: Int, now: Int64) -> Bool {
        return stripes[currentStripe].cell.withLock { cell in
            guard cell.version == version, now >= cell.start, now < cell.end else { return false }
            if cell.count == 0 { cell.firstAt = now }
            cell.count += 1
            return true
        }
    }

    private enum Decision {
        case decided(BreakerAdmission)
        case askRedis
    }

    private func decide() -> Decision {
        let now = self.now
        let (decided, transition, shadowed) = cache.withLock { cache -> (Decision, BreakerTransition?, BreakerState?) in
            let (decision, transition) = decide(&cache, now: now)
            // Shadow mode: what the breaker rejected runs anyway, unrecorded, and counts as `would_reject`.
            guard case .decided(.rejected(let error)) = decision, cache.rules.policy.mode == .shadow else {
                return (decision, transition, nil)
            }
            cache.pending.wouldReject += 1
            return (.decided(.admitted(.shadow(version: cache.version, startedAt: now))), transition, error.state ?? cache.state)
        }
        if let transition { instruments.transitioned(transition) }
        if case .decided(.rejected(let error)) = decided { instruments.rejected(in: error.state ?? .open) }
        if let shadowed { instruments.wouldReject(in: shadowed) }
        return decided
    }

    /// ``decide()`` under the cache's lock: every rejection is counted in the pending batches.
    private func decide(_ cache: inout Cache, now: Int64) -> (Decision, BreakerTransition?) {
        if !cache.health.isHealthy {
            let reason = cache.health.description
            return withoutRedis(&cache, reason: reason, now: now)
        }
        guard cache.isKnown else {
            return cache.admissionOverdue ? withoutRedis(&cache, reason: overdueReason, now: now) : (.askRedis, nil)
        }
        switch cache.state {
        case .closed where cache.throttleProbability > 0 && cache.random.nextUnitInterval() < cache.throttleProbability:
            cache.pending.rejected += 1
            cache.pending.throttled += 1
            return (.decided(.rejected(.throttling(name: name))), nil)
        case .closed, .metricsOnly:
            return (.decided(.admitted(PermitToken(version: cache.version, isProbe: false, isRecorded: true, startedAt: now))), nil)
        case .disabled:
            return (.decided(.admitted(.unrecorded)), nil)
        case .open where now < cache.probeAt:
            cache.pending.rejected += 1
            return (.decided(.rejected(.rejection(name: name, state: .open, retryAfterNanoseconds: cache.probeAt - now, isolationReason: nil))), nil)
        case .halfOpen where now < cache.halfOpenDeniedUntil:
            cache.pending.rejected += 1
            return (.decided(.rejected(.rejection(name: name, state: .halfOpen, retryAfterNanoseconds: nil, isolationReason: nil))), nil)
        case .isolated where cache.probeAt == 0 || now < cache.probeAt:
            cache.pending.rejected += 1
            return (.decided(.rejected(.rejection(
                name: name, state: .isolated, retryAfterNanoseconds: cache.probeAt > 0 ? cache.probeAt - now : nil,
                isolationReason: cache.isolationReason))), nil)
        case .open, .halfOpen, .isolated:
            guard cache.admissionOverdue else { return (.askRedis, nil) }
            // A break has ended and Redis is slow to hand out probe permits. The local fallback would send probes
            // the fleet does not count, so it waits until Redis counts as unavailable (the command timeout);
            // until then the call is rejected as if its permit were denied (failOpen still admits).
            guard whenUnavailable == .local else { return withoutRedis(&cache, reason: overdueReason, now: now) }
            cache.pending.rejected += 1
            return (.decided(.rejected(.rejection(name: name, state: .halfOpen, retryAfterNanoseconds: nil, isolationReason: nil))), nil)
        }
    }

    private var overdueReason: String { "no answer from Redis within the admission budget (\(admissionBudget))" }

    /// The store-down policy's answer (Redis unavailable, the breaker's keys corrupt, or an admission overdue). The
    /// in-process fallback of policy `local` takes up the state last known from Redis: a breaker known open stays
    /// open until its break ends and then sends this process's own probes; one known isolated stays isolated.
    private func withoutRedis(_ cache: inout Cache, reason: String, now: Int64) -> (Decision, BreakerTransition?) {
        switch whenUnavailable {
        case .failOpen:
            return (.decided(.admitted(PermitToken(version: cache.version, isProbe: false, isRecorded: true, startedAt: now))), nil)
        case .failClosed:
            cache.pending.rejected += 1
            return (.decided(.rejected(unavailableRejection(reason))), nil)
        case .local:
            if cache.fallback == nil {
                var fallback = BreakerStateMachine(name: name, policy: cache.rules.policy, now: now)
                if cache.isKnown {
                    fallback.takeUp(
                        cache.state, openUntil: cache.probeAt, attempt: cache.attempt, isolationReason: cache.isolationReason,
                        reason: "taken up from Redis (\(cache.state))", now: now)
                }
                cache.fallback = fallback
            }
            let (admission, transition) = cache.fallback!.acquire(now: now)
            switch admission {
            case .admitted(let token) where token.ranInShadow:
                // Shadow mode: the fallback rejected it and let it run; ``decide()`` does the same for the cache.
                cache.pending.rejected += 1
                let state = cache.fallback!.state
                return (.decided(.rejected(.rejection(name: name, state: state, retryAfterNanoseconds: nil, isolationReason: nil))), transition)
            case .admitted(let token):
                var mapped = token
                mapped.version = -2 - token.version
                return (.decided(.admitted(mapped)), transition)
            case .rejected:
                cache.pending.rejected += 1
                return (.decided(admission), transition)
            }
        }
    }

    /// Asks the script for admission (and, when a break has ended, a probe permit).
    private func askRedis(_ completion: @escaping @Sendable (BreakerAdmission) -> Void) {
        let lease = cache.withLock { $0.rules.probeLeaseMilliseconds }
        submitScript("acquire", [Int(lease)]) { [self] result in
            switch result {
            case .success(let reply):
                apply(reply, ownCall: true)
                let now = self.now
                switch reply.granted {
                case 1:
                    let token = reply.state == .disabled
                        ? PermitToken.unrecorded : PermitToken(version: reply.version, isProbe: false, isRecorded: true, startedAt: now)
                    completion(.admitted(token))
                case 2:
                    cache.withLock { cache in
                        if cache.probesHeldVersion != reply.version { cache.probesHeld = 0 }
                        cache.probesHeldVersion = reply.version
                        cache.probesHeld += 1
                        cache.probeLeaseRenewAt = now + lease * 500_000
                    }
                    completion(.admitted(PermitToken(version: reply.version, isProbe: true, isRecorded: true, startedAt: now)))
                default:
                    if reply.state == .halfOpen {
                        let retry = core.options.halfOpenRetryInterval.nanoseconds
                        cache.withLock { $0.halfOpenDeniedUntil = now + retry }
                    }
                    if cache.withLock({ $0.rules.policy.mode == .shadow }) {
                        // Shadow mode: the script counted it as `would_reject`; it runs, unrecorded.
                        instruments.wouldReject(in: reply.state)
                        return completion(.admitted(.shadow(version: reply.version, startedAt: now)))
                    }
                    instruments.rejected(in: reply.state)
                    completion(.rejected(.rejection(
                        name: name, state: reply.state, retryAfter: reply.timeUntilProbe,
                        isolationReason: reply.state == .isolated ? reply.isolationReason : nil)))
                }
            case .failure(let error):
                markFailure(error)
                if case .decided(let admission) = decide() {
                    completion(admission)
                } else {
                    completion(.rejected(unavailableRejection(error.message)))
                }
            }
        }
    }

    func record(_ outcome: CallOutcome, for token: PermitToken) {
        guard token.isRecorded else { return }
        let now = self.now
        let duration = now - token.startedAt
        let isSlow = duration > slowCallNanoseconds.load(ordering: .relaxed)
        let isPlainSuccess: Bool
        if case .success = outcome, !isSlow, !token.isProbe, token.version >= 0, !writeThrough {
            isPlainSuccess = true
            if countOnStripe(version: token.version, now: now) {
                instruments.recorded(outcome, nanoseconds: duration)
                return
            }
        } else {
            isPlainSuccess = false
        }
        let (writeNow, mayTrip, transition) = cache.withLock { cache -> (Bool, Bool, BreakerTransition?) in
            if isPlainSuccess {
                // Set this CPU's stripe up for the token's version and the current bucket; what it held goes first.
                if token.version == cache.version && (cache.state == .closed || cache.state == .metricsOnly) {
                    let slot = cache.slot(at: now, widthMilliseconds: cache.rules.bucketMilliseconds)
                    let held = stripes[currentStripe].cell.withLock { cell -> SuccessStripe.Cell in
                        let taken = cell
                        cell = SuccessStripe.Cell(
                            version: token.version, created: cache.created, bucket: slot.bucket, start: slot.start, end: slot.end,
                            count: 1, firstAt: now)
                        return taken
                    }
                    move(held, into: &cache)
                    return (false, false, nil)
                }
            } else {
                // Successes counted per CPU happened before this outcome.
                drainStripes(into: &cache)
            }
            var transition: BreakerTransition?
            var version = token.version
            if case .failure(let type) = outcome { cache.rememberName(of: type) }
            if token.version < 0 {
                // Admitted by the in-process fallback: it decides; the outcome still counts in the shared totals.
                if cache.fallback != nil {
                    var original = token
                    original.version = -2 - token.version
                    transition = cache.fallback!.record(outcome, token: original, now: now)
                }
                version = -1
            }
            if token.isProbe && token.version == cache.probesHeldVersion { cache.probesHeld = max(0, cache.probesHeld - 1) }
            let bucket = cache.bucket(at: now, widthMilliseconds: cache.rules.bucketMilliseconds)
            let isProbe = cache.pending.append(
                outcome, slow: isSlow, version: version, created: cache.created, probe: token.isProbe && version >= 0,
                bucket: bucket, now: now, limit: maxBufferedOutcomes)
            let urgent = version == cache.version && cache.mustWriteNow(after: outcome, slow: isSlow, policy: cache.rules.policy)
            return (isProbe || writeThrough, urgent, transition)
        }
        instruments.recorded(outcome, nanoseconds: duration)
        if let transition { instruments.transitioned(transition) }
        if writeNow || mayTrip {
            // A probe's outcome, a failure beyond the budget or that may cross a threshold, and every outcome with
            // writeThrough are submitted now, without waiting for the reply (the next admission request is then
            // queued behind them).
            flush()
        }
    }

    // MARK: - Writing

    /// Takes every buffered outcome and submits it, in order. Call with `core.sendOrder` held.
    private func submitPending() {
        core.submit(takePending())
    }

    /// Takes every buffered outcome as script calls to submit, in order. Call with `core.sendOrder` held, and
    /// submit them before releasing it.
    func takePending() -> [ScriptCall] {
        let now = self.now
        let (batches, dropped, windowAge, isTimeWindow, throttling) = cache.withLock { cache in
            drainStripes(into: &cache)
            var batches = cache.pending.take()
            let width = cache.rules.bucketMilliseconds
            if width > 0, case .time(_, let size) = cache.rules.policy.window {
                // Successes held longer than the window (a quiet breaker in a large fleet) count in the totals
                // only: their buckets travel as one group, which the script leaves out of the window. What is left
                // spans at most the window's buckets, one slot each, which the script's lean path needs.
                let current = cache.bucket(at: now, widthMilliseconds: width)
                if current > 0 {
                    for index in batches.indices { batches[index].foldGroups(before: current - Int64(size) + 1) }
                }
            }
            return (batches, cache.pending.takeDropped(), cache.rules.windowAgeNanoseconds, width > 0, cache.rules.policy.adaptiveThrottling != nil)
        }
        if dropped > 0 {
            instruments.logger.info(
                "breaker '\(name)': \(dropped) outcomes were dropped: more than \(maxBufferedOutcomes) waited to be written to Redis")
        }
        guard !batches.isEmpty else { return [] }
        var calls: [ScriptCall] = []
        for part in batches {
            var batch = part
            if batch.sequence == nil {
                batch.sequence = batchSequence.add(1, ordering: .relaxed).newValue
            }
            let names = cache.withLock { cache in batch.errors.map { (cache.errorName($0.key), $0.value) } }
            var extra: [any RedisArgument] = [
                // A time window places each group by its bucket (those that left it count in the totals only);
                // otherwise the batch enters the window only if its first outcome is recent enough.
                batch.sequence!, batch.version, Int(batch.created),
                (isTimeWindow && batch.groups.allSatisfy { $0.bucket > 0 }) || now - batch.firstAt <= windowAge ? "1" : "0",
                batch.isProbe ? "1" : "0", batch.ignored,
                // With adaptive throttling, `R:T`: the script then counts T shed calls and answers with the count;
                // `/W` after it: W of the rejections ran anyway in shadow mode.
                Self.rejections(batch, throttling: throttling),
                batch.leadingFailures, batch.longestFailureRun, batch.trailingFailures, names.count,
            ]
            for (name, count) in names.sorted(by: { $0.0 < $1.0 }) {
                extra.append(name)
                extra.append(count)
            }
            for group in batch.groups {
                extra += [Int(group.bucket), group.successes, group.slowSuccesses, group.failures, group.slowFailures] as [any RedisArgument]
            }
            let sent = batch
            calls.append(scriptCall("record", extra) { [self] result in
                switch result {
                case .success(let reply):
                    apply(reply, ownCall: true)
                    let (idle, urgent) = cache.withLock { cache in
                        (cache.pending.settle(sent, written: true), !cache.pending.holdsOnlySuccesses)
                    }
                    // What had to wait for this reply (a failure past the budget, a probe's outcome) goes now.
                    if idle && urgent { core.doorbell.ring() }
                case .failure(let error):
                    markFailure(error)
                    if error.mayBeRetried {
                        // Not written (or not known to be): keep it for the next flush (bounded by
                        // maxBufferedOutcomes). One that may have run keeps its sequence number, so Redis applies it
                        // once, whichever happened; one that certainly did not (never sent; refused for the server's
                        // condition: OOM, NOPERM, BUSY, LOADING, …) joins the outcomes recorded since.
                        _ = cache.withLock { $0.pending.settle(sent, written: false, certainlyNotRun: error.certainlyNotRun) }
                        core.retryWanted.store(true, ordering: .relaxed)
                    } else {
                        _ = cache.withLock { $0.pending.abandon() }
                    }
                }
            })
        }
        registerIfNeeded()
        return calls
    }

    /// Writes everything buffered now (without waiting for the replies).
    func flush() {
        core.sendOrder.withLock { _ in submitPending() }
    }

    /// Writes everything buffered and waits until Redis has answered for it: every script call of this breaker
    /// submitted so far, the background flusher's included. A write outstanding holds back what was recorded
    /// since (one write at a time), so this takes up to three rounds; it stops early when Redis is unavailable
    /// (what could not be written is kept for the flusher).
    func flushAndWait() async {
        for _ in 0..<3 {
            flush()
            await allAnswered()
            let (done, unavailable) = cache.withLock { ($0.pending.isEmpty && $0.pending.writesOutstanding == 0, !$0.health.isHealthy) }
            if done || unavailable { return }
        }
    }

    /// Waits until every script call of this breaker submitted so far has been answered.
    private func allAnswered() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let isIdle = inFlight.withLock { state in
                if state.count == 0 { return true }
                state.waiters.append(continuation)
                return false
            }
            if isIdle { continuation.resume() }
        }
    }

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

    /// Whether outcomes are waiting to be written.
    var hasPending: Bool {
        (0...stripeMask).contains { stripes[$0].cell.withLock { $0.count > 0 } } || cache.withLock { !$0.pending.isEmpty }
    }

    /// How soon the flusher should write this breaker's outcomes: at once (``FlushUrgency/due``) when it holds
    /// anything but plain successes or the breaker is not quiet; a quiet breaker's successes when the oldest held
    /// would reach the quiet hold before the next flush (``FlushUrgency/quietDue``), and, from half the hold on,
    /// along with another quiet breaker's write (``FlushUrgency/halfway``).
    func flushUrgency() -> FlushUrgency {
        let now = self.now
        var oldest = Int64.max
        for index in 0...stripeMask {
            stripes[index].cell.withLock { cell in if cell.count > 0 { oldest = min(oldest, cell.firstAt) } }
        }
        return cache.withLock { cache in
            guard cache.pending.holdsOnlySuccesses else { return .due }
            if let held = cache.pending.oldestRecordedAt { oldest = min(oldest, held) }
            guard oldest != .max else { return .none }
            guard cache.isQuiet(for: cache.rules.policy) else { return .due }
            let hold = core.quietHold(base: cache.rules.quietHoldNanoseconds, isTimeWindow: cache.rules.bucketMilliseconds > 0)
            let held = now - oldest
            if held >= hold - flushNanoseconds { return .quietDue }
            return held >= hold / 2 ? .halfway : .none
        }
    }

    /// Renews this instance's probe permits (their leases) when calls admitted as probes are still running for
    /// the half-open version Redis holds and half the lease has passed since it was granted or last renewed.
    func renewProbeLeaseIfDue() {
        let now = self.now
        let lease: Int64? = cache.withLock { cache in
            guard cache.probesHeld > 0, cache.state == .halfOpen, cache.version == cache.probesHeldVersion,
                now >= cache.probeLeaseRenewAt else { return nil }
            cache.probeLeaseRenewAt = now + cache.rules.probeLeaseMilliseconds * 500_000
            return cache.rules.probeLeaseMilliseconds
        }
        guard let lease else { return }
        submitScript("renew", [Int(lease)]) { [self] result in
            switch result {
            case .success(let reply): apply(reply, ownCall: true)
            case .failure(let error): markFailure(error)
            }
        }
    }

    /// Reads the state, window and budget with the script (when the breaker is made, and when the refresher's
    /// plain read finds something unusual: a missing or malformed hash).
    func refresh() {
        submitScript("read", []) { [self] result in
            switch result {
            case .success(let reply): apply(reply, ownCall: false)
            case .failure(let error): markFailure(error)
            }
        }
        registerIfNeeded()
    }

    /// Applies the refresher's read of the state hash (``StateReply/refreshedFields``); `nil` values or anything
    /// unusual send the breaker to the script instead, which creates, repairs or explains.
    func applyRefreshed(_ values: RESPValue, now redisNow: Int64) {
        guard let fields = values.array, let reply = StateReply(refreshed: fields, now: redisNow) else {
            if case .error(let message) = values {
                markFailure(RedisError(code: .serverError, message: message))
            }
            refresh()
            return
        }
        apply(reply, ownCall: false)
    }

    /// Applies a recall message: write what is held now if it is more than the new budget, or if successes were
    /// held because the breaker was quiet and the window no longer is (the write that ended the quiet asks for them).
    /// A recall while the window stays quiet (a budget that shrank as calls left the window) leaves held successes
    /// where they are: they cannot cross a threshold, and in a large fleet such recalls would make every instance
    /// write every breaker several times a minute.
    func applyRecall(_ message: BreakerMessage) {
        guard let budget = message.recall else { return }
        let stillQuiet = message.quiet ?? false
        let (mustWrite, wasQuiet) = cache.withLock { cache in
            let wasQuiet = cache.isQuiet(for: cache.rules.policy)
            let mustWrite = cache.applyRecall(
                version: message.version, created: message.created ?? 0, budget: budget, at: message.at, windowQuiet: stillQuiet)
            return (mustWrite, wasQuiet)
        }
        if mustWrite || (wasQuiet && !stillQuiet && hasPending) { flush() }
    }

    private func registerIfNeeded() {
        guard !isRegistered.load(ordering: .relaxed) else { return }
        core.connection.submit([RedisCommand("SADD", "\(core.options.namespace):breakers", name)]) { [self] result in
            if case .success(let replies) = result, case .integer = replies[0] { isRegistered.store(true, ordering: .relaxed) }
        }
    }

    private func submitScript(_ op: String, _ extra: [any RedisArgument], completion: @escaping @Sendable (Result<StateReply, RedisError>) -> Void) {
        core.submit([scriptCall(op, extra, completion: completion)])
    }

    /// This breaker's part of a script call: `op` with the policy, then `extra` (lua/breaker.lua, `A[19…]`).
    private func scriptCall(_ op: String, _ extra: [any RedisArgument], completion: @escaping @Sendable (Result<StateReply, RedisError>) -> Void) -> ScriptCall {
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

    // MARK: - Cache updates

    private func apply(_ reply: StateReply, ownCall: Bool) {
        if !core.hasAnswered.load(ordering: .relaxed) { core.hasAnswered.store(true, ordering: .relaxed) }
        let now = self.now
        if let note = reply.statisticsNote { noteStatistics(note, now: now) }
        let (transition, recovered, reborn) = updateCache { cache in
            // A state hash of another incarnation: Redis lost the keys (restart, FLUSHALL, eviction) and the script
            // made them again, so the breaker index may have lost the name too.
            let reborn = cache.isKnown && reply.created != cache.created
            let (transition, recovered) = cache.apply(reply, now: now)
            return (transition, recovered, reborn)
        }
        if recovered {
            instruments.logger.info("Redis is reachable again; breaker '\(name)' uses the shared state", metadata: ["breaker.state": .string(reply.state.rawValue)])
        }
        if reborn {
            isRegistered.store(false, ordering: .relaxed)
            registerIfNeeded()
        }
        if let transition { instruments.transitioned(transition, observedRemotely: !(ownCall && reply.transitioned)) }
    }

    /// Applies a transition message; messages older than the cache are ignored. A transition ends a corrupt state
    /// at once: the script made it, so the keys it needs read well again (a repairing reset, typically), and the
    /// instance need not wait for its own next reply to use the shared state again.
    func apply(_ message: BreakerMessage) {
        guard let state = message.state.flatMap(BreakerState.init(rawValue:)) else { return }
        let now = self.now
        let (transition, healed) = updateCache { cache -> (BreakerTransition?, Bool) in
            let isNewIncarnation = message.created.map { $0 != cache.created } ?? false
            guard !cache.isKnown || isNewIncarnation || message.version > cache.version else { return (nil, false) }
            var healed = false
            if case .corrupt = cache.health {
                _ = cache.setHealth(.healthy)
                healed = true
            }
            let change = cache.isKnown
                ? BreakerTransition(from: cache.state, to: state, reason: message.reason ?? "", version: message.version, at: .nanoseconds(now)) : nil
            cache.isKnown = true
            cache.state = state
            cache.version = message.version
            cache.created = message.created ?? cache.created
            cache.attempt = message.attempt ?? cache.attempt
            cache.isolationReason = message.isolation_reason.flatMap { $0.isEmpty ? nil : $0 }
            let endsIn = message.probe_in_ms ?? 0
            cache.probeAt = state == .open || (state == .isolated && endsIn > 0) ? now + endsIn * 1_000_000 : 0
            cache.halfOpenDeniedUntil = 0
            // A new closed period: no budget until Redis grants one (the first failure is written at once).
            cache.budget = 0
            cache.recallCeiling = nil
            cache.windowCalls = 0
            cache.windowFailures = 0
            cache.windowSlow = 0
            cache.throttleProbability = 0
            cache.consecutiveFailures = 0
            cache.isRecalled = false
            return (change, healed)
        }
        if healed {
            instruments.logger.info("breaker '\(name)' was repaired (\(message.reason ?? "a transition")); it uses the shared state again")
        }
        if let transition { instruments.transitioned(transition, observedRemotely: true) }
    }

    private func markFailure(_ error: RedisError) {
        if error.serverErrorPrefix == "CORRUPT" {
            let corrupt = corruptError(error)
            let changed = updateCache { $0.setHealth(.corrupt(corrupt.message)) }
            if changed { instruments.logger.info("\(corrupt.message); falling back to the '\(core.options.whenUnavailable.rawValue)' policy") }
            return
        }
        markUnavailable(error)
    }

    private func markUnavailable(_ error: RedisError) {
        let text = error.serverErrorPrefix == "NOPERM"
            ? "the Redis user may not run what Fusebox needs (\(error.message)); see the ACL line in Docs/operations.md"
            : "\(error.code): \(error.message)"
        let changed = updateCache { $0.setHealth(.unavailable(text)) }
        if changed {
            instruments.logger.info(
                "Redis is unavailable for breaker '\(name)' (\(text)); falling back to the '\(core.options.whenUnavailable.rawValue)' policy")
        }
    }

    /// Reports what the script found wrong with the breaker's statistics: counted in
    /// `fusebox_statistics_repairs_total`, logged once a minute at most (a corrupt field meets every write until
    /// one makes it anew, and a read only names it).
    private func noteStatistics(_ note: String, now: Int64) {
        statisticsRepairs.increment()
        let due = lastStatisticsLog.withLock { last in
            guard last == nil || now - last! >= 60_000_000_000 else { return false }
            last = now
            return true
        }
        if due { instruments.logger.info("breaker '\(name)': statistics: \(note); decisions are not affected") }
    }

    /// The script's `CORRUPT <key> …` refusal as a `FuseboxError` naming the breaker and the key.
    private func corruptError(_ error: RedisError) -> FuseboxError {
        FuseboxError(code: .corruptState, message: "breaker '\(name)': \(error.message.dropFirst("CORRUPT ".count))", breakerName: name, underlying: error)
    }

    private func unavailableRejection(_ reason: String) -> FuseboxError {
        FuseboxError(
            code: .backendUnavailable, message: "circuit '\(name)' rejects calls: Redis is unavailable (\(reason)) and the policy is failClosed",
            breakerName: name)
    }

    private func storeError(_ error: RedisError) -> FuseboxError {
        markFailure(error)
        if error.serverErrorPrefix == "CORRUPT" { return corruptError(error) }
        return FuseboxError(code: .backendUnavailable, message: "breaker '\(name)': Redis \(error.code): \(error.message)", breakerName: name, underlying: error)
    }

    // MARK: - Control and reading

    private func control(_ op: String, _ extra: [any RedisArgument]) async throws(FuseboxError) {
        // This instance's outcomes reach Redis first (a write outstanding would hold them back).
        await flushAndWait()
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<StateReply, RedisError>, Never>) in
            core.sendOrder.withLock { _ in
                core.submit(takePending() + [scriptCall(op, extra) { continuation.resume(returning: $0) }])
            }
        }
        switch result {
        case .success(let reply): apply(reply, ownCall: true)
        case .failure(let error): throw storeError(error)
        }
    }

    /// A batch's rejections as the script reads them: `R`, `R:T` with adaptive throttling, then `/W` for calls that
    /// ran in shadow mode although rejected (R counts only calls that were turned away).
    static func rejections(_ batch: PendingOutcomes.Batch, throttling: Bool) -> String {
        let turnedAway = batch.rejected - batch.wouldReject
        let text = throttling ? "\(turnedAway):\(batch.throttled)" : String(turnedAway)
        return batch.wouldReject > 0 ? "\(text)/\(batch.wouldReject)" : text
    }

    func isolate(reason: String, for duration: Duration?) async throws(FuseboxError) {
        try LocalBackend.checkIsolation(duration)
        try await control("isolate", [reason, duration.map { String($0.milliseconds) } ?? ""])
    }
    func reset() async throws(FuseboxError) { try await control("reset", []) }
    func resetWithBaseline() async throws(FuseboxError) { try await control("reset", ["baseline"]) }
    func forceHalfOpen() async throws(FuseboxError) { try await control("half_open", []) }

    func snapshot() async throws(FuseboxError) -> BreakerSnapshot {
        // Whether this instance was deciding without Redis when asked (the read's own reply ends an overdue spell).
        let (onFallback, health) = cache.withLock {
            ($0.fallback != nil || !$0.health.isHealthy || $0.admissionOverdue, BreakerHealth(policy: $0.rules.policy))
        }
        // This instance's own outcomes are in the figures (a write outstanding would hold them back).
        await flushAndWait()
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<StateReply, RedisError>, Never>) in
            core.sendOrder.withLock { _ in
                core.submit(takePending() + [scriptCall("read", []) { continuation.resume(returning: $0) }])
            }
        }
        let reply: StateReply
        switch result {
        case .success(let value): reply = value
        case .failure(let error): throw storeError(error)
        }
        apply(reply, ownCall: true)
        var snapshot = try BreakerSnapshot(name: name, reply: reply, totalsKey: keys[2])
        snapshot.isOnStoreDownFallback = onFallback
        snapshot.rescore(against: health)
        return snapshot
    }

    func timeline() async throws(FuseboxError) -> [BreakerTransition] {
        do {
            return try await BreakerOperator.timeline(of: name, eventsKey: keys[3], connection: core.connection)
        } catch let error as RedisError {
            throw storeError(error)
        } catch {
            throw error as! FuseboxError
        }
    }

    func events() -> AsyncStream<BreakerEvent> { instruments.stream() }

    // MARK: - Arguments

    static func policyArguments(_ policy: BreakerPolicy, minimumInstances: Int) -> [String] {
        let (kind, size, width): (String, Int, Int64) = switch policy.window {
        case .time(let sampling, let buckets): ("time", buckets, max(1, (sampling / buckets).milliseconds))
        case .count(let size): ("count", size, 1)
        }
        // A relative threshold rides with the fixed one (the script's A[3]): '~FACTOR:FLOOR:HORIZON_MS:WARMUP_CALLS'.
        let relative = policy.relativeFailureRate.map {
            "~\($0.factor):\($0.floor):\(max(1, $0.horizon.milliseconds)):\($0.warmupCalls)"
        } ?? ""
        return [
            (policy.failureRateThreshold.map { "\($0)" } ?? "") + relative,
            policy.consecutiveFailureThreshold.map { "\($0)" } ?? "",
            policy.slowCallRateThreshold.map { "\($0)" } ?? "",
            String(policy.minimumThroughput), kind, String(size), String(width),
            String(policy.permittedCallsInHalfOpen), String(policy.successThreshold),
            String(policy.maxHalfOpenDuration.milliseconds), policy.mode.rawValue, String(minimumInstances),
        ]
    }

    /// The keys of breaker `name`, in the order `lua/breaker.lua` takes them.
    static func keys(namespace: String, name: String) -> [String] {
        let prefix = "\(namespace):{\(name)}"
        return ["\(prefix):state", "\(prefix):window", "\(prefix):totals", "\(prefix):events"]
    }

    /// A short fingerprint of the policy (FNV-1a, 64 bits): the script writes the JSON only when it changes.
    static func fingerprint(_ text: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return String(hash, radix: 16)
    }

    /// `text` as a JSON string literal (quotes, backslashes and control characters escaped).
    static func jsonString(_ text: String) -> String {
        var literal = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": literal += "\\\""
            case "\\": literal += "\\\\"
            case "\n": literal += "\\n"
            case "\r": literal += "\\r"
            case "\t": literal += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                let hex = String(scalar.value, radix: 16)
                literal += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: literal.unicodeScalars.append(scalar)
            }
        }
        return literal + "\""
    }

    /// The policy as JSON, for operators reading the `policy` field with redis-cli.
    static func policyJSON(_ policy: BreakerPolicy, minimumInstances: Int = 1) -> String {
        func ms(_ duration: Duration) -> String { String(duration.milliseconds) }
        func optional<T>(_ value: T?) -> String { value.map { "\($0)" } ?? "null" }
        let window: String = switch policy.window {
        case .time(let sampling, let buckets): #"{"kind":"time","samplingMs":\#(ms(sampling)),"buckets":\#(buckets)}"#
        case .count(let size): #"{"kind":"count","size":\#(size)}"#
        }
        let breakDuration: String = switch policy.breakDuration {
        case .fixed(let d): #"{"kind":"fixed","ms":\#(ms(d))}"#
        case .exponential(let base, let factor, let maximum): #"{"kind":"exponential","baseMs":\#(ms(base)),"factor":\#(factor),"maximumMs":\#(ms(maximum))}"#
        case .linear(let base, let increment, let maximum): #"{"kind":"linear","baseMs":\#(ms(base)),"incrementMs":\#(ms(increment)),"maximumMs":\#(ms(maximum))}"#
        case .adaptive: #"{"kind":"adaptive"}"#
        case .custom(let id, _): #"{"kind":"custom","id":\#(jsonString(id))}"#
        }
        // Adaptive throttling is written only when set, so the JSON (and fingerprint) of a policy without it is
        // what it was before the option existed.
        var throttling = policy.adaptiveThrottling.map { #","adaptiveThrottling":{"multiplier":\#($0.multiplier)}"# } ?? ""
        if let relative = policy.relativeFailureRate {
            throttling += #","relativeFailureRate":{"factor":\#(relative.factor),"floor":\#(relative.floor),"horizonMs":\#(ms(relative.horizon)),"warmupCalls":\#(relative.warmupCalls)}"#
        }
        return #"{"minimumInstances":\#(minimumInstances),"failureRateThreshold":\#(optional(policy.failureRateThreshold)),"consecutiveFailureThreshold":\#(optional(policy.consecutiveFailureThreshold)),"slowCallRateThreshold":\#(optional(policy.slowCallRateThreshold)),"slowCallDurationMs":\#(ms(policy.slowCallDuration)),"minimumThroughput":\#(policy.minimumThroughput),"window":\#(window),"breakDuration":\#(breakDuration),"permittedCallsInHalfOpen":\#(policy.permittedCallsInHalfOpen),"successThreshold":\#(policy.successThreshold),"maxHalfOpenDurationMs":\#(ms(policy.maxHalfOpenDuration)),"mode":"\#(policy.mode.rawValue)"\#(throttling)}"#
    }
}

/// What a policy means to the distributed backend, worked out once per policy: the script's arguments, the JSON
/// for operators, and the figures the hot path and the flusher read.
struct PolicyRules: Sendable {
    let policy: BreakerPolicy
    let arguments: [String]
    let fingerprint: String
    let json: String
    let slowCallNanoseconds: Int64
    /// The time window's bucket width in ms (0 for a count window).
    let bucketMilliseconds: Int64
    /// How long successes may wait before the flusher writes them while the breaker is quiet (ns).
    let quietHoldNanoseconds: Int64
    /// How old outcomes may be and still enter the window (ns).
    let windowAgeNanoseconds: Int64
    /// How long a probe permit is held for its caller (ms): twice the call timeout, or 5 s without one. A caller
    /// still running renews it; one that died loses it then (lua/breaker.lua, `leases`).
    let probeLeaseMilliseconds: Int64

    init(_ policy: BreakerPolicy, options: DistributedOptions) {
        self.policy = policy
        let instances = policy.minimumInstances ?? options.minimumInstances
        arguments = DistributedBackend.policyArguments(policy, minimumInstances: instances)
        json = DistributedBackend.policyJSON(policy, minimumInstances: instances)
        fingerprint = DistributedBackend.fingerprint(json + "|" + arguments.joined(separator: ","))
        slowCallNanoseconds = policy.slowCallDuration.nanoseconds
        bucketMilliseconds = switch policy.window {
        case .time(let sampling, let buckets): max(1, (sampling / buckets).milliseconds)
        case .count: 0
        }
        var quietHold = max(options.flushInterval, options.quietFlushInterval)
        if case .time(let sampling, _) = policy.window { quietHold = max(options.flushInterval, min(quietHold, sampling / 2)) }
        quietHoldNanoseconds = quietHold.nanoseconds
        windowAgeNanoseconds = switch policy.window {
        case .time(let sampling, _): sampling.nanoseconds
        case .count: 10_000_000_000
        }
        probeLeaseMilliseconds = policy.callTimeout.map { max(1, ($0 * 2).milliseconds) } ?? 5000
    }
}

/// One CPU's count of plain successes for one breaker: the version and Redis time bucket they count under, and
/// the span of this instance's clock the bucket covers. Padded so that two stripes never share a cache line.
struct SuccessStripe: ~Copyable {
    struct Cell: Sendable {
        var version = -1
        var created: Int64 = 0
        var bucket: Int64 = 0
        var start: Int64 = .max
        var end: Int64 = .min
        var count = 0
        var firstAt: Int64 = 0
    }

    let cell = Locked(Cell())
    private let padding: (Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64) = (0, 0, 0, 0, 0, 0, 0, 0)
}

/// One request for admission that Redis or the admission budget answers, whichever comes first.
private final class AdmissionRequest: Sendable {
    private let state = Locked<(isAnswered: Bool, admission: BreakerAdmission?)>((false, nil))

    /// Redis's answer, once it is in.
    var admission: BreakerAdmission? { state.withLock { $0.admission } }

    /// Answers the request with Redis's `admission`, or `nil` when the budget ran out; `false` when it was
    /// answered already (the other side won).
    func answer(_ admission: BreakerAdmission?) -> Bool {
        state.withLock { state in
            guard !state.isAnswered else { return false }
            state = (true, admission)
            return true
        }
    }
}
