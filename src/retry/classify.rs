//! What failed, and whether another try can help: [`Classify`].

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

use super::hints;
use super::transport::{TransportFailure, classify_transport};
use crate::clock::Clock;
use crate::envelope::{GRPC_STATUS, grpc_code, is_grpc};
use crate::{ApiError, ErrorKind, RetryClass};

/// Decides whether an attempt succeeded and, if not, what kind of failure it
/// was and whether to retry.
///
/// # Why classes?
///
/// A retry loop that retries "on error" retries the wrong things. A 400, a
/// bad key, a prompt over the context window or an exhausted quota fail
/// exactly the same way the second and the third time, and each attempt may
/// cost money or count against a limit. A 429 will succeed, but only after
/// the window resets; a 503 probably succeeds after a short, jittered wait.
/// So every failure is classified into an [`ErrorKind`] and a [`RetryClass`]
/// (never, after the server's delay, transient), and the policy acts on the
/// class. The default classifier ([`DefaultClassifier`]) knows the providers'
/// conventions, including the ones retry loops usually miss: a 429 whose code
/// is `insufficient_quota` is final, and a server's `x-should-retry` header
/// outranks every rule.
///
/// # Custom rules
///
/// Implemented for closures, so a custom rule is one line that falls back to
/// [`DefaultClassifier`]:
///
/// ```
/// use tollgate::ErrorKind;
/// use tollgate::retry::{Classification, Classify, DefaultClassifier, Outcome, RetryLayer};
///
/// // Also retry 404s, which this (hypothetical) upstream sends while a model loads.
/// let layer = RetryLayer::new().classify(|outcome: &Outcome<'_>| {
///     if outcome.status() == http::StatusCode::NOT_FOUND {
///         return Classification::failure(ErrorKind::NotFound)
///             .with_class(tollgate::RetryClass::Transient);
///     }
///     DefaultClassifier::new().classify(outcome)
/// });
/// ```
///
/// A closure classifies responses only; an attempt that got no response is
/// classified by [`classify_transport`](Classify::classify_transport), whose
/// default is [`DefaultClassifier`]'s.
pub trait Classify: Send + Sync + 'static {
    /// Classifies one attempt's response.
    fn classify(&self, outcome: &Outcome<'_>) -> Classification;

    /// Classifies one attempt that got no response: the inner service's
    /// error, or the [per-attempt timeout](super::RetryPolicy::attempt_timeout).
    ///
    /// The default: a connect error (nothing was sent) is
    /// [`ErrorKind::Connection`], [`RetryClass::Transient`]; a timeout is
    /// [`ErrorKind::Timeout`] and anything else (a reset, an unknown error)
    /// [`ErrorKind::Connection`], both transient for a
    /// [replay-safe](super::RetryPolicy::replay_safe) request and
    /// [`RetryClass::Never`] otherwise, since the upstream may have done
    /// (and billed) the work.
    fn classify_transport(&self, failure: &TransportFailure<'_>) -> Classification {
        classify_transport(failure)
    }
}

impl<F> Classify for F
where
    F: Fn(&Outcome<'_>) -> Classification + Send + Sync + 'static,
{
    fn classify(&self, outcome: &Outcome<'_>) -> Classification {
        self(outcome)
    }
}

/// What a classifier sees of one attempt: the response head and, for an
/// error status, the start of the body, or, for an event stream, its first
/// event, or, for a gRPC response without a `grpc-status` header, its
/// trailers.
///
/// An `Err` from the inner service (connection refused, reset, DNS, TLS, a
/// timeout layer's `Elapsed`) is a [`TransportFailure`] instead.
#[derive(Clone, Copy)]
pub struct Outcome<'a> {
    status: StatusCode,
    headers: &'a HeaderMap,
    trailers: Option<&'a HeaderMap>,
    body: &'a [u8],
    event: Option<&'a str>,
    // Read only when a classifier asks (absolute dates in headers).
    now_unix: Option<Duration>,
    clock: Option<&'a dyn Clock>,
}

impl fmt::Debug for Outcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outcome")
            .field("status", &self.status)
            .field("headers", &self.headers.len())
            .field("body", &self.body.len())
            .field("event", &self.event)
            .finish_non_exhaustive()
    }
}

