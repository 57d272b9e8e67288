//! `tessera-catalog`: ingest of consented patient summaries (FHIR R4, GA4GH phenopackets,
//! survey answers), the encrypted identified store, and the consent registry.
//!
//! The one way to read identified summaries is [`Catalog::consented_summaries`], which asks the
//! consent registry first and returns only patients whose consent covers the purpose at that
//! moment, with only the records their scope covers.

pub mod access;
pub mod accounts;
pub mod consent;
pub mod crypto;
pub mod deletion;
pub mod error;
pub mod ingest;
pub mod model;
mod payload;
pub mod release;
pub mod sharing;
mod store;
pub mod surveys;
pub mod synthetic;
pub mod vault;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use consent::{ConsentState, Grant, Purpose, Scope};
pub use crypto::Keyring;
pub use error::{CatalogError, Result};
pub use ingest::{IngestOptions, IngestReport, NoProgress, Progress};
pub use model::{PatientSummary, RecordBody, StoredRecord};
pub use store::{Backend, ConsentRow, Migration, ReleaseRow, connect_component};

use ingest::parse::record_aad;
use ingest::problem::Reason;

const KEY_CHECK_TEXT: &[u8] = b"tessera key check v1";
const KEY_CHECK_AAD: &[u8] = b"key_checks";

/// Checks what a release build is asked before any work starts: the family name (1 to 64
/// lowercase letters, digits, `-`, `_`, `.`, not starting with `.`) and that the policy can
/// de-identify the person table. [`Catalog::build_release`] checks it first; callers that
/// start a build in the background check it up front so the caller hears of a bad request.
pub fn check_release_request(family: &str, policy: &tessera_deid::policy::Policy) -> Result<()> {
    let valid = !family.is_empty()
        && family.len() <= 64
        && family
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        && !family.starts_with('.');
    if !valid {
        return Err(CatalogError::invalid(format!(
            "release family `{family}`: use lowercase letters, digits, `-`, `_` and `.`"
        )));
    }
    release::build::check_person_policy(policy)
}

/// A quarantined file or entry, as `tessera quarantine list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineEntry {
    pub id: String,
    pub run_id: String,
    pub file: String,
    pub file_sha256: String,
    pub entry: Option<i64>,
    pub field: String,
    pub reason: String,
    pub message: String,
    pub first_seen_at: String,
    pub last_seen_at: String,
}

/// A patient as listed for operators: internal id and counts, nothing identifying.
#[derive(Debug, Clone, Serialize)]
pub struct PatientListing {
    pub patient_id: String,
    pub created_at: String,
    pub records: i64,
}

/// The catalog: store, keyring and key vault.
#[derive(Debug, Clone)]
pub struct Catalog {
    store: store::Store,
    keyring: Arc<Keyring>,
    vault: vault::Vault,
}

impl Catalog {
    /// Opens (creating and migrating if needed) the catalog at a database URL, with its key
    /// vault where [`vault::Vault::default_url`] puts it.
    /// Refuses a keyring that holds none of the keys this database was written with.
    pub async fn open(database_url: &str, keyring: Keyring) -> Result<Catalog> {
        let vault_url = vault::Vault::default_url(database_url)?;
        Catalog::open_with_vault(database_url, &vault_url, keyring).await
    }

