//! One call, from its arrival to the headers of its answer: counted, read,
//! authenticated and admitted ([`Mock::receive`]), its directives played
//! ([`Exchange::play`]), answered with the provider's headers
//! ([`Exchange::finish`]).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

use super::errors::{Api, ProviderError, masked_key};
use super::faults::Faults;
use super::headers::{self, DEFAULT_REQUESTS_PER_MINUTE};
use super::{MAX_BODY, Mock, ResetSignal, lock};

impl Mock {
    /// Receives a call to `route`: counts it, reads its body, checks the key
    /// and the rate limit. An `Err` is the answer already.
    pub(super) async fn receive(
        &self,
        api: Api,
        route: &'static str,
        request: Request,
    ) -> Result<(Exchange, Bytes), Response> {
        let (parts, body) = request.into_parts();
        self.count(route, &parts.headers);
        let reset = parts.extensions.get::<ResetSignal>().cloned();
        let exchange = Exchange::new(self, api, route, reset);
        let body = match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(body) => body,
            Err(_) => {
                let mut error = ProviderError::new(api, StatusCode::PAYLOAD_TOO_LARGE);
                error.message = "Request exceeds the maximum allowed number of bytes.".into();
                return Err(exchange.fail(error, &Faults::default()));
            }
        };
        if let Err(error) = self.authenticate(api, &parts.headers) {
            return Err(exchange.fail(error, &Faults::default()));
        }
        let limit = self.config.requests_per_minute;
        // The guard must be gone before `fail` takes the lock again.
        let admitted = lock(&self.state.window).admit(limit.unwrap_or(u64::MAX));
        if let Err(wait) = admitted {
            let error = ProviderError::new(api, StatusCode::TOO_MANY_REQUESTS);
            let faults = Faults {
                retry_after_ms: Some(wait.as_millis() as u64),
                ..Faults::default()
            };
            return Err(exchange.fail(error, &faults));
        }
        Ok((exchange, body))
    }

    fn authenticate(&self, api: Api, request: &HeaderMap) -> Result<(), ProviderError> {
        let value = |name: &str| request.get(name).and_then(|v| v.to_str().ok());
        let bearer = value(header::AUTHORIZATION.as_str())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|key| !key.is_empty());
        let expected = self.config.upstream_key.as_deref();
        let mut error = ProviderError::new(api, StatusCode::UNAUTHORIZED);
        match api {
            Api::OpenAi => {
                let Some(expected) = expected else {
                    return Ok(());
                };
                match bearer {
                    Some(key) if key == expected => return Ok(()),
                    // OpenAI's own answer to a request without a key: no code.
                    None => {
                        error.code = None;
                        error.message = "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from https://platform.openai.com/account/api-keys.".into();
                    }
                    Some(key) => {
                        error.message = format!(
                            "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                            masked_key(key)
                        );
                    }
                }
                Err(error)
            }
            // Anthropic takes the key in `x-api-key` or, as its current SDKs
            // send it, `Authorization: Bearer`.
            Api::Anthropic => match value("x-api-key").or(bearer) {
                None => {
                    error.message = "x-api-key header is required".into();
                    Err(error)
                }
                Some(key) if expected.is_some_and(|e| e != key) => Err(error),
                Some(_) if value("anthropic-version").is_none_or(str::is_empty) => Err(
                    ProviderError::invalid(api, "anthropic-version: header is required", None),
                ),
                Some(_) => Ok(()),
            },
        }
    }
}

/// One call in progress: who answers it, and the headers its answer gets.
pub(super) struct Exchange {
    mock: Mock,
    api: Api,
    route: &'static str,
    request_id: String,
    started: Instant,
    reset: Option<ResetSignal>,
}

impl Exchange {
    /// A call to `route` arriving now, on a connection that `reset` can
    /// close (none: a router served by someone else).
    pub fn new(mock: &Mock, api: Api, route: &'static str, reset: Option<ResetSignal>) -> Self {
        Exchange {
            mock: mock.clone(),
            api,
            route,
            request_id: format!("req_{}", mock.next_id()),
            started: Instant::now(),
            reset,
        }
    }

