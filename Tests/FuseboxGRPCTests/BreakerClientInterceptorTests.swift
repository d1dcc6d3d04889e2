import Foundation
import Fusebox
import FuseboxGRPC
import FuseboxLocking
import FuseboxRedis
import FuseboxTestKit
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import Testing
import TestKinds

/// Messages as UTF-8 text: the test service needs no protocol buffers.
struct TextCoder: MessageSerializer, MessageDeserializer {
    func serialize<Bytes: GRPCContiguousBytes>(_ message: String) throws -> Bytes { Bytes(Array(message.utf8)) }
    func deserialize<Bytes: GRPCContiguousBytes>(_ bytes: Bytes) throws -> String {
        bytes.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
    }
}

/// A small service, written as generated code would be: `fusebox.test.Quotes/Get` (unary) and
/// `fusebox.test.Quotes/Watch` (server streaming: three messages, then the status set for it).
final class QuotesService: RegistrableRPCService {
    static let get = MethodDescriptor(fullyQualifiedService: "fusebox.test.Quotes", method: "Get")
    static let watch = MethodDescriptor(fullyQualifiedService: "fusebox.test.Quotes", method: "Watch")
    static let other = MethodDescriptor(fullyQualifiedService: "fusebox.test.Ledger", method: "Get")

    /// The status each method answers with (`nil`: ok), and how many calls reached each.
    let failWith = Locked<[String: RPCError.Code]>([:])
    let calls = Locked<[String: Int]>([:])

    func answer(_ method: String) throws {
        calls.withLock { $0[method, default: 0] += 1 }
        if let code = failWith.withLock({ $0[method] }) { throw RPCError(code: code, message: "\(method) fails on purpose") }
    }

    func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        for descriptor in [Self.get, Self.other] {
            router.registerHandler(forMethod: descriptor, deserializer: TextCoder(), serializer: TextCoder()) { request, _ in
                StreamingServerResponse { writer in
                    for try await _ in request.messages {}
                    try self.answer(descriptor.fullyQualifiedMethod)
                    try await writer.write("quote")
                    return [:]
                }
            }
        }
        router.registerHandler(forMethod: Self.watch, deserializer: TextCoder(), serializer: TextCoder()) { request, _ in
            StreamingServerResponse { writer in
                for try await _ in request.messages {}
                for index in 0..<3 { try await writer.write("tick \(index)") }
                try self.answer(Self.watch.fullyQualifiedMethod)
                return [:]
            }
        }
    }
}

/// A server on a free loopback port and a client through the interceptor.
struct Fixture {
    let service = QuotesService()
    let server: GRPCServer<HTTP2ServerTransport.Posix>
    let serving: Task<Void, any Error>
    let port: Int

    init() async throws {
        let service = self.service
        server = GRPCServer(transport: .http2NIOPosix(address: .ipv4(host: "127.0.0.1", port: 0), transportSecurity: .plaintext), services: [service])
        let server = self.server
        serving = Task { try await server.serve() }
        port = try #require(try await server.listeningAddress?.ipv4).port
    }

    func client(_ interceptor: BreakerClientInterceptor) throws -> (GRPCClient<HTTP2ClientTransport.Posix>, Task<Void, any Error>) {
        let client = GRPCClient(
            transport: try .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext),
            interceptors: [interceptor])
        return (client, Task { try await client.runConnections() })
    }

    func stop() {
        server.beginGracefulShutdown()
        serving.cancel()
    }
}

func tripsAfter(_ failures: Int) -> BreakerPolicy {
    var policy = BreakerPolicy()
    policy.failureRateThreshold = nil
    policy.consecutiveFailureThreshold = failures
    policy.breakDuration = .fixed(.seconds(30))
    return policy
}

func get(_ client: GRPCClient<HTTP2ClientTransport.Posix>, _ method: MethodDescriptor = QuotesService.get) async throws -> String {
    try await client.unary(
        request: ClientRequest(message: "AAPL"), descriptor: method, serializer: TextCoder(), deserializer: TextCoder(), options: .defaults
    ) { try $0.message }
}

