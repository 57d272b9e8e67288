//! Ingest: files in, patients and sealed records out, bad input quarantined.
//!
//! A reader thread reads inputs (files and archive members) into a bounded queue; worker threads
//! parse, extract and seal them in parallel ([`parse`]); one async writer resolves patients
//! against the store and writes each file's results. A file's problems are quarantined while the
//! file's good entries, and every other file, go in. Re-ingesting the same input changes nothing:
//! records have stable ids (blind indexes of source, type and logical id) and are rewritten only
//! when their content changes.

pub mod dates;
pub mod fhir;
pub mod parse;
pub mod phenopacket;
pub mod problem;
pub mod sensitive;
pub mod source;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};

use serde::Serialize;

use crate::crypto::{Keyring, PatientKey, Sealed};
use crate::error::{CatalogError, Result};
use crate::model::PatientIdentity;
use crate::store::{QuarantineRow, RecordRow, RunTotals, Store, Tx};
use crate::vault::{NewKey, Vault};
use parse::{KeyKind, ParseContext, ParsedFile, ParsedRecord, PatientLink, record_aad};
use problem::{Problem, Reason};
use source::Input;

/// Default largest input file: bigger ones are quarantined as `oversize`.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Files per write transaction: a crash loses at most this many files' work, never half a file.
const FILES_PER_COMMIT: usize = 64;

#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Namespace for FHIR logical ids (`Patient/123` from one server is not `Patient/123` from
    /// another). Identifiers with a system match across sources regardless.
    pub source: String,
    pub max_file_bytes: u64,
    /// Parser threads; 0 means one per core.
    pub workers: usize,
    /// Every patient and record in these files is this stored patient's: records a patient
    /// fetched from a provider with their own authorization (SMART on FHIR), where the
    /// provider's patient is the account holder whatever identifiers it carries. `None`:
    /// patients are matched as usual.
    pub owner: Option<String>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            source: "default".into(),
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            workers: 0,
            owner: None,
        }
    }
}

/// Progress callbacks for a terminal progress bar; all may be called from any thread.
pub trait Progress: Send + Sync {
    fn start(&self, _files: u64, _bytes: u64) {}
    fn file_done(&self, _bytes: u64, _records: u64) {}
    fn finish(&self) {}
}

/// No progress display.
#[derive(Debug)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// Added / updated / unchanged counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub added: u64,
    pub updated: u64,
    pub unchanged: u64,
}

/// One quarantined file or entry, as reported to the operator who ran the ingest.
#[derive(Debug, Clone, Serialize)]
pub struct Quarantined {
    /// The file as given (archive members as `archive!/member`).
    pub file: String,
    pub entry: Option<usize>,
    pub field: String,
    pub reason: Reason,
    pub message: String,
}

impl std::fmt::Display for Quarantined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(e) = self.entry {
            write!(f, ", entry {e}")?;
        }
        if !self.field.is_empty() {
            write!(f, ", field {}", self.field)?;
        }
        write!(f, ": {} ({})", self.message, self.reason)
    }
}

/// What an ingest run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestReport {
    pub run_id: String,
    pub files: u64,
    pub bytes: u64,
    pub entries_seen: u64,
    pub patients_new: u64,
    pub patients_updated: u64,
    pub patients_unchanged: u64,
    /// Patients kept apart because two records of one source shared an identifier.
    pub identifier_conflicts: u64,
    pub records: Changes,
    pub by_resource_type: BTreeMap<String, Changes>,
    pub quarantined: Vec<Quarantined>,
}

