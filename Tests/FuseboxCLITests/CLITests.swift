import Foundation
import Fusebox
import FuseboxRedis
import FuseboxTestKit
import Hiredis
import Testing
import TestKinds

/// The built `fusebox` executable, beside the test bundle.
let fuseboxExecutable: String = {
    let beside = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("fusebox").path
    if FileManager.default.isExecutableFile(atPath: beside) { return beside }
    return repositoryRoot.appendingPathComponent(".build/debug/fusebox").path
}()

struct Finished {
    var status: Int32
    var output: String
}

/// Runs `fusebox ARGS` to completion (at most `limit`), capturing stdout and stderr together.
func fusebox(_ arguments: [String], environment: [String: String] = [:], limit: Duration = .seconds(60)) async throws -> Finished {
    let log = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-cli-\(UUID().uuidString).log").path
    defer { try? FileManager.default.removeItem(atPath: log) }
    let child = try ChildProcess(
        executable: fuseboxExecutable, arguments: arguments, outputPath: log,
        environment: ["NO_COLOR": "1", "PATH": "/usr/bin:/bin"].merging(environment) { $1 })
    guard let status = await child.waitForExit(upTo: limit) else {
        child.kill()
        throw RedisServerProcess.Failure(description: "fusebox \(arguments) did not finish within \(limit)")
    }
    return Finished(status: status, output: (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
}

@Suite("The fusebox command", .kind(.integration), .timeLimit(.minutes(3)))
struct CLITests {
    @Test("bad input: one clear line and the documented exit code, never a stack trace")
    func badInput() async throws {
        let port = try RedisServerProcess.freePort()
        let badURL = try await fusebox(["list", "--redis", "redis://host:notaport"])
        #expect(badURL.status == 64)
        #expect(badURL.output.contains("port 'notaport'"))

        let down = try await fusebox(["list", "--redis", "redis://127.0.0.1:\(port)"])
        #expect(down.status == 69)
        #expect(down.output.split(separator: "\n").count == 1, "\(down.output)")
        #expect(down.output.hasPrefix("fusebox: Redis at redis://127.0.0.1:\(port) is unavailable"))

        let usage = try await fusebox(["run", "x", "--break-duration", "soon", "--redis", "redis://127.0.0.1:\(port)", "--", "true"])
        #expect(usage.status == 64)
        #expect(usage.output.contains("bad duration 'soon'"))

        let badPolicy = try await fusebox(["run", "x", "--failure-ratio", "2", "--", "true"])
        #expect(badPolicy.status == 64)
        #expect(badPolicy.output.contains("--failure-ratio is '2'; allowed: 0 < R ≤ 1"))

        try await RedisServerProcess.with { server in
            let unknown = try await fusebox(["show", "nope", "--redis", server.url])
            #expect(unknown.status == 64)
            #expect(unknown.output.contains("unknown breaker 'nope'"))
            let empty = try await fusebox(["list", "--redis", server.url])
            #expect(empty.status == 0)
            #expect(empty.output.contains("no breakers"))
        }
    }

    @Test("a relative failure threshold from run's flags: show gives the baseline and the threshold in force; reset --baseline forgets it")
    func relativeThreshold() async throws {
        try await RedisServerProcess.with { server in
            let flags = ["--redis", server.url, "--relative-failure-factor", "4", "--relative-failure-floor", "0.1"]
            for _ in 0..<3 { #expect(try await fusebox(["run", "rel"] + flags + ["--", "true"]).status == 0) }
            #expect(try await fusebox(["run", "rel"] + flags + ["--", "false"]).status == 1)
            let shown = try JSONSerialization.jsonObject(with: Data(try await fusebox(["show", "rel", "--json", "--redis", server.url]).output.utf8)) as! [String: Any]
            let breaker = shown["breaker"] as! [String: Any]
            #expect(abs((breaker["failureBaseline"] as? Double ?? 0) - 0.25) < 2e-3, "\(breaker)")  // decayed between the runs
            #expect(breaker["failureRateThresholdInForce"] as? Double == 0.5, "the fixed threshold until 100 calls are learned")
            #expect(try await fusebox(["show", "rel", "--redis", server.url]).output.contains("failure threshold  50.0% (relative: baseline 25.0% over 4 calls)"))
            let bad = try await fusebox(["run", "rel", "--redis", server.url, "--relative-failure-floor", "0.1", "--", "true"])
            #expect(bad.status == 64 && bad.output.contains("--relative-failure-factor"), "\(bad.output)")
            let reset = try await fusebox(["reset", "rel", "--baseline", "--json", "--redis", server.url])
            #expect(reset.status == 0)
            let after = try JSONSerialization.jsonObject(with: Data(reset.output.utf8)) as! [String: Any]
            #expect(after["failureBaseline"] == nil || after["failureBaseline"] is NSNull, "\(after)")
        }
    }

    @Test("isolate --for and policy set --for end by themselves; shadow mode runs what it would reject and counts it")
    func expiringActionsAndShadow() async throws {
        try await RedisServerProcess.with { server in
            let redis = ["--redis", server.url]
            let common = redis + ["--consecutive-failures", "1", "--break-duration", "1m"]
            #expect(try await fusebox(["run", "deploys"] + common + ["--", "true"]).status == 0)
            // 20 s: the checks below run before it ends even with every process under ThreadSanitizer.
            let isolated = try await fusebox(["isolate", "deploys", "--reason", "release", "--for", "20s"] + redis)
            // The isolation began before the command returned (a loaded machine can take a second to start it).
            let isolatedBy = ContinuousClock.now
            #expect(isolated.status == 0 && isolated.output.contains("ISOLATED") && isolated.output.contains("ends by itself at"), "\(isolated.output)")
            let shown = try JSONSerialization.jsonObject(with: Data(try await fusebox(["show", "deploys", "--json"] + redis).output.utf8)) as! [String: Any]
            let breaker = shown["breaker"] as! [String: Any]
            let left = breaker["isolationEndsInMs"] as? Int ?? -1
            #expect(left > 0 && left <= 20_000, "\(breaker)")
            #expect((breaker["isolatedUntil"] as? String)?.hasSuffix("Z") == true, "\(breaker)")
            #expect(try await fusebox(["show", "deploys"] + redis).output.contains("isolation ends"))
            #expect(try await fusebox(["list"] + redis).output.contains("isolated: release (ends in"))
            let blocked = try await fusebox(["run", "deploys"] + common + ["--", "true"])
            #expect(blocked.status == 75 && blocked.output.contains("release"), "\(blocked.output)")
            try await Task.sleep(until: isolatedBy + .milliseconds(20_300))
            #expect(try await fusebox(["run", "deploys"] + common + ["--", "true"]).status == 0, "the isolation ended by itself")
            #expect(try await fusebox(["show", "deploys"] + redis).output.contains("deploys  CLOSED"))
            for bad in ["0s", "forever", "2y", "400d"] {
                let refused = try await fusebox(["isolate", "deploys", "--reason", "x", "--for", bad] + redis)
                #expect(refused.status == 64, "--for \(bad): \(refused.output)")
            }
            #expect(try await fusebox(["policy", "set", "deploys", "--mode", "shadow", "--for", "0s"] + redis).status == 64)

            // Shadow mode for an hour, set fleet-wide by override.
            let set = try await fusebox(["policy", "set", "deploys", "--mode", "shadow", "--reason", "trying it", "--for", "1h"] + redis)
            #expect(set.status == 0 && set.output.contains("ends by itself at"), "\(set.output)")
            let policy = try JSONSerialization.jsonObject(with: Data(try await fusebox(["policy", "show", "deploys", "--json"] + redis).output.utf8)) as! [String: Any]
            #expect(policy["origin"] as? String == "override" && policy["expires_at_ms"] as? Int != nil, "\(policy)")
            #expect(try await fusebox(["policy", "show", "deploys"] + redis).output.contains("ends by itself at"))
            #expect(try await fusebox(["run", "deploys"] + common + ["--", "false"]).status == 1)
            let ran = try await fusebox(["run", "deploys"] + common + ["--", "true"])
            #expect(ran.status == 0, "shadow mode runs the command the open breaker would have rejected: \(ran.output)")
            let after = try JSONSerialization.jsonObject(with: Data(try await fusebox(["show", "deploys", "--json"] + redis).output.utf8)) as! [String: Any]
            let totals = (after["breaker"] as! [String: Any])["totals"] as! [String: Any]
            #expect((after["breaker"] as! [String: Any])["state"] as? String == "open")
            #expect(totals["wouldReject"] as? Int == 1 && totals["rejected"] as? Int == 1, "\(totals)")
            #expect(try await fusebox(["show", "deploys"] + redis).output.contains("1 would have been rejected (shadow mode)"))
            #expect(try await fusebox(["policy", "clear", "deploys"] + redis).status == 0)
            #expect(try await fusebox(["run", "deploys"] + common + ["--", "true"]).status == 75, "its own policy again: rejected")
        }
    }

    @Test("fusebox audit: every operator action with who (--by, else USER@HOST), what and why, newest first, by breaker")
    func audit() async throws {
        try await RedisServerProcess.with { server in
            let redis = ["--redis", server.url]
            #expect(try await fusebox(["audit"] + redis).output.contains("no operator actions recorded"))
            #expect(try await fusebox(["isolate", "ledger", "--reason", "migration", "--by", "bob"] + redis).status == 0)
            #expect(try await fusebox(["--by", "carol", "policy", "set", "ledger", "--failure-ratio", "0.8", "--reason", "incident"] + redis).status == 0)
            #expect(try await fusebox(["reset", "ledger"] + redis).status == 0)
            #expect(try await fusebox(["isolate", "other", "--reason", "x"] + redis).status == 0)
            let all = try JSONSerialization.jsonObject(with: Data(try await fusebox(["audit", "--json"] + redis).output.utf8)) as! [[String: Any]]
            #expect(all.map { $0["action"] as? String } == ["isolate", "reset", "policy-set", "isolate"], "\(all)")
            #expect(all[3]["by"] as? String == "bob" && all[3]["reason"] as? String == "migration")
            #expect(all[2]["by"] as? String == "carol" && (all[2]["reason"] as? String)?.contains("incident") == true)
            #expect((all[1]["by"] as? String)?.contains("@") == true, "USER@HOST by default")
            let ledger = try JSONSerialization.jsonObject(with: Data(try await fusebox(["audit", "ledger", "--json", "--limit", "2"] + redis).output.utf8)) as! [[String: Any]]
            #expect(ledger.map { $0["action"] as? String } == ["reset", "policy-set"])
            let table = try await fusebox(["audit", "ledger"] + redis).output
            #expect(table.contains("BREAKER") && table.contains("migration"))
            #expect(try await fusebox(["audit", "--limit", "0"] + redis).status == 64)
        }
    }

    @Test("run, list, show, isolate, reset, half-open: exit codes and the JSON shape")
    func commands() async throws {
        try await RedisServerProcess.with { server in
            let marker = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-ran-\(UUID().uuidString)").path
            let common = ["--redis", server.url, "--consecutive-failures", "2", "--break-duration", "1m"]
            #expect(try await fusebox(["run", "nightly"] + common + ["--", "true"]).status == 0)
            #expect(try await fusebox(["run", "nightly"] + common + ["--", "sh", "-c", "exit 3"]).status == 3)
            #expect(try await fusebox(["run", "nightly"] + common + ["--", "false"]).status == 1)
            let rejected = try await fusebox(["run", "nightly"] + common + ["--", "touch", marker])
            #expect(rejected.status == 75)
            #expect(rejected.output.contains("circuit 'nightly' is OPEN"))
            #expect(!FileManager.default.fileExists(atPath: marker))

            let list = try await fusebox(["list", "--json", "--redis", server.url])
            #expect(list.status == 0)
            let breakers = try JSONSerialization.jsonObject(with: Data(list.output.utf8)) as! [[String: Any]]
            #expect(breakers.count == 1)
            let first = breakers[0]
            #expect(first["name"] as? String == "nightly")
            #expect(first["state"] as? String == "open")
            #expect((first["totals"] as? [String: Any])?["calls"] as? Int == 3)
            #expect((first["totals"] as? [String: Any])?["rejected"] as? Int == 1)
            #expect((first["errors"] as? [String: Any])?["CommandExitStatus"] as? Int == 2)
            #expect(first["healthScore"] as? Int == 10, "open: the state's ceiling")
            #expect(first["recentTransitions"] as? Int == 1)
            let table = try await fusebox(["list", "--redis", server.url]).output
            #expect(table.contains("HEALTH") && table.split(separator: "\n").contains { $0.hasPrefix("nightly") && $0.contains(" 10 ") })
            for key in ["version", "timeInStateMs", "window", "failureRate", "consecutiveFailures", "attempt", "timeUntilProbeMs", "lastReason"] {
                #expect(first[key] != nil, "list --json lacks \(key)")
            }

            let show = try await fusebox(["show", "nightly", "--json", "--redis", server.url])
            let shown = try JSONSerialization.jsonObject(with: Data(show.output.utf8)) as! [String: Any]
            let transitions = shown["transitions"] as! [[String: Any]]
            #expect(transitions.map { $0["to"] as? String } == ["open"])
            #expect((transitions.first?["reason"] as? String)?.contains("2 consecutive failures") == true)

            let plain = try await fusebox(["show", "nightly", "--redis", server.url])
            #expect(plain.output.contains("nightly  OPEN"))
            #expect(plain.output.contains("CommandExitStatus ×2"))
            #expect(plain.output.contains("health             10 of 100 (1 transitions in the last 10 minutes)"))

            let isolate = try await fusebox(["isolate", "nightly", "--reason", "maintenance", "--redis", server.url])
            #expect(isolate.status == 0)
            #expect(isolate.output.contains("ISOLATED"))
            let blocked = try await fusebox(["run", "nightly"] + common + ["--", "true"])
            #expect(blocked.status == 75)
            #expect(blocked.output.contains("maintenance"))
            #expect(try await fusebox(["half-open", "nightly", "--redis", server.url]).output.contains("HALF_OPEN"))
            #expect(try await fusebox(["reset", "nightly", "--redis", server.url]).output.contains("CLOSED"))
            #expect(try await fusebox(["run", "nightly"] + common + ["--", "true"]).status == 0)
        }
    }

    @Test("--redis, --namespace and --json work before the subcommand and after it; the defaults come from the environment")
    func globalOptions() async throws {
        try await RedisServerProcess.with { server in
            #expect(try await fusebox(["--redis", server.url, "--namespace", "ops", "run", "early", "--", "true"]).status == 0)
            let before = try await fusebox(["--redis", server.url, "--namespace=ops", "--json", "list"])
            #expect(before.status == 0, "\(before.output)")
            let listed = try JSONSerialization.jsonObject(with: Data(before.output.utf8)) as? [[String: Any]]
            #expect(listed?.map { $0["name"] as? String } == ["early"])
            let after = try await fusebox(["list", "--json", "--namespace", "ops", "--redis", server.url])
            let listedAfter = try JSONSerialization.jsonObject(with: Data(after.output.utf8)) as? [[String: Any]]
            #expect(listedAfter?.map { $0["name"] as? String } == ["early"])
            // Another namespace holds nothing; the environment gives the defaults, and options override it.
            #expect(try await fusebox(["--redis", server.url, "list"]).output.contains("no breakers in namespace 'fusebox'"))
            let fromEnvironment = try await fusebox(["list"], environment: ["FUSEBOX_REDIS_URL": server.url, "FUSEBOX_NAMESPACE": "ops"])
            #expect(fromEnvironment.status == 0)
            #expect(fromEnvironment.output.contains("early"))
            let overridden = try await fusebox(["--namespace", "other", "list"], environment: ["FUSEBOX_REDIS_URL": server.url, "FUSEBOX_NAMESPACE": "ops"])
            #expect(overridden.output.contains("no breakers in namespace 'other'"))
            // An option that is not global, before the subcommand: the parser's own usage error.
            let misplaced = try await fusebox(["--limit", "1", "watch", "--redis", server.url])
            #expect(misplaced.status == 64)
        }
    }

    @Test("isolate before any instance has used a breaker, and again after Redis lost its keys: the first instance honours it")
    func isolateBeforeFirstUse() async throws {
        try await RedisServerProcess.with { server in
            let unknown = try await fusebox(["--redis", server.url, "show", "payments"])
            #expect(unknown.status == 64)
            #expect(unknown.output.contains("unknown breaker 'payments'"))
            #expect(try await fusebox(["--redis", server.url, "half-open", "payments"]).status == 64)
            let isolated = try await fusebox(["--redis", server.url, "isolate", "payments", "--reason", "migration"])
            #expect(isolated.status == 0, "\(isolated.output)")
            #expect(isolated.output.contains("ISOLATED"))
            #expect(try await fusebox(["--redis", server.url, "list"]).output.contains("payments"))

            var options = DistributedOptions(redis: try RedisConfiguration(url: server.url))
            options.refreshInterval = .milliseconds(200)
            let adapter = try DistributedAdapter(options: options)
            let service = Task { try await adapter.run() }
            defer { service.cancel() }
            let registry = BreakerRegistry(adapter: adapter)
            var policy = BreakerPolicy()
            policy.consecutiveFailureThreshold = 5
            let breaker = try registry.breaker("payments", policy: policy)
            do {
                try await breaker.acquireAsync().success()
                Issue.record("an isolated breaker admitted a call")
            } catch let error as FuseboxError {
                #expect(error.code == .circuitOpen)
                #expect(error.message.contains("migration"))
            }
            // The instance stored its policy: the operator's later calls use it.
            let shown = try await fusebox(["--redis", server.url, "--json", "show", "payments"])
            let json = try JSONSerialization.jsonObject(with: Data(shown.output.utf8)) as? [String: Any]
            #expect((json?["breaker"] as? [String: Any])?["state"] as? String == "isolated")
            #expect(try await fusebox(["--redis", server.url, "reset", "payments"]).output.contains("CLOSED"))
            #expect(await poll { (try? await breaker.acquireAsync())?.success() != nil })

            // Redis loses every key: the isolation is stored again and reaches the instance that cached CLOSED.
            _ = try await RedisClient(url: server.url).send("FLUSHALL")
            #expect(try await fusebox(["--redis", server.url, "isolate", "payments", "--reason", "after restart"]).status == 0)
            #expect(await poll { await rejection(of: breaker)?.contains("after restart") == true })
        }
    }

    @Test("every command takes a redis+cluster:// URL: run, list, isolate and watch across all three primaries")
    func onACluster() async throws { try await SharedCluster.use { cluster in
        let namespace = "cli\(UInt32.random(in: 0...UInt32.max))"
        let client = try RedisClient(url: cluster.url)
        defer { client.close() }
        let map = try ClusterSlotMap(shards: try await client.send("CLUSTER", "SHARDS"))
        var names: [RedisConfiguration.Endpoint: String] = [:]
        var index = 0
        while names.count < 3 {
            let name = "api-\(index)"
            if let owner = map.primary(forKey: "\(namespace):{\(name)}:state"), names[owner] == nil { names[owner] = name }
            index += 1
        }
        let global = ["--redis", cluster.url, "--namespace", namespace]
        for name in names.values {
            let ran = try await fusebox(["run", name] + global + ["--", "true"])
            #expect(ran.status == 0, "\(ran.output)")
        }
        let listed = try await fusebox(global + ["list"])
        #expect(listed.status == 0, "\(listed.output)")
        for name in names.values { #expect(listed.output.contains(name), "\(listed.output)") }

        let log = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-watch-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: log) }
        let watcher = try ChildProcess(executable: fuseboxExecutable, arguments: global + ["watch", "--limit", "1"], outputPath: log)
        defer { watcher.kill() }
        let target = names[map.primaries[2]]!
        #expect(await poll {
            _ = try? await fusebox(["isolate", target, "--reason", "drill"] + global)
            return ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("isolated")
        })
        #expect(await watcher.waitForExit(upTo: .seconds(10)) == 0)
        #expect(try await fusebox(["show", target] + global).output.contains("isolated"))

        // A redis:// URL to one node of the cluster: the error says what the server is and which scheme reaches it.
        let indexKey = "\(namespace):breakers"
        let other = try #require(map.primaries.first { $0 != map.primary(forKey: indexKey) })
        let wrong = try await fusebox(["--redis", "redis://\(other)", "--namespace", namespace, "list"])
        #expect(wrong.status == 69 && wrong.output.contains("redis+cluster://"), "\(wrong.output)")
        #expect(wrong.output.split(separator: "\n").count == 1, "\(wrong.output)")
    } }

    @Test("watch --json prints each transition as one line of JSON and nothing else")
    func watchJSON() async throws {
        try await RedisServerProcess.with { server in
            #expect(try await fusebox(["run", "watched", "--redis", server.url, "--", "true"]).status == 0)
            let log = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-watch-\(UUID().uuidString).log").path
            defer { try? FileManager.default.removeItem(atPath: log) }
            let watcher = try ChildProcess(
                executable: fuseboxExecutable, arguments: ["--json", "--redis", server.url, "watch", "--limit", "2"], outputPath: log)
            defer { watcher.kill() }
            // Subscribed once a transition made now shows up.
            #expect(await poll {
                _ = try? await fusebox(["isolate", "watched", "--reason", "drill", "--redis", server.url])
                return ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("isolated")
            })
            _ = try await fusebox(["reset", "watched", "--redis", server.url])
            #expect(await watcher.waitForExit(upTo: .seconds(10)) == 0)
            let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
            #expect(lines.count == 2, "\(lines)")
            let states = lines.compactMap { line in
                (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["state"] as? String
            }
            #expect(states.count == 2)
            #expect(states.last == "closed")
        }
    }

    @Test("processes that share an explicit instance id are all counted")
    func sharedInstanceID() async throws {
        try await RedisServerProcess.with { server in
            let common = ["--redis", server.url, "--consecutive-failures", "4", "--break-duration", "1m", "--instance-id", "same-id"]
            let runs = try await withThrowingTaskGroup(of: Int32.self) { group in
                for _ in 0..<4 { group.addTask { try await fusebox(["run", "shared-id"] + common + ["--", "false"]).status } }
                return try await group.reduce(into: [Int32]()) { $0.append($1) }
            }
            #expect(runs == [1, 1, 1, 1])
            let shown = try await fusebox(["show", "shared-id", "--json", "--redis", server.url])
            let json = try JSONSerialization.jsonObject(with: Data(shown.output.utf8)) as! [String: Any]
            let breaker = json["breaker"] as! [String: Any]
            #expect((breaker["totals"] as? [String: Any])?["failures"] as? Int == 4)
            #expect(breaker["state"] as? String == "open")
        }
    }

    @Test("16 parallel fusebox run processes in half-open admit exactly the permitted number")
    func parallelProbes() async throws {
        try await RedisServerProcess.with { server in
            let policy = ["--redis", server.url, "--consecutive-failures", "1", "--break-duration", "1s", "--half-open-permits", "2"]
            #expect(try await fusebox(["run", "export"] + policy + ["--", "false"]).status == 1)
            try await Task.sleep(for: .milliseconds(1100))
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-probes-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            // Each admitted probe leaves a file and holds its permit until every other process has been turned away
            // (or 20 s have passed), so all 16 race for permits however slowly the processes start: a probe that
            // finished early would close the breaker and let the late starters in.
            let release = directory.appendingPathComponent("release").path
            let probes = directory.appendingPathComponent("probes")
            try FileManager.default.createDirectory(at: probes, withIntermediateDirectories: true)
            let timer = Task {
                try? await Task.sleep(for: .seconds(20))
                _ = FileManager.default.createFile(atPath: release, contents: nil)
            }
            defer { timer.cancel() }
            let results = try await withThrowingTaskGroup(of: Int32.self) { group in
                for index in 0..<16 {
                    group.addTask {
                        try await fusebox(["run", "export"] + policy + [
                            "--", "sh", "-c", "touch \(probes.path)/\(index); while [ ! -e \(release) ]; do sleep 0.05; done",
                        ]).status
                    }
                }
                var results: [Int32] = []
                while let status = try await group.next() {
                    results.append(status)
                    if results.filter({ $0 == 75 }).count == 14 {
                        _ = FileManager.default.createFile(atPath: release, contents: nil)
                    }
                }
                return results
            }
            let ran = try FileManager.default.contentsOfDirectory(atPath: probes.path)
            #expect(ran.count == 2)
            #expect(results.filter { $0 == 0 }.count == 2)
            #expect(results.filter { $0 == 75 }.count == 14)
            let snapshot = try await BreakerOperator(connection: RedisClient(url: server.url)).snapshot(of: "export")
            #expect(snapshot.state == .closed)
        }
    }

    @Test("watch prints transitions as plain lines when the output is not a terminal")
    func watch() async throws {
        try await RedisServerProcess.with { server in
            #expect(try await fusebox(["run", "watched", "--redis", server.url, "--", "true"]).status == 0)
            let log = FileManager.default.temporaryDirectory.appendingPathComponent("fusebox-watch-\(UUID().uuidString).log").path
            defer { try? FileManager.default.removeItem(atPath: log) }
            let watcher = try ChildProcess(executable: fuseboxExecutable, arguments: ["watch", "--limit", "2", "--redis", server.url], outputPath: log)
            defer { watcher.kill() }
            let subscribed = await poll { ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("watching") }
            #expect(subscribed)
            _ = try await fusebox(["isolate", "watched", "--reason", "drill", "--redis", server.url])
            _ = try await fusebox(["reset", "watched", "--redis", server.url])
            #expect(await watcher.waitForExit(upTo: .seconds(10)) == 0)
            let output = try String(contentsOfFile: log, encoding: .utf8)
            #expect(output.contains(#""state":"isolated""#))
            #expect(output.contains(#""state":"closed""#))
            #expect(!output.contains("\u{1B}["))
        }
    }

    @Test("the demo, in its short mode, compares both adapters and exits 0")
    func demo() async throws {
        let result = try await fusebox(["demo", "--short", "--compare"], limit: .seconds(60))
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("Summary: distributed adapter, 3 instances"))
        #expect(result.output.contains("Summary: local adapter, 3 instances"))
        #expect(result.output.contains("Shared breaker vs one breaker per process"))
        #if FUSEBOX_HTTP
        #expect(result.output.contains("dashboard: http://127.0.0.1:"), "the demo prints the fleet's dashboard address")
        #endif
    }

    @Test("docker-compose.yml is a valid compose file")
    func compose() async throws {
        let root = repositoryRoot
        let tool = ["/usr/bin/docker-compose", "/usr/local/bin/docker-compose"].first { FileManager.default.isExecutableFile(atPath: $0) }
        let path = try #require(tool, "docker-compose is not installed: run `make test`, which installs it")
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("compose-\(UUID().uuidString).log").path
        let check = try ChildProcess(executable: path, arguments: ["-f", root.appendingPathComponent("docker-compose.yml").path, "config", "-q"], outputPath: log)
        let status = await check.waitForExit(upTo: .seconds(60))
        #expect(status == 0, "\((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        let text = try String(contentsOf: root.appendingPathComponent("docker-compose.yml"), encoding: .utf8)
        #expect(text.contains("dashboard:") && text.contains(#"["serve", "--host", "0.0.0.0", "--port", "8080"]"#))
    }
}

func poll(within limit: Duration = .seconds(10), _ condition: () async -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + limit
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return await condition()
}

/// The message of the rejection `breaker` answers with now, or `nil` when it admits.
func rejection(of breaker: CircuitBreaker) async -> String? {
    do {
        try await breaker.acquireAsync().ignore()
        return nil
    } catch {
        return error.message
    }
}
