//! Licenses (data-use agreements) and what they grant.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An amount of money: integer minor units (cents) and an ISO 4217 currency. Never a float.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Money {
    pub minor: i64,
    pub currency: String,
}

/// Where a license is in its life. Only `Active` within its term grants anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LicenseStatus {
    Draft,
    Signed,
    Active,
    Suspended,
    Expired,
    Terminated,
}

impl LicenseStatus {
    /// Whether the lifecycle allows going from `self` to `to`: draft → signed → active ⇄
    /// suspended → expired / terminated; termination at once from any live state.
    pub fn can_become(self, to: LicenseStatus) -> bool {
        use LicenseStatus::*;
        matches!(
            (self, to),
            (Draft, Signed)
                | (Signed, Active)
                | (Active, Suspended)
                | (Suspended, Active)
                | (Active | Suspended, Expired)
                | (Draft | Signed | Active | Suspended, Terminated)
        )
    }
}

/// What results a license may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AccessMode {
    /// Aggregates only, with small cells suppressed.
    AggregateOnly,
    /// Row-level extracts of the licensed columns.
    RowLevel,
}

/// Which version of a release family a license covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum VersionPin {
    Latest,
    Pinned(u32),
}

/// The columns of one table a license may read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ColumnGrant {
    All,
    Only(Vec<String>),
}

impl ColumnGrant {
    pub fn allows(&self, column: &str) -> bool {
        match self {
            ColumnGrant::All => true,
            ColumnGrant::Only(c) => c.iter().any(|x| x == column),
        }
    }
}

/// Output rules the query service applies to every result under the license.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutputRules {
    /// Cells describing fewer persons are suppressed (CMS: 11).
    pub min_cell_size: u32,
    /// Counts are rounded to a multiple of this, when set.
    pub rounding_base: Option<u32>,
    pub max_rows: Option<u64>,
    /// Columns besides `person_id` that are unique to a person (a record number kept as a
    /// pseudonym, a device id): an aggregate-only license never groups by them. Left out of
    /// the signed terms when empty, so licenses signed before the field existed still verify.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifying_columns: Vec<String>,
    /// Differential privacy for an aggregate-only license: every aggregate answer carries
    /// calibrated noise and the license's total privacy loss is bounded by a budget
    /// ([`crate::privacy`]). Absent: exact aggregates with small cells suppressed (which cannot
    /// stop differencing; docs/licensing.md says why). Left out of the signed terms when
    /// absent, so licenses signed before the field existed still verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<crate::privacy::PrivacyTerms>,
}

impl Default for OutputRules {
    fn default() -> Self {
        OutputRules {
            min_cell_size: 11,
            rounding_base: None,
            max_rows: None,
            identifying_columns: Vec::new(),
            privacy: None,
        }
    }
}

/// Rate limit and quotas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Quota {
    pub queries_per_minute: u32,
    pub queries_per_day: u64,
    pub rows_per_day: u64,
    pub queries_per_month: u64,
    pub rows_per_month: u64,
}

/// What the licensee pays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Fees {
    pub flat: Option<Money>,
    pub per_contributing_patient: Option<Money>,
    /// The share returned to patients, in basis points (5000 = 50%).
    pub patient_share_bps: u32,
}

/// A data-use agreement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct License {
    pub id: String,
    pub organization: String,
    /// Release family → the version covered.
    pub releases: BTreeMap<String, VersionPin>,
    /// Table → the columns covered.
    pub tables: BTreeMap<String, ColumnGrant>,
    /// One of the consent purposes; only patients consenting to it are visible.
    pub purpose: String,
    pub mode: AccessMode,
    pub output: OutputRules,
    pub quota: Quota,
    pub term_start: DateTime<Utc>,
    pub term_end: DateTime<Utc>,
    pub fees: Fees,
    /// The clauses, in order.
    pub clauses: Vec<String>,
    pub status: LicenseStatus,
}

