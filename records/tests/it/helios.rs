//! SMART on FHIR, slow tier: the real `helios-hfs` FHIR server (R4, SQLite) on loopback, loaded
//! with the shipped Synthea bundles, validating RS256 tokens against the JWKS of the tests'
//! own authorization server (`tessera_records::fixture` in JWT mode). The full path: discovery
//! at helios, the standalone launch, `$everything` with paging, ingest as the connecting
//! patient's records, patient isolation (the other patient's records never arrive), an
//! incremental sync after a new record, and the token refreshed once it expired.
//!
//! The server takes about 45 minutes to build on two cores, so `scripts/test` does not build
//! it: `scripts/install-fhir-server` does, once per machine, under `~/.cache/tessera/helios`.
//! Without it this test says SKIPPED, loudly, and is listed at the end of `scripts/test`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use tessera_records::fixture::{fhir_server, mint};
use tessera_records::identity::{Assurance, record_attended};
use tessera_records::smart::{Smart, SmartConfig};

use crate::support::{at_the_provider, catalog_with_patient, fresh};

fn helios_dir() -> PathBuf {
    std::env::var("TESSERA_HELIOS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/tessera/helios")
        })
}

/// The server and its data folder, or `None` (and the skip recorded) when not installed.
fn installed(test: &str) -> Option<(PathBuf, PathBuf)> {
    let dir = helios_dir();
    let (bin, data) = (dir.join("bin/hfs"), dir.join("data"));
    if bin.is_file() && data.join("search-parameters-r4.json").is_file() {
        return Some((bin, data));
    }
    let line = format!(
        "tessera-records helios::{test}: the helios-hfs FHIR server is not installed in {} (run scripts/install-fhir-server, about 45 minutes once)\n",
        dir.display()
    );
    eprintln!("SKIPPED {line}");
    if let Ok(target) = std::env::var("CARGO_TARGET_DIR") {
        let list = PathBuf::from(target).join("tmp/skipped-tests.txt");
        let _ = std::fs::create_dir_all(list.parent().unwrap_or(&list));
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&list)
        {
            use std::io::Write;
            let _ = f.write_all(line.as_bytes());
        }
    }
    None
}

