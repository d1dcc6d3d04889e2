import Dispatch
import FuseboxLocking

/// The Redis Cluster side of a ``RedisClient``: the slot map, one ``CommandLoop`` per node, and the redirections.
///
/// - The slot map is asked of the seeds (then of every node it names) with `CLUSTER SHARDS`, or `CLUSTER SLOTS`
///   where that is unknown. Commands wait for the first map; later refreshes never hold a command back.
/// - A command goes to the primary serving its key's slot, on that node's own loop (its own thread, automatic
///   pipelining); a pipeline is split per node and its replies put back in order.
/// - `MOVED`: the command is sent again to the named node at once, that slot is remembered, and the map is asked
///   again. `ASK`: sent again once, after `ASKING`, to the named node. At most ``redirectLimit`` redirections.
/// - `TRYAGAIN`, `CLUSTERDOWN` and a slot no live node serves (a failover in progress): sent again after a pause
///   (10 ms doubling to 200 ms) until the command's deadline, ``RedisConfiguration/commandTimeout`` after it was
///   submitted; then the last error reply is delivered.
/// - A connection that fails (a node died) fails what was in flight on it, as a single server's connection does
///   (callers may retry), and the map is asked again: after a failover the replica that took over is found.
/// - Scripts: `NOSCRIPT` from one node (restarted, flushed, just promoted) loads the script there and runs it again.
///
/// Refreshes are spaced by ``refreshSpacing``; one asked for sooner is run when the spacing allows.
final class ClusterRouter: Sendable {
    typealias Endpoint = RedisConfiguration.Endpoint

    /// The most redirections one command follows.
    static let redirectLimit = 5
    /// The least time between two asks for the slot map.
    static let refreshSpacing = Duration.milliseconds(100)

    private struct State {
        var map: ClusterSlotMap?
        var anyPrimary: Endpoint?
        /// Slots a `MOVED` answer moved since the map was last asked for.
        var moved: [Int: Endpoint] = [:]
        var links: [Endpoint: CommandLoop] = [:]
        /// Every node ever heard of, seeds first: where the map is asked for when the known primaries do not answer.
        var known: [Endpoint]
        /// What waits for the first map.
        var waiting: [@Sendable (RedisError?) -> Void] = []
        var isRefreshing = false
        var isRefreshScheduled = false
        var lastRefresh: ContinuousClock.Instant?
        var isShutDown = false
    }

    /// One command, or one script call, on its way to the node that serves its slot.
    private struct Routed: Sendable {
        var command: RedisCommand?
        /// For a script call: the script, and `numkeys key… argument…`.
        var script: (RedisScript, [any RedisArgument])?
        let slot: Int?
        let deadline: ContinuousClock.Instant
        var redirects = 0
        var pauses = 0
        /// Gets the reply, an error reply in place, or the failure of the connection.
        let completion: @Sendable (Result<RESPValue, RedisError>) -> Void
    }

    private enum Route {
        case node(Endpoint)
        case waitForMap
        case uncovered(Int)
    }

    let configuration: RedisConfiguration
    private let state: Locked<State>

    init(configuration: RedisConfiguration) {
        self.configuration = configuration
        let seeds: [Endpoint] = if case .cluster(let seeds) = configuration.topology { seeds } else { [configuration.endpoint] }
        self.state = Locked(State(known: seeds))
    }

    /// Closes every node's connection; what waits for the map fails.
    func shutdown() {
        let (links, waiting) = state.withLock { state in
            state.isShutDown = true
            defer { state.waiting = [] }
            return (Array(state.links.values), state.waiting)
        }
        for link in links { link.shutdown() }
        let error = RedisError(code: .connectionClosed, message: "the connection was closed", endpoint: configuration.endpoint.description)
        for body in waiting { body(error) }
    }

    /// Reads the slot map now (if none is being read), and waits for it.
    func refreshedMap() async throws(RedisError) -> ClusterSlotMap {
        let error: RedisError? = await withCheckedContinuation { continuation in
            let wait: @Sendable (RedisError?) -> Void = { continuation.resume(returning: $0) }
            state.withLock { $0.waiting.append(wait) }
            refresh(now: true)
        }
        if let error { throw error }
        guard let map = state.withLock({ $0.map }) else {
            throw RedisError(code: .connectionFailed, message: "no node answered with the slot map")
        }
        return map
    }

