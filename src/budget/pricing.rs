//! What a model costs: [`Pricing`], [`ModelPrice`], [`TokenPrice`].
//!
//! Prices are quoted in USD per million tokens and held as integers in
//! pico-dollars per token (1e-12 USD, so `$0.075 / 1M` is exactly `75_000`):
//! no float ever touches a ledger. The cost of a request is rounded *up* to
//! the next nano-dollar ([`Money`]), so rounding never lets spend slip past a
//! limit.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Money;

/// Pico-dollars per dollar.
const PICOS_PER_USD: u128 = 1_000_000_000_000;

/// A price per token, in pico-dollars (1e-12 USD): numerically the same as
/// micro-dollars per million tokens.
///
/// In configuration it is written in USD per million tokens, as a number
/// (`2.5`) or a string (`"2.50"`), with at most 6 decimals.
///
/// ```
/// use tollgate::budget::TokenPrice;
///
/// let price: TokenPrice = "2.50".parse().unwrap(); // $2.50 per 1M tokens
/// assert_eq!(price.pico_usd(), 2_500_000);
/// assert_eq!(price.to_string(), "$2.50/1M");
/// assert_eq!(TokenPrice::from_usd_per_million(0.075).unwrap().pico_usd(), 75_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TokenPrice(u64);

impl TokenPrice {
    /// Free.
    pub const ZERO: TokenPrice = TokenPrice(0);

    /// From pico-dollars per token (= micro-dollars per million tokens).
    pub const fn from_pico_usd(pico: u64) -> TokenPrice {
        TokenPrice(pico)
    }

    /// From a float of USD per million tokens, rounded to the nearest
    /// pico-dollar per token. Negative, non-finite or absurd (over a million
    /// dollars per million tokens) prices are refused.
    pub fn from_usd_per_million(usd: f64) -> Result<TokenPrice, InvalidPrice> {
        if !usd.is_finite() || !(0.0..=1_000_000.0).contains(&usd) {
            return Err(InvalidPrice(usd.to_string()));
        }
        Ok(TokenPrice((usd * 1e6).round() as u64))
    }

    /// Pico-dollars per token.
    pub const fn pico_usd(self) -> u64 {
        self.0
    }

    /// The cost of `tokens` tokens, in pico-dollars.
    const fn picos(self, tokens: u64) -> u128 {
        self.0 as u128 * tokens as u128
    }
}

impl fmt::Display for TokenPrice {
    /// `$2.50/1M`: USD per million tokens, exact.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut digits = format!("{:06}", self.0 % 1_000_000);
        while digits.len() > 2 && digits.ends_with('0') {
            digits.pop();
        }
        write!(f, "${}.{digits}/1M", self.0 / 1_000_000)
    }
}

/// A price that cannot be read or is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid token price {0:?}: expected USD per million tokens, a non-negative decimal with at most 6 decimals (e.g. 2.50)"
)]
pub struct InvalidPrice(String);

impl FromStr for TokenPrice {
    type Err = InvalidPrice;

    /// Reads USD per million tokens exactly: `2.50`, `$0.075`, `15`.
    fn from_str(s: &str) -> Result<TokenPrice, InvalidPrice> {
        super::money::parse_fixed(s.trim(), 6)
            .map(TokenPrice)
            .ok_or_else(|| InvalidPrice(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for TokenPrice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TokenPrice, D::Error> {
        struct PriceVisitor;
        impl serde::de::Visitor<'_> for PriceVisitor {
            type Value = TokenPrice;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("USD per million tokens, as a number or a decimal string")
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<TokenPrice, E> {
                v.checked_mul(1_000_000)
                    .map(TokenPrice)
                    .ok_or_else(|| E::custom(InvalidPrice(v.to_string())))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<TokenPrice, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(InvalidPrice(v.to_string())))
                    .and_then(|v| self.visit_u64(v))
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<TokenPrice, E> {
                TokenPrice::from_usd_per_million(v).map_err(E::custom)
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TokenPrice, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(PriceVisitor)
    }
}

impl Serialize for TokenPrice {
    /// As a decimal string of USD per million tokens (exact, unlike a float).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = self.to_string();
        let text = text.trim_start_matches('$').trim_end_matches("/1M");
        s.serialize_str(text)
    }
}

/// The price of one model.
///
/// In configuration (TOML shown; any serde format works):
///
/// ```
/// use tollgate::budget::{ModelPrice, TokenPrice};
///
/// let price: ModelPrice = toml::from_str(r#"
///     input = 2.50          # USD per million prompt tokens
///     output = "10.00"      # USD per million completion tokens
///     cached_input = 1.25   # USD per million cached prompt tokens (default: input)
///     max_output_tokens = 16384
/// "#).unwrap();
/// assert_eq!(price.output, TokenPrice::from_pico_usd(10_000_000));
///
/// // 1,000 prompt tokens (200 of them cached) and 500 completion tokens:
/// // 800 × $2.50/1M + 200 × $1.25/1M + 500 × $10/1M = $0.00725
/// assert_eq!(price.cost_of(1_000, 200, 500).to_string(), "$0.00725");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// USD per million prompt (input) tokens (also read as
    /// `input_usd_per_million`).
    #[serde(alias = "input_usd_per_million")]
    pub input: TokenPrice,
    /// USD per million completion (output) tokens, reasoning tokens included
    /// (also read as `output_usd_per_million`).
    #[serde(alias = "output_usd_per_million")]
    pub output: TokenPrice,
    /// USD per million cached prompt tokens; `None` charges them as `input`
    /// (also read as `cached_input_usd_per_million`).
    #[serde(
        default,
        alias = "cached_input_usd_per_million",
        skip_serializing_if = "Option::is_none"
    )]
    pub cached_input: Option<TokenPrice>,
    /// Output tokens to reserve for when a request sets no `max_tokens`
    /// (default [`ModelPrice::DEFAULT_MAX_OUTPUT_TOKENS`]). Set it to the
    /// model's real output limit: a reservation below what the model can
    /// produce lets a request overshoot its budget by the difference.
    #[serde(default = "default_max_output")]
    pub max_output_tokens: u64,
}

