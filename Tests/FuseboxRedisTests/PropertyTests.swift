import Foundation
import Fusebox
import FuseboxTestKit
import Hiredis
import PropertyBased
import Testing

@testable import FuseboxRedis

/// Random policies and names through Redis: what an instance writes, the script and operators must read back.
@Suite("Properties of the Redis layout", .timeLimit(.minutes(2)))
struct RedisPropertyTests {
    /// Valid policies with every kind of window and break duration, and custom names with any character.
    static let policies: Generator<BreakerPolicy, Shrink.None<BreakerPolicy>> = Generator { rng in
        func pick<T>(_ values: [T]) -> T { values.randomElement(using: &rng)! }
        var policy = BreakerPolicy()
        policy.failureRateThreshold = pick([nil, 1e-9, 0.1, 0.5, 1])
        policy.consecutiveFailureThreshold = pick([nil, 1, 7, 1_000_000])
        policy.slowCallRateThreshold = pick([nil, 0.25, 1])
        if policy.failureRateThreshold == nil && policy.consecutiveFailureThreshold == nil && policy.slowCallRateThreshold == nil {
            policy.failureRateThreshold = 0.5
        }
        policy.slowCallDuration = pick([.milliseconds(1), .milliseconds(1500), .seconds(86_400)])
        policy.minimumThroughput = pick([1, 10, 1_000_000])
        policy.window = pick([.count(1), .count(100_000), .time(samplingDuration: .milliseconds(1), buckets: 1),
                              .time(samplingDuration: .seconds(10), buckets: 10), .time(samplingDuration: .seconds(3600), buckets: 1000)])
        policy.breakDuration = pick([
            .fixed(.milliseconds(1)), .fixed(.seconds(86_400 * 365)),
            .exponential(base: .milliseconds(10), factor: 1e300, maximum: .seconds(86_400)),
            .linear(base: .seconds(1), increment: .zero, maximum: .seconds(1)), .adaptive,
            .custom(id: pick(["jitter", "quote\"back\\slash", "line\nbreak\ttab\u{1}\u{7F}", "ünïcødé 😀", "}{,:[]"])) { .seconds($0) },
        ])
        policy.permittedCallsInHalfOpen = pick([1, 10_000])
        policy.successThreshold = pick([1, 10_000])
        policy.maxHalfOpenDuration = pick([.milliseconds(1), .seconds(60)])
        policy.mode = pick([.normal, .metricsOnly, .disabled])
        return policy
    }

    @Test("the policy JSON an instance stores is valid JSON with the policy's values, and the script reads it")
    func policyJSONRoundTrips() async throws {
        let server = try await SharedServer.get()
        let redis = try RedisClient(configuration: server.configuration())
        var index = 0
        await propertyCheck(count: 60, input: Self.policies) { policy in
            index += 1
            let name = "json-\(index)"
            let subject = try DistributedSubject(server: server)
            let backend = try await subject.makeBackend(name: name, policy: policy)
            if case .admitted(let token) = backend.acquire() { backend.record(.success, for: token) }
            await subject.adapter.flush()

            let namespace = subject.adapter.options.namespace
            let key = DistributedBackend.keys(namespace: namespace, name: name)[0]
            let stored = try await redis.send("HGET", key, "policy").string ?? ""
            let object = try #require(try JSONSerialization.jsonObject(with: Data(stored.utf8)) as? [String: Any], "\(stored)")
            #expect(object["minimumThroughput"] as? Int == policy.minimumThroughput)
            #expect(object["failureRateThreshold"] as? Double == policy.failureRateThreshold, "\(stored)")
            #expect(object["mode"] as? String == policy.mode.rawValue)
            #expect(object["maxHalfOpenDurationMs"] as? Int64 == policy.maxHalfOpenDuration.milliseconds)
            if case .custom(let id, _) = policy.breakDuration {
                #expect((object["breakDuration"] as? [String: Any])?["id"] as? String == id, "\(stored)")
            }

            // The operators' path: the script decodes the stored JSON (no policy is sent) and applies it.
            let operatorSide = BreakerOperator(connection: redis, namespace: namespace)
            let isolated = try await operatorSide.isolate(name, reason: "json")
            #expect(isolated.state == .isolated)
            let reset = try await operatorSide.reset(name)
            let base: BreakerState = switch policy.mode {
            case .normal: .closed
            case .metricsOnly: .metricsOnly
            case .disabled: .disabled
            }
            #expect(reset.state == base, "\(reset.state) for \(policy.mode)")
        }
    }

    @Test("every key of a valid breaker name carries the name as its one hash tag")
    func keysShareOneHashTag() async {
        let characters: [Character] = ["a", "Z", "0", ":", "-", " ", "é", "😀", "@", "#", "*", "[", "]"]
        let names = Gen.element(of: characters).array(of: 1...12).map { String($0.compactMap { $0 }) }
        await propertyCheck(count: 500, input: names, Gen.element(of: ["fusebox", "ns:a", "a-b.c"])) { name, namespace in
            await Task.yield()  // CPU-bound cases: leave the shared pool to the suites that time things
            let namespace = namespace ?? "fusebox"
            guard (try? BreakerRegistry.validate(name: name)) != nil else { return }
            for key in DistributedBackend.keys(namespace: namespace, name: name) {
                // Redis Cluster hashes the text between the first '{' and the next '}' when it is not empty.
                guard let open = key.firstIndex(of: "{"), let close = key[key.index(after: open)...].firstIndex(of: "}") else {
                    Issue.record("\(key) has no hash tag")
                    continue
                }
                let tag = key[key.index(after: open)..<close]
                #expect(tag == name, "\(key): tag '\(tag)'")
            }
        }
    }
}
