import Foundation
import FuseboxLocking
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A TCP proxy on a free loopback port that delays every byte by a fixed latency each way and can drop every
/// connection at once: a slow or flaky network for fault tests, where `tc netem` is not available.
public final class DelayProxy: Sendable {
    /// The loopback port clients connect to.
    public let port: Int
    /// The one-way delay added to every byte.
    public let delay: Duration
    private let upstreamPort: Int
    private let listener: Int32
    private let stopped = Atomic<Bool>(false)
    /// Both sockets of every open connection.
    private let sockets = Locked<Set<Int32>>([])

    /// Starts a proxy to `127.0.0.1:upstreamPort` that delays each direction by `delay`.
    public init(upstreamPort: Int, delay: Duration) throws {
        self.upstreamPort = upstreamPort
        self.delay = delay
        (listener, port) = try bindLoopback(listening: true)
        Thread { [self] in serve() }.start()
    }

    deinit { stop() }

    /// `redis://127.0.0.1:PORT`.
    public var url: String { "redis://127.0.0.1:\(port)" }

    /// Closes every open connection (clients see the connection reset); new ones are still accepted.
    public func dropConnections() {
        sockets.withLock { sockets in
            for socket in sockets { shutdown(socket, Int32(SHUT_RDWR)) }
        }
    }

    /// Stops accepting and drops every connection.
    public func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        shutdown(listener, Int32(SHUT_RDWR))
        dropConnections()
    }

    private func serve() {
        acceptConnections(on: listener, until: { stopped.load(ordering: .acquiring) }) { client in
            let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = loopbackAddress(port: upstreamPort)
            let connected = upstream >= 0 && withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            guard connected else {
                close(client)
                if upstream >= 0 { close(upstream) }
                return
            }
            var noDelay: Int32 = 1
            setsockopt(client, Int32(IPPROTO_TCP), TCP_NODELAY, &noDelay, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(upstream, Int32(IPPROTO_TCP), TCP_NODELAY, &noDelay, socklen_t(MemoryLayout<Int32>.size))
            sockets.withLock { $0.formUnion([client, upstream]) }
            DelayedPipe(from: client, to: upstream, delay: delay) { [self] in ended(client, upstream) }.start()
            DelayedPipe(from: upstream, to: client, delay: delay) { [self] in ended(client, upstream) }.start()
        }
    }

    /// Called by each direction when it ends: the second closes both sockets.
    private func ended(_ client: Int32, _ upstream: Int32) {
        let last = sockets.withLock { sockets -> Bool in
            // The first direction to end shuts both sockets down (waking the other); the second closes them.
            if sockets.contains(client) {
                sockets.remove(client)
                shutdown(client, Int32(SHUT_RDWR))
                shutdown(upstream, Int32(SHUT_RDWR))
                return false
            }
            return true
        }
        if last {
            sockets.withLock { _ = $0.remove(upstream) }
            close(client)
            close(upstream)
        }
    }
}

/// One direction of a proxied connection: a reader that stamps each chunk with its arrival, and a writer that
/// sends it once `delay` has passed since.
private final class DelayedPipe: Sendable {
    private let source: Int32
    private let destination: Int32
    private let delay: Duration
    private let onEnd: @Sendable () -> Void
    private let queue = Locked<(chunks: [(at: ContinuousClock.Instant, bytes: [UInt8])], ended: Bool)>(([], false))
    private let available = DispatchSemaphore(value: 0)

    init(from source: Int32, to destination: Int32, delay: Duration, onEnd: @escaping @Sendable () -> Void) {
        self.source = source
        self.destination = destination
        self.delay = delay
        self.onEnd = onEnd
    }

    func start() {
        Thread { [self] in read() }.start()
        Thread { [self] in write() }.start()
    }

    private func read() {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = Glibc.read(source, &buffer, buffer.count)
            if count <= 0 { break }
            let chunk = Array(buffer[0..<count])
            queue.withLock { $0.chunks.append((.now, chunk)) }
            available.signal()
        }
        queue.withLock { $0.ended = true }
        available.signal()
    }

    private func write() {
        defer { onEnd() }
        while true {
            available.wait()
            guard let next = queue.withLock({ $0.chunks.isEmpty ? nil : $0.chunks.removeFirst() }) else {
                if queue.withLock({ $0.ended }) { return }
                continue
            }
            let due = next.at + delay
            if due > .now { Thread.sleep(forTimeInterval: Double((due - .now).components.attoseconds) / 1e18 + Double((due - .now).components.seconds)) }
            var offset = 0
            while offset < next.bytes.count {
                let written = next.bytes[offset...].withUnsafeBytes { send(destination, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if written <= 0 { return }
                offset += written
            }
        }
    }
}
