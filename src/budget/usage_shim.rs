//! TEMPORARY stand-in for `crate::usage` (see /work/usage-contract.md) so the
//! budget layer compiles before the usage observer is merged. It scans
//! nothing: it reports all-zero usage when the body ends or is dropped.
//! Deleted when `usage` lands on main.
#![allow(dead_code, missing_docs)]

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    Reported,
    Estimated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    Completed,
    Failed,
    Dropped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    pub usage: Usage,
    pub source: UsageSource,
    pub end: BodyEnd,
    pub status: http::StatusCode,
}

#[derive(Debug, Clone, Default)]
pub struct UsageOptions {
    pub prompt_tokens_estimate: u64,
    pub strip_usage_chunk: bool,
}

impl UsageOptions {
    pub fn from_meta(meta: &crate::RequestMeta) -> Self {
        UsageOptions {
            prompt_tokens_estimate: meta.prompt_tokens_estimate,
            strip_usage_chunk: false,
        }
    }
}

type Callback = Box<dyn FnOnce(&UsageReport) + Send>;

pin_project! {
    pub struct UsageBody<B> {
        #[pin]
        inner: B,
        guard: Guard,
    }
}

struct Guard {
    status: http::StatusCode,
    callback: Option<Callback>,
}

impl Guard {
    fn fire(&mut self, end: BodyEnd) {
        if let Some(cb) = self.callback.take() {
            cb(&UsageReport {
                usage: Usage::default(),
                source: UsageSource::Estimated,
                end,
                status: self.status,
            });
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.fire(BodyEnd::Dropped);
    }
}

pub fn observe<B, F>(
    response: http::Response<B>,
    _options: UsageOptions,
    on_usage: F,
) -> http::Response<UsageBody<B>>
where
    B: Body<Data = Bytes>,
    F: FnOnce(&UsageReport) + Send + 'static,
{
    let status = response.status();
    response.map(|inner| UsageBody {
        inner,
        guard: Guard {
            status,
            callback: Some(Box::new(on_usage)),
        },
    })
}

impl<B: Body<Data = Bytes>> Body for UsageBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        match &r {
            Poll::Ready(None) => this.guard.fire(BodyEnd::Completed),
            Poll::Ready(Some(Err(_))) => this.guard.fire(BodyEnd::Failed),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
