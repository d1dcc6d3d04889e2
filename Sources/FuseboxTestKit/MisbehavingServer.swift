import Foundation
import FuseboxLocking
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A TCP server on a free loopback port that speaks anything but Redis, for fault tests: the client must fail
/// with a typed error within its timeouts, never crash or hang.
public final class MisbehavingServer: Sendable {
    /// How the server treats each connection.
    public enum Behaviour: String, Sendable, CaseIterable {
        /// Answers every read with bytes that are not RESP.
        case garbage
        /// Accepts and never answers (nor closes).
        case silent
        /// Accepts and closes the connection at once.
        case closing
    }

    /// The loopback port it listens on.
    public let port: Int
    /// What it does.
    public let behaviour: Behaviour
    private let listener: Int32
    private let stopped = Atomic<Bool>(false)
    /// Accepted connections still open: the silent server's (closed on ``stop()``) and those a garbage-answering
    /// thread owns (shut down on ``stop()``; the thread closes its own, under this lock, so that no descriptor is
    /// closed while another thread may still write to it: a number closed too early is reused by the next socket
    /// the process opens, and garbage sent to it reached a test's real Redis connection).
    private let open = Locked<(silent: [Int32], answering: Set<Int32>)>(([], []))

    /// Starts the server on a free loopback port.
    public init(_ behaviour: Behaviour) throws {
        self.behaviour = behaviour
        (listener, port) = try bindLoopback(listening: true)
        let accepting = Thread { [self] in serve() }
        accepting.name = "misbehaving-\(behaviour.rawValue)"
        accepting.start()
    }

    deinit { stop() }

    /// `redis://127.0.0.1:PORT`.
    public var url: String { "redis://127.0.0.1:\(port)" }

    /// Stops accepting and closes every connection.
    public func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        shutdown(listener, Int32(SHUT_RDWR))
        open.withLock { descriptors in
            for descriptor in descriptors.silent { close(descriptor) }
            descriptors.silent.removeAll()
            // Their threads see the end of the stream and close them.
            for descriptor in descriptors.answering { shutdown(descriptor, Int32(SHUT_RDWR)) }
        }
    }

    private func serve() {
        acceptConnections(on: listener, until: { stopped.load(ordering: .acquiring) }) { connection in
            switch behaviour {
            case .closing:
                close(connection)
            case .silent:
                open.withLock { $0.silent.append(connection) }
            case .garbage:
                open.withLock { _ = $0.answering.insert(connection) }
                Thread { [self] in answerWithGarbage(connection) }.start()
            }
        }
    }

    /// Reads whatever comes and answers each read with bytes no RESP reply starts with.
    private func answerWithGarbage(_ connection: Int32) {
        defer {
            open.withLock { descriptors in
                descriptors.answering.remove(connection)
                close(connection)
            }
        }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let garbage = Array("\u{1}\u{2}HTTP/1.1 400 Bad Request\r\n\r\n%%garbage%%\r\n".utf8)
        while !stopped.load(ordering: .acquiring) {
            var ready = pollfd(fd: connection, events: Int16(POLLIN), revents: 0)
            guard poll(&ready, 1, 50) > 0 else { continue }
            let count = read(connection, &buffer, buffer.count)
            guard count > 0 else { return }
            _ = garbage.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }
    }
}