impl<'a> Outcome<'a> {
    /// A response with no body read.
    pub fn new(status: StatusCode, headers: &'a HeaderMap) -> Self {
        Outcome {
            status,
            headers,
            trailers: None,
            body: &[],
            event: None,
            now_unix: None,
            clock: None,
        }
    }

    /// With the start of the (error) body.
    pub fn with_body(mut self, body: &'a [u8]) -> Self {
        self.body = body;
        self
    }

    /// With the first event of an event stream: its type (`"message"` when
    /// the stream names none) and its data.
    pub fn with_first_event(mut self, event: &'a str, data: &'a [u8]) -> Self {
        self.event = Some(event);
        self.body = data;
        self
    }

    /// With the trailers that ended the body (a gRPC response's
    /// `grpc-status` comes in them unless the response is trailers-only).
    pub fn with_trailers(mut self, trailers: &'a HeaderMap) -> Self {
        self.trailers = Some(trailers);
        self
    }

    /// With the wall-clock time, for absolute dates in headers (the
    /// system's clock otherwise).
    pub fn with_now_unix(mut self, now_unix: Duration) -> Self {
        self.now_unix = Some(now_unix);
        self
    }

    pub(crate) fn with_clock(mut self, clock: &'a dyn Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// For a status of 400 or more, the start of the body (bounded by
    /// [`RetryLayer::max_error_body_bytes`](super::RetryLayer::max_error_body_bytes));
    /// for an event stream, the first event's data; otherwise empty.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The trailers, when the body was read to its end and had some.
    pub fn trailers(&self) -> Option<&'a HeaderMap> {
        self.trailers
    }

    /// The first event's type when this is an event stream's first event.
    pub fn first_event(&self) -> Option<&'a str> {
        self.event
    }

    /// Wall-clock time since the Unix epoch, from the layer's
    /// [`clock`](super::RetryLayer::clock).
    pub fn now_unix(&self) -> Duration {
        match (self.now_unix, self.clock) {
            (Some(now), _) => now,
            (None, Some(clock)) => clock.now_unix(),
            (None, None) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }
}

/// A classifier's verdict on one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Classification {
    /// Hand the response to the caller.
    Success,
    /// The attempt failed.
    Failure {
        /// What failed.
        kind: ErrorKind,
        /// Whether, and when, to retry.
        class: RetryClass,
        /// The delay the server asked for, if any.
        retry_after: Option<Duration>,
    },
}

impl Classification {
    /// A failure of `kind`, with the kind's retry class and no delay.
    pub fn failure(kind: ErrorKind) -> Self {
        Classification::Failure {
            kind,
            class: kind.retry_class(),
            retry_after: None,
        }
    }

    /// Replaces the retry class of a failure.
    pub fn with_class(mut self, class: RetryClass) -> Self {
        if let Classification::Failure { class: c, .. } = &mut self {
            *c = class;
        }
        self
    }

    /// Sets the server-requested delay of a failure.
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        if let Classification::Failure { retry_after, .. } = &mut self {
            *retry_after = Some(delay);
        }
        self
    }

    /// Whether this is [`Classification::Success`].
    pub fn is_success(&self) -> bool {
        matches!(self, Classification::Success)
    }
}

/// The classifier used unless another is set.
///
/// - A status below 400 is a success, unless it is an event stream whose
///   first event is an error (OpenAI `data: {"error":…}`, Anthropic
///   `event: error`), which is classified like an error response of the
///   status its `type` stands for.
/// - A status of 400 or more is parsed with [`crate::envelope::parse`] (every
///   error format tollgate knows, plain text, HTML), giving the
///   [`ErrorKind`]; the class is [`ApiError::retry_class`]:
///   - never: 400 (invalid request, context length, content filter), 401,
///     402, 403, 404, 413, 422, and any 429 whose code is `insufficient_quota`
///     or `enforced_spend_limit_reached` (or whose type is `insufficient_quota`);
///   - after the server's delay: other 429s;
///   - transient: 408, 409, 500, 502, 503, 504, 529 and any other 5xx.
/// - A `grpc-status` other than 0 (OK), in the headers (a trailers-only
///   response) or the trailers, is classified as the HTTP status it maps
///   to: `UNAVAILABLE` (14) as 503, `RESOURCE_EXHAUSTED` (8) as 429,
///   `DEADLINE_EXCEEDED` (4) as 504, `INTERNAL` (13) and `UNKNOWN` (2) as
///   500, `INVALID_ARGUMENT` (3) as 400, `UNAUTHENTICATED` (16) as 401, …;
///   its metadata gives the delay.
/// - `x-should-retry: true` or `false` on an error response overrides the
///   class (`true` on a never-class failure makes it transient).
/// - The delay comes from the headers ([`hints::server_delay`]).
/// - An attempt without a response is classified as
///   [`Classify::classify_transport`] says.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier {
    _private: (),
}

