import Testing
import TestKinds

@testable import Hiredis

@Suite("Redis URLs", .kind(.unit))
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
        ("redis://a:1,b:2", "names one server; list several nodes as redis+cluster://"),
        ("rediss://localhost", "stunnel"),
        ("redis+cluster://", "host is missing"),
        ("redis+cluster://a:1,,b:2", "host is missing"),
        ("redis+cluster://a:1/3", "database 0 only"),
        ("redis+cluster://a:1?x=1", "a query or fragment"),
        ("redis+sentinel://a:26379", "primary's name is missing"),
        ("redis+sentinel://a:26379/", "primary's name is missing"),
        ("redis+sentinel://a:26379/m/x", "database 'x'"),
        ("redis+sentinel://a:26379/m/1/2", "after the database"),
        ("redis+sentinel://a:26379/m?timeout=1", "query parameter 'timeout'"),
        ("redis+sentinel://a:26379/m%20n", "may hold no space"),
        ("redis+sentinel://a:99999/m", "port '99999'"),
        ("redis+shard://a", "use redis, redis+cluster, redis+sentinel or unix"),
    ])
    func rejectsBadURL(url: String, expected: String) {
        #expect {
            try RedisConfiguration(url: url)
        } throws: { error in
            guard let error = error as? RedisError else { return false }
            return error.code == .invalidConfiguration && error.message.contains(expected)
        }
    }

    @Test("cluster URLs list their seeds; Sentinel URLs their sentinels, the primary's name and both sets of credentials")
    func topologies() throws {
        let cluster = try RedisConfiguration(url: "redis+cluster://bob:pw@10.0.0.1:7000,10.0.0.2,[::1]:7002")
        #expect(cluster.topology == .cluster(seeds: [.tcp(host: "10.0.0.1", port: 7000), .tcp(host: "10.0.0.2", port: 6379), .tcp(host: "::1", port: 7002)]))
        #expect(cluster.endpoint == .tcp(host: "10.0.0.1", port: 7000))
        #expect(cluster.username == "bob" && cluster.password == "pw")
        #expect(cluster.description == "redis+cluster://bob:***@10.0.0.1:7000,10.0.0.2:6379,[::1]:7002")
        #expect(try RedisConfiguration(url: cluster.description.replacingOccurrences(of: "***", with: "pw")) == cluster)

        let sentinel = try RedisConfiguration(url: "redis+sentinel://:data%40pw@s1:5000,s2/mymaster/2?sentinel_user=watch&sentinel_password=s%3Dpw")
        #expect(sentinel.topology == .sentinel(
            sentinels: [.tcp(host: "s1", port: 5000), .tcp(host: "s2", port: 26379)], primaryName: "mymaster", username: "watch", password: "s=pw"))
        #expect(sentinel.password == "data@pw" && sentinel.username == nil && sentinel.database == 2)
        #expect(sentinel.description == "redis+sentinel://:***@s1:5000,s2:26379/mymaster/2?sentinel_user=watch&sentinel_password=***")
        #expect(!sentinel.description.contains("pw"))
        let plain = try RedisConfiguration(url: "redis+sentinel://s1/m")
        #expect(plain.topology == .sentinel(sentinels: [.tcp(host: "s1", port: 26379)], primaryName: "m", username: nil, password: nil))
        #expect(try RedisConfiguration(url: "redis://h:1").topology == .standalone)
    }

    @Test("the slot of a command is its key's: the first argument, a script's first key, none for server commands")
    func commandSlots() {
        #expect(RedisCommand("GET", "{a}x").slot == ClusterSlot.of(key: "a"))
        #expect(RedisCommand("HMGET", "k", "f").slot == ClusterSlot.of(key: "k"))
        #expect(RedisCommand("EVALSHA", "sha", 2, "{b}1", "{b}2", "arg").slot == ClusterSlot.of(key: "b"))
        #expect(RedisCommand("EVAL", "return 1", 0, "arg").slot == nil)
        #expect(RedisCommand("MEMORY", "USAGE", "k").slot == ClusterSlot.of(key: "k"))
        for command in [RedisCommand("PING"), RedisCommand("TIME"), RedisCommand("SCRIPT", "LOAD", "x"), RedisCommand("PUBLISH", "c", "m"), RedisCommand("INFO")] {
            #expect(command.slot == nil, "\(command)")
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
        for url in ["redis+sentinel://s/m?sentinel_password=hunter2&bad=1", "redis+sentinel://:hunter2@s/m?oops", "redis+cluster://:hunter2@a:1/5"] {
            do {
                _ = try RedisConfiguration(url: url)
                Issue.record("expected an error for a bad URL")
            } catch {
                #expect(!error.message.contains("hunter2"), "\(error.message)")
            }
        }
    }
}
