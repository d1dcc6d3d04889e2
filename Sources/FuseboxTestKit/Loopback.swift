import FuseboxProcess

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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

/// Checks `condition` every 100 ms until it holds; throws `RedisServerProcess.Failure` naming `what` once `timeout`
/// has passed.
public func waitUntil(_ what: String, timeout: Duration, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
        guard ContinuousClock.now < deadline else { throw RedisServerProcess.Failure(description: "\(what): not within \(timeout)") }
        try await Task.sleep(for: .milliseconds(100))
    }
}
