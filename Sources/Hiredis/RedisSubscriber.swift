import CHiredis
import FuseboxLocking
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One message received on a subscribed channel.
public struct RedisMessage: Sendable, Hashable {
    /// The channel the message was published on.
    public var channel: String
    /// The pattern that matched, for `PSUBSCRIBE` subscriptions.
    public var pattern: String?
    /// The payload, byte for byte.
    public var payload: [UInt8]

    /// The payload decoded as UTF-8.
    public var text: String { String(decoding: payload, as: UTF8.self) }

    /// Makes a message.
    public init(channel: String, pattern: String? = nil, payload: [UInt8]) {
        self.channel = channel
        self.pattern = pattern
        self.payload = payload
    }
}

/// What a ``RedisSubscriber`` reports.
public enum SubscriberEvent: Sendable {
    /// The first connection is made and every subscription is confirmed.
    case subscribed
    /// A message arrived.
    case message(RedisMessage)
    /// The connection was lost; the subscriber is reconnecting. Messages published meanwhile are not delivered.
    case disconnected(RedisError)
    /// The connection was made again and every subscription restored: refresh whatever may have been missed.
    case reconnected
}

/// A pub/sub subscriber on a connection of its own.
///
/// Start it with ``run()`` in a task (it runs until that task is cancelled) and read ``events``. It pings the
/// server every ``healthCheckInterval`` and treats a missing pong (within the command timeout) as a lost
/// connection, so a frozen server is noticed. After a loss it reconnects with backoff, resubscribes to every
/// channel and pattern, and reports ``SubscriberEvent/reconnected``.
///
/// ``events`` has a single consumer and buffers the newest 4,096 events when the consumer falls behind.
public final class RedisSubscriber: Sendable {
    /// Every event, in order; finishes when ``run()`` returns.
    public let events: AsyncStream<SubscriberEvent>
    /// How often the connection is pinged (set at `init`, changed by ``setHealthCheckInterval(_:)``).
    public var healthCheckInterval: Duration { loop.healthCheckInterval }
    private let loop: SubscriberLoop

    /// Makes a subscriber; it connects when ``run()`` starts.
    ///
    /// With `onMessage`, messages are handed to it on the subscriber's own thread as they are read (no task
    /// switch: the lowest latency) instead of going to ``events``; keep it short and non-blocking. The other
    /// events still go to ``events``.
    ///
    /// Whatever the topology: in a Redis Cluster it subscribes on one node (classic pub/sub reaches every node) and
    /// moves to another node, learnt from the slot map, when that one is lost; with Sentinel it subscribes on the
    /// primary the sentinels name at each connection.
    public convenience init(
        configuration: RedisConfiguration, channels: [String] = [], patterns: [String] = [],
        healthCheckInterval: Duration = .seconds(1), onMessage: (@Sendable (RedisMessage) -> Void)? = nil
    ) throws(RedisError) {
        try self.init(
            configuration: configuration, connect: Self.connector(for: configuration), channels: channels, patterns: patterns,
            healthCheckInterval: healthCheckInterval, onMessage: onMessage)
    }

    init(
        configuration: RedisConfiguration, connect: @escaping SubscriberLoop.Connector, channels: [String], patterns: [String],
        healthCheckInterval: Duration, onMessage: (@Sendable (RedisMessage) -> Void)?
    ) throws(RedisError) {
        let (stream, continuation) = AsyncStream.makeStream(of: SubscriberEvent.self, bufferingPolicy: .bufferingNewest(4096))
        self.events = stream
        self.loop = try SubscriberLoop(
            configuration: configuration, connect: connect, channels: channels, patterns: patterns,
            healthCheckInterval: healthCheckInterval, continuation: continuation, onMessage: onMessage)
    }

    /// How a subscriber of `configuration` connects, at its `attempt`th try since the last success.
    static func connector(for configuration: RedisConfiguration) -> SubscriberLoop.Connector {
        switch configuration.topology {
        case .standalone:
            return { _, deadline throws(RedisError) in try HiredisSocket.connect(configuration, deadline: deadline) }
        case .sentinel:
            let resolver = SentinelResolver(configuration)!
            return { _, deadline throws(RedisError) in try HiredisSocket.connect(try resolver.primary(deadline: deadline), deadline: deadline) }
        case .cluster(let seeds):
            let known = Locked(seeds)
            return { attempt, deadline throws(RedisError) in
                let nodes = known.withLock { $0 }
                let socket = try HiredisSocket.connect(configuration.node(nodes[attempt % nodes.count]), deadline: deadline)
                // Learn every node, so a later loss can move to any of them (not only to the seeds).
                if let reply = try? socket.roundTrip([RedisCommand("CLUSTER", "SHARDS")], deadline: deadline)[0],
                   let map = try? ClusterSlotMap(shards: reply) {
                    let learnt = map.ranges.flatMap { [$0.primary] + $0.replicas }
                    known.withLock { list in list += learnt.filter { !list.contains($0) } }
                }
                return socket
            }
        }
    }

