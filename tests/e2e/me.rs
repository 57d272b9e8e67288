//! The patients' web application over HTTP: invitations and e-mailed sign-in links (through a
//! real SMTP server, aiosmtpd, that receives what `tessera serve` sends), sessions (listed,
//! revoked one by one and everywhere), passkeys (Chromium's virtual authenticator), "my
//! data", the consent centre, sharing as SMART Health Links (opened by jwcrypto, an
//! independent implementation, and as Tessera's plain page), and the download of
//! everything held, checked against the FHIR files that were ingested. Every patient route
//! refuses no session, an analyst's key, an operator's key and a forged form; a second
//! patient's session sees none of the first patient's data on any route.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::Value;
use tessera_catalog::consent::ConsentState;
use tessera_catalog::model::SensitiveCategory;
use tessera_catalog::{Purpose, Scope};

use crate::http::Server;
use crate::support::{Tessera, test_key, venv_program};

/// aiosmtpd, writing each message it receives into a Maildir.
pub struct Smtp {
    child: Child,
    pub port: u16,
    pub maildir: PathBuf,
}

impl Smtp {
    pub fn start(dir: &Path) -> Smtp {
        let python = venv_program("TESSERA_PATIENTS_VENV", "venv-patients", "bin/python");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let maildir = dir.join("maildir");
        let child = Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aiosmtpd");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "aiosmtpd did not start listening"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Smtp {
            child,
            port,
            maildir,
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The messages received so far, as text.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.maildir.join(sub)) {
                for e in rd.flatten() {
                    out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    /// Waits for the `n`th message (1-based) to arrive and answers all of them.
    pub fn wait_for(&self, n: usize) -> Vec<String> {
        let start = Instant::now();
        loop {
            let m = self.messages();
            if m.len() >= n {
                return m;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no e-mail arrived ({} of {n})",
                m.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A message's text with quoted-printable soft line breaks and escapes undone.
fn unquote(text: &str) -> String {
    let joined = text.replace("=\r\n", "").replace("=\n", "");
    let b = joined.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'='
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The sign-in link in an e-mail.
pub fn link_in(message: &str) -> String {
    let text = unquote(message);
    let start = text.find("http").expect("a link in the message");
    text[start..]
        .split(|c: char| c.is_whitespace() || c == '"' || c == '<')
        .next()
        .expect("link")
        .to_string()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client")
}

/// Follows a single-use link: the confirmation page, then its form. Answers the session
/// cookie (`name=value`).
pub async fn sign_in_with(http: &reqwest::Client, server: &Server, link: &str) -> String {
    let token = link.split("token=").nth(1).expect("token").to_string();
    let path = &link[link.find("/me/sign-in").expect("path")..];
    let page = http.get(server.url(path)).send().await.expect("get link");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    assert!(
        html.contains("action=\"/me/sign-in\"") && html.contains(&token),
        "the link asks to continue, without using itself up: {html}"
    );
    let r = http
        .post(server.url("/me/sign-in"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .expect("post link");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_string();
    assert!(
        cookie.starts_with("tessera_session=")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().expect("pair").to_string()
}

async fn get(
    http: &reqwest::Client,
    server: &Server,
    path: &str,
    cookie: &str,
) -> (StatusCode, String) {
    let r = http
        .get(server.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .expect("get");
    (r.status(), r.text().await.unwrap_or_default())
}

fn csrf_of(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a CSRF token on the page")
        .to_string()
}

/// The patient-linked resources of an ingested FHIR bundle, by (type, id).
fn patient_resources(file: &Path) -> BTreeMap<(String, String), Value> {
    let b: Value = serde_json::from_slice(&std::fs::read(file).expect("fixture")).expect("json");
    b["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["resource"].clone())
        .filter(|r| {
            !matches!(
                r["resourceType"].as_str(),
                Some("Patient" | "Organization" | "Practitioner")
            )
        })
        .map(|r| {
            (
                (
                    r["resourceType"].as_str().unwrap_or("").to_string(),
                    r["id"].as_str().unwrap_or("").to_string(),
                ),
                r,
            )
        })
        .collect()
}

/// Condition displays of a file.
fn condition_names(file: &Path) -> BTreeSet<String> {
    patient_resources(file)
        .values()
        .filter(|r| r["resourceType"] == "Condition")
        .filter_map(|r| {
            r["code"]["coding"][0]["display"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

const ROUTES: [&str; 11] = [
    "/me",
    "/me/delete",
    "/me/providers",
    "/me/data",
    "/me/consent",
    "/me/share",
    "/me/download",
    "/me/download/bundle.json",
    "/me/download/summary.html",
    "/me/account",
    "/v1/me/earnings",
];

#[tokio::test(flavor = "multi_thread")]
async fn patients_sign_in_see_their_data_change_consent_and_download_it() {
    let t = Tessera::new();
    t.expect(&["init"], 0);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file_a = repo.join("fixtures/fhir/synthea-patient-1.json");
    let file_b = repo.join("fixtures/fhir/synthea-patient-2.json");
    t.ingest_json(&[&file_a, &file_b], &["--source", "clinic-a"], 0);

    // The operator invites patient A by an identifier their records carry (matched the way
    // ingest matches), and patient B by internal id.
    let a_file: Value = serde_json::from_slice(&std::fs::read(&file_a).expect("a")).expect("json");
    let a_identifier = &a_file["entry"][0]["resource"]["identifier"][0];
    let ident = format!(
        "{}|{}",
        a_identifier["system"].as_str().expect("system"),
        a_identifier["value"].as_str().expect("value")
    );
    let catalog = t.catalog().await;
    let a = catalog
        .find_patient_by_identifier(
            a_identifier["system"].as_str().expect("system"),
            a_identifier["value"].as_str().expect("value"),
        )
        .await
        .expect("lookup")
        .expect("patient A");
    let b = catalog
        .list_patients(10, 0)
        .await
        .expect("patients")
        .into_iter()
        .map(|p| p.patient_id)
        .find(|p| p != &a)
        .expect("patient B");

    // A study with a questionnaire patients answer on their pages; one the pages cannot ask
    // is refused, naming the item.
    t.expect(
        &[
            "payouts",
            "study",
            "--id",
            "epilepsy-nh",
            "--sponsor",
            "demo-epilepsy-advocates",
            "--questionnaire",
            "https://tessera.example/Questionnaire/seizure-diary",
            "--per-survey",
            "1500",
            "--survey-cap",
            "1500",
            "--patient-cap",
            "5000",
        ],
        0,
    );
    let diary = repo.join("fixtures/questionnaires/seizure-diary.json");
    t.expect(
        &[
            "study",
            "add-questionnaire",
            "--file",
            diary.to_str().expect("path"),
            "--study",
            "epilepsy-nh",
        ],
        0,
    );
    let dir = tempfile::tempdir().expect("dir");
    let bad_q = dir.path().join("bad.json");
    std::fs::write(
        &bad_q,
        r#"{"resourceType": "Questionnaire", "url": "https://example.org/q/bad", "item": [{"linkId": "photo", "text": "A photo", "type": "attachment"}]}"#,
    )
    .expect("write");
    let out = t.run(&[
        "study",
        "add-questionnaire",
        "--file",
        bad_q.to_str().expect("path"),
        "--study",
        "epilepsy-nh",
    ]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("(photo)") && err.contains("attachment"),
        "{err}"
    );
    let smtp = Smtp::start(dir.path());
    let smtp_url = smtp.url();
    let server = Server::start_env(&t, &[], &[("TESSERA_SMTP_URL", smtp_url.as_str())]);
    // The address patients reach the server at: `localhost` (passkeys take no IP address).
    let public = server.base.replace("127.0.0.1", "localhost");
    let invite_a = t.expect(
        &[
            "patients",
            "invite",
            "--identifier",
            &ident,
            "--email",
            "Ada@Example.org",
            "--public-url",
            &public,
        ],
        0,
    );
    let link_a = invite_a
        .lines()
        .find(|l| l.contains("/me/sign-in?token="))
        .expect("an invitation link")
        .trim()
        .to_string();
    t.expect(
        &[
            "patients",
            "invite",
            "--patient",
            &b,
            "--email",
            "bo@example.org",
        ],
        0,
    );
    assert!(
        t.run(&["patients", "invite", "--patient", "no-such-patient"])
            .status
            .code()
            != Some(0),
        "an unknown patient cannot be invited"
    );

    let http = client();
    let ada = sign_in_with(&http, &server, &link_a).await;
    // An invitation works once.
    let token = link_a.split("token=").nth(1).expect("token");
    let again = http
        .post(server.url("/me/sign-in"))
        .form(&[("token", token)])
        .send()
        .await
        .expect("again");
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);

    // E-mailed links: an unknown address is answered as a known one, and is sent nothing.
    let mut answers = Vec::new();
    for email in ["nobody@example.org", "bo@example.org"] {
        let r = http
            .post(server.url("/me/sign-in/email"))
            .form(&[("email", email)])
            .send()
            .await
            .expect("ask for a link");
        assert_eq!(r.status(), StatusCode::OK);
        answers.push(r.text().await.expect("html"));
    }
    assert_eq!(answers[0], answers[1], "the same answer for every address");
    let mail = smtp.wait_for(1);
    std::thread::sleep(Duration::from_millis(500));
    let mail = if smtp.messages().len() > mail.len() {
        smtp.messages()
    } else {
        mail
    };
    assert_eq!(mail.len(), 1, "one message: none for the unknown address");
    assert!(
        mail[0].contains("bo@example.org")
            && mail[0].contains("Subject: Your Tessera sign-in link")
    );
    let link_b = link_in(&mail[0]);
    assert!(link_b.starts_with(&public), "{link_b} points at the server");
    let bo = sign_in_with(&http, &server, &link_b).await;

    // Every patient route: no session, another role's key and a forged form are refused.
    let signer = dir.path().join("acme.pk8");
    let public_key = t
        .expect(
            &["org", "keygen", "--out", signer.to_str().expect("path")],
            0,
        )
        .trim()
        .to_string();
    t.expect(
        &[
            "org",
            "add",
            "--id",
            "acme",
            "--name",
            "Acme Pharma",
            "--public-key",
            &public_key,
        ],
        0,
    );
    // An analyst of the organization (a key bound to no license is still an analyst's).
    let (_, analyst) = t.issue_key(&["--org", "acme"]);
    let (_, operator) = t.issue_key(&["--admin"]);
    for path in ROUTES {
        let none = http.get(server.url(path)).send().await.expect("get");
        assert_eq!(
            none.status(),
            StatusCode::UNAUTHORIZED,
            "{path} without a session"
        );
        for key in [&analyst, &operator] {
            let r = http
                .get(server.url(path))
                .bearer_auth(key)
                .header("cookie", &ada)
                .send()
                .await
                .expect("get");
            assert_eq!(
                r.status(),
                StatusCode::FORBIDDEN,
                "{path} with another role's key"
            );
        }
    }
    for (path, form) in [
        (
            "/me/consent",
            vec![
                ("purpose", "research.natural_history"),
                ("action", "revoke"),
            ],
        ),
        ("/me/account/sessions", vec![("session", "all")]),
        ("/me/account/act-for", vec![("patient", b.as_str())]),
        ("/me/account/email", vec![("email", "x@example.org")]),
        (
            "/me/payout-choice",
            vec![("choice", "accumulate"), ("minimum", "10.00")],
        ),
        ("/me/sign-out", vec![]),
        ("/me/share", vec![("label", "x"), ("kind", "all")]),
        ("/me/share/revoke", vec![("share", "x")]),
        (
            "/me/delete",
            vec![("understand", "yes"), ("confirm", "DELETE")],
        ),
        ("/me/stripe/onboard", vec![]),
        ("/me/identity/start", vec![]),
        ("/me/providers/connect", vec![("endpoint", "ep-1/org-1")]),
        ("/me/providers/requests", vec![("provider_name", "Clinic")]),
    ] {
        let r = http
            .post(server.url(path))
            .form(&form)
            .send()
            .await
            .expect("post");
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{path} without a session"
        );
        let mut forged = form.clone();
        forged.push(("csrf", "forged"));
        let r = http
            .post(server.url(path))
            .header("cookie", &ada)
            .form(&forged)
            .send()
            .await
            .expect("post");
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "{path} with a forged form"
        );
    }

    // My data: A's conditions, where they came from; none of B's.
    let a_only: Vec<String> = condition_names(&file_a)
        .difference(&condition_names(&file_b))
        .cloned()
        .collect();
    let b_only: Vec<String> = condition_names(&file_b)
        .difference(&condition_names(&file_a))
        .cloned()
        .collect();
    assert!(!a_only.is_empty() && !b_only.is_empty());
    let (status, data) = get(&http, &server, "/me/data", &ada).await;
    assert_eq!(status, StatusCode::OK);
    for c in &a_only {
        assert!(
            data.contains(&c.replace('\'', "&#39;")),
            "A's condition {c} shown"
        );
    }
    assert!(data.contains("clinic-a"), "the source is named");
    assert!(data.contains("<svg"), "measurements over time are plotted");
    // B sees none of A's data on any route.
    let a_resources = patient_resources(&file_a);
    for path in ROUTES {
        let (status, body) = get(&http, &server, path, &bo).await;
        assert_eq!(status, StatusCode::OK, "{path} for B");
        for c in &a_only {
            assert!(!body.contains(c.as_str()), "{path}: B sees A's condition");
        }
        for (_, id) in a_resources.keys() {
            assert!(
                !body.contains(id.as_str()),
                "{path}: B sees A's resource {id}"
            );
        }
        assert!(!body.contains(&a), "{path}: B sees A's internal id");
    }
    let (_, bo_account) = get(&http, &server, "/me/account", &bo).await;
    let r = http
        .post(server.url("/me/account/act-for"))
        .header("cookie", &bo)
        .form(&[
            ("csrf", csrf_of(&bo_account).as_str()),
            ("patient", a.as_str()),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "B cannot act for A");

    // Surveys (B, over HTTP): conditional items appear once saved, a repeating group grows,
    // a required answer is asked for, and the completed survey credits the incentive once.
    let (status, list) = get(&http, &server, "/me/surveys", &bo).await;
    assert_eq!(status, StatusCode::OK);
    assert!(list.contains("Seizures this month") && list.contains("not started"));
    let survey = list
        .split("href=\"/me/surveys/")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the survey's link")
        .to_string();
    let form_path = format!("/me/surveys/{survey}");
    let (_, form) = get(&http, &server, &form_path, &bo).await;
    assert!(form.contains("Did you have any seizures") && !form.contains("How many seizures?"));
    let csrf_b = csrf_of(&form);
    let post = |fields: Vec<(&'static str, &'static str)>| {
        let mut f: Vec<(String, String)> = fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        f.push(("csrf".into(), csrf_b.clone()));
        http.post(server.url(&form_path))
            .header("cookie", bo.clone())
            .form(&f)
            .send()
    };
    let r = post(vec![("any", "true"), ("action", "save")])
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, form) = get(&http, &server, &form_path, &bo).await;
    assert!(
        form.contains("How many seizures?") && form.contains("Rescue medication taken (1)"),
        "the answer opened its questions"
    );
    let r = post(vec![
        ("any", "true"),
        ("rescue#count", "1"),
        ("action", "add:rescue"),
    ])
    .await
    .expect("post");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, form) = get(&http, &server, &form_path, &bo).await;
    assert!(form.contains("Rescue medication taken (2)"));
    let (_, saved) = get(&http, &server, "/me/surveys", &bo).await;
    assert!(saved.contains("saved "), "the draft is listed");
    let r = post(vec![("any", "true"), ("action", "submit")])
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body = r.text().await.expect("html");
    assert!(
        body.contains("How many seizures?: an answer is needed"),
        "{body}"
    );
    let complete = vec![
        ("any", "true"),
        ("count", "2"),
        ("worst", "2"),
        ("rescue#count", "2"),
        ("rescue#0/rescue-name", "Diazepam"),
        ("rescue#1/rescue-name", "Midazolam"),
        ("rescue#1/rescue-date", "2026-11-30"),
        ("action", "submit"),
    ];
    let r = post(complete.clone()).await.expect("post");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()["location"]
            .to_str()
            .expect("location")
            .starts_with("/me/surveys?done=")
    );
    let (_, done) = get(&http, &server, &format!("/me/surveys?done={survey}"), &bo).await;
    assert!(done.contains("Thank you") && done.contains("answered "));
    let earned = |j: &Value| j["by_study"]["epilepsy-nh"].as_i64();
    let (_, e) = get(&http, &server, "/v1/me/earnings", &bo).await;
    let e: Value = serde_json::from_str(&e).expect("earnings");
    assert_eq!(earned(&e), Some(1500), "the incentive at once: {e}");
    let r = post(complete).await.expect("post");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, e) = get(&http, &server, "/v1/me/earnings", &bo).await;
    let e: Value = serde_json::from_str(&e).expect("earnings");
    assert_eq!(earned(&e), Some(1500), "once per survey and patient");
    let (_, b_bundle) = get(&http, &server, "/me/download/bundle.json", &bo).await;
    let b_bundle: Value = serde_json::from_str(&b_bundle).expect("bundle");
    let qr = b_bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == "QuestionnaireResponse")
        .expect("the answered survey is stored like an ingested one");
    assert_eq!(
        qr["questionnaire"],
        "https://tessera.example/Questionnaire/seizure-diary|1.0"
    );
    let items = qr["item"].as_array().expect("items");
    assert_eq!(items[1]["answer"][0]["valueInteger"], 2);
    assert_eq!(items[2]["answer"][0]["valueCoding"]["code"], "severe");
    assert_eq!(items.iter().filter(|i| i["linkId"] == "rescue").count(), 2);

    // The consent centre: share for natural history without HIV and genetic records, then stop.
    let (status, page) = get(&http, &server, "/me/consent", &ada).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("takes effect at the next query"));
    let csrf = csrf_of(&page);
    let r = http
        .post(server.url("/me/consent"))
        .header("cookie", &ada)
        .form(&[
            ("csrf", csrf.as_str()),
            ("purpose", "research.natural_history"),
            ("action", "grant"),
            ("scope", "exclude"),
            ("exclude", "hiv"),
            ("exclude", "genetic"),
        ])
        .send()
        .await
        .expect("grant");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let nh = Purpose::parse("research.natural_history").expect("purpose");
    let state = catalog
        .consent_state(&a, &nh, Utc::now())
        .await
        .expect("state");
    assert_eq!(
        state.scope(),
        Some(&Scope::Excluding(
            [SensitiveCategory::Hiv, SensitiveCategory::Genetic]
                .into_iter()
                .collect()
        )),
        "{state:?}"
    );
    assert!(
        catalog
            .consented_patients(&nh, Utc::now())
            .await
            .expect("consented")
            .iter()
            .any(|(p, _)| p == &a),
        "the grant is in force at once"
    );
    let r = http
        .post(server.url("/me/consent"))
        .header("cookie", &ada)
        .form(&[
            ("csrf", csrf.as_str()),
            ("purpose", "research.natural_history"),
            ("action", "revoke"),
        ])
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(matches!(
        catalog
            .consent_state(&a, &nh, Utc::now())
            .await
            .expect("state"),
        ConsentState::Revoked { .. }
    ));
    let history = catalog.consent_history(&a).await.expect("history");
    assert_eq!(history.len(), 2);
    assert!(history.iter().all(|e| e.actor == "patient"));
    let (_, page) = get(&http, &server, "/me/consent", &ada).await;
    assert!(
        page.contains("Not shared (stopped"),
        "the page shows the revocation"
    );
    assert!(
        page.contains("all but: hiv status and treatment, genetic test results"),
        "and the history's scope"
    );

    // Download: every patient-linked resource exactly as ingested, the identity, the consents.
    let r = http
        .get(server.url("/me/download/bundle.json"))
        .header("cookie", &ada)
        .send()
        .await
        .expect("bundle");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .expect("cd")
            .starts_with("attachment")
    );
    assert_eq!(r.headers()["content-type"], "application/fhir+json");
    let bundle: Value = r.json().await.expect("json");
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "collection");
    let mut got: BTreeMap<(String, String), Value> = BTreeMap::new();
    let mut consents = Vec::new();
    let mut patients = 0;
    for e in bundle["entry"].as_array().expect("entries") {
        let r = &e["resource"];
        match r["resourceType"].as_str() {
            Some("Patient") => {
                patients += 1;
                assert_eq!(r["birthDate"], a_file["entry"][0]["resource"]["birthDate"]);
            }
            Some("Consent") => consents.push(r.clone()),
            Some(t) => {
                got.insert(
                    (t.to_string(), r["id"].as_str().unwrap_or("").to_string()),
                    r.clone(),
                );
            }
            None => panic!("an entry without a resource"),
        }
    }
    assert_eq!(patients, 1);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        a_resources.keys().collect::<Vec<_>>(),
        "every resource of A's file, and nothing else"
    );
    for (k, v) in &a_resources {
        assert_eq!(&got[k], v, "{k:?} exactly as ingested");
    }
    assert_eq!(consents.len(), 2, "the grant and the revocation");
    assert_eq!(consents[0]["status"], "inactive");
    assert_eq!(consents[1]["provision"]["type"], "deny");
    let (status, summary) = get(&http, &server, "/me/download/summary.html", &ada).await;
    assert_eq!(status, StatusCode::OK);
    assert!(summary.contains("<details open>") && summary.contains(a_only[0].as_str()));

    // Sharing: a SMART Health Link with a passcode, opened by an independent implementation
    // (jwcrypto) as a viewer would, and as Tessera's plain page; every use shown to A.
    let (_, page) = get(&http, &server, "/me/share", &ada).await;
    let r = http
        .post(server.url("/me/share"))
        .header("cookie", &ada)
        .form(&[
            ("csrf", csrf_of(&page).as_str()),
            ("label", "For Dr. Rivera"),
            ("kind", "all"),
            ("identity", "yes"),
            ("days", "30"),
            ("passcode", "4321"),
        ])
        .send()
        .await
        .expect("share");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, page) = get(&http, &server, "/me/share", &ada).await;
    let shlink = page
        .split("<code class=\"shlink\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .expect("the share's link")
        .to_string();
    let viewer = page
        .split("/s/")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the viewer page")
        .to_string();
    let python = venv_program("TESSERA_PATIENTS_VENV", "venv-patients", "bin/python");
    let script = repo.join("tests/python/shl_open.py");
    let open = |args: &[&str]| -> Value {
        let out = Command::new(&python)
            .arg(&script)
            .args(args)
            .output()
            .expect("run shl_open.py");
        assert!(
            out.status.success(),
            "shl_open.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("report")
    };
    let report = open(&[&shlink, "Dr. Rivera", "4321", "--wrong", "0000"]);
    assert_eq!(report["payload"]["flag"], "P", "{report}");
    assert_eq!(report["payload"]["label"], "For Dr. Rivera");
    assert_eq!(report["payload"]["v"], 1);
    assert_eq!(report["key_bytes"], 32);
    assert!(report["payload"]["exp"].as_i64().unwrap_or(0) > Utc::now().timestamp() + 29 * 86_400);
    assert_eq!(report["wrong"]["status"], 401);
    assert_eq!(report["wrong"]["body"]["remainingAttempts"], 9);
    assert_eq!(report["status"], 200, "{report}");
    assert_eq!(report["via"], "location");
    assert_eq!(report["fileContentType"], "application/jose");
    assert_eq!(report["header"]["alg"], "dir");
    assert_eq!(report["header"]["enc"], "A256GCM");
    let shared: BTreeSet<(String, String)> = report["bundle"]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap_or("").to_string(),
                p[1].as_str().unwrap_or("").to_string(),
            )
        })
        .filter(|(t, _)| t != "Patient")
        .collect();
    assert_eq!(
        shared,
        a_resources.keys().cloned().collect::<BTreeSet<_>>(),
        "the share holds A's records (and no consent events)"
    );
    let embedded = open(&[&shlink, "Dr. Rivera", "4321", "--embedded"]);
    assert_eq!(embedded["via"], "embedded", "{embedded}");
    // Tessera's plain page: a wrong passcode, then the right one.
    let r = http
        .post(server.url(&format!("/s/{viewer}")))
        .form(&[("recipient", "Nurse Joy"), ("passcode", "9999")])
        .send()
        .await
        .expect("viewer");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http
        .post(server.url(&format!("/s/{viewer}")))
        .form(&[("recipient", "Nurse Joy"), ("passcode", "4321")])
        .send()
        .await
        .expect("viewer");
    assert_eq!(r.status(), StatusCode::OK);
    let shown = r.text().await.expect("html");
    assert!(
        shown.contains(a_only[0].as_str()),
        "the page shows A's data"
    );
    // B cannot see or stop A's share.
    let (_, b_page) = get(&http, &server, "/me/share", &bo).await;
    assert!(
        !b_page.contains(&viewer) && !b_page.contains("shlink:/"),
        "B sees no share of A"
    );
    let r = http
        .post(server.url("/me/share/revoke"))
        .header("cookie", &bo)
        .form(&[
            ("csrf", csrf_of(&b_page).as_str()),
            ("share", viewer.as_str()),
        ])
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, page) = get(&http, &server, "/me/share", &ada).await;
    assert!(page.contains("works until"), "B's request stopped nothing");
    for seen in [
        "Dr. Rivera",
        "Nurse Joy",
        "wrong passcode",
        "opened in a health app",
        "opened the page",
    ] {
        assert!(page.contains(seen), "A sees the use: {seen}");
    }
    // A stops the share: the manifest and the page refuse it.
    let r = http
        .post(server.url("/me/share/revoke"))
        .header("cookie", &ada)
        .form(&[
            ("csrf", csrf_of(&page).as_str()),
            ("share", viewer.as_str()),
        ])
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let after = open(&[&shlink, "Dr. Rivera", "4321"]);
    assert_eq!(after["status"], 404, "{after}");
    let r = http
        .post(server.url(&format!("/s/{viewer}")))
        .form(&[("recipient", "Nurse Joy"), ("passcode", "4321")])
        .send()
        .await
        .expect("viewer");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Sessions: a second sign-in of A, listed on the account page, signed out from there.
    let ask = http
        .post(server.url("/me/sign-in/email"))
        .form(&[("email", "ada@example.org")])
        .send()
        .await
        .expect("ask");
    assert_eq!(ask.status(), StatusCode::OK);
    let mail = smtp.wait_for(2);
    let newest = mail
        .iter()
        .find(|m| m.contains("ada@example.org"))
        .expect("A's message");
    let ada2 = sign_in_with(&http, &server, &link_in(newest)).await;
    let (status, account) = get(&http, &server, "/me/account", &ada2).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        account.contains("ada@example.org"),
        "the address is shown, normalized"
    );
    assert!(account.contains("invitation link") && account.contains("e-mailed link"));
    let other = account
        .split("name=\"session\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the other session's sign-out button")
        .to_string();
    assert_ne!(other, "all");
    let r = http
        .post(server.url("/me/account/sessions"))
        .header("cookie", &ada2)
        .form(&[
            ("csrf", csrf_of(&account).as_str()),
            ("session", other.as_str()),
        ])
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (status, _) = get(&http, &server, "/me/data", &ada).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the revoked session is over"
    );
    let (status, _) = get(&http, &server, "/me/data", &ada2).await;
    assert_eq!(status, StatusCode::OK, "the other session goes on");
    // Sign out everywhere.
    let r = http
        .post(server.url("/me/account/sessions"))
        .header("cookie", &ada2)
        .form(&[("csrf", csrf_of(&account).as_str()), ("session", "all")])
        .send()
        .await
        .expect("all");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (status, _) = get(&http, &server, "/me/data", &ada2).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The same in Chromium: sign in with an e-mailed link, every page (axe-core, screenshots,
    // desktop and phone), the consent centre's buttons, the download link, sign-out.
    let ask = http
        .post(server.url("/me/sign-in/email"))
        .form(&[("email", "ada@example.org")])
        .send()
        .await
        .expect("ask");
    assert_eq!(ask.status(), StatusCode::OK);
    let mail = smtp.wait_for(3);
    let used = [link_in(newest)];
    let fresh = mail
        .iter()
        .filter(|m| m.contains("ada@example.org"))
        .map(|m| link_in(m))
        .find(|l| !used.contains(l))
        .expect("a fresh link for A");
    let report = crate::consoles::run_browser(
        "patients.mjs",
        &[
            ("TESSERA_URL", public.as_str()),
            ("SIGN_IN_LINK", fresh.as_str()),
        ],
        "patients",
    );
    let pages = report["pages"].as_array().expect("pages");
    assert!(pages.len() >= 11, "{} pages visited", pages.len());
    for p in pages {
        crate::consoles::assert_accessible(p);
        assert_ne!(
            p["overflow"],
            Value::Bool(true),
            "{} is wider than a phone",
            p["path"]
        );
    }
    let statuses: Vec<(String, u64)> = pages
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap_or("").to_string(),
                p["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(statuses[0], ("/me/sign-in".to_string(), 200));
    assert_eq!(
        statuses[1],
        ("/me/data".to_string(), 401),
        "a page asks to sign in"
    );
    assert!(
        statuses[2..].iter().all(|(_, s)| *s == 200),
        "every page renders once signed in: {statuses:?}"
    );
    let actions = &report["actions"];
    assert_eq!(actions["signedIn"], "/me");
    assert!(
        actions["afterShare"]
            .as_str()
            .unwrap_or("")
            .starts_with("Shared"),
        "{actions}"
    );
    assert!(
        actions["afterStop"]
            .as_str()
            .unwrap_or("")
            .starts_with("Not shared (stopped"),
        "{actions}"
    );
    assert_eq!(actions["download"]["resourceType"], "Bundle");
    let types = &actions["download"]["types"];
    assert_eq!(types["Patient"], 1, "{actions}");
    assert_eq!(types["Consent"], 4, "the four consent events: {actions}");
    assert_eq!(
        types["QuestionnaireResponse"], 1,
        "the survey answered in the browser"
    );
    assert!(
        types["AuditEvent"].as_u64().unwrap_or(0) >= 2,
        "the share and its uses: {actions}"
    );
    let records: u64 = types
        .as_object()
        .expect("types")
        .iter()
        .filter(|(t, _)| {
            !["Patient", "Consent", "QuestionnaireResponse", "AuditEvent"].contains(&t.as_str())
        })
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        records,
        a_resources.len() as u64,
        "every ingested resource: {actions}"
    );
    assert_eq!(
        actions["surveyBefore"], 0,
        "a conditional item waits for its answer"
    );
    assert_eq!(actions["surveyAfterSave"], 1, "and appears once saved");
    assert!(
        actions["surveyDone"]
            .as_str()
            .unwrap_or("")
            .contains("Thank you"),
        "{actions}"
    );
    let earnings_text = actions["earningsAfterSurvey"].as_str().unwrap_or("");
    assert!(
        earnings_text.contains("epilepsy-nh") && earnings_text.contains("$15.00"),
        "the incentive shows on the earnings page: {earnings_text}"
    );
    assert_eq!(
        actions["passkeysListed"], 1,
        "a passkey was added: {actions}"
    );
    assert_eq!(actions["passkeySignIn"], "/me", "and signs in: {actions}");
    assert!(
        actions["accountAfterPasskey"]
            .as_str()
            .unwrap_or("")
            .contains("passkey"),
        "the account page lists the passkey session: {actions}"
    );
    assert_eq!(actions["afterSignOut"], 401);
    let history = catalog.consent_history(&a).await.expect("history");
    assert!(
        history.len() >= 4,
        "the browser's share and stop joined the history, which the deletion keeps"
    );
    let mut latest: BTreeMap<&str, &tessera_catalog::ConsentRow> = BTreeMap::new();
    for e in &history {
        if latest.get(e.purpose.as_str()).is_none_or(|l| l.seq < e.seq) {
            latest.insert(&e.purpose, e);
        }
    }
    assert!(
        latest.values().all(|e| e.action == "revoke"),
        "after the deletion no purpose is granted: {history:?}"
    );

    // The deletion, made in the browser: A is gone (identity, records, account), the $15.00
    // survey incentive A had not been paid is kept as unclaimed funds, and the books balance.
    let deleted = actions["deleted"].as_str().unwrap_or("");
    assert!(
        deleted.contains("has been deleted") && deleted.contains("$15.00"),
        "{deleted}"
    );
    assert_eq!(
        actions["afterDelete"], 401,
        "the session ended with the data"
    );
    let (_, by) = catalog
        .deletion_of(&a)
        .await
        .expect("deletion")
        .expect("A is deleted");
    assert_eq!(by, "patient");
    assert!(catalog.own_identity(&a).await.is_err());
    assert!(catalog.own_data(&a).await.is_err());
    assert_eq!(
        catalog.count_patients().await.expect("count"),
        1,
        "B remains"
    );
    let (status, _) = get(&http, &server, "/me/data", &ada).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let payouts = tessera_payouts::Payouts::connect(&t.database_url())
        .await
        .expect("payouts");
    assert_eq!(
        payouts
            .balance(&tessera_payouts::closure::unclaimed_account(
                &a,
                tessera_payouts::Currency::USD
            ))
            .await
            .expect("balance"),
        1_500
    );
    assert!(payouts.verify_ledger().await.expect("verify").is_empty());

    let (code, _) = server.stop();
    assert_eq!(code, Some(0));
}

/// The `person_id`s of a release version's person table, read here from the Parquet file.
fn released_persons(dir: &Path) -> BTreeSet<String> {
    use polars::prelude::*;
    let df = ParquetReader::new(std::fs::File::open(dir.join("person.parquet")).expect("parquet"))
        .finish()
        .expect("read");
    df.column("person_id")
        .expect("person_id")
        .str()
        .expect("text")
        .iter()
        .flatten()
        .map(str::to_string)
        .collect()
}

/// A copy of a SQLite database as it stands (`VACUUM INTO`): a backup.
async fn backup(from: &Path, to: &Path) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", from.display()))
        .await
        .expect("open for backup");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "VACUUM INTO '{}'",
        to.display()
    )))
    .execute(&pool)
    .await
    .expect("backup");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_patient_leaves_queries_releases_and_backups_at_once() {
    use tessera_catalog::{Catalog, Keyring};
    use tessera_licensing::gate::Gate;
    use tessera_licensing::store::LicensingStore;
    use tessera_query::{Limits, QueryService};

    let t = crate::http::demo_copy();
    let demo = crate::http::demo_json(&t);
    let patient = demo["patient"]["patient_id"]
        .as_str()
        .expect("the demo patient")
        .to_string();
    let operator_link = demo["patient"]["sign_in"]
        .as_str()
        .expect("the demo patient's link")
        .to_string();
    let url = t.database_url();
    let catalog = t.catalog().await;
    let family = "demo-natural-history";
    let pseudonym = catalog.release_pseudonym(family, &patient);
    assert!(
        crate::http::persons_by("person", "person_id").contains_key(&pseudonym),
        "the demo patient is in the demo release"
    );
    let store = LicensingStore::connect(&url).await.expect("store");
    let pepper = Keyring::new(&test_key(), &[])
        .application_secret("api-key-pepper")
        .to_vec();
    let gate = Gate::new(store.clone(), pepper);
    let service = QueryService::new(catalog.clone(), gate.clone(), Limits::default());
    let (row_key, _, _) = crate::http::demo_org(&demo, "demo-rowlevel");
    let row = gate.credential(Some(&row_key)).await.expect("lookup");
    let count_one = format!("SELECT count(*) FROM person WHERE person_id = '{pseudonym}'");
    let count = |o: tessera_query::QueryOutput| crate::query::single_count(&o);
    assert_eq!(
        count(
            service
                .query(row.as_ref(), None, &count_one)
                .await
                .expect("query")
        ),
        1
    );

    // Backups taken before the deletion: the data, and the key vault as it was then.
    let backups = tempfile::tempdir().expect("dir");
    let data = t.data_dir();
    backup(&data.join("tessera.db"), &backups.path().join("tessera.db")).await;
    backup(
        &data.join("tessera.keys.db"),
        &backups.path().join("old-vault.db"),
    )
    .await;
    sqlx::any::install_default_drivers();
    let vault = sqlx::AnyPool::connect(&format!(
        "sqlite://{}",
        data.join("tessera.keys.db").display()
    ))
    .await
    .expect("vault");
    let wrapped: Vec<u8> =
        sqlx::query_scalar("SELECT wrapped FROM patient_data_keys WHERE patient_id = $1")
            .bind(&patient)
            .fetch_one(&vault)
            .await
            .expect("the demo patient has a data key");
    vault.close().await;
    let payouts = tessera_payouts::Payouts::connect(&url)
        .await
        .expect("payouts");
    let standing = payouts.standing(&patient).await.expect("standing");
    let unpaid: i64 = standing.available.iter().map(|m| m.minor).sum();
    assert!(unpaid > 0, "the demo patient has earnings not yet paid");
    let patients_before = catalog.count_patients().await.expect("count");

    // The patient signs in and deletes: the page says what goes and what stays; a form without
    // the confirmation deletes nothing.
    let server = Server::start(&t, &[]);
    let http = client();
    let token = operator_link.split("token=").nth(1).expect("token");
    let r = http
        .get(server.url(&format!("/me/sign-in?token={token}")))
        .send()
        .await
        .expect("sign in");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_string();
    let (status, page) = get(&http, &server, "/me/delete", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    for said in [
        "What is deleted",
        "What is kept, and why",
        "Money not yet paid",
        "consent history",
        "Payment records",
    ] {
        assert!(page.contains(said), "the page says {said:?}");
    }
    let csrf = csrf_of(&page);
    let r = http
        .post(server.url("/me/delete"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("understand", "yes"),
            ("confirm", "delete"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        catalog.own_identity(&patient).await.is_ok(),
        "nothing deleted"
    );
    let r = http
        .post(server.url("/me/delete"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("understand", "yes"),
            ("confirm", "DELETE"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    let done = r.text().await.expect("html");
    assert!(done.contains("has been deleted"), "{done}");

    // Gone from live queries at once, and from the identified store.
    assert_eq!(
        count(
            service
                .query(row.as_ref(), None, &count_one)
                .await
                .expect("query")
        ),
        0,
        "a deleted patient vanishes from the next query"
    );
    assert!(catalog.own_identity(&patient).await.is_err());
    assert_eq!(
        catalog.count_patients().await.expect("count"),
        patients_before - 1
    );
    let (status, _) = get(&http, &server, "/me", &cookie).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the session ended");
    let r = http
        .get(server.url(&format!("/me/sign-in?token={token}")))
        .send()
        .await
        .expect("sign in");
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "the operator's link was revoked with the data"
    );
    let (code, log) = server.stop();
    assert_eq!(code, Some(0));
    assert!(!log.contains(&operator_link));

    // From the next release: built after the deletion, without the patient.
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/natural-history.toml");
    t.expect(
        &[
            "release",
            "build",
            "--family",
            family,
            "--purpose",
            "research.natural_history",
            "--policy",
            policy.to_str().expect("path"),
        ],
        0,
    );
    let v2 = catalog.release(family, 2).await.expect("version 2");
    let persons = released_persons(Path::new(&v2.path));
    assert!(!persons.is_empty());
    assert!(
        !persons.contains(&pseudonym),
        "the next release leaves the deleted patient out"
    );
    assert!(
        !catalog
            .release_contributors(family, 2)
            .await
            .expect("contributors")
            .contains(&patient)
    );

    // Crypto-shredding: the data backup from before the deletion, opened with the key vault
    // as it is now, does not give the patient's data back (another patient's still opens);
    // the destroyed key's bytes are in no file of the live vault.
    let old = Catalog::open_with_vault(
        &format!(
            "sqlite://{}?mode=rwc",
            backups.path().join("tessera.db").display()
        ),
        &format!(
            "sqlite://{}?mode=rwc",
            data.join("tessera.keys.db").display()
        ),
        Keyring::new(&test_key(), &[]),
    )
    .await
    .expect("the backup opens");
    let err = old.own_data(&patient).await.expect_err("shredded");
    assert!(err.to_string().contains("deleted"), "{err}");
    let other = old
        .list_patients(10, 0)
        .await
        .expect("patients")
        .into_iter()
        .map(|p| p.patient_id)
        .find(|p| p != &patient)
        .expect("another patient");
    assert!(old.own_data(&other).await.is_ok());
    for entry in std::fs::read_dir(&data).expect("data dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("tessera.keys.db") {
            let bytes = std::fs::read(&path).expect("read");
            assert!(
                !bytes
                    .windows(wrapped.len())
                    .any(|w| w == wrapped.as_slice()),
                "{name} still holds the destroyed key"
            );
        }
    }
    // (A vault backup from before the deletion still opens it: that is why the vault is kept
    // apart from the data, on a shorter retention. docs/operations.md.)
    let with_old_vault = Catalog::open_with_vault(
        &format!(
            "sqlite://{}?mode=rwc",
            backups.path().join("tessera.db").display()
        ),
        &format!(
            "sqlite://{}?mode=rwc",
            backups.path().join("old-vault.db").display()
        ),
        Keyring::new(&test_key(), &[]),
    )
    .await
    .expect("opens");
    assert!(with_old_vault.own_data(&patient).await.is_ok());

    // The books: every entry kept under the pseudonymous id, what was not paid moved to
    // unclaimed funds in a balanced transaction, and the ledger verifies.
    assert_eq!(
        payouts
            .balance(&tessera_payouts::closure::unclaimed_account(
                &patient,
                tessera_payouts::Currency::USD
            ))
            .await
            .expect("balance"),
        unpaid
    );
    assert!(payouts.verify_ledger().await.expect("verify").is_empty());
    let e = payouts
        .earnings(
            &patient,
            Utc::now().date_naive(),
            &tessera_payouts::rails::Rails::new(),
        )
        .await
        .expect("earnings");
    assert!(e.earned_minor > 0, "the history of earnings is kept");
    // The audit chain records the deletion, by the patient's account, under the pseudonym.
    let entries = store.audit_entries().await.expect("audit");
    assert!(entries.iter().any(|e| e.event.action == "patient.delete"
        && e.event.resource == format!("patient:{patient}")
        && e.event.principal.starts_with("patient-account:")));
    // Deleting again (an operator, say) finishes nothing more and says so.
    let again = t.expect(&["patients", "delete", "--patient", &patient, "--yes"], 0);
    assert!(again.contains("already deleted"), "{again}");
    let refused = t.run(&["patients", "delete", "--patient", &other]);
    assert_ne!(refused.status.code(), Some(0), "--yes is required");
}
