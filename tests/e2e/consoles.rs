//! The start page and the analyst and operator consoles in headless Chromium (Debian's, driven
//! by playwright-core: `tests/browser/consoles.mjs`), over `tessera serve` on a copy of the
//! demo, which the test suite builds from a copy of the repository's tracked files in an empty
//! folder (no `../shared`): every page renders for its role and refuses the other roles and
//! no credential; axe-core finds no serious or critical accessibility violation on any page;
//! and the main actions work, checked here through the API and Flight SQL: a key an analyst
//! revokes is refused, and after an operator suspends a license the analyst's next Flight SQL
//! query is refused. The screenshots are kept under the test artifacts (and, with
//! `TESSERA_UPDATE_SCREENSHOTS=1`, copied into `docs/images/quickstart/` for the quickstart).

use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::flight::{client, sql};
use crate::http::{Server, demo_copy, demo_json, demo_org, flight_uri};

/// Where `scripts/install-deps` put playwright-core and axe-core.
fn browser_dir() -> PathBuf {
    let dir = std::env::var("TESSERA_BROWSER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/tessera/browser")
        });
    for needed in ["node_modules/playwright-core", "node_modules/axe-core"] {
        assert!(
            dir.join(needed).exists(),
            "{} is missing: run scripts/install-deps (it installs tests/browser/package.json there)",
            dir.join(needed).display()
        );
    }
    dir
}

pub fn token_of(link: &str) -> String {
    link.split("token=")
        .nth(1)
        .expect("a sign-in link with its token")
        .split('&')
        .next()
        .unwrap_or("")
        .to_string()
}

fn copy_screenshots(from: &Path) {
    if std::env::var("TESSERA_UPDATE_SCREENSHOTS").as_deref() != Ok("1") {
        return;
    }
    let to = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/images/quickstart");
    std::fs::create_dir_all(&to).expect("docs/images/quickstart");
    for e in std::fs::read_dir(from).expect("screenshots") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy screenshot");
    }
}

/// Runs a script of `tests/browser/` (copied next to the packages `scripts/install-deps`
/// installed) with `env` and `SHOTS` set to `test-artifacts/<shots>` under the test target's
/// temporary folder; answers the JSON report it prints.
pub fn run_browser(script: &str, env: &[(&str, &str)], shots: &str) -> Value {
    let dir = browser_dir();
    let copy = dir.join(script);
    // The script and what the scripts share, next to their node_modules.
    for file in [script, "common.mjs"] {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/browser")
                .join(file),
            dir.join(file),
        )
        .expect("copy the browser script next to its node_modules");
    }
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("test-artifacts")
        .join(shots);
    let _ = std::fs::remove_dir_all(&shots);
    let out = std::process::Command::new("node")
        .arg(&copy)
        .current_dir(&dir)
        .envs(env.iter().copied())
        .env("SHOTS", &shots)
        .output()
        .expect("node (scripts/install-deps installs Node.js when it is missing)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser run {script} failed: {stderr}"
    );
    eprintln!("{script} screenshots: {}", shots.display());
    serde_json::from_slice(&out.stdout).expect("the browser run's JSON report")
}

