import Foundation

/// A strict reader of the Prometheus text exposition format (version 0.0.4), enough to check every line a
/// scrape returns: `# HELP`, `# TYPE` and samples `name{label="value",…} number`.
enum PrometheusText {
    struct Sample: Equatable {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    struct Malformed: Error, CustomStringConvertible {
        var line: String
        var why: String
        var description: String { "\(why): \(line)" }
    }

    static func isName(_ text: Substring) -> Bool {
        guard let first = text.first, first.isLetter || first == "_" || first == ":" else { return false }
        return text.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == ":") }
    }

    static func parse(_ text: String) throws -> [Sample] {
        var samples: [Sample] = []
        var types: [String: String] = [:]
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.isEmpty { continue }
            if line.hasPrefix("#") {
                let words = line.split(separator: " ", maxSplits: 3)
                if words.count >= 2 && (words[1] == "HELP" || words[1] == "TYPE") {
                    guard words.count >= 3, isName(words[2]) else { throw Malformed(line: String(line), why: "bad metric name") }
                    if words[1] == "TYPE" {
                        guard words.count == 4, ["counter", "gauge", "histogram", "summary", "untyped"].contains(words[3]) else {
                            throw Malformed(line: String(line), why: "bad type")
                        }
                        types[String(words[2])] = String(words[3])
                    }
                }
                continue
            }
            var rest = Substring(line)
            let nameEnd = rest.firstIndex { $0 == "{" || $0 == " " } ?? rest.endIndex
            let name = rest[..<nameEnd]
            guard isName(name) else { throw Malformed(line: String(line), why: "bad sample name") }
            rest = rest[nameEnd...]
            var labels: [String: String] = [:]
            if rest.first == "{" {
                rest = rest.dropFirst()
                while rest.first != "}" {
                    guard let equals = rest.firstIndex(of: "="), isName(rest[..<equals]) else { throw Malformed(line: String(line), why: "bad label") }
                    let label = String(rest[..<equals])
                    rest = rest[rest.index(after: equals)...]
                    guard rest.first == "\"" else { throw Malformed(line: String(line), why: "label value not quoted") }
                    rest = rest.dropFirst()
                    var value = ""
                    while let character = rest.first, character != "\"" {
                        if character == "\\" {
                            rest = rest.dropFirst()
                            guard let escaped = rest.first else { throw Malformed(line: String(line), why: "bad escape") }
                            value.append(escaped == "n" ? "\n" : escaped)
                        } else {
                            value.append(character)
                        }
                        rest = rest.dropFirst()
                    }
                    guard rest.first == "\"" else { throw Malformed(line: String(line), why: "unterminated label value") }
                    rest = rest.dropFirst()
                    labels[label] = value
                    if rest.first == "," { rest = rest.dropFirst() }
                }
                rest = rest.dropFirst()
            }
            guard rest.first == " ", let value = Double(rest.dropFirst().split(separator: " ").first ?? "") else {
                throw Malformed(line: String(line), why: "bad value")
            }
            let base = ["_total", "_bucket", "_sum", "_count"].reduce(String(name)) { name, suffix in
                types[name] == nil && name.hasSuffix(suffix) && types[String(name.dropLast(suffix.count))] != nil ? String(name.dropLast(suffix.count)) : name
            }
            guard types[base] != nil || types[String(name)] != nil else { throw Malformed(line: String(line), why: "sample before its TYPE") }
            samples.append(Sample(name: String(name), labels: labels, value: value))
        }
        return samples
    }
}
