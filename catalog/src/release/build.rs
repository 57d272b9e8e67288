//! Building the files of one release version: the OMOP-shaped tables of the consented
//! summaries, de-identified under a `tessera-deid` policy, written as Parquet with a manifest,
//! atomically (a `.partial` folder renamed into place only when every file is written, synced
//! and hashed).
//!
//! The person table goes through the policy (transforms, pseudonyms, generalization to
//! k-anonymity on its quasi-identifiers, suppression). Event tables follow it:
//! - their dates get the transform the policy gives `birth_date` (year, month, or the same
//!   per-patient shift, keyed by the family key and the `person_id`, so intervals within a
//!   patient hold), and `days_since_index` is kept as is;
//! - rare codes are quasi-identifiers too: a source code (or gene, HGVS, variant) held by fewer
//!   than k patients of the release is suppressed to `*`, and the manifest counts each.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use polars::prelude::{DataFrame, ParquetCompression, ParquetWriter};
use ring::{digest, hmac};
use serde::{Deserialize, Serialize};
use tessera_deid::events::{Anonymized, EventData, Released};
use tessera_deid::frame::{self, Options};
use tessera_deid::policy::{Policy, Role, Transform};
use tessera_deid::safe_harbor;

use super::events::{self, EventPolicy};
use super::{Column, Table};
use crate::error::{CatalogError, Result};
use crate::model::PatientSummary;

/// What a build needs besides the summaries. `Debug` leaves out the family key.
pub struct BuildSpec<'a> {
    pub family: &'a str,
    pub version: u32,
    pub purpose: &'a str,
    pub policy: &'a Policy,
    /// The policy file's text, hashed into the manifest.
    pub policy_text: &'a str,
    pub consent_at: DateTime<Utc>,
    pub family_key: [u8; 32],
    /// The family's folder; the version is written to `v<version>` inside it.
    pub family_dir: &'a Path,
    pub patients_considered: usize,
}

impl std::fmt::Debug for BuildSpec<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildSpec")
            .field("family", &self.family)
            .field("version", &self.version)
            .field("purpose", &self.purpose)
            .field("family_dir", &self.family_dir)
            .finish_non_exhaustive()
    }
}

/// One file of a release.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    pub table: String,
    pub file: String,
    pub rows: usize,
    pub sha256: String,
    pub columns: Vec<ColumnEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColumnEntry {
    pub name: String,
    pub r#type: String,
    pub description: String,
    /// Public bounds of a numeric column, declared from what the column means (never read
    /// from the data): what a differentially private sum or mean clamps to when the query
    /// gives no bounds of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<(f64, f64)>,
}

/// `manifest.json`: what the release holds and what was done to make it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub family: String,
    pub version: u32,
    pub purpose: String,
    pub built_at: String,
    pub consent_snapshot_at: String,
    pub policy_sha256: String,
    pub patients_considered: usize,
    pub patients_included: usize,
    /// Patients of the catalog left out, by reason.
    pub patients_excluded: BTreeMap<String, usize>,
    pub files: Vec<FileEntry>,
    /// The person table's de-identification report (k achieved, levels, loss, risk).
    pub person_deid: serde_json::Value,
    /// The event model: (k, k^m)-anonymity of the event tables, the columns each item is made
    /// of, and its report (items kept, generalized, suppressed; violations before and after;
    /// risk for an attacker with m items; NCP). Null in releases built before it existed.
    #[serde(default)]
    pub events: serde_json::Value,
    /// Per table and column outside the event model, how many distinct codes were suppressed
    /// as rare.
    pub rare_codes_suppressed: BTreeMap<String, BTreeMap<String, usize>>,
    pub date_handling: String,
    /// Birth years of patients 90 or older pooled into the threshold year (Safe Harbor).
    pub birth_years_pooled: usize,
    /// The 18 identifier kinds of HIPAA Safe Harbor (45 CFR 164.514(b)(2)(i)(A)-(R)) and how
    /// this release handled each.
    pub safe_harbor: Vec<ChecklistItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChecklistItem {
    pub identifier: String,
    pub handling: String,
}

