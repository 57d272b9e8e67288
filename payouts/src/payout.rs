//! Payout choices, holds, and the payout worker.
//!
//! A patient chooses a gift card, a donation to a registered advocacy organization, a direct
//! payment, or to keep accumulating, with a minimum payout amount. A payout waits (and the
//! patient is told why) until their identity is verified and, when the year's payments would
//! reach the reporting threshold, a W-9 is on file.
//!
//! A payout moves `reserved → submitting → submitted → posted`, or to `voided`; each step is a
//! conditional update of the payout row and a ledger transaction keyed by the payout and the
//! step, in one database transaction, so each happens exactly once however often the worker
//! runs or crashes. The provider is called only between `submitting` and `submitted`, with an
//! idempotency key derived from the payout row; a payout found `submitting` (the worker died or
//! the call's outcome was unknown) is looked up at the provider first and sent again, with the
//! same key, only when the provider has no record of it.

use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::ledger::{self, Account, AccountKind, Entry, NewTransaction, Source};
use crate::money::{Currency, Money};
use crate::rails::{PayoutOrder, ProviderRecord, ProviderState, RailError, Rails};
use crate::store::{new_id, now_text, sql_err};
use crate::{Payouts, PayoutsError, fault, tax};

/// Ids that end up in account ids and provider metadata: 1 to 128 of letters, digits, `-_.`.
pub fn check_ref(what: &str, v: &str) -> Result<(), PayoutsError> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(PayoutsError::Invalid(format!(
            "{what}: 1 to 128 letters, digits, `-`, `_` or `.`"
        )))
    }
}

/// What a patient wants done with their balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "choice", rename_all = "snake_case")]
pub enum Choice {
    /// Keep accumulating: no payout.
    Accumulate,
    /// A gift card (or a charity) from the gift-card provider's catalog.
    GiftCard { product: String },
    /// A donation to a registered advocacy organization (Stripe Connect transfer).
    Donation { organization: String },
    /// A direct payment to the patient's own Stripe connected account.
    Direct { stripe_account: String },
}

impl Choice {
    pub fn code(&self) -> &'static str {
        match self {
            Choice::Accumulate => "accumulate",
            Choice::GiftCard { .. } => "gift_card",
            Choice::Donation { .. } => "donation",
            Choice::Direct { .. } => "direct",
        }
    }
    fn destination(&self) -> Option<&str> {
        match self {
            Choice::Accumulate => None,
            Choice::GiftCard { product } => Some(product),
            Choice::Donation { organization } => Some(organization),
            Choice::Direct { stripe_account } => Some(stripe_account),
        }
    }
    fn from_row(code: &str, dest: Option<String>) -> Choice {
        let d = dest.unwrap_or_default();
        match code {
            "gift_card" => Choice::GiftCard { product: d },
            "donation" => Choice::Donation { organization: d },
            "direct" => Choice::Direct { stripe_account: d },
            _ => Choice::Accumulate,
        }
    }
}

/// A patient's payout preferences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preferences {
    #[serde(flatten)]
    pub choice: Choice,
    pub currency: Currency,
    /// Pay out only once the available balance reaches this (minor units).
    pub minimum_minor: i64,
}

/// The smallest minimum a patient may set (a payout below it costs more than it is worth).
pub const LOWEST_MINIMUM: i64 = 500;

impl Default for Preferences {
    fn default() -> Self {
        Preferences {
            choice: Choice::Accumulate,
            currency: Currency::USD,
            minimum_minor: 2_500,
        }
    }
}

/// An advocacy organization that receives donations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvocacyOrg {
    pub id: String,
    pub name: String,
    pub disease: String,
    /// Its Stripe connected account (`acct_…`).
    pub stripe_account: String,
    /// A sentence about what it does, shown to patients choosing where to donate.
    #[serde(default)]
    pub description: String,
}

/// Where identity verification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityStatus {
    Unverified,
    Pending,
    Verified,
    Failed,
}

impl IdentityStatus {
    pub fn code(self) -> &'static str {
        match self {
            IdentityStatus::Unverified => "unverified",
            IdentityStatus::Pending => "pending",
            IdentityStatus::Verified => "verified",
            IdentityStatus::Failed => "failed",
        }
    }
    fn parse(s: &str) -> IdentityStatus {
        match s {
            "pending" => IdentityStatus::Pending,
            "verified" => IdentityStatus::Verified,
            "failed" => IdentityStatus::Failed,
            _ => IdentityStatus::Unverified,
        }
    }
}

/// Why a payout is not made now. The message is what the patient is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "hold", rename_all = "snake_case")]
pub enum Hold {
    Accumulating,
    BelowMinimum { available: i64, minimum: i64 },
    IdentityNotVerified { status: IdentityStatus },
    TaxFormRequired { paid_this_year: i64, threshold: i64 },
    OrganizationUnknown { organization: String },
    RailNotConfigured { rail: String },
}