impl License {
    /// Checks what the types cannot: a term that ends after it starts, a share of at most
    /// 100%, non-negative fees in an ISO 4217 currency, a minimum cell size of at least 1,
    /// something covered, and clauses.
    pub fn validate(&self) -> Result<(), String> {
        if self.term_end <= self.term_start {
            return Err("term_end must be after term_start".into());
        }
        if self.fees.patient_share_bps > 10_000 {
            return Err("fees.patient_share_bps: at most 10000 (100%)".into());
        }
        for (name, m) in [
            ("fees.flat", &self.fees.flat),
            (
                "fees.per_contributing_patient",
                &self.fees.per_contributing_patient,
            ),
        ] {
            if let Some(m) = m {
                if m.minor < 0 {
                    return Err(format!("{name}: a non-negative amount in minor units"));
                }
                if !(m.currency.len() == 3 && m.currency.chars().all(|c| c.is_ascii_uppercase())) {
                    return Err(format!("{name}.currency: an ISO 4217 code such as USD"));
                }
            }
        }
        if self.output.min_cell_size == 0 {
            return Err("output.min_cell_size: at least 1 (11 is the CMS rule)".into());
        }
        if self.output.rounding_base == Some(0) {
            return Err("output.rounding_base: leave it null, or at least 1".into());
        }
        if let Some(p) = &self.output.privacy {
            if self.mode != AccessMode::AggregateOnly {
                return Err("output.privacy: differential privacy applies to aggregate-only licenses (a row-level license sees rows)".into());
            }
            p.validate().map_err(|e| format!("output.privacy.{e}"))?;
        }
        if self.releases.is_empty() || self.tables.is_empty() {
            return Err("releases and tables: cover at least one of each".into());
        }
        if self.clauses.iter().all(|c| c.trim().is_empty()) {
            return Err(
                "clauses: the agreement needs its clauses (standard_clauses() has them)".into(),
            );
        }
        if self.purpose.trim().is_empty() {
            return Err("purpose: one of the consent purposes".into());
        }
        Ok(())
    }

    /// Whether the license grants anything at `now`: active and within its term.
    pub fn grants_at(&self, now: DateTime<Utc>) -> bool {
        self.status == LicenseStatus::Active && now >= self.term_start && now < self.term_end
    }

    /// Whether it covers `version` of `family`, whose newest version is `latest`, built for
    /// `purpose`.
    pub fn covers(&self, family: &str, version: u32, latest: u32, purpose: &str) -> bool {
        if purpose != self.purpose {
            return false;
        }
        match self.releases.get(family) {
            None => false,
            Some(VersionPin::Latest) => version == latest,
            Some(VersionPin::Pinned(v)) => *v == version,
        }
    }
}

/// The standard clauses of a Tessera data-use agreement.
pub fn standard_clauses() -> Vec<String> {
    [
        "Permitted use: the purpose named in this agreement, and no other.",
        "The licensee shall not re-identify, or attempt to re-identify, any individual, nor contact any individual whose data is in a release.",
        "The licensee shall not link the data with other data except as approved in writing.",
        "No onward transfer: the data and results describing fewer persons than the minimum cell size stay with the licensee.",
        "The licensee keeps administrative, physical and technical safeguards appropriate to health data.",
        "The licensee reports any breach or suspected re-identification within 72 hours.",
        "Tessera may audit the licensee's use of the data.",
        "At the end of the term the licensee destroys all copies of row-level data and certifies the destruction.",
    ]
    .into_iter()
    .map(str::to_string)
    .collect()
}

/// An active license of `acme` around `now`, for the crate's tests.
#[cfg(test)]
pub(crate) fn sample_license(now: DateTime<Utc>) -> License {
    License {
        id: "lic-1".into(),
        organization: "acme".into(),
        releases: [("nh".to_string(), VersionPin::Latest)]
            .into_iter()
            .collect(),
        tables: [
            ("person".to_string(), ColumnGrant::All),
            (
                "measurement".to_string(),
                ColumnGrant::Only(vec!["person_id".into(), "value_as_number".into()]),
            ),
        ]
        .into_iter()
        .collect(),
        purpose: "research.natural_history".into(),
        mode: AccessMode::AggregateOnly,
        output: OutputRules::default(),
        quota: Quota {
            queries_per_minute: 10,
            queries_per_day: 100,
            rows_per_day: 1_000_000,
            queries_per_month: 1000,
            rows_per_month: 10_000_000,
        },
        term_start: now - chrono::Duration::days(30),
        term_end: now + chrono::Duration::days(335),
        fees: Fees {
            flat: Some(Money {
                minor: 500_000,
                currency: "USD".into(),
            }),
            per_contributing_patient: None,
            patient_share_bps: 5000,
        },
        clauses: standard_clauses(),
        status: LicenseStatus::Active,
    }
}

#[cfg(test)]
mod tests {
    use super::LicenseStatus::*;

    #[test]
    fn lifecycle() {
        assert!(Draft.can_become(Signed));
        assert!(Signed.can_become(Active));
        assert!(Active.can_become(Suspended));
        assert!(Suspended.can_become(Active));
        assert!(Active.can_become(Terminated));
        assert!(!Draft.can_become(Active), "unsigned terms never activate");
        assert!(!Expired.can_become(Active));
        assert!(!Terminated.can_become(Active));
    }
}
