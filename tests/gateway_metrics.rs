//! `GET /metrics` of the example gateway (a process, the built-in mock):
//! on `metrics_listen` without a key, on the main listener to admin keys
//! only, with the series issue 16 lists, `key` labels only when asked.

#[path = "support/gateway.rs"]
mod gateway_support;
#[path = "support/http.rs"]
mod http_support;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use gateway_support::{Gateway, GatewayCommand};
use http::StatusCode;
use http_support::{HttpClient, call, get, post};
use serde_json::json;

const CONFIG: &str = r#"
upstream = "mock"
stream_idle_timeout_secs = 5

[retry]
max_attempts = 2
initial_backoff_ms = 10
max_backoff_ms = 20

[[models]]
name = "m"
input_usd_per_million = 1.0
output_usd_per_million = 2.0

[[keys]]
id = "ok"
secret = "sk-test-ok"
budget_usd = 10.0
budget_period = "monthly"

[[keys]]
id = "rpm"
secret = "sk-test-rpm"
requests_per_minute = 1
"#;

/// The address the gateway printed for its metrics listener.
fn metrics_addr(gateway: &Gateway) -> SocketAddr {
    let line = gateway.wait_for_stdout(Duration::from_secs(10), "metrics on http://");
    line.trim_start_matches("metrics on http://")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// The value of the series `series` (name and labels, as written) in `text`.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{series} not in:\n{text}"))
}

async fn scrape(client: &HttpClient, url: &str) -> String {
    let answer = call(client, get(url, &[])).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert!(
        answer
            .header("content-type")
            .starts_with("application/openmetrics-text")
    );
    answer.text()
}

