import FuseboxTestKit
import Testing
import TestKinds

@testable import Hiredis

@Suite("Redis pub/sub subscriber", .kind(.integration), .timeLimit(.minutes(1)))
struct RedisSubscriberTests {
    @Test("messages on channels and patterns, then a restart: disconnected, reconnected, resubscribed")
    func reconnectsAfterRestart() async throws {
        try await RedisServerProcess.with { server in
            let subscriber = try RedisSubscriber(
                configuration: server.configuration(connectTimeout: .milliseconds(300), commandTimeout: .milliseconds(300)),
                channels: ["news"], patterns: ["alerts:*"], healthCheckInterval: .milliseconds(100))
            let runner = Task { await subscriber.run() }
            defer { runner.cancel() }
            var events = subscriber.events.makeAsyncIterator()

            #expect(try await next(&events) { if case .subscribed = $0 { true } else { false } })
            let publisher = try RedisClient(configuration: server.configuration())
            _ = try await publisher.send("PUBLISH", "news", "hello")
            _ = try await publisher.send("PUBLISH", "alerts:disk", [0, 1, 2] as [UInt8])
            let first = try await nextMessage(&events)
            #expect(first == RedisMessage(channel: "news", payload: Array("hello".utf8)))
            let second = try await nextMessage(&events)
            #expect(second == RedisMessage(channel: "alerts:disk", pattern: "alerts:*", payload: [0, 1, 2]))

            try await server.restart()
            #expect(try await next(&events) { if case .disconnected = $0 { true } else { false } })
            #expect(try await next(&events) { if case .reconnected = $0 { true } else { false } })
            _ = try await eventually { try await publisher.send("PUBLISH", "news", "after") }
            #expect(try await nextMessage(&events).text == "after")
        }
    }

    @Test("a frozen server is noticed by the health-check ping")
    func frozenServerNoticed() async throws {
        try await RedisServerProcess.with { server in
            let subscriber = try RedisSubscriber(
                configuration: server.configuration(connectTimeout: .milliseconds(200), commandTimeout: .milliseconds(200)),
                channels: ["c"], healthCheckInterval: .milliseconds(100))
            let runner = Task { await subscriber.run() }
            defer { runner.cancel() }
            var events = subscriber.events.makeAsyncIterator()
            #expect(try await next(&events) { if case .subscribed = $0 { true } else { false } })
            server.pause()
            let started = ContinuousClock.now
            #expect(try await next(&events) { event in
                if case .disconnected(let error) = event { error.code == .timeout } else { false }
            })
            // One interval and one timeout (300 ms), plus a margin for a loaded machine running the suites in parallel.
            #expect(ContinuousClock.now - started < .seconds(2))
            server.resume()
            #expect(try await next(&events) { if case .reconnected = $0 { true } else { false } })
        }
    }

    @Test("pingNow() sends a ping at once; setHealthCheckInterval changes how often it pings by itself")
    func drivenAndRetimedPings() async throws {
        try await RedisServerProcess.with { server in
            // An hour: no ping comes by itself during the test until the interval is changed.
            let subscriber = try RedisSubscriber(configuration: server.configuration(), channels: ["c"], healthCheckInterval: .seconds(3600))
            let runner = Task { await subscriber.run() }
            defer { runner.cancel() }
            var events = subscriber.events.makeAsyncIterator()
            #expect(try await next(&events) { if case .subscribed = $0 { true } else { false } })
            let admin = try RedisClient(configuration: server.configuration())
            func pings() async throws -> Int {
                let stats = try await admin.send("INFO", "commandstats").string ?? ""
                guard let line = stats.split(separator: "\r\n").first(where: { $0.hasPrefix("cmdstat_ping:") }),
                    let calls = line.split(separator: ",").first?.split(separator: "=").last else { return 0 }
                return Int(calls) ?? 0
            }
            func waitUntil(_ condition: () async throws -> Bool) async throws -> Bool {
                let deadline = ContinuousClock.now + .seconds(5)
                while ContinuousClock.now < deadline {
                    if try await condition() { return true }
                    try await Task.sleep(for: .milliseconds(20))
                }
                return try await condition()
            }
            let before = try await pings()  // the test kit's own, made while starting the server
            subscriber.pingNow()
            #expect(try await waitUntil { try await pings() == before + 1 })
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await pings() == before + 1, "one ping per request")

            subscriber.setHealthCheckInterval(.milliseconds(50))
            #expect(subscriber.healthCheckInterval == .milliseconds(50))
            // The hour-long wait ends at the next pong, which a request brings; from then on it pings by itself.
            subscriber.pingNow()
            #expect(try await waitUntil { try await pings() >= before + 6 })
        }
    }

    @Test("subscribe() adds a channel while running; cancellation ends run() and the event stream")
    func dynamicSubscribeAndCancel() async throws {
        try await RedisServerProcess.with { server in
            let subscriber = try RedisSubscriber(configuration: server.configuration())
            let runner = Task { await subscriber.run() }
            var events = subscriber.events.makeAsyncIterator()
            #expect(try await next(&events) { if case .subscribed = $0 { true } else { false } })
            subscriber.subscribe(["late"])
            let publisher = try RedisClient(configuration: server.configuration())
            // The SUBSCRIBE goes out asynchronously: publish until a subscriber receives it.
            let deadline = ContinuousClock.now + .seconds(3)
            while try await publisher.send("PUBLISH", "late", "x").int == 0 && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(try await nextMessage(&events).channel == "late")
            runner.cancel()
            await runner.value
            var remaining = 0
            while await events.next() != nil { remaining += 1 }
            #expect(remaining < 10)
        }
    }
}

/// The next event matching `predicate`, waiting at most 5 s; events before it are skipped.
func next(
    _ events: inout AsyncStream<SubscriberEvent>.Iterator, _ predicate: (SubscriberEvent) -> Bool
) async throws -> Bool {
    let deadline = ContinuousClock.now + .seconds(5)
    while ContinuousClock.now < deadline {
        guard let event = await events.next() else { return false }
        if predicate(event) { return true }
    }
    return false
}

func nextMessage(_ events: inout AsyncStream<SubscriberEvent>.Iterator) async throws -> RedisMessage {
    while let event = await events.next() {
        if case .message(let message) = event { return message }
    }
    throw RedisError(code: .connectionClosed, message: "the event stream ended")
}
