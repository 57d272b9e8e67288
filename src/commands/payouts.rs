//! `tessera payouts …`: invoicing licenses, studies and survey incentives, advocacy
//! organizations, patients' choices and holds, the payout worker, reconciliation.

use std::process::ExitCode;

use anyhow::{Context, Result};
use chrono::Utc;
use clap::{Args, Subcommand};
use tessera::payouts::{PayoutsConfig, credit_surveys, invoice_license};
use tessera_licensing::decision::Principal;
use tessera_licensing::store::LicensingStore;
use tessera_payouts::incentives::Study;
use tessera_payouts::payout::{AdvocacyOrg, Choice, Preferences};
use tessera_payouts::{Currency, Money, Payouts};

use crate::config::GlobalArgs;
use crate::output::say;

#[derive(Debug, Subcommand)]
pub enum PayoutsCommand {
    /// Invoice a license's fee (Stripe when TESSERA_STRIPE_SECRET_KEY is set, else recorded
    /// offline); revenue is recognized when the payment webhook arrives.
    Invoice {
        #[arg(long)]
        license: String,
    },
    /// List invoices.
    Invoices,
    /// Register a study and its incentive schedule (amounts in minor units).
    Study(StudyArgs),
    /// Credit completed surveys in the catalog to their studies (once each).
    Surveys,
    /// Register an advocacy organization that receives donations.
    Org(OrgArgs),
    /// Set a patient's payout choice.
    Prefs(PrefsArgs),
    /// Record that a patient's W-9 is on file.
    W9 {
        #[arg(long)]
        patient: String,
    },
    /// Record a top-up of the gift-card provider's funding balance (minor units).
    FundGiftcard {
        #[arg(long)]
        amount: i64,
        #[arg(long)]
        reference: String,
        #[arg(long, default_value = "USD")]
        currency: String,
    },
    /// Run the payout worker once: finish open payouts, then pay every patient not held.
    Run,
    /// Compare the ledger with the providers' records; exit 3 when anything differs.
    Reconcile,
    /// Every ledger account's balance, and the ledger's own checks.
    Balances,
    /// A patient's earnings, holds and payouts (JSON).
    Show {
        #[arg(long)]
        patient: String,
    },
    /// A sign-in link for a patient's earnings page (a patient key, shown once).
    SignIn {
        #[arg(long)]
        patient: String,
        /// The server's address, for the link.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        #[arg(long, default_value_t = 7)]
        days: i64,
    },
}

#[derive(Debug, Args)]
pub struct StudyArgs {
    #[arg(long)]
    pub id: String,
    #[arg(long)]
    pub sponsor: String,
    /// Questionnaire canonical URLs (repeat).
    #[arg(long = "questionnaire", required = true)]
    pub questionnaires: Vec<String>,
    #[arg(long, default_value = "USD")]
    pub currency: String,
    #[arg(long, default_value_t = 0)]
    pub enrollment: i64,
    #[arg(long)]
    pub per_survey: i64,
    #[arg(long)]
    pub survey_cap: i64,
    #[arg(long)]
    pub patient_cap: i64,
}

#[derive(Debug, Args)]
pub struct OrgArgs {
    #[arg(long)]
    pub id: String,
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub disease: String,
    #[arg(long)]
    pub stripe_account: String,
    /// A sentence about what the organization does, shown to patients choosing where to
    /// donate.
    #[arg(long, default_value = "")]
    pub description: String,
}

#[derive(Debug, Args)]
pub struct PrefsArgs {
    #[arg(long)]
    pub patient: String,
    #[arg(long, value_parser = ["accumulate", "gift_card", "donation", "direct"])]
    pub choice: String,
    /// Gift-card product, organization id, or Stripe connected account.
    #[arg(long, default_value = "")]
    pub destination: String,
    #[arg(long, default_value_t = 2_500)]
    pub minimum: i64,
    #[arg(long, default_value = "USD")]
    pub currency: String,
}

