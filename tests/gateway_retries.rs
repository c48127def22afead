//! Retries that never stack (issue 20), through the example gateway in
//! front of a mock upstream that counts its calls: the official `openai`
//! and `anthropic` SDKs, with their default retries, make the upstream see
//! at most the gateway's `max_attempts` calls per request; a wrong upstream
//! key reaches them as a 5xx, never as their own `AuthenticationError`.

#[path = "support/gateway.rs"]
mod gateway_support;
#[path = "support/http.rs"]
mod http_support;
#[path = "../examples/support/mock/mod.rs"]
mod mock;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use gateway_support::GatewayCommand;

const MAX_ATTEMPTS: u32 = 3;
const UPSTREAM_KEY: &str = "sk-up-right-0123";

fn config(mock_url: &str, key: &str) -> String {
    format!(
        r#"
upstream = "{mock_url}/v1"
upstream_api_key = "{key}"
request_timeout_secs = 20

[retry]
max_attempts = {MAX_ATTEMPTS}
initial_backoff_ms = 10
max_backoff_ms = 50
max_retry_after_secs = 5

[[upstreams]]
name = "claude"
url = "{mock_url}/v1"
kind = "anthropic"
api_key = "{key}"

[[models]]
name = "gpt"
input_usd_per_million = 1.0
output_usd_per_million = 1.0

[[models]]
name = "claude"
upstream = "claude"
input_usd_per_million = 1.0
output_usd_per_million = 1.0

[[keys]]
id = "ok"
secret = "sk-test-ok"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdks_with_default_retries_never_multiply_the_gateways_attempts() {
    let mock = mock::Mock::new(vec![]).require_key(UPSTREAM_KEY);
    let addr = mock
        .clone()
        .serve(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("the mock binds");
    let mock_url = format!("http://{addr}");
    let good = GatewayCommand::new()
        .config(&config(&mock_url, UPSTREAM_KEY))
        .start();
    let bad = GatewayCommand::new()
        .config(&config(&mock_url, "sk-up-wrong-4567"))
        .start();
    http_support::run_sdk_script(
        "gateway_retries.py",
        vec![
            ("TOLLGATE_BASE_URL", good.base_url()),
            ("TOLLGATE_BAD_BASE_URL", bad.base_url()),
            ("MOCK_URL", mock_url),
            ("MAX_ATTEMPTS", MAX_ATTEMPTS.to_string()),
        ],
        Duration::from_secs(180),
    )
    .await;
    // The gateway's own credentials failing is logged (without the key)
    // for the operator, who can fix it.
    let line = bad.wait_for_log(Duration::from_secs(10), |l| {
        l["message"] == "the upstream refused the gateway's own credentials or quota"
    });
    assert_eq!(line["fault"], "Credentials", "{line}");
    assert!(
        !bad.stderr().contains("sk-up-wrong-4567"),
        "{}",
        bad.stderr()
    );
}
