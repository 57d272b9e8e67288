//! One module per subcommand. Each parses its arguments, calls the crates, and prints.

pub mod audit;
pub mod consent;
pub mod deid;
pub mod demo;
pub mod ingest;
pub mod license;
pub mod patients;
pub mod payouts;
pub mod providers;
pub mod quarantine;
pub mod release;
pub mod serve;
pub mod study;

use std::process::ExitCode;

use anyhow::{Context, Result};
use tessera_catalog::Catalog;

use crate::config::GlobalArgs;
use crate::output::say;

/// Opens the catalog; `create` makes the data folder and key when they are missing.
pub async fn open_catalog(g: &GlobalArgs, create: bool) -> Result<Catalog> {
    if g.database_url.is_none() {
        if create {
            g.ensure_data_dir()?;
        } else if !g.data_dir.exists() {
            anyhow::bail!(
                "the data folder {} does not exist: run `tessera init` (or `tessera demo`), or pass --data-dir",
                g.data_dir.display()
            );
        }
    }
    let keyring = g.keyring(create)?;
    let vault = g.key_vault_url()?;
    if g.key_vault.is_none() && !vault.starts_with("sqlite:") {
        tracing::warn!(
            "the key vault shares the catalog's PostgreSQL database, so backups of it carry patients' data keys: set TESSERA_KEY_VAULT to a database of its own (docs/operations.md)"
        );
    }
    Catalog::open_with_vault(&g.database_url(), &vault, keyring)
        .await
        .context("cannot open the catalog database")
}

pub async fn init(g: &GlobalArgs) -> Result<ExitCode> {
    let catalog = open_catalog(g, true).await?;
    say!(
        "ready: data in {}, database {:?}, {} patients stored",
        g.data_dir.display(),
        catalog.backend(),
        catalog.count_patients().await?
    );
    catalog.close().await;
    Ok(ExitCode::SUCCESS)
}
