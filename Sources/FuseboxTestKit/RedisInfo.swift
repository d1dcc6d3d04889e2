import Hiredis

/// Commands the server has run, by name (INFO commandstats; commands inside scripts count too).
public func commandCounts(_ redis: RedisClient) async throws -> [String: Int] {
    let info = try await redis.send("INFO", "commandstats").decodeString()
    var counts: [String: Int] = [:]
    for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix("cmdstat_") {
        let parts = line.dropFirst("cmdstat_".count).split(separator: ":", maxSplits: 1)
        guard parts.count == 2, let calls = parts[1].split(separator: ",").first(where: { $0.hasPrefix("calls=") }) else { continue }
        counts[String(parts[0])] = Int(calls.dropFirst(6)) ?? 0
    }
    return counts
}

/// The server's CPU time so far, in seconds: INFO `used_cpu_sys` + `used_cpu_user`.
public func cpuSeconds(_ redis: RedisClient) async throws -> Double {
    let info = try await redis.send("INFO", "cpu").decodeString()
    var seconds = 0.0
    for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix("used_cpu_sys:") || line.hasPrefix("used_cpu_user:") {
        seconds += Double(line.split(separator: ":")[1]) ?? 0
    }
    return seconds
}
