//! The response future of [`Retry`](super::Retry): the retry loop itself.
//!
//! Over 600 lines on purpose: the loop is one state machine whose states
//! and transitions are read together. What stands alone lives beside it:
//! classification (`classify.rs`, `transport.rs`), the policy's decisions
//! (`policy.rs`), the peeked body (`body.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::body::{self, FirstEventReader, ResponseBody, Tail};
use super::classify::{Classification, Outcome, awaits_grpc_trailers};
use super::layer::Shared;
use super::policy::{Failure, FailureCounts, Stop};
use super::transport::{TransportFailure, add_idempotency_key, error_source};
use super::{RetryInfo, X_RETRY_COUNT};
use crate::body::collect::{Buffered, Collect, Collected};
use crate::body::reject;
use crate::request::FromBytes;
use crate::sse::{FirstEvent, is_event_stream};
use crate::{ApiError, BoxError, ErrorKind, RetryClass};

pin_project! {
    /// Resolves to the first response worth returning: a success, a failure
    /// that is not retried, or the last attempt's response or error.
    pub struct ResponseFuture<S, B, R>
    where
        S: Service<Request<B>, Response = Response<R>>,
        R: Body,
    {
        #[pin]
        state: State<S::Future, B, R, R::Error>,
        inner: S,
        shared: Arc<Shared>,
        // The request to replay; `None` once it cannot be (over the cap).
        template: Option<Template>,
        progress: Progress,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, R, E> {
        // Reading the request body into memory.
        Buffering { #[pin] body: Collect<B> },
        // Waiting for the inner service to be ready, then calling it with
        // the template.
        Ready,
        // An attempt in flight, and its per-attempt timeout (`None`: no
        // timeout). Inline, not boxed: every call has one.
        Calling { #[pin] future: F, #[pin] timer: Option<Sleep> },
        // Reading an error body, or an event stream up to its first event.
        // Boxed, like the sleep below: the retry paths pay for the space,
        // not every call's future.
        Peeking { peek: Option<Box<Peek<R, E>>> },
        // Between attempts.
        Waiting { sleep: Pin<Box<Sleep>> },
        Done,
    }
}

/// A response being read before it is classified.
struct Peek<R, E> {
    parts: http::response::Parts,
    body: Pin<Box<R>>,
    buf: Buffered,
    tail: Tail<E>,
    // `Some` for an event stream.
    reader: Option<FirstEventReader>,
    // A gRPC response awaiting its status: read until the first frame (its
    // first message, or the trailers with `grpc-status`), no further.
    grpc: bool,
    timer: Pin<Box<Sleep>>,
}

/// The parts of the request kept to build each attempt.
struct Template {
    parts: http::request::Parts,
    body: Bytes,
}

impl Template {
    fn request<B: FromBytes>(&self, retry: u32) -> Request<B> {
        let mut req = Request::from_parts(self.parts.clone(), B::from_bytes(self.body.clone()));
        if retry > 0 {
            req.headers_mut()
                .insert(X_RETRY_COUNT, HeaderValue::from(retry));
        }
        req
    }
}

/// The bookkeeping of one call.
struct Progress {
    attempts: u32,
    failures: FailureCounts,
    started: Instant,
    total_wait: Duration,
    // A retryable failure got no further attempt: the policy's attempts,
    // deadline or the retry budget ran out (see `RetryInfo::exhausted`).
    exhausted: bool,
}

/// The state between attempts: a sleep of `delay`.
fn waiting<F, B, R, E>(delay: Duration) -> State<F, B, R, E> {
    State::Waiting {
        sleep: Box::pin(tokio::time::sleep(delay)),
    }
}

/// An attempt's state: its future, timed by the per-attempt timeout.
fn calling<F, B, R, E>(shared: &Shared, future: F) -> State<F, B, R, E> {
    State::Calling {
        future,
        timer: shared.policy.attempt_timeout.map(tokio::time::sleep),
    }
}

impl<S, B, R> ResponseFuture<S, B, R>
where
    S: Service<Request<B>, Response = Response<R>>,
    B: Body<Data = Bytes> + FromBytes,
    R: Body<Data = Bytes>,
{
    pub(crate) fn new(mut inner: S, shared: Arc<Shared>, req: Request<B>) -> Self {
        let started = Instant::now();
        if let Some(budget) = &shared.budget {
            budget.deposit_at(started);
        }
        let mut progress = Progress {
            attempts: 0,
            failures: FailureCounts::default(),
            started,
            total_wait: Duration::ZERO,
            exhausted: false,
        };
        let (mut parts, body) = req.into_parts();
        let fits = body.is_end_stream()
            || body
                .size_hint()
                .upper()
                .is_some_and(|upper| upper <= shared.max_request_body_bytes as u64);
        let (state, template) = if !fits {
            tracing::debug!(
                target: "tollgate::retry",
                limit = shared.max_request_body_bytes,
                "request body may exceed the replay limit: sent once, never retried"
            );
            progress.attempts = 1;
            let future = inner.call(Request::from_parts(parts, body));
            (calling(&shared, future), None)
        } else {
            add_idempotency_key(&shared, &mut parts);
            let template = Template {
                parts,
                body: Bytes::new(),
            };
            let state = if body.is_end_stream() {
                progress.attempts = 1;
                calling(&shared, inner.call(template.request(0)))
            } else {
                // Not bounded here: the size hint said the body fits.
                State::Buffering {
                    body: Collect::new(body, usize::MAX),
                }
            };
            (state, Some(template))
        };
        ResponseFuture {
            state,
            inner,
            shared,
            template,
            progress,
        }
    }
}

impl<S, B, R> Future for ResponseFuture<S, B, R>
where
    S: Service<Request<B>, Response = Response<R>>,
    // Looked into by type to tell a connect error from the others.
    S::Error: 'static,
    B: Body<Data = Bytes> + FromBytes,
    B::Error: Into<BoxError>,
    R: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<R>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Buffering { body } => {
                    // Request trailers cannot be replayed through
                    // `FromBytes`; no client API sends them.
                    let bytes = match ready!(body.poll(cx)) {
                        Collected::Complete(bytes) => bytes,
                        Collected::Failed(error) => {
                            let error: BoxError = error.into();
                            tracing::debug!(
                                target: "tollgate::retry",
                                error = %error,
                                "request body failed while buffered for replay"
                            );
                            this.state.set(State::Done);
                            let rejection = ApiError::invalid_request()
                                .with_message("The request body could not be read.");
                            return Poll::Ready(Ok(with_info(reject(rejection), this.progress)));
                        }
                        // Not bounded: the size hint was checked instead.
                        Collected::TooLarge => Bytes::new(),
                    };
                    match this.template.as_mut() {
                        Some(template) => template.body = bytes,
                        None => unreachable!("a buffered request always has its template"),
                    }
                    this.state.set(State::Ready);
                }
                StateProj::Ready => {
                    if let Err(error) = ready!(this.inner.poll_ready(cx)) {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(error));
                    }
                    let Some(template) = this.template.as_ref() else {
                        unreachable!("only a replayable request is (re)sent from the template")
                    };
                    let request = template.request(this.progress.attempts);
                    // A body that outgrew its own size hint is sent (it is
                    // all in memory) but not kept for replay.
                    if template.body.len() > this.shared.max_request_body_bytes {
                        *this.template = None;
                    }
                    this.progress.attempts += 1;
                    let future = this.inner.call(request);
                    this.state.set(calling(this.shared, future));
                }
                StateProj::Calling { future, timer } => {
                    let polled = match (future.poll(cx), timer.as_pin_mut()) {
                        (Poll::Ready(result), _) => Some(result),
                        (Poll::Pending, Some(timer)) => {
                            ready!(timer.poll(cx));
                            None
                        }
                        (Poll::Pending, None) => return Poll::Pending,
                    };
                    let Some(Ok(response)) = polled else {
                        // An error, or an attempt that outlived its timeout
                        // (dropped, with its connection).
                        let safe = replay_safe(this.shared, this.template);
                        let failure = match &polled {
                            Some(Err(error)) => TransportFailure::new(error_source(error), safe),
                            _ => TransportFailure::attempt_timeout(safe),
                        };
                        let verdict = this.shared.classifier.classify_transport(&failure);
                        if let Some(delay) =
                            next_attempt(this.shared, this.progress, this.template, verdict, None)
                        {
                            this.state.set(waiting(delay));
                            continue;
                        }
                        this.state.set(State::Done);
                        return Poll::Ready(match polled {
                            Some(Err(error)) => Err(error),
                            _ => Ok(timed_out(this.shared, this.progress, verdict)),
                        });
                    };
                    if !may_retry(this.shared, this.progress, this.template) {
                        // A retryable failure here had its last attempt.
                        this.progress.exhausted =
                            this.template.is_some() && retryable_status(response.status());
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(finish(response, this.progress)));
                    }
                    let status = response.status();
                    let stream = status == StatusCode::OK
                        && this.shared.peek_streams
                        && is_event_stream(response.headers());
                    let grpc = status == StatusCode::OK && awaits_grpc_trailers(response.headers());
                    // A layer inside (the stream layer, holding the head)
                    // read the first event already: classify with it.
                    let first = stream
                        .then(|| response.extensions().get::<FirstEvent>().cloned())
                        .flatten();
                    if status.as_u16() >= 400 || (stream && first.is_none()) || grpc {
                        let now = Instant::now();
                        let deadline = this.progress.started + this.shared.policy.deadline;
                        if now >= deadline {
                            this.progress.exhausted = retryable_status(status);
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(finish(response, this.progress)));
                        }
                        let (parts, body) = response.into_parts();
                        let until = (now + this.shared.peek_timeout).min(deadline);
                        this.state.set(State::Peeking {
                            peek: Some(Box::new(Peek {
                                parts,
                                body: Box::pin(body),
                                buf: Buffered::Empty,
                                tail: Tail::Body,
                                reader: stream.then(|| {
                                    FirstEventReader::new(this.shared.max_error_body_bytes)
                                }),
                                grpc,
                                timer: Box::pin(tokio::time::sleep_until(until)),
                            })),
                        });
                        continue;
                    }
                    let outcome =
                        Outcome::new(status, response.headers()).with_clock(&*this.shared.clock);
                    let name = first.as_ref().map(FirstEvent::name_or_message);
                    let outcome = match (&first, &name) {
                        (Some(first), Some(name)) => outcome.with_first_event(name, first.data()),
                        _ => outcome,
                    };
                    let verdict = this.shared.classifier.classify(&outcome);
                    let (shared, template) = (&**this.shared, &*this.template);
                    let retry =
                        next_attempt(shared, this.progress, template, verdict, Some(status));
                    let Some(delay) = retry else {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(finish(response, this.progress)));
                    };
                    drop(response);
                    this.state.set(waiting(delay));
                }
                StateProj::Peeking { peek } => {
                    let Some(p) = peek.as_mut() else {
                        unreachable!("the peeked response is taken once, when classified")
                    };
                    ready!(read_head(p, this.shared.max_error_body_bytes, cx));
                    let Some(p) = peek.take() else {
                        unreachable!("checked just above")
                    };
                    let verdict = classify_peeked(this.shared, &p);
                    let (shared, template) = (&**this.shared, &*this.template);
                    let status = Some(p.parts.status);
                    if let Some(delay) =
                        next_attempt(shared, this.progress, template, verdict, status)
                    {
                        drop(p);
                        this.state.set(waiting(delay));
                        continue;
                    }
                    this.state.set(State::Done);
                    let Peek {
                        mut parts,
                        body,
                        mut buf,
                        tail,
                        reader,
                        ..
                    } = *p;
                    // For a layer further out (the stream layer) not to read
                    // the first event again.
                    if let Some(first) = reader.as_ref().and_then(FirstEventReader::first) {
                        parts.extensions.insert(first.clone());
                    }
                    let body = body::peeked(buf.take(), tail, body);
                    let response = Response::from_parts(parts, body);
                    return Poll::Ready(Ok(with_info(response, this.progress)));
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Ready);
                }
                StateProj::Done => {
                    panic!("tollgate::retry::future::ResponseFuture polled after completion")
                }
            }
        }
    }
}

