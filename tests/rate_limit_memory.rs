//! The memory store stays bounded: a million keys come and go, and a flood
//! of new keys stops at the cap.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tollgate::rate_limit::{Acquire, Limit, RateLimitKey, RateLimitStore, Verdict};
use tollgate::store::memory::MemoryRateLimitStore;

/// Counts the bytes live on the heap.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout, same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as in `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const LIMITS: [Limit; 2] = [
    Limit::requests_per_minute(60),
    Limit::tokens_per_minute(150_000),
];

async fn admit(store: &MemoryRateLimitStore, key: &str) -> Verdict {
    store
        .acquire(
            RateLimitKey::new(key),
            &Acquire {
                limits: &LIMITS,
                costs: &[1, 500],
                max_concurrent: None,
            },
        )
        .await
        .unwrap()
        .verdict
}

#[tokio::test(start_paused = true)]
async fn a_million_keys_then_idle_time_shrinks_back() {
    // The cap is split over the shards; leave room for their unevenness.
    let store = MemoryRateLimitStore::builder()
        .max_keys(1_100_000)
        .sweep_interval(Duration::from_secs(10))
        .build();
    let baseline = LIVE.load(Ordering::Relaxed);
    let mut key = String::new();
    for i in 0..1_000_000u32 {
        key.clear();
        key.push_str("key_");
        key.push_str(&i.to_string());
        assert_eq!(admit(&store, &key).await, Verdict::Admitted);
    }
    assert_eq!(store.len(), 1_000_000);
    let peak = LIVE.load(Ordering::Relaxed) - baseline;
    let per_key = peak / 1_000_000;
    println!("{peak} bytes for 1,000,000 keys: {per_key} bytes per key");
    assert!(per_key <= 128, "{per_key} bytes per key");

    // Nothing is evicted while keys are not back to full (a request costs
    // one second of the requests limit).
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(store.sweep(), 0);

    // Idle: every key is back to full and goes, and the memory with it.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(store.sweep(), 1_000_000);
    assert!(store.is_empty());
    let after = LIVE.load(Ordering::Relaxed).saturating_sub(baseline);
    println!("{after} bytes after the sweep");
    assert!(after < 256 * 1024, "{after} bytes left after the sweep");
}

#[tokio::test(start_paused = true)]
async fn shards_sweep_themselves_when_used() {
    let store = MemoryRateLimitStore::builder()
        .shards(4)
        .sweep_interval(Duration::from_secs(10))
        .build();
    for i in 0..10_000 {
        admit(&store, &format!("user-{i}")).await;
    }
    assert_eq!(store.len(), 10_000);
    tokio::time::advance(Duration::from_secs(11)).await;
    // Traffic on a few keys sweeps the shards it lands on.
    for i in 0..64 {
        admit(&store, &format!("other-{i}")).await;
    }
    assert_eq!(store.len(), 64);
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_new_keys_stops_at_the_cap() {
    let store = MemoryRateLimitStore::builder()
        .shards(8)
        .max_keys(1000)
        .build();
    for i in 0..20_000 {
        // Every new key is still admitted: the cap evicts, it never refuses.
        assert_eq!(
            admit(&store, &format!("flood-{i}")).await,
            Verdict::Admitted
        );
        assert!(store.len() <= 1000);
    }
    assert_eq!(store.len(), 1000);
}

#[tokio::test(start_paused = true)]
async fn in_flight_keys_are_kept() {
    let store = MemoryRateLimitStore::builder().build();
    let limits = [Limit::requests_per_second(10)];
    let acquire = Acquire {
        limits: &limits,
        costs: &[1],
        max_concurrent: Some(1),
    };
    let key = RateLimitKey::new("streaming");
    assert_eq!(
        store.acquire(key, &acquire).await.unwrap().verdict,
        Verdict::Admitted
    );
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(store.sweep(), 0);
    assert_eq!(
        store.acquire(key, &acquire).await.unwrap().verdict,
        Verdict::Concurrency
    );
    store
        .settle(
            key,
            &tollgate::rate_limit::Settle {
                limits: &limits,
                deltas: &[0],
                release: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(store.sweep(), 1);
}
