#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Binds a new TCP socket to 127.0.0.1 at `port`, or at a port the system chooses for 0 (`listening` makes it listen
/// too), and returns it with that port; the caller closes it. For the test kit's free ports and fake servers.
func bindLoopback(port: Int = 0, listening: Bool) throws -> (descriptor: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw RedisServerProcess.Failure(description: "socket: \(String(cString: strerror(errno)))") }
    var address = loopbackAddress(port: port)
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound, !listening || listen(fd, 64) == 0 else {
        let reason = String(cString: strerror(errno))
        close(fd)
        throw RedisServerProcess.Failure(description: "could not bind a loopback port: \(reason)")
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

/// `127.0.0.1:port` as a socket address.
func loopbackAddress(port: Int) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return address
}

/// Accepts connections on `listener` and hands each to `handle`, until `isStopped` says so (checked every 50 ms);
/// then closes the listener. Runs on the calling thread.
func acceptConnections(on listener: Int32, until isStopped: () -> Bool, _ handle: (Int32) -> Void) {
    defer { close(listener) }
    while !isStopped() {
        var ready = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        guard poll(&ready, 1, 50) > 0 else { continue }
        let connection = accept(listener, nil, nil)
        if connection >= 0 { handle(connection) }
    }
}

/// Checks `condition` every 100 ms until it holds; throws ``RedisServerProcess/Failure`` naming `what` once `timeout`
/// has passed.
public func waitUntil(_ what: String, timeout: Duration, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
        guard ContinuousClock.now < deadline else { throw RedisServerProcess.Failure(description: "\(what): not within \(timeout)") }
        try await Task.sleep(for: .milliseconds(100))
    }
}
