//! [`Batch`]: the changes the writer received and has not committed yet,
//! merged as they arrive.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::writer::{Ack, Job, KeyOp, KeyOutcome};
use crate::budget::{Attribution, BudgetScope, Reservation, SpendTotals};
use crate::store::StoreError;

/// Budget lists and attributions remembered by address: a key's requests
/// share its lists (from its record), so most settlements cost a pointer
/// comparison here instead of hashing each scope.
const RECENT: usize = 16;

/// Changes received and not committed, merged: a budget's books are
/// written once per commit (as they stand then), an aggregate row once
/// (the sum of its charges), however many settlements changed them.
#[derive(Default)]
pub(super) struct Batch {
    /// Budgets whose books changed.
    pub(super) accounts: HashSet<BudgetScope>,
    /// Aggregate deltas by (scope, model, day).
    pub(super) spend: HashMap<(BudgetScope, Arc<str>, i64), SpendTotals>,
    pub(super) top_up_keys: Vec<(BudgetScope, String, Duration)>,
    pub(super) keys: Vec<(KeyOp, oneshot::Sender<Result<KeyOutcome, StoreError>>)>,
    /// Answered when the batch is committed (or the commit failed).
    pub(super) acks: Vec<Ack>,
    /// Jobs received since the last attempt.
    pub(super) received: usize,
    /// Stop after this commit; answered when the writer is done.
    pub(super) closing: bool,
    pub(super) closers: Vec<Ack>,
    /// Budget lists whose scopes are in `accounts` already (each kept
    /// alive here, so its address names it).
    recent_budgets: Vec<Reservation>,
    /// Charges summed per attribution and day, not yet in `spend`.
    recent_spend: Vec<(Attribution, i64, SpendTotals)>,
    #[cfg(test)]
    pub(super) run: Vec<(super::writer::RunOnConnection, Ack)>,
}

impl Batch {
    pub(super) fn add(&mut self, job: Job) {
        self.received += 1;
        match job {
            Job::Settled {
                reservation,
                charge,
                day,
            } => {
                self.touch(reservation);
                if let Some(attribution) = &charge.attribution {
                    let recent = self.recent_spend.iter_mut().find(|(a, d, _)| {
                        *d == day
                            && Arc::ptr_eq(&a.scopes, &attribution.scopes)
                            && a.model == attribution.model
                    });
                    match recent {
                        Some((_, _, totals)) => totals.add_charge(&charge),
                        None => {
                            if self.recent_spend.len() == RECENT {
                                let oldest = self.recent_spend.remove(0);
                                self.fold(oldest);
                            }
                            let mut totals = SpendTotals::default();
                            totals.add_charge(&charge);
                            self.recent_spend.push((attribution.clone(), day, totals));
                        }
                    }
                }
            }
            Job::Touched(reservation) => self.touch(reservation),
            Job::Books {
                scope,
                top_up_key,
                done,
            } => {
                if let Some((key, at)) = top_up_key {
                    self.top_up_keys.push((scope.clone(), key, at));
                }
                self.accounts.insert(scope);
                self.acks.push(done);
            }
            Job::Key { op, done } => self.keys.push((op, done)),
            Job::Flush(done) => self.acks.push(done),
            Job::Close(done) => {
                self.closers.push(done);
                self.closing = true;
            }
            #[cfg(test)]
            Job::Run(f, done) => self.run.push((f, done)),
        }
    }

    /// Marks the budgets of `held` changed.
    fn touch(&mut self, held: Reservation) {
        let budgets = held.budgets();
        let known = self.recent_budgets.iter().any(|r| {
            std::ptr::eq(r.budgets().as_ptr(), budgets.as_ptr())
                && r.budgets().len() == budgets.len()
        });
        if known || budgets.is_empty() {
            return;
        }
        for spec in budgets {
            if !self.accounts.contains(&spec.scope) {
                self.accounts.insert(spec.scope.clone());
            }
        }
        if self.recent_budgets.len() == RECENT {
            self.recent_budgets.remove(0);
        }
        self.recent_budgets.push(held);
    }

    /// Adds an attribution's sums to the rows of its scopes.
    fn fold(&mut self, (attribution, day, totals): (Attribution, i64, SpendTotals)) {
        for scope in attribution.scopes.iter() {
            self.spend
                .entry((scope.clone(), attribution.model.clone(), day))
                .or_default()
                .add(&totals);
        }
    }

    /// Moves every recent sum into `spend`: before a commit writes it.
    pub(super) fn fold_recent(&mut self) {
        for recent in std::mem::take(&mut self.recent_spend) {
            self.fold(recent);
        }
    }

    /// The ledger changes were committed.
    pub(super) fn clear_saved(&mut self) {
        self.accounts.clear();
        self.spend.clear();
        self.top_up_keys.clear();
        self.recent_budgets.clear();
    }

    /// Answers everyone waiting on the commit with `result`.
    pub(super) fn answer(&mut self, result: &Result<(), StoreError>) {
        for done in self.acks.drain(..) {
            let _ = done.send(result.clone());
        }
    }

    /// Someone waits on the commit: do not wait for the window.
    pub(super) fn urgent(&self) -> bool {
        #[cfg(test)]
        if !self.run.is_empty() {
            return true;
        }
        self.closing || !self.keys.is_empty() || !self.acks.is_empty()
    }

    /// Changes a crash would lose now (books of a budget, aggregate rows,
    /// top-up keys, key writes).
    pub(super) fn unsaved(&self) -> usize {
        self.accounts.len()
            + self.spend.len()
            + self.recent_spend.len()
            + self.top_up_keys.len()
            + self.keys.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.unsaved() == 0 && self.acks.is_empty() && !self.closing
    }
}
