//! SMART on FHIR, fast tier: a local fixture server plays the provider (SMART discovery, an
//! authorization server that checks PKCE S256, `aud`, scopes, redirect URI and client id, and
//! a FHIR server with paged bundles, `$everything`, US Core searches, `_since` /
//! `_lastUpdated`, tokens that stop working (401, then refresh), 429 with `Retry-After`,
//! OperationOutcome refusals, token revocation) and misbehaves on purpose (it slips another
//! patient's resource into a page). The stand-in is `tessera_records::fixture`, shared with
//! the end-to-end test of the Providers page.

use tessera_catalog::Catalog;
use tessera_records::identity::{Assurance, record_attended};
use tessera_records::smart::{Smart, SmartConfig, directory};
use tessera_records::{RecordsError, RecordsStore};

use tessera_records::fixture::{condition, directory_bundle, fhir_server};

use crate::support::{at_the_provider, catalog_with_patient, fresh};

const CLIENT: &str = "tessera-test-client";
const REDIRECT: &str = "https://tessera.test/me/providers/callback";

#[test]
fn the_directory_keeps_active_https_fhir_endpoints_with_their_organizations() {
    let report = directory::parse(&directory_bundle("https://ehr.example.test")).unwrap();
    let names: Vec<&str> = report
        .entries
        .iter()
        .map(|e| e.organization.as_str())
        .collect();
    assert_eq!(
        names,
        ["Riverside General Hospital", "Riverside Children's Clinic"]
    );
    assert_eq!(report.entries[0].id, "ep-1/org-1");
    assert_eq!(report.entries[0].fhir_base, "https://ehr.example.test/fhir");
    assert_eq!(report.entries[0].city.as_deref(), Some("Springfield"));
    let skipped: Vec<&str> = report.skipped.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(skipped, ["ep-clear", "ep-off"]);
    assert!(report.skipped[0].1.contains("HTTPS"));
    assert!(directory::parse(b"{\"resourceType\":\"Patient\"}").is_err());
}

/// A catalog with one patient (ingested from a local bundle), verified at IAL2.
async fn setup(
    dir: &std::path::Path,
    store: &RecordsStore,
    payouts: &tessera_payouts::Payouts,
) -> (Catalog, String) {
    let url = format!("sqlite://{}?mode=rwc", dir.join("t.db").display());
    let (catalog, patient) = catalog_with_patient(&url).await;
    record_attended(store, payouts, &patient, true, Assurance::Ial2)
        .await
        .unwrap();
    (catalog, patient)
}

/// SMART over the stand-in's directory, asking for `page_size` results a page.
async fn smart_for(store: &RecordsStore, catalog: &Catalog, base: &str, page_size: u32) -> Smart {
    let smart = Smart::new(
        store.clone(),
        catalog.clone(),
        SmartConfig {
            page_size,
            ..SmartConfig::new(CLIENT, REDIRECT)
        },
    )
    .unwrap();
    smart
        .load_directory("fixture", &directory_bundle(base))
        .await
        .unwrap();
    smart
}

