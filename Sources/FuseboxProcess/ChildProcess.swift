import CFusebox
import FuseboxLocking
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A child process started with `posix_spawn` and reaped with `waitpid`, so its state is known at once.
///
/// Used for the private redis-servers of tests and the demo, and for instance processes in fleet runs.
public final class ChildProcess: Sendable {
    /// The child's process id.
    public let processIdentifier: pid_t
    /// The exit status once reaped; `waitpid` runs under this lock so a child is reaped once.
    private let exitStatus = Locked<Int32?>(nil)

    /// Starts `executable` with `arguments`; standard output and error go to `outputPath` (default /dev/null),
    /// or, when it is `nil`, stay this process's. With `searchPath`, `executable` may be a name found on `PATH`.
    ///
    /// With `inputPipe`, the child's standard input is a pipe whose only writer is this process (the descriptor
    /// is closed on `exec`, so no other child inherits it): the child reads end-of-file when this process
    /// closes it (``closeInput()``, or when this object goes) or dies, however it dies.
    public init(
        executable: String, arguments: [String], outputPath: String? = "/dev/null", environment: [String: String]? = nil,
        searchPath: Bool = false, inputPipe: Bool = false
    ) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var pipeEnds: [Int32] = [-1, -1]
        if inputPipe {
            guard fusebox_pipe_cloexec(&pipeEnds) == 0 else {
                throw RedisServerProcess.Failure(description: "could not make a pipe for \(executable): \(String(cString: strerror(errno)))")
            }
            posix_spawn_file_actions_adddup2(&actions, pipeEnds[0], 0)
        }
        defer { if pipeEnds[0] >= 0 { close(pipeEnds[0]) } }
        if let outputPath {
            if !inputPipe { posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0) }
            posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }

        // Threads of Swift's runtime block most signals, and a spawned child inherits the caller's mask: give
        // the child an empty mask and default handlers, or it would never see SIGTERM.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGPIPE, SIGCHLD, SIGHUP, SIGQUIT] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var envp: [UnsafeMutablePointer<CChar>?]? = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
        defer { envp?.forEach { free($0) } }

        var pid = pid_t()
        let spawn = searchPath ? posix_spawnp : posix_spawn
        let status = envp == nil
            ? spawn(&pid, executable, &actions, &attributes, argv, environ)
            : spawn(&pid, executable, &actions, &attributes, argv, &envp!)
        guard status == 0 else {
            if pipeEnds[1] >= 0 { close(pipeEnds[1]) }
            throw RedisServerProcess.Failure(description: "could not start \(executable): \(String(cString: strerror(status)))")
        }
        processIdentifier = pid
        input = Locked(pipeEnds[1])
    }

    /// Writes an executable script at `path`, through a descriptor closed on `exec`.
    ///
    /// A script written through an inheritable descriptor while another thread spawns a process cannot be run
    /// until that process execs or exits (`ETXTBSY`); a shell then goes on down `PATH` and runs something else.
    public static func writeExecutable(_ path: String, _ text: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o755)
        guard fd >= 0 else { throw RedisServerProcess.Failure(description: "could not write \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count, fchmod(fd, 0o755) == 0 else {
            throw RedisServerProcess.Failure(description: "could not write \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// The write end of the child's input pipe, or -1.
    private let input: Locked<Int32>

    /// Closes the child's input pipe: the child reads end-of-file.
    public func closeInput() {
        input.withLock { descriptor in
            if descriptor >= 0 { close(descriptor) }
            descriptor = -1
        }
    }

    deinit {
        closeInput()
        if isRunning {
            Glibc.kill(processIdentifier, SIGKILL)
            _ = reap(blocking: true)
        }
    }

    /// `true` until the child has exited (and been reaped).
    public var isRunning: Bool { reap(blocking: false) == nil }

    /// The exit code (or 128 + signal number) once the child has exited.
    public var terminationStatus: Int32? { reap(blocking: false) }

    /// Sends `signal` to the child if it is still running.
    public func send(_ signal: Int32) {
        if isRunning { Glibc.kill(processIdentifier, signal) }
    }

    /// Waits (without blocking a thread) until the child exits or `limit` passes; returns its status if it exited.
    @discardableResult
    public func waitForExit(upTo limit: Duration) async -> Int32? {
        let deadline = ContinuousClock.now + limit
        while true {
            if let status = reap(blocking: false) { return status }
            if ContinuousClock.now >= deadline { return nil }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Kills the child with `SIGKILL` and reaps it.
    public func kill() {
        guard isRunning else { return }
        Glibc.kill(processIdentifier, SIGCONT)
        Glibc.kill(processIdentifier, SIGKILL)
        _ = reap(blocking: true)
    }

    private func reap(blocking: Bool) -> Int32? {
        exitStatus.withLock { exitStatus in
            if let exitStatus { return exitStatus }
            var status: Int32 = 0
            let result = waitpid(processIdentifier, &status, blocking ? 0 : WNOHANG)
            guard result == processIdentifier else { return result < 0 ? -1 : nil }
            // WIFEXITED / WEXITSTATUS / WTERMSIG are macros Swift cannot import.
            let signal = status & 0x7f
            exitStatus = signal == 0 ? (status >> 8) & 0xff : 128 + signal
            return exitStatus
        }
    }
}
