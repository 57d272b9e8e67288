//! `tessera deid`: a policy applied to a CSV or Parquet file, for privacy officers.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::ProgressBar;
use tessera_deid::{frame, io, policy::Policy, safe_harbor};

use crate::config::GlobalArgs;
use crate::output::say;

#[derive(Debug, Args)]
pub struct DeidArgs {
    /// The de-identification policy (TOML; see docs/deid-policy.md).
    #[arg(long)]
    pub policy: PathBuf,
    /// Input table: CSV (any delimiter) or Parquet.
    #[arg(long)]
    pub input: PathBuf,
    /// Output table; its extension (.csv or .parquet) chooses the format.
    #[arg(long)]
    pub output: PathBuf,
    /// Where to write the JSON report.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// CSV delimiter of the input (default: detected from the header line).
    #[arg(long)]
    pub delimiter: Option<char>,
}

pub async fn run(_g: &GlobalArgs, args: DeidArgs) -> Result<ExitCode> {
    let policy = Policy::from_file(&args.policy)?;
    let key = match std::env::var(&policy.pseudonym.key_env) {
        Ok(text) => Some(safe_harbor::parse_key(&text, &policy.pseudonym.key_env)?),
        Err(_) => None,
    };
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!("reading {}", args.input.display()));
    let delimiter = args.delimiter.map(|d| d as u8);
    let (df, _, sep) = io::read_table(&args.input, delimiter)?;
    spinner.set_message(format!(
        "searching the optimal generalization of {} records",
        df.height()
    ));
    let outcome = tokio::task::spawn_blocking({
        let policy = policy.clone();
        move || frame::anonymize(&df, &policy, key.as_deref())
    })
    .await
    .context("the de-identification task failed")??;
    spinner.finish_and_clear();
    let mut out = outcome.frame;
    io::write_table(&mut out, &args.output, sep)?;
    let r = &outcome.report;
    say!(
        "wrote {} ({} records): k = {} achieved {}, {} suppressed, {} classes, levels {:?}, {} = {:.6}, prosecutor risk max {:.4}",
        args.output.display(),
        r.records,
        r.k,
        r.k_achieved,
        r.suppressed_records,
        r.equivalence_classes,
        r.levels,
        r.metric,
        r.loss.get(&r.metric).copied().unwrap_or(f64::NAN),
        r.risk.prosecutor_max
    );
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(r)?)
            .with_context(|| format!("cannot write the report {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
