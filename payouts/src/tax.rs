//! Information-reporting thresholds, as a dated table. Payments to a patient in a calendar
//! year that reach the threshold in force on the payment date need a W-9 on file before they
//! are made (US Form 1099 reporting). $600 for payments through 31 December 2025; $2,000 for
//! payments made from 1 January 2026. Only USD amounts are subject to the table; other
//! currencies have no threshold here (add rows when a jurisdiction needs one).

use chrono::{Datelike, NaiveDate};

use crate::money::{Currency, Money};

/// (first day in force, currency, threshold in minor units)
pub const THRESHOLDS: &[(&str, &str, i64)] = &[
    ("1900-01-01", "USD", 60_000),
    ("2026-01-01", "USD", 200_000),
];

/// The threshold in force on `date` for payments in `currency`, if any.
pub fn reporting_threshold(date: NaiveDate, currency: Currency) -> Option<Money> {
    THRESHOLDS
        .iter()
        .filter(|(_, c, _)| *c == currency.as_str())
        .filter_map(|(from, _, minor)| {
            NaiveDate::parse_from_str(from, "%Y-%m-%d")
                .ok()
                .map(|d| (d, *minor))
        })
        .filter(|(from, _)| *from <= date)
        .max_by_key(|(from, _)| *from)
        .map(|(_, minor)| Money::new(minor, currency))
}

/// Whether a payment of `amount` on `date`, after `paid_this_year` already paid (or in
/// progress) in the same calendar year, needs a W-9 on file.
pub fn needs_form(date: NaiveDate, paid_this_year: i64, amount: Money) -> bool {
    reporting_threshold(date, amount.currency)
        .is_some_and(|t| paid_this_year.saturating_add(amount.minor) >= t.minor)
}

/// The calendar year a payment on `date` counts in.
pub fn tax_year(date: NaiveDate) -> i32 {
    date.year()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("a date")
    }

    #[test]
    fn the_threshold_follows_the_payment_date() {
        assert_eq!(
            reporting_threshold(d("2025-12-31"), Currency::USD),
            Some(Money::usd(60_000))
        );
        assert_eq!(
            reporting_threshold(d("2026-01-01"), Currency::USD),
            Some(Money::usd(200_000))
        );
        assert_eq!(
            reporting_threshold(d("2026-06-01"), Currency::parse("EUR").expect("a code")),
            None
        );
    }

    #[test]
    fn crossing_the_threshold_needs_a_form() {
        assert!(!needs_form(d("2026-03-01"), 150_000, Money::usd(49_999)));
        assert!(needs_form(d("2026-03-01"), 150_000, Money::usd(50_000)));
        // The same $700 needed a form in 2025.
        assert!(needs_form(d("2025-03-01"), 0, Money::usd(70_000)));
        assert!(!needs_form(d("2026-03-01"), 0, Money::usd(70_000)));
    }
}
