import Synchronization

/// Told of each guarded call's admission or rejection, in the caller's task, and of each transition a call made
/// in this process: what the `FuseboxTracing` module uses to annotate the caller's active span. One observer at a
/// time, installed with ``BreakerCallObservation/install(_:)``; with none, a guarded call pays one relaxed atomic
/// load for it.
public protocol BreakerCallObserver: Sendable {
    /// `breaker` admitted a call (`token.isProbe`: as a half-open probe); `adapter` is `local` or `distributed`.
    func admitted(breaker: String, adapter: AdapterKind, token: PermitToken)
    /// `breaker` rejected a call with `error` (code `circuitOpen` or `throttled`, its state and `retryAfter`).
    func rejected(breaker: String, adapter: AdapterKind, error: FuseboxError)
    /// `breaker` changed state in this process (the transitions another instance made are not reported here).
    func transitioned(breaker: String, _ transition: BreakerTransition)
}

/// Where the one ``BreakerCallObserver`` is installed.
public enum BreakerCallObservation {
    /// The installed observer's box (`Unmanaged`, as an address), or 0. A box replaced by another install is kept
    /// (never released): a call may still be using it, and installs are a handful per process.
    private static let installed = Atomic<Int>(0)

    private final class Box: Sendable {
        let observer: any BreakerCallObserver
        init(_ observer: any BreakerCallObserver) { self.observer = observer }
    }

    /// Installs `observer` for every breaker of the process from now on (`nil` removes it).
    public static func install(_ observer: (any BreakerCallObserver)?) {
        let address = observer.map { Int(bitPattern: Unmanaged.passRetained(Box($0)).toOpaque()) } ?? 0
        installed.store(address, ordering: .releasing)
    }

    /// The observer, or `nil` (the common case: one relaxed load, no lock, no reference count).
    @inline(__always)
    static var current: (any BreakerCallObserver)? {
        let address = installed.load(ordering: .acquiring)
        guard address != 0, let pointer = UnsafeRawPointer(bitPattern: address) else { return nil }
        return Unmanaged<Box>.fromOpaque(pointer).takeUnretainedValue().observer
    }
}
