//! A synthetic population of any size, resampled from a corpus of Synthea FHIR bundles.
//!
//! `tessera demo --patients N` and the release benchmark need more people than the shipped
//! corpus holds (373 Synthea patients). A copy of a source bundle is a new person:
//!
//! - every resource id, full URL and reference in the bundle (and the Synthea identifier, the
//!   medical record number) is a fresh UUID, derived from the seed, the copy and the old id;
//! - the Patient resource's names, mother's maiden name, birth place and address come from
//!   other patients of the corpus (given names from one of the same sex), its SSN, driver's
//!   licence, passport and telephone numbers are fresh digits of the same shape, and its
//!   narrative (which carries Synthea's person seed) is replaced;
//! - every date and time in the bundle (birth, death, events, claims) moves back by the same
//!   number of days, 0 to `MAX_SHIFT_DAYS` (365): ages at events and the intervals between events
//!   stay exactly as simulated, calendar years differ, and nothing lands in the future.
//!
//! Conditional references to the corpus's shared organizations and practitioners
//! (`Organization?identifier=...`) are kept, so copies refer to the same hospitals.
//!
//! The draw is a SplitMix64 sequence from the seed: the same seed and size give the same
//! population, byte for byte. This is reproducible sampling for demos and benchmarks, not
//! privacy noise (which comes from opendp's secure sampler, `tessera_query::dp`).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Duration, NaiveDate};
use serde_json::Value;

use crate::error::{CatalogError, Result};
use crate::ingest::source::read_archive;

/// The largest shift of a copy's dates, in days (a year): calendar years differ from the
/// source's by at most one, as births do in the release benchmark's resampling.
pub const MAX_SHIFT_DAYS: u64 = 365;

/// What a resampling wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resampled {
    /// Source patient bundles written as they are.
    pub originals: usize,
    /// New persons made from them.
    pub copies: usize,
    /// Other files of the corpus (hospital and practitioner bundles), written as they are.
    pub shared_files: usize,
}

impl Resampled {
    pub fn patients(&self) -> usize {
        self.originals + self.copies
    }
}

/// SplitMix64 (Steele, Lea and Flood 2014): a seeded sequence for reproducible sampling in
/// demos and benchmarks (never for privacy noise).
#[derive(Debug, Clone)]
pub struct Draw(pub u64);

impl Draw {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A draw in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// A donor's identity parts, taken from the corpus's own Patient resources.
#[derive(Clone)]
struct Donor {
    female: bool,
    names: Value,
    maiden: Option<Value>,
    birth_place: Option<Value>,
    address: Option<Value>,
}

/// One patient bundle of the corpus.
struct Source {
    name: String,
    bytes: Vec<u8>,
}

/// Reads the corpus archive `source` (`.tar` or `.tar.zst` of Synthea bundles) and writes to
/// `dest` (a `.tar.zst`) a population of `patients` persons: the corpus's patient bundles in
/// name order (the first `patients` of them when that is fewer), then copies of bundles drawn
/// at random until there are `patients`. The corpus's other files are written as they are.
pub fn resample_synthea(
    source: &Path,
    dest: &Path,
    patients: usize,
    seed: u64,
) -> Result<Resampled> {
    let mut bundles: Vec<Source> = Vec::new();
    let mut shared: Vec<Source> = Vec::new();
    read_archive(source, u64::MAX, |label, _, bytes| {
        let bytes = bytes.unwrap_or_default();
        let name = label.rsplit("!/").next().unwrap_or(&label).to_string();
        if patient_of(&bytes).is_some() {
            bundles.push(Source { name, bytes });
        } else {
            shared.push(Source { name, bytes });
        }
        Ok(())
    })?;
    bundles.sort_by(|a, b| a.name.cmp(&b.name));
    if bundles.is_empty() {
        return Err(CatalogError::invalid(format!(
            "{} holds no FHIR bundle with a Patient resource: give the Synthea corpus archive",
            source.display()
        )));
    }
    let donors: Vec<Donor> = bundles
        .iter()
        .filter_map(|b| {
            let v: Value = serde_json::from_slice(&b.bytes).ok()?;
            let p = patient_resource(&v)?;
            Some(Donor {
                female: p.get("gender").and_then(Value::as_str) == Some("female"),
                names: p.get("name").cloned().unwrap_or(Value::Null),
                maiden: extension(p, "patient-mothersMaidenName").cloned(),
                birth_place: extension(p, "patient-birthPlace").cloned(),
                address: p.get("address").cloned(),
            })
        })
        .collect();

    let io = |e: std::io::Error| CatalogError::Io {
        path: dest.to_path_buf(),
        source: e,
    };
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let partial = dest.with_extension("partial");
    let file = std::fs::File::create(&partial).map_err(io)?;
    let mut tar = tar::Builder::new(zstd::Encoder::new(file, 3).map_err(io)?.auto_finish());
    let mut append = |name: &str, bytes: &[u8]| -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes).map_err(io)
    };
    for s in &shared {
        append(&s.name, &s.bytes)?;
    }
    let originals = patients.min(bundles.len());
    for b in &bundles[..originals] {
        append(&b.name, &b.bytes)?;
    }
    let mut draw = Draw(seed);
    let copies = patients - originals;
    for copy in 0..copies {
        let at = draw.below(bundles.len());
        // Named by its place in the corpus, not its file name: Synthea's file names are the
        // patient's name.
        let mut v: Value = serde_json::from_slice(&bundles[at].bytes).map_err(|e| {
            CatalogError::invalid(format!(
                "{}: patient bundle {} (in name order) is not JSON ({e}); give the Synthea corpus archive as shipped",
                source.display(),
                at + 1
            ))
        })?;
        new_person(&mut v, &donors, &mut draw, seed, copy as u64);
        let bytes = serde_json::to_vec(&v)
            .map_err(|e| CatalogError::internal(format!("re-serializing a copy: {e}")))?;
        append(&format!("synthetic/person-{copy:07}.json"), &bytes)?;
    }
    tar.into_inner().map_err(io)?.flush().map_err(io)?;
    std::fs::rename(&partial, dest).map_err(io)?;
    Ok(Resampled {
        originals,
        copies,
        shared_files: shared.len(),
    })
}

