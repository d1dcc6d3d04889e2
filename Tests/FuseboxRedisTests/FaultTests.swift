import Fusebox
import FuseboxTestKit
import Hiredis
import Logging
import Testing
import TestKinds

@testable import FuseboxRedis

/// The commands the adapter needs, as in Docs/operations.md's ACL line.
let adapterCommands = [
    "+evalsha", "+script|load", "+ping", "+subscribe", "+hgetall", "+hget", "+hset", "+hmget", "+hincrby", "+hdel",
    "+del", "+type", "+time", "+xadd", "+xrevrange", "+publish", "+sadd", "+smembers",
    "+sismember", "+set", "+get", "+client|setname",
]

/// An ACL user (`fusebox-app`, password `app-secret`) limited to the namespace `fusebox` and those commands.
let appUser = ["fusebox-app", "on", ">app-secret", "resetkeys", "~fusebox:*", "resetchannels", "&fusebox:*", "-@all"] + adapterCommands

@Suite("When Redis is not well", .kind(.timingBound), .timeLimit(.minutes(2)))
struct FaultTests {
    @Test("Redis restarted: scripts reloaded, state refreshed, a new trip works")
    func restart() async throws {
        try await RedisServerProcess.with { server in
            let instance = try Instance(testOptions(server))
            defer { Task { await instance.stop() } }
            let breaker = try instance.registry.breaker("restart", policy: tripsOnFirstFailure())
            try await breaker.isolate(reason: "before restart")
            #expect(await isRejected(breaker))

            try await server.restart()
            // The new server holds no state: every instance must adopt its (lower-versioned) state.
            #expect(await eventually(within: .seconds(5)) { await !isRejected(breaker) })
            let snapshot = try await breaker.snapshot()
            #expect(snapshot.state == .closed)
            try await breaker.acquireAsync().failure(Boom())
            #expect(await eventually { await isRejected(breaker) })
            #expect(try await breaker.snapshot().state == .open)
        }
    }

    @Test("SCRIPT FLUSH is invisible")
    func scriptFlush() async throws {
        let server = try await SharedServer.get()
        let instance = try Instance(testOptions(server))
        defer { Task { await instance.stop() } }
        let breaker = try instance.registry.breaker("flushed", policy: tripsOnFirstFailure())
        try await breaker.acquireAsync().success()
        _ = try await breaker.snapshot()
        let redis = try RedisClient(configuration: server.configuration())
        _ = try await redis.send("SCRIPT", "FLUSH")
        try await breaker.acquireAsync().failure(Boom())
        await instance.adapter.flush()
        let snapshot = try await breaker.snapshot()
        #expect(snapshot.state == .open)
        #expect(snapshot.totals.calls == 2)
    }

    @Test("Redis killed: the local fallback protects the instance, calls never block, and Redis' return is picked up")
    func killedWithLocalFallback() async throws {
        try await RedisServerProcess.with { server in
            let instance = try Instance(testOptions(server, timeout: .seconds(1)))
            defer { Task { await instance.stop() } }
            var policy = BreakerPolicy()
            policy.failureRateThreshold = nil
            policy.consecutiveFailureThreshold = 3
            let breaker = try instance.registry.breaker("killed", policy: policy)
            try await breaker.acquireAsync().success()
            await instance.adapter.flush()
            server.kill()

            // Closed state: admission and recording never touch Redis, dead or alive.
            let started = ContinuousClock.now
            for _ in 0..<1000 { try breaker.acquire().success() }
            #expect(ContinuousClock.now - started < .milliseconds(500))

            // Once the adapter notices (a flush fails), the in-process fallback counts and trips on its own.
            #expect(await eventually(within: .seconds(3)) {
                for _ in 0..<3 { if let permit = (try? breaker.acquire()) { permit.failure(Boom()) } }
                return (try? breaker.acquire()) == nil
            })
            let rejection = ContinuousClock.now
            for _ in 0..<1000 { _ = (try? breaker.acquire()) }
            #expect(ContinuousClock.now - rejection < .milliseconds(500))