    /// Opens the catalog at a database URL with its key vault at `vault_url` (see [`vault`]).
    /// Finishes any deletion an earlier process recorded but could not complete (the key
    /// destroyed after the rows: see [`Catalog::delete_patient`]).
    pub async fn open_with_vault(
        database_url: &str,
        vault_url: &str,
        keyring: Keyring,
    ) -> Result<Catalog> {
        let store = store::Store::connect(database_url).await?;
        let checks = store.key_checks().await?;
        let opens = |s: &crypto::Sealed| {
            keyring
                .open(s, KEY_CHECK_AAD)
                .is_ok_and(|p| p == KEY_CHECK_TEXT)
        };
        if !checks.is_empty() && !checks.iter().any(opens) {
            let ids: Vec<&str> = checks.iter().map(|c| c.key_id.as_str()).collect();
            store.close().await;
            return Err(CatalogError::Key {
                message: format!(
                    "this database was written with master key {}, but the configured key is {}: \
                     set TESSERA_MASTER_KEY (or --key-file) to the key it was created with \
                     (an older key can go in TESSERA_PREVIOUS_MASTER_KEYS)",
                    ids.join(", "),
                    keyring.current_key_id()
                ),
            });
        }
        if !checks.iter().any(|c| c.key_id == keyring.current_key_id()) {
            store
                .add_key_check(&keyring.seal(KEY_CHECK_TEXT, KEY_CHECK_AAD)?)
                .await?;
        }
        let keyring = Arc::new(keyring);
        let vault = vault::Vault::connect(vault_url, Arc::clone(&keyring)).await?;
        let catalog = Catalog {
            store,
            keyring,
            vault,
        };
        catalog.finish_deletions().await?;
        Ok(catalog)
    }

    pub fn backend(&self) -> Backend {
        self.store.backend()
    }

    pub async fn close(&self) {
        self.store.close().await;
        self.vault.close().await;
    }

    /// Ingests files, folders and archives. See [`ingest`].
    pub async fn ingest(
        &self,
        paths: &[PathBuf],
        options: &IngestOptions,
        progress: &dyn Progress,
    ) -> Result<IngestReport> {
        if let Some(owner) = &options.owner {
            self.ensure_patient(owner).await?;
        }
        ingest::run(
            &self.store,
            Arc::clone(&self.keyring),
            &self.vault,
            paths,
            options,
            progress,
        )
        .await
    }

    /// Ingests bytes held in memory (records a patient's provider sent), each `(label, bytes)`
    /// like a file of that name. See [`ingest::run_memory`].
    pub async fn ingest_memory(
        &self,
        files: Vec<(String, Vec<u8>)>,
        options: &IngestOptions,
        progress: &dyn Progress,
    ) -> Result<IngestReport> {
        if let Some(owner) = &options.owner {
            self.ensure_patient(owner).await?;
        }
        ingest::run_memory(
            &self.store,
            Arc::clone(&self.keyring),
            &self.vault,
            files,
            options,
            progress,
        )
        .await
    }

    /// Refuses (NotFound) a patient who does not exist or was deleted.
    pub async fn ensure_patient(&self, patient_id: &str) -> Result<()> {
        if self.store.patient_identity(patient_id).await?.is_none()
            || self.store.deletion_of(patient_id).await?.is_some()
        {
            return Err(CatalogError::NotFound {
                what: format!("patient {patient_id}"),
                hint: "the patient may have been deleted".into(),
            });
        }
        Ok(())
    }

    /// Seals a value of a patient's that another crate stores (the tokens of their connections
    /// to providers) under the patient's data key, so that it is destroyed with their data.
    /// `row` names where it is stored (the associated data: a sealed value moved to another
    /// row or patient does not open). The bytes are self-describing: key id, nonce, ciphertext.
    pub async fn seal_for_patient(
        &self,
        patient_id: &str,
        row: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        self.ensure_patient(patient_id).await?;
        let sealed = self
            .vault
            .seal(patient_id, plaintext, &foreign_aad(patient_id, row))
            .await?;
        let id = sealed.key_id.as_bytes();
        let id_len =
            u8::try_from(id.len()).map_err(|_| CatalogError::internal("a key id is too long"))?;
        let mut out =
            Vec::with_capacity(1 + id.len() + sealed.nonce.len() + sealed.ciphertext.len());
        out.push(id_len);
        out.extend_from_slice(id);
        out.extend_from_slice(&sealed.nonce);
        out.extend_from_slice(&sealed.ciphertext);
        Ok(out)
    }

