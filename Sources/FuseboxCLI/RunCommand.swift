import Foundation
import ArgumentParser
import Fusebox
import FuseboxRedis
import FuseboxTestKit
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
            running it when the breaker rejects. The outcome is written to Redis before fusebox exits.
            Example: fusebox run nightly-export --consecutive-failures 3 --break-duration 10m -- ./export.sh
            """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The breaker's name.") var name: String
    @Option(name: .long, help: "Trip when failures / calls ≥ R (0 < R ≤ 1) once the window holds --minimum-throughput calls.") var failureRatio: Double?
    @Option(name: .long, help: "Calls the window must hold before the ratio rules apply.") var minimumThroughput: Int?
    @Option(name: .long, help: "The time window, e.g. 10s or 1h.") var samplingDuration: String?
    @Option(name: .long, help: "Trip after N failures in a row.") var consecutiveFailures: Int?
    @Option(name: .long, help: "A call longer than this is slow, e.g. 30s.") var slowCallDuration: String?
    @Option(name: .long, help: "How long the breaker stays open, e.g. 30s.") var breakDuration: String?
    @Option(name: .long, help: "Probes allowed at a time while half-open.") var halfOpenPermits: Int?
    @Option(name: .long, help: "Probe successes needed to close.") var successThreshold: Int?
    @Option(name: .long, help: "The longest the breaker stays half-open without closing before it opens again, e.g. 1m.")
    var maxHalfOpen: String?
    @Option(name: .long, help: "This process's instance id in events and the quorum (default: $FUSEBOX_INSTANCE_ID, else HOST-PID-RANDOM).")
    var instanceID: String?
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.") var command: [String] = []

    func policy() throws -> BreakerPolicy {
        var policy = BreakerPolicy()
        if let consecutiveFailures {
            policy.consecutiveFailureThreshold = consecutiveFailures
            if failureRatio == nil { policy.failureRateThreshold = nil }
        }
        if let failureRatio { policy.failureRateThreshold = failureRatio }
        if let minimumThroughput { policy.minimumThroughput = minimumThroughput }
        if let samplingDuration { policy.window = .time(samplingDuration: try parseDuration(samplingDuration), buckets: 10) }
        if let slowCallDuration { policy.slowCallDuration = try parseDuration(slowCallDuration) }
        if let breakDuration { policy.breakDuration = .fixed(try parseDuration(breakDuration)) }
        if let halfOpenPermits { policy.permittedCallsInHalfOpen = halfOpenPermits }
        if let successThreshold { policy.successThreshold = successThreshold }
        if let maxHalfOpen { policy.maxHalfOpenDuration = try parseDuration(maxHalfOpen) }
        do {
            return try policy.validated()
        } catch {
            throw CLIError.usage(error.message)
        }
    }

    func run() async throws {
        var exitStatus: Int32 = 0
        try await reportingErrors {
            guard !command.isEmpty else { throw CLIError.usage("no command: write it after --, as in `fusebox run NAME -- ./job.sh`") }
            let policy = try self.policy()
            _ = try await global.makeOperator()  // fails with 69 when Redis is unavailable
            var options = DistributedOptions(redis: try global.configuration())
            options.namespace = global.keyNamespace
            options.whenUnavailable = .failClosed
            if let id = instanceID ?? ProcessInfo.processInfo.environment["FUSEBOX_INSTANCE_ID"].flatMap({ $0.isEmpty ? nil : $0 }) {
                options.instanceID = id
            }
            let adapter = try DistributedAdapter(options: options)
            let registry = BreakerRegistry(adapter: adapter)
            let breaker = try registry.breaker(name, policy: policy)

            let permit: BreakerPermit
            do {
                permit = try await breaker.acquireAsync()
            } catch let error as FuseboxError {
                if error.code == .backendUnavailable { throw CLIError.unavailable(error.message) }
                // A rejection from the cached state is counted in the buffer: write it before exiting.
                await adapter.flush()
                printError("not running `\(command.joined(separator: " "))`: \(error.message)")
                throw ExitCode(75)
            }
            let child: ChildProcess
            do {
                child = try ChildProcess(executable: command[0], arguments: Array(command.dropFirst()), outputPath: nil, searchPath: true)
            } catch {
                permit.ignore()
                await adapter.flush()
                throw CLIError.failed("cannot run \(command[0]): \(error)")
            }
            let status = await child.waitForExit(upTo: .seconds(Int64.max / 2)) ?? 1
            if status == 0 { permit.success() } else { permit.failure(CommandExitStatus(status: status)) }
            await adapter.flush()
            exitStatus = status
        }
        if exitStatus != 0 { throw ExitCode(exitStatus) }
    }
}
