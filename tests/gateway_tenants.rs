//! Users, teams and orgs through the example gateway: budgets shared by a
//! team's keys and refused naming the team, `/v1/key` and
//! `/admin/spend?group_by=team|org|user` showing each scope to the cent,
//! config grants for tenants that survive a restart on SQLite without
//! refilling, tenants shared by two instances on one Redis, the admin routes
//! of tenants, reloads, and config errors with their line. (A little over
//! 600 lines: the gateway's tenants in one file, one scenario per test.)

#[path = "support/gateway.rs"]
mod gateway_support;
#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;

use std::time::Duration;

use gateway_support::{Gateway, GatewayCommand, Http};
use http::StatusCode;
use serde_json::{Value, json};

const ADMIN: &str = "sk-admin-test-0123456789";
const MODEL: &str = "m";
/// "one two three" is 3 prompt and 5 completion tokens at the mock: at
/// $0.10 and $0.20 a token, $1.30 a request.
const TEXT: &str = "one two three";

/// A config on `store` with `tenants` (TOML tables) appended.
fn config(store: &str, tenants: &str) -> String {
    format!(
        r#"
upstream = "mock"
store = "{store}"
admin_keys = ["{ADMIN}"]
request_timeout_secs = 20

[[models]]
name = "{MODEL}"
input_usd_per_million = 100000.0
output_usd_per_million = 200000.0
max_output_tokens = 10

{tenants}
"#
    )
}

/// Org `acme` with a $100 budget, team `research` in it with $2.00, user
/// `ann`; key `a` (ann's, in research), key `b` (in research), key `solo`.
const TREE: &str = r#"
[[orgs]]
id = "acme"
budget_usd = 100

[[teams]]
id = "research"
org = "acme"
budget_usd = "2.00"
requests_per_minute = 50

[[users]]
id = "ann"
budget_usd = 10

[[keys]]
id = "a"
secret = "sk-a-0123456789"
user = "ann"
team = "research"
budget_usd = 5

[[keys]]
id = "b"
secret = "sk-b-0123456789"
team = "research"

[[keys]]
id = "solo"
secret = "sk-solo-0123456789"
"#;

fn admin(gateway: &Gateway, path: &str) -> String {
    gateway.url(&format!("/admin{path}"))
}

async fn spend(http: &Http, gateway: &Gateway, query: &str) -> Value {
    let answer = http
        .get(&admin(gateway, &format!("/spend{query}")), Some(ADMIN))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    answer.json["data"].clone()
}

/// Spends the `TREE`'s team budget: $1.30 by key a through `first`, then
/// $1.30 by key b through `second` (the team had $0.70 left: a bounded
/// budget admits while anything remains); then both keys are refused,
/// through either, naming the team.
async fn spend_the_team(http: &Http, first: &Gateway, second: &Gateway) {
    for (gateway, key) in [(first, "sk-a-0123456789"), (second, "sk-b-0123456789")] {
        let answer = http.chat(gateway, key, MODEL, TEXT).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    }
    for (gateway, key) in [(second, "sk-a-0123456789"), (first, "sk-b-0123456789")] {
        let refused = http.chat(gateway, key, MODEL, TEXT).await;
        assert_eq!(
            refused.status,
            StatusCode::PAYMENT_REQUIRED,
            "{}",
            refused.text
        );
        assert_eq!(
            refused.json["error"]["message"],
            "Budget exceeded: $2.00 limit reached for team research"
        );
    }
}

/// `PATCH url` with the admin key and `body`.
async fn patch(http: &Http, url: &str, body: &Value) -> gateway_support::Answer {
    http.send("PATCH", url, Some(ADMIN), &[], body).await
}

fn row(group: &str, cost: &str, requests: u64) -> Value {
    json!({"group": group, "cost_usd": cost, "prompt_tokens": 3 * requests,
           "completion_tokens": 5 * requests, "cached_tokens": 0, "requests": requests})
}