    /// Opens what [`Catalog::seal_for_patient`] sealed for the same patient and row.
    pub async fn open_for_patient(
        &self,
        patient_id: &str,
        row: &str,
        bytes: &[u8],
    ) -> Result<Vec<u8>> {
        let bad = || CatalogError::internal("a sealed value is malformed");
        let (&id_len, rest) = bytes.split_first().ok_or_else(bad)?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + 12 {
            return Err(bad());
        }
        let (id, rest) = rest.split_at(id_len);
        let (nonce, ciphertext) = rest.split_at(12);
        let sealed = crypto::Sealed {
            key_id: String::from_utf8(id.to_vec()).map_err(|_| bad())?,
            nonce: nonce.to_vec(),
            ciphertext: ciphertext.to_vec(),
        };
        self.vault
            .open(patient_id, &sealed, &foreign_aad(patient_id, row))
            .await
    }

    /// Stored records per source resource type.
    pub async fn count_by_resource_type(&self) -> Result<Vec<(String, i64)>> {
        self.store.count_by_resource_type().await
    }

    /// Stored records per normalized kind.
    pub async fn count_by_kind(&self) -> Result<Vec<(String, i64)>> {
        self.store.count_by_kind().await
    }

    /// Quarantine entries per reason code, counted in the database (no entry is unsealed).
    pub async fn count_quarantine_by_reason(&self) -> Result<Vec<(String, i64)>> {
        Ok(self
            .store
            .count_quarantine_by_reason()
            .await?
            .into_iter()
            .map(|(reason, n)| {
                let reason = Reason::parse(&reason)
                    .map(|x| x.as_str().to_string())
                    .unwrap_or(reason);
                (reason, n)
            })
            .collect())
    }

    pub async fn count_patients(&self) -> Result<i64> {
        self.store.count_patients().await
    }

    pub async fn list_patients(&self, limit: i64, offset: i64) -> Result<Vec<PatientListing>> {
        Ok(self
            .store
            .list_patients(limit, offset)
            .await?
            .into_iter()
            .map(|(patient_id, created_at, records)| PatientListing {
                patient_id,
                created_at,
                records,
            })
            .collect())
    }

