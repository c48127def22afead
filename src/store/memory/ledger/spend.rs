//! The memory ledger's spend aggregates: per scope, model and UTC day.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use crate::budget::{BudgetScope, Charge, SpendTotals};
use crate::store::memory::hash::{IdMap, SeededHashing};

/// One shard of aggregate rows, bucketed by the hash of (scope, model, day):
/// a collision costs a comparison, never a merged row.
#[derive(Default)]
pub(super) struct SpendShard {
    rows: IdMap<Vec<Row>>,
    len: usize,
}

pub(super) struct Row {
    scope: BudgetScope,
    model: Arc<str>,
    day: i64,
    totals: SpendTotals,
}

/// The bucket hash of a row.
pub(super) fn row_hash(hashing: &SeededHashing, scope_hash: u64, model: &str, day: i64) -> u64 {
    let mut hasher = hashing.build_hasher();
    hasher.write_u64(scope_hash);
    model.hash(&mut hasher);
    hasher.write_i64(day);
    hasher.finish()
}

impl SpendShard {
    /// Adds `charge` to the row of (`scope`, its model, `day`), making room
    /// first by forgetting the shard's oldest day when it holds `max` rows.
    pub(super) fn add(
        &mut self,
        hash: u64,
        scope: &BudgetScope,
        model: &Arc<str>,
        day: i64,
        charge: &Charge,
        max: usize,
    ) {
        let bucket = self.rows.entry(hash).or_default();
        if let Some(row) = bucket
            .iter_mut()
            .find(|r| r.day == day && *r.model == **model && r.scope == *scope)
        {
            row.totals.add_charge(charge);
            return;
        }
        let mut totals = SpendTotals::default();
        totals.add_charge(charge);
        bucket.push(Row {
            scope: scope.clone(),
            model: model.clone(),
            day,
            totals,
        });
        self.len += 1;
        if self.len > max {
            self.forget_oldest_day();
        }
    }

    /// Sets a row, as a store restoring its state does; `false` (nothing
    /// set) for a new row when the shard already holds `max`.
    #[cfg(feature = "sqlite")]
    pub(super) fn restore(
        &mut self,
        hash: u64,
        scope: BudgetScope,
        model: Arc<str>,
        day: i64,
        totals: SpendTotals,
        max: usize,
    ) -> bool {
        let full = self.len >= max;
        let bucket = self.rows.entry(hash).or_default();
        match bucket
            .iter_mut()
            .find(|r| r.day == day && r.model == model && r.scope == scope)
        {
            Some(row) => row.totals = totals,
            None if full => {
                if bucket.is_empty() {
                    self.rows.remove(&hash);
                }
                return false;
            }
            None => {
                bucket.push(Row {
                    scope,
                    model,
                    day,
                    totals,
                });
                self.len += 1;
            }
        }
        true
    }

    fn forget_oldest_day(&mut self) {
        let Some(oldest) = self.rows.values().flatten().map(|r| r.day).min() else {
            return;
        };
        self.rows.retain(|_, bucket| {
            bucket.retain(|r| r.day != oldest);
            !bucket.is_empty()
        });
        self.len = self.rows.values().map(Vec::len).sum();
        tracing::warn!(
            day = %crate::time::format_date(oldest),
            "memory ledger: spend aggregates full; the oldest day's rows were dropped"
        );
    }

    /// The rows `query` counts, as `(scope, model, day, totals)`.
    pub(super) fn rows(&self) -> impl Iterator<Item = (&BudgetScope, &str, i64, &SpendTotals)> {
        self.rows
            .values()
            .flatten()
            .map(|r| (&r.scope, &*r.model, r.day, &r.totals))
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }
}
