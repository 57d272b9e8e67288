//! Research releases end to end: `tessera release build|list|show|retire` on real data. Files
//! and manifest agree, person ids are stable across versions, a revoked consent leaves the
//! next version, pyCANON confirms the person table's k, and no identifier of the inputs is in
//! any released cell or the manifest.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use polars::prelude::{DataFrame, DataType, ParquetReader, SerReader, SerWriter};
use serde_json::Value;
use tessera_catalog::{Grant, Purpose, Scope};

use crate::support::{
    Tessera, json_files, phenopackets, read_json, shared_or_skip, synthea_dir, synthea_small,
};

const NH: &str = "research.natural_history";

fn read(path: &Path) -> DataFrame {
    ParquetReader::new(std::fs::File::open(path).expect("open"))
        .finish()
        .expect("parquet")
}

fn texts(df: &DataFrame) -> Vec<String> {
    df.columns()
        .iter()
        .flat_map(|c| {
            c.cast(&DataType::String)
                .expect("text")
                .str()
                .expect("text")
                .iter()
                .flatten()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn grant_all(t: &Tessera) -> Vec<String> {
    let catalog = t.catalog().await;
    let patients = catalog.list_patients(10_000, 0).await.expect("patients");
    for p in &patients {
        catalog
            .grant(Grant {
                patient_id: p.patient_id.clone(),
                purpose: Purpose::parse(NH).expect("purpose"),
                scope: Scope::All,
                valid_from: None,
                valid_until: None,
                actor: "test".into(),
            })
            .await
            .expect("grant");
    }
    patients.into_iter().map(|p| p.patient_id).collect()
}

fn show(t: &Tessera, version: &str) -> Value {
    serde_json::from_str(&t.expect(
        &["release", "show", "--family", "nh", "--version", version],
        0,
    ))
    .expect("manifest JSON")
}

fn person_ids(dir: &Path) -> BTreeSet<String> {
    texts(
        &read(&dir.join("person.parquet"))
            .select(["person_id"])
            .expect("id"),
    )
    .into_iter()
    .collect()
}

#[tokio::test]
async fn versions_revocation_retirement_and_file_integrity() {
    let t = Tessera::new();
    t.expect(&["init"], 0);
    t.ingest_json(&[synthea_small(), &phenopackets().join("FOXG1")], &[], 0);
    let patients = grant_all(&t).await;
    let policy = t.dir.path().join("k2.toml");
    std::fs::write(
        &policy,
        crate::support::shipped_policy("expert-determination.toml")
            .replace("k = 5", "k = 2")
            .replace("suppression_limit = 0.05", "suppression_limit = 0.3"),
    )
    .expect("write policy");
    let p = policy.to_str().expect("utf-8");
    let build = [
        "release",
        "build",
        "--family",
        "nh",
        "--purpose",
        NH,
        "--policy",
        p,
    ];
    let out = t.expect(&build, 0);
    assert!(out.contains("release nh v1"), "{out}");
    let m1 = show(&t, "1");
    assert_eq!(m1["patients_included"], patients.len());
    let v1 = t.data_dir().join("releases/nh/v1");
    for f in m1["files"].as_array().expect("files") {
        let file = v1.join(f["file"].as_str().expect("file"));
        let bytes = std::fs::read(&file).expect("release file");
        let sha = hex_sha256(&bytes);
        assert_eq!(f["sha256"], sha.as_str(), "{}", file.display());
        assert_eq!(f["rows"], read(&file).height());
    }
    let ids1 = person_ids(&v1);
    assert_eq!(ids1.len(), patients.len());

    // One patient revokes; the next version leaves them out, and everyone else keeps their id.
    t.expect(
        &[
            "consent",
            "revoke",
            "--patient",
            &patients[0],
            "--purpose",
            NH,
        ],
        0,
    );
    t.expect(&build, 0);
    let m2 = show(&t, "2");
    assert_eq!(m2["patients_included"], patients.len() - 1);
    assert_eq!(
        m2["patients_excluded"]["no consent in force for the purpose"],
        1
    );
    let ids2 = person_ids(&t.data_dir().join("releases/nh/v2"));
    assert_eq!(ids2.len(), patients.len() - 1);
    assert!(
        ids2.is_subset(&ids1),
        "pseudonyms are stable across versions"
    );
    let catalog = t.catalog().await;
    let contributors = catalog
        .release_contributors("nh", 2)
        .await
        .expect("contributors");
    assert!(!contributors.contains(&patients[0]));
    assert_eq!(contributors.len(), patients.len() - 1);

    // Retire v1: listed as retired; a second retirement is refused.
    t.expect(
        &["release", "retire", "--family", "nh", "--version", "1"],
        0,
    );
    let list = t.expect(&["release", "list"], 0);
    assert!(list.contains("nh v1  retired"), "{list}");
    assert!(list.contains("nh v2  published"), "{list}");
    let again = t.run(&["release", "retire", "--family", "nh", "--version", "1"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already retired"));
    // A build that fails (no generalization reaches k = 1000) leaves no version behind.
    let strict = t.dir.path().join("k1000.toml");
    std::fs::write(
        &strict,
        std::fs::read_to_string(&policy)
            .expect("policy")
            .replace("k = 2", "k = 1000"),
    )
    .expect("policy");
    let failed = t.run(&[
        "release",
        "build",
        "--family",
        "nh",
        "--purpose",
        NH,
        "--policy",
        strict.to_str().expect("utf-8"),
    ]);
    assert!(!failed.status.success());
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("no generalization satisfies"),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    let family_dir = t.data_dir().join("releases/nh");
    let mut entries: Vec<String> = std::fs::read_dir(&family_dir)
        .expect("family dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        ["v1", "v2"],
        "no partial or failed version is visible"
    );
    assert_eq!(
        t.catalog().await.releases().await.expect("releases").len(),
        2
    );
    // An unknown family is refused by name.
    let bad = t.run(&[
        "release",
        "build",
        "--family",
        "../x",
        "--purpose",
        NH,
        "--policy",
        p,
    ]);
    assert!(!bad.status.success());
}

/// SHA-256 by an implementation other than the one that wrote the manifest: Python's hashlib.
fn hex_sha256(bytes: &[u8]) -> String {
    use std::io::Write;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().expect("stdin").write_all(bytes)?;
            c.wait_with_output()
        })
        .expect("python3 hashlib");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// Identifying strings of the phenopackets: ids, subject ids and publication references. Ids
/// without a digit are plain words (one subject is called `patient`), which the release's own
/// text may hold, so only ids with a digit count.
fn phenopacket_secrets(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            phenopacket_secrets(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            let v = read_json(&path);
            let mut ids: Vec<String> = Vec::new();
            ids.extend(v["id"].as_str().map(str::to_string));
            ids.extend(v["subject"]["id"].as_str().map(str::to_string));
            for r in v["metaData"]["externalReferences"]
                .as_array()
                .into_iter()
                .flatten()
            {
                ids.extend(r["id"].as_str().map(str::to_string));
            }
            out.extend(
                ids.into_iter()
                    .filter(|s| s.chars().any(|c| c.is_ascii_digit())),
            );
        }
    }
}

/// The canary: every name, identifier, street line, phone, full birth date and record id of the
/// 373 Synthea patients and every phenopacket id and PMID, looked for in every released cell and
/// in the manifest; pyCANON confirms k on the person table.
#[tokio::test]
async fn no_identifier_reaches_a_release_and_pycanon_confirms_k() {
    let t = Tessera::new();
    t.expect(&["init"], 0);
    let pp = phenopackets().to_path_buf();
    t.ingest_json(&[synthea_dir(), &pp], &[], 0);
    grant_all(&t).await;
    let policy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies/safe-harbor.toml");
    t.expect(
        &[
            "release",
            "build",
            "--family",
            "nh",
            "--purpose",
            NH,
            "--policy",
            policy.to_str().expect("utf-8"),
        ],
        0,
    );
    let mut secrets = Vec::new();
    for f in json_files(synthea_dir()) {
        crate::privacy::secrets_of(&f, &mut secrets);
        let v = read_json(&f);
        for e in v["entry"].as_array().into_iter().flatten() {
            for tel in e["resource"]["telecom"].as_array().into_iter().flatten() {
                secrets.extend(tel["value"].as_str().map(str::to_string));
            }
        }
    }
    phenopacket_secrets(&pp, &mut secrets);
    secrets.retain(|s| s.len() >= 6);
    secrets.sort();
    secrets.dedup();
    assert!(
        secrets.iter().any(|s| s.starts_with("PMID:")),
        "PMIDs are among them"
    );
    assert!(secrets.len() > 2000, "{} secrets", secrets.len());

    let v1 = t.data_dir().join("releases/nh/v1");
    let manifest = std::fs::read_to_string(v1.join("manifest.json")).expect("manifest");
    let mut cells: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(&v1).expect("release dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "parquet") {
            cells.extend(texts(&read(&path)));
        }
    }
    cells.sort();
    cells.dedup();
    let haystack = cells.join("\n");
    for s in &secrets {
        assert!(
            !haystack.contains(s.as_str()),
            "an input identifier reached a release cell"
        );
        assert!(
            !manifest.contains(s.as_str()),
            "an input identifier reached the manifest"
        );
    }

    // pyCANON on the person table's quasi-identifiers.
    let person = read(&v1.join("person.parquet"));
    let csv = t.dir.path().join("person.csv");
    let qis = [
        "birth_date",
        "gender_source_value",
        "race_source_value",
        "ethnicity_source_value",
        "zip",
    ];
    let mut person = person.select(qis).expect("qis");
    let mut file = std::fs::File::create(&csv).expect("csv");
    polars::prelude::CsvWriter::new(&mut file)
        .finish(&mut person)
        .expect("write csv");
    let checked = crate::deid::pycanon(&csv, ",", &qis, None);
    assert!(checked["k"].as_i64().is_some_and(|k| k >= 5), "{checked}");

    // The event model, proved by the independent checker for m = 1, 2, 3, and the attacker
    // who knows sex, birth year and up to three diagnoses with their years.
    assert_event_model_holds(&v1, Some(synthea_dir()));
}

/// Runs `tests/python/km_check.py` (independent of the anonymizer): `check` for m = 1..3 finds
/// no combination below k, and, given the source bundles, `attack` finds for no patient
/// between 1 and k - 1 candidates. Returns the checker's answers.
pub(crate) fn assert_event_model_holds(release: &Path, sources: Option<&Path>) -> Vec<Value> {
    let python = crate::support::venv_program("TESSERA_FLIGHT_VENV", "venv-flight", "bin/python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/km_check.py");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(release.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    let report = &manifest["events"]["report"];
    assert!(
        report["violations_after"]
            .as_array()
            .is_some_and(|v| v.iter().all(|x| x == 0)),
        "the manifest reports violations left: {report}"
    );
    let mut answers = Vec::new();
    let run = |args: &[&str]| -> Value {
        let out = Command::new(&python)
            .arg(&script)
            .args(args)
            .output()
            .expect("run km_check.py");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "km_check {args:?} failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(text.trim()).expect("km_check json")
    };
    let dir = release.to_str().expect("utf-8");
    let hierarchy = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("policies/hierarchies/synthea-snomed-conditions.csv")
        .display()
        .to_string();
    for m in ["1", "2", "3"] {
        let v = run(&["check", dir, "--m", m]);
        assert!(
            v["items"].as_u64().is_some_and(|n| n > 100),
            "items were checked: {v}"
        );
        assert_eq!(
            v["violations_by_size"]
                .as_array()
                .map(|a| a.iter().all(|x| x == 0)),
            Some(true),
            "{v}"
        );
        answers.push(v);
    }
    if let Some(src) = sources {
        for m in ["1", "2", "3"] {
            let v = run(&[
                "attack",
                dir,
                src.to_str().expect("utf-8"),
                &hierarchy,
                "--m",
                m,
            ]);
            assert_eq!(v["below_k"], 0, "{v}");
            assert!(v["patients"].as_u64().is_some_and(|n| n > 300), "{v}");
            answers.push(v);
        }
    }
    answers
}

/// `tessera demo --patients 3`: a demo of any size from the repository alone; three corpus
/// patients and the phenopackets, the surveys left out with the reason (their patients are not
/// in it), and a release all the same.
#[test]
fn the_demo_takes_any_size() {
    let t = Tessera::new();
    let out = t.expect(&["demo", "--patients", "3"], 0);
    assert!(
        out.contains("3 corpus patients and 0 resampled persons")
            && out.contains("the demo surveys are left out"),
        "{out}"
    );
    assert_eq!(
        t.stats()["patients"],
        553,
        "3 Synthea patients and 550 phenopackets"
    );
    assert!(out.contains("release demo-natural-history v1"), "{out}");
    assert!(out.contains("Next:") && out.contains("serve"), "{out}");
}

/// The Synthea population the demo ingested (the shipped corpus resampled to the demo's size).
pub(crate) fn demo_population(t: &Tessera) -> PathBuf {
    let dir = t.data_dir().join("corpus");
    std::fs::read_dir(&dir)
        .expect("the demo's corpus folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .expect("the demo's population archive")
}

/// FHIR element names a `nodesByType` rule of Microsoft's configuration reaches, as JSON keys.
fn keys_of_type(t: &str) -> &'static [&'static str] {
    match t {
        "HumanName" => &["name"],
        "ContactPoint" => &["telecom"],
        "Address" => &["address"],
        "Identifier" => &["identifier"],
        "Narrative" => &["text"],
        "Annotation" => &["note"],
        "Attachment" => &["content", "attachment", "photo", "presentedForm"],
        "Reference" => &[
            "subject",
            "patient",
            "encounter",
            "performer",
            "requester",
            "author",
        ],
        "ContactDetail" => &["contact"],
        "Expression" => &["expression"],
        "CodeableConcept" => &[
            "code",
            "category",
            "type",
            "reasonCode",
            "valueCodeableConcept",
        ],
        _ => &[],
    }
}

/// Every string under `v`.
fn strings_under(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings_under(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings_under(x, out)),
        _ => {}
    }
}

/// The values at a dotted path below `v`; an element name matches FHIR choice types too
/// (`onset` reaches `onsetDateTime`, `onsetPeriod`, ...).
fn at_path(v: &Value, path: &[&str], out: &mut Vec<String>) {
    let Some((first, rest)) = path.split_first() else {
        strings_under(v, out);
        return;
    };
    match v {
        Value::Array(a) => a.iter().for_each(|x| at_path(x, path, out)),
        Value::Object(o) => {
            for (k, x) in o {
                if k == first
                    || (k.starts_with(first)
                        && k[first.len()..].starts_with(|c: char| c.is_ascii_uppercase()))
                {
                    at_path(x, rest, out);
                }
            }
        }
        _ => {}
    }
}

/// Every object anywhere below `v` (for `nodesByType` rules).
fn objects<'a>(v: &'a Value, out: &mut Vec<&'a serde_json::Map<String, Value>>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| objects(x, out)),
        Value::Object(o) => {
            out.push(o);
            o.values().for_each(|x| objects(x, out));
        }
        _ => {}
    }
}

