import Foundation
import ArgumentParser
import Configuration
import Fusebox
import FuseboxRedis
import FuseboxProcess
import Logging

/// A command that exited with a non-zero status: the failure `fusebox run` records.
struct CommandExitStatus: Error, CustomStringConvertible {
    var status: Int32
    var description: String { "exit status \(status)" }
}

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a command through a shared breaker.",
        discussion: """
            Exits with the command's exit code (non-zero counts as a failure), or with 75 (EX_TEMPFAIL) without \
            running it when the breaker rejects or the fleet-wide limit is reached. Outcomes are written to Redis \
            before fusebox exits. The policy is the breaker's configuration (FUSEBOX_BREAKERS_NAME_*, or --config \
            FILE) with the flags given applied over it; an operator's override (fusebox policy set) wins over both.
            Example: fusebox run nightly-export --consecutive-failures 3 --break-duration 10m -- ./export.sh
            """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The breaker's name.") var name: String
    @OptionGroup var rules: PolicyOptions
    @Option(name: .long, help: "Retries after a failed run (each one through the breaker; a rejection is never retried). Default 0.")
    var retries = 0
    @Option(name: .long, help: "The wait before the first retry, doubled for each next one (at most 1 min), e.g. 2s.")
    var retryBackoff = "1s"
    @Option(name: .long, help: "At most N runs of this name at once across every host (leases in Redis).")
    var maxConcurrent: Int?
    @Option(name: .long, help: "How long a fleet-wide lease lasts unless renewed (a killed holder's slot returns within it), e.g. 30s.")
    var leaseTTL = "30s"
    @Option(name: .long, help: "A configuration file, YAML if its name ends in .yaml or .yml, else JSON (keys as in Docs/configuration.md); the environment wins over it.")
    var config: String?
    @Option(name: .long, help: "This process's instance id in events and the quorum (default: $FUSEBOX_INSTANCE_ID, else HOST-PID-RANDOM).")
    var instanceID: String?
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.") var command: [String] = []

    /// The configuration: the environment, then the file of `--config`.
    func loadConfiguration() async throws -> FuseboxConfiguration {
        var providers: [any ConfigProvider] = [EnvironmentVariablesProvider()]
        if let config {
            guard FileManager.default.fileExists(atPath: config) else { throw CLIError.usage("--config \(config): no such file") }
            // YAML for a name ending in .yaml or .yml, JSON for any other.
            let isYAML = config.hasSuffix(".yaml") || config.hasSuffix(".yml")
            do {
                let path = ConfigReader(provider: InMemoryProvider(values: ["filePath": .init(.string(config), isSecret: false)]))
                if isYAML {
                    providers.append(try await FileProvider<YAMLSnapshot>(config: path))
                } else {
                    providers.append(try await FileProvider<JSONSnapshot>(config: path))
                }
            } catch {
                throw CLIError.usage("--config \(config): not a \(isYAML ? "YAML" : "JSON") configuration file (\(error))")
            }
        }
        do {
            return try FuseboxConfiguration(config: ConfigReader(providers: providers))
        } catch {
            throw CLIError.usage(error.message)
        }
    }

    /// The policy: flags over configuration over defaults.
    func policy(configuration: FuseboxConfiguration) throws -> BreakerPolicy {
        let (base, origin): (BreakerPolicy, PolicyOrigin)
        do {
            (base, origin) = try configuration.policy(for: name)
        } catch {
            throw CLIError.usage(error.message)
        }
        return try rules.applied(to: base, replacingDefaultRatio: origin == .defaults)
    }

    func run() async throws {
        var exitStatus: Int32 = 0
        try await reportingErrors {
            guard !command.isEmpty else { throw CLIError.usage("no command: write it after --, as in `fusebox run NAME -- ./job.sh`") }
            try checkName(name)
            guard (0...100).contains(retries) else { throw CLIError.usage("--retries is \(retries); allowed: 0…100") }
            let backoff = try parseDuration(retryBackoff)
            let ttl = try parseDuration(leaseTTL)
            let configuration = try await loadConfiguration()
            var policy = try self.policy(configuration: configuration)
            // --redis and --namespace win, then the configuration (FUSEBOX_REDIS_URL, the file), then the defaults.
            var global = self.global
            if global.redis == nil { global.redis = configuration.redisURL }
            if global.namespace == nil { global.namespace = configuration.namespace }
            let breakers = try await global.makeOperator()  // fails with 69 when Redis is unavailable
            if let override = try? await breakers.override(of: name) {
                policy = override.policy
                printError("'\(name)' runs an operator's override (set by \(override.setBy)): \(policy.stateRulesDescription)")
            }
            var options = DistributedOptions(redis: try global.configuration())
            options.namespace = global.keyNamespace
            options.whenUnavailable = .failClosed
            if let id = instanceID ?? ProcessInfo.processInfo.environment["FUSEBOX_INSTANCE_ID"].flatMap({ $0.isEmpty ? nil : $0 }) {
                options.instanceID = id
            }
            // The command's own output and `fusebox run`'s messages are what the terminal shows, not the breaker's log.
            let quiet = Logger(label: "fusebox-run", factory: { _ in SwiftLogNoOpLogHandler() })
            let adapter = try DistributedAdapter(options: options, logger: quiet)
            let registry = BreakerRegistry(adapter: adapter, configuration: configuration, logger: quiet)
            // A command that cannot be started says nothing of the dependency: it counts neither way.
            policy.classification = .ignoring([CannotStart.self])
            let breaker = try registry.breaker(name, policy: policy)
            // The adapter's background work while the command runs: membership, flushes, and the renewal of a probe
            // permit's lease, so that a long command keeps its probe while a killed process loses it at the lease's end.
            let background = Task { try? await registry.run() }
            defer { background.cancel() }

            // The fleet-wide slot is held for the whole run, retries included, and renewed while it lasts.
            var lease: FleetLease?
            var renewal: Task<Bool, Never>?
            if let maxConcurrent {
                do {
                    let limit = try FleetBulkhead(connection: breakers.connection, namespace: global.keyNamespace, name: name, limit: maxConcurrent, ttl: ttl)
                    let held = try await limit.acquire(id: options.instanceID)
                    lease = held
                    renewal = Task { await held.keepRenewing() }
                } catch let error as FuseboxError where error.code == .bulkheadFull {
                    printError("not running `\(command.joined(separator: " "))`: \(error.message)")
                    throw ExitCode(75)
                } catch let error as FuseboxError {
                    throw CLIError.from(error)
                }
            }

            var retry = RetryPolicy(maxAttempts: retries + 1, backoff: .exponential(base: backoff, factor: 2))
            retry.maxDelay = max(backoff, .seconds(60))
            retry.name = name
            retry.shouldRetry = { !($0 is CannotStart) }
            let command = self.command
            retry.onEvent = { event in
                if case .retrying(let attempt, let delay, let error) = event {
                    printError("attempt \(attempt) of \(retries + 1) failed (\(error)); retrying in \(FuseboxError.format(delay))")
                }
            }
            let pipeline = ResiliencePipeline<Int32>().retry(retry).breaker(breaker)
            do {
                exitStatus = try await pipeline.run {
                    let child: ChildProcess
                    do {
                        child = try ChildProcess(executable: command[0], arguments: Array(command.dropFirst()), outputPath: nil, searchPath: true)
                    } catch {
                        throw CannotStart(description: "cannot run \(command[0]): \(error)")
                    }
                    let status = await child.waitForExit(upTo: .seconds(Int64.max / 2)) ?? 1
                    if status != 0 { throw CommandExitStatus(status: status) }
                    return 0
                }
            } catch let failed as CommandExitStatus {
                exitStatus = failed.status
            } catch let error as FuseboxError {
                await adapter.flush()
                renewal?.cancel()
                try? await lease?.release()
                if error.code == .backendUnavailable { throw CLIError.unavailable(error.message) }
                printError("not running `\(command.joined(separator: " "))`: \(error.message)")
                throw ExitCode(75)
            } catch let error as CannotStart {
                await adapter.flush()
                renewal?.cancel()
                try? await lease?.release()
                throw CLIError.failed(error.description)
            }
            await adapter.flush()
            renewal?.cancel()
            if let renewal, await renewal.value == false {
                printError("the fleet-wide lease of '\(name)' expired while the command ran (Redis was unreachable for longer than --lease-ttl)")
            }
            try? await lease?.release()
        }
        if exitStatus != 0 { throw ExitCode(exitStatus) }
    }
}

/// The command could not be started at all (not a failure of the dependency).
struct CannotStart: Error, CustomStringConvertible {
    var description: String
}
