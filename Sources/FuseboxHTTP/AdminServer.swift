import Foundation
import Fusebox
import ServiceLifecycle
import Hummingbird
import Logging
import NIOCore

/// `fusebox serve`: the admin routes over an administration (every breaker of a Redis namespace, for `serve`), as a
/// Hummingbird application whose services include the administration (a Redis one's subscription to the
/// transitions channel).
public enum AdminServer {
    /// Whether `host` is a loopback address (`127.0.0.0/8`, `::1`, `localhost`).
    public static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host == "[::1]" || host.hasPrefix("127.")
    }

    /// Checks what `makeApplication` would refuse, before anything connects: a host that is not loopback without a
    /// token, a port outside 0…65535.
    public static func validate(host: String, port: Int, token: String?) throws(FuseboxError) {
        if (token ?? "").isEmpty && !isLoopback(host) {
            throw FuseboxError(
                code: .invalidConfiguration,
                message: "refusing to serve on \(host) without a token: the reset, isolate and half-open routes would be open to the network; set --token or FUSEBOX_ADMIN_TOKEN, or bind to 127.0.0.1")
        }
        guard (0...65535).contains(port) else {
            throw FuseboxError(code: .invalidConfiguration, message: "--port \(port) is not a port (0…65535; 0 picks a free one)")
        }
    }

    /// Makes the application; `onListening` gets the address bound (the port chosen when `port` is 0).
    ///
    /// Without a token the server refuses a host that is not loopback: the mutating routes would be open to
    /// the network. Throws `FuseboxError/Code/invalidConfiguration` saying so.
    public static func makeApplication(
        administration: some BreakerAdministration & Service, host: String, port: Int, token: String?, logger: Logger,
        onListening: @escaping @Sendable (String, Int) -> Void = { _, _ in }
    ) throws(FuseboxError) -> some ApplicationProtocol {
        try validate(host: host, port: port, token: token)
        let token = token.flatMap { $0.isEmpty ? nil : $0 }
        let router = Router()
        router.addRoutes(AdminRoutes<BasicRequestContext>(administration: administration, token: token).collection)
        return Application(
            router: router,
            configuration: ApplicationConfiguration(address: .hostname(host, port: port), serverName: "fusebox"),
            services: [administration],
            onServerRunning: { channel in
                onListening(host, channel.localAddress?.port ?? port)
            },
            logger: logger)
    }
}