impl Hold {
    pub fn message(&self) -> String {
        match self {
            Hold::Accumulating => "You chose to keep accumulating: nothing is paid out until you choose a gift card, a donation or a direct payment.".into(),
            Hold::BelowMinimum { available, minimum } => format!(
                "Your available balance ({}) is below your minimum payout ({}).",
                crate::rails::decimal_text(Money::usd(*available)),
                crate::rails::decimal_text(Money::usd(*minimum))
            ),
            Hold::IdentityNotVerified { status } => format!(
                "We need to verify your identity before paying you (status: {}).",
                status.code()
            ),
            Hold::TaxFormRequired { threshold, .. } => format!(
                "This payment would bring this year's payments to {} or more, the tax reporting threshold: please send a W-9 form first.",
                crate::rails::decimal_text(Money::usd(*threshold))
            ),
            Hold::OrganizationUnknown { .. } => "The organization you chose to donate to is no longer registered: please choose again.".into(),
            Hold::RailNotConfigured { .. } => "This payout method is not available right now; your balance is safe and will be paid later.".into(),
        }
    }
}

/// A payout as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PayoutRow {
    pub id: String,
    pub patient: String,
    pub rail: String,
    pub kind: String,
    pub destination: String,
    pub amount: Money,
    pub status: String,
    pub idempotency_key: String,
    pub provider_ref: Option<String>,
    pub attempts: i64,
    pub failure: Option<String>,
    pub tax_year: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl PayoutRow {
    pub fn order(&self) -> PayoutOrder {
        PayoutOrder {
            payout_id: self.id.clone(),
            idempotency_key: self.idempotency_key.clone(),
            amount: self.amount,
            destination: self.destination.clone(),
        }
    }
    /// The account a submitted payout sits in until it settles.
    pub fn clearing(&self) -> Account {
        clearing_account(
            &self.kind,
            &self.rail,
            &self.destination,
            self.amount.currency,
        )
    }
}

fn clearing_account(kind: &str, rail: &str, org: &str, c: Currency) -> Account {
    if kind == "donation" {
        Account::new(AccountKind::OrgClearing, org, c)
    } else {
        Account::new(AccountKind::RailClearing, rail, c)
    }
}

/// The provider funds account a rail pays from.
pub fn rail_funds(rail: &str, c: Currency) -> Account {
    let owner = if rail == "giftcard" {
        "giftcard"
    } else {
        "stripe"
    };
    Account::new(AccountKind::ProviderFunds, owner, c)
}

/// What one run of the worker did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunReport {
    pub created: usize,
    pub submitted: usize,
    pub posted: usize,
    pub voided: usize,
    /// Payouts whose outcome is still unknown (to be looked up on the next run).
    pub unknown: usize,
    /// Patients with a balance who were held, by hold kind.
    pub held: usize,
}

const PAYOUT_COLUMNS: &str = "id, patient, rail, kind, destination, currency, amount_minor, status, idempotency_key, provider_ref, attempts, failure, tax_year, created_at, updated_at";

fn payout_from(r: &sqlx::any::AnyRow) -> Result<PayoutRow, PayoutsError> {
    let c = || sql_err("reading a payout");
    Ok(PayoutRow {
        id: r.try_get("id").map_err(c())?,
        patient: r.try_get("patient").map_err(c())?,
        rail: r.try_get("rail").map_err(c())?,
        kind: r.try_get("kind").map_err(c())?,
        destination: r.try_get("destination").map_err(c())?,
        amount: Money::new(
            r.try_get("amount_minor").map_err(c())?,
            Currency::parse(&r.try_get::<String, _>("currency").map_err(c())?)?,
        ),
        status: r.try_get("status").map_err(c())?,
        idempotency_key: r.try_get("idempotency_key").map_err(c())?,
        provider_ref: r.try_get("provider_ref").map_err(c())?,
        attempts: r.try_get("attempts").map_err(c())?,
        failure: r.try_get("failure").map_err(c())?,
        tax_year: r.try_get("tax_year").map_err(c())?,
        created_at: r.try_get("created_at").map_err(c())?,
        updated_at: r.try_get("updated_at").map_err(c())?,
    })
}

impl Payouts {
    /// Registers an advocacy organization that can receive donations.
    pub async fn add_advocacy_org(&self, o: &AdvocacyOrg) -> Result<(), PayoutsError> {
        check_ref("organization id", &o.id)?;
        if !o.stripe_account.starts_with("acct_") {
            return Err(PayoutsError::Invalid(
                "stripe_account: the organization's connected account id (acct_…)".into(),
            ));
        }
        sqlx::query("INSERT INTO advocacy_orgs (id, name, disease, stripe_account, created_at, description) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET name = excluded.name, disease = excluded.disease, stripe_account = excluded.stripe_account, description = excluded.description")
            .bind(&o.id)
            .bind(&o.name)
            .bind(&o.disease)
            .bind(&o.stripe_account)
            .bind(now_text())
            .bind(o.description.trim())
            .execute(self.pool())
            .await
            .map_err(sql_err("registering an advocacy organization"))?;
        Ok(())
    }

