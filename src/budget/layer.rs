use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::alerts::{OnSoftLimit, Thresholds};
use super::events::SpendSink;
use super::service::Budget;
use super::{ChargePolicy, Ledger, Pricing, ReservePolicy};
use crate::RequestMeta;
use crate::request::Unreadable;
use crate::store::memory::MemoryLedger;

/// What to do with a request for a model that has no price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UnpricedModel {
    /// Refuse it: 400 `invalid_model`, `no price configured for model X`,
    /// param `model` (the default: a missing price is a configuration error,
    /// and serving it would spend money no budget sees).
    #[default]
    Reject,
    /// Serve it and charge nothing, with a `tracing` warning per request.
    ChargeZero,
}

pub use crate::store::FailurePolicy;

/// Everything the services of one layer share.
pub(crate) struct Shared<L> {
    pub(crate) ledger: Arc<L>,
    pub(crate) pricing: Arc<Pricing>,
    pub(crate) policy: ReservePolicy,
    pub(crate) unpriced: UnpricedModel,
    pub(crate) on_store_error: FailurePolicy,
    pub(crate) thresholds: Thresholds,
    pub(crate) on_soft_limit: Option<Arc<dyn OnSoftLimit>>,
    pub(crate) sink: Option<Arc<dyn SpendSink>>,
    pub(crate) max_request_body_bytes: usize,
    pub(crate) charge_policy: ChargePolicy,
    pub(crate) unreadable: Unreadable,
}

impl<L> Clone for Shared<L> {
    fn clone(&self) -> Self {
        Shared {
            ledger: self.ledger.clone(),
            pricing: self.pricing.clone(),
            policy: self.policy,
            unpriced: self.unpriced,
            on_store_error: self.on_store_error,
            thresholds: self.thresholds.clone(),
            on_soft_limit: self.on_soft_limit.clone(),
            sink: self.sink.clone(),
            max_request_body_bytes: self.max_request_body_bytes,
            charge_policy: self.charge_policy,
            unreadable: self.unreadable,
        }
    }
}

/// Charges every request to its caller's budgets: reserves its worst-case
/// cost before the call, settles the actual cost when the response ends.
///
/// See the [module docs](crate::budget) for the whole story and an example.
///
/// Defaults: [`ReservePolicy::Bounded`], [`UnpricedModel::Reject`],
/// [`FailurePolicy::FailClosed`], [`ChargePolicy::Produced`],
/// [`Unreadable::Reject`], no soft limits, no spend sink, request bodies
/// read up to [`RequestMeta::DEFAULT_MAX_BODY_BYTES`] (16 MiB).
pub struct BudgetLayer<L = MemoryLedger> {
    shared: Arc<Shared<L>>,
}

crate::macros::impl_clone!(BudgetLayer<L> { shared });

impl<L> fmt::Debug for BudgetLayer<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("BudgetLayer")
            .field("models_priced", &s.pricing.len())
            .field("policy", &s.policy)
            .field("unpriced", &s.unpriced)
            .field("on_store_error", &s.on_store_error)
            .field("soft_limits", &s.thresholds)
            .field("on_soft_limit", &s.on_soft_limit.is_some())
            .field("spend_sink", &s.sink.is_some())
            .field("max_request_body_bytes", &s.max_request_body_bytes)
            .field("charge_policy", &s.charge_policy)
            .field("unreadable", &s.unreadable)
            .finish_non_exhaustive()
    }
}

impl BudgetLayer<MemoryLedger> {
    /// Prices from `pricing`, spend in a fresh [`MemoryLedger`].
    ///
    /// To top up balances or read budgets, keep a handle on the ledger:
    /// [`BudgetLayer::ledger`], or build with [`BudgetLayer::with_ledger`]
    /// and a clone of your own `MemoryLedger`.
    pub fn new(pricing: Pricing) -> Self {
        BudgetLayer::with_ledger(pricing, MemoryLedger::new())
    }
}

