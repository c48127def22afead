//! A retry budget shared by every clone of the service: [`RetryBudget`].

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::ConfigError;

const SLOTS: usize = 10;
/// One retry costs this many milli-tokens; a request deposits
/// `retry_percent × 1000`.
const WITHDRAW: u64 = 1000;

/// Limits retries to a percentage of recent requests plus a floor.
///
/// Every request deposits `retry_percent` of a token, every retry withdraws
/// one; a reserve of `min_per_sec × ttl` tokens is always available. Deposits
/// and withdrawals expire after `ttl`. Cloning shares the budget.
///
/// ```
/// use std::time::Duration;
/// use tollgate::retry::RetryBudget;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tollgate::retry::ConfigError> {
/// // 10 s window, no floor, 50 % of requests may be retried.
/// let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.5)?;
/// budget.deposit();
/// budget.deposit();
/// assert!(budget.withdraw());
/// assert!(!budget.withdraw());
///
/// tokio::time::advance(Duration::from_secs(11)).await; // all expired
/// assert!(!budget.withdraw());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    slot_len: Duration,
    reserve: u64,
    deposit: u64,
    ttl: Duration,
    min_per_sec: u32,
    retry_percent: f32,
    window: Mutex<Window>,
}

struct Window {
    slots: [Slot; SLOTS],
    current: usize,
    slot_start: Option<Instant>,
    deposits: u64,
    withdrawals: u64,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    deposits: u64,
    withdrawals: u64,
}

impl RetryBudget {
    /// The default window: 10 s.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
    /// The default floor: 10 retries per second.
    pub const DEFAULT_MIN_PER_SEC: u32 = 10;
    /// The default share of requests that may be retried: 20 %.
    pub const DEFAULT_RETRY_PERCENT: f32 = 0.2;

    /// A budget over a window of `ttl` (1 s to 60 s) allowing `min_per_sec`
    /// retries per second on top of `retry_percent` (0 to 1000, where 0.2
    /// means one retry per five requests) of the requests in the window.
    pub fn new(ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Result<Self, ConfigError> {
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(60) {
            return Err(ConfigError::BudgetTtl(ttl));
        }
        if !(retry_percent.is_finite() && (0.0..=1000.0).contains(&retry_percent)) {
            return Err(ConfigError::BudgetPercent(retry_percent));
        }
        let reserve = u64::from(min_per_sec)
            .saturating_mul(ttl.as_millis() as u64)
            .saturating_mul(WITHDRAW)
            / 1000;
        Ok(RetryBudget {
            inner: Arc::new(Inner {
                slot_len: ttl / SLOTS as u32,
                reserve,
                deposit: (f64::from(retry_percent) * WITHDRAW as f64).round() as u64,
                ttl,
                min_per_sec,
                retry_percent,
                window: Mutex::new(Window {
                    slots: [Slot::default(); SLOTS],
                    current: 0,
                    slot_start: None,
                    deposits: 0,
                    withdrawals: 0,
                }),
            }),
        })
    }

    /// Records a request.
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    pub(crate) fn deposit_at(&self, now: Instant) {
        let mut window = self.window(now);
        let current = window.current;
        window.slots[current].deposits += 1;
        window.deposits += 1;
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self) -> bool {
        let mut window = self.window(Instant::now());
        if self.balance(&window) < WITHDRAW {
            return false;
        }
        let current = window.current;
        window.slots[current].withdrawals += 1;
        window.withdrawals += 1;
        true
    }

    /// How many retries the budget would allow right now.
    pub fn available(&self) -> u64 {
        let window = self.window(Instant::now());
        self.balance(&window) / WITHDRAW
    }

    fn balance(&self, window: &Window) -> u64 {
        let earned = self
            .inner
            .reserve
            .saturating_add(window.deposits.saturating_mul(self.inner.deposit));
        earned.saturating_sub(window.withdrawals.saturating_mul(WITHDRAW))
    }

    /// The window, its expired slots dropped as of `now`.
    fn window(&self, now: Instant) -> std::sync::MutexGuard<'_, Window> {
        // The window holds plain counters: a panic elsewhere cannot leave it
        // inconsistent, so a poisoned lock is still usable.
        let mut window = self
            .inner
            .window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        window.rotate(now, self.inner.slot_len);
        window
    }
}

impl Window {
    fn rotate(&mut self, now: Instant, slot_len: Duration) {
        let Some(start) = self.slot_start else {
            self.slot_start = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        let steps = (elapsed.as_nanos() / slot_len.as_nanos().max(1)) as u64;
        if steps == 0 {
            return;
        }
        for _ in 0..steps.min(SLOTS as u64) {
            self.current = (self.current + 1) % SLOTS;
            let expired = std::mem::take(&mut self.slots[self.current]);
            self.deposits -= expired.deposits;
            self.withdrawals -= expired.withdrawals;
        }
        self.slot_start = Some(if steps >= SLOTS as u64 {
            now
        } else {
            start + slot_len * steps as u32
        });
    }
}

impl Default for RetryBudget {
    /// 10 s window, 10 retries per second floor, 20 % of requests.
    fn default() -> Self {
        RetryBudget::new(
            Self::DEFAULT_TTL,
            Self::DEFAULT_MIN_PER_SEC,
            Self::DEFAULT_RETRY_PERCENT,
        )
        .unwrap_or_else(|_| unreachable!("the default budget is valid"))
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ttl", &self.inner.ttl)
            .field("min_per_sec", &self.inner.min_per_sec)
            .field("retry_percent", &self.inner.retry_percent)
            .field("available", &self.available())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn floor_is_available_without_traffic() {
        let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.0).unwrap();
        assert_eq!(budget.available(), 10);
        for _ in 0..10 {
            assert!(budget.withdraw());
        }
        assert!(!budget.withdraw());
        // Withdrawals expire with the window.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(budget.available(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn percent_of_requests() {
        let budget = RetryBudget::new(Duration::from_secs(1), 0, 0.2).unwrap();
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!(budget.available(), 2);
        assert!(budget.withdraw() && budget.withdraw());
        assert!(!budget.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_slot_by_slot() {
        let budget = RetryBudget::new(Duration::from_secs(10), 0, 1.0).unwrap();
        for _ in 0..5 {
            budget.deposit();
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        // Deposits made at t=0,2,4,6,8; now t=10: the first has expired.
        assert_eq!(budget.available(), 4);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(budget.available(), 2);
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(budget.available(), 0);
    }

    #[test]
    fn rejects_bad_configuration() {
        assert!(RetryBudget::new(Duration::from_millis(10), 1, 0.2).is_err());
        assert!(RetryBudget::new(Duration::from_secs(61), 1, 0.2).is_err());
        assert!(RetryBudget::new(Duration::from_secs(1), 1, f32::NAN).is_err());
        assert!(RetryBudget::new(Duration::from_secs(1), 1, -0.1).is_err());
        assert!(RetryBudget::new(Duration::from_secs(1), 1, 1000.0).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_the_budget() {
        let a = RetryBudget::new(Duration::from_secs(1), 0, 1.0).unwrap();
        let b = a.clone();
        a.deposit();
        assert!(b.withdraw());
        assert!(!a.withdraw());
    }
}