    pub async fn advocacy_orgs(&self) -> Result<Vec<AdvocacyOrg>, PayoutsError> {
        let c = || sql_err("reading advocacy organizations");
        sqlx::query(
            "SELECT id, name, disease, stripe_account, description FROM advocacy_orgs ORDER BY name",
        )
            .fetch_all(self.pool())
            .await
            .map_err(c())?
            .iter()
            .map(|r| {
                Ok(AdvocacyOrg {
                    id: r.try_get("id").map_err(c())?,
                    name: r.try_get("name").map_err(c())?,
                    disease: r.try_get("disease").map_err(c())?,
                    stripe_account: r.try_get("stripe_account").map_err(c())?,
                    description: r.try_get("description").map_err(c())?,
                })
            })
            .collect()
    }

    /// The connected account a patient opened through Stripe's onboarding, and its status.
    pub async fn connect_account_of(
        &self,
        patient: &str,
    ) -> Result<Option<(String, String)>, PayoutsError> {
        let c = || sql_err("reading a connected account");
        let row = sqlx::query("SELECT account, status FROM connect_accounts WHERE patient = $1")
            .bind(patient)
            .fetch_optional(self.pool())
            .await
            .map_err(c())?;
        row.map(|r| {
            Ok((
                r.try_get("account").map_err(c())?,
                r.try_get("status").map_err(c())?,
            ))
        })
        .transpose()
    }

    /// Records the connected account opened for a patient (status `onboarding`). A patient has
    /// one: recording again keeps the first.
    pub async fn record_connect_account(
        &self,
        patient: &str,
        account: &str,
    ) -> Result<(), PayoutsError> {
        check_ref("patient id", patient)?;
        if !account.starts_with("acct_") || check_ref("account", account).is_err() {
            return Err(PayoutsError::Invalid(
                "a Stripe connected account id (acct_…)".into(),
            ));
        }
        let now = now_text();
        sqlx::query("INSERT INTO connect_accounts (patient, account, status, created_at, updated_at) VALUES ($1, $2, 'onboarding', $3, $3) ON CONFLICT (patient) DO NOTHING")
            .bind(patient)
            .bind(account)
            .bind(&now)
            .execute(self.pool())
            .await
            .map_err(sql_err("recording a connected account"))?;
        Ok(())
    }

    /// What Stripe says of a connected account (the patient came back from onboarding, or an
    /// `account.updated` event): its status is stored, and once Stripe pays out to it, direct
    /// payment becomes the patient's choice (their minimum kept). False when no patient has
    /// that account.
    pub async fn connect_account_updated(
        &self,
        a: &crate::rails::stripe::ConnectAccount,
    ) -> Result<bool, PayoutsError> {
        let patient: Option<String> =
            sqlx::query_scalar("SELECT patient FROM connect_accounts WHERE account = $1")
                .bind(&a.id)
                .fetch_optional(self.pool())
                .await
                .map_err(sql_err("reading a connected account"))?;
        let Some(patient) = patient else {
            return Ok(false);
        };
        sqlx::query("UPDATE connect_accounts SET status = $1, updated_at = $2 WHERE account = $3")
            .bind(a.status())
            .bind(now_text())
            .bind(&a.id)
            .execute(self.pool())
            .await
            .map_err(sql_err("updating a connected account"))?;
        if a.status() == "enabled" {
            let prefs = self.preferences(&patient).await?;
            if !matches!(&prefs.choice, Choice::Direct { stripe_account } if stripe_account == &a.id)
            {
                self.set_preferences(
                    &patient,
                    &Preferences {
                        choice: Choice::Direct {
                            stripe_account: a.id.clone(),
                        },
                        ..prefs
                    },
                )
                .await?;
            }
        }
        Ok(true)
    }

    async fn advocacy_org(&self, id: &str) -> Result<Option<AdvocacyOrg>, PayoutsError> {
        Ok(self.advocacy_orgs().await?.into_iter().find(|o| o.id == id))
    }

