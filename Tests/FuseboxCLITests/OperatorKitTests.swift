#if FUSEBOX_HTTP
import AsyncHTTPClient
import Foundation
import FuseboxTestKit
import NIOCore
import Testing
import TestKinds

/// Docs/prometheus and Docs/grafana, checked by the real tools: Debian's promtool and a prometheus server scraping
/// `fusebox serve` on loopback.
@Suite("The operator's kit: alert rules, their tests, a real Prometheus, the Grafana dashboard", .kind(.integration), .timeLimit(.minutes(3)))
struct OperatorKitTests {
    static let tools = Result { try PrometheusTools(repositoryRoot: repositoryRoot.path) }

    @Test("promtool check rules and promtool test rules pass on Docs/prometheus; a broken rule fails its test")
    func rules() async throws {
        let tools = try Self.tools.get()
        let alerts = repositoryRoot.appendingPathComponent("Docs/prometheus/alerts.yml").path
        let checked = try await tools.promtool(["check", "rules", alerts])
        #expect(checked.status == 0 && checked.output.contains("SUCCESS: 5 rules found"), "\(checked.output)")
        let tested = try await tools.promtool(["test", "rules", repositoryRoot.appendingPathComponent("Docs/prometheus/alerts_test.yml").path])
        #expect(tested.status == 0 && tested.output.contains("SUCCESS"), "\(tested.output)")

        // The rules' tests can fail: with the open-breaker alert at 20 minutes instead of 10, they do.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("alerts-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let text = try String(contentsOfFile: alerts, encoding: .utf8)
        try text.replacingOccurrences(of: "fusebox_breaker_time_in_state_seconds > 600", with: "fusebox_breaker_time_in_state_seconds > 1200")
            .write(toFile: directory + "/alerts.yml", atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(
            atPath: repositoryRoot.appendingPathComponent("Docs/prometheus/alerts_test.yml").path, toPath: directory + "/alerts_test.yml")
        let broken = try await tools.promtool(["test", "rules", directory + "/alerts_test.yml"])
        #expect(broken.status != 0 && broken.output.contains("FuseboxBreakerOpenTooLong"), "\(broken.output)")
    }

    @Test("promtool check metrics passes on a scrape of fusebox serve; a real prometheus scraping it answers for the open breaker and the Redis outage; every name the Grafana dashboard queries is in the scrape")
    func scrapedByPrometheus() async throws {
        let tools = try Self.tools.get()
        let server = try await RedisServerProcess.start()
        defer { server.kill() }
        let redis = ["--redis", server.url]
        #expect(try await fusebox(["run", "payments"] + redis + ["--consecutive-failures", "1", "--", "true"]).status == 0)
        let serve = try await ServeProcess(redis)
        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        let prometheus = try PrometheusTools.Server(tools: tools, configuration: """
            global:
              scrape_interval: 1s
              evaluation_interval: 1s
            rule_files:
              - \(repositoryRoot.appendingPathComponent("Docs/prometheus/alerts.yml").path)
            scrape_configs:
              - job_name: fusebox
                static_configs:
                  - targets: ["\(serve.base.replacingOccurrences(of: "http://", with: ""))"]
            """)
        do {
            // Transitions while serve watches: the open breaker, an isolation (fusebox_transitions_total counts them).
            #expect(try await fusebox(["run", "payments"] + redis + ["--consecutive-failures", "1", "--", "false"]).status == 1)
            #expect(try await fusebox(["isolate", "ledger", "--reason", "migration", "--for", "1h"] + redis).status == 0)
            var scrape = ""
            for _ in 0..<200 {
                scrape = try await Self.get(serve.base + "/metrics", http)
                if scrape.contains("fusebox_transitions_total{") && scrape.contains(#"to="isolated""#) { break }
                try await Task.sleep(for: .milliseconds(25))
            }
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("scrape-\(UUID().uuidString).txt").path
            defer { try? FileManager.default.removeItem(atPath: file) }
            try scrape.write(toFile: file, atomically: true, encoding: .utf8)
            let linted = try await tools.promtool(["check", "metrics"], input: file)
            #expect(linted.status == 0, "promtool check metrics: \(linted.output)\n\(scrape)")

            // Every metric the dashboard queries is in a real scrape.
            let names = Set(scrape.split(separator: "\n").filter { !$0.hasPrefix("#") }.compactMap { line in
                line.split(whereSeparator: { $0 == "{" || $0 == " " }).first.map(String.init)
            })
            for name in try Self.dashboardMetricNames() {
                #expect(names.contains(name), "the dashboard queries \(name), which the scrape does not have")
            }

            // A real prometheus: the open breaker, then Redis gone.
            #expect(try await Self.query("fusebox_breaker_state{breaker=\"payments\"}", on: prometheus, http, until: 2) == 2, "\(prometheus.log)")
            #expect(try await Self.query("fusebox_breaker_isolated{breaker=\"ledger\"}", on: prometheus, http, until: 1) == 1)
            #expect(try await Self.query("fusebox_store_up", on: prometheus, http, until: 1) == 1)
            server.kill()
            #expect(try await Self.query("fusebox_store_up", on: prometheus, http, until: 0) == 0, "Redis unreachable shows in the scrape")
        } catch {
            Issue.record("\(error)")
        }
        await prometheus.stop()
        try await http.shutdown()
        _ = await serve.stop()
    }

    @Test("the Grafana dashboard has the fields its schema version requires, a templated row per breaker and fleet health at the top")
    func grafanaDashboard() throws {
        let data = try Data(contentsOf: repositoryRoot.appendingPathComponent("Docs/grafana/fusebox.json"))
        let dashboard = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        for field in ["title", "uid", "schemaVersion", "panels", "templating", "time", "version"] {
            #expect(dashboard[field] != nil, "the dashboard has no '\(field)'")
        }
        #expect((dashboard["schemaVersion"] as? Int ?? 0) >= 36, "panels with datasource objects need schema 36 or later")
        let variables = ((dashboard["templating"] as? [String: Any])?["list"] as? [[String: Any]]) ?? []
        let breaker = try #require(variables.first { $0["name"] as? String == "breaker" })
        #expect(breaker["type"] as? String == "query" && breaker["includeAll"] as? Bool == true)
        #expect(variables.contains { $0["name"] as? String == "datasource" && $0["type"] as? String == "datasource" })
        let panels = try #require(dashboard["panels"] as? [[String: Any]])
        var ids: Set<Int> = []
        for panel in panels {
            let title = panel["title"] as? String ?? "?"
            let id = try #require(panel["id"] as? Int, "\(title) has no id")
            #expect(ids.insert(id).inserted, "panel id \(id) twice")
            #expect(panel["type"] is String, "\(title) has no type")
            let grid = try #require(panel["gridPos"] as? [String: Int], "\(title) has no gridPos")
            #expect(["h", "w", "x", "y"].allSatisfy { grid[$0] != nil } && grid["x"]! + grid["w"]! <= 24, "\(title): \(grid)")
            if panel["type"] as? String == "row" { continue }
            let targets = try #require(panel["targets"] as? [[String: Any]], "\(title) has no targets")
            #expect(!targets.isEmpty && targets.allSatisfy { $0["expr"] is String && $0["refId"] is String }, "\(title)")
        }
        // Fleet health first; the breaker row repeats over $breaker.
        #expect(panels.first?["type"] as? String == "row" && panels.first?["title"] as? String == "Fleet")
        #expect(panels.contains { $0["type"] as? String == "row" && $0["repeat"] as? String == "breaker" })
        let expressions = panels.flatMap { ($0["targets"] as? [[String: Any]] ?? []).compactMap { $0["expr"] as? String } }
        for topic in ["fusebox_breaker_state", "fusebox_breaker_failure_rate", "fusebox_breaker_slow_call_rate", "fusebox_rejections_total",
                      "fusebox_transitions_total", "fusebox_breaker_store_down_fallback", "fusebox_breaker_time_in_state_seconds", "fusebox_health"] {
            #expect(expressions.contains { $0.contains(topic) }, "no panel shows \(topic)")
        }
    }

    /// Every `fusebox_…` metric name the dashboard's expressions use.
    static func dashboardMetricNames() throws -> Set<String> {
        let text = try String(contentsOf: repositoryRoot.appendingPathComponent("Docs/grafana/fusebox.json"), encoding: .utf8)
        let pattern = try NSRegularExpression(pattern: "fusebox_[a-z_]+")
        let dashboard = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] ?? [:]
        let expressions = (dashboard["panels"] as? [[String: Any]] ?? []).flatMap {
            ($0["targets"] as? [[String: Any]] ?? []).compactMap { $0["expr"] as? String }
        } + ((dashboard["templating"] as? [String: Any])?["list"] as? [[String: Any]] ?? []).compactMap { $0["definition"] as? String }
        var names: Set<String> = []
        for expression in expressions {
            for match in pattern.matches(in: expression, range: NSRange(expression.startIndex..., in: expression)) {
                names.insert(String(expression[Range(match.range, in: expression)!]))
            }
        }
        return names
    }

    static func get(_ url: String, _ http: HTTPClient) async throws -> String {
        let response = try await http.execute(HTTPClientRequest(url: url), timeout: .seconds(5))
        return String(buffer: try await response.body.collect(upTo: 4 << 20))
    }

    /// Polls an instant query (up to 20 s) until it answers one sample of value `expected`; returns the last value seen.
    static func query(_ expression: String, on prometheus: PrometheusTools.Server, _ http: HTTPClient, until expected: Double) async throws -> Double? {
        let encoded = expression.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? expression
        var last: Double?
        for _ in 0..<200 {
            if let text = try? await get(prometheus.base + "/api/v1/query?query=" + encoded, http),
                let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
                let result = (object["data"] as? [String: Any])?["result"] as? [[String: Any]],
                let value = result.first?["value"] as? [Any], let number = (value.last as? String).flatMap(Double.init)
            {
                last = number
                if result.count == 1 && number == expected { return number }
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        return last
    }
}
#endif
