use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, Uri};
use tower_layer::Layer;

use super::ErrorFormat;
use super::service::ErrorEnvelope;

type SelectFormat = dyn Fn(&Uri, &HeaderMap) -> ErrorFormat + Send + Sync;

/// Picks the error format for one request.
#[derive(Clone)]
pub(crate) enum FormatChoice {
    Fixed(ErrorFormat),
    Auto,
    Custom(Arc<SelectFormat>),
}

/// `anthropic-version`, which every Anthropic client sends. A constant: a
/// `&str` name is parsed and validated on every lookup.
pub(crate) const ANTHROPIC_VERSION: http::HeaderName =
    http::HeaderName::from_static("anthropic-version");

impl FormatChoice {
    pub(crate) fn pick(&self, uri: &Uri, headers: &HeaderMap) -> ErrorFormat {
        if super::is_grpc(headers) {
            return ErrorFormat::Grpc;
        }
        match self {
            FormatChoice::Fixed(format) => *format,
            FormatChoice::Auto => {
                if headers.contains_key(ANTHROPIC_VERSION) || is_anthropic_path(uri.path()) {
                    ErrorFormat::Anthropic
                } else {
                    ErrorFormat::OpenAi
                }
            }
            FormatChoice::Custom(f) => f(uri, headers),
        }
    }
}

/// Anthropic's Messages API: `/v1/messages` and what lies under it
/// (`/v1/messages/count_tokens`, `/v1/messages/batches`), behind any prefix.
/// OpenAI's `/v1/threads/{id}/messages` is not one of them.
fn is_anthropic_path(path: &str) -> bool {
    path.ends_with("/v1/messages") || path.contains("/v1/messages/")
}

impl fmt::Debug for FormatChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatChoice::Fixed(format) => f.debug_tuple("Fixed").field(format).finish(),
            FormatChoice::Auto => f.write_str("Auto"),
            FormatChoice::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) format: FormatChoice,
    pub(crate) max_error_body_bytes: usize,
    pub(crate) catch_panic: bool,
}

/// Turns every failure of the inner service into an error envelope.
///
/// See the [module docs](crate::envelope) for what it does and an example.
#[derive(Debug, Clone)]
pub struct ErrorEnvelopeLayer {
    config: Arc<Config>,
}

impl Default for ErrorEnvelopeLayer {
    fn default() -> Self {
        ErrorEnvelopeLayer::new()
    }
}

impl ErrorEnvelopeLayer {
    /// Default error body read limit when parsing a foreign error: 64 KiB.
    pub const DEFAULT_MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

    /// OpenAI format, 64 KiB parse limit, panics not caught.
    pub fn new() -> Self {
        ErrorEnvelopeLayer {
            config: Arc::new(Config {
                format: FormatChoice::Fixed(ErrorFormat::OpenAi),
                max_error_body_bytes: Self::DEFAULT_MAX_ERROR_BODY_BYTES,
                catch_panic: false,
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Renders every error in `format` (gRPC requests still get gRPC status).
    pub fn format(mut self, format: ErrorFormat) -> Self {
        self.config_mut().format = FormatChoice::Fixed(format);
        self
    }

    /// Chooses the format per request: Anthropic for requests with an
    /// `anthropic-version` header or to `/v1/messages` (and the paths under
    /// it, behind any prefix), OpenAI otherwise. gRPC requests still get
    /// gRPC status.
    pub fn auto_format(mut self) -> Self {
        self.config_mut().format = FormatChoice::Auto;
        self
    }

    /// Chooses the format per request with `select` (gRPC requests still get
    /// gRPC status).
    pub fn format_fn<F>(mut self, select: F) -> Self
    where
        F: Fn(&Uri, &HeaderMap) -> ErrorFormat + Send + Sync + 'static,
    {
        self.config_mut().format = FormatChoice::Custom(Arc::new(select));
        self
    }

    /// How much of a foreign error body is read to parse it (default 64 KiB).
    /// The rest is discarded; the error is parsed from what was read.
    pub fn max_error_body_bytes(mut self, bytes: usize) -> Self {
        self.config_mut().max_error_body_bytes = bytes;
        self
    }

    /// Catches panics in the inner service and answers 500 (default off).
    pub fn catch_panic(mut self, enabled: bool) -> Self {
        self.config_mut().catch_panic = enabled;
        self
    }
}

impl<S> Layer<S> for ErrorEnvelopeLayer {
    type Service = ErrorEnvelope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorEnvelope::from_parts(inner, self.config.clone())
    }
}