    /// The most recent quarantine entries, decrypted for the operator.
    pub async fn quarantine(&self, limit: i64) -> Result<Vec<QuarantineEntry>> {
        let rows = self.store.list_quarantine(limit).await?;
        rows.into_iter()
            .map(|r| {
                let plain = self
                    .keyring
                    .open(&r.sealed_detail, &ingest::quarantine_aad(&r.quarantine_id))?;
                let detail: serde_json::Value = serde_json::from_slice(&plain).map_err(|e| {
                    CatalogError::internal(format!("quarantine detail does not parse: {e}"))
                })?;
                let text = |k: &str| {
                    detail
                        .get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                Ok(QuarantineEntry {
                    id: r.quarantine_id,
                    run_id: r.run_id,
                    file: text("file"),
                    file_sha256: r.file_sha256,
                    entry: r.entry_index,
                    field: r.field,
                    reason: Reason::parse(&r.reason)
                        .map(|x| x.as_str().to_string())
                        .unwrap_or(r.reason),
                    message: text("message"),
                    first_seen_at: r.first_seen_at,
                    last_seen_at: r.last_seen_at,
                })
            })
            .collect()
    }

    async fn require_patient(&self, patient_id: &str) -> Result<()> {
        if self.store.patient_exists(patient_id).await? {
            Ok(())
        } else {
            Err(CatalogError::NotFound {
                what: format!("patient {patient_id}"),
                hint: "list patients with `tessera patients list`".into(),
            })
        }
    }

    /// Records a grant. Returns the stored event.
    pub async fn grant(&self, g: Grant) -> Result<ConsentRow> {
        self.require_patient(&g.patient_id).await?;
        let now = Utc::now();
        let from = g.valid_from.unwrap_or(now);
        if let Some(until) = g.valid_until
            && until <= from
        {
            return Err(CatalogError::invalid(
                "--until must be after the start of the consent",
            ));
        }
        self.store
            .append_consent(ConsentRow {
                event_id: hex::encode(ingest::random_bytes::<16>()?),
                patient_id: g.patient_id,
                purpose: g.purpose.as_str().to_string(),
                action: "grant".into(),
                scope: g.scope.to_db(),
                valid_from: consent::timestamp(from),
                valid_until: g.valid_until.map(consent::timestamp),
                recorded_at: consent::timestamp(now),
                seq: 0,
                actor: g.actor,
            })
            .await
    }

    /// Revokes a patient's consent for a purpose, effective now.
    pub async fn revoke(
        &self,
        patient_id: &str,
        purpose: &Purpose,
        actor: &str,
    ) -> Result<ConsentRow> {
        self.require_patient(patient_id).await?;
        let now = consent::timestamp(Utc::now());
        self.store
            .append_consent(ConsentRow {
                event_id: hex::encode(ingest::random_bytes::<16>()?),
                patient_id: patient_id.to_string(),
                purpose: purpose.as_str().to_string(),
                action: "revoke".into(),
                scope: "all".into(),
                valid_from: now.clone(),
                valid_until: None,
                recorded_at: now,
                seq: 0,
                actor: actor.to_string(),
            })
            .await
    }

    /// Every consent event of a patient, by purpose, oldest first.
    /// Kept after the patient's deletion (the record of what they allowed, and when).
    pub async fn consent_history(&self, patient_id: &str) -> Result<Vec<ConsentRow>> {
        if !self.store.patient_known(patient_id).await? {
            self.require_patient(patient_id).await?;
        }
        self.store.consent_history(patient_id).await
    }

    /// One patient's consent for one purpose at a moment.
    pub async fn consent_state(
        &self,
        patient_id: &str,
        purpose: &Purpose,
        at: DateTime<Utc>,
    ) -> Result<ConsentState> {
        let at = consent::timestamp(at);
        let history = self.consent_history(patient_id).await?;
        let latest = history
            .iter()
            .filter(|e| e.purpose == purpose.as_str() && e.recorded_at <= at)
            .max_by_key(|e| e.seq);
        ConsentState::from_latest(latest, &at)
    }

    /// Patients whose consent covers `purpose` at `at`, with the scope of each.
    pub async fn consented_patients(
        &self,
        purpose: &Purpose,
        at: DateTime<Utc>,
    ) -> Result<Vec<(String, Scope)>> {
        let at = consent::timestamp(at);
        let mut out = Vec::new();
        for row in self.store.latest_consents(purpose.as_str(), &at).await? {
            if let ConsentState::Granted { scope, .. } = ConsentState::from_latest(Some(&row), &at)?
            {
                out.push((row.patient_id, scope));
            }
        }
        Ok(out)
    }

    /// The `person_id`s, in release family `family`, of the patients whose consent covers
    /// `purpose` at `at`: what a query of that family may still see (consent is live: a
    /// revocation removes a person from results without rebuilding the release).
    pub async fn consented_pseudonyms(
        &self,
        family: &str,
        purpose: &Purpose,
        at: DateTime<Utc>,
    ) -> Result<std::collections::HashSet<String>> {
        let key = self.keyring.release_family_key(family);
        Ok(self
            .consented_patients(purpose, at)
            .await?
            .into_iter()
            .map(|(id, _)| release::family_pseudonym(&key, &id))
            .collect())
    }

    /// Identified summaries of the patients whose consent covers `purpose` at `at`, each with
    /// only the records their scope covers. The only reader of summaries: it asks the registry.
    pub async fn consented_summaries(
        &self,
        purpose: &Purpose,
        at: DateTime<Utc>,
    ) -> Result<Vec<PatientSummary>> {
        let patients = self.consented_patients(purpose, at).await?;
        self.summaries_of(&patients).await
    }

    /// The summaries of patients as [`Catalog::consented_patients`] lists them, each with only
    /// the records its consent scope covers. Private: a caller must have asked the registry.
    async fn summaries_of(&self, patients: &[(String, Scope)]) -> Result<Vec<PatientSummary>> {
        let ids: Vec<&str> = patients.iter().map(|(id, _)| id.as_str()).collect();
        self.vault.preload(&ids).await?;
        let mut out = Vec::with_capacity(patients.len());
        for (patient_id, scope) in patients {
            let patient_id = patient_id.clone();
            let sealed = self
                .store
                .patient_identity(&patient_id)
                .await?
                .ok_or_else(|| {
                    CatalogError::internal("a consent names a patient the store lacks")
                })?;
            let identity = serde_json::from_slice(
                &self
                    .vault
                    .open(&patient_id, &sealed, &ingest::patient_aad(&patient_id))
                    .await?,
            )
            .map_err(|e| CatalogError::internal(format!("stored identity does not parse: {e}")))?;
            let mut records = Vec::new();
            for (record_id, _kind, sealed) in self.store.patient_records(&patient_id).await? {
                let body = payload::decode(
                    &self
                        .vault
                        .open(&patient_id, &sealed, &record_aad(&record_id))
                        .await?,
                )?;
                if scope.covers(&body.categories) {
                    records.push(StoredRecord { record_id, body });
                }
            }
            out.push(PatientSummary {
                patient_id,
                identity,
                records,
            });
        }
        Ok(out)
    }
}

/// What `Catalog::build_release` takes.
#[derive(Debug)]
pub struct ReleaseRequest<'a> {
    /// The release family: lowercase letters, digits, `-`, `_` and `.`.
    pub family: &'a str,
    pub purpose: &'a Purpose,
    pub policy: &'a tessera_deid::policy::Policy,
    /// The policy file's text (its SHA-256 goes into the manifest).
    pub policy_text: &'a str,
    /// Where release families live (`<data dir>/releases`).
    pub releases_dir: &'a std::path::Path,
}

