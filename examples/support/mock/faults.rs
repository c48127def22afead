//! `MOCK:` directives: the faults a test asks the mock to play.
//!
//! A directive is the word `MOCK:` followed by `key=value` pairs separated by
//! commas, anywhere in the text the caller wrote (the last user message, a
//! completion `prompt`, an embeddings or Responses `input`, an Anthropic user
//! message). When several texts carry one, the last wins, so a conversation
//! that replays an old directive in its history is steered by its newest
//! message only.

use std::time::Duration;

/// Parsed `MOCK:` directives (see the module docs of `mock` for each key).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Faults {
    /// `status=N`: answer with this HTTP status instead of a result.
    pub status: Option<u16>,
    /// `times=K`: fail only the first K calls with this text.
    pub times: Option<u32>,
    /// `type=T`: the error `type` (OpenAI `error.type`, Anthropic `error.type`).
    pub error_type: Option<String>,
    /// `code=C`: the OpenAI `error.code` (or the `error_code` of `format=error_code_detail`).
    pub code: Option<String>,
    /// `format=html|text|openai|anthropic|error_code_detail|humanloop`: the error body's shape.
    pub format: Option<String>,
    /// `retry_after=S`: the `retry-after` header, verbatim (`none` drops it).
    pub retry_after: Option<String>,
    /// `retry_after_ms=M`: the `retry-after-ms` header.
    pub retry_after_ms: Option<u64>,
    /// `hang_ms=M`: wait this long before sending anything, headers included.
    pub hang_ms: u64,
    /// `reset`: close the connection once the request is read, answering nothing.
    pub reset: bool,
    /// `delay_ms=M`: a slow upstream. Between stream events, or before a
    /// non-streamed answer.
    pub delay_ms: u64,
    /// `cut_after=N`: drop the connection after N content events.
    pub cut_after: Option<usize>,
    /// `error_after=N`: send the dialect's error event after N content events.
    pub error_after: Option<usize>,
    /// `error_event=error|failed|both`: which Responses API events report the
    /// failure of `error_after` (default both: `error`, then `response.failed`).
    pub error_event: Option<String>,
    /// `stall_after=N`: pause before content event N…
    pub stall_after: Option<usize>,
    /// … for `stall_ms=M`.
    pub stall_ms: u64,
    /// `usage=none`: leave usage out of the answer.
    pub no_usage: bool,
    /// `usage=null`: OpenAI's exact stream form with `include_usage`,
    /// `"usage": null` on every chunk before the usage chunk.
    pub null_usage: bool,
    /// `words=N`: the reply is N words long (before `max_tokens` cuts it).
    pub words: Option<usize>,
}

impl Faults {
    /// The directives of the last `MOCK:` found in `texts` (none: no faults).
    pub fn parse<'a>(texts: impl IntoIterator<Item = &'a str>) -> Faults {
        let Some(spec) = texts
            .into_iter()
            .filter_map(|t| t.rfind("MOCK:").map(|at| &t[at + 5..]))
            .last()
        else {
            return Faults::default();
        };
        let spec = spec.split_whitespace().next().unwrap_or("");
        let mut faults = Faults::default();
        for pair in spec.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || value.parse::<u64>().ok();
            match key {
                "status" => faults.status = value.parse().ok(),
                "times" => faults.times = value.parse().ok(),
                "type" => faults.error_type = Some(value.to_owned()),
                "code" => faults.code = Some(value.to_owned()),
                "format" => faults.format = Some(value.to_owned()),
                "retry_after" => faults.retry_after = Some(value.to_owned()),
                "retry_after_ms" => faults.retry_after_ms = number(),
                "hang_ms" => faults.hang_ms = number().unwrap_or(0),
                "reset" => faults.reset = true,
                "delay_ms" => faults.delay_ms = number().unwrap_or(0),
                "cut_after" => faults.cut_after = value.parse().ok(),
                "error_after" => faults.error_after = value.parse().ok(),
                "error_event" => faults.error_event = Some(value.to_owned()),
                "stall_after" => faults.stall_after = value.parse().ok(),
                "stall_ms" => faults.stall_ms = number().unwrap_or(0),
                "usage" => {
                    faults.no_usage = value == "none";
                    faults.null_usage = value == "null";
                }
                "words" => faults.words = value.parse().ok(),
                _ => {}
            }
        }
        faults
    }

    /// The pause before a non-streamed answer, or between stream events.
    pub fn delay(&self) -> Option<Duration> {
        (self.delay_ms > 0).then(|| Duration::from_millis(self.delay_ms))
    }

    /// The wait before anything is sent.
    pub fn hang(&self) -> Option<Duration> {
        (self.hang_ms > 0).then(|| Duration::from_millis(self.hang_ms))
    }

    /// The `(retry-after, retry-after-ms)` pair for a 429/503/529: the
    /// directives' values, else 1 s and 20 ms (whole seconds rounded up, as
    /// providers round them; the millisecond value keeps retrying tests fast).
    pub fn retry_after(&self) -> (Option<String>, Option<String>) {
        match (self.retry_after.as_deref(), self.retry_after_ms) {
            (Some("none"), _) => (None, None),
            (Some(secs), Some(ms)) => (Some(secs.to_owned()), Some(ms.to_string())),
            (Some(secs), None) => {
                let ms = secs
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(|s| ((s * 1000.0).round() as u64).to_string());
                (Some(secs.to_owned()), ms)
            }
            (None, Some(ms)) => (
                Some(ms.div_ceil(1000).max(1).to_string()),
                Some(ms.to_string()),
            ),
            (None, None) => (Some("1".to_owned()), Some("20".to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_directive_wins_and_unknown_keys_are_ignored() {
        let faults = Faults::parse([
            "old MOCK:status=500",
            "new text MOCK:status=429,type=insufficient_quota,bogus=1,reset more words",
        ]);
        assert_eq!(faults.status, Some(429));
        assert_eq!(faults.error_type.as_deref(), Some("insufficient_quota"));
        assert!(faults.reset);
        assert_eq!(Faults::parse(["no directive"]), Faults::default());
    }

    #[test]
    fn retry_after_pairs() {
        let pair = |s: &str| Faults::parse([s]).retry_after();
        assert_eq!(pair("x"), (Some("1".into()), Some("20".into())));
        assert_eq!(
            pair("MOCK:retry_after=2"),
            (Some("2".into()), Some("2000".into()))
        );
        assert_eq!(
            pair("MOCK:retry_after_ms=1500"),
            (Some("2".into()), Some("1500".into()))
        );
        assert_eq!(pair("MOCK:retry_after=none"), (None, None));
    }
}
