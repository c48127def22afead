use std::convert::Infallible;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
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
        let request_id = match req.headers().get(X_REQUEST_ID) {
            Some(id) if is_usable_request_id(id) => id.clone(),
            _ => {
                let id = generate_request_id();
                req.headers_mut().insert(X_REQUEST_ID, id.clone());
                id
            }
        };
        let config = &self.config;
        let future = match self.not_ready.take() {
            Some(error) => Err(error),
            None if config.catch_panic => catch_unwind(AssertUnwindSafe(|| self.inner.call(req)))
                .map_err(super::future::panic_error),
            None => Ok(self.inner.call(req)),
        };
        ResponseFuture::new(
            future,
            format,
            request_id,
            config.max_error_body_bytes,
            config.catch_panic,
        )
    }
}

/// A client's id is propagated when it is 1 to 256 visible ASCII characters,
/// so it can go into logs and error bodies as it is; otherwise (and when
/// absent) the request gets a fresh one.
fn is_usable_request_id(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    // Branch-free (a fold, not `all`): this runs on every request.
    (1..=256).contains(&bytes.len())
        && bytes
            .iter()
            .fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) < 0x5e))
}

/// `req_` and 24 hex digits: a per-process random seed mixed with a counter,
/// so ids are unique without a system call per request.
fn generate_request_id() -> HeaderValue {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(crate::rng::os_seed);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hi = crate::rng::splitmix64(seed ^ n);
    let lo = n & 0xffff_ffff;
    // Hex by hand into one buffer: this runs on every request without an id.
    let mut text = [0u8; 28];
    text[..4].copy_from_slice(b"req_");
    write_hex(hi, &mut text[4..20]);
    write_hex(lo, &mut text[20..]);
    HeaderValue::from_maybe_shared(crate::header_values::shared_bytes(&text))
        .unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
}

/// The low `out.len()` hex digits of `value`, most significant first.
pub(crate) fn write_hex(value: u64, out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = out.len();
    for (i, byte) in out.iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        *byte = HEX[((value >> shift) & 0xf) as usize];
    }
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