    // MARK: - Commands

    /// Sends `commands`, each to the node serving its key (a command without a key goes with the pipeline's first
    /// keyed command, or to any primary), and delivers every reply in order, error replies in place.
    func submit(_ commands: [RedisCommand], completion: @escaping @Sendable (Result<[RESPValue], RedisError>) -> Void) {
        let deadline = ContinuousClock.now + configuration.commandTimeout
        let anchor = commands.lazy.compactMap(\.slot).first
        let gather = Gather(count: commands.count, completion: completion)
        var groups: [(Endpoint, [Int])] = []
        for (index, command) in commands.enumerated() {
            let routed = Routed(command: command, slot: command.slot ?? anchor, deadline: deadline) { gather.set(index, $0) }
            guard case .node(let endpoint) = route(routed.slot) else {
                execute(routed)
                continue
            }
            if let group = groups.firstIndex(where: { $0.0 == endpoint }) {
                groups[group].1.append(index)
            } else {
                groups.append((endpoint, [index]))
            }
        }
        for (endpoint, indices) in groups {
            var bytes: [UInt8] = []
            for index in indices { bytes += commands[index].encoded }
            send(bytes, replyCount: indices.count, to: endpoint, failing: { error in gather.fail(error) }) { [self] replies in
                for (index, reply) in zip(indices, replies) {
                    let command = commands[index]
                    handle(reply, of: Routed(command: command, slot: command.slot ?? anchor, deadline: deadline) { gather.set(index, $0) },
                           from: endpoint, asking: false, loaded: false)
                }
            }
        }
    }

    /// Runs a script on the node serving its first key (any primary without keys); delivers its reply, an error
    /// reply as ``RedisError/Code/serverError``.
    func submit(
        _ script: RedisScript, keys: [String], arguments: [any RedisArgument],
        completion: @escaping @Sendable (Result<RESPValue, RedisError>) -> Void
    ) {
        let tail: [any RedisArgument] = [keys.count] + keys + arguments
        execute(Routed(
            script: (script, tail), slot: keys.first.map { ClusterSlot.of(key: $0) },
            deadline: .now + configuration.commandTimeout
        ) { result in
            completion(result.flatMap { reply in Result { () throws(RedisError) in try reply.get() } })
        })
    }

    private func route(_ slot: Int?) -> Route {
        state.withLock { state in
            guard let map = state.map else { return .waitForMap }
            guard let slot else { return state.anyPrimary.map(Route.node) ?? .uncovered(0) }
            if let moved = state.moved[slot] { return .node(moved) }
            return map.primary(forSlot: slot).map(Route.node) ?? .uncovered(slot)
        }
    }

    private func execute(_ routed: Routed, to target: Endpoint? = nil, asking: Bool = false, load: Bool = false) {
        let endpoint: Endpoint
        if let target {
            endpoint = target
        } else {
            switch route(routed.slot) {
            case .node(let found):
                endpoint = found
            case .waitForMap:
                whenMapKnown { [self] error in
                    if let error { routed.completion(.failure(error)) } else { execute(routed) }
                }
                return
            case .uncovered(let slot):
                refresh()
                pause(routed, reply: .error("CLUSTERDOWN no live primary serves slot \(slot) in the slot map last read"))
                return
            }
        }
        var commands: [RedisCommand] = []
        var loadIndex: Int?
        if let (script, tail) = routed.script {
            if load {
                loadIndex = 0
                commands.append(RedisCommand("SCRIPT", "LOAD", script.source))
            }
            if asking { commands.append(RedisCommand("ASKING")) }
            commands.append(RedisCommand("EVALSHA", arguments: [script.sha1] + tail))
        } else if let command = routed.command {
            if asking { commands.append(RedisCommand("ASKING")) }
            commands.append(command)
        }
        send(commands.flatMap(\.encoded), replyCount: commands.count, to: endpoint, failing: { routed.completion(.failure($0)) }) { [self, loadIndex] replies in
            if let loadIndex, let (script, _) = routed.script {
                do throws(RedisError) {
                    try script.check(loadReply: try replies[loadIndex].get(endpoint: endpoint.description), endpoint: endpoint.description)
                } catch {
                    return routed.completion(.failure(error))
                }
            }
            handle(replies[replies.count - 1], of: routed, from: endpoint, asking: asking, loaded: loadIndex != nil)
        }
    }

