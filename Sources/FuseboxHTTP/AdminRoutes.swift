import Foundation
import Fusebox
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Prometheus
import ServiceLifecycle
import FuseboxLocking

/// The operator's HTTP surface over any `BreakerAdministration`: the admin API, `/health`, `/metrics`, the
/// live event stream and the dashboard, as one Hummingbird route collection an application mounts where it likes.
///
/// ```swift
/// let admin = AdminRoutes<BasicRequestContext>(administration: RegistryAdministration(registry: registry),
///                                              token: environment["FUSEBOX_ADMIN_TOKEN"], metrics: prometheus)
/// router.addRoutes(admin.collection, atPath: "/fusebox")
/// ```
///
/// Routes (Docs/http-api.md): `GET /circuit-breakers`, `GET /circuit-breakers/NAME`,
/// `POST /circuit-breakers/NAME/reset`, `…/isolate` (body `{"reason": "…"}`), `…/half-open`,
/// `POST /circuit-breakers/reset-all`, `GET /health`, `GET /metrics`, `GET /events` (Server-Sent Events) and
/// `GET /` (the dashboard). With a `token`, every `POST` needs `Authorization: Bearer TOKEN` (compared in
/// constant time); without one, they are open, so mount the routes only where the callers are trusted.
public struct AdminRoutes<Context: RequestContext>: Sendable {
    /// What the routes read and steer.
    public let administration: any BreakerAdministration
    /// The bearer token mutating routes need; `nil`: none.
    public let token: String?
    /// The registry of the breakers' own swift-metrics (the one the application bootstrapped `MetricsSystem`
    /// with), exported at `/metrics` before the derived series; `nil` to export the counted series from the
    /// survey instead (what `fusebox serve` does).
    public let metrics: PrometheusCollectorRegistry?
    /// How often the event stream sends a comment to keep idle connections open.
    public let heartbeatInterval: Duration
    /// The last list and scrape rendered, by the survey they show: clients that read one survey share one rendering.
    private let rendered = RenderedSurveys()

    /// The largest request body read (an isolation reason).
    static var maximumBodySize: Int { 16 * 1024 }
    /// The longest isolation reason accepted, in characters.
    static var maximumReasonLength: Int { 500 }

    /// Makes the routes.
    public init(
        administration: any BreakerAdministration, token: String? = nil, metrics: PrometheusCollectorRegistry? = nil,
        heartbeatInterval: Duration = .seconds(15)
    ) {
        self.administration = administration
        self.token = token.flatMap { $0.isEmpty ? nil : $0 }
        self.metrics = metrics
        self.heartbeatInterval = heartbeatInterval
    }

