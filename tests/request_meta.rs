//! `RequestMeta::read`: bounded, read-once body parsing cached in extensions.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tollgate::request::media::HIGH_DETAIL_MAX;
use tollgate::request::{Content, FromBytes};
use tollgate::{ApiError, BoxError, ErrorKind, RequestMeta};

/// A request body that yields its chunks one by one, pending in between as a
/// network body would, and counts every poll.
#[derive(Debug)]
struct CountingBody {
    chunks: VecDeque<Bytes>,
    polls: Arc<AtomicUsize>,
    pending_next: bool,
}

impl CountingBody {
    fn new(chunks: &[&str]) -> (Self, Arc<AtomicUsize>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let body = CountingBody {
            chunks: chunks
                .iter()
                .map(|c| Bytes::copy_from_slice(c.as_bytes()))
                .collect(),
            polls: polls.clone(),
            pending_next: true,
        };
        (body, polls)
    }
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        if self.pending_next {
            self.pending_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.pending_next = true;
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl FromBytes for CountingBody {
    fn from_bytes(bytes: Bytes) -> Self {
        CountingBody {
            chunks: VecDeque::from([bytes]),
            polls: Arc::default(),
            pending_next: false,
        }
    }
}

fn json_request<B>(body: B) -> Request<B> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

fn full(body: &str) -> Request<Full<Bytes>> {
    json_request(Full::new(Bytes::copy_from_slice(body.as_bytes())))
}

fn meta<B>(req: &Request<B>) -> &RequestMeta {
    req.extensions().get::<RequestMeta>().expect("meta cached")
}

async fn body_text<B>(req: Request<B>) -> String
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn read_err(req: Request<Full<Bytes>>) -> ApiError {
    RequestMeta::read(req, 1024).await.unwrap_err()
}

#[tokio::test]
async fn reads_the_fields_and_puts_the_body_back() {
    let body = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},
        "max_tokens":100,"messages":[{"role":"system","content":"Be brief."},
        {"role":"user","content":"Hello there!"}]}"#;
    let req = RequestMeta::read(full(body), RequestMeta::DEFAULT_MAX_BODY_BYTES)
        .await
        .unwrap();
    let m = meta(&req);
    assert_eq!(m.model.as_deref(), Some("gpt-4o-mini"));
    assert!(m.stream);
    assert!(m.include_usage);
    assert_eq!(m.max_tokens, Some(100));
    // "Be brief." (9) + "Hello there!" (12) = 21 characters → 6 tokens.
    assert_eq!(m.prompt_tokens_estimate, 6);
    assert_eq!(m.body_len, body.len());
    assert_eq!(body_text(req).await, body);
}

#[tokio::test]
async fn content_length_over_the_limit_is_413_without_reading() {
    let (body, polls) = CountingBody::new(&["{}"]);
    let req = Request::post("/v1/chat/completions")
        .header("content-length", "2048")
        .body(body)
        .unwrap();
    let err = RequestMeta::read(req, 1024).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(err.code(), Some("payload_too_large"));
    assert!(err.message().contains("1024"), "{}", err.message());
    assert_eq!(polls.load(Ordering::SeqCst), 0);
}

