import AsyncHTTPClient
import Foundation
import Fusebox
import FuseboxLocking
import FuseboxRedis
import FuseboxTestKit
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import Testing
import TestKinds

@testable import FuseboxHTTPClient

/// A Hummingbird server on a free loopback port that answers `GET /any/path` with the status set for it (200
/// until set), and `Retry-After` when one is set; it counts the requests it received per path.
final class DependencyServer: Sendable {
    struct Answer: Sendable {
        var status = 200
        var retryAfter: String?
        /// Answers this many requests so, then 200.
        var times = Int.max
    }

    /// What the handler and the test share (a class: a lock cannot be copied into the handler).
    final class State: Sendable {
        let answers = Locked<[String: Answer]>([:])
        let received = Locked<[String: [ContinuousClock.Instant]]>([:])
    }

    private let state = State()
    private let task: Task<Void, any Error>
    let base: String

    init() async throws {
        let (ports, portSink) = AsyncStream.makeStream(of: Int.self)
        let router = Router()
        let state = self.state
        let handler: @Sendable (Request, BasicRequestContext) async throws -> Response = { request, _ in
            let path = request.uri.path
            state.received.withLock { $0[path, default: []].append(.now) }
            let answer = state.answers.withLock { answers -> Answer in
                var answer = answers[path] ?? Answer()
                if answer.times <= 0 { answer = Answer() } else if answer.times != .max { answers[path]?.times -= 1 }
                return answer
            }
            var headers = HTTPFields()
            if let retryAfter = answer.retryAfter { headers[.retryAfter] = retryAfter }
            return Response(status: .init(code: answer.status), headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: "answer \(answer.status)")))
        }
        router.get("**", use: handler)
        router.post("**", use: handler)
        router.put("**", use: handler)
        let application = Application(
            router: router, configuration: ApplicationConfiguration(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in portSink.yield(channel.localAddress?.port ?? 0) }, logger: Logger(label: "dependency"))
        task = Task { try await application.runService() }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next(), port > 0 else { throw RedisServerProcess.Failure(description: "the dependency did not start") }
        base = "http://127.0.0.1:\(port)"
    }

    func set(_ path: String, _ answer: Answer) { state.answers.withLock { $0[path] = answer } }
    func requests(_ path: String) -> [ContinuousClock.Instant] { state.received.withLock { $0[path] ?? [] } }
    func stop() { task.cancel() }
}

func tripsAfter(_ failures: Int) -> BreakerPolicy {
    var policy = BreakerPolicy()
    policy.failureRateThreshold = nil
    policy.consecutiveFailureThreshold = failures
    policy.breakDuration = .fixed(.seconds(30))
    return policy
}

func clientOptions(_ policy: BreakerPolicy, attempts: Int = 1) -> ResilientHTTPClient.Options {
    var options = ResilientHTTPClient.Options()
    options.policy = policy
    options.retry = RetryPolicy(maxAttempts: attempts, backoff: .constant(.milliseconds(10)))
    return options
}

// README: http client (begin)
/// Calls to the payment providers: a breaker per provider (shared by every instance with the distributed adapter),
/// 5xx, 429 and connect errors counted, idempotent requests retried within the caller's deadline, Retry-After honoured.
func makePaymentsClient(registry: BreakerRegistry) throws -> ResilientHTTPClient {
    var options = ResilientHTTPClient.Options()
    options.breakerName = { request in "payments:" + (URL(string: request.url)?.host ?? "unknown") }
    options.retry = RetryPolicy(maxAttempts: 3, backoff: .exponential(base: .milliseconds(100)))
    return try ResilientHTTPClient(registry: registry, options: options)
}
// In a request: let response = try await payments.execute(HTTPClientRequest(url: "https://psp.example/v1/charges/42"), deadline: .seconds(5))
// README: http client (end)

let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

