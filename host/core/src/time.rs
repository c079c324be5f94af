//! Time as tokens, records and people spell it.
//!
//! Invariant: no date read from a token can overflow or panic here: Datalog dates are `u64`
//! seconds, and anything past 9999-12-31 saturates there.

use std::time::{Duration, SystemTime};

/// RFC 3339 in UTC, second precision.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    humantime::format_rfc3339_seconds(date_time(secs)).to_string()
}

/// RFC 3339 in UTC with milliseconds.
pub fn rfc3339_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A Datalog date as a time. A date past what `SystemTime` holds (a token may carry any `u64`)
/// saturates instead of overflowing: as a bound it is then simply never reached.
pub fn date_time(secs: u64) -> SystemTime {
    // 9999-12-31T23:59:59Z: past it, formatting and arithmetic stop being meaningful.
    const LAST: u64 = 253_402_300_799;
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs.min(LAST))
}

/// The first moment after `now` at which a decision taken at `now` may change because of one of
/// `bounds` (sorted). Datalog sees `time` in whole seconds: a date within the current second
/// still compares as the current second until the next one starts, so it bounds a decision
/// then, not at the date itself (which may already be past).
pub fn next_bound(bounds: &[SystemTime], now: SystemTime) -> Option<SystemTime> {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let floor = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    bounds.iter().copied().find(|b| *b >= floor).map(|b| {
        if b == floor {
            b + Duration::from_secs(1)
        } else {
            b
        }
    })
}

/// Parses a human duration such as `15m` or `1h30m`, for CLI flags and task requests.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("`{s}` is not a duration ({e}); expected something like \"90s\", \"15m\" or \"1h\"")
    })
}

/// Serde for a `SystemTime` as whole Unix seconds.
pub mod unix_seconds {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes whole seconds since the epoch.
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        s.serialize_u64(secs)
    }

    /// Reads whole seconds since the epoch, saturating like [`super::date_time`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let secs = u64::deserialize(d)?;
        Ok(super::date_time(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_in_the_current_second_bounds_until_the_next_second() {
        let at = |s: u64, ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(s * 1000 + ms);
        let bounds = [at(100, 0), at(200, 0)];
        assert_eq!(next_bound(&bounds, at(99, 500)), Some(at(100, 0)));
        // Datalog still sees `time` = 100 until 101: a `$t > 100` rule has not fired yet.
        assert_eq!(next_bound(&bounds, at(100, 500)), Some(at(101, 0)));
        assert_eq!(next_bound(&bounds, at(101, 0)), Some(at(200, 0)));
        assert_eq!(next_bound(&bounds, at(200, 999)), Some(at(201, 0)));
        assert_eq!(next_bound(&bounds, at(201, 0)), None);
    }

    #[test]
    fn dates_saturate() {
        assert_eq!(rfc3339(date_time(u64::MAX)), "9999-12-31T23:59:59Z");
    }
}