#[tokio::test]
async fn a_team_budget_shared_by_two_keys_is_refused_naming_the_team() {
    let gateway = GatewayCommand::new()
        .config(&config("memory", TREE))
        .start();
    let http = Http::new();
    spend_the_team(&http, &gateway, &gateway).await;
    // Another key of no team is not refused.
    let solo = http.chat(&gateway, "sk-solo-0123456789", MODEL, TEXT).await;
    assert_eq!(solo.status, StatusCode::OK, "{}", solo.text);

    // `/v1/key` shows each scope: the key's own, its user's, team's, org's.
    let shown = http
        .get(&gateway.url("/v1/key"), Some("sk-a-0123456789"))
        .await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.text);
    let budget = |scope: &str| shown.json[scope]["budgets"][0].clone();
    let own = &shown.json["budgets"][0];
    assert_eq!(own["id"], "key:a");
    assert_eq!(own["spent_usd"], "1.30");
    assert_eq!(own["remaining_usd"], "3.70");
    assert_eq!(shown.json["user"]["id"], "ann");
    assert_eq!(budget("user")["id"], "user:ann");
    assert_eq!(budget("user")["spent_usd"], "1.30");
    assert_eq!(shown.json["team"]["id"], "research");
    assert_eq!(budget("team")["limit_usd"], "2.00");
    assert_eq!(budget("team")["spent_usd"], "2.60");
    // The one request a bounded budget may overshoot by is shown, not hidden.
    assert_eq!(budget("team")["remaining_usd"], "-0.60");
    assert!(
        budget("team")["resets_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{}",
        shown.text
    );
    assert_eq!(shown.json["team"]["rate_limits"][0]["amount"], 50);
    assert_eq!(shown.json["org"]["id"], "acme");
    assert_eq!(budget("org")["spent_usd"], "2.60");
    assert_eq!(budget("org")["remaining_usd"], "97.40");
    let solo = http
        .get(&gateway.url("/v1/key"), Some("sk-solo-0123456789"))
        .await;
    assert_eq!(solo.json["team"], Value::Null, "{}", solo.text);
    assert_eq!(solo.json["budgets"], json!([]));

    // Spend per team, org and user, to the cent; filtered by one scope.
    for (query, group, cost, requests) in [
        ("?group_by=team", "research", "2.60", 2),
        ("?group_by=org", "acme", "2.60", 2),
        ("?group_by=user", "ann", "1.30", 1),
        ("?group_by=team&team=research", "research", "2.60", 2),
        ("?group_by=model&team=research", MODEL, "2.60", 2),
    ] {
        assert_eq!(
            spend(&http, &gateway, query).await,
            json!([row(group, cost, requests)]),
            "{query}"
        );
    }
    // Each member key of a team or org: its keys' own spend, not the
    // team's total under a key's name; the solo key is in neither.
    for query in ["?group_by=key&team=research", "?group_by=key&org=acme"] {
        assert_eq!(
            spend(&http, &gateway, query).await,
            json!([row("a", "1.30", 1), row("b", "1.30", 1)]),
            "{query}"
        );
    }
    assert_eq!(
        spend(&http, &gateway, "?group_by=key&user=ann").await,
        json!([row("a", "1.30", 1)])
    );
    // Spend is kept per scope: the users of a team are not a grouping.
    let refused = http
        .get(
            &admin(&gateway, "/spend?group_by=user&team=research"),
            Some(ADMIN),
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text);
    assert_eq!(refused.json["error"]["param"], "group_by");
    let refused = http
        .get(&admin(&gateway, "/spend?key=a&team=research"), Some(ADMIN))
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.json["error"]["param"], "team");
}

