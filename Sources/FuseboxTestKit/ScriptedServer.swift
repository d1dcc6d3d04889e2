import Foundation
import FuseboxLocking
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A TCP server on a free loopback port that answers whatever a client writes with bytes the test chose, in
/// pieces the test chose: for checking a client's reading of replies (whole, split anywhere, or malformed).
public final class ScriptedServer: Sendable {
    /// One answer: the bytes, the sizes of the writes they go out in, and whether the connection closes after.
    public struct Answer: Sendable {
        /// What to write.
        public var bytes: [UInt8]
        /// The sizes of the first writes (the rest goes in one more).
        public var pieces: [Int]
        /// Close the connection after writing.
        public var thenClose: Bool

        /// An answer of `bytes`, written in pieces of the given sizes (the rest in one more write).
        public init(_ bytes: [UInt8], pieces: [Int] = [], thenClose: Bool = false) {
            self.bytes = bytes
            self.pieces = pieces
            self.thenClose = thenClose
        }
    }

    /// The loopback port it listens on.
    public let port: Int
    private let listener: Int32
    private let stopped = Atomic<Bool>(false)
    private let answers = Locked<[Answer]>([])

    /// Starts the server on a free loopback port.
    public init() throws {
        (listener, port) = try bindLoopback(listening: true)
        let accepting = Thread { [self] in
            acceptConnections(on: listener, until: { stopped.load(ordering: .acquiring) }) { serve($0) }
        }
        accepting.name = "scripted-server"
        accepting.start()
    }

    deinit { stop() }

    /// `redis://127.0.0.1:PORT`.
    public var url: String { "redis://127.0.0.1:\(port)" }

    /// Queues the answer to the next read from a client.
    public func answerNext(_ answer: Answer) {
        answers.withLock { $0.append(answer) }
    }

    /// Stops accepting (connections in service end at their next read).
    public func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        shutdown(listener, Int32(SHUT_RDWR))
    }

    /// Serves one connection at a time, on the accepting thread: each read takes the next queued answer.
    private func serve(_ connection: Int32) {
        defer { close(connection) }
        // Pieces go out as written, not held back for the client's acknowledgement (Nagle).
        var one: Int32 = 1
        setsockopt(connection, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while !stopped.load(ordering: .acquiring) {
            var ready = pollfd(fd: connection, events: Int16(POLLIN), revents: 0)
            guard poll(&ready, 1, 50) > 0 else { continue }
            guard read(connection, &buffer, buffer.count) > 0 else { return }
            guard let answer = answers.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { continue }
            var offset = 0
            for size in answer.pieces + [answer.bytes.count] where offset < answer.bytes.count {
                let end = min(answer.bytes.count, offset + max(1, size))
                let sent = answer.bytes[offset..<end].withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                guard sent == end - offset else { return }
                offset = end
                // A pause between pieces, so they reach the client as separate reads.
                if offset < answer.bytes.count { usleep(200) }
            }
            if answer.thenClose { return }
        }
    }
}