    /// The provider's request id for this call.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// A fresh id (for response and item ids).
    pub fn new_id(&self) -> String {
        self.mock.next_id()
    }

    /// Seconds since the epoch (`created`).
    pub fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// The body as a JSON object, or the provider's 400.
    #[expect(
        clippy::result_large_err,
        reason = "the error is the answer itself, sent once per failed call of a test mock"
    )]
    pub fn parse(&self, body: &[u8]) -> Result<Value, Response> {
        match serde_json::from_slice::<Value>(body) {
            Ok(value @ Value::Object(_)) => Ok(value),
            _ => {
                let message = match self.api {
                    Api::OpenAi => {
                        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
                    }
                    Api::Anthropic => {
                        "There was an issue with the request body: it is not valid JSON"
                    }
                };
                Err(self.fail(
                    ProviderError::invalid(self.api, message, None),
                    &Faults::default(),
                ))
            }
        }
    }

    /// Plays the directives that come before an answer (`hang_ms`, `reset`,
    /// `status`), counting `times` against `text`. `Ok` holds the faults
    /// left for the answer (none once `times` is used up).
    pub async fn play(&self, faults: Faults, text: &str) -> Result<Faults, Response> {
        if let Some(k) = faults.times {
            let key = format!("{}\n{text}", self.route);
            let mut failures = lock(&self.mock.state.failures);
            let n = failures.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            if *n > k {
                return Ok(Faults {
                    words: faults.words,
                    no_usage: faults.no_usage,
                    null_usage: faults.null_usage,
                    ..Faults::default()
                });
            }
        }
        if let Some(hang) = faults.hang() {
            tokio::time::sleep(hang).await;
        }
        if faults.reset {
            return Err(self.reset().await);
        }
        if let Some(status) = faults.status {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            // `format=openai|anthropic` writes the other provider's error:
            // its type for the status too, not only its envelope.
            let api = match faults.format.as_deref() {
                Some("openai") => Api::OpenAi,
                Some("anthropic") => Api::Anthropic,
                _ => self.api,
            };
            let error = ProviderError::from_directives(api, status, &faults);
            return Err(self.fail(error, &faults));
        }
        Ok(faults)
    }

    async fn reset(&self) -> Response {
        if let Some(signal) = &self.reset {
            signal.0.notify_one();
            // The connection task drops this call with the connection.
            std::future::pending::<()>().await;
        }
        // A router served by someone else: a body that fails at once is the
        // nearest thing to no answer.
        let failing = futures_util::stream::once(async {
            Err::<Bytes, _>(std::io::Error::other("mock upstream reset"))
        });
        Response::new(Body::from_stream(failing))
    }

    /// The provider's error response.
    pub fn fail(&self, error: ProviderError, faults: &Faults) -> Response {
        self.finish(error.response(self.api, faults, &self.request_id), 0)
    }

    /// A JSON answer, after `delay_ms`.
    pub async fn answer(&self, body: Value, faults: &Faults, tokens: u64) -> Response {
        if let Some(delay) = faults.delay() {
            tokio::time::sleep(delay).await;
        }
        let mut response = Response::new(Body::from(body.to_string()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.finish(response, tokens)
    }

    /// Adds the headers every answer carries, charging `tokens` to the
    /// rate-limit window first.
    pub fn finish(&self, mut response: Response, tokens: u64) -> Response {
        let rate = {
            let mut window = lock(&self.mock.state.window);
            window.charge(tokens);
            window.state(
                self.mock
                    .config
                    .requests_per_minute
                    .unwrap_or(DEFAULT_REQUESTS_PER_MINUTE),
            )
        };
        headers::write(
            self.api,
            response.headers_mut(),
            &self.request_id,
            self.started.elapsed(),
            rate,
        );
        response
    }
}