impl Catalog {
    /// Builds the next version of a release family from the summaries of the patients whose
    /// consent covers the purpose now, writes it (atomically, see [`release::build`]), and only
    /// then records it with its contributors. Returns the record and the manifest.
    pub async fn build_release(
        &self,
        req: &ReleaseRequest<'_>,
    ) -> Result<(ReleaseRow, release::build::Manifest)> {
        check_release_request(req.family, req.policy)?;
        let family = req.family;
        let at = Utc::now();
        // The consent snapshot: who is in, with which scope. Summaries are then read in chunks,
        // twice (see `release::build::Builder`), so memory stays bounded by a chunk.
        let patients = self.consented_patients(req.purpose, at).await?;
        if patients.is_empty() {
            return Err(CatalogError::invalid(format!(
                "no patient's consent covers `{}` now: nothing to release",
                req.purpose
            )));
        }
        let considered = self.count_patients().await? as usize;
        let version = self.store.last_release_version(family).await? + 1;
        let family_dir = req.releases_dir.join(family);
        // A folder for this version without a catalog row is a build that was written but never
        // recorded (the process died in between): it was never published, so it is replaced.
        let leftover = release::build::version_dir(&family_dir, version as u32);
        if leftover.exists() {
            std::fs::remove_dir_all(&leftover).map_err(|e| {
                CatalogError::internal(format!(
                    "removing an unrecorded build {}: {e}",
                    leftover.display()
                ))
            })?;
        }
        let key = self.keyring.release_family_key(family);
        let spec = release::build::BuildSpec {
            family,
            version: version as u32,
            purpose: req.purpose.as_str(),
            policy: req.policy,
            policy_text: req.policy_text,
            consent_at: at,
            family_key: key,
            family_dir: &family_dir,
            patients_considered: considered,
        };
        const CHUNK: usize = 2_000;
        let mut builder = release::build::Builder::new(&spec)?;
        for chunk in patients.chunks(CHUNK) {
            builder.scan(&self.summaries_of(chunk).await?);
        }
        builder.start_writing()?;
        for chunk in patients.chunks(CHUNK) {
            builder.write(&self.summaries_of(chunk).await?)?;
        }
        let manifest = builder.finish()?;
        let row = ReleaseRow {
            family: family.to_string(),
            version,
            purpose: req.purpose.as_str().to_string(),
            status: "published".into(),
            built_at: manifest.built_at.clone(),
            consent_at: manifest.consent_snapshot_at.clone(),
            policy_sha256: manifest.policy_sha256.clone(),
            path: leftover.display().to_string(),
            manifest: serde_json::to_string(&manifest)
                .map_err(|e| CatalogError::internal(format!("manifest: {e}")))?,
            retired_at: None,
        };
        let contributors: Vec<String> = patients.into_iter().map(|(id, _)| id).collect();
        self.store.insert_release(&row, &contributors).await?;
        Ok((row, manifest))
    }

