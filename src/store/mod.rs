//! Where the stateful layers keep their state: counters, budgets, keys.
//!
//! Each stateful layer depends on a store trait of its own, with operations
//! shaped for one round trip. [`memory`] holds the in-process defaults.
//!
//! ```
//! // The memory stores are the defaults: a layer built without a store uses one.
//! ```

pub mod memory;
