//! Webhook signatures (checked with ring over the raw body) and handlers that change nothing
//! on a duplicate or out-of-order delivery. The event bodies are shaped as Stripe's and the
//! gift-card provider's documentation shows them, signed here with test secrets.

use serde_json::json;
use tessera_payouts::payout::IdentityStatus;
use tessera_payouts::revenue::InvoiceRequest;
use tessera_payouts::webhook::{self, Provider};
use tessera_payouts::{Account, Currency, Money};

use crate::support::fresh;

const SECRET: &[u8] = b"whsec_test_secret";

#[test]
fn stripe_signatures() {
    let body = br#"{"id":"evt_1","type":"invoice.paid"}"#;
    let now = 1_767_225_600;
    let header = webhook::sign_stripe(SECRET, body, now);
    assert!(webhook::verify_stripe(SECRET, &header, body, now).is_ok());
    assert!(webhook::verify_stripe(SECRET, &header, body, now + 299).is_ok());
    let late = webhook::verify_stripe(SECRET, &header, body, now + 301).unwrap_err();
    assert!(late.to_string().contains("tolerance 300"), "{late}");
    assert!(
        webhook::verify_stripe(b"other", &header, body, now).is_err(),
        "wrong secret"
    );
    assert!(
        webhook::verify_stripe(
            SECRET,
            &header,
            br#"{"id":"evt_2","type":"invoice.paid"}"#,
            now
        )
        .is_err(),
        "tampered body"
    );
    // Several v1 signatures (during secret rotation): any match will do.
    let other = webhook::sign_stripe(b"old", body, now);
    let both = format!("{},v1={}", header, other.split("v1=").nth(1).unwrap());
    assert!(webhook::verify_stripe(SECRET, &both, body, now).is_ok());
    assert!(
        webhook::verify_stripe(SECRET, "v1=00", body, now).is_err(),
        "no timestamp"
    );
    assert!(
        webhook::verify_stripe(SECRET, &format!("t={now}"), body, now).is_err(),
        "no signature"
    );
}

#[test]
fn gift_card_signatures() {
    let body = br#"{"event":"ORDERS.COMPLETED"}"#;
    let sig = webhook::sign_hex_hmac(SECRET, body);
    assert!(webhook::verify_hex_hmac(SECRET, &sig, body).is_ok());
    assert!(webhook::verify_hex_hmac(SECRET, &sig, b"{}").is_err());
    assert!(webhook::verify_hex_hmac(SECRET, "md5=abc", body).is_err());
}

fn invoice_paid_event(id: &str, invoice: &str, amount: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "object": "event", "type": "invoice.paid", "api_version": "2025-03-31.basil",
        "data": {"object": {"id": "in_123", "object": "invoice", "amount_paid": amount, "currency": "usd", "status": "paid",
            "metadata": {"tessera_invoice": invoice, "tessera_license": "lic-1"}}}
    }))
    .unwrap()
}

#[tokio::test]
async fn duplicate_and_repeated_payment_events_change_nothing() {
    let (p, _d) = fresh().await;
    let inv = p
        .create_invoice(&InvoiceRequest {
            license: "lic-1".into(),
            organization: "acme".into(),
            amount: Money::usd(10_000),
            patient_share_bps: 5000,
            contributors: vec![("pa".into(), 1), ("pb".into(), 1)],
            provider: "stripe".into(),
        })
        .await
        .unwrap();
    let ev = invoice_paid_event("evt_1", &inv.id, 10_000);
    let first = p.handle_stripe_event(Provider::Stripe, &ev).await.unwrap();
    assert_eq!(first.result, "applied");
    let dup = p.handle_stripe_event(Provider::Stripe, &ev).await.unwrap();
    assert_eq!(dup.result, "duplicate");
    // A different event about the same payment (payment_intent.succeeded) changes nothing either.
    let pi = serde_json::to_vec(&json!({"id": "evt_2", "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_1", "amount_received": 10_000, "currency": "usd", "metadata": {"tessera_invoice": inv.id}}}})).unwrap();
    assert_eq!(
        p.handle_stripe_event(Provider::Stripe, &pi)
            .await
            .unwrap()
            .result,
        "applied"
    );
    assert_eq!(
        p.transaction_count().await.unwrap(),
        2,
        "one payment, one allocation"
    );
    assert_eq!(
        p.balance(&Account::patient_available("pa", Currency::USD))
            .await
            .unwrap(),
        2_500
    );
    assert_eq!(p.invoice(&inv.id).await.unwrap().unwrap().status, "paid");
    // Events Tessera does not act on, and payments of invoices it never issued.
    let other = serde_json::to_vec(
        &json!({"id": "evt_3", "type": "customer.created", "data": {"object": {}}}),
    )
    .unwrap();
    assert_eq!(
        p.handle_stripe_event(Provider::Stripe, &other)
            .await
            .unwrap()
            .result,
        "ignored"
    );
    assert_eq!(
        p.handle_stripe_event(
            Provider::Stripe,
            &invoice_paid_event("evt_4", "inv_unknown", 1)
        )
        .await
        .unwrap()
        .result,
        "unmatched"
    );
    // Not JSON: a clear refusal that quotes nothing of the body.
    let err = p
        .handle_stripe_event(Provider::Stripe, b"{\"id\": \"secret-value")
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("secret-value"), "{err}");
}