/// A file read and parsed, on its way to the writer.
struct Parsed {
    label: String,
    bytes_len: u64,
    file_sha256: String,
    parsed: ParsedFile,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn parse_job(
    label: String,
    bytes: Option<Vec<u8>>,
    size: u64,
    max: u64,
    ctx: &ParseContext,
) -> Parsed {
    let Some(bytes) = bytes else {
        let mut parsed = ParsedFile::default();
        let message = if size > max {
            format!(
                "the file is {size} bytes, over the {max}-byte limit; split it, or raise --max-file-bytes"
            )
        } else {
            "the file could not be read".to_string()
        };
        parsed.problems.push(Problem::file(
            if size > max {
                Reason::Oversize
            } else {
                Reason::Unreadable
            },
            message,
        ));
        // Oversize files are not read, so they are identified by a keyed hash of path and size
        // (a plain hash of a path that holds a patient's name could be guessed).
        let file_sha256 = ctx
            .keyring
            .keyed_hash("unread-file", format!("{label}\0{size}").as_bytes());
        return Parsed {
            label,
            bytes_len: size,
            file_sha256,
            parsed,
        };
    };
    let parsed = parse::parse_file(&bytes, &label, ctx);
    // The content hash identifies the file in the quarantine; it is needed only when something
    // may be quarantined: a problem now, or a record whose patient may turn out not to exist.
    let may_quarantine = !parsed.problems.is_empty()
        || parsed
            .records
            .iter()
            .any(|r| matches!(r.link, Some(PatientLink::Keys(_))));
    let file_sha256 = if may_quarantine {
        sha256_hex(&bytes)
    } else {
        String::new()
    };
    Parsed {
        label,
        bytes_len: bytes.len() as u64,
        file_sha256,
        parsed,
    }
}

/// Runs one ingest over `paths`.
pub async fn run(
    store: &Store,
    keyring: Arc<Keyring>,
    vault: &Vault,
    paths: &[PathBuf],
    options: &IngestOptions,
    progress: &dyn Progress,
) -> Result<IngestReport> {
    if options.source.is_empty() || options.source.contains(['\0', '\n']) {
        return Err(CatalogError::invalid(
            "--source must be a non-empty single-line name",
        ));
    }
    let inputs = source::discover(paths)?;
    run_inputs(store, keyring, vault, inputs, options, progress).await
}

/// Ingests bytes held in memory (records fetched from a provider), each `(label, bytes)` as if
/// it were a file of that name: same parsing, quarantine, sealing and report.
pub async fn run_memory(
    store: &Store,
    keyring: Arc<Keyring>,
    vault: &Vault,
    files: Vec<(String, Vec<u8>)>,
    options: &IngestOptions,
    progress: &dyn Progress,
) -> Result<IngestReport> {
    if options.source.is_empty() || options.source.contains(['\0', '\n']) {
        return Err(CatalogError::invalid(
            "--source must be a non-empty single-line name",
        ));
    }
    let inputs = files
        .into_iter()
        .map(|(label, bytes)| Input::Memory { label, bytes })
        .collect();
    run_inputs(store, keyring, vault, inputs, options, progress).await
}

async fn run_inputs(
    store: &Store,
    keyring: Arc<Keyring>,
    vault: &Vault,
    inputs: Vec<Input>,
    options: &IngestOptions,
    progress: &dyn Progress,
) -> Result<IngestReport> {
    progress.start(inputs.len() as u64, inputs.iter().map(Input::size).sum());
    let run_id = hex::encode(random_bytes::<8>()?);
    let mut tx = store.begin().await?;
    tx.start_run(&run_id, &options.source).await?;
    tx.commit().await?;

    let workers = if options.workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        options.workers
    };
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let (job_tx, job_rx) = mpsc::sync_channel::<(String, Option<Vec<u8>>, u64)>(workers * 2);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Parsed>(workers * 2);
    let max = options.max_file_bytes;

