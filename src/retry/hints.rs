//! When the server says a retry may succeed: `retry-after-ms`, `retry-after`,
//! and the rate-limit reset headers of OpenAI and Anthropic.
//!
//! Honouring the server's delay is what separates a polite client from a
//! retry storm: the server knows when its window resets, the client's backoff
//! only guesses. Providers spell the delay in four ways, and each hand-written
//! retry loop tends to know one. [`server_delay`] reads them all, most
//! specific first:
//!
//! 1. `retry-after-ms`: milliseconds, fractions allowed (OpenAI, Azure);
//! 2. `retry-after`: seconds (fractions allowed) or an HTTP-date (RFC 9110);
//! 3. for rate limits only, `x-ratelimit-reset-requests` / `-tokens`: Go
//!    durations (`1s`, `6m0s`, `12ms`, `1h2m3.5s`), plain seconds, or RFC 3339
//!    times (OpenAI, Groq, and the many servers that copy them);
//! 4. for rate limits only, `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset`
//!    (RFC 3339).
//!
//! ```
//! use std::time::Duration;
//! use http::HeaderMap;
//! use tollgate::retry::hints::{parse_duration, server_delay};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
//! headers.insert("x-ratelimit-reset-requests", "1m2.5s".parse().unwrap());
//! headers.insert("x-ratelimit-reset-tokens", "12ms".parse().unwrap());
//! let now = Duration::from_secs(1_800_000_000);
//! // The exhausted limit's reset wins.
//! assert_eq!(server_delay(&headers, now, true), Some(Duration::from_millis(62_500)));
//! // Reset headers say nothing about a 500.
//! assert_eq!(server_delay(&headers, now, false), None);
//!
//! assert_eq!(parse_duration("1h2m3.5s"), Some(Duration::from_millis(3_723_500)));
//! ```
//!
//! A value that cannot be parsed is ignored (the next header, or the backoff,
//! decides); a time in the past is a delay of zero. Nothing here panics,
//! whatever the bytes.

use std::time::Duration;

use http::HeaderMap;
use http::header::RETRY_AFTER;

use crate::envelope::RETRY_AFTER_MS;
use crate::time::parse_rfc3339;

/// `(remaining, reset)` header pairs of OpenAI-style rate limits.
const OPENAI_LIMITS: [(&str, &str); 2] = [
    (
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
];

/// `(remaining, reset)` header pairs of Anthropic's rate limits.
const ANTHROPIC_LIMITS: [(&str, &str); 4] = [
    (
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
    ),
    (
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
    ),
    (
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-input-tokens-reset",
    ),
    (
        "anthropic-ratelimit-output-tokens-remaining",
        "anthropic-ratelimit-output-tokens-reset",
    ),
];

/// The delay a response asks for, or `None` when it names none.
///
/// `now_unix` is the wall-clock time since the Unix epoch, for HTTP-dates
/// and RFC 3339 times. `rate_limited` says whether the response is a rate
/// limit (429): the reset headers are only read then, since OpenAI sends
/// them on every response and they mean nothing for a 500.
///
/// Among several reset headers, the reset of a limit reported exhausted
/// (`…remaining…: 0`) wins, the latest if several are; when none is reported
/// exhausted, the earliest reset.
pub fn server_delay(
    headers: &HeaderMap,
    now_unix: Duration,
    rate_limited: bool,
) -> Option<Duration> {
    if let Some(delay) =
        header(headers, RETRY_AFTER_MS.as_str()).and_then(|v| parse_decimal(v, 1000))
    {
        return Some(delay);
    }
    if let Some(delay) =
        header(headers, RETRY_AFTER.as_str()).and_then(|v| parse_retry_after(v, now_unix))
    {
        return Some(delay);
    }
    if !rate_limited {
        return None;
    }
    reset_delay(headers, &OPENAI_LIMITS, now_unix)
        .or_else(|| reset_delay(headers, &ANTHROPIC_LIMITS, now_unix))
}

/// A `Retry-After` value: delay-seconds (fractions tolerated) or an HTTP-date.
pub fn parse_retry_after(value: &str, now_unix: Duration) -> Option<Duration> {
    let value = value.trim();
    if let Some(delay) = parse_decimal(value, 1) {
        return Some(delay);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(at.saturating_sub(now_unix))
}

/// A Go-style duration as OpenAI writes them: `1s`, `6m0s`, `12ms`,
/// `1h2m3.5s`, `250us`, `0`. Units `h`, `m`, `s`, `ms`, `us`/`µs`, `ns`;
/// every number may have a fraction. `None` for anything else or a negative
/// duration; saturates at [`Duration::MAX`].
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s.as_bytes();
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.split_first() {
            Some((b'.', tail)) => {
                let len = tail.iter().take_while(|b| b.is_ascii_digit()).count();
                tail.split_at(len)
            }
            _ => (&after[..0], after),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let unit_len = after
            .iter()
            .take_while(|b| !b.is_ascii_digit() && **b != b'.')
            .count();
        let (unit, tail) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            b"h" => 3_600_000_000_000,
            b"m" => 60_000_000_000,
            b"s" => 1_000_000_000,
            b"ms" => 1_000_000,
            // `us`, `µs` (micro sign) and `μs` (Greek mu), as Go accepts.
            b"us" | b"\xc2\xb5s" | b"\xce\xbcs" => 1_000,
            b"ns" => 1,
            _ => return None,
        };
        total = total.saturating_add(scaled(int, frac, unit_nanos));
        rest = tail;
    }
    Some(nanos_to_duration(total))
}