#[tokio::test]
async fn teams_are_managed_through_the_admin_api() {
    let keys = r#"
[[keys]]
id = "a"
secret = "sk-a-0123456789"
team = "ops"
"#;
    let gateway = GatewayCommand::new()
        .config(&config("memory", keys))
        .start();
    let http = Http::new();
    let teams = admin(&gateway, "/teams");
    // The key names a team the store has no record of: loaded, with a warning.
    gateway.wait_for_log(Duration::from_secs(5), |l| {
        l["level"] == "WARN" && l["tenant"] == "ops"
    });

    // Tenant keys are not admins.
    let tenant = http.get(&teams, Some("sk-a-0123456789")).await;
    assert_eq!(tenant.status, StatusCode::FORBIDDEN);
    assert_eq!(tenant.json["error"]["code"], "permission_denied");

    // Made: `id` required, the org must exist, fields checked.
    for (body, param) in [
        (json!({"name": "no id"}), "id"),
        (json!({"id": "ops", "org": "acme"}), "org"),
        (
            json!({"id": "ops", "requests_per_minute": 0}),
            "requests_per_minute",
        ),
        (json!({"id": "ops", "secret": "sk-x-0123456789"}), "secret"),
        (
            json!({"id": "ops", "budget_usd": 1, "balance_usd": 1}),
            "balance_usd",
        ),
    ] {
        let refused = http.post(&teams, Some(ADMIN), &body).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            refused.text
        );
        assert_eq!(refused.json["error"]["param"], param, "{}", refused.text);
    }
    let org = http
        .post(
            &admin(&gateway, "/orgs"),
            Some(ADMIN),
            &json!({"id": "acme"}),
        )
        .await;
    assert_eq!(org.status, StatusCode::CREATED, "{}", org.text);
    assert_eq!(org.json["object"], "org");
    let created = http
        .post(
            &teams,
            Some(ADMIN),
            &json!({"id": "ops", "org": "acme", "balance_usd": "0", "requests_per_minute": 100}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.json["object"], "team");
    assert_eq!(created.json["source"], "admin");
    assert_eq!(created.json["budgets"][0]["mode"], "balance");
    let again = http.post(&teams, Some(ADMIN), &json!({"id": "ops"})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);

    // The team's empty balance refuses its key; a top-up (bounded, once
    // per Idempotency-Key) lets it through.
    let broke = http.chat(&gateway, "sk-a-0123456789", MODEL, TEXT).await;
    assert_eq!(broke.status, StatusCode::FORBIDDEN, "{}", broke.text);
    assert_eq!(broke.json["error"]["code"], "insufficient_balance");
    let top_up = |amount: &'static str, key: &'static str| {
        let (http, url) = (http.clone(), format!("{teams}/ops/balance"));
        async move {
            http.send(
                "POST",
                &url,
                Some(ADMIN),
                &[("idempotency-key", key)],
                &json!({"add_usd": amount}),
            )
            .await
        }
    };
    let low = top_up("9.99", "order-0").await;
    assert_eq!(low.status, StatusCode::BAD_REQUEST);
    assert_eq!(low.json["error"]["param"], "add_usd");
    let first = top_up("25.00", "order-1").await;
    assert_eq!(
        first.json,
        json!({"id": "ops", "balance_usd": "25.00", "replayed": false}),
        "{}",
        first.text
    );
    let retried = top_up("25.00", "order-1").await;
    assert_eq!(
        retried.json,
        json!({"id": "ops", "balance_usd": "25.00", "replayed": true})
    );
    let paid = http.chat(&gateway, "sk-a-0123456789", MODEL, TEXT).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.text);

    // Read and changed: the balance kept, the change applied.
    let patched = patch(
        &http,
        &format!("{teams}/ops"),
        &json!({"name": "Operations", "requests_per_minute": 200}),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(patched.json["name"], "Operations");
    assert_eq!(patched.json["rate_limits"][0]["amount"], 200);
    assert_eq!(patched.json["budgets"][0]["remaining_usd"], "23.70");
    let renamed = patch(&http, &format!("{teams}/ops"), &json!({"id": "x"})).await;
    assert_eq!(renamed.json["error"]["param"], "id");
    let shown = http.get(&format!("{teams}/ops"), Some(ADMIN)).await;
    assert_eq!(shown.json["org"], "acme");
    assert_eq!(shown.json["budgets"][0]["remaining_usd"], "23.70");

    // A budget reset, on a team with a budget.
    let research = http
        .post(
            &teams,
            Some(ADMIN),
            &json!({"id": "research", "budget_usd": "10.00"}),
        )
        .await;
    assert_eq!(research.status, StatusCode::CREATED, "{}", research.text);
    let no_budget = http
        .post(
            &format!("{teams}/ops/budget/reset"),
            Some(ADMIN),
            &Value::Null,
        )
        .await;
    assert_eq!(no_budget.status, StatusCode::BAD_REQUEST);
    let key = patch(
        &http,
        &admin(&gateway, "/keys/a"),
        &json!({"team": "research"}),
    )
    .await;
    assert_eq!(key.status, StatusCode::OK, "{}", key.text);
    assert_eq!(
        http.chat(&gateway, "sk-a-0123456789", MODEL, TEXT)
            .await
            .status,
        StatusCode::OK
    );
    let reset = http
        .post(
            &format!("{teams}/research/budget/reset"),
            Some(ADMIN),
            &Value::Null,
        )
        .await;
    assert_eq!(reset.status, StatusCode::OK, "{}", reset.text);
    assert_eq!(reset.json["id"], "team:research");
    assert_eq!(reset.json["spent_usd"], "0.00");
    assert_eq!(reset.json["remaining_usd"], "10.00");
    // Spend reports keep what was spent.
    assert_eq!(
        spend(&http, &gateway, "?group_by=team").await,
        json!([row("ops", "1.30", 1), row("research", "1.30", 1)])
    );

    // Paged list, in id order.
    let page = http.get(&format!("{teams}?limit=1"), Some(ADMIN)).await;
    assert_eq!(page.json["data"][0]["id"], "ops", "{}", page.text);
    assert_eq!(page.json["has_more"], true);
    let rest = http.get(&format!("{teams}?after=ops"), Some(ADMIN)).await;
    assert_eq!(rest.json["data"][0]["id"], "research");
    assert_eq!(rest.json["has_more"], false);

    // Revoked (disabled): its keys get 403 account_disabled; enabled again.
    let revoked = http
        .post(
            &format!("{teams}/research/revoke"),
            Some(ADMIN),
            &Value::Null,
        )
        .await;
    assert_eq!(revoked.json["disabled"], true, "{}", revoked.text);
    let refused = http.chat(&gateway, "sk-a-0123456789", MODEL, TEXT).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.json["error"]["code"], "account_disabled");
    let enabled = patch(
        &http,
        &format!("{teams}/research"),
        &json!({"disabled": false}),
    )
    .await;
    assert_eq!(enabled.json["disabled"], false);

    // Deleted: its key then counts against its own budgets only.
    let url = format!("{teams}/research");
    let deleted = http
        .send("DELETE", &url, Some(ADMIN), &[], &Value::Null)
        .await;
    assert_eq!(deleted.json, json!({"id": "research", "deleted": true}));
    let gone = http
        .send("DELETE", &url, Some(ADMIN), &[], &Value::Null)
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(
        http.chat(&gateway, "sk-a-0123456789", MODEL, TEXT)
            .await
            .status,
        StatusCode::OK
    );

    // One audit line per change, naming the scope.
    // Written as each change is answered, read from the process's stderr as
    // they come: waited for (bounded), not read once.
    let actions: Vec<String> = gateway
        .wait_for_logs(Duration::from_secs(10), 11, |l| {
            l["target"] == "tollgate::audit" && l["admin"] != "config"
        })
        .iter()
        .map(|l| {
            format!(
                "{} {}",
                l["action"].as_str().unwrap_or("?"),
                l["scope"].as_str().or(l["key"].as_str()).unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            "org.create org:acme",
            "team.create team:ops",
            "balance.top_up team:ops",
            "balance.top_up team:ops",
            "team.update team:ops",
            "team.create team:research",
            "key.update a",
            "budget.reset team:research",
            "team.revoke team:research",
            "team.update team:research",
            "team.delete team:research",
        ]
    );
}

