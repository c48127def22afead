//! One admission (a requests limit and a tokens limit) against the memory
//! store, for each algorithm (sliding, GCRA, fixed), with 1 key and with
//! 1,000,000 keys held; and the bytes each key costs, measured with a
//! counting allocator.
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
use tollgate::rate_limit::{
    Acquire, Algorithm, Limit, RateLimitKey, RateLimitLayer, RateLimitStore, ScopeCharge,
};
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
fn limits(algorithm: Algorithm) -> [Limit; 2] {
    [
        Limit::requests_per_minute(1 << 30).algorithm(algorithm),
        Limit::tokens_per_minute(1 << 36).algorithm(algorithm),
    ]
}
const ALGORITHMS: [Algorithm; 3] = [Algorithm::Sliding, Algorithm::Gcra, Algorithm::Fixed];
const COSTS: [u64; 2] = [1, 100];

fn acquire(store: &MemoryRateLimitStore, limits: &[Limit; 2], key: &str) {
    let mut admission = store.acquire(&Acquire {
        scopes: &[ScopeCharge {
            key: RateLimitKey::new(key),
            limits,
            costs: &COSTS,
            max_concurrent: None,
        }],
    });
    black_box(admission.take_ready().map(|a| a.ok()));
}

/// The key `key_NNNNNNNN` of `i`, written into `buf`. Keys are made on the
/// stack rather than read from a table of a million strings: in a gateway
/// the key (the caller's id) is in cache already, and fetching it from a
/// scattered table would add cache misses the admission does not have.
fn key(i: usize, buf: &mut [u8; 12]) -> &str {
    buf[..4].copy_from_slice(b"key_");
    let mut n = i;
    for b in buf[4..].iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
    std::str::from_utf8(buf).unwrap_or("key_")
}

/// Admits the first `n` keys once, so that they are held.
fn fill(store: &MemoryRateLimitStore, limits: &[Limit; 2], n: usize) {
    let mut buf = [0; 12];
    for i in 0..n {
        acquire(store, limits, key(i, &mut buf));
    }
}

/// The next key of a walk over `n` keys that visits them in scattered order.
fn next(i: usize, n: usize) -> usize {
    (i + 7919) % n
}

fn admission(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit/admission");
    for algorithm in ALGORITHMS {
        let limits = limits(algorithm);
        let name = algorithm.as_str();
        let store = MemoryRateLimitStore::new();
        group.bench_function(format!("{name}/1 key"), |b| {
            b.iter(|| acquire(&store, &limits, black_box("key_1")))
        });
        drop(store);

        let store = MemoryRateLimitStore::builder().max_keys(4_000_000).build();
        fill(&store, &limits, 1_000_000);
        let (mut i, mut buf) = (0, [0; 12]);
        group.bench_function(format!("{name}/1000000 keys"), |b| {
            b.iter(|| {
                i = next(i, 1_000_000);
                acquire(&store, &limits, key(i, &mut buf));
            })
        });
    }
    group.finish();

    // The whole layer around a no-op service, for scale: key extraction,
    // store, headers, response.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut record = KeyRecord::new("alice", KeyHash([0; 32]));
    record.rate_limits = vec![Limit::requests_per_minute(1 << 40)];
    // The default algorithm (sliding).
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
    let iterations = 5_000_000;
    let measure = |store: &MemoryRateLimitStore, limits: &[Limit; 2], keys: usize| -> Option<f64> {
        let (mut i, mut buf) = (0, [0; 12]);
        let start = cpu_ns()?;
        for _ in 0..iterations {
            i = next(i, keys);
            acquire(store, limits, key(i, &mut buf));
        }
        Some((cpu_ns()? - start) / iterations as f64)
    };
    for algorithm in ALGORITHMS {
        let limits = limits(algorithm);
        let many = MemoryRateLimitStore::builder().max_keys(4_000_000).build();
        fill(&many, &limits, 1_000_000);
        if let (Some(a), Some(b)) = (
            measure(&MemoryRateLimitStore::new(), &limits, 1),
            measure(&many, &limits, 1_000_000),
        ) {
            println!(
                "rate_limit/admission CPU time ({}): {a:.0} ns with 1 key, {b:.0} ns with 1,000,000 keys",
                algorithm.as_str()
            );
        }
    }
}

/// Bytes per key: heap growth over 1,000,000 keys with two limits each
/// (two states per key), once each key has made one request.
fn bytes_per_key() {
    for algorithm in ALGORITHMS {
        let limits = limits(algorithm);
        let store = MemoryRateLimitStore::builder().max_keys(4_000_000).build();
        let before = LIVE.load(Ordering::Relaxed);
        fill(&store, &limits, 1);
        let one = LIVE.load(Ordering::Relaxed) - before;
        fill(&store, &limits, 1_000_000);
        let grown = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "rate_limit/bytes per key ({}): {one} bytes for 1 key; {grown} bytes for 1,000,000 keys = {:.1} bytes per key ({:.1} per key and limit)",
            algorithm.as_str(),
            grown as f64 / 1e6,
            grown as f64 / 2e6,
        );
    }
}

criterion_group!(benches, admission);

fn main() {
    bytes_per_key();
    cpu_time_per_admission();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
