//! Key files: JSON and TOML, plaintext and hashed secrets, and their errors.

use std::path::PathBuf;

use tollgate::auth::{AuthLayer, KeyEntry, KeyFile, KeyFileError, KeyHash};
use tollgate::budget::{BudgetMode, Money, Period};
use tollgate::rate_limit::Limit;
use tollgate::store::memory::MemoryKeyStore;
use tower::Layer;

use super::{bearer, echo, send};

/// A file in the temp directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("tollgate-auth-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn sha256(secret: &str) -> String {
    KeyHash::of(secret).to_hex()
}

#[tokio::test]
async fn toml_file_with_plaintext_and_hashed_secrets() {
    let text = format!(
        r#"
# Local development keys.
[[keys]]
id = "dev"
name = "Developer laptop"
secret = "sk-dev-plaintext"
models = ["gpt-4o*", "claude-*"]
requests_per_minute = 60
tokens_per_minute = 100000
max_concurrent = 4
budget_usd = 25.5
budget_period = "weekly"
team = "research"
org = "acme"
metadata = {{ owner = "ada@example.com" }}

[[keys]]
id = "ci"
secret_sha256 = "{}"
expires_at = "2099-01-01T00:00:00Z"
balance_usd = "10.000000001"

[[keys]]
id = "prefixed"
secret = "sha256:{}"
disabled = true
"#,
        sha256("sk-ci-secret"),
        sha256("sk-prefixed"),
    );
    let file = TempFile::new("keys.toml", &text);
    let store = MemoryKeyStore::load(&file.0).unwrap();
    assert_eq!(store.len(), 3);

    let dev = store.get("dev").unwrap();
    assert_eq!(dev.secret_hash, KeyHash::of("sk-dev-plaintext"));
    assert_eq!(dev.name.as_deref(), Some("Developer laptop"));
    assert_eq!(
        dev.rate_limits,
        [
            Limit::requests_per_minute(60),
            Limit::tokens_per_minute(100_000)
        ]
    );
    assert_eq!(dev.max_concurrent, Some(4));
    assert_eq!(dev.budgets[0].id(), "key:dev");
    assert_eq!(dev.budgets[0].limit, Money::from_nanos(25_500_000_000));
    assert_eq!(dev.budgets[0].period, Period::Weekly);
    assert_eq!(
        (dev.team.as_deref(), dev.org.as_deref()),
        (Some("research"), Some("acme"))
    );
    assert_eq!(dev.metadata["owner"], "ada@example.com");
    let ci = store.get("ci").unwrap();
    assert!(ci.expires_at.is_some());
    assert_eq!(ci.budgets[0].mode, BudgetMode::Balance);
    assert_eq!(ci.budgets[0].limit, Money::from_nanos(10_000_000_001));

    let mut svc = AuthLayer::new(store).layer(echo());
    assert_eq!(send(&mut svc, bearer("sk-dev-plaintext")).await.body, "dev");
    assert_eq!(send(&mut svc, bearer("sk-ci-secret")).await.body, "ci");
    assert_eq!(
        send(&mut svc, bearer("sk-prefixed")).await.code(),
        "account_disabled"
    );
    // The file's hash is not a key.
    assert_eq!(
        send(&mut svc, bearer(&sha256("sk-ci-secret"))).await.code(),
        "invalid_api_key"
    );
}

