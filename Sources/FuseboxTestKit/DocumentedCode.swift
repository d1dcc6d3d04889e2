/// The README's code examples held to the code the tests run: the lines between two marker lines of a text (a
/// fenced block, or a `// README: … (begin)` region of a test file), each trimmed.
public enum DocumentedCode {
    /// The lines after the first line starting with `start`, up to the next line starting with `end`, trimmed;
    /// throws when either is missing.
    public static func lines(of text: String, after start: String, before end: String) throws -> [String] {
        let all = text.components(separatedBy: "\n")
        guard let first = all.firstIndex(where: { $0.hasPrefix(start) }) else {
            throw RedisServerProcess.Failure(description: "no line starts with \(start)")
        }
        guard let last = all[(first + 1)...].firstIndex(where: { $0.hasPrefix(end) }) else {
            throw RedisServerProcess.Failure(description: "no line starts with \(end) after \(start)")
        }
        return all[(first + 1)..<last].map { $0.trimmingCharacters(in: .whitespaces) }
    }
}
