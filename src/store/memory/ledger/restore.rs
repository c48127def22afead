//! What a durable store (SQLite) calls to restore the ledger's state at
//! start-up and to read the books it writes to disk.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use crate::budget::{
    BudgetMode, BudgetScope, BudgetSpec, BudgetStatus, Money, Period, SpendTotals,
};
use crate::store::StoreError;

use super::spend::row_hash;
use super::{MemoryLedger, lock};

impl MemoryLedger {
    /// Sets the books of `spec`'s scope, as a durable store restoring its
    /// state at start-up does: `spent` in the period starting at
    /// `period_start`, and, for a balance, its funds (`limit`).
    pub(crate) fn restore_account(
        &self,
        spec: &BudgetSpec,
        limit: Money,
        spent: Money,
        period_start: Duration,
    ) -> Result<(), StoreError> {
        let now = self.now_unix();
        let hash = self.inner.hasher.hash_one(&spec.scope);
        let mut shard = lock(&self.inner.budgets[self.shard_of(hash)]);
        let account = shard.account(hash, spec, now, self.inner.max_budgets)?;
        if spec.mode == BudgetMode::Balance {
            account.limit = limit;
            account.spent = spent;
        } else if account.window.start == period_start {
            account.spent = spent;
        }
        account.refresh(spec, now);
        Ok(())
    }

    /// The books of each of `scopes` as they stand (not brought to the
    /// current period: the store that persists them records their window),
    /// `None` where the ledger keeps none (never seen, or evicted as idle).
    /// Read under all their locks at once: a settlement is in all of them
    /// or in none.
    pub(crate) fn books(&self, scopes: &[BudgetScope]) -> Vec<Option<(Period, BudgetStatus)>> {
        let hashes: Vec<u64> = scopes
            .iter()
            .map(|scope| self.inner.hasher.hash_one(scope))
            .collect();
        let mut locked = self.lock_budgets(&hashes);
        scopes
            .iter()
            .zip(&hashes)
            .map(|(scope, &hash)| {
                locked
                    .shard(self.shard_of(hash))
                    .get_mut(hash, scope)
                    .map(|account| (account.period, account.status()))
            })
            .collect()
    }

    /// Sets one spend aggregate row, as a durable store restoring its state
    /// does; `false` (and nothing set) when the row is new and its shard
    /// already holds its share of [`max_spend_rows`](Self::max_spend_rows),
    /// so a store restoring newest first keeps the newest days.
    pub(crate) fn restore_spend(
        &self,
        scope: BudgetScope,
        model: Arc<str>,
        day: i64,
        totals: SpendTotals,
    ) -> bool {
        let scope_hash = self.inner.hasher.hash_one(&scope);
        let hash = row_hash(&self.inner.hasher, scope_hash, &model, day);
        lock(&self.inner.spend[self.shard_of(scope_hash)]).restore(
            hash,
            scope,
            model,
            day,
            totals,
            self.inner.max_spend_rows,
        )
    }

    /// Remembers a top-up idempotency key used at `at`, as a durable store
    /// restoring its state does.
    pub(crate) fn restore_top_up_key(&self, scope: BudgetScope, key: String, at: Duration) {
        lock(&self.inner.top_up_keys).restore(scope, key, at, Self::MAX_TOP_UP_KEYS);
    }
}
