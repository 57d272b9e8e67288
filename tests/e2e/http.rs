//! The HTTP API against the real server: `tessera serve` on port 0 over a demo data folder,
//! called over loopback. Refusals (no key, a bad key, an expired, revoked or wrong-organization
//! key, a suspended license, an analyst on an admin endpoint, an operator querying) come back
//! with their stable codes and are audited, as are the allowed requests; cohort counts are
//! checked against a count made here from the release's Parquet file; the OpenAPI document is
//! snapshot-tested and fuzzed by schemathesis.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::Tessera;

/// A demo data folder built once per test run (what `tessera demo` printed beside it); each
/// test works on a copy.
///
/// It is built as a new user builds it from a bare clone: the repository's tracked files are
/// copied into an empty folder (no `../shared` beside it, no untracked or ignored file), and
/// `tessera demo` runs there with that copy's fixtures and policy. So every test that uses the
/// demo also shows that the repository alone holds what the demo needs.
fn demo_template() -> &'static (Tessera, String) {
    static T: OnceLock<(Tessera, String)> = OnceLock::new();
    T.get_or_init(|| {
        let t = Tessera::new();
        let clone = bare_clone(&t.dir.path().join("clone"));
        assert!(
            !clone.join("../shared").exists(),
            "the clone has no ../shared beside it"
        );
        let fixtures = clone.join("fixtures");
        let policy = clone.join("policies/natural-history.toml");
        let out = t
            .command()
            .current_dir(&clone)
            .args(["demo", "--fixtures"])
            .arg(&fixtures)
            .arg("--release-policy")
            .arg(&policy)
            .output()
            .expect("run tessera demo");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "tessera demo in a bare clone: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (t, text)
    })
}

/// The files git tracks (with their working-tree content), copied into `to`: what a fresh
/// clone holds. Returns `to`.
pub fn bare_clone(to: &Path) -> std::path::PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let listed = std::process::Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo)
        .output()
        .expect("git ls-files (the tests run in a git checkout)");
    assert!(listed.status.success(), "git ls-files failed");
    let mut n = 0;
    for name in listed.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).to_string();
        let from = repo.join(&name);
        if !from.is_file() {
            continue; // deleted in the working tree
        }
        let target = to.join(&name);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&from, &target).expect("copy a tracked file");
        n += 1;
    }
    assert!(n > 50, "{n} tracked files copied");
    to.to_path_buf()
}

/// What `tessera demo` printed when it built the demo.
pub fn demo_output() -> &'static str {
    &demo_template().1
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// A fresh copy of the demo data folder.
pub fn demo_copy() -> Tessera {
    let template = &demo_template().0;
    let t = Tessera::new();
    copy_dir(&template.data_dir(), &t.data_dir());
    t
}

/// The demo patient's internal id and the token of their operator-issued sign-in link.
pub fn demo_patient(demo: &Value) -> (String, String) {
    let patient = demo["patient"]["patient_id"]
        .as_str()
        .expect("a demo patient")
        .to_string();
    let link = demo["patient"]["sign_in"].as_str().expect("a sign-in link");
    (patient, crate::consoles::token_of(link))
}

/// A running `tessera serve`; stopped with SIGTERM.
pub struct Server {
    child: Child,
    pub base: String,
    output: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(t: &Tessera, extra: &[&str]) -> Server {
        Server::start_env(t, extra, &[])
    }

