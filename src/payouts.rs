//! Wiring of `tessera-payouts` to the other crates: the binary works out a license's
//! contributors (catalog: the released patients whose consent covers the license's purpose
//! now) and a completed survey's patient, and tells the payouts crate. Providers are
//! configured from the environment (secrets are never flags):
//!
//! | variable | what |
//! |---|---|
//! | `TESSERA_STRIPE_SECRET_KEY` | Stripe secret key (invoicing and Connect transfers); unset: invoices are recorded `offline` |
//! | `TESSERA_STRIPE_API_BASE` | another Stripe API base (a stand-in such as localstripe, or a test server) |
//! | `TESSERA_GIFTCARD_API_BASE`, `TESSERA_GIFTCARD_API_KEY`, `TESSERA_GIFTCARD_FUNDING_SOURCE` | the gift-card provider (Tremendous-style `/api/v2`) |
//! | `TESSERA_STRIPE_WEBHOOK_SECRET`, `TESSERA_GIFTCARD_WEBHOOK_SECRET` | webhook signing secrets; unset: derived from the master key (what the demo signs its test webhook with) |
//!
//! Identity verification (whose status the payout hold reads) is configured in
//! [`crate::records`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use tessera_catalog::{Catalog, Keyring, Purpose};
use tessera_licensing::model::{License, VersionPin};
use tessera_payouts::rails::Rails;
use tessera_payouts::rails::giftcard::GiftCardProvider;
use tessera_payouts::rails::stripe::{Stripe, StripeConnect};
use tessera_payouts::revenue::{Invoice, InvoiceRequest};
use tessera_payouts::{Currency, Money, Payouts};

/// Payment providers and webhook secrets.
#[derive(Clone)]
pub struct PayoutsConfig {
    pub stripe_key: Option<String>,
    pub stripe_base: Option<String>,
    pub giftcard: Option<(String, String, String)>,
    pub stripe_webhook_secret: Vec<u8>,
    pub giftcard_webhook_secret: Vec<u8>,
    pub timeout: Duration,
}

impl std::fmt::Debug for PayoutsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayoutsConfig")
            .field("stripe", &self.stripe_key.is_some())
            .field("giftcard", &self.giftcard.is_some())
            .finish_non_exhaustive()
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl PayoutsConfig {
    pub fn from_env(keyring: &Keyring) -> PayoutsConfig {
        let secret = |var: &str, purpose: &str| {
            env(var)
                .map(String::into_bytes)
                .unwrap_or_else(|| keyring.application_secret(purpose).to_vec())
        };
        let giftcard = match (
            env("TESSERA_GIFTCARD_API_BASE"),
            env("TESSERA_GIFTCARD_API_KEY"),
        ) {
            (Some(b), Some(k)) => Some((
                b,
                k,
                env("TESSERA_GIFTCARD_FUNDING_SOURCE").unwrap_or_else(|| "balance".into()),
            )),
            _ => None,
        };
        PayoutsConfig {
            stripe_key: env("TESSERA_STRIPE_SECRET_KEY"),
            stripe_base: env("TESSERA_STRIPE_API_BASE"),
            giftcard,
            stripe_webhook_secret: secret("TESSERA_STRIPE_WEBHOOK_SECRET", "stripe-webhook"),
            giftcard_webhook_secret: secret("TESSERA_GIFTCARD_WEBHOOK_SECRET", "giftcard-webhook"),
            timeout: Duration::from_secs(
                env("TESSERA_PROVIDER_TIMEOUT")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(30),
            ),
        }
    }

    pub fn stripe(&self) -> Result<Option<Stripe>> {
        match &self.stripe_key {
            None => Ok(None),
            Some(k) => Ok(Some(Stripe::new(
                k,
                self.stripe_base.as_deref(),
                self.timeout,
            )?)),
        }
    }

    /// The gift-card provider, when configured (for its product catalog).
    pub fn giftcard_provider(&self) -> Result<Option<GiftCardProvider>> {
        match &self.giftcard {
            None => Ok(None),
            Some((base, key, funding)) => Ok(Some(GiftCardProvider::new(
                base,
                key,
                funding,
                self.timeout,
            )?)),
        }
    }

    /// The rails that are configured (none: payouts wait, and patients are told why).
    pub fn rails(&self) -> Result<Rails> {
        let mut rails = Rails::new();
        if let Some(s) = self.stripe()? {
            rails = rails.with(Arc::new(StripeConnect { stripe: s }));
        }
        if let Some((base, key, funding)) = &self.giftcard {
            rails = rails.with(Arc::new(GiftCardProvider::new(
                base,
                key,
                funding,
                self.timeout,
            )?));
        }
        Ok(rails)
    }
}