fn default_max_output() -> u64 {
    ModelPrice::DEFAULT_MAX_OUTPUT_TOKENS
}

impl ModelPrice {
    /// Reserved output tokens when neither the request nor the price says: 4,096.
    pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4_096;

    /// A free model (used for unpriced models charged zero).
    pub const FREE: ModelPrice = ModelPrice {
        input: TokenPrice::ZERO,
        output: TokenPrice::ZERO,
        cached_input: None,
        max_output_tokens: ModelPrice::DEFAULT_MAX_OUTPUT_TOKENS,
    };

    /// `input` and `output` USD per million tokens, as exact decimals.
    ///
    /// ```
    /// use tollgate::budget::ModelPrice;
    /// let price = ModelPrice::per_million("0.15", "0.60")?.cached_input("0.075")?.max_output_tokens(16_384);
    /// assert_eq!(price.cost_of(1_000_000, 0, 0).to_string(), "$0.15");
    /// # Ok::<(), tollgate::budget::InvalidPrice>(())
    /// ```
    pub fn per_million(input: &str, output: &str) -> Result<ModelPrice, InvalidPrice> {
        Ok(ModelPrice {
            input: input.parse()?,
            output: output.parse()?,
            ..ModelPrice::FREE
        })
    }

    /// Sets the cached-input price (USD per million tokens).
    pub fn cached_input(mut self, usd_per_million: &str) -> Result<ModelPrice, InvalidPrice> {
        self.cached_input = Some(usd_per_million.parse()?);
        Ok(self)
    }

    /// Sets the output tokens reserved when a request sets no `max_tokens`.
    pub fn max_output_tokens(mut self, tokens: u64) -> ModelPrice {
        self.max_output_tokens = tokens;
        self
    }

    /// The cost of `prompt_tokens` (of which `cached_tokens` were served
    /// from the provider's cache) and `completion_tokens`, rounded up to the
    /// nano-dollar.
    pub fn cost_of(&self, prompt_tokens: u64, cached_tokens: u64, completion_tokens: u64) -> Money {
        let cached = cached_tokens.min(prompt_tokens);
        let picos = self.input.picos(prompt_tokens - cached)
            + self.cached_input.unwrap_or(self.input).picos(cached)
            + self.output.picos(completion_tokens);
        picos_to_money(picos)
    }

    /// The worst case of a request: its prompt estimate as uncached input
    /// plus `max_tokens` (or [`max_output_tokens`](Self::max_output_tokens))
    /// of output.
    pub fn worst_case(&self, prompt_tokens_estimate: u64, max_tokens: Option<u64>) -> Money {
        self.cost_of(
            prompt_tokens_estimate,
            0,
            max_tokens.unwrap_or(self.max_output_tokens),
        )
    }
}

/// Pico-dollars to nano-dollars, rounded up, saturating.
fn picos_to_money(picos: u128) -> Money {
    let nanos = picos.div_ceil(PICOS_PER_USD / 1_000_000_000);
    Money::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
}

