//! Webhooks from Stripe and the gift-card provider.
//! Signatures are verified with ring over the raw body before anything is parsed; event ids are
//! recorded per provider so a repeated delivery changes nothing; every handler is idempotent on
//! its own too (a payment is recognized once, a payout step happens once), so events that
//! arrive twice or out of order leave the same state.
//!
//! - Stripe (`Stripe-Signature: t=…,v1=…`): HMAC-SHA-256 of `t.payload` under the endpoint
//!   secret, any `v1` matching, `t` within 300 seconds of now.
//! - Identity verification events are not handled here: `tessera-records` owns identity
//!   proofing and writes the status through to the payout hold (`Payouts::set_identity`).
//! - Gift-card provider (Tremendous-style `Tremendous-Webhook-Signature: sha256=<hex>`):
//!   HMAC-SHA-256 of the body under the webhook key.

use ring::hmac;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::money::{Currency, Money};
use crate::rails::{ProviderRecord, ProviderState};
use crate::store::{now_text, sql_err};
use crate::{Payouts, PayoutsError};

/// Stripe's tolerance for the signature timestamp.
pub const TOLERANCE_SECONDS: i64 = 300;

/// Which provider sent an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Stripe,
    GiftCard,
}

impl Provider {
    pub fn code(self) -> &'static str {
        match self {
            Provider::Stripe => "stripe",
            Provider::GiftCard => "giftcard",
        }
    }
}

/// Verifies a `Stripe-Signature` header over `body` at `now` (Unix seconds).
pub fn verify_stripe(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
) -> Result<(), PayoutsError> {
    let mut t: Option<i64> = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse().ok(),
            Some(("v1", v)) => sigs.push(v.to_string()),
            _ => {}
        }
    }
    let t =
        t.ok_or_else(|| PayoutsError::Webhook("Stripe-Signature has no timestamp (t=…)".into()))?;
    if sigs.is_empty() {
        return Err(PayoutsError::Webhook(
            "Stripe-Signature has no v1 signature".into(),
        ));
    }
    if (now - t).abs() > TOLERANCE_SECONDS {
        return Err(PayoutsError::Webhook(format!(
            "Stripe-Signature timestamp is {} seconds from now (tolerance {TOLERANCE_SECONDS})",
            now - t
        )));
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    for s in sigs {
        if let Ok(tag) = hex::decode(&s)
            && hmac::verify(&key, &signed, &tag).is_ok()
        {
            return Ok(());
        }
    }
    Err(PayoutsError::Webhook(
        "no Stripe signature matches the body".into(),
    ))
}

/// Signs `body` as Stripe does (for fixtures, tests and the demo's test webhook).
pub fn sign_stripe(secret: &[u8], body: &[u8], t: i64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    format!(
        "t={t},v1={}",
        hex::encode(hmac::sign(&key, &signed).as_ref())
    )
}

/// Verifies a `sha256=<hex>` signature of `body`.
pub fn verify_hex_hmac(secret: &[u8], header: &str, body: &[u8]) -> Result<(), PayoutsError> {
    let hexsig = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or_else(|| PayoutsError::Webhook("signature header: expected sha256=<hex>".into()))?;
    let tag =
        hex::decode(hexsig).map_err(|_| PayoutsError::Webhook("signature is not hex".into()))?;
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, secret), body, &tag)
        .map_err(|_| PayoutsError::Webhook("the signature does not match the body".into()))
}

pub fn sign_hex_hmac(secret: &[u8], body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), body).as_ref())
    )
}

/// What handling an event did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub provider: Provider,
    pub event_id: String,
    pub event_type: String,
    /// `duplicate` (seen before), `applied`, `ignored` (a type Tessera does not act on), or
    /// `unmatched` (it names nothing Tessera knows; kept for reconciliation).
    pub result: String,
}

#[derive(Deserialize)]
struct StripeEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: StripeData,
}

#[derive(Deserialize)]
struct StripeData {
    object: serde_json::Value,
}

#[derive(Deserialize)]
struct GiftCardEvent {
    uuid: String,
    event: String,
    payload: GiftCardPayload,
}

#[derive(Deserialize)]
struct GiftCardPayload {
    resource: GiftCardResource,
}

#[derive(Deserialize)]
struct GiftCardResource {
    id: String,
    #[serde(default)]
    external_id: Option<String>,
}

fn str_at<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

