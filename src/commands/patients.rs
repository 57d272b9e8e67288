//! `tessera patients list` and `tessera stats`.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::config::GlobalArgs;
use crate::output;
use crate::output::say;

#[derive(Debug, Subcommand)]
pub enum PatientsCommand {
    /// Internal patient ids with record counts (nothing identifying).
    List {
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long, default_value_t = 0)]
        offset: i64,
        /// JSON lines on standard output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(g: &GlobalArgs, c: PatientsCommand) -> Result<ExitCode> {
    let catalog = super::open_catalog(g, false).await?;
    match c {
        PatientsCommand::List {
            limit,
            offset,
            json,
        } => {
            let list = catalog.list_patients(limit, offset).await?;
            if json {
                for p in &list {
                    say!("{}", serde_json::to_string(p)?);
                }
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|p| {
                        vec![
                            p.patient_id.clone(),
                            p.records.to_string(),
                            p.created_at.clone(),
                        ]
                    })
                    .collect();
                output::table(&["patient id", "records", "first ingested"], &rows);
            }
        }
    }
    catalog.close().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn stats(g: &GlobalArgs, a: StatsArgs) -> Result<ExitCode> {
    let catalog = super::open_catalog(g, false).await?;
    let patients = catalog.count_patients().await?;
    let kinds = catalog.count_by_kind().await?;
    let types = catalog.count_by_resource_type().await?;
    if a.json {
        let v = serde_json::json!({
            "patients": patients,
            "records_by_kind": kinds.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "records_by_resource_type": types.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        });
        say!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        say!("{patients} patients");
        output::table(
            &["kind", "records"],
            &kinds
                .iter()
                .map(|(k, n)| vec![k.clone(), n.to_string()])
                .collect::<Vec<_>>(),
        );
        output::table(
            &["resource type", "records"],
            &types
                .iter()
                .map(|(k, n)| vec![k.clone(), n.to_string()])
                .collect::<Vec<_>>(),
        );
    }
    catalog.close().await;
    Ok(ExitCode::SUCCESS)
}
