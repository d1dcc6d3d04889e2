import Configuration
import Foundation
import Fusebox
import FuseboxRedis
import FuseboxTestKit
import Logging
import Synchronization
import Testing
import TestKinds

struct Quote: Sendable, Equatable {
    var price: Int
    static let cached = Quote(price: -1)
}

/// A pricing service that fails while `failing` is set, counting the calls that reach it.
final class PricingService: Sendable {
    let failing = Atomic<Bool>(false)
    let calls = Atomic<Int>(0)
    struct Unavailable: Error {}
    func quote(for item: String) async throws -> Quote {
        calls.add(1, ordering: .relaxed)
        if failing.load(ordering: .relaxed) { throw Unavailable() }
        return Quote(price: item.count)
    }
}

// README: unified resilience (begin)
/// Quotes from the pricing service: retried, through the shared breaker, the cached quote when all else fails.
/// The adapter, Redis and the breaker's policy come from configuration only (Docs/configuration.md).
func makeQuotes(config: ConfigReader, logger: Logger) throws -> (BreakerRegistry, ResiliencePipeline<Quote>) {
    let registry = try BreakerRegistry.make(configuration: FuseboxConfiguration(config: config), logger: logger)
    let quotes = ResiliencePipeline<Quote>()
        .fallback { _ in Quote.cached }                      // whatever fails inside: the cached quote
        .retry(RetryPolicy(maxAttempts: 3, backoff: .exponential(base: .milliseconds(20)), budget: RetryBudget()))
        .breaker(try registry.breaker("pricing"))            // an open circuit is never retried
        .timeout(.seconds(2))                                // each attempt
    return (registry, quotes)
}
// In a request: let quote = try await quotes.run { try await pricing.quote(for: item) }
// README: unified resilience (end)

@Suite("The README's unified-resilience example", .kind(.integration), .timeLimit(.minutes(1)))
struct UnifiedResilienceExampleTests {
    @Test("the README shows the code this file runs")
    func sameCode() throws {
        let readme = try String(contentsOf: repositoryRoot.appendingPathComponent("README.md"), encoding: .utf8)
        let source = try String(contentsOfFile: #filePath, encoding: .utf8)
        let shown = try DocumentedCode.lines(of: readme, after: "```swift unified-resilience", before: "```")
        let run = try DocumentedCode.lines(of: source, after: "// README: unified resilience (begin)", before: "// README: unified resilience (end)")
        #expect(shown.count > 5)
        #expect(shown == run, "the README's unified-resilience block and this file differ")
    }

    @Test("local by configuration: the retries stop at the trip, then the fallback answers without a call")
    func local() async throws {
        let config = ConfigReader(provider: EnvironmentVariablesProvider(environmentVariables: [
            "FUSEBOX_ADAPTER": "local",
            "FUSEBOX_BREAKERS_PRICING_CONSECUTIVE_FAILURES": "3", "FUSEBOX_BREAKERS_PRICING_FAILURE_RATIO": "off",
        ]))
        let (registry, quotes) = try makeQuotes(config: config, logger: Logger(label: "test"))
        #expect(registry.adapter.kind == .local)
        let pricing = PricingService()
        #expect(try await quotes.run { try await pricing.quote(for: "book") } == Quote(price: 4))
        pricing.failing.store(true, ordering: .relaxed)
        #expect(try await quotes.run { try await pricing.quote(for: "book") } == .cached)
        #expect(pricing.calls.load(ordering: .relaxed) == 4, "three attempts, the third trips the breaker")
        #expect(try await quotes.run { try await pricing.quote(for: "book") } == .cached)
        #expect(pricing.calls.load(ordering: .relaxed) == 4, "an open circuit: no call, no retry")
    }

    @Test("distributed by configuration: a trip on one instance answers the other's calls from the fallback")
    func distributed() async throws {
        let server = try await SharedServer.get()
        let environment = [
            "FUSEBOX_ADAPTER": "distributed", "FUSEBOX_REDIS_URL": server.url, "FUSEBOX_NAMESPACE": uniqueNamespace("readme"),
            "FUSEBOX_BREAKERS_PRICING_CONSECUTIVE_FAILURES": "3", "FUSEBOX_BREAKERS_PRICING_FAILURE_RATIO": "off",
        ]
        let config = ConfigReader(provider: EnvironmentVariablesProvider(environmentVariables: environment))
        let (first, firstQuotes) = try makeQuotes(config: config, logger: Logger(label: "a"))
        let (second, secondQuotes) = try makeQuotes(config: config, logger: Logger(label: "b"))
        #expect(first.adapter.kind == .distributed)
        let running = [Task { try await first.run() }, Task { try await second.run() }]
        defer { running.forEach { $0.cancel() } }
        let pricing = PricingService()
        // (A success on the other instance within the same second would end the streak when it is written: streaks
        // are ordered by time bucket: `streak_at` in Docs/redis-keys.md.)
        #expect(try await firstQuotes.run { try await pricing.quote(for: "pen") } == Quote(price: 3))
        pricing.failing.store(true, ordering: .relaxed)
        #expect(try await firstQuotes.run { try await pricing.quote(for: "pen") } == .cached)
        let before = pricing.calls.load(ordering: .relaxed)
        #expect(before == 4)
        #expect(await eventually { (try? await second.breaker("pricing").snapshot().state) == .open })
        #expect(try await secondQuotes.run { try await pricing.quote(for: "pen") } == .cached)
        #expect(pricing.calls.load(ordering: .relaxed) == before, "the other instance sends nothing to the failing service")
    }
}

/// The repository's root.
private let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
