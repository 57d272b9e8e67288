//! Stripe, through async-stripe (pinned `=1.0.0-rc.10`): Connect transfers as a payout rail,
//! and invoicing of license fees (a customer per organization, an invoice item, an invoice
//! sent for payment). Every request carries an idempotency key derived from the Tessera row it
//! serves: async-stripe's retry strategies would send none of their own, so the strategy is
//! always `Idempotent(key)` and the worker, not the client, retries (with the same key).

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use stripe::{Client, ClientBuilder, RequestStrategy, StripeError, StripeRequest};
use stripe_billing::invoice::{CreateInvoice, FinalizeInvoiceInvoice, SendInvoiceInvoice};
use stripe_billing::invoice_item::CreateInvoiceItem;
use stripe_connect::transfer::{CreateTransfer, ListTransfer};
use stripe_core::customer::CreateCustomer;
use stripe_shared::InvoiceCollectionMethod;
use stripe_types::Currency as StripeCurrency;

use super::{PayoutOrder, ProviderRecord, ProviderState, Rail, RailError};
use crate::PayoutsError;
use crate::money::{Currency, Money};

/// A Stripe client: the secret key, and the API base (Stripe's own unless a test or a
/// stand-in such as localstripe is named).
#[derive(Clone)]
pub struct Stripe {
    client: Client,
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stripe").finish_non_exhaustive()
    }
}

impl Stripe {
    pub fn new(
        secret_key: &str,
        base_url: Option<&str>,
        timeout: Duration,
    ) -> Result<Stripe, PayoutsError> {
        let mut b = ClientBuilder::new(secret_key).timeout(timeout);
        if let Some(u) = base_url {
            b = b.url(u);
        }
        let client = b.build().map_err(|e| PayoutsError::Rail {
            rail: "stripe".into(),
            message: format!("cannot make the Stripe client: {e}"),
        })?;
        Ok(Stripe { client })
    }

    /// Creates (once) the Stripe customer of an organization; returns its id.
    pub async fn create_customer(
        &self,
        organization: &str,
        name: &str,
    ) -> Result<String, RailError> {
        let c = CreateCustomer::new()
            .name(name)
            .metadata(meta("tessera_organization", organization))
            .customize()
            .request_strategy(idem(&format!("tessera-customer-{organization}"))?)
            .send(&self.client)
            .await
            .map_err(classify)?;
        Ok(c.id.to_string())
    }

    /// Invoices `amount` to `customer` for Tessera invoice `invoice` (license `license`):
    /// an invoice item, an invoice collected by `send_invoice` (30 days), finalized and sent.
    /// Returns Stripe's invoice id.
    pub async fn send_invoice(
        &self,
        customer: &str,
        invoice: &str,
        license: &str,
        amount: Money,
    ) -> Result<String, RailError> {
        let mut metadata = meta("tessera_invoice", invoice);
        metadata.insert("tessera_license".into(), license.into());
        let created = CreateInvoice::new()
            .customer(customer)
            .collection_method(InvoiceCollectionMethod::SendInvoice)
            .days_until_due(30u32)
            .auto_advance(false)
            .metadata(metadata.clone())
            .customize()
            .request_strategy(idem(&format!("tessera-invoice-{invoice}-create"))?)
            .send(&self.client)
            .await
            .map_err(classify)?;
        let stripe_invoice =
            created.id.as_ref().map(|i| i.to_string()).ok_or_else(|| {
                RailError::Unknown("Stripe answered an invoice without an id".into())
            })?;
        CreateInvoiceItem::new()
            .customer(customer)
            .invoice(stripe_invoice.clone())
            .amount(amount.minor)
            .currency(stripe_currency(amount.currency))
            .description(format!("Data-use license {license}"))
            .metadata(metadata)
            .customize()
            .request_strategy(idem(&format!("tessera-invoice-{invoice}-item"))?)
            .send(&self.client)
            .await
            .map_err(classify)?;
        FinalizeInvoiceInvoice::new(stripe_invoice.clone())
            .auto_advance(false)
            .customize()
            .request_strategy(idem(&format!("tessera-invoice-{invoice}-finalize"))?)
            .send(&self.client)
            .await
            .map_err(classify)?;
        SendInvoiceInvoice::new(stripe_invoice.clone())
            .customize()
            .request_strategy(idem(&format!("tessera-invoice-{invoice}-send"))?)
            .send(&self.client)
            .await
            .map_err(classify)?;
        Ok(stripe_invoice)
    }
}