/// The Safe Harbor checklist for a release built under `policy` with `dates` handling.
fn checklist(policy: &Policy, dates: &str) -> Vec<ChecklistItem> {
    let transform_of = |column: &str| {
        policy
            .columns
            .iter()
            .find(|c| c.name == column)
            .map(|c| (c.role, c.transform.clone()))
    };
    let zip = match transform_of("zip") {
        Some((Role::Identifier, _)) | None => "not released (no ZIP column)".to_string(),
        Some((_, Some(Transform::Zip3))) => "first three digits; restricted prefixes to 000; generalized further as k-anonymity needs".to_string(),
        Some((role, t)) => format!("released as {role:?} with transform {t:?}: review the policy"),
    };
    let never = "never extracted from the sources into any release table";
    let items: [(&'static str, String); 18] = [
        ("names", never.into()),
        ("geographic subdivisions smaller than a state (street, city, county, ZIP)", format!("street lines, cities and counties {never}; ZIP: {zip}")),
        ("all elements of dates (except year) related to an individual, and ages over 89", format!("{dates}; ages are not released as such (events carry days since the index diagnosis)")),
        ("telephone numbers", never.into()),
        ("fax numbers", never.into()),
        ("email addresses", never.into()),
        ("social security numbers", never.into()),
        ("medical record numbers", never.into()),
        ("health plan beneficiary numbers", never.into()),
        ("account numbers", never.into()),
        ("certificate/license numbers", never.into()),
        ("vehicle identifiers and serial numbers", never.into()),
        ("device identifiers and serial numbers", never.into()),
        ("web URLs", never.into()),
        ("IP addresses", never.into()),
        ("biometric identifiers", never.into()),
        ("full-face photographs and comparable images", never.into()),
        ("any other unique identifying number, characteristic or code", "person_id is a keyed per-family pseudonym; source record ids are not released; codes held by fewer than k patients are suppressed".into()),
    ];
    items
        .into_iter()
        .map(|(identifier, handling)| ChecklistItem {
            identifier: identifier.to_string(),
            handling,
        })
        .collect()
}

fn err(message: impl Into<String>) -> CatalogError {
    CatalogError::internal(message.into())
}

/// The data dictionary: one description per column.
fn describe(column: &str) -> &'static str {
    match column {
        "person_id" => "pseudonymous person id: keyed per release family, stable across versions",
        "birth_date" => "birth date after the policy's transform (year, month or shifted)",
        "gender_source_value" => "administrative sex as recorded, generalized as the policy says",
        "race_source_value" => "race as recorded, generalized as the policy says",
        "ethnicity_source_value" => "ethnicity as recorded, generalized as the policy says",
        "zip" => "ZIP code after the policy's transform (first three digits; restricted to 000)",
        "days_since_index" => "days from the patient's first diagnosis to the event",
        "end_days_since_index" => {
            "days from the patient's first diagnosis to the period's end (the last dated event)"
        }
        "value_as_number" => "numeric value",
        "unit_source_value" => "unit as recorded (UCUM where the source used it)",
        "excluded" => "true when the phenotype was explicitly excluded",
        "onset" => "onset as an HPO onset class or an ISO 8601 age",
        "gene" => "gene symbol",
        "hgvs" => "HGVS expressions, `;`-separated",
        "zygosity" => "zygosity as recorded",
        "vcf" => "hg38 chrom:pos:ref:alt",
        "interpretation_status" => "ACMG-style interpretation status",
        "questionnaire" => "the questionnaire answered",
        "question_link_id" => "the question's link id in the questionnaire",
        "value_source_value" => "coded value (code) or boolean; free text never passes",
        c if c.ends_with("_source_value") => "source code as recorded (no OMOP concept mapping)",
        c if c.ends_with("_source_vocabulary") => "code system of the source code",
        c if c.ends_with("_date") => "date after the policy's date transform",
        _ => "see docs/releases.md",
    }
}

/// The date transform the policy gives `birth_date`, applied to every event date.
enum Dates {
    Keep,
    Year,
    Month,
    Shift(u32),
}

fn dates_of(policy: &Policy) -> Dates {
    match policy
        .columns
        .iter()
        .find(|c| c.name == "birth_date")
        .and_then(|c| c.transform.as_ref())
    {
        Some(Transform::DateYear) => Dates::Year,
        Some(Transform::DateMonth) => Dates::Month,
        Some(Transform::DateShift { window_days, .. }) => Dates::Shift(*window_days),
        _ => Dates::Keep,
    }
}

