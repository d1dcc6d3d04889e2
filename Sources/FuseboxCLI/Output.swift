import Foundation
import Fusebox

/// The `--json` shape of a breaker (documented in Docs/operations.md).
struct SnapshotJSON: Codable {
    struct Window: Codable {
        var calls: Int
        var failures: Int
        var slow: Int
    }

    var name: String
    var state: String
    var version: Int
    var timeInStateMs: Int64
    var window: Window
    var failureRate: Double
    var slowCallRate: Double
    var consecutiveFailures: Int
    var attempt: Int
    var timeUntilProbeMs: Int64?
    var isolationReason: String?
    /// While isolated for a time: the time until the isolation ends, and when (ISO 8601, UTC).
    var isolationEndsInMs: Int64?
    var isolatedUntil: String?
    var probesInFlight: Int
    var lastReason: String
    var healthScore: Int
    var recentTransitions: Int
    var throttleProbability: Double
    var failureBaseline: Double?
    var failureRateThresholdInForce: Double?
    var totals: BreakerTotals
    var errors: [String: Int]

    init(_ snapshot: BreakerSnapshot) {
        name = snapshot.name
        state = snapshot.state.rawValue
        version = snapshot.version
        timeInStateMs = snapshot.timeInState.milliseconds
        window = Window(calls: snapshot.windowCalls, failures: snapshot.windowFailures, slow: snapshot.windowSlowCalls)
        failureRate = snapshot.failureRate
        slowCallRate = snapshot.slowCallRate
        consecutiveFailures = snapshot.consecutiveFailures
        attempt = snapshot.attempt
        timeUntilProbeMs = snapshot.timeUntilProbe?.milliseconds
        isolationReason = snapshot.isolationReason
        isolationEndsInMs = snapshot.isolationEndsIn?.milliseconds
        isolatedUntil = snapshot.isolationEndsIn.map {
            isoTimestamp(Date().addingTimeInterval(Double($0.milliseconds) / 1000))
        }
        probesInFlight = snapshot.probesInFlight
        lastReason = snapshot.lastReason
        healthScore = snapshot.healthScore
        recentTransitions = snapshot.recentTransitions
        throttleProbability = snapshot.throttleProbability
        failureBaseline = snapshot.failureBaseline
        failureRateThresholdInForce = snapshot.failureRateThresholdInForce
        totals = snapshot.totals
        errors = snapshot.errorCounts
    }
}

/// `date` in ISO 8601, UTC, to the millisecond (`2026-12-03T21:40:00.000Z`).
func isoTimestamp(_ date: Date) -> String { Timestamps.iso8601(date) }

/// The `--json` shape of a transition.
struct TransitionJSON: Codable {
    var from: String
    var to: String
    var reason: String
    var version: Int
    var atMs: Int64

    init(_ transition: BreakerTransition) {
        from = transition.from.rawValue
        to = transition.to.rawValue
        reason = transition.reason
        version = transition.version
        atMs = transition.at.milliseconds
    }
}

func printJSON(_ value: some Encodable) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// Terminal styling: colours only when the output is a terminal.
struct Style {
    let colours: Bool

    static var standardOutput: Style { Style(colours: isatty(STDOUT_FILENO) == 1 && ProcessInfo.processInfo.environment["NO_COLOR"] == nil) }

    func state(_ state: BreakerState) -> String {
        let label = state.label
        guard colours else { return label }
        let code: String = switch state {
        case .closed: "32"
        case .open: "31"
        case .halfOpen: "33"
        case .isolated: "35"
        case .disabled, .metricsOnly: "36"
        }
        return "\u{1B}[\(code)m\(label)\u{1B}[0m"
    }

    func bold(_ text: String) -> String { colours ? "\u{1B}[1m\(text)\u{1B}[0m" : text }
}

/// A plain text table with columns padded to their widest cell (escape codes do not count).
func renderTable(_ header: [String], _ rows: [[String]]) -> String {
    func visibleWidth(_ text: String) -> Int {
        var width = 0
        var inEscape = false
        for scalar in text.unicodeScalars {
            if scalar == "\u{1B}" { inEscape = true; continue }
            if inEscape { if scalar == "m" { inEscape = false }; continue }
            width += 1
        }
        return width
    }
    var widths = header.map(visibleWidth)
    for row in rows {
        for (index, cell) in row.enumerated() where index < widths.count { widths[index] = max(widths[index], visibleWidth(cell)) }
    }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { index, cell in
            index == cells.count - 1 ? cell : cell + String(repeating: " ", count: widths[index] - visibleWidth(cell))
        }.joined(separator: "  ")
    }
    return ([line(header)] + rows.map(line)).joined(separator: "\n")
}

func formatDuration(_ duration: Duration) -> String { DurationText.compact(duration) }

func percent(_ ratio: Double) -> String { String(format: "%.1f%%", ratio * 100) }

/// The rows of `fusebox list` and `fusebox watch`.
func breakerTable(_ snapshots: [BreakerSnapshot], style: Style) -> String {
    let rows = snapshots.map { snapshot in
        [
            snapshot.name, style.state(snapshot.state), String(snapshot.healthScore), String(snapshot.version), percent(snapshot.failureRate),
            String(snapshot.totals.calls), String(snapshot.totals.rejected), formatDuration(snapshot.timeInState),
            snapshot.timeUntilProbe.map { "probe in \(formatDuration($0))" }
                ?? snapshot.isolationReason.map { reason in
                    "isolated: \(reason)" + (snapshot.isolationEndsIn.map { " (ends in \(formatDuration($0)))" } ?? "")
                } ?? "",
        ]
    }
    return renderTable(["NAME", "STATE", "HEALTH", "VERSION", "FAILURES", "CALLS", "REJECTED", "IN STATE", ""], rows)
}
