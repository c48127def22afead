//! The metrics module's unit tests: handles, labels, reasons, admin keys.

use std::time::Duration;

use tollgate::ApiError;
use tollgate::usage::Usage;

use super::*;

fn config(toml: &str) -> Config {
    toml::from_str(toml).unwrap()
}

const MODELS: &str =
    "[[models]]\nname = \"m\"\ninput_usd_per_million = 1.0\noutput_usd_per_million = 2.0\n";

#[test]
fn known_series_are_there_from_the_start_and_counted_by_handle() {
    let metrics = Metrics::new();
    let requests = metrics.requests(&config(MODELS));
    let text = metrics.render();
    assert!(
        text.contains(
            r#"tollgate_requests_total{route="/v1/chat/completions",model="m",status="200"} 0"#
        ),
        "{text}"
    );
    let usage = Usage {
        prompt_tokens: 3,
        completion_tokens: 5,
        total_tokens: 8,
        ..Usage::default()
    };
    requests.record(&Completed {
        route: "/v1/chat/completions",
        model: Some("m"),
        key: Some("k1"),
        status: 200,
        elapsed: Duration::from_millis(20),
        usage: Some(&usage),
        cost_usd: 0.000013,
        rejection: None,
    });
    // An unusual status, and a model a client made up.
    requests.record(&Completed {
        route: "/v1/chat/completions",
        model: Some("invented"),
        key: None,
        status: 418,
        elapsed: Duration::from_millis(1),
        usage: None,
        cost_usd: 0.0,
        rejection: Some("invalid"),
    });
    let text = metrics.render();
    for line in [
        r#"tollgate_requests_total{route="/v1/chat/completions",model="m",status="200"} 1"#,
        r#"tollgate_requests_total{route="/v1/chat/completions",model="-",status="418"} 1"#,
        r#"tollgate_tokens_total{model="m",kind="completion"} 5"#,
        r#"tollgate_spend_usd_total{model="m"} 0.000013"#,
        r#"tollgate_rejections_total{reason="invalid"} 1"#,
        r#"tollgate_request_duration_seconds_count{route="/v1/chat/completions"} 2"#,
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(!text.contains("k1") && !text.contains("invented"), "{text}");
}

#[test]
fn a_key_label_only_when_asked() {
    let metrics = Metrics::new();
    let requests = metrics.requests(&config(&format!("metrics_per_key = true\n{MODELS}")));
    requests.record(&Completed {
        route: "/v1/embeddings",
        model: Some("m"),
        key: Some("k1"),
        status: 200,
        elapsed: Duration::from_millis(1),
        usage: None,
        cost_usd: 0.0,
        rejection: None,
    });
    let text = metrics.render();
    assert!(
        text.contains(
            r#"tollgate_requests_total{route="/v1/embeddings",model="m",status="200",key="k1"} 1"#
        ),
        "{text}"
    );
}

#[test]
fn rejections_have_reasons() {
    let reason = |e: ApiError| rejection_reason(&e);
    assert_eq!(reason(ApiError::authentication()), Some("auth"));
    assert_eq!(reason(ApiError::invalid_model()), Some("model"));
    assert_eq!(
        reason(ApiError::permission_denied().with_code("model_not_allowed")),
        Some("model")
    );
    assert_eq!(reason(ApiError::rate_limited()), Some("rate_limit"));
    assert_eq!(
        reason(ApiError::rate_limited().with_message("Concurrency limit exceeded: 1")),
        Some("concurrency")
    );
    assert_eq!(reason(ApiError::budget_exceeded()), Some("budget"));
    assert_eq!(reason(ApiError::insufficient_balance()), Some("balance"));
    assert_eq!(reason(ApiError::invalid_request()), Some("invalid"));
    assert_eq!(reason(ApiError::internal()), None);
}
