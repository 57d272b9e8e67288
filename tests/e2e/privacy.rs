//! Nothing identifying is stored or logged in plaintext: the raw SQLite file, its WAL, the data
//! folder, the logs at the most verbose level and the command output hold none of the ingested
//! patients' names, SSNs, record numbers, street lines or birth dates.

use std::path::Path;

use crate::support::{
    Tessera, json_files, ms_samples_dir, read_json, shared_or_skip, synthea_small,
};

/// Identifying strings of the patients in a bundle, long enough not to occur by chance in
/// ciphertext.
pub(crate) fn secrets_of(path: &Path, out: &mut Vec<String>) {
    let v = read_json(path);
    for e in v["entry"].as_array().into_iter().flatten() {
        let r = &e["resource"];
        if r["resourceType"] != "Patient" {
            continue;
        }
        for n in r["name"].as_array().into_iter().flatten() {
            let family = n["family"].as_str().unwrap_or("").to_string();
            for g in n["given"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str())
            {
                out.push(format!("{g} {family}"));
            }
            out.push(family);
        }
        for i in r["identifier"].as_array().into_iter().flatten() {
            out.push(i["value"].as_str().unwrap_or("").to_string());
        }
        for a in r["address"].as_array().into_iter().flatten() {
            for l in a["line"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.as_str())
            {
                out.push(l.to_string());
            }
        }
        out.push(r["birthDate"].as_str().unwrap_or("").to_string());
        out.push(r["id"].as_str().unwrap_or("").to_string());
    }
}

/// Byte search through `str::contains` (std's optimized two-way search). Invalid UTF-8 in
/// ciphertext turns into replacement characters, which leaves any valid run of bytes intact.
fn contains(haystack: &str, needle: &str) -> bool {
    haystack.contains(needle)
}

#[test]
fn no_plaintext_identifiers_on_disk_or_in_logs() {
    let Some(shared) = shared_or_skip(
        "privacy::no_plaintext_identifiers_on_disk_or_in_logs",
        "fhir-anonymizer",
    ) else {
        return;
    };
    let small = synthea_small().to_path_buf();
    let ms = ms_samples_dir(&shared);
    let mut secrets = Vec::new();
    for f in json_files(&small).iter().chain(&json_files(ms)) {
        secrets_of(f, &mut secrets);
    }
    secrets.retain(|s| s.len() >= 6);
    secrets.sort();
    secrets.dedup();
    assert!(secrets.len() > 100, "{} secrets", secrets.len());
    assert!(
        secrets
            .iter()
            .any(|s| s.len() == 11 && s.starts_with("999-")),
        "SSNs are among them"
    );

    let t = Tessera::new();
    t.expect(&["init"], 0);
    let out = t
        .command()
        .env("TESSERA_LOG", "trace")
        .args([
            "ingest",
            &small.display().to_string(),
            &ms.display().to_string(),
        ])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Consent and listing commands print only internal ids.
    let listing = t.expect(&["patients", "list"], 0);
    let pid = listing
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("a patient")
        .to_string();
    t.expect(
        &[
            "consent",
            "grant",
            "--patient",
            &pid,
            "--purpose",
            "research.natural_history",
        ],
        0,
    );
    let show = t.expect(&["consent", "show", "--patient", &pid], 0);

    let mut blobs: Vec<(String, Vec<u8>)> = vec![
        ("stdout".into(), out.stdout.clone()),
        ("log output".into(), out.stderr.clone()),
        ("patients list".into(), listing.into_bytes()),
        ("consent show".into(), show.into_bytes()),
    ];
    let mut files = 0;
    for e in std::fs::read_dir(t.data_dir()).expect("data dir") {
        let p = e.expect("entry").path();
        blobs.push((p.display().to_string(), std::fs::read(&p).expect("read")));
        files += 1;
    }
    assert!(files >= 1, "the database");
    let db = blobs
        .iter()
        .find(|(n, _)| n.ends_with("tessera.db"))
        .expect("db");
    assert!(db.1.len() > 1_000_000, "the records are in the database");
    for (name, bytes) in &blobs {
        let text = String::from_utf8_lossy(bytes);
        for s in &secrets {
            assert!(
                !contains(&text, s),
                "{name} contains an identifier in plaintext"
            );
        }
    }
}
