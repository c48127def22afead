//! Who is calling: API keys and virtual keys, safe at rest and exact at the edge.
//!
//! Every request to a gateway spends someone's money, so the first question
//! is whose. [`AuthLayer`] takes the API key a client sends (the way the
//! OpenAI, Anthropic and Azure SDKs send it), finds its [`KeyRecord`] in a
//! [`KeyStore`] by the key's SHA-256, refuses the request with an error the
//! client's SDK can explain when the key is missing, wrong, expired, revoked,
//! disabled or not allowed the requested model, and otherwise hands the
//! request on with the caller's [`Principal`] in its extensions, where rate
//! limits, budgets and handlers find it.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use tollgate::auth::{AuthLayer, KeyRecord, Principal};
//! use tollgate::store::memory::MemoryKeyStore;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // Mint a key: the secret goes to its owner, the store keeps its hash.
//! let (secret, record) = KeyRecord::generate()?;
//! let id = record.id.clone();
//! let store = MemoryKeyStore::new();
//! store.insert(record.with_name("alice's laptop"))?;
//!
//! let mut service = ServiceBuilder::new()
//!     .layer(AuthLayer::new(store.clone()).require_prefix("sk-"))
//!     .service(service_fn(|req: Request<Full<Bytes>>| async move {
//!         // The handler knows who is calling.
//!         let caller = req.extensions().get::<Principal>().map(|p| p.key_id().to_owned());
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(caller.unwrap_or_default()))))
//!     }));
//!
//! let request = || {
//!     Request::post("/v1/chat/completions")
//!         .header("authorization", format!("Bearer {}", secret.expose()))
//!         .body(Full::new(Bytes::from(r#"{"model":"gpt-4o-mini","messages":[]}"#)))
//! };
//! let response = service.ready().await?.call(request()?).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.into_body().collect().await?.to_bytes(), id.as_bytes());
//!
//! // Revoked at run time: the very next request is refused.
//! store.revoke(&id);
//! let response = service.ready().await?.call(request()?).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! let body = response.into_body().collect().await?.to_bytes();
//! assert!(std::str::from_utf8(&body)?.contains(r#""code":"revoked_api_key""#));
//! # Ok(())
//! # }
//! ```
//!
//! # Outcomes
//!
//! Each refusal is an [`ApiError`](crate::ApiError) rendered in the OpenAI
//! format (re-rendered by an outer
//! [`ErrorEnvelopeLayer`](crate::envelope::ErrorEnvelopeLayer) in another
//! format, or as gRPC status). No message ever contains the key presented.
//!
//! | case | status | code | gRPC |
//! |---|---|---|---|
//! | no key presented | 401 | `missing_api_key` (the message lists the accepted headers) | `UNAUTHENTICATED` |
//! | malformed or unknown key | 401 | `invalid_api_key` | `UNAUTHENTICATED` |
//! | expired (`expires_at`, or the maximum lifetime, passed) | 401 | `expired_api_key` | `UNAUTHENTICATED` |
//! | revoked | 401 | `revoked_api_key` | `UNAUTHENTICATED` |
//! | disabled (blocked account) | 403 | `account_disabled` | `PERMISSION_DENIED` |
//! | model not in the key's allow-list | 403 | `model_not_allowed`, param `model` | `PERMISSION_DENIED` |
//! | the key store cannot answer | 503 | `store_unavailable` | `UNAVAILABLE` |
//!
//! ## Why "missing" and "invalid" are told apart
//!
//! A 401 for a key the client never sent usually means a proxy stripped the
//! header or the SDK read an empty environment variable; a 401 for a wrong
//! key means the key is wrong. Operators answer those support tickets
//! differently, so the codes differ, and the missing-key message says where
//! a key is accepted.
//!
//! ## Why a store failure refuses the request
//!
//! A gateway that lets requests through when it cannot check keys is open to
//! anyone whenever its database hiccups. The layer fails closed with 503 and
//! `x-should-retry: true`: SDKs retry, nobody gets in free.
//!
//! # Where keys are found
//!
//! By default, in order: `Authorization: Bearer <key>` (scheme
//! case-insensitive, whitespace tolerated), `x-api-key` (Anthropic),
//! `api-key` (Azure) and `x-bf-vk` (virtual keys). The first key found is
//! used. [`AuthLayer::extractors`] changes the list; [`Extractor::from_fn`]
//! adds your own (a query parameter, a cookie). [`AuthLayer::require_prefix`]
//! and [`AuthLayer::key_length`] refuse keys of the wrong shape before they
//! are hashed.
//!
//! # Keys at rest
//!
//! A store holds the SHA-256 of each secret, never the secret:
//! [`KeyRecord::generate`] mints `sk-` keys from the operating system's
//! random number generator and returns the secret once, and key files give
//! `secret_sha256` (plaintext `secret` is accepted for local development and
//! hashed at load). See [`KeyFile`] and [`KeyEntry`] for the file format and
//! `examples/mint_key.rs` for a key-minting tool.
//!
//! ## Why SHA-256 and not a password hash
//!
//! Password hashes (bcrypt, Argon2) are slow on purpose because passwords
//! are guessable. Minted keys carry 256 random bits: no dictionary holds
//! them, so one fast hash protects them as well, and lets a lookup cost one
//! SHA-256 and one map read (well under a microsecond with a million keys;
//! see `benches/auth.rs`). The hash found is compared to the presented one
//! in constant time, and a leaked key file or store dump does not leak keys.
//!
//! ## Why revocation is checked on every request
//!
//! The layer caches nothing: each request looks its key up, so a key
//! revoked in the [`MemoryKeyStore`](crate::store::memory::MemoryKeyStore)
//! (or pushed to every instance's cache by a remote store, see
//! [`KeyStore`]) is refused on its next request, not minutes later.
//! Requests already admitted finish.
//!
//! # Model allow-lists
//!
//! A key with a non-empty allow-list (exact names and `*` globs, see
//! [`KeyRecord::allows_model`]) may only use those models. The layer reads
//! the request's `model` through [`RequestMeta`](crate::RequestMeta) (the
//! body is read once, bounded by [`AuthLayer::max_request_body_bytes`], and put back;
//! later layers reuse the facts). Keys without restrictions never cause the
//! body to be read. Requests without a model (`GET /v1/models`, gRPC) pass;
//! a gRPC service checks [`Principal::allows_model`] itself.
//!
//! # Expiry and maximum lifetime
//!
//! A key stops working at its `expires_at`, and, with
//! [`AuthLayer::max_key_lifetime`], once it is older than the limit (a
//! rotation policy, e.g. 90 days). Within [`AuthLayer::expiry_warning`] of
//! the end (7 days by default), responses carry `x-api-key-expires-in:
//! <seconds>`, so clients can rotate before they break.
//!
//! # In axum
//!
//! With the `axum` feature (which lets the layer read axum's body), the layer
//! goes in `Router::layer`; its error type is the inner one, so no
//! `HandleErrorLayer` is needed. Handlers take the caller with
//! `Extension<Principal>`:
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Extension, Router, routing::post};
//! use tollgate::auth::{AuthLayer, Principal};
//! use tollgate::envelope::ErrorEnvelopeLayer;
//! use tollgate::store::memory::MemoryKeyStore;
//!
//! async fn chat(Extension(caller): Extension<Principal>) -> String {
//!     format!("hello {}", caller.key_id())
//! }
//!
//! let store = MemoryKeyStore::load("keys.toml")?;
//! let app = Router::new()
//!     .route("/v1/chat/completions", post(chat))
//!     .layer(AuthLayer::new(store.clone()))
//!     .layer(ErrorEnvelopeLayer::new());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! # fn main() {}
//! ```
//!
//! # In tonic
//!
//! With the `tonic` feature, the layer goes in `Server::builder().layer`,
//! inside an `ErrorEnvelopeLayer` so refusals reach gRPC clients as
//! `UNAUTHENTICATED` or `PERMISSION_DENIED`. The key travels in request
//! metadata (`authorization: Bearer …` or `x-api-key`), and a method reads
//! the caller from the request's extensions:
//!
//! ```ignore
//! use tollgate::auth::{AuthLayer, Principal};
//! use tollgate::envelope::ErrorEnvelopeLayer;
//!
//! #[tonic::async_trait]
//! impl Greeter for MyGreeter {
//!     async fn say_hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
//!         let caller = request.extensions().get::<Principal>().ok_or_else(|| Status::unauthenticated(""))?;
//!         Ok(Response::new(HelloReply { message: format!("hello {}", caller.key_id()) }))
//!     }
//! }
//!
//! tonic::transport::Server::builder()
//!     .layer(ErrorEnvelopeLayer::new())
//!     .layer(AuthLayer::new(store))
//!     .add_service(GreeterServer::new(MyGreeter))
//!     .serve(addr)
//!     .await?;
//! ```
//!
//! `tests/auth.rs` runs both, over real connections.

mod builder;
mod entry;
mod extract;
mod file;
pub mod future;
mod generate;
mod grant;
mod hash;
mod layer;
mod models;
pub(crate) use self::models::glob_matches;
mod outcome;
mod record;
mod service;
mod store;

pub use self::entry::{InvalidKeyEntry, KeyEntry, LimitEntry, ModelLimitEntry};
pub use self::extract::{ExtractApiKey, Extractor};
pub use self::file::{KeyFile, KeyFileError};
pub use self::future::X_API_KEY_EXPIRES_IN;
pub use self::generate::{GenerateError, Secret};
pub use self::grant::Grant;
pub use self::hash::InvalidKeyHash;
pub use self::layer::AuthLayer;
pub use self::record::{KeyHash, KeyRecord, Principal, RetiredSecret};
pub use self::service::Auth;
pub use self::store::{KeyAdmin, KeyStore, LookupResult, PutMode};
