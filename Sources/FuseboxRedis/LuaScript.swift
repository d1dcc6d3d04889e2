import Hiredis

/// The Lua scripts in lua/, the only code that changes Fusebox's keys in Redis. Package.swift embeds the files at
/// build time (`Sources/FuseboxRedis/Scripts` is a link to lua/), so the module runs exactly what the repository
/// holds; each value hashes its source once, and a test checks that `SCRIPT LOAD` names it the same.
enum LuaScript {
    /// lua/breaker.lua: every change to a breaker's state in Redis.
    static let breaker = RedisScript(String(decoding: PackageResources.breaker_lua, as: UTF8.self))
    /// lua/lease.lua: fleet-wide concurrency leases (`fusebox run --max-concurrent`).
    static let lease = RedisScript(String(decoding: PackageResources.lease_lua, as: UTF8.self))
    /// lua/members.lua: live membership (senders and instances that are up).
    static let members = RedisScript(String(decoding: PackageResources.members_lua, as: UTF8.self))
    /// lua/override.lua: the end of a policy override set for a time.
    static let override = RedisScript(String(decoding: PackageResources.override_lua, as: UTF8.self))
}
