/// Outcomes of calls admitted under one version, as counts: what one instance sends in one write of the
/// distributed adapter (see ``BreakerStateMachine/record(_:now:)``).
package struct OutcomeBatch: Sendable, Equatable {
    /// The version that admitted the calls.
    package var version: Int
    /// Half-open probes' outcomes.
    package var isProbe = false
    package var successes = 0
    package var slowSuccesses = 0
    package var failures = 0
    package var slowFailures = 0
    package var ignored = 0
    /// Failures before the first success, the longest run of failures, failures after the last success.
    package var leadingFailures = 0
    package var longestFailureRun = 0
    package var trailingFailures = 0
    /// The first failure's error type name, for a probe failure's reason.
    package var firstError: String?

    package init(version: Int, isProbe: Bool = false) {
        self.version = version
        self.isProbe = isProbe
    }
}

/// A small, fast pseudo-random generator (SplitMix64, Steele, Lea and Flood 2014): adaptive throttling draws one
/// number per call, and the system generator costs a system call each.
package struct SplitMix64: Sendable {
    private var state: UInt64

    /// A generator started at `seed`.
    package init(seed: UInt64) { state = seed }

    /// The next 64 random bits.
    package mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A number in [0, 1).
    package mutating func nextUnitInterval() -> Double { Double(next() >> 11) * 0x1.0p-53 }
}
