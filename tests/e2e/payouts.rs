//! Payouts through the real binary: the demo's invoices paid by a signed webhook, a patient's
//! earnings page (HTTP, and headless Chromium when installed, with a screenshot kept under the
//! test run's target folder), webhooks over HTTP, and the payout worker killed with SIGKILL at
//! each step and restarted, against a local HTTP server standing in for the gift-card
//! provider (the real one cannot be reached from here): it refuses a second order with an
//! external id it has seen, as the real API does, and counts orders.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tessera_catalog::Keyring;
use tessera_payouts::payout::{Choice, IdentityStatus, Preferences};
use tessera_payouts::revenue::InvoiceRequest;
use tessera_payouts::{Currency, Money, Payouts};

use crate::http::{Server, demo_copy, demo_json, demo_patient};
use crate::support::{Tessera, test_key};

/// A patient's earnings as of today.
async fn earnings_today(p: &Payouts, patient: &str) -> tessera_payouts::earnings::Earnings {
    p.earnings(
        patient,
        chrono::Utc::now().date_naive(),
        &tessera_payouts::rails::Rails::new(),
    )
    .await
    .expect("earnings")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_pays_patients_and_their_page_shows_it() {
    let t = demo_copy();
    let demo = demo_json(&t);
    let (patient, token) = demo_patient(&demo);
    let balances = t.expect(&["payouts", "balances"], 0);
    assert!(balances.contains("balanced"), "{balances}");
    let p = Payouts::connect(&t.database_url())
        .await
        .expect("payouts store");
    let e = earnings_today(&p, &patient).await;
    assert!(e.earned_minor > 0, "the demo patient earned something");
    assert!(
        e.by_license.contains_key("demo-aggregate-license"),
        "license revenue reached the patient: {:?}",
        e.by_license
    );
    assert!(
        e.by_study.contains_key("demo-quality-of-life"),
        "the survey incentive reached the patient"
    );
    let invoices = p.invoices().await.expect("invoices");
    assert!(invoices.len() == 2 && invoices.iter().all(|i| i.status == "paid"));
    // A second demo run changes no money.
    let before = p.transaction_count().await.expect("count");
    t.expect(&["demo"], 0);
    assert_eq!(p.transaction_count().await.expect("count"), before);

    let server = Server::start(&t, &[]);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = http
        .get(server.url(&format!("/me/sign-in?token={token}")))
        .send()
        .await
        .expect("sign in");
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let cookie = cookie.split(';').next().expect("pair").to_string();
    let page = http
        .get(server.url("/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(
        html.contains("Your earnings")
            && html.contains("Data license for natural history research, to demo-aggregate"),
        "licenses are named by purpose and organization"
    );
    let shown = format!(
        "${}",
        tessera_payouts::rails::decimal_text(Money::usd(e.available_minor))
    );
    assert!(
        html.contains(&shown),
        "the page shows the available balance {shown}"
    );
    assert!(html.contains("<svg") && html.contains("Identity verification"));
    // The patient's key reaches no research data, and others' keys reach no patient page.
    let (analyst, _, _) = crate::http::demo_org(&demo, "demo-aggregate");
    let r = http
        .get(server.url("/v1/releases"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("releases");
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"]["code"],
        "patient_credential"
    );
    assert_eq!(
        http.get(server.url("/v1/me/earnings"))
            .bearer_auth(&analyst)
            .send()
            .await
            .expect("me")
            .status(),
        403
    );
    assert_eq!(
        http.get(server.url("/v1/me/earnings"))
            .send()
            .await
            .expect("me")
            .status(),
        401
    );
    let j: Value = http
        .get(server.url("/v1/me/earnings"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("json");
    assert_eq!(j["available_minor"], json!(e.available_minor));
    // Changing the payout choice through the page's form (with its CSRF token).
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf")
        .to_string();
    let bad = http
        .post(server.url("/me/payout-choice"))
        .header("cookie", &cookie)
        .form(&[("csrf", "forged"), ("choice", "donation")])
        .send()
        .await
        .expect("post");
    assert_eq!(bad.status(), 403);
    let ok = http
        .post(server.url("/me/payout-choice"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("choice", "donation"),
            ("organization", "demo-epilepsy-advocates"),
            ("minimum", "10.00"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(ok.status(), 303);
    let prefs = p.preferences(&patient).await.expect("prefs");
    assert_eq!(
        prefs.choice,
        Choice::Donation {
            organization: "demo-epilepsy-advocates".into()
        }
    );
    assert_eq!(prefs.minimum_minor, 1_000);

    // A Stripe webhook over HTTP: refused unsigned, applied once when signed.
    let out = t.expect(
        &["payouts", "invoice", "--license", "demo-rowlevel-license"],
        0,
    );
    let invoice = out
        .split_whitespace()
        .nth(1)
        .expect("invoice id")
        .to_string();
    let amount = p
        .invoice(&invoice)
        .await
        .expect("read")
        .expect("invoice")
        .amount
        .minor;
    let body = serde_json::to_vec(&json!({"id": "evt_e2e_1", "type": "invoice.paid", "data": {"object": {"id": "in_e2e", "amount_paid": amount, "currency": "usd", "metadata": {"tessera_invoice": invoice}}}})).expect("json");
    let secret = Keyring::new(&test_key(), &[]).application_secret("stripe-webhook");
    let hook = server.url("/v1/webhooks/stripe");
    let r = http
        .post(&hook)
        .header("stripe-signature", "t=1,v1=00")
        .body(body.clone())
        .send()
        .await
        .expect("hook");
    assert_eq!(r.status(), 400);
    let tx = p.transaction_count().await.expect("count");
    for expected in ["applied", "duplicate"] {
        let sig =
            tessera_payouts::webhook::sign_stripe(&secret, &body, chrono::Utc::now().timestamp());
        let r = http
            .post(&hook)
            .header("stripe-signature", sig)
            .body(body.clone())
            .send()
            .await
            .expect("hook");
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.expect("json")["result"], expected);
    }
    assert_eq!(
        p.transaction_count().await.expect("count"),
        tx + 2,
        "one payment and one allocation"
    );

    // The webhook's payment reached the patient too: the page shows the balance as it is now.
    let now = earnings_today(&p, &patient).await;
    let shown = format!(
        "${}",
        tessera_payouts::rails::decimal_text(Money::usd(now.available_minor))
    );
    // The page in a real browser, when Debian's chromium is installed (scripts/install-deps).
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    match chromium {
        None => eprintln!(
            "\n*** SKIPPED: headless Chromium check of the earnings page: no /usr/bin/chromium (scripts/install-deps installs it as root) ***\n"
        ),
        Some(bin) => {
            let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-artifacts");
            std::fs::create_dir_all(&dir).expect("artifacts dir");
            let shot = dir.join("earnings-page.png");
            let _ = std::fs::remove_file(&shot);
            let profile = tempfile::tempdir().expect("profile");
            let url = server.url(&format!("/me/sign-in?token={token}"));
            let flags = [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
            ];
            let dom = std::process::Command::new(bin)
                .args(flags)
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .args(["--dump-dom", &url])
                .output()
                .expect("chromium");
            let dom = String::from_utf8_lossy(&dom.stdout);
            assert!(
                dom.contains("Your earnings") && dom.contains(&shown),
                "Chromium followed the sign-in and rendered the page"
            );
            let profile2 = tempfile::tempdir().expect("profile");
            let status = std::process::Command::new(bin)
                .args(flags)
                .arg(format!("--user-data-dir={}", profile2.path().display()))
                .arg("--window-size=900,1800")
                .arg(format!("--screenshot={}", shot.display()))
                .arg(&url)
                .status()
                .expect("chromium");
            assert!(status.success());
            let png = std::fs::read(&shot).expect("screenshot");
            assert!(
                png.starts_with(b"\x89PNG") && png.len() > 10_000,
                "a real screenshot"
            );
            eprintln!("earnings page screenshot: {}", shot.display());
        }
    }
    let (code, _) = server.stop();
    assert_eq!(code, Some(0));
}

#[derive(Default)]
struct Provider {
    orders: BTreeMap<String, Value>,
    posts: usize,
}

async fn giftcard(
    State(m): State<Arc<Mutex<Provider>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut m = m.lock().expect("lock");
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer TEST_key") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match (method.as_str(), uri.path()) {
        ("POST", "/api/v2/orders") => {
            m.posts += 1;
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            let Some(ext) = v["external_id"].as_str().map(str::to_string) else {
                return StatusCode::BAD_REQUEST.into_response();
            };
            if m.orders.contains_key(&ext) {
                return StatusCode::CONFLICT.into_response();
            }
            let o = json!({"id": format!("ORD{}", m.orders.len() + 1), "external_id": ext, "status": "EXECUTED", "rewards": [{"value": v["reward"]["value"], "delivery": {"link": "https://claim.example/x"}}]});
            m.orders.insert(ext, o.clone());
            axum::Json(json!({"order": o})).into_response()
        }
        ("GET", "/api/v2/orders") => {
            let ext = uri
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|p| p.strip_prefix("external_id="))
                .map(str::to_string);
            let orders: Vec<Value> = m
                .orders
                .values()
                .filter(|o| ext.as_ref().is_none_or(|e| o["external_id"] == json!(e)))
                .cloned()
                .collect();
            axum::Json(json!({"orders": orders})).into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_payout_worker_killed_at_each_step_settles_every_payout_once() {
    let t = Tessera::new();
    t.expect(&["init"], 0);
    let provider: Arc<Mutex<Provider>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}/api/v2", listener.local_addr().expect("addr"));
    let router = axum::Router::new()
        .fallback(giftcard)
        .with_state(provider.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let p = Payouts::connect(&t.database_url())
        .await
        .expect("payouts store");
    let worker = |failpoint: Option<&str>| {
        let mut c = t.command();
        c.args(["payouts", "run"])
            .env("TESSERA_GIFTCARD_API_BASE", &base)
            .env("TESSERA_GIFTCARD_API_KEY", "TEST_key")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(f) = failpoint {
            c.env("TESSERA_FAILPOINT", f);
        }
        c
    };
    let points = tessera_payouts::fault::POINTS;
    for (i, point) in points.iter().enumerate() {
        // One more patient with money to pay, each time.
        let patient = format!("patient-{i}");
        let inv = p
            .create_invoice(&InvoiceRequest {
                license: "lic".into(),
                organization: "o".into(),
                amount: Money::usd(10_000 + i as i64),
                patient_share_bps: 5000,
                contributors: vec![(patient.clone(), 1)],
                provider: "offline".into(),
            })
            .await
            .expect("invoice");
        p.invoice_paid(&inv.id, inv.amount).await.expect("paid");
        p.set_identity(&patient, IdentityStatus::Verified, "vs")
            .await
            .expect("identity");
        p.set_preferences(
            &patient,
            &Preferences {
                choice: Choice::GiftCard {
                    product: "VISA".into(),
                },
                currency: Currency::USD,
                minimum_minor: 500,
            },
        )
        .await
        .expect("prefs");

        let mut child = worker(Some(point)).spawn().expect("start the worker");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("failpoint") {
                    let _ = tx.send(line);
                }
            }
        });
        let reached = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the worker never reached {point}"));
        assert!(reached.contains(point));
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let _ = child.wait();
        // Restarted without the failpoint: it finishes what the killed run left.
        let out = worker(None).output().expect("run again");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let payouts = p.payouts(None).await.expect("payouts");
    assert_eq!(payouts.len(), points.len(), "one payout per patient");
    assert!(
        payouts.iter().all(|x| x.status == "posted"),
        "{:?}",
        payouts.iter().map(|x| &x.status).collect::<Vec<_>>()
    );
    let orders = provider.lock().expect("lock").orders.clone();
    assert_eq!(
        orders.len(),
        points.len(),
        "each payout ordered exactly once at the provider"
    );
    for x in &payouts {
        let o = &orders[&x.idempotency_key];
        let denomination = o["rewards"][0]["value"]["denomination"].to_string();
        assert_eq!(
            tessera_payouts::rails::parse_decimal(&denomination, Currency::USD),
            Some(x.amount)
        );
    }
    assert!(p.verify_ledger().await.expect("verify").is_empty());
    let funded: i64 = payouts.iter().map(|x| x.amount.minor).sum();
    p.fund_giftcard_provider(Money::usd(funded), "e2e-topup")
        .await
        .expect("fund");
    let out = worker(None).output().expect("run");
    assert!(out.status.success());
    let rec = t
        .command()
        .args(["payouts", "reconcile"])
        .env("TESSERA_GIFTCARD_API_BASE", &base)
        .env("TESSERA_GIFTCARD_API_KEY", "TEST_key")
        .output()
        .expect("reconcile");
    let text = String::from_utf8_lossy(&rec.stdout);
    assert_eq!(rec.status.code(), Some(0), "{text}");
    assert!(text.contains("no differences"));
}

/// What the stand-in for the gift-card provider and Stripe saw.
#[derive(Default)]
struct Offered {
    base: String,
    image_fetches: usize,
    accounts_created: usize,
    links: Vec<BTreeMap<String, String>>,
    onboarded: bool,
    refusals: Vec<String>,
}

/// The smallest PNG: a 1×1 transparent pixel.
const PIXEL: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89\0\0\0\rIDATx\x9cc\xf8\xff\xff?\0\x05\xfe\x02\xfe\xa7\x35\x81\x84\0\0\0\0IEND\xaeB`\x82";

/// A local HTTP server standing in for the gift-card provider's catalog (Tremendous-style
/// `GET /api/v2/products` with pictures and amount ranges) and for Stripe Connect's onboarding
/// (`POST /v1/accounts`, `POST /v1/account_links`, `GET /v1/accounts/{id}`, and the hosted
/// onboarding page a link leads to). The real services cannot be reached from here: it checks
/// what the real APIs require (the secret key, idempotency keys on every POST, the form fields
/// of an Express account and an onboarding link) and refuses anything else.
async fn offered(
    State(m): State<Arc<Mutex<Offered>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut m = m.lock().expect("lock");
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let form: BTreeMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let path = uri.path().to_string();
    let stripe_call = path.starts_with("/v1/");
    if stripe_call && header("authorization") != "Bearer sk_test_tessera" {
        m.refusals.push(format!("{path}: no secret key"));
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if stripe_call && method == Method::POST && header("idempotency-key").is_empty() {
        m.refusals.push(format!("{path}: no idempotency key"));
        return StatusCode::BAD_REQUEST.into_response();
    }
    let account = |onboarded: bool| {
        json!({
            "id": "acct_1TESTPATIENT",
            "object": "account",
            "type": "express",
            "charges_enabled": false,
            "details_submitted": onboarded,
            "payouts_enabled": onboarded,
            "metadata": {},
            "requirements": {
                "currently_due": if onboarded { json!([]) } else { json!(["external_account", "individual.dob.day"]) },
                "eventually_due": [],
                "past_due": [],
                "pending_verification": [],
                "errors": [],
                "alternatives": []
            }
        })
    };
    match (method.as_str(), path.as_str()) {
        ("GET", "/api/v2/products") => {
            if header("authorization") != "Bearer TEST_key" {
                return StatusCode::UNAUTHORIZED.into_response();
            }
            let base = m.base.clone();
            axum::Json(json!({"products": [
                {"id": "AMZ", "name": "Amazon.com", "category": "merchant_card", "currency_codes": ["USD"],
                 "images": [{"src": format!("{base}/img/amz.png"), "type": "logo", "content_type": "image/png"}],
                 "skus": [{"min": 5, "max": 500, "currency_code": "USD"}]},
                {"id": "TGT", "name": "Target", "category": "merchant_card", "currency_codes": ["USD"],
                 "images": [{"src": format!("{base}/img/tgt.svg"), "type": "logo"}],
                 "skus": [{"min": 25, "max": 25}, {"min": 50.0, "max": 50.0}]},
                {"id": "EURO", "name": "Only in euros", "category": "merchant_card", "currency_codes": ["EUR"], "skus": []},
                {"id": "GIVE", "name": "A charity card", "category": "charity", "currency_codes": ["USD"], "skus": []}
            ]}))
            .into_response()
        }
        ("GET", "/img/amz.png") => {
            m.image_fetches += 1;
            ([(axum::http::header::CONTENT_TYPE, "image/png")], PIXEL).into_response()
        }
        ("GET", "/img/tgt.svg") => (
            [(axum::http::header::CONTENT_TYPE, "image/svg+xml")],
            "<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>",
        )
            .into_response(),
        ("POST", "/v1/accounts") => {
            let want = [
                ("type", "express"),
                ("capabilities[transfers][requested]", "true"),
            ];
            if want
                .iter()
                .any(|(k, v)| form.get(*k).map(String::as_str) != Some(*v))
                || !form.contains_key("metadata[tessera_patient]")
                || !header("idempotency-key").starts_with("tessera-connect-")
            {
                m.refusals.push(format!("POST /v1/accounts with {form:?}"));
                return StatusCode::BAD_REQUEST.into_response();
            }
            m.accounts_created += 1;
            axum::Json(account(false)).into_response()
        }
        ("POST", "/v1/account_links") => {
            if form.get("account").map(String::as_str) != Some("acct_1TESTPATIENT")
                || form.get("type").map(String::as_str) != Some("account_onboarding")
                || !form.contains_key("refresh_url")
                || !form.contains_key("return_url")
            {
                m.refusals
                    .push(format!("POST /v1/account_links with {form:?}"));
                return StatusCode::BAD_REQUEST.into_response();
            }
            m.links.push(form);
            let url = format!("{}/onboarding/acct_1TESTPATIENT", m.base);
            axum::Json(json!({"object": "account_link", "created": 1_700_000_000, "expires_at": 1_700_000_300, "url": url}))
                .into_response()
        }
        ("GET", "/v1/accounts/acct_1TESTPATIENT") => {
            axum::Json(account(m.onboarded)).into_response()
        }
        // Stripe's hosted onboarding: the patient fills it in, and is sent back.
        ("GET", "/onboarding/acct_1TESTPATIENT") => {
            m.onboarded = true;
            let back = m
                .links
                .last()
                .and_then(|l| l.get("return_url").cloned())
                .unwrap_or_default();
            axum::response::Redirect::to(&back).into_response()
        }
        _ => {
            m.refusals.push(format!("{method} {path}"));
            StatusCode::NOT_FOUND.into_response()
        }
    }
}

/// The stand-in for the gift-card provider and Stripe, and `tessera serve` configured with it.
async fn serve_with_stand_ins(t: &Tessera) -> (Arc<Mutex<Offered>>, String, Server) {
    let state: Arc<Mutex<Offered>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    state.lock().expect("lock").base = base.clone();
    let router = axum::Router::new()
        .fallback(offered)
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let giftcard_base = format!("{base}/api/v2");
    let server = Server::start_env(
        t,
        &[],
        &[
            ("TESSERA_GIFTCARD_API_BASE", giftcard_base.as_str()),
            ("TESSERA_GIFTCARD_API_KEY", "TEST_key"),
            ("TESSERA_STRIPE_SECRET_KEY", "sk_test_tessera"),
            ("TESSERA_STRIPE_API_BASE", base.as_str()),
        ],
    );
    (state, base, server)
}

#[tokio::test(flavor = "multi_thread")]
async fn patients_choose_how_to_be_paid_from_what_is_offered() {
    let t = demo_copy();
    let demo = demo_json(&t);
    let (patient, token) = demo_patient(&demo);
    let (state, base, server) = serve_with_stand_ins(&t).await;
    let public = server.base.replace("127.0.0.1", "localhost");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = http
        .get(server.url(&format!("/me/sign-in?token={token}")))
        .send()
        .await
        .expect("sign in");
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_string();
    let page = |http: reqwest::Client, url: String, cookie: String| async move {
        let r = http
            .get(url)
            .header("cookie", cookie)
            .send()
            .await
            .expect("page");
        (r.status(), r.text().await.expect("html"))
    };
    let (status, html) = page(http.clone(), server.url("/me"), cookie.clone()).await;
    assert_eq!(status, 200);

    // The catalog: names, amounts in words, pictures served by Tessera (the provider's host
    // never appears in the page); products not sold in dollars and charity cards left out.
    for shown in [
        "Amazon.com",
        "any amount from $5.00 to $500.00",
        "Target",
        "$25.00 or $50.00",
        "src=\"/me/giftcards/AMZ/image\"",
    ] {
        assert!(html.contains(shown), "the page shows {shown:?}");
    }
    assert!(!html.contains("Only in euros") && !html.contains("A charity card"));
    assert!(
        !html.contains(&base),
        "the page links nothing of the provider's"
    );
    assert!(
        !html.contains("/me/giftcards/TGT/image"),
        "an SVG picture (which can carry script) is not shown"
    );
    // Organizations with their sentence; licenses by what they are, not their ids.
    assert!(
        html.contains("Demo Epilepsy Advocates")
            && html.contains("Supports families living with epilepsy")
    );
    assert!(
        html.contains("Data license for ") && !html.contains("License demo-aggregate-license"),
        "licenses are named by purpose and organization"
    );
    assert!(
        !html.contains("name=\"stripe_account\"") && !html.contains("name=\"product\" value=\"\""),
        "nothing is typed"
    );
    assert!(
        html.contains("value=\"direct\" disabled"),
        "direct payment waits for Stripe"
    );
    let r = http
        .get(server.url("/me/giftcards/AMZ/image"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("image");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.bytes().await.expect("bytes").as_ref(), PIXEL);
    let r = http
        .get(server.url("/me/giftcards/AMZ/image"))
        .send()
        .await
        .expect("image");
    assert_eq!(r.status(), 401, "pictures are for signed-in patients");
    assert_eq!(
        state.lock().expect("lock").image_fetches,
        1,
        "fetched once, then cached"
    );

    // Choosing: a listed card is saved; anything else is refused and changes nothing.
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf")
        .to_string();
    let p = Payouts::connect(&t.database_url()).await.expect("payouts");
    let post = |form: Vec<(&'static str, String)>| {
        let http = http.clone();
        let url = server.url("/me/payout-choice");
        let cookie = cookie.clone();
        async move {
            http.post(url)
                .header("cookie", cookie)
                .form(&form)
                .send()
                .await
                .expect("post")
                .status()
        }
    };
    let choose = |choice: &'static str, field: &'static str, value: &str| {
        vec![
            ("csrf", csrf.clone()),
            ("choice", choice.to_string()),
            (field, value.to_string()),
            ("minimum", "10.00".to_string()),
        ]
    };
    assert_eq!(post(choose("gift_card", "product", "AMZ")).await, 303);
    assert_eq!(
        p.preferences(&patient).await.expect("prefs").choice,
        Choice::GiftCard {
            product: "AMZ".into()
        }
    );
    assert_eq!(post(choose("gift_card", "product", "EURO")).await, 400);
    assert_eq!(
        post(choose("gift_card", "product", "VISA-TYPED")).await,
        400
    );
    assert_eq!(
        post(choose("direct", "stripe_account", "acct_typed")).await,
        400
    );
    assert_eq!(
        p.preferences(&patient).await.expect("prefs").choice,
        Choice::GiftCard {
            product: "AMZ".into()
        },
        "refused choices change nothing"
    );

    // Direct payment: Tessera opens an Express account and sends the patient to Stripe's
    // hosted onboarding; coming back, Stripe says the account can be paid, and direct payment
    // becomes the choice. A second visit reuses the account.
    for _ in 0..2 {
        let r = http
            .post(server.url("/me/stripe/onboard"))
            .header("cookie", &cookie)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await
            .expect("onboard");
        assert_eq!(r.status(), 303);
        assert_eq!(
            r.headers()["location"],
            format!("{base}/onboarding/acct_1TESTPATIENT").as_str()
        );
    }
    {
        let s = state.lock().expect("lock");
        assert!(s.refusals.is_empty(), "{:?}", s.refusals);
        assert_eq!(s.accounts_created, 1, "one account per patient");
        assert_eq!(s.links.len(), 2, "a fresh link each time");
        assert_eq!(
            s.links[0]["return_url"],
            format!("{public}/me/stripe/return")
        );
        assert_eq!(
            s.links[0]["refresh_url"],
            format!("{public}/me/stripe/refresh")
        );
    }
    let (_, html) = page(http.clone(), server.url("/me"), cookie.clone()).await;
    assert!(html.contains("Continue setting up direct payment with Stripe"));
    // The patient fills in Stripe's form and is sent back.
    let r = http
        .get(format!("{base}/onboarding/acct_1TESTPATIENT"))
        .send()
        .await
        .expect("onboarding");
    let back = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    assert_eq!(back, format!("{public}/me/stripe/return"));
    // Coming back from Stripe is a cross-site navigation, without the SameSite=Strict cookie:
    // the page reloads itself from Tessera's origin (then with the cookie); a second arrival
    // without a session asks to sign in.
    let r = http
        .get(server.url("/me/stripe/return"))
        .send()
        .await
        .expect("return");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["refresh"], "0; url=/me/stripe/return?again=1");
    let r = http
        .get(server.url("/me/stripe/return?again=1"))
        .send()
        .await
        .expect("return");
    assert_eq!(r.status(), 401);
    let r = http
        .get(server.url("/me/stripe/return?again=1"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("return");
    assert_eq!(r.status(), 303);
    assert_eq!(
        p.preferences(&patient).await.expect("prefs").choice,
        Choice::Direct {
            stripe_account: "acct_1TESTPATIENT".into()
        }
    );
    assert_eq!(
        p.preferences(&patient).await.expect("prefs").minimum_minor,
        1_000,
        "the patient's minimum is kept"
    );
    let (_, html) = page(http.clone(), server.url("/me"), cookie.clone()).await;
    assert!(html.contains("Your Stripe account is ready"));
    assert!(html.contains("value=\"direct\" checked"));
    assert!(!html.contains("Set up direct payment with Stripe"));
    assert!(state.lock().expect("lock").refusals.is_empty());
    let (code, log) = server.stop();
    assert_eq!(code, Some(0));
    assert!(
        !log.contains("sk_test_tessera"),
        "the secret key is never logged"
    );

    // The same in Chromium, on a fresh copy of the demo: the page passes axe-core at desktop
    // and phone widths with its pictures loaded from Tessera, a card is picked by its name,
    // and the Stripe button leads through the (stand-in) hosted onboarding and back.
    let t2 = demo_copy();
    let (state2, _, server2) = serve_with_stand_ins(&t2).await;
    let public2 = server2.base.replace("127.0.0.1", "localhost");
    let link = format!("{public2}/me/sign-in?token={token}");
    let report = crate::consoles::run_browser(
        "earnings.mjs",
        &[
            ("TESSERA_URL", public2.as_str()),
            ("SIGN_IN_LINK", link.as_str()),
        ],
        "earnings",
    );
    let pages = report["pages"].as_array().expect("pages");
    assert_eq!(pages.len(), 3);
    for p in pages {
        crate::consoles::assert_accessible(p);
        assert_ne!(
            p["overflow"],
            Value::Bool(true),
            "{} is wider than the screen",
            p["path"]
        );
        let images = p["images"].as_array().expect("images");
        assert!(
            images.iter().any(|i| i["src"] == "/me/giftcards/AMZ/image"),
            "{images:?}"
        );
        assert!(images.iter().all(|i| i["loaded"] == true), "{images:?}");
    }
    let actions = &report["actions"];
    assert_eq!(actions["cardChecked"], true, "{actions}");
    assert_eq!(actions["directChecked"], true, "{actions}");
    assert!(
        actions["stripeStatus"]
            .as_str()
            .unwrap_or("")
            .contains("ready"),
        "{actions}"
    );
    assert!(state2.lock().expect("lock").refusals.is_empty());
    let (code, _) = server2.stop();
    assert_eq!(code, Some(0));
}
