//! The decision of [`Admission`]: the rate limit's plan and the budget's
//! price, one store call, and the two layers' own steps to read its answer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::future::ResponseFuture;
use super::store::{AdmissionStore, JointAdmission, Reserve};
use crate::budget::Ledger;
use crate::budget::ReserveOutcome;
use crate::budget::layer::Shared as BudgetShared;
use crate::budget::service::{self as budget, Step};
use crate::rate_limit::future::Admitted as RateLimitAdmitted;
use crate::rate_limit::service::{self as rate_limit, Decision, Plan, Planned, with_charges};
use crate::rate_limit::{Acquire, ExtractLimitKey, PrincipalKey};
use crate::request::FromBytes;
use crate::store::memory::MemoryLedger;
use crate::store::{StoreError, StoreFuture};
use crate::{ApiError, BoxError, Principal, RequestMeta};

/// What every clone of an [`Admission`] service shares.
pub(crate) struct Shared<St, K, L> {
    pub(crate) rate_limit: rate_limit::Shared<St, K>,
    pub(crate) budget: Arc<BudgetShared<L>>,
    pub(crate) store: Arc<dyn AdmissionStore>,
}

/// Rate limits and budgets admitted together; built by
/// [`AdmissionLayer`](super::AdmissionLayer).
pub struct Admission<S, St, K = PrincipalKey, L = MemoryLedger> {
    inner: S,
    shared: Arc<Shared<St, K, L>>,
}

impl<S, St, K, L> Admission<S, St, K, L> {
    pub(crate) fn from_parts(inner: S, shared: Arc<Shared<St, K, L>>) -> Self {
        Admission { inner, shared }
    }

    crate::macros::define_inner_service_accessors!();
}

crate::macros::impl_clone!(Admission<S: Clone, St, K, L> { inner, shared });

impl<S: fmt::Debug, St, K, L> fmt::Debug for Admission<S, St, K, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The response body: the two layers' stacked (the rate limit's around the
/// budget's).
pub type ResponseBody<B> =
    crate::rate_limit::ResponseBody<crate::body::ResponseBody<crate::usage::UsageBody<B>>>;

impl<S, St, K, L, ReqBody, ResBody> Service<Request<ReqBody>> for Admission<S, St, K, L>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S::Error: 'static,
    St: Send + Sync + 'static,
    K: ExtractLimitKey<ReqBody>,
    L: Ledger,
    ReqBody: Body<Data = Bytes> + FromBytes + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, L>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The readied service goes with the request; its clone stays.
        let service = crate::macros::take_ready(&mut self.inner);
        let shared = &self.shared;
        if req.extensions().get::<RequestMeta>().is_none() {
            let future = read_then_decide(shared.clone(), req);
            return ResponseFuture::deciding(Box::pin(future), service);
        }
        // Most requests are decided here, without a future of their own:
        // the body was read further out, and a store in memory answers at
        // once.
        match advance(shared, start(shared, req)) {
            Next::Done(decided) => ResponseFuture::decided(decided, service),
            waiting => {
                let future = drive(shared.clone(), waiting);
                ResponseFuture::deciding(Box::pin(future), service)
            }
        }
    }
}

/// What was decided on a request.
#[allow(
    clippy::large_enum_variant,
    reason = "made once and matched at once; boxing would add the allocation it saves"
)]
pub(crate) enum Decided<B, L: Ledger> {
    /// Admitted: the rate limit's admission (none when it does not limit
    /// the request) and the budget's.
    Call(Request<B>, Option<RateLimitAdmitted>, budget::Admitted<L>),
    /// Refused by the rate limit: the error and the limit headers.
    RateLimited(ApiError, HeaderMap),
    /// Refused by the budget; the rate limit's admission writes its headers
    /// (and settles, when it was charged).
    OverBudget(budget::Rejected, Option<RateLimitAdmitted>),
}

pub(crate) type DecidedFuture<B, L> = Pin<Box<dyn Future<Output = Decided<B, L>> + Send>>;

/// Where a decision stands.
#[allow(
    clippy::large_enum_variant,
    reason = "made once and matched at once; boxing would add the allocation it saves"
)]
enum Next<B, L: Ledger> {
    Done(Decided<B, L>),
    /// Waiting for the store's joint answer.
    Joint(Joint<B, L>),
    /// The rate-limit store failed and the rate limit fails open: the
    /// budget's reservation alone, as `BudgetLayer` would make it.
    Alone(Alone<B, L>),
}

