import FuseboxLocking

/// Finds the primary that a group of Redis Sentinels names, for a configuration whose topology is
/// ``RedisConfiguration/Topology/sentinel(sentinels:primaryName:username:password:)``.
///
/// Blocking: it runs on a connection's own thread, at each (re)connection. Each sentinel is asked in turn
/// (`SENTINEL GET-MASTER-ADDR-BY-NAME`), starting with the one that answered last; the address it gives is returned
/// as a node configuration that checks `ROLE` in its handshake, so a replica is never taken for the primary.
final class SentinelResolver: Sendable {
    let primaryName: String
    private let data: RedisConfiguration
    private let sentinel: RedisConfiguration
    private let sentinels: [RedisConfiguration.Endpoint]
    private let lastAnswered = Locked(0)

    init?(_ configuration: RedisConfiguration) {
        guard case .sentinel(let sentinels, let primaryName, _, _) = configuration.topology,
              let sentinel = configuration.sentinelConfiguration else { return nil }
        self.primaryName = primaryName
        self.sentinels = sentinels
        self.sentinel = sentinel
        self.data = configuration
    }

    /// The primary's configuration, from the first sentinel that knows it; throws the last sentinel's error when none
    /// does before `deadline`.
    func primary(deadline: ContinuousClock.Instant) throws(RedisError) -> RedisConfiguration {
        let first = lastAnswered.withLock { $0 }
        var lastError = RedisError(code: .connectionFailed, message: "no sentinel could be asked before the deadline")
        for step in 0..<sentinels.count {
            let index = (first + step) % sentinels.count
            guard ContinuousClock.now < deadline else { break }
            do {
                let socket = try HiredisSocket.connect(sentinel.node(sentinels[index]), deadline: deadline)
                let reply = try socket.roundTrip([RedisCommand("SENTINEL", "GET-MASTER-ADDR-BY-NAME", primaryName)], deadline: deadline)[0]
                guard let parts = reply.array, parts.count == 2, let host = parts[0].string,
                      let port = parts[1].string.flatMap({ Int($0) }) ?? parts[1].int else {
                    let what = if case .error(let message) = reply { "answered \(message)" } else { "knows no primary named '\(primaryName)'" }
                    lastError = RedisError(code: .connectionFailed, message: "the sentinel \(what)", endpoint: sentinels[index].description)
                    continue
                }
                lastAnswered.withLock { $0 = index }
                var node = data.node(.tcp(host: host, port: port))
                node.requiresPrimary = true
                return node
            } catch {
                lastError = error
            }
        }
        throw lastError
    }

    /// The sentinels' configuration at the `attempt`th sentinel, in turn: for a subscription to their events.
    func sentinel(attempt: Int) -> RedisConfiguration {
        sentinel.node(sentinels[attempt % sentinels.count])
    }

    /// The new primary a `+switch-master` message (`NAME OLD-IP OLD-PORT NEW-IP NEW-PORT`) announces for this
    /// primary's name; `nil` for another name or a malformed message.
    func switchedPrimary(_ message: RedisMessage) -> RedisConfiguration.Endpoint? {
        let parts = message.text.split(separator: " ")
        guard parts.count == 5, parts[0] == primaryName, let port = Int(parts[4]) else { return nil }
        return .tcp(host: String(parts[3]), port: port)
    }
}
