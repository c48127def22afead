//! Reading the ledger scripts' replies: every value checked, money exact.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use crate::budget::{
    BudgetMode, BudgetScope, BudgetSpec, BudgetStatus, Money, NO_BUDGET, PeriodWindow, Reservation,
    ReservationId, ReserveOutcome, SpendTotals,
};
use crate::store::StoreError;

pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("ledger script returned {what}"))
}

/// A string reply's text.
fn text(value: &Value) -> Result<&str, StoreError> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).map_err(|_| corrupt("non-UTF-8")),
        Value::SimpleString(s) => Ok(s),
        _ => Err(corrupt("an unexpected value")),
    }
}

pub(super) fn int(value: &Value) -> Result<i64, StoreError> {
    match value {
        Value::Int(n) => Ok(*n),
        other => text(other)?.parse().map_err(|_| corrupt("a non-integer")),
    }
}

pub(super) fn money(value: &Value) -> Result<Money, StoreError> {
    let digits = match value {
        Value::Int(n) => return Ok(Money::from_nanos(*n)),
        Value::BulkString(_) | Value::SimpleString(_) => text(value)?,
        _ => return Err(corrupt("an unexpected amount")),
    };
    // Sums can leave i64 in Lua (exact there); they saturate here.
    let nanos: i128 = digits.parse().map_err(|_| corrupt("a malformed amount"))?;
    Ok(Money::from_nanos(
        nanos.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
    ))
}

pub(super) fn micros(value: &Value) -> Result<Duration, StoreError> {
    Ok(Duration::from_micros(
        u64::try_from(int(value)?).unwrap_or(0),
    ))
}

/// A status: mode, limit, spent, reserved, window start, window end (-1: none).
pub(super) fn status(values: &[Value]) -> Result<BudgetStatus, StoreError> {
    let [mode, limit, spent, reserved, start, end] = values else {
        return Err(corrupt("a malformed status"));
    };
    let mode = match mode {
        Value::BulkString(b) if b.as_slice() == b"p" => BudgetMode::Balance,
        Value::BulkString(b) if b.as_slice() == b"b" => BudgetMode::Budget,
        _ => return Err(corrupt("an unknown budget mode")),
    };
    Ok(BudgetStatus {
        mode,
        limit: money(limit)?,
        spent: money(spent)?,
        reserved: money(reserved)?,
        period: PeriodWindow {
            start: micros(start)?,
            end: (int(end)? >= 0).then(|| micros(end)).transpose()?,
        },
    })
}

pub(super) fn statuses(values: &[Value], n: usize) -> Result<Vec<BudgetStatus>, StoreError> {
    if values.len() != 6 * n {
        return Err(corrupt("the wrong number of statuses"));
    }
    values.chunks_exact(6).map(status).collect()
}

/// Reads the reserve script's reply; `of` maps each budget passed to its
/// distinct budget (the script numbers distinct budgets from 1).
pub(in crate::store::redis) fn reserve_outcome(
    reply: &[Value],
    of: &[usize],
    budgets: Arc<[BudgetSpec]>,
) -> Result<ReserveOutcome, StoreError> {
    let index = |v: &Value| -> Result<usize, StoreError> {
        let i = usize::try_from(int(v)?).map_err(|_| corrupt("a bad index"))?;
        // The first budget passed that maps to distinct budget `i`.
        of.iter()
            .position(|&d| d + 1 == i)
            .ok_or_else(|| corrupt("a bad index"))
    };
    match reply {
        [flag, i, rest @ ..] if int(flag)? == 0 => Ok(ReserveOutcome::Denied {
            index: index(i)?,
            status: status(rest)?,
        }),
        [_, id, held, tightest, rest @ ..] => {
            let id = u64::try_from(int(id)?).map_err(|_| corrupt("a bad id"))?;
            let (index, status) = if int(tightest)? == 0 {
                (0, NO_BUDGET)
            } else {
                (index(tightest)?, status(rest)?)
            };
            Ok(ReserveOutcome::Reserved {
                reservation: Reservation::new(ReservationId(id), money(held)?, budgets),
                index,
                status,
            })
        }
        _ => Err(corrupt("a malformed reservation")),
    }
}

/// One row of the spend script's reply.
pub(super) fn spend_rows(
    reply: &[Value],
) -> Result<Vec<(BudgetScope, String, i64, SpendTotals)>, StoreError> {
    let count = |v: &Value| int(v).map(|n| u64::try_from(n).unwrap_or(0));
    reply
        .chunks(8)
        .map(|row| {
            let [
                scope,
                model,
                day,
                cost,
                prompt,
                completion,
                cached,
                requests,
            ] = row
            else {
                return Err(corrupt("a malformed spend row"));
            };
            let scope = BudgetScope::parse(text(scope)?).ok_or_else(|| corrupt("a bad scope"))?;
            Ok((
                scope,
                text(model)?.to_owned(),
                int(day)?,
                SpendTotals {
                    cost: money(cost)?,
                    prompt_tokens: count(prompt)?,
                    completion_tokens: count(completion)?,
                    cached_tokens: count(cached)?,
                    requests: count(requests)?,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_exactly_and_saturate() {
        let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        assert_eq!(
            money(&s("-1500000000")).unwrap(),
            Money::from_nanos(-1_500_000_000)
        );
        assert_eq!(
            money(&s("9223372036854775807")).unwrap(),
            Money::from_nanos(i64::MAX)
        );
        assert_eq!(
            money(&s("99999999999999999999")).unwrap(),
            Money::from_nanos(i64::MAX)
        );
        assert!(money(&s("1.5")).is_err());
    }
}
