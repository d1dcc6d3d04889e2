import ArgumentParser
import Foundation
import Fusebox
import FuseboxRedis

/// The policy flags `fusebox run` and `fusebox policy set` share; each one given changes one field of a base policy.
struct PolicyOptions: ParsableArguments {
    @Option(name: .long, help: "Trip when failures / calls ≥ R (0 < R ≤ 1) once the window holds --minimum-throughput calls; 'off' turns the rule off.")
    var failureRatio: String?
    @Option(name: .long, help: "Calls the window must hold before the ratio rules apply.") var minimumThroughput: Int?
    @Option(name: .long, help: "The time window, e.g. 10s or 1h.") var samplingDuration: String?
    @Option(name: .long, help: "Trip after N failures in a row; 'off' turns the rule off.") var consecutiveFailures: String?
    @Option(name: .long, help: "Trip when slow calls / calls ≥ R; 'off' turns the rule off.") var slowCallRatio: String?
    @Option(name: .long, help: "A call longer than this is slow, e.g. 30s.") var slowCallDuration: String?
    @Option(name: .long, help: "How long the breaker stays open, e.g. 30s.") var breakDuration: String?
    @Option(name: .long, help: "Probes allowed at a time while half-open.") var halfOpenPermits: Int?
    @Option(name: .long, help: "Probe successes needed to close.") var successThreshold: Int?
    @Option(name: .long, help: "The longest the breaker stays half-open without closing before it opens again, e.g. 1m.")
    var maxHalfOpen: String?
    @Option(name: .long, help: "normal, metrics-only (never trips), disabled (admits everything, records nothing) or shadow (decides as normal, never rejects: counts what it would reject).")
    var mode: String?
    @Option(name: .long, help: "Shed calls while the dependency accepts fewer than 1 in K of them (adaptive throttling, K from 1 to 100, e.g. 2); 'off' turns it off.")
    var adaptiveThrottling: String?
    @Option(name: .long, help: "Trip at F times the dependency's long-run failure rate (a relative threshold; 0 < F ≤ 1000, e.g. 4); 'off' turns it off.")
    var relativeFailureFactor: String?
    @Option(name: .long, help: "The relative threshold's floor: never trip below this ratio (0 < R ≤ 1; default 0.02).")
    var relativeFailureFloor: Double?

    var isEmpty: Bool {
        [failureRatio, samplingDuration, consecutiveFailures, slowCallRatio, slowCallDuration, breakDuration, maxHalfOpen, mode, adaptiveThrottling,
         relativeFailureFactor]
            .allSatisfy { $0 == nil } && minimumThroughput == nil && halfOpenPermits == nil && successThreshold == nil
            && relativeFailureFloor == nil
    }

