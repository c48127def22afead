//! The 30-line starter: API keys and OpenAI-shaped errors in front of one
//! axum handler.
//!
//! ```sh
//! cargo run --example axum_minimal
//! curl -s localhost:3000/v1/whoami -H 'Authorization: Bearer sk-starter-secret'
//! curl -s localhost:3000/v1/whoami     # 401 {"error":{...,"code":"missing_api_key"}}
//! ```

use axum::{Extension, Router, routing::get};
use tollgate::auth::{AuthLayer, KeyHash, KeyRecord, Principal};
use tollgate::envelope::ErrorEnvelopeLayer;
use tollgate::store::memory::MemoryKeyStore;
use tower::ServiceBuilder;

async fn whoami(Extension(caller): Extension<Principal>) -> String {
    format!("hello, {}\n", caller.key_id())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // The store keeps only the SHA-256 of the secret.
    let keys = MemoryKeyStore::new();
    keys.insert(KeyRecord::new("starter", KeyHash::of("sk-starter-secret")))?;

    let app = Router::new().route("/v1/whoami", get(whoami)).layer(
        ServiceBuilder::new()
            .layer(ErrorEnvelopeLayer::new())
            .layer(AuthLayer::new(keys)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