struct Joint<B, L: Ledger> {
    req: Request<B>,
    plan: Option<Plan>,
    step: Step<L>,
    answer: StoreFuture<JointAdmission>,
}

struct Alone<B, L: Ledger> {
    req: Request<B>,
    pending: budget::Pending<L>,
    answer: StoreFuture<ReserveOutcome>,
}

/// Reads the request's `RequestMeta` (up to the rate limit's size limit
/// when it needs the body, else the budget's), then decides.
async fn read_then_decide<St, K, L, B>(
    shared: Arc<Shared<St, K, L>>,
    req: Request<B>,
) -> Decided<B, L>
where
    St: Send + Sync + 'static,
    K: ExtractLimitKey<B>,
    L: Ledger,
    B: Body<Data = Bytes> + FromBytes + Send + 'static,
    B::Error: Into<BoxError>,
{
    let for_rate_limit = matches!(
        rate_limit::plan(&shared.rate_limit, &req, false),
        Planned::ReadMeta
    );
    let limit = if for_rate_limit {
        shared.rate_limit.config.max_request_body_bytes
    } else {
        shared.budget.max_request_body_bytes
    };
    match RequestMeta::read(req, limit).await {
        Ok(req) => drive(shared.clone(), start(&shared, req)).await,
        Err(error) if for_rate_limit => Decided::RateLimited(error, HeaderMap::new()),
        Err(error) => Decided::OverBudget(error.into(), None),
    }
}

/// Plans and prices a request whose `RequestMeta` is in its extensions,
/// and asks the store.
fn start<St, K, L, B>(shared: &Shared<St, K, L>, req: Request<B>) -> Next<B, L>
where
    K: ExtractLimitKey<B>,
    L: Ledger,
{
    let plan = match rate_limit::plan(&shared.rate_limit, &req, true) {
        Planned::Plan(plan) => Some(plan),
        Planned::Reject(error) => return Next::Done(Decided::RateLimited(error, HeaderMap::new())),
        Planned::Pass | Planned::ReadMeta => None,
    };
    let Some(meta) = req.extensions().get::<RequestMeta>() else {
        return Next::Done(Decided::RateLimited(ApiError::internal(), HeaderMap::new()));
    };
    let principal = req.extensions().get::<Principal>();
    let step = match budget::prepare(&shared.budget, meta, principal, req.headers()) {
        Ok(step) => step,
        // Refused before any store is asked: nothing counted.
        Err(rejected) => return Next::Done(Decided::OverBudget(rejected, None)),
    };
    let step = match (&plan, step) {
        (None, Step::Admit(admitted)) => return Next::Done(Decided::Call(req, None, admitted)),
        (_, step) => step,
    };
    let reserve = match &step {
        Step::Reserve(pending) => Some(Reserve {
            budgets: &pending.budgets,
            amount: pending.worst_case,
            policy: shared.budget.policy,
            when_limited: shared.rate_limit.config.shadow,
        }),
        Step::Admit(_) => None,
    };
    let answer = match &plan {
        Some(plan) => with_charges(plan, |acquire| {
            shared.store.admit(acquire, reserve.as_ref())
        }),
        None => shared
            .store
            .admit(&Acquire { scopes: &[] }, reserve.as_ref()),
    };
    Next::Joint(Joint {
        req,
        plan,
        step,
        answer,
    })
}

/// Takes every answer that is ready.
fn advance<St, K, L: Ledger, B>(shared: &Shared<St, K, L>, mut next: Next<B, L>) -> Next<B, L> {
    loop {
        next = match next {
            Next::Joint(mut joint) => match joint.answer.take_ready() {
                Some(result) => finish(shared, joint, result),
                None => return Next::Joint(joint),
            },
            Next::Alone(mut alone) => match alone.answer.take_ready() {
                Some(result) => Next::Done(alone_decided(shared, alone, result)),
                None => return Next::Alone(alone),
            },
            done => return done,
        };
    }
}

/// Waits for every answer.
async fn drive<St, K, L: Ledger, B>(
    shared: Arc<Shared<St, K, L>>,
    mut next: Next<B, L>,
) -> Decided<B, L> {
    loop {
        next = match next {
            Next::Done(decided) => return decided,
            Next::Joint(mut joint) => {
                let result = (&mut joint.answer).await;
                finish(&shared, joint, result)
            }
            Next::Alone(mut alone) => {
                let result = (&mut alone.answer).await;
                Next::Done(alone_decided(&shared, alone, result))
            }
        };
    }
}