#[tokio::test]
async fn a_reload_applies_the_file_s_tenant_changes_and_keeps_the_spend() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config("memory", TREE)).expect("written");
    let gateway = GatewayCommand::new().config_file(&path).start();
    let http = Http::new();
    let answer = http.chat(&gateway, "sk-a-0123456789", MODEL, TEXT).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);

    // The team's budget raised, user ann dropped from the file.
    let changed = TREE
        .replace("budget_usd = \"2.00\"", "budget_usd = \"3.00\"")
        .replace("[[users]]\nid = \"ann\"\nbudget_usd = 10\n", "");
    std::fs::write(&path, config("memory", &changed)).expect("written");
    let reloaded = http
        .post(&admin(&gateway, "/reload"), Some(ADMIN), &Value::Null)
        .await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.text);
    assert_eq!(reloaded.json["teams"]["updated"], 1, "{}", reloaded.text);
    assert_eq!(reloaded.json["orgs"]["unchanged"], 1);
    assert_eq!(reloaded.json["users"]["deleted"], 1);
    assert_eq!(reloaded.json["keys"]["unchanged"], 3);
    let shown = http
        .get(&gateway.url("/v1/key"), Some("sk-a-0123456789"))
        .await;
    let team = &shown.json["team"]["budgets"][0];
    assert_eq!(team["limit_usd"], "3.00", "{}", shown.text);
    assert_eq!(team["spent_usd"], "1.30", "{}", shown.text);
    // The key still names ann, who has no record now: nothing of hers applies.
    assert_eq!(shown.json["user"]["id"], "ann");
    assert_eq!(shown.json["user"]["budgets"], json!([]));
    gateway.wait_for_log(Duration::from_secs(5), |l| {
        l["level"] == "WARN" && l["key"] == "a" && l["tenant"] == "ann"
    });
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_redis_share_a_team_and_its_disabling() {
    let redis = redis_support::RedisServer::start();
    // Exactness is the stores' when Redis answers; a loaded test machine
    // may take longer than the production default to answer.
    let toml = config(&redis.url(), TREE).replace(
        "request_timeout_secs = 20",
        "request_timeout_secs = 20\nstore_timeout_ms = 5000",
    );
    let (one, two) = (
        GatewayCommand::new().config(&toml).start(),
        GatewayCommand::new().config(&toml).start(),
    );
    let http = Http::new();
    spend_the_team(&http, &one, &two).await;
    assert_eq!(
        spend(&http, &one, "?group_by=team").await,
        json!([row("research", "2.60", 2)])
    );

    // Disabled through one instance: the other refuses the team's keys
    // within a second.
    let revoked = http
        .post(
            &admin(&one, "/teams/research/revoke"),
            Some(ADMIN),
            &Value::Null,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text);
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let answer = http.chat(&two, "sk-b-0123456789", MODEL, TEXT).await;
        if answer.json["error"]["code"] == "account_disabled" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {} after a second: {}",
            answer.status,
            answer.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn tenant_grants_survive_a_restart_on_sqlite_without_refilling() {
    let tenants = |opening: &str, org_budget: &str| {
        format!(
            r#"
[[orgs]]
id = "acme"
budget_usd = {org_budget}

[[teams]]
id = "research"
org = "acme"
balance_usd = {opening}

[[keys]]
id = "a"
secret = "sk-a-0123456789"
team = "research"
"#
        )
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = format!("sqlite:{}", dir.path().join("state.db").display());
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config(&store, &tenants("5", "100"))).expect("written");
    let http = Http::new();
    let mut gateway = GatewayCommand::new().config_file(&path).start();
    let answer = http.chat(&gateway, "sk-a-0123456789", MODEL, TEXT).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    // Changed at run time: kept across the restart.
    let renamed = patch(
        &http,
        &admin(&gateway, "/teams/research"),
        &json!({"name": "Research"}),
    )
    .await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.text);
    gateway.signal("TERM");
    assert!(gateway.wait_exit(Duration::from_secs(20)).success());

    // The file now opens the balance at $50 and raises the org's budget.
    std::fs::write(&path, config(&store, &tenants("50", "200"))).expect("written");
    let gateway = GatewayCommand::new().config_file(&path).start();
    let shown = http
        .get(&gateway.url("/v1/key"), Some("sk-a-0123456789"))
        .await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.text);
    let team = &shown.json["team"]["budgets"][0];
    assert_eq!(team["mode"], "balance");
    assert_eq!(
        team["remaining_usd"], "3.70",
        "not refilled: {}",
        shown.text
    );
    let org = &shown.json["org"]["budgets"][0];
    assert_eq!(org["limit_usd"], "200.00", "{}", shown.text);
    assert_eq!(org["spent_usd"], "1.30", "not reset: {}", shown.text);
    let research = http
        .get(&admin(&gateway, "/teams/research"), Some(ADMIN))
        .await;
    assert_eq!(research.json["name"], "Research");
    assert_eq!(research.json["source"], "config");
}