    /// The routes, to mount with `router.addRoutes(_:atPath:)`.
    public var collection: RouteCollection<Context> {
        let routes = RouteCollection(context: Context.self)
        routes.get("") { _, _ in Self.page() }
        routes.get("circuit-breakers") { _, _ in try await self.list() }
        routes.post("circuit-breakers/reset-all") { request, context in
            try self.authorize(request)
            return try await AuditContext.withActor(Self.actor(request, context)) {
                try await self.answer { () async throws(FuseboxError) in SurveyBody(try await administration.resetAll(), scope: administration.scope) }
            }
        }
        routes.get("circuit-breakers/:name") { _, context in
            let name = try Self.name(context)
            return try await self.answer { () async throws(FuseboxError) in
                let status = try await administration.status(of: name)
                let timeline = try await administration.timeline(of: name)
                return BreakerDetailBody(
                    timestamp: AdminJSON.timestamp(Date()), breaker: BreakerBody(status), transitions: timeline.map(TransitionBody.init))
            }
        }
        routes.get("circuit-breakers/:name/health") { _, context in
            let name = try Self.name(context)
            return try await self.answer { () async throws(FuseboxError) in
                BreakerHealthBody(try await administration.status(of: name), at: Date())
            }
        }
        routes.post("circuit-breakers/:name/reset") { request, context in
            try self.authorize(request)
            let name = try Self.name(context)
            // `?baseline=true` forgets the relative threshold's baseline too.
            let baseline = request.uri.queryParameters.get("baseline") == "true"
            return try await AuditContext.withActor(Self.actor(request, context)) {
                try await self.answer { () async throws(FuseboxError) in
                    BreakerBody(try await baseline ? administration.resetWithBaseline(name) : administration.reset(name))
                }
            }
        }
        routes.post("circuit-breakers/:name/half-open") { request, context in
            try self.authorize(request)
            let name = try Self.name(context)
            return try await AuditContext.withActor(Self.actor(request, context)) {
                try await self.answer { () async throws(FuseboxError) in BreakerBody(try await administration.forceHalfOpen(name)) }
            }
        }
        routes.post("circuit-breakers/:name/isolate") { request, context in
            try self.authorize(request)
            let name = try Self.name(context)
            var request = request
            let (reason, duration) = try await Self.isolation(&request)
            return try await AuditContext.withActor(Self.actor(request, context)) {
                try await self.answer { () async throws(FuseboxError) in
                    BreakerBody(try await administration.isolate(name, reason: reason, for: duration))
                }
            }
        }
        routes.get("audit") { request, _ in
            let breaker = request.uri.queryParameters.get("breaker")
            let limitText = request.uri.queryParameters.get("limit")
            let limit = limitText.flatMap { Int($0) } ?? 100
            guard (1...10_000).contains(limit), limitText == nil || Int(limitText!) != nil else {
                throw Refusal(status: .badRequest, code: "bad_request", message: "limit is '\(limitText ?? "")'; allowed: a whole number from 1 to 10000")
            }
            if let breaker {
                do { try BreakerRegistry.validate(name: breaker) } catch let error as FuseboxError { return Self.failure(error) }
            }
            return try await self.answer { () async throws(FuseboxError) in
                AuditBody(timestamp: AdminJSON.timestamp(Date()), entries: try await administration.audit(of: breaker, limit: limit).map(AuditBody.Entry.init))
            }
        }
        routes.get("health") { _, _ in await self.health() }
        routes.get("metrics") { _, _ in await self.scrape() }
        routes.get("events") { _, _ in self.events() }
        return routes
    }

    // MARK: - Handlers

    private func list() async throws -> Response {
        do {
            let survey = try await administration.survey()
            let bytes = rendered.bytes(for: "list", survey: survey) { AdminJSON.bytes(SurveyBody(survey, scope: administration.scope)) }
            return Self.json(bytes: bytes)
        } catch {
            return Self.failure(error)
        }
    }

    private func health() async -> Response {
        let health: FleetHealth
        do {
            health = FleetHealth(try await administration.survey())
        } catch {
            health = FleetHealth(unavailable: error)
        }
        return Self.json(FleetHealthBody(health, at: Date()), status: health.verdict == .critical ? .serviceUnavailable : .ok)
    }

