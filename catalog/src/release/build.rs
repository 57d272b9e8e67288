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
use serde::Serialize;
use tessera_deid::frame::{self, Options};
use tessera_deid::policy::{Policy, Role, Transform};
use tessera_deid::safe_harbor;

use super::{Column, Table};
use crate::error::{CatalogError, Result};

/// What a build needs besides the tables.
#[derive(Debug)]
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

/// One file of a release.
#[derive(Debug, Clone, Serialize)]
pub struct FileEntry {
    pub table: String,
    pub file: String,
    pub rows: usize,
    pub sha256: String,
    pub columns: Vec<ColumnEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColumnEntry {
    pub name: String,
    pub r#type: String,
    pub description: String,
}

/// `manifest.json`: what the release holds and what was done to make it.
#[derive(Debug, Clone, Serialize)]
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
    /// Per event table and column, how many distinct codes were suppressed as rare.
    pub rare_codes_suppressed: BTreeMap<String, BTreeMap<String, usize>>,
    pub date_handling: String,
    /// Birth years of patients 90 or older pooled into the threshold year (Safe Harbor).
    pub birth_years_pooled: usize,
    /// The 18 identifier kinds of HIPAA Safe Harbor (45 CFR 164.514(b)(2)(i)(A)-(R)) and how
    /// this release handled each.
    pub safe_harbor: Vec<ChecklistItem>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChecklistItem {
    pub identifier: &'static str,
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
            identifier,
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

fn sha256_file(path: &Path) -> Result<String> {
    let bytes =
        std::fs::read(path).map_err(|e| err(format!("reading back {}: {e}", path.display())))?;
    Ok(hex::encode(digest::digest(&digest::SHA256, &bytes)))
}

/// Builds and writes one release version; returns its manifest. Nothing is visible under
/// `v<version>` unless every file was written.
pub fn build_files(tables: Vec<Table>, spec: &BuildSpec<'_>) -> Result<Manifest> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &spec.family_key);
    let k = spec.policy.privacy.k as usize;
    let dates = dates_of(spec.policy);
    let mut rare: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut frames: Vec<(String, DataFrame)> = Vec::new();
    let mut person_report = serde_json::Value::Null;
    let mut included = 0;
    let mut pooled = 0usize;
    for mut t in tables {
        if t.name == "person" {
            included = t.rows();
            // Safe Harbor: ages over 89 and every date element indicating them go into one
            // category. With dates cut to year or month, birth years more than 89 years before
            // the build year become that threshold year, read "this year or earlier".
            if matches!(dates, Dates::Year | Dates::Month) {
                let threshold = spec.consent_at.year() - 90;
                for (name, col) in t.columns.iter_mut() {
                    if let (&mut "birth_date", Column::Text(values)) = (name, col) {
                        for v in values.iter_mut().flatten() {
                            let year: Option<i32> = v.get(..4).and_then(|y| y.parse().ok());
                            if year.is_some_and(|y| y <= threshold) {
                                *v = threshold.to_string();
                                pooled += 1;
                            }
                        }
                    }
                }
            }
            let df = t.to_frame()?;
            let outcome = frame::anonymize_with(
                &df,
                spec.policy,
                Some(&spec.family_key),
                &Options::default(),
            )
            .map_err(|e| CatalogError::invalid(format!("de-identifying the person table: {e}")))?;
            person_report =
                serde_json::to_value(&outcome.report).map_err(|e| err(format!("report: {e}")))?;
            frames.push((t.name.to_string(), outcome.frame));
            continue;
        }
        // Patients per value of each code column; values held by fewer than k are suppressed.
        let ids: Vec<Option<String>> = match t.column("person_id") {
            Some(Column::Text(v)) => v.clone(),
            _ => Vec::new(),
        };
        for (name, col) in t.columns.iter_mut() {
            let is_code = name.ends_with("_source_value")
                || matches!(*name, "gene" | "hgvs" | "vcf" | "onset");
            let Column::Text(values) = col else { continue };
            if is_code && *name != "person_id" {
                let mut holders: HashMap<&str, HashSet<&str>> = HashMap::new();
                for (v, p) in values.iter().zip(&ids) {
                    if let (Some(v), Some(p)) = (v, p) {
                        holders.entry(v.as_str()).or_default().insert(p.as_str());
                    }
                }
                let rare_values: HashSet<String> = holders
                    .into_iter()
                    .filter(|(_, ps)| ps.len() < k)
                    .map(|(v, _)| v.to_string())
                    .collect();
                if !rare_values.is_empty() {
                    rare.entry(t.name.to_string())
                        .or_default()
                        .insert(name.to_string(), rare_values.len());
                    for v in values.iter_mut().flatten() {
                        if rare_values.contains(v) {
                            *v = "*".into();
                        }
                    }
                }
            }
            if name.ends_with("_date") {
                for (v, p) in values.iter_mut().zip(&ids) {
                    if let Some(text) = v.as_mut() {
                        *text = match dates {
                            Dates::Keep => text.clone(),
                            Dates::Year => text.chars().take(4).collect(),
                            Dates::Month => text.chars().take(7).collect(),
                            Dates::Shift(window) => {
                                match (NaiveDate::parse_from_str(text, "%Y-%m-%d"), p) {
                                    (Ok(d), Some(p)) => (d + Duration::days(
                                        safe_harbor::date_shift_days(&key, p, window),
                                    ))
                                    .to_string(),
                                    // A partial date cannot be shifted: keep its year only.
                                    _ => text.chars().take(4).collect(),
                                }
                            }
                        };
                    }
                }
            }
        }
        frames.push((t.name.to_string(), t.to_frame()?));
    }

    // Write into a partial folder, then rename.
    let final_dir = spec.family_dir.join(format!("v{}", spec.version));
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
    let mut files = Vec::new();
    for (name, mut df) in frames {
        let file = format!("{name}.parquet");
        let path = partial.join(&file);
        let f = std::fs::File::create(&path)
            .map_err(|e| err(format!("creating {}: {e}", path.display())))?;
        ParquetWriter::new(&f)
            .with_compression(ParquetCompression::Zstd(None))
            .finish(&mut df)
            .map_err(|_| err(format!("writing {}", path.display())))?;
        f.sync_all()
            .map_err(|e| err(format!("syncing {}: {e}", path.display())))?;
        let columns = df
            .columns()
            .iter()
            .map(|c| ColumnEntry {
                name: c.name().to_string(),
                r#type: c.dtype().to_string(),
                description: describe(c.name().as_str()).to_string(),
            })
            .collect();
        files.push(FileEntry {
            table: name,
            rows: df.height(),
            sha256: sha256_file(&path)?,
            file,
            columns,
        });
    }
    let date_handling = match dates {
        Dates::Keep => "dates kept (the policy gives birth_date no transform)".to_string(),
        Dates::Year => "every date cut to its year".into(),
        Dates::Month => "every date cut to year and month".into(),
        Dates::Shift(w) => {
            format!("every date of a patient shifted by the same keyed number of days within ±{w}")
        }
    };
    let manifest = Manifest {
        family: spec.family.to_string(),
        version: spec.version,
        purpose: spec.purpose.to_string(),
        built_at: Utc::now().to_rfc3339(),
        consent_snapshot_at: spec.consent_at.to_rfc3339(),
        policy_sha256: hex::encode(digest::digest(&digest::SHA256, spec.policy_text.as_bytes())),
        patients_considered: spec.patients_considered,
        patients_included: included,
        patients_excluded: [(
            "no consent in force for the purpose".to_string(),
            spec.patients_considered.saturating_sub(included),
        )]
        .into_iter()
        .collect(),
        files,
        person_deid: person_report,
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
    let manifest_path = partial.join("manifest.json");
    let mut f = std::fs::File::create(&manifest_path)
        .map_err(|e| err(format!("creating {}: {e}", manifest_path.display())))?;
    f.write_all(
        serde_json::to_string_pretty(&manifest)
            .map_err(|e| err(format!("manifest: {e}")))?
            .as_bytes(),
    )
    .and_then(|_| f.sync_all())
    .map_err(|e| err(format!("writing {}: {e}", manifest_path.display())))?;
    std::fs::rename(&partial, &final_dir)
        .map_err(|e| err(format!("publishing {}: {e}", final_dir.display())))?;
    Ok(manifest)
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
