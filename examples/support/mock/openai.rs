//! OpenAI's chat completions, legacy completions and embeddings.
//!
//! Shapes from the API reference (<https://platform.openai.com/docs/api-reference/chat>,
//! `/completions`, `/embeddings`), checked by `tests/sdk/mock_openai.py`
//! against the official SDK's own types. A stream has a usage chunk (one
//! last chunk with `"choices": []` and the usage) only when the request set
//! `stream_options.include_usage`; without it no chunk has a `usage` key. A
//! failing stream sends `data: {"error": …}` and ends without `[DONE]`.
//!
//! # Why `"usage": null` is opt-in
//!
//! With `include_usage`, OpenAI also puts `"usage": null` on every other
//! chunk (the `stream_options` reference: "All other chunks will also
//! include a usage field, but with a null value"), where vLLM, Ollama and
//! most OpenAI-compatible servers leave the key out. The mock leaves it out
//! unless asked with `MOCK:usage=null`: a gateway that adds `include_usage`
//! to bill a stream and strips the usage chunk still passes those nulls on
//! today (`tests/gateway.rs` pins that the client sees no `"usage"` at all),
//! so the exact OpenAI form is there to test that case, not the default.

use axum::extract::{Request, State};
use axum::response::Response;
use base64::Engine as _;
use serde_json::{Value, json};

use super::Mock;
use super::errors::{Api, ProviderError};
use super::exchange::Exchange;
use super::faults::Faults;
use super::sse::{self, Event};
use super::text::{self, Finish, Reply};
use axum::http::StatusCode;

/// The dimensions of an embedding when the request does not choose
/// (`text-embedding-3-small`'s).
const EMBEDDING_DIMENSIONS: u64 = 1536;

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

fn include_usage(request: &Value) -> bool {
    request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn streamed(request: &Value) -> bool {
    request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

#[expect(
    clippy::result_large_err,
    reason = "the error is the answer itself, sent once per failed call of a test mock"
)]
fn model_of(exchange: &Exchange, request: &Value) -> Result<String, Response> {
    match request.get("model").and_then(Value::as_str) {
        Some(model) if !model.is_empty() => Ok(model.to_owned()),
        _ => Err(exchange.fail(
            ProviderError::invalid(Api::OpenAi, "you must provide a model parameter", None),
            &Faults::default(),
        )),
    }
}

/// The `data: {"error": …}` event that fails an OpenAI stream.
fn stream_error(faults: &Faults) -> Event {
    let error = ProviderError::from_directives(
        Api::OpenAi,
        StatusCode::INTERNAL_SERVER_ERROR,
        &Faults {
            error_type: faults.error_type.clone(),
            code: faults.code.clone(),
            ..Faults::default()
        },
    );
    Event::data(&error.openai_json())
}

/// `POST /v1/chat/completions`.
pub async fn chat(State(mock): State<Mock>, request: Request) -> Response {
    let (exchange, body) = match mock
        .receive(Api::OpenAi, "/v1/chat/completions", request)
        .await
    {
        Ok(received) => received,
        Err(answer) => return answer,
    };
    let req = match exchange.parse(&body) {
        Ok(req) => req,
        Err(answer) => return answer,
    };
    let model = match model_of(&exchange, &req) {
        Ok(model) => model,
        Err(answer) => return answer,
    };
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return exchange.fail(
            ProviderError::invalid(
                Api::OpenAi,
                "Missing required parameter: 'messages'.",
                Some("messages"),
            ),
            &Faults::default(),
        );
    };
    let content = |m: &Value| text::content_text(m.get("content").unwrap_or(&Value::Null));
    let prompt_tokens: u64 = messages.iter().map(|m| text::tokens(&content(m))).sum();
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

    let n = text::choices(&req);
    let cap = text::max_tokens(&req, &["max_completion_tokens", "max_tokens"]);
    let reply = Reply::to(&last_user, &faults, cap);
    let completion_tokens = reply.tokens() * n;
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    });
    let tokens = prompt_tokens + completion_tokens;
    let id = format!("chatcmpl-{}", exchange.new_id());
    let created = exchange.now();
    let finish = finish_reason(reply.finish);

    if !streamed(&req) {
        let choices: Vec<Value> = (0..n)
            .map(|index| {
                json!({
                    "index": index,
                    "message": {
                        "role": "assistant",
                        "content": reply.text(),
                        "refusal": null,
                        "annotations": [],
                    },
                    "logprobs": null,
                    "finish_reason": finish,
                })
            })
            .collect();
        let mut out = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": choices,
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
        });
        if !faults.no_usage {
            out["usage"] = usage;
        }
        return exchange.answer(out, &faults, tokens).await;
    }

    let with_usage = include_usage(&req);
    let null_usage = with_usage && faults.null_usage;
    let chunk = |choices: Value| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": choices,
        });
        if null_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let choice = |index: u64, delta: Value, finish: Option<&str>| json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    let mut events = Vec::new();
    for index in 0..n {
        events.push(Event::data(&chunk(choice(
            index,
            json!({"role": "assistant", "content": "", "refusal": null}),
            None,
        ))));
    }
    for i in 0..reply.words.len() {
        for index in 0..n {
            let delta = json!({"content": reply.delta(i)});
            events.push(Event::data(&chunk(choice(index, delta, None))).content());
        }
    }
    for index in 0..n {
        events.push(Event::data(&chunk(choice(index, json!({}), Some(finish)))));
    }
    if with_usage && !faults.no_usage {
        let mut last = chunk(json!([]));
        last["usage"] = usage;
        events.push(Event::data(&last));
    }
    events.push(Event::done());
    let error = stream_error(&faults);
    let answer = sse::respond(events, &faults, Box::new(move |_| vec![error]));
    exchange.finish(answer, tokens)
}

