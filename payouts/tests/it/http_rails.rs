//! The Stripe and gift-card rails against local HTTP servers standing in for the real APIs
//! (which cannot be reached from here). The servers check what the real APIs require and
//! record every request: paths, form or JSON bodies, `Authorization`, `Idempotency-Key` and
//! `Stripe-Account` headers. They are idempotent by key as the real APIs are, and can be told
//! to lose the answer to the first payment (act, then answer 500/504), so a test can show that
//! an unknown outcome is resolved by a lookup, never by paying again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use serde_json::{Value, json};
use tessera_payouts::payout::{Choice, IdentityStatus, Preferences};
use tessera_payouts::rails::Rails;
use tessera_payouts::rails::giftcard::GiftCardProvider;
use tessera_payouts::rails::stripe::{Stripe, StripeConnect};
use tessera_payouts::revenue::InvoiceRequest;
use tessera_payouts::{Currency, Money, Payouts};

use crate::support::fresh;

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

#[derive(Debug, Default)]
struct Mock {
    seen: Vec<Seen>,
    /// Objects created, by idempotency key (Stripe) or external id (gift cards).
    by_key: BTreeMap<String, Value>,
    lose_first_payment_answer: bool,
}

type Shared = Arc<Mutex<Mock>>;

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn record(m: &mut Mock, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Seen {
    let s = Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: String::from_utf8_lossy(body).to_string(),
    };
    m.seen.push(s.clone());
    s
}

/// Decodes an `application/x-www-form-urlencoded` body (Stripe's) into pairs.
pub fn form(body: &str) -> BTreeMap<String, String> {
    fn dec(s: &str) -> String {
        let b = s.replace('+', " ");
        let bytes = b.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%'
                && i + 2 < bytes.len()
                && let Ok(v) = u8::from_str_radix(&b[i + 1..i + 3], 16)
            {
                out.push(v);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).to_string()
    }
    body.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (dec(k), dec(v)))
        .collect()
}

fn stripe_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"type": "invalid_request_error", "message": message}})),
    )
        .into_response()
}

fn invoice_json(id: &str, customer: &str, metadata: Value) -> Value {
    json!({
        "id": id, "object": "invoice", "customer": customer, "amount_due": 0, "amount_overpaid": 0, "amount_paid": 0,
        "amount_remaining": 0, "amount_shipping": 0, "attempt_count": 0, "attempted": false,
        "automatic_tax": {"enabled": false}, "collection_method": "send_invoice", "created": 1767225600,
        "currency": "usd", "default_tax_rates": [], "discounts": [], "issuer": {"type": "self"},
        "lines": {"object": "list", "data": [], "has_more": false, "url": format!("/v1/invoices/{id}/lines")},
        "livemode": false, "payment_settings": {}, "period_end": 1767225600, "period_start": 1767225600,
        "post_payment_credit_notes_amount": 0, "pre_payment_credit_notes_amount": 0, "starting_balance": 0,
        "status": "open", "status_transitions": {}, "subtotal": 0, "total": 0, "metadata": metadata
    })
}