fn records_from(data: &tessera_catalog::access::OwnData, source: &str) -> Vec<String> {
    let mut v: Vec<String> = data
        .records
        .iter()
        .filter(|r| r.source.as_deref() == Some(source))
        .map(|r| r.body.resource_type.clone())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn launch_fetch_ingest_refresh_throttle_isolation_incremental_and_disconnect() {
    let (store, payouts, dir) = fresh().await;
    let server = fhir_server().await;
    let base = server.lock().unwrap().base.clone();
    let (catalog, patient) = setup(dir.path(), &store, &payouts).await;
    let smart = smart_for(&store, &catalog, &base, 3).await;
    let found = smart.directory("children").await.unwrap();
    assert_eq!(found.len(), 1);

    // The standalone launch: PKCE S256, aud, scopes (the fixture refuses anything else).
    let url = smart.begin(&patient, "ep-1/org-1").await.unwrap();
    let (code, state) = at_the_provider(&url, REDIRECT).await;
    // Another session's patient cannot complete it.
    let stranger = smart
        .complete("ffffffffffffffffffffffffffffffff", &state, &code)
        .await
        .unwrap_err();
    assert!(matches!(stranger, RecordsError::Invalid(_)), "{stranger}");
    let connection = smart.complete(&patient, &state, &code).await.unwrap();
    assert_eq!(connection.state, "connected");
    assert_eq!(connection.organization, "Riverside General Hospital");
    // The state is single use.
    assert!(smart.complete(&patient, &state, &code).await.is_err());

    // The server misbehaves: another patient's condition in every first page; the second
    // page answers 429 once; the access token stops working after 2 uses (401 → refresh).
    {
        let mut f = server.lock().unwrap();
        f.foreign = Some(condition("cb", "pat-b", "73211009", "2026-01-01T00:00:00Z"));
        f.throttle_page_two = true;
        f.token_uses = 2;
        for (_, (_, uses)) in f.access.iter_mut() {
            *uses = 2;
        }
    }
    // Two syncs at once (the patient's button and the scheduled one): one runs, the other is
    // refused at once; a provider that rotates refresh tokens never sees two refreshes.
    let (a, b) = tokio::join!(
        smart.sync(&patient, &connection.id),
        smart.sync(&patient, &connection.id)
    );
    let (report, refused) = match (a, b) {
        (Ok(r), Err(e)) | (Err(e), Ok(r)) => (r, e),
        other => panic!("exactly one sync runs: {other:?}"),
    };
    assert!(refused.to_string().contains("already running"), "{refused}");
    assert_eq!(report.method, "$everything");
    assert_eq!(report.resources, 13, "{report:?}");
    assert_eq!(report.pages, 5, "13 resources, 3 per page");
    assert!(report.foreign_dropped >= 1, "{report:?}");
    assert_eq!(report.waited, 1);
    assert!(report.refreshed >= 1, "{report:?}");
    assert!(!report.incremental);
    assert!(server.lock().unwrap().refreshes >= 1);
    let data = catalog.own_data(&patient).await.unwrap();
    let got = records_from(&data, "smart:ep-1/org-1");
    assert_eq!(
        got.iter().filter(|t| *t == "Condition").count(),
        7,
        "{got:?}"
    );
    assert_eq!(
        got.iter().filter(|t| *t == "Observation").count(),
        5,
        "{got:?}"
    );
    // Patient isolation: the other patient's condition (SNOMED 73211009) never arrived.
    assert!(
        !data
            .records
            .iter()
            .any(|r| r.body.raw.get().contains("pat-b"))
    );
    // The provider's Patient joined the Tessera patient: no second patient was made.
    assert_eq!(catalog.count_patients().await.unwrap(), 1);

    // An incremental sync asks only for what changed since (a little before) the last one.
    {
        let mut f = server.lock().unwrap();
        f.foreign = None;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        f.resources
            .get_mut("pat-a")
            .unwrap()
            .push(condition("c-new", "pat-a", "230690007", &now));
        f.requests.clear();
    }
    let again = smart.sync(&patient, &connection.id).await.unwrap();
    assert!(again.incremental);
    assert_eq!(again.resources, 1, "{again:?}");
    assert!(
        server
            .lock()
            .unwrap()
            .requests
            .iter()
            .all(|r| r.contains("_since=")),
        "{:?}",
        server.lock().unwrap().requests
    );
    let data = catalog.own_data(&patient).await.unwrap();
    assert_eq!(
        records_from(&data, "smart:ep-1/org-1")
            .iter()
            .filter(|t| *t == "Condition")
            .count(),
        8
    );

    // Disconnect: the refresh token is revoked at the provider, the tokens destroyed, and a
    // sync is refused; the records received stay.
    assert!(smart.disconnect(&patient, &connection.id).await.unwrap());
    assert_eq!(server.lock().unwrap().revoked.len(), 1);
    assert!(server.lock().unwrap().revoked[0].starts_with("rt-"));
    assert!(smart.connections(&patient).await.unwrap().is_empty());
    assert!(smart.sync(&patient, &connection.id).await.is_err());
    // 8 conditions and 5 observations (the Patient resource joined the identity).
    assert_eq!(
        records_from(
            &catalog.own_data(&patient).await.unwrap(),
            "smart:ep-1/org-1"
        )
        .len(),
        13
    );
}

#[tokio::test]
async fn without_everything_the_us_core_searches_run_and_refusals_are_reported() {
    let (store, payouts, dir) = fresh().await;
    let server = fhir_server().await;
    let base = server.lock().unwrap().base.clone();
    server.lock().unwrap().everything = false;
    let (catalog, patient) = setup(dir.path(), &store, &payouts).await;
    let smart = smart_for(&store, &catalog, &base, 3).await;
    let url = smart.begin(&patient, "ep-1/org-2").await.unwrap();
    let (code, state) = at_the_provider(&url, REDIRECT).await;
    let c = smart.complete(&patient, &state, &code).await.unwrap();
    let report = smart.sync(&patient, &c.id).await.unwrap();
    assert_eq!(report.method, "searches");
    assert_eq!(report.resources, 13, "{report:?}");
    // Goal is refused with an OperationOutcome: reported by its issue code, never its
    // diagnostics (which quote a name here).
    let goal = report
        .refused_types
        .iter()
        .find(|(t, _)| t == "Goal")
        .unwrap();
    assert_eq!(goal.1, "HTTP 403 forbidden");
    assert!(!format!("{report:?}").contains("Jane"));
    // Every search named the token's patient.
    assert!(
        server
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| !r.starts_with('$'))
            .all(|r| r.contains("patient=pat-a"))
    );
    // The next sync does not try $everything again.
    server.lock().unwrap().requests.clear();
    smart.sync(&patient, &c.id).await.unwrap();
    assert!(
        !server
            .lock()
            .unwrap()
            .requests
            .iter()
            .any(|r| r.starts_with('$'))
    );
}

