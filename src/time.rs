//! RFC 3339 and calendar arithmetic in UTC (crate-private).
//!
//! Parsing is `jiff`'s: it knows the calendar (`2026-02-31` is refused) and
//! every offset form RFC 3339 allows. Formatting, which runs on the hot path
//! (`x-ratelimit-reset`, `x-budget-reset` headers), writes 20 bytes on the
//! stack; `jiff` is its test oracle.

use std::time::Duration;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(year, month, day)` of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `2026-03-20T12:30:00Z` (fractions of a second are dropped).
pub fn format_rfc3339(since_epoch: Duration) -> String {
    match rfc3339_bytes(since_epoch) {
        Some(bytes) => bytes.iter().map(|&b| char::from(b)).collect(),
        None => format_rfc3339_slow(since_epoch),
    }
}

/// `2026-03-20T12:30:00Z` as 20 ASCII bytes on the stack, for years up to
/// 9999 (`None` after, where [`format_rfc3339`] prints more year digits).
pub(crate) fn rfc3339_bytes(since_epoch: Duration) -> Option<[u8; 20]> {
    let secs = i64::try_from(since_epoch.as_secs()).ok()?;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    if !(0..=9999).contains(&y) {
        return None;
    }
    let rem = secs.rem_euclid(86_400);
    let mut out = *b"0000-00-00T00:00:00Z";
    let mut put = |at: usize, value: i64, width: usize| {
        let mut v = value;
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, y, 4);
    put(5, i64::from(mo), 2);
    put(8, i64::from(d), 2);
    put(11, rem / 3600, 2);
    put(14, rem % 3600 / 60, 2);
    put(17, rem % 60, 2);
    Some(out)
}

fn format_rfc3339_slow(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs() as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses an RFC 3339 date-time (`Z` or `±hh:mm` offset, optional fraction)
/// into time since the Unix epoch. `None` for anything else, an impossible
/// date, or a time before 1970.
pub fn parse_rfc3339(s: &str) -> Option<Duration> {
    let timestamp: jiff::Timestamp = s.trim().parse().ok()?;
    let nanos = timestamp.as_nanosecond();
    u64::try_from(nanos / 1_000_000_000)
        .ok()
        .map(|secs| Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// Today's date as `2026-03-20`, for a day count since 1970-01-01.
pub fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The day count since 1970-01-01 of a date written `2026-03-20`; `None`
/// for anything else or an impossible date.
pub fn parse_date(s: &str) -> Option<i64> {
    let date: jiff::civil::Date = s.trim().parse().ok()?;
    Some(days_from_civil(
        i64::from(date.year()),
        date.month() as u32,
        date.day() as u32,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast formatter against the slow one, and (up to jiff's last
    /// year, 9999) against jiff.
    #[test]
    fn fast_rfc3339_matches_the_formatter_and_jiff() {
        let mut secs: u64 = 0;
        while secs < 400_000_000_000 {
            let t = Duration::from_secs(secs);
            assert_eq!(format_rfc3339(t), format_rfc3339_slow(t), "{secs}");
            if secs < 253_402_300_799 {
                let jiff = jiff::Timestamp::from_second(secs as i64).unwrap();
                assert_eq!(format_rfc3339(t), jiff.to_string(), "{secs}");
            }
            secs = secs * 3 / 2 + 86_399;
        }
        for secs in [253_402_300_799, 253_402_300_800, u64::MAX / 4] {
            let t = Duration::from_secs(secs);
            assert_eq!(format_rfc3339(t), format_rfc3339_slow(t), "{secs}");
        }
    }

    #[test]
    fn civil_round_trips() {
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }

    #[test]
    fn parses_as_rfc3339_says() {
        let t = parse_rfc3339("2026-03-20T12:30:00Z").unwrap();
        assert_eq!(format_rfc3339(t), "2026-03-20T12:30:00Z");
        assert_eq!(
            parse_rfc3339("2026-03-20T14:30:00.5+02:00"),
            Some(t + Duration::from_millis(500))
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z").map(|d| d.as_secs()),
            Some(1_709_164_800)
        );
        assert_eq!(parse_date("2026-12-06"), Some(20_793));
        assert_eq!(format_date(20_793), "2026-12-06");
        assert_eq!(parse_date("2026-02-31"), None);
    }

    #[test]
    fn accepts_what_jiff_accepts() {
        // ISO 8601's basic offset form, which RFC 3339 leaves out: jiff
        // reads it, and so do we (a config is better read than refused).
        assert!(parse_rfc3339("2026-01-01T00:00:00+0100").is_some());
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "2026-02-31T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-04-31T12:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-01T00:00:00",
            "ééééééééééééééééééééé",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339(s), None, "{s}");
        }
    }
}
