import Testing

/// What a suite asks of the machine, and so with which suites it may run at once.
///
/// `swift test` runs every suite of every test target in one process, all at once. On two cores that mixes suites
/// that start dozens of processes with suites whose assertions are timing bounds (a failover seen within 1.2 s, a
/// lease that ends within 5 s), and the bounds break for want of a core, not for a fault. Each suite names its kind
/// (`@Suite("…", .kind(.timingBound))`); suites of one kind run together, and kinds take turns (``MachineTurns``):
/// the others wait until the running kind's last suite has ended. A plain
/// `swift test` (an IDE, a newcomer, `make test`) therefore passes as it is, and no list of suite names is kept
/// anywhere. `TestKindTests` fails when a suite names no kind.
public enum TestKind: String, Sendable, CaseIterable {
    /// No server, no process, no clock but a manual one: decisions, parsing, formatting, models.
    case unit
    /// Real servers (redis-server, Cluster, Sentinels, Prometheus, the `fusebox` binary) with bounds loose enough
    /// to hold while other such suites run beside them.
    case integration
    /// Bounds that hold on a quiet machine only: failover and fault timings, exact counts under races, the fleet's
    /// propagation. Run beside each other, never beside the integration suites.
    case timingBound = "timing-bound"
    /// A suite that needs the machine to itself (`fusebox serve` under 200 concurrent clients, `make demo`'s
    /// comparison): it runs by itself, not even beside another `alone` suite.
    case alone
}

/// The trait that runs a suite in its kind's turn. Held around the whole suite, outside its tests' time limits: a
/// suite that waits for its turn does not use up its tests' `.timeLimit`.
public struct TestKindTrait: SuiteTrait, TestScoping {
    public let kind: TestKind

    public var isRecursive: Bool { false }

    public func scopeProvider(for test: Test, testCase: Test.Case?) -> Self? {
        test.isSuite && testCase == nil ? self : nil
    }

    public func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        await MachineTurns.shared.enter(kind)
        do {
            try await function()
        } catch {
            await MachineTurns.shared.leave()
            throw error
        }
        await MachineTurns.shared.leave()
    }
}

extension Trait where Self == TestKindTrait {
    /// Runs the suite in the turn of `kind` (see ``TestKind``).
    public static func kind(_ kind: TestKind) -> Self { TestKindTrait(kind: kind) }
}

/// Whose turn it is. The suites that arrive in the first moments of the run are gathered, then kinds go in the order
/// of ``TestKind/turnOrder``: the suites that need a quiet machine run first, in a process that nothing has loaded
/// yet (no adapter of an earlier suite still reconnecting, no child process still exiting). Suites of the running
/// kind enter at once unless another kind is waiting (then they wait too, so that no kind waits for ever); when the
/// last one leaves, every waiting suite of the next kind in that order enters.
actor MachineTurns {
    static let shared = MachineTurns()

    /// How long the first suite to arrive waits for the others before a turn begins.
    static let gathering = Duration.milliseconds(200)

    private var running: TestKind?
    private var inside = 0
    private var gathered = false
    private var gatheringIsOver = false
    private var waiting: [(kind: TestKind, resume: CheckedContinuation<Void, Never>)] = []

    func enter(_ kind: TestKind) async {
        if !gathered {
            gathered = true
            Task {
                try? await Task.sleep(for: Self.gathering)
                await self.endGathering()
            }
        } else if running == kind, kind != .alone, !waiting.contains(where: { $0.kind != kind }) {
            inside += 1
            return
        }
        await withCheckedContinuation {
            waiting.append((kind, $0))
            // A suite that arrives when nothing runs (after the gathering) need not wait for a leave.
            if gatheringIsOver { dispatch() }
        }
    }

    private func endGathering() {
        gatheringIsOver = true
        dispatch()
    }

    func leave() {
        inside -= 1
        if inside == 0 {
            running = nil
            dispatch()
        }
    }

    /// Lets in every waiting suite of the first kind in turn order that has any, when no kind is running.
    private func dispatch() {
        guard running == nil, let next = TestKind.turnOrder.first(where: { kind in waiting.contains { $0.kind == kind } }) else { return }
        // The suites of one kind enter together, but an `alone` suite enters by itself.
        var entering = waiting.filter { $0.kind == next }
        if next == .alone { entering = Array(entering.prefix(1)) }
        let admitted = entering.count
        var skipped = 0
        waiting.removeAll { entry in
            guard entry.kind == next, skipped < admitted else { return false }
            skipped += 1
            return true
        }
        running = next
        inside = entering.count
        print("── test turn: the \(next.rawValue) suites (\(entering.count)); suites of other kinds wait ──")
        for suite in entering { suite.resume.resume() }
    }
}

extension TestKind {
    /// The order in which kinds take their turns: the timing bounds first, in a process that nothing has run in yet
    /// (a clean-clone run failed two of them by a few percent when `make demo`'s comparison had run just before),
    /// then what needs the machine to itself, then the rest.
    static let turnOrder: [TestKind] = [.timingBound, .alone, .unit, .integration]
}