/// What Stripe says of a connected account a patient opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectAccount {
    pub id: String,
    /// The patient finished Stripe's onboarding form.
    pub details_submitted: bool,
    /// Stripe pays out to it (transfers to it reach the patient's bank).
    pub payouts_enabled: bool,
    /// How many pieces of information Stripe still needs now.
    pub currently_due: usize,
}

impl ConnectAccount {
    /// `onboarding`, `pending`, `enabled` or `restricted` (see `connect_accounts.status`).
    pub fn status(&self) -> &'static str {
        match (
            self.details_submitted,
            self.payouts_enabled,
            self.currently_due,
        ) {
            (_, true, 0) => "enabled",
            (_, true, _) | (true, false, 1..) => "restricted",
            (true, false, 0) => "pending",
            (false, false, _) => "onboarding",
        }
    }
}

impl Stripe {
    /// Opens (once per patient: the idempotency key is the patient's) an Express connected
    /// account for a patient's direct payments, able to receive transfers. Stripe collects who
    /// they are in its own hosted onboarding; Tessera sends nothing identifying, only its
    /// pseudonymous patient id as metadata.
    pub async fn create_express_account(&self, patient: &str) -> Result<String, RailError> {
        use stripe_connect::account::{
            CreateAccount, CreateAccountCapabilities, CreateAccountCapabilitiesTransfers,
            CreateAccountType,
        };
        let mut capabilities = CreateAccountCapabilities::new();
        capabilities.transfers = Some(CreateAccountCapabilitiesTransfers {
            requested: Some(true),
        });
        let a = CreateAccount::new()
            .type_(CreateAccountType::Express)
            .capabilities(capabilities)
            .metadata(meta("tessera_patient", patient))
            .customize()
            .request_strategy(idem(&format!("tessera-connect-{patient}"))?)
            .send(&self.client)
            .await
            .map_err(classify)?;
        Ok(a.id.to_string())
    }

    /// A single-use link to Stripe's hosted onboarding for `account` (it expires within
    /// minutes: make one each time the patient asks). `refresh_url` is where Stripe sends them
    /// when the link has expired, `return_url` where it sends them when they leave the form.
    pub async fn onboarding_link(
        &self,
        account: &str,
        refresh_url: &str,
        return_url: &str,
    ) -> Result<String, RailError> {
        use stripe_connect::account_link::{CreateAccountLink, CreateAccountLinkType};
        // Each link is a new object, so each request gets its own key (a retry of the same
        // request would reuse it; the worker never retries this one by itself).
        let key = format!(
            "tessera-connect-link-{account}-{}",
            chrono::Utc::now().timestamp_micros()
        );
        let link = CreateAccountLink::new(account, CreateAccountLinkType::AccountOnboarding)
            .refresh_url(refresh_url)
            .return_url(return_url)
            .customize()
            .request_strategy(idem(&key)?)
            .send(&self.client)
            .await
            .map_err(classify)?;
        Ok(link.url)
    }

    /// Where a connected account stands.
    pub async fn connect_account(&self, account: &str) -> Result<ConnectAccount, RailError> {
        use stripe_connect::account::RetrieveAccount;
        let a = RetrieveAccount::new(account.to_string())
            .send(&self.client)
            .await
            .map_err(classify)?;
        Ok(ConnectAccount {
            id: a.id.to_string(),
            details_submitted: a.details_submitted.unwrap_or(false),
            payouts_enabled: a.payouts_enabled.unwrap_or(false),
            currently_due: a
                .requirements
                .as_ref()
                .and_then(|r| r.currently_due.as_ref())
                .map_or(0, Vec::len),
        })
    }
}

fn meta(k: &str, v: &str) -> HashMap<String, String> {
    [(k.to_string(), v.to_string())].into_iter().collect()
}

