//! `tessera providers`: the provider directory, patients' connections, and right-of-access
//! requests as the registry's staff work them (the letter, sending, the provider's answers,
//! the records that arrive, the schedule, the scorecard).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use chrono::Utc;
use clap::Subcommand;
use tessera_catalog::{IngestOptions, NoProgress};
use tessera_records::access_request::{
    AccessRequests, LetterDetails, Policy, letter_lines, letter_pdf,
};

use crate::config::GlobalArgs;
use crate::output;
use crate::output::say;

#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// Loads a provider directory: a FHIR Bundle of Endpoint and Organization resources, as
    /// certified EHR vendors publish them (replaces what the same `--name` held).
    Load {
        #[arg(long)]
        name: String,
        file: PathBuf,
    },
    /// Sets the client id Tessera is registered under at one provider's server.
    Client {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        client_id: String,
    },
    /// Lists providers in the directory (`--search` by name or town).
    List {
        #[arg(long, default_value = "")]
        search: String,
    },
    /// Fetches again from one patient's connected providers now.
    Sync {
        #[arg(long)]
        patient: String,
    },
    /// Prepares a right-of-access request to a provider without an API (the patient's identity
    /// must be verified); prints its id. `--provider` keys the scorecard (an NPI, say).
    Request {
        #[arg(long)]
        patient: String,
        #[arg(long)]
        provider: String,
        #[arg(long)]
        name: String,
    },
    /// Writes a request's letter (PDF) for the patient's signature.
    Letter {
        #[arg(long)]
        request: String,
        #[arg(long)]
        out: PathBuf,
        /// Where the provider sends the copy (default: the patient's address in the letter).
        #[arg(long, env = "TESSERA_RECORDS_DELIVERY")]
        deliver_to: Option<String>,
        /// The identifier system of this provider's record numbers, to print them.
        #[arg(long)]
        record_system: Option<String>,
    },
    /// Records that the signed letter was sent: the 30 days start.
    Sent {
        #[arg(long)]
        request: String,
    },
    /// Records the provider's acknowledgement.
    Ack {
        #[arg(long)]
        request: String,
    },
    /// Records the provider's one 30-day extension and its written reasons.
    Extend {
        #[arg(long)]
        request: String,
        #[arg(long)]
        reason: String,
    },
    /// Records a fee the provider asked (minor units).
    Fee {
        #[arg(long)]
        request: String,
        #[arg(long)]
        amount: i64,
        #[arg(long, default_value = "USD")]
        currency: String,
    },
    /// Attaches what arrived: the files go through ingest (quarantine included) as the
    /// patient's records, with the provider as the source.
    Receive {
        #[arg(long)]
        request: String,
        /// Some of what was asked is missing.
        #[arg(long)]
        partial: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    Cancel {
        #[arg(long)]
        request: String,
    },
    /// Applies the schedule now: follow-ups due, escalations, requests past the limit closed
    /// (`tessera serve` does this every hour).
    Tick,
    /// Lists requests (of one patient with `--patient`).
    Requests {
        #[arg(long)]
        patient: Option<String>,
    },
    /// The provider scorecard (1–5 stars from outcomes), also published at `/providers/scorecard`.
    Scorecard,
}

