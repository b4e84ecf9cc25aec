//! Time: the injectable clock, ISO-8601 formatting, and duration parsing.
//!
//! Every decision that depends on time takes `now` from a `Clock`, so tests
//! set `RELAY_FAKE_NOW_MS` instead of sleeping.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Environment variable that pins the clock (milliseconds since the epoch).
/// Meant for tests; documented as such.
pub const FAKE_NOW_ENV: &str = crate::envvars::FAKE_NOW_MS.name;

/// Source of the current time in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    fixed: Option<u64>,
}

impl Clock {
    /// The system clock, unless `RELAY_FAKE_NOW_MS` pins it.
    #[must_use]
    pub fn from_env() -> Self {
        let fixed = crate::envvars::FAKE_NOW_MS
            .get()
            .and_then(|v| v.trim().parse().ok());
        Clock { fixed }
    }

    /// A clock stuck at `ms` (for unit tests).
    #[must_use]
    pub fn fixed(ms: u64) -> Self {
        Clock { fixed: Some(ms) }
    }

    /// Milliseconds since the Unix epoch.
    #[must_use]
    pub fn now_ms(&self) -> u64 {
        self.fixed.unwrap_or_else(system_ms)
    }
}

impl Clock {
    /// Whether this clock is pinned (`RELAY_FAKE_NOW_MS`): it moves only
    /// as `sleep` moves it.
    #[must_use]
    pub fn is_pinned(&self) -> bool {
        self.fixed.is_some()
    }

    /// Waits `d`: a pinned clock moves forward by `d` at once (so tests of
    /// waits, e.g. `send --retry`, take no time), the system clock sleeps.
    pub fn sleep(&mut self, d: Duration) {
        match &mut self.fixed {
            Some(ms) => *ms = ms.saturating_add(self::ms(d)),
            None => std::thread::sleep(d),
        }
    }
}

fn system_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, ms)
}

/// Milliseconds since the epoch of a file time (mtime/ctime), 0 if unknown.
#[must_use]
pub fn system_time_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, ms)
}

/// Formats epoch milliseconds as ISO-8601 UTC with millisecond precision,
/// exactly as JavaScript's `Date.toISOString()` does (`2026-11-23T05:21:54.123Z`).
#[must_use]
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

/// Parses the ISO-8601 UTC form `iso8601` writes (also without millis).
#[must_use]
pub fn parse_iso8601(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || !s.ends_with('Z') || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = match &s[19..s.len() - 1] {
        "" => 0,
        frac => {
            let digits = frac.strip_prefix('.')?;
            let padded: String = digits.chars().chain("000".chars()).take(3).collect();
            padded.parse::<u64>().ok()?
        }
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = u64::try_from(days_from_civil(i64::try_from(y).ok()?, mo, d)).ok()?;
    Some((days * 86_400 + h * 3600 + mi * 60 + se) * 1000 + ms)
}

// Howard Hinnant's days-from-civil algorithms (public domain).
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u64::try_from(m).unwrap_or(1),
        u64::try_from(d).unwrap_or(1),
    )
}

fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let (m, d) = (i64::try_from(m).unwrap_or(1), i64::try_from(d).unwrap_or(1));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The duration forms, for help texts and errors.
pub const DURATION_FORMS: &str =
    "a number with a unit (ms, s, m, h, d), parts combined as in 1h30m; a bare number is seconds";

/// Parses a duration such as `250ms`, `30s`, `5m`, `1h`, `7d`, or a
/// compound of them (`1h30m`, `2m30s`); a bare number is seconds. Used as
/// a clap value parser, so the message names the value.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!(
            "invalid duration '{s}': durations cannot be negative; use {DURATION_FORMS}, e.g. 30s"
        ));
    }
    let bad = || format!("invalid duration '{s}': use {DURATION_FORMS}, e.g. 500ms, 30s, 1h30m");
    if t.is_empty() {
        return Err(bad());
    }
    let mut rest = t;
    let mut total_ms = 0.0_f64;
    let mut parts = 0;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(split);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let factor_ms = match unit {
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            // A bare number alone is seconds; inside a compound, a unit is due.
            "" if parts == 0 && tail.is_empty() => 1000.0,
            "" => return Err(bad()),
            _ => {
                return Err(format!(
                    "invalid duration '{s}': unknown unit '{unit}'; use {DURATION_FORMS}"
                ));
            }
        };
        total_ms += value * factor_ms;
        parts += 1;
        rest = tail;
    }
    if !total_ms.is_finite() || total_ms > 1e15 {
        return Err(format!("invalid duration '{s}': too large"));
    }
    // Truncation to whole milliseconds is intended.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(Duration::from_millis(total_ms as u64))
}

