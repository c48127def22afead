//! The idempotency keys of the memory ledger's top-ups.

use std::collections::HashMap;
use std::time::Duration;

use crate::budget::BudgetScope;

/// How long an idempotency key is remembered: a key used within the last
/// 24 hours is a replay (the [`Ledger::top_up`](crate::budget::Ledger::top_up)
/// contract), here and in the durable stores' files.
pub(crate) const KEEP: Duration = Duration::from_secs(24 * 3600);

/// Idempotency keys used, per balance, with when they were used. Bounded:
/// past `max`, expired keys are dropped, then the oldest.
#[derive(Default)]
pub(super) struct TopUpKeys {
    used: HashMap<(BudgetScope, String), Duration>,
}

impl TopUpKeys {
    /// Records `key` for `scope` at `now`; false if it was used within
    /// [`KEEP`] already.
    pub(super) fn first_use(
        &mut self,
        scope: &BudgetScope,
        key: &str,
        now: Duration,
        max: usize,
    ) -> bool {
        let id = (scope.clone(), key.to_owned());
        if let Some(at) = self.used.get(&id)
            && now.saturating_sub(*at) < KEEP
        {
            return false;
        }
        if self.used.len() >= max {
            self.used.retain(|_, at| now.saturating_sub(*at) < KEEP);
            if self.used.len() >= max
                && let Some(oldest) = self
                    .used
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone())
            {
                self.used.remove(&oldest);
            }
        }
        self.used.insert(id, now);
        true
    }

    /// Restores a key used at `at`, unless `max` keys are remembered
    /// already (a store restores newest first).
    #[cfg(feature = "sqlite")]
    pub(super) fn restore(&mut self, scope: BudgetScope, key: String, at: Duration, max: usize) {
        if self.used.len() < max {
            self.used.insert((scope, key), at);
        }
    }
}
