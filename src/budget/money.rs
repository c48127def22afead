//! Money as an integer: nano-USD.

use std::fmt;
use std::str::FromStr;

/// An amount of US dollars, exact to 1e-9 USD (one nano-dollar), as an
/// integer. Stores and ledgers never hold money as `f64`.
///
/// ```
/// use tollgate::budget::Money;
///
/// let limit: Money = "50".parse().unwrap();
/// assert_eq!(limit, Money::from_nanos(50_000_000_000));
/// assert_eq!(limit.to_string(), "$50.00");
/// assert_eq!(Money::from_nanos(1_234).to_string(), "$0.000001234");
/// assert_eq!("0.000000001".parse::<Money>().unwrap(), Money::from_nanos(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(i64);

/// Nano-dollars per dollar.
const NANOS_PER_USD: i64 = 1_000_000_000;

impl Money {
    /// Zero dollars.
    pub const ZERO: Money = Money(0);

    /// From nano-dollars.
    pub const fn from_nanos(nanos: i64) -> Money {
        Money(nanos)
    }

    /// Whole dollars.
    pub const fn from_usd(usd: i64) -> Money {
        Money(usd.saturating_mul(NANOS_PER_USD))
    }

    /// From a dollar amount given as a float (configuration files), rounded to
    /// the nearest nano-dollar. Non-finite values become zero.
    pub fn from_usd_f64(usd: f64) -> Money {
        if !usd.is_finite() {
            return Money::ZERO;
        }
        let nanos = (usd * NANOS_PER_USD as f64).round();
        Money(nanos.clamp(i64::MIN as f64, i64::MAX as f64) as i64)
    }

    /// The amount in nano-dollars.
    pub const fn nanos(self) -> i64 {
        self.0
    }

    /// The amount in dollars, for display and logs only.
    pub fn as_usd_f64(self) -> f64 {
        self.0 as f64 / NANOS_PER_USD as f64
    }

    /// `self + other`, saturating.
    pub const fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    /// `self - other`, saturating.
    pub const fn saturating_sub(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }

    /// `self + other`, or `None` on overflow.
    pub const fn checked_add(self, other: Money) -> Option<Money> {
        match self.0.checked_add(other.0) {
            Some(n) => Some(Money(n)),
            None => None,
        }
    }

    /// The smaller of two amounts.
    pub const fn min(self, other: Money) -> Money {
        if self.0 <= other.0 { self } else { other }
    }

    /// The larger of two amounts.
    pub const fn max(self, other: Money) -> Money {
        if self.0 >= other.0 { self } else { other }
    }

    /// Whether the amount is above zero.
    pub const fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// The amount as a plain decimal, without the `$`: `50.00`, `-0.25`,
    /// `0.000001234`. This is how the `x-budget-*-usd` headers carry it.
    ///
    /// ```
    /// use tollgate::budget::Money;
    /// assert_eq!(Money::from_usd(50).to_decimal(), "50.00");
    /// assert_eq!(Money::from_nanos(-250_000_000).to_decimal(), "-0.25");
    /// ```
    pub fn to_decimal(self) -> String {
        self.decimal().as_str().to_owned()
    }

    /// The digits of [`to_decimal`](Money::to_decimal) in a stack buffer:
    /// what the budget headers are made of, without formatting machinery.
    pub(crate) fn decimal(self) -> Decimal {
        let mut out = Decimal {
            buf: [0; Decimal::CAPACITY],
            len: 0,
        };
        if self.0 < 0 {
            out.push(b'-');
        }
        let abs = self.0.unsigned_abs();
        let whole = abs / NANOS_PER_USD as u64;
        let mut frac = abs % NANOS_PER_USD as u64;
        // Whole dollars: at most 10 digits (i64::MAX nanos is $9,223,372,036).
        let mut digits = [0u8; 20];
        let n = crate::header_values::write_u64(&mut digits, whole);
        for &d in &digits[digits.len() - n..] {
            out.push(d);
        }
        out.push(b'.');
        // Nine decimals, trailing zeros dropped down to two.
        let mut places = 9;
        while places > 2 && frac.is_multiple_of(10) {
            frac /= 10;
            places -= 1;
        }
        let at = out.len as usize;
        for i in (0..places).rev() {
            out.buf[at + i] = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        out.len += places as u8;
        out
    }
}

/// A dollar amount's decimal digits (`-12.50`), on the stack.
pub(crate) struct Decimal {
    buf: [u8; Decimal::CAPACITY],
    len: u8,
}

impl Decimal {
    /// Sign, 10 whole digits at most, the point, 9 decimals.
    const CAPACITY: usize = 24;

