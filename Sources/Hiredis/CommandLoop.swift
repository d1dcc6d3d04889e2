import CHiredis
import FuseboxLocking
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The thread behind a ``RedisClient``: it owns the socket, writes every queued request, and matches each
/// reply to its caller in order.
///
/// Callers enqueue under a mutex and wake the thread through a pipe; the thread takes everything queued at
/// once, so requests that arrive while others are in flight go out together in the next write (automatic
/// pipelining). The socket is non-blocking and polled with the earliest in-flight deadline as the timeout, so
/// no request waits past its deadline, whatever the server does.
final class CommandLoop: Sendable {
    struct Request: Sendable {
        let bytes: [UInt8]
        let replyCount: Int
        /// Called once, on the loop thread (or the submitting thread when the request is refused at once).
        let complete: @Sendable (Result<[RESPValue], RedisError>) -> Void

        func fail(_ error: RedisError) { complete(.failure(error)) }
    }

    private struct Shared {
        var queue: [Request] = []
        var wakeScheduled = false
        var isShuttingDown = false
        var isRunning = false
        /// Set by ``retire(because:)``: drop the connection before writing anything more.
        var retirement: (reason: String, keeping: String?)?
    }

    let configuration: RedisConfiguration
    /// Says which server to connect to at each (re)connection, on the loop's thread (Sentinel asks the sentinels);
    /// `nil` connects to ``configuration``.
    private let resolve: (@Sendable (ContinuousClock.Instant) throws(RedisError) -> RedisConfiguration)?
    private let shared = Locked(Shared())
    private let wakeup: WakeupPipe

    init(
        configuration: RedisConfiguration,
        resolve: (@Sendable (ContinuousClock.Instant) throws(RedisError) -> RedisConfiguration)? = nil
    ) throws(RedisError) {
        self.configuration = configuration
        self.resolve = resolve
        self.wakeup = try WakeupPipe()
    }

    /// Drops the connection (what is in flight fails with ``RedisError/Code/connectionClosed``, which callers may
    /// retry), so the next command connects anew: to the new primary, after a failover.
    /// `keeping` names an endpoint (`host:port`) whose connection is kept: the switch it announces is made already.
    func retire(because reason: String, unlessConnectedTo keeping: String? = nil) {
        let running = shared.withLock { shared in
            shared.retirement = (reason, keeping)
            return shared.isRunning
        }
        if running { wakeup.wake() }
    }

    /// Queues a request; starts the thread on first use. Fails the request at once after ``shutdown()``.
    func submit(_ request: Request) {
        enum Next { case none, wake, start, reject }
        let next: Next = shared.withLock { shared in
            if shared.isShuttingDown { return .reject }
            shared.queue.append(request)
            if !shared.isRunning {
                shared.isRunning = true
                shared.wakeScheduled = true
                return .start
            }
            if shared.wakeScheduled { return .none }
            shared.wakeScheduled = true
            return .wake
        }
        switch next {
        case .none: break
        case .wake: wakeup.wake()
        case .reject: request.fail(closedError().notSent())
        case .start:
            do {
                try startThread(name: "fusebox-redis") { [self] in runLoop() }
            } catch {
                let queued = shared.withLock { shared in
                    shared.isRunning = false
                    defer { shared.queue.removeAll() }
                    return shared.queue
                }
                for request in queued { request.fail(error.notSent()) }
            }
        }
    }

    /// Fails everything queued or in flight with ``RedisError/Code/connectionClosed`` and stops the thread.
    func shutdown() {
        let (wasRunning, queued): (Bool, [Request]) = shared.withLock { shared in
            shared.isShuttingDown = true
            if shared.isRunning { return (true, []) }
            defer { shared.queue.removeAll() }
            return (false, shared.queue)
        }
        if wasRunning { wakeup.wake() }
        for request in queued { request.fail(closedError().notSent()) }
    }

    private func closedError() -> RedisError {
        RedisError(code: .connectionClosed, message: "the connection was closed", endpoint: configuration.endpoint.description)
    }

    // MARK: - The loop thread

    private struct InFlight {
        let request: Request
        var deadline: ContinuousClock.Instant
        var replies: [RESPValue] = []
    }