    /// `base` with every given flag applied, validated. A consecutive-failure rule given without a failure ratio
    /// replaces the ratio rule when `base` is the default policy (`--consecutive-failures 3` means "after 3 in a row").
    func applied(to base: BreakerPolicy, replacingDefaultRatio: Bool) throws -> BreakerPolicy {
        var policy = base
        func ratio(_ text: String, _ flag: String) throws -> Double? {
            if text.lowercased() == "off" { return nil }
            guard let value = Double(text), value > 0, value <= 1 else { throw CLIError.usage("--\(flag) is '\(text)'; allowed: 0 < R ≤ 1, or off") }
            return value
        }
        if let consecutiveFailures {
            if consecutiveFailures.lowercased() == "off" {
                policy.consecutiveFailureThreshold = nil
            } else {
                guard let count = Int(consecutiveFailures) else { throw CLIError.usage("--consecutive-failures is '\(consecutiveFailures)'; allowed: a whole number ≥ 1, or off") }
                policy.consecutiveFailureThreshold = count
                if failureRatio == nil && replacingDefaultRatio { policy.failureRateThreshold = nil }
            }
        }
        if let failureRatio { policy.failureRateThreshold = try ratio(failureRatio, "failure-ratio") }
        if let slowCallRatio { policy.slowCallRateThreshold = try ratio(slowCallRatio, "slow-call-ratio") }
        if let minimumThroughput { policy.minimumThroughput = minimumThroughput }
        if let samplingDuration {
            let buckets: Int = if case .time(_, let buckets) = policy.window { buckets } else { 10 }
            policy.window = .time(samplingDuration: try parseDuration(samplingDuration), buckets: buckets)
        }
        if let slowCallDuration { policy.slowCallDuration = try parseDuration(slowCallDuration) }
        if let breakDuration { policy.breakDuration = .fixed(try parseDuration(breakDuration)) }
        if let halfOpenPermits { policy.permittedCallsInHalfOpen = halfOpenPermits }
        if let successThreshold { policy.successThreshold = successThreshold }
        if let maxHalfOpen { policy.maxHalfOpenDuration = try parseDuration(maxHalfOpen) }
        if let mode {
            let folded = mode.lowercased().filter { $0 != "-" && $0 != "_" }
            guard let value = BreakerPolicy.Mode.allCases.first(where: { $0.rawValue.filter { $0 != "_" } == folded }) else {
                throw CLIError.usage("--mode is '\(mode)'; allowed: normal, metrics-only, disabled, shadow")
            }
            policy.mode = value
        }
        if let adaptiveThrottling {
            if adaptiveThrottling.lowercased() == "off" {
                policy.adaptiveThrottling = nil
            } else {
                guard let multiplier = Double(adaptiveThrottling), multiplier >= 1, multiplier <= 100 else {
                    throw CLIError.usage("--adaptive-throttling is '\(adaptiveThrottling)'; allowed: a number K from 1 to 100, or off")
                }
                policy.adaptiveThrottling = .init(multiplier: multiplier)
            }
        }
        if let relativeFailureFactor {
            if relativeFailureFactor.lowercased() == "off" {
                policy.relativeFailureRate = nil
            } else {
                guard let factor = Double(relativeFailureFactor), factor > 0, factor <= 1000 else {
                    throw CLIError.usage("--relative-failure-factor is '\(relativeFailureFactor)'; allowed: 0 < F ≤ 1000, or off")
                }
                var relative = policy.relativeFailureRate ?? .init()
                relative.factor = factor
                policy.relativeFailureRate = relative
            }
        }
        if let relativeFailureFloor {
            guard var relative = policy.relativeFailureRate else {
                throw CLIError.usage("--relative-failure-floor needs a relative threshold: give --relative-failure-factor too")
            }
            relative.floor = relativeFailureFloor
            policy.relativeFailureRate = relative
        }
        do {
            return try policy.validated()
        } catch {
            throw CLIError.usage(error.message)
        }
    }
}

struct PolicyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy",
        abstract: "Fleet-wide policy overrides: set, show and clear the policy every instance runs for a breaker.",
        discussion: """
            An override is kept in Redis (the hash NAMESPACE:overrides) until cleared, or until its time is up \
            (--for). Every instance applies it within one refresh interval (at once when the publish reaches it), \
            over the policy its code or configuration gives; it survives restarts.
            Example: fusebox policy set payments --failure-ratio 0.9 --reason "provider incident" --for 2h
            """,
        subcommands: [PolicySetCommand.self, PolicyShowCommand.self, PolicyClearCommand.self])
}