/// Reads the head of a response until its first event (streams), the end,
/// `limit` bytes, or the timer. Pending only while all of those are.
fn read_head<R: Body<Data = Bytes>>(
    p: &mut Peek<R, R::Error>,
    limit: usize,
    cx: &mut Context<'_>,
) -> Poll<()> {
    loop {
        if p.buf.len() >= limit {
            return Poll::Ready(());
        }
        match p.body.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    let first = p.reader.as_mut().is_some_and(|r| r.feed(&data));
                    p.buf.push(data);
                    if p.grpc || first {
                        return Poll::Ready(());
                    }
                    if p.body.is_end_stream() {
                        p.tail = Tail::End;
                        return Poll::Ready(());
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        p.tail = Tail::Trailers(trailers);
                        return Poll::Ready(());
                    }
                }
            },
            Poll::Ready(Some(Err(error))) => {
                p.tail = Tail::Error(error);
                return Poll::Ready(());
            }
            Poll::Ready(None) => {
                p.tail = Tail::End;
                return Poll::Ready(());
            }
            Poll::Pending => {
                ready!(p.timer.as_mut().poll(cx));
                return Poll::Ready(());
            }
        }
    }
}

fn classify_peeked<R, E>(shared: &Shared, p: &Peek<R, E>) -> Classification {
    let outcome = Outcome::new(p.parts.status, &p.parts.headers).with_clock(&*shared.clock);
    match &p.reader {
        Some(reader) => match reader.first() {
            Some(first) => shared
                .classifier
                .classify(&outcome.with_first_event(&first.name_or_message(), first.data())),
            // The stream broke before its first event: nothing reached the
            // caller, so it is as safe to retry as a refused connection.
            None if matches!(p.tail, Tail::Error(_)) => {
                Classification::failure(ErrorKind::Connection)
            }
            // Ended, too slow or too large: the caller gets it as it is.
            None => Classification::Success,
        },
        None => {
            let body = p.buf.as_slice();
            let body = &body[..body.len().min(shared.max_error_body_bytes)];
            let outcome = outcome.with_body(body);
            match &p.tail {
                Tail::Trailers(trailers) => {
                    shared.classifier.classify(&outcome.with_trailers(trailers))
                }
                _ => shared.classifier.classify(&outcome),
            }
        }
    }
}

