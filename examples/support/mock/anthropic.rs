//! Anthropic's Messages API: `POST /v1/messages`.
//!
//! Request and response shapes from <https://docs.anthropic.com/en/api/messages>;
//! a key (`x-api-key`, or `Authorization: Bearer` as the current Python SDK
//! sends it) and `anthropic-version` are required headers and `model`,
//! `max_tokens` and `messages` required fields, as there. A stream follows
//! <https://docs.anthropic.com/en/docs/build-with-claude/streaming> ("Event
//! types", "Basic streaming request"), each event named by `event:`:
//!
//! `message_start` (the message with empty `content` and
//! `usage.input_tokens`, `output_tokens: 1`), `content_block_start` (an empty
//! text block), `ping`, one `content_block_delta` with a `text_delta` per
//! word, `content_block_stop`, `message_delta` (`stop_reason`,
//! `stop_sequence`, and `usage.output_tokens`, the total), `message_stop`.
//!
//! Errors use Anthropic's envelope (`{"type":"error","error":{"type",
//! "message"},"request_id"}`); a stream that fails sends it as `event:
//! error`, `overloaded_error` by default as in the streaming guide's "Error
//! events" example.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::Mock;
use super::errors::{Api, ProviderError};
use super::exchange::Exchange;
use super::faults::Faults;
use super::sse::{self, Event};
use super::text::{self, Finish, Reply};

fn invalid(exchange: &Exchange, message: &str) -> Response {
    exchange.fail(
        ProviderError::invalid(Api::Anthropic, message, None),
        &Faults::default(),
    )
}

/// `POST /v1/messages`.
pub async fn messages(State(mock): State<Mock>, request: Request) -> Response {
    let (exchange, body) = match mock.receive(Api::Anthropic, "/v1/messages", request).await {
        Ok(received) => received,
        Err(answer) => return answer,
    };
    let req = match exchange.parse(&body) {
        Ok(req) => req,
        Err(answer) => return answer,
    };
    let model = match req.get("model").and_then(Value::as_str) {
        Some(model) if !model.is_empty() => model.to_owned(),
        _ => return invalid(&exchange, "model: Field required"),
    };
    let max_tokens = match req.get("max_tokens") {
        None => return invalid(&exchange, "max_tokens: Field required"),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => n,
            _ => {
                return invalid(
                    &exchange,
                    "max_tokens: Input should be a valid integer greater than or equal to 1",
                );
            }
        },
    };
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return invalid(&exchange, "messages: Field required");
    };
    let content = |m: &Value| text::content_text(m.get("content").unwrap_or(&Value::Null));
    let system = text::content_text(req.get("system").unwrap_or(&Value::Null));
    let input_tokens = text::tokens(&system)
        + messages
            .iter()
            .map(|m| text::tokens(&content(m)))
            .sum::<u64>();
    let user: Vec<String> = messages
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(content)
        .collect();
    let last_user = user.last().cloned().unwrap_or_default();
    let faults = Faults::parse(user.iter().map(String::as_str));
    let faults = match exchange.play(faults, &last_user).await {
        Ok(faults) => faults,
        Err(answer) => return answer,
    };

    let reply = Reply::to(&last_user, &faults, Some(max_tokens));
    let output_tokens = reply.tokens();
    let tokens = input_tokens + output_tokens;
    let stop_reason = match reply.finish {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
    };
    let id = format!("msg_01{}", exchange.new_id());
    let message = |content: Value, stop_reason: Value, output_tokens: u64| {
        let mut message = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
        });
        if !faults.no_usage {
            message["usage"] = json!({
                "input_tokens": input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": output_tokens,
                "service_tier": "standard",
            });
        }
        message
    };

    if !req.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let body = message(
            json!([{"type": "text", "text": reply.text()}]),
            json!(stop_reason),
            output_tokens,
        );
        return exchange.answer(body, &faults, tokens).await;
    }

    let mut events = vec![
        Event::named(
            "message_start",
            &json!({"type": "message_start", "message": message(json!([]), Value::Null, 1)}),
        ),
        Event::named(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        Event::named("ping", &json!({"type": "ping"})),
    ];
    for i in 0..reply.words.len() {
        let delta = json!({
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": reply.delta(i)},
        });
        events.push(Event::named("content_block_delta", &delta).content());
    }
    events.push(Event::named(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    let mut delta = json!({
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": null},
    });
    if !faults.no_usage {
        delta["usage"] = json!({"output_tokens": output_tokens});
    }
    events.push(Event::named("message_delta", &delta));
    events.push(Event::named(
        "message_stop",
        &json!({"type": "message_stop"}),
    ));

    let overloaded = StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut error = ProviderError::new(Api::Anthropic, overloaded);
    if let Some(t) = &faults.error_type {
        error.error_type = t.clone();
    }
    let error = Event::named("error", &error.anthropic_json(exchange.request_id()));
    let answer = sse::respond(events, &faults, Box::new(move |_| vec![error]));
    exchange.finish(answer, tokens)
}
