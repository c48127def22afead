use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::{FailurePolicy, Shared, UnpricedModel};
use super::settle::{Settler, Worst};
use super::usage::{UsageBody, UsageOptions};
use super::{
    Attribution, BudgetMode, BudgetScope, BudgetSpec, BudgetStatus, Ledger, ModelPrice,
    Reservation, ReserveOutcome,
};
use crate::body::ResponseBody;
use crate::request::{FromBytes, Unreadable, unreadable_error};
use crate::store::StoreFuture;
use crate::store::memory::MemoryLedger;
use crate::{ApiError, BoxError, Principal, RequestMeta};

/// `x-budget-limit-usd`: the binding budget's limit (for a balance: all funds added).
pub const X_BUDGET_LIMIT_USD: &str = "x-budget-limit-usd";
/// `x-budget-remaining-usd`: what the binding budget had left before this request.
pub const X_BUDGET_REMAINING_USD: &str = "x-budget-remaining-usd";
/// `x-budget-reset`: when the binding budget's period ends (RFC 3339, UTC).
pub const X_BUDGET_RESET: &str = "x-budget-reset";

// Parsed at compile time, not per request.
const LIMIT_NAME: HeaderName = HeaderName::from_static(X_BUDGET_LIMIT_USD);
const REMAINING_NAME: HeaderName = HeaderName::from_static(X_BUDGET_REMAINING_USD);
const RESET_NAME: HeaderName = HeaderName::from_static(X_BUDGET_RESET);

/// The service built by [`BudgetLayer`](super::BudgetLayer).
pub struct Budget<S, L = MemoryLedger> {
    inner: S,
    shared: Arc<Shared<L>>,
}

crate::macros::impl_clone!(Budget<S: Clone, L> { inner, shared });

impl<S: std::fmt::Debug, L> std::fmt::Debug for Budget<S, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("inner", &self.inner)
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}

impl<S, L> Budget<S, L> {
    pub(crate) fn from_parts(inner: S, shared: Arc<Shared<L>>) -> Self {
        Budget { inner, shared }
    }

    crate::macros::define_inner_service_accessors!();
}

impl<S, L, ReqBody, ResBody> Service<Request<ReqBody>> for Budget<S, L>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S::Error: 'static,
    L: Ledger,
    ReqBody: Body<Data = Bytes> + FromBytes + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<UsageBody<ResBody>>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, L>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The ledger is asked before the inner service is called: take the
        // service that was polled ready and leave a clone in its place.
        let mut inner = crate::macros::take_ready(&mut self.inner);
        // Most requests are decided here, without a future of their own: the
        // body was read further out, and the memory ledger answers at once.
        // Decided on the request in place: it is moved once, into the
        // inner service's call.
        match admit_now(&self.shared, &req) {
            Now::Decided(Ok(admitted)) => ResponseFuture::calling(inner.call(req), admitted),
            Now::Decided(Err(rejected)) => ResponseFuture::rejected(rejected),
            Now::Wait(reserving) => {
                let admission = admit(self.shared.clone(), req, reserving);
                ResponseFuture::new(Box::pin(admission), inner)
            }
        }
    }
}

/// The decision on one request, made before the inner service is called.
pub(crate) type Admission<B, L> = Result<(Request<B>, Admitted<L>), Rejected>;

pub(crate) type AdmissionFuture<B, L> = Pin<Box<dyn Future<Output = Admission<B, L>> + Send>>;

/// An admitted request: how to settle it, and the headers to add.
pub(crate) struct Admitted<L: Ledger> {
    pub(crate) settler: Option<Settler<L>>,
    pub(crate) options: UsageOptions,
    pub(crate) headers: Option<BudgetHeaders>,
}

/// A refused request.
pub(crate) struct Rejected {
    pub(crate) error: ApiError,
    /// Boxed: refusals are rare, and this keeps `Result<_, Rejected>` small.
    pub(crate) headers: Option<Box<BudgetHeaders>>,
}

impl From<ApiError> for Rejected {
    fn from(error: ApiError) -> Rejected {
        Rejected {
            error,
            headers: None,
        }
    }
}

