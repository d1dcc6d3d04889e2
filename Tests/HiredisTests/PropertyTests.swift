import FuseboxTestKit
import PropertyBased
import Testing
import TestKinds

@testable import Hiredis

/// Random RESP replies, URLs and garbage, checked against what the client must make of them.
@Suite("Properties of the Redis client", .kind(.integration), .timeLimit(.minutes(2)))
struct HiredisPropertyTests {
    // MARK: RESP replies

    @Test("any RESP2 reply, written whole or split anywhere, reads back as the value it encodes")
    func repliesReadBack() async throws {
        let server = try ScriptedServer()
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.commandTimeout = .seconds(2)
        let connection = try RedisClient(configuration: configuration)
        defer { connection.close() }

        await propertyCheck(count: 300, input: Self.replies.array(of: 1...4), Gen.int(in: 0...40).array(of: 0...6)) { values, pieces in
            let bytes = values.flatMap(Self.encode)
            server.answerNext(.init(bytes, pieces: pieces))
            let read = try await connection.pipeline(values.map { _ in RedisCommand("GET", "k") })
            #expect(read == values, "bytes \(String(decoding: bytes, as: UTF8.self).debugDescription)")
        }
    }

    @Test("random bytes then a closed connection give a value or a typed error, never a crash or a hang")
    func garbageIsTyped() async throws {
        let server = try ScriptedServer()
        defer { server.stop() }
        await propertyCheck(count: 150, input: Self.wireNoise, Gen.int(in: 0...20).array(of: 0...3)) { bytes, pieces in
            var configuration = try RedisConfiguration(url: server.url)
            configuration.commandTimeout = .milliseconds(500)
            let connection = try RedisClient(configuration: configuration)
            defer { connection.close() }
            server.answerNext(.init(bytes, pieces: pieces, thenClose: true))
            let started = ContinuousClock.now
            do throws(RedisError) {
                _ = try await connection.pipeline([RedisCommand("GET", "k")])
            } catch {
                #expect([RedisError.Code.protocolError, .connectionClosed, .timeout].contains(error.code), "\(error)")
            }
            #expect(ContinuousClock.now - started < .seconds(2))
        }
    }

    /// Any RESP2 value, nested at most three deep. Statuses and errors hold no CR or LF (the protocol forbids it).
    static let replies: Generator<RESPValue, Shrink.None<RESPValue>> = Generator { rng in value(depth: 3, using: &rng) }