/// SHA-256 of a written file, read back in 1 MiB pieces (release files can be large).
fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let fail = |e: std::io::Error| err(format!("reading back {}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(fail)?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(fail)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

/// Whether a column of an event table holds codes that count as quasi-identifiers.
fn is_code(column: &str) -> bool {
    column != "person_id"
        && (column.ends_with("_source_value")
            || matches!(column, "gene" | "hgvs" | "vcf" | "onset"))
}

/// An item as the scan keeps it: domain, interned code, year, days since the index event.
type ScannedItem = (u16, u32, Option<i32>, Option<i64>);

/// A row's item: domain, code key, year, days since the index event.
type RowItem = (u16, String, Option<i32>, Option<i64>);

/// One event table being written.
struct Output {
    table: &'static str,
    path: PathBuf,
    writer: polars::io::parquet::write::BatchedWriter<std::fs::File>,
    rows: usize,
    columns: Vec<ColumnEntry>,
}

/// Builds one release version in two passes over the summaries, so that a large release never
/// holds more than one chunk of patients' events in memory:
/// 1. [`Builder::scan`] every chunk: person rows, and which patients hold each code;
/// 2. [`Builder::start_writing`]: the person table through the policy, rare codes decided;
/// 3. [`Builder::write`] every chunk again: event tables transformed and appended;
/// 4. [`Builder::finish`]: files synced and hashed, the manifest, the rename into place.
///
/// Nothing is visible under `v<version>` unless every step succeeded.
pub struct Builder<'a> {
    spec: &'a BuildSpec<'a>,
    key: hmac::Key,
    dates: Dates,
    partial: PathBuf,
    final_dir: PathBuf,
    person: Option<Table>,
    /// Internal index of each person id, for the holder sets.
    index: HashMap<String, u32>,
    holders: HashMap<(&'static str, &'static str), HashMap<String, HashSet<u32>>>,
    rare: HashMap<(&'static str, &'static str), HashSet<String>>,
    outputs: Vec<Output>,
    files: Vec<FileEntry>,
    person_report: serde_json::Value,
    included: usize,
    pooled: usize,
    events: EventPolicy,
    /// Interned code keys of the event model.
    codes: Vec<String>,
    code_ids: HashMap<String, u32>,
    /// Per person id, the items of their events (domain, code, year, days since index).
    person_events: HashMap<String, Vec<ScannedItem>>,
    /// Person id → the model's person index.
    person_index: HashMap<String, u32>,
    anonymized: Option<Anonymized>,
    events_report: serde_json::Value,
}

impl std::fmt::Debug for Builder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("family", &self.spec.family)
            .field("version", &self.spec.version)
            .field("included", &self.included)
            .finish_non_exhaustive()
    }
}

/// A build that fails (or is dropped before [`Builder::finish`]) removes its `.partial` folder;
/// after `finish` the folder has been renamed and there is nothing to remove. A killed process
/// leaves the folder, which is never listed and which the next build replaces.
impl Drop for Builder<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.partial);
    }
}

