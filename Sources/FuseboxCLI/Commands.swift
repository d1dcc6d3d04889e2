import ArgumentParser
import Foundation
import Fusebox
import FuseboxRedis
import Hiredis

struct ListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "Every breaker with state, version, failure rate, calls, rejections, time in state.")

    @OptionGroup var global: GlobalOptions
    @Flag(name: .long, help: "Print JSON.") var json = false

    func run() async throws {
        try await reportingErrors {
            let snapshots = try await global.makeOperator().snapshots()
            if json {
                try printJSON(snapshots.map(SnapshotJSON.init))
            } else if snapshots.isEmpty {
                print("no breakers in namespace '\(global.keyNamespace)'")
            } else {
                print(breakerTable(snapshots, style: .standardOutput))
            }
        }
    }
}

struct ShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "One breaker's full snapshot and recent transitions.")

    @OptionGroup var global: GlobalOptions
    @Flag(name: .long, help: "Print JSON.") var json = false
    @Argument(help: "The breaker's name.") var name: String

    struct Shown: Codable {
        var breaker: SnapshotJSON
        var transitions: [TransitionJSON]
    }

    func run() async throws {
        try await reportingErrors {
            let breakers = try await global.makeOperator()
            let snapshot = try await breakers.snapshot(of: name)
            let transitions = try await breakers.timeline(of: name)
            if json {
                try printJSON(Shown(breaker: SnapshotJSON(snapshot), transitions: transitions.map(TransitionJSON.init)))
                return
            }
            let style = Style.standardOutput
            print(describe(snapshot, style: style))
            print("")
            print(style.bold("recent transitions (oldest first)"))
            if transitions.isEmpty { print("  none") }
            for transition in transitions.suffix(20) {
                let time = Date(timeIntervalSince1970: Double(transition.at.milliseconds) / 1000)
                print("  \(timestamp(time))  v\(transition.version)  \(style.state(transition.from)) → \(style.state(transition.to))  \(transition.reason)")
            }
        }
    }
}

func timestamp(_ date: Date) -> String {
    let formatter = DateFormatter()
    formatter.dateFormat = "yyyy-MM-dd HH:mm:ss.SSS"
    formatter.timeZone = TimeZone(identifier: "UTC")
    return formatter.string(from: date) + "Z"
}

func describe(_ snapshot: BreakerSnapshot, style: Style) -> String {
    var lines = [
        "\(style.bold(snapshot.name))  \(style.state(snapshot.state))  version \(snapshot.version)  for \(formatDuration(snapshot.timeInState))",
        "  last reason        \(snapshot.lastReason)",
        "  health             \(snapshot.healthScore) of 100 (\(snapshot.recentTransitions) transitions in the last 10 minutes)",
    ]
    if let wait = snapshot.timeUntilProbe { lines.append("  next probe in      \(formatDuration(wait)) (attempt \(snapshot.attempt))") }
    if let reason = snapshot.isolationReason { lines.append("  isolated because   \(reason)") }
    if let left = snapshot.isolationEndsIn {
        lines.append("  isolation ends     \(timestamp(Date().addingTimeInterval(Double(left.milliseconds) / 1000))) (in \(formatDuration(left)), on Redis' clock)")
    }
    if let threshold = snapshot.failureRateThresholdInForce, snapshot.failureBaseline != nil || snapshot.baselineCalls > 0 {
        let learned = snapshot.failureBaseline.map { "\(percent($0)) over \(Int(snapshot.baselineCalls.rounded())) calls" } ?? "nothing yet"
        lines.append("  failure threshold  \(percent(threshold)) (relative: baseline \(learned))")
    }
    if snapshot.throttleProbability > 0 {
        lines.append("  throttling         sheds \(percent(snapshot.throttleProbability)) of calls (\(String(format: "%.1f", snapshot.windowThrottled)) shed in the window)")
    }
    if snapshot.state == .halfOpen { lines.append("  probes             \(snapshot.probesInFlight) in flight, \(snapshot.probeSuccesses) succeeded") }
    lines += [
        "  window             \(snapshot.windowCalls) calls, \(snapshot.windowFailures) failures (\(percent(snapshot.failureRate))), \(snapshot.windowSlowCalls) slow (\(percent(snapshot.slowCallRate)))",
        "  streak             \(snapshot.consecutiveFailures) consecutive failures",
        "  totals             \(snapshot.totals.calls) calls: \(snapshot.totals.successes) ok, \(snapshot.totals.failures) failed, \(snapshot.totals.ignored) ignored, \(snapshot.totals.slow) slow; \(snapshot.totals.rejected) rejected"
            + (snapshot.totals.wouldReject > 0 ? "; \(snapshot.totals.wouldReject) would have been rejected (shadow mode)" : ""),
    ]
    if !snapshot.errorCounts.isEmpty {
        lines.append("  errors             " + snapshot.errorCounts.sorted { $0.value > $1.value }.map { "\($0.key) ×\($0.value)" }.joined(separator: ", "))
    }
    return lines.joined(separator: "\n")
}

struct IsolateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "isolate", abstract: "Force a breaker open on every instance until reset, or for a time (--for).")

    @OptionGroup var global: GlobalOptions
    @Flag(name: .long, help: "Print JSON.") var json = false
    @Argument(help: "The breaker's name.") var name: String
    @Option(name: .long, help: "Why: shown in every rejection.") var reason: String
    @Option(name: .customLong("for"), help: "End the isolation by itself after this long, on Redis' clock, e.g. 30m or 2h (at most a year).")
    var lasting: String?

    func run() async throws {
        try await reportingErrors {
            guard !reason.trimmingCharacters(in: .whitespaces).isEmpty else { throw CLIError.usage("--reason must not be empty") }
            let duration = try lasting.map { text throws -> Duration in
                let duration = try parseDuration(text)
                guard LocalBackend.isValidActionTime(duration) else {
                    throw CLIError.usage("--for is '\(text)'; it must be more than 0 and at most a year")
                }
                return duration
            }
            try report(try await global.makeOperator().isolate(name, reason: reason, for: duration), json: json)
        }
    }
}

