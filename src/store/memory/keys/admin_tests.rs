use std::time::{Duration, UNIX_EPOCH};

use super::*;

#[tokio::test]
async fn put_create_refuses_an_existing_id_and_any_secret_of_another_key() {
    let store = MemoryKeyStore::new();
    let admin: &dyn KeyAdmin = &store;
    admin
        .put(KeyRecord::new("a", KeyHash::of("sa")), PutMode::Create)
        .await
        .unwrap();
    let exists = admin
        .put(KeyRecord::new("a", KeyHash::of("sx")), PutMode::Create)
        .await;
    assert!(matches!(exists, Err(StoreError::Conflict(_))), "{exists:?}");
    let mut b = KeyRecord::new("b", KeyHash::of("sb"));
    b.retired.push(crate::auth::RetiredSecret {
        hash: KeyHash::of("sa"),
        until: UNIX_EPOCH,
    });
    let taken = admin.put(b, PutMode::Upsert).await;
    let Err(StoreError::Conflict(message)) = taken else {
        panic!("{taken:?}")
    };
    assert!(!message.contains(&KeyHash::of("sa").to_hex()), "{message}");
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn a_rotated_key_answers_to_its_old_secret_until_forgotten() {
    let store = MemoryKeyStore::new();
    store
        .insert(KeyRecord::new("a", KeyHash::of("s1")))
        .unwrap();
    let mut record = (*store.get("a").unwrap()).clone();
    let until = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    record.rotate(KeyHash::of("s2"), until);
    KeyAdmin::put(&store, record, PutMode::Upsert)
        .await
        .unwrap();
    for secret in ["s1", "s2"] {
        let found = store.lookup(&KeyHash::of(secret)).await.unwrap().unwrap();
        assert_eq!(found.id, "a");
        assert_eq!(found.secret_hash, KeyHash::of("s2"));
    }
    // Rotating five more times forgets the oldest retired secrets.
    for n in 3..8 {
        let mut record = (*store.get("a").unwrap()).clone();
        record.rotate(KeyHash::of(format!("s{n}")), until);
        store.insert(record).unwrap();
    }
    let record = store.get("a").unwrap();
    assert_eq!(record.retired.len(), crate::auth::RetiredSecret::MAX_KEPT);
    assert!(store.get_by_hash(&KeyHash::of("s1")).is_none());
    assert!(store.get_by_hash(&KeyHash::of("s3")).is_some());
    // Deleting drops every secret.
    assert!(KeyAdmin::delete(&store, "a").await.unwrap());
    assert!(store.get_by_hash(&KeyHash::of("s7")).is_none());
    assert!(store.get_by_hash(&KeyHash::of("s3")).is_none());
    assert!(!KeyAdmin::delete(&store, "a").await.unwrap());
}

#[tokio::test]
async fn lists_page_in_id_order() {
    let store = MemoryKeyStore::new();
    for id in ["c", "a", "e", "b", "d"] {
        store.insert(KeyRecord::new(id, KeyHash::of(id))).unwrap();
    }
    let pages: [(Option<&str>, &[&str]); 4] = [
        (None, &["a", "b"]),
        (Some("b"), &["c", "d"]),
        (Some("d"), &["e"]),
        (Some("e"), &[]),
    ];
    for (after, expected) in pages {
        let page = KeyAdmin::list(&store, after, 2).await.unwrap();
        let ids: Vec<&str> = page.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, expected, "after {after:?}");
    }
}
