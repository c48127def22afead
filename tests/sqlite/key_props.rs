//! The SQLite key store against the memory key store: random sequences of
//! every admin operation and lookup, with restarts, compared answer by
//! answer, then reopened and compared again.

use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;
use tollgate::auth::{KeyAdmin, KeyHash, KeyRecord, KeyStore, PutMode, RetiredSecret};
use tollgate::budget::{BudgetScope, BudgetSpec};
use tollgate::rate_limit::Limit;
use tollgate::store::memory::MemoryKeyStore;
use tollgate::store::sqlite::SqliteStore;

use super::{paused_runtime, usd};

#[derive(Debug, Clone)]
enum KeyOp {
    Put {
        id: u8,
        secrets: Vec<u8>,
        revoked: bool,
        create: bool,
    },
    Delete {
        id: u8,
    },
    Get {
        id: u8,
    },
    List {
        after: Option<u8>,
        limit: usize,
    },
    Lookup {
        secret: u8,
    },
    Restart,
}

fn key_op() -> impl Strategy<Value = KeyOp> {
    prop_oneof![
        6 => (0u8..5, prop::collection::vec(0u8..8, 1..4), any::<bool>(), any::<bool>())
            .prop_map(|(id, secrets, revoked, create)| KeyOp::Put { id, secrets, revoked, create }),
        2 => (0u8..5).prop_map(|id| KeyOp::Delete { id }),
        2 => (0u8..5).prop_map(|id| KeyOp::Get { id }),
        1 => (prop::option::of(0u8..5), 0usize..4).prop_map(|(after, limit)| KeyOp::List { after, limit }),
        3 => (0u8..8).prop_map(|secret| KeyOp::Lookup { secret }),
        1 => Just(KeyOp::Restart),
    ]
}

fn record(id: u8, secrets: &[u8], revoked: bool) -> KeyRecord {
    let mut record = KeyRecord::new(
        format!("key-{id}"),
        KeyHash::of(format!("sk-{}", secrets[0])),
    );
    record.created_at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    record.revoked = revoked;
    record.name = Some(format!("key number {id}"));
    record.allowed_models = vec!["gpt-4o*".into()];
    record.rate_limits = vec![
        Limit::requests_per_minute(60 + u64::from(id)),
        Limit::tokens_per_minute(100_000),
    ];
    record.team = Some("research".into());
    record
        .metadata
        .insert("owner".into(), format!("owner-{id}"));
    record.budgets = vec![BudgetSpec::balance(
        BudgetScope::Key(record.id.clone()),
        usd("3.5"),
    )];
    record.retired = secrets[1..]
        .iter()
        .map(|s| RetiredSecret {
            hash: KeyHash::of(format!("sk-{s}")),
            until: UNIX_EPOCH + Duration::from_secs(1_900_000_000),
        })
        .collect();
    record
}

async fn same_key_stores(ops: Vec<KeyOp>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let reference = MemoryKeyStore::new();
    let mut store = SqliteStore::open(&path).unwrap();
    let mut keys = store.keys();
    for op in ops {
        match op {
            KeyOp::Put {
                id,
                secrets,
                revoked,
                create,
            } => {
                let record = record(id, &secrets, revoked);
                let mode = if create {
                    PutMode::Create
                } else {
                    PutMode::Upsert
                };
                let expected = KeyAdmin::put(&reference, record.clone(), mode).await;
                prop_assert_eq!(expected, keys.put(record, mode).await);
            }
            KeyOp::Delete { id } => {
                let id = format!("key-{id}");
                let expected = KeyAdmin::delete(&reference, &id).await;
                prop_assert_eq!(expected, keys.delete(&id).await);
            }
            KeyOp::Get { id } => {
                let id = format!("key-{id}");
                let expected = KeyAdmin::get(&reference, &id).await;
                prop_assert_eq!(expected, keys.get(&id).await);
            }
            KeyOp::List { after, limit } => {
                let after = after.map(|a| format!("key-{a}"));
                let expected = KeyAdmin::list(&reference, after.as_deref(), limit).await;
                prop_assert_eq!(expected, keys.list(after.as_deref(), limit).await);
            }
            KeyOp::Lookup { secret } => {
                let hash = KeyHash::of(format!("sk-{secret}"));
                prop_assert_eq!(reference.lookup(&hash).await, keys.lookup(&hash).await);
            }
            KeyOp::Restart => {
                store.close().await.unwrap();
                drop((store, keys));
                store = SqliteStore::open(&path).unwrap();
                keys = store.keys();
            }
        }
    }
    drop((store, keys));
    let store = SqliteStore::open(&path).unwrap();
    let all = store.keys().list(None, usize::MAX).await;
    prop_assert_eq!(KeyAdmin::list(&reference, None, usize::MAX).await, all);
    for secret in 0..8 {
        let hash = KeyHash::of(format!("sk-{secret}"));
        prop_assert_eq!(
            reference.lookup(&hash).await,
            store.keys().lookup(&hash).await
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_key_store_answers_as_the_memory_key_store_before_and_after_reopens(
        ops in prop::collection::vec(key_op(), 1..40)
    ) {
        paused_runtime().block_on(same_key_stores(ops))?;
    }
}
