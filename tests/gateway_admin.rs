//! The gateway's admin API, through the example binary (memory store):
//! every route and its errors, the audit log, keys in any state, and config
//! errors that never print a secret. Reloads are in `gateway_reload.rs`,
//! the shared and durable stores (Redis, SQLite) in `gateway_stores.rs`.

#[path = "support/admin_config.rs"]
mod admin_config;
#[path = "support/gateway.rs"]
mod gateway_support;

use std::time::Duration;

use admin_config::{ADMIN, MODEL, admin_url, config};
use gateway_support::{Gateway, GatewayCommand, Http};
use http::StatusCode;
use serde_json::{Value, json};

fn start() -> (Gateway, Http) {
    (
        GatewayCommand::new().config(&config(1.0)).start(),
        Http::new(),
    )
}

/// The audit lines matching `matches`, once at least `count` have been
/// read from the process's stderr (they are written as each change is
/// answered; waited for, bounded).
fn audit(gateway: &Gateway, count: usize, matches: impl Fn(&Value) -> bool) -> Vec<Value> {
    gateway.wait_for_logs(Duration::from_secs(10), count, |l| {
        l["target"] == "tollgate::audit" && matches(l)
    })
}

#[tokio::test]
async fn without_an_admin_key_the_api_is_not_there() {
    let gateway = GatewayCommand::new()
        .config(&config(1.0).replace(&format!("admin_keys = [\"{ADMIN}\"]"), ""))
        .start();
    let http = Http::new();
    for path in ["/keys", "/keys/tenant", "/spend", "/reload"] {
        let answer = http.get(&admin_url(&gateway, path), Some(ADMIN)).await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "{path}: {}",
            answer.text
        );
        assert_eq!(answer.json["error"]["type"], "not_found_error");
    }
}

#[tokio::test]
async fn admin_keys_tenant_keys_and_anything_else() {
    let (gateway, http) = start();
    let url = admin_url(&gateway, "/keys");
    let missing = http.get(&url, None).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.json["error"]["code"], "missing_api_key");
    let wrong = http.get(&url, Some("sk-admin-test-wrong")).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.json["error"]["code"], "invalid_api_key");
    let tenant = http.get(&url, Some("sk-tenant-0123456789")).await;
    assert_eq!(tenant.status, StatusCode::FORBIDDEN);
    assert_eq!(tenant.json["error"]["code"], "permission_denied");
    let unknown = http
        .get(&admin_url(&gateway, "/nothing-here"), Some(ADMIN))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    // An admin key is not a tenant key.
    let chat = http.chat(&gateway, ADMIN, MODEL, "hi").await;
    assert_eq!(chat.status, StatusCode::UNAUTHORIZED);
    // By hash, for a file that must not hold the secret.
    let hash = tollgate::auth::KeyHash::of(ADMIN).to_hex();
    let by_hash = GatewayCommand::new()
        .config(&config(1.0).replace(
            &format!("admin_keys = [\"{ADMIN}\"]"),
            &format!("admin_key_sha256s = [\"{hash}\"]"),
        ))
        .start();
    let answer = http.get(&admin_url(&by_hash, "/keys"), Some(ADMIN)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
}