/// Stripe's rules as far as these calls go: a secret key as a bearer token, form bodies,
/// an idempotency key on every POST Tessera sends, and no `Stripe-Account` header (the
/// platform makes transfers and invoices on its own account).
async fn stripe(
    State(m): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut m = m.lock().unwrap();
    let s = record(&mut m, &method, &uri, &headers, &body);
    if s.headers.get("authorization").map(String::as_str) != Some("Bearer sk_test_tessera") {
        return stripe_error(StatusCode::UNAUTHORIZED, "Invalid API Key provided");
    }
    if s.headers.contains_key("stripe-account") {
        return stripe_error(StatusCode::BAD_REQUEST, "unexpected Stripe-Account");
    }
    let f = form(&s.body);
    if method == Method::POST {
        if s.headers.get("content-type").map(String::as_str)
            != Some("application/x-www-form-urlencoded")
        {
            return stripe_error(StatusCode::BAD_REQUEST, "form bodies only");
        }
        let Some(key) = s.headers.get("idempotency-key").cloned() else {
            return stripe_error(
                StatusCode::BAD_REQUEST,
                "this test server requires an Idempotency-Key on every POST",
            );
        };
        if let Some(v) = m.by_key.get(&key) {
            return axum::Json(v.clone()).into_response(); // Stripe replays the first answer
        }
        let metadata: BTreeMap<String, String> = f
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("metadata[")
                    .and_then(|k| k.strip_suffix(']'))
                    .map(|k| (k.to_string(), v.clone()))
            })
            .collect();
        let n = m.by_key.len() + 1;
        let (obj, is_payment) = match s.path.as_str() {
            "/v1/customers" => (
                json!({"id": format!("cus_{n}"), "object": "customer", "created": 1767225600, "livemode": false, "name": f.get("name"), "metadata": metadata}),
                false,
            ),
            "/v1/invoices" => {
                if !f.contains_key("customer")
                    || f.get("collection_method").map(String::as_str) != Some("send_invoice")
                {
                    return stripe_error(
                        StatusCode::BAD_REQUEST,
                        "customer and collection_method=send_invoice required",
                    );
                }
                (
                    invoice_json(&format!("in_{n}"), &f["customer"], json!(metadata)),
                    false,
                )
            }
            "/v1/invoiceitems" => {
                for k in ["customer", "invoice", "amount", "currency"] {
                    if !f.contains_key(k) {
                        return stripe_error(StatusCode::BAD_REQUEST, "missing invoice item field");
                    }
                }
                (
                    json!({"id": format!("ii_{n}"), "object": "invoiceitem", "amount": f["amount"].parse::<i64>().unwrap(), "currency": f["currency"], "customer": f["customer"],
                    "date": 1767225600, "discountable": true, "livemode": false, "period": {"start": 1767225600, "end": 1767225600}, "proration": false,
                    "quantity": 1, "quantity_decimal": "1", "metadata": metadata}),
                    false,
                )
            }
            p if p.starts_with("/v1/invoices/")
                && (p.ends_with("/finalize") || p.ends_with("/send")) =>
            {
                let id = p
                    .trim_start_matches("/v1/invoices/")
                    .split('/')
                    .next()
                    .unwrap()
                    .to_string();
                (invoice_json(&id, "cus_1", json!({})), false)
            }
            "/v1/transfers" => {
                for k in [
                    "amount",
                    "currency",
                    "destination",
                    "transfer_group",
                    "metadata[tessera_payout]",
                ] {
                    if !f.contains_key(k) {
                        return stripe_error(StatusCode::BAD_REQUEST, "missing transfer field");
                    }
                }
                (
                    json!({"id": format!("tr_{n}"), "object": "transfer", "amount": f["amount"].parse::<i64>().unwrap(), "amount_reversed": 0, "created": 1767225600,
                    "currency": f["currency"], "destination": f["destination"], "livemode": false, "metadata": metadata,
                    "reversals": {"object": "list", "data": [], "has_more": false, "url": "/v1/transfers/tr/reversals"}, "reversed": false,
                    "transfer_group": f["transfer_group"]}),
                    true,
                )
            }
            _ => return stripe_error(StatusCode::NOT_FOUND, "Unrecognized request URL"),
        };
        m.by_key.insert(key, obj.clone());
        if is_payment && m.lose_first_payment_answer {
            m.lose_first_payment_answer = false;
            return stripe_error(StatusCode::INTERNAL_SERVER_ERROR, "the answer was lost");
        }
        return axum::Json(obj).into_response();
    }
    if method == Method::GET && s.path == "/v1/transfers" {
        let q = form(&s.query);
        let data: Vec<Value> = m
            .by_key
            .values()
            .filter(|v| v["object"] == "transfer")
            .filter(|v| {
                q.get("transfer_group")
                    .is_none_or(|g| v["transfer_group"] == json!(g))
            })
            .cloned()
            .collect();
        return axum::Json(
            json!({"object": "list", "data": data, "has_more": false, "url": "/v1/transfers"}),
        )
        .into_response();
    }
    stripe_error(StatusCode::NOT_FOUND, "Unrecognized request URL")
}

async fn stripe_server() -> (String, Shared) {
    let m: Shared = Arc::default();
    let url = serve(axum::Router::new().fallback(stripe).with_state(m.clone())).await;
    (format!("{url}/"), m)
}

fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 7, 1).unwrap()
}

