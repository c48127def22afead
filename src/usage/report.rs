//! The report types, and how a report is made from what the scanner found.

use std::fmt;

use http::StatusCode;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Token counts of one response.
///
/// Field names follow OpenAI's chat completions. Anthropic's and the OpenAI
/// Responses API's names are mapped onto them:
///
/// | field | OpenAI chat | OpenAI Responses | Anthropic |
/// |---|---|---|---|
/// | `prompt_tokens` | `prompt_tokens` | `input_tokens` | `input_tokens` + `cache_read_input_tokens` + `cache_creation_input_tokens` |
/// | `completion_tokens` | `completion_tokens` | `output_tokens` | `output_tokens` |
/// | `total_tokens` | `total_tokens` | `total_tokens` | prompt + completion |
/// | `cached_tokens` | `prompt_tokens_details.cached_tokens` | `input_tokens_details.cached_tokens` | `cache_read_input_tokens` |
/// | `reasoning_tokens` | `completion_tokens_details.reasoning_tokens` | `output_tokens_details.reasoning_tokens` | — |
///
/// So `cached_tokens` is always a part of `prompt_tokens`, whoever reported it,
/// and a price table can bill `prompt_tokens - cached_tokens` at the full rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    /// Tokens of the prompt (input), cached ones included.
    pub prompt_tokens: u64,
    /// Tokens generated (output), reasoning ones included.
    pub completion_tokens: u64,
    /// As reported, else `prompt_tokens + completion_tokens`.
    pub total_tokens: u64,
    /// Prompt tokens read from the provider's prompt cache, when it says.
    pub cached_tokens: Option<u64>,
    /// Completion tokens spent on hidden reasoning, when the provider says.
    pub reasoning_tokens: Option<u64>,
}

/// Who counted the tokens of a [`Usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UsageSource {
    /// The upstream reported them in the response.
    Reported,
    /// tollgate estimated them: the upstream reported nothing (or only the
    /// prompt side), the stream was cut, or the response was an error.
    Estimated,
}

/// How the observed body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyEnd {
    /// The body reached its end.
    Completed,
    /// The inner body returned an error (the upstream connection broke).
    Failed,
    /// The body was dropped before its end: the client went away.
    Dropped,
}

/// The final report of one observed response, given to every subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageReport {
    /// The token counts.
    pub usage: Usage,
    /// Whether `usage` was reported by the upstream or estimated.
    pub source: UsageSource,
    /// How the body ended.
    pub end: BodyEnd,
    /// The response status.
    pub status: StatusCode,
}

/// What the observer needs to know about the request.
#[derive(Debug, Clone, Default)]
pub struct UsageOptions {
    /// Prompt tokens to assume when the upstream reports none (from
    /// [`RequestMeta`](crate::RequestMeta)). Default 0.
    pub prompt_tokens_estimate: u64,
    /// The gateway asked upstream for usage the client did not ask for
    /// (`stream_options.include_usage` added, see
    /// [`request_usage`](super::request_usage)): remove the usage-only final
    /// chunk (`choices: []` + `usage`) from what the client receives.
    /// Default `false`.
    pub strip_usage_chunk: bool,
}

impl UsageOptions {
    /// Options for a request described by `meta`: its prompt estimate, and no
    /// stripping.
    pub fn from_meta(meta: &crate::RequestMeta) -> Self {
        UsageOptions {
            prompt_tokens_estimate: meta.prompt_tokens_estimate,
            strip_usage_chunk: false,
        }
    }

    /// Sets [`prompt_tokens_estimate`](Self::prompt_tokens_estimate).
    pub fn prompt_tokens_estimate(mut self, tokens: u64) -> Self {
        self.prompt_tokens_estimate = tokens;
        self
    }

    /// Sets [`strip_usage_chunk`](Self::strip_usage_chunk).
    pub fn strip_usage_chunk(mut self, strip: bool) -> Self {
        self.strip_usage_chunk = strip;
        self
    }
}

/// Usage fields as reported so far, under every provider's names. Later
/// reports override earlier ones field by field: Anthropic's `message_delta`
/// completes its `message_start`, and servers that repeat a cumulative usage
/// in every chunk end with the last one.
///
/// Kept compact (values plus a presence mask rather than nine `Option`s):
/// it lives in every observed body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    values: [u64; FIELDS],
    present: u16,
    /// A usage that ends the response was seen (OpenAI's usage chunk,
    /// Anthropic's `message_delta`, `response.completed`, a JSON body's).
    pub(crate) complete: bool,
    /// Only a usage that opens the response was seen (Anthropic's
    /// `message_start`): the prompt side is known, the completion is not.
    pub(crate) partial: bool,
}

