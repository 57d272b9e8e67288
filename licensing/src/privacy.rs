//! Differential privacy terms of a license and the accountant of its budget.
//!
//! A license with [`PrivacyTerms`] answers aggregates with noise under zero-concentrated
//! differential privacy (zCDP, Bun & Steinke 2016). Each answer costs some ρ; zCDP composes by
//! adding ρ, so the license's privacy loss over its term is the sum of what its answers cost,
//! and the store refuses an answer that would take the sum past [`PrivacyTerms::rho_budget`]
//! (atomically: two concurrent answers cannot overspend). ρ is kept as an integer number of
//! nano-ρ ([`Rho`]), rounded up when charged, so that composition is exact integer addition
//! and no rounding ever undercharges.
//!
//! zCDP converts to (ε, δ)-DP for any δ > 0 by ε = ρ + 2·√(ρ·ln(1/δ)) (Bun & Steinke,
//! Proposition 1.3), shown beside ρ because analysts and privacy officers read ε. Group keys
//! released above a noisy threshold add a δ of their own per answer ([`PrivacyTerms::delta`]);
//! the accountant adds those up too.

use serde::{Deserialize, Serialize};

/// What a license's signed terms say about differential privacy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PrivacyTerms {
    /// The license's total privacy loss over its term, as zCDP ρ.
    pub rho_budget: f64,
    /// What one answer costs by default, split evenly among its noisy statistics. An analyst
    /// may ask for more or less per query (query option `rho`), up to `max_rho_per_query`.
    pub rho_per_query: f64,
    /// The most one answer may cost.
    pub max_rho_per_query: f64,
    /// Per answer with group keys: the probability that a group held by one person shows at
    /// all (the noisy threshold is set from it). Also the δ the budget's ε is quoted at.
    pub delta: f64,
    /// Contribution bounds, as Tumult Analytics' MaxGroupsPerID and MaxRowsPerID: by default a
    /// person's rows reach at most this many groups of one answer ...
    pub max_groups_per_person: u32,
    /// ... and at most this many rows of each group. Larger bounds let more of a person's rows
    /// count and make the noise proportionally larger; an analyst may set both per query.
    pub max_rows_per_person: u32,
}

impl Default for PrivacyTerms {
    /// ρ = 1 over the term, 0.05 per answer (twenty answers; a count of persons alone in an
    /// answer gets noise of σ = 1/√(2·0.05) ≈ 3.2 persons), δ = 1e-7, one group and one row
    /// per person.
    fn default() -> Self {
        PrivacyTerms {
            rho_budget: 1.0,
            rho_per_query: 0.05,
            max_rho_per_query: 0.25,
            delta: 1e-7,
            max_groups_per_person: 1,
            max_rows_per_person: 1,
        }
    }
}

impl PrivacyTerms {
    /// Checks what the types cannot. The error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.rho_budget) {
            return Err("rho_budget: a positive number (zCDP ρ over the term, e.g. 1.0)".into());
        }
        if !positive(self.rho_per_query) || self.rho_per_query > self.max_rho_per_query {
            return Err("rho_per_query: a positive number no larger than max_rho_per_query".into());
        }
        if !positive(self.max_rho_per_query) || self.max_rho_per_query > self.rho_budget {
            return Err("max_rho_per_query: a positive number no larger than rho_budget".into());
        }
        if !(positive(self.delta) && self.delta <= 1e-3) {
            return Err("delta: a probability above 0 and at most 1e-3 (1e-7 is usual)".into());
        }
        if self.max_groups_per_person == 0 || self.max_rows_per_person == 0 {
            return Err("max_groups_per_person and max_rows_per_person: at least 1".into());
        }
        Ok(())
    }

    /// The budget in the accountant's units.
    pub fn budget(&self) -> Rho {
        Rho::from_f64_down(self.rho_budget)
    }
}

/// An amount of zCDP ρ in nano-ρ (10⁻⁹): what the accountant adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rho(pub u64);

const NANO: f64 = 1e9;

