//! Every failure reaches the client as an error envelope its SDK understands.
//!
//! An operator's clients are the official OpenAI (or Anthropic) SDKs: they map
//! the HTTP status to an exception class and read `error.message`, `type` and
//! `code`. A gateway whose errors come from many places (its own layers, a
//! body-size limit, a timeout, a panicking handler, an upstream's HTML 502)
//! needs one place that makes them all look right. [`ErrorEnvelopeLayer`] is
//! that place, and this module is the only code in tollgate that writes error
//! JSON ([`ErrorFormat::render`]) or reads it ([`parse()`]).
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use tollgate::ApiError;
//! use tollgate::envelope::ErrorEnvelopeLayer;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let mut service = ServiceBuilder::new()
//!     .layer(ErrorEnvelopeLayer::new())
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         // A plain-text 413, as a body-size limit would send it.
//!         Ok::<_, Infallible>(
//!             Response::builder()
//!                 .status(StatusCode::PAYLOAD_TOO_LARGE)
//!                 .body(Full::new(Bytes::from("length limit exceeded")))
//!                 .unwrap(),
//!         )
//!     }));
//!
//! let response = service.ready().await?.call(Request::new(Full::default())).await?;
//! assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
//! assert_eq!(response.headers()["content-type"], "application/json");
//! assert_eq!(response.headers()["x-should-retry"], "false");
//! assert!(response.headers().contains_key("x-request-id"));
//! let body = response.into_body().collect().await?.to_bytes();
//! assert_eq!(
//!     &body[..],
//!     br#"{"error":{"message":"length limit exceeded","type":"invalid_request_error","param":null,"code":"payload_too_large"}}"#
//! );
//! # Ok(())
//! # }
//! ```
//!
//! # What the layer does
//!
//! - An inner `Err(e)` becomes a response: an [`ApiError`](crate::ApiError)
//!   renders as itself, `tower::timeout`'s `Elapsed` as 504, `tower::load_shed`'s
//!   `Overloaded` as 503, anything else as a generic 500 (the error is logged
//!   with `tracing`, never sent). A readiness error (`poll_ready` failing) is
//!   answered the same way by the next call, without calling the inner
//!   service, whose contract forbids it.
//! - An inner response with status ≥ 400 that carries an `ApiError` in its
//!   extensions (every tollgate rejection does) is re-rendered in the chosen
//!   format without reading its body. One without is parsed (its body read up
//!   to 64 KiB by default) and re-rendered, keeping status, message, type and
//!   code. Its other headers are kept, except those that described the old
//!   body (`content-length`, `content-type`, `content-encoding`,
//!   `transfer-encoding`); a compressed error body is not parsed.
//! - Success responses pass through untouched and unbuffered.
//! - `x-request-id` is propagated from the request (when it is 1 to 256
//!   visible ASCII characters) or generated (`req_…`), and set on the request
//!   for the inner service and on every response (a success response keeps
//!   an id the inner service set). An error envelope names the request's id
//!   in its headers and, for Anthropic, its body, even when an upstream's
//!   error named its own;
//!   error responses also get `content-type` and `x-should-retry`, and
//!   `retry-after`/`retry-after-ms` when the error has a delay.
//! - The format is fixed ([`ErrorEnvelopeLayer::format`]) or chosen per
//!   request ([`ErrorEnvelopeLayer::auto_format`], [`ErrorEnvelopeLayer::format_fn`]);
//!   gRPC requests (`content-type: application/grpc`) always get gRPC status.
//! - Optionally ([`ErrorEnvelopeLayer::catch_panic`]) a panic in the inner
//!   service becomes a 500 instead of a dropped connection.
//!
//! The layer's error type is [`Infallible`](std::convert::Infallible), so it
//! sits in `axum::Router::layer` and needs no `HandleErrorLayer`, whatever the
//! services inside it return.

pub mod future;
mod layer;
pub(crate) use self::layer::ANTHROPIC_VERSION;
mod dialect;
pub(crate) use self::dialect::HAI_TABLE;
mod parse;
mod render;
mod service;
pub(crate) use self::service::write_hex;

pub use self::layer::ErrorEnvelopeLayer;
pub(crate) use self::parse::{grpc_code, is_grpc};
pub use self::parse::{parse, parse_event};
pub(crate) use self::render::grpc_trailers;
pub use self::render::{
    ErrorFormat, GRPC_MESSAGE, GRPC_STATUS, RETRY_AFTER_MS, UnknownFormat, X_REQUEST_ID,
    X_SHOULD_RETRY, grpc_percent_encode, grpc_status,
};
pub use self::service::ErrorEnvelope;
