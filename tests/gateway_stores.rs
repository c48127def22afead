//! The gateway's shared and durable stores, through the example binary:
//! three gateway processes on one `redis-server` (limits, budgets,
//! revocations and top-ups exact across them), and keys, spend and balances
//! across restarts on Redis and on SQLite (SIGTERM and `kill -9`).
#![cfg(all(feature = "redis", feature = "sqlite"))]

#[path = "support/gateway.rs"]
mod gateway_support;
#[path = "support/redis.rs"]
mod redis_support;

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use gateway_support::{Gateway, GatewayCommand, Http};
use http::StatusCode;
use redis_support::RedisServer;
use serde_json::{Value, json};

const ADMIN: &str = "sk-admin-test-0123456789";
const MODEL: &str = "m";

/// The tests take turns: each runs three gateways and a Redis, and the
/// one-second bound on revocations is about the stores, not about a machine
/// running five such tests at once.
static TURN: Mutex<()> = Mutex::const_new(());

/// A config on `store` with `keys` (TOML `[[keys]]` entries) appended.
fn config(store: &str, extra: &str, keys: &str) -> String {
    format!(
        r#"
upstream = "mock"
store = "{store}"
admin_keys = ["{ADMIN}"]
request_timeout_secs = 20
# Exactness is the stores' when Redis answers; on a loaded test machine a
# call may take longer than the production default (250 ms), and the
# layers would then apply their failure policies instead.
store_timeout_ms = 5000
{extra}

[[models]]
name = "{MODEL}"
input_usd_per_million = 100.0
output_usd_per_million = 200.0
max_output_tokens = 10

{keys}
"#
    )
}

/// Three gateways on one Redis.
fn three(redis: &RedisServer, extra: &str, keys: &str) -> Vec<Gateway> {
    let toml = config(&redis.url(), extra, keys);
    (0..3)
        .map(|_| GatewayCommand::new().config(&toml).start())
        .collect()
}