/// Prices per model name.
///
/// A name ending in `*` prices every model it prefixes (`gpt-4o-*` covers
/// `gpt-4o-2024-08-06`); an exact name wins over a prefix, a longer prefix
/// over a shorter one.
///
/// Loadable from configuration as a map of model name to [`ModelPrice`]:
///
/// ```
/// use tollgate::budget::Pricing;
///
/// let pricing: Pricing = toml::from_str(r#"
///     [gpt-4o]
///     input = 2.50
///     output = 10.00
///     cached_input = 1.25
///     max_output_tokens = 16384
///
///     ["gpt-4o-mini*"]
///     input = 0.15
///     output = 0.60
/// "#).unwrap();
/// assert!(pricing.get("gpt-4o").is_some());
/// assert_eq!(pricing.get("gpt-4o-mini-2024-07-18").unwrap().output.to_string(), "$0.60/1M");
/// assert!(pricing.get("claude-3-opus").is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Pricing {
    // A fixed table read on every metered request: foldhash, seeded per
    // table, rather than SipHash (requests look entries up, never add them).
    models: HashMap<Arc<str>, ModelPrice, foldhash::fast::RandomState>,
}

impl Pricing {
    /// No prices.
    pub fn new() -> Pricing {
        Pricing::default()
    }

    /// Adds (or replaces) the price of `model` (a name, or a prefix ending in `*`).
    pub fn with(mut self, model: impl Into<String>, price: ModelPrice) -> Pricing {
        self.insert(model, price);
        self
    }

    /// Adds (or replaces) the price of `model`, returning the old one.
    pub fn insert(&mut self, model: impl Into<String>, price: ModelPrice) -> Option<ModelPrice> {
        self.models.insert(Arc::from(model.into()), price)
    }

    /// Reads prices from JSON: `{"gpt-4o": {"input": 2.5, "output": 10}}`.
    pub fn from_json(json: &str) -> Result<Pricing, PricingError> {
        serde_json::from_str(json).map_err(|e| PricingError(e.to_string()))
    }

    /// The price of `model`: its exact entry, else the longest matching prefix.
    pub fn get(&self, model: &str) -> Option<&ModelPrice> {
        self.get_named(model).map(|(_, price)| price)
    }

    /// [`get`](Pricing::get), with the model's name as a shared string when
    /// its entry is exact (`None` for a prefix match): what a spend
    /// [`Attribution`](super::Attribution) keeps without copying the name.
    pub fn get_named(&self, model: &str) -> Option<(Option<&Arc<str>>, &ModelPrice)> {
        if let Some((name, price)) = self.models.get_key_value(model) {
            return Some((Some(name), price));
        }
        self.models
            .iter()
            .filter_map(|(name, price)| {
                let prefix = name.strip_suffix('*')?;
                model.starts_with(prefix).then_some((prefix.len(), price))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, price)| (None, price))
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ModelPrice)> {
        self.models.iter().map(|(name, price)| (&**name, price))
    }
}

impl<K: Into<String>> FromIterator<(K, ModelPrice)> for Pricing {
    fn from_iter<I: IntoIterator<Item = (K, ModelPrice)>>(iter: I) -> Pricing {
        Pricing {
            models: iter
                .into_iter()
                .map(|(k, v)| (Arc::from(k.into()), v))
                .collect(),
        }
    }
}

