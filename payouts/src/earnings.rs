//! What a patient sees of their money: balance, pending and paid amounts, the history by
//! source (which license, which study and survey), donations, tax-form status and a series of
//! earnings over time. Read from the ledger's entries on the patient's own accounts.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::Serialize;
use sqlx::Row;

use crate::ledger::{Account, Side, Source};
use crate::money::Currency;
use crate::payout::{Hold, IdentityStatus, PayoutRow, Preferences};
use crate::rails::Rails;
use crate::store::sql_err;
use crate::{Payouts, PayoutsError, tax};

/// One movement on the patient's available balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    pub at: String,
    /// `license_share`, `survey_incentive`, `study_enrollment`, `payout_reserve`,
    /// `payout_void`, `payout_return`, `reversal`.
    pub kind: String,
    pub source: Source,
    /// Positive: credited to the patient; negative: taken for a payout.
    pub amount_minor: i64,
}

/// A payout as the patient sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PayoutView {
    pub id: String,
    pub kind: String,
    pub destination: String,
    pub amount_minor: i64,
    pub status: String,
    pub created_at: String,
    /// Where to redeem a gift card, once delivered.
    pub claim_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HoldView {
    #[serde(flatten)]
    pub hold: Hold,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaxStatus {
    pub year: i32,
    pub paid_this_year_minor: i64,
    pub threshold_minor: Option<i64>,
    pub w9_on_file: bool,
}

/// Everything on the patient's earnings page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Earnings {
    pub currency: Currency,
    pub available_minor: i64,
    /// Set aside for payouts not yet sent or settled.
    pub pending_minor: i64,
    pub paid_minor: i64,
    pub donated_minor: i64,
    pub earned_minor: i64,
    pub by_license: BTreeMap<String, i64>,
    pub by_study: BTreeMap<String, i64>,
    pub donations_by_organization: BTreeMap<String, i64>,
    pub history: Vec<Line>,
    pub payouts: Vec<PayoutView>,
    /// (day, cumulative earnings to the end of that day)
    pub series: Vec<(String, i64)>,
    pub preferences: Preferences,
    pub identity: IdentityStatus,
    pub tax: TaxStatus,
    pub holds: Vec<HoldView>,
}

const EARNING_KINDS: &[&str] = &["license_share", "survey_incentive", "study_enrollment"];

impl Payouts {
    /// The patient's earnings as of `date`.
    pub async fn earnings(
        &self,
        patient: &str,
        date: NaiveDate,
        rails: &Rails,
    ) -> Result<Earnings, PayoutsError> {
        let preferences = self.preferences(patient).await?;
        let cur = preferences.currency;
        let available_acct = Account::patient_available(patient, cur);
        let rows = sqlx::query("SELECT t.kind, t.source, t.created_at, e.side, e.amount FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id WHERE e.account_id = $1 ORDER BY t.created_at, t.id")
            .bind(available_acct.id())
            .fetch_all(self.pool())
            .await
            .map_err(sql_err("reading a patient's history"))?;
        let mut history = Vec::with_capacity(rows.len());
        let (mut by_license, mut by_study) = (BTreeMap::new(), BTreeMap::new());
        let mut daily: BTreeMap<String, i64> = BTreeMap::new();
        let mut earned = 0i64;
        for r in &rows {
            let c = || sql_err("reading a patient's history");
            let kind: String = r.try_get("kind").map_err(c())?;
            let source: Source =
                serde_json::from_str(&r.try_get::<String, _>("source").map_err(c())?)
                    .unwrap_or_default();
            let at: String = r.try_get("created_at").map_err(c())?;
            let side: String = r.try_get("side").map_err(c())?;
            let amount: i64 = r.try_get("amount").map_err(c())?;
            let signed = if crate::ledger::entry_side(&side) == Side::Credit {
                amount
            } else {
                -amount
            };
            if EARNING_KINDS.contains(&kind.as_str()) {
                earned += signed;
                *daily.entry(at.chars().take(10).collect()).or_default() += signed;
                if let Some(l) = &source.license {
                    *by_license.entry(l.clone()).or_default() += signed;
                }
                if let Some(s) = &source.study {
                    *by_study.entry(s.clone()).or_default() += signed;
                }
            }
            history.push(Line {
                at,
                kind,
                source,
                amount_minor: signed,
            });
        }
        let mut series = Vec::with_capacity(daily.len());
        let mut running = 0;
        for (day, v) in daily {
            running += v;
            series.push((day, running));
        }

        let payout_rows: Vec<PayoutRow> = self.payouts(Some(patient)).await?;
        let claims: BTreeMap<String, String> = sqlx::query(
            "SELECT id, claim_url FROM payouts WHERE patient = $1 AND claim_url IS NOT NULL",
        )
        .bind(patient)
        .fetch_all(self.pool())
        .await
        .map_err(sql_err("reading claim links"))?
        .iter()
        .filter_map(|r| {
            Some((
                r.try_get::<String, _>("id").ok()?,
                r.try_get::<String, _>("claim_url").ok()?,
            ))
        })
        .collect();
        let mut donations = BTreeMap::new();
        let (mut paid, mut donated) = (0, 0);
        for p in payout_rows.iter().filter(|p| p.amount.currency == cur) {
            if p.status == "posted" {
                if p.kind == "donation" {
                    donated += p.amount.minor;
                    *donations.entry(p.destination.clone()).or_default() += p.amount.minor;
                } else {
                    paid += p.amount.minor;
                }
            }
        }
        let pending = self
            .balance(&Account::patient_reserved(patient, cur))
            .await?
            + payout_rows
                .iter()
                .filter(|p| p.status == "submitted" && p.amount.currency == cur)
                .map(|p| p.amount.minor)
                .sum::<i64>();
        let year = tax::tax_year(date);
        let tax = TaxStatus {
            year,
            paid_this_year_minor: self.paid_in_year(patient, year, cur).await?,
            threshold_minor: tax::reporting_threshold(date, cur).map(|m| m.minor),
            w9_on_file: self.has_tax_form(patient).await?,
        };
        let holds = self
            .holds(patient, date, rails)
            .await?
            .into_iter()
            .map(|h| HoldView {
                message: h.message(),
                hold: h,
            })
            .collect();
        Ok(Earnings {
            currency: cur,
            available_minor: self.balance(&available_acct).await?,
            pending_minor: pending,
            paid_minor: paid,
            donated_minor: donated,
            earned_minor: earned,
            by_license,
            by_study,
            donations_by_organization: donations,
            history,
            payouts: payout_rows
                .into_iter()
                .map(|p| PayoutView {
                    claim_url: claims.get(&p.id).cloned(),
                    id: p.id,
                    kind: p.kind,
                    destination: p.destination,
                    amount_minor: p.amount.minor,
                    status: p.status,
                    created_at: p.created_at,
                })
                .collect(),
            series,
            preferences,
            identity: self.identity(patient).await?,
            tax,
            holds,
        })
    }
}
