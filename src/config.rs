//! Global configuration: where data lives, which database, which key, how to log.
//! Every setting is a flag with a `TESSERA_*` environment variable; secrets come only from the
//! environment or a file, never a flag (flags show up in `ps` and shell history).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use tessera_catalog::Keyring;

pub const DEFAULT_DATA_DIR: &str = "./tessera-data";
pub const KEY_FILE_NAME: &str = "master.key";
pub const DATABASE_FILE_NAME: &str = "tessera.db";
/// Where `tessera serve` puts the HTTP API unless told otherwise.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// Where `tessera serve` puts the Flight SQL service unless told otherwise.
pub const DEFAULT_FLIGHT_ADDR: &str = "127.0.0.1:50051";

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Folder for the SQLite database, the key file and release files.
    #[arg(long, global = true, env = "TESSERA_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// Database URL; defaults to SQLite in the data folder. PostgreSQL: postgres://user@host/db
    /// (Its value is hidden from --help: URLs can carry passwords.)
    #[arg(
        long,
        global = true,
        env = "TESSERA_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// Database URL of the key vault: each patient's data key, wrapped under the master key
    /// (deleting a patient destroys theirs). Default: a SQLite file beside a SQLite catalog
    /// (`tessera.keys.db`), or the catalog's own PostgreSQL database. Keep it apart from the
    /// data's backups, on a shorter retention: see docs/operations.md.
    #[arg(long, global = true, env = "TESSERA_KEY_VAULT", hide_env_values = true)]
    pub key_vault: Option<String>,

    /// File holding the master key (64 hex characters). Default: <data-dir>/master.key.
    /// TESSERA_MASTER_KEY, when set, takes precedence.
    #[arg(long, global = true, env = "TESSERA_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// Log filter (tracing syntax), e.g. `info` or `tessera_catalog=debug`.
    #[arg(long, global = true, env = "TESSERA_LOG", default_value = "warn")]
    pub log: String,

    /// Log format on standard error.
    #[arg(long, global = true, env = "TESSERA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl GlobalArgs {
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join(DATABASE_FILE_NAME).display()
            ),
        }
    }

    /// The key vault's database URL (see `--key-vault`).
    pub fn key_vault_url(&self) -> Result<String> {
        match &self.key_vault {
            Some(url) => Ok(url.clone()),
            None => Ok(tessera_catalog::vault::Vault::default_url(
                &self.database_url(),
            )?),
        }
    }

    pub fn key_file_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(KEY_FILE_NAME))
    }

    /// Creates the data folder (owner-only) if it does not exist.
    pub fn ensure_data_dir(&self) -> Result<()> {
        create_private_dir(&self.data_dir)
    }

    /// The keyring from TESSERA_MASTER_KEY, else the key file. `create` makes a new key file
    /// when neither exists (`tessera init` and `tessera demo` do).
    pub fn keyring(&self, create: bool) -> Result<Keyring> {
        let previous = match std::env::var("TESSERA_PREVIOUS_MASTER_KEYS") {
            Ok(list) => list
                .split(',')
                .filter(|k| !k.trim().is_empty())
                .map(|k| Keyring::parse_master_key(k, "TESSERA_PREVIOUS_MASTER_KEYS"))
                .collect::<Result<Vec<_>, _>>()?,
            Err(_) => Vec::new(),
        };
        if let Ok(hex) = std::env::var("TESSERA_MASTER_KEY") {
            let key = Keyring::parse_master_key(&hex, "TESSERA_MASTER_KEY")?;
            return Ok(Keyring::new(&key, &previous));
        }
        let path = self.key_file_path();
        if path.exists() {
            check_key_permissions(&path)?;
            return Ok(Keyring::new(&Keyring::read_key_file(&path)?, &previous));
        }
        if create {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                create_private_dir(parent)?;
            }
            let key = Keyring::generate_key_file(&path)?;
            eprintln!(
                "created a new master key in {} (mode 0600): back it up; without it the stored data cannot be read",
                path.display()
            );
            return Ok(Keyring::new(&key, &previous));
        }
        bail!(
            "no master key: set TESSERA_MASTER_KEY, pass --key-file, or run `tessera init` to create {}",
            path.display()
        )
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("cannot create the data folder {}", dir.display()))
}

fn check_key_permissions(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "the key file {} can be read by other users (mode {:o}); run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
    Ok(())
}

/// Writes a new file only its owner can read; refuses to overwrite one.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Replaces a file with new contents, owner-only, atomically (a private temporary file renamed
/// over it).
pub fn replace_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    let _ = std::fs::remove_file(&tmp);
    write_private(&tmp, bytes)?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}
