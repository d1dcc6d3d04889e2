import FuseboxTestKit
import Testing
import TestKinds

@testable import Hiredis

#if canImport(Glibc)
import Glibc
#endif

@Suite("Redis connection, against a real redis-server", .kind(.timingBound), .timeLimit(.minutes(1)))
struct RedisClientTests {
    @Test("every reply type converts")
    func replyTypes() async throws {
        try await RedisServerProcess.with { server in
            let redis = try RedisClient(configuration: server.configuration())
            #expect(try await redis.send("PING") == .status("PONG"))
            #expect(try await redis.send("SET", "k", "v") == .status("OK"))
            #expect(try await redis.send("GET", "k") == .bulk(Array("v".utf8)))
            #expect(try await redis.send("GET", "missing") == .null)
            #expect(try await redis.send("INCRBY", "n", 41) == .integer(41))
            #expect(try await redis.send("RPUSH", "l", "a", "b") == .integer(2))
            #expect(try await redis.send("LRANGE", "l", 0, -1) == .array([.bulk(Array("a".utf8)), .bulk(Array("b".utf8))]))
            #expect(try await redis.send("LRANGE", "nothing", 0, -1) == .array([]))
            let nested = try await redis.send("EVAL", "return {1, 'two', {3}, redis.status_reply('FINE')}", 0)
            #expect(nested == .array([.integer(1), .bulk(Array("two".utf8)), .array([.integer(3)]), .status("FINE")]))
            #expect(try await redis.send("BLPOP", "nothing", "0.01") == .null)

            await #expect {
                try await redis.send("INCR", "l")
            } throws: { error in
                let error = error as! RedisError
                return error.code == .serverError && error.serverErrorPrefix == "WRONGTYPE" && error.endpoint == "127.0.0.1:\(server.port)"
            }
            // An error reply inside a pipeline is returned in place.
            let replies = try await redis.pipeline([RedisCommand("INCR", "l"), RedisCommand("GET", "k")])
            guard case .error(let message) = replies[0] else { Issue.record("expected an error reply"); return }
            #expect(message.hasPrefix("WRONGTYPE"))
            #expect(replies[1] == .bulk(Array("v".utf8)))
        }
    }

    @Test("decoding helpers")
    func decoding() async throws {
        try await RedisServerProcess.with { server in
            let redis = try RedisClient(configuration: server.configuration())
            _ = try await redis.send("HSET", "h", "a", "1", "b", "two")
            #expect(try await redis.send("HGETALL", "h").decodeDictionary() == ["a": "1", "b": "two"])
            #expect(try await redis.send("HGET", "h", "a").decodeInt() == 1)
            #expect(try await redis.send("HGET", "h", "b").decodeString() == "two")
            #expect(Set(try await redis.send("HKEYS", "h").decodeStrings()) == ["a", "b"])
            #expect(throws: RedisError.self) { try RESPValue.bulk(Array("x".utf8)).decodeInt() }
            #expect(throws: RedisError.self) { try RESPValue.integer(3).decodeDictionary() }
            #expect(throws: RedisError.self) { try RESPValue.array([.integer(1)]).decodeDictionary() }
        }
    }

    @Test("binary values: NUL bytes, 1 MiB, UTF-8")
    func binaryValues() async throws {
        try await RedisServerProcess.with { server in
            let redis = try RedisClient(configuration: server.configuration())
            let withNul: [UInt8] = [0, 1, 2, 0, 255, 13, 10, 0]
            _ = try await redis.send("SET", "bin", withNul)
            #expect(try await redis.send("GET", "bin") == .bulk(withNul))
            #expect(try await redis.send("STRLEN", "bin") == .integer(8))

            var big = [UInt8](repeating: 0, count: 1 << 20)
            for index in big.indices { big[index] = UInt8(truncatingIfNeeded: index &* 31 &+ 7) }
            _ = try await redis.send("SET", "big", big)
            #expect(try await redis.send("GET", "big").bytes == big)

            let text = "zürich – 東京 – 🚦"
            _ = try await redis.send("SET", text, text)
            #expect(try await redis.send("GET", text).string == text)
            #expect(try await redis.send("STRLEN", text) == .integer(text.utf8.count))
        }
    }

    @Test("a pipeline of 10,000 commands, every reply matched to its command")
    func bigPipeline() async throws {
        try await RedisServerProcess.with { server in
            let redis = try RedisClient(configuration: server.configuration())
            let commands = (0..<10_000).map { RedisCommand("ECHO", "reply-\($0)") }
            let replies = try await redis.pipeline(commands)
            #expect(replies.count == 10_000)
            #expect(replies.enumerated().allSatisfy { $0.element.string == "reply-\($0.offset)" })
        }
    }

    @Test("200 concurrent tasks on one connection each get their own reply")
    func concurrentTasks() async throws {
        try await RedisServerProcess.with { server in
            let redis = try RedisClient(configuration: server.configuration())
            let mismatches = try await withThrowingTaskGroup(of: Int.self) { group in
                for task in 0..<200 {
                    group.addTask {
                        var wrong = 0
                        for round in 0..<20 {
                            let value = "\(task)-\(round)"
                            if try await redis.send("ECHO", value).string != value { wrong += 1 }
                        }
                        return wrong
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(mismatches == 0)
        }
    }

    @Test("a script's SHA-1 is the standard one (FIPS 180 test vectors, and lengths around a block's edges)")
    func scriptSHA1() {
        #expect(RedisScript("").sha1 == "da39a3ee5e6b4b0d3255bfef95601890afd80709")
        #expect(RedisScript("abc").sha1 == "a9993e364706816aba3e25717850c26c9cd0d89d")
        #expect(RedisScript("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq").sha1 == "84983e441c3bd26ebaae4aa1f95129e5e54670f1")
        #expect(RedisScript(String(repeating: "a", count: 1000)).sha1 == "291e9a6c66994949b57ba5e650361e98fc36b1ba")
        // Around the padding's edges: 55 bytes fit one block with the length, 56–63 need a second, 64 is a block.
        let edges = [55: "cef734ba81a024479e09eb5a75b6ddae62e6abf1", 63: "0ddc4e0cccd9a12850deb5abb0853a4425559fec",
            64: "bb2fa3ee7afb9f54c6dfb5d021f14b1ffe40c163", 119: "4300320394f7ee239bcdce7d3b8bcee173a0cd5c"]
        for (length, sha) in edges { #expect(RedisScript(String(repeating: "x", count: length)).sha1 == sha, "\(length) bytes") }
    }

    @Test("EVALSHA survives SCRIPT FLUSH and a server restart")
    func scriptReload() async throws {
        try await RedisServerProcess.with { server in
            let redis = try RedisClient(configuration: server.configuration())
            let script = RedisScript("return redis.call('INCRBY', KEYS[1], ARGV[1])")
            // The SHA-1 the client computed is the one Redis names the script by; the first EVALSHA meets NOSCRIPT.
            #expect(try await redis.send("SCRIPT", "EXISTS", script.sha1) == .array([.integer(0)]))
            #expect(try await redis.run(script, keys: ["c"], arguments: [2]) == .integer(2))
            #expect(try await redis.send("SCRIPT", "EXISTS", script.sha1) == .array([.integer(1)]))
            #expect(try await redis.send("SCRIPT", "LOAD", script.source).string == script.sha1)
            _ = try await redis.send("SCRIPT", "FLUSH")
            #expect(try await redis.send("SCRIPT", "EXISTS", script.sha1) == .array([.integer(0)]))
            #expect(try await redis.run(script, keys: ["c"], arguments: [3]) == .integer(5))

            // The callback path: its first call (the server has not seen it) and one after SCRIPT FLUSH.
            let submitted = RedisScript("return redis.call('INCRBY', KEYS[1], 10)")
            func submit() async -> Result<RESPValue, RedisError> {
                await withCheckedContinuation { continuation in
                    redis.submit(submitted, keys: ["c"], arguments: []) { continuation.resume(returning: $0) }
                }
            }
            #expect(try await submit().get() == .integer(15))
            _ = try await redis.send("SCRIPT", "FLUSH")
            #expect(try await submit().get() == .integer(25))
            #expect(try await redis.send("SCRIPT", "EXISTS", submitted.sha1) == .array([.integer(1)]))

            try await server.restart()
            let reply = try await eventually { try await redis.run(script, keys: ["c"], arguments: [7]) }
            #expect(reply == .integer(7))

            await #expect {
                try await redis.run(RedisScript("return redis.error_reply('BROKEN on purpose')"))
            } throws: { error in
                (error as? RedisError)?.message.contains("BROKEN on purpose") == true
            }
        }
    }

    @Test("AUTH with requirepass: right password works, wrong and missing fail clearly")
    func authRequirePass() async throws {
        try await RedisServerProcess.with(.init(requirePassword: "s3cret")) { server in
            let good = try RedisClient(configuration: server.configuration(password: "s3cret"))
            #expect(try await good.send("PING") == .status("PONG"))

            let bad = try RedisClient(configuration: server.configuration(password: "wrong"))
            await #expect {
                try await bad.send("PING")
            } throws: { ($0 as? RedisError)?.code == .authenticationFailed }

            let none = try RedisClient(configuration: server.configuration())
            await #expect {
                try await none.send("PING")
            } throws: { error in
                let error = error as! RedisError
                return error.code == .serverError && error.serverErrorPrefix == "NOAUTH"
            }
        }
    }

    @Test("AUTH with an ACL user, and a command the user may not run")
    func authACLUser() async throws {
        let options = RedisServerProcess.Options(aclUsers: [["alice", "on", ">wonderland", "~fusebox:*", "+@all", "-flushall"]])
        try await RedisServerProcess.with(options) { server in
            let url = "redis://alice:wonderland@127.0.0.1:\(server.port)"
            let alice = try RedisClient(url: url)
            #expect(try await alice.send("SET", "fusebox:x", "1") == .status("OK"))
            await #expect {
                try await alice.send("SET", "other", "1")
            } throws: { ($0 as? RedisError)?.serverErrorPrefix == "NOPERM" }

            let wrong = try RedisClient(configuration: server.configuration(username: "alice", password: "queen"))
            await #expect {
                try await wrong.send("PING")
            } throws: { error in
                let error = error as! RedisError
                return error.code == .authenticationFailed && error.message.contains("AUTH failed")
            }
        }
    }

    @Test("SELECT and CLIENT SETNAME from the configuration")
    func selectAndName() async throws {
        try await RedisServerProcess.with { server in
            var configuration = try RedisConfiguration(url: "\(server.url)/4")
            configuration.clientName = "fusebox-test"
            let redis = try RedisClient(configuration: configuration)
            _ = try await redis.send("SET", "in-db-4", "yes")
            #expect(try await redis.send("CLIENT", "GETNAME").string == "fusebox-test")
            let db0 = try RedisClient(configuration: server.configuration())
            #expect(try await db0.send("EXISTS", "in-db-4") == .integer(0))
            _ = try await db0.send("SELECT", 4)
            #expect(try await db0.send("EXISTS", "in-db-4") == .integer(1))
        }
    }

    @Test("a Unix socket URL")
    func unixSocket() async throws {
        let path = "/tmp/fusebox-\(UInt32.random(in: 0...UInt32.max)).sock"
        try await RedisServerProcess.with(.init(extraArguments: ["--unixsocket", path])) { server in
            let redis = try RedisClient(url: "unix://\(path)?db=2")
            #expect(try await redis.send("PING") == .status("PONG"))
        }
    }

    @Test("connection refused is a typed error, fast")
    func connectionRefused() async throws {
        let port = try RedisServerProcess.freePort()
        let redis = try RedisClient(configuration: RedisConfiguration(port: port))
        let started = ContinuousClock.now
        await #expect {
            try await redis.send("PING")
        } throws: { error in
            let error = error as! RedisError
            return error.code == .connectionRefused && error.endpoint == "127.0.0.1:\(port)"
        }
        #expect(ContinuousClock.now - started < .seconds(1))
    }

    @Test("writing to a connection the server has closed is a typed error, never a SIGPIPE that ends the process")
    func writeAfterClose() async throws {
        let server = try MisbehavingServer(.closing)
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.commandTimeout = .seconds(2)
        let redis = try RedisClient(configuration: configuration)
        defer { redis.close() }
        // Several megabytes, so that hiredis writes again after the peer's reset (EPIPE, and SIGPIPE unless the
        // connection's threads block it).
        let value = String(repeating: "x", count: 4 << 20)
        for _ in 0..<3 {
            await #expect(throws: RedisError.self) { try await redis.send("SET", "k", value) }
        }
    }

    @Test("a SIGSTOP-ed server gives a timeout error within twice the timeout")
    func frozenServer() async throws {
        try await RedisServerProcess.with { server in
            // Long enough that scheduling noise on a loaded two-core machine fits within the 2x allowance.
            let timeout = Duration.seconds(1)
            let redis = try RedisClient(configuration: server.configuration(connectTimeout: timeout, commandTimeout: timeout))
            #expect(try await redis.send("PING") == .status("PONG"))
            server.pause()
            defer { server.resume() }

            let started = ContinuousClock.now
            await #expect {
                try await redis.send("PING")
            } throws: { ($0 as? RedisError)?.code == .timeout }
            let elapsed = ContinuousClock.now - started
            #expect(elapsed >= timeout - .milliseconds(5))
            #expect(elapsed < timeout * 2)

            // A new connection to the frozen server: the kernel accepts, nothing answers; still bounded.
            let fresh = try RedisClient(configuration: server.configuration(connectTimeout: timeout, commandTimeout: timeout))
            let again = ContinuousClock.now
            await #expect(throws: RedisError.self) { try await fresh.send("PING") }
            #expect(ContinuousClock.now - again < timeout * 2 + .milliseconds(100))

            server.resume()
            let reply = try await eventually { try await redis.send("PING") }
            #expect(reply == .status("PONG"))
        }
    }

    @Test("the server killed in the middle of a pipeline fails the pipeline, and the next command reconnects")
    func killedMidPipeline() async throws {
        try await RedisServerProcess.with(.init(extraArguments: ["--enable-debug-command", "yes"])) { server in
            let redis = try RedisClient(configuration: server.configuration())
            _ = try await redis.send("PING")
            // DEBUG SLEEP holds the server while the pipeline is in flight; the kill lands in the middle.
            let pipeline = Task {
                try await redis.pipeline([RedisCommand("SET", "a", "1"), RedisCommand("DEBUG", "SLEEP", "1"), RedisCommand("GET", "a")])
            }
            try await Task.sleep(for: .milliseconds(200))
            server.kill()
            let result = await pipeline.result
            guard case .failure(let error) = result else { Issue.record("the pipeline should fail"); return }
            #expect([RedisError.Code.connectionClosed, .connectionRefused].contains((error as! RedisError).code))

            try await server.restart()
            let reply = try await eventually { try await redis.send("PING") }
            #expect(reply == .status("PONG"))
        }
    }

    @Test("close() fails later commands with connectionClosed")
    func closing() async throws {
        try await RedisServerProcess.with { server in
            let redis = try RedisClient(configuration: server.configuration())
            _ = try await redis.send("PING")
            redis.close()
            await #expect {
                try await redis.send("PING")
            } throws: { ($0 as? RedisError)?.code == .connectionClosed }
        }
    }
}

/// Retries `body` for up to 5 s: after a restart the reconnect backoff may still be running.
func eventually<T>(_ body: () async throws -> T) async throws -> T {
    let deadline = ContinuousClock.now + .seconds(5)
    while true {
        do {
            return try await body()
        } catch {
            if ContinuousClock.now > deadline { throw error }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}
