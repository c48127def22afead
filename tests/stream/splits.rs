//! Every split point of a stream, through the whole layer.

use http::StatusCode;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use proptest::prelude::*;
use tower::ServiceExt;

use super::*;

/// Runs `stream` through the layer in the given pieces, then ends (or fails).
async fn through_layer(pieces: Vec<Bytes>, fail: bool) -> (StatusCode, Bytes) {
    let inner = service_fn(move |_req: Request<Full<Bytes>>| {
        let mut frames: Vec<Result<Frame<Bytes>, io::Error>> =
            pieces.iter().cloned().map(|b| Ok(Frame::data(b))).collect();
        if fail {
            frames.push(Err(io::Error::other("reset")));
        }
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(StreamBody::new(stream::iter(frames)))
                    .unwrap(),
            )
        }
    });
    let exchange = async {
        let response = ServiceBuilder::new()
            .layer(StreamErrorTrailerLayer::new())
            .service(inner)
            .oneshot(chat_request())
            .await
            .unwrap();
        let status = response.status();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    };
    tokio::time::timeout(BOUND, exchange)
        .await
        .expect("bounded exchange")
}

fn event_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{0,12}"
            .prop_map(|s| format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{s}\"}}}}]}}")),
        Just("data: {\"choices\":[{\"delta\":{\"content\":\"data: [DONE]\"}}]}".to_owned()),
        Just(": keep-alive".to_owned()),
    ]
}

fn join(events: &[String], eol: &str) -> String {
    events
        .iter()
        .map(|e| format!("{}{eol}{eol}", e.replace('\n', eol)))
        .collect()
}

fn truncated(eol_stream_prefix: &str) -> String {
    format!(
        "{eol_stream_prefix}{}",
        error_event(
            "stream_truncated",
            "The upstream stream ended before it completed.",
            "server_error"
        )
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever byte the stream is split at: a stream with its end marker
    /// comes out unchanged, one without comes out whole-events-only plus one
    /// `stream_truncated` event.
    #[test]
    fn every_split_point(
        events in proptest::collection::vec(event_strategy(), 1..4),
        done in any::<bool>(),
        tail in prop_oneof![Just(""), Just("data: {\"cho"), Just("data: [DO")],
        eol in prop_oneof![Just("\n"), Just("\r\n")],
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let mut all = events.clone();
        if done {
            all.push("data: [DONE]".to_owned());
        }
        let complete = join(&all, eol);
        let stream = format!("{complete}{tail}");
        // An empty delta opens a stream without being its content.
        let has_content = all
            .iter()
            .any(|e| e.starts_with("data") && !e.contains("\"content\":\"\""));
        for split in 0..=stream.len() {
            let pieces = vec![
                Bytes::copy_from_slice(&stream.as_bytes()[..split]),
                Bytes::copy_from_slice(&stream.as_bytes()[split..]),
            ];
            let (status, body) = runtime.block_on(through_layer(pieces, false));
            let body = String::from_utf8(body.to_vec()).unwrap();
            if !has_content && !done {
                // Only comments and opening chunks, then the end: the
                // failure comes before the content, as a status.
                prop_assert_eq!(status, StatusCode::BAD_GATEWAY);
                continue;
            }
            prop_assert_eq!(status, StatusCode::OK);
            if done {
                // `[DONE]` seen: what follows it passes as it is.
                prop_assert_eq!(&body, &stream, "split at {}", split);
            } else {
                prop_assert_eq!(&body, &truncated(&complete), "split at {}", split);
            }
        }
    }

    /// Random multi-way splits with a failing end.
    #[test]
    fn random_splits_with_a_failure(
        events in proptest::collection::vec(event_strategy(), 1..5),
        cuts in proptest::collection::vec(0usize..400, 0..8),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let mut all = events.clone();
        // Content first: the failure comes once the stream has started.
        all.insert(0, "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}".to_owned());
        let complete = join(&all, "\n");
        let stream = format!("{complete}data: {{\"partial");
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for cut in cuts.into_iter().chain([stream.len()]) {
            pieces.push(Bytes::copy_from_slice(&stream.as_bytes()[last..cut]));
            last = cut;
        }
        let (status, body) = runtime.block_on(through_layer(pieces, true));
        prop_assert_eq!(status, StatusCode::OK);
        let expected = format!(
            "{complete}{}",
            error_event("bad_gateway", "The upstream stream failed before it completed.", "server_error")
        );
        prop_assert_eq!(String::from_utf8(body.to_vec()).unwrap(), expected);
    }
}