struct PolicySetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Store an override: the policy in force now (an earlier override, else what the instances stored) with the flags given.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The breaker's name.") var name: String
    @OptionGroup var rules: PolicyOptions
    @Option(name: .long, help: "Why, for whoever reads `fusebox policy show`.") var reason: String?
    @Option(name: .customLong("for"), help: "End the override by itself after this long, on Redis' clock, e.g. 2h (at most a year).")
    var lasting: String?

    func run() async throws {
        try await reportingErrors {
            try checkName(name)
            let duration = try lasting.map { text throws -> Duration in
                let duration = try parseDuration(text)
                guard LocalBackend.isValidActionTime(duration) else {
                    throw CLIError.usage("--for is '\(text)'; it must be more than 0 and at most a year")
                }
                return duration
            }
            guard !rules.isEmpty else { throw CLIError.usage("no policy flag given: say what to change, as in `fusebox policy set \(name) --failure-ratio 0.9`") }
            let breakers = try await global.makeOperator()
            let current = try? await breakers.override(of: name)
            let stored = try? await breakers.storedPolicy(of: name)
            let base = current?.policy ?? stored ?? BreakerPolicy()
            let policy = try rules.applied(to: base, replacingDefaultRatio: current == nil && stored == nil)
            let override = PolicyOverride(
                policy: policy, setBy: global.actor,
                setAtMilliseconds: Int64(Date().timeIntervalSince1970 * 1000), reason: reason)
            do {
                try await breakers.setOverride(override, for: name, lasting: duration)
            } catch let error as FuseboxError {
                throw CLIError.from(error)
            }
            let known = (try? await breakers.contains(name)) ?? false
            print("override set for '\(name)': \(policy.stateRulesDescription)")
            if let duration {
                let ends = Date().addingTimeInterval(Double(duration.milliseconds) / 1000)
                print("it ends by itself at \(timestamp(ends)) (in \(formatDuration(duration)), on Redis' clock); every instance then returns to its own policy")
            }
            print(known
                ? "every instance applies it within one refresh interval; `fusebox policy clear \(name)` ends it"
                : "no instance has used '\(name)' yet; instances apply it when they make it")
        }
    }
}

struct PolicyShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "The policy in force for a breaker and where it came from.")

    @OptionGroup var global: GlobalOptions
    @Flag(name: .long, help: "Print JSON.") var json = false
    @Argument(help: "The breaker's name.") var name: String

    struct Shown: Encodable {
        var name: String
        /// `override`, `instances` (their code or configuration), or `none` (no instance stored one yet).
        var origin: String
        var policy: String?
        var set_by: String?
        var set_at_ms: Int64?
        var reason: String?
        /// When an override set for a time ends (Redis time, ms since 1970); `nil` otherwise.
        var expires_at_ms: Int64?
    }

    func run() async throws {
        try await reportingErrors {
            try checkName(name)
            let breakers = try await global.makeOperator()
            let override: PolicyOverride?
            let stored: BreakerPolicy?
            do {
                override = try await breakers.override(of: name)
                stored = try await breakers.storedPolicy(of: name)
            } catch let error as FuseboxError {
                throw CLIError.from(error)
            }
            let shown = Shown(
                name: name, origin: override != nil ? "override" : stored != nil ? "instances" : "none",
                policy: (override?.policy ?? stored)?.stateRulesDescription, set_by: override?.setBy,
                set_at_ms: override?.setAtMilliseconds, reason: override?.reason, expires_at_ms: override?.expiresAtMilliseconds)
            if json { return try printJSON(shown) }
            switch shown.origin {
            case "override":
                let at = Date(timeIntervalSince1970: Double(shown.set_at_ms ?? 0) / 1000)
                print("\(name): policy in force is an operator's override, set by \(shown.set_by ?? "?") at \(timestamp(at))\(shown.reason.map { " (\($0))" } ?? "")")
                print("  \(shown.policy ?? "")")
                if let expires = shown.expires_at_ms {
                    print("  ends by itself at \(timestamp(Date(timeIntervalSince1970: Double(expires) / 1000))) (Redis' clock)")
                }
            case "instances":
                print("\(name): policy in force is the instances' own (from their code or configuration); no override is set")
                print("  \(shown.policy ?? "")")
            default:
                print("\(name): no override is set and no instance has stored a policy yet")
            }
        }
    }
}

struct PolicyClearCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "clear", abstract: "Remove a breaker's override: every instance returns to its own policy.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The breaker's name.") var name: String

    func run() async throws {
        try await reportingErrors {
            try checkName(name)
            let removed: Bool
            do {
                removed = try await global.makeOperator().clearOverride(of: name)
            } catch let error as FuseboxError {
                throw CLIError.from(error)
            }
            print(removed
                ? "override cleared for '\(name)'; every instance returns to its own policy within one refresh interval"
                : "no override was set for '\(name)'")
        }
    }
}

/// Exit 64 with the reason when `name` is not a breaker name.
func checkName(_ name: String) throws {
    do {
        try BreakerRegistry.validate(name: name)
    } catch {
        throw CLIError.usage(error.message)
    }
}