#[test]
fn tenant_errors_in_the_config_name_field_and_line() {
    // (tables, the header of the entry at fault and which of them, text)
    for (tenants, header, nth, text) in [
        (
            "[[orgs]]\nid = \"acme\"\n\n[[teams]]\nid = \"r\"\norg = \"acne\"\n",
            "[[teams]]",
            0,
            "teams[0].org",
        ),
        (
            "[[teams]]\nid = \"r\"\n\n[[teams]]\nid = \"r\"\n",
            "[[teams]]",
            1,
            "duplicate team id",
        ),
        (
            "[[users]]\nid = \"ann\"\nbudget_usd = 1\nbudget_period = \"hourly\"\n",
            "[[users]]",
            0,
            "budget_period",
        ),
    ] {
        let toml = config("memory", tenants);
        let line = toml
            .lines()
            .enumerate()
            .filter(|(_, l)| l.trim() == header)
            .nth(nth)
            .map(|(n, _)| n + 1)
            .expect("the header");
        let finished = GatewayCommand::new()
            .config(&toml)
            .arg("--check")
            .run(Duration::from_secs(30));
        assert_eq!(finished.code(), Some(2), "{tenants}: {}", finished.stderr);
        for expected in [format!("line {line}:"), text.to_owned()] {
            assert!(
                finished.stderr.contains(&expected),
                "{expected}: {}",
                finished.stderr
            );
        }
    }
}
