//! The records crate against a real PostgreSQL server (TESSERA_TEST_POSTGRES, else
//! postgres://postgres@127.0.0.1:5432/test), with the catalog and payouts in the same database:
//! an identity verification with events out of order, a SMART connection fetched and ingested,
//! and a written request through its schedule. Skips loudly when the variable is unset and no
//! server answers; fails when it is set and the server does not answer.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde_json::json;
use sqlx::Connection;
use tessera_payouts::Payouts;
use tessera_payouts::payout::IdentityStatus;
use tessera_records::RecordsStore;
use tessera_records::access_request::{AccessRequests, Policy, RequestState};
use tessera_records::fixture::{directory_bundle, fhir_server, persona};
use tessera_records::identity::{Assurance, Identity, Persona, PersonaConfig, State};
use tessera_records::smart::{Smart, SmartConfig};

use crate::support::{at_the_provider, catalog_with_patient};

async fn database() -> Option<String> {
    let (url, required) = match std::env::var("TESSERA_TEST_POSTGRES") {
        Ok(u) => (u, true),
        Err(_) => ("postgres://postgres@127.0.0.1:5432/test".to_string(), false),
    };
    let conn =
        tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&url)).await;
    let mut conn = match conn {
        Ok(Ok(c)) => c,
        _ if required => panic!("TESSERA_TEST_POSTGRES is set but {url} does not answer"),
        _ => {
            eprintln!(
                "\n*** SKIPPED: records PostgreSQL test: no server at {url} and TESSERA_TEST_POSTGRES is unset ***\n"
            );
            return None;
        }
    };
    let db = format!("tessera_records_{}", std::process::id());
    for sql in [
        format!("DROP DATABASE IF EXISTS {db}"),
        format!("CREATE DATABASE {db}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let base = url.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
    Some(format!("{base}/{db}"))
}

fn sign(t: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"pg-secret");
    let mut msg = t.to_string().into_bytes();
    msg.push(b'.');
    msg.extend_from_slice(body);
    format!(
        "t={t},v1={}",
        hex::encode(ring::hmac::sign(&key, &msg).as_ref())
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn records_on_postgres() {
    let Some(url) = database().await else { return };
    let store = RecordsStore::connect(&url)
        .await
        .expect("records on PostgreSQL");
    let payouts = Payouts::connect(&url).await.expect("payouts on PostgreSQL");
    let (catalog, patient) = catalog_with_patient(&url).await;

    // Identity: started, then approved and completed delivered out of order.
    let (base, _seen) = persona().await;
    let provider = Persona::new(PersonaConfig {
        base_url: base,
        api_key: "persona_sandbox_key".into(),
        template_id: "itmpl_ial2".into(),
        webhook_secrets: vec![b"pg-secret".to_vec()],
        review_configured: true,
        assurance: Assurance::Ial2,
    })
    .unwrap();
    let identity = Identity::new(store.clone(), Arc::new(provider), payouts.clone());
    identity
        .start(&patient, "https://tessera.test/me/identity/return")
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    let event = |id: &str, status: &str, at: i64| {
        serde_json::to_vec(&json!({"data": {"type": "event", "id": id, "attributes": {
            "name": format!("inquiry.{status}"), "created-at": Utc.timestamp_opt(at, 0).unwrap().to_rfc3339(),
            "payload": {"data": {"type": "inquiry", "id": "inq_0", "attributes": {"status": status, "reference-id": patient}}}}}}))
        .unwrap()
    };
    let approved = event("e2", "approved", now - 10);
    let completed = event("e1", "completed", now - 20);
    assert_eq!(
        identity
            .handle_webhook(&sign(now, &approved), &approved, now)
            .await
            .unwrap()
            .result,
        "applied"
    );
    assert_eq!(
        identity
            .handle_webhook(&sign(now, &completed), &completed, now)
            .await
            .unwrap()
            .result,
        "stale"
    );
    assert_eq!(
        identity.status(&patient).await.unwrap().state,
        State::Approved
    );
    assert_eq!(
        payouts.identity(&patient).await.unwrap(),
        IdentityStatus::Verified
    );

    // SMART: connected, fetched, ingested as the patient's.
    let fhir = fhir_server().await;
    let fhir_base = fhir.lock().unwrap().base.clone();
    let smart = Smart::new(
        store.clone(),
        catalog.clone(),
        SmartConfig::new("tessera-test-client", "https://tessera.test/cb"),
    )
    .unwrap();
    smart
        .load_directory("fixture", &directory_bundle(&fhir_base))
        .await
        .unwrap();
    let authorize = smart.begin(&patient, "ep-1/org-1").await.unwrap();
    let (code, state) = at_the_provider(&authorize, "https://tessera.test/cb").await;
    let c = smart.complete(&patient, &state, &code).await.unwrap();
    let report = smart.sync(&patient, &c.id).await.unwrap();
    assert_eq!(report.resources, 13);
    assert_eq!(report.ingest.unwrap().records.added, 12);

    // A written request through its schedule.
    let roa = AccessRequests::new(store.clone(), Policy::default());
    let day =
        |n: i64| Utc.with_ymd_and_hms(2026, 1, 5, 9, 0, 0).unwrap() + chrono::Duration::days(n);
    let id = roa
        .prepare(&patient, "npi:9", "Pg Clinic", day(0))
        .await
        .unwrap();
    roa.sent(&id, day(0)).await.unwrap();
    for n in 1..=80 {
        roa.tick(day(n)).await.unwrap();
    }
    let r = roa.get(&id).await.unwrap();
    assert_eq!(r.state, RequestState::ClosedUnfulfilled);
    assert_eq!(r.follow_ups, 4);

    // The patient's deletion forgets it all.
    smart.forget(&patient).await.unwrap();
    identity.forget(&patient).await.unwrap();
    assert_eq!(roa.forget(&patient).await.unwrap(), 1);
    assert!(smart.connections(&patient).await.unwrap().is_empty());
    store.close().await;
}
