#if FUSEBOX_HTTP
import ArgumentParser
import Foundation
import Fusebox
import FuseboxHTTP
import FuseboxRedis
import Hiredis
import Logging

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "The HTTP admin API, Prometheus /metrics, /health and the live dashboard, for every breaker of the namespace.",
        discussion: """
            Mutating routes need 'Authorization: Bearer TOKEN' when a token is set (--token or FUSEBOX_ADMIN_TOKEN); \
            without one, serve binds to loopback only. Routes: Docs/http-api.md.
            """)

    @OptionGroup var global: GlobalOptions
    @Option(name: .long, help: "The address to listen on.") var host = "127.0.0.1"
    @Option(name: .long, help: "The port to listen on (0: a free one, printed).") var port = 8080
    @Option(name: .long, help: "The bearer token mutating routes need (default: FUSEBOX_ADMIN_TOKEN).") var token: String?

    func run() async throws {
        try await reportingErrors {
            let token = token ?? ProcessInfo.processInfo.environment["FUSEBOX_ADMIN_TOKEN"]
            var logger = Logger(label: "fusebox-serve")
            logger.logLevel = .notice
            try AdminServer.validate(host: host, port: port, token: token)
            let configuration = try global.configuration()
            let administration = try RedisAdministration(configuration: configuration, namespace: global.keyNamespace, logger: logger)
            defer { administration.close() }
            try await global.checkReachable(administration.breakers.connection)
            let hasToken = !(token ?? "").isEmpty
            let application = try AdminServer.makeApplication(
                administration: administration, host: host, port: port, token: token, logger: logger
            ) { host, port in
                let shown = host.contains(":") ? "[\(host)]" : host
                print("fusebox serve: \(administration.scope)")
                print("dashboard: http://\(shown):\(port)/")
                print(hasToken ? "mutating routes need the bearer token" : "no token: listening on loopback only, mutating routes open to local callers")
                flushOutput()
            }
            try await application.runService()
        }
    }
}
#endif
