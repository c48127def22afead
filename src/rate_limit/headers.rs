//! Telling clients where they stand: rate-limit response headers.

use std::fmt::Write as _;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Limit, LimitState, Measure};
use crate::header_values::Packed;

/// Which rate-limit headers the layer sends, on every response it limits
/// (admitted or rejected).
///
/// | style | headers |
/// |---|---|
/// | [`OpenAi`](HeaderStyle::OpenAi) (default) | `x-ratelimit-limit-requests: 60`, `x-ratelimit-remaining-requests: 59`, `x-ratelimit-reset-requests: 1s`, and the `-tokens` variants; resets as durations (`1s`, `6m0s`, `12ms`) |
/// | [`Timestamp`](HeaderStyle::Timestamp) | the same names, resets as RFC 3339 UTC times (`2026-03-20T12:30:00Z`, rounded up to the second) |
/// | [`Legacy`](HeaderStyle::Legacy) | `X-RateLimit-Limit: 100`, `X-RateLimit-Remaining: 99`, `X-RateLimit-Reset: 1774009860` (Unix seconds, rounded up): the unsuffixed headers many gateways send and clients read (the virtual-key guide's); they describe the tightest limit of any measure |
/// | [`Ietf`](HeaderStyle::Ietf) | `RateLimit-Policy: "requests-per-minute";q=60;w=60` and `RateLimit: "requests-per-minute";r=59;t=1` ([draft-ietf-httpapi-ratelimit-headers]), one list member per limit; token limits carry `qu="tokens"` |
/// | [`None`](HeaderStyle::None) | none |
///
/// The OpenAI style has one set of headers per measure: when a key has
/// several limits on requests (per minute and per day), the headers describe
/// the one with the least remaining, since that is the one a client will hit
/// first. "Reset" is the time until the limit is back to full.
///
/// [draft-ietf-httpapi-ratelimit-headers]: https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// OpenAI's `x-ratelimit-*` headers with duration resets.
    #[default]
    OpenAi,
    /// OpenAI's `x-ratelimit-*` names with RFC 3339 reset times.
    Timestamp,
    /// The IETF draft's `RateLimit-Policy` and `RateLimit` structured fields.
    Ietf,
    /// Unsuffixed `X-RateLimit-Limit`, `-Remaining` and `-Reset` (Unix
    /// seconds) for the tightest limit.
    Legacy,
    /// No headers.
    None,
}

const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