/// `int.frac × unit` in nanoseconds, saturating.
fn scaled(int: &[u8], frac: &[u8], unit: u128) -> u128 {
    let mut whole: u128 = 0;
    for d in int {
        whole = whole
            .saturating_mul(10)
            .saturating_add(u128::from(d - b'0'));
    }
    let mut nanos = whole.saturating_mul(unit);
    // Digits past the 20th cannot change a nanosecond count.
    let frac = &frac[..frac.len().min(20)];
    let mut num: u128 = 0;
    for d in frac {
        num = num * 10 + u128::from(d - b'0');
    }
    let den = 10u128.pow(frac.len() as u32);
    nanos = nanos.saturating_add(num.saturating_mul(unit) / den);
    nanos
}

/// Nanoseconds as a duration, saturating at [`Duration::MAX`].
pub(super) fn nanos_to_duration(nanos: u128) -> Duration {
    match u64::try_from(nanos / 1_000_000_000) {
        Ok(secs) => Duration::new(secs, (nanos % 1_000_000_000) as u32),
        Err(_) => Duration::MAX,
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A non-negative decimal number of `1 / per_second` seconds, fractions
/// allowed. Whole numbers are read exactly (no float rounding), so a delay
/// survives a render/parse round trip to the millisecond; huge values
/// saturate so that the policy's cap refuses them.
fn parse_decimal(value: &str, per_second: u64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(n) = value.parse::<u64>() {
        let nanos = (n % per_second) * (1_000_000_000 / per_second);
        return Some(Duration::new(n / per_second, nanos as u32));
    }
    let n = value.parse::<f64>().ok()?;
    if n.is_nan() || n < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(n / per_second as f64).unwrap_or(Duration::MAX))
}

/// A reset header value: an RFC 3339 time, a Go duration, or plain seconds.
fn parse_reset(value: &str, now_unix: Duration) -> Option<Duration> {
    let value = value.trim();
    if let Some(at) = parse_rfc3339(value) {
        return Some(at.saturating_sub(now_unix));
    }
    parse_duration(value).or_else(|| parse_decimal(value, 1))
}

fn reset_delay(
    headers: &HeaderMap,
    limits: &[(&str, &str)],
    now_unix: Duration,
) -> Option<Duration> {
    let mut exhausted: Option<Duration> = None;
    let mut earliest: Option<Duration> = None;
    for (remaining, reset) in limits {
        let Some(delay) = header(headers, reset).and_then(|v| parse_reset(v, now_unix)) else {
            continue;
        };
        let is_exhausted = header(headers, remaining)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|n| n <= 0.0);
        if is_exhausted {
            exhausted = Some(exhausted.map_or(delay, |d| d.max(delay)));
        }
        earliest = Some(earliest.map_or(delay, |d| d.min(delay)));
    }
    exhausted.or(earliest)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: Duration = Duration::from_secs(1_800_000_000); // 2027-01-15T08:00:00Z

    /// A header map of `pairs` (the classifier's tests use it too).
    pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let pair = |(k, v): &(&str, &str)| (k.parse().unwrap(), v.parse().unwrap());
        pairs.iter().map(pair).collect()
    }

    /// The server's delay at `NOW` in the headers `pairs`.
    fn delay(pairs: &[(&str, &str)], rate_limits: bool) -> Option<Duration> {
        server_delay(&headers(pairs), NOW, rate_limits)
    }

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1s"), ms(1000));
        assert_eq!(parse_duration("6m0s"), ms(360_000));
        assert_eq!(parse_duration("12ms"), ms(12));
        assert_eq!(parse_duration("1h2m3.5s"), ms(3_723_500));
        assert_eq!(parse_duration("0"), ms(0));
        assert_eq!(parse_duration("0s"), ms(0));
        assert_eq!(parse_duration("2m59.56s"), ms(179_560));
        assert_eq!(parse_duration(".5s"), ms(500));
        assert_eq!(parse_duration("250us"), Some(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Some(Duration::from_micros(250)));
        assert_eq!(parse_duration("7ns"), Some(Duration::from_nanos(7)));
        assert_eq!(parse_duration("1.000000000000000000000001s"), ms(1000));
        for bad in [
            "", "s", "1", "1x", "-1s", "1s2", "1..5s", "1.5.5s", ". s", "1 s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(
            parse_duration("99999999999999999999999999999h"),
            Some(Duration::MAX)
        );
    }

    #[test]
    fn retry_after_ms_wins() {
        assert_eq!(
            delay(&[("retry-after-ms", "1500.5"), ("retry-after", "9")], false),
            Some(Duration::from_micros(1_500_500))
        );
    }

    #[test]
    fn retry_after_seconds_and_fractions() {
        assert_eq!(delay(&[("retry-after", "20")], false), ms(20_000));
        assert_eq!(delay(&[("retry-after", "0.25")], false), ms(250));
        let max = Some(Duration::MAX);
        assert_eq!(delay(&[("retry-after", "1e30")], false), max);
        let nonsense = [("retry-after", "-3"), ("retry-after-ms", "NaN")];
        assert_eq!(delay(&nonsense, false), None);
    }

    #[test]
    fn retry_after_http_date() {
        let at = httpdate::fmt_http_date(std::time::UNIX_EPOCH + NOW + Duration::from_secs(30));
        assert_eq!(delay(&[("retry-after", &at)], false), ms(30_000));
        let past = "Thu, 01 Jan 1970 00:00:00 GMT";
        assert_eq!(delay(&[("retry-after", past)], false), ms(0));
        assert_eq!(delay(&[("retry-after", "tomorrow, maybe")], false), None);
    }

    #[test]
    fn openai_reset_headers() {
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "5"),
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "12ms"),
        ]);
        assert_eq!(server_delay(&h, NOW, true), ms(12));
        // None reported exhausted: the earliest.
        let h = headers(&[
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "2s"),
        ]);
        assert_eq!(server_delay(&h, NOW, true), ms(1000));
        // RFC 3339 and plain seconds.
        let at = [("x-ratelimit-reset-requests", "2027-01-15T08:00:01.5Z")];
        assert_eq!(delay(&at, true), ms(1500));
        assert_eq!(
            delay(&[("x-ratelimit-reset-tokens", "2.5")], true),
            ms(2500)
        );
    }

    #[test]
    fn anthropic_reset_headers() {
        let h = headers(&[
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2027-01-15T08:00:10Z"),
            ("anthropic-ratelimit-output-tokens-remaining", "0"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2027-01-15T08:00:20+00:00",
            ),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2027-01-15T08:00:01Z",
            ),
        ]);
        assert_eq!(server_delay(&h, NOW, true), ms(20_000));
        // retry-after, when present, is more specific.
        let mut h = h;
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(server_delay(&h, NOW, true), ms(3000));
    }

    proptest! {
        #[test]
        fn never_panics(value in "\\PC{0,40}") {
            let _ = parse_duration(&value);
            let _ = parse_retry_after(&value, NOW);
            let _ = parse_reset(&value, NOW);
        }

        #[test]
        fn go_durations_round_trip(h in 0u64..1000, m in 0u64..60, s in 0u64..60, ms_part in 0u64..1000) {
            let text = format!("{h}h{m}m{s}.{ms_part:03}s");
            let expected = Duration::from_millis(((h * 60 + m) * 60 + s) * 1000 + ms_part);
            prop_assert_eq!(parse_duration(&text), Some(expected));
        }
    }
}