    /// Follows a redirection, pauses on a transient cluster state, loads a script the node lacks; otherwise delivers.
    private func handle(_ reply: RESPValue, of routed: Routed, from endpoint: Endpoint, asking: Bool, loaded: Bool) {
        guard case .error(let message) = reply else { return routed.completion(.success(reply)) }
        if let redirect = ClusterRedirect(errorMessage: message), routed.redirects < Self.redirectLimit {
            var redirected = routed
            redirected.redirects += 1
            let next = redirected
            switch redirect.kind {
            case .moved:
                // Sent before the slot is remembered: a later command of this slot cannot overtake it.
                execute(next, to: redirect.endpoint)
                state.withLock { $0.moved[redirect.slot] = redirect.endpoint }
                refresh()
            case .ask:
                execute(next, to: redirect.endpoint, asking: true)
            }
            return
        }
        if message.hasPrefix("TRYAGAIN") || message.hasPrefix("CLUSTERDOWN") {
            if message.hasPrefix("CLUSTERDOWN") { refresh() }
            return pause(routed, reply: reply)
        }
        if message.hasPrefix("NOSCRIPT"), routed.script != nil, !loaded {
            return execute(routed, to: endpoint, asking: asking, load: true)
        }
        routed.completion(.success(reply))
    }

    /// Sends the command again after a pause, or delivers `reply` when the pause would pass its deadline.
    private func pause(_ routed: Routed, reply: RESPValue) {
        var paused = routed
        paused.pauses += 1
        let next = paused
        let delay = Duration.milliseconds(min(200, 10 << min(routed.pauses, 5)))
        guard ContinuousClock.now + delay < routed.deadline else { return routed.completion(.success(reply)) }
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(Int(delay.pollMilliseconds))) { [self] in
            execute(next)
        }
    }

    private func send(
        _ bytes: [UInt8], replyCount: Int, to endpoint: Endpoint, failing: @escaping @Sendable (RedisError) -> Void,
        replies: @escaping @Sendable ([RESPValue]) -> Void
    ) {
        let loop: CommandLoop
        do { loop = try link(endpoint) } catch { return failing(error) }
        loop.submit(CommandLoop.Request(bytes: bytes, replyCount: replyCount) { [self] result in
            switch result {
            case .success(let values):
                replies(values)
            case .failure(let error):
                // The node may have died: its replica takes over in the map that the cluster reports next.
                if error.mayBeRetried { refresh() }
                failing(error)
            }
        })
    }

    private func link(_ endpoint: Endpoint) throws(RedisError) -> CommandLoop {
        if let existing = state.withLock({ $0.links[endpoint] }) { return existing }
        let made = try CommandLoop(configuration: configuration.node(endpoint))
        let (link, isShutDown) = state.withLock { state in
            if let existing = state.links[endpoint] { return (existing, state.isShutDown) }
            state.links[endpoint] = made
            return (made, state.isShutDown)
        }
        if isShutDown { link.shutdown() }
        return link
    }

    // MARK: - The slot map

    private func whenMapKnown(_ body: @escaping @Sendable (RedisError?) -> Void) {
        let isKnown = state.withLock { state in
            if state.map != nil { return true }
            state.waiting.append(body)
            return false
        }
        if isKnown { body(nil) } else { refresh(now: true) }
    }

    /// Asks for the slot map, unless an ask is under way; `now` skips the spacing (before the first map, and when
    /// a caller waits for it).
    private func refresh(now: Bool = false) {
        enum Next { case nothing, start([Endpoint]), later(Duration) }
        let next: Next = state.withLock { state in
            if state.isShutDown || state.isRefreshing { return .nothing }
            if !now, state.map != nil, let last = state.lastRefresh {
                let since = last.duration(to: .now)
                if since < Self.refreshSpacing {
                    if state.isRefreshScheduled { return .nothing }
                    state.isRefreshScheduled = true
                    return .later(Self.refreshSpacing - since)
                }
            }
            state.isRefreshing = true
            var candidates: [Endpoint] = []
            for endpoint in (state.map?.ranges.flatMap { [$0.primary] + $0.replicas } ?? []) + state.known where !candidates.contains(endpoint) {
                candidates.append(endpoint)
            }
            return .start(candidates)
        }
        switch next {
        case .nothing: break
        case .start(let candidates): ask(candidates, from: 0, lastError: nil)
        case .later(let delay):
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(Int(max(1, delay.pollMilliseconds)))) { [self] in
                state.withLock { $0.isRefreshScheduled = false }
                refresh()
            }
        }
    }

    /// Asks `candidates[index]` for the map, then the next ones until one answers.
    private func ask(_ candidates: [Endpoint], from index: Int, lastError: RedisError?) {
        guard index < candidates.count else {
            return installed(nil, error: lastError ?? RedisError(code: .connectionFailed, message: "no cluster node is known"))
        }
        let endpoint = candidates[index]
        let next: @Sendable (RedisError) -> Void = { [self] error in ask(candidates, from: index + 1, lastError: error) }
        send(RedisCommand("CLUSTER", "SHARDS").encoded, replyCount: 1, to: endpoint, failing: next) { [self] replies in
            if case .error = replies[0] {
                // Before Redis 7.0: CLUSTER SLOTS.
                send(RedisCommand("CLUSTER", "SLOTS").encoded, replyCount: 1, to: endpoint, failing: next) { [self] replies in
                    do throws(RedisError) { installed(try ClusterSlotMap(slots: try replies[0].get(endpoint: endpoint.description)), error: nil) } catch { next(error) }
                }
                return
            }
            do throws(RedisError) { installed(try ClusterSlotMap(shards: replies[0]), error: nil) } catch { next(error) }
        }
    }

    private func installed(_ map: ClusterSlotMap?, error: RedisError?) {
        let waiting = state.withLock { state in
            state.isRefreshing = false
            state.lastRefresh = .now
            if let map {
                state.map = map
                state.anyPrimary = map.primaries.first
                state.moved = [:]
                for range in map.ranges {
                    for endpoint in [range.primary] + range.replicas where !state.known.contains(endpoint) { state.known.append(endpoint) }
                }
            }
            defer { state.waiting = [] }
            return state.waiting
        }
        for body in waiting { body(map == nil ? error : nil) }
    }
}

