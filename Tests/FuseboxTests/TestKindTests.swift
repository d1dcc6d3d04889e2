import Foundation
import Testing
import TestKinds

/// Every suite names its kind, so that a plain `swift test` runs it in its kind's turn (Tests/TestKinds).
@Suite("Every suite names its kind", .kind(.unit))
struct TestKindTests {
    /// The test sources, found from this file's place in the tree.
    static let testFiles: [URL] = {
        let tests = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        let files = FileManager.default.enumerator(at: tests, includingPropertiesForKeys: nil)?.compactMap { $0 as? URL } ?? []
        return files.filter { $0.pathExtension == "swift" && !$0.path.contains("/TestKinds/") }
    }()

    @Test("each @Suite has a .kind(…) trait, and no test stands outside a suite")
    func everySuiteHasAKind() throws {
        #expect(Self.testFiles.count > 40, "found only \(Self.testFiles.count) test files")
        var suites = 0
        for file in Self.testFiles {
            let text = try String(contentsOf: file, encoding: .utf8)
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
            for line in lines where line.trimmingCharacters(in: .whitespaces).hasPrefix("@Suite") {
                suites += 1
                #expect(line.contains(".kind(."), "\(file.lastPathComponent): \(line) names no kind")
            }
            // A test function at the top level belongs to no suite, so to no kind.
            #expect(!lines.contains { $0.hasPrefix("@Test") }, "\(file.lastPathComponent) has a test outside any suite")
        }
        #expect(suites > 50)
    }

    @Test("the kinds' names are the ones the turns announce")
    func names() {
        #expect(TestKind.allCases.map(\.rawValue) == ["unit", "integration", "timing-bound", "alone"])
    }
}
