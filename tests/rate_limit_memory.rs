//! The memory store stays bounded: a million keys come and go, and a flood
//! of new keys stops at the cap. It holds one state per key and limit: at
//! most 128 bytes each for GCRA and fixed windows, and the figure its docs
//! state for sliding windows.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tollgate::rate_limit::{
    Acquire, Algorithm, Limit, RateLimitKey, RateLimitStore, Receipt, ScopeCharge, ScopeSettle,
    Settle, Verdict,
};
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

/// The heap is one counter for every test of this file: those that measure
/// it take turns.
static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LIMITS: [Limit; 2] = [
    Limit::requests_per_minute(60).algorithm(Algorithm::Gcra),
    Limit::tokens_per_minute(150_000).algorithm(Algorithm::Gcra),
];

async fn admit_with(store: &MemoryRateLimitStore, key: &str, limits: &[Limit]) -> Verdict {
    store
        .acquire(&Acquire {
            scopes: &[ScopeCharge {
                key: RateLimitKey::new(key),
                limits,
                costs: &[1, 500][..limits.len()],
                max_concurrent: None,
            }],
        })
        .await
        .unwrap()
        .verdict
}

async fn admit(store: &MemoryRateLimitStore, key: &str) -> Verdict {
    admit_with(store, key, &LIMITS).await
}

#[tokio::test(start_paused = true)]
async fn a_million_keys_then_idle_time_shrinks_back() {
    let _turn = MEASURING.lock().await;
    // The cap is split over the shards; leave room for their unevenness.
    let store = MemoryRateLimitStore::builder()
        .max_keys(2_200_000)
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
    // One state per key and limit.
    assert_eq!(store.len(), 2_000_000);
    let peak = LIVE.load(Ordering::Relaxed) - baseline;
    let per_state = peak / 2_000_000;
    println!("{peak} bytes for 1,000,000 keys of two limits: {per_state} bytes per key and limit");
    assert!(per_state <= 128, "{per_state} bytes per key and limit");

    // Nothing is evicted while keys are not back to full (a request costs
    // one second of the requests limit).
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(store.sweep(), 0);

    // Idle: every key is back to full and goes, and the memory with it.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(store.sweep(), 2_000_000);
    assert!(store.is_empty());
    let after = LIVE.load(Ordering::Relaxed).saturating_sub(baseline);
    println!("{after} bytes after the sweep");
    assert!(after < 256 * 1024, "{after} bytes left after the sweep");
}

#[tokio::test(start_paused = true)]
async fn shards_sweep_themselves_when_used() {
    let _turn = MEASURING.lock().await;
    let store = MemoryRateLimitStore::builder()
        .shards(4)
        .sweep_interval(Duration::from_secs(10))
        .build();
    for i in 0..10_000 {
        admit(&store, &format!("user-{i}")).await;
    }
    assert_eq!(store.len(), 20_000);
    tokio::time::advance(Duration::from_secs(11)).await;
    // Traffic on a few keys sweeps the shards it lands on.
    for i in 0..64 {
        admit(&store, &format!("other-{i}")).await;
    }
    assert_eq!(store.len(), 128);
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_new_keys_stops_at_the_cap() {
    let _turn = MEASURING.lock().await;
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
    let key = RateLimitKey::new("streaming");
    let scopes = [ScopeCharge {
        key,
        limits: &limits,
        costs: &[1],
        max_concurrent: Some(1),
    }];
    let acquire = Acquire { scopes: &scopes };
    assert_eq!(
        store.acquire(&acquire).await.unwrap().verdict,
        Verdict::Admitted
    );
    // The limit's state is back to full and goes; the request in flight stays.
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(store.sweep(), 1);
    assert_eq!(
        store.acquire(&acquire).await.unwrap().verdict,
        Verdict::Concurrency
    );
    store
        .settle(&Settle {
            scopes: &[ScopeSettle {
                key,
                limits: &limits,
                deltas: &[0],
                release: true,
            }],
            receipt: Receipt::NONE,
        })
        .await
        .unwrap();
    assert_eq!(store.sweep(), 1);
    assert!(store.is_empty());
}

#[tokio::test(start_paused = true)]
async fn fixed_and_sliding_states_cost_what_the_docs_say() {
    let _turn = MEASURING.lock().await;
    let fixed = [Limit::requests_per_minute(60).algorithm(Algorithm::Fixed)];
    let sliding = [Limit::requests_per_minute(60)];
    for (limits, bound) in [(&fixed, 128), (&sliding, 128 + 112)] {
        let store = MemoryRateLimitStore::builder().max_keys(300_000).build();
        let baseline = LIVE.load(Ordering::Relaxed);
        for i in 0..200_000u32 {
            assert_eq!(
                admit_with(&store, &format!("k{i}"), &limits[..]).await,
                Verdict::Admitted
            );
        }
        let per_state = (LIVE.load(Ordering::Relaxed) - baseline) / 200_000;
        println!(
            "{:?}: {per_state} bytes per key and limit",
            limits[0].algorithm
        );
        assert!(per_state <= bound, "{per_state} bytes per key and limit");
        drop(store);
    }
    // A sliding state with every bucket of its window in use: 61 buckets.
    let store = MemoryRateLimitStore::new();
    let baseline = LIVE.load(Ordering::Relaxed);
    for _ in 0..120 {
        tokio::time::advance(Duration::from_millis(500)).await;
        admit_with(&store, "busy", &sliding).await;
    }
    let one = LIVE.load(Ordering::Relaxed) - baseline;
    println!("a sliding state with a full window: {one} bytes");
    assert!(one <= 1_200, "{one} bytes");
}