impl HeaderStyle {
    /// Writes the headers for `limits` in `states` (same order) into
    /// `headers`, replacing any of the same names (an upstream's own
    /// rate-limit headers describe the gateway's account, not the caller's).
    /// `now_unix` is the wall-clock time, for the timestamp style.
    pub fn write(
        self,
        limits: &[Limit],
        states: &[LimitState],
        now_unix: Duration,
        headers: &mut HeaderMap,
    ) {
        match self {
            HeaderStyle::OpenAi | HeaderStyle::Timestamp => {
                // The changing values (remaining, reset) of both measures go
                // into one buffer: one allocation for all of them.
                let mut packed = Packed::new();
                // Per measure (requests, tokens): the tightest limit's
                // amount, and where its remaining and reset went.
                let mut pending = [const { None }; 2];
                for (slot, measure) in pending.iter_mut().zip([Measure::Requests, Measure::Tokens])
                {
                    let tightest = limits
                        .iter()
                        .zip(states)
                        .filter(|(l, _)| l.measure == measure)
                        .min_by_key(|(_, s)| (s.remaining, std::cmp::Reverse(s.reset)));
                    let Some((limit, state)) = tightest else {
                        continue;
                    };
                    let remaining = packed.push_u64(state.remaining);
                    let reset = if self == HeaderStyle::OpenAi {
                        let (buf, len) = duration_bytes(state.reset);
                        packed.push(&buf[..len])
                    } else {
                        let at = ceil_secs(now_unix + state.reset);
                        match crate::time::rfc3339_bytes(at) {
                            Some(bytes) => packed.push(&bytes),
                            None => packed.push(crate::time::format_rfc3339(at).as_bytes()),
                        }
                    };
                    *slot = Some((limit.amount, remaining, reset));
                }
                let bytes = packed.freeze();
                let [requests, tokens] = pending;
                headers
                    .reserve(3 * (usize::from(requests.is_some()) + usize::from(tokens.is_some())));
                if let Some((amount, remaining, reset)) = requests {
                    headers.insert(LIMIT_REQUESTS, amount_value(amount));
                    if let Some(value) = Packed::value(&bytes, remaining) {
                        headers.insert(REMAINING_REQUESTS, value);
                    }
                    if let Some(value) = Packed::value(&bytes, reset) {
                        headers.insert(RESET_REQUESTS, value);
                    }
                }
                if let Some((amount, remaining, reset)) = tokens {
                    headers.insert(LIMIT_TOKENS, amount_value(amount));
                    if let Some(value) = Packed::value(&bytes, remaining) {
                        headers.insert(REMAINING_TOKENS, value);
                    }
                    if let Some(value) = Packed::value(&bytes, reset) {
                        headers.insert(RESET_TOKENS, value);
                    }
                }
            }
            HeaderStyle::Ietf => {
                let (mut policy, mut current) = (String::new(), String::new());
                for (limit, state) in limits.iter().zip(states) {
                    let sep = if policy.is_empty() { "" } else { ", " };
                    let name = policy_name(limit);
                    let window = ceil_secs(limit.window).as_secs().max(1);
                    let _ = write!(policy, "{sep}\"{name}\";q={};w={window}", limit.amount);
                    if limit.measure == Measure::Tokens {
                        policy.push_str(";qu=\"tokens\"");
                    }
                    let reset = ceil_secs(state.reset).as_secs();
                    let _ = write!(current, "{sep}\"{name}\";r={};t={reset}", state.remaining);
                }
                for (name, value) in [(RATELIMIT_POLICY, policy), (RATELIMIT, current)] {
                    if value.is_empty() {
                        continue;
                    }
                    if let Ok(v) = HeaderValue::try_from(value) {
                        headers.insert(name, v);
                    }
                }
            }
            HeaderStyle::Legacy => {
                // The tightest: the least left as a share of its amount (a
                // client slowing down at "10 remaining" means it of the
                // limit it is closest to), then the later reset.
                let tightest = limits.iter().zip(states).min_by(|(la, sa), (lb, sb)| {
                    let a = u128::from(sa.remaining) * u128::from(lb.amount.max(1));
                    let b = u128::from(sb.remaining) * u128::from(la.amount.max(1));
                    a.cmp(&b).then(sb.reset.cmp(&sa.reset))
                });
                if let Some((limit, state)) = tightest {
                    let reset = ceil_secs(now_unix + state.reset).as_secs();
                    headers.insert(LIMIT, amount_value(limit.amount));
                    headers.insert(REMAINING, HeaderValue::from(state.remaining));
                    headers.insert(RESET, HeaderValue::from(reset));
                }
            }
            HeaderStyle::None => {}
        }
    }

    /// The name configuration uses: `openai`, `timestamp`, `ietf`,
    /// `legacy` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderStyle::OpenAi => "openai",
            HeaderStyle::Timestamp => "timestamp",
            HeaderStyle::Ietf => "ietf",
            HeaderStyle::Legacy => "legacy",
            HeaderStyle::None => "none",
        }
    }

    /// Whether the style writes a wall-clock time (and needs the clock).
    pub(crate) fn needs_clock(self) -> bool {
        matches!(self, HeaderStyle::Timestamp | HeaderStyle::Legacy)
    }
}

impl std::str::FromStr for HeaderStyle {
    type Err = &'static str;

    /// `openai`, `timestamp`, `ietf`, `legacy` or `none`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "openai" => Ok(HeaderStyle::OpenAi),
            "timestamp" => Ok(HeaderStyle::Timestamp),
            "ietf" => Ok(HeaderStyle::Ietf),
            "legacy" => Ok(HeaderStyle::Legacy),
            "none" => Ok(HeaderStyle::None),
            _ => Err("must be one of openai, timestamp, ietf, legacy, none"),
        }
    }
}

/// The header value of a limit's amount. Amounts are configuration, the
/// same on every response, so the last few are kept per thread: a reference
/// count instead of formatting and an allocation.
fn amount_value(amount: u64) -> HeaderValue {
    const SLOTS: usize = 4;
    /// The slot to fill next, and the amounts with their values.
    type Slots = (usize, [Option<(u64, HeaderValue)>; SLOTS]);
    thread_local! {
        static CACHE: std::cell::RefCell<Slots> =
            const { std::cell::RefCell::new((0, [const { None }; SLOTS])) };
    }
    CACHE
        .try_with(|cache| {
            let Ok(mut cache) = cache.try_borrow_mut() else {
                return HeaderValue::from(amount);
            };
            let (next, slots) = &mut *cache;
            if let Some((_, value)) = slots.iter().flatten().find(|(a, _)| *a == amount) {
                return value.clone();
            }
            let value = HeaderValue::from(amount);
            slots[*next] = Some((amount, value.clone()));
            *next = (*next + 1) % SLOTS;
            value
        })
        .unwrap_or_else(|_| HeaderValue::from(amount))
}