    fn push(&mut self, byte: u8) {
        self.buf[self.len as usize] = byte;
        self.len += 1;
    }

    /// The digits as bytes (ASCII).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// The digits as text.
    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits, `-` and `.` are ever pushed.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl std::ops::Add for Money {
    type Output = Money;

    /// Saturating addition: money never wraps around.
    fn add(self, other: Money) -> Money {
        self.saturating_add(other)
    }
}

impl std::ops::Sub for Money {
    type Output = Money;

    /// Saturating subtraction: money never wraps around.
    fn sub(self, other: Money) -> Money {
        self.saturating_sub(other)
    }
}

impl fmt::Display for Money {
    /// `$50.00`; more decimals only when the amount has them (`$0.000001234`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let decimal = self.decimal();
        let digits = decimal.as_str();
        match digits.strip_prefix('-') {
            Some(abs) => write!(f, "-${abs}"),
            None => write!(f, "${digits}"),
        }
    }
}

/// A dollar amount that [`Money::from_str`] cannot read.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "invalid dollar amount {0:?}: expected a decimal number like 50 or 0.25, at most 9 decimals"
)]
pub struct InvalidMoney(String);

impl FromStr for Money {
    type Err = InvalidMoney;

    /// Parses `50`, `50.25`, `$0.000000001`, `-3.5` exactly (no float).
    fn from_str(s: &str) -> Result<Money, InvalidMoney> {
        let err = || InvalidMoney(s.to_owned());
        let t = s.trim();
        let (neg, t) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let nanos = parse_fixed(t, 9)
            .and_then(|n| i64::try_from(n).ok())
            .ok_or_else(err)?;
        Ok(Money(if neg { -nanos } else { nanos }))
    }
}

/// `50`, `$0.25`, `.5`: a non-negative decimal of at most `places`
/// decimals, exactly, as an integer count of `10^-places`; `None` if it is
/// not one, or too large. Money's and token prices' one reader.
pub(crate) fn parse_fixed(text: &str, places: usize) -> Option<u64> {
    let text = text.strip_prefix('$').unwrap_or(text);
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && frac.is_empty()
        || frac.len() > places
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac: u64 = format!("{frac:0<places$}").parse().ok()?;
    whole
        .checked_mul(10u64.pow(places as u32))?
        .checked_add(frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The formatting `decimal` replaced, kept as the reference.
    fn reference(m: Money) -> String {
        let sign = if m.0 < 0 { "-" } else { "" };
        let abs = m.0.unsigned_abs();
        let whole = abs / NANOS_PER_USD as u64;
        let frac = abs % NANOS_PER_USD as u64;
        let mut digits = format!("{frac:09}");
        while digits.len() > 2 && digits.ends_with('0') {
            digits.pop();
        }
        format!("{sign}{whole}.{digits}")
    }

    #[test]
    fn decimal_matches_the_reference() {
        let mut cases = vec![
            0,
            1,
            -1,
            10,
            100,
            1_000_000_000,
            -250_000_000,
            i64::MAX,
            i64::MIN,
        ];
        cases.extend((0..63).map(|b| 1i64 << b));
        cases.extend((0..63).map(|b| -(1i64 << b) + 7));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push(x as i64 >> (x % 60));
        }
        for nanos in cases {
            let m = Money::from_nanos(nanos);
            assert_eq!(m.to_decimal(), reference(m), "{nanos}");
            assert_eq!(m.to_string().replacen('$', "", 1), reference(m), "{nanos}");
        }
    }
}