    /// Sets a patient's payout preferences (checked: a registered organization, a Stripe
    /// connected account id, a product id, a minimum no lower than [`LOWEST_MINIMUM`]).
    pub async fn set_preferences(
        &self,
        patient: &str,
        p: &Preferences,
    ) -> Result<(), PayoutsError> {
        check_ref("patient id", patient)?;
        if p.minimum_minor < LOWEST_MINIMUM {
            return Err(PayoutsError::Invalid(format!(
                "minimum payout: at least {} {}",
                crate::rails::decimal_text(Money::new(LOWEST_MINIMUM, p.currency)),
                p.currency
            )));
        }
        match &p.choice {
            Choice::Donation { organization } => {
                if self.advocacy_org(organization).await?.is_none() {
                    return Err(PayoutsError::Invalid(format!(
                        "organization `{organization}` is not a registered advocacy organization"
                    )));
                }
            }
            Choice::Direct { stripe_account } => {
                if !stripe_account.starts_with("acct_")
                    || check_ref("account", stripe_account).is_err()
                {
                    return Err(PayoutsError::Invalid(
                        "stripe_account: your Stripe connected account id (acct_…)".into(),
                    ));
                }
            }
            Choice::GiftCard { product } => check_ref("product", product)?,
            Choice::Accumulate => {}
        }
        sqlx::query("INSERT INTO payout_prefs (patient, choice, destination, currency, minimum_minor, updated_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (patient) DO UPDATE SET choice = excluded.choice, destination = excluded.destination, currency = excluded.currency, minimum_minor = excluded.minimum_minor, updated_at = excluded.updated_at")
            .bind(patient)
            .bind(p.choice.code())
            .bind(p.choice.destination())
            .bind(p.currency.as_str())
            .bind(p.minimum_minor)
            .bind(now_text())
            .execute(self.pool())
            .await
            .map_err(sql_err("saving payout preferences"))?;
        Ok(())
    }

    /// A patient's preferences (the defaults when none were set: keep accumulating).
    pub async fn preferences(&self, patient: &str) -> Result<Preferences, PayoutsError> {
        let Some(r) = sqlx::query("SELECT choice, destination, currency, minimum_minor FROM payout_prefs WHERE patient = $1")
            .bind(patient)
            .fetch_optional(self.pool())
            .await
            .map_err(sql_err("reading payout preferences"))?
        else {
            return Ok(Preferences::default());
        };
        let c = || sql_err("reading payout preferences");
        Ok(Preferences {
            choice: Choice::from_row(
                &r.try_get::<String, _>("choice").map_err(c())?,
                r.try_get("destination").map_err(c())?,
            ),
            currency: Currency::parse(&r.try_get::<String, _>("currency").map_err(c())?)?,
            minimum_minor: r.try_get("minimum_minor").map_err(c())?,
        })
    }

    /// Records identity verification status (from the identity provider's signed webhook).
    pub async fn set_identity(
        &self,
        patient: &str,
        status: IdentityStatus,
        provider_ref: &str,
    ) -> Result<(), PayoutsError> {
        check_ref("patient id", patient)?;
        sqlx::query("INSERT INTO identity_checks (patient, status, provider_ref, updated_at) VALUES ($1, $2, $3, $4) ON CONFLICT (patient) DO UPDATE SET status = excluded.status, provider_ref = excluded.provider_ref, updated_at = excluded.updated_at")
            .bind(patient)
            .bind(status.code())
            .bind(provider_ref)
            .bind(now_text())
            .execute(self.pool())
            .await
            .map_err(sql_err("recording identity status"))?;
        Ok(())
    }

    pub async fn identity(&self, patient: &str) -> Result<IdentityStatus, PayoutsError> {
        let s: Option<String> =
            sqlx::query_scalar("SELECT status FROM identity_checks WHERE patient = $1")
                .bind(patient)
                .fetch_optional(self.pool())
                .await
                .map_err(sql_err("reading identity status"))?;
        Ok(s.as_deref()
            .map(IdentityStatus::parse)
            .unwrap_or(IdentityStatus::Unverified))
    }

    /// Records that a tax form (`W-9`) is on file for a patient.
    pub async fn record_tax_form(&self, patient: &str, form: &str) -> Result<(), PayoutsError> {
        check_ref("patient id", patient)?;
        if form != "W-9" {
            return Err(PayoutsError::Invalid("tax form: W-9".into()));
        }
        sqlx::query("INSERT INTO tax_forms (patient, form, received_at) VALUES ($1, $2, $3) ON CONFLICT (patient, form) DO NOTHING")
            .bind(patient)
            .bind(form)
            .bind(now_text())
            .execute(self.pool())
            .await
            .map_err(sql_err("recording a tax form"))?;
        Ok(())
    }

