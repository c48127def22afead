//! Turning a usage report into a charge.

use std::sync::Arc;

use http::StatusCode;

use super::alerts;
use super::charge::{Billed, CallEnd};
use super::events::SpendEvent;
use super::layer::Shared;
use super::usage::{Usage, UsageReport, UsageSource};
use super::{Attribution, Charge, Ledger, ModelPrice, Money, Reservation, SpendTokens};
use crate::Principal;
use crate::store::{StoreError, StoreFuture};

/// Settles one admitted request exactly once: from its usage report, from
/// its inner service's error, or, if it is dropped first, by releasing its
/// hold (before the inner service had the request) or by charging what
/// [`ChargePolicy`](super::ChargePolicy) says a call abandoned upstream
/// costs (after).
pub(crate) struct Settler<L: Ledger> {
    shared: Arc<Shared<L>>,
    reservation: Option<Reservation>,
    price: ModelPrice,
    /// What the request may cost at most, and its tokens.
    worst: Worst,
    /// A fixed cost charged whatever the usage (a request whose facts could
    /// not be read, admitted with [`Unreadable::Reserve`](crate::request::Unreadable)).
    fixed: Option<Money>,
    /// The inner service has the request: a drop from now on is a call
    /// abandoned upstream, not one never made.
    called: bool,
    model: String,
    principal: Option<Principal>,
    attribution: Option<Attribution>,
}

/// A request's worst case: its cost, and the tokens it prices.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Worst {
    pub(crate) cost: Money,
    pub(crate) prompt_tokens: u64,
    pub(crate) output_tokens: u64,
}

impl<L: Ledger> Settler<L> {
    pub(crate) fn new(
        shared: Arc<Shared<L>>,
        price: ModelPrice,
        worst: Worst,
        model: String,
        principal: Option<Principal>,
        attribution: Option<Attribution>,
    ) -> Self {
        Settler {
            shared,
            reservation: None,
            price,
            worst,
            fixed: None,
            called: false,
            model,
            principal,
            attribution,
        }
    }

    /// Charges `cost` for the call whatever its usage.
    pub(crate) fn fixed(mut self, cost: Money) -> Self {
        self.fixed = Some(cost);
        self
    }

    pub(crate) fn hold(&mut self, reservation: Reservation) {
        self.reservation = Some(reservation);
    }

    /// The inner service has been given the request.
    pub(crate) fn called(&mut self) {
        self.called = true;
    }

    /// Settles from the report of the response's body; `timed_out`: the
    /// response is a gateway's timeout (see [`CallEnd::Response`]).
    pub(crate) fn finish(mut self, report: &UsageReport, timed_out: bool) {
        self.settle(
            CallEnd::Response { report, timed_out },
            report.source,
            report.status,
        );
    }

    /// Settles a call whose inner service failed without a response.
    pub(crate) fn failed(mut self, timed_out: bool) {
        self.settle(
            CallEnd::Error { timed_out },
            UsageSource::Estimated,
            StatusCode::GATEWAY_TIMEOUT,
        );
    }