impl<'a> Builder<'a> {
    /// Prepares the `.partial` folder; refuses a version that already exists.
    pub fn new(spec: &'a BuildSpec<'a>) -> Result<Builder<'a>> {
        let final_dir = version_dir(spec.family_dir, spec.version);
        if final_dir.exists() {
            return Err(CatalogError::invalid(format!(
                "{} already exists: releases are immutable; build the next version",
                final_dir.display()
            )));
        }
        let partial = spec.family_dir.join(format!("v{}.partial", spec.version));
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(|e| {
                err(format!(
                    "removing an earlier failed build {}: {e}",
                    partial.display()
                ))
            })?;
        }
        std::fs::create_dir_all(&partial)
            .map_err(|e| err(format!("creating {}: {e}", partial.display())))?;
        Ok(Builder {
            key: hmac::Key::new(hmac::HMAC_SHA256, &spec.family_key),
            dates: dates_of(spec.policy),
            spec,
            partial,
            final_dir,
            person: None,
            index: HashMap::new(),
            holders: HashMap::new(),
            rare: HashMap::new(),
            outputs: Vec::new(),
            files: Vec::new(),
            person_report: serde_json::Value::Null,
            included: 0,
            pooled: 0,
            events: EventPolicy::from_policy(spec.policy)?,
            codes: Vec::new(),
            code_ids: HashMap::new(),
            person_events: HashMap::new(),
            person_index: HashMap::new(),
            anonymized: None,
            events_report: serde_json::Value::Null,
        })
    }

    fn tables(&self, chunk: &[PatientSummary]) -> Vec<Table> {
        let key = self.spec.family_key;
        super::omop_tables(chunk, &|id| super::family_pseudonym(&key, id))
    }

    /// Pass 1 over a chunk of patients.
    pub fn scan(&mut self, chunk: &[PatientSummary]) {
        for t in self.tables(chunk) {
            if t.name == "person" {
                match self.person.as_mut() {
                    None => self.person = Some(t),
                    Some(p) => p.append(t),
                }
                continue;
            }
            let ids: Vec<Option<String>> = match t.column("person_id") {
                Some(Column::Text(v)) => v.clone(),
                _ => Vec::new(),
            };
            if self.events.domain(t.name).is_some() {
                self.scan_items(&t, &ids);
                continue;
            }
            for (name, col) in &t.columns {
                let Column::Text(values) = col else { continue };
                if !is_code(name) {
                    continue;
                }
                let holders = self.holders.entry((t.name, *name)).or_default();
                for (v, p) in values.iter().zip(&ids) {
                    if let (Some(v), Some(p)) = (v, p) {
                        let next = self.index.len() as u32;
                        let i = *self.index.entry(p.clone()).or_insert(next);
                        holders.entry(v.clone()).or_default().insert(i);
                    }
                }
            }
        }
    }

    /// The model's code key of each row of an item table, with the row's year and interval
    /// (when time is part of the item).
    fn row_items(&mut self, t: &Table, ids: &[Option<String>]) -> Vec<Option<RowItem>> {
        let Some((domain, spec, time)) = self.events.domain(t.name) else {
            return Vec::new();
        };
        let text = |c: &str| match t.column(c) {
            Some(Column::Text(v)) => v.clone(),
            _ => vec![None; t.rows()],
        };
        let codes = text(spec.code);
        let systems = spec.vocabulary.map(text);
        let dates = spec.date.map(text);
        let (hgvs, vcf) = (text("hgvs"), text("vcf"));
        let excluded: Vec<Option<bool>> = match t.column("excluded") {
            Some(Column::Boolean(v)) => v.clone(),
            _ => vec![None; t.rows()],
        };
        let days: Vec<Option<i64>> = match t.column("days_since_index") {
            Some(Column::Integer(v)) => v.clone(),
            _ => vec![None; t.rows()],
        };
        let mut out = Vec::with_capacity(t.rows());
        for r in 0..t.rows() {
            let Some(person) = ids.get(r).and_then(|p| p.as_deref()) else {
                out.push(None);
                continue;
            };
            let key = if t.name == "genomic_variant" {
                if codes[r].is_none() && hgvs[r].is_none() && vcf[r].is_none() {
                    out.push(None);
                    continue;
                }
                let (exact, gene) =
                    events::variant_key(codes[r].as_deref(), hgvs[r].as_deref(), vcf[r].as_deref());
                events::add_variant_hierarchy(&mut self.events.model, domain, &exact, &gene);
                exact
            } else {
                let Some(code) = codes[r].as_deref() else {
                    out.push(None);
                    continue;
                };
                let system = systems.as_ref().and_then(|s| s[r].as_deref());
                let key = events::code_key(system, code, excluded[r] == Some(true));
                self.events.add_prefix_ancestors(domain, &key);
                key
            };
            let (year, interval) = if time {
                let year = dates
                    .as_ref()
                    .and_then(|d| d[r].as_deref())
                    .and_then(|d| self.date(d, Some(person)).get(..4)?.parse::<i32>().ok());
                (year, days[r])
            } else {
                (None, None)
            };
            out.push(Some((domain, key, year, interval)));
        }
        out
    }

    /// Pass 1 for an item table: every person's items, for the event model.
    fn scan_items(&mut self, t: &Table, ids: &[Option<String>]) {
        let rows = self.row_items(t, ids);
        let mut touched: HashSet<&str> = HashSet::new();
        for (r, item) in rows.into_iter().enumerate() {
            let (Some((domain, key, year, days)), Some(Some(person))) = (item, ids.get(r)) else {
                continue;
            };
            let next = self.codes.len() as u32;
            let code = *self.code_ids.entry(key.clone()).or_insert_with(|| {
                self.codes.push(key);
                next
            });
            self.person_events
                .entry(person.clone())
                .or_default()
                .push((domain, code, year, days));
            touched.insert(person.as_str());
        }
        // Repeated events of one item (yearly vitals, refills) are one item: keep the scan's
        // memory to distinct items per person.
        for p in touched {
            if let Some(items) = self.person_events.get_mut(p) {
                items.sort_unstable();
                items.dedup();
            }
        }
    }

    /// After the person table: the event model over every person's items, grouped by the
    /// released quasi-identifiers (every person column but `person_id`, as the person table
    /// shows them).
    fn anonymize_events(&mut self, df: &DataFrame) -> Result<()> {
        let fail = |what: &str| {
            err(format!(
                "event model: reading the released person table ({what})"
            ))
        };
        let ids = df
            .column("person_id")
            .map_err(|_| fail("person_id"))?
            .cast(&polars::prelude::DataType::String)
            .map_err(|_| fail("person_id"))?;
        let ids = ids.str().map_err(|_| fail("person_id"))?;
        let mut others = Vec::new();
        for c in df.columns() {
            if c.name().as_str() == "person_id" {
                continue;
            }
            let text = c
                .cast(&polars::prelude::DataType::String)
                .map_err(|_| fail(c.name().as_str()))?;
            others.push(text);
        }
        let mut data = EventData::new();
        for row in 0..df.height() {
            let mut group = String::new();
            for c in &others {
                let v = c.str().ok().and_then(|s| s.get(row));
                group.push_str(v.unwrap_or("\u{0}null"));
                group.push('\u{1e}');
            }
            let p = data.add_person(&group);
            if let Some(id) = ids.get(row) {
                self.person_index.insert(id.to_string(), p);
                let mut items = self.person_events.remove(id).unwrap_or_default();
                items.sort_unstable();
                items.dedup();
                for (domain, code, year, days) in items {
                    data.add_event(
                        &self.events.model,
                        p,
                        domain,
                        &self.codes[code as usize],
                        year,
                        days,
                    );
                }
            }
        }
        self.person_events = HashMap::new();
        if !self.events.enabled {
            self.events_report = serde_json::json!({"model": "off ([events] enabled = false): only codes held by fewer than k persons are suppressed"});
            return Ok(());
        }
        let anonymized = data
            .anonymize(&self.events.model)
            .map_err(|e| err(format!("event model: {e}")))?;
        let items: serde_json::Map<String, serde_json::Value> = self
            .events
            .item_columns()
            .into_iter()
            .map(|(t, cols)| (t, serde_json::json!(cols)))
            .collect();
        self.events_report = serde_json::json!({
            "model": "(k, k^m)-anonymity: every combination of a person's released quasi-identifiers and up to m of their items is shared by at least k persons",
            "k": self.events.model.k,
            "m": self.events.model.m,
            "items": items,
            "group_by": "every person column but person_id, as released",
            "interval_days": self.events.interval_days,
            "report": anonymized.report,
        });
        self.anonymized = Some(anonymized);
        Ok(())
    }

    /// An item table's rows as released: code, vocabulary and time from the model; rows of
    /// suppressed items left out; time columns outside the item not released.
    fn release_items(&mut self, t: &mut Table, ids: &[Option<String>]) -> Result<()> {
        let Some((_, spec, time)) = self.events.domain(t.name) else {
            return Ok(());
        };
        let items = self.row_items(t, ids);
        let anonymized = self
            .anonymized
            .as_ref()
            .ok_or_else(|| err("event model: rows written before the model ran"))?;
        let n = t.rows();
        let mut keep = vec![false; n];
        let mut code: Vec<Option<String>> = vec![None; n];
        let mut system: Vec<Option<String>> = vec![None; n];
        let mut hgvs: Vec<Option<String>> = vec![None; n];
        let mut vcf: Vec<Option<String>> = vec![None; n];
        let mut year: Vec<Option<String>> = vec![None; n];
        let mut days: Vec<Option<i64>> = vec![None; n];
        for (r, item) in items.into_iter().enumerate() {
            let Some((domain, key, y, d)) = item else {
                continue;
            };
            let Some(&person) = ids[r].as_ref().and_then(|p| self.person_index.get(p)) else {
                continue; // not in the person table: nothing to release
            };
            let Released::Item {
                code: released,
                time: level,
                year: ry,
                days: rd,
                ..
            } = anonymized.release(person, domain, &key, y, d)
            else {
                continue;
            };
            keep[r] = true;
            if t.name == "genomic_variant" {
                let (g, h, v) = events::variant_parts(&released);
                code[r] = g;
                hgvs[r] = h;
                vcf[r] = v;
            } else {
                let (s, c) = events::split_key(&released);
                code[r] = Some(c.to_string());
                system[r] = (!s.is_empty()).then(|| s.to_string());
            }
            if time {
                year[r] = level.year_label(ry);
                days[r] = rd;
            }
        }
        for (name, col) in t.columns.iter_mut() {
            let name: &str = name;
            match col {
                Column::Text(v) if name == spec.code => *v = std::mem::take(&mut code),
                Column::Text(v) if Some(name) == spec.vocabulary => {
                    *v = std::mem::take(&mut system)
                }
                Column::Text(v) if t.name == "genomic_variant" && name == "hgvs" => {
                    *v = std::mem::take(&mut hgvs)
                }
                Column::Text(v) if t.name == "genomic_variant" && name == "vcf" => {
                    *v = std::mem::take(&mut vcf)
                }
                Column::Text(v) if time && Some(name) == spec.date => {
                    *v = std::mem::take(&mut year)
                }
                Column::Integer(v) if time && name == "days_since_index" => {
                    *v = std::mem::take(&mut days)
                }
                Column::Text(v) if spec.dropped.contains(&name) => {
                    v.iter_mut().for_each(|x| *x = None)
                }
                _ => {}
            }
        }
        t.retain(&keep);
        Ok(())
    }

    /// After the scan: decides the rare codes and writes the de-identified person table.
    pub fn start_writing(&mut self) -> Result<()> {
        let k = self.spec.policy.privacy.k as usize;
        for (key, holders) in std::mem::take(&mut self.holders) {
            let rare: HashSet<String> = holders
                .into_iter()
                .filter(|(_, ps)| ps.len() < k)
                .map(|(v, _)| v)
                .collect();
            if !rare.is_empty() {
                self.rare.insert(key, rare);
            }
        }
        self.index = HashMap::new();
        let mut person = self
            .person
            .take()
            .ok_or_else(|| CatalogError::invalid("no patients to release"))?;
        self.included = person.rows();
        // Safe Harbor: ages over 89 and every date element indicating them go into one
        // category. With dates cut to year or month, birth years more than 89 years before the
        // build year become that threshold year, read "this year or earlier".
        if matches!(self.dates, Dates::Year | Dates::Month) {
            let threshold = self.spec.consent_at.year() - 90;
            for (name, col) in person.columns.iter_mut() {
                if let (&mut "birth_date", Column::Text(values)) = (name, col) {
                    for v in values.iter_mut().flatten() {
                        let year: Option<i32> = v.get(..4).and_then(|y| y.parse().ok());
                        if year.is_some_and(|y| y <= threshold) {
                            *v = threshold.to_string();
                            self.pooled += 1;
                        }
                    }
                }
            }
        }
        let outcome = frame::anonymize_with(
            &person.to_frame()?,
            self.spec.policy,
            Some(&self.spec.family_key),
            &Options::default(),
        )
        .map_err(|e| CatalogError::invalid(format!("de-identifying the person table: {e}")))?;
        self.person_report =
            serde_json::to_value(&outcome.report).map_err(|e| err(format!("report: {e}")))?;
        let mut df = outcome.frame;
        let path = self.partial.join("person.parquet");
        let f = std::fs::File::create(&path)
            .map_err(|e| err(format!("creating {}: {e}", path.display())))?;
        ParquetWriter::new(&f)
            .with_compression(ParquetCompression::Zstd(None))
            .finish(&mut df)
            .map_err(|_| err(format!("writing {}", path.display())))?;
        f.sync_all()
            .map_err(|e| err(format!("syncing {}: {e}", path.display())))?;
        self.files.push(FileEntry {
            table: "person".into(),
            file: "person.parquet".into(),
            rows: df.height(),
            sha256: sha256_file(&path)?,
            columns: column_entries(&df),
        });
        self.anonymize_events(&df)?;
        Ok(())
    }

    /// Pass 2 over the same chunk of patients: event tables transformed and appended.
    pub fn write(&mut self, chunk: &[PatientSummary]) -> Result<()> {
        for mut t in self.tables(chunk) {
            if t.name == "person" {
                continue;
            }
            let ids: Vec<Option<String>> = match t.column("person_id") {
                Some(Column::Text(v)) => v.clone(),
                _ => Vec::new(),
            };
            let item_table = self.events.domain(t.name);
            if item_table.is_some() {
                self.release_items(&mut t, &ids)?;
            }
            let ids: Vec<Option<String>> = match t.column("person_id") {
                Some(Column::Text(v)) => v.clone(),
                _ => Vec::new(),
            };
            let item_time = item_table.is_some_and(|(_, _, time)| time);
            for (name, col) in t.columns.iter_mut() {
                // Intervals outside the items: the finest band the policy allows, or none.
                if let Column::Integer(values) = col
                    && !item_time
                    && name.ends_with("days_since_index")
                {
                    for v in values.iter_mut() {
                        *v = self.events.interval(*v);
                    }
                }
                let Column::Text(values) = col else { continue };
                if item_time && item_table.is_some_and(|(_, spec, _)| spec.date == Some(*name)) {
                    continue; // the item's own time, already released by the model
                }
                if name.ends_with("_date") && !self.events.years {
                    values.iter_mut().for_each(|v| *v = None);
                    continue;
                }
                if let Some(rare) = self.rare.get(&(t.name, *name)) {
                    for v in values.iter_mut().flatten() {
                        if rare.contains(v) {
                            *v = "*".into();
                        }
                    }
                }
                if name.ends_with("_date") {
                    for (v, p) in values.iter_mut().zip(&ids) {
                        if let Some(text) = v.as_mut() {
                            *text = self.date(text, p.as_deref());
                        }
                    }
                }
            }
            let df = t.to_frame()?;
            let out = match self.outputs.iter_mut().position(|o| o.table == t.name) {
                Some(i) => &mut self.outputs[i],
                None => {
                    let path = self.partial.join(format!("{}.parquet", t.name));
                    let f = std::fs::File::create(&path)
                        .map_err(|e| err(format!("creating {}: {e}", path.display())))?;
                    let writer = ParquetWriter::new(f)
                        .with_compression(ParquetCompression::Zstd(None))
                        .batched(df.schema())
                        .map_err(|_| err(format!("writing {}", path.display())))?;
                    self.outputs.push(Output {
                        table: t.name,
                        path,
                        writer,
                        rows: 0,
                        columns: column_entries(&df),
                    });
                    self.outputs.last_mut().ok_or_else(|| err("no output"))?
                }
            };
            if df.height() > 0 {
                out.writer
                    .write_batch(&df)
                    .map_err(|_| err(format!("writing {}", out.path.display())))?;
                out.rows += df.height();
            }
        }
        Ok(())
    }

    fn date(&self, text: &str, person: Option<&str>) -> String {
        match self.dates {
            Dates::Keep => text.to_string(),
            Dates::Year => text.chars().take(4).collect(),
            Dates::Month => text.chars().take(7).collect(),
            Dates::Shift(window) => match (NaiveDate::parse_from_str(text, "%Y-%m-%d"), person) {
                (Ok(d), Some(p)) => {
                    (d + Duration::days(safe_harbor::date_shift_days(&self.key, p, window)))
                        .to_string()
                }
                // A partial date cannot be shifted: keep its year only.
                _ => text.chars().take(4).collect(),
            },
        }
    }

    /// Closes the files, writes the manifest and renames the version into place.
    pub fn finish(mut self) -> Result<Manifest> {
        for out in std::mem::take(&mut self.outputs) {
            out.writer
                .finish()
                .map_err(|_| err(format!("writing {}", out.path.display())))?;
            std::fs::File::open(&out.path)
                .and_then(|f| f.sync_all())
                .map_err(|e| err(format!("syncing {}: {e}", out.path.display())))?;
            self.files.push(FileEntry {
                table: out.table.to_string(),
                file: format!("{}.parquet", out.table),
                rows: out.rows,
                sha256: sha256_file(&out.path)?,
                columns: out.columns,
            });
        }
        let spec = self.spec;
        let (dates, pooled, included) = (&self.dates, self.pooled, self.included);
        let date_handling = match dates {
            Dates::Keep => "dates kept (the policy gives birth_date no transform)".to_string(),
            Dates::Year => "every date cut to its year".into(),
            Dates::Month => "every date cut to year and month".into(),
            Dates::Shift(w) => format!(
                "every date of a patient shifted by the same keyed number of days within ±{w}"
            ),
        };
        let mut rare: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for ((table, column), values) in &self.rare {
            rare.entry(table.to_string())
                .or_default()
                .insert(column.to_string(), values.len());
        }
        let manifest = Manifest {
            family: spec.family.to_string(),
            version: spec.version,
            purpose: spec.purpose.to_string(),
            built_at: Utc::now().to_rfc3339(),
            consent_snapshot_at: spec.consent_at.to_rfc3339(),
            policy_sha256: hex::encode(digest::digest(
                &digest::SHA256,
                spec.policy_text.as_bytes(),
            )),
            patients_considered: spec.patients_considered,
            patients_included: included,
            patients_excluded: [(
                "no consent in force for the purpose".to_string(),
                spec.patients_considered.saturating_sub(included),
            )]
            .into_iter()
            .collect(),
            files: std::mem::take(&mut self.files),
            person_deid: std::mem::take(&mut self.person_report),
            events: std::mem::take(&mut self.events_report),
            rare_codes_suppressed: rare,
            safe_harbor: checklist(
                spec.policy,
                &match dates {
                    Dates::Year | Dates::Month => format!(
                        "{date_handling}; birth years of patients 90 or older pooled into {} (\"{} or earlier\"): {pooled} patients",
                        spec.consent_at.year() - 90,
                        spec.consent_at.year() - 90
                    ),
                    Dates::Shift(_) => format!(
                        "{date_handling} (Expert Determination: ages over 89 are not pooled; the birth date is generalized as k-anonymity needs)"
                    ),
                    Dates::Keep => format!("{date_handling}: NOT Safe Harbor"),
                },
            ),
            birth_years_pooled: pooled,
            date_handling,
        };
        let manifest_path = self.partial.join("manifest.json");
        let mut f = std::fs::File::create(&manifest_path)
            .map_err(|e| err(format!("creating {}: {e}", manifest_path.display())))?;
        f.write_all(
            serde_json::to_string_pretty(&manifest)
                .map_err(|e| err(format!("manifest: {e}")))?
                .as_bytes(),
        )
        .and_then(|_| f.sync_all())
        .map_err(|e| err(format!("writing {}: {e}", manifest_path.display())))?;
        std::fs::rename(&self.partial, &self.final_dir)
            .map_err(|e| err(format!("publishing {}: {e}", self.final_dir.display())))?;
        Ok(manifest)
    }
}