impl Payouts {
    async fn seen(&self, provider: Provider, id: &str) -> Result<bool, PayoutsError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM webhook_events WHERE provider = $1 AND event_id = $2",
        )
        .bind(provider.code())
        .bind(id)
        .fetch_one(self.pool())
        .await
        .map_err(sql_err("reading webhook events"))?;
        Ok(n > 0)
    }

    async fn record_event(&self, o: &Outcome) -> Result<(), PayoutsError> {
        sqlx::query("INSERT INTO webhook_events (provider, event_id, event_type, outcome, received_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (provider, event_id) DO NOTHING")
            .bind(o.provider.code())
            .bind(&o.event_id)
            .bind(&o.event_type)
            .bind(&o.result)
            .bind(now_text())
            .execute(self.pool())
            .await
            .map_err(sql_err("recording a webhook event"))?;
        Ok(())
    }

    /// Handles a verified Stripe or identity event (`body` is the raw body whose signature
    /// was checked). The event is recorded after it is applied, so a crash in between means
    /// the provider's retry applies it again — which changes nothing.
    pub async fn handle_stripe_event(
        &self,
        provider: Provider,
        body: &[u8],
    ) -> Result<Outcome, PayoutsError> {
        let ev: StripeEvent = serde_json::from_slice(body).map_err(|e| {
            PayoutsError::Webhook(format!(
                "not a Stripe event (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let mut out = Outcome {
            provider,
            event_id: ev.id.clone(),
            event_type: ev.kind.clone(),
            result: "ignored".into(),
        };
        if self.seen(provider, &ev.id).await? {
            out.result = "duplicate".into();
            return Ok(out);
        }
        let obj = &ev.data.object;
        out.result = match ev.kind.as_str() {
            "invoice.paid" | "payment_intent.succeeded" => {
                let invoice = str_at(obj, &["metadata", "tessera_invoice"]);
                let amount = obj
                    .get(if ev.kind == "invoice.paid" {
                        "amount_paid"
                    } else {
                        "amount_received"
                    })
                    .and_then(|v| v.as_i64());
                let currency = obj
                    .get("currency")
                    .and_then(|v| v.as_str())
                    .map(|c| c.to_ascii_uppercase());
                match (invoice, amount, currency) {
                    (Some(inv), Some(a), Some(c)) if self.invoice(inv).await?.is_some() => {
                        if let Some(r) = str_at(obj, &["id"])
                            && ev.kind == "invoice.paid"
                        {
                            self.set_invoice_sent(inv, r).await?;
                        }
                        self.invoice_paid(inv, Money::new(a, Currency::parse(&c)?))
                            .await?;
                        "applied".into()
                    }
                    _ => "unmatched".into(),
                }
            }
            // A patient's connected account changed (onboarding finished, payouts enabled or
            // restricted): its status follows, and direct payment is chosen once it can pay.
            "account.updated" => {
                let account = str_at(obj, &["id"]);
                let flag = |k: &str| obj.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
                let due = obj
                    .get("requirements")
                    .and_then(|r| r.get("currently_due"))
                    .and_then(|v| v.as_array())
                    .map_or(0, Vec::len);
                match account {
                    Some(a) => {
                        let status = crate::rails::stripe::ConnectAccount {
                            id: a.to_string(),
                            details_submitted: flag("details_submitted"),
                            payouts_enabled: flag("payouts_enabled"),
                            currently_due: due,
                        };
                        if self.connect_account_updated(&status).await? {
                            "applied".into()
                        } else {
                            "unmatched".into()
                        }
                    }
                    None => "unmatched".into(),
                }
            }
            "transfer.reversed" => {
                let payout = str_at(obj, &["metadata", "tessera_payout"])
                    .or_else(|| str_at(obj, &["transfer_group"]));
                match payout {
                    Some(p) if self.payout(p).await?.is_some() => {
                        self.transfer_reversed(p).await?;
                        "applied".into()
                    }
                    _ => "unmatched".into(),
                }
            }
            _ => "ignored".into(),
        };
        self.record_event(&out).await?;
        Ok(out)
    }

    /// Handles a verified gift-card provider event: an order completed or failed.
    pub async fn handle_giftcard_event(&self, body: &[u8]) -> Result<Outcome, PayoutsError> {
        let ev: GiftCardEvent = serde_json::from_slice(body).map_err(|e| {
            PayoutsError::Webhook(format!(
                "not a gift-card event (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let mut out = Outcome {
            provider: Provider::GiftCard,
            event_id: ev.uuid.clone(),
            event_type: ev.event.clone(),
            result: "ignored".into(),
        };
        if self.seen(Provider::GiftCard, &ev.uuid).await? {
            out.result = "duplicate".into();
            return Ok(out);
        }
        let state = match ev.event.as_str() {
            "ORDERS.COMPLETED" | "REWARDS.DELIVERY.SUCCEEDED" => Some(ProviderState::Paid),
            "ORDERS.FAILED" | "REWARDS.DELIVERY.FAILED" | "ORDERS.CANCELED" => {
                Some(ProviderState::Failed)
            }
            _ => None,
        };
        if let Some(state) = state {
            let by_external = ev
                .payload
                .resource
                .external_id
                .as_deref()
                .and_then(|e| e.strip_prefix("tessera-payout-"))
                .map(str::to_string);
            let payout = match by_external {
                Some(p) => Some(p),
                None => sqlx::query(
                    "SELECT id FROM payouts WHERE provider_ref = $1 AND rail = 'giftcard'",
                )
                .bind(&ev.payload.resource.id)
                .fetch_optional(self.pool())
                .await
                .map_err(sql_err("finding a payout"))?
                .map(|r| r.try_get::<String, _>("id"))
                .transpose()
                .map_err(sql_err("finding a payout"))?,
            };
            out.result = match payout {
                Some(id) => match self.payout(&id).await? {
                    Some(p) => {
                        let rec = ProviderRecord {
                            provider_ref: ev.payload.resource.id.clone(),
                            state,
                            amount: p.amount,
                            payout_id: Some(id.clone()),
                            claim_url: None,
                        };
                        self.apply_provider_record(&id, &rec).await?;
                        "applied".into()
                    }
                    None => "unmatched".into(),
                },
                // The order is not yet linked to a payout (the worker died before recording
                // the provider's answer): the worker's lookup by external id settles it.
                None => "unmatched".into(),
            };
        }
        self.record_event(&out).await?;
        Ok(out)
    }

    /// A Stripe transfer reversed after it was made: the money came back to the platform's
    /// Stripe balance and goes back to the patient (a submitted payout is voided; a posted one
    /// is returned).
    async fn transfer_reversed(&self, id: &str) -> Result<(), PayoutsError> {
        let Some(p) = self.payout(id).await? else {
            return Ok(());
        };
        match p.status.as_str() {
            "posted" => self.mark_returned(&p).await.map(|_| ()),
            "submitted" | "submitting" | "reserved" => {
                self.mark_voided(&p, "reversed").await.map(|_| ())
            }
            _ => Ok(()),
        }
    }
}