impl<L: Ledger> BudgetLayer<L> {
    /// Prices from `pricing`, spend in `ledger`.
    pub fn with_ledger(pricing: Pricing, ledger: L) -> Self {
        BudgetLayer {
            shared: Arc::new(Shared {
                ledger: Arc::new(ledger),
                pricing: Arc::new(pricing),
                policy: ReservePolicy::default(),
                unpriced: UnpricedModel::default(),
                on_store_error: FailurePolicy::FailClosed,
                thresholds: Thresholds::default(),
                on_soft_limit: None,
                sink: None,
                max_request_body_bytes: RequestMeta::DEFAULT_MAX_BODY_BYTES,
                charge_policy: ChargePolicy::default(),
                unreadable: Unreadable::default(),
            }),
        }
    }
}

impl<L> BudgetLayer<L> {
    /// What every service this layer makes shares (and
    /// [`AdmissionLayer`](crate::admission::AdmissionLayer) too).
    pub(crate) fn shared(&self) -> &Arc<Shared<L>> {
        &self.shared
    }

    fn shared_mut(&mut self) -> &mut Shared<L> {
        Arc::make_mut(&mut self.shared)
    }

    /// The ledger every service of this layer charges.
    pub fn ledger(&self) -> &L {
        &self.shared.ledger
    }

    /// The prices.
    pub fn pricing(&self) -> &Pricing {
        &self.shared.pricing
    }

    /// How reservations are sized (default [`ReservePolicy::Bounded`]).
    pub fn policy(mut self, policy: ReservePolicy) -> Self {
        self.shared_mut().policy = policy;
        self
    }

    /// What to do with models without a price (default [`UnpricedModel::Reject`]).
    pub fn unpriced(mut self, unpriced: UnpricedModel) -> Self {
        self.shared_mut().unpriced = unpriced;
        self
    }

    /// What to do when the ledger fails (default [`FailurePolicy::FailClosed`]).
    pub fn on_store_error(mut self, policy: FailurePolicy) -> Self {
        self.shared_mut().on_store_error = policy;
        self
    }

    /// Soft-limit thresholds in percent of each budget's limit, e.g.
    /// `[50, 80, 100]` (default: none). Each fires a `tracing` warning and
    /// the [`on_soft_limit`](Self::on_soft_limit) callback once per budget
    /// per period. Zero is ignored; values above 100 are allowed (a
    /// `Bounded` budget can end a period slightly over).
    pub fn soft_limits(mut self, percents: impl IntoIterator<Item = u32>) -> Self {
        self.shared_mut().thresholds = Thresholds::new(percents);
        self
    }

    /// Called when a soft limit is reached (see [`soft_limits`](Self::soft_limits)).
    pub fn on_soft_limit(mut self, handler: impl OnSoftLimit) -> Self {
        self.shared_mut().on_soft_limit = Some(Arc::new(handler));
        self
    }

    /// Receives a [`SpendEvent`](super::SpendEvent) for every metered request.
    pub fn spend_sink(mut self, sink: impl SpendSink) -> Self {
        self.shared_mut().sink = Some(Arc::new(sink));
        self
    }

    /// What a call that failed or was cut after the upstream accepted it is
    /// charged (default [`ChargePolicy::Produced`]: the prompt estimate
    /// plus the output seen). See [`ChargePolicy`] for every case.
    pub fn charge_policy(mut self, policy: ChargePolicy) -> Self {
        self.shared_mut().charge_policy = policy;
        self
    }

    /// What to do with a request whose facts cannot be read (a multipart
    /// upload, a body that is not JSON): refuse it (the default: 415 or
    /// 400), or admit it with a fixed reservation of `usd`, charged in full
    /// to each budget. See [`Unreadable`].
    pub fn unreadable(mut self, unreadable: Unreadable) -> Self {
        self.shared_mut().unreadable = unreadable;
        self
    }

    /// How much of a request body is read to find its model and
    /// `max_tokens`, when no earlier layer has (default 16 MiB). Larger
    /// bodies are refused with 413.
    pub fn max_request_body_bytes(mut self, bytes: usize) -> Self {
        self.shared_mut().max_request_body_bytes = bytes;
        self
    }
}

impl<S, L> Layer<S> for BudgetLayer<L> {
    type Service = Budget<S, L>;

    fn layer(&self, inner: S) -> Budget<S, L> {
        Budget::from_parts(inner, self.shared.clone())
    }
}
