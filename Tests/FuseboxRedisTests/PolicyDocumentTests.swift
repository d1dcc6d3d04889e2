import Fusebox
import Testing
import TestKinds

@testable import FuseboxRedis

/// The policy's stored JSON (`PolicyDocument`), without Redis: its text, and what reading it refuses.
@Suite("Policy document: the stored policy JSON and its errors", .kind(.unit))
struct PolicyDocumentTests {
    static var everything: BreakerPolicy {
        var policy = BreakerPolicy()
        policy.consecutiveFailureThreshold = 7
        policy.slowCallRateThreshold = 0.25
        policy.window = .time(samplingDuration: .seconds(30), buckets: 15)
        policy.breakDuration = .exponential(base: .milliseconds(250), factor: 1.5, maximum: .seconds(60))
        policy.adaptiveThrottling = .init(multiplier: 2)
        policy.relativeFailureRate = .init(factor: 4, floor: 0.02, horizon: .seconds(3600), warmupCalls: 100)
        policy.minimumInstances = 2
        return policy
    }

    @Test("the text: sorted keys (one fingerprint per policy in every process), thresholds null when off, options only when set")
    func text() throws {
        let plain = PolicyDocument(BreakerPolicy(), minimumInstances: nil).text
        #expect(plain.hasPrefix(#"{"breakDuration":{"#) && plain.contains(#""consecutiveFailureThreshold":null"#))
        #expect(!plain.contains("minimumInstances") && !plain.contains("adaptiveThrottling") && !plain.contains("relativeFailureRate"))
        let full = PolicyDocument(Self.everything, minimumInstances: 2).text
        #expect(full.contains(#""relativeFailureRate":{"factor":4,"floor":0.02,"horizonMs":3600000,"warmupCalls":100}"#), "\(full)")
        #expect(full.contains(#""minimumInstances":2"#) && full.contains(#""adaptiveThrottling":{"multiplier":2}"#))
        #expect(PolicyDocument(Self.everything, minimumInstances: 2).text == full, "the same text every time")

        let back = try PolicyJSON.decode(full)
        #expect(back.hasSameStateRules(as: Self.everything) && back.minimumInstances == 2)
        var custom = BreakerPolicy()
        custom.breakDuration = .custom(id: "a/b \"c\"") { .seconds($0) }
        #expect(PolicyDocument(custom, minimumInstances: nil).text.contains(#""id":"a/b \"c\"""#))
    }

    @Test("reading refuses what Fusebox did not write, naming the field; a field from a newer build is an invalid policy")
    func errors() {
        func error(_ text: String) -> FuseboxError? {
            do {
                _ = try PolicyJSON.decode(text)
                return nil
            } catch {
                return error
            }
        }
        let full = PolicyDocument(Self.everything, minimumInstances: 2).text
        #expect(error("not json")?.code == .corruptState)
        let noSampling = full.replacingOccurrences(of: #","samplingMs":30000"#, with: "")
        #expect(error(noSampling)?.message.contains("'window.samplingMs'") == true, "\(error(noSampling).map { "\($0)" } ?? "read")")
        let stringly = full.replacingOccurrences(of: #""minimumThroughput":10"#, with: #""minimumThroughput":"10""#)
        #expect(error(stringly)?.message.contains("'minimumThroughput'") == true)
        let noThreshold = full.replacingOccurrences(of: #""failureRateThreshold":0.5,"#, with: "")
        #expect(error(noThreshold)?.message.contains("'failureRateThreshold'") == true)
        let newer = full.replacingOccurrences(of: #"{"adaptiveThrottling""#, with: #"{"quantumThreshold":1,"adaptiveThrottling""#)
        #expect(error(newer)?.code == .invalidPolicy && error(newer)?.message.contains("quantumThreshold") == true)
        let customText = full.replacingOccurrences(of: #""kind":"exponential""#, with: #""kind":"custom","id":"x""#)
        #expect(error(customText)?.code == .invalidPolicy)
    }
}
