import Foundation
import Fusebox
import FuseboxLocking
import Hiredis

/// The reply of `lua/breaker.lua`, converted once (or a state read with `HMGET` by the refresher).
struct StateReply: Sendable {
    var state: BreakerState
    var version: Int
    var since: Int64
    var openUntil: Int64
    /// Redis time (ms, with the test skew) when the script ran.
    var now: Int64
    var attempt: Int
    var reason: String
    var isolationReason: String?
    var consecutiveFailures: Int
    var probes: Int
    var probeSuccesses: Int
    /// For `acquire`: 0 denied, 1 admitted, 2 admitted as a probe.
    var granted: Int
    /// The window's calls, failures and slow calls; `nil` from the refresher, which does not read the window.
    var window: (calls: Int, failures: Int, slow: Int)?
    /// This script call made a transition.
    var transitioned: Bool
    /// The state hash's incarnation (Redis time it was made): a new one after a restart or a repairing reset.
    var created: Int64
    /// For `read`: the totals hash.
    var totals: [String: String]
    /// The failure budget granted (-1: no threshold applies); `nil` from the refresher.
    var budget: Int?
    /// Redis holds the policy fingerprint this call sent.
    var policyStored: Bool
    /// The batch had been applied before (a retransmission): nothing was counted again.
    var duplicate: Bool
    /// What the script found wrong with the breaker's statistics (totals, events) and made anew, or (a read) found
    /// unreadable; `nil` when nothing was.
    var statisticsNote: String?
    /// For `read`: transitions in the last ten minutes (up to 30).
    var recentTransitions = 0
    /// The window's count of calls shed by adaptive throttling (a `read`, or a record from a sender with it on, of
    /// a time window); `nil` when the reply does not carry it.
    var windowThrottled: Double?
    /// For `read`: the relative threshold's baseline (decayed calls and failures), when it has one.
    var baseline: (calls: Double, failures: Double)?

    var windowCalls: Int { window?.calls ?? 0 }
    var windowFailures: Int { window?.failures ?? 0 }
    var windowSlow: Int { window?.slow ?? 0 }

    init(_ value: RESPValue, key: String) throws(FuseboxError) {
        guard let parts = value.array, parts.count >= 21 else {
            throw FuseboxError(code: .corruptState, message: "unexpected reply from the breaker script for \(key): \(value)")
        }
        func int(_ index: Int) throws(FuseboxError) -> Int {
            guard let number = parts[index].int else {
                throw FuseboxError(code: .corruptState, message: "unexpected element \(index) in the breaker script's reply for \(key): \(parts[index])")
            }
            return number
        }
        guard let text = parts[0].string, let state = BreakerState(rawValue: text) else {
            throw FuseboxError(code: .corruptState, message: "\(key) has state '\(parts[0].string ?? "?")'")
        }
        self.state = state
        version = try int(1)
        since = Int64(try int(2))
        openUntil = Int64(try int(3))
        now = Int64(try int(4))
        attempt = try int(5)
        reason = parts[6].string ?? ""
        let isolation = parts[7].string ?? ""
        isolationReason = isolation.isEmpty ? nil : isolation
        consecutiveFailures = try int(8)
        probes = try int(9)
        probeSuccesses = try int(10)
        granted = try int(11)
        window = (try int(12), try int(13), try int(14))
        transitioned = try int(15) == 1
        created = Int64(try int(16))
        var totals: [String: String] = [:]
        if let flat = parts[17].array {
            var index = 0
            while index + 1 < flat.count {
                if let field = flat[index].string, let value = flat[index + 1].string { totals[field] = value }
                index += 2
            }
        }
        self.totals = totals
        budget = try int(18)
        policyStored = try int(19) == 1
        duplicate = try int(20) == 1
        statisticsNote = parts.count > 21 ? parts[21].string.flatMap { $0.isEmpty ? nil : $0 } : nil
        recentTransitions = parts.count > 22 ? max(0, parts[22].int ?? 0) : 0
        if parts.count > 24, let text = parts[24].string {
            let fields = text.split(separator: " ").compactMap { Double($0) }
            if fields.count == 3, fields[0] > 0, fields[1] >= 0, fields[0].isFinite, fields[1].isFinite { baseline = (fields[0], fields[1]) }
        }
        windowThrottled = parts.count > 23 ? parts[23].string.flatMap(Double.init).map { $0.isFinite ? max(0, $0) : 0 } : nil
    }

    /// The fields the refresher reads with `HMGET`, in the order ``init(refreshed:now:)`` expects.
    static let refreshedFields = [
        "state", "version", "since", "open_until", "attempt", "reason", "isolation_reason", "consecutive_failures",
        "probes", "probe_successes", "created", "schema",
    ]

    /// A state read by the refresher; `nil` when the hash is missing or anything in it is unusual (the caller
    /// then asks the script, which repairs, refuses or explains).
    init?(refreshed values: [RESPValue], now: Int64) {
        guard values.count == Self.refreshedFields.count, values[11].string == "2",
            let state = values[0].string.flatMap(BreakerState.init(rawValue:))
        else { return nil }
        var numbers: [Int64] = []
        for index in [1, 2, 3, 4, 7, 8, 9, 10] {
            guard let number = values[index].string.flatMap({ Int64($0) }) else { return nil }
            numbers.append(number)
        }
        self.state = state
        version = Int(numbers[0])
        since = numbers[1]
        openUntil = numbers[2]
        attempt = Int(numbers[3])
        consecutiveFailures = Int(numbers[4])
        probes = Int(numbers[5])
        probeSuccesses = Int(numbers[6])
        created = numbers[7]
        self.now = now
        reason = values[5].string ?? ""
        let isolation = values[6].string ?? ""
        isolationReason = isolation.isEmpty ? nil : isolation
        granted = 0
        window = nil
        transitioned = false
        totals = [:]
        budget = nil
        policyStored = false
        duplicate = false
    }

