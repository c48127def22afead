//! A successful authentication with 1,000,000 keys in the store.
//!
//! `cargo bench --bench auth -- --warm-up-time 1 --measurement-time 3`
//!
//! - `auth/sha256`: hashing the presented key alone.
//! - `auth/hash+lookup`: one SHA-256 and one map read, the floor.
//! - `auth/layer`: the whole `Auth` service around a no-op inner service:
//!   extract the Bearer key, hash, look up, check, insert the `Principal`,
//!   call, and map the response (dropping the request and response included).
//! - `auth/baseline`: the same requests sent to the no-op service alone;
//!   `layer - baseline` is what authentication adds to a request.

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::{Empty, Full};
use tollgate::auth::{AuthLayer, KeyHash, KeyRecord};
use tollgate::store::memory::MemoryKeyStore;
use tower::{Layer, Service, ServiceExt, service_fn};

const KEYS: usize = 1_000_000;

/// Shaped like a minted key: `sk-` and 43 characters, 46 bytes, which
/// SHA-256 hashes in one block.
fn secret(i: usize) -> String {
    format!("sk-{i:043}")
}

fn store() -> MemoryKeyStore {
    let store = MemoryKeyStore::new();
    for i in 0..KEYS {
        let record = KeyRecord::new(format!("key-{i}"), KeyHash::of(secret(i)))
            .with_team("bench")
            .with_allowed_models(Vec::<String>::new());
        store.insert(record).expect("distinct secrets");
    }
    store
}

fn bench(c: &mut Criterion) {
    let store = store();
    // Requests cycle over keys spread across the store, so the measurement
    // is not one hot cache line.
    let sample: Vec<String> = (0..4096).map(|i| secret(i * (KEYS / 4096))).collect();

    let mut group = c.benchmark_group("auth");
    let mut n = 0;
    group.bench_function("sha256", |b| {
        b.iter(|| {
            n = (n + 1) % sample.len();
            KeyHash::of(black_box(sample[n].as_bytes()))
        })
    });
    let mut n = 0;
    group.bench_function("hash+lookup", |b| {
        b.iter(|| {
            n = (n + 1) % sample.len();
            let hash = KeyHash::of(black_box(sample[n].as_bytes()));
            black_box(store.get_by_hash(&hash))
        })
    });

    let inner = service_fn(|req: Request<Full<Bytes>>| {
        black_box(&req);
        std::future::ready(Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())))
    });
    let request = |n: usize| {
        Request::post("/v1/chat/completions")
            .header("authorization", format!("Bearer {}", sample[n]))
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("valid request")
    };

    let mut base = inner;
    let mut n = 0;
    group.bench_function("baseline", |b| {
        b.iter_batched(
            || {
                n = (n + 1) % sample.len();
                request(n)
            },
            |req| {
                let svc = base.ready().now_or_never().expect("ready").expect("ok");
                svc.call(req).now_or_never().expect("ready").expect("ok")
            },
            BatchSize::SmallInput,
        )
    });

    let mut svc = AuthLayer::new(store.clone()).layer(inner);
    let mut n = 0;
    group.bench_function("layer", |b| {
        b.iter_batched(
            || {
                n = (n + 1) % sample.len();
                request(n)
            },
            |req| {
                let svc = svc.ready().now_or_never().expect("ready").expect("ok");
                let response = svc.call(req).now_or_never().expect("ready").expect("ok");
                assert_eq!(response.status(), 200);
                response
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
