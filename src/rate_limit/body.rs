//! The response body of [`RateLimit`](super::RateLimit).

use bytes::Bytes;
use http_body_util::Full;

use crate::usage::UsageBody;

/// The inner service's body, or a rejection rendered by the layer.
///
/// When the request holds a token reservation or a concurrency slot, the
/// inner body is observed ([`UsageBody`]): when it ends, fails or is dropped,
/// the reservation is settled to the tokens the response used and the slot
/// is freed. Streams included: a slot is held until the last event, or until
/// the client hangs up. Otherwise the `UsageBody` only passes frames through.
pub type ResponseBody<B> = crate::body::ResponseBody<UsageBody<B>>;

/// The inner body, not observed.
pub(crate) fn passthrough<B>(body: B) -> ResponseBody<B> {
    crate::body::ResponseBody::inner(UsageBody::new(body, None))
}

/// The inner body, observed for settlement.
pub(crate) fn observed<B>(body: UsageBody<B>) -> ResponseBody<B> {
    crate::body::ResponseBody::inner(body)
}

/// A rejection.
pub(crate) fn full<B>(body: Full<Bytes>) -> ResponseBody<B> {
    crate::body::ResponseBody::from_full(body)
}
