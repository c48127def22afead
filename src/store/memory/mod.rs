//! In-process stores: sharded, bounded, driven by an injectable clock.

mod ledger;

pub use self::ledger::MemoryLedger;
