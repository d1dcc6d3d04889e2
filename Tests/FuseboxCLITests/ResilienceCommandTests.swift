import Foundation
import Fusebox
import FuseboxRedis
import FuseboxTestKit
import Hiredis
import Testing
import TestKinds

/// A shell command that counts its runs in `file` and fails until run `succeedAt` (never, by default).
private func counting(_ file: String, succeedAt: Int = .max) -> [String] {
    ["sh", "-c", "n=$(cat \(file) 2>/dev/null || echo 0); n=$((n+1)); echo $n > \(file); [ $n -ge \(succeedAt) ]"]
}

private func runs(_ file: String) -> Int {
    Int((try? String(contentsOfFile: file, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
}

private func temporary(_ name: String) -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-\(name)-\(UUID().uuidString)").path
}

@Suite("fusebox run: retries, configuration, fleet-wide limit; fusebox policy", .kind(.integration), .timeLimit(.minutes(3)))
struct ResilienceCommandTests {
    @Test("--retries N --retry-backoff D retries a failed run through the breaker, and never a rejection")
    func retries() async throws {
        try await RedisServerProcess.with { server in
            let counter = temporary("count")
            defer { try? FileManager.default.removeItem(atPath: counter) }
            let started = ContinuousClock.now
            let recovered = try await fusebox(
                ["run", "flaky", "--redis", server.url, "--retries", "3", "--retry-backoff", "50ms", "--"] + counting(counter, succeedAt: 3))
            #expect(recovered.status == 0, "\(recovered.output)")
            #expect(runs(counter) == 3)
            #expect(recovered.output.contains("attempt 1 of 4 failed"))
            #expect(recovered.output.contains("retrying in 50 ms") && recovered.output.contains("retrying in 100 ms"))
            #expect(ContinuousClock.now - started >= .milliseconds(150))
            let snapshot = try await BreakerOperator(connection: try RedisClient(url: server.url)).snapshot(of: "flaky")
            #expect(snapshot.totals.failures == 2 && snapshot.totals.successes == 1)

            // Two failures trip it: the third attempt is a rejection, which ends the retries with 75.
            let tripping = temporary("count")
            defer { try? FileManager.default.removeItem(atPath: tripping) }
            let stopped = try await fusebox(
                ["run", "tripping", "--redis", server.url, "--consecutive-failures", "2", "--retries", "5", "--retry-backoff", "10ms", "--"]
                    + counting(tripping))
            #expect(stopped.status == 75, "\(stopped.output)")
            #expect(runs(tripping) == 2)
            #expect(stopped.output.contains("circuit 'tripping' is OPEN"))

            let bad = try await fusebox(["run", "x", "--redis", server.url, "--retries", "-1", "--", "true"])
            #expect(bad.status == 64)
        }
    }

    @Test("run reads the library's configuration: flags win, then the environment, then the --config file, then the defaults")
    func configuration() async throws {
        try await RedisServerProcess.with { server in
            // From the environment: one failure trips.
            let environment = ["FUSEBOX_BREAKERS_NIGHTLY_CONSECUTIVE_FAILURES": "1", "FUSEBOX_BREAKERS_NIGHTLY_FAILURE_RATIO": "off",
                               "FUSEBOX_REDIS_URL": server.url]
            #expect(try await fusebox(["run", "nightly", "--", "false"], environment: environment).status == 1)
            #expect(try await fusebox(["run", "nightly", "--", "true"], environment: environment).status == 75)

            // A flag wins over the environment: three failures in a row are needed.
            let flags = ["--consecutive-failures", "3"]
            #expect(try await fusebox(["run", "weekly"] + flags + ["--", "false"], environment: environment.merging(["FUSEBOX_BREAKERS_WEEKLY_CONSECUTIVE_FAILURES": "1"]) { $1 }).status == 1)
            #expect(try await fusebox(["run", "weekly"] + flags + ["--", "true"], environment: environment.merging(["FUSEBOX_BREAKERS_WEEKLY_CONSECUTIVE_FAILURES": "1"]) { $1 }).status == 0)

            // A JSON file, under the environment.
            let file = temporary("config") + ".json"
            defer { try? FileManager.default.removeItem(atPath: file) }
            try #"{"fusebox": {"namespace": "jobs", "breakers": {"hourly": {"consecutiveFailures": 1, "failureRatio": "off"}}}}"#
                .write(toFile: file, atomically: true, encoding: .utf8)
            #expect(try await fusebox(["run", "hourly", "--config", file, "--redis", server.url, "--", "false"]).status == 1)
            let listed = try await fusebox(["list", "--namespace", "jobs", "--redis", server.url])
            #expect(listed.output.contains("hourly") && listed.output.contains("OPEN"), "the file's namespace is used: \(listed.output)")

            // A YAML file, by its name.
            let yaml = temporary("config") + ".yaml"
            defer { try? FileManager.default.removeItem(atPath: yaml) }
            try "fusebox:\n  namespace: batch\n  breakers:\n    daily:\n      consecutiveFailures: 1\n      failureRatio: \"off\"\n"
                .write(toFile: yaml, atomically: true, encoding: .utf8)
            #expect(try await fusebox(["run", "daily", "--config", yaml, "--redis", server.url, "--", "false"]).status == 1)
            let batch = try await fusebox(["list", "--namespace", "batch", "--redis", server.url])
            #expect(batch.output.contains("daily") && batch.output.contains("OPEN"), "the YAML file's namespace and rule are used: \(batch.output)")
            let notYAML = temporary("config") + ".yml"
            defer { try? FileManager.default.removeItem(atPath: notYAML) }
            try "fusebox: [unclosed".write(toFile: notYAML, atomically: true, encoding: .utf8)
            let garbled = try await fusebox(["run", "daily", "--config", notYAML, "--redis", server.url, "--", "true"])
            #expect(garbled.status == 64 && garbled.output.contains("not a YAML configuration file"), "\(garbled.output)")

            // Bad configuration is refused with the key, before anything runs.
            let bad = try await fusebox(["run", "nightly", "--", "true"], environment: ["FUSEBOX_BREAKERS_NIGHTLY_FAILURE_RATIO": "2", "FUSEBOX_REDIS_URL": server.url])
            #expect(bad.status == 64)
            #expect(bad.output.contains("fusebox.breakers.nightly.failureRatio") && bad.output.contains("'2'"))
            let missing = try await fusebox(["run", "nightly", "--config", "/nonexistent.json", "--", "true"])
            #expect(missing.status == 64)
        }
    }

    @Test("--max-concurrent N holds a fleet-wide lease; a SIGKILLed holder's slot returns within its TTL")
    func fleetWideLimit() async throws {
        try await RedisServerProcess.with { server in
            let common = ["--redis", server.url, "--max-concurrent", "1", "--lease-ttl", "1s"]
            let holderLog = temporary("holder")
            defer { try? FileManager.default.removeItem(atPath: holderLog) }
            let holder = try ChildProcess(
                executable: fuseboxExecutable, arguments: ["run", "export"] + common + ["--", "sleep", "30"], outputPath: holderLog,
                environment: ["NO_COLOR": "1", "PATH": "/usr/bin:/bin"])
            let limit = try FleetBulkhead(connection: try RedisClient(url: server.url), namespace: "fusebox", name: "export", limit: 1, ttl: .seconds(1))
            #expect(await poll { (try? await limit.holders()) == 1 }, "the first run did not take its lease")
            // Renewed every third of the TTL: still held after two TTLs.
            try await Task.sleep(for: .milliseconds(2100))
            #expect(try await limit.holders() == 1)

            let refused = try await fusebox(["run", "export"] + common + ["--", "true"])
            #expect(refused.status == 75, "\(refused.output)")
            #expect(refused.output.contains("fleet-wide limit: 1 of 1 leases are held"))

            holder.kill()
            let killed = ContinuousClock.now
            // The slot returns when the last renewed lease expires: at most one TTL after the kill.
            var freed: ContinuousClock.Instant?
            while freed == nil, ContinuousClock.now - killed < .seconds(5) {
                if try await limit.holders() == 0 { freed = .now } else { try await Task.sleep(for: .milliseconds(10)) }
            }
            let returned = try #require(freed, "the killed holder's slot did not return") - killed
            #expect(returned <= .milliseconds(1000) + .milliseconds(300), "the slot returned \(returned) after the kill (TTL 1 s)")
            print("fault-figure | fleet-wide lease of a SIGKILLed holder | returned \(returned) after the kill (TTL 1 s)")
            let next = try await fusebox(["run", "export"] + common + ["--", "true"])
            #expect(next.status == 0, "\(next.output)")
            // A finished run gives its slot back at once.
            #expect(try await limit.holders() == 0)
        }
    }

    @Test("at most N of many parallel runs hold the fleet-wide limit at once")
    func parallelLimit() async throws {
        try await RedisServerProcess.with { server in
            let counter = temporary("concurrent")
            let peakFile = temporary("peak")
            defer {
                try? FileManager.default.removeItem(atPath: counter)
                try? FileManager.default.removeItem(atPath: peakFile)
            }
            // Each run notes how many run with it (flock keeps the count exact).
            let job = "flock \(counter).lock sh -c 'n=$(($(cat \(counter) 2>/dev/null || echo 0)+1)); echo $n > \(counter); p=$(cat \(peakFile) 2>/dev/null || echo 0); [ $n -gt $p ] && echo $n > \(peakFile); true'; sleep 0.4; flock \(counter).lock sh -c 'echo $(($(cat \(counter))-1)) > \(counter)'"
            let results = try await withThrowingTaskGroup(of: Int32.self) { group in
                for _ in 0..<6 {
                    group.addTask {
                        try await fusebox(["run", "batch", "--redis", server.url, "--max-concurrent", "2", "--lease-ttl", "5s", "--", "sh", "-c", job]).status
                    }
                }
                return try await group.reduce(into: [Int32]()) { $0.append($1) }
            }
            #expect(results.allSatisfy { $0 == 0 || $0 == 75 }, "\(results)")
            #expect(results.filter { $0 == 0 }.count >= 2)
            #expect(runs(peakFile) <= 2, "more than 2 runs at once: \(runs(peakFile))")
        }
    }

    @Test("policy set / show / clear: validated, stored, seen by two instance processes within one refresh, cleared")
    func overrides() async throws {
        try await RedisServerProcess.with { server in
            let redis = ["--redis", server.url]
            var instances: [ChildProcess] = []
            var statsFiles: [String] = []
            defer {
                for instance in instances { instance.kill() }
                for file in statsFiles { try? FileManager.default.removeItem(atPath: file) }
            }
            for index in 0..<2 {
                let stats = temporary("stats-\(index)") + ".json"
                statsFiles.append(stats)
                instances.append(try ChildProcess(
                    executable: fuseboxExecutable,
                    arguments: ["demo-instance", "--index", String(index), "--redis", server.url, "--schedule", "600000,1,1",
                                "--refresh-ms", "500", "--stats", stats],
                    environment: ["NO_COLOR": "1", "PATH": "/usr/bin:/bin"]))
            }
            func origins() -> [String] {
                statsFiles.map { file in
                    guard let data = FileManager.default.contents(atPath: file),
                        let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return "" }
                    return "\(object["policyOrigin"] as? String ?? ""):\(object["policy"] as? String ?? "")"
                }
            }
            #expect(await poll { origins().allSatisfy { $0.hasPrefix("code:") } }, "\(origins())")
            let own = origins()[0]

            // Refused before anything is stored.
            let invalid = try await fusebox(["policy", "set", "inventory-service", "--failure-ratio", "2"] + redis)
            #expect(invalid.status == 64 && invalid.output.contains("0 < R ≤ 1"), "\(invalid.output)")
            #expect(try await fusebox(["policy", "set", "inventory-service"] + redis).status == 64)
            #expect(try await fusebox(["policy", "show", "inventory-service", "--json"] + redis).output.contains(#""origin" : "instances""#))

            let set = try await fusebox(["policy", "set", "inventory-service", "--failure-ratio", "0.9", "--reason", "provider incident"] + redis)
            #expect(set.status == 0, "\(set.output)")
            #expect(await poll(within: .seconds(3)) { origins().allSatisfy { $0.hasPrefix("override:") && $0.contains("failureRateThreshold=0.9") } }, "\(origins())")
            // Fields not given are those of the policy in force before.
            #expect(origins()[0].contains("minimumThroughput=20") && origins()[0].contains("consecutiveFailureThreshold=5"))
            let shown = try await fusebox(["policy", "show", "inventory-service", "--json"] + redis)
            let object = try JSONSerialization.jsonObject(with: Data(shown.output.utf8)) as! [String: Any]
            #expect(object["origin"] as? String == "override")
            #expect(object["reason"] as? String == "provider incident")
            #expect((object["policy"] as? String)?.contains("failureRateThreshold=0.9") == true)
            // Adaptive throttling, fleet-wide, over the override in force.
            let badMultiplier = try await fusebox(["policy", "set", "inventory-service", "--adaptive-throttling", "0.5"] + redis)
            #expect(badMultiplier.status == 64 && badMultiplier.output.contains("from 1 to 100"), "\(badMultiplier.output)")
            #expect(try await fusebox(["policy", "set", "inventory-service", "--adaptive-throttling", "3"] + redis).status == 0)
            #expect(await poll(within: .seconds(3)) {
                origins().allSatisfy { $0.contains("adaptiveThrottling=3.0") && $0.contains("failureRateThreshold=0.9") }
            }, "\(origins())")

            // An instance started later applies it from the start, and it survives instances' restarts.
            instances[1].kill()
            instances[1] = try ChildProcess(
                executable: fuseboxExecutable,
                arguments: ["demo-instance", "--index", "1", "--redis", server.url, "--schedule", "600000,1,1", "--refresh-ms", "500", "--stats", statsFiles[1]],
                environment: ["NO_COLOR": "1", "PATH": "/usr/bin:/bin"])
            try? FileManager.default.removeItem(atPath: statsFiles[1])
            #expect(await poll(within: .seconds(5)) { origins()[1].hasPrefix("override:") }, "\(origins())")

            let cleared = try await fusebox(["policy", "clear", "inventory-service"] + redis)
            #expect(cleared.status == 0 && cleared.output.contains("override cleared"))
            #expect(await poll(within: .seconds(3)) { origins().allSatisfy { $0 == own } }, "\(origins())")
            #expect(try await fusebox(["policy", "clear", "inventory-service"] + redis).output.contains("no override was set"))

            // Written by hand without a publish, an override still arrives with the next refresh round; one an
            // instance cannot honour is logged and not applied.
            let client = try RedisClient(url: server.url)
            defer { client.close() }
            var loose = BreakerPolicy()
            loose.failureRateThreshold = 0.75
            let override = PolicyOverride(policy: loose, setBy: "test", setAtMilliseconds: 0)
            _ = try await client.send("HSET", "fusebox:overrides", "inventory-service", override.json)
            #expect(await poll(within: .seconds(4)) { origins().allSatisfy { $0.contains("failureRateThreshold=0.75") } }, "\(origins())")
            _ = try await client.send("HSET", "fusebox:overrides", "inventory-service", #"{"policy":{"failureRateThreshold":0.2,"unknownField":1}}"#)
            _ = try await client.send("PUBLISH", "fusebox:transitions", #"{"name":"inventory-service","version":0,"override":"set"}"#)
            #expect(await poll(within: .seconds(4)) { origins().allSatisfy { $0 == own } }, "an override that cannot be read leaves the instances on their own policy: \(origins())")
            let garbled = try await fusebox(["policy", "show", "inventory-service"] + redis)
            #expect(garbled.status != 0 && !garbled.output.isEmpty)
            #expect(try await fusebox(["policy", "clear", "inventory-service"] + redis).status == 0)
        }
    }
}