    /// Time until probes may start, for an open breaker.
    var timeUntilProbe: Duration? { state == .open ? .milliseconds(max(0, openUntil - now)) : nil }
    /// Time until an isolation set for a time ends by itself (`open_until` holds its end).
    var isolationEndsIn: Duration? { state == .isolated && openUntil > 0 ? .milliseconds(max(0, openUntil - now)) : nil }
    /// When the current state ends by itself on this instance's clock (ns), `now` being this instance's time of the
    /// reply: the break's end while open, the isolation's while isolated for a time; 0 otherwise.
    func endsAt(now: Int64) -> Int64 {
        guard state == .open || (state == .isolated && openUntil > 0) else { return 0 }
        return now + max(0, openUntil - self.now) * 1_000_000
    }
}

/// A message on `NAMESPACE:transitions`: a transition, or a recall of failure budgets.
package struct BreakerMessage: Codable, Sendable {
    var name: String
    var version: Int
    var created: Int64?
    // A transition.
    var state: String?
    /// The state before the transition.
    var from: String?
    /// Open: the time until the break ends; isolated for a time: until the isolation ends; else 0.
    var probeInMilliseconds: Int64?
    var reason: String?
    var isolationReason: String?
    var attempt: Int?
    /// A recall: every instance holding more failures than this for `version` writes them now.
    var recall: Int?
    /// With a recall: whether the window is still quiet. When it is not, every instance writes the successes it
    /// held while the breaker was quiet too. `nil` from a script older than the field: taken as `false`.
    var quiet: Bool?
    /// When (Redis time, ms) the write that sent the recall ran: a reply to a write that ran no later says less.
    var at: Int64?
    /// An operator set or cleared the breaker's policy override (`set` or `cleared`): read `NS:overrides` again.
    var override: String?

    /// The channel's keys are snake_case (lua/breaker.lua writes them; Docs/redis-keys.md lists them).
    enum CodingKeys: String, CodingKey {
        case name, version, created, state, from, reason, attempt, recall, quiet, at, override
        case probeInMilliseconds = "probe_in_ms"
        case isolationReason = "isolation_reason"
    }

    /// An operator set (`set`) or cleared (`cleared`) the policy override of `name`.
    init(override change: String, of name: String) {
        self.name = name
        self.version = 0
        self.override = change
    }

    /// The message as published (keys of unset fields left out).
    var text: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? encoder.encode(self)) ?? Data(), as: UTF8.self)
    }

    /// The message in `text`, or `nil` when it is not one (another publisher's, or garbage).
    init?(json text: some Collection<UInt8>) {
        guard let message = try? JSONDecoder().decode(Self.self, from: Data(text)) else { return nil }
        self = message
    }

    /// Whether a message on the transitions channel is (or may be) a transition, rather than a budget recall or an
    /// override note: what makes `fusebox watch` draw again.
    package static func isTransition(_ text: String) -> Bool {
        guard let message = BreakerMessage(json: Array(text.utf8)) else { return true }
        return message.recall == nil && message.override == nil
    }
}

/// Wakes the flusher: the ticker rings it every flush interval, and the hot path when an outcome may cross a
/// threshold. Ringing with nobody waiting leaves it rung, so no ring is lost.
final class Doorbell: Sendable {
    private struct State: Sendable {
        var rung = false
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = Locked(State())

    func ring() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.rung = true
            return nil
        }
        waiter?.resume()
    }

    func wait() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state in
                    if state.rung {
                        state.rung = false
                        return true
                    }
                    state.waiter = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            ring()
        }
    }
}

import Synchronization

extension BreakerSnapshot {
    /// A snapshot from the script's `read` reply (state, window and totals in one atomic read).
    init(name: String, reply: StateReply, totalsKey: String, health: BreakerHealth = .unknownPolicy) throws(FuseboxError) {
        var sums = BreakerTotals()
        var errors: [String: Int] = [:]
        for (field, value) in reply.totals {
            guard let count = Int(value) else {
                throw FuseboxError(code: .corruptState, message: "breaker '\(name)': \(totalsKey) field '\(field)' is '\(value)', not a number", breakerName: name)
            }
            switch field {
            case "calls": sums.calls = count
            case "successes": sums.successes = count
            case "failures": sums.failures = count
            case "ignored": sums.ignored = count
            case "rejected": sums.rejected = count
            case "slow": sums.slow = count
            case "would_reject": sums.wouldReject = count
            default: if field.hasPrefix("error:") { errors[String(field.dropFirst(6))] = count }
            }
        }
        self.init(
            name: name, state: reply.state, version: reply.version, timeInState: .milliseconds(max(0, reply.now - reply.since)),
            windowCalls: reply.windowCalls, windowFailures: reply.windowFailures, windowSlowCalls: reply.windowSlow,
            consecutiveFailures: reply.consecutiveFailures, errorCounts: errors, totals: sums, timeUntilProbe: reply.timeUntilProbe,
            isolationReason: reply.state == .isolated ? reply.isolationReason : nil, attempt: reply.attempt,
            probesInFlight: reply.probes, probeSuccesses: reply.probeSuccesses, lastReason: reply.reason,
            recentTransitions: reply.recentTransitions, windowThrottled: reply.windowThrottled ?? 0,
            failureBaseline: reply.baseline.map { $0.failures / $0.calls }, baselineCalls: reply.baseline?.calls ?? 0,
            isolationEndsIn: reply.isolationEndsIn, health: health)
    }
}
