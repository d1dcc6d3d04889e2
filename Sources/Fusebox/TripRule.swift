#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The rules that open a closed breaker, judged on counts: the one place in Swift that says whether a window trips.
///
/// The state machine (the `local` adapter, and the model the distributed adapter is tested against) asks it with its
/// own window; the distributed adapter asks it with the shared window of the last reply plus the outcomes it holds,
/// to decide whether a failure must be written at once rather than at the next flush (`Cache.mustWriteNow`).
/// `lua/breaker.lua` holds the same rules for the shared state (`ratio_reason`, `trip`), and the batch model test
/// holds the two together. The rules, in the order they are judged:
/// 1. the consecutive-failure threshold, whatever the throughput;
/// 2. the failure-ratio threshold in force, once the window holds the minimum throughput;
/// 3. the slow-call-ratio threshold, likewise.
package enum TripRule: Sendable, Equatable, CustomStringConvertible {
    case consecutiveFailures(Int, threshold: Int)
    case failureRatio(Double, threshold: Double, calls: Int)
    case slowCallRatio(Double, threshold: Double, calls: Int)

    /// The first rule that `calls`, `failures`, `slow` (a window's counts) and `streak` (failures in a row) break;
    /// `nil` when none does. `failureRateThreshold` is the failure ratio in force (a relative threshold's current
    /// value, or the fixed one); the other thresholds are the policy's. Allocates nothing, and takes the thresholds
    /// one by one: copying a whole policy (it holds closures) would cost reference counting on the hot path.
    @inline(__always)
    package static func broken(
        calls: Int, failures: Int, slow: Int, streak: Int, consecutiveFailureThreshold: Int?, failureRateThreshold: Double?,
        slowCallRateThreshold: Double?, minimumThroughput: Int
    ) -> TripRule? {
        if let threshold = consecutiveFailureThreshold, streak >= threshold {
            return .consecutiveFailures(streak, threshold: threshold)
        }
        guard calls > 0, calls >= minimumThroughput else { return nil }
        if let threshold = failureRateThreshold {
            let ratio = Double(failures) / Double(calls)
            if ratio >= threshold { return .failureRatio(ratio, threshold: threshold, calls: calls) }
        }
        if let threshold = slowCallRateThreshold {
            let ratio = Double(slow) / Double(calls)
            if ratio >= threshold { return .slowCallRatio(ratio, threshold: threshold, calls: calls) }
        }
        return nil
    }

    /// The reason a transition carries: "5 consecutive failures ≥ 5", "failure ratio 0.62 ≥ 0.50 over 13 calls".
    package var description: String {
        switch self {
        case .consecutiveFailures(let streak, let threshold):
            "\(streak) consecutive failures ≥ \(threshold)"
        case .failureRatio(let ratio, let threshold, let calls):
            "failure ratio \(Self.twoDecimals(ratio)) ≥ \(Self.twoDecimals(threshold)) over \(calls) calls"
        case .slowCallRatio(let ratio, let threshold, let calls):
            "slow-call ratio \(Self.twoDecimals(ratio)) ≥ \(Self.twoDecimals(threshold)) over \(calls) calls"
        }
    }

    /// `0.62` for 0.6154: two decimals, formatted by C's `%.2f` as `lua/breaker.lua`'s `string.format('%.2f')` is,
    /// so a reason reads the same whichever adapter tripped (5 of 8 calls is `0.62` in both: printf rounds the exact
    /// binary 0.625 to even; rounding 62.5 in Swift gave `0.63`). Only when a breaker trips: not the hot path.
    package static func twoDecimals(_ value: Double) -> String {
        var buffer = [CChar](repeating: 0, count: 48)
        let written = buffer.withUnsafeMutableBufferPointer { text in
            withVaList([value]) { vsnprintf(text.baseAddress, text.count, "%.2f", $0) }
        }
        guard written > 0 else { return "\(value)" }
        return String(decoding: buffer.prefix(Int(min(written, 47))).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
