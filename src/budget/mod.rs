//! Spend limits and prepaid balances per key, team and org.
//!
//! ```
//! use tollgate::budget::Money;
//! assert_eq!(Money::from_usd(50).to_string(), "$50.00");
//! ```

mod money;
mod spec;

pub use self::money::{InvalidMoney, Money};
pub use self::spec::{BudgetMode, BudgetScope, BudgetSpec, Period};
