//! Research releases end to end: `tessera release build|list|show|retire` on real data. Files
//! and manifest agree, person ids are stable across versions, a revoked consent leaves the
//! next version, pyCANON confirms the person table's k, and no identifier of the inputs is in
//! any released cell or the manifest.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use polars::prelude::{DataFrame, DataType, ParquetReader, SerReader, SerWriter};
use serde_json::Value;
use tessera_catalog::{Grant, Purpose, Scope};

use crate::support::{Tessera, json_files, read_json, shared, synthea_dir};

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
    t.ingest_json(
        &[
            &shared().join("synthea/small"),
            &shared().join("phenopackets/FOXG1"),
        ],
        &[],
        0,
    );
    let patients = grant_all(&t).await;
    let policy = t.dir.path().join("k2.toml");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::fs::write(
        &policy,
        std::fs::read_to_string(root.join("policies/expert-determination.toml"))
            .expect("policy")
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
    let pp = shared().join("phenopackets");
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
}