fn column_entries(df: &DataFrame) -> Vec<ColumnEntry> {
    df.columns()
        .iter()
        .map(|c| ColumnEntry {
            name: c.name().to_string(),
            r#type: c.dtype().to_string(),
            description: describe(c.name().as_str()).to_string(),
            bounds: declared_bounds(c.name().as_str()),
        })
        .collect()
}

/// Bounds a column has by its meaning: intervals within a century either side of the index
/// event. Columns whose range depends on the data (a measurement's value, in units that vary)
/// declare none.
fn declared_bounds(column: &str) -> Option<(f64, f64)> {
    match column {
        "days_since_index" | "end_days_since_index" => Some((-36_525.0, 36_525.0)),
        _ => None,
    }
}

/// Builds and writes one release version from summaries held in memory (both passes over the
/// same slice); returns its manifest.
pub fn build_files(summaries: &[PatientSummary], spec: &BuildSpec<'_>) -> Result<Manifest> {
    let mut b = Builder::new(spec)?;
    b.scan(summaries);
    b.start_writing()?;
    b.write(summaries)?;
    b.finish()
}

/// Where a version lives.
pub fn version_dir(family_dir: &Path, version: u32) -> PathBuf {
    family_dir.join(format!("v{version}"))
}

/// Whether a policy can serve the person table: every person column has a role.
pub fn check_person_policy(policy: &Policy) -> Result<()> {
    let needed = [
        "person_id",
        "birth_date",
        "gender_source_value",
        "race_source_value",
        "ethnicity_source_value",
        "zip",
        "index_date",
    ];
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|n| !policy.columns.iter().any(|c| c.name == *n))
        .collect();
    if !missing.is_empty() {
        return Err(CatalogError::invalid(format!(
            "the release policy gives no role to person column(s) {}",
            missing.join(", ")
        )));
    }
    if policy
        .columns
        .iter()
        .any(|c| c.name == "person_id" && c.role == Role::Identifier)
    {
        return Err(CatalogError::invalid(
            "the release policy would drop person_id; give it role `insensitive` (it is already a pseudonym)",
        ));
    }
    Ok(())
}
