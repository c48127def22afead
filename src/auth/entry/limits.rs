//! Rate limits as key entries give them: the shorthand fields
//! (`requests_per_minute`, …), the general form (`[[keys.limits]]`) and a
//! key's per-model limits (`[[keys.model_limits]]`).

use serde::Serialize;

use super::{AT_LEAST_ONE, InvalidKeyEntry};
use crate::rate_limit::{Algorithm, Limit, Measure};

/// A rate limit in the general form: `[[keys.limits]] amount = 90,
/// measure = "requests", window = "90s", algorithm = "gcra", burst = 10`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LimitEntry {
    /// How many per window (at least 1).
    pub amount: u64,
    /// `requests` or `tokens`.
    pub measure: String,
    /// The window: `"1s"`, `"90s"`, `"1m"`, `"1h"`, `"1d"`, `"1h 30m"`
    /// (humantime's format).
    pub window: String,
    /// `sliding` (default), `gcra` or `fixed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// The GCRA burst (default: the amount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// The shorthand rate-limit fields of a key, tenant or model entry, in
/// the order of [`SHORTHAND`].
pub(crate) type Shorthand = [Option<u64>; 7];

/// A shorthand field: its name and the limit it sets.
type ShorthandField = (&'static str, fn(u64) -> Limit);

/// Each shorthand field.
const SHORTHAND: [ShorthandField; 7] = [
    ("requests_per_second", Limit::requests_per_second),
    ("requests_per_minute", Limit::requests_per_minute),
    ("requests_per_hour", Limit::requests_per_hour),
    ("requests_per_day", Limit::requests_per_day),
    ("tokens_per_minute", Limit::tokens_per_minute),
    ("tokens_per_hour", Limit::tokens_per_hour),
    ("tokens_per_day", Limit::tokens_per_day),
];

/// An entry's shorthand fields as a [`Shorthand`]: a value, or a place to
/// assign one to.
macro_rules! shorthand {
    ($entry:expr) => {
        [
            $entry.requests_per_second,
            $entry.requests_per_minute,
            $entry.requests_per_hour,
            $entry.requests_per_day,
            $entry.tokens_per_minute,
            $entry.tokens_per_hour,
            $entry.tokens_per_day,
        ]
    };
}
pub(crate) use shorthand;

/// A key's own limits for the models matching `model`:
/// `[[keys.model_limits]] model = "gpt-4o*", requests_per_minute = 60`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ModelLimitEntry {
    /// An exact model name or a `*` glob.
    pub model: String,
    /// Requests per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u64>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// Requests per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_hour: Option<u64>,
    /// Requests per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    /// Tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Tokens per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_hour: Option<u64>,
    /// Tokens per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    /// Limits in the general form.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitEntry>,
    /// Requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

/// Validates the shorthand and general limits of a key (or of one of its
/// model entries, `prefix` `model_limits.`).
pub(super) fn limits_of(
    id: &str,
    shorthand: &Shorthand,
    general: &[LimitEntry],
    prefix: &'static str,
) -> Result<Vec<Limit>, InvalidKeyEntry> {
    // A model entry's field, named under `model_limits.`.
    macro_rules! under_model {
        ($field:expr, $($name:literal)*) => {
            match $field {
                $($name if !prefix.is_empty() => concat!("model_limits.", $name),)*
                other => other,
            }
        };
    }
    let named = |field: &'static str| {
        under_model!(field, "limits" "limits.amount" "limits.measure" "limits.window"
            "limits.algorithm" "limits.burst" "requests_per_second" "requests_per_minute"
            "requests_per_hour" "requests_per_day" "tokens_per_minute" "tokens_per_hour"
            "tokens_per_day")
    };
    let bad = |field, reason: &'static str| InvalidKeyEntry::new(id, named(field), reason);
    let mut out: Vec<(&'static str, Limit)> = Vec::new();
    for (&set, &(field, make)) in shorthand.iter().zip(&SHORTHAND) {
        match set {
            Some(0) => return Err(bad(field, AT_LEAST_ONE)),
            Some(n) => out.push((field, make(n))),
            None => {}
        }
    }
    for entry in general {
        if entry.amount == 0 {
            return Err(bad("limits.amount", "must be at least 1"));
        }
        let measure = match entry.measure.trim() {
            "requests" => Measure::Requests,
            "tokens" => Measure::Tokens,
            _ => return Err(bad("limits.measure", "must be `requests` or `tokens`")),
        };
        let window = humantime::parse_duration(entry.window.trim()).map_err(|_| {
            bad(
                "limits.window",
                "is not a duration like \"90s\", \"1m\", \"1h\" or \"1d\"",
            )
        })?;
        if window < std::time::Duration::from_millis(1) {
            return Err(bad("limits.window", "must be at least 1ms"));
        }
        let algorithm = match entry.algorithm.as_deref().map(str::trim) {
            None => Algorithm::Sliding,
            Some(name) => name
                .parse()
                .map_err(|_| bad("limits.algorithm", "must be one of sliding, gcra, fixed"))?,
        };
        let mut limit = Limit::new(measure, entry.amount, window).algorithm(algorithm);
        if let Some(burst) = entry.burst {
            if algorithm != Algorithm::Gcra {
                return Err(bad("limits.burst", "is only for `algorithm = \"gcra\"`"));
            }
            if burst == 0 || burst > entry.amount {
                return Err(bad("limits.burst", "must be between 1 and `amount`"));
            }
            limit = limit.burst(burst);
        }
        out.push(("limits", limit));
    }
    for (i, (field, limit)) in out.iter().enumerate() {
        if out[..i].iter().any(|(_, l)| l.same_state(limit)) {
            return Err(bad(
                field,
                "repeats another limit's measure, window and algorithm (they would share one count)",
            ));
        }
    }
    Ok(out.into_iter().map(|(_, l)| l).collect())
}

/// `limits` as entry fields: sliding limits of a whole second, minute, hour
/// or day as their shorthand, the rest in the general form.
pub(super) fn entries_of(limits: &[Limit]) -> (Shorthand, Vec<LimitEntry>) {
    let mut shorthand = Shorthand::default();
    let mut general = Vec::new();
    for limit in limits {
        // A plain sliding limit of a shorthand's window is that shorthand.
        let slot = SHORTHAND
            .iter()
            .position(|(.., make)| make(limit.amount) == *limit)
            .map(|i| &mut shorthand[i]);
        match slot {
            Some(slot) if slot.is_none() => *slot = Some(limit.amount),
            _ => general.push(LimitEntry {
                amount: limit.amount,
                measure: match limit.measure {
                    Measure::Requests => "requests".into(),
                    Measure::Tokens => "tokens".into(),
                },
                window: humantime::format_duration(limit.window).to_string(),
                algorithm: (limit.algorithm != Algorithm::Sliding)
                    .then(|| limit.algorithm.as_str().to_owned()),
                burst: limit.burst,
            }),
        }
    }
    (shorthand, general)
}

#[cfg(test)]
mod tests {
    use super::super::KeyEntry;
    use super::*;

    #[test]
    fn windows_general_limits_and_model_limits() {
        let toml = r#"
            id = "a"
            secret = "s"
            requests_per_hour = 100
            tokens_per_day = 1000000
            [[limits]]
            amount = 90
            measure = "requests"
            window = "90s"
            algorithm = "gcra"
            burst = 10
            [[limits]]
            amount = 5
            measure = "tokens"
            window = "1d"
            algorithm = "fixed"
            [[model_limits]]
            model = "gpt-4o*"
            requests_per_minute = 60
            max_concurrent = 2
        "#;
        let entry: KeyEntry = toml::from_str(toml).unwrap();
        let r = entry.clone().into_record().unwrap();
        assert_eq!(
            r.rate_limits,
            [
                Limit::requests_per_hour(100),
                Limit::tokens_per_day(1_000_000),
                Limit::requests(90, std::time::Duration::from_secs(90))
                    .algorithm(Algorithm::Gcra)
                    .burst(10),
                Limit::tokens_per_day(5).algorithm(Algorithm::Fixed),
            ]
        );
        assert_eq!(r.model_limits[0].model, "gpt-4o*");
        assert_eq!(r.model_limits[0].limits, [Limit::requests_per_minute(60)]);
        assert_eq!(r.model_limits[0].max_concurrent, Some(2));
        // And back, through the entry and TOML.
        let back = KeyEntry::from_record(&r);
        let text = toml::to_string(&back).unwrap();
        let again: KeyEntry = toml::from_str(&text).unwrap();
        let mut again = again.into_record().unwrap();
        again.created_at = r.created_at;
        assert_eq!(again, r);

        for (toml, field) in [
            (
                "[[limits]]\namount = 1\nmeasure = \"requests\"\nwindow = \"soon\"",
                "`limits.window`",
            ),
            (
                "[[limits]]\namount = 1\nmeasure = \"calls\"\nwindow = \"1h\"",
                "`limits.measure`",
            ),
            (
                "[[limits]]\namount = 0\nmeasure = \"requests\"\nwindow = \"1h\"",
                "`limits.amount`",
            ),
            (
                "[[limits]]\namount = 5\nmeasure = \"requests\"\nwindow = \"1h\"\nalgorithm = \"leaky\"",
                "`limits.algorithm`",
            ),
            (
                "[[limits]]\namount = 5\nmeasure = \"requests\"\nwindow = \"1h\"\nburst = 2",
                "`limits.burst`",
            ),
            (
                "requests_per_minute = 5\n[[limits]]\namount = 6\nmeasure = \"requests\"\nwindow = \"60s\"",
                "`limits`",
            ),
            (
                "[[model_limits]]\nmodel = \"m\"\ntokens_per_hour = 0",
                "`model_limits.tokens_per_hour`",
            ),
            ("[[model_limits]]\nmodel = \"m\"", "`model_limits`"),
        ] {
            let text = format!("id = \"a\"\nsecret = \"s\"\n{toml}");
            let err = match toml::from_str::<KeyEntry>(&text) {
                Ok(entry) => entry.into_record().unwrap_err().to_string(),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(field), "{toml}: {err}");
        }
        // Unknown fields in the tables are refused, naming them.
        let err = toml::from_str::<KeyEntry>(
            "id = \"a\"\nsecret = \"s\"\n[[model_limits]]\nmodel = \"m\"\nrpm = 3",
        )
        .unwrap_err();
        assert!(err.to_string().contains("rpm"), "{err}");
    }
}