struct Helios {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for Helios {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_helios(bin: &Path, data: &Path, work: &Path, authority: &str) -> Helios {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = work.join("hfs.log");
    let child = Command::new(bin)
        .current_dir(work)
        .env("HFS_SERVER_PORT", port.to_string())
        .env("HFS_SERVER_HOST", "127.0.0.1")
        .env("HFS_BASE_URL", &base)
        .env("HFS_DATABASE_URL", work.join("fhir.db"))
        .env("HFS_DATA_DIR", data)
        .env("HFS_DEFAULT_PAGE_SIZE", "10")
        .env("HFS_AUTH_ENABLED", "true")
        .env("HFS_AUTH_JWKS_URL", format!("{authority}/jwks"))
        .env("HFS_AUTH_ISSUER", authority)
        .env("HFS_AUTH_AUDIENCE", &base)
        .env("HFS_AUTH_ALGORITHMS", "RS256")
        .env(
            "HFS_SMART_AUTHORIZE_ENDPOINT",
            format!("{authority}/authorize"),
        )
        .env("HFS_SMART_TOKEN_ENDPOINT", format!("{authority}/token"))
        .env(
            "HFS_SMART_REVOCATION_ENDPOINT",
            format!("{authority}/revoke"),
        )
        .env("HFS_UI_ENABLED", "false")
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(work.join("hfs.err")).unwrap(),
        ))
        .spawn()
        .expect("start helios-hfs");
    let helios = Helios { child, base, log };
    let http = reqwest::Client::new();
    for _ in 0..240 {
        if let Ok(r) = http
            .get(format!("{}/.well-known/smart-configuration", helios.base))
            .send()
            .await
            && r.status().is_success()
        {
            return helios;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!(
        "helios-hfs did not answer within a minute:\n{}\n{}",
        std::fs::read_to_string(&helios.log).unwrap_or_default(),
        std::fs::read_to_string(work.join("hfs.err")).unwrap_or_default()
    );
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// (resource type, id) of what a transaction response created, in the bundle's order.
fn created(response: &Value) -> Vec<(String, String)> {
    response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let loc = e["response"]["location"].as_str()?;
            let mut parts = loc.split('/');
            let kind = parts.next()?.to_string();
            let id = parts.next()?.to_string();
            Some((kind, id))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_fhir_server_serves_launch_fetch_ingest_isolation_and_incremental_sync() {
    let Some((bin, data)) =
        installed("a_real_fhir_server_serves_launch_fetch_ingest_isolation_and_incremental_sync")
    else {
        return;
    };
    let (store, payouts, dir) = fresh().await;
    // The authorization server: the fixture in JWT mode (helios validates its tokens).
    let authority = fhir_server().await;
    let auth_base = format!("{}/auth", authority.lock().unwrap().base);
    let helios = start_helios(&bin, &data, dir.path(), &auth_base).await;
    {
        let mut a = authority.lock().unwrap();
        a.audience = helios.base.clone();
        a.jwt_lifetime = Some(61);
    }
    let loader = {
        let a = authority.lock().unwrap();
        mint(&a, "loader", "system/*.cruds", None, 600)
    };
    // Two Synthea patients, as transactions.
    let http = reqwest::Client::new();
    let mut loaded = Vec::new();
    for file in ["synthea-patient-1.json", "synthea-patient-2.json"] {
        let body = std::fs::read(repo().join("fixtures/fhir").join(file)).unwrap();
        let r = http
            .post(&helios.base)
            .bearer_auth(&loader)
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert!(status.is_success(), "loading {file}: {status} {v}");
        loaded.push(created(&v));
    }
    let patient_of = |c: &[(String, String)]| {
        c.iter()
            .find(|(k, _)| k == "Patient")
            .map(|(_, id)| id.clone())
            .unwrap()
    };
    let (fhir_a, fhir_b) = (patient_of(&loaded[0]), patient_of(&loaded[1]));
    let ids_b: BTreeSet<&str> = loaded[1].iter().map(|(_, id)| id.as_str()).collect();
    authority.lock().unwrap().login_as = fhir_a.clone();

    // The Tessera patient (a local record first), verified, connecting to helios.
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let (catalog, patient) = catalog_with_patient(&url).await;
    record_attended(&store, &payouts, &patient, true, Assurance::Ial2)
        .await
        .unwrap();
    let smart = Smart::new(
        store.clone(),
        catalog.clone(),
        SmartConfig {
            page_size: 10,
            ..SmartConfig::new(
                "tessera-test-client",
                "https://tessera.test/me/providers/callback",
            )
        },
    )
    .unwrap();
    let directory = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Endpoint", "id": "hfs", "status": "active", "connectionType": {"code": "hl7-fhir-rest"}, "address": helios.base}},
        {"resource": {"resourceType": "Organization", "id": "h", "name": "Helios General", "endpoint": [{"reference": "Endpoint/hfs"}]}}]});
    smart
        .load_directory("loopback", &serde_json::to_vec(&directory).unwrap())
        .await
        .unwrap();
    let authorize = smart.begin(&patient, "hfs/h").await.unwrap();
    let (code, state) = at_the_provider(&authorize, "https://tessera.test/").await;
    let connection = smart.complete(&patient, &state, &code).await.unwrap();

    let first = smart.sync(&patient, &connection.id).await.unwrap();
    eprintln!("helios first sync: {first:?}");
    assert!(first.pages >= 3, "paged at 10 a page: {first:?}");
    let data_a = catalog.own_data(&patient).await.unwrap();
    let from_helios = |d: &tessera_catalog::access::OwnData, kind: &str| {
        d.records
            .iter()
            .filter(|r| r.source.as_deref() == Some("smart:hfs/h") && r.body.resource_type == kind)
            .count()
    };
    for (kind, n) in [("Condition", 3), ("Observation", 33), ("Immunization", 4)] {
        assert_eq!(from_helios(&data_a, kind), n, "{kind} of patient A");
    }
    // Isolation: none of patient B's resources arrived.
    for r in &data_a.records {
        let raw: Value = serde_json::from_str(r.body.raw.get()).unwrap();
        let id = raw["id"].as_str().unwrap_or("");
        assert!(!ids_b.contains(id), "patient B's {id} arrived");
        assert!(!r.body.raw.get().contains(&format!("Patient/{fhir_b}")));
    }

    // A new condition for A; the next sync (its token expired by then: refreshed first) takes
    // in just that. (helios-hfs 0.2.7 answers `$everything` whole despite `_since`: what did
    // not change is ingested as unchanged, so only the new record is added.)
    let new_condition = json!({"resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "230690007"}]},
        "subject": {"reference": format!("Patient/{fhir_a}")}, "onsetDateTime": "2026-11-30"});
    let r = http
        .post(format!("{}/Condition", helios.base))
        .bearer_auth(&loader)
        .header("content-type", "application/fhir+json")
        .body(new_condition.to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let second = smart.sync(&patient, &connection.id).await.unwrap();
    eprintln!("helios second sync: {second:?}");
    assert!(second.incremental);
    assert!(
        second.refreshed >= 1,
        "the expired token was refreshed: {second:?}"
    );
    let ingest = second.ingest.as_ref().unwrap();
    assert_eq!(
        ingest.records.added, 1,
        "only the new condition is new: {second:?}"
    );
    assert_eq!(
        from_helios(&catalog.own_data(&patient).await.unwrap(), "Condition"),
        4
    );
    drop(helios);
}
