import Fusebox
import FuseboxLocking
import Hiredis
import Logging
import Synchronization

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
        connection.submit(LuaScript.members, keys: membershipKeys, arguments: ["beat", senderID, options.instanceID, String(ttl)]) {
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
            connection.submit(LuaScript.members, keys: membershipKeys, arguments: ["leave", senderID, options.instanceID, "1"]) { _ in
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
