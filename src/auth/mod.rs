//! Who is calling: API keys and virtual keys, safe at rest and exact at the
//! edge, and the users, teams and orgs they belong to.
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
//! | disabled (blocked account: the key, or its user, team or org) | 403 | `account_disabled` | `PERMISSION_DENIED` |
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
//! # Users, teams and orgs
//!
//! An operator sells a team $50 a month and 600 requests a minute, shared by
//! all its members' keys. Written on each key, that limit is a copy per key:
//! keys that disagree make it flip with whichever key calls, a new member
//! gets whatever was copied last, and a change means editing every key. A
//! tenant record is the one source of truth: the team's limits and budgets
//! live on the team, each key names its team (and its user), and
//! [`AuthLayer`] finds the records after the key, so
//! every request of every member counts against the same limits and is
//! charged to the same budgets.
//!
//! ```
//! use tollgate::auth::{KeyHash, KeyRecord, Principal, TenantKind, TenantRecord, Tenants};
//! use tollgate::budget::{BudgetScope, BudgetSpec, Money, Period};
//! use tollgate::rate_limit::Limit;
//!
//! let mut team = TenantRecord::new(TenantKind::Team, "research");
//! team.org = Some("acme".into());
//! team.rate_limits.push(Limit::requests_per_minute(600));
//! team.budgets.push(BudgetSpec::budget(team.scope(), Money::from_usd(50), Period::Monthly));
//! team.check().unwrap();
//!
//! let mut key = KeyRecord::new("alice-laptop", KeyHash::of("sk-alice"));
//! key.team = Some("research".into());
//! // What `AuthLayer` does after the key lookup:
//! let caller = Principal::new(key).with_tenants(Tenants {
//!     team: Some(team.into()),
//!     ..Tenants::default()
//! });
//! assert_eq!(caller.org(), Some("acme")); // the team's org
//! assert_eq!(caller.budgets()[0].scope, BudgetScope::Team("research".into()));
//! assert_eq!(caller.scope_limits()[0].scope, "team");
//! ```
//!
//! ## One user, one team, one org
//!
//! A key belongs to at most one user and one team (its record names one
//! of each), a team to at most one org ([`TenantRecord::org`]), and users
//! and orgs belong to nothing: [`TenantRecord::check`] refuses an `org` on
//! a user or an org, and budgets of another scope. *Why:* each request is
//! then charged to a fixed set of at most four scopes (key, user, team,
//! org), in one atomic step, and a refusal can say which refused.
//!
//! A key's org is its team's when its team has a record; a key's own `org`
//! label counts only for a key without one.
//!
//! # Configuration entries are grants
//!
//! A gateway reads `[[keys]]`, `[[users]]`, `[[teams]]` and `[[orgs]]` at
//! every start and reload, while its store keeps what an admin API changed
//! in between and the ledger keeps what was spent. [`sync_keys`] and
//! [`sync_tenants`] apply each entry's grant ([`KeyEntry::grant`],
//! [`TenantEntry::grant`]: only what the file changed
//! since the entry was last applied), create what the store lacks, and
//! delete what an earlier configuration granted and this one no longer
//! lists. Records made through an admin API are never deleted here, and
//! nothing here touches the ledger: a balance is opened once, so a restart
//! or a reload never refills a balance nor resets a spend.
//!
//! ```
//! use tollgate::auth::{TenantEntry, TenantKind, sync_tenants};
//! use tollgate::store::memory::MemoryKeyStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryKeyStore::new();
//! let teams: Vec<TenantEntry> = vec![toml::from_str(r#"
//!     id = "research"
//!     org = "acme"
//!     requests_per_minute = 600
//!     budget_usd = 50
//! "#)?];
//! let synced = sync_tenants(&store, TenantKind::Team, &teams).await?;
//! assert_eq!(synced.created, 1);
//! // The same configuration again (a restart, a reload) changes nothing.
//! assert_eq!(sync_tenants(&store, TenantKind::Team, &teams).await?.unchanged, 1);
//! // A team dropped from the configuration is deleted.
//! assert_eq!(sync_tenants(&store, TenantKind::Team, &[]).await?.deleted, 1);
//! # Ok(())
//! # }
//! ```
//!
//! A gateway syncs tenants before keys (orgs, teams, users, then keys), so
//! a key's first request already finds the records it names. Nothing
//! depends on the order for correctness: a key naming a tenant that has no
//! record yet is charged to its own budgets only, and a team naming an org
//! without a record keeps its org as a label.
//!
//! # What a gateway calls
//!
//! - Its store as one `Arc<dyn TenantAdmin>` (every store of the crate is
//!   one, and so a [`KeyAdmin`] and a [`KeyStore`] for [`AuthLayer::new`]).
//! - At start and on every reload: [`sync_tenants`] for `[[orgs]]`,
//!   `[[teams]]` and `[[users]]` (each a `Vec<TenantEntry>` in its config;
//!   validate with [`TenantEntry::into_record`]), then [`sync_keys`].
//! - An admin API for tenants (`/admin/teams`, …, the verbs of keys):
//!   [`TenantAdmin::list_tenants`], [`get_tenant`](TenantAdmin::get_tenant),
//!   [`put_tenant`](TenantAdmin::put_tenant) ([`PutMode::Create`] for a
//!   `POST`), [`delete_tenant`](TenantAdmin::delete_tenant); records shown
//!   and read as [`TenantEntry::from_record`] and
//!   [`TenantEntry::into_record`].
//! - A caller's scopes (`GET /v1/key`): [`Principal::tenants`] and
//!   [`Principal::budgets`], each budget's state from
//!   [`Ledger::read`](crate::budget::Ledger::read); spend per scope from
//!   [`Ledger::spend`](crate::budget::Ledger::spend) grouped by
//!   [`SpendGroup::User`](crate::budget::SpendGroup::User), `Team` or `Org`.
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
mod resolve;
mod service;
mod store;
mod sync;
mod tenant;

pub use self::entry::{InvalidKeyEntry, KeyEntry, LimitEntry, ModelLimitEntry, TenantEntry};
pub use self::extract::{ExtractApiKey, Extractor};
pub use self::file::{KeyFile, KeyFileError};
pub use self::future::X_API_KEY_EXPIRES_IN;
pub use self::generate::{GenerateError, Secret};
pub use self::grant::Grant;
pub use self::hash::InvalidKeyHash;
pub use self::layer::AuthLayer;
pub use self::record::{KeyHash, KeyRecord, Principal, RetiredSecret};
pub use self::service::Auth;
pub use self::store::{KeyAdmin, KeyStore, LookupResult, PutMode, TenantAdmin};
pub use self::sync::{Synced, sync_keys, sync_tenants};
pub use self::tenant::{InvalidTenant, TenantKind, TenantRecord, Tenants};