@Suite("The resilient HTTP client: a breaker per destination over AsyncHTTPClient", .kind(.timingBound), .timeLimit(.minutes(2)))
struct ResilientHTTPClientTests {
    @Test("the README shows the code this file runs, and it works: a provider's breaker, named by the closure")
    func readmeExample() async throws {
        let readme = try String(contentsOf: repositoryRoot.appendingPathComponent("README.md"), encoding: .utf8)
        let source = try String(contentsOfFile: #filePath, encoding: .utf8)
        let shown = try DocumentedCode.lines(of: readme, after: "```swift http-client", before: "```")
        #expect(shown.count > 5)
        #expect(shown == (try DocumentedCode.lines(of: source, after: "// README: http client (begin)", before: "// README: http client (end)")))

        let server = try await DependencyServer()
        defer { server.stop() }
        let registry = BreakerRegistry(adapter: LocalAdapter())
        let payments = try makePaymentsClient(registry: registry)
        server.set("/v1/charges/42", .init(status: 502, times: 1))
        let response = try await payments.execute(HTTPClientRequest(url: server.base + "/v1/charges/42"), deadline: .seconds(5))
        #expect(response.status == .ok, "retried after the 502")
        let snapshot = try await registry.breaker("payments:127.0.0.1").snapshot()
        #expect(snapshot.totals.failures == 1 && snapshot.totals.successes == 1, "\(snapshot.totals)")
    }

    @Test("a host answering 5xx trips its own breaker, not another host's; no request reaches it while open; 404 is a success")
    func breakerPerHost() async throws {
        let failing = try await DependencyServer()
        let healthy = try await DependencyServer()
        defer { failing.stop(); healthy.stop() }
        let client = try ResilientHTTPClient(registry: BreakerRegistry(adapter: LocalAdapter()), options: clientOptions(tripsAfter(3)))
        failing.set("/orders", .init(status: 503))
        for _ in 0..<3 {
            let response = try await client.execute(HTTPClientRequest(url: failing.base + "/orders"), deadline: .seconds(5))
            #expect(response.status == .serviceUnavailable, "a final 5xx is returned, counted")
        }
        // Open: rejected with the breaker's name and retryAfter, and no request is sent.
        do {
            _ = try await client.execute(HTTPClientRequest(url: failing.base + "/orders"), deadline: .seconds(5))
            Issue.record("admitted while open")
        } catch let error as FuseboxError {
            #expect(error.code == .circuitOpen && error.breakerName == "http:127.0.0.1:\(URL(string: failing.base)!.port!)")
            #expect(error.retryAfter.map { $0 > .seconds(25) } == true, "\(String(describing: error.retryAfter))")
        }
        #expect(failing.requests("/orders").count == 3, "no request while open")

        // The other host's breaker is its own; a 404 counts as an answer, not a failure.
        healthy.set("/missing", .init(status: 404))
        for _ in 0..<5 {
            #expect(try await client.execute(HTTPClientRequest(url: healthy.base + "/missing"), deadline: .seconds(5)).status == .notFound)
        }
        let other = try await client.registry.breaker(ResilientHTTPClient.destination(of: HTTPClientRequest(url: healthy.base + "/")), policy: tripsAfter(3)).snapshot()
        #expect(other.state == .closed && other.totals.failures == 0 && other.totals.successes == 5, "\(other.totals)")
        let tripped = try await client.registry.breaker(ResilientHTTPClient.destination(of: HTTPClientRequest(url: failing.base + "/")), policy: tripsAfter(3)).snapshot()
        #expect(tripped.state == .open && tripped.errorCounts["StatusFailure"] == 3, "\(tripped.errorCounts)")
    }

    @Test("connect errors count as failures; a 429 too; retries stay inside the deadline")
    func connectErrorsAndDeadline() async throws {
        let port = try RedisServerProcess.freePort()  // nobody listens there
        // AsyncHTTPClient keeps trying to connect until its connect timeout unless told not to.
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.timeout.connect = .milliseconds(500)
        let http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        defer { Task { try? await http.shutdown() } }
        let client = try ResilientHTTPClient(
            client: http, registry: BreakerRegistry(adapter: LocalAdapter()), options: clientOptions(tripsAfter(2), attempts: 2))
        await #expect(throws: (any Error).self) {
            _ = try await client.execute(HTTPClientRequest(url: "http://127.0.0.1:\(port)/x"), deadline: .seconds(5))
        }
        let snapshot = try await client.registry.breaker("http:127.0.0.1:\(port)", policy: tripsAfter(2)).snapshot()
        #expect(snapshot.state == .open && snapshot.totals.failures == 2, "two attempts, two connect failures: \(snapshot.totals)")

        let server = try await DependencyServer()
        defer { server.stop() }
        server.set("/busy", .init(status: 429))
        let limited = try ResilientHTTPClient(registry: BreakerRegistry(adapter: LocalAdapter()), options: clientOptions(tripsAfter(100), attempts: 50))
        let started = ContinuousClock.now
        do {
            let response = try await limited.execute(HTTPClientRequest(url: server.base + "/busy"), deadline: .milliseconds(300))
            #expect(response.status == .tooManyRequests, "the last answer, returned when no retry fits the deadline")
        } catch let error as FuseboxError {
            #expect(error.code == .callTimedOut)
        }
        #expect(ContinuousClock.now - started < .milliseconds(1500), "the deadline covers every attempt")
        let counted = try await limited.registry.breaker(ResilientHTTPClient.destination(of: HTTPClientRequest(url: server.base)), policy: tripsAfter(100)).snapshot()
        #expect(counted.totals.failures == server.requests("/busy").count, "every 429 counted: \(counted.totals)")
        await #expect(throws: FuseboxError.self) {
            _ = try await limited.execute(HTTPClientRequest(url: server.base + "/busy"), deadline: .zero)
        }
        await #expect(throws: FuseboxError.self) {
            _ = try await limited.execute(HTTPClientRequest(url: "not a url"), deadline: .seconds(1))
        }
    }

    @Test("Retry-After: 2 delays the retry by 2 s; an HTTP date too; garbage is ignored; a body that cannot be replayed is not retried")
    func retryAfter() async throws {
        let server = try await DependencyServer()
        defer { server.stop() }
        let client = try ResilientHTTPClient(registry: BreakerRegistry(adapter: LocalAdapter()), options: clientOptions(tripsAfter(100), attempts: 3))
        server.set("/slow-down", .init(status: 503, retryAfter: "2", times: 1))
        let response = try await client.execute(HTTPClientRequest(url: server.base + "/slow-down"), deadline: .seconds(10))
        #expect(response.status == .ok)
        let times = server.requests("/slow-down")
        #expect(times.count == 2)
        if times.count == 2 {
            let gap = times[1] - times[0]
            #expect(gap >= .milliseconds(1950) && gap < .milliseconds(3500), "\(gap)")
        }

        // A date three seconds ahead; garbage (ignored: the usual backoff).
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        #expect(ResilientHTTPClient.retryAfter("Fri, 15 Jan 2027 08:00:03 GMT", now: Date(timeIntervalSince1970: 1_799_913_600)) == .seconds(86_403))
        #expect(ResilientHTTPClient.retryAfter("Wed, 21 Oct 2015 07:28:00 GMT", now: now) == .zero, "a date in the past")
        for garbage in ["soon", "-5", "", "1.5"] { #expect(ResilientHTTPClient.retryAfter(garbage, now: now) == nil, "\(garbage)") }
        server.set("/garbage", .init(status: 503, retryAfter: "soon", times: 1))
        let started = ContinuousClock.now
        #expect(try await client.execute(HTTPClientRequest(url: server.base + "/garbage"), deadline: .seconds(5)).status == .ok)
        #expect(ContinuousClock.now - started < .seconds(1), "a Retry-After that is not one is ignored")

        // A POST, and a streamed body: not retried; a POST said to be replayable is.
        server.set("/post", .init(status: 503, times: 1))
        var post = HTTPClientRequest(url: server.base + "/post")
        post.method = .POST
        #expect(try await client.execute(post, deadline: .seconds(5)).status == .serviceUnavailable)
        #expect(server.requests("/post").count == 1)
        server.set("/put", .init(status: 503, times: 1))
        var put = HTTPClientRequest(url: server.base + "/put")
        put.method = .PUT
        put.body = .stream(AsyncStream<ByteBuffer> { $0.yield(ByteBuffer(string: "x")); $0.finish() }, length: .known(Int64(1)))
        #expect(try await client.execute(put, deadline: .seconds(5)).status == .serviceUnavailable, "a stream cannot be sent twice")
        server.set("/put", .init(status: 503, times: 1))
        var replayable = HTTPClientRequest(url: server.base + "/put")
        replayable.method = .PUT
        replayable.body = .bytes(ByteBuffer(string: "x"))
        #expect(try await client.execute(replayable, deadline: .seconds(5), replayable: true).status == .ok)
    }

    @Test("a Retry-After longer than the break holds the destination's calls back until it has passed, without a request")
    func retryAfterLongerThanBreak() async throws {
        let server = try await DependencyServer()
        defer { server.stop() }
        var policy = tripsAfter(1)
        policy.breakDuration = .fixed(.seconds(1))
        let client = try ResilientHTTPClient(registry: BreakerRegistry(adapter: LocalAdapter()), options: clientOptions(policy))
        server.set("/quota", .init(status: 429, retryAfter: "3", times: 1))
        #expect(try await client.execute(HTTPClientRequest(url: server.base + "/quota"), deadline: .seconds(5)).status == .tooManyRequests)
        // The break (1 s) and the hold (3 s) both began before the answer came back.
        let answered = ContinuousClock.now
        try await Task.sleep(until: answered + .milliseconds(1500))
        do {
            _ = try await client.execute(HTTPClientRequest(url: server.base + "/quota"), deadline: .seconds(5))
            Issue.record("admitted after the break although the dependency asked for 3 s")
        } catch let error as FuseboxError {
            #expect(error.code == .circuitOpen)
            #expect(error.retryAfter.map { $0 > .milliseconds(500) && $0 <= .milliseconds(1700) } == true, "\(String(describing: error.retryAfter))")
        }
        #expect(server.requests("/quota").count == 1)
        try await Task.sleep(until: answered + .milliseconds(3100))
        #expect(try await client.execute(HTTPClientRequest(url: server.base + "/quota"), deadline: .seconds(5)).status == .ok)
    }

    @Test("with the distributed adapter, two instances share a host's breaker: one's failures open it for the other, which sends nothing")
    func sharedAcrossInstances() async throws {
        let redis = try await RedisServerProcess.start()
        defer { redis.kill() }
        let server = try await DependencyServer()
        defer { server.stop() }
        var options = DistributedOptions(redis: redis.configuration())
        options.namespace = "http\(UInt32.random(in: 0...UInt32.max))"
        func instance(_ id: String) throws -> (BreakerRegistry, Task<Void, Never>) {
            var mine = options
            mine.instanceID = id
            let registry = BreakerRegistry(adapter: try DistributedAdapter(options: mine, logger: Logger(label: id)), logger: Logger(label: id))
            return (registry, Task { try? await registry.run() })
        }
        let (firstRegistry, firstRun) = try instance("one")
        let (secondRegistry, secondRun) = try instance("two")
        defer { firstRun.cancel(); secondRun.cancel() }
        let first = try ResilientHTTPClient(registry: firstRegistry, options: clientOptions(tripsAfter(2)))
        let second = try ResilientHTTPClient(registry: secondRegistry, options: clientOptions(tripsAfter(2)))
        #expect(try await second.execute(HTTPClientRequest(url: server.base + "/a"), deadline: .seconds(5)).status == .ok)
        server.set("/a", .init(status: 500))
        for _ in 0..<2 { _ = try await first.execute(HTTPClientRequest(url: server.base + "/a"), deadline: .seconds(5)) }
        let before = server.requests("/a").count
        var rejected = false
        for _ in 0..<200 where !rejected {
            do {
                _ = try await second.execute(HTTPClientRequest(url: server.base + "/a"), deadline: .seconds(5))
                try await Task.sleep(for: .milliseconds(10))
            } catch let error as FuseboxError where error.code == .circuitOpen {
                rejected = true
            }
        }
        #expect(rejected, "the second instance turns calls away once the first tripped the shared breaker")
        let sentBySecond = server.requests("/a").count - before
        #expect(sentBySecond <= 1, "at most a call in flight before the trip message arrived: \(sentBySecond)")
        let countBeforeMore = server.requests("/a").count
        for _ in 0..<10 { _ = try? await second.execute(HTTPClientRequest(url: server.base + "/a"), deadline: .seconds(5)) }
        #expect(server.requests("/a").count == countBeforeMore, "no request while open")
    }
}
