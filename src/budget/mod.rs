//! Spend limits and prepaid balances per key, team and org.
//!
//! ```
//! use tollgate::budget::Money;
//! assert_eq!(Money::from_usd(50).to_string(), "$50.00");
//! ```

mod ledger;
mod money;
mod period;
mod pricing;
mod spec;

pub use self::ledger::{
    BudgetStatus, Ledger, Reservation, ReservationId, ReserveOutcome, ReservePolicy, Settlement,
};
pub use self::money::{InvalidMoney, Money};
pub use self::period::{InvalidPeriod, PeriodWindow};
pub use self::pricing::{InvalidPrice, ModelPrice, Pricing, PricingError, TokenPrice};
pub use self::spec::{BudgetMode, BudgetScope, BudgetSpec, Period};