/// The Patient resource of a bundle's bytes, when it has one (cheap test before parsing all).
fn patient_of(bytes: &[u8]) -> Option<()> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.contains("\"resourceType\":\"Patient\"")
        .then_some(())
        .or_else(|| text.contains("\"resourceType\": \"Patient\"").then_some(()))
}

fn patient_resource(v: &Value) -> Option<&Value> {
    v.get("entry")?
        .as_array()?
        .iter()
        .filter_map(|e| e.get("resource"))
        .find(|r| r.get("resourceType").and_then(Value::as_str) == Some("Patient"))
}

fn extension<'a>(patient: &'a Value, suffix: &str) -> Option<&'a Value> {
    patient.get("extension")?.as_array()?.iter().find(|e| {
        e.get("url")
            .and_then(Value::as_str)
            .is_some_and(|u| u.ends_with(suffix))
    })
}

/// Makes `bundle` a new person (see the module's documentation).
fn new_person(bundle: &mut Value, donors: &[Donor], draw: &mut Draw, seed: u64, copy: u64) {
    let shift = Duration::days(-((draw.next_u64() % (MAX_SHIFT_DAYS + 1)) as i64));
    let mut ids = HashMap::new();
    // Identity first, while the Patient resource is found by its old shape.
    if let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) {
        for e in entries.iter_mut() {
            let Some(r) = e.get_mut("resource") else {
                continue;
            };
            if r.get("resourceType").and_then(Value::as_str) == Some("Patient") {
                new_identity(r, donors, draw);
            }
        }
    }
    walk(bundle, &mut |s| {
        if s.contains("?identifier=") {
            return; // the corpus's shared organizations and practitioners
        }
        if let Some(moved) = shift_date(s, shift) {
            *s = moved;
            return;
        }
        if let Some(fresh) = remap_uuids(s, &mut ids, seed, copy) {
            *s = fresh;
        }
    });
}

fn new_identity(patient: &mut Value, donors: &[Donor], draw: &mut Draw) {
    let female = patient.get("gender").and_then(Value::as_str) == Some("female");
    let same_sex: Vec<&Donor> = donors.iter().filter(|d| d.female == female).collect();
    let pool: Vec<&Donor> = if same_sex.is_empty() {
        donors.iter().collect()
    } else {
        same_sex
    };
    let given = pool[draw.below(pool.len())];
    let family = &donors[draw.below(donors.len())];
    let place = &donors[draw.below(donors.len())];
    let Some(p) = patient.as_object_mut() else {
        return;
    };
    // Names: the given-name donor's names with the family-name donor's family names.
    let mut names = given.names.clone();
    if let (Some(list), Some(families)) = (names.as_array_mut(), family.names.as_array()) {
        for (i, n) in list.iter_mut().enumerate() {
            if let (Some(obj), Some(f)) = (
                n.as_object_mut(),
                families
                    .get(i)
                    .or(families.first())
                    .and_then(|f| f.get("family")),
            ) {
                obj.insert("family".into(), f.clone());
            }
        }
    }
    p.insert("name".into(), names);
    match &place.address {
        Some(a) => p.insert("address".into(), a.clone()),
        None => p.remove("address"),
    };
    p.insert(
        "text".into(),
        serde_json::json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">A synthetic person resampled by Tessera from a Synthea patient.</div>"}),
    );
    if let Some(exts) = p.get_mut("extension").and_then(Value::as_array_mut) {
        exts.retain(|e| {
            let url = e.get("url").and_then(Value::as_str).unwrap_or("");
            !url.ends_with("patient-mothersMaidenName") && !url.ends_with("patient-birthPlace")
        });
        exts.extend(family.maiden.clone());
        exts.extend(place.birth_place.clone());
    }
    for key in ["identifier", "telecom"] {
        if let Some(list) = p.get_mut(key).and_then(Value::as_array_mut) {
            for item in list {
                if let Some(value) = item.get_mut("value")
                    && let Some(text) = value.as_str()
                    && !looks_like_uuid_text(text)
                {
                    *value = Value::String(fresh_digits(text, draw));
                }
            }
        }
    }
}