/// No serious or critical axe-core violation on a page of a browser report.
pub fn assert_accessible(p: &Value) {
    let bad: Vec<&Value> = p["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .filter(|v| v["impact"] == "serious" || v["impact"] == "critical")
        .collect();
    assert!(
        bad.is_empty(),
        "axe on {} as {}: {bad:?}",
        p["path"],
        p["role"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_consoles_in_chromium_by_role_with_actions_and_accessibility() {
    let t = demo_copy();
    let server = Server::start(&t, &[]);
    let demo = demo_json(&t);
    // The exact aggregate-only organization (a differential-privacy license refuses the
    // cohort-size count of a saved cohort: its rows are not one per person).
    let (analyst, license, _) = demo_org(&demo, "demo-aggregate");
    let operator = demo["operator"]["api_key"]
        .as_str()
        .expect("operator key")
        .to_string();
    let patient = token_of(
        demo["patient"]["sign_in"]
            .as_str()
            .expect("patient sign-in"),
    );
    let http = reqwest::Client::new();

    // A saved cohort, so the cohorts page has a size to count.
    let r = http
        .put(server.url("/v1/cohorts/prediabetes"))
        .bearer_auth(&analyst)
        .json(&json!({"name": "prediabetes", "index": {"domain": "condition", "codes": ["15777000"]}}))
        .send()
        .await
        .expect("save a cohort");
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "{}",
        r.text().await.unwrap_or_default()
    );

    // An analyst's own keys: no key they issue reaches a license their key is not bound to,
    // and another organization's key is not theirs to revoke (nor to learn of).
    let (_, other_license, other_key_id) = demo_org(&demo, "demo-rowlevel");
    let r = http
        .post(server.url("/v1/keys"))
        .bearer_auth(&analyst)
        .json(&json!({"licenses": [other_license]}))
        .send()
        .await
        .expect("request");
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "no widening by issuing a key"
    );
    let r = http
        .delete(server.url(&format!("/v1/keys/{other_key_id}")))
        .bearer_auth(&analyst)
        .send()
        .await
        .expect("request");
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "another organization's key"
    );
    let listed: Value = http
        .get(server.url("/v1/keys"))
        .bearer_auth(&analyst)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let keys = listed["keys"].as_array().expect("keys");
    assert!(!keys.is_empty());
    assert!(
        keys.iter().all(|k| k["organization"] == "demo-aggregate"),
        "only the organization's own keys: {listed}"
    );
    let r = http
        .get(server.url("/v1/keys"))
        .bearer_auth(&operator)
        .send()
        .await
        .expect("request");
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "operators use /v1/admin/keys"
    );

    // Release builds: a bad request is refused before anything starts.
    for (body, why) in [
        (
            json!({"family": "Bad Name", "purpose": "research.natural_history", "policy": "natural-history.toml"}),
            "family",
        ),
        (
            json!({"family": "nh", "purpose": "research.natural_history", "policy": "../etc/passwd"}),
            "policy",
        ),
        (
            json!({"family": "nh", "purpose": "Not A Purpose", "policy": "natural-history.toml"}),
            "purpose",
        ),
    ] {
        let r = http
            .post(server.url("/v1/admin/releases/builds"))
            .bearer_auth(&operator)
            .json(&body)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{why}");
    }
    let builds: Value = http
        .get(server.url("/v1/admin/releases/builds"))
        .bearer_auth(&operator)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(builds["builds"], json!([]), "no build started");

    // The analyst's Flight SQL query works before the suspension.
    let uri = flight_uri(&demo);
    let mut c = client(&uri, Some(&analyst)).await;
    let q = "SELECT count(*) AS persons FROM demo_natural_history.person";
    sql(&mut c, q)
        .await
        .expect("a query under the active license");

    let report = run_browser(
        "consoles.mjs",
        &[
            ("TESSERA_URL", server.base.as_str()),
            ("ANALYST_KEY", analyst.as_str()),
            ("OPERATOR_KEY", operator.as_str()),
            ("PATIENT_KEY", patient.as_str()),
            ("SUSPEND_LICENSE", license.as_str()),
        ],
        "consoles",
    );
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-artifacts/consoles");

    // Every page rendered for its role, with no serious or critical accessibility violation.
    let pages = report["pages"].as_array().expect("pages");
    assert!(pages.len() >= 15, "{} pages visited", pages.len());
    for p in pages {
        let status = p["status"].as_u64().unwrap_or(0);
        assert!(
            status == 200 || status == 201,
            "{} as {}: {status}",
            p["path"],
            p["role"]
        );
        assert_accessible(p);
    }
    let page = |path: &str| {
        pages
            .iter()
            .find(|p| p["path"].as_str().is_some_and(|x| x.starts_with(path)))
            .unwrap_or_else(|| panic!("{path} visited"))
    };
    for link in ["/analyst", "/operator", "/me"] {
        assert!(
            page("/")["links"]
                .as_array()
                .expect("links")
                .iter()
                .any(|l| l == link),
            "the start page links {link}"
        );
    }
    assert_eq!(
        page("/analyst")["snippets"].as_array().map(Vec::len),
        Some(4),
        "ADBC, pandas, polars, DBeaver"
    );
    assert!(
        page("/analyst/releases/")["dictionaryTables"]
            .as_u64()
            .unwrap_or(0)
            >= 5,
        "the data dictionary"
    );
    let lic = page("/analyst/licenses/");
    assert!(
        lic["verification"]
            .as_str()
            .unwrap_or("")
            .contains("verify"),
        "{}",
        lic["verification"]
    );
    assert_eq!(
        lic["privacyBudget"], false,
        "an exact license has no budget"
    );
    // The differentially private license's page shows its budget (the console takes the key
    // as a bearer header too).
    let (private_key, private_license, _) = demo_org(&demo, "demo-private");
    let r = http
        .get(server.url(&format!("/analyst/licenses/{private_license}")))
        .bearer_auth(&private_key)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.expect("page");
    assert!(
        text.contains("id=\"privacy-budget\"") && text.contains("ρ left"),
        "{text}"
    );
    assert!(
        page("/operator/releases")["policies"]
            .as_array()
            .expect("policies")
            .iter()
            .any(|p| p == "natural-history.toml")
    );

    // Refusals: nobody is asked to sign in; every other role is refused.
    let refusals = report["refusals"].as_array().expect("refusals");
    assert!(refusals.len() >= 9 * 2 + 6 + 3);
    for r in refusals {
        let status = r["status"].as_u64().unwrap_or(0);
        match r["as"].as_str().unwrap_or("") {
            "nobody" => {
                assert_eq!(status, 401, "{r}");
                assert_eq!(r["signInForm"], true, "{r}");
            }
            _ => assert_eq!(status, 403, "{r}"),
        }
    }
    let actions = &report["actions"];
    assert_eq!(
        actions["patientSignIn"]["status"], 403,
        "a patient's key is refused at the console sign-in"
    );
    assert_eq!(actions["analystLanded"], "/analyst");
    assert_eq!(actions["operatorLanded"], "/operator");
    assert_eq!(actions["afterSignOut"], 401, "signing out forgets the key");
    assert!(
        actions["auditChain"]
            .as_str()
            .unwrap_or("")
            .contains("verifies")
    );
    assert!(
        actions["reconciliation"]
            .as_str()
            .unwrap_or("")
            .contains("payouts checked"),
        "{}",
        actions["reconciliation"]
    );

    // The key the analyst issued and revoked in the browser is refused.
    let issued = actions["issuedKey"].as_str().expect("issued key");
    assert!(issued.starts_with("tsk_"), "{issued}");
    assert!(
        actions["issuedKeyRowAfterRevoke"]
            .as_str()
            .unwrap_or("")
            .contains("revoked")
    );
    let r = http
        .get(server.url("/v1/licenses"))
        .bearer_auth(issued)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "credential_revoked");

    // The operator suspended the license in the browser: the analyst's next query is refused.
    assert_eq!(actions["suspendedStatus"], "suspended");
    let mut c = client(&uri, Some(&analyst)).await;
    let refused = sql(&mut c, q)
        .await
        .expect_err("refused under a suspended license");
    assert!(refused.contains("not active"), "{refused}");

    // Both actions are the API's own audited calls, by the keys that signed in.
    let operator_id = demo["operator"]["key_id"]
        .as_str()
        .expect("operator key id");
    let (_, _, analyst_id) = demo_org(&demo, "demo-aggregate");
    let log: Value = http
        .get(server.url("/v1/admin/audit?limit=1000&after=0"))
        .bearer_auth(&operator)
        .send()
        .await
        .expect("audit")
        .json()
        .await
        .expect("json");
    let entries = log.as_array().expect("entries");
    let logged = |action: &str, who: &str| {
        entries.iter().any(|e| {
            e["event"]["action"] == action
                && e["event"]["principal"] == who
                && e["event"]["decision"] == "allow"
        })
    };
    assert!(
        logged("set_license_status", operator_id),
        "the suspension is audited"
    );
    assert!(
        logged("issue_own_key", &analyst_id),
        "the key issue is audited"
    );
    assert!(
        logged("revoke_own_key", &analyst_id),
        "the revocation is audited"
    );

    for name in [
        "start-page",
        "analyst-catalog",
        "analyst-license",
        "analyst-keys",
        "operator-overview",
        "operator-licenses",
        "operator-audit",
    ] {
        let png = std::fs::read(shots.join(format!("{name}.png"))).expect("screenshot");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name}: a real screenshot"
        );
    }
    copy_screenshots(&shots);
    let (status, printed) = server.stop();
    assert_eq!(status, Some(0), "{printed}");
    for url in ["/analyst", "/operator", "/me"] {
        assert!(
            printed.contains(&format!("{}{url}", server_base(&printed))),
            "serve prints {url}: {printed}"
        );
    }
}

/// The HTTP address `tessera serve` printed.
fn server_base(printed: &str) -> String {
    printed
        .split("HTTP API on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("")
        .to_string()
}