    deinit { loop.shutdown() }

    /// Pings every `interval` from the next pong on (a client of a large fleet pings less often, so that the
    /// fleet's pings cost the server about the same whatever its size).
    public func setHealthCheckInterval(_ interval: Duration) { loop.setHealthCheckInterval(interval) }

    /// Sends a health-check `PING` now, unless one is waiting for its pong, and counts the interval from its pong.
    /// A client that sends other commands on a schedule calls this beside them, so that the server serves both in
    /// one wakeup (on a busy server each wakeup costs more than the commands it serves).
    public func pingNow() { loop.pingNow() }

    /// Adds channels; subscribes at once when connected, and on every reconnect.
    public func subscribe(_ channels: [String]) { loop.add(channels: channels, patterns: []) }

    /// Adds patterns (`PSUBSCRIBE`); subscribes at once when connected, and on every reconnect.
    public func psubscribe(_ patterns: [String]) { loop.add(channels: [], patterns: patterns) }

    /// Runs the subscriber's thread until the calling task is cancelled, then closes the connection and
    /// finishes ``events``. Call it once.
    public func run() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                loop.start(onExit: done)
            }
        } onCancel: {
            loop.shutdown()
        }
    }
}

/// The thread behind a ``RedisSubscriber``.
final class SubscriberLoop: Sendable {
    /// Makes the connection at the given attempt (0 after a success, then 1, 2, …), before the deadline.
    typealias Connector = @Sendable (_ attempt: Int, _ deadline: ContinuousClock.Instant) throws(RedisError) -> HiredisSocket

    private struct Shared {
        var channels: [String]
        var patterns: [String]
        var isShuttingDown = false
        var hasStarted = false
        var healthCheckInterval: Duration
        var pingRequested = false
    }

    private let configuration: RedisConfiguration
    private let connect: Connector
    private let continuation: AsyncStream<SubscriberEvent>.Continuation
    private let onMessage: (@Sendable (RedisMessage) -> Void)?
    private let shared: Locked<Shared>
    private let wakeup: WakeupPipe

    init(
        configuration: RedisConfiguration, connect: @escaping Connector, channels: [String], patterns: [String], healthCheckInterval: Duration,
        continuation: AsyncStream<SubscriberEvent>.Continuation, onMessage: (@Sendable (RedisMessage) -> Void)?
    ) throws(RedisError) {
        self.configuration = configuration
        self.connect = connect
        self.continuation = continuation
        self.onMessage = onMessage
        self.shared = Locked(Shared(channels: channels, patterns: patterns, healthCheckInterval: healthCheckInterval))
        self.wakeup = try WakeupPipe()
    }

    var healthCheckInterval: Duration { shared.withLock { $0.healthCheckInterval } }

    func setHealthCheckInterval(_ interval: Duration) {
        shared.withLock { $0.healthCheckInterval = max(.milliseconds(1), interval) }
    }

    func pingNow() {
        shared.withLock { $0.pingRequested = true }
        wakeup.wake()
    }

    func add(channels: [String], patterns: [String]) {
        shared.withLock { shared in
            shared.channels.append(contentsOf: channels.filter { !shared.channels.contains($0) })
            shared.patterns.append(contentsOf: patterns.filter { !shared.patterns.contains($0) })
        }
        wakeup.wake()
    }

    func start(onExit: CheckedContinuation<Void, Never>) {
        let alreadyStarted = shared.withLock { shared in
            defer { shared.hasStarted = true }
            return shared.hasStarted || shared.isShuttingDown
        }
        if alreadyStarted {
            continuation.finish()
            onExit.resume()
            return
        }
        do {
            try startThread(name: "fusebox-pubsub") { [self] in
                runLoop()
                continuation.finish()
                onExit.resume()
            }
        } catch {
            continuation.yield(.disconnected(error))
            continuation.finish()
            onExit.resume()
        }
    }

    func shutdown() {
        shared.withLock { $0.isShuttingDown = true }
        wakeup.wake()
    }

    private var isShuttingDown: Bool { shared.withLock { $0.isShuttingDown } }

    /// Sleeps until `deadline` or a shutdown, whichever comes first.
    private func pause(until deadline: ContinuousClock.Instant) {
        while !isShuttingDown {
            let remaining = ContinuousClock.now.duration(to: deadline)
            if remaining <= .zero { return }
            var descriptor = pollfd(fd: wakeup.readEnd, events: Int16(POLLIN), revents: 0)
            if poll(&descriptor, 1, remaining.pollMilliseconds) > 0 { wakeup.drain() }
        }
    }

