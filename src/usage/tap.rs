//! [`UsageTap`]: the handle through which several layers share one report.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::report::UsageReport;

type Callback = Box<dyn FnOnce(&UsageReport) + Send + 'static>;

/// The handle to an observed response's coming [`UsageReport`], found in the
/// response extensions of every response that [`observe`](super::observe)
/// returned.
///
/// Every subscriber is called exactly once, with the same report; one that
/// subscribes after the report was made is called at once. A layer further
/// out that wants the usage subscribes here instead of scanning the body a
/// second time ([`observe`](super::observe) does this by itself).
///
/// ```
/// use bytes::Bytes;
/// use http::Response;
/// use http_body_util::{BodyExt, Full};
/// use tollgate::usage::{self, UsageOptions, UsageTap};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let response = Response::builder()
///     .header("content-type", "application/json")
///     .body(Full::new(Bytes::from_static(
///         br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
///     )))
///     .unwrap();
/// let response = usage::observe(response, UsageOptions::default(), |_| {});
/// let tap = response.extensions().get::<UsageTap>().unwrap().clone();
/// let (tx, rx) = std::sync::mpsc::channel();
/// tap.subscribe(move |report| tx.send(report.usage.total_tokens).unwrap());
///
/// response.into_body().collect().await.unwrap();
/// assert_eq!(rx.recv().unwrap(), 7);
/// assert_eq!(tap.report().map(|r| r.usage.total_tokens), Some(7));
/// # }
/// ```
#[derive(Clone)]
pub struct UsageTap {
    pub(crate) shared: Arc<Shared>,
}

impl UsageTap {
    /// Calls `f` once with the final report: when the body ends, fails or is
    /// dropped, or now if that already happened.
    ///
    /// `f` runs on the task that polls or drops the body, so it should be
    /// quick (settle a counter, send on a channel, spawn a task) and must not
    /// panic.
    pub fn subscribe(&self, f: impl FnOnce(&UsageReport) + Send + 'static) {
        self.shared.subscribe(Box::new(f));
    }

    /// The report, once it is made.
    pub fn report(&self) -> Option<UsageReport> {
        self.shared.lock().report
    }
}

impl fmt::Debug for UsageTap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageTap")
            .field("report", &self.report())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// The observer strips the usage-only chunk from the body it passes on.
    pub(crate) strips: bool,
}

struct State {
    report: Option<UsageReport>,
    // Most responses have one subscriber: keep it out of the Vec so that
    // one allocates only for the second.
    first: Option<Callback>,
    rest: Vec<Callback>,
}

impl Shared {
    pub(crate) fn new(first: Callback, strips: bool) -> Self {
        Shared {
            state: Mutex::new(State {
                report: None,
                first: Some(first),
                rest: Vec::new(),
            }),
            strips,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Callbacks run outside the lock, so a poisoned lock holds consistent
        // state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn subscribe(&self, f: Callback) {
        let mut state = self.lock();
        if let Some(report) = state.report {
            drop(state);
            f(&report);
        } else if state.first.is_none() {
            state.first = Some(f);
        } else {
            state.rest.push(f);
        }
    }

    /// Sends `report` to every subscriber, unless a report was sent before.
    pub(crate) fn fire(&self, report: UsageReport) {
        let (first, rest) = {
            let mut state = self.lock();
            if state.report.is_some() {
                return;
            }
            state.report = Some(report);
            (state.first.take(), std::mem::take(&mut state.rest))
        };
        if let Some(f) = first {
            f(&report);
        }
        for f in rest {
            f(&report);
        }
    }
}
