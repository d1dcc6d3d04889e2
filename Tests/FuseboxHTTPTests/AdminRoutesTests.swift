import Foundation
import Fusebox
@testable import FuseboxHTTP
@testable import FuseboxRedis
import FuseboxTestKit
import Hiredis
import Hummingbird
import HummingbirdTesting
import HTTPTypes
import Logging
import NIOCore
import Prometheus
import Testing
import TestKinds

/// One redis-server shared by this module's tests (each uses its own namespace).
enum SharedServer {
    private static let started = Task { try await RedisServerProcess.start() }
    static func get() async throws -> RedisServerProcess { try await started.value }
}

struct Boom: Error {}

/// The three things the routes are mounted over.
enum Subject: String, CaseIterable, CustomTestStringConvertible {
    /// An application's registry on the local adapter.
    case localRegistry
    /// An application's registry on the distributed adapter.
    case distributedRegistry
    /// Every breaker of a Redis namespace (`fusebox serve`), made by an instance elsewhere.
    case redisNamespace

    var testDescription: String { rawValue }
}

/// Breakers `payments` (opens after 2 failures) and `search`, and the administration over them.
final class Fixture: Sendable {
    let registry: BreakerRegistry
    let administration: any BreakerAdministration
    let payments: CircuitBreaker
    let search: CircuitBreaker
    let namespace: String
    private let background: Task<Void, Never>

