import FuseboxLocking
import Logging

/// Captures log lines, with the handler's metadata merged in: tests count what a library logged.
public final class LogSink: Sendable {
    /// One captured line.
    public struct Line: Sendable {
        /// The level it was logged at.
        public var level: Logger.Level
        /// The message, as text.
        public var message: String
        /// The handler's metadata with the line's own merged over it, values as text.
        public var metadata: [String: String]
    }

    private let captured = Locked<[Line]>([])
    /// Makes an empty sink.
    public init() {}
    /// Every line so far, oldest first.
    public var lines: [Line] { captured.withLock { $0 } }
    func append(_ line: Line) { captured.withLock { $0.append(line) } }
    /// A handler for `Logger(label:factory:)` that writes here, at every level.
    public func handler() -> any LogHandler { Handler(sink: self) }
    /// A logger that writes here.
    public func logger(label: String = "test") -> Logger { Logger(label: label) { _ in self.handler() } }

    /// The log handler behind ``handler()``.
    struct Handler: LogHandler {
        let sink: LogSink
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            var all: [String: String] = [:]
            for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) { all[key] = "\(value)" }
            sink.append(Line(level: event.level, message: "\(event.message)", metadata: all))
        }
    }
}