#[tokio::test]
async fn a_key_is_minted_listed_changed_rotated_revoked_and_deleted() {
    let (gateway, http) = start();
    let keys = admin_url(&gateway, "/keys");

    // Secrets are generated, never taken.
    for field in ["secret", "secret_sha256"] {
        let refused = http
            .post(
                &keys,
                Some(ADMIN),
                &json!({"id": "x", field: "sk-mine-0123456789"}),
            )
            .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text);
        assert_eq!(refused.json["error"]["param"], field);
    }
    let bad = http
        .post(&keys, Some(ADMIN), &json!({"requests_per_minute": 0}))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json["error"]["param"], "requests_per_minute");
    let unknown = http.post(&keys, Some(ADMIN), &json!({"bogus": 1})).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.json["error"]["param"], "bogus");

    // Minted: 201, the secret once, and it works at once.
    let created = http
        .post(
            &keys,
            Some(ADMIN),
            &json!({"name": "Alice", "models": [MODEL], "requests_per_minute": 3, "budget_usd": "2.50", "team": "research"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.json["id"].as_str().expect("an id").to_owned();
    assert!(id.starts_with("key_"), "{id}");
    let secret = created.json["secret"]
        .as_str()
        .expect("the secret")
        .to_owned();
    assert!(secret.starts_with("sk-"));
    assert_eq!(created.json["source"], "admin");
    assert_eq!(created.json["budgets"][0]["limit_usd"], "2.50");
    assert_eq!(
        http.chat(&gateway, &secret, MODEL, "hi").await.status,
        StatusCode::OK
    );
    let duplicate = http.post(&keys, Some(ADMIN), &json!({"id": id})).await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT, "{}", duplicate.text);

    // Read: never the secret or its hash.
    let shown = http.get(&format!("{keys}/{id}"), Some(ADMIN)).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.json["name"], "Alice");
    assert_eq!(shown.json["team"], "research");
    let budget = &shown.json["budgets"][0];
    assert_eq!(budget["mode"], "budget");
    assert_eq!(budget["spent_usd"], "0.000007", "{budget}");
    assert!(
        budget["resets_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert!(!shown.text.contains(&secret));
    assert!(!shown.text.contains("secret"), "{}", shown.text);
    assert_eq!(
        http.get(&format!("{keys}/nobody"), Some(ADMIN))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Paged list, in id order.
    let page = http.get(&format!("{keys}?limit=2"), Some(ADMIN)).await;
    assert_eq!(page.json["object"], "list");
    assert_eq!(page.json["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(page.json["has_more"], true);
    let last = page.json["last_id"].as_str().expect("last_id").to_owned();
    let rest = http
        .get(&format!("{keys}?limit=1000&after={last}"), Some(ADMIN))
        .await;
    let ids: Vec<&str> = page.json["data"]
        .as_array()
        .into_iter()
        .chain(rest.json["data"].as_array())
        .flatten()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(rest.json["has_more"], false);
    for limit in ["0", "1001", "x"] {
        let refused = http
            .get(&format!("{keys}?limit={limit}"), Some(ADMIN))
            .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert_eq!(refused.json["error"]["param"], "limit");
    }

    // Changed: counters kept (1 of 3 requests used), the model list applied.
    let patch = |body: Value| {
        let (http, url) = (http.clone(), format!("{keys}/{id}"));
        async move { http.send("PATCH", &url, Some(ADMIN), &[], &body).await }
    };
    let patched = patch(json!({"name": "Alice B", "models": ["other-*"]})).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(patched.json["name"], "Alice B");
    assert_eq!(patched.json["budgets"][0]["spent_usd"], "0.000007");
    let refused = http.chat(&gateway, &secret, MODEL, "hi").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.json["error"]["code"], "model_not_allowed");
    let ok = http.chat(&gateway, &secret, "other-model", "hi").await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.headers["x-ratelimit-remaining-requests"], "1");
    assert_eq!(patch(json!({"id": "y"})).await.json["error"]["param"], "id");
    assert_eq!(
        patch(json!({"secret": "sk-x-0123456789"})).await.json["error"]["param"],
        "secret"
    );
    // `null` takes a field back to its default.
    assert_eq!(
        patch(json!({"models": null})).await.json["models"],
        json!([])
    );

    // Rotated with a grace: both secrets work; rotated again without: the
    // previous one is refused as revoked.
    let rotate = format!("{keys}/{id}/rotate");
    let rotated = http
        .post(&rotate, Some(ADMIN), &json!({"grace_secs": 3600}))
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let second = rotated.json["secret"]
        .as_str()
        .expect("new secret")
        .to_owned();
    assert!(rotated.json["previous_secret_valid_until"].is_string());
    assert_eq!(
        http.get(&gateway.url("/v1/key"), Some(&secret))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        http.get(&gateway.url("/v1/key"), Some(&second))
            .await
            .status,
        StatusCode::OK
    );
    let too_long = http
        .post(&rotate, Some(ADMIN), &json!({"grace_secs": 2_592_001}))
        .await;
    assert_eq!(too_long.json["error"]["param"], "grace_secs");
    let third = http.post(&rotate, Some(ADMIN), &Value::Null).await;
    assert_eq!(third.status, StatusCode::OK);
    let old = http.get(&gateway.url("/v1/key"), Some(&second)).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    assert_eq!(old.json["error"]["code"], "revoked_api_key");
    let third = third.json["secret"]
        .as_str()
        .expect("third secret")
        .to_owned();

    // Revoked, then deleted.
    let revoked = http
        .post(&format!("{keys}/{id}/revoke"), Some(ADMIN), &Value::Null)
        .await;
    assert_eq!(revoked.json["revoked"], true);
    let refused = http.chat(&gateway, &third, "other-model", "hi").await;
    assert_eq!(refused.json["error"]["code"], "revoked_api_key");
    let deleted = http
        .send(
            "DELETE",
            &format!("{keys}/{id}"),
            Some(ADMIN),
            &[],
            &Value::Null,
        )
        .await;
    assert_eq!(deleted.json, json!({"id": id, "deleted": true}));
    let again = http
        .send(
            "DELETE",
            &format!("{keys}/{id}"),
            Some(ADMIN),
            &[],
            &Value::Null,
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let gone = http.chat(&gateway, &third, "other-model", "hi").await;
    assert_eq!(gone.json["error"]["code"], "invalid_api_key");

    // One audit line per change, with the admin's id and never a secret.
    let admin_id = format!(
        "admin:{}",
        &tollgate::auth::KeyHash::of(ADMIN).to_hex()[..12]
    );
    let expected: Vec<String> = [
        "key.create",
        "key.update",
        "key.update",
        "key.rotate",
        "key.rotate",
        "key.revoke",
        "key.delete",
    ]
    .iter()
    .map(|a| format!("{a} {id}"))
    .collect();
    let actions: Vec<String> = audit(&gateway, expected.len(), |l| {
        l["admin"] == admin_id.as_str()
    })
    .iter()
    .map(|l| {
        format!(
            "{} {}",
            l["action"].as_str().unwrap_or("?"),
            l["key"].as_str().unwrap_or("?")
        )
    })
    .collect();
    assert_eq!(actions, expected);
    let logs = gateway.stderr();
    for secret in [&secret, &second, &third] {
        assert!(!logs.contains(secret.as_str()), "a secret in the logs");
    }
    assert!(!logs.contains(ADMIN), "the admin key in the logs");
}

#[tokio::test]
async fn top_ups_are_bounded_idempotent_and_spendable() {
    let (gateway, http) = start();
    let balance = admin_url(&gateway, "/keys/prepaid/balance");
    let top_up = |amount: Value, key: Option<&'static str>| {
        let (http, url) = (http.clone(), balance.clone());
        async move {
            let headers: Vec<(&str, &str)> =
                key.map(|k| ("idempotency-key", k)).into_iter().collect();
            http.send(
                "POST",
                &url,
                Some(ADMIN),
                &headers,
                &json!({"add_usd": amount}),
            )
            .await
        }
    };
    // Empty: refused with 403 insufficient_balance.
    let broke = http
        .chat(&gateway, "sk-prepaid-0123456789", MODEL, "hi")
        .await;
    assert_eq!(broke.status, StatusCode::FORBIDDEN, "{}", broke.text);
    for amount in [
        json!("9.99"),
        json!("1000.01"),
        json!("-10"),
        json!("ten"),
        json!(null),
    ] {
        let refused = top_up(amount.clone(), None).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{amount}: {}",
            refused.text
        );
        assert_eq!(refused.json["error"]["param"], "add_usd");
    }
    let first = top_up(json!("25.00"), Some("order-1")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(
        first.json,
        json!({"id": "prepaid", "balance_usd": "25.00", "replayed": false})
    );
    let retried = top_up(json!("25.00"), Some("order-1")).await;
    assert_eq!(
        retried.json,
        json!({"id": "prepaid", "balance_usd": "25.00", "replayed": true})
    );
    let second = top_up(json!(10), Some("order-2")).await;
    assert_eq!(second.json["balance_usd"], "35.00");
    assert_eq!(
        http.chat(&gateway, "sk-prepaid-0123456789", MODEL, "hi")
            .await
            .status,
        StatusCode::OK
    );
    // A key with a budget and no balance; a key that does not exist.
    let no_balance = http
        .post(
            &admin_url(&gateway, "/keys/tenant/balance"),
            Some(ADMIN),
            &json!({"add_usd": "10"}),
        )
        .await;
    assert_eq!(no_balance.status, StatusCode::BAD_REQUEST);
    let nobody = http
        .post(
            &admin_url(&gateway, "/keys/nobody/balance"),
            Some(ADMIN),
            &json!({"add_usd": "10"}),
        )
        .await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND);
    let audits = audit(&gateway, 3, |l| l["action"] == "balance.top_up");
    assert_eq!(audits.len(), 3, "{audits:?}");
}

#[tokio::test]
async fn budgets_reset_and_spend_is_reported() {
    let (gateway, http) = start();
    // "one two three": 3 prompt and 5 completion tokens, $3 + $10 per million.
    for _ in 0..2 {
        let answer = http
            .chat(&gateway, "sk-tenant-0123456789", MODEL, "one two three")
            .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let spend = |query: &'static str| {
        let (http, url) = (http.clone(), admin_url(&gateway, &format!("/spend{query}")));
        async move { http.get(&url, Some(ADMIN)).await }
    };
    let by_key = spend("?group_by=key").await;
    assert_eq!(by_key.json["group_by"], "key");
    assert_eq!(
        by_key.json["data"],
        json!([{"group": "tenant", "cost_usd": "0.000026", "prompt_tokens": 6,
                "completion_tokens": 10, "cached_tokens": 0, "requests": 2}])
    );
    let by_model = spend("?group_by=model&key=tenant").await;
    assert_eq!(by_model.json["data"][0]["group"], MODEL);
    let by_day = spend("?group_by=day").await;
    assert_eq!(by_day.json["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        spend("?group_by=day&from=2000-01-01&to=2000-01-02")
            .await
            .json["data"],
        json!([])
    );
    for (query, param) in [("?group_by=week", "group_by"), ("?from=yesterday", "from")] {
        let refused = spend(query).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert_eq!(refused.json["error"]["param"], param);
    }

    let reset = http
        .post(
            &admin_url(&gateway, "/keys/tenant/budget/reset"),
            Some(ADMIN),
            &Value::Null,
        )
        .await;
    assert_eq!(reset.status, StatusCode::OK, "{}", reset.text);
    assert_eq!(reset.json["spent_usd"], "0.00");
    assert_eq!(reset.json["remaining_usd"], "1.00");
    // The report keeps what was spent.
    assert_eq!(spend("").await.json["data"][0]["cost_usd"], "0.000026");
    let no_budget = http
        .post(
            &admin_url(&gateway, "/keys/prepaid/budget/reset"),
            Some(ADMIN),
            &Value::Null,
        )
        .await;
    assert_eq!(no_budget.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn keys_in_any_state_load_and_are_refused_at_request_time() {
    let (gateway, http) = start();
    let expired = http
        .chat(&gateway, "sk-expired-0123456789", MODEL, "hi")
        .await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert_eq!(expired.json["error"]["code"], "expired_api_key");
    let shown = http
        .get(&admin_url(&gateway, "/keys/expired"), Some(ADMIN))
        .await;
    assert_eq!(shown.json["source"], "config");
    assert_eq!(shown.json["expires_at"], "2020-01-01T00:00:00Z");
}

#[test]
fn a_config_error_never_prints_a_secret() {
    let secret = "sk-leaked-9876543210";
    for toml in [
        format!("[[keys]]\nid = \"a\"\nsecret = [\"{secret}\"]\n"),
        format!("admin_keys = [\n  \"{secret}\",\n  7,\n]\n"),
        format!("upstream_api_key = \"{secret}\nlisten = 1\n"),
        format!("[[keys]]\nid = \"a\"\nsecret = \"{secret}\"\nsecret = \"{secret}\"\n"),
    ] {
        let finished = GatewayCommand::new()
            .config(&toml)
            .arg("--check")
            .run(Duration::from_secs(30));
        assert_eq!(finished.code(), Some(2), "{toml}: {}", finished.stderr);
        assert!(finished.stderr.contains("line "), "{}", finished.stderr);
        assert!(
            !finished.stderr.contains("leaked") && !finished.stdout.contains("leaked"),
            "{toml}\n→ {}",
            finished.stderr
        );
    }
}
