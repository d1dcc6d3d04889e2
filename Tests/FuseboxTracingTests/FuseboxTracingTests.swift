import Fusebox
import FuseboxRedis
import FuseboxTestKit
import FuseboxTracing
import InMemoryTracing
import Logging
import Testing
import TestKinds
import Tracing

struct Unavailable: Error {}

func tripsOnFirstFailure(breakFor duration: Duration = .seconds(30)) -> BreakerPolicy {
    var policy = BreakerPolicy()
    policy.failureRateThreshold = nil
    policy.consecutiveFailureThreshold = 1
    policy.breakDuration = .fixed(duration)
    return policy
}

/// The span's attribute `name` as text (strings, integers and booleans).
func attribute(_ attributes: SpanAttributes, _ name: String) -> String? {
    switch attributes[name]?.toSpanAttribute() {
    case .string(let text): text
    case .int64(let number): String(number)
    case .bool(let flag): String(flag)
    case .none: nil
    default: "?"
    }
}

@Suite("Tracing: the breaker's attributes and events on the caller's active span", .kind(.integration), .serialized, .timeLimit(.minutes(1)))
struct FuseboxTracingTests {
    init() { FuseboxTracing.install() }

    @Test("no span is created by Fusebox; inside one, an admitted call gets the breaker's name, adapter, state and probe")
    func admittedCall() async throws {
        let tracer = InMemoryTracer()
        let registry = BreakerRegistry(adapter: LocalAdapter())
        let breaker = try registry.breaker("search", policy: tripsOnFirstFailure())
        try await withTracer(tracer) {
            _ = try await breaker.run { 1 }
            #expect(tracer.activeSpans.isEmpty && tracer.finishedSpans.isEmpty, "Fusebox makes no span of its own")
            try await withSpan("GET /search") { _ in _ = try await breaker.run { 2 } }
        }
        let span = try #require(tracer.finishedSpans.first)
        #expect(tracer.finishedSpans.count == 1)
        #expect(attribute(span.attributes, "fusebox.breaker.name") == "search")
        #expect(attribute(span.attributes, "fusebox.breaker.adapter") == "local")
        #expect(attribute(span.attributes, "fusebox.breaker.state") == "closed")
        #expect(attribute(span.attributes, "fusebox.breaker.probe") == "false")
        #expect(span.events.isEmpty)
    }

    @Test("a trip adds a transition event; a rejection an event with the state and retry-after; a probe is marked; its success closes with an event")
    func tripRejectionProbe() async throws {
        let tracer = InMemoryTracer()
        let registry = BreakerRegistry(adapter: LocalAdapter())
        let breaker = try registry.breaker("payments", policy: tripsOnFirstFailure(breakFor: .milliseconds(200)))
        try await withTracer(tracer) {
            await withSpan("charge 1") { _ in _ = try? await breaker.run { throw Unavailable() } }
            await withSpan("charge 2") { _ in _ = try? await breaker.run { 1 } }
            try await Task.sleep(for: .milliseconds(250))
            try await withSpan("charge 3") { _ in _ = try await breaker.run { 1 } }
        }
        let spans = Dictionary(uniqueKeysWithValues: tracer.finishedSpans.map { ($0.operationName, $0) })
        let tripped = try #require(spans["charge 1"])
        #expect(tripped.events.map(\.name) == ["fusebox.transition"])
        #expect(attribute(tripped.events[0].attributes, "fusebox.transition.from") == "closed")
        #expect(attribute(tripped.events[0].attributes, "fusebox.transition.to") == "open")
        #expect(attribute(tripped.events[0].attributes, "fusebox.transition.reason")?.contains("consecutive failures") == true)

        let rejected = try #require(spans["charge 2"])
        let event = try #require(rejected.events.first { $0.name == "fusebox.rejected" })
        #expect(attribute(event.attributes, "fusebox.breaker.state") == "open")
        #expect(attribute(event.attributes, "fusebox.rejection.code") == "circuit open")
        #expect(attribute(event.attributes, "fusebox.retry_after_ms").flatMap(Int.init).map { $0 > 0 && $0 <= 200 } == true)
        #expect(attribute(rejected.attributes, "fusebox.breaker.state") == "open")

        let probe = try #require(spans["charge 3"])
        #expect(attribute(probe.attributes, "fusebox.breaker.probe") == "true")
        #expect(attribute(probe.attributes, "fusebox.breaker.state") == "half_open")
        #expect(probe.events.contains { $0.name == "fusebox.transition" && attribute($0.attributes, "fusebox.transition.to") == "closed" })
    }

    @Test("with the distributed adapter the span says so; after uninstall nothing is added")
    func distributedAndUninstall() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.kill() }
        var options = DistributedOptions(redis: server.configuration())
        options.namespace = "trace\(UInt32.random(in: 0...UInt32.max))"
        let registry = BreakerRegistry(adapter: try DistributedAdapter(options: options, logger: Logger(label: "test")))
        let running = Task { try? await registry.run() }
        defer { running.cancel() }
        let breaker = try registry.breaker("ledger", policy: tripsOnFirstFailure())
        let tracer = InMemoryTracer()
        try await withTracer(tracer) {
            try await withSpan("post ledger") { _ in _ = try await breaker.run { 1 } }
            FuseboxTracing.uninstall()
            try await withSpan("untraced") { _ in _ = try await breaker.run { 1 } }
            FuseboxTracing.install()
        }
        let spans = Dictionary(uniqueKeysWithValues: tracer.finishedSpans.map { ($0.operationName, $0) })
        #expect(attribute(try #require(spans["post ledger"]).attributes, "fusebox.breaker.adapter") == "distributed")
        #expect(attribute(try #require(spans["untraced"]).attributes, "fusebox.breaker.name") == nil)
    }
}