/// The patients a license's fee is shared among: those in the release versions it covers now
/// whose consent covers its purpose now (sorted, each once).
pub async fn license_contributors(catalog: &Catalog, license: &License) -> Result<Vec<String>> {
    let consented: BTreeSet<String> = catalog
        .consented_patients(&Purpose::parse(&license.purpose)?, Utc::now())
        .await?
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let releases = catalog.releases().await?;
    let mut out = BTreeSet::new();
    for (family, pin) in &license.releases {
        let live: Vec<_> = releases
            .iter()
            .filter(|r| {
                &r.family == family && r.retired_at.is_none() && r.purpose == license.purpose
            })
            .collect();
        let version = match pin {
            VersionPin::Pinned(v) => Some(i64::from(*v)),
            VersionPin::Latest => live.iter().map(|r| r.version).max(),
        };
        if let Some(v) = version {
            for p in catalog.release_contributors(family, v).await? {
                if consented.contains(&p) {
                    out.insert(p);
                }
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// Invoices a license's fee (flat + per contributing patient): recorded with its
/// contributors, then sent through Stripe when configured (customer, invoice item, invoice),
/// else left `offline` awaiting a payment notice.
pub async fn invoice_license(
    payouts: &Payouts,
    catalog: &Catalog,
    license: &License,
    cfg: &PayoutsConfig,
) -> Result<Invoice> {
    let contributors = license_contributors(catalog, license).await?;
    let fees = &license.fees;
    let currency = fees
        .flat
        .as_ref()
        .or(fees.per_contributing_patient.as_ref())
        .map(|m| m.currency.clone())
        .context("the license names no fee: nothing to invoice")?;
    let currency = Currency::parse(&currency)?;
    let flat = fees.flat.as_ref().map(|m| m.minor).unwrap_or(0);
    let per = fees
        .per_contributing_patient
        .as_ref()
        .map(|m| m.minor)
        .unwrap_or(0);
    let amount = flat
        .checked_add(
            per.checked_mul(contributors.len() as i64)
                .context("fee out of range")?,
        )
        .context("fee out of range")?;
    let stripe = cfg.stripe()?;
    let inv = payouts
        .create_invoice(&InvoiceRequest {
            license: license.id.clone(),
            organization: license.organization.clone(),
            amount: Money::new(amount, currency),
            patient_share_bps: fees.patient_share_bps,
            contributors: contributors.into_iter().map(|p| (p, 1)).collect(),
            provider: if stripe.is_some() {
                "stripe"
            } else {
                "offline"
            }
            .into(),
        })
        .await?;
    if let Some(s) = stripe {
        let customer = match payouts.stripe_customer(&license.organization).await? {
            Some(c) => c,
            None => {
                let c = s
                    .create_customer(&license.organization, &license.organization)
                    .await
                    .map_err(|e| anyhow::anyhow!("Stripe: {e}"))?;
                payouts
                    .set_stripe_customer(&license.organization, &c)
                    .await?;
                c
            }
        };
        let sent = s
            .send_invoice(&customer, &inv.id, &license.id, inv.amount)
            .await
            .map_err(|e| anyhow::anyhow!("Stripe: {e} (the invoice {} is recorded; run the command again to resend it with the same keys)", inv.id))?;
        payouts.set_invoice_sent(&inv.id, &sent).await?;
    }
    Ok(payouts.invoice(&inv.id).await?.unwrap_or(inv))
}

/// Credits every completed survey in the catalog to the studies that name its questionnaire
/// (once each, however often this runs). Returns how many credits were new.
pub async fn credit_surveys(payouts: &Payouts, catalog: &Catalog) -> Result<usize> {
    let mut new = 0;
    for (patient, _record, questionnaire) in catalog.completed_surveys().await? {
        new += payouts
            .survey_completed(&patient, &questionnaire)
            .await?
            .iter()
            .filter(|c| c.new)
            .count();
    }
    Ok(new)
}

/// What erasing a patient did.
#[derive(Debug)]
pub enum Erasure {
    /// Deleted: what the catalog removed and how the patient's earnings were closed.
    Done {
        deletion: tessera_catalog::deletion::Deletion,
        closing: tessera_payouts::closure::Closing,
    },
    /// Not deleted (nothing changed): payouts are still on their way at a provider.
    PaymentsInFlight(Vec<tessera_payouts::payout::PayoutRow>),
}

/// Erases a patient at their request (or their guardian's, or an operator's on their behalf):
/// closes their earnings first (payouts settled or voided, the rest kept as unclaimed funds:
/// [`tessera_payouts::closure`]), then deletes their data and destroys their data key
/// ([`tessera_catalog::deletion`]), and records the erasure in the audit chain under the
/// pseudonymous id. `principal` names who asked in the audit (an account id, `operator-cli`).
/// Before anything else, what the records crate holds goes: identity verifications redacted
/// at their provider and provider connections' tokens revoked (both need the patient's data
/// key, destroyed last); a provider that cannot be reached stops the deletion before anything
/// of the patient's data is deleted.
#[allow(clippy::too_many_arguments)]
pub async fn erase_patient(
    catalog: &Catalog,
    payouts: &Payouts,
    rails: &Rails,
    audit: &tessera_licensing::store::LicensingStore,
    records: Option<&crate::records::RecordsServices>,
    patient_id: &str,
    requested_by: &str,
    principal: &str,
) -> Result<Erasure> {
    use tessera_payouts::closure::Closing;
    if let Some(records) = records {
        records.forget_patient(patient_id).await.context(
            "forgetting the identity verification and provider connections (nothing of the patient's data was deleted; try again)",
        )?;
    }
    let closing = payouts.close_patient(patient_id, rails).await?;
    if let Closing::InFlight { payouts } = closing {
        return Ok(Erasure::PaymentsInFlight(payouts));
    }
    // The operator's sign-in links for the patient are keys of theirs: revoked first.
    audit
        .revoke_patient_keys(patient_id)
        .await
        .context("revoking the patient's sign-in keys (nothing was deleted)")?;
    let deletion = catalog.delete_patient(patient_id, requested_by).await?;
    audit
        .append_audit(tessera_licensing::audit::Event {
            at: tessera_catalog::consent::timestamp(Utc::now()),
            principal: principal.to_string(),
            license: None,
            action: "patient.delete".into(),
            resource: format!("patient:{patient_id}"),
            decision: "allow".into(),
            query_sha256: None,
            rows: Some(deletion.deleted.records),
            persons: Some(1),
        })
        .await
        .context("recording the deletion in the audit chain (the data is deleted)")?;
    Ok(Erasure::Done { deletion, closing })
}