#[tokio::test]
async fn json_file_as_array_or_object() {
    let array = format!(
        r#"[
  {{"id": "a", "secret": "sk-json-a", "budget_usd": 5, "budget_period": "never"}},
  {{"id": "b", "secret_sha256": "{}", "created_at": "2026-01-01T00:00:00+01:00"}}
]"#,
        sha256("sk-json-b")
    );
    let file = TempFile::new("keys.json", &array);
    let store = MemoryKeyStore::load(&file.0).unwrap();
    assert_eq!(store.get("a").unwrap().budgets[0].period, Period::Never);
    let mut svc = AuthLayer::new(store).layer(echo());
    assert_eq!(send(&mut svc, bearer("sk-json-a")).await.body, "a");
    assert_eq!(send(&mut svc, bearer("sk-json-b")).await.body, "b");

    let object = r#"{"keys": [{"id": "c", "secret": "sk-json-c"}]}"#;
    assert_eq!(KeyFile::from_json(object).unwrap().records()[0].id, "c");
    assert!(KeyFile::from_json(r#"{"keys": [], "extra": 1}"#).is_err());
}

#[test]
fn errors_name_the_field_and_line_and_never_the_secret() {
    let toml_cases = [
        (
            "[[keys]]\nid = \"a\"\nsecret = \"sk-hunter2\"\ncolour = \"blue\"\n",
            "TOML key file, line 4: unknown field `colour`",
        ),
        (
            "[[keys]]\nid = \"a\"\nsecret = \"sk-hunter2\"\nrevoked = 1\n",
            "TOML key file, line 4: field `revoked`: invalid type: integer `1`, expected a boolean",
        ),
        (
            "[[keys]]\nid = \"a\"\nsecret = \"sk-hunter2\"\n\n[[keys]]\nid = \"b\"\nsecret = \"sk-other\"\nexpires_at = \"next tuesday\"\n",
            "entry 2, line 8: key `b`: `expires_at` is not an RFC 3339 date-time",
        ),
        (
            "[[keys]]\nid = \"a\"\nsecret = \"sk-hunter2\"\n[[keys]]\nid = \"a\"\nsecret = \"sk-other\"\n",
            "entry 2, line 4: duplicate key id `a` (first used by entry 1)",
        ),
        (
            "[[keys]]\nid = \"a\"\nsecret = \"sk-hunter2\"\n[[keys]]\nid = \"b\"\nsecret = \"sk-hunter2\"\n",
            "keys `b` and `a` have the same secret",
        ),
        (
            "[[keys]]\nid = \"a\"\nsecret_sha256 = \"sk-hunter2\"\n",
            "entry 1, line 3: key `a`: `secret_sha256` must be 64 hex digits",
        ),
        (
            "[[keys]]\nid = \"a\"\nsecret = \"sk-hunter2\"\nbudget_usd = 10\nbudget_period = \"fortnightly\"\n",
            "entry 1, line 5: key `a`: `budget_period` must be one of daily, weekly, monthly, never",
        ),
        ("[[keys]]\nsecret = \"sk-hunter2\"\n", "missing field `id`"),
        ("[[keys]\n", "TOML key file, line 1:"),
    ];
    for (text, expected) in toml_cases {
        let err = KeyFile::from_toml(text).unwrap_err().to_string();
        assert!(
            err.starts_with(expected) || err.contains(expected),
            "{err}\nwanted: {expected}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    let json_cases = [
        (
            r#"[{"id": "a", "secret": "sk-hunter2", "models": "gpt-4o"}]"#,
            "JSON key file, line 1: field `models`: invalid type: string",
        ),
        (
            r#"[{"id": "a", "secret": "sk-hunter2", "max_concurrent": 0}]"#,
            "entry 1: key `a`: `max_concurrent` must be at least 1",
        ),
        (
            r#"[{"id": "a", "secret": "sk-hunter2", "budget_usd": -1}]"#,
            "`budget_usd` must not be negative",
        ),
        (
            r#"[{"id": "a", "secret": " sk-hunter2"}]"#,
            "`secret` has leading or trailing whitespace",
        ),
        (
            "[{\"id\": \"a\",\n \"secret\": \"sk-hunter2\",\n \"secret\": \"x\"}]",
            "JSON key file, line 3: duplicate field `secret`",
        ),
    ];
    for (text, expected) in json_cases {
        let err = KeyFile::from_json(text).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}\nwanted: {expected}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

#[test]
fn file_level_errors() {
    let file = TempFile::new("keys.yaml", "keys: []");
    assert!(matches!(
        KeyFile::load(&file.0),
        Err(KeyFileError::UnknownFormat { .. })
    ));
    let missing = std::env::temp_dir().join("tollgate-auth-does-not-exist.toml");
    let err = MemoryKeyStore::load(&missing).unwrap_err();
    assert!(matches!(err, KeyFileError::Read { .. }));
    assert!(
        err.to_string()
            .contains("tollgate-auth-does-not-exist.toml")
    );
    // An empty file is an empty key list.
    assert!(KeyFile::from_toml("").unwrap().records().is_empty());
}

#[test]
fn entries_embed_in_other_configuration() {
    /// A gateway's own configuration, reusing the key format.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct GatewayConfig {
        listen: String,
        #[serde(default)]
        keys: Vec<KeyEntry>,
    }
    let config: GatewayConfig = toml::from_str(
        "listen = \"127.0.0.1:8080\"\n[[keys]]\nid = \"a\"\nsecret = \"sk-a\"\n[[keys]]\nid = \"a\"\nsecret = \"sk-b\"\n",
    )
    .unwrap();
    assert_eq!(config.listen, "127.0.0.1:8080");
    let err = KeyFile::from_entries(config.keys).unwrap_err();
    assert!(matches!(err, KeyFileError::DuplicateId { .. }), "{err}");

    // A record written back as an entry loads to the same record.
    let (_secret, record) = tollgate::auth::KeyRecord::generate().unwrap();
    let record = record.with_allowed_models(["gpt-4o"]);
    let line = serde_json::to_string(&KeyEntry::from_record(&record)).unwrap();
    assert!(line.contains("\"secret_sha256\""));
    let entry: KeyEntry = serde_json::from_str(&line).unwrap();
    let back = entry.into_record().unwrap();
    assert_eq!(back.secret_hash, record.secret_hash);
    assert_eq!(back.allowed_models, record.allowed_models);
}

#[tokio::test]
async fn files_hold_the_users_teams_and_orgs_their_keys_name() {
    use tollgate::auth::{KeyStore, TenantKind};
    let toml = TempFile::new(
        "tenants.toml",
        r#"
[[orgs]]
id = "acme"
balance_usd = 100

[[teams]]
id = "research"
org = "acme"
requests_per_minute = 600
budget_usd = 50

[[users]]
id = "ann"
disabled = true

[[keys]]
id = "alice"
secret = "sk-alice"
team = "research"
user = "ann"
"#,
    );
    let store = MemoryKeyStore::load(&toml.0).unwrap();
    let team = store
        .tenant(&TenantKind::Team.scope("research"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(team.org.as_deref(), Some("acme"));
    assert_eq!(team.rate_limits, [Limit::requests_per_minute(600)]);
    assert_eq!(team.budgets[0].limit, Money::from_usd(50));
    assert!(
        store
            .get_tenant(&TenantKind::User.scope("ann"))
            .unwrap()
            .disabled
    );
    assert_eq!(
        store
            .get_tenant(&TenantKind::Org.scope("acme"))
            .unwrap()
            .budgets[0]
            .mode,
        BudgetMode::Balance
    );
    // The key's first request meets its disabled user.
    let answer = send(&mut AuthLayer::new(store).layer(echo()), bearer("sk-alice")).await;
    assert_eq!(answer.status, http::StatusCode::FORBIDDEN);
    assert_eq!(answer.code(), "account_disabled");

    // JSON: the tables beside "keys".
    let file = KeyFile::from_json(
        r#"{"keys":[{"id":"a","secret":"sk-a","team":"t"}],"teams":[{"id":"t","tokens_per_day":1000}]}"#,
    )
    .unwrap();
    assert_eq!(file.records().len(), 1);
    assert_eq!(file.tenants()[0].kind, TenantKind::Team);
}

#[test]
fn tenant_errors_name_the_table_entry_line_and_field() {
    let err =
        KeyFile::from_toml("[[teams]]\nid = \"a\"\n\n[[users]]\nid = \"ann\"\norg = \"acme\"\n")
            .unwrap_err();
    assert_eq!(
        err.to_string(),
        "users entry 1, line 6: user `ann`: `org` is only for a team: users and orgs belong to no org"
    );
    let err = KeyFile::from_toml("[[teams]]\nid = \"a\"\n\n[[teams]]\nid = \"a\"\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "teams entry 2, line 4: duplicate team id `a` (first used by entry 1)"
    );
    // A user and a team may share an id: they are different scopes.
    let file = KeyFile::from_toml("[[teams]]\nid = \"a\"\n\n[[users]]\nid = \"a\"\n").unwrap();
    assert_eq!(file.tenants().len(), 2);
    // An unknown table is still an error.
    let err = KeyFile::from_toml("[[groups]]\nid = \"a\"\n").unwrap_err();
    assert!(err.to_string().contains("unknown field `groups`"), "{err}");
}
