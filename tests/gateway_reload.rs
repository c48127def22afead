//! Reloads of the gateway, through the example binary: SIGHUP and `POST
//! /admin/reload` change prices, keys and limits without resetting a
//! counter or a dollar of spend, a stream in flight finishes under the
//! config it started with, and a broken file is refused while the running
//! config keeps serving.

#[path = "support/admin_config.rs"]
mod admin_config;
#[path = "support/gateway.rs"]
mod gateway_support;

use std::time::{Duration, Instant};

use admin_config::{ADMIN, MODEL, admin_url, config};
use gateway_support::{GatewayCommand, Http};
use http::StatusCode;
use serde_json::{Value, json};

/// Writes `text` to `path`, replacing what was there.
fn write(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).expect("the config file is written");
}

#[tokio::test]
async fn a_reload_changes_prices_keeps_counters_and_lets_streams_finish() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("gateway.toml");
    write(&path, &config(1.0));
    let gateway = GatewayCommand::new().config_file(&path).start();
    let http = Http::new();
    let tenant = "sk-tenant-0123456789";

    let before = http.chat(&gateway, tenant, MODEL, "one two three").await;
    assert_eq!(before.headers["x-ratelimit-remaining-requests"], "4");
    // A stream that runs across the reload: 7 words, 300 ms apart.
    let stream = {
        let (http, url) = (http.clone(), gateway.url("/v1/chat/completions"));
        tokio::spawn(async move {
            let body = json!({"model": MODEL, "stream": true,
                "messages": [{"role": "user", "content": "slow MOCK:delay_ms=300"}]});
            http.post(&url, Some(tenant), &body).await
        })
    };
    // Well inside its first event (it takes over 2 s).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Ten times the price, through the admin API.
    write(&path, &config(10.0));
    let reloaded = http
        .post(&admin_url(&gateway, "/reload"), Some(ADMIN), &Value::Null)
        .await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.text);
    assert_eq!(reloaded.json["reloaded"], true);
    let after = http.chat(&gateway, tenant, MODEL, "one two three").await;
    assert_eq!(after.status, StatusCode::OK);
    // The rate-limit counter went on: 5 per minute, three requests made.
    assert_eq!(after.headers["x-ratelimit-remaining-requests"], "2");

    let streamed = stream.await.expect("the stream task");
    assert_eq!(streamed.status, StatusCode::OK);
    assert!(streamed.text.contains("data: [DONE]"), "{}", streamed.text);
    let costs: Vec<String> = gateway
        .wait_for_access_log(Duration::from_secs(5), 3, |l| {
            l["key"] == "tenant" && l["route"] == "/v1/chat/completions"
        })
        .iter()
        .map(|l| l["cost"].as_str().unwrap_or("?").to_owned())
        .collect();
    // Before: $0.000013; after: $0.00013; the stream, begun before the
    // reload, is priced (and charged) at the old price: 2 prompt and 4
    // completion tokens, $0.00001 (at the new price, $0.0001).
    assert_eq!(costs.len(), 3, "{costs:?}");
    assert_eq!(costs[0], "$0.000013");
    assert!(costs.contains(&"$0.00013".to_owned()), "{costs:?}");
    assert!(costs.contains(&"$0.00001".to_owned()), "{costs:?}");
    // Spend kept across the reload: all three in the budget.
    let key = http.get(&gateway.url("/v1/key"), Some(tenant)).await;
    assert_eq!(
        key.json["budgets"][0]["spent_usd"], "0.000153",
        "{}",
        key.text
    );

    // A broken file is refused, with its line, and the old config serves.
    write(&path, &format!("{}\nbogus = 1\n", config(100.0)));
    let refused = http
        .post(&admin_url(&gateway, "/reload"), Some(ADMIN), &Value::Null)
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.json["error"]["code"], "invalid_config");
    let message = refused.json["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("bogus") && message.contains("line "),
        "{message}"
    );
    let still = http.chat(&gateway, tenant, MODEL, "one two three").await;
    assert_eq!(still.status, StatusCode::OK);
    // Four chats by now (the `/v1/key` read between them is logged too, and
    // its line may come before the last chat's: count the chats only).
    let last = gateway
        .wait_for_access_log(Duration::from_secs(5), 4, |l| {
            l["key"] == "tenant" && l["route"] == "/v1/chat/completions"
        })
        .last()
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["cost"], "$0.00013", "{last}");
}

#[tokio::test]
async fn sighup_reloads_keys_and_refuses_a_broken_file_without_its_secrets() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("gateway.toml");
    write(&path, &config(1.0));
    let gateway = GatewayCommand::new().config_file(&path).start();
    let http = Http::new();
    // Revoked at run time; the file's next change to another field keeps it.
    http.post(
        &admin_url(&gateway, "/keys/tenant/revoke"),
        Some(ADMIN),
        &Value::Null,
    )
    .await;
    let added = format!(
        "{}\n[[keys]]\nid = \"late\"\nsecret = \"sk-late-0123456789\"\n",
        config(1.0).replace("requests_per_minute = 5", "requests_per_minute = 50")
    );
    write(&path, &added);
    gateway.signal("HUP");
    gateway.wait_for_log(Duration::from_secs(10), |l| {
        l["message"] == "config reloaded"
    });
    assert_eq!(
        http.chat(&gateway, "sk-late-0123456789", MODEL, "hi")
            .await
            .status,
        StatusCode::OK
    );
    let tenant = http
        .get(&admin_url(&gateway, "/keys/tenant"), Some(ADMIN))
        .await;
    assert_eq!(tenant.json["revoked"], true);
    assert_eq!(tenant.json["rate_limits"][0]["amount"], 50);

    // Dropped from the file: deleted. Made through the API: kept.
    let minted = http
        .post(
            &admin_url(&gateway, "/keys"),
            Some(ADMIN),
            &json!({"id": "api"}),
        )
        .await;
    assert_eq!(minted.status, StatusCode::CREATED);
    write(&path, &config(1.0));
    gateway.signal("HUP");
    let started = Instant::now();
    while http
        .chat(&gateway, "sk-late-0123456789", MODEL, "hi")
        .await
        .status
        == StatusCode::OK
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the dropped key still works"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let api = http
        .get(&admin_url(&gateway, "/keys/api"), Some(ADMIN))
        .await;
    assert_eq!(api.status, StatusCode::OK);

    // A type error on a secret's line: refused, logged with field and line,
    // and neither the line nor the value is printed.
    let secret = "sk-leaked-9876543210";
    write(
        &path,
        &format!("upstream_api_key = [\"{secret}\"]\n{}", config(1.0)),
    );
    gateway.signal("HUP");
    let error = gateway.wait_for_log(Duration::from_secs(10), |l| {
        l["message"] == "config not reloaded; the running config stays"
    });
    let text = error["error"].as_str().unwrap_or_default();
    assert!(
        text.contains("line 1") && text.contains("upstream_api_key"),
        "{text}"
    );
    assert!(!gateway.stderr().contains(secret), "{}", gateway.stderr());
    assert_eq!(
        http.chat(&gateway, "sk-prepaid-0123456789", MODEL, "hi")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}