            try await server.restart()
            #expect(await eventually(within: .seconds(5)) { (try? await breaker.snapshot()) != nil })
            // Back on the shared state (a fresh server: closed), which admits calls again.
            // Outcomes buffered through the outage count in the new server's totals, but not in its window: it
            // is a new incarnation of the state, so the breaker there is closed and admits calls.
            #expect(await eventually { await !isRejected(breaker) })
            await instance.adapter.flush()
            #expect(await eventually { (try? await breaker.snapshot().totals.successes) == 1000 })
        }
    }

    @Test("Redis killed while a breaker is open: the local fallback keeps it open until its break ends, then sends one probe of its own")
    func killedWhileOpen() async throws {
        try await RedisServerProcess.with { server in
            let instance = try Instance(testOptions(server, timeout: .milliseconds(300)))
            defer { Task { await instance.stop() } }
            let breaker = try instance.registry.breaker("killed-open", policy: tripsOnFirstFailure { $0.breakDuration = .fixed(.seconds(1)) })
            _ = try await breaker.snapshot()  // known, so that the failure is admitted by the shared state
            // The break starts when Redis applies the failure, after this instant: the checks below stop 200 ms
            // before it can end, however long the two waits for the trip took on a loaded machine.
            let tripped = ContinuousClock.now
            try await breaker.acquireAsync().failure(Boom())
            #expect(await eventually { (try? await breaker.snapshot().state) == .open })
            #expect(await eventually { await isRejected(breaker) })
            server.kill()

            // The fallback takes up the break where Redis left it (a fresh, closed one would let every call through).
            func admits() -> Bool {
                guard let permit = (try? breaker.acquire()) else { return false }
                permit.ignore()
                return true
            }
            while ContinuousClock.now - tripped < .milliseconds(800) {
                #expect(!admits(), "admitted during the break")
                try await Task.sleep(for: .milliseconds(20))
            }
            // After the break: this process's own probe (one permit), and nobody else while it runs.
            let deadline = ContinuousClock.now + .seconds(3)
            var probe = (try? breaker.acquire())
            while probe == nil && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
                probe = (try? breaker.acquire())
            }
            guard let probe else {
                Issue.record("no probe within 3 s of the break's end")
                return
            }
            #expect(!admits(), "a second call admitted while the probe runs")
            probe.failure(Boom())
            #expect(!admits(), "admitted after the probe failed")
        }
    }

    @Test("the configuration's store-down policy and admission budget reach the adapter")
    func configurationReachesOptions() throws {
        let configuration = try FuseboxConfiguration(environment: [
            "FUSEBOX_ADAPTER": "distributed", "FUSEBOX_REDIS_URL": "redis://127.0.0.1:1", "FUSEBOX_STORE_DOWN_POLICY": "failClosed",
            "FUSEBOX_ADMISSION_BUDGET": "20ms", "FUSEBOX_QUIET_FLEET_WRITES_PER_SECOND": "7",
        ])
        let options = try DistributedOptions(configuration: configuration)
        #expect(options.whenUnavailable == .failClosed)
        #expect(options.admissionBudget == .milliseconds(20))
        #expect(options.quietFleetWritesPerSecond == 7)
        #expect(DistributedOptions(redis: options.redis).admissionBudget == .milliseconds(50))
    }

    @Test("failOpen admits and failClosed rejects while Redis is down")
    func failOpenAndClosed() async throws {
        try await RedisServerProcess.with { server in
            var open = testOptions(server, timeout: .seconds(1))
            open.whenUnavailable = .failOpen
            var closed = testOptions(server, timeout: .seconds(1))
            closed.whenUnavailable = .failClosed
            let a = try Instance(open)
            let b = try Instance(closed)
            defer { Task { await a.stop(); await b.stop() } }
            let lenient = try a.registry.breaker("lenient")
            let strict = try b.registry.breaker("strict")
            try await lenient.isolate(reason: "isolated before the outage")
            try await strict.acquireAsync().success()
            server.kill()
            // Noticed by the next refresh (200 ms) or the subscriber; the bound leaves room for a loaded machine.
            #expect(await eventually(within: .seconds(5)) { await !isRejected(lenient) })
            #expect(await eventually(within: .seconds(5)) {
                do {
                    _ = try await strict.acquireAsync()
                    return false
                } catch let error as FuseboxError {
                    return error.code == .backendUnavailable && error.message.contains("failClosed")
                } catch {
                    return false
                }
            })
        }
    }

    @Test("Redis SIGSTOP-ed: the hot path is unaffected and every wait is bounded")
    func frozen() async throws {
        try await RedisServerProcess.with { server in
            let timeout = Duration.milliseconds(300)
            let instance = try Instance(testOptions(server, timeout: timeout))
            defer { Task { await instance.stop() } }
            let breaker = try instance.registry.breaker("frozen")
            try await breaker.acquireAsync().success()
            await instance.adapter.flush()
            server.pause()
            defer { server.resume() }

            let started = ContinuousClock.now
            for _ in 0..<10_000 { try breaker.acquire().success() }
            #expect(ContinuousClock.now - started < .milliseconds(500))

            let waited = ContinuousClock.now
            await #expect {
                try await breaker.snapshot()
            } throws: { ($0 as? FuseboxError)?.code == .backendUnavailable }
            // Bounded by the timeouts (connect + command), with room for a loaded two-core machine.
            #expect(ContinuousClock.now - waited < timeout * 4)
            let flushing = ContinuousClock.now
            await instance.adapter.flush()
            #expect(ContinuousClock.now - flushing < timeout * 4)

            server.resume()
            #expect(await eventually(within: .seconds(5)) { (try? await breaker.snapshot()) != nil })
            #expect(await eventually { (try? await breaker.snapshot().totals.successes) == 10_001 })
        }
    }

    @Test("outcomes beyond maxBufferedOutcomes are dropped, not kept without bound")
    func bufferBound() async throws {
        let server = try await SharedServer.get()
        var options = testOptions(server)
        options.maxBufferedOutcomes = 10
        // No run(): nothing is written until flush().
        let adapter = try DistributedAdapter(options: options, logger: Logger(label: "test"))
        let breaker = try BreakerRegistry(adapter: adapter).breaker("bounded")
        try await breaker.acquireAsync().success()
        await adapter.flush()
        for _ in 0..<25 { try breaker.acquire().success() }
        await adapter.flush()
        #expect(try await breaker.snapshot().totals.calls == 11)
    }

    @Test("a corrupted key: a clear error naming it, the fallback applies, and reset repairs it")
    func corruptKey() async throws {
        let server = try await SharedServer.get()
        let options = testOptions(server)
        let instance = try Instance(options)
        defer { Task { await instance.stop() } }
        let breaker = try instance.registry.breaker("corrupt", policy: tripsOnFirstFailure())
        _ = try await breaker.snapshot()
        let redis = try RedisClient(configuration: server.configuration())
        let key = "\(options.namespace):{corrupt}:state"

        _ = try await redis.send("DEL", key)
        _ = try await redis.send("SET", key, "not a hash")
        await #expect {
            try await breaker.snapshot()
        } throws: { error in
            let error = error as! FuseboxError
            return error.code == .corruptState && error.message.contains(key) && error.message.contains("is a string, expected a hash")
        }
        // Calls go on under the fallback (local) policy: no crash, no hang.
        try await breaker.acquireAsync().success()
        try await breaker.reset()
        #expect(try await breaker.snapshot().state == .closed)

        _ = try await redis.send("HSET", key, "version", "abc")
        await #expect {
            try await breaker.snapshot()
        } throws: { ($0 as! FuseboxError).message.contains("field 'version' is 'abc'") }
        try await breaker.reset()
        let repaired = try await breaker.snapshot()
        #expect(repaired.state == .closed)
        #expect(repaired.lastReason.contains("repaired"))
        try await breaker.acquireAsync().failure(Boom())
        #expect(await eventually { await isRejected(breaker) })
    }

    @Test("a corrupt window: the instance falls back once, quietly (no log line per refresh), and the repair brings it back")
    func corruptWindowQuiet() async throws {
        let server = try await SharedServer.get()
        let options = testOptions(server)  // refreshed every 200 ms
        let sink = LogSink()
        let instance = try Instance(options, logger: sink.logger())
        defer { Task { await instance.stop() } }
        let breaker = try instance.registry.breaker("slots", policy: tripsOnFirstFailure())
        try await breaker.acquireAsync().success()
        await instance.adapter.flush()
        let redis = try RedisClient(configuration: server.configuration())
        let keys = DistributedBackend.keys(namespace: options.namespace, name: "slots")
        _ = try await redis.send("HSET", keys[1], "calls", "garbage")
        // Two seconds of calls (ten refreshes), each failure a write the script refuses.
        let until = ContinuousClock.now + .seconds(2)
        while ContinuousClock.now < until {
            if let permit = (try? breaker.acquire()) { permit.failure(Boom()) }
            try await Task.sleep(for: .milliseconds(50))
        }
        let lines = sink.lines.map(\.message)
        let fallbacks = lines.filter { $0.contains("'calls' is 'garbage'") && $0.contains("falling back") }
        let recoveries = lines.filter { $0.contains("reachable again") }
        #expect(fallbacks.count == 1, "\(lines)")
        #expect(recoveries.isEmpty, "the refresher's plain read must not end a corrupt state: \(recoveries)")
        _ = try await BreakerOperator(connection: redis, namespace: options.namespace).reset("slots")
        #expect(await eventually { sink.lines.contains { $0.message.contains("was repaired") } })
        try await breaker.acquireAsync().failure(Boom())
        #expect(await eventually { await isRejected(breaker) })
    }

    @Test("a policy that is not JSON, a window and totals of the wrong type, garbage counters: typed errors or repair, never a crash")
    func corruptFields() async throws {
        let server = try await SharedServer.get()
        let options = testOptions(server)
        let instance = try Instance(options)
        defer { Task { await instance.stop() } }
        let breaker = try instance.registry.breaker("garbled", policy: tripsOnFirstFailure())
        try await breaker.acquireAsync().success()
        await instance.adapter.flush()
        let redis = try RedisClient(configuration: server.configuration())
        let operatorSide = BreakerOperator(connection: redis, namespace: options.namespace)
        let keys = DistributedBackend.keys(namespace: options.namespace, name: "garbled")

        // The stored policy is what operators' commands apply: garbage there is refused, and reset repairs it.
        _ = try await redis.send("HSET", keys[0], "policy", "{not json")
        await #expect {
            try await operatorSide.isolate("garbled", reason: "x")
        } throws: { error in
            let error = error as! FuseboxError
            return error.code == .corruptState && error.message.contains("'policy' is not the JSON")
        }
        _ = try await operatorSide.reset("garbled")
        // The instance learns from its next reply that Redis lost its policy, and stores it again with the one after.
        for _ in 0..<2 {
            try await breaker.acquireAsync().success()
            await instance.adapter.flush()
        }
        let restored = try await redis.send("HGET", keys[0], "policy").string ?? ""
        #expect(restored.hasPrefix("{") && restored.contains("consecutiveFailureThreshold\":1"), "\(restored)")
        #expect(try await operatorSide.isolate("garbled", reason: "repaired").state == .isolated)
        _ = try await operatorSide.reset("garbled")

        // Counters that are not numbers, and the window and totals replaced by other types.
        for corruption in [
            RedisCommand("HSET", keys[0], "consecutive_failures", "many", "probes", "-", "attempt", "1e999"),
            RedisCommand("SET", keys[1], "not a window"),
            RedisCommand("SET", keys[2], "not totals"),
            RedisCommand("SET", keys[3], "not events"),
        ] {
            _ = try await redis.send(corruption)
            var failure: FuseboxError?
            do { _ = try await breaker.snapshot() } catch { failure = error }
            if let failure { #expect(failure.code == .corruptState, "\(corruption.name): \(failure)") }
            // Calls go on (under the fallback while the state is refused), and reset repairs.
            try await breaker.acquireAsync().success()
            try await breaker.reset()
            let repaired = try await breaker.snapshot()
            #expect(repaired.state == .closed, "after \(corruption.name) \(corruption)")
            try await breaker.acquireAsync().failure(Boom())
            #expect(await eventually { await isRejected(breaker) }, "a trip after repairing \(corruption)")
            try await breaker.reset()
        }
    }

    @Test("statistics never disable protection: garbage totals and events are made anew by the next write, the trip still reaches every instance, reset keeps what is readable")
    func corruptStatistics() async throws {
        let server = try await SharedServer.get()
        let options = testOptions(server)
        let fleet = try Instance.fleet(2, options)
        defer { Task { for instance in fleet { await instance.stop() } } }
        try await waitForSubscribers(2, namespace: options.namespace, server: server)
        let a = try fleet[0].registry.breaker("mix", policy: tripsOnFirstFailure())
        let b = try fleet[1].registry.breaker("mix", policy: tripsOnFirstFailure())
        for _ in 0..<3 { try await a.acquireAsync().success() }
        await fleet[0].adapter.flush()
        let redis = try RedisClient(configuration: server.configuration())
        let operatorSide = BreakerOperator(connection: redis, namespace: options.namespace)
        let keys = DistributedBackend.keys(namespace: options.namespace, name: "mix")

        // B admits again once it has the reset (its admissions count as ignored calls, which this test leaves alone).
        func resetAndWait() async throws -> BreakerSnapshot {
            let reset = try await operatorSide.reset("mix")
            #expect(await eventually { !(await isRejected(b)) }, "B must learn of the reset")
            return reset
        }

        // A typo in a redis-cli session: the totals are statistics, and must not stop the state machine.
        _ = try await redis.send("HSET", keys[2], "failures", "not-a-number", "slow", "nan")
        let unreadable = try await a.snapshot()
        #expect(unreadable.totals.calls == 3 && unreadable.totals.successes == 3, "a read skips what is not a number: \(unreadable.totals)")
        try await a.acquireAsync().failure(Boom())
        #expect(await eventually { await isRejected(b) }, "the trip must reach the other instance through Redis")
        #expect(try await redis.send("HGET", keys[2], "failures").string == "1", "the write that met the garbage counts it anew")
        #expect(try await operatorSide.snapshot(of: "mix").state == .open)

        // reset keeps the totals that are numbers, drops the rest, and says so.
        let reset = try await resetAndWait()
        #expect(reset.state == .closed)
        #expect(reset.lastReason.contains("totals field 'slow' was 'nan'"), "\(reset.lastReason)")
        #expect(reset.totals.successes == 3 && reset.totals.failures == 1, "\(reset.totals)")
        #expect(try await redis.send("HEXISTS", keys[2], "slow").int == 0)

        // An events stream of another type, and one that can take no more entries: made anew by the next transition.
        _ = try await redis.send("DEL", keys[3])
        _ = try await redis.send("SET", keys[3], "not events")
        try await a.acquireAsync().failure(Boom())
        #expect(await eventually { await isRejected(b) })
        #expect(await eventually { (try? await redis.send("TYPE", keys[3]).string) == "stream" })
        _ = try await resetAndWait()
        _ = try await redis.send("XADD", keys[3], "18446744073709551615-18446744073709551615", "from", "x")
        try await a.acquireAsync().failure(Boom())
        #expect(await eventually { await isRejected(b) })
        _ = try await resetAndWait()

        // NaN and infinities in the fields the state machine needs: refused as corrupt (not a serialisation error),
        // and reset repairs them.
        for (field, value) in [("version", "nan"), ("since", "inf"), ("probes", "-inf")] {
            _ = try await redis.send("HSET", keys[0], field, value)
            await #expect {
                try await operatorSide.snapshot(of: "mix")
            } throws: { error in
                let error = error as! FuseboxError
                return error.code == .corruptState && error.message.contains("field '\(field)' is '\(value)'")
            }
            let repaired = try await operatorSide.reset("mix")
            #expect(repaired.state == .closed && repaired.lastReason.contains("repaired"), "\(field): \(repaired.lastReason)")
            // An instance that met the corrupt state meanwhile (its refresher reads every second) used the fallback;
            // the repair's transition message brings it back.
            #expect(await eventually { (try? await a.snapshot())?.version == repaired.version })
            try await a.acquireAsync().failure(Boom())
            #expect(await eventually { await isRejected(b) }, "a trip across instances after repairing \(field) = \(value)")
            _ = try await resetAndWait()
        }
    }

    @Test("a statistics repair is reported for its own breaker only, in a script call that carries several")
    func statisticsNotePerBreaker() async throws {
        let server = try await SharedServer.get()
        let redis = try RedisClient(configuration: server.configuration())
        var options = DistributedOptions(redis: redis.configuration)
        options.namespace = uniqueNamespace("note")
        let policy = try BreakerPolicy().validated()
        let rules = PolicyRules(policy, options: options)
        let header: [any RedisArgument] = ["\(options.namespace):transitions", "instance-1", "", "1000", "instance-1:n1", "0", "0"]
        func call(_ names: [String], sequence: Int) async throws -> [StateReply] {
            var keys: [String] = []
            var arguments = header
            for name in names {
                keys += DistributedBackend.keys(namespace: options.namespace, name: name)
                var breaker: [any RedisArgument] = ["record", name]
                breaker += rules.arguments as [any RedisArgument]
                breaker += [rules.fingerprint, rules.json, 0, "1000"] as [any RedisArgument]
                // Sequence, version 0 and incarnation 0 (counted in the totals), no errors, one group: 3 successes now.
                breaker += [sequence, 0, 0, "1", "0", 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0] as [any RedisArgument]
                arguments += [breaker.count] as [any RedisArgument]
                arguments += breaker
            }
            let reply = try await redis.run(LuaScript.breaker, keys: keys, arguments: arguments)
            return try (reply.array ?? []).enumerated().map { index, element in try StateReply(element, key: keys[4 * index]) }
        }
        _ = try await call(["first", "second"], sequence: 1)
        _ = try await redis.send("HSET", DistributedBackend.keys(namespace: options.namespace, name: "first")[2], "calls", "garbage")
        let replies = try await call(["first", "second"], sequence: 2)
        #expect(replies.count == 2)
        #expect(replies.first?.statisticsNote?.contains("'calls' was 'garbage'") == true, "\(String(describing: replies.first?.statisticsNote))")
        #expect(replies.last?.statisticsNote == nil, "the second breaker's reply must not carry the first one's note")
    }

    @Test("a Redis user limited to the namespace and the documented commands works; one without EVALSHA gets a clear error")
    func aclUsers() async throws {
        let denied = ["reader", "on", ">reader-secret", "resetkeys", "~fusebox:*", "resetchannels", "&fusebox:*", "-@all", "+ping", "+subscribe", "+hgetall", "+client|setname"]
        try await RedisServerProcess.with(.init(aclUsers: [appUser, denied])) { server in
            var options = DistributedOptions(redis: server.configuration(username: "fusebox-app", password: "app-secret"))
            options.halfOpenRetryInterval = .zero
            let app = try Instance(options)
            defer { Task { await app.stop() } }
            let breaker = try app.registry.breaker("acl", policy: tripsOnFirstFailure())
            try await breaker.acquireAsync().failure(Boom())
            await app.adapter.flush()
            #expect(try await breaker.snapshot().state == .open)
            #expect(try await breaker.timeline().count == 1)
            try await breaker.isolate(reason: "acl")
            try await breaker.reset()
            // The ratio rule's path: window slots, budget, sender high-water marks; and the schema record.
            var policy = BreakerPolicy()
            policy.minimumThroughput = 4
            let ratio = try app.registry.breaker("acl-ratio", policy: policy)
            for _ in 0..<3 { try await ratio.acquireAsync().success() }
            await app.adapter.flush()
            for _ in 0..<3 { try await ratio.acquireAsync().failure(Boom()) }
            await app.adapter.flush()
            #expect(try await ratio.snapshot().state == .open)
            let admin = try RedisClient(configuration: server.configuration())
            #expect(try await admin.send("GET", "fusebox:schema").string == DistributedAdapter<ContinuousClock>.keySchema)

            var readerOptions = DistributedOptions(redis: server.configuration(username: "reader", password: "reader-secret"))
            readerOptions.namespace = "fusebox"
            let reader = try Instance(readerOptions)
            defer { Task { await reader.stop() } }
            let blocked = try reader.registry.breaker("acl", policy: tripsOnFirstFailure())
            await #expect {
                try await blocked.snapshot()
            } throws: { error in
                let error = error as! FuseboxError
                return error.code == .backendUnavailable && error.message.contains("NOPERM")
            }
        }
    }
}