    // Reader: files and archive members into the job queue. Errors reading a file become
    // problems of that file; only an unreadable archive stops the reader, reported at the end.
    let reader = std::thread::spawn(move || -> Result<()> {
        for input in inputs {
            match input {
                Input::File { path, size } => {
                    let label = path.display().to_string();
                    let bytes = if size > max {
                        None
                    } else {
                        std::fs::read(&path).ok()
                    };
                    if job_tx.send((label, bytes, size)).is_err() {
                        break;
                    }
                }
                Input::Memory { label, bytes } => {
                    let size = bytes.len() as u64;
                    let bytes = (size <= max).then_some(bytes);
                    if job_tx.send((label, bytes, size)).is_err() {
                        break;
                    }
                }
                Input::Archive { path, .. } => {
                    source::read_archive(&path, max, |label, size, bytes| {
                        job_tx
                            .send((label, bytes, size))
                            .map_err(|_| CatalogError::internal("ingest workers stopped early"))
                    })?
                }
            }
        }
        Ok(())
    });
    let mut parsers = Vec::new();
    for _ in 0..workers {
        let job_rx = Arc::clone(&job_rx);
        let out_tx = out_tx.clone();
        let keyring = Arc::clone(&keyring);
        let source = options.source.clone();
        let today = today.clone();
        parsers.push(std::thread::spawn(move || {
            let ctx = ParseContext {
                keyring: &keyring,
                source: &source,
                today: &today,
            };
            loop {
                let job = match job_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => break,
                };
                let Ok((label, bytes, size)) = job else { break };
                let parsed = parse_job(label, bytes, size, max, &ctx);
                if out_tx.blocking_send(parsed).is_err() {
                    break;
                }
            }
        }));
    }
    drop(out_tx);

    let mut writer = Writer::new(store, &keyring, vault, &run_id, &options.source);
    writer.owner = options.owner.as_deref();
    let mut pending = 0usize;
    writer.begin().await?;
    while let Some(p) = out_rx.recv().await {
        let records = p.parsed.records.len() as u64;
        let bytes = p.bytes_len;
        writer.write_file(p).await?;
        progress.file_done(bytes, records);
        pending += 1;
        if pending >= FILES_PER_COMMIT {
            writer.commit().await?;
            writer.begin().await?;
            pending = 0;
        }
    }
    writer.resolve_deferred().await?;
    let report = writer.finish().await?;
    for p in parsers {
        p.join()
            .map_err(|_| CatalogError::internal("an ingest worker panicked"))?;
    }
    reader
        .join()
        .map_err(|_| CatalogError::internal("the ingest reader panicked"))??;
    progress.finish();
    tracing::info!(
        run_id = %report.run_id,
        files = report.files,
        records_added = report.records.added,
        records_updated = report.records.updated,
        records_unchanged = report.records.unchanged,
        patients_new = report.patients_new,
        quarantined = report.quarantined.len(),
        "ingest finished"
    );
    Ok(report)
}

/// Stores one FHIR resource a patient made themself (a survey answered on the patients'
/// pages) through the same parser, extraction, sealing and writer as any ingested file, as an
/// ingest run of its own under `source`. The resource belongs to `patient_id` whatever its
/// subject says (the caller has established whose it is); a resource that does not parse is
/// refused with the problem, and nothing is written.
pub async fn ingest_own_resource(
    store: &Store,
    keyring: &Keyring,
    vault: &Vault,
    patient_id: &str,
    source: &str,
    resource: &serde_json::Value,
) -> Result<IngestReport> {
    let bytes = serde_json::to_vec(resource)
        .map_err(|e| CatalogError::internal(format!("serializing a resource: {e}")))?;
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let ctx = ParseContext {
        keyring,
        source,
        today: &today,
    };
    let parsed = parse::parse_file(&bytes, "resource.json", &ctx);
    if let Some(p) = parsed.problems.first() {
        return Err(CatalogError::invalid(format!(
            "the resource was refused at `{}`: {} ({})",
            p.field,
            p.message,
            p.reason.as_str()
        )));
    }
    if parsed.records.is_empty() {
        return Err(CatalogError::invalid("the resource holds no record"));
    }
    let run_id = hex::encode(random_bytes::<8>()?);
    let mut tx = store.begin().await?;
    tx.start_run(&run_id, source).await?;
    tx.commit().await?;
    let mut writer = Writer::new(store, keyring, vault, &run_id, source);
    writer.begin().await?;
    writer.report.files = 1;
    writer.report.bytes = bytes.len() as u64;
    let ready: Vec<(Option<String>, ParsedRecord)> = parsed
        .records
        .into_iter()
        .map(|r| (Some(patient_id.to_string()), r))
        .collect();
    writer.write_records(&ready).await?;
    writer.finish().await
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CatalogError::internal("the system random number generator failed"))?;
    Ok(b)
}

/// A record waiting for its patient to appear later in the batch.
struct Deferred {
    label: String,
    file_sha256: String,
    record: ParsedRecord,
}

struct Writer<'a> {
    store: &'a Store,
    keyring: &'a Keyring,
    /// Patients' data keys: identities and records are sealed here, under their patient's key.
    vault: &'a Vault,
    /// Keys made in the open transaction, stored in the vault before it commits.
    new_keys: Vec<NewKey>,
    run_id: &'a str,
    source: &'a str,
    /// [`IngestOptions::owner`].
    owner: Option<&'a str>,
    tx: Option<Tx>,
    /// Blind-index key to patient id, for keys seen or created in this run.
    known: HashMap<String, String>,
    deferred: Vec<Deferred>,
    report: IngestReport,
}

fn identity_hash(keyring: &Keyring, identity: &PatientIdentity) -> Result<(Vec<u8>, String)> {
    let json = serde_json::to_vec(identity)
        .map_err(|e| CatalogError::internal(format!("serializing identity: {e}")))?;
    let hash = keyring.blind_index(&["identity", &String::from_utf8_lossy(&json)]);
    Ok((json, hash))
}

