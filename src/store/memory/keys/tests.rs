use super::*;

#[test]
fn insert_replace_rotate_remove() {
    let store = MemoryKeyStore::new();
    let a1 = KeyHash::of("sk-a1");
    assert!(store.insert(KeyRecord::new("a", a1)).unwrap().is_none());
    assert_eq!(store.len(), 1);
    // Same id, new secret: the old secret stops working.
    let a2 = KeyHash::of("sk-a2");
    let old = store.insert(KeyRecord::new("a", a2)).unwrap().unwrap();
    assert_eq!(old.secret_hash, a1);
    assert!(store.get_by_hash(&a1).is_none());
    assert_eq!(store.get("a").unwrap().secret_hash, a2);
    // Another id with the same secret is refused.
    let err = store.insert(KeyRecord::new("b", a2)).unwrap_err();
    assert_eq!(err.to_string(), "key `b` has the same secret as key `a`");
    assert!(store.set_disabled("a", true));
    assert!(store.get("a").unwrap().disabled);
    assert!(store.revoke("a") && !store.revoke("nobody"));
    assert!(store.remove("a").unwrap().revoked);
    assert!(store.is_empty() && store.get_by_hash(&a2).is_none());
}

#[test]
fn revocation_is_copy_on_write() {
    let store = MemoryKeyStore::new();
    store.insert(KeyRecord::new("a", KeyHash::of("s"))).unwrap();
    let held = store.get("a").unwrap();
    store.revoke("a");
    assert!(!held.revoked);
    assert!(store.get("a").unwrap().revoked);
}

#[test]
fn hashes_that_are_not_random_still_spread() {
    // Sequential `secret_sha256` values, as a test config or a careless
    // generator gives them: they differ in their last bytes only.
    let state = SeededHashing::default();
    let n = 4096u32;
    let mut slots = std::collections::HashSet::new();
    let mut tags = std::collections::HashSet::new();
    for i in 0..n {
        let mut bytes = [0u8; 32];
        bytes[28..].copy_from_slice(&i.to_be_bytes());
        let h = state.hash_one(KeyHash(bytes));
        slots.insert(h & 0xfff);
        tags.insert(h >> 57);
    }
    // 4,096 balls in 4,096 bins fill ~63 %; folded as they were, these
    // values fell in one slot.
    assert!(slots.len() > 2300, "{} distinct slots", slots.len());
    assert_eq!(tags.len(), 128);

    let store = MemoryKeyStore::new();
    for i in 0..2000u32 {
        let mut bytes = [0u8; 32];
        bytes[28..].copy_from_slice(&i.to_be_bytes());
        store
            .insert(KeyRecord::new(format!("k{i}"), KeyHash(bytes)))
            .unwrap();
    }
    let sizes: Vec<usize> = store.inner.shards.iter().map(|s| read(s).len()).collect();
    let expected = 2000 / sizes.len();
    assert!(sizes.iter().all(|&n| n > expected / 3), "{sizes:?}");
}

#[test]
fn many_keys_spread_over_shards() {
    let store = MemoryKeyStore::new();
    for i in 0..2000 {
        store
            .insert(KeyRecord::new(
                format!("k{i}"),
                KeyHash::of(format!("s{i}")),
            ))
            .unwrap();
    }
    let sizes: Vec<usize> = store.inner.shards.iter().map(|s| read(s).len()).collect();
    let expected = 2000 / sizes.len();
    assert!(sizes.iter().all(|&n| n > expected / 3), "{sizes:?}");
    for i in (0..2000).step_by(97) {
        assert_eq!(
            store.get_by_hash(&KeyHash::of(format!("s{i}"))).unwrap().id,
            format!("k{i}")
        );
    }
}
