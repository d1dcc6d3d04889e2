import CHiredis

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One non-blocking hiredis context: connect, append, write, read, parse.
///
/// Not thread-safe: a socket belongs to the one thread that drives it (``CommandLoop`` or ``SubscriberLoop``).
/// hiredis parses the replies; this type turns each into a ``RESPValue`` and frees it at once.
final class HiredisSocket {
    private let context: UnsafeMutablePointer<redisContext>
    let endpoint: String

    private init(context: UnsafeMutablePointer<redisContext>, endpoint: String) {
        self.context = context
        self.endpoint = endpoint
    }

    deinit { redisFree(context) }

    var fileDescriptor: Int32 { fusebox_context_fd(context) }

    /// Connects without blocking past `deadline`, then runs the handshake (`AUTH`, `SELECT`, `CLIENT SETNAME`).
    static func connect(_ configuration: RedisConfiguration, deadline: ContinuousClock.Instant) throws(RedisError) -> HiredisSocket {
        let endpoint = configuration.endpoint.description
        let raw: UnsafeMutablePointer<redisContext>? =
            switch configuration.endpoint {
            case .tcp(let host, let port): redisConnectNonBlock(host, Int32(port))
            case .unix(let path): redisConnectUnixNonBlock(path)
            }
        guard let raw else {
            throw RedisError(code: .connectionFailed, message: "could not allocate a connection", endpoint: endpoint)
        }
        let socket = HiredisSocket(context: raw, endpoint: endpoint)
        if fusebox_context_err(raw) != 0 { throw socket.contextError(connecting: true) }

        // The connect is in progress: wait until the socket is writable, then ask the kernel how it went.
        try socket.wait(for: Int16(POLLOUT), until: deadline, doing: "connecting")
        let status = fusebox_socket_error(socket.fileDescriptor)
        if status != 0 {
            let code: RedisError.Code = status == ECONNREFUSED || status == ENOENT ? .connectionRefused : .connectionFailed
            throw RedisError(code: code, message: String(cString: strerror(status)), endpoint: endpoint)
        }

        var handshake: [RedisCommand] = []
        if let password = configuration.password {
            if let username = configuration.username {
                handshake.append(RedisCommand("AUTH", username, password))
            } else {
                handshake.append(RedisCommand("AUTH", password))
            }
        }
        if configuration.database != 0 { handshake.append(RedisCommand("SELECT", configuration.database)) }
        if let name = configuration.clientName { handshake.append(RedisCommand("CLIENT", "SETNAME", name)) }
        if configuration.requiresPrimary { handshake.append(RedisCommand("ROLE")) }
        guard !handshake.isEmpty else { return socket }

        let replies = try socket.roundTrip(handshake, deadline: deadline)
        for (command, reply) in zip(handshake, replies) {
            if command.name == "ROLE", case .array(let parts) = reply, let role = parts.first?.string, role != "master" {
                throw RedisError(
                    code: .connectionFailed, message: "the server is a \(role == "slave" ? "replica" : role), not the primary; asking the sentinels again",
                    endpoint: endpoint)
            }
            guard case .error(let message) = reply else { continue }
            let code: RedisError.Code = command.name == "AUTH" ? .authenticationFailed : .serverError
            throw RedisError(code: code, message: "\(command.name) failed: \(message)", endpoint: endpoint)
        }
        return socket
    }

    /// Queues bytes in hiredis' output buffer; nothing is written until ``flush()``.
    func append(_ bytes: [UInt8]) throws(RedisError) {
        let status = bytes.withUnsafeBufferPointer { buffer in
            buffer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buffer.count) {
                redisAppendFormattedCommand(context, $0, buffer.count)
            }
        }
        if status != REDIS_OK { throw contextError() }
    }

    /// Writes as much of the output buffer as the socket takes; returns `true` when it is empty.
    func flush() throws(RedisError) -> Bool {
        var done: Int32 = 0
        if redisBufferWrite(context, &done) != REDIS_OK { throw contextError() }
        return done != 0
    }

    /// Reads what the socket has into hiredis' reader.
    func read() throws(RedisError) {
        if redisBufferRead(context) != REDIS_OK { throw contextError() }
    }

    /// The next complete reply the reader holds, if any.
    func nextReply() throws(RedisError) -> RESPValue? {
        var reply: UnsafeMutableRawPointer?
        if redisGetReplyFromReader(context, &reply) != REDIS_OK { throw contextError() }
        guard let reply else { return nil }
        defer { freeReplyObject(reply) }
        return RESPValue(reply.assumingMemoryBound(to: redisReply.self))
    }

    /// Writes `commands` and reads their replies, blocking this thread until `deadline` at most.
    func roundTrip(_ commands: [RedisCommand], deadline: ContinuousClock.Instant) throws(RedisError) -> [RESPValue] {
        for command in commands { try append(command.encoded) }
        while try !flush() { try wait(for: Int16(POLLOUT), until: deadline, doing: "writing") }
        var replies: [RESPValue] = []
        while replies.count < commands.count {
            if let reply = try nextReply() {
                replies.append(reply)
                continue
            }
            try wait(for: Int16(POLLIN), until: deadline, doing: "waiting for a reply")
            try read()
        }
        return replies
    }

    /// Polls this socket for `events` until `deadline`; throws ``RedisError/Code/timeout`` when it passes.
    func wait(for events: Int16, until deadline: ContinuousClock.Instant, doing activity: String) throws(RedisError) {
        while true {
            let remaining = ContinuousClock.now.duration(to: deadline)
            if remaining <= .zero {
                throw RedisError(code: .timeout, message: "timed out \(activity)", endpoint: endpoint)
            }
            var descriptor = pollfd(fd: fileDescriptor, events: events, revents: 0)
            let result = poll(&descriptor, 1, remaining.pollMilliseconds)
            if result > 0 { return }
            if result < 0 && fusebox_errno() != EINTR {
                throw RedisError(code: .connectionFailed, message: "poll failed: \(String(cString: strerror(fusebox_errno())))", endpoint: endpoint)
            }
        }
    }

    private func contextError(connecting: Bool = false) -> RedisError {
        let err = fusebox_context_err(context)
        let text = String(cString: fusebox_context_errstr(context))
        let code: RedisError.Code
        switch err {
        case REDIS_ERR_EOF: code = .connectionClosed
        case REDIS_ERR_PROTOCOL: code = .protocolError
        case REDIS_ERR_IO where text.contains("refused") || text.contains("No such file"):
            code = .connectionRefused
        case REDIS_ERR_IO: code = connecting ? .connectionFailed : .connectionClosed
        default: code = .connectionFailed
        }
        return RedisError(code: code, message: text.isEmpty ? "hiredis error \(err)" : text, endpoint: endpoint)
    }
}