pub(crate) fn patient_aad(patient_id: &str) -> Vec<u8> {
    format!("patients/{patient_id}").into_bytes()
}

impl<'a> Writer<'a> {
    fn new(
        store: &'a Store,
        keyring: &'a Keyring,
        vault: &'a Vault,
        run_id: &'a str,
        source: &'a str,
    ) -> Self {
        Writer {
            store,
            keyring,
            vault,
            new_keys: Vec::new(),
            run_id,
            source,
            owner: None,
            tx: None,
            known: HashMap::new(),
            deferred: Vec::new(),
            report: IngestReport {
                run_id: run_id.to_string(),
                ..Default::default()
            },
        }
    }

    async fn begin(&mut self) -> Result<()> {
        self.tx = Some(self.store.begin().await?);
        Ok(())
    }

    /// Commits the open transaction, after storing the data keys made in it: a value is never
    /// committed sealed under a key the vault does not hold. (A failure in between leaves an
    /// unused key in the vault, which seals nothing.)
    async fn commit(&mut self) -> Result<()> {
        if !self.new_keys.is_empty() {
            self.vault.store(std::mem::take(&mut self.new_keys)).await?;
        }
        if let Some(tx) = self.tx.take() {
            tx.commit().await?;
        }
        Ok(())
    }

    fn tx(&mut self) -> Result<&mut Tx> {
        self.tx
            .as_mut()
            .ok_or_else(|| CatalogError::internal("ingest writer has no open transaction"))
    }

    /// The patient's data key; made (and stored at the next commit) when they have none.
    async fn patient_key(&mut self, patient_id: &str) -> Result<Arc<PatientKey>> {
        if let Some(k) = self.vault.key(patient_id).await? {
            return Ok(k);
        }
        let (key, new) = self.vault.create(patient_id)?;
        self.new_keys.push(new);
        Ok(key)
    }

    /// Looks up keys not yet known in this run.
    async fn lookup(&mut self, keys: &[String]) -> Result<()> {
        let missing: Vec<String> = keys
            .iter()
            .filter(|k| !self.known.contains_key(*k))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        for (key, pid) in self.tx()?.patients_by_keys(&missing).await? {
            self.known.insert(key, pid);
        }
        Ok(())
    }

    /// Finds or creates the stored patient for a parsed one. A patient's own logical id (in this
    /// source) is the strongest match; otherwise a shared identifier (system + value) or fullUrl
    /// matches, unless the stored patient already has a different logical id in this same
    /// source: then two records of one source claim one identifier (a data error such as a
    /// reused licence number), and they are kept apart rather than merged.
    async fn upsert_patient(
        &mut self,
        keys: &[(String, KeyKind)],
        identity: PatientIdentity,
    ) -> Result<String> {
        let all: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
        self.lookup(&all).await?;
        let by_logical_id = match self.owner {
            Some(owner) => Some(owner.to_string()),
            None => keys
                .iter()
                .find(|(_, kind)| *kind == KeyKind::LogicalId)
                .and_then(|(k, _)| self.known.get(k))
                .cloned(),
        };
        let has_logical_id = keys.iter().any(|(_, kind)| *kind == KeyKind::LogicalId);
        let target = match by_logical_id {
            Some(pid) => Some(pid),
            None => {
                let mut candidates: Vec<String> = keys
                    .iter()
                    .filter_map(|(k, _)| self.known.get(k).cloned())
                    .collect();
                candidates.sort();
                candidates.dedup();
                let mut chosen = None;
                for pid in candidates {
                    let source = self.source;
                    if has_logical_id && self.tx()?.has_logical_id(&pid, source).await? {
                        self.report.identifier_conflicts += 1;
                        tracing::warn!(
                            "two patients of one source share an identifier; they are kept apart (see identifier_conflicts in the ingest report)"
                        );
                        continue;
                    }
                    chosen = Some(pid);
                    break;
                }
                chosen
            }
        };
        let patient_id = match target {
            Some(pid) => {
                let (sealed, old_hash) = self.tx()?.patient_identity(&pid).await?;
                let plain = self.vault.open(&pid, &sealed, &patient_aad(&pid)).await?;
                let mut merged: PatientIdentity = serde_json::from_slice(&plain).map_err(|e| {
                    CatalogError::internal(format!("stored identity does not parse: {e}"))
                })?;
                merged.merge(identity);
                let (json, hash) = identity_hash(self.keyring, &merged)?;
                if hash == old_hash {
                    self.report.patients_unchanged += 1;
                } else {
                    let sealed = self
                        .patient_key(&pid)
                        .await?
                        .seal(&json, &patient_aad(&pid))?;
                    self.tx()?.update_patient(&pid, &sealed, &hash).await?;
                    self.report.patients_updated += 1;
                }
                pid
            }
            None => {
                let pid = hex::encode(random_bytes::<16>()?);
                let (json, hash) = identity_hash(self.keyring, &identity)?;
                let (key, new) = self.vault.create(&pid)?;
                self.new_keys.push(new);
                let sealed = key.seal(&json, &patient_aad(&pid))?;
                self.tx()?.insert_patient(&pid, &sealed, &hash).await?;
                self.report.patients_new += 1;
                pid
            }
        };
        let source = self.source;
        let new_keys: Vec<(&str, &str, &str)> = keys
            .iter()
            .filter(|(k, _)| !self.known.contains_key(k))
            .map(|(k, kind)| {
                (
                    k.as_str(),
                    kind.as_str(),
                    if *kind == KeyKind::LogicalId {
                        source
                    } else {
                        ""
                    },
                )
            })
            .collect();
        let tx = self
            .tx
            .as_mut()
            .ok_or_else(|| CatalogError::internal("no open transaction"))?;
        tx.insert_patient_keys(&patient_id, &new_keys).await?;
        for (k, _) in keys {
            self.known
                .entry(k.clone())
                .or_insert_with(|| patient_id.clone());
        }
        Ok(patient_id)
    }

