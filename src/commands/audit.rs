//! `tessera audit verify`: checks the hash chain of the audit log.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use tessera_licensing::store::LicensingStore;

use crate::config::GlobalArgs;
use crate::output::say;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify that no audit entry was edited, deleted or reordered; exits 1 naming the first bad
    /// entry.
    Verify,
}

pub async fn run(g: &GlobalArgs, c: AuditCommand) -> Result<ExitCode> {
    if g.database_url.is_none() && !g.data_dir.exists() {
        anyhow::bail!(
            "the data folder {} does not exist: run `tessera init`, or pass --data-dir",
            g.data_dir.display()
        );
    }
    let store = LicensingStore::connect(&g.database_url())
        .await
        .context("cannot open the audit log")?;
    let AuditCommand::Verify = c;
    let outcome = store.verify_audit().await?;
    store.close().await;
    match outcome {
        Ok(n) => {
            say!("audit log intact: {n} entries, each chained to the one before");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: the audit log has been tampered with: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