extension RESPValue {
    /// Converts a hiredis reply tree; the caller frees the tree.
    init(_ reply: UnsafeMutablePointer<redisReply>) {
        let type = reply.pointee.type
        switch type {
        case REDIS_REPLY_NIL:
            self = .null
        case REDIS_REPLY_INTEGER:
            self = .integer(Int(reply.pointee.integer))
        case REDIS_REPLY_STATUS:
            self = .status(Self.text(reply))
        case REDIS_REPLY_ERROR:
            self = .error(Self.text(reply))
        case REDIS_REPLY_ARRAY, fusebox_reply_type_map(), fusebox_reply_type_set(), fusebox_reply_type_push():
            let count = Int(reply.pointee.elements)
            var elements: [RESPValue] = []
            elements.reserveCapacity(count)
            for index in 0..<count {
                if let element = reply.pointee.element[index] { elements.append(RESPValue(element)) } else { elements.append(.null) }
            }
            self = .array(elements)
        case fusebox_reply_type_bool():
            self = .integer(Int(reply.pointee.integer))
        default:
            // Bulk strings, and under hiredis 1.x the RESP3 double, big number and verbatim types.
            self = .bulk(Self.bytes(reply))
        }
    }

    private static func bytes(_ reply: UnsafeMutablePointer<redisReply>) -> [UInt8] {
        guard let str = reply.pointee.str else { return [] }
        return str.withMemoryRebound(to: UInt8.self, capacity: reply.pointee.len) {
            Array(UnsafeBufferPointer(start: $0, count: reply.pointee.len))
        }
    }

    private static func text(_ reply: UnsafeMutablePointer<redisReply>) -> String {
        String(decoding: bytes(reply), as: UTF8.self)
    }
}

extension Duration {
    /// Milliseconds for `poll(2)`, rounded up so a wait never ends before its deadline, capped at a day.
    var pollMilliseconds: Int32 {
        let (seconds, attoseconds) = components
        if seconds >= 86_400 { return 86_400_000 }
        let millis = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return Int32(max(0, millis))
    }
}

/// A pipe the loop thread polls, so other threads can wake it up. Both ends are non-blocking.
final class WakeupPipe: Sendable {
    let readEnd: Int32
    let writeEnd: Int32

    init() throws(RedisError) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else {
            throw RedisError(code: .connectionFailed, message: "could not create a wake-up pipe: \(String(cString: strerror(fusebox_errno())))")
        }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        readEnd = fds[0]
        writeEnd = fds[1]
    }

    deinit {
        close(readEnd)
        close(writeEnd)
    }

    func wake() {
        var byte: UInt8 = 1
        _ = write(writeEnd, &byte, 1)
    }

    func drain() {
        var buffer = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        while withUnsafeMutableBytes(of: &buffer, { read(readEnd, $0.baseAddress, $0.count) }) > 0 {}
    }
}

/// Starts a detached OS thread running `body`: hiredis' blocking work never runs on Swift's cooperative pool.
///
/// The thread blocks `SIGPIPE`: hiredis writes with `write(2)`, and a write to a connection the server has reset
/// would otherwise raise the signal, whose default action ends the whole process. Blocked, the signal stays
/// pending on this thread alone, the write fails with `EPIPE`, and the connection reports a typed error.
func startThread(name: String, _ body: @escaping @Sendable () -> Void) throws(RedisError) {
    final class Box: Sendable {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }
    let box = Unmanaged.passRetained(Box(name: name, body: body)).toOpaque()
    var thread = pthread_t()
    let status = pthread_create(&thread, nil, { argument in
        let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
        var brokenPipe = sigset_t()
        sigemptyset(&brokenPipe)
        sigaddset(&brokenPipe, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &brokenPipe, nil)
        fusebox_set_thread_name(box.name)
        box.body()
        return nil
    }, box)
    guard status == 0 else {
        Unmanaged<Box>.fromOpaque(box).release()
        throw RedisError(code: .connectionFailed, message: "could not start the connection thread (pthread_create: \(status))")
    }
    pthread_detach(thread)
}
