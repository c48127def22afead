//! The example gateway's `--proxy-only` mode (the load bench's baseline,
//! `examples/gateway/proxy_only.rs`), as a process in front of a mock
//! upstream: every request goes through with the gateway's upstream key and
//! none of tollgate's layers (no key asked, no limit or budget headers), and
//! the mode says so in its log.

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
use http::StatusCode;
use http_support::{call, post};
use serde_json::json;

const UPSTREAM_KEY: &str = "sk-proxy-only-upstream-0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_only_forwards_with_the_upstream_key_and_no_layer() {
    let mock = mock::Mock::new(vec![]).require_key(UPSTREAM_KEY);
    let addr = mock
        .clone()
        .serve(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("the mock binds");
    let config = format!(
        r#"
upstream = "http://{addr}/v1"
upstream_api_key = "{UPSTREAM_KEY}"

[[models]]
name = "m"
input_usd_per_million = 1.0
output_usd_per_million = 1.0

[[keys]]
id = "k"
secret = "sk-test-proxy-only"
requests_per_minute = 1
"#
    );
    let gateway = GatewayCommand::new()
        .config(&config)
        .arg("--proxy-only")
        .start();
    let client = http_support::client();
    let url = gateway.url("/v1/chat/completions");
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    // No key, and more requests than the key's limit: nothing is checked.
    for _ in 0..3 {
        let answer = call(&client, post(&url, None, &body, &[])).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(answer.json()["object"], "chat.completion");
        for name in ["x-ratelimit-limit-requests", "x-budget-remaining-usd"] {
            assert!(answer.headers.get(name).is_none(), "{name} in proxy-only");
        }
    }
    // The mock refuses any other key, so three calls prove the gateway's key.
    assert_eq!(mock.calls().route("/v1/chat/completions"), 3);
    gateway.wait_for_text(Duration::from_secs(10), "proxy-only mode");
    assert!(
        !gateway.stderr().contains(UPSTREAM_KEY),
        "the upstream key leaked"
    );
}
