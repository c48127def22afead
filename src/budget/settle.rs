//! Turning a usage report into a charge.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Waker};

use super::alerts;
use super::events::SpendEvent;
use super::layer::Shared;
use super::usage::UsageReport;
use super::{Attribution, Charge, Ledger, ModelPrice, Reservation, SpendTokens};
use crate::Principal;

/// Settles one admitted request exactly once: from its usage report, or,
/// if it is dropped first (the inner service failed, the client went away
/// before the response), by releasing its hold.
pub(crate) struct Settler<L: Ledger> {
    shared: Arc<Shared<L>>,
    reservation: Option<Reservation>,
    price: ModelPrice,
    model: String,
    principal: Option<Principal>,
    attribution: Option<Attribution>,
}

impl<L: Ledger> Settler<L> {
    pub(crate) fn new(
        shared: Arc<Shared<L>>,
        price: ModelPrice,
        model: String,
        principal: Option<Principal>,
        attribution: Option<Attribution>,
    ) -> Self {
        Settler {
            shared,
            reservation: None,
            price,
            model,
            principal,
            attribution,
        }
    }

    pub(crate) fn hold(&mut self, reservation: Reservation) {
        self.reservation = Some(reservation);
    }

    /// Charges what `report` says was used and releases the rest of the hold.
    pub(crate) fn finish(mut self, report: &UsageReport) {
        let usage = report.usage;
        let reservation = self.reservation.take();
        let produced = usage.prompt_tokens > 0 || usage.completion_tokens > 0;
        if report.status.as_u16() >= 400 && !produced {
            // The upstream refused before any token: nothing to pay for.
            if let Some(reservation) = reservation {
                release(self.shared.clone(), reservation);
            }
            return;
        }
        let cost = self.price.cost_of(
            usage.prompt_tokens,
            usage.cached_tokens.unwrap_or(0),
            usage.completion_tokens,
        );
        if let Some(sink) = &self.shared.sink {
            sink.record(SpendEvent {
                principal: self.principal.take(),
                model: std::mem::take(&mut self.model),
                usage,
                cost,
                source: report.source,
                status: report.status,
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
        drive(async move {
            let result = answer.await;
            settled(&shared, &reservation, cost, result);
        });
    }
}

/// After a settlement: soft-limit alerts, or the error logged.
fn settled<L: Ledger>(
    shared: &Shared<L>,
    reservation: &Reservation,
    cost: super::Money,
    result: Result<super::Settlement, crate::store::StoreError>,
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
        if let Some(reservation) = self.reservation.take() {
            release(self.shared.clone(), reservation);
        }
    }
}

fn release<L: Ledger>(shared: Arc<Shared<L>>, reservation: Reservation) {
    let released = |result: Result<(), crate::store::StoreError>| {
        if let Err(error) = result {
            tracing::warn!(%error, "budget release failed; the hold expires with its lease");
        }
    };
    let mut answer = shared.ledger.release(&reservation);
    if let Some(result) = answer.take_ready() {
        return released(result);
    }
    drive(async move { released(answer.await) });
}

/// Runs a ledger call from synchronous code (a body's end, a drop): inline
/// when it completes at once (the memory ledger always does), else on the
/// current tokio runtime.
fn drive<F: Future<Output = ()> + Send + 'static>(future: F) {
    let mut future = Box::pin(future);
    let mut cx = Context::from_waker(Waker::noop());
    if future.as_mut().poll(&mut cx).is_ready() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(future);
        }
        Err(_) => tracing::warn!(
            "no tokio runtime to finish a budget settlement; its hold expires with its lease"
        ),
    }
}