async fn ready(p: &Payouts, patient: &str, amount: i64, choice: Choice) {
    let inv = p
        .create_invoice(&InvoiceRequest {
            license: "lic".into(),
            organization: "o".into(),
            amount: Money::usd(amount * 2),
            patient_share_bps: 5000,
            contributors: vec![(patient.into(), 1)],
            provider: "offline".into(),
        })
        .await
        .unwrap();
    p.invoice_paid(&inv.id, Money::usd(amount * 2))
        .await
        .unwrap();
    p.set_identity(patient, IdentityStatus::Verified, "vs")
        .await
        .unwrap();
    p.set_preferences(
        patient,
        &Preferences {
            choice,
            currency: Currency::USD,
            minimum_minor: 500,
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn stripe_invoicing_sends_the_calls_stripe_requires() {
    let (base, m) = stripe_server().await;
    let s = Stripe::new("sk_test_tessera", Some(&base), Duration::from_secs(5)).unwrap();
    let customer = s.create_customer("acme", "Acme Pharma").await.unwrap();
    assert_eq!(customer, "cus_1");
    let invoice = s
        .send_invoice(&customer, "inv_abc", "lic-1", Money::usd(1_234_567))
        .await
        .unwrap();
    let seen = m.lock().unwrap().seen.clone();
    let paths: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("POST", "/v1/customers"),
            ("POST", "/v1/invoices"),
            ("POST", "/v1/invoiceitems"),
            ("POST", format!("/v1/invoices/{invoice}/finalize").leak()),
            ("POST", format!("/v1/invoices/{invoice}/send").leak())
        ]
    );
    let keys: Vec<&str> = seen
        .iter()
        .map(|s| s.headers["idempotency-key"].as_str())
        .collect();
    assert_eq!(
        keys,
        vec![
            "tessera-customer-acme",
            "tessera-invoice-inv_abc-create",
            "tessera-invoice-inv_abc-item",
            "tessera-invoice-inv_abc-finalize",
            "tessera-invoice-inv_abc-send"
        ]
    );
    let item = form(&seen[2].body);
    assert_eq!(item["amount"], "1234567");
    assert_eq!(item["currency"], "usd");
    assert_eq!(item["invoice"], invoice);
    assert_eq!(item["metadata[tessera_invoice]"], "inv_abc");
    assert_eq!(form(&seen[1].body)["metadata[tessera_license]"], "lic-1");
    // Sending again (a retry after a crash) replays: Stripe answers the same objects.
    let again = s
        .send_invoice(&customer, "inv_abc", "lic-1", Money::usd(1_234_567))
        .await
        .unwrap();
    assert_eq!(again, invoice);
    assert_eq!(m.lock().unwrap().by_key.len(), 5, "nothing new was created");
}

#[tokio::test]
async fn stripe_connect_transfers_pay_once_when_the_answer_is_lost() {
    let (base, m) = stripe_server().await;
    let (p, _d) = fresh().await;
    let rail = StripeConnect {
        stripe: Stripe::new("sk_test_tessera", Some(&base), Duration::from_secs(5)).unwrap(),
    };
    let rails = Rails::new().with(Arc::new(rail));
    ready(
        &p,
        "pa",
        4_321,
        Choice::Direct {
            stripe_account: "acct_patient1".into(),
        },
    )
    .await;
    m.lock().unwrap().lose_first_payment_answer = true;
    let first = p.run_payouts(&rails, day()).await.unwrap();
    assert_eq!(
        (first.created, first.unknown, first.posted),
        (1, 1, 0),
        "a 500 leaves the outcome unknown"
    );
    let second = p.run_payouts(&rails, day()).await.unwrap();
    assert_eq!(second.posted, 1, "the lookup found the transfer");
    let po = p.payouts(Some("pa")).await.unwrap().remove(0);
    let seen = m.lock().unwrap().seen.clone();
    let posts: Vec<&Seen> = seen.iter().filter(|s| s.method == "POST").collect();
    assert_eq!(
        posts.len(),
        1,
        "one transfer request: the lookup, not a second payment, settled it"
    );
    let f = form(&posts[0].body);
    assert_eq!(
        posts[0].headers["idempotency-key"],
        format!("tessera-payout-{}", po.id)
    );
    assert_eq!(
        (
            f["amount"].as_str(),
            f["currency"].as_str(),
            f["destination"].as_str()
        ),
        ("4321", "usd", "acct_patient1")
    );
    assert_eq!(f["transfer_group"], po.id);
    assert!(!posts[0].headers.contains_key("stripe-account"));
    let lookup = seen.iter().find(|s| s.method == "GET").unwrap();
    assert_eq!(form(&lookup.query)["transfer_group"], po.id);
    assert_eq!(m.lock().unwrap().by_key.len(), 1);
    let diffs = p.reconcile(&rails).await.unwrap().differences;
    assert!(diffs.is_empty(), "{diffs:?}");
}

/// The gift-card provider's rules: a bearer API key, JSON, an `external_id` on each order
/// (a second order with one already used is refused with 409), a decimal denomination.
async fn giftcards(
    State(m): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut m = m.lock().unwrap();
    let s = record(&mut m, &method, &uri, &headers, &body);
    if s.headers.get("authorization").map(String::as_str) != Some("Bearer TEST_giftcard_key") {
        return (StatusCode::UNAUTHORIZED, "{}").into_response();
    }
    match (method.as_str(), s.path.as_str()) {
        ("GET", "/api/v2/products") => axum::Json(json!({"products": [
            {"id": "VISA_US", "name": "Visa prepaid", "category": "merchant_card", "currency_codes": ["USD"]},
            {"id": "CHARITY_EF", "name": "Epilepsy Foundation", "category": "charity", "currency_codes": ["USD"]}]})).into_response(),
        ("POST", "/api/v2/orders") => {
            let Ok(v) = serde_json::from_str::<Value>(&s.body) else { return (StatusCode::BAD_REQUEST, "{}").into_response() };
            let Some(ext) = v["external_id"].as_str().map(str::to_string) else { return (StatusCode::BAD_REQUEST, "{}").into_response() };
            if m.by_key.contains_key(&ext) {
                return (StatusCode::CONFLICT, "{\"errors\":{\"message\":\"external_id already used\"}}").into_response();
            }
            let n = m.by_key.len() + 1;
            let order = json!({"id": format!("ORD{n}"), "external_id": ext, "status": "EXECUTED",
                "rewards": [{"id": format!("RW{n}"), "value": v["reward"]["value"], "delivery": {"method": "LINK", "status": "SUCCEEDED", "link": format!("https://claim.example/RW{n}")}}]});
            m.by_key.insert(ext, order.clone());
            if m.lose_first_payment_answer {
                m.lose_first_payment_answer = false;
                return (StatusCode::GATEWAY_TIMEOUT, "").into_response();
            }
            axum::Json(json!({"order": order})).into_response()
        }
        ("GET", "/api/v2/orders") => {
            let q = form(&s.query);
            let orders: Vec<Value> = m.by_key.values().filter(|o| q.get("external_id").is_none_or(|e| o["external_id"] == json!(e))).cloned().collect();
            axum::Json(json!({"orders": orders})).into_response()
        }
        _ => (StatusCode::NOT_FOUND, "{}").into_response(),
    }
}

#[tokio::test]
async fn gift_cards_are_ordered_once_with_an_exact_amount_and_no_identity() {
    let m: Shared = Arc::default();
    let base = serve(
        axum::Router::new()
            .fallback(giftcards)
            .with_state(m.clone()),
    )
    .await;
    let provider = GiftCardProvider::new(
        &format!("{base}/api/v2"),
        "TEST_giftcard_key",
        "balance",
        Duration::from_secs(5),
    )
    .unwrap();
    let products = provider.products().await.unwrap();
    assert!(
        products.iter().any(|p| p.category == "charity"),
        "the catalog offers charities"
    );
    let rails = Rails::new().with(Arc::new(provider));
    let (p, _d) = fresh().await;
    ready(
        &p,
        "pa",
        1_234,
        Choice::GiftCard {
            product: "VISA_US".into(),
        },
    )
    .await;
    m.lock().unwrap().lose_first_payment_answer = true;
    p.run_payouts(&rails, day()).await.unwrap();
    let r = p.run_payouts(&rails, day()).await.unwrap();
    assert_eq!(r.posted, 1);
    let seen = m.lock().unwrap().seen.clone();
    let orders: Vec<&Seen> = seen.iter().filter(|s| s.method == "POST").collect();
    assert_eq!(
        orders.len(),
        1,
        "the lost answer was resolved by looking the order up"
    );
    let body = &orders[0].body;
    assert!(
        body.contains("\"denomination\":12.34"),
        "an exact decimal amount: {body}"
    );
    let v: Value = serde_json::from_str(body).unwrap();
    let po = p.payouts(Some("pa")).await.unwrap().remove(0);
    assert_eq!(v["external_id"], format!("tessera-payout-{}", po.id));
    assert_eq!(v["reward"]["products"], json!(["VISA_US"]));
    assert_eq!(v["reward"]["delivery"]["method"], "LINK");
    assert_eq!(
        v["reward"]["recipient"],
        json!({"name": "Tessera participant"}),
        "no name or e-mail of the patient"
    );
    let e = p.earnings("pa", day(), &rails).await.unwrap();
    assert_eq!(
        e.payouts[0].claim_url.as_deref(),
        Some("https://claim.example/RW1")
    );
    let diffs = p.reconcile(&rails).await.unwrap().differences;
    assert_eq!(
        diffs.iter().map(|d| d.kind.as_str()).collect::<Vec<_>>(),
        vec!["funds_overdrawn"],
        "the provider was never topped up"
    );
    p.fund_giftcard_provider(Money::usd(1_234), "topup-1")
        .await
        .unwrap();
    let diffs = p.reconcile(&rails).await.unwrap().differences;
    assert!(diffs.is_empty(), "{diffs:?}");
}
