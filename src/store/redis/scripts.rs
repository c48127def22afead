//! The Lua scripts, compiled into the binary and loaded into Redis on first
//! use (`EVALSHA`, falling back to `SCRIPT LOAD` once after a restart).
//!
//! Redis scripts cannot share functions, so the helpers (`common.lua`, and
//! `gcra.lua` / `money.lua` + `ledger.lua`) are prepended to each script.

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($name:ident, $($file:literal),+) => {
        pub(crate) static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(concat!($(include_str!(concat!("scripts/", $file))),+)));
    };
}

script!(RATE_LIMIT_ACQUIRE, "common.lua", "gcra.lua", "rate_limit_acquire.lua");
script!(RATE_LIMIT_SETTLE, "common.lua", "gcra.lua", "rate_limit_settle.lua");
script!(LEDGER_RESERVE, "common.lua", "money.lua", "ledger.lua", "ledger_reserve.lua");
script!(LEDGER_SETTLE, "common.lua", "money.lua", "ledger.lua", "ledger_settle.lua");
script!(LEDGER_RELEASE, "common.lua", "money.lua", "ledger.lua", "ledger_release.lua");
script!(LEDGER_TOP_UP, "common.lua", "money.lua", "ledger.lua", "ledger_top_up.lua");
script!(LEDGER_READ, "common.lua", "money.lua", "ledger.lua", "ledger_read.lua");
script!(KEY_PUT, "key_put.lua");
script!(KEY_FLAG, "key_flag.lua");
script!(KEY_REMOVE, "key_remove.lua");