    async fn write_file(&mut self, p: Parsed) -> Result<()> {
        self.report.files += 1;
        self.report.bytes += p.bytes_len;
        self.report.entries_seen += p.parsed.entries_seen as u64;
        let mut local = Vec::with_capacity(p.parsed.patients.len());
        for patient in p.parsed.patients {
            local.push(self.upsert_patient(&patient.keys, patient.identity).await?);
        }
        let mut ready = Vec::with_capacity(p.parsed.records.len());
        for record in p.parsed.records {
            let pid = match &record.link {
                None => None,
                Some(PatientLink::Local(i)) => Some(local.get(*i).cloned().ok_or_else(|| {
                    CatalogError::internal("record names a patient its file does not hold")
                })?),
                Some(PatientLink::Keys(_)) if self.owner.is_some() => {
                    self.owner.map(str::to_string)
                }
                Some(PatientLink::Keys(keys)) => {
                    self.lookup(keys).await?;
                    match keys.iter().find_map(|k| self.known.get(k)) {
                        Some(pid) => Some(pid.clone()),
                        None => {
                            self.deferred.push(Deferred {
                                label: p.label.clone(),
                                file_sha256: p.file_sha256.clone(),
                                record,
                            });
                            continue;
                        }
                    }
                }
            };
            ready.push((pid, record));
        }
        self.write_records(&ready).await?;
        for problem in &p.parsed.problems {
            self.quarantine(&p.label, &p.file_sha256, problem).await?;
        }
        Ok(())
    }

