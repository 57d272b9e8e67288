//! `tessera release build|list|show|retire`: research releases (issue 4).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use tessera_catalog::{Purpose, ReleaseRequest};
use tessera_deid::policy::Policy;

use crate::config::GlobalArgs;
use crate::output::say;

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Build the next version of a release family from the consented summaries.
    Build {
        /// The release family (lowercase letters, digits, `-`, `_`, `.`).
        #[arg(long)]
        family: String,
        /// The purpose patients must have consented to, e.g. research.natural_history.
        #[arg(long)]
        purpose: String,
        /// The de-identification policy (policies/safe-harbor.toml or
        /// policies/expert-determination.toml, or your own; see docs/releases.md).
        #[arg(long)]
        policy: PathBuf,
    },
    /// Every release version.
    List,
    /// One version's manifest (JSON).
    Show {
        #[arg(long)]
        family: String,
        #[arg(long)]
        version: i64,
    },
    /// Retire a version: kept on disk for audit, no longer offered.
    Retire {
        #[arg(long)]
        family: String,
        #[arg(long)]
        version: i64,
    },
}

pub async fn run(g: &GlobalArgs, c: ReleaseCommand) -> Result<ExitCode> {
    let catalog = super::open_catalog(g, false).await?;
    match c {
        ReleaseCommand::Build {
            family,
            purpose,
            policy,
        } => {
            let purpose = Purpose::parse(&purpose)?;
            let text = std::fs::read_to_string(&policy)
                .with_context(|| format!("cannot read the policy {}", policy.display()))?;
            let parsed = Policy::from_file(&policy)?;
            let releases_dir = g.data_dir.join("releases");
            let (row, manifest) = catalog
                .build_release(&ReleaseRequest {
                    family: &family,
                    purpose: &purpose,
                    policy: &parsed,
                    policy_text: &text,
                    releases_dir: &releases_dir,
                })
                .await?;
            print_summary(&row.path, &manifest);
        }
        ReleaseCommand::List => {
            let rows = catalog.releases().await?;
            if rows.is_empty() {
                say!(
                    "no releases yet: `tessera release build --family F --purpose P --policy FILE`"
                );
            }
            for r in rows {
                say!(
                    "{} v{}  {}  {}  built {}  {}",
                    r.family,
                    r.version,
                    r.status,
                    r.purpose,
                    r.built_at,
                    r.path
                );
            }
        }
        ReleaseCommand::Show { family, version } => {
            let r = catalog.release(&family, version).await?;
            let manifest: serde_json::Value = serde_json::from_str(&r.manifest)?;
            say!("{}", serde_json::to_string_pretty(&manifest)?);
        }
        ReleaseCommand::Retire { family, version } => {
            catalog.retire_release(&family, version).await?;
            say!("retired {family} v{version}");
        }
    }
    catalog.close().await;
    Ok(ExitCode::SUCCESS)
}

/// A few lines on what a build did.
pub fn print_summary(path: &str, m: &tessera_catalog::release::build::Manifest) {
    say!(
        "release {} v{} for {}: {} of {} patients, written to {}",
        m.family,
        m.version,
        m.purpose,
        m.patients_included,
        m.patients_considered,
        path
    );
    for f in &m.files {
        say!(
            "  {:<24} {:>8} rows  sha256 {}",
            f.table,
            f.rows,
            &f.sha256[..16]
        );
    }
    let d = &m.person_deid;
    say!(
        "  person table: k = {} achieved {}, {} suppressed, levels {}",
        d["k"],
        d["k_achieved"],
        d["suppressed_records"],
        d["levels"]
    );
    let rare: usize = m
        .rare_codes_suppressed
        .values()
        .flat_map(|c| c.values())
        .sum();
    say!(
        "  rare codes suppressed: {rare}; dates: {}",
        m.date_handling
    );
    let e = &m.events;
    if let Some(r) = e.get("report") {
        let share = |key: &str| -> f64 {
            let domains = r["domains"].as_object();
            let (mut sum, mut n) = (0.0, 0.0);
            for d in domains.into_iter().flat_map(|d| d.values()) {
                let items = d["items_before"].as_f64().unwrap_or(0.0);
                sum += d[key].as_f64().unwrap_or(0.0) * items;
                n += items;
            }
            if n > 0.0 { 100.0 * sum / n } else { 0.0 }
        };
        say!(
            "  event tables: (k = {}, k^m)-anonymous with m = {}: items kept {:.1}%, code kept or first level {:.1}%, suppressed {:.1}%; violating itemsets {} before, {} after; risk with m items max {:.3}",
            e["k"],
            e["m"],
            share("kept"),
            share("code_kept_or_first_level"),
            share("suppressed"),
            r["violations_before"]
                .as_array()
                .map_or(0, |v| v.iter().filter_map(|x| x.as_u64()).sum::<u64>()),
            r["violations_after"]
                .as_array()
                .map_or(0, |v| v.iter().filter_map(|x| x.as_u64()).sum::<u64>()),
            r["max_risk"].as_f64().unwrap_or(f64::NAN)
        );
    }
}