struct ResetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reset", abstract: "Close a breaker on every instance, with an empty window (repairs corrupt keys).")

    @OptionGroup var global: GlobalOptions
    @Flag(name: .long, help: "Print JSON.") var json = false
    @Flag(name: .long, help: "Forget the relative failure threshold's baseline too: it learns again from the next call.") var baseline = false
    @Argument(help: "The breaker's name.") var name: String

    func run() async throws {
        try await reportingErrors { try report(try await global.makeOperator().reset(name, baseline: baseline), json: json) }
    }
}

struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit", abstract: "Operators' actions (isolate, reset, half-open, policy set and clear), newest first: who, when, what, why.")

    @OptionGroup var global: GlobalOptions
    @Flag(name: .long, help: "Print JSON.") var json = false
    @Option(name: .long, help: "How many actions to show (1 to 10000).") var limit = 50
    @Argument(help: "Only this breaker's actions.") var name: String?

    struct Entry: Codable {
        var at: String
        var breaker: String
        var action: String
        var by: String
        var reason: String?
    }

    func run() async throws {
        try await reportingErrors {
            guard (1...10_000).contains(limit) else { throw CLIError.usage("--limit is \(limit); allowed: 1 to 10000") }
            if let name { try BreakerRegistry.validate(name: name) }
            let trail = try await global.makeOperator().auditTrail(of: name, limit: limit)
            let entries = trail.map {
                Entry(at: timestamp(Date(timeIntervalSince1970: Double($0.atMilliseconds) / 1000)), breaker: $0.breaker, action: $0.action, by: $0.by, reason: $0.reason)
            }
            if json { return try printJSON(entries) }
            if entries.isEmpty { return print("no operator actions recorded in namespace '\(global.keyNamespace)'") }
            print(renderTable(["AT", "BREAKER", "ACTION", "BY", "REASON"], entries.map { [$0.at, $0.breaker, $0.action, $0.by, $0.reason ?? ""] }))
        }
    }
}

struct HalfOpenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "half-open", abstract: "Move a breaker to half-open on every instance.")

    @OptionGroup var global: GlobalOptions
    @Flag(name: .long, help: "Print JSON.") var json = false
    @Argument(help: "The breaker's name.") var name: String

    func run() async throws {
        try await reportingErrors { try report(try await global.makeOperator().forceHalfOpen(name), json: json) }
    }
}

func report(_ snapshot: BreakerSnapshot, json: Bool) throws {
    if json {
        try printJSON(SnapshotJSON(snapshot))
    } else {
        let ends = snapshot.isolationEndsIn.map {
            "; ends by itself at \(timestamp(Date().addingTimeInterval(Double($0.milliseconds) / 1000))), in \(formatDuration($0))"
        }
        print("\(snapshot.name): \(Style.standardOutput.state(snapshot.state)) (version \(snapshot.version): \(snapshot.lastReason)\(ends ?? ""))")
    }
}

struct WatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "A live table that redraws on every transition (plain lines when the output is not a terminal).")

    @OptionGroup var global: GlobalOptions
    @Flag(name: .long, help: "Print each transition as one line of JSON (the message Redis carries), nothing else.") var json = false
    @Option(name: .long, help: "Stop after this many transitions (0: run until interrupted).") var limit = 0

    func run() async throws {
        try await reportingErrors {
            let breakers = try await global.makeOperator()
            let subscriber = try RedisSubscriber(configuration: global.configuration(), channels: [breakers.channel])
            let listener = Task { await subscriber.run() }
            defer { listener.cancel() }
            let style = Style.standardOutput
            let isTerminal = !json && isatty(STDOUT_FILENO) == 1
            var seen = 0

            func redraw() async {
                guard isTerminal else { return }
                let table = (try? await breakers.snapshots()).map { breakerTable($0, style: style) } ?? "Redis unavailable; retrying"
                print("\u{1B}[H\u{1B}[2J" + style.bold("fusebox watch — \(global.keyNamespace) — \(timestamp(Date()))") + "\n\n" + table)
            }

            await redraw()
            let ticker = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(1))
                    await redraw()
                }
            }
            defer { ticker.cancel() }
            for await event in subscriber.events {
                switch event {
                case .message(let message):
                    // Recalls ask instances to write what they hold, override notes to read NS:overrides again:
                    // not transitions, not shown.
                    guard BreakerMessage.isTransition(message.text) else { continue }
                    if isTerminal {
                        await redraw()
                    } else if json {
                        print(message.text)
                        flushOutput()
                    } else {
                        print("\(timestamp(Date())) \(message.text)")
                        flushOutput()
                    }
                    seen += 1
                    if limit > 0 && seen >= limit { return }
                case .subscribed:
                    if !isTerminal && !json {
                        print("watching \(breakers.channel)")
                        flushOutput()
                    }
                case .disconnected(let error):
                    if json {
                        printError("disconnected: \(error.message)")
                    } else if !isTerminal {
                        print("disconnected: \(error.message)")
                    }
                case .reconnected:
                    await redraw()
                }
            }
        }
    }
}
