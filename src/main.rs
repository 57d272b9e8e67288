//! `tessera`: the binary that wires the crates together. Domain logic lives in the crates; this
//! holds the command line, configuration, progress display and output formatting.

mod commands;
mod config;
mod output;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

use config::GlobalArgs;

/// Exit code when everything else went in but some input was quarantined.
pub const EXIT_QUARANTINED: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Patient-powered research data: consented ingest, de-identified releases, licensed queries, patient payouts",
    after_help = "Start with `tessera demo`. Exit codes: 0 success, 1 error, 2 usage, 3 some input quarantined."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the data folder, the master key and the database.
    Init,
    /// Build a demo: ingest the shared test data (or shipped fixtures) and grant demo consents.
    Demo(commands::demo::DemoArgs),
    /// Ingest FHIR R4 (bundles, resources, NDJSON), GA4GH phenopackets and survey responses.
    Ingest(commands::ingest::IngestArgs),
    /// Inspect input that ingest refused.
    #[command(subcommand)]
    Quarantine(commands::quarantine::QuarantineCommand),
    /// Grant, revoke and show patients' consent.
    #[command(subcommand)]
    Consent(commands::consent::ConsentCommand),
    /// List patients (internal ids and counts only).
    #[command(subcommand)]
    Patients(commands::patients::PatientsCommand),
    /// Counts of stored patients and records.
    Stats(commands::patients::StatsArgs),
    /// De-identify a CSV or Parquet table under a policy (k-anonymity, l-diversity,
    /// t-closeness, Safe Harbor transforms) and report the loss and risk.
    Deid(commands::deid::DeidArgs),
    /// Organizations and their signatories' keys.
    #[command(subcommand)]
    Org(commands::license::OrgCommand),
    /// Data-use agreements: create, sign, change status, verify, show.
    #[command(subcommand)]
    License(commands::license::LicenseCommand),
    /// API keys for analysts and operators.
    #[command(subcommand)]
    Key(commands::license::KeyCommand),
    /// Verify the audit log's hash chain.
    #[command(subcommand)]
    Audit(commands::audit::AuditCommand),
    /// Build, list, show and retire research releases.
    #[command(subcommand)]
    Release(commands::release::ReleaseCommand),
    /// Serve the HTTP API until SIGTERM or Ctrl-C.
    Serve(commands::serve::ServeArgs),
    /// License invoices, studies and survey incentives, patients' payouts, reconciliation.
    #[command(subcommand)]
    Payouts(commands::payouts::PayoutsCommand),
    /// Records from providers: the directory, patients' connections, right-of-access requests.
    #[command(subcommand)]
    Providers(commands::providers::ProvidersCommand),
    /// Study questionnaires patients answer on their pages.
    #[command(subcommand)]
    Study(commands::study::StudyCommand),
}

fn init_tracing(global: &GlobalArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&global.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match global.log_format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.global);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let g = &cli.global;
        match cli.command {
            Command::Init => commands::init(g).await,
            Command::Demo(args) => commands::demo::run(g, args).await,
            Command::Ingest(args) => commands::ingest::run(g, args).await,
            Command::Quarantine(c) => commands::quarantine::run(g, c).await,
            Command::Consent(c) => commands::consent::run(g, c).await,
            Command::Patients(c) => commands::patients::run(g, c).await,
            Command::Stats(a) => commands::patients::stats(g, a).await,
            Command::Deid(a) => commands::deid::run(g, a).await,
            Command::Release(c) => commands::release::run(g, c).await,
            Command::Audit(c) => commands::audit::run(g, c).await,
            Command::Org(c) => commands::license::org(g, c).await,
            Command::License(c) => commands::license::license(g, c).await,
            Command::Key(c) => commands::license::key(g, c).await,
            Command::Serve(a) => commands::serve::run(g, a).await,
            Command::Payouts(c) => commands::payouts::run(g, c).await,
            Command::Providers(c) => commands::providers::run(g, c).await,
            Command::Study(c) => commands::study::run(g, c).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