    private func runLoop() {
        var hasConnectedBefore = false
        var failures = 0
        while !isShuttingDown {
            do {
                try session(isReconnect: hasConnectedBefore, attempt: failures) {
                    hasConnectedBefore = true
                    failures = 0
                }
            } catch {
                if isShuttingDown { return }
                continuation.yield(.disconnected(error))
                failures += 1
                // 50 ms doubling to 2 s between attempts.
                pause(until: .now + .milliseconds(min(2000, 50 << min(failures - 1, 6))))
            }
        }
    }

    /// One connection's life: connect, subscribe, deliver, ping. Returns only on shutdown; throws on any loss.
    private func session(isReconnect: Bool, attempt: Int, onSubscribed: () -> Void) throws(RedisError) {
        let socket = try connect(attempt, .now + configuration.connectTimeout)
        var sentChannels: Set<String> = []
        var sentPatterns: Set<String> = []
        var awaitingAcks = 0
        var ackDeadline: ContinuousClock.Instant?
        var announced = false
        var nextPing = ContinuousClock.now + healthCheckInterval
        var pongDeadline: ContinuousClock.Instant?

        func sendNewSubscriptions() throws(RedisError) {
            let (channels, patterns) = shared.withLock { ($0.channels, $0.patterns) }
            let newChannels = channels.filter { !sentChannels.contains($0) }
            let newPatterns = patterns.filter { !sentPatterns.contains($0) }
            if !newChannels.isEmpty { try socket.append(RedisCommand("SUBSCRIBE", arguments: newChannels).encoded) }
            if !newPatterns.isEmpty { try socket.append(RedisCommand("PSUBSCRIBE", arguments: newPatterns).encoded) }
            sentChannels.formUnion(newChannels)
            sentPatterns.formUnion(newPatterns)
            let added = newChannels.count + newPatterns.count
            if added > 0 {
                awaitingAcks += added
                ackDeadline = .now + configuration.commandTimeout
                while try !socket.flush() {
                    try socket.wait(for: Int16(POLLOUT), until: .now + configuration.commandTimeout, doing: "subscribing")
                }
            }
        }

        try sendNewSubscriptions()
        while true {
            if !announced && awaitingAcks == 0 {
                announced = true
                onSubscribed()
                continuation.yield(isReconnect ? .reconnected : .subscribed)
            }
            let now = ContinuousClock.now
            if let deadline = pongDeadline ?? ackDeadline, now >= deadline {
                throw RedisError(code: .timeout, message: "no reply from the server within \(configuration.commandTimeout)", endpoint: socket.endpoint)
            }
            let pingRequested = shared.withLock { shared in
                defer { shared.pingRequested = false }
                return shared.pingRequested
            }
            if pongDeadline == nil && (now >= nextPing || pingRequested) {
                try socket.append(RedisCommand("PING").encoded)
                while try !socket.flush() { try socket.wait(for: Int16(POLLOUT), until: now + configuration.commandTimeout, doing: "pinging") }
                pongDeadline = now + configuration.commandTimeout
            }
            let wakeAt = [pongDeadline, ackDeadline, pongDeadline == nil ? nextPing : nil].compactMap { $0 }.min()!
            var descriptors = [
                pollfd(fd: wakeup.readEnd, events: Int16(POLLIN), revents: 0),
                pollfd(fd: socket.fileDescriptor, events: Int16(POLLIN), revents: 0),
            ]
            _ = poll(&descriptors, 2, ContinuousClock.now.duration(to: wakeAt).pollMilliseconds)
            if descriptors[0].revents != 0 {
                wakeup.drain()
                if isShuttingDown { return }
                try sendNewSubscriptions()
            }
            guard descriptors[1].revents != 0 else { continue }
            try socket.read()
            while let reply = try socket.nextReply() {
                switch classify(reply) {
                case .message(let message):
                    if let onMessage { onMessage(message) } else { continuation.yield(.message(message)) }
                case .acknowledged:
                    awaitingAcks = max(0, awaitingAcks - 1)
                    if awaitingAcks == 0 { ackDeadline = nil }
                case .pong:
                    pongDeadline = nil
                    nextPing = .now + healthCheckInterval
                case .other(let value):
                    if case .error(let text) = value {
                        throw RedisError(code: .serverError, message: text, endpoint: socket.endpoint)
                    }
                }
            }
        }
    }

    private enum Push {
        case message(RedisMessage)
        case acknowledged
        case pong
        case other(RESPValue)
    }

    private func classify(_ reply: RESPValue) -> Push {
        if case .status(let text) = reply, text == "PONG" { return .pong }
        guard let parts = reply.array, let kind = parts.first?.string else { return .other(reply) }
        switch kind {
        case "message" where parts.count == 3:
            return .message(RedisMessage(channel: parts[1].string ?? "", payload: parts[2].bytes ?? []))
        case "pmessage" where parts.count == 4:
            return .message(RedisMessage(channel: parts[2].string ?? "", pattern: parts[1].string, payload: parts[3].bytes ?? []))
        case "subscribe", "psubscribe": return .acknowledged
        case "pong": return .pong
        default: return .other(reply)
        }
    }
}