    /// Every release version.
    pub async fn releases(&self) -> Result<Vec<ReleaseRow>> {
        self.store.list_releases().await
    }

    /// One release version.
    pub async fn release(&self, family: &str, version: i64) -> Result<ReleaseRow> {
        self.store
            .release(family, version)
            .await?
            .ok_or_else(|| CatalogError::NotFound {
                what: format!("release {family} v{version}"),
                hint: "`tessera release list` shows the releases".into(),
            })
    }

    /// Counts a cohort in a release version (see [`release::cohort`]); the Parquet reads run
    /// on the blocking pool.
    pub async fn cohort_count(
        &self,
        row: &ReleaseRow,
        query: release::cohort::CohortQuery,
    ) -> Result<release::cohort::CohortCounts> {
        let manifest = row.parsed_manifest()?;
        let dir = std::path::PathBuf::from(&row.path);
        tokio::task::spawn_blocking(move || release::cohort::count(&dir, &manifest, &query))
            .await
            .map_err(|e| CatalogError::internal(format!("cohort count task: {e}")))?
    }

    /// Completed survey responses (FHIR QuestionnaireResponse with status `completed`), as
    /// (internal patient id, record id, questionnaire canonical URL): what survey incentives
    /// are credited from. Neither answers nor identity leave the store here, and consent is
    /// not asked: answering a study's survey is what earns its incentive, whatever the
    /// patient's research consent.
    pub async fn completed_surveys(&self) -> Result<Vec<(String, String, String)>> {
        let mut out = Vec::new();
        let kind = model::RecordKind::SurveyResponse.as_str();
        for (patient_id, record_id, sealed) in self.store.records_of_kind(kind).await? {
            let body = payload::decode(
                &self
                    .vault
                    .open(&patient_id, &sealed, &record_aad(&record_id))
                    .await?,
            )?;
            if let model::Clinical::SurveyResponse {
                questionnaire: Some(q),
                status,
                ..
            } = &body.clinical
                && status.as_deref() == Some("completed")
            {
                out.push((patient_id, record_id, q.clone()));
            }
        }
        Ok(out)
    }

    /// The internal ids of the patients whose data a version holds.
    pub async fn release_contributors(&self, family: &str, version: i64) -> Result<Vec<String>> {
        self.store.release_contributors(family, version).await
    }

    /// Retires a version: it stays on disk for audit but is no longer offered.
    pub async fn retire_release(&self, family: &str, version: i64) -> Result<()> {
        self.release(family, version).await?;
        if !self
            .store
            .retire_release(family, version, &store::now_text())
            .await?
        {
            return Err(CatalogError::invalid(format!(
                "release {family} v{version} is already retired"
            )));
        }
        Ok(())
    }
}

/// The associated data of a value another crate stores for a patient.
fn foreign_aad(patient_id: &str, row: &str) -> Vec<u8> {
    format!("foreign/{row}/patients/{patient_id}").into_bytes()
}
