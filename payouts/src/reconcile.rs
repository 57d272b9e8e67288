//! Reconciliation: the ledger against itself and against the providers' records. Every
//! difference is reported; nothing is corrected silently (a correction is a reversing entry an
//! operator posts, or a payout step the worker takes on its next run).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::ledger::AccountKind;
use crate::rails::{ProviderState, Rails};
use crate::{Payouts, PayoutsError};

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// `ledger`, `missing_at_provider`, `amount_mismatch`, `paid_at_provider_not_posted`,
    /// `failed_at_provider`, `unknown_to_ledger`, `clearing_mismatch`, `unallocated_pool`,
    /// `provider_unreachable`, `funds_overdrawn`.
    pub kind: String,
    /// A payout, account or provider id (never a patient's identified data).
    pub subject: String,
    pub detail: String,
}

/// What reconciliation found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub payouts_checked: usize,
    pub provider_records: usize,
    pub differences: Vec<Difference>,
}

impl Report {
    fn diff(&mut self, kind: &str, subject: impl Into<String>, detail: impl Into<String>) {
        self.differences.push(Difference {
            kind: kind.into(),
            subject: subject.into(),
            detail: detail.into(),
        });
    }
}

impl Payouts {
    /// Compares the ledger with the providers' records and with itself.
    pub async fn reconcile(&self, rails: &Rails) -> Result<Report, PayoutsError> {
        let mut r = Report::default();
        for p in self.verify_ledger().await? {
            r.diff("ledger", "ledger", p);
        }
        let payouts = self.payouts(None).await?;
        let known: BTreeSet<&str> = payouts.iter().map(|p| p.id.as_str()).collect();

        // Each payout the provider should know of.
        for p in payouts
            .iter()
            .filter(|p| matches!(p.status.as_str(), "submitting" | "submitted" | "posted"))
        {
            let Some(rail) = rails.get(&p.rail) else {
                r.diff(
                    "provider_unreachable",
                    &p.id,
                    format!("rail {} is not configured", p.rail),
                );
                continue;
            };
            r.payouts_checked += 1;
            match rail.lookup(&p.order()).await {
                Err(e) => r.diff("provider_unreachable", &p.id, e.to_string()),
                Ok(None) if p.status != "submitting" => {
                    r.diff("missing_at_provider", &p.id, format!("ledger says {}, {} has no record", p.status, p.rail))
                }
                Ok(None) => r.diff("missing_at_provider", &p.id, "submitting, never reached the provider: the next payout run sends it again with the same key"),
                Ok(Some(rec)) => {
                    if rec.amount != p.amount && rec.state != ProviderState::Failed {
                        r.diff("amount_mismatch", &p.id, format!("ledger {}, provider {}", p.amount, rec.amount));
                    }
                    match (rec.state, p.status.as_str()) {
                        (ProviderState::Paid, "submitted" | "submitting") => r.diff("paid_at_provider_not_posted", &p.id, "the next payout run posts it"),
                        (ProviderState::Failed, s) => r.diff("failed_at_provider", &p.id, format!("ledger says {s}")),
                        _ => {}
                    }
                }
            }
        }

        // What the providers hold that the ledger does not.
        for rail in rails.all() {
            match rail.recent().await {
                Ok(recs) => {
                    r.provider_records += recs.len();
                    for rec in recs {
                        if let Some(id) = &rec.payout_id
                            && !known.contains(id.as_str())
                        {
                            r.diff(
                                "unknown_to_ledger",
                                &rec.provider_ref,
                                format!(
                                    "{} holds a payout `{id}` the ledger does not know",
                                    rail.name()
                                ),
                            );
                        }
                    }
                }
                Err(e) => r.diff("provider_unreachable", rail.name(), e.to_string()),
            }
        }

        // Each clearing account holds exactly the payouts in flight through it (zero once
        // everything has settled).
        let mut in_flight: BTreeMap<String, i64> = BTreeMap::new();
        for p in payouts.iter().filter(|p| p.status == "submitted") {
            *in_flight.entry(p.clearing().id()).or_default() += p.amount.minor;
        }
        for b in self.balances().await? {
            let kind = crate::kind_from_code(&b.kind)?;
            match kind {
                AccountKind::RailClearing | AccountKind::OrgClearing => {
                    let expected = in_flight.remove(&b.account_id).unwrap_or(0);
                    if b.balance != expected {
                        r.diff(
                            "clearing_mismatch",
                            &b.account_id,
                            format!("balance {}, payouts in flight {expected}", b.balance),
                        );
                    }
                }
                AccountKind::PatientPool if b.balance != 0 => r.diff(
                    "unallocated_pool",
                    &b.account_id,
                    format!(
                        "{} not allocated to patients (a license paid with no contributors?)",
                        b.balance
                    ),
                ),
                AccountKind::ProviderFunds if b.balance < 0 => r.diff(
                    "funds_overdrawn",
                    &b.account_id,
                    format!(
                        "the books show {} at the provider: top the provider balance up",
                        b.balance
                    ),
                ),
                _ => {}
            }
        }
        for (account, expected) in in_flight {
            r.diff(
                "clearing_mismatch",
                account,
                format!("no clearing balance, payouts in flight {expected}"),
            );
        }
        Ok(r)
    }
}
