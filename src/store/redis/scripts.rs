//! The Lua scripts, compiled into the binary, loaded into Redis whenever a
//! connection is made (so a restarted Redis does not answer a burst of
//! requests with `NOSCRIPT`), and run with `EVALSHA` (which falls back to
//! loading the script once if Redis has lost it anyway).
//!
//! Redis scripts cannot share functions, so the helpers (`common.lua`, and
//! `rate_limit.lua` / `money.lua` + `ledger.lua`) are prepended to each script.
//! An operation that another script composes (an acquire, a reservation, a
//! settlement) is a function in a file of its own, called by a short driver
//! (`acquire.lua`, `reserve.lua`, `settle_batch.lua`, `admit.lua`).

use std::sync::LazyLock;

use redis::Script;

macro_rules! scripts {
    ($($name:ident = $($file:literal)+;)+) => {
        $(
            pub(crate) static $name: LazyLock<Script> = LazyLock::new(|| {
                Script::new(concat!($(include_str!(concat!("scripts/", $file))),+))
            });
        )+
        /// The source of every script, for `SCRIPT LOAD`.
        pub(crate) const SOURCES: &[&str] = &[
            $(concat!($(include_str!(concat!("scripts/", $file))),+)),+
        ];
    };
}

scripts! {
    RATE_LIMIT_ACQUIRE = "common.lua" "rate_limit.lua" "rate_limit_acquire.lua" "acquire.lua";
    LEDGER_RESERVE = "common.lua" "money.lua" "ledger.lua" "ledger_reserve.lua" "reserve.lua";
    ADMIT = "common.lua" "rate_limit.lua" "money.lua" "ledger.lua"
        "rate_limit_acquire.lua" "ledger_reserve.lua" "admit.lua";
    SETTLE_BATCH = "common.lua" "rate_limit.lua" "money.lua" "ledger.lua"
        "rate_limit_settle.lua" "ledger_settle.lua" "ledger_release.lua" "settle_batch.lua";
    LEDGER_TOP_UP = "common.lua" "money.lua" "ledger.lua" "ledger_top_up.lua";
    LEDGER_READ = "common.lua" "money.lua" "ledger.lua" "ledger_read.lua";
    LEDGER_RESET = "common.lua" "money.lua" "ledger.lua" "ledger_reset.lua";
    LEDGER_SPEND = "ledger_spend.lua";
    LEDGER_TENANTS = "ledger_tenants.lua";
    KEY_PUT = "key_put.lua";
    KEY_DELETE = "key_delete.lua";
    KEY_LIST = "key_list.lua";
    TENANT_PUT = "tenant_put.lua";
    TENANT_DELETE = "tenant_delete.lua";
}