/// Like `parse_duration`, but zero is refused.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("invalid duration '{s}': must be more than zero")),
        d => Ok(d),
    }
}

/// A duration in whole milliseconds (saturating).
#[must_use]
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A short human form of a duration in milliseconds: `850ms`, `1.4s`,
/// `9m 12s`, `2h 5m`, `3d 4h` (two units at most, a zero second unit left out).
#[must_use]
pub fn human_ms(ms: u64) -> String {
    let two = |big: u64, bu: &str, small: u64, su: &str| {
        if small == 0 {
            format!("{big}{bu}")
        } else {
            format!("{big}{bu} {small}{su}")
        }
    };
    #[allow(clippy::cast_precision_loss)]
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => two(ms / 60_000, "m", ms % 60_000 / 1000, "s"),
        3_600_000..=86_399_999 => two(ms / 3_600_000, "h", ms % 3_600_000 / 60_000, "m"),
        _ => two(ms / 86_400_000, "d", ms % 86_400_000 / 3_600_000, "h"),
    }
}

/// Epoch milliseconds as a local wall-clock time (the zone of `TZ`, else
/// the system's): `14:03:11` on the day of `now`, else `2026-01-01 14:03:11`.
#[must_use]
pub fn local_time(now: u64, ms: u64) -> String {
    use chrono::{Local, TimeZone};
    let at = |t: u64| {
        i64::try_from(t)
            .ok()
            .and_then(|t| Local.timestamp_millis_opt(t).single())
    };
    match (at(ms), at(now)) {
        (Some(t), Some(n)) if t.date_naive() == n.date_naive() => t.format("%H:%M:%S").to_string(),
        (Some(t), _) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        (None, _) => iso8601(ms),
    }
}

/// A moment for people: its local time and how far it is from `now`,
/// e.g. `14:03:11 (in 9m 12s)` or `13:50:02 (3m ago)`.
#[must_use]
pub fn moment(now: u64, ms: u64) -> String {
    let distance = if ms >= now {
        format!("in {}", human_ms(ms - now))
    } else {
        format!("{} ago", human_ms(now - ms))
    };
    format!("{} ({distance})", local_time(now, ms))
}

/// `human_ms(now - then)` followed by " ago", or "-" when `then` is 0.
#[must_use]
pub fn ago(now: u64, then: u64) -> String {
    if then == 0 {
        "-".to_string()
    } else {
        format!("{} ago", human_ms(now.saturating_sub(then)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_round_trip() {
        for ms in [
            0,
            1,
            999,
            1_700_000_000_123,
            951_782_400_000,
            4_102_444_800_000,
        ] {
            assert_eq!(parse_iso8601(&iso8601(ms)), Some(ms), "{}", iso8601(ms));
        }
        assert_eq!(iso8601(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            parse_iso8601("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_iso8601("2023-11-14 22:13:20Z"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(
            parse_duration("-1s").is_err_and(|e| e.contains("'-1s'") && e.contains("negative"))
        );
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2m30s"), Ok(Duration::from_secs(150)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("1h30").is_err());
        assert!(parse_duration("1x").is_err_and(|e| e.contains("unknown unit 'x'")));
    }

    #[test]
    fn human() {
        assert_eq!(human_ms(1400), "1.4s");
        assert_eq!(human_ms(5), "5ms");
        assert_eq!(ago(10_000, 0), "-");
        assert_eq!(human_ms(552_000), "9m 12s");
        assert_eq!(human_ms(180_000), "3m");
        assert_eq!(human_ms(3_900_000), "1h 5m");
        assert_eq!(human_ms(90_000_000), "1d 1h");
    }
}