/// A buffered body's size is known: one within the limit is read, whatever
/// its `content-length` header says; one over it is refused unread.
#[tokio::test]
async fn a_buffered_body_is_judged_by_its_size() {
    let req = Request::post("/v1/chat/completions")
        .header("content-length", "2048")
        .body(Full::new(Bytes::from_static(br#"{"model":"m"}"#)))
        .unwrap();
    let req = RequestMeta::read(req, 1024).await.unwrap();
    assert_eq!(meta(&req).model.as_deref(), Some("m"));
    let big = Full::new(Bytes::from(vec![b' '; 2048]));
    let err = RequestMeta::read(Request::post("/").body(big).unwrap(), 1024)
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn streamed_body_over_the_limit_is_413_and_stops_reading() {
    let chunk = "x".repeat(400);
    let chunks: Vec<&str> = std::iter::repeat_n(chunk.as_str(), 100).collect();
    let (body, polls) = CountingBody::new(&chunks);
    let err = RequestMeta::read(json_request(body), 1024)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    // Three chunks of 400 bytes cross 1024; each chunk costs two polls.
    assert_eq!(polls.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn a_body_of_exactly_the_limit_is_read() {
    let body = format!(r#"{{"model":"{}"}}"#, "m".repeat(1012));
    assert_eq!(body.len(), 1024);
    let req = RequestMeta::read(full(&body), 1024).await.unwrap();
    assert_eq!(meta(&req).body_len, 1024);
    let err = read_err(full(&format!(r#"{{"model":"{}"}}"#, "m".repeat(1013)))).await;
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
}

#[tokio::test]
async fn an_outer_length_limit_is_413_too() {
    type Boxed = http_body_util::combinators::BoxBody<Bytes, BoxError>;
    let limited: Boxed =
        http_body_util::Limited::new(Full::new(Bytes::from(vec![b' '; 64])), 8).boxed();
    let err = RequestMeta::read(json_request(limited), 1024)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
}

#[tokio::test]
async fn a_failing_body_is_400() {
    type Boxed = http_body_util::combinators::BoxBody<Bytes, BoxError>;
    let failing: Boxed = http_body_util::StreamBody::new(futures_util::stream::iter([
        Ok(Frame::data(Bytes::from_static(b"{\"mo"))),
        Err::<Frame<Bytes>, BoxError>("connection reset by peer".into()),
    ]))
    .boxed();
    let err = RequestMeta::read(json_request(failing), 1024)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    assert_eq!(err.message(), "The request body could not be read.");
}

#[tokio::test]
async fn malformed_json_is_400_naming_the_problem() {
    let err = read_err(full(r#"{"model": "gpt-4o", "messages": [}"#)).await;
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    assert_eq!(err.code(), Some("invalid_request"));
    assert!(
        err.message()
            .starts_with("We could not parse the JSON body of your request")
    );
    assert!(err.message().contains("line 1 column"), "{}", err.message());

    let err = read_err(full(r#"{"model": "gpt-4o""#)).await;
    assert!(
        err.message().contains("EOF while parsing"),
        "{}",
        err.message()
    );
    // A syntax error after a good field is not blamed on that field.
    assert_eq!(err.param(), None);

    let err = read_err(full(r#"[{"model": "gpt-4o"}]"#)).await;
    assert!(
        err.message().contains("expected a JSON object"),
        "{}",
        err.message()
    );

    let err = read_err(full(r#"{"model": "gpt-4o"} {"model": "again"}"#)).await;
    assert!(
        err.message().contains("trailing characters"),
        "{}",
        err.message()
    );

    let err = read_err(full(r#"{"model": "gpt-4o", "max_tokens": -5}"#)).await;
    assert_eq!(err.param(), Some("max_tokens"));
    assert!(err.message().contains("`max_tokens`"), "{}", err.message());
    assert!(err.message().contains("-5"), "{}", err.message());

    let err = read_err(full(r#"{"model": 4}"#)).await;
    assert_eq!(err.param(), Some("model"));
    let err = read_err(full(r#"{"stream": "yes"}"#)).await;
    assert_eq!(err.param(), Some("stream"));
    let err = read_err(full(r#"{"stream_options": {"include_usage": 1}}"#)).await;
    assert_eq!(err.param(), Some("stream_options"));

    // Invalid UTF-8 inside a string.
    let req = json_request(Full::new(Bytes::from_static(b"{\"model\":\"\xff\"}")));
    let err = RequestMeta::read(req, 1024).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
}

#[tokio::test]
async fn a_field_given_twice_is_400_naming_it() {
    // Which model would the upstream run? Refused rather than guessed.
    let err = read_err(full(r#"{"model":"cheap","messages":[],"model":"dear"}"#)).await;
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    assert_eq!(err.param(), Some("model"));
    assert_eq!(
        err.message(),
        "We could not parse the JSON body of your request: invalid `model`: \
         duplicate field `model` at line 1 column 38"
    );
    // Unknown fields may repeat.
    let req = RequestMeta::read(full(r#"{"user":"a","user":"b"}"#), 1024)
        .await
        .unwrap();
    assert_eq!(meta(&req).model, None);
}

#[tokio::test]
async fn non_json_requests_are_skipped_unread() {
    for content_type in [
        "multipart/form-data; boundary=x",
        "application/grpc",
        "text/plain",
        "audio/wav",
    ] {
        let (body, polls) = CountingBody::new(&["not json at all"]);
        let req = Request::post("/v1/audio/transcriptions")
            .header("content-type", content_type)
            .body(body)
            .unwrap();
        let req = RequestMeta::read(req, 4).await.unwrap();
        // No facts, but that there are some it cannot read.
        let mut unread = meta(&req).clone();
        assert_eq!(unread.content, Content::Unsupported, "{content_type}");
        assert!(unread.is_unreadable());
        unread.content = Content::None;
        assert_eq!(unread, RequestMeta::default(), "{content_type}");
        assert_eq!(polls.load(Ordering::SeqCst), 0, "{content_type}");
        assert_eq!(body_text(req).await, "not json at all");
    }
    // Methods without a body are not read either.
    let (body, polls) = CountingBody::new(&["{"]);
    let req = Request::get("/v1/models")
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let req = RequestMeta::read(req, 1024).await.unwrap();
    assert_eq!(meta(&req), &RequestMeta::default());
    assert!(!meta(&req).is_unreadable());
    assert_eq!(polls.load(Ordering::SeqCst), 0);
    // Nor is an empty body of any type: there is nothing to meter in it.
    let req = Request::post("/v1/files")
        .header("content-type", "multipart/form-data; boundary=x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let req = RequestMeta::read(req, 1024).await.unwrap();
    assert_eq!(meta(&req), &RequestMeta::default());
}

#[tokio::test]
async fn curl_style_form_bodies_are_read_when_they_look_like_json() {
    let form = |body: &'static str| {
        Request::post("/v1/chat/completions")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let req = RequestMeta::read(form(r#" {"model":"m","stream":true}"#), 1024)
        .await
        .unwrap();
    assert_eq!(meta(&req).model.as_deref(), Some("m"));
    assert!(meta(&req).stream);
    let req = RequestMeta::read(form("a=1&b=2"), 1024).await.unwrap();
    let mut unread = meta(&req).clone();
    assert_eq!((unread.content, unread.body_len), (Content::NotJson, 7));
    (unread.content, unread.body_len) = (Content::None, 0);
    assert_eq!(unread, RequestMeta::default());
    assert_eq!(body_text(req).await, "a=1&b=2");
    let err = RequestMeta::read(form(r#"{"model":"#), 1024)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
}

#[tokio::test]
async fn json_content_types_and_none_are_read() {
    for content_type in [
        None,
        Some("application/json"),
        Some("Application/JSON; charset=utf-8"),
        Some("application/vnd.api+json"),
    ] {
        let mut req = Request::post("/v1/embeddings")
            .body(Full::new(Bytes::from_static(
                br#"{"model":"text-embedding-3-small","input":"abcd"}"#,
            )))
            .unwrap();
        if let Some(ct) = content_type {
            req.headers_mut()
                .insert("content-type", ct.parse().unwrap());
        }
        let req = RequestMeta::read(req, 1024).await.unwrap();
        assert_eq!(
            meta(&req).model.as_deref(),
            Some("text-embedding-3-small"),
            "{content_type:?}"
        );
        assert_eq!(meta(&req).prompt_tokens_estimate, 1);
    }
    for method in [http::Method::PUT, http::Method::PATCH] {
        let req = Request::builder()
            .method(method)
            .uri("/")
            .body(Full::new(Bytes::from_static(br#"{"model":"m"}"#)))
            .unwrap();
        let req = RequestMeta::read(req, 1024).await.unwrap();
        assert_eq!(meta(&req).model.as_deref(), Some("m"));
    }
}

#[tokio::test]
async fn empty_bodies_have_empty_meta() {
    for body in ["", "  \n\t "] {
        let req = RequestMeta::read(full(body), 1024).await.unwrap();
        assert_eq!(meta(&req).model, None);
        assert_eq!(meta(&req).prompt_tokens_estimate, 0);
    }
}

#[tokio::test]
async fn reading_twice_reads_the_body_once() {
    let (body, polls) = CountingBody::new(&[r#"{"model":"gpt-4o","#, r#""max_tokens":7}"#]);
    let req = RequestMeta::read(json_request(body), 1024).await.unwrap();
    // Two chunks and the end, each after a pending poll.
    assert_eq!(polls.load(Ordering::SeqCst), 6);
    let first = meta(&req).clone();
    assert_eq!(first.max_tokens, Some(7));

    let req = RequestMeta::read(req, 1024).await.unwrap();
    assert_eq!(
        polls.load(Ordering::SeqCst),
        6,
        "the original body was polled again"
    );
    assert_eq!(meta(&req), &first);
    // The second read left the rebuilt body unread too.
    assert_eq!(req.body().polls.load(Ordering::SeqCst), 0);
    assert_eq!(body_text(req).await, r#"{"model":"gpt-4o","max_tokens":7}"#);

    // A cached meta is trusted even over a body that would not parse.
    let mut req = full("{");
    req.extensions_mut().insert(RequestMeta::default());
    assert!(RequestMeta::read(req, 1024).await.is_ok());
}

#[tokio::test]
async fn boxed_bodies_are_supported() {
    type Boxed = http_body_util::combinators::BoxBody<Bytes, BoxError>;
    type Unsync = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
    let boxed: Boxed = Full::new(Bytes::from_static(br#"{"model":"a"}"#))
        .map_err(Into::into)
        .boxed();
    let req = RequestMeta::read(json_request(boxed), 64).await.unwrap();
    assert_eq!(meta(&req).model.as_deref(), Some("a"));
    assert_eq!(body_text(req).await, r#"{"model":"a"}"#);
    let unsync: Unsync = Full::new(Bytes::from_static(br#"{"model":"b"}"#))
        .map_err(Into::into)
        .boxed_unsync();
    let req = RequestMeta::read(json_request(unsync), 64).await.unwrap();
    assert_eq!(meta(&req).model.as_deref(), Some("b"));
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_bodies_are_supported() {
    let req = json_request(axum::body::Body::from(r#"{"model":"c","stream":true}"#));
    let req = RequestMeta::read(req, 64).await.unwrap();
    assert_eq!(meta(&req).model.as_deref(), Some("c"));
    assert_eq!(body_text(req).await, r#"{"model":"c","stream":true}"#);
}

#[test]
fn rejections_render_as_openai_errors() {
    let err = RequestMeta::from_json(br#"{"max_tokens":"many"}"#).unwrap_err();
    let response = err.to_http_response();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["x-should-retry"], "false");
}

#[tokio::test]
async fn a_one_frame_body_is_put_back_without_a_copy() {
    let bytes = Bytes::from(r#"{"model":"m","messages":[]}"#.to_owned());
    let at = bytes.as_ptr();
    let req = RequestMeta::read(json_request(Full::new(bytes)), 1024)
        .await
        .unwrap();
    assert_eq!(meta(&req).model.as_deref(), Some("m"));
    let frame = req.into_body().frame().await.unwrap().unwrap();
    let data = frame.into_data().unwrap();
    assert_eq!(data.as_ptr(), at, "the body was copied");
    assert_eq!(&data[..], br#"{"model":"m","messages":[]}"#);
}

#[tokio::test]
async fn frames_are_joined_empty_ones_included() {
    let (body, _) = CountingBody::new(&["", r#"{"model":"#, "", r#""m","max_tokens":3}"#, ""]);
    let req = RequestMeta::read(json_request(body), 1024).await.unwrap();
    assert_eq!(meta(&req).model.as_deref(), Some("m"));
    assert_eq!(meta(&req).max_tokens, Some(3));
    assert_eq!(meta(&req).body_len, 28);
    assert_eq!(body_text(req).await, r#"{"model":"m","max_tokens":3}"#);
}

#[tokio::test]
async fn content_types_compare_without_case() {
    for (content_type, read) in [
        ("APPLICATION/JSON", true),
        ("application/Vnd.Api+JSON; charset=utf-8", true),
        (" application/json ", true),
        ("Application/X-WWW-Form-Urlencoded", true),
        ("application/jsonl", true),
        ("text/json", false),
        ("application/x-ndjson", false),
    ] {
        let req = Request::post("/v1/chat/completions")
            .header("content-type", content_type)
            .body(Full::new(Bytes::from_static(br#"{"model":"m"}"#)))
            .unwrap();
        let req = RequestMeta::read(req, 1024).await.unwrap();
        assert_eq!(
            meta(&req).model.is_some(),
            read,
            "{content_type}: {:?}",
            meta(&req)
        );
    }
}

/// The line and column of a rejection are serde_json's, so a client can
/// find the problem in what it sent.
#[test]
fn rejections_say_where_the_problem_is() {
    let cases: [(&[u8], Option<&str>, &str); 6] = [
        (
            b"{\n  \"model\": \"gpt-4o\",\n  \"max_tokens\": -5\n}",
            Some("max_tokens"),
            "invalid `max_tokens`: invalid value: integer `-5`, expected u64 at line 3 column 18",
        ),
        (
            b"{\"model\": \"gpt",
            Some("model"),
            "invalid `model`: EOF while parsing a string at line 1 column 14",
        ),
        (
            b"{\"model\": \"m\",\n \"messages\": [{\"role\": \"user\", \"content\": \"a\\qb\"}]}",
            Some("messages"),
            "invalid `messages`: invalid escape at line 2 column 46",
        ),
        (
            b"{\"stream\": \"yes\"}",
            Some("stream"),
            "invalid `stream`: invalid type: string \"yes\", expected a boolean at line 1 column 16",
        ),
        (
            b"{\"model\": \"m\" \"stream\": true}",
            None,
            "expected `,` or `}` at line 1 column 15",
        ),
        (
            b"{\"prompt\": \"\\ud83d\"}",
            Some("prompt"),
            "invalid `prompt`: unexpected end of hex escape at line 1 column 19",
        ),
    ];
    for (body, param, reason) in cases {
        let err = RequestMeta::from_json(body).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidRequest);
        assert_eq!(err.param(), param, "{reason}");
        assert_eq!(
            err.message(),
            format!("We could not parse the JSON body of your request: {reason}")
        );
    }
}

#[test]
fn deep_nesting_is_rejected_without_overflowing() {
    for open in ["[", "{\"a\":"] {
        let body = format!("{{\"messages\":{}", open.repeat(100_000));
        let err = RequestMeta::from_json(body.as_bytes()).unwrap_err();
        assert_eq!(err.param(), Some("messages"));
        assert!(
            err.message().contains("recursion limit exceeded"),
            "{}",
            err.message()
        );
    }
    // serde_json has no limit for values it skips, and neither do we.
    let body = format!(
        "{{\"metadata\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(RequestMeta::from_json(body.as_bytes()).is_ok());
}

#[path = "request_meta/facts.rs"]
mod facts;
