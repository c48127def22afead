//! [`SqliteLedger`]: budgets and balances decided in memory, kept on disk.

use std::fmt;
use std::sync::Arc;

use super::writer::{Job, Writer};
use crate::budget::{
    BudgetSpec, BudgetStatus, Charge, Ledger, Money, Reservation, ReserveOutcome, ReservePolicy,
    Settlement, SpendQuery, SpendRow, TopUpOutcome,
};
use crate::store::StoreFuture;
use crate::store::memory::MemoryLedger;

/// A [`Ledger`] that decides in this process's memory and keeps its books
/// in a SQLite file: a restart finds every balance and every period's
/// spend where it was.
///
/// Made by [`SqliteStore::open`](super::SqliteStore::open); clones share
/// the books and the writer.
///
/// | operation | decided | persisted |
/// |---|---|---|
/// | [`reserve`](Ledger::reserve), [`release`](Ledger::release) | in memory | not the holds: they die with the process, like the requests they belong to; but the books they open (a prepaid balance's opening funds, granted once) or start over (a spec that changed mode), in the next group commit (a hold's at its settlement or release) |
/// | [`settle`](Ledger::settle) | in memory | the books of its budgets and its aggregate rows, in the next group commit; the answer does not wait for it |
/// | [`top_up`](Ledger::top_up), [`reset`](Ledger::reset) | in memory | the books (and the idempotency key); the answer waits for the commit |
/// | [`read`](Ledger::read), [`spend`](Ledger::spend) | in memory | (reads; books a read starts over, as `reserve`) |
///
/// Every operation answers a ready [`StoreFuture`] except `top_up` and
/// `reset`, which an admin API calls and which answer once their change is
/// on disk: their 200 means it survives `kill -9`. While the disk fails,
/// they answer as soon as the commit has failed, from memory, like
/// settlements (see [`SqliteHealth`](super::SqliteHealth)).
#[derive(Clone)]
pub struct SqliteLedger {
    memory: MemoryLedger,
    writer: Arc<Writer>,
}

impl SqliteLedger {
    pub(super) fn new(memory: MemoryLedger, writer: Arc<Writer>) -> Self {
        SqliteLedger { memory, writer }
    }

    /// Persists `budget`'s books (and a top-up's key), answering `answer`
    /// once committed, or once the commit failed.
    fn persist_then<T: Send + 'static>(
        &self,
        budget: &BudgetSpec,
        top_up_key: Option<&str>,
        answer: T,
    ) -> StoreFuture<T> {
        let top_up_key = top_up_key.map(|key| (key.to_owned(), self.memory.now_unix()));
        let (done, committed) = tokio::sync::oneshot::channel();
        // Sent while the caller still holds `ordered()`: the top-up and
        // its idempotency key reach the disk in the same commit.
        self.writer.send(Job::Books {
            scope: budget.scope.clone(),
            top_up_key,
            done,
        });
        StoreFuture::pending(async move {
            // A failed commit is logged and counted by the writer, which
            // retries: the change is made, in memory, either way.
            let _ = committed.await;
            Ok(answer)
        })
    }
}

impl Ledger for SqliteLedger {
    fn reserve(
        &self,
        budgets: &Arc<[BudgetSpec]>,
        amount: Money,
        policy: ReservePolicy,
    ) -> StoreFuture<ReserveOutcome> {
        let _order = self.writer.ordered();
        let outcome = self.memory.reserve_sync(budgets, amount, policy);
        // A hold is settled or released, which persists its budgets' books
        // then; a refusal has no sequel, and may still have opened books
        // (a balance at its opening funds) or started them over (a spec
        // that changed mode).
        if let Ok(ReserveOutcome::Denied { .. }) = &outcome {
            self.writer
                .send(Job::Touched(Reservation::unheld(budgets.clone())));
        }
        StoreFuture::ready(outcome)
    }

    fn settle(&self, reservation: &Reservation, charge: &Charge) -> StoreFuture<Settlement> {
        let _order = self.writer.ordered();
        let settlement = self.memory.settle_sync(reservation, charge);
        if let Ok(settlement) = &settlement
            && (!reservation.budgets().is_empty() || charge.attribution.is_some())
        {
            self.writer.send(Job::Settled {
                reservation: reservation.clone(),
                charge: Charge {
                    cost: settlement.charged,
                    ..charge.clone()
                },
                day: settlement.day,
            });
        }
        StoreFuture::ready(settlement)
    }

    fn release(&self, reservation: &Reservation) -> StoreFuture<()> {
        let _order = self.writer.ordered();
        let released = self.memory.release(reservation);
        if !reservation.budgets().is_empty() {
            self.writer.send(Job::Touched(reservation.clone()));
        }
        released
    }

    fn top_up(
        &self,
        budget: &BudgetSpec,
        amount: Money,
        idempotency_key: Option<&str>,
    ) -> StoreFuture<TopUpOutcome> {
        let _order = self.writer.ordered();
        match self.memory.top_up_sync(budget, amount, idempotency_key) {
            Ok(outcome) if outcome.replayed => StoreFuture::ready(Ok(outcome)),
            Ok(outcome) => self.persist_then(budget, idempotency_key, outcome),
            Err(e) => StoreFuture::ready(Err(e)),
        }
    }

    fn read(&self, budget: &BudgetSpec) -> StoreFuture<BudgetStatus> {
        let _order = self.writer.ordered();
        let status = self.memory.read(budget);
        // A read with a spec of the other mode starts the books over.
        let budgets = Arc::new([budget.clone()]);
        self.writer.send(Job::Touched(Reservation::unheld(budgets)));
        status
    }

    fn reset(&self, budget: &BudgetSpec) -> StoreFuture<BudgetStatus> {
        let _order = self.writer.ordered();
        match self.memory.reset_sync(budget) {
            Ok(status) => self.persist_then(budget, None, status),
            Err(e) => StoreFuture::ready(Err(e)),
        }
    }

    fn spend(&self, query: &SpendQuery) -> StoreFuture<Vec<SpendRow>> {
        self.memory.spend(query)
    }
}

impl fmt::Debug for SqliteLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteLedger")
            .field("path", &self.writer.path())
            .field("memory", &self.memory)
            .finish()
    }
}
