//! Rate limits and budgets admitted together: one store call per request.
//!
//! TODO docs
mod future;
mod layer;
mod service;
mod store;

pub use self::future::ResponseFuture;
pub use self::layer::AdmissionLayer;
pub use self::service::{Admission, ResponseBody};
pub use self::store::{AdmissionStore, InTurn, JointAdmission, Reserve};
