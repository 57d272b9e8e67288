//! What a consented reader gets back is what was sent: identity fields, one record per source
//! resource with its normalized content, and the raw resource, equal as JSON to the original.

use std::collections::BTreeMap;

use chrono::Utc;
use serde_json::Value;
use tessera_catalog::Purpose;
use tessera_catalog::model::Clinical;

use crate::support::{Tessera, read_json, synthea_small};

#[tokio::test]
async fn summary_matches_the_source_bundle() {
    let file = synthea_small().join("Alberto_Atencio_fc712d1f-5a2e-4407-9c55-a2a2bad623c2.json");
    let source = read_json(&file);
    let t = Tessera::new();
    t.expect(&["init"], 0);
    t.ingest_json(&[&file], &[], 0);
    let catalog = t.catalog().await;
    let pid = catalog.list_patients(1, 0).await.expect("list")[0]
        .patient_id
        .clone();
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
    let purpose = Purpose::parse("research.natural_history").expect("purpose");
    let summaries = catalog
        .consented_summaries(&purpose, Utc::now())
        .await
        .expect("read");
    assert_eq!(summaries.len(), 1);
    let s = &summaries[0];

    let entries = source["entry"].as_array().expect("entries");
    let patient = &entries
        .iter()
        .find(|e| e["resource"]["resourceType"] == "Patient")
        .expect("patient")["resource"];
    let id = &s.identity;
    assert_eq!(id.birth_date.as_deref(), patient["birthDate"].as_str());
    assert_eq!(id.sex.as_deref(), patient["gender"].as_str());
    assert_eq!(
        id.family_name.as_deref(),
        patient["name"][0]["family"].as_str()
    );
    assert_eq!(
        id.identifiers.len(),
        patient["identifier"].as_array().map(Vec::len).unwrap_or(0)
    );
    assert!(
        id.identifiers
            .iter()
            .any(|i| i.type_code.as_deref() == Some("SS"))
    );
    let address = id.address.as_ref().expect("address");
    assert_eq!(
        address.postal_code.as_deref(),
        patient["address"][0]["postalCode"].as_str()
    );
    assert_eq!(
        address.lines.first().map(String::as_str),
        patient["address"][0]["line"][0].as_str()
    );
    assert!(id.race.is_some() && id.ethnicity.is_some());

    // One record per patient-linked resource, with the raw resource equal to the source.
    let mut by_id: BTreeMap<String, &Value> = BTreeMap::new();
    for e in entries {
        let r = &e["resource"];
        if r["resourceType"] != "Patient" {
            by_id.insert(
                format!(
                    "{}/{}",
                    r["resourceType"].as_str().unwrap_or(""),
                    r["id"].as_str().unwrap_or("")
                ),
                r,
            );
        }
    }
    let owned = by_id
        .values()
        .filter(|r| {
            !["Organization", "Practitioner"].contains(&r["resourceType"].as_str().unwrap_or(""))
        })
        .count();
    assert_eq!(
        s.records.len(),
        owned,
        "organizations and practitioners belong to no patient"
    );
    for rec in &s.records {
        let raw: Value = serde_json::from_str(rec.body.raw.get()).expect("raw json");
        let key = format!(
            "{}/{}",
            raw["resourceType"].as_str().unwrap_or(""),
            raw["id"].as_str().unwrap_or("")
        );
        assert_eq!(
            Some(&raw),
            by_id.get(&key).copied(),
            "raw of {key} differs from the source"
        );
        assert_eq!(
            rec.body.resource_type,
            raw["resourceType"].as_str().unwrap_or("")
        );
        match &rec.body.clinical {
            Clinical::Observation {
                code, effective, ..
            } => {
                assert_eq!(
                    code.as_ref().map(|c| c.code.as_str()),
                    raw["code"]["coding"][0]["code"].as_str()
                );
                assert_eq!(effective.as_deref(), raw["effectiveDateTime"].as_str());
            }
            Clinical::Condition { code, onset, .. } => {
                assert_eq!(
                    code.as_ref().map(|c| c.system.as_str()),
                    raw["code"]["coding"][0]["system"].as_str()
                );
                assert_eq!(onset.as_deref(), raw["onsetDateTime"].as_str());
            }
            Clinical::Medication { code, authored, .. } => {
                assert_eq!(
                    code.as_ref().map(|c| c.code.as_str()),
                    raw["medicationCodeableConcept"]["coding"][0]["code"].as_str()
                );
                assert_eq!(authored.as_deref(), raw["authoredOn"].as_str());
            }
            Clinical::Encounter { start, .. } => {
                assert_eq!(start.as_deref(), raw["period"]["start"].as_str())
            }
            _ => {}
        }
    }
    let quantity = s.records.iter().find_map(|r| match &r.body.clinical {
        Clinical::Observation {
            value: Some(tessera_catalog::model::Value::Quantity { value, unit }),
            ..
        } => Some((*value, unit.clone())),
        _ => None,
    });
    assert!(
        quantity.is_some_and(|(v, u)| v > 0.0 && u.is_some()),
        "measurements keep value and unit"
    );
}
