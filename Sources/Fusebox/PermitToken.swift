/// Proof that a call was admitted: what it was admitted under, and when it started.
///
/// An outcome counts toward transitions only while the breaker is still at the ``version`` that admitted the
/// call; later it counts in the totals only. So a slow straggler from before a reset cannot trip the new closed
/// period, and a probe's outcome cannot land in a later half-open period.
public struct PermitToken: Sendable, Hashable {
    /// The breaker's version when the call was admitted.
    public package(set) var version: Int
    /// `true` for a half-open probe: its outcome closes or reopens the breaker, and it holds a permit.
    public package(set) var isProbe: Bool
    /// `false` in mode `disabled` and when Fusebox is switched off: the outcome is not recorded at all.
    public package(set) var isRecorded: Bool
    /// When the call was admitted, in nanoseconds since the backend's epoch (for the slow-call rule).
    public package(set) var startedAt: Int64

    /// Makes a token.
    public init(version: Int, isProbe: Bool, isRecorded: Bool, startedAt: Int64) {
        self.version = version
        self.isProbe = isProbe
        self.isRecorded = isRecorded
        self.startedAt = startedAt
    }

    /// The token of a call that is neither limited nor recorded.
    public static let unrecorded = PermitToken(version: -1, isProbe: false, isRecorded: false, startedAt: 0)

    /// The token of a call that mode ``BreakerPolicy/Mode/shadow`` let run although the breaker at `version`
    /// rejected it: not recorded.
    public static func shadow(version: Int, startedAt: Int64) -> PermitToken {
        PermitToken(version: version, isProbe: false, isRecorded: false, startedAt: startedAt)
    }

    /// Whether mode ``BreakerPolicy/Mode/shadow`` let this call run although the breaker rejected it.
    public var ranInShadow: Bool { !isRecorded && version >= 0 }
}

/// The answer to "may this call run?".
public enum BreakerAdmission: Sendable {
    /// It may; report its outcome with this token.
    case admitted(PermitToken)
    /// It may not; the error says why (code ``FuseboxError/Code/circuitOpen``).
    case rejected(FuseboxError)
}
