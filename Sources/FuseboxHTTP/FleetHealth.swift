import Fusebox

/// The counts of a survey by state, and the health verdict drawn from them.
///
/// The rules (Docs/http-api.md), applied in order:
/// - **critical** when the breakers' store cannot be read, or when at least ``criticalTrippedFraction`` of the
///   breakers (and at least one) are OPEN or HALF_OPEN: the fleet is cut off from that share of its dependencies;
/// - **degraded** when any breaker is OPEN, HALF_OPEN or ISOLATED, or its stored state cannot be read;
/// - **healthy** otherwise, including when there is no breaker at all.
///
/// ISOLATED breakers count towards degraded only: an operator chose them, and a readiness probe should not pull
/// every instance for a planned maintenance.
public struct FleetHealth: Sendable, Hashable {
    /// The verdict.
    public enum Verdict: String, Sendable, Hashable, Comparable {
        /// Every breaker closed (or passing everything).
        case healthy
        /// Some breakers reject calls.
        case degraded
        /// Many breakers reject calls, or their store is unreachable: `/health` answers 503.
        case critical

        private var rank: Int { self == .healthy ? 0 : self == .degraded ? 1 : 2 }
        public static func < (lhs: Verdict, rhs: Verdict) -> Bool { lhs.rank < rhs.rank }
    }

    /// The share of tripped (OPEN or HALF_OPEN) breakers from which the verdict is critical.
    public static let criticalTrippedFraction = 0.5

    /// Breakers read.
    public var total = 0
    /// CLOSED breakers.
    public var closed = 0
    /// OPEN breakers.
    public var open = 0
    /// HALF_OPEN breakers.
    public var halfOpen = 0
    /// ISOLATED breakers.
    public var isolated = 0
    /// Breakers in mode `disabled`.
    public var disabled = 0
    /// Breakers in mode `metrics_only`.
    public var metricsOnly = 0
    /// Breakers whose stored state could not be read.
    public var unreadable = 0
    /// The verdict.
    public var verdict = Verdict.healthy
    /// Why the verdict is not healthy: one line per cause, the worst first.
    public var reasons: [String] = []

    /// The health of `survey`.
    public init(_ survey: BreakerSurvey) {
        total = survey.breakers.count + survey.unreadable.count
        unreadable = survey.unreadable.count
        var notes: [String] = []
        for status in survey.breakers {
            let snapshot = status.snapshot
            switch snapshot.state {
            case .closed: closed += 1
            case .open:
                open += 1
                notes.append("'\(snapshot.name)' is OPEN (\(snapshot.lastReason))")
            case .halfOpen:
                halfOpen += 1
                notes.append("'\(snapshot.name)' is HALF_OPEN (\(snapshot.lastReason))")
            case .isolated:
                isolated += 1
                notes.append("'\(snapshot.name)' is ISOLATED (\(snapshot.isolationReason ?? snapshot.lastReason))")
            case .disabled: disabled += 1
            case .metricsOnly: metricsOnly += 1
            }
        }
        for (name, error) in survey.unreadable { notes.append("'\(name)' cannot be read: \(error.message)") }
        let tripped = open + halfOpen
        if tripped > 0 && Double(tripped) >= Self.criticalTrippedFraction * Double(total) {
            verdict = .critical
            reasons.append("\(tripped) of \(total) breakers are OPEN or HALF_OPEN (critical from \(Int(Self.criticalTrippedFraction * 100)) %)")
        } else if !notes.isEmpty {
            verdict = .degraded
        }
        reasons += notes
    }

    /// The health when the breakers could not be read at all.
    public init(unavailable error: FuseboxError) {
        verdict = .critical
        reasons = ["the breakers cannot be read: \(error.message)"]
    }
}