    fn settle(&mut self, end: CallEnd<'_>, source: UsageSource, status: StatusCode) {
        // Settled here, once: the drop that follows must not settle the
        // call again as abandoned (it did, for a call billed nothing that
        // still had its attribution: the spend aggregates were charged the
        // prompt of a request the upstream never received).
        self.called = false;
        let reservation = self.reservation.take();
        let billed = self
            .shared
            .charge_policy
            .bill(end, self.worst.prompt_tokens);
        let usage = match billed {
            Billed::Nothing => {
                // The upstream refused it or never had it: nothing to pay for.
                if let Some(reservation) = reservation {
                    release(self.shared.clone(), reservation);
                }
                return;
            }
            Billed::Usage(usage) => usage,
            Billed::Reservation => Usage {
                prompt_tokens: self.worst.prompt_tokens,
                completion_tokens: self.worst.output_tokens,
                total_tokens: self
                    .worst
                    .prompt_tokens
                    .saturating_add(self.worst.output_tokens),
                ..Usage::default()
            },
        };
        let cost = match (self.fixed, billed == Billed::Reservation) {
            (Some(fixed), _) => fixed,
            (None, true) => self.worst.cost,
            (None, false) => self.price.cost_of(
                usage.prompt_tokens,
                usage.cached_tokens.unwrap_or(0),
                usage.completion_tokens,
            ),
        };
        if let Some(sink) = &self.shared.sink {
            sink.record(SpendEvent {
                principal: self.principal.take(),
                model: std::mem::take(&mut self.model),
                usage,
                cost,
                source,
                status,
            });
        }
        // A request admitted without a hold (its key has no budgets) is
        // still settled when it is attributed: the ledger keeps its spend.
        let reservation = match (reservation, &self.attribution) {
            (Some(reservation), _) => reservation,
            (None, Some(_)) => Reservation::unheld(Arc::new([])),
            (None, None) => return,
        };
        let tokens = SpendTokens::new(
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens.unwrap_or(0),
        );
        let mut charge = Charge::new(cost, tokens);
        charge.attribution = self.attribution.take();
        let mut answer = self.shared.ledger.settle(&reservation, &charge);
        // A ledger that answers at once (memory) settles here, without a
        // future to box.
        if let Some(result) = answer.take_ready() {
            settled(&self.shared, &reservation, cost, result);
            return;
        }
        let shared = self.shared.clone();
        on_answer(answer, NO_RUNTIME, move |result| {
            settled(&shared, &reservation, cost, result)
        });
    }
}

/// After a settlement: soft-limit alerts, or the error logged.
fn settled<L: Ledger>(
    shared: &Shared<L>,
    reservation: &Reservation,
    cost: super::Money,
    result: Result<super::Settlement, StoreError>,
) {
    match result {
        Ok(settlement) => {
            if !shared.thresholds.is_empty() {
                alerts::fire(
                    &shared.thresholds,
                    shared.on_soft_limit.as_deref(),
                    reservation.budgets(),
                    &settlement.statuses,
                    settlement.charged,
                );
            }
        }
        Err(error) => {
            tracing::error!(%error, %cost, "budget settlement failed; spend not recorded")
        }
    }
}

impl<L: Ledger> Drop for Settler<L> {
    fn drop(&mut self) {
        if self.called && (self.reservation.is_some() || self.attribution.is_some()) {
            // Dropped while the inner service had the request (the client
            // went away before the headers, a timeout further out): the
            // upstream may be working on it.
            self.settle(
                CallEnd::Abandoned,
                UsageSource::Estimated,
                CLIENT_CLOSED_REQUEST,
            );
            return;
        }
        if let Some(reservation) = self.reservation.take() {
            release(self.shared.clone(), reservation);
        }
    }
}

/// The status of a spend event for a call dropped before its response:
/// 499, nginx's "client closed request".
const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::GATEWAY_TIMEOUT,
};

fn release<L: Ledger>(shared: Arc<Shared<L>>, reservation: Reservation) {
    on_answer(shared.ledger.release(&reservation), NO_RUNTIME, |result| {
        if let Err(error) = result {
            tracing::warn!(%error, "budget release failed; the hold expires with its lease");
        }
    });
}

const NO_RUNTIME: &str =
    "no tokio runtime to finish a budget settlement; its hold expires with its lease";

/// Runs `then` on a store's `answer` from synchronous code (a body's end, a
/// drop): at once when it is ready (a store in memory), else in a task on
/// the current tokio runtime; without one, `no_runtime` is logged.
pub(crate) fn on_answer<T: Send + 'static>(
    mut answer: StoreFuture<T>,
    no_runtime: &'static str,
    then: impl FnOnce(Result<T, StoreError>) + Send + 'static,
) {
    if let Some(result) = answer.take_ready() {
        return then(result);
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(async move { then(answer.await) });
        }
        Err(_) => tracing::warn!("{no_runtime}"),
    }
}