    private static func value(depth: Int, using rng: inout any SeededRandomNumberGenerator) -> RESPValue {
        switch Int.random(in: 0..<(depth > 0 ? 6 : 5), using: &rng) {
        case 0: return .null
        case 1: return .status(line(using: &rng))
        case 2: return .error(line(using: &rng))
        case 3: return .integer(Int.random(in: 0..<4, using: &rng) == 0 ? [Int.min, Int.max, 0, -1].randomElement(using: &rng)! : Int.random(in: -1_000_000...1_000_000, using: &rng))
        case 4: return .bulk((0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) })
        default: return .array((0..<Int.random(in: 0...5, using: &rng)).map { _ in value(depth: depth - 1, using: &rng) })
        }
    }

    private static func line(using rng: inout any SeededRandomNumberGenerator) -> String {
        let alphabet = Array("ERR abcXYZ019 -:_é€😀\t")
        return String((0..<Int.random(in: 0...24, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! })
    }

    /// The RESP2 wire form of `value`.
    static func encode(_ value: RESPValue) -> [UInt8] {
        switch value {
        case .null: Array("$-1\r\n".utf8)
        case .status(let text): Array("+\(text)\r\n".utf8)
        case .error(let text): Array("-\(text)\r\n".utf8)
        case .integer(let number): Array(":\(number)\r\n".utf8)
        case .bulk(let bytes): Array("$\(bytes.count)\r\n".utf8) + bytes + Array("\r\n".utf8)
        case .array(let elements): Array("*\(elements.count)\r\n".utf8) + elements.flatMap(encode)
        }
    }

    /// Bytes a broken server might send: pure noise, or a real reply cut short or with a corrupted byte.
    static let wireNoise: Generator<[UInt8], Shrink.None<[UInt8]>> = Generator { rng in
        let reply = encode(value(depth: 2, using: &rng))
        switch Int.random(in: 0..<3, using: &rng) {
        case 0: return (0..<Int.random(in: 1...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        case 1: return Array(reply.prefix(Int.random(in: 0..<reply.count, using: &rng)))
        default:
            var corrupted = reply
            corrupted[Int.random(in: 0..<corrupted.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            return corrupted
        }
    }

    // MARK: URLs

    @Test("a configuration written as a URL (any password, user, host, port, database) parses back to itself")
    func urlsRoundTrip() async {
        await propertyCheck(count: 500, input: Self.configurations) { configuration in
            await Task.yield()  // CPU-bound cases: leave the shared pool to the suites that time things
            let url = Self.url(of: configuration)
            let parsed = try RedisConfiguration(url: url)
            #expect(parsed.endpoint == configuration.endpoint, "\(url)")
            #expect(parsed.username == configuration.username, "\(url)")
            #expect(parsed.password == configuration.password, "\(url)")
            #expect(parsed.database == configuration.database, "\(url)")
            #expect(!parsed.redactedURL.contains("\(configuration.password.map { ":\($0)@" } ?? "\u{0}")"))
        }
    }

    @Test("any string parses to a configuration or to an invalid-configuration error that never shows the password")
    func anyStringIsTyped() async {
        let secret = "Pw7xQ"
        let pieces = ["redis://", "unix://", "rediss://", "http://", "/", ":", "@", "[", "]", "?", "&", "=", "%", "%4", "%zz",
                      "db=", "user=", "password=", "?password=", "host", "127.0.0.1", "::1", "6379", "0", "99999", "-1", "alice", secret, "#", " ", "é"]
        let text = Gen.element(of: pieces).array(of: 0...10).map { $0.compactMap { $0 }.joined() }
        await propertyCheck(count: 1000, input: text) { url in
            await Task.yield()  // CPU-bound cases: leave the shared pool to the suites that time things
            do throws(RedisError) {
                _ = try RedisConfiguration(url: url)
            } catch {
                #expect(error.code == .invalidConfiguration)
                // Where the secret appears only as user information (after '://', before the authority's last '@'),
                // the message must not show it.
                if url.hasPrefix("redis://"), let scheme = url.firstRange(of: "://") {
                    let rest = url[scheme.upperBound...]
                    let authority = rest.prefix(while: { !"/?#".contains($0) })
                    let userInfo = authority.lastIndex(of: "@").map { authority[..<$0] } ?? ""
                    // The password: after the first ':' of the user information, or all of it when there is none.
                    let password = userInfo.firstIndex(of: ":").map { userInfo[userInfo.index(after: $0)...] } ?? userInfo
                    if password.contains(secret), url.ranges(of: secret).count == password.ranges(of: secret).count {
                        #expect(!error.message.contains(secret), "\(url) -> \(error.message)")
                    }
                }
                // Where it appears only as a `password=` query value, the same.
                if url.contains("?password=\(secret)") || url.contains("&password=\(secret)"), url.ranges(of: secret).count == 1 {
                    #expect(!error.message.contains(secret), "\(url) -> \(error.message)")
                }
            }
        }
    }

    static let configurations: Generator<RedisConfiguration, Shrink.None<RedisConfiguration>> = Generator { rng in
        let hosts = ["localhost", "127.0.0.1", "::1", "fe80::1%eth0", "cache-01.internal", "a"]
        let host = hosts.randomElement(using: &rng)!
        let secrets = ["", "pw", "p@ss:w/rd?#", "s p a c e", "100%", "пароль", "😀", "a\u{0}b"]
        let password = Bool.random(using: &rng) ? secrets.randomElement(using: &rng)! : nil
        let user = password != nil && Bool.random(using: &rng) ? ["alice", "a:b", "x@y", "ü"].randomElement(using: &rng)! : nil
        let endpoint: RedisConfiguration.Endpoint = Int.random(in: 0..<4, using: &rng) == 0
            ? .unix(path: ["/run/redis.sock", "/tmp/a b/r.sock"].randomElement(using: &rng)!)
            : .tcp(host: host, port: Int.random(in: 1...65535, using: &rng))
        return RedisConfiguration(endpoint: endpoint, username: user, password: password,
                                  database: Bool.random(using: &rng) ? 0 : Int.random(in: 0...15, using: &rng))
    }

    /// The URL of `configuration`, user and password percent-encoded.
    static func url(of configuration: RedisConfiguration) -> String {
        func escaped(_ text: String) -> String {
            text.utf8.map { byte in
                let character = Character(Unicode.Scalar(byte))
                return byte < 0x80 && (character.isLetter || character.isNumber || "-._~".contains(character))
                    ? String(character) : "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            }.joined()
        }
        switch configuration.endpoint {
        case .tcp(let host, let port):
            var text = "redis://"
            if let password = configuration.password { text += (configuration.username.map(escaped) ?? "") + ":" + escaped(password) + "@" }
            text += host.contains(":") ? "[\(host)]" : host
            text += ":\(port)/\(configuration.database)"
            return text
        case .unix(let path):
            var query = ["db=\(configuration.database)"]
            if let user = configuration.username { query.append("user=" + escaped(user)) }
            if let password = configuration.password { query.append("password=" + escaped(password)) }
            return "unix://\(path)?" + query.joined(separator: "&")
        }
    }
}
