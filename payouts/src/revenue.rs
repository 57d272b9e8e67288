//! License revenue. An invoice is recorded with the contributors of the licensed releases whose
//! consent covered the license's purpose when it was issued (the binary works them out and
//! tells this crate). Revenue is recognized only when the provider says the invoice is paid:
//! the payment and the allocation of its patient share are posted in one database transaction,
//! with idempotency keys derived from the invoice, so a repeated or late webhook changes nothing.

use serde::Serialize;
use sqlx::Row;

use crate::allocate::largest_remainder;
use crate::ledger::{self, Account, AccountKind, Entry, NewTransaction, Posted, Source};
use crate::money::{Currency, Money};
use crate::store::{new_id, now_text, sql_err};
use crate::{Payouts, PayoutsError};

/// What to invoice.
#[derive(Debug, Clone)]
pub struct InvoiceRequest {
    pub license: String,
    pub organization: String,
    pub amount: Money,
    /// The patient share, in basis points of the amount.
    pub patient_share_bps: u32,
    /// Contributing patients (internal ids) and their weights (1 each for an equal split).
    pub contributors: Vec<(String, u64)>,
    /// `stripe`, or `offline` when no payment provider is configured (the demo).
    pub provider: String,
}

/// A recorded invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invoice {
    pub id: String,
    pub license: String,
    pub organization: String,
    pub provider: String,
    pub provider_ref: Option<String>,
    pub amount: Money,
    pub patient_share_bps: u32,
    /// `draft` (recorded), `open` (sent by the provider), `paid`.
    pub status: String,
    pub created_at: String,
    pub paid_at: Option<String>,
    pub contributors: i64,
}

/// What recognizing a payment did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentOutcome {
    pub invoice: String,
    /// False when the payment had been recognized before (a repeated webhook).
    pub new: bool,
    pub platform: i64,
    pub patient_pool: i64,
    pub patients_credited: usize,
}

/// The platform account where license payments arrive (the Stripe balance).
pub fn stripe_funds(c: Currency) -> Account {
    Account::new(AccountKind::ProviderFunds, "stripe", c)
}

pub fn platform_revenue(c: Currency) -> Account {
    Account::new(AccountKind::PlatformRevenue, "platform", c)
}

pub fn license_pool(license: &str, c: Currency) -> Account {
    Account::new(AccountKind::PatientPool, license, c)
}

impl Payouts {
    /// Records an invoice (status `draft`) with its contributors.
    pub async fn create_invoice(&self, r: &InvoiceRequest) -> Result<Invoice, PayoutsError> {
        if r.amount.minor <= 0 {
            return Err(PayoutsError::Invalid(format!(
                "invoice for license `{}`: the amount must be positive",
                r.license
            )));
        }
        if r.patient_share_bps > 10_000 {
            return Err(PayoutsError::Invalid(
                "patient share: at most 10000 basis points".into(),
            ));
        }
        if r.contributors.iter().any(|(_, w)| *w == 0) {
            return Err(PayoutsError::Invalid(
                "contributor weights must be positive".into(),
            ));
        }
        let id = new_id("inv");
        let now = now_text();
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO invoices (id, license, organization, provider, provider_ref, currency, amount_minor, patient_share_bps, status, created_at, paid_at) VALUES ($1, $2, $3, $4, NULL, $5, $6, $7, 'draft', $8, NULL)")
            .bind(&id)
            .bind(&r.license)
            .bind(&r.organization)
            .bind(&r.provider)
            .bind(r.amount.currency.as_str())
            .bind(r.amount.minor)
            .bind(i64::from(r.patient_share_bps))
            .bind(&now)
            .execute(&mut *tx)
            .await
            .map_err(sql_err("recording an invoice"))?;
        for chunk in r.contributors.chunks(300) {
            let mut sql =
                String::from("INSERT INTO invoice_contributors (invoice, patient, weight) VALUES ");
            sql.push_str(&ledger::values_placeholders(chunk.len(), 3, ""));
            sql.push_str(" ON CONFLICT (invoice, patient) DO NOTHING");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (p, w) in chunk {
                q = q.bind(&id).bind(p.as_str()).bind(*w as i64);
            }
            q.execute(&mut *tx)
                .await
                .map_err(sql_err("recording invoice contributors"))?;
        }
        tx.commit()
            .await
            .map_err(sql_err("committing an invoice"))?;
        self.invoice(&id)
            .await?
            .ok_or_else(|| PayoutsError::NotFound(format!("invoice `{id}` vanished")))
    }

