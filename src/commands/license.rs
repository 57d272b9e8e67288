//! Operators' CLI twins of the licensing API: `tessera org|license|key ...`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use ring::signature::Ed25519KeyPair;
use tessera_licensing::decision::Principal;
use tessera_licensing::model::{License, LicenseStatus};
use tessera_licensing::store::LicensingStore;
use tessera_licensing::terms;

use crate::config::{GlobalArgs, write_private};
use crate::output::say;

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Register an organization and its signatory's Ed25519 public key (hex).
    Add {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        public_key: String,
    },
    /// Make an Ed25519 signing key for a signatory: the private key (PKCS#8) goes to FILE with
    /// mode 0600, the public key is printed.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum LicenseCommand {
    /// Create a draft license from a JSON file (see docs/licensing.md for the fields).
    Create {
        #[arg(long)]
        file: PathBuf,
    },
    /// Sign the terms with the signatory's key file; the platform countersigns.
    Sign {
        #[arg(long)]
        id: String,
        #[arg(long)]
        signatory_key: PathBuf,
    },
    /// Move a license along its lifecycle.
    Status {
        #[arg(long)]
        id: String,
        #[arg(value_parser = ["active", "suspended", "expired", "terminated"])]
        to: String,
    },
    /// Check that the stored terms are the signed terms, with both signatures valid.
    Verify {
        #[arg(long)]
        id: String,
    },
    /// A license as JSON, with its signatures.
    Show {
        #[arg(long)]
        id: String,
    },
    /// The platform's public signing key (hex), for licensees to check countersignatures.
    PlatformKey,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Issue an API key (printed once; only its hash is kept).
    Issue {
        /// The analyst's organization (omit with --admin).
        #[arg(long, required_unless_present = "admin")]
        org: Option<String>,
        /// Licenses the key may use (repeat).
        #[arg(long = "license")]
        licenses: Vec<String>,
        /// An operator key instead of an analyst key.
        #[arg(long)]
        admin: bool,
        /// Days until the key expires.
        #[arg(long)]
        days: Option<i64>,
    },
    /// Revoke a key at once.
    Revoke {
        #[arg(long)]
        id: String,
    },
}

async fn open(g: &GlobalArgs) -> Result<(LicensingStore, tessera_catalog::Keyring)> {
    if g.database_url.is_none() && !g.data_dir.exists() {
        bail!(
            "the data folder {} does not exist: run `tessera init`, or pass --data-dir",
            g.data_dir.display()
        );
    }
    let keyring = g.keyring(false)?;
    let store = LicensingStore::connect(&g.database_url())
        .await
        .context("cannot open the licensing store")?;
    Ok((store, keyring))
}

fn platform(keyring: &tessera_catalog::Keyring) -> Result<(Ed25519KeyPair, String)> {
    terms::platform_key(&keyring.application_secret("platform-signing-seed"))
        .map_err(|e| anyhow::anyhow!("cannot make the platform signing key: {e}"))
}