/// The decision on a request, or what is known when deciding means
/// waiting.
#[allow(
    clippy::large_enum_variant,
    reason = "returned once and matched at once; boxing would add the allocation it saves"
)]
pub(crate) enum Now<L: Ledger> {
    Decided(Result<Admitted<L>, Rejected>),
    /// When the request was priced, its price and the ledger's answer on
    /// the way.
    Wait(Option<Reserving<L>>),
}

/// A priced request and the ledger's answer on its hold, still on the way.
pub(crate) struct Reserving<L: Ledger> {
    pending: Pending<L>,
    answer: StoreFuture<ReserveOutcome>,
}

/// Decides on `req` at once when that needs no waiting: its
/// [`RequestMeta`] was read by a layer further out, and the ledger's answer
/// is ready (a ledger in memory). Borrowed, not moved: the request is the
/// largest value on this path.
pub(crate) fn admit_now<L: Ledger, B>(shared: &Arc<Shared<L>>, req: &Request<B>) -> Now<L> {
    let Some(meta) = req.extensions().get::<RequestMeta>() else {
        return Now::Wait(None);
    };
    let pending = match prepare(
        shared,
        meta,
        req.extensions().get::<Principal>(),
        req.headers(),
    ) {
        Ok(Step::Admit(admitted)) => return Now::Decided(Ok(admitted)),
        Ok(Step::Reserve(pending)) => pending,
        Err(rejected) => return Now::Decided(Err(rejected)),
    };
    let mut answer = pending.reserve(shared);
    match answer.take_ready() {
        Some(result) => Now::Decided(conclude(shared, pending, result)),
        None => Now::Wait(Some(Reserving { pending, answer })),
    }
}

/// Decides on `req`, reading its body and waiting for the ledger as needed;
/// `reserving` is its price and the ledger's answer when [`admit_now`]
/// already asked.
pub(crate) async fn admit<L: Ledger, B>(
    shared: Arc<Shared<L>>,
    req: Request<B>,
    reserving: Option<Reserving<L>>,
) -> Admission<B, L>
where
    B: Body<Data = Bytes> + FromBytes,
    B::Error: Into<BoxError>,
{
    let (req, Reserving { pending, answer }) = match reserving {
        Some(reserving) => (req, reserving),
        None => {
            let req = RequestMeta::read(req, shared.max_request_body_bytes).await?;
            match admit_now(&shared, &req) {
                Now::Decided(decided) => return decided.map(|admitted| (req, admitted)),
                Now::Wait(Some(reserving)) => (req, reserving),
                // The meta was just read: not reached.
                Now::Wait(None) => return Err(ApiError::internal().into()),
            }
        }
    };
    let result = answer.await;
    conclude(&shared, pending, result).map(|admitted| (req, admitted))
}

/// What a priced request needs next.
pub(crate) enum Step<L: Ledger> {
    /// Nothing: admitted (no model to price, no budgets to hold).
    Admit(Admitted<L>),
    /// A hold on its budgets.
    Reserve(Pending<L>),
}

/// A priced request waiting for its hold.
pub(crate) struct Pending<L: Ledger> {
    pub(crate) budgets: Arc<[BudgetSpec]>,
    pub(crate) worst_case: super::Money,
    settler: Settler<L>,
    options: UsageOptions,
}

impl<L: Ledger> Pending<L> {
    /// Asks `shared`'s ledger for the hold.
    pub(crate) fn reserve(&self, shared: &Shared<L>) -> StoreFuture<ReserveOutcome> {
        shared
            .ledger
            .reserve(&self.budgets, self.worst_case, shared.policy)
    }
}

