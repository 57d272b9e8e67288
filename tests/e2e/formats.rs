//! The input forms besides transaction bundles: NDJSON bulk export (resources arriving before
//! their patient), searchset bundles, survey answers, folders with side files, and the
//! configuration rules around them (global flags anywhere, the key file, a wrong key).

use std::path::Path;

use serde_json::{Value, json};

use crate::support::{Tessera, phenopackets, read_json, shared_or_skip, synthea_small};

#[test]
fn ndjson_searchset_and_surveys() {
    let Some(shared) = shared_or_skip("formats::ndjson_searchset_and_surveys", "fhir-anonymizer")
    else {
        return;
    };
    let t = Tessera::new();
    t.expect(&["init"], 0);
    let input = t.dir.path().join("in");
    std::fs::create_dir(&input).expect("mkdir");

    // A bulk export: observations in one file, their patient in another that sorts after it,
    // so the observations wait for the patient until the end of the batch.
    let patient_line =
        std::fs::read_to_string(shared.join("fhir-anonymizer/functional-tests/Patient-1.ndjson"))
            .expect("ndjson");
    let pid = serde_json::from_str::<Value>(patient_line.trim()).expect("patient")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let obs: String = (0..3)
        .map(|i| {
            json!({"resourceType": "Observation", "id": format!("bulk-obs-{i}"), "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
                   "subject": {"reference": format!("Patient/{pid}")}, "effectiveDateTime": "2024-03-01T08:00:00Z",
                   "valueQuantity": {"value": 60 + i, "unit": "/min"}})
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(input.join("a-Observation.ndjson"), obs).expect("write");
    std::fs::write(input.join("b-Patient.ndjson"), &patient_line).expect("write");

    // A searchset bundle (what a FHIR server's search returns), made from a Synthea bundle.
    let mut bundle =
        read_json(&synthea_small().join("Liz_Conn_27c911c6-f045-4ffa-af5d-6eba57ac94b2.json"));
    bundle["type"] = json!("searchset");
    for e in bundle["entry"].as_array_mut().expect("entries") {
        e.as_object_mut().expect("entry").remove("request");
        e["search"] = json!({"mode": "match"});
    }
    std::fs::write(input.join("c-searchset.json"), bundle.to_string()).expect("write");
    // A side file that a folder walk skips.
    std::fs::write(input.join("_counts.json"), "{\"not\": \"fhir\"}").expect("write");

    let surveys = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/surveys");
    let report = t.ingest_json(&[&input, &surveys], &[], 3);
    assert_eq!(
        report["files"],
        json!(4),
        "the _counts.json side file is skipped"
    );
    assert_eq!(
        report["by_resource_type"]["Observation"]["added"]
            .as_u64()
            .map(|n| n >= 3),
        Some(true)
    );
    assert_eq!(
        report["by_resource_type"]["QuestionnaireResponse"]["added"],
        json!(1),
        "one survey's patient is here"
    );
    let q = report["quarantined"].as_array().expect("q");
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(
        q[0]["reason"], "dangling_reference",
        "the other survey's patient is not here"
    );
    assert_eq!(q[0]["field"], "entry[0].resource.subject");

    // Only one of the two survey patients was ingested; the other survey is quarantined when
    // ingested alone, and goes in once its patient arrives.
    let t2 = Tessera::new();
    t2.expect(&["init"], 0);
    let r = t2.ingest_json(&[&surveys], &[], 3);
    assert_eq!(r["quarantined"].as_array().map(Vec::len), Some(2));
    assert_eq!(r["quarantined"][0]["reason"], "dangling_reference");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fhir");
    let r = t2.ingest_json(&[&fixtures, &surveys], &[], 0);
    assert_eq!(
        r["by_resource_type"]["QuestionnaireResponse"]["added"],
        json!(2)
    );
    let stats = t2.stats();
    assert_eq!(stats["records_by_kind"]["survey_response"], json!(2));
}

#[test]
fn configuration_keys_and_flags() {
    let t = Tessera::new();
    // Without a key and without init, commands refuse and say what to do.
    let out = t
        .command()
        .env_remove("TESSERA_MASTER_KEY")
        .args(["stats"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tessera init"));

    // init makes an owner-only folder and key file.
    let out = t
        .command()
        .env_remove("TESSERA_MASTER_KEY")
        .args(["init"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&t.data_dir()), 0o700);
        assert_eq!(mode(&t.data_dir().join("master.key")), 0o600);
        std::fs::set_permissions(
            t.data_dir().join("master.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        let out = t
            .command()
            .env_remove("TESSERA_MASTER_KEY")
            .args(["stats"])
            .output()
            .expect("run");
        assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
        std::fs::set_permissions(
            t.data_dir().join("master.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
    }

    // Global flags work after the subcommand too.
    let file = phenopackets().join("FOXG1/PMID_28851325_Case_1.json");
    let other = t.dir.path().join("elsewhere");
    let out = t
        .command()
        .env_remove("TESSERA_DATA_DIR")
        .args(["init", "--data-dir", other.to_str().expect("utf-8")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    let out = t
        .command()
        .env_remove("TESSERA_DATA_DIR")
        .args([
            "ingest",
            file.to_str().expect("utf-8"),
            "--data-dir",
            other.to_str().expect("utf-8"),
        ])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(other.join("tessera.db").exists());

    // A different key cannot read what another sealed, and says which key is needed.
    let out = t
        .command()
        .env_remove("TESSERA_DATA_DIR")
        .env("TESSERA_MASTER_KEY", "ff".repeat(32))
        .args([
            "--data-dir",
            other.to_str().expect("utf-8"),
            "ingest",
            file.to_str().expect("utf-8"),
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("written with master key") && err.contains("TESSERA_MASTER_KEY"),
        "{err}"
    );
}

/// Two copies of a bulk export whose observations arrive before their patient: the deferred
/// observations are stored once.
#[test]
fn deferred_records_from_duplicate_files_are_stored_once() {
    let Some(shared) = shared_or_skip(
        "formats::deferred_records_from_duplicate_files_are_stored_once",
        "fhir-anonymizer",
    ) else {
        return;
    };
    let t = Tessera::new();
    t.expect(&["init"], 0);
    let patient =
        std::fs::read_to_string(shared.join("fhir-anonymizer/functional-tests/Patient-1.ndjson"))
            .expect("ndjson");
    let pid = serde_json::from_str::<Value>(patient.trim()).expect("patient")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let obs = json!({"resourceType": "Observation", "id": "dup-obs", "status": "final",
        "code": {"text": "Heart rate"}, "subject": {"reference": format!("Patient/{pid}")}})
    .to_string();
    for dir in ["a", "b"] {
        let d = t.dir.path().join(dir);
        std::fs::create_dir(&d).expect("mkdir");
        std::fs::write(d.join("Observation.ndjson"), format!("{obs}\n")).expect("write");
    }
    let p = t.dir.path().join("z-Patient.ndjson");
    std::fs::write(&p, &patient).expect("write");
    let r = t.ingest_json(
        &[&t.dir.path().join("a"), &t.dir.path().join("b"), &p],
        &[],
        0,
    );
    assert_eq!(
        r["records"],
        json!({"added": 1, "updated": 0, "unchanged": 1})
    );
}