#[tokio::test]
async fn identity_events_on_the_payments_endpoint_set_nothing() {
    // Identity proofing is `tessera-records`' (it verifies its own webhooks and writes the
    // status through with `set_identity`): a Stripe Identity event that reaches the payments
    // endpoint is recorded as ignored and leaves the hold as it was.
    let (p, _d) = fresh().await;
    let body = serde_json::to_vec(&json!({"id": "evt_c", "type": "identity.verification_session.verified", "data": {"object": {"id": "vs_1", "object": "identity.verification_session", "client_reference_id": "pa"}}})).unwrap();
    assert_eq!(
        p.handle_stripe_event(Provider::Stripe, &body)
            .await
            .unwrap()
            .result,
        "ignored"
    );
    assert_eq!(p.identity("pa").await.unwrap(), IdentityStatus::Unverified);
}

#[tokio::test]
async fn a_connected_account_that_stripe_enables_becomes_the_patients_choice() {
    use tessera_payouts::payout::Choice;
    let (p, _d) = fresh().await;
    p.record_connect_account("pa", "acct_1PA").await.unwrap();
    assert!(
        p.record_connect_account("pa", "not-an-account")
            .await
            .is_err()
    );
    let event = |id: &str, account: &str, enabled: bool, due: &[&str]| {
        serde_json::to_vec(&json!({
            "id": id,
            "type": "account.updated",
            "data": {"object": {
                "id": account,
                "object": "account",
                "details_submitted": true,
                "payouts_enabled": enabled,
                "requirements": {"currently_due": due}
            }}
        }))
        .unwrap()
    };
    // Submitted, Stripe still checking: the status follows, the choice does not change.
    let out = p
        .handle_stripe_event(Provider::Stripe, &event("evt_1", "acct_1PA", false, &[]))
        .await
        .unwrap();
    assert_eq!(out.result, "applied");
    assert_eq!(
        p.connect_account_of("pa").await.unwrap(),
        Some(("acct_1PA".into(), "pending".into()))
    );
    assert_eq!(
        p.preferences("pa").await.unwrap().choice,
        Choice::Accumulate
    );
    // Enabled: direct payment to it becomes the choice.
    p.handle_stripe_event(Provider::Stripe, &event("evt_2", "acct_1PA", true, &[]))
        .await
        .unwrap();
    assert_eq!(
        p.preferences("pa").await.unwrap().choice,
        Choice::Direct {
            stripe_account: "acct_1PA".into()
        }
    );
    // Restricted later (Stripe needs more): shown as such.
    p.handle_stripe_event(
        Provider::Stripe,
        &event("evt_3", "acct_1PA", true, &["individual.id_number"]),
    )
    .await
    .unwrap();
    assert_eq!(
        p.connect_account_of("pa").await.unwrap().unwrap().1,
        "restricted"
    );
    // Someone else's account: not ours.
    let out = p
        .handle_stripe_event(Provider::Stripe, &event("evt_4", "acct_other", true, &[]))
        .await
        .unwrap();
    assert_eq!(out.result, "unmatched");
}
