//! Spend events: one record per metered request, for billing and analytics.
//!
//! The ledger knows totals; a bill, a usage dashboard or a chargeback report
//! needs each request: who, which model, how many tokens, what it cost, and
//! whether the tokens were reported by the upstream or estimated by tollgate.
//! `BudgetLayer` hands a [`SpendEvent`] to a [`SpendSink`] when each metered
//! response ends (or fails, or is dropped by the client).

use std::sync::Arc;

use super::Money;
use super::usage::{Usage, UsageSource};
use crate::Principal;

/// What one request spent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpendEvent {
    /// The caller, when the request carried a [`Principal`].
    pub principal: Option<Principal>,
    /// The model the request named.
    pub model: String,
    /// The tokens counted.
    pub usage: Usage,
    /// What they cost, as charged to the caller's budgets.
    pub cost: Money,
    /// Whether the upstream reported the usage or tollgate estimated it
    /// (client disconnects and upstreams that report nothing).
    pub source: UsageSource,
    /// The response status.
    pub status: http::StatusCode,
}

/// Receives a [`SpendEvent`] per metered request. Implemented for closures
/// `Fn(SpendEvent)`, for tokio unbounded channel senders, and for `Arc<T>`.
///
/// It runs inline when the response body ends: keep it quick (push to a
/// channel, bump a counter) and do slow work (a database write) elsewhere.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tollgate::budget::{BudgetLayer, Pricing, SpendEvent};
///
/// let log = Arc::new(Mutex::new(Vec::<SpendEvent>::new()));
/// let sink = log.clone();
/// let layer = BudgetLayer::new(Pricing::new())
///     .spend_sink(move |event: SpendEvent| sink.lock().unwrap().push(event));
/// # drop(layer);
/// ```
pub trait SpendSink: Send + Sync + 'static {
    /// Records one request's spend.
    fn record(&self, event: SpendEvent);
}

impl<F> SpendSink for F
where
    F: Fn(SpendEvent) + Send + Sync + 'static,
{
    fn record(&self, event: SpendEvent) {
        self(event)
    }
}

impl SpendSink for tokio::sync::mpsc::UnboundedSender<SpendEvent> {
    /// Sends the event; a closed channel drops it (logged at debug level).
    fn record(&self, event: SpendEvent) {
        if self.send(event).is_err() {
            tracing::debug!("spend event dropped: the receiver is closed");
        }
    }
}

impl<T: SpendSink + ?Sized> SpendSink for Arc<T> {
    fn record(&self, event: SpendEvent) {
        (**self).record(event)
    }
}