    async fn write_records(&mut self, ready: &[(Option<String>, ParsedRecord)]) -> Result<()> {
        let ids: Vec<&str> = ready.iter().map(|(_, r)| r.record_id.as_str()).collect();
        let existing = self.tx()?.record_hashes(&ids).await?;
        // What to write (index into `ready`, update or not), decided first; then only those
        // are sealed, each under its patient's key (reference data, with no patient, under
        // the master key).
        let mut writes: Vec<(usize, bool)> = Vec::new();
        // The same record twice in one write (a deferred record from two copies of a file):
        // the first copy stands, the others count as unchanged.
        let mut seen: std::collections::HashSet<&str> =
            std::collections::HashSet::with_capacity(ready.len());
        for (i, (_, r)) in ready.iter().enumerate() {
            let counts = self
                .report
                .by_resource_type
                .entry(r.resource_type.clone())
                .or_default();
            if !seen.insert(r.record_id.as_str()) {
                counts.unchanged += 1;
                self.report.records.unchanged += 1;
                continue;
            }
            match existing.get(&r.record_id) {
                None => {
                    counts.added += 1;
                    self.report.records.added += 1;
                    writes.push((i, false));
                }
                Some(h) if *h != r.content_hash => {
                    counts.updated += 1;
                    self.report.records.updated += 1;
                    writes.push((i, true));
                }
                Some(_) => {
                    counts.unchanged += 1;
                    self.report.records.unchanged += 1;
                }
            }
        }
        let mut sealed: Vec<Sealed> = Vec::with_capacity(writes.len());
        for (i, _) in &writes {
            let (pid, r) = &ready[*i];
            let aad = record_aad(&r.record_id);
            sealed.push(match pid {
                Some(pid) => self.patient_key(pid).await?.seal(&r.payload, &aad)?,
                None => self.keyring.seal(&r.payload, &aad)?,
            });
        }
        let mut inserts = Vec::new();
        let mut updates = Vec::new();
        for ((i, update), sealed) in writes.iter().zip(&sealed) {
            let (pid, r) = &ready[*i];
            let row = RecordRow {
                record_id: &r.record_id,
                patient_id: pid.as_deref(),
                kind: r.kind.as_str(),
                resource_type: &r.resource_type,
                content_hash: &r.content_hash,
                sealed,
                source: self.source,
            };
            if *update {
                updates.push(row);
            } else {
                inserts.push(row);
            }
        }
        let tx = self
            .tx
            .as_mut()
            .ok_or_else(|| CatalogError::internal("no open transaction"))?;
        tx.insert_records(&inserts).await?;
        for u in &updates {
            tx.update_record(u).await?;
        }
        Ok(())
    }

    async fn quarantine(
        &mut self,
        label: &str,
        file_sha256: &str,
        problem: &Problem,
    ) -> Result<()> {
        let entry = problem.entry.map(|e| e as i64);
        let entry_text = entry.map(|e| e.to_string()).unwrap_or_default();
        let quarantine_id = self.keyring.blind_index(&[
            "quarantine",
            file_sha256,
            &entry_text,
            &problem.field,
            problem.reason.as_str(),
        ])[..24]
            .to_string();
        let detail = serde_json::json!({ "file": label, "message": problem.message });
        let sealed_detail = self.keyring.seal(
            detail.to_string().as_bytes(),
            &quarantine_aad(&quarantine_id),
        )?;
        let row = QuarantineRow {
            quarantine_id,
            file_sha256: file_sha256.to_string(),
            entry_index: entry,
            field: problem.field.clone(),
            reason: problem.reason.as_str().to_string(),
            sealed_detail,
        };
        let run_id = self.run_id;
        self.tx()?.upsert_quarantine(run_id, &row).await?;
        self.report.quarantined.push(Quarantined {
            file: label.to_string(),
            entry: problem.entry,
            field: problem.field.clone(),
            reason: problem.reason,
            message: problem.message.clone(),
        });
        Ok(())
    }

    /// Records whose patient was not known when their file was written: try once more now that
    /// the whole batch is in; what still has no patient is quarantined.
    async fn resolve_deferred(&mut self) -> Result<()> {
        let deferred = std::mem::take(&mut self.deferred);
        let mut ready = Vec::new();
        for d in deferred {
            let Some(PatientLink::Keys(keys)) = &d.record.link else {
                continue;
            };
            self.lookup(keys).await?;
            if let Some(pid) = keys.iter().find_map(|k| self.known.get(k)).cloned() {
                ready.push((Some(pid), d.record));
            } else {
                let problem = Problem::at(
                    d.record.entry,
                    d.record.ref_field.clone(),
                    Reason::DanglingReference,
                    "the referenced patient is not in this file, the rest of the batch, or the store; ingest the patient first (or with it)",
                );
                self.quarantine(&d.label, &d.file_sha256, &problem).await?;
            }
        }
        self.write_records(&ready).await
    }

    async fn finish(mut self) -> Result<IngestReport> {
        let r = &self.report;
        let totals = RunTotals {
            files: r.files as i64,
            bytes: r.bytes as i64,
            patients_new: r.patients_new as i64,
            patients_updated: r.patients_updated as i64,
            records_added: r.records.added as i64,
            records_updated: r.records.updated as i64,
            records_unchanged: r.records.unchanged as i64,
            quarantined: r.quarantined.len() as i64,
        };
        let run_id = self.run_id;
        self.tx()?.finish_run(run_id, &totals).await?;
        self.commit().await?;
        Ok(self.report)
    }
}

pub(crate) fn quarantine_aad(quarantine_id: &str) -> Vec<u8> {
    format!("quarantine/{quarantine_id}").into_bytes()
}
