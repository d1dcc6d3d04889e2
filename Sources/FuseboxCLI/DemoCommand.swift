import ArgumentParser
import FuseboxTestKit
import Hiredis

/// `fusebox demo`: a short, real run against a private redis-server.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run the demo against a private redis-server (started on a free port and stopped after)."
    )

    func run() async throws {
        let server: RedisServerProcess
        do {
            server = try await RedisServerProcess.start()
        } catch {
            print("fusebox demo: \(error)")
            throw ExitCode(69)
        }
        defer { server.kill() }
        print("redis-server started on \(server.url)")

        let redis = try RedisConnection(configuration: server.configuration())
        let subscriber = try RedisSubscriber(configuration: server.configuration(), channels: ["fusebox:transitions"])
        let listener = Task { await subscriber.run() }
        defer { listener.cancel() }

        // One script decides and publishes atomically, with Redis' own clock: the pattern every breaker uses.
        let trip = RedisScript("""
            local t = redis.call('TIME')
            local now = t[1] * 1000 + math.floor(t[2] / 1000)
            local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
            if failures == tonumber(ARGV[1]) then
              redis.call('HSET', KEYS[1], 'state', 'open', 'since', now)
              redis.call('PUBLISH', 'fusebox:transitions', 'demo open ' .. now)
            end
            return failures
            """)
        var events = subscriber.events.makeAsyncIterator()
        guard case .subscribed? = await events.next() else { throw ExitCode(69) }
        for attempt in 1...3 {
            let failures = try await redis.run(trip, keys: ["fusebox:{demo}:state"], arguments: [3]).decodeInt()
            print("failure \(attempt) recorded: \(failures) in total")
        }
        while let event = await events.next() {
            if case .message(let message) = event {
                print("transition message on \(message.channel): \(message.text)")
                break
            }
        }
        let state = try await redis.send("HGETALL", "fusebox:{demo}:state").decodeDictionary()
        print("fusebox:{demo}:state = \(state.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))")
        await server.stop()
    }
}