/// Microsoft's FHIR anonymizer Safe Harbor sample configuration as a reference for what is an
/// identifier: for each of its `redact`, `cryptoHash` and `dateshift` rules, the values it
/// reaches in Microsoft's own sample bundles are looked for in a release of those bundles built
/// with k = 1 (so that only the policy's transforms, not generalization, stand between them).
/// Rules on data a research release keeps on purpose are named and counted, not silently
/// skipped: clinical codes (kept as source codes; rare ones suppressed as quasi-identifiers),
/// observation and survey values (numeric and coded ones are the research content; text never
/// passes), and extensions (US Core race and ethnicity are quasi-identifiers of the person
/// table).
#[tokio::test]
async fn microsoft_safe_harbor_paths_are_dropped_or_transformed() {
    let Some(shared) = shared_or_skip(
        "release::microsoft_safe_harbor_paths_are_dropped_or_transformed",
        "fhir-anonymizer",
    ) else {
        return;
    };
    let config_text = std::fs::read_to_string(
        shared.join("fhir-anonymizer/configs/r4-configuration-sample.json"),
    )
    .expect("config");
    let config: Value =
        serde_json::from_str(config_text.trim_start_matches('\u{feff}')).expect("config JSON");
    let bundles: Vec<Value> = json_files(crate::support::ms_samples_dir(&shared))
        .iter()
        .map(|f| read_json(f))
        .collect();
    let resources: Vec<&Value> = bundles
        .iter()
        .flat_map(|b| b["entry"].as_array().into_iter().flatten())
        .map(|e| &e["resource"])
        .collect();

    let t = Tessera::new();
    t.expect(&["init"], 0);
    t.ingest_json(&[crate::support::ms_samples_dir(&shared)], &[], 0);
    grant_all(&t).await;
    let policy = t.dir.path().join("k1.toml");
    std::fs::write(
        &policy,
        crate::support::shipped_policy("safe-harbor.toml").replace("k = 5", "k = 1"),
    )
    .expect("policy");
    t.expect(
        &[
            "release",
            "build",
            "--family",
            "ms",
            "--purpose",
            NH,
            "--policy",
            policy.to_str().expect("utf-8"),
        ],
        0,
    );
    let v1 = t.data_dir().join("releases/ms/v1");
    let mut cells: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(&v1).expect("release") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "parquet") {
            cells.extend(texts(&read(&path)));
        }
    }
    let haystack = cells.join("\n");
    let manifest = std::fs::read_to_string(v1.join("manifest.json")).expect("manifest");

    let kept_on_purpose = |path: &str| {
        path.contains("Coding').code")
            || path.starts_with("Observation.value")
            || path.starts_with("Observation.component.value")
            || path.starts_with("QuestionnaireResponse.item.answer")
            || path == "nodesByType('Extension')"
    };
    let (mut checked_rules, mut checked_values, mut on_purpose) = (0, 0, 0);
    for rule in config["fhirPathRules"].as_array().expect("rules") {
        let path = rule["path"].as_str().expect("path");
        let method = rule["method"].as_str().expect("method");
        if method == "keep" {
            continue;
        }
        if kept_on_purpose(path) {
            on_purpose += 1;
            continue;
        }
        let mut values = Vec::new();
        if let Some(inner) = path.strip_prefix("nodesByType('") {
            let (ty, rest) = inner.split_once("')").expect("nodesByType");
            let rest: Vec<&str> = rest
                .trim_start_matches('.')
                .split('.')
                .filter(|s| !s.is_empty())
                .collect();
            if matches!(ty, "date" | "dateTime" | "instant") {
                // Full dates: a release has years only under Safe Harbor.
                for r in &resources {
                    let mut all = Vec::new();
                    strings_under(r, &mut all);
                    values.extend(all.into_iter().filter(|s| {
                        s.len() >= 10
                            && s.as_bytes()[4] == b'-'
                            && s.as_bytes()[7] == b'-'
                            && s[..4].chars().all(|c| c.is_ascii_digit())
                    }));
                }
            } else {
                for r in &resources {
                    let mut objs = Vec::new();
                    objects(r, &mut objs);
                    for o in objs {
                        for key in keys_of_type(ty) {
                            if let Some(x) = o.get(*key) {
                                at_path(x, &rest, &mut values);
                            }
                        }
                    }
                }
            }
        } else {
            let mut parts = path.split('.');
            let ty = parts.next().expect("type");
            let rest: Vec<&str> = parts.collect();
            for r in resources
                .iter()
                .filter(|r| ty == "Resource" || r["resourceType"] == ty)
            {
                at_path(r, &rest, &mut values);
            }
        }
        // Short values (codes such as `final`, years) say nothing about a person.
        values.retain(|v| v.len() >= 6);
        values.sort();
        values.dedup();
        if values.is_empty() {
            continue;
        }
        checked_rules += 1;
        for v in &values {
            checked_values += 1;
            assert!(
                !haystack.contains(v.as_str()) && !manifest.contains(v.as_str()),
                "a value Microsoft's rule `{path}` ({method}) removes reached the release"
            );
        }
    }
    assert!(
        checked_rules >= 10,
        "rules with values in the samples: {checked_rules}"
    );
    assert!(checked_values > 100, "values checked: {checked_values}");
    assert_eq!(
        on_purpose, 5,
        "rules on data a research release keeps on purpose"
    );
}

