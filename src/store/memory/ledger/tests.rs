//! Tests of the memory ledger: books, periods, leases, bounds, properties.

use super::*;
use crate::budget::{BudgetScope, Period};
use crate::time::parse_rfc3339;
use std::time::UNIX_EPOCH;

fn key(id: &str, usd: i64, period: Period) -> BudgetSpec {
    BudgetSpec::budget(BudgetScope::Key(id.into()), Money::from_usd(usd), period)
}

fn reserve(
    ledger: &MemoryLedger,
    budgets: &[BudgetSpec],
    amount: Money,
    policy: ReservePolicy,
) -> Result<ReserveOutcome, StoreError> {
    ledger.reserve_sync(&Arc::from(budgets), amount, policy)
}

fn usd(s: &str) -> Money {
    s.parse().unwrap()
}

/// A strict hold of `amount` on `budgets`, which must be granted.
fn hold(ledger: &MemoryLedger, budgets: &[BudgetSpec], amount: &str) -> Reservation {
    reserved(reserve(ledger, budgets, usd(amount), ReservePolicy::Strict).unwrap())
}

/// Settles `r` at `cost`.
fn pay(ledger: &MemoryLedger, r: &Reservation, cost: &str) -> Settlement {
    settle(ledger, r, Charge::cost(usd(cost)))
}

fn settle(ledger: &MemoryLedger, r: &Reservation, charge: Charge) -> Settlement {
    ledger.settle_sync(r, &charge).unwrap()
}

fn top_up(
    ledger: &MemoryLedger,
    spec: &BudgetSpec,
    amount: &str,
    key: Option<&str>,
) -> TopUpOutcome {
    ledger.top_up_sync(spec, usd(amount), key).unwrap()
}

/// The index and status of the budget that refused `outcome`.
fn denied(outcome: ReserveOutcome) -> (usize, BudgetStatus) {
    match outcome {
        ReserveOutcome::Denied { index, status } => (index, status),
        reserved => panic!("expected a denial, got {reserved:?}"),
    }
}

fn reserved(outcome: ReserveOutcome) -> Reservation {
    match outcome {
        ReserveOutcome::Reserved { reservation, .. } => reservation,
        denied => panic!("expected a reservation, got {denied:?}"),
    }
}

impl MemoryLedger {
    /// An empty ledger on a tokio clock starting at `rfc3339` (the SQLite
    /// store's tests start theirs so too).
    pub(crate) fn at(rfc3339: &str) -> Self {
        let at = UNIX_EPOCH + parse_rfc3339(rfc3339).unwrap();
        MemoryLedger::new().with_clock(TokioClock::starting_at(at))
    }
}

