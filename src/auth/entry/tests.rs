use super::*;
use crate::budget::{BudgetMode, Period};
use crate::rate_limit::Limit;

fn entry(json: &str) -> Result<KeyRecord, String> {
    let entry: KeyEntry = serde_json::from_str(json).map_err(|e| e.to_string())?;
    entry.into_record().map_err(|e| e.to_string())
}

#[test]
fn full_entry() {
    let r = entry(
        r#"{"id":"a","name":"A","secret":"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "created_at":"2026-01-01T00:00:00Z","expires_at":"2026-04-01T00:00:00Z",
            "disabled":true,"models":["gpt-*"],"requests_per_minute":60,"tokens_per_minute":1000,
            "max_concurrent":4,"budget_usd":"12.5","budget_period":"daily","balance_usd":3,
            "team":"t","org":"o","metadata":{"owner":"x"}}"#,
    )
    .unwrap();
    assert_eq!(r.secret_hash, KeyHash::of("abc"));
    assert!(r.disabled && !r.revoked);
    assert_eq!(
        r.rate_limits,
        [
            Limit::requests_per_minute(60),
            Limit::tokens_per_minute(1000)
        ]
    );
    assert_eq!(r.budgets[0].limit, Money::from_nanos(12_500_000_000));
    assert_eq!(r.budgets[0].period, Period::Daily);
    assert_eq!(r.budgets[1].mode, BudgetMode::Balance);
    assert_eq!(r.metadata["owner"], "x");
    // And back.
    let back = KeyEntry::from_record(&r);
    assert_eq!(back.budget_usd, Some(Money::from_nanos(12_500_000_000)));
    let again = back.into_record().unwrap();
    assert_eq!(again, r);
}

#[test]
fn errors_name_the_field_and_not_the_secret() {
    // Fields after an `id` and a `secret`, and the field each error names.
    let with_secret = [
        (r#""expires_at":"tomorrow""#, "expires_at"),
        (r#""budget_period":"daily""#, "budget_period"),
        (
            r#""budget_usd":5,"budget_period":"hourly""#,
            "budget_period",
        ),
        (r#""requests_per_minute":0"#, "requests_per_minute"),
        (r#""requests_per_minute":-1"#, "requests_per_minute"),
        (r#""budget_usd":"lots""#, "budget_usd"),
        (r#""bogus":1"#, "bogus"),
        (r#""revoked":1"#, "revoked"),
    ]
    .map(|(fields, field)| (format!(r#"{{"id":"a","secret":"s",{fields}}}"#), field));
    let cases = [
        (r#"{"id":"a"}"#, "secret"),
        (
            r#"{"id":"a","secret":"sk-hunter2","secret_sha256":"00"}"#,
            "secret",
        ),
        (
            r#"{"id":"a","secret_sha256":"sk-hunter2"}"#,
            "secret_sha256",
        ),
        (r#"{"id":"a","secret":"sha256:sk-hunter2"}"#, "secret"),
        (r#"{"id":"a b","secret":"s"}"#, "id"),
    ]
    .map(|(json, field)| (json.to_owned(), field));
    for (json, field) in cases.into_iter().chain(with_secret) {
        let err = entry(&json).unwrap_err();
        assert!(err.contains(&format!("`{field}`")), "{json}: {err}");
        assert!(!err.contains("hunter2"), "{json}: {err}");
        assert_eq!(
            err.matches(" at line ").count().min(1),
            err.matches(" at line ").count()
        );
    }
}

#[test]
fn debug_redacts_the_secret() {
    let e: KeyEntry = serde_json::from_str(r#"{"id":"a","secret":"sk-hunter2"}"#).unwrap();
    assert!(!format!("{e:?}").contains("hunter2"));
}