impl DefaultClassifier {
    /// The default classifier.
    pub fn new() -> Self {
        DefaultClassifier { _private: () }
    }
}

impl Classify for DefaultClassifier {
    fn classify(&self, outcome: &Outcome<'_>) -> Classification {
        if let Some(event) = outcome.event {
            return classify_event(event, outcome.body, outcome.now_unix());
        }
        let status = outcome.status;
        if status.as_u16() < 400 {
            // gRPC answers 200 and puts its status in the headers of a
            // trailers-only response, or in the trailers.
            let grpc = [Some(outcome.headers), outcome.trailers]
                .into_iter()
                .flatten()
                .find_map(|map| Some((map, grpc_code(map)?)));
            return match grpc {
                Some((map, code)) if code != 0 => {
                    let error = crate::envelope::parse(status, map, outcome.body);
                    failure(&error, error.status(), map, outcome.now_unix())
                }
                _ => Classification::Success,
            };
        }
        let error = crate::envelope::parse(status, outcome.headers, outcome.body);
        failure(&error, status, outcome.headers, outcome.now_unix())
    }
}

/// Whether a response is gRPC with its status still to come in the
/// trailers (not a trailers-only response).
pub(crate) fn awaits_grpc_trailers(headers: &HeaderMap) -> bool {
    !headers.contains_key(GRPC_STATUS) && is_grpc(headers)
}

fn failure(
    error: &ApiError,
    status: StatusCode,
    headers: &HeaderMap,
    now: Duration,
) -> Classification {
    let kind = error.kind();
    let class = match (error.should_retry_override(), error.retry_class()) {
        (Some(false), _) => RetryClass::Never,
        (Some(true), RetryClass::Never) => RetryClass::Transient,
        (_, class) => class,
    };
    let rate_limited = status == StatusCode::TOO_MANY_REQUESTS || kind == ErrorKind::RateLimited;
    Classification::Failure {
        kind,
        class,
        retry_after: hints::server_delay(headers, now, rate_limited),
    }
}