/// `tessera demo`, from the corpus in the repository, builds a release and says what it holds.
#[test]
fn the_demo_builds_a_release() {
    let t = crate::http::demo_copy();
    let out = crate::http::demo_output();
    assert!(
        out.contains("release demo-natural-history v1 for research.natural_history"),
        "{out}"
    );
    assert!(out.contains("person table: k = 5 achieved"), "{out}");
    let list = t.expect(&["release", "list"], 0);
    assert!(
        list.contains("demo-natural-history v1  published"),
        "{list}"
    );
    let manifest: Value = serde_json::from_str(&t.expect(
        &[
            "release",
            "show",
            "--family",
            "demo-natural-history",
            "--version",
            "1",
        ],
        0,
    ))
    .expect("manifest");
    assert_eq!(manifest["safe_harbor"].as_array().map(Vec::len), Some(18));
    // The demo's release is (k, k^m)-anonymous: the checker proves it from the Parquet files,
    // and the attacker who knows a person's sex, birth year and m diagnoses with their years,
    // drawn from the demo's own population (the bundles `tessera demo` ingested), finds no one
    // among fewer than k candidates.
    assert!(
        manifest["events"]["model"]
            .as_str()
            .is_some_and(|m| m.starts_with("(k, k^m)-anonymity")),
        "{}",
        manifest["events"]
    );
    let population = demo_population(&t);
    let release = t.data_dir().join("releases/demo-natural-history/v1");
    assert_event_model_holds(&release, Some(&population));
    // The same attacker against the same patients released without the event model finds
    // most of them among fewer than k candidates: the attack is real, and the model is what
    // stops it.
    let unprotected = t.data_dir().join("unprotected.toml");
    std::fs::write(
        &unprotected,
        crate::support::shipped_policy("natural-history.toml")
            .replace("[events]\n", "[events]\nenabled = false\n"),
    )
    .expect("policy");
    t.expect(
        &[
            "release",
            "build",
            "--family",
            "unprotected",
            "--purpose",
            "research.natural_history",
            "--policy",
            unprotected.to_str().expect("utf-8"),
        ],
        0,
    );
    let python = crate::support::venv_program("TESSERA_FLIGHT_VENV", "venv-flight", "bin/python");
    let out = Command::new(python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/km_check.py"))
        .arg("attack")
        .arg(t.data_dir().join("releases/unprotected/v1"))
        .arg(&population)
        .args(["--m", "2"])
        .output()
        .expect("km_check");
    let broken: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(!out.status.success(), "{broken}");
    let attacked = broken["patients"].as_u64().expect("patients");
    assert!(
        broken["below_k"].as_u64().is_some_and(|n| n * 2 > attacked),
        "{broken}"
    );

    // Two demo organizations with active licenses and working keys, in demo.json (0600).
    let demo_json = t.data_dir().join("demo.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&demo_json)
            .expect("demo.json")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let demo: Value =
        serde_json::from_str(&std::fs::read_to_string(&demo_json).expect("demo.json"))
            .expect("json");
    let orgs = demo["organizations"].as_array().expect("organizations");
    assert_eq!(orgs.len(), 3);
    let modes: Vec<(&str, bool)> = orgs
        .iter()
        .filter_map(|o| Some((o["mode"].as_str()?, o["differential_privacy"].as_bool()?)))
        .collect();
    assert_eq!(
        modes,
        [
            ("aggregate_only", true),
            ("aggregate_only", false),
            ("row_level", false)
        ]
    );
    for o in orgs {
        let license = o["license"].as_str().expect("license");
        let out = t.expect(&["license", "verify", "--id", license], 0);
        assert!(out.contains("both signatures verify"), "{out}");
        assert!(o["api_key"].as_str().is_some_and(|k| k.starts_with("tsk_")));
    }
    assert!(
        manifest["person_deid"]["k_achieved"]
            .as_u64()
            .is_some_and(|k| k >= 5)
    );
}
