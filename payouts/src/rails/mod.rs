//! Payout rails behind one trait: Stripe Connect transfers (donations to an advocacy
//! organization's connected account, direct payments to a patient's) and a gift-card provider
//! speaking a Tremendous-style REST API. Every call carries the payout's idempotency key; a call
//! whose outcome is unknown is resolved by [`Rail::lookup`], never by paying again with a new key.

pub mod giftcard;
pub mod stripe;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::money::Money;

/// What to pay, as a rail needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayoutOrder {
    pub payout_id: String,
    /// Derived from the payout row; the same on every attempt.
    pub idempotency_key: String,
    pub amount: Money,
    /// A connected account (`acct_…`) for Stripe; a product id for gift cards.
    pub destination: String,
}

/// Where a payout stands at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderState {
    /// Accepted, not yet delivered.
    Pending,
    /// Delivered: the money has left.
    Paid,
    /// Refused or failed: the money has not left (or came back).
    Failed,
}

/// The provider's record of a payout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderRecord {
    pub provider_ref: String,
    pub state: ProviderState,
    pub amount: Money,
    /// The payout id the provider holds for it (metadata / external id).
    pub payout_id: Option<String>,
    /// Where the patient redeems a gift card (a bearer link; shown only to the patient).
    pub claim_url: Option<String>,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RailError {
    /// The outcome is unknown (timeout, connection lost, a 5xx, 409 or 429): look it up.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The provider refused the request: nothing was paid.
    #[error("refused by the provider: {0}")]
    Rejected(String),
}

/// A payout rail.
#[async_trait]
pub trait Rail: Send + Sync + std::fmt::Debug {
    /// `stripe_connect` or `giftcard`.
    fn name(&self) -> &'static str;
    /// Sends the payout (with its idempotency key).
    async fn submit(&self, order: &PayoutOrder) -> Result<ProviderRecord, RailError>;
    /// The provider's record of the payout, found by the id it was sent with.
    async fn lookup(&self, order: &PayoutOrder) -> Result<Option<ProviderRecord>, RailError>;
    /// Recent payouts the provider knows of that carry a Tessera payout id (for reconciliation).
    async fn recent(&self) -> Result<Vec<ProviderRecord>, RailError>;
}

/// The configured rails by name.
#[derive(Debug, Clone, Default)]
pub struct Rails {
    rails: BTreeMap<&'static str, Arc<dyn Rail>>,
}

impl Rails {
    pub fn new() -> Rails {
        Rails::default()
    }
    pub fn with(mut self, rail: Arc<dyn Rail>) -> Rails {
        self.rails.insert(rail.name(), rail);
        self
    }
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Rail>> {
        self.rails.get(name)
    }
    pub fn names(&self) -> Vec<&'static str> {
        self.rails.keys().copied().collect()
    }
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Rail>> {
        self.rails.values()
    }
}

/// Minor units as the decimal text a JSON API expects for a major-unit amount ("25.00"),
/// without passing through a float.
pub fn decimal_text(m: Money) -> String {
    let exp = m.currency.exponent();
    if exp == 0 {
        return m.minor.to_string();
    }
    let scale = 10u64.pow(exp);
    let sign = if m.minor < 0 { "-" } else { "" };
    let a = m.minor.unsigned_abs();
    format!("{sign}{}.{:0w$}", a / scale, a % scale, w = exp as usize)
}

/// Parses a decimal amount ("25", "25.5", "25.00") into minor units, exactly.
pub fn parse_decimal(text: &str, currency: crate::Currency) -> Option<Money> {
    let exp = currency.exponent() as usize;
    let (neg, t) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > exp {
        return None;
    }
    let mut minor: i64 = whole
        .parse::<i64>()
        .ok()?
        .checked_mul(10i64.pow(exp as u32))?;
    if !frac.is_empty() {
        minor += format!("{frac:0<exp$}").parse::<i64>().ok()?;
    }
    Some(Money::new(if neg { -minor } else { minor }, currency))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Currency;

    #[test]
    fn decimal_amounts_round_trip_without_floats() {
        assert_eq!(decimal_text(Money::usd(2500)), "25.00");
        assert_eq!(decimal_text(Money::usd(7)), "0.07");
        for t in ["25.00", "25", "25.5", "0.07", "1234567.89"] {
            let m = parse_decimal(t, Currency::USD).expect("a decimal");
            assert_eq!(parse_decimal(&decimal_text(m), Currency::USD), Some(m));
        }
        assert_eq!(parse_decimal("25.5", Currency::USD), Some(Money::usd(2550)));
        assert_eq!(parse_decimal("0.001", Currency::USD), None);
        assert_eq!(parse_decimal("1e3", Currency::USD), None);
    }
}