/// `requests-per-minute`, `tokens-per-day`, `requests-per-90s`.
fn policy_name(limit: &Limit) -> String {
    let what = match limit.measure {
        Measure::Requests => "requests",
        Measure::Tokens => "tokens",
    };
    format!("{what}-per-{}", limit.window_name())
}

fn ceil_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0)))
}

/// A duration as OpenAI writes resets (Go's `time.Duration` format at
/// millisecond precision, rounded up): `0s`, `12ms`, `1s`, `1.5s`, `6m0s`,
/// `1h2m3.004s`.
pub fn format_duration(d: Duration) -> String {
    let (buf, len) = duration_bytes(d);
    buf[..len].iter().map(|&b| char::from(b)).collect()
}

/// [`format_duration`] into a buffer: the text and its length. The longest
/// (`Duration::MAX`) is 27 bytes.
fn duration_bytes(d: Duration) -> ([u8; 32], usize) {
    // Whole milliseconds, rounded up, in 64 bits (saturating).
    let ms = d
        .as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_nanos().div_ceil(1_000_000)));
    let mut out = Out {
        buf: [0; 32],
        len: 0,
    };
    if ms < 1000 {
        out.number(ms);
        out.text(if ms == 0 { b"s" } else { b"ms" });
        return (out.buf, out.len);
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    if h > 0 {
        out.number(h);
        out.text(b"h");
    }
    if h > 0 || m > 0 {
        out.below_100(m);
        out.byte(b'm');
    }
    out.below_100(s);
    if frac > 0 {
        out.byte(b'.');
        out.byte(b'0' + (frac / 100) as u8);
        if frac % 100 != 0 {
            out.byte(b'0' + (frac / 10 % 10) as u8);
            if frac % 10 != 0 {
                out.byte(b'0' + (frac % 10) as u8);
            }
        }
    }
    out.byte(b's');
    (out.buf, out.len)
}

/// A fixed buffer that cannot overflow: [`duration_bytes`] writes at most
/// 27 of its 32 bytes.
struct Out {
    buf: [u8; 32],
    len: usize,
}

impl Out {
    // Byte by byte: the pieces are one to three bytes, where a loop is
    // cheaper than a call to `memcpy`.
    fn text(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
    }

    fn byte(&mut self, b: u8) {
        self.text(&[b]);
    }

    fn number(&mut self, n: u64) {
        self.text(itoa::Buffer::new().format(n).as_bytes());
    }

