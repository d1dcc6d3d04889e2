import ArgumentParser
import Foundation
import Fusebox
import FuseboxRedis
import Hiredis

#if canImport(Glibc)
import Glibc
#endif

/// The `fusebox` command: inspect and steer shared circuit breakers, run commands through them, and the demo.
@main
struct FuseboxCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fusebox",
        abstract: "Shared-state circuit breakers: inspect, steer, run commands through them, demo.",
        discussion: "Exit codes: 0 success, 64 usage, 69 Redis unavailable, 75 rejected by the breaker (run).",
        subcommands: subcommands
    )

    #if FUSEBOX_HTTP
    static let subcommands: [any ParsableCommand.Type] = [
        ListCommand.self, ShowCommand.self, IsolateCommand.self, ResetCommand.self, HalfOpenCommand.self, AuditCommand.self,
        WatchCommand.self, RunCommand.self, PolicyCommand.self, ServeCommand.self, DemoCommand.self, DemoInstanceCommand.self, LoadCommand.self,
    ]
    #else
    // A sanitizer build (Package.swift, FUSEBOX_WITHOUT_HTTP) has no HTTP server.
    static let subcommands: [any ParsableCommand.Type] = [
        ListCommand.self, ShowCommand.self, IsolateCommand.self, ResetCommand.self, HalfOpenCommand.self, AuditCommand.self,
        WatchCommand.self, RunCommand.self, PolicyCommand.self, DemoCommand.self, DemoInstanceCommand.self, LoadCommand.self,
    ]
    #endif

    /// Runs the command line, with the global options accepted before the subcommand as well as after it.
    static func main() async {
        await main(GlobalOptions.hoisting(Array(CommandLine.arguments.dropFirst())))
    }
}

/// Options every command that talks to Redis takes, before or after the subcommand's name.
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: "Redis URL (default: $FUSEBOX_REDIS_URL, else redis://127.0.0.1:6379).")
    var redis: String?

    @Option(name: .long, help: "Key namespace (default: $FUSEBOX_NAMESPACE, else fusebox).")
    var namespace: String?

    @Option(name: .long, help: "Who acts, for the audit trail (default: USER@HOST).")
    var by: String?

    /// The actor the audit trail names: `--by`, else `USER@HOST`.
    var actor: String {
        if let by, !by.trimmingCharacters(in: .whitespaces).isEmpty { return by }
        return "\(ProcessInfo.processInfo.environment["USER"] ?? "unknown")@\(ProcessInfo.processInfo.hostName)"
    }

    var redisURL: String {
        redis ?? Self.environment("FUSEBOX_REDIS_URL") ?? "redis://127.0.0.1:6379"
    }

    var keyNamespace: String { namespace ?? Self.environment("FUSEBOX_NAMESPACE") ?? "fusebox" }

    private static func environment(_ name: String) -> String? {
        ProcessInfo.processInfo.environment[name].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The options that may come before the subcommand: `--redis URL`, `--namespace NS` (or `--option=value`) and
    /// `--json`.
    /// Commands whose subcommands take the global options.
    static let groups: Set<String> = ["policy"]

    static let hoisted: [String: Bool] = ["--redis": true, "--namespace": true, "--by": true, "--json": false]

    /// `arguments` with the global options written before the subcommand moved to just after its name, where
    /// the subcommand parses them: `--redis URL list` becomes `list --redis URL`. Anything else is left as it is
    /// (an unknown option still gets the parser's error).
    static func hoisting(_ arguments: [String]) -> [String] {
        var leading: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            let name = String(argument.prefix(while: { $0 != "=" }))
            guard let takesValue = hoisted[name] else { break }
            leading.append(argument)
            index += 1
            if takesValue && !argument.contains("=") && index < arguments.count {
                leading.append(arguments[index])
                index += 1
            }
        }
        guard !leading.isEmpty, index < arguments.count else { return arguments }
        // A command group (`policy set`) takes them after its subcommand's name.
        let names = groups.contains(arguments[index]) && index + 1 < arguments.count ? 2 : 1
        return Array(arguments[index..<(index + names)]) + leading + arguments[(index + names)...]
    }

    /// A configuration with short timeouts (an operator waits at most a few seconds).
    func configuration() throws -> RedisConfiguration {
        do {
            var configuration = try RedisConfiguration(url: redisURL)
            configuration.connectTimeout = .seconds(2)
            configuration.commandTimeout = .seconds(2)
            configuration.clientName = "fusebox-cli"
            return configuration
        } catch {
            throw CLIError.usage(error.message)
        }
    }

    /// An operator on a connection checked with `PING`.
    func makeOperator() async throws -> BreakerOperator {
        let connection = try RedisClient(configuration: configuration())
        try await checkReachable(connection)
        return BreakerOperator(connection: connection, namespace: keyNamespace, actor: actor)
    }

    /// `PING`s through `connection`; unreachable Redis is exit 69 with the reason.
    func checkReachable(_ connection: RedisClient) async throws {
        do {
            _ = try await connection.send("PING")
        } catch {
            throw CLIError.unavailable("Redis at \(redisURL.redactingPassword) is unavailable: \(error.code): \(error.message)")
        }
    }
}

/// The failures a command reports: one line on stderr and an exit code.
enum CLIError: Error {
    /// Bad input: exit 64.
    case usage(String)
    /// Redis unavailable: exit 69.
    case unavailable(String)
    /// Anything else: exit 1.
    case failed(String)

    static func from(_ error: FuseboxError) -> CLIError {
        switch error.code {
        case .backendUnavailable: .unavailable(error.message)
        case .invalidConfiguration, .invalidName, .invalidPolicy, .unknownBreaker: .usage(error.message)
        default: .failed(error.message)
        }
    }
}

/// Runs a command body, turning every error into one line on stderr and the documented exit code.
func reportingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as CLIError {
        switch error {
        case .usage(let text):
            printError(text)
            throw ExitCode(64)
        case .unavailable(let text):
            printError(text)
            throw ExitCode(69)
        case .failed(let text):
            printError(text)
            throw ExitCode(1)
        }
    } catch let error as FuseboxError {
        try await reportingErrors { throw CLIError.from(error) }
    } catch let error as ExitCode {
        throw error
    } catch {
        printError("\(error)")
        throw ExitCode(1)
    }
}

func printError(_ text: String) {
    flushOutput()
    let line = Array("fusebox: \(text)\n".utf8)
    line.withUnsafeBytes { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
}

/// Flushes standard output (so lines reach a pipe at once).
func flushOutput() { fflush(nil) }

extension String {
    /// `redis://user:***@host` for messages.
    var redactingPassword: String {
        (try? RedisConfiguration(url: self).redactedURL) ?? self
    }
}

/// Parses `500ms`, `10s`, `2m`, `1h`, `250us` (`Duration(parsing:)`); anything else is a usage error (exit 64).
func parseDuration(_ text: String) throws -> Duration {
    guard let duration = Duration(parsing: text) else {
        throw CLIError.usage("bad duration '\(text)': write it like 500ms, 10s, 2m or 1h (at most 10 years)")
    }
    return duration
}