/// Prices the request `meta` describes, for `principal`'s budgets.
pub(crate) fn prepare<L: Ledger>(
    shared: &Arc<Shared<L>>,
    meta: &RequestMeta,
    principal: Option<&Principal>,
    headers: &HeaderMap,
) -> Result<Step<L>, Rejected> {
    let options = UsageOptions::from_meta(meta);
    // What is charged: a model's price, or a fixed amount for a body whose
    // facts cannot be read.
    let (model, named, price, worst, fixed) = if meta.is_unreadable() {
        let Unreadable::Reserve { usd, .. } = shared.unreadable else {
            return Err(unreadable_error(meta, headers).into());
        };
        let worst = Worst {
            cost: usd,
            prompt_tokens: 0,
            output_tokens: 0,
        };
        (UNREADABLE_MODEL, None, ModelPrice::FREE, worst, Some(usd))
    } else {
        let Some(model) = meta.model.as_deref() else {
            // Nothing to price (model lists, files, …): not metered.
            return Ok(Step::Admit(Admitted {
                settler: None,
                options,
                headers: None,
            }));
        };
        let (named, price) = match (shared.pricing.get_named(model), shared.unpriced) {
            (Some((named, price)), _) => (named, *price),
            (None, UnpricedModel::Reject) => return Err(no_price(model).into()),
            (None, UnpricedModel::ChargeZero) => {
                tracing::warn!(model = %truncated(model), "no price configured for model; charging zero");
                (None, ModelPrice::FREE)
            }
        };
        // The upper bound: the prompt (with its images, audio and tool
        // definitions) as uncached input, and every completion the request
        // can make at its cap (the model's output limit when it sets none).
        let output_tokens = meta.output_tokens_bound(price.max_output_tokens);
        let worst = Worst {
            cost: price.worst_case(meta.prompt_tokens_estimate, Some(output_tokens)),
            prompt_tokens: meta.prompt_tokens_estimate,
            output_tokens,
        };
        (model, named, price, worst, None)
    };
    // Whose spend this is, for the ledger's aggregates: shared slices, so a
    // priced model costs no copy of its name.
    let attribution = principal.map(|p| {
        let model: Arc<str> = match named {
            Some(name) => name.clone(),
            None => Arc::from(model),
        };
        Attribution {
            scopes: p.spend_scopes(),
            model,
        }
    });
    // The model and the caller are kept only for a spend sink's events.
    let (sink_model, caller) = match shared.sink {
        Some(_) => (model.to_owned(), principal.cloned()),
        None => (String::new(), None),
    };
    let mut settler = Settler::new(
        shared.clone(),
        price,
        worst,
        sink_model,
        caller,
        attribution,
    );
    if let Some(cost) = fixed {
        settler = settler.fixed(cost);
    }
    match principal.map(Principal::shared_budgets) {
        Some(budgets) if !budgets.is_empty() => Ok(Step::Reserve(Pending {
            budgets,
            worst_case: worst.cost,
            settler,
            options,
        })),
        _ => Ok(Step::Admit(Admitted {
            settler: Some(settler),
            options,
            headers: None,
        })),
    }
}

/// The model a request whose facts could not be read is counted under in
/// the spend aggregates and events.
const UNREADABLE_MODEL: &str = "(unreadable)";

/// Admits or refuses a request from the ledger's answer on its hold.
pub(crate) fn conclude<L: Ledger>(
    shared: &Shared<L>,
    pending: Pending<L>,
    result: Result<ReserveOutcome, crate::store::StoreError>,
) -> Result<Admitted<L>, Rejected> {
    let Pending {
        budgets,
        mut settler,
        options,
        ..
    } = pending;
    let mut headers = None;
    match result {
        Ok(ReserveOutcome::Reserved {
            reservation,
            status,
            ..
        }) => {
            settler.hold(reservation);
            headers = Some(BudgetHeaders::of(&status));
        }
        Ok(ReserveOutcome::Denied { index, status }) => {
            let error = match budgets.get(index) {
                Some(spec) => refusal(spec, &status),
                None => ApiError::internal(),
            };
            return Err(Rejected {
                error,
                headers: Some(Box::new(BudgetHeaders::of(&status))),
            });
        }
        Err(error) => match shared.on_store_error {
            FailurePolicy::FailClosed => return Err(ApiError::from(error).into()),
            FailurePolicy::FailOpen => {
                tracing::warn!(%error, "budget ledger failed; admitting without a reservation");
                settler.hold(Reservation::unheld(budgets));
            }
        },
    }
    Ok(Admitted {
        settler: Some(settler),
        options,
        headers,
    })
}

