//! OpenAI's Responses API: `POST /v1/responses`.
//!
//! Shapes from the API reference (<https://platform.openai.com/docs/api-reference/responses/object>
//! and, for streams, <https://platform.openai.com/docs/api-reference/responses-streaming>),
//! the same as the official SDK's `openai.types.responses` models, which
//! `tests/sdk/mock_openai.py` validates every event against. A streamed text
//! reply is, in order, each event with `event: <type>` and a
//! `sequence_number` counting from 0:
//!
//! `response.created`, `response.in_progress` (the response, `in_progress`,
//! no output, no usage), `response.output_item.added` (the message item,
//! `in_progress`, no content), `response.content_part.added` (an empty
//! `output_text` part), one `response.output_text.delta` per word,
//! `response.output_text.done`, `response.content_part.done`,
//! `response.output_item.done`, then `response.completed` with the usage
//! (`input_tokens`, `input_tokens_details.cached_tokens`, `output_tokens`,
//! `output_tokens_details.reasoning_tokens`, `total_tokens`), or
//! `response.incomplete` (`incomplete_details.reason: "max_output_tokens"`)
//! when the cap cut the reply. There is no `[DONE]`.
//!
//! A failed stream sends the documented `error` event (`{"type":"error",
//! "code","message","param","sequence_number"}`) and `response.failed`
//! (the response with `status: "failed"` and `error: {code, message}`).

use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::{Value, json};

use super::Mock;
use super::errors::{Api, ProviderError};
use super::exchange::Exchange;
use super::faults::Faults;
use super::sse::{self, Event};
use super::text::{self, Finish, Reply};

/// The smallest `max_output_tokens` OpenAI accepts.
const MIN_OUTPUT_TOKENS: u64 = 16;

/// The texts of an `input`: `(role, text)` per message, a bare string
/// being the user's.
fn input_texts(input: &Value) -> Option<Vec<(String, String)>> {
    match input {
        Value::String(s) => Some(vec![("user".into(), s.clone())]),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|item| {
                    let content = item.get("content")?;
                    let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
                    Some((role.to_owned(), text::content_text(content)))
                })
                .collect(),
        ),
        _ => None,
    }
}

/// What the streamed and the final response objects share.
struct Draft<'a> {
    id: String,
    created: u64,
    model: String,
    request: &'a Value,
}

impl Draft<'_> {
    fn object(&self, status: &str, output: Value, usage: Value) -> Value {
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": null,
            "instructions": self.request.get("instructions").cloned().unwrap_or(Value::Null),
            "max_output_tokens": self.request.get("max_output_tokens").cloned().unwrap_or(Value::Null),
            "max_tool_calls": null,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "service_tier": "default",
            "store": true,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_logprobs": 0,
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": {},
        })
    }
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
}

fn message(id: &str, status: &str, content: Value) -> Value {
    json!({"id": id, "type": "message", "status": status, "content": content, "role": "assistant"})
}

