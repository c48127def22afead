//! [`UsageTap`]: the handle through which several layers share one report.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::report::UsageReport;

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
    pub(crate) shared: Arc<dyn Tap>,
}

impl UsageTap {
    /// Calls `f` once with the final report: when the body ends, fails or is
    /// dropped, or now if that already happened.
    ///
    /// `f` runs on the task that polls or drops the body, so it should be
    /// quick (settle a counter, send on a channel, spawn a task) and must not
    /// panic.
    pub fn subscribe(&self, f: impl FnOnce(&UsageReport) + Send + 'static) {
        if let Err((node, report)) = self.shared.push(Box::new(Node { f, next: None })) {
            node.call(&report);
        }
    }

    /// The report, once it is made.
    pub fn report(&self) -> Option<UsageReport> {
        self.shared.report()
    }
}

impl fmt::Debug for UsageTap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageTap")
            .field("report", &self.report())
            .finish_non_exhaustive()
    }
}

/// The state an observed body shares with its taps: the report once made,
/// and the subscribers until then.
///
/// A trait object over [`Shared<F>`], so that the first subscriber (the
/// callback given to [`observe`](super::observe)) lives in the same
/// allocation as the state instead of a box of its own.
pub(crate) trait Tap: Send + Sync {
    /// The observer strips the usage-only chunk from the body it passes on.
    fn strips(&self) -> bool;

    fn report(&self) -> Option<UsageReport>;

    /// Keeps `node` for the report; gives it back with the report if that
    /// was already made (to be called by the caller, outside the lock).
    fn push(&self, node: Box<dyn Subscriber>) -> Result<(), (Box<dyn Subscriber>, UsageReport)>;

    /// Sends `report` to every subscriber, unless a report was sent before.
    fn fire(&self, report: UsageReport);
}

/// A subscriber after the first: a node of a singly linked list, so that
/// each costs one box (no `Vec` to grow).
pub(crate) trait Subscriber: Send {
    /// Calls the callback; returns the rest of the list.
    fn call(self: Box<Self>, report: &UsageReport) -> Option<Box<dyn Subscriber>>;

    fn next(&mut self) -> &mut Option<Box<dyn Subscriber>>;
}

struct Node<F> {
    f: F,
    next: Option<Box<dyn Subscriber>>,
}

impl<F: FnOnce(&UsageReport) + Send> Subscriber for Node<F> {
    fn call(self: Box<Self>, report: &UsageReport) -> Option<Box<dyn Subscriber>> {
        let Node { f, next } = *self;
        f(report);
        next
    }

    fn next(&mut self) -> &mut Option<Box<dyn Subscriber>> {
        &mut self.next
    }
}

pub(crate) struct Shared<F> {
    strips: bool,
    state: Mutex<State<F>>,
}

struct State<F> {
    report: Option<UsageReport>,
    first: Option<F>,
    rest: Option<Box<dyn Subscriber>>,
}

impl<F> Shared<F> {
    pub(crate) fn new(first: F, strips: bool) -> Self {
        Shared {
            strips,
            state: Mutex::new(State {
                report: None,
                first: Some(first),
                rest: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<F>> {
        // Callbacks run outside the lock, so a poisoned lock holds consistent
        // state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<F: FnOnce(&UsageReport) + Send> Tap for Shared<F> {
    fn strips(&self) -> bool {
        self.strips
    }

    fn report(&self) -> Option<UsageReport> {
        self.lock().report
    }

    fn push(&self, node: Box<dyn Subscriber>) -> Result<(), (Box<dyn Subscriber>, UsageReport)> {
        let mut state = self.lock();
        if let Some(report) = state.report {
            return Err((node, report));
        }
        // Newest first; `fire` reverses the list.
        let mut node = node;
        *node.next() = state.rest.take();
        state.rest = Some(node);
        Ok(())
    }

    fn fire(&self, report: UsageReport) {
        let (first, mut rest) = {
            let mut state = self.lock();
            if state.report.is_some() {
                return;
            }
            state.report = Some(report);
            (state.first.take(), state.rest.take())
        };
        if let Some(f) = first {
            f(&report);
        }
        // In the order they came.
        let mut oldest_first = None;
        while let Some(mut node) = rest {
            rest = node.next().take();
            *node.next() = oldest_first;
            oldest_first = Some(node);
        }
        while let Some(node) = oldest_first {
            oldest_first = node.call(&report);
        }
    }
}

impl<F> Drop for State<F> {
    fn drop(&mut self) {
        // Node by node: the default drop of a long list would recurse.
        let mut rest = self.rest.take();
        while let Some(mut node) = rest {
            rest = node.next().take();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::StatusCode;

    use super::*;
    use crate::usage::{BodyEnd, Usage, UsageSource};

    fn report(total: u64) -> UsageReport {
        UsageReport {
            usage: Usage {
                total_tokens: total,
                ..Usage::default()
            },
            source: UsageSource::Reported,
            end: BodyEnd::Completed,
            status: StatusCode::OK,
        }
    }

    #[test]
    fn subscribers_are_called_once_in_order() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let log = |n: usize| {
            let calls = calls.clone();
            move |r: &UsageReport| calls.lock().unwrap().push((n, r.usage.total_tokens))
        };
        let tap = UsageTap {
            shared: Arc::new(Shared::new(log(0), false)),
        };
        for n in 1..=5 {
            tap.subscribe(log(n));
        }
        tap.shared.fire(report(7));
        tap.shared.fire(report(8));
        tap.subscribe(log(6));
        let expected: Vec<_> = (0..=6).map(|n| (n, 7)).collect();
        assert_eq!(*calls.lock().unwrap(), expected);
        assert_eq!(tap.report(), Some(report(7)));
    }

    #[test]
    fn subscribing_while_firing_calls_each_once() {
        for _ in 0..50 {
            let count = Arc::new(AtomicUsize::new(0));
            let counter = || {
                let count = count.clone();
                move |_: &UsageReport| {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            };
            let tap = UsageTap {
                shared: Arc::new(Shared::new(counter(), false)),
            };
            std::thread::scope(|s| {
                for _ in 0..4 {
                    let tap = tap.clone();
                    let counter = counter();
                    s.spawn(move || {
                        for _ in 0..25 {
                            tap.subscribe(counter.clone());
                        }
                    });
                }
                s.spawn(|| tap.shared.fire(report(1)));
            });
            assert_eq!(count.load(Ordering::SeqCst), 101);
        }
    }

    #[test]
    fn a_long_list_is_dropped_without_recursion() {
        let tap = UsageTap {
            shared: Arc::new(Shared::new(|_: &UsageReport| {}, false)),
        };
        for _ in 0..200_000 {
            tap.subscribe(|_| {});
        }
        drop(tap);
    }
}
