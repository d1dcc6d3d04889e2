/// The one place durations become text, in the three forms Fusebox shows them:
/// - ``spoken(_:)``: messages and reasons, `320 ms`, `1.3 s`, `2 min 5 s` (what `lua/breaker.lua`'s
///   `format_duration` writes too, so a reason reads the same whichever adapter made it);
/// - ``setting(_:)``: a value as configuration and the `fusebox` command take it back (`Duration(parsing:)`),
///   `250ms`, `30s`, `5m`, `2h`;
/// - ``compact(_:)``: a table cell, `320ms`, `1.3s`, `2m5s`, `1h10m`.
package enum DurationText {
    /// `320 ms`, `1.3 s`, `2 min 5 s`.
    package static func spoken(_ duration: Duration) -> String {
        let millis = duration.milliseconds
        if millis < 1000 { return "\(millis) ms" }
        if millis < 60_000 {
            let tenths = (millis + 50) / 100
            return "\(tenths / 10).\(tenths % 10) s"
        }
        return "\(millis / 60_000) min \((millis % 60_000) / 1000) s"
    }

    /// `250ms`, `30s`, `5m`, `2h`: the largest unit that divides it exactly.
    package static func setting(_ duration: Duration) -> String {
        let ms = duration.milliseconds
        if ms % 3_600_000 == 0 && ms > 0 { return "\(ms / 3_600_000)h" }
        if ms % 60_000 == 0 && ms > 0 { return "\(ms / 60_000)m" }
        if ms % 1000 == 0 { return "\(ms / 1000)s" }
        return "\(ms)ms"
    }

    /// `320ms`, `1.3s`, `2m5s`, `1h10m`.
    package static func compact(_ duration: Duration) -> String {
        let millis = duration.milliseconds
        if millis < 1000 { return "\(millis)ms" }
        if millis < 60_000 {
            let tenths = (millis + 50) / 100
            return "\(tenths / 10).\(tenths % 10)s"
        }
        if millis < 3_600_000 { return "\(millis / 60_000)m\((millis % 60_000) / 1000)s" }
        return "\(millis / 3_600_000)h\((millis % 3_600_000) / 60_000)m"
    }
}
