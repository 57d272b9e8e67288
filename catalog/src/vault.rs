//! The key vault: one data key per patient, for crypto-shredding.
//!
//! Everything the catalog holds about one patient (the identity row, every record, survey
//! drafts, shares and the record of who viewed them) is sealed under that patient's own random
//! AES-256-GCM key. The key is stored only wrapped under the master key, in the vault: a
//! database of its own (by default a SQLite file beside the catalog's), so that it is backed
//! up apart from the data and kept for a shorter time. Deleting a patient destroys their key;
//! from then on their rows do not open anywhere, including in every backup of the data taken
//! before, once the vault's own backups holding the key have expired (docs/operations.md).
//!
//! Values sealed before patient keys existed carry a master key id and still open with the
//! keyring; a patient's first new value creates their key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::crypto::{Keyring, PatientKey, Sealed};
use crate::error::{CatalogError, Result};
use crate::store::{VaultStore, WrappedKeyRow};

/// Keys kept unwrapped in memory at most; beyond that the cache starts over (a release build
/// of a large catalog reads every patient once per pass, in chunks it preloads).
const CACHE_LIMIT: usize = 100_000;

/// The vault: the store of wrapped keys, the master keyring that unwraps them, and a cache.
#[derive(Debug, Clone)]
pub struct Vault {
    store: VaultStore,
    keyring: Arc<Keyring>,
    cache: Arc<Mutex<HashMap<String, Arc<PatientKey>>>>,
}

/// A key made and not yet stored (the ingest writer stores a batch's keys before it commits).
#[derive(Debug)]
pub struct NewKey(WrappedKeyRow);

