//! Every endpoint through the example gateway (a process, the built-in mock
//! upstream): OpenAI's chat completions, completions, embeddings and
//! Responses API, Anthropic's Messages API, the model list, and 404 for the
//! rest of `/v1/`; each billed from its own usage shape, streamed where the
//! API streams, with the official `anthropic` SDK's exception classes.

#[path = "support/gateway.rs"]
mod gateway_support;
#[path = "support/http.rs"]
mod http_support;
mod support;

use std::time::Duration;

use gateway_support::{Gateway, GatewayCommand};
use http::StatusCode;
use http_support::{Answer, HttpClient, call, dollars, get, post};
use serde_json::{Value, json};

const CONFIG: &str = r#"
upstream = "mock"
request_timeout_secs = 10
stream_idle_timeout_secs = 5

[retry]
max_attempts = 3
initial_backoff_ms = 10
max_backoff_ms = 50
max_retry_after_secs = 5

[[upstreams]]
name = "claude"
url = "mock"
kind = "anthropic"
api_key = "sk-upstream-anthropic"

[[upstreams]]
name = "remote-anthropic"
url = "http://127.0.0.1:9/v1"
kind = "anthropic"

[[models]]
name = "gpt-test"
input_usd_per_million = 1.0
output_usd_per_million = 2.0
max_output_tokens = 100

[[models]]
name = "embed-test"
input_usd_per_million = 1.0
output_usd_per_million = 2.0

[[models]]
name = "claude-test"
upstream = "claude"
upstream_model = "claude-sonnet-4-5-20250929"
input_usd_per_million = 3.0
output_usd_per_million = 15.0

[[models]]
name = "claude-remote"
upstream = "remote-anthropic"
input_usd_per_million = 3.0
output_usd_per_million = 15.0

[[keys]]
id = "ok"
secret = "sk-test-ok"
budget_usd = 100.0
budget_period = "monthly"

[[keys]]
id = "embed"
secret = "sk-test-embed"
budget_usd = 0.00002
budget_period = "monthly"

[[keys]]
id = "disabled"
secret = "sk-test-disabled"
disabled = true

[[keys]]
id = "restricted"
secret = "sk-test-restricted"
models = ["gpt-*"]

[[keys]]
id = "rpm"
secret = "sk-test-rpm"
requests_per_minute = 1

[[keys]]
id = "budget"
secret = "sk-test-budget"
budget_usd = 0.00001
budget_period = "monthly"

[[keys]]
id = "balance"
secret = "sk-test-balance"
balance_usd = 0.0
"#;

fn start() -> (Gateway, HttpClient) {
    (
        GatewayCommand::new().config(CONFIG).start(),
        http_support::client(),
    )
}

/// The access-log line of the one request to `route` by `key`.
fn log_line(gateway: &Gateway, route: &str, key: &str) -> Value {
    gateway.wait_for_log(Duration::from_secs(10), |l| {
        l["message"] == "request" && l["route"] == route && l["key"] == key
    })
}

/// The cost of `usage` at `input`/`output` dollars per million tokens.
fn cost(prompt: u64, completion: u64, input: f64, output: f64) -> f64 {
    (prompt as f64 * input + completion as f64 * output) / 1e6
}

fn assert_cost(line: &Value, expected: f64) {
    let got = dollars(&line["cost"]);
    assert!(
        (got - expected).abs() < 1e-12,
        "cost {got}, expected {expected}: {line}"
    );
}

/// The JSON of each `data:` line of a stream (not `[DONE]`), with its
/// `event:` name.
fn events(answer: &Answer) -> Vec<(Option<String>, Value)> {
    let text = answer.text();
    text.split("\n\n")
        .filter_map(|event| {
            let mut name = None;
            let mut data = None;
            for line in event.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(d);
                }
            }
            let data = data.filter(|d| *d != "[DONE]")?;
            Some((
                name,
                serde_json::from_str(data).expect("each event is JSON"),
            ))
        })
        .collect()
}

