/// A concurrency limit that follows the dependency's latency: as many calls at once as it serves without queueing
/// them, plus a few (``Bulkhead/Limit/adaptive(_:)``).
///
/// The rule is Vegas' (Netflix's concurrency-limits `VegasLimit`, after TCP Vegas, Brakmo and Peterson 1994): with
/// `L` calls allowed, a latency `rtt` and the latency of the dependency without load `rtt₀`, about
/// `queue = L × (1 − rtt₀ / rtt)` calls wait inside the dependency. Each round of calls (as many as the limit, at
/// least 10), the round's median latency decides:
/// - `queue < alpha`: the dependency has room, `L + 1`;
/// - `queue > beta`: it queues, `L` falls to what it serves without queueing plus `alpha`, `L × rtt₀ / rtt + alpha`
///   (at once: a limit far too high, 50 against a dependency that serves 8, comes down in one round, as Envoy's
///   adaptive concurrency filter does with its gradient);
/// - otherwise it stays. Rounds in which fewer than half the limit ran (the application sent less) change nothing.
///
/// `rtt₀` cannot be seen while the dependency is overloaded, so it is measured as Envoy's adaptive concurrency filter
/// does: for ``measureCalls`` calls at ``minimum`` concurrency, first and then every ``remeasureInterval`` (±10 %),
/// the median of their latencies; between measures, a round whose median is lower takes its place. The
/// defaults `alpha` 1, `beta` 3 are TCP Vegas'; Netflix's library grows them with `log10(L)`, which settles several
/// calls above the knee.
public struct AdaptiveConcurrencyLimit: Sendable, Hashable {
    /// The limit after the first measure of the no-load latency. Default 20.
    public var initial: Int
    /// The least it falls to, and the concurrency the no-load latency is measured at. Default 3. Range ≥ 1.
    public var minimum: Int
    /// The most it grows to. Default 1,000. Range ≥ ``minimum``, ≤ 1,000,000.
    public var maximum: Int
    /// Below this many calls queued in the dependency, the limit grows by one. Default 1.
    public var alpha: Double
    /// Above this many, it falls. Default 3. Range ≥ ``alpha``.
    public var beta: Double
    /// How often the no-load latency is measured again. Default 30 s.
    public var remeasureInterval: Duration
    /// Calls measured at ``minimum`` concurrency each time. Default 30.
    public var measureCalls: Int

    /// An adaptive limit; every argument has a default.
    public init(
        initial: Int = 20, minimum: Int = 3, maximum: Int = 1000, alpha: Double = 1, beta: Double = 3,
        remeasureInterval: Duration = .seconds(30), measureCalls: Int = 30
    ) {
        self.initial = initial
        self.minimum = minimum
        self.maximum = maximum
        self.alpha = alpha
        self.beta = beta
        self.remeasureInterval = remeasureInterval
        self.measureCalls = measureCalls
    }

    func validate(name: String) throws(FuseboxError) {
        func fail(_ field: String, _ value: Any, _ range: String) -> FuseboxError {
            FuseboxError(code: .invalidPolicy, message: "bulkhead '\(name)': adaptive limit's \(field) is \(value); allowed: \(range)")
        }
        if !(1...1_000_000).contains(minimum) { throw fail("minimum", minimum, "1…1,000,000") }
        if !(minimum...1_000_000).contains(maximum) { throw fail("maximum", maximum, "minimum (\(minimum))…1,000,000") }
        if !(minimum...maximum).contains(initial) { throw fail("initial", initial, "minimum…maximum (\(minimum)…\(maximum))") }
        if !(alpha >= 0 && alpha.isFinite) { throw fail("alpha", alpha, "≥ 0") }
        if !(beta >= alpha && beta.isFinite) { throw fail("beta", beta, "≥ alpha (\(alpha))") }
        if remeasureInterval <= .zero { throw fail("remeasureInterval", remeasureInterval, "> 0") }
        if !(1...100_000).contains(measureCalls) { throw fail("measureCalls", measureCalls, "1…100,000") }
    }
}

/// The adaptive limit's decisions: a pure state machine over the calls' start and end times (ns), which the
/// bulkhead feeds under a lock and tests feed directly.
struct AdaptiveConcurrency: Sendable {
    let settings: AdaptiveConcurrencyLimit
    /// The limit between measures.
    private(set) var limit: Double
    /// The no-load latency (ns), once measured.
    private(set) var noLoad: Int64?
    /// Measuring the no-load latency since `since` (ns): calls that started earlier ran at another concurrency.
    private var measuringSince: Int64?
    private var nextMeasureAt: Int64 = 0
    /// The current round's latencies, of calls that started after `roundStart`, and the most calls seen running.
    private var samples: [Int64] = []
    private var roundStart: Int64 = 0
    private var roundPeak = 0
    private var random: SplitMix64

    init(_ settings: AdaptiveConcurrencyLimit, seed: UInt64) {
        self.settings = settings
        limit = Double(settings.initial)
        measuringSince = 0
        random = SplitMix64(seed: seed)
        samples.reserveCapacity(max(settings.measureCalls, 64))
    }

    /// The limit to apply now: ``AdaptiveConcurrencyLimit/minimum`` while measuring.
    var effectiveLimit: Int { measuringSince != nil ? settings.minimum : Int(limit) }

    /// One call's latency: it started at `started` and ended at `ended`, with `running` calls in the bulkhead then.
    /// Returns the limit to apply when it changes.
    mutating func sample(started: Int64, ended: Int64, running: Int) -> Int? {
        let before = effectiveLimit
        if let since = measuringSince {
            guard started >= since else { return nil }
            samples.append(ended - started)
            guard samples.count >= settings.measureCalls else { return nil }
            noLoad = Self.median(&samples)
            measuringSince = nil
            startRound(at: ended)
            let jitter = 0.9 + 0.2 * random.nextUnitInterval()
            nextMeasureAt = ended + Int64(Double(settings.remeasureInterval.nanoseconds) * jitter)
        } else if ended >= nextMeasureAt {
            measuringSince = ended
            samples.removeAll(keepingCapacity: true)
        } else {
            guard started >= roundStart else { return nil }
            samples.append(ended - started)
            roundPeak = max(roundPeak, running)
            if samples.count >= max(10, Int(limit)) { decide(at: ended) }
        }
        let after = effectiveLimit
        return after != before ? after : nil
    }

    private mutating func decide(at now: Int64) {
        defer { startRound(at: now) }
        let rtt = Self.median(&samples)
        guard var base = noLoad, rtt > 0 else { return }
        if rtt < base {
            base = rtt
            noLoad = rtt
        }
        // The application sent too little to load the limit: the round says nothing about it.
        guard Double(roundPeak) * 2 >= limit else { return }
        let queue = limit * (1 - Double(base) / Double(rtt))
        if queue < settings.alpha {
            limit += 1
        } else if queue > settings.beta {
            limit = limit * Double(base) / Double(rtt) + settings.alpha
        }
        limit = min(Double(settings.maximum), max(Double(settings.minimum), limit))
    }

    private mutating func startRound(at now: Int64) {
        samples.removeAll(keepingCapacity: true)
        roundStart = now
        roundPeak = 0
    }

    private static func median(_ values: inout [Int64]) -> Int64 {
        values.sort()
        return values[values.count / 2]
    }
}