#[tokio::test(start_paused = true)]
async fn reserve_settle_release() {
    let ledger = MemoryLedger::new();
    let b = [key("a", 10, Period::Never)];
    let r = hold(&ledger, &b, "4");
    assert_eq!(r.amount(), usd("4"));
    assert_eq!(ledger.read_sync(&b[0]).remaining(), usd("6"));
    let s = pay(&ledger, &r, "1.5");
    assert_eq!(s.statuses[0].spent, usd("1.5"));
    assert_eq!(s.statuses[0].reserved, Money::ZERO);
    let r = hold(&ledger, &b, "4");
    ledger.release_sync(&r);
    ledger.release_sync(&r); // twice is harmless
    let status = ledger.read_sync(&b[0]);
    assert_eq!((status.spent, status.reserved), (usd("1.5"), Money::ZERO));
    assert_eq!(ledger.reservation_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn strict_refuses_what_bounded_clamps() {
    let ledger = MemoryLedger::new();
    let b = [key("a", 10, Period::Never)];
    let r = hold(&ledger, &b, "9");
    pay(&ledger, &r, "9");
    let (index, status) = denied(reserve(&ledger, &b, usd("2"), ReservePolicy::Strict).unwrap());
    assert_eq!((index, status.remaining()), (0, usd("1")));
    let r = reserved(reserve(&ledger, &b, usd("2"), ReservePolicy::Bounded).unwrap());
    assert_eq!(r.amount(), usd("1"));
    // Nothing remains while it is in flight, under either policy.
    for policy in [ReservePolicy::Strict, ReservePolicy::Bounded] {
        denied(reserve(&ledger, &b, Money::ZERO, policy).unwrap());
    }
    // It overshoots by its excess, then everything is refused.
    pay(&ledger, &r, "2");
    assert_eq!(ledger.read_sync(&b[0]).remaining(), usd("-1"));
    denied(reserve(&ledger, &b, Money::ZERO, ReservePolicy::Bounded).unwrap());
}

#[tokio::test(start_paused = true)]
async fn bounded_allows_one_partial_hold_per_budget() {
    // Two partial holds in flight could both run over: the second must wait.
    let ledger = MemoryLedger::new();
    let b = [key("a", 10, Period::Never)];
    let full = reserved(reserve(&ledger, &b, usd("4"), ReservePolicy::Bounded).unwrap());
    let partial = reserved(reserve(&ledger, &b, usd("9"), ReservePolicy::Bounded).unwrap());
    assert_eq!(partial.amount(), usd("6"));
    pay(&ledger, &full, "0");
    // 4 remain, but a partial hold is in flight: only a full hold fits.
    denied(reserve(&ledger, &b, usd("9"), ReservePolicy::Bounded).unwrap());
    let fits = reserved(reserve(&ledger, &b, usd("3"), ReservePolicy::Bounded).unwrap());
    assert_eq!(fits.amount(), usd("3"));
    pay(&ledger, &partial, "9");
    pay(&ledger, &fits, "3");
    // Over by the one partial hold's excess: 9 - 6.
    assert_eq!(ledger.read_sync(&b[0]).remaining(), usd("-2"));
    // Released or expired, a partial hold frees the way for the next.
    let ledger = MemoryLedger::new().lease(Duration::from_secs(60));
    let p = reserved(reserve(&ledger, &b, usd("20"), ReservePolicy::Bounded).unwrap());
    ledger.release_sync(&p);
    let p = reserved(reserve(&ledger, &b, usd("20"), ReservePolicy::Bounded).unwrap());
    assert_eq!(p.amount(), usd("10"));
    tokio::time::advance(Duration::from_secs(61)).await;
    for _ in 0..ledger.inner.holds.len() {
        if let ReserveOutcome::Reserved { reservation, .. } =
            reserve(&ledger, &b, usd("20"), ReservePolicy::Bounded).unwrap()
        {
            assert_eq!(reservation.amount(), usd("10"));
            return;
        }
    }
    panic!("the expired partial hold still blocks");
}

#[tokio::test(start_paused = true)]
async fn all_or_nothing_across_budgets() {
    let ledger = MemoryLedger::new();
    let team = BudgetSpec::budget(BudgetScope::Team("t".into()), usd("1"), Period::Monthly);
    let a = [key("a", 10, Period::Monthly), team.clone()];
    let r = hold(&ledger, &a, "0.8");
    pay(&ledger, &r, "0.8");
    let b = [key("b", 10, Period::Monthly), team.clone()];
    let (index, _) = denied(reserve(&ledger, &b, usd("0.5"), ReservePolicy::Strict).unwrap());
    assert_eq!(index, 1);
    // Key b was not touched by the refused reservation.
    assert_eq!(ledger.read_sync(&b[0]).reserved, Money::ZERO);
    // The tightest budget is reported.
    match reserve(&ledger, &b, usd("0.1"), ReservePolicy::Strict).unwrap() {
        ReserveOutcome::Reserved { index, status, .. } => {
            assert_eq!(index, 1);
            assert_eq!(status.remaining(), usd("0.2"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_same_scope_twice_counts_once() {
    let ledger = MemoryLedger::new();
    let b = [key("a", 10, Period::Never), key("a", 10, Period::Never)];
    let r = hold(&ledger, &b, "1");
    assert_eq!(ledger.read_sync(&b[0]).reserved, usd("1"));
    pay(&ledger, &r, "1");
    assert_eq!(ledger.read_sync(&b[0]).spent, usd("1"));
}

#[tokio::test(start_paused = true)]
async fn monthly_spend_resets_at_utc_month_end() {
    let ledger = MemoryLedger::at("2026-01-31T23:59:00Z");
    let b = [key("a", 1, Period::Monthly)];
    let r = hold(&ledger, &b, "1");
    pay(&ledger, &r, "1");
    let end = |status: BudgetStatus| status.period.end.map(crate::time::format_rfc3339);
    let status = ledger.read_sync(&b[0]);
    assert_eq!(status.remaining(), Money::ZERO);
    assert_eq!(end(status).as_deref(), Some("2026-02-01T00:00:00Z"));
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(ledger.read_sync(&b[0]).spent, usd("1"));
    tokio::time::advance(Duration::from_secs(1)).await;
    let status = ledger.read_sync(&b[0]);
    assert_eq!(status.spent, Money::ZERO);
    assert_eq!(end(status).as_deref(), Some("2026-03-01T00:00:00Z"));
}

#[tokio::test(start_paused = true)]
async fn a_settlement_after_rollover_counts_in_the_new_period() {
    let ledger = MemoryLedger::at("2026-03-31T23:59:59Z");
    let b = [key("a", 5, Period::Monthly)];
    let r = hold(&ledger, &b, "2");
    tokio::time::advance(Duration::from_secs(2)).await;
    // Spend reset, the hold still counts.
    assert_eq!(ledger.read_sync(&b[0]).reserved, usd("2"));
    pay(&ledger, &r, "1");
    let status = ledger.read_sync(&b[0]);
    assert_eq!((status.spent, status.reserved), (usd("1"), Money::ZERO));
}

#[tokio::test(start_paused = true)]
async fn balances_open_once_take_top_ups_and_never_reset() {
    let ledger = MemoryLedger::new();
    let wallet = BudgetSpec::balance(BudgetScope::Org("o".into()), usd("1"));
    let r = hold(&ledger, std::slice::from_ref(&wallet), "1");
    pay(&ledger, &r, "1");
    let wallets = [wallet.clone()];
    let (_, status) =
        denied(reserve(&ledger, &wallets, Money::ZERO, ReservePolicy::Bounded).unwrap());
    assert_eq!(status.mode, BudgetMode::Balance);
    let status = top_up(&ledger, &wallet, "3", None).status;
    assert_eq!((status.limit, status.remaining()), (usd("4"), usd("3")));
    tokio::time::advance(Duration::from_secs(400 * 86_400)).await;
    assert_eq!(ledger.read_sync(&wallet).remaining(), usd("3"));
    // A top-up before first use keeps the opening balance.
    let fresh = BudgetSpec::balance(BudgetScope::Org("p".into()), usd("2"));
    assert_eq!(
        top_up(&ledger, &fresh, "1", None).status.remaining(),
        usd("3")
    );
}

#[tokio::test(start_paused = true)]
async fn expired_leases_are_released_and_still_charged() {
    let ledger = MemoryLedger::new().lease(Duration::from_secs(60));
    let b = [key("a", 10, Period::Never)];
    let r = hold(&ledger, &b, "4");
    tokio::time::advance(Duration::from_secs(61)).await;
    // The next reservation sweeps the expired hold (every shard is swept on its own schedule).
    for _ in 0..ledger.inner.holds.len() {
        let r2 = reserved(reserve(&ledger, &b, Money::ZERO, ReservePolicy::Strict).unwrap());
        ledger.release_sync(&r2);
    }
    assert_eq!(ledger.read_sync(&b[0]).reserved, Money::ZERO);
    pay(&ledger, &r, "3");
    let status = ledger.read_sync(&b[0]);
    assert_eq!((status.spent, status.reserved), (usd("3"), Money::ZERO));
}

#[tokio::test(start_paused = true)]
async fn bounded_in_budgets_and_holds() {
    let ledger = MemoryLedger::new()
        .shards(1)
        .max_budgets(2)
        .max_reservations(2);
    let daily = |id: &str| [key(id, 1, Period::Daily)];
    let a = hold(&ledger, &daily("a"), "0.1");
    let b = hold(&ledger, &daily("b"), "0.1");
    // Full of holds.
    assert!(reserve(&ledger, &daily("a"), usd("0.1"), ReservePolicy::Strict).is_err());
    pay(&ledger, &a, "0.1");
    ledger.release_sync(&b);
    // "b" carries nothing and is evicted for "c"; "a" has spend and stays.
    let c = hold(&ledger, &daily("c"), "0.1");
    assert_eq!(ledger.budget_count(), 2);
    assert_eq!(ledger.read_sync(&daily("a")[0]).spent, usd("0.1"));
    // With "a" spent today and "c" in flight nothing can go.
    let err = reserve(&ledger, &daily("d"), usd("0.1"), ReservePolicy::Strict).unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");
    ledger.release_sync(&c);
    // Tomorrow, "a"'s spend is history and may be evicted.
    tokio::time::advance(Duration::from_secs(86_400)).await;
    hold(&ledger, &daily("d"), "0.1");
    assert_eq!(ledger.budget_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_strict_reservations_never_overshoot() {
    let ledger = MemoryLedger::new();
    let b: Arc<[BudgetSpec]> = [key("a", 1, Period::Never)].into();
    let mut tasks = Vec::new();
    for _ in 0..1_000 {
        let (ledger, b) = (ledger.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            match ledger
                .reserve(&b, usd("0.03"), ReservePolicy::Strict)
                .await
                .unwrap()
            {
                ReserveOutcome::Reserved { reservation, .. } => {
                    tokio::task::yield_now().await;
                    ledger
                        .settle(&reservation, &Charge::cost(usd("0.01")))
                        .await
                        .unwrap();
                    true
                }
                ReserveOutcome::Denied { .. } => false,
            }
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    let status = ledger.read_sync(&b[0]);
    assert!(status.spent <= usd("1"), "{status:?}");
    assert_eq!(
        status.spent,
        Money::from_nanos(10_000_000 * admitted as i64)
    );
    assert_eq!(status.reserved, Money::ZERO);
}

#[derive(Debug, Clone)]
enum Op {
    Reserve { worst: i64, strict: bool },
    Settle { which: usize, percent: i64 },
    Release { which: usize },
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        (1i64..400, any::<bool>()).prop_map(|(worst, strict)| Op::Reserve { worst, strict }),
        (any::<usize>(), 0i64..=100).prop_map(|(which, percent)| Op::Settle { which, percent }),
        any::<usize>().prop_map(|which| Op::Release { which }),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(1_000))]

    /// Whatever the interleaving: holds add up, a request never pays
    /// more than its worst case, and spend exceeds the limit by at most
    /// one request's excess over its hold (never, if all were Strict).
    #[test]
    fn the_books_balance(ops in proptest::collection::vec(op(), 1..200)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        let _guard = rt.enter();
        let ledger = MemoryLedger::new().shards(2);
        let limit = Money::from_nanos(1_000);
        let budgets: Arc<[BudgetSpec]> = Arc::new([
            BudgetSpec::budget(BudgetScope::Key("k".into()), limit, Period::Never),
            BudgetSpec::budget(BudgetScope::Team("t".into()), limit, Period::Never),
        ]);
        let mut open: Vec<(Reservation, i64)> = Vec::new();
        let mut any_bounded = false;
        let mut max_excess = 0i64;
        for op in ops {
            match op {
                Op::Reserve { worst, strict } => {
                    let policy = if strict { ReservePolicy::Strict } else { ReservePolicy::Bounded };
                    any_bounded |= !strict;
                    if let ReserveOutcome::Reserved { reservation, .. } =
                        ledger.reserve_sync(&budgets, Money::from_nanos(worst), policy).unwrap()
                    {
                        proptest::prop_assert!(reservation.amount().nanos() <= worst);
                        open.push((reservation, worst));
                    }
                }
                Op::Settle { which, percent } if !open.is_empty() => {
                    let (r, worst) = open.swap_remove(which % open.len());
                    let actual = worst * percent / 100;
                    max_excess = max_excess.max(actual - r.amount().nanos());
                    ledger.settle_sync(&r, &Charge::cost(Money::from_nanos(actual))).unwrap();
                }
                Op::Release { which } if !open.is_empty() => {
                    let (r, _) = open.swap_remove(which % open.len());
                    ledger.release_sync(&r);
                }
                _ => {}
            }
            let held: i64 = open.iter().map(|(r, _)| r.amount().nanos()).sum();
            for spec in budgets.iter() {
                let status = ledger.read_sync(spec);
                proptest::prop_assert_eq!(status.reserved.nanos(), held);
                let over = status.spent.nanos() - limit.nanos();
                if any_bounded {
                    proptest::prop_assert!(over <= max_excess.max(0), "over by {} > {}", over, max_excess);
                } else {
                    proptest::prop_assert!(over <= 0, "strict overshoot by {}", over);
                }
            }
        }
    }
}

fn attributed(cost: &str, scopes: &[BudgetScope], model: &str) -> Charge {
    Charge::new(usd(cost), crate::budget::SpendTokens::new(10, 20, 3))
        .attributed(crate::budget::Attribution::new(scopes.to_vec(), model))
}

#[tokio::test(start_paused = true)]
async fn settlements_keep_spend_aggregates_by_scope_model_and_day() {
    use crate::budget::{SpendGroup, SpendQuery};
    let ledger = MemoryLedger::at("2026-12-06T23:59:00Z");
    let alice = BudgetScope::Key("alice".into());
    let bob = BudgetScope::Key("bob".into());
    let team = BudgetScope::Team("research".into());
    let b = [key("alice", 10, Period::Monthly)];
    let r = hold(&ledger, &b, "1");
    let s = settle(
        &ledger,
        &r,
        attributed("0.5", &[alice.clone(), team.clone()], "m1"),
    );
    assert_eq!(s.day, crate::time::parse_date("2026-12-06").unwrap());
    // A key without budgets: an empty, unheld reservation still counts.
    let none = Reservation::unheld(Arc::new([]));
    settle(&ledger, &none, attributed("0.25", &[bob, team], "m2"));
    tokio::time::advance(Duration::from_secs(120)).await; // the next UTC day
    settle(
        &ledger,
        &none,
        attributed("0.125", std::slice::from_ref(&alice), "m1"),
    );

    let by_key = ledger.spend_sync(&SpendQuery::new(SpendGroup::Key));
    assert_eq!(by_key.len(), 2);
    assert_eq!(
        (by_key[0].group.as_str(), by_key[0].totals.cost),
        ("alice", usd("0.625"))
    );
    assert_eq!(by_key[0].totals.requests, 2);
    assert_eq!(by_key[0].totals.prompt_tokens, 20);
    assert_eq!(by_key[0].totals.completion_tokens, 40);
    assert_eq!(by_key[0].totals.cached_tokens, 6);
    let by_team = ledger.spend_sync(&SpendQuery::new(SpendGroup::Team));
    assert_eq!(by_team[0].totals.cost, usd("0.75"));
    let by_model = ledger.spend_sync(&SpendQuery::new(SpendGroup::Model));
    assert_eq!(
        by_model.iter().map(|r| r.totals.cost).collect::<Vec<_>>(),
        [usd("0.625"), usd("0.25")]
    );
    let by_day = ledger.spend_sync(&SpendQuery::new(SpendGroup::Day).scope(alice.clone()));
    assert_eq!(
        by_day.iter().map(|r| r.group.as_str()).collect::<Vec<_>>(),
        ["2026-12-06", "2026-12-07"]
    );
    let first_day = crate::time::parse_date("2026-12-06");
    let one_day = ledger.spend_sync(&SpendQuery::new(SpendGroup::Model).days(first_day, first_day));
    assert_eq!(
        one_day.iter().map(|r| r.totals.cost).collect::<Vec<_>>(),
        [usd("0.5"), usd("0.25")]
    );
    // The budget was charged in the same step.
    assert_eq!(ledger.read_sync(&b[0]).spent, usd("0.5"));
    assert_eq!(ledger.spend_row_count(), 5);
}

#[tokio::test(start_paused = true)]
async fn spend_rows_are_bounded_by_forgetting_the_oldest_day() {
    use crate::budget::{SpendGroup, SpendQuery};
    let ledger = MemoryLedger::new().shards(1).max_spend_rows(2);
    let none = Reservation::unheld(Arc::new([]));
    let alice = [BudgetScope::Key("alice".into())];
    for model in ["a", "b"] {
        settle(&ledger, &none, attributed("1", &alice, model));
    }
    tokio::time::advance(Duration::from_secs(86_400)).await;
    settle(&ledger, &none, attributed("1", &alice, "c"));
    let rows = ledger.spend_sync(&SpendQuery::new(SpendGroup::Model));
    assert_eq!(
        rows.iter().map(|r| r.group.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
}

#[tokio::test(start_paused = true)]
async fn top_ups_apply_once_per_idempotency_key() {
    let ledger = MemoryLedger::new();
    let wallet = BudgetSpec::balance(BudgetScope::Key("a".into()), usd("10"));
    let first = top_up(&ledger, &wallet, "25", Some("req-1"));
    assert!(!first.replayed);
    assert_eq!(first.status.remaining(), usd("35"));
    let again = top_up(&ledger, &wallet, "25", Some("req-1"));
    assert!(again.replayed);
    assert_eq!(again.status.remaining(), usd("35"));
    // The same key on another balance is another top-up.
    let other = BudgetSpec::balance(BudgetScope::Key("b".into()), usd("0"));
    assert!(!top_up(&ledger, &other, "5", Some("req-1")).replayed);
    // After 24 hours the key may be used again.
    tokio::time::advance(top_ups::KEEP).await;
    let later = top_up(&ledger, &wallet, "25", Some("req-1"));
    assert!(!later.replayed);
    assert_eq!(later.status.remaining(), usd("60"));
}

#[tokio::test(start_paused = true)]
async fn a_reset_forgets_the_period_spend_but_not_holds_or_balances() {
    let ledger = MemoryLedger::new();
    let b = [key("a", 10, Period::Monthly)];
    let r = hold(&ledger, &b, "4");
    pay(&ledger, &r, "4");
    let held = hold(&ledger, &b, "1");
    let status = ledger.reset_sync(&b[0]).unwrap();
    assert_eq!((status.spent, status.reserved), (Money::ZERO, usd("1")));
    ledger.release_sync(&held);
    let wallet = BudgetSpec::balance(BudgetScope::Key("w".into()), usd("3"));
    let w = hold(&ledger, std::slice::from_ref(&wallet), "1");
    pay(&ledger, &w, "1");
    assert_eq!(ledger.reset_sync(&wallet).unwrap().remaining(), usd("2"));
}

#[tokio::test(start_paused = true)]
async fn a_balance_is_granted_once_whatever_later_specs_say() {
    let ledger = MemoryLedger::new();
    let opening = BudgetSpec::balance(BudgetScope::Key("a".into()), usd("10"));
    let r = hold(&ledger, std::slice::from_ref(&opening), "4");
    pay(&ledger, &r, "4");
    // The configuration now says 50: the balance is not refilled.
    let edited = BudgetSpec::balance(BudgetScope::Key("a".into()), usd("50"));
    assert_eq!(ledger.read_sync(&edited).remaining(), usd("6"));
}