    init(_ subject: Subject, token: String? = nil) async throws {
        namespace = "http\(UInt32.random(in: 0...UInt32.max))"
        let adapter: any BreakerAdapter
        var redis: RedisConfiguration?
        if subject == .localRegistry {
            adapter = LocalAdapter()
        } else {
            var configuration = try await SharedServer.get().configuration(connectTimeout: .milliseconds(500), commandTimeout: .milliseconds(500))
            configuration.clientName = "test"
            redis = configuration
            var options = DistributedOptions(redis: configuration)
            options.namespace = namespace
            options.refreshInterval = .milliseconds(200)
            adapter = try DistributedAdapter(options: options)
        }
        registry = BreakerRegistry(adapter: adapter)
        var policy = BreakerPolicy()
        policy.consecutiveFailureThreshold = 2
        policy.breakDuration = .fixed(.seconds(60))
        payments = try registry.breaker("payments", policy: policy)
        search = try registry.breaker("search")
        let fleet: RedisAdministration?
        if subject == .redisNamespace, let redis {
            fleet = try RedisAdministration(configuration: redis, namespace: namespace, surveyMaxAge: .milliseconds(250))
            administration = fleet!
        } else {
            fleet = nil
            administration = RegistryAdministration(registry: registry)
        }
        let registry = self.registry
        background = Task {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { try? await registry.run() }
                if let fleet { group.addTask { try? await fleet.run() } }
            }
        }
        // Both breakers known to the store before the tests look.
        try await payments.run { () }
        try await search.run { () }
        if let backend = adapter as? DistributedAdapter<ContinuousClock> { await backend.flush() }
        if let fleet, let redis {
            // Messages published before the administration subscribes never reach it.
            let client = try RedisClient(configuration: redis)
            for _ in 0..<500 {
                let reply = try await client.send("PUBSUB", "NUMSUB", fleet.breakers.channel)
                if (reply.array?.last?.int ?? 0) >= 2 { break }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
    }

    /// Two failures: `payments` opens (in Redis too, before this returns).
    func tripPayments() async throws {
        for _ in 0..<2 { _ = try? await payments.run { throw Boom() } }
        for _ in 0..<200 {
            if try await payments.snapshot().state == .open { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        Issue.record("payments did not open")
    }

    func close() {
        background.cancel()
        (administration as? RedisAdministration)?.close()
    }

    func routes(token: String? = nil, metrics: PrometheusCollectorRegistry? = nil) -> Application<RouterResponder<BasicRequestContext>> {
        let router = Router()
        router.addRoutes(AdminRoutes<BasicRequestContext>(administration: administration, token: token, metrics: metrics).collection, atPath: "/admin")
        return Application(router: router)
    }
}

/// The body of a response as a JSON object.
func object(_ response: TestResponse) throws -> [String: Any] {
    let value = try JSONSerialization.jsonObject(with: Data(response.body.readableBytesView))
    return try #require(value as? [String: Any], "not a JSON object: \(String(buffer: response.body))")
}

func dictionary(_ value: Any?) throws -> [String: Any] { try #require(value as? [String: Any]) }

/// The field names of the table "A breaker:" in Docs/http-api.md (first column, each name in backticks).
func documentedBreakerFields() throws -> Set<String> {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let text = try String(contentsOf: root.appendingPathComponent("Docs/http-api.md"), encoding: .utf8)
    let table = try #require(text.components(separatedBy: "\nA breaker:\n").last?.components(separatedBy: "\n\n").first)
    var fields: Set<String> = []
    for row in table.split(separator: "\n").dropFirst(2) {
        let cell = row.split(separator: "|", omittingEmptySubsequences: true).first ?? ""
        for name in cell.split(separator: "`").enumerated() where name.offset % 2 == 1 { fields.insert(String(name.element)) }
    }
    return fields
}

@Suite("The admin routes", .kind(.integration), .timeLimit(.minutes(2)))
struct AdminRoutesTests {
    @Test("an operator's override shows as the policy in force, on an instance's registry and fleet-wide", arguments: [Subject.distributedRegistry, .redisNamespace])
    func overrideOrigin(subject: Subject) async throws {
        let fixture = try await Fixture(subject)
        defer { fixture.close() }
        let client = try RedisClient(configuration: try await SharedServer.get().configuration())
        defer { client.close() }
        let operations = BreakerOperator(connection: client, namespace: fixture.namespace)
        var loose = BreakerPolicy()
        loose.consecutiveFailureThreshold = 9
        try await operations.setOverride(PolicyOverride(policy: loose, setBy: "test", setAtMilliseconds: 0), for: "payments")
        try await fixture.routes().test(.router) { http in
            var seen: [String: Any] = [:]
            for _ in 0..<300 {
                seen = try dictionary(try object(try await http.execute(uri: "/admin/circuit-breakers/payments", method: .get))["breaker"])
                if seen["policy_origin"] as? String == "override",
                    (try dictionary(seen["thresholds"]))["consecutive_failures"] as? Int == 9 { break }
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(seen["policy_origin"] as? String == "override")
            #expect((try dictionary(seen["thresholds"]))["consecutive_failures"] as? Int == 9)
            // The health score is measured against the override too: a streak of 1 of 9 weighs less than the failure
            // rate (1 of 2 calls in a window of 10: 0.2), 100 − 50 × 0.2; against the code's threshold of 2 it would be 75.
            _ = try? await fixture.payments.run { throw Boom() }
            _ = try await fixture.payments.snapshot()
            let health = try object(try await http.execute(uri: "/admin/circuit-breakers/payments/health", method: .get))
            #expect(health["health_score"] as? Int == 90)
            #expect(try await operations.snapshot(of: "payments").healthScore == 90)
        }
        #expect(fixture.registry.policyInForce(of: "payments")?.origin == .override || subject == .redisNamespace)
        try await operations.clearOverride(of: "payments")
    }

    @Test("every route, status code and state change, on each thing they are mounted over", arguments: Subject.allCases)
    func routes(subject: Subject) async throws {
        let fixture = try await Fixture(subject)
        defer { fixture.close() }
        try await fixture.tripPayments()
        try await fixture.routes().test(.router) { client in
            // The list: summary counts, the health rule (1 of 2 tripped is critical), every field of a breaker.
            var list = try object(try await client.execute(uri: "/admin/circuit-breakers", method: .get))
            var summary = try dictionary(list["summary"])
            #expect(summary["total_breakers"] as? Int == 2)
            #expect(summary["open"] as? Int == 1)
            #expect(summary["closed"] as? Int == 1)
            #expect(summary["half_open"] as? Int == 0)
            #expect(summary["isolated"] as? Int == 0)
            #expect(summary["health"] as? String == "critical")
            #expect((list["timestamp"] as? String)?.hasSuffix("Z") == true)
            let breakers = try dictionary(list["breakers"])
            #expect(Set(breakers.keys) == ["payments", "search"])
            let payments = try dictionary(breakers["payments"])
            #expect(payments["state"] as? String == "open")
            #expect(payments["version"] as? Int == 1)
            #expect((payments["time_until_retry"] as? Double ?? 0) > 50)
            #expect((payments["time_until_retry_ms"] as? Int ?? 0) > 50_000)
            #expect(payments["since"] as? String != nil)
            #expect(payments["rejection_count"] as? Int == 0)
            #expect(payments["failure_rate"] as? Double != nil && payments["success_rate"] as? Double != nil)
            #expect((try dictionary(payments["totals"]))["failures"] as? Int == 2)
            #expect((try dictionary(payments["thresholds"]))["consecutive_failures"] as? Int == 2)
            #expect((try dictionary(payments["thresholds"]))["break_duration"] as? String == "fixed(1m)")
            // Where the policy in force came from: the application's code, or fleet-wide, the instances'.
            #expect(payments["policy_origin"] as? String == (subject == .redisNamespace ? "instances" : "code"))
            #expect(try dictionary(breakers["search"])["time_until_retry"] is NSNull)

            let critical = try await client.execute(uri: "/admin/health", method: .get)
            #expect(critical.status == .serviceUnavailable)
            let verdict = try object(critical)
            #expect(verdict["status"] as? String == "critical")
            #expect((verdict["reasons"] as? [String] ?? []).contains { $0.contains("'payments' is OPEN") })

            // One breaker with its transitions.
            let shown = try object(try await client.execute(uri: "/admin/circuit-breakers/payments", method: .get))
            #expect(try dictionary(shown["breaker"])["state"] as? String == "open")
            let transitions = try #require(shown["transitions"] as? [[String: Any]])
            #expect(transitions.last?["from"] as? String == "closed" && transitions.last?["to"] as? String == "open")

            // Isolate (deliberate: degraded, not critical), half-open, reset.
            let isolated = try await client.execute(
                uri: "/admin/circuit-breakers/payments/isolate", method: .post, body: ByteBuffer(string: #"{"reason": "db maintenance"}"#))
            #expect(isolated.status == .ok)
            #expect(try object(isolated)["state"] as? String == "isolated")
            #expect(try object(isolated)["isolation_reason"] as? String == "db maintenance")
            #expect(try object(isolated)["isolation_ends_in_ms"] is NSNull && object(isolated)["isolated_until"] is NSNull)
            #expect(try object(isolated)["would_reject"] as? Int == 0)
            // Every field Docs/http-api.md lists for a breaker is there (absent values as null), and no other.
            let fields = try Set(object(isolated).keys)
            #expect(try fields == documentedBreakerFields(), "\(fields.sorted())")
            #expect(try Set(dictionary(object(isolated)["thresholds"]).keys).count == 13)
            // For a time: the time left and when, as `"30m"` or a number of seconds.
            for (lasting, milliseconds) in [(#""30m""#, 1_800_000), ("90", 90_000)] {
                let timed = try object(try await client.execute(
                    uri: "/admin/circuit-breakers/payments/isolate", method: .post,
                    body: ByteBuffer(string: #"{"reason": "deploy", "for": \#(lasting)}"#)))
                let left = timed["isolation_ends_in_ms"] as? Int ?? -1
                #expect(left > milliseconds - 5000 && left <= milliseconds, "\(lasting): \(timed)")
                #expect((timed["isolated_until"] as? String)?.hasSuffix("Z") == true, "\(timed)")
            }
            for lasting in [#""0s""#, #""soon""#, "-1", "0", #""400d""#, "[]", "true", "{}"] {
                let refused = try await client.execute(
                    uri: "/admin/circuit-breakers/payments/isolate", method: .post, body: ByteBuffer(string: #"{"reason": "x", "for": \#(lasting)}"#))
                #expect(refused.status == .badRequest, "for \(lasting)")
                #expect(try object(refused)["error"] as? String == "bad_request")
            }
            let degraded = try await client.execute(uri: "/admin/health", method: .get)
            #expect(degraded.status == .ok)
            #expect(try object(degraded)["status"] as? String == "degraded")
            let halfOpen = try await client.execute(uri: "/admin/circuit-breakers/payments/half-open", method: .post)
            #expect(try object(halfOpen)["state"] as? String == "half_open")
            let reset = try await client.execute(uri: "/admin/circuit-breakers/payments/reset", method: .post)
            #expect(try object(reset)["state"] as? String == "closed")

            // Reset-all closes everything; the verdict is healthy again.
            try await fixture.tripPayments()
            let all = try object(try await client.execute(uri: "/admin/circuit-breakers/reset-all", method: .post))
            #expect(try dictionary(all["summary"])["closed"] as? Int == 2)
            let healthy = try await client.execute(uri: "/admin/health", method: .get)
            #expect(healthy.status == .ok)
            #expect(try object(healthy)["status"] as? String == "healthy")
            list = try object(try await client.execute(uri: "/admin/circuit-breakers", method: .get))
            summary = try dictionary(list["summary"])
            #expect(summary["health"] as? String == "healthy")

            // Unknown and malformed names.
            for (method, uri) in [(HTTPRequest.Method.get, "/admin/circuit-breakers/nope"), (.post, "/admin/circuit-breakers/nope/reset"),
                                  (.post, "/admin/circuit-breakers/nope/half-open")] {
                let missing = try await client.execute(uri: uri, method: method)
                #expect(missing.status == .notFound, "\(uri)")
                #expect(try object(missing)["error"] as? String == "unknown_breaker")
            }
            let unknownIsolate = try await client.execute(
                uri: "/admin/circuit-breakers/nope/isolate", method: .post, body: ByteBuffer(string: #"{"reason":"x"}"#))
            #expect(unknownIsolate.status == .notFound)
            for bad in ["/admin/circuit-breakers/bad%7Bname", "/admin/circuit-breakers/bad%ZZ", "/admin/circuit-breakers/tab%09name"] {
                let response = try await client.execute(uri: bad, method: .get)
                #expect(response.status == .badRequest, "\(bad)")
                #expect(try object(response)["error"] as? String == "invalid_name")
            }

            // Bodies the isolate route refuses, each with a JSON error that says what to send.
            for body in ["", "not json", "[1]", #"{"why":"x"}"#, #"{"reason":""}"#, #"{"reason":"   "}"#, #"{"reason":42}"#,
                         #"{"reason":"\#(String(repeating: "x", count: 501))"}"#, #"{"reason":"a\u0007b"}"#] {
                let response = try await client.execute(uri: "/admin/circuit-breakers/search/isolate", method: .post, body: ByteBuffer(string: body))
                #expect(response.status == .badRequest, "\(body)")
                #expect(try object(response)["error"] as? String == "bad_request", "\(body)")
            }
            let huge = try await client.execute(
                uri: "/admin/circuit-breakers/search/isolate", method: .post,
                body: ByteBuffer(string: #"{"reason":"\#(String(repeating: "y", count: 40_000))"}"#))
            #expect(huge.status == .contentTooLarge)
            #expect(try await fixture.search.snapshot().state == .closed, "nothing a refused request sent may change a breaker")

            // The dashboard: one self-contained page.
            let page = try await client.execute(uri: "/admin", method: .get)
            #expect(page.status == .ok)
            #expect(page.headers[.contentType]?.hasPrefix("text/html") == true)
            let html = String(buffer: page.body)
            #expect(html.contains("EventSource") && html.contains(".card"))
            #expect(!html.contains("src=\"http") && !html.contains("href=\"http") && !html.contains("@import"))
        }
    }

    @Test("a breaker's health score: in the list, on its own route with its terms, as the breaker itself reports it", arguments: Subject.allCases)
    func health(subject: Subject) async throws {
        let fixture = try await Fixture(subject)
        defer { fixture.close() }
        try await fixture.routes().test(.router) { client in
            let fresh = try await client.execute(uri: "/admin/circuit-breakers/search/health", method: .get)
            #expect(fresh.status == .ok)
            let search = try object(fresh)
            #expect(search["name"] as? String == "search")
            #expect(search["health_score"] as? Int == 100)
            #expect(try dictionary(search["terms"])["state_ceiling"] as? Int == 100)

            // One success (the fixture's) and one failure: the streak is half its threshold of 2, the failure rate
            // (1 of 2 calls, a window far below the minimum throughput of 10) weighs less: 100 − 50 × 0.5.
            _ = try? await fixture.payments.run { throw Boom() }
            #expect(try await fixture.payments.snapshot().healthScore == 75)
            let payments = try object(try await client.execute(uri: "/admin/circuit-breakers/payments/health", method: .get))
            #expect(payments["health_score"] as? Int == 75)
            #expect(payments["consecutive_failures"] as? Int == 1)
            let terms = try dictionary(payments["terms"])
            #expect(terms["failure_pressure"] as? Double == 0.5)
            #expect(terms["flapping"] as? Int == 0 && terms["store_down_fallback"] as? Int == 0)
            let listed = try dictionary(try object(try await client.execute(uri: "/admin/circuit-breakers", method: .get))["breakers"])
            #expect(try dictionary(listed["payments"])["health_score"] as? Int == 75)
            #expect(try dictionary(listed["payments"])["store_down_fallback"] as? Bool == false)

            try await fixture.tripPayments()
            let open = try object(try await client.execute(uri: "/admin/circuit-breakers/payments/health", method: .get))
            #expect(open["state"] as? String == "open")
            #expect(open["health_score"] as? Int == 10)
            #expect(open["recent_transitions"] as? Int == 1)

            let missing = try await client.execute(uri: "/admin/circuit-breakers/nope/health", method: .get)
            #expect(missing.status == .notFound)
            #expect(try object(missing)["error"] as? String == "unknown_breaker")
            let bad = try await client.execute(uri: "/admin/circuit-breakers/bad%7Bname/health", method: .get)
            #expect(bad.status == .badRequest)
        }
    }

    @Test("a relative threshold: its baseline and the threshold in force are shown, and reset?baseline=true forgets the baseline", arguments: Subject.allCases)
    func relativeThreshold(subject: Subject) async throws {
        let fixture = try await Fixture(subject)
        defer { fixture.close() }
        var policy = BreakerPolicy()
        policy.relativeFailureRate = .init(factor: 4, floor: 0.05, horizon: .seconds(3600), warmupCalls: 10)
        let breaker = try fixture.registry.breaker("relative", policy: policy)
        for index in 0..<20 { _ = try? await breaker.run { if index % 10 == 0 { throw Boom() } } }
        _ = try await breaker.snapshot()
        try await fixture.routes().test(.router) { client in
            let shown = try dictionary(try object(try await client.execute(uri: "/admin/circuit-breakers/relative", method: .get))["breaker"])
            // (Decayed a little between the writes: the instances write at different moments.)
            #expect(abs((shown["failure_baseline"] as? Double ?? 0) - 0.1) < 1e-4, "\(shown)")
            #expect(abs((shown["failure_rate_threshold_in_force"] as? Double ?? 0) - 0.4) < 4e-4, "4 x the baseline of 0.1")
            #expect(try dictionary(try dictionary(shown["thresholds"])["relative_failure_rate"])["factor"] as? Double == 4)
            let plain = try object(try await client.execute(uri: "/admin/circuit-breakers/relative/reset", method: .post))
            #expect(abs((plain["failure_baseline"] as? Double ?? 0) - 0.1) < 1e-4, "a plain reset keeps the baseline")
            let forgotten = try object(try await client.execute(uri: "/admin/circuit-breakers/relative/reset?baseline=true", method: .post))
            #expect(forgotten["failure_baseline"] is NSNull, "\(forgotten)")
            #expect(forgotten["failure_rate_threshold_in_force"] as? Double == 0.5, "the fixed threshold again until the baseline is warm")
        }
    }

    @Test("every action leaves an audit entry: who (X-Fusebox-Actor, else the client), what, which breaker, why; GET /audit, newest first", arguments: Subject.allCases)
    func audit(subject: Subject) async throws {
        let fixture = try await Fixture(subject)
        defer { fixture.close() }
        try await fixture.routes().test(.router) { client in
            let empty = try object(try await client.execute(uri: "/admin/audit", method: .get))
            #expect((empty["entries"] as? [Any])?.isEmpty == true)
            var headers = HTTPFields()
            headers[HTTPField.Name("X-Fusebox-Actor")!] = "alice"
            _ = try await client.execute(
                uri: "/admin/circuit-breakers/payments/isolate", method: .post, headers: headers, body: ByteBuffer(string: #"{"reason": "db maintenance"}"#))
            _ = try await client.execute(uri: "/admin/circuit-breakers/payments/reset", method: .post)
            _ = try await client.execute(uri: "/admin/circuit-breakers/search/half-open", method: .post, headers: headers)
            _ = try await client.execute(uri: "/admin/circuit-breakers/nope/reset", method: .post, headers: headers)
            let trail = try #require(try object(try await client.execute(uri: "/admin/audit", method: .get))["entries"] as? [[String: Any]])
            #expect(trail.map { $0["action"] as? String } == ["half-open", "reset", "isolate"], "\(trail)")
            #expect(trail.map { $0["breaker"] as? String } == ["search", "payments", "payments"])
            #expect(trail[2]["by"] as? String == "alice" && trail[2]["reason"] as? String == "db maintenance")
            #expect((trail[1]["by"] as? String)?.hasPrefix("http") == true && trail[1]["reason"] is NSNull)
            #expect((trail[0]["at"] as? String)?.hasSuffix("Z") == true)
            let one = try #require(try object(try await client.execute(uri: "/admin/audit?breaker=payments&limit=1", method: .get))["entries"] as? [[String: Any]])
            #expect(one.count == 1 && one[0]["action"] as? String == "reset")
            for bad in ["/admin/audit?limit=0", "/admin/audit?limit=many", "/admin/audit?breaker=bad%7Bname"] {
                #expect(try await client.execute(uri: bad, method: .get).status == .badRequest, "\(bad)")
            }
        }
    }

    @Test("a name with spaces, quotes and non-ASCII letters is reached percent-encoded and written as valid JSON")
    func awkwardNames() async throws {
        let registry = BreakerRegistry(adapter: LocalAdapter())
        let name = #"pay "EU" \ café/v2"#
        let breaker = try registry.breaker(name)
        try await breaker.run { () }
        let router = Router()
        router.addRoutes(AdminRoutes<BasicRequestContext>(administration: RegistryAdministration(registry: registry)).collection)
        try await Application(router: router).test(.router) { client in
            let list = try object(try await client.execute(uri: "/circuit-breakers", method: .get))
            #expect(try dictionary(list["breakers"]).keys.contains(name))
            let encoded = try #require(name.addingPercentEncoding(withAllowedCharacters: .alphanumerics))
            let shown = try await client.execute(uri: "/circuit-breakers/\(encoded)", method: .get)
            #expect(shown.status == .ok)
            #expect(try dictionary(try object(shown)["breaker"])["name"] as? String == name)
        }
    }

    @Test("with a token, every POST needs it (401 otherwise, with WWW-Authenticate); reads stay open")
    func token() async throws {
        let fixture = try await Fixture(.localRegistry)
        defer { fixture.close() }
        try await fixture.routes(token: "s3cret-token").test(.router) { client in
            for headers: HTTPFields in [[:], [.authorization: "Bearer wrong-token!"], [.authorization: "Basic czNjcmV0LXRva2Vu"], [.authorization: "Bearer s3cret-toke"]] {
                let refused = try await client.execute(uri: "/admin/circuit-breakers/search/half-open", method: .post, headers: headers)
                #expect(refused.status == .unauthorized, "\(headers)")
                #expect(refused.headers[.wwwAuthenticate]?.hasPrefix("Bearer") == true)
                #expect(try object(refused)["error"] as? String == "unauthorized")
            }
            let refusedAll = try await client.execute(uri: "/admin/circuit-breakers/reset-all", method: .post)
            #expect(refusedAll.status == .unauthorized)
            #expect(try await fixture.search.snapshot().state == .closed)
            let allowed = try await client.execute(
                uri: "/admin/circuit-breakers/search/half-open", method: .post, headers: [.authorization: "Bearer s3cret-token"])
            #expect(allowed.status == .ok)
            #expect(try await fixture.search.snapshot().state == .halfOpen)
            #expect(try await client.execute(uri: "/admin/circuit-breakers", method: .get).status == .ok)
            #expect(try await client.execute(uri: "/admin/metrics", method: .get).status == .ok)
        }
        #expect(AdminRoutes<BasicRequestContext>.constantTimeEqual("abc", "abc"))
        #expect(!AdminRoutes<BasicRequestContext>.constantTimeEqual("abc", "abd"))
        #expect(!AdminRoutes<BasicRequestContext>.constantTimeEqual("abc", "abcd"))
        #expect(!AdminRoutes<BasicRequestContext>.constantTimeEqual("", "a"))
    }

    @Test("/metrics: every line is a comment or a sample Prometheus parses; counted series fleet-wide, derived ones always",
          arguments: [Subject.localRegistry, .redisNamespace])
    func metrics(subject: Subject) async throws {
        let fixture = try await Fixture(subject)
        defer { fixture.close() }
        try await fixture.tripPayments()
        if subject == .redisNamespace {
            // The transition count comes from the channel: wait for the message.
            let fleet = try #require(fixture.administration as? RedisAdministration)
            for _ in 0..<200 where (fleet.transitionCounts() ?? [:]).isEmpty { try await Task.sleep(for: .milliseconds(10)) }
        }
        let own = PrometheusCollectorRegistry()
        own.makeCounter(descriptor: MetricNameDescriptor(metricName: "app_requests", unitName: "total", helpText: "The app's own."), labels: []).increment(by: Int64(7))
        try await fixture.routes(metrics: subject == .localRegistry ? own : nil).test(.router) { client in
            let response = try await client.execute(uri: "/admin/metrics", method: .get)
            #expect(response.status == .ok)
            #expect(response.headers[.contentType]?.hasPrefix("text/plain; version=0.0.4") == true)
            // Debian's promtool lints the scrape of an application's mounted routes (and of a fleet's namespace).
            let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            let scrape = FileManager.default.temporaryDirectory.appendingPathComponent("scrape-\(UUID().uuidString).txt").path
            defer { try? FileManager.default.removeItem(atPath: scrape) }
            try String(buffer: response.body).write(toFile: scrape, atomically: true, encoding: .utf8)
            let linted = try await PrometheusTools(repositoryRoot: root.path).promtool(["check", "metrics"], input: scrape)
            #expect(linted.status == 0, "promtool check metrics: \(linted.output)")
            let samples = try PrometheusText.parse(String(buffer: response.body))
            func value(_ name: String, _ labels: [String: String]) -> Double? {
                samples.first { $0.name == name && $0.labels == labels }?.value
            }
            #expect(value("fusebox_breaker_time_in_state_seconds", ["breaker": "payments"]) != nil)
            #expect(value("fusebox_breaker_failure_rate", ["breaker": "search"]) == 0)
            #expect(value("fusebox_breakers", ["state": "open"]) == 1)
            #expect(value("fusebox_health", [:]) == 2)
            #expect(value("fusebox_breaker_health_score", ["breaker": "payments"]) == 10, "open: the state's ceiling")
            #expect(value("fusebox_breaker_health_score", ["breaker": "search"]) == 100)
            if subject == .localRegistry {
                #expect(value("app_requests_total", [:]) == 7, "the application's registry comes first")
                #expect(value("fusebox_calls_total", ["breaker": "payments", "outcome": "failure"]) == nil, "the breakers' own metrics count these")
            } else {
                #expect(value("fusebox_breaker_state", ["breaker": "payments"]) == 2)
                #expect(value("fusebox_calls_total", ["breaker": "payments", "outcome": "failure"]) == 2)
                #expect(value("fusebox_calls_total", ["breaker": "payments", "outcome": "success"]) == 1)
                #expect(value("fusebox_rejections_total", ["breaker": "payments"]) == 0)
                #expect(value("fusebox_transitions_total", ["breaker": "payments", "from": "closed", "to": "open"]) == 1)
            }
        }
    }

    @Test("Redis down: 503 with the reason on every read, critical health, nothing crashes")
    func redisDown() async throws {
        let server = try await RedisServerProcess.start()
        let configuration = server.configuration(connectTimeout: .milliseconds(300), commandTimeout: .milliseconds(300))
        let administration = try RedisAdministration(configuration: configuration, namespace: "down", surveyMaxAge: .zero)
        defer { administration.close() }
        let operatorView = BreakerOperator(connection: try RedisClient(configuration: configuration), namespace: "down")
        _ = try await operatorView.isolate("payments", reason: "before the outage")
        server.kill()
        let router = Router()
        router.addRoutes(AdminRoutes<BasicRequestContext>(administration: administration).collection)
        try await Application(router: router).test(.router) { client in
            for uri in ["/circuit-breakers", "/circuit-breakers/payments"] {
                let started = ContinuousClock.now
                let response = try await client.execute(uri: uri, method: .get)
                #expect(response.status == .serviceUnavailable, "\(uri)")
                #expect(try object(response)["error"] as? String == "backend_unavailable")
                #expect((try object(response)["message"] as? String)?.contains("unavailable") == true)
                #expect(ContinuousClock.now - started < .seconds(3))
            }
            let reset = try await client.execute(uri: "/circuit-breakers/payments/reset", method: .post)
            #expect(reset.status == .serviceUnavailable)
            let health = try await client.execute(uri: "/health", method: .get)
            #expect(health.status == .serviceUnavailable)
            #expect(try object(health)["status"] as? String == "critical")
            let metrics = try await client.execute(uri: "/metrics", method: .get)
            #expect(metrics.status == .ok, "a scrape Prometheus keeps, so that it records why")
            #expect(String(buffer: metrics.body).contains("fusebox_health 2"))
            #expect(String(buffer: metrics.body).contains("fusebox_store_up 0"))
        }
    }

    @Test("a corrupted key: listed as unreadable with the reason, the others still read, health degraded; reset repairs it")
    func corrupted() async throws {
        let fixture = try await Fixture(.redisNamespace)
        defer { fixture.close() }
        let redis = try RedisClient(configuration: try await SharedServer.get().configuration())
        _ = try await redis.send("HSET", "\(fixture.namespace):{search}:state", "state", "bogus")
        try await fixture.routes().test(.router) { client in
            let list = try object(try await client.execute(uri: "/admin/circuit-breakers", method: .get))
            #expect(try dictionary(list["breakers"]).keys.sorted() == ["payments"])
            #expect((try dictionary(list["unreadable"])["search"] as? String)?.contains("bogus") == true)
            #expect(try dictionary(list["summary"])["unreadable"] as? Int == 1)
            let health = try await client.execute(uri: "/admin/health", method: .get)
            #expect(health.status == .ok)
            #expect(try object(health)["status"] as? String == "degraded")
            let shown = try await client.execute(uri: "/admin/circuit-breakers/search", method: .get)
            #expect(shown.status == .internalServerError)
            #expect(try object(shown)["error"] as? String == "corrupt_state")
            let reset = try await client.execute(uri: "/admin/circuit-breakers/search/reset", method: .post)
            #expect(reset.status == .ok)
            #expect(try object(reset)["state"] as? String == "closed")
        }
    }
}

@Suite("The health verdict", .kind(.unit))
struct FleetHealthTests {
    static func survey(_ states: [BreakerState], unreadable: Int = 0) -> BreakerSurvey {
        let statuses = states.enumerated().map { index, state in
            BreakerStatus(snapshot: BreakerSnapshot(
                name: "b\(index)", state: state, version: 1, timeInState: .seconds(1), windowCalls: 0, windowFailures: 0,
                windowSlowCalls: 0, consecutiveFailures: 0, errorCounts: [:], totals: BreakerTotals(), timeUntilProbe: nil,
                isolationReason: state == .isolated ? "maintenance" : nil, attempt: 0, probesInFlight: 0, probeSuccesses: 0,
                lastReason: "why"), thresholds: nil)
        }
        let broken = (0..<unreadable).map { (name: "u\($0)", error: FuseboxError(code: .corruptState, message: "bad")) }
        return BreakerSurvey(breakers: statuses, unreadable: broken)
    }

    @Test("the rules, case by case", arguments: [
        ([], 0, FleetHealth.Verdict.healthy),
        ([.closed, .closed, .disabled, .metricsOnly], 0, .healthy),
        ([.closed, .closed, .open], 0, .degraded),
        ([.closed, .open], 0, .critical),
        ([.open], 0, .critical),
        ([.closed, .halfOpen, .open, .closed], 0, .critical),
        ([.isolated, .isolated, .isolated], 0, .degraded),
        ([.closed, .closed], 1, .degraded),
        ([.closed, .closed, .closed, .halfOpen], 0, .degraded),
    ] as [([BreakerState], Int, FleetHealth.Verdict)])
    func rules(states: [BreakerState], unreadable: Int, expected: FleetHealth.Verdict) {
        let health = FleetHealth(Self.survey(states, unreadable: unreadable))
        #expect(health.verdict == expected)
        #expect(health.total == states.count + unreadable)
        #expect(health.reasons.isEmpty == (expected == .healthy))
    }
}

@Suite("Thresholds", .kind(.unit))
struct ThresholdsTests {
    /// The JSON an instance stores (FuseboxRedis) and its reading here are two places that know one shape.
    @Test("read from the policy JSON an instance stores, they are those of the policy itself")
    func storedPolicyRoundTrip() throws {
        var policies: [BreakerPolicy] = [BreakerPolicy()]
        var policy = BreakerPolicy()
        policy.failureRateThreshold = nil
        policy.consecutiveFailureThreshold = 7
        policy.slowCallRateThreshold = 0.25
        policy.slowCallDuration = .milliseconds(750)
        policy.window = .count(40)
        policy.breakDuration = .exponential(base: .seconds(5), factor: 2, maximum: .seconds(120))
        policy.permittedCallsInHalfOpen = 3
        policy.successThreshold = 2
        policy.maxHalfOpenDuration = .seconds(90)
        policy.mode = .metricsOnly
        policies.append(policy)
        policy.breakDuration = .linear(base: .seconds(1), increment: .milliseconds(500), maximum: .seconds(60))
        policy.window = .time(samplingDuration: .seconds(30), buckets: 6)
        policies.append(policy)
        policy.breakDuration = .adaptive
        policies.append(policy)
        policy.breakDuration = .custom(id: #"jitter "v2""#) { _ in .seconds(1) }
        policies.append(policy)
        for policy in policies {
            let stored = DistributedBackend.policyJSON(policy)
            #expect(BreakerThresholds(storedPolicyJSON: stored) == BreakerThresholds(policy: policy), "\(stored)")
        }
        #expect(BreakerThresholds(storedPolicyJSON: "not json") == nil)
        #expect(BreakerThresholds(storedPolicyJSON: #"{"mode":"normal"}"#) == nil)
    }
}
