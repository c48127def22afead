use std::time::Duration;

use http::{HeaderMap, Method, Uri};
use tower_layer::Layer;

use super::StreamFormat;
use super::service::StreamErrorTrailer;

/// How a request's stream format is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FormatChoice {
    Fixed(StreamFormat),
    ByRequest,
}

/// Everything the layer is configured with. Small and `Copy`: each response
/// future carries its own copy, so there is no shared state to lock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) format: FormatChoice,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) keep_alive: Option<Duration>,
    pub(crate) hold_first_event: bool,
    pub(crate) first_event_timeout: Duration,
    pub(crate) max_first_event_bytes: usize,
    pub(crate) max_event_bytes: usize,
    pub(crate) done_after_error: bool,
}

impl Config {
    pub(crate) fn settings(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Settings {
        Settings {
            watch_sse: method != Method::HEAD,
            format: match self.format {
                FormatChoice::Fixed(format) => format,
                FormatChoice::ByRequest => StreamFormat::from_request(uri, headers),
            },
            config: *self,
        }
    }
}

/// The configuration applied to one response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Not a `HEAD` request (whose response has no body to watch).
    pub(crate) watch_sse: bool,
    pub(crate) format: StreamFormat,
    pub(crate) config: Config,
}

/// Makes failing LLM streams end with an error event the client's SDK
/// understands, instead of a silent cut.
///
/// See the [module docs](crate::stream) for what it does, why, and an example.
/// Every setting has a production default:
///
/// | setting | default |
/// |---|---|
/// | [`format`](Self::format) | chosen per request ([`StreamFormat::from_request`]) |
/// | [`idle_timeout`](Self::idle_timeout) | 60 s |
/// | [`keep_alive`](Self::keep_alive) | off |
/// | [`hold_first_event`](Self::hold_first_event) | on |
/// | [`first_event_timeout`](Self::first_event_timeout) | 10 s |
/// | [`max_first_event_bytes`](Self::max_first_event_bytes) | 64 KiB |
/// | [`max_event_bytes`](Self::max_event_bytes) | 1 MiB |
/// | [`done_after_error`](Self::done_after_error) | off |
#[derive(Debug, Clone, Copy)]
pub struct StreamErrorTrailerLayer {
    config: Config,
}

impl Default for StreamErrorTrailerLayer {
    fn default() -> Self {
        StreamErrorTrailerLayer::new()
    }
}

impl StreamErrorTrailerLayer {
    /// Default [`idle_timeout`](Self::idle_timeout): 60 s.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default [`first_event_timeout`](Self::first_event_timeout): 10 s.
    pub const DEFAULT_FIRST_EVENT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default [`max_first_event_bytes`](Self::max_first_event_bytes): 64 KiB.
    pub const DEFAULT_MAX_FIRST_EVENT_BYTES: usize = 64 * 1024;
    /// Default [`max_event_bytes`](Self::max_event_bytes): 1 MiB.
    pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

    /// The layer with every default (see the table above).
    pub fn new() -> Self {
        StreamErrorTrailerLayer {
            config: Config {
                format: FormatChoice::ByRequest,
                idle_timeout: Some(Self::DEFAULT_IDLE_TIMEOUT),
                keep_alive: None,
                hold_first_event: true,
                first_event_timeout: Self::DEFAULT_FIRST_EVENT_TIMEOUT,
                max_first_event_bytes: Self::DEFAULT_MAX_FIRST_EVENT_BYTES,
                max_event_bytes: Self::DEFAULT_MAX_EVENT_BYTES,
                done_after_error: false,
            },
        }
    }

    /// Ends every failed stream in `format`, whatever the request.
    pub fn format(mut self, format: StreamFormat) -> Self {
        self.config.format = FormatChoice::Fixed(format);
        self
    }

    /// Chooses the format per request with [`StreamFormat::from_request`]
    /// (the default).
    pub fn format_by_request(mut self) -> Self {
        self.config.format = FormatChoice::ByRequest;
        self
    }

    /// Ends a stream with a timeout error when no event arrives for `timeout`
    /// (default 60 s). Upstream comments (`: ping`) count as events. The check
    /// runs on a coarse tick, so the error comes between `timeout` and
    /// `timeout × 9/8` after the last event.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = Some(timeout);
        self
    }

    /// Never ends a stream for being idle.
    pub fn without_idle_timeout(mut self) -> Self {
        self.config.idle_timeout = None;
        self
    }

    /// Sends `: keep-alive` comments when nothing has been sent to the client
    /// for `interval`, for proxies that cut idle connections (default off; a
    /// zero interval turns them off). Clients ignore comments. They do not
    /// count as upstream events, so the idle timeout still fires.
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.config.keep_alive = (!interval.is_zero()).then_some(interval);
        self
    }

    /// Holds the response head until the first event with data arrives, so an
    /// upstream whose first event is an error is answered with a real error
    /// status (default on). Bounded by
    /// [`first_event_timeout`](Self::first_event_timeout) and
    /// [`max_first_event_bytes`](Self::max_first_event_bytes).
    pub fn hold_first_event(mut self, hold: bool) -> Self {
        self.config.hold_first_event = hold;
        self
    }

    /// How long the head may be held waiting for the first event (default
    /// 10 s). When it passes, the stream starts anyway.
    pub fn first_event_timeout(mut self, timeout: Duration) -> Self {
        self.config.first_event_timeout = timeout;
        self
    }

    /// How many bytes may be held waiting for the first event (default
    /// 64 KiB). When they are exceeded, the stream starts anyway.
    pub fn max_first_event_bytes(mut self, bytes: usize) -> Self {
        self.config.max_first_event_bytes = bytes;
        self
    }

    /// The largest event the layer holds back until it is complete (default
    /// 1 MiB). A bigger event is forwarded as it arrives, and if the stream
    /// fails inside it the error event comes after a blank line that ends the
    /// partial event.
    pub fn max_event_bytes(mut self, bytes: usize) -> Self {
        self.config.max_event_bytes = bytes;
        self
    }

    /// Sends `data: [DONE]` after the error event in the chat-completions and
    /// finish-reason-metadata formats (default off: a `[DONE]` tells some
    /// clients the answer is complete).
    pub fn done_after_error(mut self, done: bool) -> Self {
        self.config.done_after_error = done;
        self
    }
}

impl<S> Layer<S> for StreamErrorTrailerLayer {
    type Service = StreamErrorTrailer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamErrorTrailer::from_parts(inner, self.config)
    }
}