#[tokio::test]
async fn chat_and_completions_bill_streams_from_reported_usage_and_hide_it() {
    let (gateway, client) = start();
    let url = gateway.url("/v1/chat/completions");
    // The mock puts OpenAI's `"usage": null` on every chunk once usage is
    // asked for (`usage=null`): the client asked for none and sees none.
    let body = json!({"model": "gpt-test", "stream": true,
        "messages": [{"role": "user", "content": "one two three MOCK:usage=null"}]});
    let answer = call(&client, post(&url, Some("sk-test-ok"), &body, &[])).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let text = answer.text();
    assert!(text.contains("data: [DONE]"), "{text}");
    assert!(!text.contains("\"usage\""), "usage leaked: {text}");
    let line = log_line(&gateway, "/v1/chat/completions", "ok");
    // 4 prompt words; "mock reply: one two three MOCK:usage=null" is 6.
    assert_eq!(
        (
            line["prompt_tokens"].as_u64(),
            line["completion_tokens"].as_u64()
        ),
        (Some(4), Some(6))
    );
    assert_cost(&line, cost(4, 6, 1.0, 2.0));

    // Legacy completions, streamed with usage asked for: the client gets it.
    let body = json!({"model": "gpt-test", "stream": true, "prompt": ["alpha beta"],
        "stream_options": {"include_usage": true}});
    let answer = call(
        &client,
        post(
            &gateway.url("/v1/completions"),
            Some("sk-test-ok"),
            &body,
            &[],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let usage: Vec<Value> = events(&answer)
        .into_iter()
        .filter_map(|(_, e)| e.get("usage").filter(|u| u.is_object()).cloned())
        .collect();
    assert_eq!(usage.len(), 1, "{}", answer.text());
    let line = log_line(&gateway, "/v1/completions", "ok");
    assert_eq!(line["prompt_tokens"], usage[0]["prompt_tokens"]);
    assert_eq!(line["completion_tokens"], usage[0]["completion_tokens"]);
    let (p, c) = (
        usage[0]["prompt_tokens"].as_u64().unwrap_or(0),
        usage[0]["completion_tokens"].as_u64().unwrap_or(0),
    );
    assert_eq!(p, 2);
    assert_cost(&line, cost(p, c, 1.0, 2.0));
}

#[tokio::test]
async fn embeddings_are_priced_by_input_tokens_in_every_input_shape() {
    let (gateway, client) = start();
    let url = gateway.url("/v1/embeddings");
    // The key's budget ($0.00002) could not hold a completion's worth of
    // output (100 tokens × $2/M): embeddings reserve their input only.
    let mut spent = 0.0;
    for (input, tokens) in [
        (json!("one two three"), 3),
        (json!(["one two", "three"]), 3),
        (json!([[1, 2, 3], [4, 5]]), 5),
    ] {
        let body = json!({"model": "embed-test", "input": input});
        let answer = call(&client, post(&url, Some("sk-test-embed"), &body, &[])).await;
        assert_eq!(answer.status, StatusCode::OK, "{input}: {}", answer.text());
        let json = answer.json();
        assert_eq!(json["usage"]["prompt_tokens"], tokens, "{json}");
        assert!(json["data"].as_array().is_some_and(|d| !d.is_empty()));
        spent += cost(tokens, 0, 1.0, 2.0);
    }
    let key = call(
        &client,
        get(
            &gateway.url("/v1/key"),
            &[("authorization", "Bearer sk-test-embed")],
        ),
    )
    .await;
    // Money is a decimal string on the wire.
    let remaining = key.json()["budgets"][0]["remaining_usd"]
        .as_str()
        .and_then(|usd| usd.parse::<f64>().ok())
        .unwrap_or(-1.0);
    assert!(
        (remaining - (0.00002 - spent)).abs() < 1e-12,
        "{}",
        key.text()
    );
}

#[tokio::test]
async fn the_responses_api_streams_its_events_and_bills_completed_and_incomplete() {
    let (gateway, client) = start();
    let url = gateway.url("/v1/responses");
    let body = json!({"model": "gpt-test", "input": "hello there", "stream": true});
    let answer = call(&client, post(&url, Some("sk-test-ok"), &body, &[])).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let seen = events(&answer);
    let names: Vec<&str> = seen.iter().filter_map(|(n, _)| n.as_deref()).collect();
    assert_eq!(names.first(), Some(&"response.created"), "{names:?}");
    assert_eq!(names.last(), Some(&"response.completed"), "{names:?}");
    let usage = &seen
        .last()
        .map(|(_, e)| e["response"]["usage"].clone())
        .unwrap_or_default();
    let line = log_line(&gateway, "/v1/responses", "ok");
    let (p, c) = (
        usage["input_tokens"].as_u64().unwrap_or(0),
        usage["output_tokens"].as_u64().unwrap_or(0),
    );
    assert!(p > 0 && c > 0, "{usage}");
    assert_cost(&line, cost(p, c, 1.0, 2.0));

    // Cut by `max_output_tokens`: the stream ends with
    // `response.incomplete`, whose usage is billed.
    let body = json!({"model": "gpt-test", "input": "long MOCK:words=40", "stream": true,
        "max_output_tokens": 16});
    let answer = call(&client, post(&url, Some("sk-test-restricted"), &body, &[])).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let seen = events(&answer);
    let (name, last) = seen.last().cloned().unwrap_or_default();
    assert_eq!(
        name.as_deref(),
        Some("response.incomplete"),
        "{}",
        answer.text()
    );
    assert_eq!(last["response"]["usage"]["output_tokens"], 16);
    let line = log_line(&gateway, "/v1/responses", "restricted");
    assert_eq!(line["completion_tokens"], 16, "{line}");
}

#[tokio::test]
async fn anthropic_messages_pass_through_with_its_headers_errors_and_streams() {
    let (gateway, client) = start();
    let url = gateway.url("/v1/messages");
    let body = |text: &str, stream: bool| {
        json!({"model": "claude-test", "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": text}]})
    };
    // The key in `x-api-key`, as Anthropic's clients send it; the model
    // renamed upstream.
    let anthropic = [
        ("x-api-key", "sk-test-ok"),
        ("anthropic-version", "2023-06-01"),
    ];
    let answer = call(
        &client,
        post(&url, None, &body("hello world", false), &anthropic),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let message = answer.json();
    assert_eq!(message["type"], "message");
    assert_eq!(message["model"], "claude-sonnet-4-5-20250929");
    let line = log_line(&gateway, "/v1/messages", "ok");
    assert_eq!(line["upstream_name"], "claude", "{line}");
    let (p, c) = (
        message["usage"]["input_tokens"].as_u64().unwrap_or(0),
        message["usage"]["output_tokens"].as_u64().unwrap_or(0),
    );
    assert_cost(&line, cost(p, c, 3.0, 15.0));

    // `Authorization: Bearer`, and no `anthropic-version` (the gateway
    // sends the default one upstream); streamed.
    let answer = call(
        &client,
        post(&url, Some("sk-test-restricted"), &body("x", true), &[]),
    )
    .await;
    // The restricted key may not use claude-test: Anthropic's envelope.
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.text());
    assert_eq!(answer.json()["type"], "error");
    assert_eq!(answer.json()["error"]["type"], "permission_error");
    let answer = call(
        &client,
        post(&url, Some("sk-test-ok"), &body("stream me", true), &[]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let names: Vec<String> = events(&answer).into_iter().filter_map(|(n, _)| n).collect();
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));

    // Refusals in Anthropic's envelope.
    let answer = call(
        &client,
        post(&url, None, &body("x", false), &[("x-api-key", "sk-wrong")]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let error = answer.json();
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["error"]["type"], "authentication_error", "{error}");
    assert!(error["request_id"].is_string(), "{error}");

    // An overloaded upstream stays a 529 `overloaded_error`, retried by the
    // gateway and then not to be retried again.
    let answer = call(
        &client,
        post(&url, None, &body("busy MOCK:status=529", false), &anthropic),
    )
    .await;
    assert_eq!(answer.status.as_u16(), 529, "{}", answer.text());
    assert_eq!(answer.json()["error"]["type"], "overloaded_error");
    assert_eq!(answer.header("x-should-retry"), "false");

    // A stream whose upstream connection dies ends with `event: error`.
    let answer = call(
        &client,
        post(
            &url,
            None,
            &body("one two three four five MOCK:cut_after=2", true),
            &anthropic,
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = events(&answer);
    let (name, last) = seen.last().cloned().unwrap_or_default();
    assert_eq!(name.as_deref(), Some("error"), "{}", answer.text());
    assert_eq!(last["type"], "error");
    assert_eq!(last["error"]["type"], "api_error");

    // A model whose upstream speaks only Anthropic's API, called through
    // OpenAI's: refused before any call.
    let chat = json!({"model": "claude-remote", "messages": [{"role": "user", "content": "hi"}]});
    let answer = call(
        &client,
        post(
            &gateway.url("/v1/chat/completions"),
            Some("sk-test-ok"),
            &chat,
            &[],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text());
    assert_eq!(answer.json()["error"]["param"], "model");
}

#[tokio::test]
async fn models_are_listed_and_the_rest_of_v1_is_404() {
    let (gateway, client) = start();
    let auth = [("authorization", "Bearer sk-test-restricted")];
    let answer = call(&client, get(&gateway.url("/v1/models/gpt-test"), &auth)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["id"], "gpt-test");
    let answer = call(&client, get(&gateway.url("/v1/models/claude-test"), &auth)).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.text());
    let answer = call(
        &client,
        get(
            &gateway.url("/v1/models"),
            &[
                ("x-api-key", "sk-test-ok"),
                ("anthropic-version", "2023-06-01"),
            ],
        ),
    )
    .await;
    let list = answer.json();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["gpt-test", "embed-test", "claude-test", "claude-remote"]
    );
    assert_eq!(list["data"][0]["type"], "model");

    let body = json!({"model": "gpt-test", "input": "hi"});
    let answer = call(
        &client,
        post(
            &gateway.url("/v1/audio/speech"),
            Some("sk-test-ok"),
            &body,
            &[],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.json()["error"]["type"], "not_found_error");
    let answer = call(
        &client,
        post(
            &gateway.url("/v1/messages/count_tokens"),
            None,
            &body,
            &[("x-api-key", "sk-test-ok")],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.json()["type"], "error", "{}", answer.text());
    assert_eq!(answer.json()["error"]["type"], "not_found_error");

    // A known path with a method it does not answer: 405 in the API's
    // envelope, naming the methods, which `allow` lists too.
    let answer = call(&client, get(&gateway.url("/v1/chat/completions"), &auth)).await;
    assert_eq!(
        answer.status,
        StatusCode::METHOD_NOT_ALLOWED,
        "{}",
        answer.text()
    );
    assert_eq!(answer.headers["allow"], "POST");
    assert_eq!(answer.json()["error"]["code"], "method_not_allowed");
    assert_eq!(
        answer.json()["error"]["message"],
        "/v1/chat/completions answers POST only."
    );
    let answer = call(
        &client,
        post(&gateway.url("/v1/models"), Some("sk-test-ok"), &body, &[]),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::METHOD_NOT_ALLOWED,
        "{}",
        answer.text()
    );
    assert_eq!(answer.headers["allow"], "GET,HEAD");
    assert_eq!(
        answer.json()["error"]["message"],
        "/v1/models answers GET and HEAD only."
    );
}

/// The official `anthropic` SDK raises the right class for each refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_python_sdk_sees_the_right_exceptions() {
    let (gateway, _client) = start();
    http_support::run_sdk_script(
        "gateway_anthropic.py",
        vec![("TOLLGATE_BASE_URL", gateway.base_url())],
        Duration::from_secs(120),
    )
    .await;
}