impl Rho {
    /// What an answer of `rho` is charged: rounded up to the next nano-ρ, except that a value
    /// within 10⁻⁶ nano-ρ of a whole number (0.05 is 50000000.000000007 nano-ρ in binary
    /// floating point) is that number, so that float representation error does not charge a
    /// whole extra unit.
    pub fn charge(rho: f64) -> Rho {
        if !rho.is_finite() || rho < 0.0 {
            return Rho(u64::MAX);
        }
        let nano = rho * NANO;
        let nearest = nano.round();
        if (nano - nearest).abs() < 1e-6 {
            Rho(nearest as u64)
        } else {
            Rho(nano.ceil() as u64)
        }
    }

    /// A budget: rounded down, so rounding never grants more.
    pub fn from_f64_down(rho: f64) -> Rho {
        if !rho.is_finite() || rho < 0.0 {
            return Rho(0);
        }
        Rho((rho * NANO).floor() as u64)
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / NANO
    }
}

/// ε of (ε, δ)-DP implied by ρ-zCDP: ρ + 2·√(ρ·ln(1/δ)).
pub fn epsilon(rho: f64, delta: f64) -> f64 {
    if rho <= 0.0 {
        return 0.0;
    }
    rho + 2.0 * (rho * (1.0 / delta).ln()).sqrt()
}

/// A license's budget as the analyst sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BudgetView {
    /// zCDP ρ over the term.
    pub rho_budget: f64,
    pub rho_spent: f64,
    pub rho_remaining: f64,
    /// Noisy answers released (repeats of a cached answer are not counted: they cost nothing).
    pub answers: u64,
    /// ε spent so far, at `delta` (plus the thresholds' δ, in `delta_spent`).
    pub epsilon_spent: f64,
    /// ε of the whole budget, at `delta`.
    pub epsilon_budget: f64,
    pub delta: f64,
    /// The δ spent by group thresholds, added up over the answers.
    pub delta_spent: f64,
}

impl BudgetView {
    pub fn new(terms: &PrivacyTerms, spent: Rho, answers: u64, delta_spent: f64) -> BudgetView {
        let budget = terms.budget();
        BudgetView {
            rho_budget: budget.as_f64(),
            rho_spent: spent.as_f64(),
            rho_remaining: Rho(budget.0.saturating_sub(spent.0)).as_f64(),
            answers,
            epsilon_spent: epsilon(spent.as_f64(), terms.delta),
            epsilon_budget: epsilon(budget.as_f64(), terms.delta),
            delta: terms.delta,
            delta_spent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_round_up_and_budgets_round_down() {
        assert_eq!(Rho::charge(0.05), Rho(50_000_000));
        assert_eq!(Rho::charge(1e-10), Rho(1), "a tiny charge still costs");
        assert_eq!(
            Rho::charge(0.1 + 0.2),
            Rho(300_000_000),
            "no unit for float error"
        );
        assert_eq!(Rho::charge(0.05 * 2.0), Rho(100_000_000));
        assert_eq!(
            Rho::charge(1.0000000015),
            Rho(1_000_000_002),
            "real fractions round up"
        );
        assert_eq!(Rho::from_f64_down(1.0), Rho(1_000_000_000));
        assert_eq!(
            Rho::charge(f64::NAN),
            Rho(u64::MAX),
            "an unknown cost is refused"
        );
    }

    #[test]
    fn epsilon_follows_bun_and_steinke() {
        // ρ = 0.25, δ = 1e-6: 0.25 + 2·√(0.25·ln 1e6) = 3.967...
        let e = epsilon(0.25, 1e-6);
        assert!((e - (0.25 + 2.0 * (0.25f64 * 1e6f64.ln()).sqrt())).abs() < 1e-12);
        assert!((3.96..3.98).contains(&e));
        assert_eq!(epsilon(0.0, 1e-6), 0.0);
    }

    #[test]
    fn terms_are_checked() {
        assert!(PrivacyTerms::default().validate().is_ok());
        let bad = PrivacyTerms {
            rho_per_query: 2.0,
            ..PrivacyTerms::default()
        };
        assert!(
            bad.validate()
                .expect_err("refused")
                .starts_with("rho_per_query")
        );
        let bad = PrivacyTerms {
            delta: 0.5,
            ..PrivacyTerms::default()
        };
        assert!(bad.validate().expect_err("refused").starts_with("delta"));
    }
}