pub async fn run(g: &GlobalArgs, cmd: PayoutsCommand) -> Result<ExitCode> {
    let catalog = super::open_catalog(g, false).await?;
    let keyring = g.keyring(false)?;
    let cfg = PayoutsConfig::from_env(&keyring);
    let payouts = Payouts::connect(&g.database_url())
        .await
        .context("cannot open the payouts store")?;
    let today = Utc::now().date_naive();
    let code = match cmd {
        PayoutsCommand::Invoice { license } => {
            let store = LicensingStore::connect(&g.database_url()).await?;
            let l = store
                .find_license(&license)
                .await?
                .with_context(|| format!("no license `{license}`"))?;
            let inv = invoice_license(&payouts, &catalog, &l, &cfg).await?;
            say!(
                "invoice {} for license {}: {} ({} contributing patients, {} bps to patients), {} via {}",
                inv.id,
                inv.license,
                inv.amount,
                inv.contributors,
                inv.patient_share_bps,
                inv.status,
                inv.provider
            );
            ExitCode::SUCCESS
        }
        PayoutsCommand::Invoices => {
            for i in payouts.invoices().await? {
                say!(
                    "{}  {:<24} {:>14}  {:<6} {} contributors  {}",
                    i.id,
                    i.license,
                    i.amount.to_string(),
                    i.status,
                    i.contributors,
                    i.provider_ref.unwrap_or_default()
                );
            }
            ExitCode::SUCCESS
        }
        PayoutsCommand::Study(a) => {
            let c = Currency::parse(&a.currency)?;
            payouts
                .add_study(&Study {
                    id: a.id.clone(),
                    sponsor: a.sponsor,
                    questionnaires: a.questionnaires,
                    enrollment: Money::new(a.enrollment, c),
                    per_survey: Money::new(a.per_survey, c),
                    survey_cap_minor: a.survey_cap,
                    patient_cap_minor: a.patient_cap,
                })
                .await?;
            say!("study {} registered", a.id);
            ExitCode::SUCCESS
        }
        PayoutsCommand::Surveys => {
            let n = credit_surveys(&payouts, &catalog).await?;
            say!("{n} new survey credits");
            ExitCode::SUCCESS
        }
        PayoutsCommand::Org(a) => {
            payouts
                .add_advocacy_org(&AdvocacyOrg {
                    id: a.id.clone(),
                    name: a.name,
                    disease: a.disease,
                    stripe_account: a.stripe_account,
                    description: a.description,
                })
                .await?;
            say!("advocacy organization {} registered", a.id);
            ExitCode::SUCCESS
        }
        PayoutsCommand::Prefs(a) => {
            let d = a.destination.clone();
            let choice = match a.choice.as_str() {
                "gift_card" => Choice::GiftCard { product: d },
                "donation" => Choice::Donation { organization: d },
                "direct" => Choice::Direct { stripe_account: d },
                _ => Choice::Accumulate,
            };
            payouts
                .set_preferences(
                    &a.patient,
                    &Preferences {
                        choice,
                        currency: Currency::parse(&a.currency)?,
                        minimum_minor: a.minimum,
                    },
                )
                .await?;
            say!("payout choice saved");
            ExitCode::SUCCESS
        }
        PayoutsCommand::W9 { patient } => {
            payouts.record_tax_form(&patient, "W-9").await?;
            say!("W-9 on file");
            ExitCode::SUCCESS
        }
        PayoutsCommand::FundGiftcard {
            amount,
            reference,
            currency,
        } => {
            payouts
                .fund_giftcard_provider(Money::new(amount, Currency::parse(&currency)?), &reference)
                .await?;
            say!("gift-card provider funding recorded");
            ExitCode::SUCCESS
        }
        PayoutsCommand::Run => {
            let rails = cfg.rails()?;
            if rails.names().is_empty() {
                say!(
                    "no payout rail is configured (TESSERA_STRIPE_SECRET_KEY, TESSERA_GIFTCARD_API_BASE/KEY): payouts wait"
                );
            }
            let r = payouts.run_payouts(&rails, today).await?;
            say!(
                "payouts: {} created, {} submitted, {} posted, {} voided, {} outcome unknown (looked up next run), {} patients held",
                r.created,
                r.submitted,
                r.posted,
                r.voided,
                r.unknown,
                r.held
            );
            ExitCode::SUCCESS
        }
        PayoutsCommand::Reconcile => {
            let r = payouts.reconcile(&cfg.rails()?).await?;
            say!(
                "reconciliation: {} payouts checked against providers, {} provider records",
                r.payouts_checked,
                r.provider_records
            );
            for d in &r.differences {
                say!("  {:<28} {}  {}", d.kind, d.subject, d.detail);
            }
            if r.differences.is_empty() {
                say!("no differences");
                ExitCode::SUCCESS
            } else {
                ExitCode::from(crate::EXIT_QUARANTINED)
            }
        }
        PayoutsCommand::Balances => {
            for b in payouts.balances().await? {
                say!(
                    "{:<48} {:>14}",
                    b.account_id,
                    b.money().map(|m| m.to_string()).unwrap_or_default()
                );
            }
            let problems = payouts.verify_ledger().await?;
            say!(
                "ledger: {} transactions, {}",
                payouts.transaction_count().await?,
                if problems.is_empty() {
                    "balanced".to_string()
                } else {
                    problems.join("; ")
                }
            );
            ExitCode::SUCCESS
        }
        PayoutsCommand::Show { patient } => {
            let e = payouts.earnings(&patient, today, &cfg.rails()?).await?;
            say!("{}", serde_json::to_string_pretty(&e)?);
            ExitCode::SUCCESS
        }
        PayoutsCommand::SignIn {
            patient,
            server,
            days,
        } => {
            let link = sign_in_link(g, &catalog, &patient, &server, days).await?;
            say!("{link}");
            ExitCode::SUCCESS
        }
    };
    payouts.close().await;
    catalog.close().await;
    Ok(code)
}

/// Issues a patient key (licensing: refused by every licensing decision) and returns the
/// sign-in link carrying it.
pub async fn sign_in_link(
    g: &GlobalArgs,
    catalog: &tessera_catalog::Catalog,
    patient: &str,
    server: &str,
    days: i64,
) -> Result<String> {
    if catalog.consent_history(patient).await.is_err() {
        anyhow::bail!("no patient `{patient}`: `tessera patients list` shows the ids");
    }
    let keyring = g.keyring(false)?;
    let store = LicensingStore::connect(&g.database_url()).await?;
    let (key, _) = store
        .issue_key(
            &Principal::Patient {
                patient: patient.to_string(),
            },
            Some(Utc::now() + chrono::Duration::days(days.clamp(1, 30))),
            &keyring.application_secret("api-key-pepper"),
        )
        .await?;
    store.close().await;
    Ok(format!(
        "{}/me/sign-in?token={key}",
        server.trim_end_matches('/')
    ))
}