    private func scrape() async -> Response {
        var buffer: [UInt8] = []
        metrics?.emit(into: &buffer)
        let status: HTTPResponse.Status
        do {
            let survey = try await administration.survey()
            buffer += rendered.bytes(for: "metrics", survey: survey) {
                var text: [UInt8] = []
                FleetMetrics.emit(
                    survey: survey, health: FleetHealth(survey), counted: metrics == nil, transitions: administration.transitionCounts(),
                    into: &text)
                return text
            }
            status = .ok
        } catch {
            // Answered 200: Prometheus drops a scrape that answers otherwise, and with it the one series that says
            // why (alert on `fusebox_store_up == 0`, not only on the target being down).
            buffer += Array("# the breakers cannot be read: \(error.message.replacingOccurrences(of: "\n", with: " "))\n".utf8)
            buffer += Array("# HELP fusebox_health 0 healthy, 1 degraded, 2 critical (the rule of GET /health).\n# TYPE fusebox_health gauge\nfusebox_health 2\n".utf8)
            buffer += Array("# HELP fusebox_store_up 1: the breakers' store could be read for this scrape; 0: it could not.\n# TYPE fusebox_store_up gauge\nfusebox_store_up 0\n".utf8)
            status = .ok
        }
        var headers = HTTPFields()
        headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: buffer)))
    }

    /// `text/event-stream`: an `event: transition` per transition (its data a `NoticeBody`),
    /// and a comment every ``heartbeatInterval``.
    private func events() -> Response {
        let notices = administration.transitions()
        let heartbeat = heartbeatInterval
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-cache"
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            let (chunks, sink) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingNewest(1024))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await notice in notices {
                        sink.yield("event: transition\ndata: " + String(decoding: AdminJSON.bytes(NoticeBody(notice)), as: UTF8.self) + "\n\n")
                    }
                    sink.finish()
                }
                group.addTask {
                    while !Task.isCancelled {
                        try await Task.sleep(for: heartbeat)
                        sink.yield(": heartbeat\n\n")
                    }
                }
                defer { group.cancelAll() }
                try await writer.write(ByteBuffer(string: "retry: 1000\n: connected\n\n"))
                // A graceful shutdown ends the stream: the server's shutdown waits for open responses.
                for await chunk in chunks.cancelOnGracefulShutdown() {
                    try await writer.write(ByteBuffer(string: chunk))
                }
            }
            try await writer.finish(nil)
        })
    }

    // MARK: - Helpers

    /// Runs `body` and answers its JSON with 200, or the error's JSON with its status.
    private func answer(_ body: () async throws(FuseboxError) -> some Encodable) async throws -> Response {
        do {
            return Self.json(try await body())
        } catch {
            return Self.failure(error)
        }
    }

    static func failure(_ error: FuseboxError) -> Response {
        let (status, code): (HTTPResponse.Status, String) = switch error.code {
        case .invalidName: (.badRequest, "invalid_name")
        case .unknownBreaker: (.notFound, "unknown_breaker")
        case .backendUnavailable: (.serviceUnavailable, "backend_unavailable")
        case .corruptState: (.internalServerError, "corrupt_state")
        default: (.internalServerError, "error")
        }
        return json(ErrorBody(error: code, message: error.message), status: status)
    }

    static func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) -> Response { json(bytes: AdminJSON.bytes(value), status: status) }

    static func json(bytes: [UInt8], status: HTTPResponse.Status = .ok) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json; charset=utf-8"
        headers[.cacheControl] = "no-store"
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    /// A request refused before it reached the breakers: 400, 401, 413 with a JSON body.
    struct Refusal: HTTPResponseError {
        var status: HTTPResponse.Status
        var code: String
        var message: String
        var headers: HTTPFields = [:]

        func response(from request: Request, context: some RequestContext) throws -> Response {
            var response = AdminRoutes.json(ErrorBody(error: code, message: message), status: status)
            for field in headers { response.headers.append(field) }
            return response
        }
    }

    /// Who acts, for the audit trail: the `X-Fusebox-Actor` header (up to 100 printable characters), else
    /// `http:CLIENT-ADDRESS` when the context knows the address, else `http`.
    static func actor(_ request: Request, _ context: Context) -> String {
        if let named = request.headers[HTTPField.Name("X-Fusebox-Actor")!]?.trimmingCharacters(in: .whitespaces), !named.isEmpty,
            named.count <= 100, !named.unicodeScalars.contains(where: { $0.properties.generalCategory == .control })
        {
            return named
        }
        if let address = (context as? any RemoteAddressRequestContext)?.remoteAddress?.ipAddress { return "http:\(address)" }
        return "http"
    }

    /// The breaker name in the path, percent-decoded.
    static func name(_ context: Context) throws -> String {
        let raw = try context.parameters.require("name")
        guard let name = raw.removingPercentEncoding else {
            throw Refusal(status: .badRequest, code: "invalid_name", message: "the breaker name '\(raw)' is not valid percent-encoding")
        }
        return name
    }

    /// The isolate body: `{"reason": "…"}`, with `"for": "30m"` (a duration as `fusebox isolate --for` takes it, or
    /// a number of seconds) for an isolation that ends by itself.
    static func isolation(_ request: inout Request) async throws -> (reason: String, duration: Duration?) {
        let body: ByteBuffer
        do {
            body = try await request.collectBody(upTo: maximumBodySize)
        } catch {
            throw Refusal(status: .contentTooLarge, code: "body_too_large", message: "the body is larger than \(maximumBodySize) bytes")
        }
        let usage = #"send a JSON body such as {"reason": "database maintenance"}"#
        guard body.readableBytes > 0 else { throw Refusal(status: .badRequest, code: "bad_request", message: "isolate needs a reason: \(usage)") }
        guard let body = try? JSONDecoder().decode(IsolateRequest.self, from: Data(body.readableBytesView)) else {
            throw Refusal(status: .badRequest, code: "bad_request", message: "the body is not a JSON object: \(usage)")
        }
        var duration: Duration?
        if body.lastingIsMalformed || body.lasting != nil {
            guard let parsed = body.lasting?.duration, LocalBackend.isValidActionTime(parsed) else {
                throw Refusal(
                    status: .badRequest, code: "bad_request",
                    message: #"'for' must be a duration such as "30m" or "2h", or a number of seconds, more than 0 and at most a year"#)
            }
            duration = parsed
        }
        guard let reason = body.reason else {
            throw Refusal(status: .badRequest, code: "bad_request", message: "the body has no string field 'reason': \(usage)")
        }
        let trimmed = reason.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !trimmed.isEmpty else { throw Refusal(status: .badRequest, code: "bad_request", message: "the reason is empty: \(usage)") }
        guard trimmed.count <= maximumReasonLength else {
            throw Refusal(status: .badRequest, code: "bad_request", message: "the reason is \(trimmed.count) characters long; at most \(maximumReasonLength) are allowed")
        }
        guard !trimmed.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw Refusal(status: .badRequest, code: "bad_request", message: "the reason contains control characters")
        }
        return (trimmed, duration)
    }

    /// Throws 401 unless the request carries the bearer token (when one is configured).
    func authorize(_ request: Request) throws {
        guard let token else { return }
        let presented = request.headers[.authorization] ?? ""
        let prefix = "Bearer "
        let given = presented.hasPrefix(prefix) ? String(presented.dropFirst(prefix.count)) : ""
        guard Self.constantTimeEqual(given, token) else {
            throw Refusal(
                status: .unauthorized, code: "unauthorized",
                message: presented.isEmpty ? "this action needs the header 'Authorization: Bearer TOKEN'" : "the bearer token is not the one configured",
                headers: [.wwwAuthenticate: #"Bearer realm="fusebox""#])
        }
    }

    /// Compares two strings in time that depends on their lengths only, not on where they differ.
    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        var difference = UInt8(x.count == y.count ? 0 : 1)
        for index in 0..<max(x.count, y.count) {
            difference |= (index < x.count ? x[index] : 0) ^ (index < y.count ? y[index] : 0)
        }
        return difference == 0
    }

    /// The dashboard: one HTML page with its style and script inlined (no other request, nothing from a CDN).
    static func page() -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/html; charset=utf-8"
        headers[.cacheControl] = "no-cache"
        return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: Dashboard.page)))
    }
}

/// The rendering of the last survey per route. A survey is identified by when it was read: the administration
/// hands the same survey to every request it serves from one read.
final class RenderedSurveys: Sendable {
    private let last = Locked<[String: (observedAt: Date, bytes: [UInt8])]>([:])

    func bytes(for route: String, survey: BreakerSurvey, render: () -> [UInt8]) -> [UInt8] {
        if let hit = last.withLock({ $0[route] }), hit.observedAt == survey.observedAt { return hit.bytes }
        let bytes = render()
        last.withLock { $0[route] = (survey.observedAt, bytes) }
        return bytes
    }
}

/// The dashboard's page, assembled once from the files in `Dashboard/` embedded in the binary.
enum Dashboard {
    static let page: [UInt8] = {
        let html = String(decoding: PackageResources.dashboard_html, as: UTF8.self)
        let css = String(decoding: PackageResources.dashboard_css, as: UTF8.self)
        let script = String(decoding: PackageResources.dashboard_js, as: UTF8.self)
        return Array(html.replacingOccurrences(of: "/*FUSEBOX_CSS*/", with: css).replacingOccurrences(of: "/*FUSEBOX_JS*/", with: script).utf8)
    }()
}