/// Collects the replies of a pipeline split over nodes, and delivers them once, in order.
private final class Gather: Sendable {
    private struct Slots {
        var values: [RESPValue?]
        var remaining: Int
        var isDone = false
    }

    private let slots: Locked<Slots>
    private let completion: @Sendable (Result<[RESPValue], RedisError>) -> Void

    init(count: Int, completion: @escaping @Sendable (Result<[RESPValue], RedisError>) -> Void) {
        self.slots = Locked(Slots(values: Array(repeating: nil, count: count), remaining: count))
        self.completion = completion
    }

    func set(_ index: Int, _ result: Result<RESPValue, RedisError>) {
        guard case .success(let value) = result else {
            if case .failure(let error) = result { fail(error) }
            return
        }
        let done: [RESPValue]? = slots.withLock { slots in
            guard !slots.isDone, slots.values[index] == nil else { return nil }
            slots.values[index] = value
            slots.remaining -= 1
            guard slots.remaining == 0 else { return nil }
            slots.isDone = true
            return slots.values.map { $0! }
        }
        if let done { completion(.success(done)) }
    }

    /// Fails the whole pipeline, as a lost connection fails a single server's pipeline.
    func fail(_ error: RedisError) {
        let first = slots.withLock { slots in
            defer { slots.isDone = true }
            return !slots.isDone
        }
        if first { completion(.failure(error)) }
    }
}