/// Reads the store's joint answer with each layer's own steps.
fn finish<St, K, L: Ledger, B>(
    shared: &Shared<St, K, L>,
    joint: Joint<B, L>,
    result: Result<JointAdmission, StoreError>,
) -> Next<B, L> {
    let Joint {
        req, plan, step, ..
    } = joint;
    let (admission, reservation) = match result {
        Ok(joint) => (Ok(joint.admission), joint.reservation),
        Err(error) if plan.is_none() => {
            // Only the budgets were asked: their failure policy decides.
            return Next::Done(over_budget(shared, req, None, step, Some(Err(error))));
        }
        Err(error) => (Err(error), None),
    };
    let failed = admission.is_err();
    let decision = match plan {
        Some(plan) => rate_limit::judge(&shared.rate_limit, admission, plan),
        None => Decision::Pass,
    };
    if let Decision::Refuse(error, headers) = decision {
        return Next::Done(Decided::RateLimited(error, headers));
    }
    if failed {
        // The rate limit fails open: the budget goes on alone.
        return match step {
            Step::Admit(admitted) => Next::Done(Decided::Call(req, None, admitted)),
            Step::Reserve(pending) => {
                let answer = pending.reserve(&shared.budget);
                Next::Alone(Alone {
                    req,
                    pending,
                    answer,
                })
            }
        };
    }
    Next::Done(over_budget(shared, req, Some(decision), step, reservation))
}

/// The budget's decision on the ledger's answer `reservation`, after the
/// rate limit's `decision` admitted the request (or did not limit it).
fn over_budget<St, K, L: Ledger, B>(
    shared: &Shared<St, K, L>,
    req: Request<B>,
    decision: Option<Decision>,
    step: Step<L>,
    reservation: Option<Result<ReserveOutcome, StoreError>>,
) -> Decided<B, L> {
    let pending = match step {
        Step::Admit(admitted) => {
            let charged = charged(shared, decision);
            return Decided::Call(req, charged, admitted);
        }
        Step::Reserve(pending) => pending,
    };
    let result = reservation.unwrap_or_else(|| {
        Err(StoreError::Corrupt(
            "the admission store did not ask the budgets".into(),
        ))
    });
    // Denied: the store charged the limits nothing.
    let denied = matches!(result, Ok(ReserveOutcome::Denied { .. }));
    match budget::conclude(&shared.budget, pending, result) {
        Ok(admitted) => Decided::Call(req, charged(shared, decision), admitted),
        Err(rejected) if denied => Decided::OverBudget(rejected, uncharged(decision)),
        // The limits were charged (the ledger failed, the budget fails
        // closed): settled on the refusal as the two layers stacked do.
        Err(rejected) => Decided::OverBudget(rejected, charged(shared, decision)),
    }
}

/// The budget alone decided, after the rate limit failed open.
fn alone_decided<St, K, L: Ledger, B>(
    shared: &Shared<St, K, L>,
    alone: Alone<B, L>,
    result: Result<ReserveOutcome, StoreError>,
) -> Decided<B, L> {
    match budget::conclude(&shared.budget, alone.pending, result) {
        Ok(admitted) => Decided::Call(alone.req, None, admitted),
        Err(rejected) => Decided::OverBudget(rejected, None),
    }
}

/// The rate limit's admission of a request it charged.
fn charged<St, K, L>(
    shared: &Shared<St, K, L>,
    decision: Option<Decision>,
) -> Option<RateLimitAdmitted> {
    match decision? {
        Decision::Admit(headers, plan) => {
            Some(rate_limit::admit(&shared.rate_limit, headers, plan))
        }
        Decision::Shadow(admitted) => Some(admitted),
        Decision::Pass | Decision::Refuse(..) => None,
    }
}

/// The rate limit's admission of a request the store did not charge.
fn uncharged(decision: Option<Decision>) -> Option<RateLimitAdmitted> {
    match decision? {
        Decision::Admit(headers, plan) => Some(rate_limit::uncharged(headers, plan)),
        Decision::Shadow(admitted) => Some(admitted),
        Decision::Pass | Decision::Refuse(..) => None,
    }
}

/// The response to a refused request.
pub(crate) fn refusal<RB, B: Body<Data = Bytes>, L: Ledger>(
    decided: Decided<RB, L>,
) -> Option<Response<ResponseBody<B>>> {
    match decided {
        Decided::RateLimited(error, headers) => Some(rate_limit::rejection(error, headers)),
        Decided::OverBudget(rejected, admitted) => Some(crate::rate_limit::future::respond(
            admitted,
            crate::budget::future::rejection(rejected),
        )),
        Decided::Call(..) => None,
    }
}
