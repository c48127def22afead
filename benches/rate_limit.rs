//! One admission (a requests limit and a tokens limit) against the memory
//! store, with 1 key and with 1,000,000 keys held; and the bytes each key
//! costs, measured with a counting allocator.
//!
//! ```text
//! cargo bench --bench rate_limit -- --warm-up-time 1 --measurement-time 3
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use http::{Request, Response};
use http_body_util::Full;
use tollgate::auth::{KeyHash, KeyRecord, Principal};
use tollgate::rate_limit::{Acquire, Limit, RateLimitKey, RateLimitLayer, RateLimitStore};
use tollgate::store::memory::MemoryRateLimitStore;
use tower::{Service, ServiceBuilder, service_fn};

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

// Large enough that every benchmarked admission is admitted (a refusal
// costs about the same), small enough to stay on the 64-bit fast path as
// every realistic limit does.
const LIMITS: [Limit; 2] = [
    Limit::requests_per_minute(1 << 30),
    Limit::tokens_per_minute(1 << 36),
];
const COSTS: [u64; 2] = [1, 100];

fn acquire(store: &MemoryRateLimitStore, key: &str) {
    let admission = store
        .acquire(
            RateLimitKey::new(key),
            &Acquire {
                limits: &LIMITS,
                costs: &COSTS,
                max_concurrent: None,
            },
        )
        .into_inner();
    black_box(admission.ok());
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("key_{i:08}")).collect()
}

fn admission(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit/admission");

    let store = MemoryRateLimitStore::new();
    group.bench_function("1 key", |b| b.iter(|| acquire(&store, black_box("key_1"))));

    let store = MemoryRateLimitStore::builder().max_keys(2_000_000).build();
    let keys = keys(1_000_000);
    for key in &keys {
        acquire(&store, key);
    }
    let mut i = 0;
    group.bench_function("1000000 keys", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            acquire(&store, &keys[i]);
        })
    });
    group.finish();

    // The whole layer around a no-op service, for scale: key extraction,
    // store, headers, response.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut record = KeyRecord::new("alice", KeyHash([0; 32]));
    record.rate_limits = vec![Limit::requests_per_minute(1 << 40)];
    let alice = Principal::new(record);
    let mut service = ServiceBuilder::new()
        .layer(RateLimitLayer::new())
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }));
    c.bench_function("rate_limit/layer call (requests limit)", |b| {
        b.iter(|| {
            let mut req = Request::new(Full::new(Bytes::new()));
            req.extensions_mut().insert(alice.clone());
            let response = runtime.block_on(service.call(req));
            black_box(response.ok());
        })
    });
}

/// CPU time per admission, from the kernel's account of this thread's run
/// time (Linux): on a shared machine, criterion's wall-clock figures also
/// count the time other processes hold the CPU.
fn cpu_time_per_admission() {
    fn cpu_ns() -> Option<f64> {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        let line = sched
            .lines()
            .find(|l| l.starts_with("se.sum_exec_runtime"))?;
        let ms: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
        Some(ms * 1e6)
    }
    let n = 10_000_000;
    let measure = |store: &MemoryRateLimitStore, keys: &[String]| -> Option<f64> {
        let start = cpu_ns()?;
        let mut i = 0;
        for _ in 0..n {
            i = (i + 7919) % keys.len();
            acquire(store, &keys[i]);
        }
        Some((cpu_ns()? - start) / n as f64)
    };
    // What the loop costs without the store: fetching scattered key strings
    // from a million is itself two cache misses.
    let baseline = |keys: &[String]| -> Option<f64> {
        let start = cpu_ns()?;
        let mut i = 0;
        for _ in 0..n {
            i = (i + 7919) % keys.len();
            black_box(keys[i].as_bytes().last());
        }
        Some((cpu_ns()? - start) / n as f64)
    };
    let one = vec!["key_1".to_owned()];
    let many = keys(1_000_000);
    let store = MemoryRateLimitStore::builder().max_keys(2_000_000).build();
    for key in &many {
        acquire(&store, key);
    }
    if let (Some(a), Some(b), Some(c)) = (
        measure(&MemoryRateLimitStore::new(), &one),
        measure(&store, &many),
        baseline(&many),
    ) {
        println!(
            "rate_limit/admission CPU time: {a:.0} ns with 1 key, {b:.0} ns with 1,000,000 keys \
             (of which {c:.0} ns is the loop fetching its scattered key strings)"
        );
    }
}

/// Bytes per key: heap growth over 1,000,000 keys with two limits each.
fn bytes_per_key() {
    let keys = keys(1_000_000);
    let store = MemoryRateLimitStore::builder().max_keys(2_000_000).build();
    let before = LIVE.load(Ordering::Relaxed);
    for key in &keys {
        acquire(&store, key);
    }
    let grown = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "rate_limit/bytes per key: {} bytes for {} keys = {:.1} bytes per key",
        grown,
        store.len(),
        grown as f64 / store.len() as f64
    );
}

criterion_group!(benches, admission);

fn main() {
    bytes_per_key();
    cpu_time_per_admission();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