    /// As [`Server::start`], with environment variables (`TESSERA_SMTP_URL`, say).
    pub fn start_env(t: &Tessera, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = t
            .command()
            .args(["serve", "--http", "127.0.0.1:0", "--flight", "127.0.0.1:0"])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tessera serve");
        let stdout = child.stdout.take().expect("stdout");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("HTTP API on ").nth(1) {
                    let base = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(base);
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let base = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("the server prints its address");
        Server {
            child,
            base,
            output,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then the exit status and what the server printed.
    pub fn stop(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
        let status = self.child.wait().expect("wait");
        let out = self.output.lock().map(|s| s.clone()).unwrap_or_default();
        (status.code(), out)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn demo_json(t: &Tessera) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(t.data_dir().join("demo.json")).expect("demo.json"),
    )
    .expect("json")
}

/// The Flight SQL address `tessera serve` wrote into demo.json.
pub fn flight_uri(demo: &Value) -> String {
    demo["services"]["flight_sql"]
        .as_str()
        .expect("the Flight SQL address in demo.json")
        .to_string()
}

/// Every patient of the catalog with their pseudonym in the demo release family:
/// (internal patient id, `person_id`).
pub async fn demo_pseudonyms(catalog: &tessera_catalog::Catalog) -> Vec<(String, String)> {
    let family_key = tessera_catalog::Keyring::new(&crate::support::test_key(), &[])
        .release_family_key("demo-natural-history");
    catalog
        .list_patients(100_000, 0)
        .await
        .expect("patients")
        .into_iter()
        .map(|p| {
            let pseudonym = tessera_catalog::release::family_pseudonym(&family_key, &p.patient_id);
            (p.patient_id, pseudonym)
        })
        .collect()
}

/// (key, license) of a demo organization.
pub fn demo_org(demo: &Value, org: &str) -> (String, String, String) {
    let o = demo["organizations"]
        .as_array()
        .expect("organizations")
        .iter()
        .find(|o| o["organization"] == org)
        .expect("demo organization");
    (
        o["api_key"].as_str().expect("key").to_string(),
        o["license"].as_str().expect("license").to_string(),
        o["key_id"].as_str().expect("key id").to_string(),
    )
}

pub struct Client {
    http: reqwest::Client,
}

impl Client {
    fn new() -> Client {
        Client {
            http: reqwest::Client::new(),
        }
    }

    async fn get(
        &self,
        url: &str,
        key: Option<&str>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut r = self.http.get(url);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        Self::read(r.send().await.expect("request")).await
    }

    async fn post(
        &self,
        url: &str,
        key: Option<&str>,
        body: &Value,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut r = self.http.post(url).json(body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        Self::read(r.send().await.expect("request")).await
    }

    async fn read(resp: reqwest::Response) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body, headers)
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// The folder of the demo release's files (copies of the demo folder point at the template's).
pub fn release_dir() -> std::path::PathBuf {
    demo_template()
        .0
        .data_dir()
        .join("releases/demo-natural-history/v1")
}

/// Distinct persons of a release table by value of `column`, counted here from the Parquet
/// file without Tessera's code.
pub fn persons_by(table: &str, column: &str) -> std::collections::BTreeMap<String, u64> {
    use polars::prelude::*;
    // Copies of the demo folder point at the release files of the template.
    let file = demo_template()
        .0
        .data_dir()
        .join(format!("releases/demo-natural-history/v1/{table}.parquet"));
    let df = ParquetReader::new(std::fs::File::open(&file).expect("parquet"))
        .finish()
        .expect("read");
    let text = |name: &str| -> Vec<Option<String>> {
        let c = df
            .column(name)
            .expect("column")
            .cast(&DataType::String)
            .expect("text");
        c.str()
            .expect("str")
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut out = std::collections::BTreeMap::new();
    for (id, v) in text("person_id").into_iter().zip(text(column)) {
        let v = v.unwrap_or_else(|| "null".into());
        if seen.insert((id, v.clone())) {
            *out.entry(v).or_insert(0) += 1;
        }
    }
    out
}

async fn audit_events(t: &Tessera) -> Vec<tessera_licensing::audit::Event> {
    let store = tessera_licensing::store::LicensingStore::connect(&t.database_url())
        .await
        .expect("store");
    let entries = store.audit_entries().await.expect("entries");
    store.close().await;
    entries.into_iter().map(|e| e.event).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_allowed_requests_are_answered_with_codes_and_audited() {
    let t = demo_copy();
    let server = Server::start(&t, &[]);
    let demo = demo_json(&t);
    assert_eq!(
        demo["services"]["http"],
        server.base.as_str(),
        "serve records its address"
    );
    let (agg_key, agg_license, _) = demo_org(&demo, "demo-aggregate");
    let (row_key, row_license, row_key_id) = demo_org(&demo, "demo-rowlevel");
    let operator = demo["operator"]["api_key"]
        .as_str()
        .expect("operator key")
        .to_string();
    let c = Client::new();
    let releases = server.url("/v1/releases");
    let cohort = server.url("/v1/releases/demo-natural-history/latest/cohort-count");

    // Health and readiness need no key.
    assert_eq!(c.get(&server.url("/healthz"), None).await.0, StatusCode::OK);
    assert_eq!(c.get(&server.url("/readyz"), None).await.0, StatusCode::OK);

    // No key, a malformed key, an unknown key.
    let (s, b, h) = c.get(&releases, None).await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::UNAUTHORIZED, "no_credential"),
        "{b}"
    );
    assert!(h.get("www-authenticate").is_some());
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("Bearer")
    );
    let (s, b, _) = c.get(&releases, Some("not-a-key")).await;
    assert_eq!((s, code(&b)), (StatusCode::UNAUTHORIZED, "no_credential"));
    let forged = format!("{}x", &agg_key[..agg_key.len() - 1]);
    let (s, b, _) = c.get(&releases, Some(&forged)).await;
    assert_eq!((s, code(&b)), (StatusCode::UNAUTHORIZED, "no_credential"));

    // Allowed browsing: the release, its dictionary, one table.
    let (s, b, _) = c.get(&releases, Some(&agg_key)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let listed = b.as_array().expect("list");
    assert_eq!(listed.len(), 1, "{b}");
    assert_eq!(listed[0]["family"], "demo-natural-history");
    assert_eq!(listed[0]["licenses"], json!([agg_license]));
    let (s, dict, _) = c
        .get(
            &server.url("/v1/releases/demo-natural-history/1/dictionary"),
            Some(&agg_key),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let person = dict
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["name"] == "person")
        .expect("person table");
    assert!(
        person["columns"]
            .as_array()
            .expect("columns")
            .iter()
            .any(|c| c["name"] == "gender_source_value"
                && !c["description"].as_str().unwrap_or("").is_empty())
    );
    let (s, detail, _) = c
        .get(
            &server.url("/v1/releases/demo-natural-history/latest"),
            Some(&agg_key),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(detail["safe_harbor"].as_array().map(Vec::len), Some(18));
    let (s, b, _) = c
        .get(
            &server.url("/v1/releases/demo-natural-history/7"),
            Some(&agg_key),
        )
        .await;
    assert_eq!((s, code(&b)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, b, _) = c
        .get(
            &server.url("/v1/releases/demo-natural-history/seven"),
            Some(&agg_key),
        )
        .await;
    assert_eq!((s, code(&b)), (StatusCode::BAD_REQUEST, "invalid_request"));

    // A cohort count by sex equals a count made here, with small cells withheld.
    let (s, counts, _) = c
        .post(
            &cohort,
            Some(&agg_key),
            &json!({"group_by": "gender_source_value"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{counts}");
    let expected = persons_by("person", "gender_source_value");
    let total: u64 = expected.values().sum();
    assert_eq!(counts["total"], json!(total));
    for cell in counts["groups"].as_array().expect("groups") {
        let label = cell["label"].as_str().expect("label");
        let want = expected[label];
        if want >= 11 && cell["suppressed"] == false {
            assert_eq!(cell["count"], json!(want), "{label}");
        } else {
            assert!(cell["count"].is_null(), "{label}: {cell}");
        }
    }
    let hidden = counts["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter(|c| c["suppressed"] == true)
        .count();
    assert_ne!(
        hidden, 1,
        "a lone withheld cell could be derived from the total"
    );
    // A small cohort (a condition code held by 5 to 10 persons: rarer codes are already
    // suppressed in the release) is withheld whole.
    let (rare_value, n) = persons_by("condition_occurrence", "condition_source_value")
        .into_iter()
        .filter(|(v, n)| *n < 11 && v != "*" && v != "null")
        .min_by_key(|(_, n)| *n)
        .expect("a condition held by fewer than 11 persons");
    let column = "condition_source_value";
    let (s, small, _) = c
        .post(
            &cohort,
            Some(&agg_key),
            &json!({"criteria": [{"table": "condition_occurrence", "column": column, "any_of": [rare_value]}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{small}");
    assert!(
        small["total"].is_null() && small["total_suppressed"] == true,
        "{n}: {small}"
    );

    // Wrong organization: the aggregate key naming the row-level organization's license.
    let (s, b, _) = c
        .post(&cohort, Some(&agg_key), &json!({"license": row_license}))
        .await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::FORBIDDEN, "wrong_organization"),
        "{b}"
    );
    let (s, b, _) = c
        .get(
            &server.url(&format!("/v1/licenses/{row_license}")),
            Some(&agg_key),
        )
        .await;
    assert_eq!((s, code(&b)), (StatusCode::FORBIDDEN, "wrong_organization"));

    // An analyst on an admin endpoint; an operator querying data.
    let (s, b, _) = c.get(&server.url("/v1/admin/keys"), Some(&agg_key)).await;
    assert_eq!((s, code(&b)), (StatusCode::FORBIDDEN, "not_admin"));
    let (s, b, _) = c.post(&cohort, Some(&operator), &json!({})).await;
    assert_eq!((s, code(&b)), (StatusCode::FORBIDDEN, "admin_cannot_query"));

    // An expired key.
    let issued = t.expect(
        &[
            "key",
            "issue",
            "--org",
            "demo-aggregate",
            "--license",
            &agg_license,
            "--days=-1",
        ],
        0,
    );
    let expired = issued.lines().last().expect("key line").trim().to_string();
    let (s, b, _) = c.get(&releases, Some(&expired)).await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::UNAUTHORIZED, "credential_expired")
    );

    // A suspended license refuses at once, and grants again when resumed.
    t.expect(&["license", "status", "--id", &agg_license, "suspended"], 0);
    let (s, b, _) = c.post(&cohort, Some(&agg_key), &json!({})).await;
    assert_eq!((s, code(&b)), (StatusCode::FORBIDDEN, "license_not_active"));
    let (s, b, _) = c.get(&releases, Some(&agg_key)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b, json!([]), "a suspended license shows no release");
    let (s, mine, _) = c.get(&server.url("/v1/licenses"), Some(&agg_key)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(mine[0]["license"]["status"], "suspended");
    assert_eq!(mine[0]["grants_now"], false);
    t.expect(&["license", "status", "--id", &agg_license, "active"], 0);
    assert_eq!(
        c.post(&cohort, Some(&agg_key), &json!({})).await.0,
        StatusCode::OK
    );

    // A version that does not exist is refused by the decision, like any release not covered.
    let (s, b, _) = c
        .post(
            &server.url("/v1/releases/demo-natural-history/7/cohort-count"),
            Some(&agg_key),
            &json!({}),
        )
        .await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::FORBIDDEN, "release_not_covered"),
        "{b}"
    );

    // A revoked key.
    assert_eq!(c.get(&releases, Some(&row_key)).await.0, StatusCode::OK);
    t.expect(&["key", "revoke", "--id", &row_key_id], 0);
    let (s, b, _) = c.get(&releases, Some(&row_key)).await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::UNAUTHORIZED, "credential_revoked")
    );

    // Usage: three counts so far under the aggregate license.
    let (s, usage, _) = c
        .get(
            &server.url(&format!("/v1/licenses/{agg_license}/usage")),
            Some(&agg_key),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{usage}");
    assert_eq!(usage["queries_today"], 3, "{usage}");
    assert_eq!(usage["remaining"]["queries_today"], 5_000 - 3);

    // Bad bodies, unknown paths and methods: JSON errors.
    let (s, b, _) = c
        .post(&cohort, Some(&agg_key), &json!({"criteria": "all of them"}))
        .await;
    assert_eq!((s, code(&b)), (StatusCode::BAD_REQUEST, "invalid_request"));
    let big = json!({"criteria": [{"table": "person", "column": "zip", "any_of": vec!["x".repeat(100); 1000]}]});
    let (s, b, _) = c.post(&cohort, Some(&agg_key), &big).await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let (s, b, _) = c.get(&server.url("/v2/nothing"), Some(&agg_key)).await;
    assert_eq!((s, code(&b)), (StatusCode::NOT_FOUND, "not_found"));

    // An expired license grants nothing more.
    t.expect(&["license", "status", "--id", &agg_license, "expired"], 0);
    let (s, b, _) = c.post(&cohort, Some(&agg_key), &json!({})).await;
    assert_eq!((s, code(&b)), (StatusCode::FORBIDDEN, "license_not_active"));

    // Metrics carry route templates and decision codes.
    let (s, metrics, _) = c.get(&server.url("/metrics"), None).await;
    assert_eq!(s, StatusCode::OK);
    let metrics = metrics.as_str().expect("text").to_string();
    assert!(metrics.contains("tessera_http_requests_total"), "{metrics}");
    assert!(metrics.contains("route=\"/v1/releases/{family}/{version}/cohort-count\""));
    assert!(metrics.contains("decision=\"wrong_organization\""));
    assert!(!metrics.contains(&agg_key) && !metrics.contains(&format!("\"{rare_value}\"")));

    // Every refusal above is in the audit log, and so are the allowed counts with their sizes.
    let (status, printed) = server.stop();
    assert_eq!(status, Some(0), "clean exit on SIGTERM: {printed}");
    assert!(printed.contains("stopped"), "{printed}");
    let log = audit_events(&t).await;
    for reason in [
        "no_credential",
        "wrong_organization",
        "not_admin",
        "admin_cannot_query",
        "credential_expired",
        "license_not_active",
        "release_not_covered",
        "credential_revoked",
    ] {
        assert!(
            log.iter().any(|e| e.decision == format!("deny:{reason}")),
            "{reason} audited"
        );
    }
    let results: Vec<_> = log
        .iter()
        .filter(|e| {
            e.action == "cohort_count.result" && e.license.as_deref() == Some(agg_license.as_str())
        })
        .collect();
    assert_eq!(results.len(), 3, "{results:?}");
    assert_eq!(
        results[0].persons,
        Some(total),
        "persons counted are audited"
    );
    assert!(
        log.iter()
            .any(|e| e.action == "list_releases" && e.decision == "allow")
    );
    t.expect(&["audit", "verify"], 0);
    // No key appears in the audit log.
    let raw = std::fs::read(t.data_dir().join("tessera.db")).expect("db");
    let raw = String::from_utf8_lossy(&raw);
    assert!(!raw.contains(&agg_key[agg_key.len() - 64..]));
}

/// The operators' flow over HTTP: an organization, a license with a tight rate limit, its
/// signature and countersignature, activation, a key; the limit answered with 429 and
/// `Retry-After`; and governor's per-key limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_set_up_a_license_over_http_and_limits_hold() {
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let t = demo_copy();
    let server = Server::start(&t, &["--rate-limit", "2", "--burst", "15"]);
    let demo = demo_json(&t);
    let operator = demo["operator"]["api_key"]
        .as_str()
        .expect("operator key")
        .to_string();
    let c = Client::new();
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
    let signatory = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("pair");
    let public = hex_of(signatory.public_key().as_ref());

    let (s, b, _) = c
        .post(
            &server.url("/v1/admin/organizations"),
            Some(&operator),
            &json!({"id": "acme", "name": "Acme Pharma", "public_key": public}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b, _) = c
        .post(
            &server.url("/v1/admin/organizations"),
            Some(&operator),
            &json!({"id": "acme", "name": "Acme again", "public_key": public}),
        )
        .await;
    assert_eq!((s, code(&b)), (StatusCode::CONFLICT, "conflict"));
    let license = json!({
        "id": "acme-1",
        "organization": "acme",
        "releases": {"demo-natural-history": "latest"},
        "tables": {"person": "all", "condition_occurrence": {"only": ["person_id", "condition_source_value"]}},
        "purpose": "research.natural_history",
        "mode": "aggregate_only",
        "output": {"min_cell_size": 11, "rounding_base": 5, "max_rows": null},
        "quota": {"queries_per_minute": 2, "queries_per_day": 100, "rows_per_day": 1000, "queries_per_month": 1000, "rows_per_month": 10000},
        "term_start": "2026-01-01T00:00:00Z",
        "term_end": "2036-01-01T00:00:00Z",
        "fees": {"flat": {"minor": 2500000, "currency": "USD"}, "per_contributing_patient": null, "patient_share_bps": 5000},
        "clauses": ["Permitted use: natural-history research.", "No re-identification or contact of individuals."],
        "status": "active"
    });
    let (s, created, _) = c
        .post(&server.url("/v1/admin/licenses"), Some(&operator), &license)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(
        created["license"]["status"], "draft",
        "a new license is a draft"
    );
    let hash = created["terms_sha256"].as_str().expect("hash").to_string();
    // A signature by another key is refused.
    let other =
        Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).expect("k").as_ref())
            .expect("p");
    let (s, b, _) = c
        .post(
            &server.url("/v1/admin/licenses/acme-1/signature"),
            Some(&operator),
            &json!({"signatory_signature": hex_of(other.sign(hash.as_bytes()).as_ref())}),
        )
        .await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::BAD_REQUEST, "invalid_request"),
        "{b}"
    );
    let (s, b, _) = c
        .post(
            &server.url("/v1/admin/licenses/acme-1/signature"),
            Some(&operator),
            &json!({"signatory_signature": hex_of(signatory.sign(hash.as_bytes()).as_ref())}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["license"]["status"], "signed");
    let (s, b, _) = c
        .post(
            &server.url("/v1/admin/licenses/acme-1/status"),
            Some(&operator),
            &json!({"status": "active"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, v, _) = c
        .get(
            &server.url("/v1/admin/licenses/acme-1/verification"),
            Some(&operator),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["valid"], true, "{v}");
    let (s, key, _) = c
        .post(
            &server.url("/v1/admin/keys"),
            Some(&operator),
            &json!({"organization": "acme", "licenses": ["acme-1"], "expires_in_days": 30}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{key}");
    let acme = key["key"].as_str().expect("key").to_string();
    let (s, keys, _) = c.get(&server.url("/v1/admin/keys"), Some(&operator)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        !keys.to_string().contains(&acme[acme.len() - 64..]),
        "keys are listed without secrets"
    );

    // The license's rate limit: two counts a minute, then 429 with Retry-After.
    let cohort = server.url("/v1/releases/demo-natural-history/latest/cohort-count");
    let body = json!({"group_by": "gender_source_value"});
    let (s, first, _) = c.post(&cohort, Some(&acme), &body).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert_eq!(first["rounding_base"], 5);
    assert!(
        first["total"].as_u64().expect("total") % 5 == 0,
        "rounded to 5"
    );
    assert_eq!(c.post(&cohort, Some(&acme), &body).await.0, StatusCode::OK);
    let (s, b, h) = c.post(&cohort, Some(&acme), &body).await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        "{b}"
    );
    let retry: u64 = h["retry-after"]
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    // A table outside the license, and a column outside its grant.
    let (s, b, _) = c
        .post(&cohort, Some(&acme), &json!({"criteria": [{"table": "measurement", "column": "measurement_source_value", "any_of": ["x"]}]}))
        .await;
    assert_eq!((s, code(&b)), (StatusCode::FORBIDDEN, "table_not_licensed"));
    let (s, b, _) = c
        .post(&cohort, Some(&acme), &json!({"criteria": [{"table": "condition_occurrence", "column": "condition_start_date", "any_of": ["2020"]}]}))
        .await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::FORBIDDEN, "column_not_licensed")
    );
    // The dictionary shows only the granted columns.
    let (_, table, _) = c
        .get(
            &server.url("/v1/releases/demo-natural-history/latest/tables/condition_occurrence"),
            Some(&acme),
        )
        .await;
    let names: Vec<&str> = table["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, vec!["person_id", "condition_source_value"]);

    // Governor: a burst of 15, then 429 per key with Retry-After, audited.
    let mut limited = None;
    for _ in 0..30 {
        let (s, b, h) = c.get(&server.url("/v1/licenses"), Some(&acme)).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((code(&b).to_string(), h.get("retry-after").is_some()));
            break;
        }
    }
    assert_eq!(limited, Some(("rate_limited".to_string(), true)));
    // Another key is not held back by it.
    assert_eq!(
        c.get(&server.url("/v1/admin/licenses"), Some(&operator))
            .await
            .0,
        StatusCode::OK
    );

    let (status, _) = server.stop();
    assert_eq!(status, Some(0));
    t.expect(&["license", "verify", "--id", "acme-1"], 0);
    t.expect(&["audit", "verify"], 0);
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The OpenAPI document the server publishes is the one in docs/openapi.json (regenerate it
/// with `TESSERA_UPDATE_SNAPSHOTS=1 cargo test --test e2e http::openapi`), and schemathesis
/// finds no server error and no response that contradicts it, for an analyst and an operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_stable_and_schemathesis_finds_nothing() {
    let t = demo_copy();
    let server = Server::start(&t, &["--rate-limit", "1000", "--burst", "1000"]);
    let demo = demo_json(&t);
    let c = Client::new();
    let (s, doc, _) = c.get(&server.url("/openapi.json"), None).await;
    assert_eq!(s, StatusCode::OK);
    let snapshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let served = serde_json::to_string_pretty(&doc).expect("json") + "\n";
    if std::env::var("TESSERA_UPDATE_SNAPSHOTS").is_ok() {
        std::fs::write(&snapshot, &served).expect("write snapshot");
    }
    let stored = std::fs::read_to_string(&snapshot).unwrap_or_default();
    assert!(
        stored == served,
        "the served OpenAPI document differs from docs/openapi.json: if the change is intended, run TESSERA_UPDATE_SNAPSHOTS=1 cargo test --test e2e http::openapi and commit the file"
    );
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/v1/releases",
        "/v1/releases/{family}/{version}/cohort-count",
        "/v1/admin/licenses",
        "/healthz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p}");
    }

    let st = crate::support::venv_program(
        "TESSERA_SCHEMATHESIS_VENV",
        "venv-schemathesis",
        "bin/schemathesis",
    );
    let (analyst, _, _) = demo_org(&demo, "demo-aggregate");
    let operator = demo["operator"]["api_key"]
        .as_str()
        .expect("operator")
        .to_string();
    for (who, key) in [("analyst", analyst), ("operator", operator)] {
        let out = tokio::task::spawn_blocking({
            let st = st.clone();
            let url = server.url("/openapi.json");
            let dir = t.dir.path().to_path_buf();
            move || {
                std::process::Command::new(st)
                    .args(["run", &url])
                    .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
                    .args(["--max-examples", "25", "--workers", "2", "--phases", "examples,coverage,fuzzing"])
                    // Starting a release build is the one operation whose valid requests launch
                    // minutes of work in the background; its refusals are checked in
                    // consoles.rs instead.
                    .args(["--exclude-operation-id", "build_release"])
                    .arg("--header")
                    .arg(format!("Authorization: Bearer {key}"))
                    .env("SCHEMATHESIS_HOOKS", "")
                    .env("NO_COLOR", "1")
                    .current_dir(dir)
                    .output()
                    .expect("run schemathesis")
            }
        })
        .await
        .expect("join");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "schemathesis as {who} found problems:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (status, _) = server.stop();
    assert_eq!(status, Some(0));
    t.expect(&["audit", "verify"], 0);
}