    pub async fn has_tax_form(&self, patient: &str) -> Result<bool, PayoutsError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tax_forms WHERE patient = $1 AND form = 'W-9'",
        )
        .bind(patient)
        .fetch_one(self.pool())
        .await
        .map_err(sql_err("reading tax forms"))?;
        Ok(n > 0)
    }

    /// What a patient has been paid (or is being paid) in `year`, in `currency`.
    pub async fn paid_in_year(
        &self,
        patient: &str,
        year: i32,
        currency: Currency,
    ) -> Result<i64, PayoutsError> {
        sqlx::query_scalar("SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM payouts WHERE patient = $1 AND tax_year = $2 AND currency = $3 AND status IN ('reserved', 'submitting', 'submitted', 'posted')")
            .bind(patient)
            .bind(i64::from(year))
            .bind(currency.as_str())
            .fetch_one(self.pool())
            .await
            .map_err(sql_err("summing payments"))
    }

    /// Why a payout of the patient's available balance would not be made on `date` (empty:
    /// it would be made). Donations count towards the reporting threshold too: the patient
    /// earned the money and directed it.
    pub async fn holds(
        &self,
        patient: &str,
        date: NaiveDate,
        rails: &Rails,
    ) -> Result<Vec<Hold>, PayoutsError> {
        let prefs = self.preferences(patient).await?;
        let available = self
            .balance(&Account::patient_available(patient, prefs.currency))
            .await?;
        let mut holds = Vec::new();
        if prefs.choice == Choice::Accumulate {
            holds.push(Hold::Accumulating);
        }
        if available < prefs.minimum_minor {
            holds.push(Hold::BelowMinimum {
                available,
                minimum: prefs.minimum_minor,
            });
        }
        let identity = self.identity(patient).await?;
        if identity != IdentityStatus::Verified {
            holds.push(Hold::IdentityNotVerified { status: identity });
        }
        let paid = self
            .paid_in_year(patient, tax::tax_year(date), prefs.currency)
            .await?;
        if available > 0
            && tax::needs_form(date, paid, Money::new(available, prefs.currency))
            && !self.has_tax_form(patient).await?
        {
            let threshold = tax::reporting_threshold(date, prefs.currency)
                .map(|m| m.minor)
                .unwrap_or(0);
            holds.push(Hold::TaxFormRequired {
                paid_this_year: paid,
                threshold,
            });
        }
        if let Choice::Donation { organization } = &prefs.choice
            && self.advocacy_org(organization).await?.is_none()
        {
            holds.push(Hold::OrganizationUnknown {
                organization: organization.clone(),
            });
        }
        let rail = rail_of(&prefs.choice);
        if let Some(rail) = rail
            && rails.get(rail).is_none()
        {
            holds.push(Hold::RailNotConfigured {
                rail: rail.to_string(),
            });
        }
        Ok(holds)
    }

    /// Patients with a positive available balance, in one currency.
    async fn patients_with_balance(&self) -> Result<Vec<(String, Currency)>, PayoutsError> {
        let c = || sql_err("reading balances");
        sqlx::query("SELECT owner, currency FROM ledger_accounts WHERE kind = 'available' AND balance > 0 ORDER BY owner")
            .fetch_all(self.pool())
            .await
            .map_err(c())?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("owner").map_err(c())?,
                    Currency::parse(&r.try_get::<String, _>("currency").map_err(c())?)?,
                ))
            })
            .collect()
    }

    /// Creates a payout of the patient's whole available balance and reserves it, in one
    /// database transaction. Returns `None` when the patient is held (see [`Payouts::holds`]).
    pub async fn create_payout(
        &self,
        patient: &str,
        date: NaiveDate,
        rails: &Rails,
    ) -> Result<Option<PayoutRow>, PayoutsError> {
        if !self.holds(patient, date, rails).await?.is_empty() {
            return Ok(None);
        }
        let prefs = self.preferences(patient).await?;
        let Some(rail) = rail_of(&prefs.choice) else {
            return Ok(None);
        };
        let destination = match &prefs.choice {
            Choice::Donation { organization } => self
                .advocacy_org(organization)
                .await?
                .map(|o| o.stripe_account)
                .unwrap_or_default(),
            other => other.destination().unwrap_or_default().to_string(),
        };
        let org = match &prefs.choice {
            Choice::Donation { organization } => Some(organization.clone()),
            _ => None,
        };
        let cur = prefs.currency;
        let id = new_id("po");
        let now = now_text();
        let created = crate::retry(|| async {
            let mut tx = self.begin().await?;
            let amount: i64 = sqlx::query_scalar("SELECT balance FROM ledger_accounts WHERE id = $1")
                .bind(Account::patient_available(patient, cur).id())
                .fetch_optional(&mut *tx)
                .await
                .map_err(sql_err("reading a balance"))?
                .unwrap_or(0);
            if amount < prefs.minimum_minor {
                return Ok(None);
            }
            // The row keeps the organization for donations (its clearing account) and the
            // connected account or product the rail pays.
            let (kind, dest_col) = match &org {
                Some(o) => ("donation", o.clone()),
                None => (prefs.choice.code(), destination.clone()),
            };
            sqlx::query(sqlx::AssertSqlSafe(format!("INSERT INTO payouts ({PAYOUT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, 'reserved', $8, NULL, 0, NULL, $9, $10, $10)")))
                .bind(&id)
                .bind(patient)
                .bind(rail)
                .bind(kind)
                .bind(&dest_col)
                .bind(cur.as_str())
                .bind(amount)
                .bind(format!("tessera-payout-{id}"))
                .bind(i64::from(tax::tax_year(date)))
                .bind(&now)
                .execute(&mut *tx)
                .await
                .map_err(sql_err("creating a payout"))?;
            ledger::post_in(&mut tx, &NewTransaction {
                key: format!("payout:{id}:reserve"),
                kind: "payout_reserve".into(),
                source: Source { payout: Some(id.clone()), organization: org.clone(), ..Source::default() },
                entries: vec![
                    Entry::debit(Account::patient_available(patient, cur), amount),
                    Entry::credit(Account::patient_reserved(patient, cur), amount),
                ],
                reverses: None,
            }).await?;
            tx.commit().await.map_err(sql_err("committing a payout"))?;
            Ok(Some(()))
        })
        .await?;
        match created {
            Some(()) => self.payout(&id).await,
            None => Ok(None),
        }
    }

    pub async fn payout(&self, id: &str) -> Result<Option<PayoutRow>, PayoutsError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PAYOUT_COLUMNS} FROM payouts WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .map_err(sql_err("reading a payout"))?
        .as_ref()
        .map(payout_from)
        .transpose()
    }

    /// Payouts, newest first; of one patient when named.
    pub async fn payouts(&self, patient: Option<&str>) -> Result<Vec<PayoutRow>, PayoutsError> {
        let (sql, arg) = match patient {
            Some(p) => (
                format!(
                    "SELECT {PAYOUT_COLUMNS} FROM payouts WHERE patient = $1 ORDER BY created_at DESC"
                ),
                Some(p),
            ),
            None => (
                format!("SELECT {PAYOUT_COLUMNS} FROM payouts ORDER BY created_at DESC"),
                None,
            ),
        };
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(a) = arg {
            q = q.bind(a);
        }
        q.fetch_all(self.pool())
            .await
            .map_err(sql_err("reading payouts"))?
            .iter()
            .map(payout_from)
            .collect()
    }

    pub(crate) async fn payouts_in(
        &self,
        statuses: &[&str],
    ) -> Result<Vec<PayoutRow>, PayoutsError> {
        let list = statuses
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PAYOUT_COLUMNS} FROM payouts WHERE status IN ({list}) ORDER BY created_at"
        )))
        .fetch_all(self.pool())
        .await
        .map_err(sql_err("reading payouts"))?
        .iter()
        .map(payout_from)
        .collect()
    }

    /// Moves payout `id` from `from` to `to` and posts `t`, in one database transaction.
    /// Returns false (and posts nothing) when the payout is not in `from` any more.
    async fn step(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        set: Option<(&str, &str)>,
        t: Option<NewTransaction>,
    ) -> Result<bool, PayoutsError> {
        let list = from
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ");
        crate::retry(|| async {
            let mut tx = self.begin().await?;
            let extra = match set {
                Some((col, _)) => format!(", {col} = $4"),
                None => String::new(),
            };
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE payouts SET status = $1, updated_at = $2{extra} WHERE id = $3 AND status IN ({list})"
            )))
            .bind(to)
            .bind(now_text())
            .bind(id);
            if let Some((_, v)) = set {
                q = q.bind(v);
            }
            let done = q.execute(&mut *tx).await.map_err(sql_err("moving a payout"))?;
            if done.rows_affected() != 1 {
                return Ok(false);
            }
            if let Some(t) = &t {
                ledger::post_in(&mut tx, t).await?;
            }
            tx.commit().await.map_err(sql_err("committing a payout step"))?;
            Ok(true)
        })
        .await
    }

    /// Records a top-up of the gift-card provider's funding balance from the Stripe balance
    /// (an operator's bank transfer), once per `reference`.
    pub async fn fund_giftcard_provider(
        &self,
        amount: Money,
        reference: &str,
    ) -> Result<crate::Posted, PayoutsError> {
        check_ref("reference", reference)?;
        self.post(&NewTransaction {
            key: format!("provider_funding:{reference}"),
            kind: "provider_funding".into(),
            source: Source::default(),
            entries: vec![
                Entry::debit(rail_funds("giftcard", amount.currency), amount.minor),
                Entry::credit(rail_funds("stripe_connect", amount.currency), amount.minor),
            ],
            reverses: None,
        })
        .await
    }

    /// `submitting → submitted` (the provider accepted it): reserved → clearing.
    pub async fn mark_submitted(
        &self,
        p: &PayoutRow,
        provider_ref: &str,
    ) -> Result<bool, PayoutsError> {
        let cur = p.amount.currency;
        self.step(
            &p.id,
            &["submitting", "reserved"],
            "submitted",
            Some(("provider_ref", provider_ref)),
            Some(NewTransaction {
                key: format!("payout:{}:submit", p.id),
                kind: "payout_submit".into(),
                source: payout_source(p),
                entries: vec![
                    Entry::debit(Account::patient_reserved(&p.patient, cur), p.amount.minor),
                    Entry::credit(p.clearing(), p.amount.minor),
                ],
                reverses: None,
            }),
        )
        .await
    }

    /// `submitted → posted` (the provider settled it): clearing → provider funds.
    pub async fn mark_posted(&self, p: &PayoutRow) -> Result<bool, PayoutsError> {
        let cur = p.amount.currency;
        self.step(
            &p.id,
            &["submitted"],
            "posted",
            None,
            Some(NewTransaction {
                key: format!("payout:{}:post", p.id),
                kind: "payout_post".into(),
                source: payout_source(p),
                entries: vec![
                    Entry::debit(p.clearing(), p.amount.minor),
                    Entry::credit(rail_funds(&p.rail, cur), p.amount.minor),
                ],
                reverses: None,
            }),
        )
        .await
    }

    /// `reserved | submitting | submitted → voided` (refused or failed at the provider): the
    /// money goes back to the patient's available balance.
    pub async fn mark_voided(&self, p: &PayoutRow, failure: &str) -> Result<bool, PayoutsError> {
        let cur = p.amount.currency;
        let from = if p.status == "submitted" {
            p.clearing()
        } else {
            Account::patient_reserved(&p.patient, cur)
        };
        let statuses: &[&str] = if p.status == "submitted" {
            &["submitted"]
        } else {
            &["reserved", "submitting"]
        };
        self.step(
            &p.id,
            statuses,
            "voided",
            Some(("failure", failure)),
            Some(NewTransaction {
                key: format!("payout:{}:void", p.id),
                kind: "payout_void".into(),
                source: payout_source(p),
                entries: vec![
                    Entry::debit(from, p.amount.minor),
                    Entry::credit(Account::patient_available(&p.patient, cur), p.amount.minor),
                ],
                reverses: None,
            }),
        )
        .await
    }

    /// `posted → returned` (the provider gave the money back, e.g. a reversed transfer):
    /// provider funds → the patient's available balance.
    pub async fn mark_returned(&self, p: &PayoutRow) -> Result<bool, PayoutsError> {
        let cur = p.amount.currency;
        self.step(
            &p.id,
            &["posted"],
            "returned",
            None,
            Some(NewTransaction {
                key: format!("payout:{}:return", p.id),
                kind: "payout_return".into(),
                source: payout_source(p),
                entries: vec![
                    Entry::debit(rail_funds(&p.rail, cur), p.amount.minor),
                    Entry::credit(Account::patient_available(&p.patient, cur), p.amount.minor),
                ],
                reverses: None,
            }),
        )
        .await
    }

    /// Applies what the provider says of a payout: accepted, settled or failed. Safe to call
    /// any number of times and in any order (a webhook, a lookup, the submit answer).
    pub async fn apply_provider_record(
        &self,
        id: &str,
        rec: &ProviderRecord,
    ) -> Result<(), PayoutsError> {
        let Some(mut p) = self.payout(id).await? else {
            return Err(PayoutsError::NotFound(format!("no payout `{id}`")));
        };
        if rec.amount != p.amount && rec.state != ProviderState::Failed {
            // Never settle a payout the provider records with another amount: leave it for
            // reconciliation to report.
            return Err(PayoutsError::Invalid(format!(
                "payout `{id}`: the provider records {}, the ledger {}; left for reconciliation",
                rec.amount, p.amount
            )));
        }
        match rec.state {
            ProviderState::Failed => {
                if matches!(p.status.as_str(), "reserved" | "submitting" | "submitted") {
                    self.mark_voided(&p, "failed_at_provider").await?;
                }
            }
            ProviderState::Pending | ProviderState::Paid => {
                if matches!(p.status.as_str(), "reserved" | "submitting") {
                    self.mark_submitted(&p, &rec.provider_ref).await?;
                    fault::point("payout.after_submitted").await;
                    p = self.payout(id).await?.unwrap_or(p);
                }
                if rec.state == ProviderState::Paid && p.status == "submitted" {
                    self.mark_posted(&p).await?;
                    fault::point("payout.after_posted").await;
                }
            }
        }
        if let Some(link) = &rec.claim_url {
            // The redemption link is the patient's gift card: kept for their page only.
            sqlx::query("UPDATE payouts SET claim_url = $1 WHERE id = $2 AND claim_url IS NULL")
                .bind(link)
                .bind(id)
                .execute(self.pool())
                .await
                .map_err(sql_err("recording a claim link"))?;
        }
        Ok(())
    }

    /// Sends one payout that is `reserved` or `submitting` (looking it up first when
    /// `submitting`), and applies the answer.
    async fn send_one(
        &self,
        p: &PayoutRow,
        rails: &Rails,
        report: &mut RunReport,
    ) -> Result<(), PayoutsError> {
        let Some(rail) = rails.get(&p.rail) else {
            report.unknown += 1;
            return Ok(());
        };
        let order = p.order();
        if p.status == "submitting" {
            match rail.lookup(&order).await {
                Ok(Some(rec)) => return self.settle(p, &rec, report).await,
                Ok(None) => {} // never arrived: send again with the same key
                Err(_) => {
                    report.unknown += 1;
                    return Ok(());
                }
            }
        }
        // reserved → submitting, committed before the call, counting attempts.
        let moved = crate::retry(|| async {
            let done = sqlx::query("UPDATE payouts SET status = 'submitting', attempts = attempts + 1, updated_at = $1 WHERE id = $2 AND status IN ('reserved', 'submitting')")
                .bind(now_text())
                .bind(&p.id)
                .execute(self.pool())
                .await
                .map_err(sql_err("marking a payout submitting"))?;
            Ok(done.rows_affected() == 1)
        })
        .await?;
        if !moved {
            return Ok(());
        }
        fault::point("payout.after_mark_submitting").await;
        match rail.submit(&order).await {
            Ok(rec) => {
                fault::point("payout.after_provider_call").await;
                self.settle(p, &rec, report).await
            }
            Err(RailError::Unknown(_)) => {
                report.unknown += 1;
                Ok(())
            }
            Err(RailError::Rejected(why)) => {
                let mut now = p.clone();
                now.status = "submitting".into();
                if self.mark_voided(&now, &failure_code(&why)).await? {
                    report.voided += 1;
                }
                Ok(())
            }
        }
    }

    async fn settle(
        &self,
        p: &PayoutRow,
        rec: &ProviderRecord,
        report: &mut RunReport,
    ) -> Result<(), PayoutsError> {
        let before = self.payout(&p.id).await?.map(|x| x.status);
        self.apply_provider_record(&p.id, rec).await?;
        let after = self.payout(&p.id).await?.map(|x| x.status);
        match (before.as_deref(), after.as_deref()) {
            (Some("reserved" | "submitting"), Some("submitted")) => report.submitted += 1,
            (Some("reserved" | "submitting"), Some("posted")) => {
                report.submitted += 1;
                report.posted += 1
            }
            (Some("submitted"), Some("posted")) => report.posted += 1,
            (_, Some("voided")) if before.as_deref() != Some("voided") => report.voided += 1,
            _ => {}
        }
        Ok(())
    }

    /// One run of the payout worker: finishes what an earlier run left (payouts `reserved`,
    /// `submitting` or `submitted`), then pays every patient with a balance who is not held.
    pub async fn run_payouts(
        &self,
        rails: &Rails,
        date: NaiveDate,
    ) -> Result<RunReport, PayoutsError> {
        let mut report = RunReport::default();
        self.finish_open(rails, &mut report).await?;
        for (patient, _) in self.patients_with_balance().await? {
            match self.create_payout(&patient, date, rails).await? {
                Some(p) => {
                    report.created += 1;
                    fault::point("payout.after_reserve").await;
                    self.send_one(&p, rails, &mut report).await?;
                }
                None => report.held += 1,
            }
        }
        Ok(report)
    }

    async fn finish_open(&self, rails: &Rails, report: &mut RunReport) -> Result<(), PayoutsError> {
        for p in self.payouts_in(&["reserved", "submitting"]).await? {
            self.send_one(&p, rails, report).await?;
        }
        for p in self.payouts_in(&["submitted"]).await? {
            let Some(rail) = rails.get(&p.rail) else {
                continue;
            };
            match rail.lookup(&p.order()).await {
                Ok(Some(rec)) if rec.state != ProviderState::Pending => {
                    self.settle(&p, &rec, report).await?
                }
                Ok(_) => {}
                Err(_) => report.unknown += 1,
            }
        }
        Ok(())
    }
}

fn payout_source(p: &PayoutRow) -> Source {
    Source {
        payout: Some(p.id.clone()),
        organization: (p.kind == "donation").then(|| p.destination.clone()),
        ..Source::default()
    }
}

fn rail_of(c: &Choice) -> Option<&'static str> {
    match c {
        Choice::Accumulate => None,
        Choice::GiftCard { .. } => Some("giftcard"),
        Choice::Donation { .. } | Choice::Direct { .. } => Some("stripe_connect"),
    }
}

/// A short code for a refusal (the provider's words are not stored: they may quote fields).
fn failure_code(why: &str) -> String {
    let digits: String = why.chars().filter(|c| c.is_ascii_digit()).take(3).collect();
    if digits.is_empty() {
        "rejected".into()
    } else {
        format!("rejected_{digits}")
    }
}

/// Today's date (UTC), for callers without one of their own.
pub fn today() -> NaiveDate {
    Utc::now().date_naive()
}
