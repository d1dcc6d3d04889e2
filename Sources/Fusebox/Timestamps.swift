#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Wall-clock times as text, through Foundation's ISO 8601 formatter: the one form the HTTP API and `--json` use.
package enum Timestamps {
    /// `2026-12-01T19:20:03.120Z`: ISO 8601, UTC, to the millisecond.
    package static func iso8601(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }
}