pub async fn org(g: &GlobalArgs, c: OrgCommand) -> Result<ExitCode> {
    match c {
        OrgCommand::Keygen { out } => {
            let (pkcs8, public) =
                terms::generate_key().map_err(|_| anyhow::anyhow!("cannot make a key"))?;
            write_private(&out, &pkcs8)?;
            say!("{public}");
        }
        OrgCommand::Add {
            id,
            name,
            public_key,
        } => {
            let (store, _) = open(g).await?;
            store.add_organization(&id, &name, &public_key).await?;
            cli_audit(
                &store,
                "add_organization",
                format!("organization/{id}"),
                None,
            )
            .await?;
            say!("added organization {id}");
            store.close().await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn license(g: &GlobalArgs, c: LicenseCommand) -> Result<ExitCode> {
    let (store, keyring) = open(g).await?;
    let code = match c {
        LicenseCommand::Create { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let license: License = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a license (JSON)", file.display()))?;
            store.create_license(&license).await?;
            cli_audit(
                &store,
                "create_license",
                format!("license/{}", license.id),
                Some(&license.id),
            )
            .await?;
            say!("created draft license {}", license.id);
            ExitCode::SUCCESS
        }
        LicenseCommand::Sign { id, signatory_key } => {
            let pkcs8 = std::fs::read(&signatory_key)
                .with_context(|| format!("cannot read {}", signatory_key.display()))?;
            let signatory = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| {
                anyhow::anyhow!("{} is not an Ed25519 key", signatory_key.display())
            })?;
            let (license, _) = store.license(&id).await?;
            let mut signed = terms::sign(&license, &signatory);
            let (platform, platform_public) = platform(&keyring)?;
            terms::countersign(&mut signed, &platform);
            store.sign_license(&id, &signed, &platform_public).await?;
            cli_audit(&store, "sign_license", format!("license/{id}"), Some(&id)).await?;
            say!(
                "license {id} signed and countersigned (terms SHA-256 {})",
                signed.terms_sha256
            );
            ExitCode::SUCCESS
        }
        LicenseCommand::Status { id, to } => {
            let to: LicenseStatus = serde_json::from_value(serde_json::Value::String(to))?;
            store.set_status(&id, to).await?;
            cli_audit(
                &store,
                "set_license_status",
                format!("license/{id}"),
                Some(&id),
            )
            .await?;
            say!(
                "license {id} is now {}",
                serde_json::to_value(to)?.as_str().unwrap_or("?")
            );
            ExitCode::SUCCESS
        }
        LicenseCommand::Verify { id } => {
            let (_, platform_public) = platform(&keyring)?;
            match store.verify_license(&id, &platform_public).await? {
                Ok(()) => {
                    say!(
                        "license {id}: the stored terms are the signed terms; both signatures verify"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: license {id}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        LicenseCommand::Show { id } => {
            let (license, signed) = store.license(&id).await?;
            say!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "license": license,
                    "signatures": signed,
                }))?
            );
            ExitCode::SUCCESS
        }
        LicenseCommand::PlatformKey => {
            say!("{}", platform(&keyring)?.1);
            ExitCode::SUCCESS
        }
    };
    store.close().await;
    Ok(code)
}

pub async fn key(g: &GlobalArgs, c: KeyCommand) -> Result<ExitCode> {
    let (store, keyring) = open(g).await?;
    let pepper = keyring.application_secret("api-key-pepper");
    match c {
        KeyCommand::Issue {
            org,
            licenses,
            admin,
            days,
        } => {
            let principal = if admin {
                Principal::Admin
            } else {
                Principal::Analyst {
                    organization: org.unwrap_or_default(),
                    licenses,
                }
            };
            let expires = days.map(|d| chrono::Utc::now() + chrono::Duration::days(d));
            let (text, id) = store.issue_key(&principal, expires, &pepper).await?;
            cli_audit(&store, "issue_key", format!("key/{id}"), None).await?;
            say!("key {id} issued; it is shown only now:");
            say!("{text}");
        }
        KeyCommand::Revoke { id } => {
            store.revoke_key(&id).await?;
            cli_audit(&store, "revoke_key", format!("key/{id}"), None).await?;
            say!("key {id} revoked");
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Operators' changes made on the command line join the audit log beside those made over HTTP,
/// with the principal `cli` (whoever can run these commands holds the master key).
async fn cli_audit(
    store: &LicensingStore,
    action: &str,
    resource: String,
    license: Option<&str>,
) -> Result<()> {
    store
        .append_audit(tessera_licensing::audit::Event {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            principal: "cli".into(),
            license: license.map(str::to_string),
            action: action.to_string(),
            resource,
            decision: "allow".into(),
            query_sha256: None,
            rows: None,
            persons: None,
        })
        .await
        .context("the change was made but could not be recorded in the audit log")?;
    Ok(())
}