pub async fn run(g: &GlobalArgs, c: ProvidersCommand) -> Result<ExitCode> {
    let catalog = super::open_catalog(g, false).await?;
    let keyring = g.keyring(false)?;
    let payouts = tessera_payouts::Payouts::connect(&g.database_url()).await?;
    let records = tessera::records::RecordsServices::open(
        &g.database_url(),
        &catalog,
        &keyring,
        &payouts,
        &std::env::var("TESSERA_PUBLIC_URL").unwrap_or_else(|_| "http://localhost".into()),
    )
    .await?;
    let roa = AccessRequests::new(records.store.clone(), Policy::default());
    let now = Utc::now();
    match c {
        ProvidersCommand::Load { name, file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let report = records
                .smart
                .load_directory(&name, &bytes)
                .await
                .with_context(|| format!("{}", file.display()))?;
            say!(
                "directory `{name}`: {} providers loaded, {} endpoints left out",
                report.entries.len(),
                report.skipped.len()
            );
            for (id, why) in &report.skipped {
                say!("  left out Endpoint/{id}: {why}");
            }
        }
        ProvidersCommand::Client {
            endpoint,
            client_id,
        } => {
            records.smart.set_client_id(&endpoint, &client_id).await?;
            say!("client id set for {endpoint}");
        }
        ProvidersCommand::List { search } => {
            let rows: Vec<Vec<String>> = records
                .smart
                .directory(&search)
                .await?
                .into_iter()
                .map(|e| {
                    vec![
                        e.id,
                        e.organization,
                        [e.city, e.region]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>()
                            .join(", "),
                        e.fhir_base,
                    ]
                })
                .collect();
            output::table(&["id", "organization", "place", "FHIR base"], &rows);
        }
        ProvidersCommand::Sync { patient } => {
            for c in records.smart.connections(&patient).await? {
                if c.state != "connected" {
                    continue;
                }
                let r = records.smart.sync(&patient, &c.id).await?;
                let added = r.ingest.as_ref().map_or(0, |i| i.records.added);
                say!(
                    "{}: {} resources by {} ({} pages), {} new records, {} of another patient dropped",
                    c.organization,
                    r.resources,
                    r.method,
                    r.pages,
                    added,
                    r.foreign_dropped
                );
            }
        }
        ProvidersCommand::Request {
            patient,
            provider,
            name,
        } => {
            catalog.ensure_patient(&patient).await?;
            let id = roa.prepare(&patient, &provider, &name, now).await?;
            say!(
                "request {id} prepared: write its letter with `tessera providers letter --request {id} --out letter.pdf`"
            );
        }
        ProvidersCommand::Letter {
            request,
            out,
            deliver_to,
            record_system,
        } => {
            let r = roa.get(&request).await?;
            let identity = catalog.own_identity(&r.patient).await?;
            let deliver = deliver_to
                .map(|d| format!("{d} (reference {})", r.id))
                .unwrap_or_else(|| "the address above".into());
            let details =
                LetterDetails::from_identity(&identity, record_system.as_deref(), &deliver);
            let pdf = letter_pdf(&letter_lines(&r, &details, now, roa.policy()));
            std::fs::write(&out, pdf).with_context(|| format!("cannot write {}", out.display()))?;
            say!(
                "letter written to {} (it holds the patient's identity: hand it to them, do not keep copies)",
                out.display()
            );
        }
        ProvidersCommand::Sent { request } => {
            let r = roa.sent(&request, now).await?;
            say!(
                "sent; the provider must answer by {}",
                r.due_at
                    .map(|d| d.format("%Y-%m-%d").to_string())
                    .unwrap_or_default()
            );
        }
        ProvidersCommand::Ack { request } => {
            roa.acknowledged(&request, now).await?;
            say!("acknowledgement recorded");
        }
        ProvidersCommand::Extend { request, reason } => {
            let r = roa.extended(&request, &reason, now).await?;
            say!(
                "extension recorded; new deadline {}",
                r.due_at
                    .map(|d| d.format("%Y-%m-%d").to_string())
                    .unwrap_or_default()
            );
        }
        ProvidersCommand::Fee {
            request,
            amount,
            currency,
        } => {
            roa.fee_requested(&request, amount, &currency, now).await?;
            say!("fee recorded");
        }
        ProvidersCommand::Receive {
            request,
            partial,
            files,
        } => {
            let r = roa.get(&request).await?;
            let report = catalog
                .ingest(
                    &files,
                    &IngestOptions {
                        source: format!("right-of-access:{}", r.provider),
                        owner: Some(r.patient.clone()),
                        ..IngestOptions::default()
                    },
                    &NoProgress,
                )
                .await?;
            roa.received(&request, !partial, now).await?;
            say!(
                "received: {} records added, {} updated, {} quarantined (see `tessera quarantine list`)",
                report.records.added,
                report.records.updated,
                report.quarantined.len()
            );
        }
        ProvidersCommand::Cancel { request } => {
            roa.cancel(&request, now).await?;
            say!("cancelled");
        }
        ProvidersCommand::Tick => {
            for a in roa.tick(now).await? {
                say!("{}: {}", a.request, a.kind);
            }
        }
        ProvidersCommand::Requests { patient } => {
            let rows: Vec<Vec<String>> = roa
                .list(patient.as_deref())
                .await?
                .into_iter()
                .map(|r| {
                    vec![
                        r.id,
                        r.provider_name,
                        r.state.code().to_string(),
                        r.due_at
                            .map(|d| d.format("%Y-%m-%d").to_string())
                            .unwrap_or_default(),
                        r.follow_ups.to_string(),
                    ]
                })
                .collect();
            output::table(
                &["request", "provider", "state", "due", "follow-ups"],
                &rows,
            );
        }
        ProvidersCommand::Scorecard => {
            let rows: Vec<Vec<String>> = roa
                .scorecard()
                .await?
                .into_iter()
                .map(|s| {
                    vec![
                        s.provider_name,
                        "★".repeat(usize::from(s.stars)),
                        format!("{}/{}", s.fulfilled, s.requests),
                        s.median_days
                            .map(|d| format!("{d:.0}"))
                            .unwrap_or_else(|| "-".into()),
                        format!("{:.1}", s.follow_ups_per_request),
                    ]
                })
                .collect();
            output::table(
                &[
                    "provider",
                    "stars",
                    "fulfilled",
                    "median days",
                    "follow-ups",
                ],
                &rows,
            );
        }
    }
    catalog.close().await;
    Ok(ExitCode::SUCCESS)
}
