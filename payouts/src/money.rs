//! Money: integer minor units with an explicit ISO 4217 currency. Never a float.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::PayoutsError;

/// An ISO 4217 currency code (three uppercase letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub const USD: Currency = Currency(*b"USD");

    pub fn parse(code: &str) -> Result<Currency, PayoutsError> {
        let b = code.as_bytes();
        if b.len() == 3 && b.iter().all(u8::is_ascii_uppercase) {
            Ok(Currency([b[0], b[1], b[2]]))
        } else {
            Err(PayoutsError::Invalid(
                "currency: an ISO 4217 code of three uppercase letters, such as USD".into(),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        // Always three ASCII letters (checked in `parse`).
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }

    /// Digits after the decimal point (for display only; arithmetic is in minor units).
    pub fn exponent(&self) -> u32 {
        match self.as_str() {
            "JPY" | "KRW" | "ISK" | "CLP" | "VND" => 0,
            "BHD" | "KWD" | "OMR" | "JOD" | "TND" => 3,
            _ => 2,
        }
    }
}

impl TryFrom<String> for Currency {
    type Error = PayoutsError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Currency::parse(&s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.as_str().to_string()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount of money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Money {
        Money { minor, currency }
    }

    pub fn usd(minor: i64) -> Money {
        Money::new(minor, Currency::USD)
    }

    /// `self + other`, refusing a currency mismatch or an overflow.
    pub fn checked_add(self, other: Money) -> Result<Money, PayoutsError> {
        if self.currency != other.currency {
            return Err(PayoutsError::Invalid(format!(
                "cannot add {} to {}",
                other.currency, self.currency
            )));
        }
        self.minor
            .checked_add(other.minor)
            .map(|minor| Money::new(minor, self.currency))
            .ok_or_else(|| PayoutsError::Invalid("amount out of range".into()))
    }

    /// The share `bps` basis points of `self`, rounded down to the minor unit (the remainder
    /// stays with the platform: a patient pool never receives a fraction of a cent more than
    /// the fee gives).
    pub fn share_bps(self, bps: u32) -> Money {
        let minor = (i128::from(self.minor) * i128::from(bps.min(10_000)) / 10_000) as i64;
        Money::new(minor, self.currency)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exp = self.currency.exponent();
        if exp == 0 {
            return write!(f, "{} {}", self.minor, self.currency);
        }
        let scale = 10i64.pow(exp);
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        write!(
            f,
            "{sign}{}.{:0width$} {}",
            abs / scale as u64,
            abs % scale as u64,
            self.currency,
            width = exp as usize
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_codes() {
        assert!(Currency::parse("USD").is_ok());
        assert!(Currency::parse("usd").is_err());
        assert!(Currency::parse("US").is_err());
        assert_eq!(Money::usd(123_456).to_string(), "1234.56 USD");
        assert_eq!(Money::usd(-5).to_string(), "-0.05 USD");
        assert_eq!(
            Money::new(500, Currency::parse("JPY").expect("a code")).to_string(),
            "500 JPY"
        );
    }

    #[test]
    fn arithmetic_refuses_mixed_currencies_and_overflow() {
        let eur = Money::new(1, Currency::parse("EUR").expect("a code"));
        assert!(Money::usd(1).checked_add(eur).is_err());
        assert!(Money::usd(i64::MAX).checked_add(Money::usd(1)).is_err());
        assert_eq!(Money::usd(1_000_001).share_bps(5000), Money::usd(500_000));
    }
}