    /// Minutes and seconds: one or two digits, without `itoa`'s buffer.
    fn below_100(&mut self, n: u64) {
        if n >= 10 {
            self.byte(b'0' + (n / 10 % 10) as u8);
        }
        self.byte(b'0' + (n % 10) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `fmt`-based formatting `format_duration` replaced.
    fn reference(d: Duration) -> String {
        let ms = d
            .as_millis()
            .saturating_add(u128::from(!d.subsec_nanos().is_multiple_of(1_000_000)));
        let ms = u64::try_from(ms).unwrap_or(u64::MAX);
        if ms == 0 {
            return "0s".into();
        }
        if ms < 1000 {
            return format!("{ms}ms");
        }
        let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
        let mut out = String::new();
        if h > 0 {
            let _ = write!(out, "{h}h");
        }
        if h > 0 || m > 0 {
            let _ = write!(out, "{m}m");
        }
        let _ = write!(out, "{s}");
        if frac > 0 {
            let digits = format!("{frac:03}");
            let _ = write!(out, ".{}", digits.trim_end_matches('0'));
        }
        out.push('s');
        out
    }

    #[test]
    fn cached_amounts_are_the_amounts() {
        for round in 0..3 {
            for amount in [0, 1, 60, 1 << 30, 1 << 36, u64::MAX, 7, 8, 9] {
                assert_eq!(
                    amount_value(amount),
                    HeaderValue::from(amount),
                    "{round} {amount}"
                );
            }
        }
    }

    #[test]
    fn durations_match_the_reference() {
        let mut ms: u64 = 0;
        while ms < 10_000_000_000 {
            let d = Duration::from_millis(ms);
            assert_eq!(format_duration(d), reference(d), "{ms}");
            let d = Duration::from_micros(ms * 7 + 3);
            assert_eq!(format_duration(d), reference(d), "{ms}");
            ms = ms * 5 / 4 + 1;
        }
        for d in [Duration::MAX, Duration::from_millis(u64::MAX)] {
            assert_eq!(format_duration(d), reference(d));
        }
    }

    #[test]
    fn durations_like_openai() {
        for (ms, text) in [
            (0, "0s"),
            (12, "12ms"),
            (999, "999ms"),
            (1000, "1s"),
            (1500, "1.5s"),
            (17_280, "17.28s"),
            (60_000, "1m0s"),
            (360_000, "6m0s"),
            (3_723_004, "1h2m3.004s"),
            (86_400_000, "24h0m0s"),
        ] {
            assert_eq!(format_duration(Duration::from_millis(ms)), text);
        }
        assert_eq!(format_duration(Duration::from_micros(11_001)), "12ms");
        assert_eq!(format_duration(Duration::from_nanos(1)), "1ms");
        assert_eq!(format_duration(Duration::MAX).chars().last(), Some('s'));
    }

    fn state(remaining: u64, reset_ms: u64) -> LimitState {
        LimitState {
            remaining,
            reset: Duration::from_millis(reset_ms),
            retry_after: Some(Duration::ZERO),
        }
    }

    #[test]
    fn openai_picks_the_tightest_limit_per_measure() {
        let limits = [
            Limit::requests_per_minute(60),
            Limit::requests_per_day(1000),
            Limit::tokens_per_minute(150_000),
        ];
        let states = [state(59, 1000), state(5, 86_000_000), state(149_000, 400)];
        let mut h = HeaderMap::new();
        HeaderStyle::OpenAi.write(&limits, &states, Duration::ZERO, &mut h);
        assert_eq!(h["x-ratelimit-limit-requests"], "1000");
        assert_eq!(h["x-ratelimit-remaining-requests"], "5");
        assert_eq!(h["x-ratelimit-reset-requests"], "23h53m20s");
        assert_eq!(h["x-ratelimit-limit-tokens"], "150000");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "149000");
        assert_eq!(h["x-ratelimit-reset-tokens"], "400ms");
    }

    #[test]
    fn timestamp_and_ietf() {
        let limits = [
            Limit::requests_per_minute(60),
            Limit::tokens(1000, Duration::from_millis(1500)),
        ];
        let states = [state(59, 1000), state(900, 150)];
        let now = Duration::from_secs(1_774_009_799) + Duration::from_millis(500);
        let mut h = HeaderMap::new();
        HeaderStyle::Timestamp.write(&limits, &states, now, &mut h);
        assert_eq!(h["x-ratelimit-reset-requests"], "2026-03-20T12:30:01Z");
        assert_eq!(h["x-ratelimit-reset-tokens"], "2026-03-20T12:30:00Z");

        let mut h = HeaderMap::new();
        HeaderStyle::Ietf.write(&limits, &states, now, &mut h);
        assert_eq!(
            h["ratelimit-policy"],
            r#""requests-per-minute";q=60;w=60, "tokens-per-1500ms";q=1000;w=2;qu="tokens""#
        );
        assert_eq!(
            h["ratelimit"],
            r#""requests-per-minute";r=59;t=1, "tokens-per-1500ms";r=900;t=1"#
        );

        let mut h = HeaderMap::new();
        HeaderStyle::None.write(&limits, &states, now, &mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn legacy_describes_the_tightest_limit_unsuffixed() {
        let limits = [
            Limit::requests_per_hour(100),
            Limit::tokens_per_minute(10_000),
        ];
        // 1% of the requests left, 50% of the tokens.
        let states = [state(1, 36_000), state(5_000, 1_500)];
        let now = Duration::from_secs(1_774_009_800) + Duration::from_millis(500);
        let mut h = HeaderMap::new();
        HeaderStyle::Legacy.write(&limits, &states, now, &mut h);
        assert_eq!(h["x-ratelimit-limit"], "100");
        assert_eq!(h["x-ratelimit-remaining"], "1");
        assert_eq!(h["x-ratelimit-reset"], "1774009837");
        assert_eq!(h.len(), 3);
        for style in ["openai", "timestamp", "ietf", "legacy", "none"] {
            assert_eq!(
                style.parse::<HeaderStyle>().map(HeaderStyle::as_str),
                Ok(style)
            );
        }
        assert!("x".parse::<HeaderStyle>().is_err());
    }

    #[test]
    fn durations_are_written_as_openai_writes_them() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_micros(11_001), "12ms"),
            (Duration::from_millis(999), "999ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::from_millis(1_050), "1.05s"),
            (Duration::from_millis(59_999), "59.999s"),
            (Duration::from_millis(70_100), "1m10.1s"),
            (Duration::from_secs(360), "6m0s"),
            (Duration::from_millis(3_723_004), "1h2m3.004s"),
            (Duration::MAX, "5124095576030h25m51.615s"),
        ] {
            assert_eq!(format_duration(d), text, "{d:?}");
        }
    }
}