/// The error for a budget that refused a request, naming its scope unless
/// it is the caller's own key's: "Budget exceeded: $50.00 limit reached
/// for team research". A balance's refusal keeps the wording of the
/// HiveOps guide, which clients match on, whoever's balance it is.
fn refusal(spec: &BudgetSpec, status: &BudgetStatus) -> ApiError {
    let scope = match &spec.scope {
        BudgetScope::Key(_) => String::new(),
        other => format!(" for {} {}", other.kind_name(), other.name().escape_debug()),
    };
    match spec.mode {
        BudgetMode::Budget => ApiError::budget_exceeded().with_message(format!(
            "Budget exceeded: {} limit reached{scope}",
            status.limit
        )),
        BudgetMode::Balance => ApiError::insufficient_balance()
            .with_message("Insufficient account balance. Please add funds to continue."),
    }
}

fn no_price(model: &str) -> ApiError {
    ApiError::invalid_model()
        .with_message(format!(
            "no price configured for model {}",
            truncated(model)
        ))
        .with_param("model")
}

/// A client-sent model name, cut to 128 characters (on a char boundary)
/// for messages and logs.
pub(crate) fn truncated(model: &str) -> &str {
    match model.char_indices().nth(128) {
        Some((at, _)) => &model[..at],
        None => model,
    }
}

/// The `x-budget-*` headers of the binding budget: its figures, rendered
/// when they are written. An admitted request carries them with the call's
/// future, and as figures they are 32 bytes, where the rendered values
/// were 120.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BudgetHeaders {
    limit: super::Money,
    remaining: super::Money,
    reset: Option<Duration>,
}

impl BudgetHeaders {
    pub(crate) fn of(status: &BudgetStatus) -> BudgetHeaders {
        BudgetHeaders {
            limit: status.limit,
            remaining: status.remaining(),
            reset: status.period.end,
        }
    }

    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        let limit = cached(&LAST_LIMIT, self.limit, |limit| {
            HeaderValue::from_bytes(limit.decimal().as_bytes()).ok()
        });
        // Cut from the thread's chunk: no allocation per response.
        let remaining = HeaderValue::from_maybe_shared(crate::header_values::shared_bytes(
            self.remaining.decimal().as_bytes(),
        ))
        .ok();
        let reset = self.reset.and_then(|end| {
            cached(&LAST_RESET, end, |end| {
                match crate::time::rfc3339_bytes(end) {
                    Some(bytes) => HeaderValue::from_bytes(&bytes).ok(),
                    None => HeaderValue::from_str(&crate::time::format_rfc3339(end)).ok(),
                }
            })
        });
        for (name, value) in [
            (LIMIT_NAME, limit),
            (REMAINING_NAME, remaining),
            (RESET_NAME, reset),
        ] {
            if let Some(value) = value {
                headers.insert(name, value);
            }
        }
    }
}

thread_local! {
    /// The last limit rendered on this thread: a budget's limit rarely changes.
    static LAST_LIMIT: Cell<Option<(super::Money, HeaderValue)>> = const { Cell::new(None) };
    /// The last period end rendered on this thread: it changes once a period.
    static LAST_RESET: Cell<Option<(Duration, HeaderValue)>> = const { Cell::new(None) };
}

/// `render(key)`, or the value rendered last on this thread for the same key
/// (a reference count instead of formatting and an allocation).
fn cached<K: Copy + PartialEq>(
    slot: &'static std::thread::LocalKey<Cell<Option<(K, HeaderValue)>>>,
    key: K,
    render: impl FnOnce(K) -> Option<HeaderValue>,
) -> Option<HeaderValue> {
    slot.with(|slot| {
        if let Some((last, value)) = slot.take()
            && last == key
        {
            slot.set(Some((last, value.clone())));
            return Some(value);
        }
        let value = render(key)?;
        slot.set(Some((key, value.clone())));
        Some(value)
    })
}