impl Vault {
    /// Connects to the vault's database and creates its table when missing.
    pub async fn connect(url: &str, keyring: Arc<Keyring>) -> Result<Vault> {
        Ok(Vault {
            store: VaultStore::connect(url).await?,
            keyring,
            cache: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Where the vault lives when no URL is given: for a SQLite catalog, a file beside it
    /// (`tessera.db` → `tessera.keys.db`); for PostgreSQL, the same database (a table of its
    /// own; set a separate vault URL so that data backups do not carry the keys).
    pub fn default_url(database_url: &str) -> Result<String> {
        if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
            return Ok(database_url.to_string());
        }
        let Some(rest) = database_url.strip_prefix("sqlite:") else {
            return Err(CatalogError::invalid(
                "the database URL must start with sqlite: or postgres: (for example sqlite://tessera-data/tessera.db)",
            ));
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        if path.contains(":memory:") || path.is_empty() || path.trim_start_matches('/').is_empty() {
            return Err(CatalogError::invalid(
                "an in-memory SQLite catalog has no file to keep the key vault beside: give the key vault a URL of its own",
            ));
        }
        let vault_path = match path.strip_suffix(".db") {
            Some(stem) => format!("{stem}.keys.db"),
            None => format!("{path}.keys"),
        };
        Ok(match query {
            Some(q) => format!("sqlite:{vault_path}?{q}"),
            None => format!("sqlite:{vault_path}?mode=rwc"),
        })
    }

    pub async fn close(&self) {
        self.store.close().await;
    }

    fn cached(&self, patient_id: &str) -> Option<Arc<PatientKey>> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(patient_id)
            .cloned()
    }

    fn remember(&self, patient_id: &str, key: Arc<PatientKey>) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(patient_id.to_string(), key);
    }

    /// Unwraps and caches the keys of the patients named, in one query: before reading many
    /// patients' rows.
    pub async fn preload(&self, patient_ids: &[&str]) -> Result<()> {
        let missing: Vec<&str> = patient_ids
            .iter()
            .copied()
            .filter(|id| self.cached(id).is_none())
            .collect();
        for row in self.store.keys(&missing).await? {
            let key = self
                .keyring
                .unwrap_patient_key(&row.patient_id, &row.wrapped)?;
            self.remember(&row.patient_id, Arc::new(key));
        }
        Ok(())
    }

    /// The patient's key, when the vault holds one.
    pub async fn key(&self, patient_id: &str) -> Result<Option<Arc<PatientKey>>> {
        if let Some(k) = self.cached(patient_id) {
            return Ok(Some(k));
        }
        self.preload(&[patient_id]).await?;
        Ok(self.cached(patient_id))
    }

    /// Makes a key for a patient who has none, usable at once; the caller stores it with
    /// [`Vault::store`] before committing anything sealed under it.
    pub fn create(&self, patient_id: &str) -> Result<(Arc<PatientKey>, NewKey)> {
        let (key, wrapped) = self.keyring.new_patient_key(patient_id)?;
        let key = Arc::new(key);
        self.remember(patient_id, Arc::clone(&key));
        Ok((
            key,
            NewKey(WrappedKeyRow {
                patient_id: patient_id.to_string(),
                wrapped,
            }),
        ))
    }

    /// Stores keys made by [`Vault::create`].
    pub async fn store(&self, keys: Vec<NewKey>) -> Result<()> {
        let rows: Vec<WrappedKeyRow> = keys.into_iter().map(|k| k.0).collect();
        self.store.insert(&rows).await
    }

    /// The patient's key, made and stored now if they have none.
    pub async fn key_or_create(&self, patient_id: &str) -> Result<Arc<PatientKey>> {
        if let Some(k) = self.key(patient_id).await? {
            return Ok(k);
        }
        let (key, new) = self.create(patient_id)?;
        self.store(vec![new]).await?;
        // Another process may have stored one first: the stored key is the patient's.
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(patient_id);
        match self.key(patient_id).await? {
            Some(stored) => Ok(stored),
            None => Ok(key),
        }
    }

    /// Seals one of a patient's values under their key (made now if they have none).
    pub async fn seal(&self, patient_id: &str, plaintext: &[u8], aad: &[u8]) -> Result<Sealed> {
        self.key_or_create(patient_id).await?.seal(plaintext, aad)
    }

    /// Opens one of a patient's values: under their key, or under the master keyring for a
    /// value sealed before patient keys existed.
    pub async fn open(&self, patient_id: &str, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>> {
        if !sealed.key_id.starts_with(PatientKey::ID_PREFIX) {
            return self.keyring.open(sealed, aad);
        }
        match self.key(patient_id).await? {
            Some(key) => key.open(sealed, aad),
            None => Err(CatalogError::Key {
                message: "a stored value is sealed under a patient data key the key vault no longer holds: the patient's data was deleted (or the key vault configured is not this catalog's: check TESSERA_KEY_VAULT)".into(),
            }),
        }
    }

    /// Destroys patients' keys (and forgets them here). Their sealed values never open again.
    pub async fn destroy(&self, patient_ids: &[&str]) -> Result<u64> {
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            for id in patient_ids {
                cache.remove(*id);
            }
        }
        self.store.destroy(patient_ids).await
    }

    /// How many keys the vault holds.
    pub async fn count(&self) -> Result<i64> {
        self.store.count().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vault_sits_beside_a_sqlite_catalog_and_in_a_postgres_one() {
        assert_eq!(
            Vault::default_url("sqlite:///data/tessera.db?mode=rwc").expect("url"),
            "sqlite:///data/tessera.keys.db?mode=rwc"
        );
        assert_eq!(
            Vault::default_url("sqlite://rel/catalog").expect("url"),
            "sqlite://rel/catalog.keys?mode=rwc"
        );
        assert_eq!(
            Vault::default_url("postgres://localhost/test").expect("url"),
            "postgres://localhost/test"
        );
        assert!(Vault::default_url("sqlite::memory:").is_err());
        assert!(Vault::default_url("mysql://x").is_err());
    }

    #[tokio::test]
    async fn a_destroyed_key_leaves_its_values_unreadable_and_its_bytes_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v.keys.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let keyring = Arc::new(Keyring::new(&[5; 32], &[]));
        let vault = Vault::connect(&url, Arc::clone(&keyring))
            .await
            .expect("vault");
        let a = vault
            .seal("pa", b"Alberto", b"records/1")
            .await
            .expect("seal");
        let b = vault
            .seal("pb", b"Beatriz", b"records/2")
            .await
            .expect("seal");
        assert!(a.key_id.starts_with("p:") && a.key_id != b.key_id);
        let wrapped = vault.store.keys(&["pa"]).await.expect("keys")[0]
            .wrapped
            .ciphertext
            .clone();

        // A second process (a fresh vault on the same file) opens what the first sealed.
        let other = Vault::connect(&url, Arc::clone(&keyring))
            .await
            .expect("vault");
        assert_eq!(
            other.open("pa", &a, b"records/1").await.expect("open"),
            b"Alberto"
        );
        // Bound to the patient: pb's key does not open pa's value.
        assert!(other.open("pb", &a, b"records/1").await.is_err());

        assert_eq!(vault.destroy(&["pa"]).await.expect("destroy"), 1);
        let err = vault
            .open("pa", &a, b"records/1")
            .await
            .map(|_| ())
            .expect_err("destroyed");
        assert!(err.to_string().contains("deleted"), "{err}");
        // A process started after the deletion cannot open it either. (One that had the key
        // cached before keeps it in memory until it ends; the rows themselves are deleted in
        // the same request, so it has nothing left to open.)
        let fresh = Vault::connect(&url, Arc::clone(&keyring))
            .await
            .expect("vault");
        assert!(fresh.open("pa", &a, b"records/1").await.is_err());
        assert_eq!(
            fresh.open("pb", &b, b"records/2").await.expect("open"),
            b"Beatriz"
        );
        // The wrapped key's bytes are gone from the vault's files (zeroed, log truncated).
        vault.close().await;
        other.close().await;
        fresh.close().await;
        for entry in std::fs::read_dir(dir.path()).expect("dir") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
            assert!(
                !bytes
                    .windows(wrapped.len())
                    .any(|w| w == wrapped.as_slice()),
                "the destroyed key's wrapped bytes are still in a vault file"
            );
        }
    }

    #[test]
    fn a_wrapped_key_opens_only_for_its_patient_and_master_key() {
        let ring = Keyring::new(&[1; 32], &[]);
        let (key, wrapped) = ring.new_patient_key("p1").expect("key");
        let again = ring.unwrap_patient_key("p1", &wrapped).expect("unwrap");
        assert_eq!(key.id(), again.id());
        assert!(ring.unwrap_patient_key("p2", &wrapped).is_err());
        assert!(
            Keyring::new(&[2; 32], &[])
                .unwrap_patient_key("p1", &wrapped)
                .is_err()
        );
        // The master keyring alone does not open a patient-sealed value.
        let s = key.seal(b"x", b"r").expect("seal");
        assert!(ring.open(&s, b"r").is_err());
    }
}