func code(of operation: () async throws -> Void) async -> RPCError.Code? {
    do {
        try await operation()
        return nil
    } catch let error as RPCError {
        return error.code
    } catch {
        return .unknown
    }
}

// README: grpc (begin)
/// A gRPC client whose calls each go through their service's breaker (shared by every instance with the distributed
/// adapter): unavailable, deadlineExceeded, resourceExhausted, internal and unknown count as failures.
func makeQuotesClient(registry: BreakerRegistry, port: Int) throws -> GRPCClient<HTTP2ClientTransport.Posix> {
    GRPCClient(
        transport: try .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext),
        interceptors: [try BreakerClientInterceptor(registry: registry)])
}
// Run it with `try await client.runConnections()` in a task; an open circuit answers RPCError(code: .unavailable).
// README: grpc (end)

let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

@Suite("gRPC: a breaker per service in a client interceptor", .kind(.integration), .timeLimit(.minutes(2)))
struct BreakerClientInterceptorTests {
    @Test("unavailable trips the service's breaker, not another service's; open, no call reaches the server and the caller sees unavailable with the breaker's message; notFound counts as an answer")
    func breakerPerService() async throws {
        let fixture = try await Fixture()
        defer { fixture.stop() }
        let registry = BreakerRegistry(adapter: LocalAdapter())
        var options = BreakerClientInterceptor.Options()
        options.policy = tripsAfter(3)
        let (client, running) = try fixture.client(try BreakerClientInterceptor(registry: registry, options: options))
        defer { client.beginGracefulShutdown(); running.cancel() }

        #expect(try await get(client) == "quote")
        fixture.service.failWith.withLock { $0["fusebox.test.Quotes/Get"] = .unavailable }
        for _ in 0..<3 { #expect(await code { _ = try await get(client) } == .unavailable) }
        let reached = fixture.service.calls.withLock { $0["fusebox.test.Quotes/Get"] ?? 0 }
        do {
            _ = try await get(client)
            Issue.record("admitted while open")
        } catch let error as RPCError {
            #expect(error.code == .unavailable)
            #expect(error.message.contains("circuit 'grpc:fusebox.test.Quotes' is OPEN"), "\(error.message)")
            let cause = try #require(error.cause as? FuseboxError)
            #expect(cause.breakerName == "grpc:fusebox.test.Quotes" && cause.retryAfter != nil)
        }
        #expect(fixture.service.calls.withLock { $0["fusebox.test.Quotes/Get"] ?? 0 } == reached, "no call while open")

        // Another service has its own breaker; a status that is an answer (notFound) is a success.
        fixture.service.failWith.withLock { $0["fusebox.test.Ledger/Get"] = .notFound }
        for _ in 0..<5 { #expect(await code { _ = try await get(client, QuotesService.other) } == .notFound) }
        let ledger = try await registry.breaker("grpc:fusebox.test.Ledger", policy: tripsAfter(3)).snapshot()
        #expect(ledger.state == .closed && ledger.totals.successes == 5 && ledger.totals.failures == 0, "\(ledger.totals)")
        let quotes = try await registry.breaker("grpc:fusebox.test.Quotes", policy: tripsAfter(3)).snapshot()
        #expect(quotes.state == .open && quotes.errorCounts["StatusFailure"] == 3, "\(quotes.errorCounts)")
    }

    @Test("a server-streaming call counts once, when it ends: three messages then unavailable is one failure; per-method breakers on request")
    func streamingCountsOnce() async throws {
        let fixture = try await Fixture()
        defer { fixture.stop() }
        let registry = BreakerRegistry(adapter: LocalAdapter())
        var options = BreakerClientInterceptor.Options()
        options.policy = tripsAfter(100)
        options.scope = .method
        let (client, running) = try fixture.client(try BreakerClientInterceptor(registry: registry, options: options))
        defer { client.beginGracefulShutdown(); running.cancel() }

        func watch() async throws -> [String] {
            try await client.serverStreaming(
                request: ClientRequest(message: "AAPL"), descriptor: QuotesService.watch, serializer: TextCoder(), deserializer: TextCoder(),
                options: .defaults
            ) { response in
                var messages: [String] = []
                for try await message in response.messages { messages.append(message) }
                return messages
            }
        }
        #expect(try await watch() == ["tick 0", "tick 1", "tick 2"])
        fixture.service.failWith.withLock { $0["fusebox.test.Quotes/Watch"] = .unavailable }
        #expect(await code { _ = try await watch() } == .unavailable)
        let snapshot = try await registry.breaker("grpc:fusebox.test.Quotes/Watch", policy: tripsAfter(100)).snapshot()
        #expect(snapshot.totals.successes == 1 && snapshot.totals.failures == 1, "one outcome per call: \(snapshot.totals)")
    }

    @Test("with the distributed adapter, two clients (two instances) share a service's breaker")
    func sharedAcrossInstances() async throws {
        let redis = try await RedisServerProcess.start()
        defer { redis.kill() }
        let fixture = try await Fixture()
        defer { fixture.stop() }
        var redisOptions = DistributedOptions(redis: redis.configuration())
        redisOptions.namespace = "grpc\(UInt32.random(in: 0...UInt32.max))"
        func instance(_ id: String) throws -> (BreakerRegistry, Task<Void, Never>) {
            var mine = redisOptions
            mine.instanceID = id
            let registry = BreakerRegistry(adapter: try DistributedAdapter(options: mine, logger: Logger(label: id)))
            return (registry, Task { try? await registry.run() })
        }
        let (first, firstRun) = try instance("one")
        let (second, secondRun) = try instance("two")
        defer { firstRun.cancel(); secondRun.cancel() }
        var options = BreakerClientInterceptor.Options()
        options.policy = tripsAfter(2)
        let (one, oneRunning) = try fixture.client(try BreakerClientInterceptor(registry: first, options: options))
        let (two, twoRunning) = try fixture.client(try BreakerClientInterceptor(registry: second, options: options))
        defer { one.beginGracefulShutdown(); two.beginGracefulShutdown(); oneRunning.cancel(); twoRunning.cancel() }

        #expect(try await get(two) == "quote")
        fixture.service.failWith.withLock { $0["fusebox.test.Quotes/Get"] = .internalError }
        for _ in 0..<2 { _ = await code { _ = try await get(one) } }
        var rejected = false
        for _ in 0..<200 where !rejected {
            do {
                _ = try await get(two)
            } catch let error as RPCError where (error.cause as? FuseboxError)?.code == .circuitOpen {
                rejected = true
            } catch {}
            if !rejected { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(rejected, "the second instance turns calls away once the first tripped the shared breaker")
    }

    @Test("the README shows the code this file runs, and it works")
    func readmeExample() async throws {
        let readme = try String(contentsOf: repositoryRoot.appendingPathComponent("README.md"), encoding: .utf8)
        let shown = try DocumentedCode.lines(of: readme, after: "```swift grpc", before: "```")
        #expect(shown.count > 5)
        #expect(shown == (try DocumentedCode.lines(of: try String(contentsOfFile: #filePath, encoding: .utf8), after: "// README: grpc (begin)", before: "// README: grpc (end)")))

        let fixture = try await Fixture()
        defer { fixture.stop() }
        let registry = BreakerRegistry(adapter: LocalAdapter())
        let client = try makeQuotesClient(registry: registry, port: fixture.port)
        let running = Task { try await client.runConnections() }
        defer { client.beginGracefulShutdown(); running.cancel() }
        #expect(try await get(client) == "quote")
        #expect(try await registry.breaker("grpc:fusebox.test.Quotes").snapshot().totals.successes == 1)
    }

    @Test("bad options get a clear error")
    func badOptions() throws {
        var options = BreakerClientInterceptor.Options()
        options.policy = BreakerPolicy()
        options.policy?.minimumThroughput = 0
        #expect(throws: FuseboxError.self) { _ = try BreakerClientInterceptor(registry: BreakerRegistry(adapter: LocalAdapter()), options: options) }
    }
}