/// Every string of a JSON value, mutably.
fn walk(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter_mut().for_each(|x| walk(x, f)),
        Value::Object(o) => o.values_mut().for_each(|x| walk(x, f)),
        _ => {}
    }
}

/// `text` with every digit redrawn (letters and punctuation kept: the same shape).
fn fresh_digits(text: &str, draw: &mut Draw) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_digit() {
                char::from(b'0' + (draw.next_u64() % 10) as u8)
            } else {
                c
            }
        })
        .collect()
}

/// A FHIR date (`YYYY-MM-DD`) or dateTime/instant (`YYYY-MM-DDThh:mm:ss[.fff](Z|±hh:mm)`)
/// moved by `shift`, in the same form; `None` for anything else (years and year-months alone
/// are left: they carry no day to move, and Synthea does not write them).
fn shift_date(s: &str, shift: Duration) -> Option<String> {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' || !b[..4].iter().all(u8::is_ascii_digit) {
        return None;
    }
    if b.len() == 10 {
        let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
        return Some((d + shift).format("%Y-%m-%d").to_string());
    }
    if b[10] != b'T' {
        return None;
    }
    let t = DateTime::parse_from_rfc3339(s).ok()?;
    let moved = t + shift;
    // Keep the source's precision (with or without fractional seconds).
    let form = if s.contains('.') {
        chrono::SecondsFormat::Millis
    } else {
        chrono::SecondsFormat::Secs
    };
    Some(moved.to_rfc3339_opts(form, s.ends_with('Z')))
}

fn looks_like_uuid_text(s: &str) -> bool {
    find_uuid(s, 0).is_some()
}