fn chat(text: &str, stream: bool) -> serde_json::Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": text}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_series_count_requests_tokens_money_rejections_streams_and_attempts() {
    let gateway = GatewayCommand::new()
        .config(&format!("metrics_listen = \"127.0.0.1:0\"\n{CONFIG}"))
        .start();
    let client = http_support::client();
    let metrics_url = format!("http://{}/metrics", metrics_addr(&gateway));
    let before = scrape(&client, &metrics_url).await;
    // Known series are there from the start, at zero.
    assert_eq!(
        value(
            &before,
            r#"tollgate_requests_total{route="/v1/chat/completions",model="m",status="200"}"#
        ),
        0.0
    );
    assert_eq!(value(&before, "tollgate_streams_active"), 0.0);
    assert_eq!(
        value(
            &before,
            r#"tollgate_store_errors_total{store="ledger",op="settle"}"#
        ),
        0.0
    );

    let url = gateway.url("/v1/chat/completions");
    // 3 prompt tokens, 5 completion ("mock reply: one two three").
    let answer = call(
        &client,
        post(&url, Some("sk-test-ok"), &chat("one two three", false), &[]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = call(
        &client,
        post(&url, Some("sk-test-ok"), &chat("one two three", true), &[]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    // Rejections: a bad key, a rate limit.
    let answer = call(
        &client,
        post(&url, Some("sk-wrong"), &chat("x", false), &[]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    call(
        &client,
        post(&url, Some("sk-test-rpm"), &chat("x", false), &[]),
    )
    .await;
    let answer = call(
        &client,
        post(&url, Some("sk-test-rpm"), &chat("x", false), &[]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    // A stream the upstream cuts, and an upstream that always fails.
    let answer = call(
        &client,
        post(
            &url,
            Some("sk-test-ok"),
            &chat("a b c d e MOCK:cut_after=2", true),
            &[],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = call(
        &client,
        post(
            &url,
            Some("sk-test-ok"),
            &chat("x MOCK:status=500", false),
            &[],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    // Every access-log line is written (and so every request counted).
    gateway.wait_for_log(Duration::from_secs(10), |l| {
        l["message"] == "request" && l["status"] == 500
    });

    let text = scrape(&client, &metrics_url).await;
    let series = |s: &str| value(&text, s);
    assert_eq!(
        series(r#"tollgate_requests_total{route="/v1/chat/completions",model="m",status="200"}"#),
        4.0
    );
    assert_eq!(
        series(r#"tollgate_requests_total{route="/v1/chat/completions",model="-",status="401"}"#),
        1.0
    );
    assert_eq!(
        series(r#"tollgate_requests_total{route="/v1/chat/completions",model="m",status="429"}"#),
        1.0
    );
    assert_eq!(series(r#"tollgate_rejections_total{reason="auth"}"#), 1.0);
    assert_eq!(
        series(r#"tollgate_rejections_total{reason="rate_limit"}"#),
        1.0
    );
    assert!(series(r#"tollgate_tokens_total{model="m",kind="prompt"}"#) >= 6.0);
    assert!(series(r#"tollgate_tokens_total{model="m",kind="completion"}"#) >= 10.0);
    // The two full answers cost 2 × (3 × $1 + 5 × $2) per million.
    assert!(series(r#"tollgate_spend_usd_total{model="m"}"#) >= 0.000026 - 1e-12);
    assert_eq!(
        series(r#"tollgate_request_duration_seconds_count{route="/v1/chat/completions"}"#),
        7.0
    );
    assert_eq!(series("tollgate_streams_active"), 0.0);
    assert_eq!(
        series(r#"tollgate_stream_errors_total{reason="upstream_failed"}"#),
        1.0
    );
    // The streams that ended as they should are no errors.
    assert_eq!(
        series(r#"tollgate_stream_errors_total{reason="client_closed"}"#),
        0.0
    );
    assert_eq!(
        series(r#"tollgate_upstream_attempts_total{upstream="default",outcome="server_error"}"#),
        2.0
    );
    assert!(
        series(r#"tollgate_upstream_attempts_total{upstream="default",outcome="success"}"#) >= 4.0
    );
    assert!(series(r#"tollgate_upstream_duration_seconds_count{upstream="default"}"#) >= 6.0);
    // No key label unless asked for; no key id, no secret.
    assert!(
        !text.contains("key=") && !text.contains("sk-test"),
        "{text}"
    );
    // Not on the main listener without admin keys.
    let answer = call(&client, get(&gateway.url("/metrics"), &[])).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_main_listener_only_admin_keys_read_them_and_key_labels_are_opt_in() {
    let gateway = GatewayCommand::new()
        .config(&format!(
            "admin_keys = [\"sk-admin-0123456789\"]\nmetrics_per_key = true\n{CONFIG}"
        ))
        .start();
    let client = http_support::client();
    let url = gateway.url("/metrics");
    let answer = call(&client, get(&url, &[])).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let answer = call(
        &client,
        get(&url, &[("authorization", "Bearer sk-test-ok")]),
    )
    .await;
    // A tenant's key on an admin route: 403, as for `/admin/*`.
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    let answer = call(
        &client,
        post(
            &gateway.url("/v1/chat/completions"),
            Some("sk-test-ok"),
            &chat("hi", false),
            &[],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    gateway.wait_for_log(Duration::from_secs(10), |l| {
        l["message"] == "request" && l["key"] == "ok"
    });
    let answer = call(
        &client,
        get(&url, &[("authorization", "Bearer sk-admin-0123456789")]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let text = answer.text();
    assert_eq!(
        value(
            &text,
            r#"tollgate_requests_total{route="/v1/chat/completions",model="m",status="200",key="ok"}"#
        ),
        1.0
    );
    assert!(value(&text, r#"tollgate_spend_usd_total{model="m",key="ok"}"#) > 0.0);
    assert!(
        !text.contains("sk-admin") && !text.contains("sk-test"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_stream_is_counted_and_its_stream_closed() {
    use http_body_util::BodyExt;

    let gateway = GatewayCommand::new()
        .config(&format!("metrics_listen = \"127.0.0.1:0\"\n{CONFIG}"))
        .start();
    let client = http_support::client();
    let metrics_url = format!("http://{}/metrics", metrics_addr(&gateway));
    let body = chat("one two three four five six MOCK:delay_ms=200", true);
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(post(
            &gateway.url("/v1/chat/completions"),
            Some("sk-test-ok"),
            &body,
            &[],
        )),
    )
    .await
    .expect("answered in time")
    .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("a first frame in time");
    assert!(first.is_some());
    assert_eq!(
        value(
            &scrape(&client, &metrics_url).await,
            "tollgate_streams_active"
        ),
        1.0
    );
    // The client goes away in the middle of the stream.
    drop(body);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(&client, &metrics_url).await;
        let closed = value(
            &text,
            r#"tollgate_stream_errors_total{reason="client_closed"}"#,
        );
        if closed == 1.0 && value(&text, "tollgate_streams_active") == 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not counted in time:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
