import Testing

@testable import Hiredis

@Suite("Redis URLs")
struct RedisConfigurationTests {
    @Test("good URLs", arguments: [
        ("redis://localhost", RedisConfiguration.Endpoint.tcp(host: "localhost", port: 6379), nil as String?, nil as String?, 0),
        ("redis://127.0.0.1:6380", .tcp(host: "127.0.0.1", port: 6380), nil, nil, 0),
        ("redis://127.0.0.1:6380/", .tcp(host: "127.0.0.1", port: 6380), nil, nil, 0),
        ("redis://cache.internal:7000/3", .tcp(host: "cache.internal", port: 7000), nil, nil, 3),
        ("redis://:s3cret@host", .tcp(host: "host", port: 6379), nil, "s3cret", 0),
        ("redis://s3cret@host", .tcp(host: "host", port: 6379), nil, "s3cret", 0),
        ("redis://alice:pw@host:1/2", .tcp(host: "host", port: 1), "alice", "pw", 2),
        ("redis://alice:p%40ss%3Aw@host", .tcp(host: "host", port: 6379), "alice", "p@ss:w", 0),
        ("redis://[::1]:6390", .tcp(host: "::1", port: 6390), nil, nil, 0),
        ("redis://[::1]", .tcp(host: "::1", port: 6379), nil, nil, 0),
        ("unix:///run/redis.sock", .unix(path: "/run/redis.sock"), nil, nil, 0),
        ("unix:///run/redis.sock?db=5", .unix(path: "/run/redis.sock"), nil, nil, 5),
        ("unix:///run/redis.sock?db=1&user=bob&password=x%20y", .unix(path: "/run/redis.sock"), "bob", "x y", 1),
    ])
    func parsesGoodURL(url: String, endpoint: RedisConfiguration.Endpoint, user: String?, password: String?, db: Int) throws {
        let configuration = try RedisConfiguration(url: url)
        #expect(configuration.endpoint == endpoint)
        #expect(configuration.username == user)
        #expect(configuration.password == password)
        #expect(configuration.database == db)
    }

    @Test("bad URLs name the part that is wrong", arguments: [
        ("http://localhost", "scheme 'http'"),
        ("rediss://localhost", "TLS"),
        ("localhost:6379", "scheme 'localhost'"),
        ("redis://", "host is missing"),
        ("redis://:6379", "host is missing"),
        ("redis://host:abc", "port 'abc'"),
        ("redis://host:0", "port '0'"),
        ("redis://host:70000", "port '70000'"),
        ("redis://host/x", "database 'x'"),
        ("redis://host/-1", "database '-1'"),
        ("redis://host?timeout=1", "a query or fragment"),
        ("redis://[::1:6379", "without a closing ']'"),
        ("redis://ho st", "host 'ho st'"),
        ("unix://relative.sock", "must be absolute"),
        ("unix:///s.sock?db=z", "database 'z'"),
        ("unix:///s.sock?timeout=3", "query parameter 'timeout'"),
        ("redis://alice:p%4@host", "password has a bad percent-escape"),
    ])
    func rejectsBadURL(url: String, expected: String) {
        #expect {
            try RedisConfiguration(url: url)
        } throws: { error in
            guard let error = error as? RedisError else { return false }
            return error.code == .invalidConfiguration && error.message.contains(expected)
        }
    }

    @Test("errors and descriptions never show a password")
    func redactsPasswords() throws {
        do {
            _ = try RedisConfiguration(url: "redis://alice:hunter2@host:nope")
            Issue.record("expected an error")
        } catch {
            #expect(!error.message.contains("hunter2"))
            #expect(error.message.contains("alice:***@"))
        }
        let configuration = try RedisConfiguration(url: "redis://alice:hunter2@host:7000/2")
        #expect(configuration.description == "redis://alice:***@host:7000/2")
        let unix = try RedisConfiguration(url: "unix:///r.sock?db=2&password=hunter2")
        #expect(!unix.description.contains("hunter2"))
    }
}
