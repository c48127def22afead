//! In process, under paused tokio time: holding the head, timeouts,
//! keep-alives, limits.

use http::StatusCode;
use http_body_util::BodyExt;
use tollgate::ApiError;
use tower::ServiceExt;

use super::*;

#[tokio::test(start_paused = true)]
async fn stall_before_the_first_event_is_a_504() {
    let layer = StreamErrorTrailerLayer::new()
        .idle_timeout(Duration::from_secs(30))
        .first_event_timeout(Duration::from_secs(60));
    let mut service = in_process(layer, vec![": processing\n\n"], Then::Stall);
    let started = tokio::time::Instant::now();
    let response = bounded(service.ready().await.unwrap().call(chat_request()))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        waited >= Duration::from_secs(30) && waited <= Duration::from_secs(34),
        "{waited:?}"
    );
    let error = response.extensions().get::<ApiError>().unwrap();
    assert_eq!(error.code(), Some("timeout"));
}

#[tokio::test(start_paused = true)]
async fn slow_first_event_starts_the_stream_after_first_event_timeout() {
    let layer = StreamErrorTrailerLayer::new()
        .idle_timeout(Duration::from_secs(60))
        .first_event_timeout(Duration::from_secs(2));
    let mut service = in_process(layer, vec![": processing\n\n"], Then::Stall);
    let started = tokio::time::Instant::now();
    let response = bounded(service.ready().await.unwrap().call(chat_request()))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let body = bounded(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert!(body.starts_with(b": processing\n\ndata: {\"error\""));
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_secs(60) && idle <= Duration::from_secs(68),
        "{idle:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn first_event_limit_starts_the_stream() {
    let layer = StreamErrorTrailerLayer::new().max_first_event_bytes(8);
    let mut service = in_process(layer, vec![": a long comment\n\n", CHUNK, DONE], Then::End);
    let response = bounded(service.ready().await.unwrap().call(chat_request()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = bounded(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, format!(": a long comment\n\n{CHUNK}{DONE}"));
}

#[tokio::test(start_paused = true)]
async fn without_holding_the_head_comes_at_once() {
    let layer = StreamErrorTrailerLayer::new().hold_first_event(false);
    let mut service = in_process(
        layer,
        vec!["data: {\"error\":{\"message\":\"no\",\"type\":\"invalid_request_error\"}}\n\n"],
        Then::End,
    );
    let response = bounded(service.ready().await.unwrap().call(chat_request()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = bounded(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    // The upstream's own error ends the stream: nothing is appended.
    assert_eq!(
        body,
        "data: {\"error\":{\"message\":\"no\",\"type\":\"invalid_request_error\"}}\n\n"
    );
}

#[tokio::test(start_paused = true)]
async fn oversized_events_are_forwarded_and_closed_before_the_error() {
    let layer = StreamErrorTrailerLayer::new().max_event_bytes(16);
    let mut service = in_process(
        layer,
        vec![CHUNK, "data: {\"a\":\"0123456789", "0123456789"],
        Then::Fail,
    );
    let response = bounded(service.ready().await.unwrap().call(chat_request()))
        .await
        .unwrap();
    let body = bounded(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    let text = std::str::from_utf8(&body).unwrap();
    assert!(
        text.starts_with(&format!(
            "{CHUNK}data: {{\"a\":\"01234567890123456789\n\ndata: {{\"error\""
        )),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn keep_alives_do_not_reset_the_idle_timeout() {
    let layer = StreamErrorTrailerLayer::new()
        .idle_timeout(Duration::from_secs(60))
        .keep_alive(Duration::from_secs(15));
    let mut service = in_process(layer, vec![CHUNK], Then::Stall);
    let started = tokio::time::Instant::now();
    let response = bounded(service.ready().await.unwrap().call(chat_request()))
        .await
        .unwrap();
    let body = bounded(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    let text = std::str::from_utf8(&body).unwrap();
    // Every 15 s give or take a tick, until the idle timeout at 60 s.
    let keep_alives = text.matches(": keep-alive\n\n").count();
    assert!((3..=4).contains(&keep_alives), "{text}");
    assert!(text.ends_with(&error_event(
        "timeout",
        "The upstream sent no event for 60 s.",
        "timeout_error"
    )));
    assert!(started.elapsed() <= Duration::from_secs(68));
}

/// Compressed streams and `HEAD` answers are not events: they pass through.
#[tokio::test(start_paused = true)]
async fn encoded_and_head_responses_pass_through() {
    let inner = service_fn(|req: Request<Full<Bytes>>| async move {
        let mut response = sse(&["\x1f\x08 not events"], Then::End);
        if req.method() != http::Method::HEAD {
            response
                .headers_mut()
                .insert("content-encoding", "gzip".parse().unwrap());
        }
        Ok::<_, Infallible>(response)
    });
    let mut service = ServiceBuilder::new()
        .layer(StreamErrorTrailerLayer::new())
        .service(inner);
    for method in [http::Method::POST, http::Method::HEAD] {
        let request = Request::builder()
            .method(method.clone())
            .uri("/v1/chat/completions")
            .body(Full::default())
            .unwrap();
        let response = bounded(service.ready().await.unwrap().call(request))
            .await
            .unwrap();
        assert_eq!(
            format!("{:?}", response.body()),
            "ResponseBody::Passthrough",
            "{method}"
        );
        let body = bounded(response.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"\x1f\x08 not events", "{method}");
    }
}
