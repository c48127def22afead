//! What the admin API, the key grants and the stores need of the file:
//! top-up bounds, admin keys, the budget policy, and keys checked as the
//! grants will build them.

use serde::Deserialize;

use super::{Config, ConfigError};

/// A dollar amount in the file: a number (`10`, `0.5`) or a decimal string
/// (`"12.50"`, exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usd(pub tollgate::budget::Money);

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Amount {
            Integer(i64),
            Number(f64),
            Text(String),
        }
        use serde::de::Error;
        match Amount::deserialize(deserializer)? {
            Amount::Integer(usd) => usd
                .checked_mul(1_000_000_000)
                .map(|nanos| Usd(tollgate::budget::Money::from_nanos(nanos)))
                .ok_or_else(|| D::Error::custom("the amount is too large")),
            Amount::Number(usd) if usd.is_finite() && usd.abs() < 9.0e9 => {
                Ok(Usd(tollgate::budget::Money::from_usd_f64(usd)))
            }
            Amount::Number(_) => Err(D::Error::custom(
                "the amount is not a finite number below 9e9",
            )),
            Amount::Text(text) => text.parse().map(Usd).map_err(D::Error::custom),
        }
    }
}

pub(super) fn default_min_top_up() -> Usd {
    // HiveOps: "Minimum top-up: $10, Maximum: $1,000 per transaction".
    Usd(tollgate::budget::Money::from_usd(10))
}

pub(super) fn default_max_top_up() -> Usd {
    Usd(tollgate::budget::Money::from_usd(1000))
}

pub(super) fn default_store_timeout() -> u64 {
    250
}

pub(super) fn default_budget_policy() -> String {
    "bounded".into()
}

impl Config {
    /// Checks the admin keys, the top-up bounds, the budget policy and every
    /// `[[keys]]` entry (as a grant would build it: an expired, revoked or
    /// disabled key is valid, a key whose fields contradict each other is
    /// not). Errors name the field, never a secret.
    pub(super) fn validate_admin(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        for (i, key) in self.admin_keys.iter().enumerate() {
            let key = key.expose();
            if key.len() < 16 || key.trim() != key {
                return Err(invalid(format!(
                    "admin_keys[{i}]: must be at least 16 characters, without surrounding spaces (value not shown)"
                )));
            }
        }
        for (i, hex) in self.admin_key_sha256s.iter().enumerate() {
            if tollgate::auth::KeyHash::from_hex(hex).is_err() {
                return Err(invalid(format!(
                    "admin_key_sha256s[{i}]: must be 64 hex digits (a SHA-256)"
                )));
            }
        }
        let (min, max) = (self.min_top_up_usd.0, self.max_top_up_usd.0);
        if min <= tollgate::budget::Money::ZERO {
            return Err(invalid("min_top_up_usd: must be more than 0".into()));
        }
        if max < min {
            return Err(invalid(
                "max_top_up_usd: must not be less than min_top_up_usd".into(),
            ));
        }
        if self.store_timeout_ms == 0 {
            return Err(invalid("store_timeout_ms: must be at least 1".into()));
        }
        if !matches!(self.budget_policy.as_str(), "bounded" | "strict") {
            return Err(invalid(format!(
                "budget_policy: expected bounded or strict, got {:?}",
                self.budget_policy
            )));
        }
        let mut secrets = std::collections::HashMap::new();
        for (i, key) in self.keys.iter().enumerate() {
            let record = key
                .clone()
                .into_record()
                .map_err(|e| invalid(format!("keys[{i}]: {e}")))?;
            let scope = tollgate::budget::BudgetScope::Key(record.id.clone());
            one_kind_of_money(&record.budgets, &scope)
                .map_err(|e| invalid(format!("keys[{i}]: {e}")))?;
            if let Some(other) = secrets.insert(record.secret_hash, key.id.as_str()) {
                return Err(invalid(format!(
                    "keys[{i}].secret: key {:?} has the same secret as key {other:?}",
                    key.id
                )));
            }
        }
        Ok(())
    }

    /// The reserve policy of `budget_policy`.
    pub fn reserve_policy(&self) -> tollgate::budget::ReservePolicy {
        match self.budget_policy.as_str() {
            "strict" => tollgate::budget::ReservePolicy::Strict,
            _ => tollgate::budget::ReservePolicy::Bounded,
        }
    }
}