/// `POST /v1/completions` (legacy).
pub async fn completions(State(mock): State<Mock>, request: Request) -> Response {
    let (exchange, body) = match mock.receive(Api::OpenAi, "/v1/completions", request).await {
        Ok(received) => received,
        Err(answer) => return answer,
    };
    let req = match exchange.parse(&body) {
        Ok(req) => req,
        Err(answer) => return answer,
    };
    let model = match model_of(&exchange, &req) {
        Ok(model) => model,
        Err(answer) => return answer,
    };
    let Some(prompts) = req.get("prompt").and_then(text::prompts) else {
        return exchange.fail(
            ProviderError::invalid(
                Api::OpenAi,
                "'prompt' must be a string, an array of strings, an array of tokens or an array of token arrays.",
                Some("prompt"),
            ),
            &Faults::default(),
        );
    };
    let prompt_tokens: u64 = prompts.iter().map(|(_, t)| t).sum();
    let faults = Faults::parse(prompts.iter().map(|(t, _)| t.as_str()));
    let key = prompts
        .iter()
        .map(|(t, _)| t.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let faults = match exchange.play(faults, &key).await {
        Ok(faults) => faults,
        Err(answer) => return answer,
    };

    let n = text::choices(&req);
    let cap = text::max_tokens(&req, &["max_tokens"]);
    // One reply per prompt, `n` choices each, indexed prompt-major as OpenAI does.
    let replies: Vec<Reply> = prompts
        .iter()
        .map(|(t, _)| Reply::to(t, &faults, cap))
        .collect();
    let completion_tokens: u64 = replies.iter().map(|r| r.tokens() * n).sum();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let tokens = prompt_tokens + completion_tokens;
    let id = format!("cmpl-{}", exchange.new_id());
    let created = exchange.now();
    let indexed = || {
        replies
            .iter()
            .flat_map(move |r| (0..n).map(move |_| r))
            .enumerate()
    };

    if !streamed(&req) {
        let choices: Vec<Value> = indexed()
            .map(|(index, reply)| {
                json!({
                    "text": reply.text(),
                    "index": index,
                    "logprobs": null,
                    "finish_reason": finish_reason(reply.finish),
                })
            })
            .collect();
        let mut out = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": choices,
        });
        if !faults.no_usage {
            out["usage"] = usage;
        }
        return exchange.answer(out, &faults, tokens).await;
    }

    let with_usage = include_usage(&req);
    let null_usage = with_usage && faults.null_usage;
    let chunk = |index: usize, text: String, finish: Option<&str>| {
        let mut chunk = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"text": text, "index": index, "logprobs": null, "finish_reason": finish}],
        });
        if null_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let longest = replies.iter().map(|r| r.words.len()).max().unwrap_or(0);
    let mut events = Vec::new();
    for i in 0..longest {
        for (index, reply) in indexed().filter(|(_, r)| i < r.words.len()) {
            events.push(Event::data(&chunk(index, reply.delta(i), None)).content());
        }
    }
    for (index, reply) in indexed() {
        let finish = finish_reason(reply.finish);
        events.push(Event::data(&chunk(index, String::new(), Some(finish))));
    }
    if with_usage && !faults.no_usage {
        let mut last = chunk(0, String::new(), None);
        last["choices"] = json!([]);
        last["usage"] = usage;
        events.push(Event::data(&last));
    }
    events.push(Event::done());
    let error = stream_error(&faults);
    let answer = sse::respond(events, &faults, Box::new(move |_| vec![error]));
    exchange.finish(answer, tokens)
}

/// `POST /v1/embeddings`.
pub async fn embeddings(State(mock): State<Mock>, request: Request) -> Response {
    let (exchange, body) = match mock.receive(Api::OpenAi, "/v1/embeddings", request).await {
        Ok(received) => received,
        Err(answer) => return answer,
    };
    let req = match exchange.parse(&body) {
        Ok(req) => req,
        Err(answer) => return answer,
    };
    let model = match model_of(&exchange, &req) {
        Ok(model) => model,
        Err(answer) => return answer,
    };
    let invalid = |message: &str, param: &str| {
        exchange.fail(
            ProviderError::invalid(Api::OpenAi, message, Some(param)),
            &Faults::default(),
        )
    };
    let inputs = match req.get("input").and_then(text::prompts) {
        Some(inputs) if inputs.iter().all(|(t, _)| !t.is_empty()) => inputs,
        _ => {
            return invalid(
                "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
                "input",
            );
        }
    };
    let base64 = match req.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return invalid(
                &format!("'{other}' is not one of ['float', 'base64'] - 'encoding_format'"),
                "encoding_format",
            );
        }
    };
    let dimensions = match req.get("dimensions") {
        None | Some(Value::Null) => EMBEDDING_DIMENSIONS,
        Some(v) => match v.as_u64() {
            Some(d @ 1..=3072) => d,
            _ => return invalid("Invalid value for 'dimensions'.", "dimensions"),
        },
    };
    let prompt_tokens: u64 = inputs.iter().map(|(_, t)| t).sum();
    let faults = Faults::parse(inputs.iter().map(|(t, _)| t.as_str()));
    let key = inputs
        .iter()
        .map(|(t, _)| t.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let faults = match exchange.play(faults, &key).await {
        Ok(faults) => faults,
        Err(answer) => return answer,
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, (text, _))| {
            let vector = text::embedding(text, dimensions as usize);
            let embedding = if base64 {
                // Little-endian float32s, base64-encoded: what the SDKs decode.
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let mut out = json!({"object": "list", "data": data, "model": model});
    if !faults.no_usage {
        out["usage"] = json!({"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens});
    }
    exchange.answer(out, &faults, prompt_tokens).await
}
