import Fusebox
import Hiredis

/// How the `distributed` adapter talks to Redis and behaves when Redis is not well.
public struct DistributedOptions: Sendable {
    /// Where Redis is; its timeouts bound every wait of the adapter.
    public var redis: RedisConfiguration
    /// The key prefix: keys are `NAMESPACE:{NAME}:state`, …, the set `NAMESPACE:breakers` and the channel
    /// `NAMESPACE:transitions`.
    public var namespace = "fusebox"
    /// How often buffered outcomes (counts) are written: each breaker with outcomes costs one script call per
    /// interval, whatever its call rate. Failures do not wait for it when they exceed the failure budget Redis
    /// grants or may cross a threshold; probe outcomes never wait. Default 1 s.
    public var flushInterval: Duration = .seconds(1)
    /// How long successes may wait while a breaker is quiet: closed, with no failure (nor slow call, when a
    /// slow-call threshold is set) in the shared window and no failure streak. A quiet breaker with traffic costs
    /// each instance one script call per this interval instead of per ``flushInterval``. The write that ends the
    /// quiet makes Redis recall what every instance holds, so held successes are written within a round trip
    /// once they can matter to a trip. Capped at half a time window (so held calls still enter it); never less than
    /// ``flushInterval``. Default 5 s.
    public var quietFlushInterval: Duration = .seconds(5)
    /// How often, at most, the whole fleet writes one quiet breaker that has a time window (writes per second,
    /// summed over the instances that are up): each instance holds a quiet breaker's successes for
    /// (senders up) ÷ this seconds, at most 120 s (each adapter 80–100 % of that, drawn once, so that instances
    /// started together do not write together), so a quiet breaker costs Redis about the same however many
    /// instances share it. Successes that leave the window meanwhile count in the totals only; the write that ends
    /// the quiet recalls the rest, as for ``quietFlushInterval``. Default 2.
    public var quietFleetWritesPerSecond = 2
    /// How often this adapter tells Redis it is up (`NAMESPACE:{members}:senders` and `:instances`, sorted sets
    /// of who is up until when). An adapter that stops beating (a killed process, a lost host) drops out after three
    /// intervals. With more than 50 senders up, each beats (and pings its subscriber) every (senders ÷ 50) s when
    /// that is longer, so that the fleet's beats stay near 50 a second. The failure budget is shared among the senders that are up, and a quorum
    /// (``minimumInstances``) larger than the instances that are up is lowered to them. Default 1 s.
    public var membershipInterval: Duration = .seconds(1)
    /// Write every outcome as soon as it is recorded (still without waiting for the reply).
    public var writeThrough = false
    /// How often every cached state is read again with a plain `HMGET` (a slice of the breakers each second, in
    /// one pipeline), covering anything pub/sub could not deliver. Also the subscriber's health-check period,
    /// capped at 1 s. Default 30 s.
    public var refreshInterval: Duration = .seconds(30)
    /// What to do while Redis is unreachable (or a breaker's keys are corrupt). Default `StoreDownPolicy.local`.
    public var whenUnavailable: StoreDownPolicy = .local
    /// Trip only when failures in the window come from at least this many distinct instances (time windows
    /// only). Default 1: any instance's failures count.
    public var minimumInstances = 1
    /// This instance's name in the events stream and the quorum; default `HOST-PID-RANDOM`.
    public var instanceID: String
    /// Outcomes kept per breaker until they are written; beyond this they are counted as dropped. Outcomes are
    /// kept as counts, whose memory does not grow with their number, so the default sets no limit; set one to
    /// bound what a long outage writes to the totals when Redis returns.
    public var maxBufferedOutcomes = Int.max
    /// How long, at most, a call waits for Redis: only admission in half-open (a probe permit) or of a breaker whose
    /// state is not known yet asks Redis. Past it, ``whenUnavailable`` decides the call, and so every call of the
    /// breaker until Redis answers; the answer, when it comes, updates the cache, and a probe permit it grants is
    /// given back. Until the adapter's first reply from Redis, admission waits as long as a command may instead
    /// (setting up a connection is not a slow Redis). Default 50 ms (the command timeout, 1 s by default, still
    /// decides when Redis counts as unavailable).
    public var admissionBudget: Duration = .milliseconds(50)
    /// After Redis denies a probe permit, this instance rejects locally for this long before asking again.
    public var halfOpenRetryInterval: Duration = .milliseconds(20)

    /// Options for Redis at `redis`.
    public init(redis: RedisConfiguration) {
        self.redis = redis
        self.instanceID = Self.defaultInstanceID()
    }

    /// Options for Redis at `url`; a bad URL throws `FuseboxError/Code/invalidConfiguration`.
    public init(url: String) throws(FuseboxError) {
        do {
            self.init(redis: try RedisConfiguration(url: url))
        } catch {
            throw FuseboxError(code: .invalidConfiguration, message: error.message, underlying: error)
        }
    }

    /// Checks the options; throws `FuseboxError/Code/invalidConfiguration` naming the bad one.
    public func validated() throws(FuseboxError) -> DistributedOptions {
        func fail(_ text: String) -> FuseboxError { FuseboxError(code: .invalidConfiguration, message: text) }
        guard !namespace.isEmpty, !namespace.contains(where: { $0 == "{" || $0 == "}" || $0.isWhitespace }) else {
            throw fail("namespace '\(namespace)' must be non-empty, without spaces, '{' or '}'")
        }
        guard flushInterval > .zero else { throw fail("flushInterval must be > 0") }
        guard quietFlushInterval > .zero else { throw fail("quietFlushInterval must be > 0") }
        guard refreshInterval > .zero else { throw fail("refreshInterval must be > 0") }
        guard quietFleetWritesPerSecond >= 1 else { throw fail("quietFleetWritesPerSecond is \(quietFleetWritesPerSecond); allowed: ≥ 1") }
        guard membershipInterval >= .milliseconds(10) else { throw fail("membershipInterval must be ≥ 10 ms") }
        guard (1...1000).contains(minimumInstances) else { throw fail("minimumInstances is \(minimumInstances); allowed: 1…1,000") }
        guard admissionBudget > .zero else { throw fail("admissionBudget must be > 0") }
        guard maxBufferedOutcomes >= 1 else { throw fail("maxBufferedOutcomes must be ≥ 1") }
        guard !instanceID.isEmpty, !instanceID.contains(where: { $0.isWhitespace }) else {
            throw fail("instanceID '\(instanceID)' must be non-empty, without spaces")
        }
        return self
    }

    private static func defaultInstanceID() -> String {
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count - 1)
        let name = String(decoding: host.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return "\(name.isEmpty ? "host" : name)-\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 36))"
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
