//! Closing a patient's earnings when they delete their data.
//!
//! A deletion must not leave money moving for someone Tessera can no longer reach, nor lose a
//! cent from the books. [`Payouts::close_patient`] therefore first settles what is in flight:
//! a payout only reserved (not yet sent) is voided and its money returned to the patient's
//! balance; one sent to a provider is looked up there and settled (paid, or voided and
//! returned) by what the provider says. While any payout is still on its way, closing is
//! refused ([`Closing::InFlight`]) and the patient is told to try again once it arrives.
//! Then what is left available is moved, in one balanced transaction per currency, to the
//! patient's `unclaimed` account, and their payout choice and connected account are forgotten. Every ledger entry
//! stays, under the patient's pseudonymous id: the books and the audit trail of payments are
//! kept as law requires.

use serde::Serialize;

use crate::ledger::{Account, AccountKind, Entry, NewTransaction, Source};
use crate::money::{Currency, Money};
use crate::payout::PayoutRow;
use crate::rails::{ProviderState, Rails};
use crate::store::sql_err;
use crate::{Payouts, PayoutsError};

/// What a patient has in the books now, for the deletion page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Standing {
    /// Available balances, one per currency with money.
    pub available: Vec<Money>,
    /// Payouts reserved or on their way to a provider.
    pub in_flight: Vec<PayoutRow>,
}

/// The outcome of [`Payouts::close_patient`].
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Closing {
    /// Closed: payouts settled or voided, the balance moved to unclaimed funds.
    Closed {
        /// Payouts voided (their money returned, then moved to unclaimed funds).
        voided: Vec<String>,
        /// Payouts the provider confirmed while closing.
        settled: Vec<String>,
        /// What was moved to unclaimed funds, per currency.
        unclaimed: Vec<Money>,
    },
    /// Not closed: these payouts are still on their way at the provider.
    InFlight { payouts: Vec<PayoutRow> },
}

/// The unclaimed-funds account of a deleted patient.
pub fn unclaimed_account(patient: &str, c: Currency) -> Account {
    Account::new(AccountKind::Unclaimed, patient, c)
}

impl Payouts {
    /// The patient's available balances and open payouts.
    pub async fn standing(&self, patient: &str) -> Result<Standing, PayoutsError> {
        let mut out = Standing::default();
        for b in self.balances_of(patient).await? {
            if b.minor > 0 {
                out.available.push(b);
            }
        }
        out.in_flight = self
            .payouts(Some(patient))
            .await?
            .into_iter()
            .filter(|p| matches!(p.status.as_str(), "reserved" | "submitting" | "submitted"))
            .collect();
        Ok(out)
    }

    async fn balances_of(&self, patient: &str) -> Result<Vec<Money>, PayoutsError> {
        use sqlx::Row;
        let c = || sql_err("reading a patient's balances");
        sqlx::query(
            "SELECT currency, balance FROM ledger_accounts WHERE kind = 'available' AND owner = $1 ORDER BY currency",
        )
        .bind(patient)
        .fetch_all(self.pool())
        .await
        .map_err(c())?
        .iter()
        .map(|r| {
            Ok(Money::new(
                r.try_get("balance").map_err(c())?,
                Currency::parse(&r.try_get::<String, _>("currency").map_err(c())?)?,
            ))
        })
        .collect()
    }

    /// Closes a patient's earnings (see the module documentation). Safe to repeat.
    pub async fn close_patient(
        &self,
        patient: &str,
        rails: &Rails,
    ) -> Result<Closing, PayoutsError> {
        crate::payout::check_ref("patient id", patient)?;
        let mut voided = Vec::new();
        let mut settled = Vec::new();
        for p in self.standing(patient).await?.in_flight {
            match p.status.as_str() {
                // Never sent: nothing is at a provider, so it is voided here.
                "reserved" => {
                    if self.mark_voided(&p, "account_deleted").await? {
                        voided.push(p.id.clone());
                    }
                }
                // Sent, or perhaps sent: the provider says where it is.
                _ => {
                    let Some(rail) = rails.get(&p.rail) else {
                        continue;
                    };
                    match rail.lookup(&p.order()).await {
                        Ok(Some(rec)) => {
                            let pending = rec.state == ProviderState::Pending;
                            self.apply_provider_record(&p.id, &rec).await?;
                            if !pending {
                                settled.push(p.id.clone());
                            }
                        }
                        // Never reached the provider: voided like a reserved one.
                        Ok(None) if p.status == "submitting" => {
                            if self.mark_voided(&p, "account_deleted").await? {
                                voided.push(p.id.clone());
                            }
                        }
                        Ok(None) | Err(_) => {}
                    }
                }
            }
        }
        let still = self.standing(patient).await?.in_flight;
        if !still.is_empty() {
            return Ok(Closing::InFlight { payouts: still });
        }
        let mut unclaimed = Vec::new();
        for m in self.balances_of(patient).await? {
            if m.minor <= 0 {
                continue;
            }
            // The key names the amount: a second closure after a late credit moves that too.
            let balance_before = self
                .balance(&unclaimed_account(patient, m.currency))
                .await?;
            self.post(&NewTransaction {
                key: format!(
                    "closure:{patient}:{}:{}",
                    m.currency.as_str(),
                    balance_before + m.minor
                ),
                kind: "account_closure".into(),
                source: Source::default(),
                entries: vec![
                    Entry::debit(Account::patient_available(patient, m.currency), m.minor),
                    Entry::credit(unclaimed_account(patient, m.currency), m.minor),
                ],
                reverses: None,
            })
            .await?;
            unclaimed.push(m);
        }
        for sql in [
            "DELETE FROM payout_prefs WHERE patient = $1",
            "DELETE FROM connect_accounts WHERE patient = $1",
        ] {
            sqlx::query(sql)
                .bind(patient)
                .execute(self.pool())
                .await
                .map_err(sql_err("forgetting payout preferences"))?;
        }
        Ok(Closing::Closed {
            voided,
            settled,
            unclaimed,
        })
    }
}
