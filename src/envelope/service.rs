use std::cell::RefCell;
use std::convert::Infallible;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::Entry;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::ErrorFormat;
use super::future::ResponseFuture;
use super::layer::Config;
use super::render::X_REQUEST_ID;
use crate::BoxError;
use crate::body::ResponseBody;
use crate::error::ApiError;

/// The service built by [`ErrorEnvelopeLayer`](super::ErrorEnvelopeLayer).
#[derive(Debug)]
pub struct ErrorEnvelope<S> {
    inner: S,
    config: Arc<Config>,
    /// The inner service's readiness error, answered by the next `call`
    /// without calling the inner service (its contract forbids it).
    not_ready: Option<ApiError>,
}

impl<S: Clone> Clone for ErrorEnvelope<S> {
    fn clone(&self) -> Self {
        // A clone has not been polled ready: it does not inherit the error.
        ErrorEnvelope::from_parts(self.inner.clone(), self.config.clone())
    }
}

impl<S> ErrorEnvelope<S> {
    pub(crate) fn from_parts(inner: S, config: Arc<Config>) -> Self {
        ErrorEnvelope {
            inner,
            config,
            not_ready: None,
        }
    }

    /// Wraps `inner` with the default configuration.
    pub fn new(inner: S) -> Self {
        use tower_layer::Layer;
        super::ErrorEnvelopeLayer::new().layer(inner)
    }

    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ErrorEnvelope<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.not_ready.is_some() {
            return Poll::Ready(Ok(()));
        }
        // A readiness failure becomes this request's answer, rendered,
        // instead of the connection dying. The inner service is then not
        // called: calling a service whose `poll_ready` failed breaks its
        // contract (tower's `Buffer` panics).
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(error)) => {
                self.not_ready = Some(super::future::error_from_inner(error.into()));
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let format: ErrorFormat = self.config.format.pick(req.uri(), req.headers());
        // One lookup of the header, to read it and to set it.
        let request_id = match req.headers_mut().entry(X_REQUEST_ID) {
            Entry::Occupied(entry) if is_usable_request_id(entry.get()) => entry.get().clone(),
            Entry::Occupied(mut entry) => {
                let id = generate_request_id();
                entry.insert(id.clone());
                id
            }
            Entry::Vacant(entry) => entry.insert(generate_request_id()).clone(),
        };
        let (max, catch_panic) = (self.config.max_error_body_bytes, self.config.catch_panic);
        let future = match self.not_ready.take() {
            Some(error) => Err(error),
            None if catch_panic => catch_unwind(AssertUnwindSafe(|| self.inner.call(req)))
                .map_err(super::future::panic_error),
            // The usual path: the inner future is built in its place in the
            // response future, not moved there through a `Result` (it holds
            // every inner layer's future: each move copies them all).
            None => {
                return ResponseFuture::calling(
                    self.inner.call(req),
                    format,
                    request_id,
                    max,
                    false,
                );
            }
        };
        ResponseFuture::new(future, format, request_id, max, catch_panic)
    }
}

/// A client's id is propagated when it is 1 to 256 visible ASCII characters,
/// so it can go into logs and error bodies as it is; otherwise (and when
/// absent) the request gets a fresh one.
fn is_usable_request_id(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    (1..=256).contains(&bytes.len()) && crate::header_values::is_visible_ascii(bytes)
}

/// `req_` and 24 hex digits, unique without a system call per request: 16
/// digits mixed from a per-process random seed and a batch number, then 8
/// of a counter.
///
/// Each thread takes 128 ids at a time (a batch number and the counter's
/// next 128 values), writes them side by side into one buffer and hands
/// each out as a slice of it: per request a reference count and 8 digits.
/// The buffer is freed once its last id is dropped. Ids are unique, not
/// secret: within a process, the ids of two batches differ in their first 16
/// digits (the mixing is a bijection) and those of one batch in their last
/// 8; across processes (and restarts) the random seeds differ.
fn generate_request_id() -> HeaderValue {
    thread_local! {
        static IDS: RefCell<IdBatch> = const {
            RefCell::new(IdBatch { text: Bytes::new(), next: 0 })
        };
    }
    let id = IDS.with_borrow_mut(|batch| {
        if batch.next >= batch.text.len() {
            *batch = IdBatch::new();
        }
        let at = batch.next;
        batch.next += ID_LEN;
        batch.text.slice(at..at + ID_LEN)
    });
    HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
}

