//! Re-ingesting changes nothing; a later bundle for a known patient adds to that patient.

use serde_json::json;

use crate::support::{Tessera, phenopackets, read_json, synthea_small};

#[test]
fn reingest_is_idempotent() {
    let t = Tessera::new();
    t.expect(&["init"], 0);
    let small = synthea_small().to_path_buf();
    let phenopackets = phenopackets().join("KCNT1");
    let first = t.ingest_json(&[&small, &phenopackets], &[], 0);
    let before = t.stats();
    let added = first["records"]["added"].as_u64().expect("added");
    assert!(added > 1000);
    assert_eq!(first["patients_new"], json!(12 + 8));

    let second = t.ingest_json(&[&small, &phenopackets], &[], 0);
    assert_eq!(
        second["records"],
        json!({"added": 0, "updated": 0, "unchanged": added})
    );
    assert_eq!(second["patients_new"], json!(0));
    assert_eq!(second["patients_updated"], json!(0));
    assert_eq!(
        t.stats(),
        before,
        "a second ingest leaves the store as it was"
    );
}

#[tokio::test]
async fn a_later_bundle_adds_to_the_same_patient() {
    let t = Tessera::new();
    t.expect(&["init"], 0);
    let file = synthea_small().join("Liz_Conn_27c911c6-f045-4ffa-af5d-6eba57ac94b2.json");
    t.ingest_json(&[&file], &[], 0);
    let catalog = t.catalog().await;
    let patients = catalog.list_patients(10, 0).await.expect("list");
    assert_eq!(patients.len(), 1);
    let before = patients[0].records;

    // A second source sends the same person (matched on identifier system + value) under
    // another logical id, with a new observation and a new address.
    let original = read_json(&file);
    let patient = &original["entry"][0]["resource"];
    let ident = patient["identifier"][1].clone();
    let later = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:later-p", "resource": {"resourceType": "Patient", "id": "other-system-id",
            "identifier": [ident], "address": [{"line": ["1 New Street"], "postalCode": "02139"}]}},
        {"fullUrl": "urn:uuid:later-o", "resource": {"resourceType": "Observation", "id": "later-obs-1",
            "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body Weight"}]},
            "subject": {"reference": "urn:uuid:later-p"}, "effectiveDateTime": "2026-01-05T10:00:00Z",
            "valueQuantity": {"value": 61.5, "unit": "kg"}}}
    ]});
    let later_path = t.dir.path().join("later.json");
    std::fs::write(&later_path, later.to_string()).expect("write");
    let report = t.ingest_json(&[&later_path], &["--source", "clinic-b"], 0);
    assert_eq!(report["patients_new"], json!(0));
    assert_eq!(
        report["patients_updated"],
        json!(1),
        "the new address and id were merged in"
    );
    assert_eq!(report["records"]["added"], json!(1));

    let patients = catalog.list_patients(10, 0).await.expect("list");
    assert_eq!(patients.len(), 1, "still one patient");
    assert_eq!(patients[0].records, before + 1);
}
