//! `tessera deid`: a policy applied to a CSV or Parquet file, for privacy officers.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_deid::frame::{self, Options, Stage};
use tessera_deid::policy::{Method, Policy};
use tessera_deid::{events, io, safe_harbor};

use crate::config::GlobalArgs;
use crate::output::say;

#[derive(Debug, Args)]
pub struct DeidArgs {
    /// The de-identification policy (TOML; see docs/deid-policy.md). Not used with `--items`.
    #[arg(long, required_unless_present = "items")]
    pub policy: Option<PathBuf>,
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
    /// A population table (CSV or Parquet) with the same quasi-identifier columns: adds
    /// journalist and marketer risk to the report.
    #[arg(long)]
    pub population: Option<PathBuf>,
    /// Overrides the policy's `method`: `optimal` (full-domain) or `mondrian` (local recoding).
    #[arg(long, value_parser = ["optimal", "mondrian"])]
    pub method: Option<String>,
    /// The input is a transaction table (one row per person and item): anonymize it under
    /// (k, k^m)-anonymity with this column as the item (docs/deid-policy.md, "Event data").
    #[arg(long, value_name = "ITEM_COLUMN")]
    pub items: Option<String>,
    /// With `--items`: the column naming the person.
    #[arg(long, default_value = "person_id", requires = "items")]
    pub person_column: String,
    /// With `--items`: the person's quasi-identifier columns, as already released
    /// (comma-separated); combinations are counted within persons sharing them.
    #[arg(long, value_delimiter = ',', requires = "items")]
    pub group_columns: Vec<String>,
    /// With `--items`: persons every combination must match.
    #[arg(long, default_value_t = 5, requires = "items")]
    pub k: usize,
    /// With `--items`: the number of items the attacker knows.
    #[arg(long, default_value_t = 3, requires = "items")]
    pub m: usize,
    /// With `--items`: the items' hierarchy (`item;parent;grandparent...` per line).
    #[arg(long, requires = "items")]
    pub hierarchy: Option<PathBuf>,
    /// With `--items`: how many hierarchy levels an item may climb before suppression.
    #[arg(long, default_value_t = 2, requires = "items")]
    pub max_level: usize,
}

/// `tessera deid --items`: a transaction table under (k, k^m)-anonymity.
fn run_items(args: &DeidArgs, item: &str) -> Result<ExitCode> {
    let delimiter = args.delimiter.map(|d| d as u8);
    let (df, _, sep) = io::read_table(&args.input, delimiter)?;
    let ancestors = match &args.hierarchy {
        Some(path) => tessera_deid::policy::CodeHierarchy {
            system: String::new(),
            file: path.display().to_string(),
            generalized_system: None,
            prefix: false,
        }
        .load(std::path::Path::new(""))?,
        None => Default::default(),
    };
    let spec = events::TransactionSpec {
        person: args.person_column.clone(),
        item: item.to_string(),
        groups: args.group_columns.clone(),
        k: args.k,
        m: args.m,
        ancestors,
        max_code_level: args.max_level,
    };
    let (mut out, report) = events::anonymize_transactions(&df, &spec)
        .with_context(|| format!("anonymizing {}", args.input.display()))?;
    io::write_table(&mut out, &args.output, sep)?;
    let d = report.domains.get(item).cloned().unwrap_or_default();
    say!(
        "wrote {} ({} persons in {} groups): (k = {}, k^m, m = {}) holds; items kept {:.1}%, generalized {:.1}%, suppressed {:.1}%; violating itemsets before {:?}, after {:?}; risk max {:.4}, average {:.4}; NCP {:.4}",
        args.output.display(),
        report.persons,
        report.groups,
        report.k,
        report.m,
        100.0 * d.kept,
        100.0 * d.code_generalized.iter().sum::<f64>(),
        100.0 * d.suppressed,
        report.violations_before,
        report.violations_after,
        report.max_risk,
        report.average_risk,
        report.ncp
    );
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write the report {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(_g: &GlobalArgs, args: DeidArgs) -> Result<ExitCode> {
    if let Some(item) = args.items.clone() {
        return tokio::task::spawn_blocking(move || run_items(&args, &item))
            .await
            .context("the de-identification task failed")?;
    }
    let Some(policy_path) = &args.policy else {
        anyhow::bail!("give --policy (or --items for a transaction table)");
    };
    let mut policy = Policy::from_file(policy_path)?;
    match args.method.as_deref() {
        Some("mondrian") => policy.privacy.method = Method::Mondrian,
        Some("optimal") => policy.privacy.method = Method::Optimal,
        _ => {}
    }
    let key = match std::env::var(&policy.pseudonym.key_env) {
        Ok(text) => Some(safe_harbor::parse_key(&text, &policy.pseudonym.key_env)?),
        Err(_) => None,
    };
    // Drawn only on a terminal (indicatif hides it otherwise).
    let bar = ProgressBar::new(5).with_style(
        ProgressStyle::with_template("{spinner} [{pos}/{len}] {wide_msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar.set_message(format!("reading {}", args.input.display()));
    let delimiter = args.delimiter.map(|d| d as u8);
    let (df, _, sep) = io::read_table(&args.input, delimiter)?;
    let population = match &args.population {
        Some(p) => Some(io::read_table(p, None)?.0),
        None => None,
    };
    let records = df.height();
    let mondrian = policy.privacy.method == Method::Mondrian;
    let outcome = tokio::task::spawn_blocking({
        let policy = policy.clone();
        let bar = bar.clone();
        move || {
            let progress = move |stage: Stage| {
                let (pos, msg) = match stage {
                    Stage::Encoding => (1, format!("encoding {records} records")),
                    Stage::Searching { size } if mondrian => {
                        (2, format!("partitioning {size} distinct tuples (Mondrian)"))
                    }
                    Stage::Searching { size } => {
                        (2, format!("searching a lattice of {size} generalizations"))
                    }
                    Stage::Releasing => (3, "building the released columns".to_string()),
                };
                bar.set_position(pos);
                bar.set_message(msg);
            };
            frame::anonymize_with(
                &df,
                &policy,
                key.as_deref(),
                &Options {
                    population: population.as_ref(),
                    progress: Some(&progress),
                },
            )
        }
    })
    .await
    .context("the de-identification task failed")??;
    bar.set_position(4);
    bar.set_message(format!("writing {}", args.output.display()));
    let mut out = outcome.frame;
    io::write_table(&mut out, &args.output, sep)?;
    bar.finish_and_clear();
    let r = &outcome.report;
    say!(
        "wrote {} ({} records, {}): k = {} achieved {}, {} suppressed, {} classes, levels {:?}, {} = {:.6}, prosecutor risk max {:.4}",
        args.output.display(),
        r.records,
        r.method,
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