const ID_LEN: usize = 28;
const IDS_PER_BATCH: usize = 128;

/// A thread's next request ids, side by side.
struct IdBatch {
    text: Bytes,
    /// Where the next id starts in `text`.
    next: usize,
}

impl IdBatch {
    fn new() -> IdBatch {
        static SEED: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let seed = *SEED.get_or_init(crate::rng::os_seed);
        let first = COUNTER.fetch_add(IDS_PER_BATCH as u64, Ordering::Relaxed);
        // Batches are aligned to 128 (the counter starts at 0), so the
        // batch number is the counter's value over 128.
        let mut prefix = [0u8; 20];
        prefix[..4].copy_from_slice(b"req_");
        let mixed = crate::rng::splitmix64(seed ^ (first / IDS_PER_BATCH as u64));
        prefix[4..12].copy_from_slice(&hex8((mixed >> 32) as u32));
        prefix[12..].copy_from_slice(&hex8(mixed as u32));
        let mut text = vec![0u8; ID_LEN * IDS_PER_BATCH];
        for (id, n) in text.chunks_exact_mut(ID_LEN).zip(first..) {
            id[..20].copy_from_slice(&prefix);
            id[20..].copy_from_slice(&hex8(n as u32));
        }
        IdBatch {
            text: Bytes::from(text),
            next: 0,
        }
    }
}

/// The low `out.len()` hex digits of `value` (at most 16), most
/// significant first.
pub(crate) fn write_hex(value: u64, out: &mut [u8]) {
    let mut digits = [0u8; 16];
    digits[..8].copy_from_slice(&hex8((value >> 32) as u32));
    digits[8..].copy_from_slice(&hex8(value as u32));
    let from = 16 - out.len().min(16);
    out[..16 - from].copy_from_slice(&digits[from..]);
}

/// The 8 hex digits of `value`, most significant first, eight at once (this
/// runs on every request without an id): each nibble is spread into a byte
/// of its own, then every byte becomes its digit together.
fn hex8(value: u32) -> [u8; 8] {
    let mut x = u64::from(value);
    x = (x | x << 16) & 0x0000_ffff_0000_ffff;
    x = (x | x << 8) & 0x00ff_00ff_00ff_00ff;
    x = (x | x << 4) & 0x0f0f_0f0f_0f0f_0f0f;
    // 1 in each byte that is 10 or more (adding 6 carries it into bit 4):
    // those skip the 39 characters between `9` and `a`. No byte overflows
    // into the next (at most 15 + 48 + 39).
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_unique() {
        let a = super::generate_request_id();
        let b = super::generate_request_id();
        assert_ne!(a, b);
        assert!(a.to_str().unwrap().starts_with("req_"));
        assert_eq!(a.len(), 28);
        assert!(a.as_bytes()[4..].iter().all(u8::is_ascii_hexdigit));
    }

    #[test]
    fn ids_cut_from_one_chunk_stay_intact() {
        let ids: Vec<_> = (0..1000).map(|_| super::generate_request_id()).collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for id in &ids {
            let text = id.to_str().unwrap();
            assert!(text.starts_with("req_") && text.len() == 28, "{text}");
        }
    }

    #[test]
    fn hex_matches_format() {
        // Every digit in every place, and then some.
        let repeated = (0..16u32).map(|digit| digit * 0x1111_1111);
        for value in repeated.chain([0x0123_4567, 0x89ab_cdef, 0x9a0f_f09a, 0xdead_beef]) {
            assert_eq!(super::hex8(value), *format!("{value:08x}").as_bytes());
        }
        for value in [0, 7, 0xdead_beef, u64::MAX, crate::rng::splitmix64(7)] {
            let mut buf = [0u8; 16];
            super::write_hex(value, &mut buf);
            assert_eq!(std::str::from_utf8(&buf).unwrap(), format!("{value:016x}"));
            let mut low = [0u8; 8];
            super::write_hex(value, &mut low);
            assert_eq!(
                std::str::from_utf8(&low).unwrap(),
                format!("{:08x}", value & 0xffff_ffff)
            );
        }
    }
}
