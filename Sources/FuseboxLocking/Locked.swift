import Synchronization

#if FUSEBOX_TSAN
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The lock every Fusebox module uses: `Synchronization.Mutex`, except in a ThreadSanitizer build.
///
/// This is the ThreadSanitizer build (`make test-tsan` compiles with `-DFUSEBOX_TSAN`): on Linux, `Mutex` waits
/// with raw futex calls that ThreadSanitizer cannot see, so every access it guards is reported as a race. This
/// stand-in has the same interface over a `pthread_mutex_t`, whose lock and unlock ThreadSanitizer intercepts.
/// It allocates, so it is never what a normal build runs.
package struct Locked<Value: ~Copyable>: ~Copyable, @unchecked Sendable {
    // @unchecked: `value` is only touched between pthread_mutex_lock and pthread_mutex_unlock.
    private final class Storage {
        var mutex = pthread_mutex_t()
        var value: Value

        init(_ value: consuming Value) {
            self.value = value
            pthread_mutex_init(&mutex, nil)
        }

        deinit { pthread_mutex_destroy(&mutex) }
    }

    private let storage: Storage

    /// Makes a lock guarding `initialValue`.
    package init(_ initialValue: consuming sending Value) {
        storage = Storage(initialValue)
    }

    /// Runs `body` with exclusive access to the value.
    package borrowing func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        pthread_mutex_lock(&storage.mutex)
        defer { pthread_mutex_unlock(&storage.mutex) }
        return try body(&storage.value)
    }
}
#else
/// The lock every Fusebox module uses: `Synchronization.Mutex` (this alias costs nothing).
///
/// A ThreadSanitizer build (`make test-tsan`, `-DFUSEBOX_TSAN`) swaps in a pthread mutex that ThreadSanitizer
/// understands; see the other branch of this file.
package typealias Locked<Value: ~Copyable> = Mutex<Value>
#endif