#[tokio::test]
async fn refusals_before_any_token_is_asked_for() {
    let (store, payouts, dir) = fresh().await;
    let server = fhir_server().await;
    let base = server.lock().unwrap().base.clone();
    let (catalog, patient) = setup(dir.path(), &store, &payouts).await;
    let smart = smart_for(&store, &catalog, &base, 100).await;
    // An unverified patient cannot connect.
    let other = "0123456789abcdef0123456789abcdef";
    let refused = smart.begin(other, "ep-1/org-1").await.unwrap_err();
    assert!(
        refused.to_string().contains("verify your identity"),
        "{refused}"
    );
    // A server without PKCE S256 is refused.
    server.lock().unwrap().s256 = false;
    let refused = smart.begin(&patient, "ep-1/org-1").await.unwrap_err();
    assert!(refused.to_string().contains("S256"), "{refused}");
    server.lock().unwrap().s256 = true;
    // A provider not in the directory.
    assert!(matches!(
        smart.begin(&patient, "nowhere").await,
        Err(RecordsError::NotFound(_))
    ));
    // A code obtained by someone else's verifier does not exchange: the fixture checks PKCE.
    let url = smart.begin(&patient, "ep-1/org-1").await.unwrap();
    let (_code, state) = at_the_provider(&url, REDIRECT).await;
    let wrong = smart
        .complete(&patient, &state, "code-that-was-never-issued")
        .await
        .unwrap_err();
    assert!(wrong.to_string().contains("invalid_grant"), "{wrong}");
    assert!(
        !wrong.to_string().contains("Jane"),
        "error descriptions are not passed on"
    );
    // The patient's deletion disconnects everything and deletes the rows.
    let url = smart.begin(&patient, "ep-1/org-1").await.unwrap();
    let (code, state) = at_the_provider(&url, REDIRECT).await;
    smart.complete(&patient, &state, &code).await.unwrap();
    smart.forget(&patient).await.unwrap();
    assert!(smart.connections(&patient).await.unwrap().is_empty());
    assert_eq!(server.lock().unwrap().revoked.len(), 1);
}