/// `POST /v1/responses`.
pub async fn create(State(mock): State<Mock>, request: Request) -> Response {
    let (exchange, body) = match mock.receive(Api::OpenAi, "/v1/responses", request).await {
        Ok(received) => received,
        Err(answer) => return answer,
    };
    let req = match exchange.parse(&body) {
        Ok(req) => req,
        Err(answer) => return answer,
    };
    let invalid = |exchange: &Exchange, message: String, param: &str| {
        exchange.fail(
            ProviderError::invalid(Api::OpenAi, message, Some(param)),
            &Faults::default(),
        )
    };
    let model = match req.get("model").and_then(Value::as_str) {
        Some(model) if !model.is_empty() => model.to_owned(),
        _ => {
            return invalid(
                &exchange,
                "Missing required parameter: 'model'.".into(),
                "model",
            );
        }
    };
    let Some(input) = req.get("input").and_then(input_texts) else {
        return invalid(
            &exchange,
            "Missing required parameter: 'input'.".into(),
            "input",
        );
    };
    let cap = text::max_tokens(&req, &["max_output_tokens"]);
    if let Some(cap) = cap.filter(|c| *c < MIN_OUTPUT_TOKENS) {
        return invalid(
            &exchange,
            format!(
                "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= {MIN_OUTPUT_TOKENS}, but got {cap} instead."
            ),
            "max_output_tokens",
        );
    }
    let instructions = req
        .get("instructions")
        .and_then(Value::as_str)
        .unwrap_or("");
    let input_tokens =
        text::tokens(instructions) + input.iter().map(|(_, t)| text::tokens(t)).sum::<u64>();
    let user: Vec<&str> = input
        .iter()
        .filter(|(role, _)| role == "user")
        .map(|(_, t)| t.as_str())
        .collect();
    let last_user = user.last().copied().unwrap_or("").to_owned();
    let faults = Faults::parse(user.iter().copied());
    let faults = match exchange.play(faults, &last_user).await {
        Ok(faults) => faults,
        Err(answer) => return answer,
    };

    let reply = Reply::to(&last_user, &faults, cap);
    let output_tokens = reply.tokens();
    let usage = if faults.no_usage {
        Value::Null
    } else {
        json!({
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        })
    };
    let tokens = input_tokens + output_tokens;
    let draft = Draft {
        id: format!("resp_{}", exchange.new_id()),
        created: exchange.now(),
        model,
        request: &req,
    };
    let item_id = format!("msg_{}", exchange.new_id());
    let full_text = reply.text();
    let done_item = message(&item_id, "completed", json!([output_text(&full_text)]));
    let (status, incomplete) = match reply.finish {
        Finish::Stop => ("completed", Value::Null),
        Finish::Length => ("incomplete", json!({"reason": "max_output_tokens"})),
    };
    let mut last = draft.object(status, json!([done_item]), usage);
    last["incomplete_details"] = incomplete;

    if !req.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        return exchange.answer(last, &faults, tokens).await;
    }

    let started = draft.object("in_progress", json!([]), Value::Null);
    let mut sequence = 0u64;
    let mut events = Vec::new();
    let mut push = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(sequence);
        sequence += 1;
        let event = Event::named(name, &data);
        // The text deltas are what the stream faults count.
        events.push(if name == "response.output_text.delta" {
            event.content()
        } else {
            event
        });
    };
    push("response.created", json!({"response": started}));
    push("response.in_progress", json!({"response": started}));
    push(
        "response.output_item.added",
        json!({"output_index": 0, "item": message(&item_id, "in_progress", json!([]))}),
    );
    let part = |text: &str| json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": output_text(text)});
    push("response.content_part.added", part(""));
    for i in 0..reply.words.len() {
        push(
            "response.output_text.delta",
            json!({
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "delta": reply.delta(i),
                "logprobs": [],
            }),
        );
    }
    push(
        "response.output_text.done",
        json!({
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "text": full_text,
            "logprobs": [],
        }),
    );
    push("response.content_part.done", part(&full_text));
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": done_item}),
    );
    let terminal = if status == "completed" {
        "response.completed"
    } else {
        "response.incomplete"
    };
    push(terminal, json!({"response": last}));

    let which = faults.error_event.clone().unwrap_or_else(|| "both".into());
    let code = faults
        .code
        .clone()
        .or_else(|| faults.error_type.clone())
        .unwrap_or_else(|| "server_error".into());
    let message_text =
        ProviderError::new(Api::OpenAi, axum::http::StatusCode::INTERNAL_SERVER_ERROR).message;
    let mut failed = draft.object("failed", json!([]), Value::Null);
    failed["error"] = json!({"code": code, "message": message_text});
    let failure = Box::new(move |sent: usize| {
        let mut out = Vec::new();
        let mut sequence = sent as u64;
        if which == "error" || which == "both" {
            let event = json!({
                "type": "error",
                "code": code,
                "message": message_text,
                "param": null,
                "sequence_number": sequence,
            });
            sequence += 1;
            out.push(Event::named("error", &event));
        }
        if which == "failed" || which == "both" {
            let event =
                json!({"type": "response.failed", "response": failed, "sequence_number": sequence});
            out.push(Event::named("response.failed", &event));
        }
        out
    });
    let answer = sse::respond(events, &faults, failure);
    exchange.finish(answer, tokens)
}