/// The first event of a stream: an error event is classified as the error
/// response its `type` (or numeric `code`/`status`) stands for.
fn classify_event(event: &str, data: &[u8], now: Duration) -> Classification {
    // In-band errors carry no headers of their own; the 200's headers
    // (rate-limit counters, …) describe the stream, not the error.
    let headers = HeaderMap::new();
    match crate::envelope::parse_event(
        Some(event),
        data,
        &headers,
        StatusCode::INTERNAL_SERVER_ERROR,
    ) {
        Some(error) => failure(&error, error.status(), &headers, now),
        None => Classification::Success,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(status: u16, headers: &[(&str, &str)], body: &str) -> Classification {
        let h = crate::retry::hints::tests::headers(headers);
        let status = StatusCode::from_u16(status).unwrap();
        DefaultClassifier::new().classify(&Outcome::new(status, &h).with_body(body.as_bytes()))
    }

    fn event(name: &str, data: &str) -> Classification {
        let h = HeaderMap::new();
        DefaultClassifier::new()
            .classify(&Outcome::new(StatusCode::OK, &h).with_first_event(name, data.as_bytes()))
    }

    fn class(c: Classification) -> Option<(ErrorKind, RetryClass)> {
        match c {
            Classification::Failure { kind, class, .. } => Some((kind, class)),
            _ => None,
        }
    }

    #[test]
    fn success_statuses() {
        for s in [200, 201, 204, 301, 304] {
            assert_eq!(classify(s, &[], ""), Classification::Success);
        }
    }

    #[test]
    fn the_issue_table() {
        use ErrorKind::*;
        use RetryClass::*;
        let cases = [
            (400, "", InvalidRequest, Never),
            (401, "", Authentication, Never),
            (402, "", BudgetExceeded, Never),
            (403, "", PermissionDenied, Never),
            (404, "", NotFound, Never),
            (422, "", Unprocessable, Never),
            (408, "", Timeout, Transient),
            (409, "", Conflict, Transient),
            (429, "", RateLimited, AfterDelay),
            (500, "", Internal, Transient),
            (502, "", BadGateway, Transient),
            (503, "", Unavailable, Transient),
            (504, "", Timeout, Transient),
            (529, "", Overloaded, Transient),
            (
                400,
                r#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
                ContextLengthExceeded,
                Never,
            ),
            (
                400,
                r#"{"error":{"message":"no","type":"invalid_request_error","code":"content_filter"}}"#,
                ContentFilter,
                Never,
            ),
            (
                429,
                r#"{"error":{"message":"quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
                QuotaExhausted,
                Never,
            ),
            (
                429,
                r#"{"error":{"message":"spend","type":"invalid_request_error","code":"enforced_spend_limit_reached"}}"#,
                QuotaExhausted,
                Never,
            ),
            (
                429,
                r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
                RateLimited,
                AfterDelay,
            ),
        ];
        for (status, body, kind, retry) in cases {
            assert_eq!(
                class(classify(status, &[], body)),
                Some((kind, retry)),
                "{status} {body}"
            );
        }
    }

    #[test]
    fn x_should_retry_overrides_both_ways() {
        use ErrorKind::*;
        use RetryClass::*;
        for (status, header, expected) in [
            (400, "true", Some((InvalidRequest, Transient))),
            (503, "false", Some((Unavailable, Never))),
            (429, "true", Some((RateLimited, AfterDelay))),
            (200, "true", None),
        ] {
            let c = classify(status, &[("x-should-retry", header)], "");
            assert_eq!(class(c), expected, "{status} {header}");
            assert_eq!(c.is_success(), expected.is_none());
        }
    }

    #[test]
    fn hints_are_attached() {
        let delay = |status, header| match classify(status, &[header], "") {
            Classification::Failure { retry_after, .. } => retry_after,
            Classification::Success => panic!("{status} is a failure"),
        };
        let two = Some(Duration::from_secs(2));
        assert_eq!(delay(503, ("retry-after", "2")), two);
        assert_eq!(delay(500, ("x-ratelimit-reset-requests", "2s")), None);
        assert_eq!(delay(429, ("x-ratelimit-reset-requests", "2s")), two);
    }

    #[test]
    fn first_events() {
        use ErrorKind::*;
        use RetryClass::*;
        for (name, data, expected) in [
            ("message", r#"{"id":"x","choices":[]}"#, None),
            ("message", "[DONE]", None),
            ("message_start", r#"{"type":"message_start"}"#, None),
            ("message", r#"{"error":null,"choices":[]}"#, None),
            (
                "message",
                r#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#,
                Some((Internal, Transient)),
            ),
            (
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                Some((Overloaded, Transient)),
            ),
            (
                "error",
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}"#,
                Some((RateLimited, AfterDelay)),
            ),
            (
                "message",
                r#"{"error":{"message":"bad","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
                Some((ContextLengthExceeded, Never)),
            ),
            (
                "message",
                r#"{"error":{"message":"Provider returned error","code":502}}"#,
                Some((BadGateway, Transient)),
            ),
            (
                "error",
                r#"{"type":"error","code":"rate_limit_exceeded","message":"slow","param":null}"#,
                Some((RateLimited, AfterDelay)),
            ),
            ("error", "upstream went away", Some((Internal, Transient))),
        ] {
            let c = event(name, data);
            assert_eq!(class(c), expected, "{name} {data}");
            assert_eq!(c.is_success(), expected.is_none(), "{name} {data}");
        }
    }
}