fn idem(key: &str) -> Result<RequestStrategy, RailError> {
    stripe::IdempotencyKey::new(key)
        .map(RequestStrategy::Idempotent)
        .map_err(|e| RailError::Rejected(format!("idempotency key: {e}")))
}

fn stripe_currency(c: Currency) -> StripeCurrency {
    // FromStr for Stripe's currency is infallible (unknown codes are kept as given).
    match StripeCurrency::from_str(&c.as_str().to_ascii_lowercase()) {
        Ok(v) => v,
        Err(never) => match never {},
    }
}

/// Sorts Stripe's errors: a 4xx other than 409/429 is a refusal (nothing happened); everything
/// else (5xx, 409, 429, a timeout, a lost connection, an unreadable answer) leaves the outcome
/// unknown. Stripe's own message is not passed on (it can quote request fields).
fn classify(e: StripeError) -> RailError {
    match e {
        StripeError::Stripe(err, status)
            if (400..500).contains(&status) && status != 409 && status != 429 =>
        {
            RailError::Rejected(format!(
                "Stripe answered {status} ({})",
                err.code
                    .as_ref()
                    .map(|c| c.as_str().to_string())
                    .unwrap_or_else(|| "no code".into())
            ))
        }
        StripeError::Stripe(_, status) => RailError::Unknown(format!("Stripe answered {status}")),
        StripeError::Timeout => RailError::Unknown("timed out".into()),
        StripeError::ClientError(_) => RailError::Unknown("connection to Stripe failed".into()),
        StripeError::JSONDeserialize(_) => {
            RailError::Unknown("unreadable answer from Stripe".into())
        }
        StripeError::ConfigError(m) => RailError::Rejected(format!("client configuration: {m}")),
    }
}

/// Stripe Connect transfers: donations to an organization's connected account and direct
/// payments to a patient's. A transfer moves the money at once, so a created transfer is
/// `Paid`; a reversed one is `Failed`. The payout id is the transfer group, by which an
/// unknown outcome is looked up.
#[derive(Debug, Clone)]
pub struct StripeConnect {
    pub stripe: Stripe,
}

fn transfer_record(t: &stripe_shared::Transfer) -> ProviderRecord {
    let currency =
        Currency::parse(&t.currency.to_string().to_ascii_uppercase()).unwrap_or(Currency::USD);
    ProviderRecord {
        provider_ref: t.id.to_string(),
        state: if t.reversed {
            ProviderState::Failed
        } else {
            ProviderState::Paid
        },
        amount: Money::new(t.amount, currency),
        payout_id: t
            .metadata
            .get("tessera_payout")
            .cloned()
            .or_else(|| t.transfer_group.clone()),
        claim_url: None,
    }
}

#[async_trait]
impl Rail for StripeConnect {
    fn name(&self) -> &'static str {
        "stripe_connect"
    }

    async fn submit(&self, order: &PayoutOrder) -> Result<ProviderRecord, RailError> {
        let t = CreateTransfer::new(
            stripe_currency(order.amount.currency),
            order.destination.clone(),
        )
        .amount(order.amount.minor)
        .transfer_group(order.payout_id.clone())
        .metadata(meta("tessera_payout", &order.payout_id))
        .customize()
        .request_strategy(idem(&order.idempotency_key)?)
        .send(&self.stripe.client)
        .await
        .map_err(classify)?;
        Ok(transfer_record(&t))
    }

    async fn lookup(&self, order: &PayoutOrder) -> Result<Option<ProviderRecord>, RailError> {
        let list = ListTransfer::new()
            .transfer_group(order.payout_id.clone())
            .limit(10)
            .send(&self.stripe.client)
            .await
            .map_err(classify)?;
        Ok(list.data.first().map(transfer_record))
    }

    async fn recent(&self) -> Result<Vec<ProviderRecord>, RailError> {
        let list = ListTransfer::new()
            .limit(100)
            .send(&self.stripe.client)
            .await
            .map_err(classify)?;
        Ok(list
            .data
            .iter()
            .map(transfer_record)
            .filter(|r| r.payout_id.is_some())
            .collect())
    }
}