/// A pricing configuration that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pricing configuration: {0}")]
pub struct PricingError(String);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_exact_decimals() {
        assert_eq!("2.5".parse::<TokenPrice>().unwrap().pico_usd(), 2_500_000);
        assert_eq!("$0.000001".parse::<TokenPrice>().unwrap().pico_usd(), 1);
        assert_eq!(".5".parse::<TokenPrice>().unwrap().pico_usd(), 500_000);
        for bad in [
            "",
            ".",
            "-1",
            "1.0000001",
            "1e3",
            "abc",
            "99999999999999999999",
        ] {
            assert!(bad.parse::<TokenPrice>().is_err(), "{bad}");
        }
        assert!(TokenPrice::from_usd_per_million(-0.1).is_err());
        assert!(TokenPrice::from_usd_per_million(f64::NAN).is_err());
    }

    #[test]
    fn displays() {
        assert_eq!(
            TokenPrice::from_pico_usd(10_000_000).to_string(),
            "$10.00/1M"
        );
        assert_eq!(TokenPrice::from_pico_usd(75_000).to_string(), "$0.075/1M");
        assert_eq!(TokenPrice::from_pico_usd(1).to_string(), "$0.000001/1M");
        assert_eq!(
            TokenPrice::from_pico_usd(1_234_567).to_string(),
            "$1.234567/1M"
        );
    }

    #[test]
    fn cost_rounds_up_to_the_nano_dollar() {
        // $0.000001 per million = 1e-12 per token: one token costs 1e-12 USD,
        // billed as one nano-dollar.
        let tiny = ModelPrice {
            input: TokenPrice::from_pico_usd(1),
            ..ModelPrice::FREE
        };
        assert_eq!(tiny.cost_of(1, 0, 0), Money::from_nanos(1));
        assert_eq!(tiny.cost_of(1_000, 0, 0), Money::from_nanos(1));
        assert_eq!(tiny.cost_of(1_001, 0, 0), Money::from_nanos(2));
        assert_eq!(tiny.cost_of(0, 0, 0), Money::ZERO);
        // Cached tokens beyond the prompt are not charged twice.
        let p = ModelPrice::per_million("2", "8").unwrap();
        assert_eq!(p.cost_of(10, 50, 0), p.cost_of(10, 0, 0));
        // Saturates instead of wrapping.
        let huge = ModelPrice::per_million("1000000", "1000000").unwrap();
        assert_eq!(
            huge.cost_of(u64::MAX, 0, u64::MAX),
            Money::from_nanos(i64::MAX)
        );
    }

    #[test]
    fn worst_case_uses_the_default_max_output() {
        let p = ModelPrice::per_million("1", "2")
            .unwrap()
            .max_output_tokens(1_000);
        assert_eq!(p.worst_case(500, None), p.cost_of(500, 0, 1_000));
        assert_eq!(p.worst_case(500, Some(10)), p.cost_of(500, 0, 10));
    }

    #[test]
    fn loads_from_json_and_rejects_garbage() {
        let pricing = Pricing::from_json(
            r#"{"m":{"input":"3","output":15,"cached_input":0.3},"x*":{"input":1,"output":1}}"#,
        )
        .unwrap();
        assert_eq!(pricing.get("m").unwrap().input.pico_usd(), 3_000_000);
        assert_eq!(pricing.get("m").unwrap().max_output_tokens, 4_096);
        assert!(pricing.get("xyz").is_some());
        for bad in [
            r#"{"m":{"input":-1,"output":1}}"#,
            r#"{"m":{"input":1}}"#,
            r#"{"m":{"input":1,"output":1,"typo":1}}"#,
            r#"{"m":{"input":"1.1234567","output":1}}"#,
        ] {
            let err = Pricing::from_json(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("invalid pricing configuration"),
                "{err}"
            );
        }
        // The long names read the same.
        let long = Pricing::from_json(
            r#"{"m":{"input_usd_per_million":3,"output_usd_per_million":"15","cached_input_usd_per_million":0.3}}"#,
        )
        .unwrap();
        assert_eq!(
            long,
            pricing
                .iter()
                .filter(|(n, _)| *n == "m")
                .map(|(n, p)| (n, *p))
                .collect()
        );
        // Serialises back to exact strings.
        let json = serde_json::to_string(&pricing.get("m").unwrap()).unwrap();
        assert!(json.contains(r#""cached_input":"0.30""#), "{json}");
    }

    #[test]
    fn prefixes_prefer_exact_then_longest() {
        let a = ModelPrice::per_million("1", "1").unwrap();
        let b = ModelPrice::per_million("2", "2").unwrap();
        let c = ModelPrice::per_million("3", "3").unwrap();
        let pricing = Pricing::new()
            .with("gpt-*", a)
            .with("gpt-4o-*", b)
            .with("gpt-4o-mini", c);
        assert_eq!(pricing.get("gpt-4o-mini"), Some(&c));
        assert_eq!(pricing.get("gpt-4o-2024"), Some(&b));
        assert_eq!(pricing.get("gpt-3.5"), Some(&a));
        assert_eq!(pricing.get("o1"), None);
    }

    proptest! {
        #[test]
        fn cost_is_never_below_the_exact_price(
            input in 0u64..100_000_000, output in 0u64..100_000_000,
            prompt in 0u64..10_000_000, completion in 0u64..10_000_000,
        ) {
            let p = ModelPrice { input: TokenPrice(input), output: TokenPrice(output), ..ModelPrice::FREE };
            let exact_picos = input as u128 * prompt as u128 + output as u128 * completion as u128;
            let nanos = p.cost_of(prompt, 0, completion).nanos() as u128;
            prop_assert!(nanos * 1_000 >= exact_picos);
            prop_assert!(nanos * 1_000 < exact_picos + 1_000);
        }

        #[test]
        fn string_round_trips(pico in 0u64..u64::MAX / 2) {
            let p = TokenPrice(pico);
            let s = p.to_string();
            let back: TokenPrice = s.trim_end_matches("/1M").parse().unwrap();
            prop_assert_eq!(back, p);
        }
    }
}
