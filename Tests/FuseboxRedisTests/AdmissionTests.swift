import Foundation
import Fusebox
import FuseboxTestKit
import Logging
import Testing
import TestKinds

@testable import FuseboxRedis

/// The handle's two ways to take a permit, on a distributed breaker whose decision needs Redis (half-open: probe
/// permits are handed out fleet-wide).
@Suite("Admission: acquire() never blocks a task; acquireAsync() waits for Redis", .kind(.integration))
struct AdmissionTests {
    @Test("half-open: acquire() in a task throws wouldWait at once; on a thread of its own it waits and gets a probe; acquireAsync() gets one")
    func synchronousAdmission() async throws {
        let adapter = try DistributedAdapter(options: testOptions(try await SharedServer.get()), logger: Logger(label: "test"))
        let runner = Task { try await adapter.run() }
        defer { runner.cancel() }
        var policy = BreakerPolicy()
        policy.permittedCallsInHalfOpen = 2
        let breaker = try BreakerRegistry(adapter: adapter).breaker("half-open", policy: policy)
        try await breaker.forceHalfOpen()

        #expect {
            _ = try breaker.acquire()
        } throws: { error in
            (error as? FuseboxError)?.code == .wouldWait && "\(error)".contains("acquireAsync()")
        }

        // A thread that is not a task may wait: Redis grants the first of the two probe permits.
        let fromThread: Bool = await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                do {
                    let permit = try breaker.acquire()
                    let isProbe = permit.token.isProbe
                    permit.ignore()
                    continuation.resume(returning: isProbe)
                } catch {
                    continuation.resume(returning: false)
                }
            }
        }
        #expect(fromThread, "a thread of its own gets a probe permit from acquire()")

        let permit = try await breaker.acquireAsync()
        #expect(permit.token.isProbe)
        permit.success()
    }

    @Test("a state not known yet (Redis frozen): acquire() in a task is decided at once by the store-down policy")
    func unknownState() async throws {
        try await RedisServerProcess.with { server in
            for storeDown in [StoreDownPolicy.local, .failClosed] {
                var options = testOptions(server)
                options.whenUnavailable = storeDown
                let adapter = try DistributedAdapter(options: options, logger: Logger(label: "test"))
                let runner = Task { try await adapter.run() }
                defer { runner.cancel() }
                let registry = BreakerRegistry(adapter: adapter)
                _ = try await registry.breaker("warm").snapshot()  // the adapter has had Redis' answer once

                server.pause()
                defer { server.resume() }
                let breaker = try registry.breaker("unknown")
                let asked = ContinuousClock.now
                var admitted = false
                do {
                    let permit = try breaker.acquire()
                    admitted = true
                    permit.success()
                } catch {
                    #expect((error as? FuseboxError)?.code == .backendUnavailable, "\(storeDown): \(error)")
                }
                let waited = ContinuousClock.now - asked
                #expect(admitted == (storeDown == .local), "\(storeDown): admitted \(admitted)")
                #expect(waited < .milliseconds(250), "\(storeDown): acquire() waited \(waited) (the command timeout is 500 ms)")
            }
        }
    }
}