const PROMPT: usize = 0;
const INPUT: usize = 1;
const COMPLETION: usize = 2;
const OUTPUT: usize = 3;
const TOTAL: usize = 4;
const CACHED: usize = 5;
const CACHE_READ: usize = 6;
const CACHE_CREATION: usize = 7;
const REASONING: usize = 8;
const FIELDS: usize = 9;

impl Tally {
    fn get(&self, field: usize) -> Option<u64> {
        (self.present & (1 << field) != 0).then(|| self.values[field])
    }

    fn set(&mut self, field: usize, value: Option<Count>) {
        if let Some(Count(Some(v))) = value {
            self.values[field] = v;
            self.present |= 1 << field;
        }
    }

    pub(crate) fn merge(&mut self, raw: &RawUsage, complete: bool) {
        self.set(PROMPT, raw.prompt_tokens);
        self.set(INPUT, raw.input_tokens);
        self.set(COMPLETION, raw.completion_tokens);
        self.set(OUTPUT, raw.output_tokens);
        self.set(TOTAL, raw.total_tokens);
        self.set(CACHE_READ, raw.cache_read_input_tokens);
        self.set(CACHE_CREATION, raw.cache_creation_input_tokens);
        for details in [raw.prompt_tokens_details, raw.input_tokens_details]
            .into_iter()
            .flatten()
        {
            self.set(CACHED, details.cached_tokens);
        }
        for details in [raw.completion_tokens_details, raw.output_tokens_details]
            .into_iter()
            .flatten()
        {
            self.set(REASONING, details.reasoning_tokens);
        }
        if complete {
            self.complete = true;
        } else {
            self.partial = true;
        }
    }

    pub(crate) fn usage(&self) -> Usage {
        let prompt = match (self.get(PROMPT), self.get(INPUT)) {
            (Some(prompt), _) => prompt,
            // Anthropic's input_tokens leave out the cache; OpenAI's Responses
            // input_tokens (which has no cache_* fields) include it.
            (None, input) => input
                .unwrap_or(0)
                .saturating_add(self.get(CACHE_READ).unwrap_or(0))
                .saturating_add(self.get(CACHE_CREATION).unwrap_or(0)),
        };
        let completion = self.get(COMPLETION).or(self.get(OUTPUT)).unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: self
                .get(TOTAL)
                .unwrap_or_else(|| prompt.saturating_add(completion)),
            cached_tokens: self.get(CACHED).or(self.get(CACHE_READ)),
            reasoning_tokens: self.get(REASONING),
        }
    }

    /// The final report: reported usage when a complete one was seen;
    /// otherwise an estimate (all zero for an error status).
    pub(crate) fn report(
        &self,
        content_chars: u64,
        prompt_tokens_estimate: u64,
        status: StatusCode,
        end: BodyEnd,
    ) -> UsageReport {
        let (usage, source) = if self.complete {
            (self.usage(), UsageSource::Reported)
        } else if status.as_u16() >= 400 {
            (Usage::default(), UsageSource::Estimated)
        } else {
            let streamed = content_chars.div_ceil(4);
            let (prompt, completion, cached) = if self.partial {
                // The prompt side was reported: keep it, and take the larger
                // of the reported (opening) completion count and the estimate.
                let usage = self.usage();
                let completion = usage.completion_tokens.max(streamed);
                (usage.prompt_tokens, completion, usage.cached_tokens)
            } else {
                (prompt_tokens_estimate, streamed, None)
            };
            let usage = Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: prompt.saturating_add(completion),
                cached_tokens: cached,
                reasoning_tokens: None,
            };
            (usage, UsageSource::Estimated)
        };
        UsageReport {
            usage,
            source,
            end,
            status,
        }
    }
}

/// A `usage` object under any provider's names, as `serde_json` reads it
/// ([`parse`](super::parse)). Unknown members are skipped; a usage given as
/// an array (which serde allows for a struct) is in this field order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(crate) struct RawUsage {
    pub(crate) prompt_tokens: Option<Count>,
    pub(crate) completion_tokens: Option<Count>,
    pub(crate) total_tokens: Option<Count>,
    pub(crate) input_tokens: Option<Count>,
    pub(crate) output_tokens: Option<Count>,
    pub(crate) cache_read_input_tokens: Option<Count>,
    pub(crate) cache_creation_input_tokens: Option<Count>,
    pub(crate) prompt_tokens_details: Option<Details>,
    pub(crate) completion_tokens_details: Option<Details>,
    pub(crate) input_tokens_details: Option<Details>,
    pub(crate) output_tokens_details: Option<Details>,
}