fn admin(gateway: &Gateway, path: &str) -> String {
    gateway.url(&format!("/admin{path}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_admit_exactly_the_limit() {
    let _turn = TURN.lock().await;
    let redis = RedisServer::start();
    let gateways = three(
        &redis,
        "",
        "[[keys]]\nid = \"k\"\nsecret = \"sk-shared-0123456789\"\nrequests_per_minute = 100\n",
    );
    // Redis here runs without persistence: each gateway says so at start.
    for gateway in &gateways {
        gateway.wait_for_log(Duration::from_secs(5), |l| {
            l["level"] == "WARN"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("neither AOF nor RDB"))
        });
    }
    let http = Http::new();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let (http, url) = (http.clone(), gateways[i % 3].url("/v1/chat/completions"));
        tasks.push(tokio::spawn(async move {
            let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
            http.post(&url, Some("sk-shared-0123456789"), &body)
                .await
                .status
        }));
    }
    let (mut admitted, mut limited) = (0, 0);
    for task in tasks {
        match task.await.expect("a request task") {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((admitted, limited), (100, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_budget_is_never_overshot_across_instances() {
    let _turn = TURN.lock().await;
    let redis = RedisServer::start();
    let gateways = three(
        &redis,
        "budget_policy = \"strict\"",
        "[[keys]]\nid = \"k\"\nsecret = \"sk-budget-0123456789\"\nbudget_usd = \"0.02\"\n",
    );
    let http = Http::new();
    let mut tasks = Vec::new();
    for i in 0..90 {
        let (http, url) = (http.clone(), gateways[i % 3].url("/v1/chat/completions"));
        tasks.push(tokio::spawn(async move {
            let body = json!({"model": MODEL, "max_tokens": 10,
                "messages": [{"role": "user", "content": "one two three four five six seven"}]});
            http.post(&url, Some("sk-budget-0123456789"), &body)
                .await
                .status
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        match task.await.expect("a request task") {
            StatusCode::OK => admitted += 1,
            StatusCode::PAYMENT_REQUIRED => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(admitted > 0, "nothing admitted");
    assert!(admitted < 90, "nothing refused: the test proves nothing");
    // Settlements end with the bodies; read the books once they are still.
    let key = http.get(&admin(&gateways[1], "/keys/k"), Some(ADMIN)).await;
    let budget = &key.json["budgets"][0];
    let spent: f64 = budget["spent_usd"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("spent");
    assert!(spent <= 0.02, "overshot: {budget}");
    assert_eq!(budget["reserved_usd"], "0.00", "{budget}");
    // Every admitted request was charged: 7 prompt and 9 completion tokens.
    let each = 7.0 * 100e-6 + 9.0 * 200e-6;
    assert!(
        (spent - admitted as f64 * each).abs() < 1e-9,
        "{admitted} admitted, {budget}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_instance_is_obeyed_by_the_others_within_a_second() {
    let _turn = TURN.lock().await;
    let redis = RedisServer::start();
    let gateways = three(&redis, "", "");
    let http = Http::new();
    let minted = http
        .post(
            &admin(&gateways[0], "/keys"),
            Some(ADMIN),
            &json!({"id": "leaky"}),
        )
        .await;
    assert_eq!(minted.status, StatusCode::CREATED, "{}", minted.text);
    let secret = minted.json["secret"].as_str().expect("secret").to_owned();
    // Every instance knows (and caches) the key.
    for gateway in &gateways {
        let known = http.get(&gateway.url("/v1/key"), Some(&secret)).await;
        assert_eq!(known.status, StatusCode::OK, "{}", known.text);
    }
    let revoked = http
        .post(
            &admin(&gateways[0], "/keys/leaky/revoke"),
            Some(ADMIN),
            &Value::Null,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    let at = Instant::now();
    for gateway in &gateways[1..] {
        loop {
            let answer = http.get(&gateway.url("/v1/key"), Some(&secret)).await;
            if answer.json["error"]["code"] == "revoked_api_key" {
                break;
            }
            assert!(
                at.elapsed() < Duration::from_secs(1),
                "still admitted after {:?}: {}",
                at.elapsed(),
                answer.text
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // A change through another instance: seen everywhere too.
    let patched = http
        .send(
            "PATCH",
            &admin(&gateways[2], "/keys/leaky"),
            Some(ADMIN),
            &[],
            &json!({"name": "renamed"}),
        )
        .await;
    assert_eq!(patched.json["revoked"], true);
    let shown = http
        .get(&admin(&gateways[1], "/keys/leaky"), Some(ADMIN))
        .await;
    assert_eq!(shown.json["name"], "renamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_up_through_one_instance_is_spendable_on_another_at_once() {
    let _turn = TURN.lock().await;
    let redis = RedisServer::start();
    let gateways = three(
        &redis,
        "",
        "[[keys]]\nid = \"p\"\nsecret = \"sk-prepaid-0123456789\"\nbalance_usd = 0\n",
    );
    let http = Http::new();
    let broke = http
        .chat(&gateways[2], "sk-prepaid-0123456789", MODEL, "hi")
        .await;
    assert_eq!(broke.status, StatusCode::FORBIDDEN, "{}", broke.text);
    let topped = http
        .send(
            "POST",
            &admin(&gateways[1], "/keys/p/balance"),
            Some(ADMIN),
            &[("idempotency-key", "order-7")],
            &json!({"add_usd": "10.00"}),
        )
        .await;
    assert_eq!(topped.json["balance_usd"], "10.00", "{}", topped.text);
    let spent = http
        .chat(&gateways[2], "sk-prepaid-0123456789", MODEL, "hi")
        .await;
    assert_eq!(spent.status, StatusCode::OK, "{}", spent.text);
    // The same top-up retried on the third instance adds nothing.
    let replayed = http
        .send(
            "POST",
            &admin(&gateways[0], "/keys/p/balance"),
            Some(ADMIN),
            &[("idempotency-key", "order-7")],
            &json!({"add_usd": "10.00"}),
        )
        .await;
    assert_eq!(replayed.json["replayed"], true, "{}", replayed.text);
    // Spend from every instance in one report.
    let spend = http
        .get(&admin(&gateways[0], "/spend?group_by=key"), Some(ADMIN))
        .await;
    assert_eq!(spend.json["data"][0]["requests"], 1, "{}", spend.text);
}

/// Keys of the restart tests: one revoked at run time, one whose limit the
/// file raises, one prepaid.
fn restart_keys(rpm: u32, opening: &str) -> String {
    format!(
        r#"
[[keys]]
id = "revoked-at-run-time"
secret = "sk-revoke-0123456789"

[[keys]]
id = "limited"
secret = "sk-limited-0123456789"
requests_per_minute = {rpm}
budget_usd = 1

[[keys]]
id = "prepaid"
secret = "sk-prepaid-0123456789"
balance_usd = {opening}
"#
    )
}

/// Spends on `limited` (budget) and `prepaid` (balance), revokes
/// `revoked-at-run-time`; what `/v1/key` says of both keys after.
async fn spend_and_revoke(http: &Http, gateway: &Gateway) -> (Value, Value) {
    for key in ["sk-limited-0123456789", "sk-prepaid-0123456789"] {
        let answer = http.chat(gateway, key, MODEL, "one two three").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    }
    let revoked = http
        .post(
            &admin(gateway, "/keys/revoked-at-run-time/revoke"),
            Some(ADMIN),
            &Value::Null,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    let limited = http
        .get(&gateway.url("/v1/key"), Some("sk-limited-0123456789"))
        .await;
    let prepaid = http
        .get(&gateway.url("/v1/key"), Some("sk-prepaid-0123456789"))
        .await;
    (
        limited.json["budgets"][0].clone(),
        prepaid.json["budgets"][0].clone(),
    )
}

/// What a store keeps of rate-limit counters across a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counters {
    /// Redis: the minute's count goes on.
    Kept,
    /// SQLite: counters are in memory (they describe the last minute, not
    /// money), so every window starts full.
    Restarted,
}

/// After a restart with a raised limit and a larger opening balance: the
/// revocation held, the spend and the balance are where they were, the
/// raised limit applies.
async fn check_after_restart(
    http: &Http,
    gateway: &Gateway,
    budget: &Value,
    balance: &Value,
    counters: Counters,
) {
    let revoked = http
        .chat(gateway, "sk-revoke-0123456789", MODEL, "hi")
        .await;
    assert_eq!(
        revoked.json["error"]["code"], "revoked_api_key",
        "{}",
        revoked.text
    );
    let limited = http
        .get(&gateway.url("/v1/key"), Some("sk-limited-0123456789"))
        .await;
    assert_eq!(
        &limited.json["budgets"][0]["spent_usd"],
        &budget["spent_usd"]
    );
    let prepaid = http
        .get(&gateway.url("/v1/key"), Some("sk-prepaid-0123456789"))
        .await;
    // Not refilled to the file's new opening balance.
    assert_eq!(
        &prepaid.json["budgets"][0]["remaining_usd"],
        &balance["remaining_usd"]
    );
    // 1 request a minute before, 3 now: one used, two left (three with
    // counters that start over).
    let left: &[&str] = match counters {
        Counters::Kept => &["1", "0"],
        Counters::Restarted => &["2", "1", "0"],
    };
    for left in left {
        let answer = http
            .chat(gateway, "sk-limited-0123456789", MODEL, "hi")
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        assert_eq!(answer.headers["x-ratelimit-remaining-requests"], *left);
    }
    let refused = http
        .chat(gateway, "sk-limited-0123456789", MODEL, "hi")
        .await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_spend_and_balances_survive_a_restart_on_redis() {
    let _turn = TURN.lock().await;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config(&redis.url(), "", &restart_keys(1, "5"))).expect("written");
    let http = Http::new();
    let mut gateway = GatewayCommand::new().config_file(&path).start();
    let (budget, balance) = spend_and_revoke(&http, &gateway).await;
    assert_ne!(budget["spent_usd"], "0.00", "{budget}");
    assert_ne!(balance["remaining_usd"], "5.00", "{balance}");
    gateway.signal("TERM");
    assert!(gateway.wait_exit(Duration::from_secs(20)).success());

    std::fs::write(&path, config(&redis.url(), "", &restart_keys(3, "50"))).expect("written");
    let gateway = GatewayCommand::new().config_file(&path).start();
    check_after_restart(&http, &gateway, &budget, &balance, Counters::Kept).await;
}

/// How a test stops the gateway before starting it again.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGTERM: drain, flush, exit 0.
    Term,
    /// SIGKILL, a crash, a second after the last settlement (the store's
    /// documented loss is its batch window, 10 ms).
    Kill,
}

async fn restart_on_sqlite(stop: Stop) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = format!("sqlite:{}", dir.path().join("state.db").display());
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config(&store, "", &restart_keys(1, "5"))).expect("written");
    let http = Http::new();
    let mut gateway = GatewayCommand::new().config_file(&path).start();
    let (budget, balance) = spend_and_revoke(&http, &gateway).await;
    assert_ne!(budget["spent_usd"], "0.00", "{budget}");
    assert_ne!(balance["remaining_usd"], "5.00", "{balance}");
    // A second gateway on the same file is refused at start-up: two would
    // each keep the books in memory and write over each other's.
    let second = GatewayCommand::new()
        .config_file(&path)
        .run(Duration::from_secs(30));
    assert!(!second.status.success(), "{}", second.stderr);
    assert!(
        second.stderr.contains("state.db") && second.stderr.contains("in use"),
        "{}",
        second.stderr
    );
    match stop {
        Stop::Term => {
            gateway.signal("TERM");
            assert!(gateway.wait_exit(Duration::from_secs(20)).success());
        }
        Stop::Kill => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            gateway.kill();
        }
    }
    std::fs::write(&path, config(&store, "", &restart_keys(3, "50"))).expect("written");
    let gateway = GatewayCommand::new().config_file(&path).start();
    check_after_restart(&http, &gateway, &budget, &balance, Counters::Restarted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_spend_and_balances_survive_sigterm_on_sqlite() {
    restart_on_sqlite(Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_spend_and_balances_survive_kill_9_on_sqlite() {
    restart_on_sqlite(Stop::Kill).await;
}