/// The byte position of the first UUID (8-4-4-4-12 hex digits) in `s` at or after `from`.
fn find_uuid(s: &str, from: usize) -> Option<usize> {
    let b = s.as_bytes();
    if b.len() < 36 {
        return None;
    }
    (from..=b.len() - 36).find(|&i| {
        b[i..i + 36].iter().enumerate().all(|(j, c)| match j {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
    })
}

/// `s` with every UUID replaced by the copy's own (the same old id gives the same new one
/// throughout the bundle); `None` when `s` holds none.
fn remap_uuids(s: &str, ids: &mut HashMap<String, String>, seed: u64, copy: u64) -> Option<String> {
    let mut at = find_uuid(s, 0)?;
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    loop {
        out.push_str(&s[last..at]);
        let old = &s[at..at + 36];
        let new = ids
            .entry(old.to_ascii_lowercase())
            .or_insert_with(|| derived_uuid(seed, copy, old));
        out.push_str(new);
        last = at + 36;
        match find_uuid(s, last) {
            Some(next) => at = next,
            None => break,
        }
    }
    out.push_str(&s[last..]);
    Some(out)
}

/// A version-4-shaped UUID from SHA-256 of (seed, copy, old id).
fn derived_uuid(seed: u64, copy: u64, old: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"tessera synthetic person v1");
    ctx.update(&seed.to_le_bytes());
    ctx.update(&copy.to_le_bytes());
    ctx.update(old.to_ascii_lowercase().as_bytes());
    let d = ctx.finish();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_move_by_the_same_days_in_their_own_form() {
        let back = Duration::days(-366);
        assert_eq!(
            shift_date("2000-03-01", back).as_deref(),
            Some("1999-03-01")
        );
        assert_eq!(
            shift_date("2019-06-01T10:20:30-04:00", back).as_deref(),
            Some("2018-05-31T10:20:30-04:00")
        );
        assert_eq!(
            shift_date("2019-06-01T10:20:30.123Z", back).as_deref(),
            Some("2018-05-31T10:20:30.123Z")
        );
        assert_eq!(shift_date("38341003", back), None);
        assert_eq!(shift_date("2019", back), None);
        assert_eq!(shift_date("2019-13-45", back), None);
    }

    #[test]
    fn uuids_are_remapped_consistently_and_conditional_references_kept() {
        let old = "27c911c6-f045-4ffa-af5d-6eba57ac94b2";
        let mut bundle = serde_json::json!({
            "resourceType": "Bundle",
            "entry": [
                {"fullUrl": format!("urn:uuid:{old}"), "resource": {
                    "resourceType": "Patient", "id": old, "gender": "female",
                    "birthDate": "1980-01-02",
                    "identifier": [{"value": old}, {"value": "999-34-1238"}],
                    "name": [{"family": "Conn", "given": ["Liz"]}]}},
                {"resource": {"resourceType": "Encounter",
                    "subject": {"reference": format!("urn:uuid:{old}")},
                    "serviceProvider": {"reference": "Organization?identifier=https://github.com/synthetichealth/synthea|ef58ea08-d883-3957-8300-150554edc8fb"},
                    "period": {"start": "2010-05-05T10:00:00-04:00"}}}
            ]
        });
        let donors = vec![Donor {
            female: true,
            names: serde_json::json!([{"family": "Haag", "given": ["Ada"]}]),
            maiden: None,
            birth_place: None,
            address: None,
        }];
        let mut draw = Draw(7);
        new_person(&mut bundle, &donors, &mut draw, 7, 0);
        let text = bundle.to_string();
        assert!(!text.contains(old), "the old id is gone everywhere");
        assert!(!text.contains("Conn") && !text.contains("999-34-1238"));
        assert!(text.contains("ef58ea08-d883-3957-8300-150554edc8fb"));
        let patient = &bundle["entry"][0]["resource"];
        let id = patient["id"].as_str().expect("id");
        assert_eq!(
            bundle["entry"][1]["resource"]["subject"]["reference"],
            format!("urn:uuid:{id}")
        );
        assert_eq!(bundle["entry"][0]["fullUrl"], format!("urn:uuid:{id}"));
        // Birth and the encounter moved back by the same days.
        let birth =
            NaiveDate::parse_from_str(patient["birthDate"].as_str().expect("b"), "%Y-%m-%d")
                .expect("date");
        let start = DateTime::parse_from_rfc3339(
            bundle["entry"][1]["resource"]["period"]["start"]
                .as_str()
                .expect("start"),
        )
        .expect("dt");
        let old_gap = NaiveDate::from_ymd_opt(2010, 5, 5).expect("d")
            - NaiveDate::from_ymd_opt(1980, 1, 2).expect("d");
        assert_eq!(start.date_naive() - birth, old_gap);
        assert!(birth <= NaiveDate::from_ymd_opt(1980, 1, 2).expect("d"));
        assert_eq!(patient["name"][0]["given"][0], "Ada");
    }

    /// A corpus of the two shipped fixture bundles resampled to five persons: the two as they
    /// are, three new persons with their own ids; the same seed writes the same archive.
    #[test]
    fn a_corpus_resamples_to_any_size_reproducibly() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/fhir");
        let dir = tempfile::tempdir().expect("temp");
        let corpus = dir.path().join("corpus.tar.zst");
        {
            let f = std::fs::File::create(&corpus).expect("file");
            let mut tar = tar::Builder::new(zstd::Encoder::new(f, 1).expect("zstd").auto_finish());
            for name in ["synthea-patient-1.json", "synthea-patient-2.json"] {
                tar.append_path_with_name(root.join(name), name)
                    .expect("append");
            }
            tar.into_inner().expect("finish");
        }
        let out = |name: &str, seed| {
            let dest = dir.path().join(name);
            let r = resample_synthea(&corpus, &dest, 5, seed).expect("resample");
            (r, std::fs::read(&dest).expect("archive"))
        };
        let (r, a) = out("a.tar.zst", 1);
        assert_eq!(
            r,
            Resampled {
                originals: 2,
                copies: 3,
                shared_files: 0
            }
        );
        assert_eq!(out("b.tar.zst", 1).1, a, "same seed, same archive");
        assert_ne!(out("c.tar.zst", 2).1, a, "another seed, other persons");
        let mut ids = std::collections::BTreeSet::new();
        read_archive(&dir.path().join("a.tar.zst"), u64::MAX, |_, _, bytes| {
            let v: Value = serde_json::from_slice(&bytes.expect("bytes")).expect("json");
            let p = patient_resource(&v).expect("a patient");
            ids.insert(p["id"].as_str().expect("id").to_string());
            Ok(())
        })
        .expect("read");
        assert_eq!(ids.len(), 5, "five persons, five patient ids");
        let r = resample_synthea(&corpus, &dir.path().join("d.tar.zst"), 1, 1).expect("resample");
        assert_eq!((r.originals, r.copies), (1, 0), "fewer takes the first");
    }
}
