import Fusebox
import Hiredis

/// One breaker's part of a script call: its keys, its arguments (`A[1..]` in lua/breaker.lua) and what to do
/// with its reply.
struct ScriptCall: Sendable {
    var keys: [String]
    var arguments: [any RedisArgument]
    var completion: @Sendable (Result<StateReply, RedisError>) -> Void
}

/// How breakers' script calls are cut into `EVALSHA`s: up to ``DistributedCore/breakersPerCall`` breakers a call, one
/// slot's in a cluster, each breaker's consecutive calls together; and how a reply is handed back to each breaker.
extension DistributedCore {
    /// One script call: the breakers it carries, its keys, and its arguments (the header, then each breaker's).
    struct ScriptBatch: Sendable {
        var calls: [ScriptCall]
        var keys: [String]
        var arguments: [any RedisArgument]
    }

    /// `calls` as script calls (see ``parts(of:isCluster:)``), each with the header `ARGV[1…7]` first.
    static func batches(of calls: [ScriptCall], header: [any RedisArgument], isCluster: Bool) -> [ScriptBatch] {
        parts(of: calls, isCluster: isCluster).map { part in
            var batch = ScriptBatch(calls: part, keys: [], arguments: header)
            batch.keys.reserveCapacity(part.count * 4)
            for call in part {
                batch.keys += call.keys
                batch.arguments.append(call.arguments.count)
                batch.arguments += call.arguments
            }
            return batch
        }
    }

    /// Submits one script call; each breaker's completion gets its reply.
    static func send(_ batch: ScriptBatch, on connection: RedisClient) {
        connection.submit(LuaScript.breaker, keys: batch.keys, arguments: batch.arguments) { result in
            deliver(result, to: batch.calls)
        }
    }

    /// Whether `connection` is to a Redis Cluster: a script call's keys must then share one slot.
    static func isCluster(_ connection: RedisClient) -> Bool {
        if case .cluster = connection.configuration.topology { true } else { false }
    }

    /// `calls` cut into script calls of at most ``breakersPerCall`` breakers, in order; in a cluster, one slot's
    /// breakers per call (a script's keys must share a slot), each slot's calls in their order. A breaker's
    /// consecutive calls (its batches of one write) always travel in one script call: were they split, the first
    /// call could fail on a connection that breaks while the second reaches the server on the next one, and the
    /// first batch, written again, would arrive behind a higher sequence number.
    static func parts(of calls: [ScriptCall], isCluster: Bool) -> [[ScriptCall]] {
        // Runs of consecutive calls for one breaker.
        var runs: [[ScriptCall]] = []
        for call in calls {
            if let last = runs.last?.last, last.keys[0] == call.keys[0] {
                runs[runs.count - 1].append(call)
            } else {
                runs.append([call])
            }
        }
        var parts: [[ScriptCall]] = []
        var breakers: [Int] = []
        if isCluster {
            var bySlot: [Int: Int] = [:]
            for run in runs {
                let slot = ClusterSlot.of(key: run[0].keys[0])
                if let index = bySlot[slot], breakers[index] < breakersPerCall {
                    parts[index] += run
                    breakers[index] += 1
                } else {
                    bySlot[slot] = parts.count
                    parts.append(run)
                    breakers.append(1)
                }
            }
            return parts
        }
        for run in runs {
            if let last = breakers.last, last < breakersPerCall {
                parts[parts.count - 1] += run
                breakers[breakers.count - 1] += 1
            } else {
                parts.append(run)
                breakers.append(1)
            }
        }
        return parts
    }

    fileprivate static func deliver(_ result: Result<RESPValue, RedisError>, to part: [ScriptCall]) {
        let replies: [RESPValue]
        switch result {
        case .failure(let error):
            for call in part { call.completion(.failure(error)) }
            return
        case .success(let value):
            guard let array = value.array, array.count == part.count else {
                let error = RedisError(code: .unexpectedReply, message: "the breaker script answered \(value) for \(part.count) breakers")
                for call in part { call.completion(.failure(error)) }
                return
            }
            replies = array
        }
        for (call, reply) in zip(part, replies) {
            if case .error(let message) = reply {
                call.completion(.failure(RedisError(code: .serverError, message: message)))
                continue
            }
            do throws(FuseboxError) {
                call.completion(.success(try StateReply(reply, key: call.keys[0])))
            } catch {
                call.completion(.failure(RedisError(code: .unexpectedReply, message: error.message)))
            }
        }
    }
}