/// Whether the request may be sent again once it may have reached the
/// upstream (`false` when it cannot be replayed at all).
fn replay_safe(shared: &Shared, template: &Option<Template>) -> bool {
    template
        .as_ref()
        .is_some_and(|t| shared.policy.is_replay_safe(&t.parts, &t.body))
}

/// The answer to an attempt that timed out and is not retried: a 504 the
/// client must not retry either (the upstream may have done the work, or
/// the attempts are used up).
fn timed_out<R: Body>(
    shared: &Shared,
    progress: &Progress,
    verdict: Classification,
) -> Response<ResponseBody<R>> {
    let timeout = shared.policy.attempt_timeout.unwrap_or_default();
    let retryable =
        matches!(verdict, Classification::Failure { class, .. } if class != RetryClass::Never);
    let error = ApiError::timeout()
        .with_message(format!(
            "The upstream did not answer within {} s.",
            timeout.as_secs_f64()
        ))
        .with_should_retry(retryable && !progress.exhausted);
    with_info(reject(error), progress)
}

/// Whether a response that was not read could be a failure worth another
/// attempt, judged by its status alone (429, 408, 409, 5xx).
fn retryable_status(status: StatusCode) -> bool {
    status.as_u16() >= 400 && ErrorKind::from_status(status).retry_class() != RetryClass::Never
}

