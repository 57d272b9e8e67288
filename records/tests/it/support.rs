//! Shared helpers: a fresh store, a catalog with one patient, the patient's browser at a
//! provider's sign-in (the providers' stand-ins are `tessera_records::fixture`).

use std::collections::BTreeMap;

use serde_json::json;
use tessera_catalog::{Catalog, IngestOptions, Keyring, NoProgress};
use tessera_payouts::Payouts;
use tessera_records::RecordsStore;

pub async fn fresh() -> (RecordsStore, Payouts, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let store = RecordsStore::connect(&url)
        .await
        .expect("open the records store");
    let payouts = Payouts::connect(&url)
        .await
        .expect("open the payouts store");
    (store, payouts, dir)
}

/// A catalog at `url` holding one patient (from a small local bundle: Ann Quarry, born
/// 1980-04-02); the catalog and the patient's internal id.
pub async fn catalog_with_patient(url: &str) -> (Catalog, String) {
    let catalog = Catalog::open(url, Keyring::new(&[5; 32], &[]))
        .await
        .expect("open the catalog");
    let dir = tempfile::tempdir().expect("temp dir");
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "id": "local-1", "name": [{"family": "Quarry", "given": ["Ann"]}], "birthDate": "1980-04-02"}}]});
    let path = dir.path().join("local.json");
    std::fs::write(&path, serde_json::to_vec(&bundle).expect("json")).expect("write");
    catalog
        .ingest(&[path], &IngestOptions::default(), &NoProgress)
        .await
        .expect("ingest the local bundle");
    let patient = catalog.list_patients(10, 0).await.expect("patients")[0]
        .patient_id
        .clone();
    (catalog, patient)
}

/// The patient's browser at the provider: follows the authorization URL, is signed in (the
/// stand-in signs in whoever it is told to), and comes back to `redirect` with the `code`
/// and `state`.
pub async fn at_the_provider(authorize_url: &str, redirect: &str) -> (String, String) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let resp = http.get(authorize_url).send().await.expect("authorize");
    assert_eq!(
        resp.status(),
        302,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    assert!(location.starts_with(redirect), "{location}");
    let q: BTreeMap<String, String> =
        serde_urlencoded::from_str(location.split_once('?').expect("a query").1).expect("query");
    (q["code"].clone(), q["state"].clone())
}