    /// Marks an invoice sent by the provider, with the provider's id for it.
    pub async fn set_invoice_sent(&self, id: &str, provider_ref: &str) -> Result<(), PayoutsError> {
        sqlx::query("UPDATE invoices SET provider_ref = $1, status = CASE WHEN status = 'draft' THEN 'open' ELSE status END WHERE id = $2")
            .bind(provider_ref)
            .bind(id)
            .execute(self.pool())
            .await
            .map_err(sql_err("marking an invoice sent"))?;
        Ok(())
    }

    pub async fn invoice(&self, id: &str) -> Result<Option<Invoice>, PayoutsError> {
        let rows = self.invoices_where("WHERE i.id = $1", Some(id)).await?;
        Ok(rows.into_iter().next())
    }

    /// Every invoice, newest first.
    pub async fn invoices(&self) -> Result<Vec<Invoice>, PayoutsError> {
        self.invoices_where("", None).await
    }

    async fn invoices_where(
        &self,
        filter: &str,
        arg: Option<&str>,
    ) -> Result<Vec<Invoice>, PayoutsError> {
        let sql = format!(
            "SELECT i.id, i.license, i.organization, i.provider, i.provider_ref, i.currency, i.amount_minor, i.patient_share_bps, i.status, i.created_at, i.paid_at, (SELECT COUNT(*) FROM invoice_contributors c WHERE c.invoice = i.id) AS n FROM invoices i {filter} ORDER BY i.created_at DESC"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(a) = arg {
            q = q.bind(a);
        }
        let c = || sql_err("reading invoices");
        q.fetch_all(self.pool())
            .await
            .map_err(c())?
            .iter()
            .map(|r| {
                Ok(Invoice {
                    id: r.try_get("id").map_err(c())?,
                    license: r.try_get("license").map_err(c())?,
                    organization: r.try_get("organization").map_err(c())?,
                    provider: r.try_get("provider").map_err(c())?,
                    provider_ref: r.try_get("provider_ref").map_err(c())?,
                    amount: Money::new(
                        r.try_get("amount_minor").map_err(c())?,
                        Currency::parse(&r.try_get::<String, _>("currency").map_err(c())?)?,
                    ),
                    patient_share_bps: r.try_get::<i64, _>("patient_share_bps").map_err(c())?
                        as u32,
                    status: r.try_get("status").map_err(c())?,
                    created_at: r.try_get("created_at").map_err(c())?,
                    paid_at: r.try_get("paid_at").map_err(c())?,
                    contributors: r.try_get("n").map_err(c())?,
                })
            })
            .collect()
    }

    /// The Stripe customer of an organization, when one was made.
    pub async fn stripe_customer(
        &self,
        organization: &str,
    ) -> Result<Option<String>, PayoutsError> {
        sqlx::query_scalar("SELECT customer_id FROM stripe_customers WHERE organization = $1")
            .bind(organization)
            .fetch_optional(self.pool())
            .await
            .map_err(sql_err("reading a Stripe customer"))
    }

    pub async fn set_stripe_customer(
        &self,
        organization: &str,
        customer: &str,
    ) -> Result<(), PayoutsError> {
        sqlx::query("INSERT INTO stripe_customers (organization, customer_id) VALUES ($1, $2) ON CONFLICT (organization) DO NOTHING")
            .bind(organization)
            .bind(customer)
            .execute(self.pool())
            .await
            .map_err(sql_err("recording a Stripe customer"))?;
        Ok(())
    }

    /// Recognizes the payment of invoice `id` (amount `paid`, as the provider reports it):
    /// posts the payment (provider funds → platform revenue and the license's patient pool) and
    /// the allocation of the pool to the contributors, largest-remainder, in one database
    /// transaction. A second call for the same invoice changes nothing. A payment that does not
    /// equal the invoice is refused: nothing is recognized and the caller reports it.
    pub async fn invoice_paid(
        &self,
        id: &str,
        paid: Money,
    ) -> Result<PaymentOutcome, PayoutsError> {
        let inv = self
            .invoice(id)
            .await?
            .ok_or_else(|| PayoutsError::NotFound(format!("no invoice `{id}`")))?;
        if paid != inv.amount {
            return Err(PayoutsError::Invalid(format!(
                "invoice `{id}`: the provider reports {paid} paid, the invoice is for {}; nothing was recognized (reconcile with the provider)",
                inv.amount
            )));
        }
        let contributors: Vec<(String, u64)> = sqlx::query(
            "SELECT patient, weight FROM invoice_contributors WHERE invoice = $1 ORDER BY patient",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await
        .map_err(sql_err("reading invoice contributors"))?
        .iter()
        .map(|r| {
            Ok((
                r.try_get::<String, _>("patient")
                    .map_err(sql_err("reading contributors"))?,
                r.try_get::<i64, _>("weight")
                    .map_err(sql_err("reading contributors"))? as u64,
            ))
        })
        .collect::<Result<_, PayoutsError>>()?;

        let cur = inv.amount.currency;
        let pool = inv.amount.share_bps(inv.patient_share_bps).minor;
        let platform = inv.amount.minor - pool;
        let source = Source {
            license: Some(inv.license.clone()),
            invoice: Some(inv.id.clone()),
            organization: Some(inv.organization.clone()),
            ..Source::default()
        };
        let mut payment = vec![Entry::debit(stripe_funds(cur), inv.amount.minor)];
        if platform > 0 {
            payment.push(Entry::credit(platform_revenue(cur), platform));
        }
        if pool > 0 {
            payment.push(Entry::credit(license_pool(&inv.license, cur), pool));
        }
        let payment = NewTransaction {
            key: format!("license_payment:{id}"),
            kind: "license_payment".into(),
            source: source.clone(),
            entries: payment,
            reverses: None,
        };
        let parts: Vec<(String, i64)> = largest_remainder(pool, &contributors, id)
            .into_iter()
            .filter(|(_, a)| *a > 0)
            .collect();
        let allocation = (!parts.is_empty()).then(|| {
            let mut entries = Vec::with_capacity(parts.len() + 1);
            entries.push(Entry::debit(license_pool(&inv.license, cur), pool));
            for (p, a) in &parts {
                entries.push(Entry::credit(Account::patient_available(p, cur), *a));
            }
            NewTransaction {
                key: format!("license_share:{id}"),
                kind: "license_share".into(),
                source: source.clone(),
                entries,
                reverses: None,
            }
        });

        let posted = crate::retry(|| async {
            let mut tx = self.begin().await?;
            let first = ledger::post_in(&mut tx, &payment).await?;
            if let Some(a) = &allocation {
                ledger::post_in(&mut tx, a).await?;
            }
            sqlx::query("UPDATE invoices SET status = 'paid', paid_at = COALESCE(paid_at, $1) WHERE id = $2")
                .bind(now_text())
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(sql_err("marking an invoice paid"))?;
            tx.commit()
                .await
                .map_err(sql_err("committing a payment"))?;
            Ok(first)
        })
        .await?;
        Ok(PaymentOutcome {
            invoice: id.to_string(),
            new: matches!(posted, Posted::New(_)),
            platform,
            patient_pool: pool,
            patients_credited: parts.len(),
        })
    }
}
