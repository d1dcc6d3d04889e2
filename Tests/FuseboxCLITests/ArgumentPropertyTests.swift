import ArgumentParser
import Foundation
import PropertyBased
import Testing
import TestKinds

@testable import FuseboxCLI

/// Random command lines and durations, checked against what the `fusebox` command must make of them.
@Suite("Properties of the command line", .kind(.unit))
struct ArgumentPropertyTests {
    /// One breaker command with its own arguments, and the global options in any order, before or after it.
    struct Line: Sendable, CustomStringConvertible {
        var command: [String]
        var redis: String?
        var namespace: String?
        var json: Bool
        var arguments: [String]
        var description: String { arguments.joined(separator: " ") }
    }

    static let lines: Generator<Line, Shrink.None<Line>> = Generator { rng in
        let names = ["payments", "a b", "--", "-x", "ünï", "name=with=equals"]
        let name = names.randomElement(using: &rng)!
        let commands: [[String]] = [["list"], ["show", name], ["reset", name], ["half-open", name],
                                    ["isolate", name, "--reason", ["maintenance", "a=b", "-1", ""].randomElement(using: &rng)!]]
        let command = commands.randomElement(using: &rng)!
        let redis = Bool.random(using: &rng) ? ["redis://127.0.0.1:6390", "unix:///tmp/r.sock", "redis://:p@h/2"].randomElement(using: &rng)! : nil
        let namespace = Bool.random(using: &rng) ? ["fusebox", "ns:with:colons", "x"].randomElement(using: &rng)! : nil
        let json = Bool.random(using: &rng)

        // Each global option as one or two words, spelled `--opt value` or `--opt=value`, placed before or after.
        var options: [[String]] = []
        if let redis { options.append(Bool.random(using: &rng) ? ["--redis", redis] : ["--redis=\(redis)"]) }
        if let namespace { options.append(Bool.random(using: &rng) ? ["--namespace", namespace] : ["--namespace=\(namespace)"]) }
        if json { options.append(["--json"]) }
        options.shuffle(using: &rng)
        let before = Int.random(in: 0...options.count, using: &rng)
        // Dashed names need `--` before them once options follow; the generator keeps them last in that case.
        let positionalNeedsGuard = command.count > 1 && command[1].hasPrefix("-")
        var arguments = options[..<before].flatMap { $0 } + [command[0]]
        if positionalNeedsGuard {
            arguments += options[before...].flatMap { $0 } + Array(command.dropFirst(2)) + ["--", command[1]]
        } else {
            arguments += Array(command.dropFirst()) + options[before...].flatMap { $0 }
        }
        return Line(command: command, redis: redis, namespace: namespace, json: json, arguments: arguments)
    }

    @Test("global options mean the same before the subcommand as after it")
    func globalOptionsAnywhere() async {
        await propertyCheck(count: 100, input: Self.lines) { line in
            await Task.yield()  // CPU-bound cases: leave the shared pool to the suites that time things
            let parsed = try FuseboxCommand.parseAsRoot(GlobalOptions.hoisting(line.arguments))
            let found: (global: GlobalOptions, json: Bool, name: String?)? = switch parsed {
            case let command as ListCommand: (command.global, command.json, nil)
            case let command as ShowCommand: (command.global, command.json, command.name)
            case let command as ResetCommand: (command.global, command.json, command.name)
            case let command as HalfOpenCommand: (command.global, command.json, command.name)
            case let command as IsolateCommand: (command.global, command.json, command.name)
            default: nil
            }
            guard let (global, json, name) = found else {
                Issue.record("\(line) parsed as \(type(of: parsed))")
                return
            }
            #expect(global.redis == line.redis, "\(line)")
            #expect(global.namespace == line.namespace, "\(line)")
            #expect(json == line.json, "\(line)")
            #expect(name == line.command.dropFirst().first, "\(line)")
            if let isolate = parsed as? IsolateCommand { #expect(isolate.reason == line.command.last, "\(line)") }
        }
    }

    @Test("any mix of words parses, or fails as a usage error; never a crash")
    func anyWordsAreTyped() async {
        let words = ["list", "show", "isolate", "reset", "--redis", "--redis=", "--namespace", "--json", "--reason", "x",
                     "--", "-", "=", "--unknown", "watch", "--limit", "-1", "run", "payments"]
        await propertyCheck(count: 150, input: Gen.element(of: words).array(of: 0...7).map { $0.compactMap { $0 } }) { arguments in
            await Task.yield()  // CPU-bound cases: leave the shared pool to the suites that time things
            do {
                _ = try FuseboxCommand.parseAsRoot(GlobalOptions.hoisting(arguments))
            } catch {
                // A parse error: exit 64 (EX_USAGE) with a message, as every usage error of the command.
                #expect(FuseboxCommand.exitCode(for: error) == .validationFailure, "\(arguments): \(error)")
                #expect(!FuseboxCommand.message(for: error).isEmpty, "\(arguments)")
            }
        }
    }

    // MARK: Durations

    static let units: [(suffix: String, seconds: Double)] = [("us", 1e-6), ("ms", 1e-3), ("s", 1), ("m", 60), ("h", 3600)]

    @Test("a number and a unit parse to that many of the unit")
    func durationsParse() async {
        let amounts = Gen.int(in: 0...1_000_000)
        await propertyCheck(count: 500, input: amounts, Gen.int(in: 0...4), Gen.int(in: 0...3)) { amount, unit, decimals in
            await Task.yield()  // CPU-bound cases: leave the shared pool to the suites that time things
            let value = Double(amount) / pow(10, Double(decimals))
            let text = "\(value)\(Self.units[unit].suffix)"
            let parsed = try parseDuration(text)
            let expected = value * Self.units[unit].seconds
            let seconds = Double(parsed.components.seconds) + Double(parsed.components.attoseconds) / 1e18
            #expect(abs(seconds - expected) <= max(1e-9, expected * 1e-12), "\(text) -> \(parsed)")
        }
    }

    @Test("any text parses to a duration or to a usage error that shows how to write one; never a crash")
    func anyDurationTextIsTyped() async {
        let pieces = ["1", "0", "-", ".", "5", "e", "1e300", "9e18", "inf", "nan", "ms", "s", "m", "h", "us", " ", "x", "0x1p3"]
        await propertyCheck(count: 1000, input: Gen.element(of: pieces).array(of: 0...4).map { $0.compactMap { $0 }.joined() }) { text in
            await Task.yield()  // CPU-bound cases: leave the shared pool to the suites that time things
            do {
                let parsed = try parseDuration(text)
                #expect(parsed >= .zero, "\(text)")
            } catch CLIError.usage(let message) {
                #expect(message.contains("500ms"), "\(text): \(message)")
            }
        }
    }
}