/// Refuses a key (or a user, team or org) with both a budget
/// (`budget_usd`) and a prepaid balance (`balance_usd`) of its own scope:
/// the ledgers keep one account per scope, so the two would overwrite each
/// other's books.
pub fn one_kind_of_money(
    budgets: &[tollgate::budget::BudgetSpec],
    scope: &tollgate::budget::BudgetScope,
) -> Result<(), String> {
    let own = |mode| budgets.iter().any(|b| b.mode == mode && b.scope == *scope);
    if own(tollgate::budget::BudgetMode::Budget) && own(tollgate::budget::BudgetMode::Balance) {
        return Err(format!(
            "{} `{}`: `balance_usd` and `budget_usd` are both set: keep one (its budget and \
             balance would share one account in the ledger)",
            scope.kind_name(),
            scope.name()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    const SECRET: &str = "sk-hunter2-0123456789";

    fn error_of(toml: &str) -> String {
        Config::from_toml(toml, "test.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_on_a_secret_line_show_neither_the_line_nor_the_value() {
        for toml in [
            format!("upstream_api_key = {SECRET}\n"),
            format!("upstream_api_key = \"{SECRET}\n"),
            format!("admin_keys = [\n  \"{SECRET}\",\n  {SECRET}\n]\n"),
            format!("[[keys]]\nid = \"a\"\nsecret = [\"{SECRET}\"]\n"),
            format!("[[keys]]\nid = \"a\"\nsecret = \"{SECRET}\"\nsecret = \"{SECRET}\"\n"),
            format!("admin_keys = [\"{SECRET}\", 7]\n"),
        ] {
            let err = error_of(&toml);
            assert!(!err.contains("hunter2"), "{toml}\n→ {err}");
            assert!(err.contains("line "), "{err}");
        }
    }

    #[test]
    fn other_errors_keep_the_parsers_message_with_its_line() {
        let err = error_of("listen = \"127.0.0.1:1\"\nbogus = 1\n");
        assert!(err.contains("line 2") && err.contains("bogus"), "{err}");
        let err = error_of("shutdown_grace_secs = \"soon\"\n");
        assert!(err.contains("line 1") && err.contains("soon"), "{err}");
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let config = Config::from_toml(
            &format!(
                "upstream_api_key = \"{SECRET}\"\nadmin_keys = [\"{SECRET}-admin\"]\n\n[[keys]]\nid = \"a\"\nsecret = \"{SECRET}-key\"\n"
            ),
            "test.toml",
        )
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert_eq!(config.admin_keys[0].expose(), &format!("{SECRET}-admin"));
    }

    #[test]
    fn keys_in_any_state_load_and_contradictions_name_their_line() {
        let config = Config::from_toml(
            "[[keys]]\nid = \"old\"\nsecret = \"sk-old-0123456789\"\nexpires_at = \"2020-01-01T00:00:00Z\"\nrevoked = true\ndisabled = true\n",
            "test.toml",
        );
        assert!(config.is_ok(), "{config:?}");
        let err = error_of(
            "[[keys]]\nid = \"a\"\nsecret = \"sk-a-0123456789\"\n\n[[keys]]\nid = \"b\"\nsecret = \"sk-b-0123456789\"\ncreated_at = \"2021-01-01T00:00:00Z\"\nexpires_at = \"2020-01-01T00:00:00Z\"\n",
        );
        assert!(
            err.contains("line 5") && err.contains("expires_at"),
            "{err}"
        );
        let err = error_of(
            "[[keys]]\nid = \"a\"\nsecret = \"sk-same-0123456789\"\n[[keys]]\nid = \"b\"\nsecret = \"sk-same-0123456789\"\n",
        );
        assert!(
            err.contains("line 4") && err.contains("same secret"),
            "{err}"
        );
        assert!(!err.contains("sk-same"), "{err}");
    }

    #[test]
    fn admin_fields_are_checked() {
        assert!(error_of("admin_keys = [\"short\"]\n").contains("admin_keys[0]"));
        assert!(!error_of("admin_keys = [\"short\"]\n").contains("short\""));
        assert!(error_of("admin_key_sha256s = [\"abc\"]\n").contains("admin_key_sha256s[0]"));
        assert!(error_of("min_top_up_usd = 20\nmax_top_up_usd = 10\n").contains("max_top_up_usd"));
        assert!(error_of("budget_policy = \"loose\"\n").contains("budget_policy"));
        let config = Config::from_toml("min_top_up_usd = \"2.50\"\n", "t").unwrap();
        assert_eq!(config.min_top_up_usd.0.to_decimal(), "2.50");
    }
}
