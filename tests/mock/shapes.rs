//! Each endpoint's answer, usage and stream sequence, as its provider sends them.

use super::*;

#[tokio::test]
async fn each_endpoint_answers_with_its_providers_shape_and_usage() {
    let (base, client) = start().await;
    let (status, _, chat) = call(&client, Chat.request(&base, "hello world", false)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(
        chat["choices"][0]["message"]["content"],
        "mock reply: hello world"
    );
    assert_eq!(chat["usage"]["prompt_tokens"], 2);
    assert_eq!(chat["usage"]["completion_tokens"], 4);

    let (_, _, completion) = call(&client, Completions.request(&base, "a b c", false)).await;
    assert_eq!(completion["object"], "text_completion");
    assert_eq!(completion["choices"][0]["text"], "mock reply: a b c");
    assert_eq!(completion["usage"]["total_tokens"], 3 + 5);

    let (_, _, embedding) = call(&client, Embeddings.request(&base, "a b", false)).await;
    assert_eq!(
        embedding["data"][0]["embedding"].as_array().map(Vec::len),
        Some(4)
    );
    assert_eq!(
        embedding["usage"],
        json!({"prompt_tokens": 2, "total_tokens": 2})
    );

    let (_, _, response) = call(&client, Responses.request(&base, "hi", false)).await;
    assert_eq!(response["object"], "response");
    assert_eq!(response["status"], "completed");
    assert_eq!(
        response["output"][0]["content"][0]["text"],
        "mock reply: hi"
    );
    assert_eq!(
        response["usage"],
        json!({
            "input_tokens": 1,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 3,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 4,
        })
    );

    let (_, _, message) = call(&client, Messages.request(&base, "hi there", false)).await;
    assert_eq!(message["type"], "message");
    assert_eq!(
        message["content"][0],
        json!({"type": "text", "text": "mock reply: hi there"})
    );
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["usage"]["input_tokens"], 2);
    assert_eq!(message["usage"]["output_tokens"], 4);
}

#[tokio::test]
async fn n_and_output_caps_shape_the_completion() {
    let (base, client) = start().await;
    let body = json!({"model": "m", "n": 3, "max_completion_tokens": 3,
        "messages": [{"role": "user", "content": "one two three"}]});
    let (_, _, chat) = call(&client, post(&base, "/v1/chat/completions", &body, false)).await;
    let choices = chat["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 3);
    assert!(choices.iter().all(|c| c["message"]["content"] == "mock reply: one"
        && c["finish_reason"] == "length"));
    assert_eq!(chat["usage"]["completion_tokens"], 9);

    let body = json!({"model": "m", "input": "MOCK:words=40", "max_output_tokens": 20});
    let (_, _, response) = call(&client, post(&base, "/v1/responses", &body, false)).await;
    assert_eq!(response["status"], "incomplete");
    assert_eq!(
        response["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    assert_eq!(response["usage"]["output_tokens"], 20);
    let body = json!({"model": "m", "input": "x", "max_output_tokens": 15});
    let (status, _, error) = call(&client, post(&base, "/v1/responses", &body, false)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"]["param"], "max_output_tokens");

    let body =
        json!({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "a b"}]});
    let (_, _, message) = call(&client, post(&base, "/v1/messages", &body, true)).await;
    assert_eq!(message["stop_reason"], "max_tokens");
    assert_eq!(message["usage"]["output_tokens"], 2);
}

#[tokio::test]
async fn the_usage_chunk_comes_only_when_asked() {
    let (base, client) = start().await;
    let (_, _, plain) = send(&client, Chat.request(&base, "a b", true)).await;
    let plain = plain.expect("stream");
    assert!(!String::from_utf8_lossy(&plain).contains("\"usage\""));
    assert_eq!(deltas(Chat, &plain).concat(), "mock reply: a b");

    let mut asked = Chat.body("a b", true);
    asked["stream_options"] = json!({"include_usage": true});
    let (_, _, body) = send(&client, post(&base, Chat.path(), &asked, false)).await;
    let events = events(&body.expect("stream"));
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("[DONE]"));
    let last: Value = serde_json::from_str(&events[events.len() - 2].1).expect("usage chunk");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 4);
    let with_usage = events
        .iter()
        .filter(|(_, d)| d.contains("\"usage\""))
        .count();
    assert_eq!(with_usage, 1, "one usage chunk, no null usage: {events:?}");

    // OpenAI's exact form on request: `"usage": null` on every other chunk.
    let mut exact = Chat.body("MOCK:usage=null", true);
    exact["stream_options"] = json!({"include_usage": true});
    let (_, _, body) = send(&client, post(&base, Chat.path(), &exact, false)).await;
    let events = self::events(&body.expect("stream"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).expect("chunk"))
        .collect();
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()
        && c.as_object().is_some_and(|o| o.contains_key("usage"))));
}

#[tokio::test]
async fn streams_follow_each_providers_event_sequence() {
    let (base, client) = start().await;
    let (_, headers, body) = send(&client, Responses.request(&base, "hi you", true)).await;
    assert!(header(&headers, "content-type").starts_with("text/event-stream"));
    let events = events(&body.expect("stream"));
    let names: Vec<&str> = events.iter().filter_map(|(n, _)| n.as_deref()).collect();
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(["response.output_text.delta"; 4]);
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names, expected);
    for (i, (name, data)) in events.iter().enumerate() {
        let data: Value = serde_json::from_str(data).expect("json");
        assert_eq!(data["sequence_number"], i, "{name:?}");
        assert_eq!(
            Some(data["type"].as_str().unwrap_or_default()),
            name.as_deref()
        );
    }

    let (_, headers, body) = send(&client, Messages.request(&base, "hi you", true)).await;
    assert!(header(&headers, "request-id").starts_with("req_"));
    let events = self::events(&body.expect("stream"));
    let names: Vec<&str> = events.iter().filter_map(|(n, _)| n.as_deref()).collect();
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(["content_block_delta"; 4]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);
    let start: Value = serde_json::from_str(&events[0].1).expect("json");
    assert_eq!(start["message"]["usage"]["input_tokens"], 2);
    let delta: Value = serde_json::from_str(&events[events.len() - 2].1).expect("json");
    assert_eq!(delta["usage"]["output_tokens"], 4);
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
}
