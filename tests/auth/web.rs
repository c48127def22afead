//! AuthLayer in an axum `Router`, served over a real connection.

use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tollgate::Principal;
use tollgate::auth::{AuthLayer, KeyHash, KeyRecord};
use tollgate::envelope::ErrorEnvelopeLayer;
use tollgate::store::memory::MemoryKeyStore;
use tower::ServiceExt;

use super::SECRET;

async fn chat(Extension(caller): Extension<Principal>, Json(body): Json<Value>) -> Json<Value> {
    Json(json!({ "caller": caller.key_id(), "model": body["model"] }))
}

async fn models(caller: Option<Extension<Principal>>) -> String {
    caller.map_or("anonymous".into(), |Extension(p)| p.key_id().to_owned())
}

fn app(store: MemoryKeyStore) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .layer(AuthLayer::new(store))
        .layer(ErrorEnvelopeLayer::new())
}

fn store() -> MemoryKeyStore {
    MemoryKeyStore::from_records([
        KeyRecord::new("alice", KeyHash::of(SECRET)),
        KeyRecord::new("bob", KeyHash::of("sk-bob")).with_allowed_models(["gpt-4o-mini"]),
    ])
    .unwrap()
}

fn request(
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> http::Request<axum::body::Body> {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(key) = key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    builder
        .body(axum::body::Body::from(body.to_owned()))
        .unwrap()
}

async fn call(app: &Router, req: http::Request<axum::body::Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn axum_router_handlers_read_the_principal() {
    let app = app(store());
    let chat_body = r#"{"model":"gpt-4o-mini","messages":[]}"#;

    let (status, body) = call(
        &app,
        request("POST", "/v1/chat/completions", Some(SECRET), chat_body),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, r#"{"caller":"alice","model":"gpt-4o-mini"}"#);

    // A restricted key: the layer reads the model from axum's body and puts
    // the body back for the `Json` extractor.
    let (status, body) = call(
        &app,
        request("POST", "/v1/chat/completions", Some("sk-bob"), chat_body),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"caller":"bob","model":"gpt-4o-mini"}"#)
    );
    let (status, body) = call(
        &app,
        request(
            "POST",
            "/v1/chat/completions",
            Some("sk-bob"),
            r#"{"model":"gpt-4o"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains(r#""code":"model_not_allowed""#), "{body}");

    let (status, body) = call(&app, request("GET", "/v1/models", Some("sk-bob"), "")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "bob"));

    let (status, body) = call(&app, request("GET", "/v1/models", None, "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains(r#""code":"missing_api_key""#), "{body}");
}

#[tokio::test]
async fn axum_served_over_tcp() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app(store())).await });

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let send = |key: &str| {
        let req = http::Request::get(format!("http://{addr}/v1/models"))
            .header("x-api-key", key)
            .body(Default::default())
            .unwrap();
        client.request(req)
    };
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), send(SECRET))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"alice");

    let response = tokio::time::timeout(std::time::Duration::from_secs(10), send("sk-wrong"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key("x-request-id"));
    server.abort();
}