/// Whether another attempt is possible at all, before reading anything.
/// (The deadline is checked before peeking, and by the policy.)
fn may_retry(shared: &Shared, progress: &Progress, template: &Option<Template>) -> bool {
    template.is_some() && progress.attempts < shared.policy.max_attempts
}

/// The delay before the next attempt after `verdict` (`None`: stop), for a
/// response of `status` or an attempt without one. Logs the decision.
fn next_attempt(
    shared: &Shared,
    progress: &mut Progress,
    template: &Option<Template>,
    verdict: Classification,
    status: Option<StatusCode>,
) -> Option<Duration> {
    let Classification::Failure {
        kind,
        class,
        retry_after,
    } = verdict
    else {
        return None;
    };
    let failure = Failure {
        kind,
        class,
        retry_after,
    };
    let kind_failures = progress.failures.record(failure.kind);
    let status = status.map(|s| s.as_u16());
    if template.is_none() {
        tracing::debug!(
            target: "tollgate::retry",
            kind = %failure.kind,
            status,
            "not retried: the request body was not kept for replay"
        );
        return None;
    }
    let elapsed = progress.started.elapsed();
    let delay = match shared.policy.decide(
        failure,
        progress.attempts,
        kind_failures,
        elapsed,
        shared.jitter.next(),
    ) {
        Ok(delay) => delay,
        Err(stop) => {
            progress.exhausted = matches!(stop, Stop::Attempts | Stop::Deadline);
            tracing::debug!(
                target: "tollgate::retry",
                kind = %failure.kind,
                class = ?failure.class,
                status,
                attempts = progress.attempts,
                reason = %stop,
                "not retried"
            );
            return None;
        }
    };
    if let Some(budget) = &shared.budget
        && !budget.withdraw()
    {
        progress.exhausted = true;
        tracing::warn!(
            target: "tollgate::retry",
            kind = %failure.kind,
            status,
            attempts = progress.attempts,
            "not retried: the retry budget is spent"
        );
        return None;
    }
    tracing::info!(
        target: "tollgate::retry",
        kind = %failure.kind,
        class = ?failure.class,
        status,
        attempt = progress.attempts,
        delay_ms = delay.as_millis() as u64,
        "retrying request"
    );
    progress.total_wait += delay;
    Some(delay)
}

fn finish<R: Body>(response: Response<R>, progress: &Progress) -> Response<ResponseBody<R>> {
    with_info(response.map(body::inner), progress)
}

fn with_info<T>(mut response: Response<T>, progress: &Progress) -> Response<T> {
    response.extensions_mut().insert(RetryInfo {
        attempts: progress.attempts,
        total_wait: progress.total_wait,
        exhausted: progress.exhausted,
    });
    response
}
