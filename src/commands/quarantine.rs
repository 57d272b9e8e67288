//! `tessera quarantine list`

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use crate::config::GlobalArgs;
use crate::output::say;

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// What was quarantined and why, newest first.
    List {
        #[arg(long, default_value_t = 200)]
        limit: i64,
        /// JSON lines on standard output.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(g: &GlobalArgs, c: QuarantineCommand) -> Result<ExitCode> {
    let catalog = super::open_catalog(g, false).await?;
    match c {
        QuarantineCommand::List { limit, json } => {
            let entries = catalog.quarantine(limit).await?;
            if json {
                for e in &entries {
                    say!("{}", serde_json::to_string(e)?);
                }
            } else if entries.is_empty() {
                say!("the quarantine is empty");
            } else {
                for e in &entries {
                    let entry = e.entry.map(|i| format!(", entry {i}")).unwrap_or_default();
                    let field = if e.field.is_empty() {
                        String::new()
                    } else {
                        format!(", field {}", e.field)
                    };
                    say!("{}  {}  {}{entry}{field}", e.id, e.last_seen_at, e.file);
                    say!("    {}: {}", e.reason, e.message);
                }
            }
        }
    }
    catalog.close().await;
    Ok(ExitCode::SUCCESS)
}