    private func runLoop() {
        var socket: HiredisSocket?
        var inFlight = RingBuffer<InFlight>()
        var hasPendingOutput = false
        var reconnect = ReconnectBackoff()

        func failInFlight(_ error: RedisError) {
            while let entry = inFlight.popFirst() { entry.request.fail(error) }
            socket = nil
            hasPendingOutput = false
        }

        while true {
            let (incoming, isShuttingDown, retirement) = shared.withLock { shared in
                shared.wakeScheduled = false
                defer {
                    shared.queue.removeAll(keepingCapacity: true)
                    shared.retirement = nil
                }
                return (shared.queue, shared.isShuttingDown, shared.retirement)
            }
            if let retirement, let live = socket, live.endpoint != retirement.keeping {
                failInFlight(RedisError(code: .connectionClosed, message: retirement.reason, endpoint: live.endpoint))
            }
            if isShuttingDown {
                let error = closedError()
                failInFlight(error)
                for request in incoming { request.fail(error.notSent()) }
                // Requests that raced with shutdown were rejected in submit(); nothing else can be queued now.
                shared.withLock { $0.isRunning = false }
                return
            }

            if !incoming.isEmpty {
                if socket == nil {
                    do {
                        try reconnect.checkAllowed()
                    } catch {
                        for request in incoming { request.fail(error.notSent()) }
                        continue
                    }
                    do {
                        let deadline = ContinuousClock.now + configuration.connectTimeout
                        socket = try HiredisSocket.connect(try resolve?(deadline) ?? configuration, deadline: deadline)
                        reconnect.succeeded()
                    } catch {
                        reconnect.failed(error)
                        for request in incoming { request.fail(error.notSent()) }
                        continue
                    }
                }
                let deadline = ContinuousClock.now + configuration.commandTimeout
                var appended = 0
                do {
                    for request in incoming {
                        try socket!.append(request.bytes)
                        inFlight.append(InFlight(request: request, deadline: deadline))
                        appended += 1
                    }
                    hasPendingOutput = true
                } catch {
                    for request in incoming[appended...] { request.fail(error.notSent()) }
                    failInFlight(error)
                    continue
                }
            }

            if let live = socket, hasPendingOutput {
                do { hasPendingOutput = try !live.flush() } catch { failInFlight(error); continue }
            }

            var descriptors = [pollfd(fd: wakeup.readEnd, events: Int16(POLLIN), revents: 0)]
            if let live = socket {
                descriptors.append(pollfd(fd: live.fileDescriptor, events: Int16(POLLIN) | (hasPendingOutput ? Int16(POLLOUT) : 0), revents: 0))
            }
            let timeout = inFlight.first.map { ContinuousClock.now.duration(to: $0.deadline).pollMilliseconds } ?? -1
            let ready = poll(&descriptors, nfds_t(descriptors.count), timeout)
            if ready < 0 && fusebox_errno() != EINTR {
                failInFlight(RedisError(code: .connectionFailed, message: "poll failed: \(String(cString: strerror(fusebox_errno())))"))
                continue
            }
            if descriptors[0].revents != 0 { wakeup.drain() }

            if let live = socket, descriptors.count > 1, descriptors[1].revents != 0 {
                let events = descriptors[1].revents
                do throws(RedisError) {
                    if events & Int16(POLLOUT) != 0 { hasPendingOutput = try !live.flush() }
                    if events & (Int16(POLLIN) | Int16(POLLHUP) | Int16(POLLERR)) != 0 {
                        try live.read()
                        var progressed = false
                        defer {
                            // The server is making progress: the oldest request waits commandTimeout from now.
                            if progressed, var head = inFlight.first {
                                head.deadline = max(head.deadline, .now + configuration.commandTimeout)
                                inFlight.first = head
                            }
                        }
                        while let reply = try live.nextReply() {
                            progressed = true
                            guard inFlight.first != nil else {
                                throw RedisError(code: .protocolError, message: "a reply arrived that no command asked for", endpoint: live.endpoint)
                            }
                            if resolve != nil, case .error(let message) = reply, message.hasPrefix("READONLY") {
                                // The primary became a replica: connect anew (to whichever server is primary now)
                                // once this batch is answered.
                                shared.withLock { $0.retirement = ("the server became a replica (\(message))", nil) }
                                wakeup.wake()
                            }
                            inFlight.first!.replies.append(reply)
                            if inFlight.first!.replies.count == inFlight.first!.request.replyCount {
                                let done = inFlight.popFirst()!
                                done.request.complete(.success(done.replies))
                            }
                        }
                    }
                } catch {
                    failInFlight(error)
                    continue
                }
            }

            if let oldest = inFlight.first, ContinuousClock.now >= oldest.deadline {
                // The reply stream can no longer be matched to callers: drop the connection, fail everything in flight.
                failInFlight(RedisError(
                    code: .timeout, message: "no reply within \(configuration.commandTimeout)",
                    endpoint: socket?.endpoint ?? configuration.endpoint.description))
            }
        }
    }
}

/// Spaces out connection attempts after failures (25 ms doubling to 1 s), so a dead server is not hammered;
/// requests made during the pause fail at once with the last connection error.
struct ReconnectBackoff {
    private var failures = 0
    private var notBefore = ContinuousClock.now
    private var lastError: RedisError?

    /// Throws the last connection error, marked with the wait left, while a pause is running.
    func checkAllowed() throws(RedisError) {
        guard let lastError, ContinuousClock.now < notBefore else { return }
        var error = lastError
        error.message += " (next attempt in \(ContinuousClock.now.duration(to: notBefore).pollMilliseconds) ms)"
        throw error
    }

    mutating func failed(_ error: RedisError) {
        failures += 1
        lastError = error
        let delay = Duration.milliseconds(min(1000, 25 << min(failures - 1, 6)))
        notBefore = .now + delay
    }

    mutating func succeeded() {
        failures = 0
        lastError = nil
    }
}

/// A FIFO queue over an array, with O(1) amortised append and pop (no Foundation, no dependency).
struct RingBuffer<Element> {
    private var storage: [Element?] = []
    private var head = 0

    var isEmpty: Bool { head == storage.count }

    var first: Element? {
        get { isEmpty ? nil : storage[head] }
        set { if !isEmpty, let newValue { storage[head] = newValue } }
    }

    mutating func append(_ element: Element) { storage.append(element) }

    mutating func popFirst() -> Element? {
        guard !isEmpty else { return nil }
        defer {
            storage[head] = nil
            head += 1
            if head == storage.count {
                storage.removeAll(keepingCapacity: true)
                head = 0
            } else if head > 1024 && head * 2 > storage.count {
                storage.removeFirst(head)
                head = 0
            }
        }
        return storage[head]
    }
}