impl RawUsage {
    /// Whether any token count is present: `"usage": {}` is no report.
    pub(crate) fn has_counts(&self) -> bool {
        [
            self.prompt_tokens,
            self.completion_tokens,
            self.total_tokens,
            self.input_tokens,
            self.output_tokens,
            self.cache_read_input_tokens,
            self.cache_creation_input_tokens,
        ]
        .iter()
        .any(|count| matches!(count, Some(Count(Some(_)))))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(crate) struct Details {
    pub(crate) cached_tokens: Option<Count>,
    pub(crate) reasoning_tokens: Option<Count>,
}

/// A token count, read leniently: a non-negative integer (or a float, as
/// some servers send `12.0`); anything else counts as absent rather than
/// failing the whole usage object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Count(pub(crate) Option<u64>);

impl Count {
    /// A count sent as a float: its integer part, when it is finite, not
    /// below zero (`-0.0` is not) and below `u64::MAX`.
    pub(crate) fn from_f64(v: f64) -> Count {
        let valid = v.is_finite() && v >= 0.0 && v < u64::MAX as f64;
        // The range is checked above, so the cast neither wraps nor saturates.
        Count(valid.then_some(v as u64))
    }
}

/// Any JSON value: a count when it is a number in range.
impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
        d.deserialize_any(CountVisitor)
    }
}

struct CountVisitor;

impl<'de> Visitor<'de> for CountVisitor {
    type Value = Count;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a token count")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
        Ok(Count(Some(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
        Ok(Count(u64::try_from(v).ok()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
        Ok(Count::from_f64(v))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Count, E> {
        Ok(Count(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Count, E> {
        Ok(Count(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Count, E> {
        Ok(Count(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Count(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Count, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Count(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> RawUsage {
        crate::usage::parse::usage_value(json.as_bytes(), 0)
            .unwrap()
            .unwrap()
    }

    /// Prompt, completion and total tokens.
    fn totals(usage: &Usage) -> (u64, u64, u64) {
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens,
        )
    }

    fn tally(json: &str, complete: bool) -> Tally {
        let raw = raw(json);
        let mut tally = Tally::default();
        tally.merge(&raw, complete);
        tally
    }

    #[test]
    fn openai_names() {
        let usage = tally(
            r#"{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,
               "prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},
               "completion_tokens_details":{"reasoning_tokens":4}}"#,
            true,
        )
        .usage();
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 19,
                completion_tokens: 10,
                total_tokens: 29,
                cached_tokens: Some(3),
                reasoning_tokens: Some(4),
            }
        );
    }

    #[test]
    fn anthropic_names_include_the_cache_in_the_prompt() {
        let mut t = tally(
            r#"{"input_tokens":25,"cache_creation_input_tokens":5,
               "cache_read_input_tokens":100,"output_tokens":1}"#,
            false,
        );
        t.merge(&raw(r#"{"output_tokens":15}"#), true);
        let usage = t.usage();
        assert_eq!(totals(&usage), (130, 15, 145));
        assert_eq!(usage.cached_tokens, Some(100));
        assert!(t.complete && t.partial);
    }

    #[test]
    fn responses_names() {
        let usage = tally(
            r#"{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},
               "output_tokens":87,"output_tokens_details":{"reasoning_tokens":20},
               "total_tokens":123}"#,
            true,
        )
        .usage();
        assert_eq!(totals(&usage), (36, 87, 123));
        assert_eq!(usage.cached_tokens, Some(0));
        assert_eq!(usage.reasoning_tokens, Some(20));
    }

    #[test]
    fn odd_values_are_absent_not_fatal() {
        let usage = tally(
            r#"{"prompt_tokens":-1,"completion_tokens":"7","total_tokens":12.0,
               "prompt_tokens_details":null}"#,
            true,
        )
        .usage();
        assert_eq!(totals(&usage), (0, 0, 12));
    }

    #[test]
    fn estimates() {
        let none = Tally::default();
        let r = none.report(9, 10, StatusCode::OK, BodyEnd::Completed);
        assert_eq!(r.source, UsageSource::Estimated);
        assert_eq!(totals(&r.usage), (10, 3, 13));
        let r = none.report(9, 10, StatusCode::TOO_MANY_REQUESTS, BodyEnd::Completed);
        assert_eq!(
            (r.usage, r.source),
            (Usage::default(), UsageSource::Estimated)
        );

        let zero = tally(r#"{"prompt_tokens":0,"completion_tokens":0}"#, true);
        let r = zero.report(400, 10, StatusCode::OK, BodyEnd::Completed);
        assert_eq!(
            (r.usage, r.source),
            (Usage::default(), UsageSource::Reported)
        );

        let start = tally(r#"{"input_tokens":25,"output_tokens":1}"#, false);
        let r = start.report(40, 10, StatusCode::OK, BodyEnd::Failed);
        assert_eq!(r.source, UsageSource::Estimated);
        assert_eq!((r.usage.prompt_tokens, r.usage.completion_tokens), (25, 10));
    }
}
