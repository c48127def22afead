//! HTTP clients as tower services, so the client-side layers
//! ([`RetryLayer`](crate::retry::RetryLayer)) wrap them.
//!
//! hyper-util's legacy `Client` already is a
//! `Service<http::Request<B>, Response = http::Response<Incoming>>` and needs
//! nothing here. With the `reqwest` feature, [`ReqwestService`] makes a
//! `reqwest::Client` one too, streaming its response bodies, so an
//! application that already configured reqwest (TLS, proxies, pools) keeps
//! it and gains tollgate's retries.
//!
#![cfg_attr(feature = "reqwest", doc = "```no_run")]
#![cfg_attr(not(feature = "reqwest"), doc = "```ignore")]
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tollgate::client::ReqwestService;
//! use tollgate::retry::RetryLayer;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let mut client = ServiceBuilder::new()
//!     .layer(RetryLayer::new())
//!     .service(ReqwestService::new(reqwest::Client::new()));
//!
//! let request = http::Request::post("http://127.0.0.1:8080/v1/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from(r#"{"model":"gpt-4o-mini","messages":[]}"#)))?;
//! let response = client.ready().await?.call(request).await?;
//! let body = response.into_body().collect().await?.to_bytes();
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "reqwest")]
mod reqwest;

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub use self::reqwest::{ReqwestBody, ReqwestFuture, ReqwestService};
