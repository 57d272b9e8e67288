//! Consent: grant, narrow, revoke, with full history; readers get only what consent covers.

use chrono::Utc;
use serde_json::Value;
use tessera_catalog::{Purpose, Scope};

use crate::support::{Tessera, phenopackets};

#[tokio::test]
async fn grant_revoke_history_and_what_readers_get() {
    let t = Tessera::new();
    t.expect(&["init"], 0);
    // Four FOXG1 cases: each has phenotypes, a disease and a (genetic) variant.
    let pp = phenopackets().join("FOXG1");
    t.ingest_json(&[&pp], &[], 0);
    let catalog = t.catalog().await;
    let patients = catalog.list_patients(100, 0).await.expect("patients");
    assert_eq!(patients.len(), 4);
    let pid = patients[0].patient_id.clone();
    let nh = "research.natural_history";

    // Nothing is readable before consent.
    let purpose = Purpose::parse(nh).expect("purpose");
    assert!(
        catalog
            .consented_summaries(&purpose, Utc::now())
            .await
            .expect("read")
            .is_empty()
    );

    t.expect(&["consent", "grant", "--patient", &pid, "--purpose", nh], 0);
    let all = catalog
        .consented_summaries(&purpose, Utc::now())
        .await
        .expect("read");
    assert_eq!(all.len(), 1);
    let with_variants = all[0].records.len();
    assert!(
        all[0]
            .records
            .iter()
            .any(|r| r.body.clinical.kind().as_str() == "variant")
    );

    // Narrowing the scope withholds genetic records.
    t.expect(
        &[
            "consent",
            "grant",
            "--patient",
            &pid,
            "--purpose",
            nh,
            "--scope",
            "genetic",
        ],
        0,
    );
    let narrowed = catalog
        .consented_summaries(&purpose, Utc::now())
        .await
        .expect("read");
    assert_eq!(narrowed.len(), 1);
    assert!(
        narrowed[0]
            .records
            .iter()
            .all(|r| r.body.clinical.kind().as_str() != "variant")
    );
    assert!(narrowed[0].records.len() < with_variants);

    // Revocation takes effect at once.
    t.expect(
        &["consent", "revoke", "--patient", &pid, "--purpose", nh],
        0,
    );
    assert!(
        catalog
            .consented_summaries(&purpose, Utc::now())
            .await
            .expect("read")
            .is_empty()
    );
    let state = catalog
        .consent_state(&pid, &purpose, Utc::now())
        .await
        .expect("state");
    assert!(matches!(
        state,
        tessera_catalog::ConsentState::Revoked { .. }
    ));

    // A later grant, valid only from next year, is recorded but not yet in force.
    t.expect(
        &[
            "consent",
            "grant",
            "--patient",
            &pid,
            "--purpose",
            nh,
            "--from",
            "2099-01-01",
        ],
        0,
    );
    assert!(
        catalog
            .consented_summaries(&purpose, Utc::now())
            .await
            .expect("read")
            .is_empty()
    );

    // The whole history is kept, in order.
    let shown: Value =
        serde_json::from_str(&t.expect(&["consent", "show", "--patient", &pid, "--json"], 0))
            .expect("json");
    let actions: Vec<(&str, &str)> = shown["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or(""),
                e["scope"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("grant", "all"),
            ("grant", "exclude:genetic"),
            ("revoke", "all"),
            ("grant", "all")
        ]
    );
    assert_eq!(shown["current"][0]["state"]["state"], "not_yet_valid");
    assert_eq!(
        Scope::parse("exclude:genetic").expect("scope").to_db(),
        "exclude:genetic"
    );

    // Refusals are clear.
    let out = t.run(&[
        "consent",
        "grant",
        "--patient",
        "no-such-patient",
        "--purpose",
        nh,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("patient no-such-patient not found"));
    let out = t.run(&[
        "consent",
        "grant",
        "--patient",
        &pid,
        "--purpose",
        "Research",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a purpose"));
}
