//! The ledger, revenue, incentives and payouts, step by step, against a real SQLite file.

use chrono::NaiveDate;
use tessera_payouts::incentives::Study;
use tessera_payouts::payout::{AdvocacyOrg, Choice, Hold, IdentityStatus, Preferences};
use tessera_payouts::revenue::InvoiceRequest;
use tessera_payouts::{
    Account, AccountKind, Currency, Entry, Money, NewTransaction, PayoutsError, Source,
};

use crate::support::{Mode, fakes, fresh, rails};

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn invoice(contributors: &[&str], amount: i64, bps: u32) -> InvoiceRequest {
    InvoiceRequest {
        license: "lic-1".into(),
        organization: "acme".into(),
        amount: Money::usd(amount),
        patient_share_bps: bps,
        contributors: contributors.iter().map(|p| (p.to_string(), 1)).collect(),
        provider: "offline".into(),
    }
}

async fn available(p: &tessera_payouts::Payouts, patient: &str) -> i64 {
    p.balance(&Account::patient_available(patient, Currency::USD))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_paid_license_fee_is_shared_to_the_cent_once() {
    let (p, _d) = fresh().await;
    let inv = p
        .create_invoice(&invoice(&["pa", "pb", "pc"], 1_000_001, 5000))
        .await
        .unwrap();
    // Nothing is recognized before the provider says it is paid.
    assert_eq!(available(&p, "pa").await, 0);
    let out = p
        .invoice_paid(&inv.id, Money::usd(1_000_001))
        .await
        .unwrap();
    assert!(out.new);
    assert_eq!(out.patient_pool, 500_000);
    assert_eq!(out.platform, 500_001);
    let parts = [
        available(&p, "pa").await,
        available(&p, "pb").await,
        available(&p, "pc").await,
    ];
    assert_eq!(
        parts.iter().sum::<i64>(),
        500_000,
        "the parts sum to the pool to the cent"
    );
    assert!(parts.iter().all(|a| *a == 166_666 || *a == 166_667));
    // A second notice of the same payment changes nothing.
    let again = p
        .invoice_paid(&inv.id, Money::usd(1_000_001))
        .await
        .unwrap();
    assert!(!again.new);
    assert_eq!(available(&p, "pa").await, parts[0]);
    assert_eq!(
        p.balance(&tessera_payouts::revenue::license_pool(
            "lic-1",
            Currency::USD
        ))
        .await
        .unwrap(),
        0
    );
    assert!(p.verify_ledger().await.unwrap().is_empty());
    // The patient's history says which license it came from.
    let e = p
        .earnings(
            "pa",
            day("2026-06-01"),
            &tessera_payouts::rails::Rails::new(),
        )
        .await
        .unwrap();
    assert_eq!(e.by_license.get("lic-1"), Some(&parts[0]));
}

#[tokio::test]
async fn a_payment_of_the_wrong_amount_recognizes_nothing() {
    let (p, _d) = fresh().await;
    let inv = p
        .create_invoice(&invoice(&["pa"], 10_000, 5000))
        .await
        .unwrap();
    let err = p
        .invoice_paid(&inv.id, Money::usd(9_999))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nothing was recognized"), "{err}");
    assert_eq!(p.transaction_count().await.unwrap(), 0);
}

#[tokio::test]
async fn survey_incentives_are_credited_once_within_the_caps() {
    let (p, _d) = fresh().await;
    p.add_study(&Study {
        id: "qol".into(),
        sponsor: "epilepsy-foundation".into(),
        questionnaires: vec![
            "https://q.example/Questionnaire/a".into(),
            "https://q.example/Questionnaire/b".into(),
            "https://q.example/Questionnaire/c".into(),
        ],
        enrollment: Money::usd(10_000),
        per_survey: Money::usd(5_000),
        survey_cap_minor: 10_000,
        patient_cap_minor: 22_000,
    })
    .await
    .unwrap();
    let first = p
        .survey_completed("pa", "https://q.example/Questionnaire/a|1.0")
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|c| c.amount.minor).sum::<i64>(),
        15_000,
        "enrollment + first survey"
    );
    for _ in 0..3 {
        let again = p
            .survey_completed("pa", "https://q.example/Questionnaire/a")
            .await
            .unwrap();
        assert!(
            again.iter().all(|c| !c.new),
            "a repeated arrival credits nothing"
        );
    }
    assert_eq!(available(&p, "pa").await, 15_000);
    p.survey_completed("pa", "https://q.example/Questionnaire/b")
        .await
        .unwrap();
    assert_eq!(available(&p, "pa").await, 20_000);
    // The patient cap (22,000) allows only 2,000 of the third survey.
    let third = p
        .survey_completed("pa", "https://q.example/Questionnaire/c")
        .await
        .unwrap();
    assert_eq!(third.last().unwrap().amount.minor, 2_000);
    assert_eq!(available(&p, "pa").await, 22_000);
    // An unrelated questionnaire credits nothing.
    assert!(
        p.survey_completed("pa", "https://q.example/Questionnaire/z")
            .await
            .unwrap()
            .is_empty()
    );
    // A per-survey amount above its cap is refused when the study is registered.
    let bad = Study {
        id: "bad".into(),
        sponsor: "s".into(),
        questionnaires: vec!["q".into()],
        enrollment: Money::usd(0),
        per_survey: Money::usd(20_000),
        survey_cap_minor: 10_000,
        patient_cap_minor: 1,
    };
    assert!(p.add_study(&bad).await.is_err());
}

#[tokio::test]
async fn balances_never_go_negative_and_refusals_write_nothing() {
    let (p, d) = fresh().await;
    let usd = Currency::USD;
    let overdraw = NewTransaction {
        key: "overdraw".into(),
        kind: "test".into(),
        source: Source::default(),
        entries: vec![
            Entry::debit(Account::patient_available("pa", usd), 100),
            Entry::credit(
                Account::new(AccountKind::RailClearing, "giftcard", usd),
                100,
            ),
        ],
        reverses: None,
    };
    let err = p.post(&overdraw).await.unwrap_err();
    assert!(matches!(err, PayoutsError::InsufficientFunds(_)), "{err}");
    assert_eq!(
        p.transaction_count().await.unwrap(),
        0,
        "no half-posted transaction"
    );
    assert!(p.balances().await.unwrap().iter().all(|b| b.balance == 0));
    // The database itself refuses rewriting history.
    let inv = p
        .create_invoice(&invoice(&["pa"], 10_000, 5000))
        .await
        .unwrap();
    p.invoice_paid(&inv.id, Money::usd(10_000)).await.unwrap();
    use sqlx::Connection;
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", d.path().join("t.db").display()))
            .await
            .unwrap();
    for sql in [
        "UPDATE ledger_entries SET amount = amount + 1",
        "DELETE FROM ledger_transactions",
    ] {
        let err = sqlx::query(sql).execute(&mut conn).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
}

#[tokio::test]
async fn keys_are_idempotent_and_reuse_with_other_entries_is_refused() {
    let (p, _d) = fresh().await;
    let usd = Currency::USD;
    let t = |amount| NewTransaction {
        key: "k1".into(),
        kind: "test".into(),
        source: Source::default(),
        entries: vec![
            Entry::debit(
                Account::new(AccountKind::ProviderFunds, "stripe", usd),
                amount,
            ),
            Entry::credit(
                Account::new(AccountKind::PlatformRevenue, "platform", usd),
                amount,
            ),
        ],
        reverses: None,
    };
    let a = p.post(&t(100)).await.unwrap();
    let b = p.post(&t(100)).await.unwrap();
    assert!(a.is_new() && !b.is_new());
    assert_eq!(a.id(), b.id());
    assert!(matches!(
        p.post(&t(200)).await,
        Err(PayoutsError::KeyReused(_))
    ));
    // A correction is a reversing transaction, once.
    let r1 = p.reverse(a.id()).await.unwrap();
    let r2 = p.reverse(a.id()).await.unwrap();
    assert!(r1.is_new() && !r2.is_new());
    assert_eq!(
        p.balance(&Account::new(AccountKind::PlatformRevenue, "platform", usd))
            .await
            .unwrap(),
        0
    );
    assert_eq!(p.transaction_count().await.unwrap(), 2);
}

async fn funded_patient(p: &tessera_payouts::Payouts, patient: &str, amount: i64) {
    let inv = p
        .create_invoice(&invoice(&[patient], amount * 2, 5000))
        .await
        .unwrap();
    p.invoice_paid(&inv.id, Money::usd(amount * 2))
        .await
        .unwrap();
}

#[tokio::test]
async fn payouts_wait_for_identity_and_the_tax_form() {
    let (p, _d) = fresh().await;
    let (gift, stripe) = fakes();
    let rails = rails(&gift, &stripe);
    funded_patient(&p, "pa", 150_000).await;
    p.set_preferences(
        "pa",
        &Preferences {
            choice: Choice::GiftCard {
                product: "amazon-us".into(),
            },
            currency: Currency::USD,
            minimum_minor: 2_500,
        },
    )
    .await
    .unwrap();
    let holds = p.holds("pa", day("2026-03-01"), &rails).await.unwrap();
    assert_eq!(
        holds,
        vec![Hold::IdentityNotVerified {
            status: IdentityStatus::Unverified
        }]
    );
    assert_eq!(
        p.run_payouts(&rails, day("2026-03-01"))
            .await
            .unwrap()
            .created,
        0
    );
    p.set_identity("pa", IdentityStatus::Verified, "vs_1")
        .await
        .unwrap();
    // $1,500 is under 2026's $2,000 threshold, but it would have crossed 2025's $600.
    assert!(
        p.holds("pa", day("2026-03-01"), &rails)
            .await
            .unwrap()
            .is_empty()
    );
    let held_2025 = p.holds("pa", day("2025-12-31"), &rails).await.unwrap();
    assert!(
        matches!(
            held_2025.as_slice(),
            [Hold::TaxFormRequired {
                threshold: 60_000,
                ..
            }]
        ),
        "{held_2025:?}"
    );
    assert!(held_2025[0].message().contains("W-9"));
    let run = p.run_payouts(&rails, day("2026-03-01")).await.unwrap();
    assert_eq!((run.created, run.posted), (1, 1));
    // A further $600 this year crosses $2,000: held until a W-9 is on file.
    funded_patient(&p, "pa", 60_000).await;
    assert!(matches!(
        p.holds("pa", day("2026-04-01"), &rails)
            .await
            .unwrap()
            .as_slice(),
        [Hold::TaxFormRequired {
            paid_this_year: 150_000,
            threshold: 200_000
        }]
    ));
    p.record_tax_form("pa", "W-9").await.unwrap();
    assert_eq!(
        p.run_payouts(&rails, day("2026-04-01"))
            .await
            .unwrap()
            .posted,
        1
    );
    assert_eq!(available(&p, "pa").await, 0);
    assert_eq!(gift.paid_per_payout().len(), 2);
    let diffs = p.reconcile(&rails).await.unwrap().differences;
    assert_eq!(
        diffs.iter().map(|d| d.kind.as_str()).collect::<Vec<_>>(),
        vec!["funds_overdrawn"],
        "the provider was never topped up"
    );
    p.fund_giftcard_provider(Money::usd(210_000), "topup-1")
        .await
        .unwrap();
    let diffs = p.reconcile(&rails).await.unwrap().differences;
    assert!(diffs.is_empty(), "{diffs:?}");
}

async fn ready(p: &tessera_payouts::Payouts, patient: &str, amount: i64, choice: Choice) {
    funded_patient(p, patient, amount).await;
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
async fn a_provider_timeout_followed_by_success_pays_once() {
    let (p, _d) = fresh().await;
    let (gift, stripe) = fakes();
    let rails = rails(&gift, &stripe);
    ready(
        &p,
        "pa",
        5_000,
        Choice::GiftCard {
            product: "visa".into(),
        },
    )
    .await;
    gift.script(&[Mode::LostAnswer]);
    let first = p.run_payouts(&rails, day("2026-05-01")).await.unwrap();
    assert_eq!((first.created, first.unknown, first.posted), (1, 1, 0));
    let po = &p.payouts(Some("pa")).await.unwrap()[0];
    assert_eq!(po.status, "submitting");
    // The next run looks the payout up and finds it paid: no second order.
    let second = p.run_payouts(&rails, day("2026-05-01")).await.unwrap();
    assert_eq!(second.posted, 1);
    assert_eq!(gift.state.lock().unwrap().submits, 1, "never paid again");
    assert_eq!(
        gift.paid_per_payout().values().copied().collect::<Vec<_>>(),
        vec![1]
    );
    // A call that never reached the provider is sent again with the same key.
    ready(
        &p,
        "pb",
        5_000,
        Choice::GiftCard {
            product: "visa".into(),
        },
    )
    .await;
    gift.script(&[Mode::Unreachable]);
    p.run_payouts(&rails, day("2026-05-01")).await.unwrap();
    p.run_payouts(&rails, day("2026-05-01")).await.unwrap();
    let pb = &p.payouts(Some("pb")).await.unwrap()[0];
    assert_eq!((pb.status.as_str(), pb.attempts), ("posted", 2));
    assert!(gift.paid_per_payout().values().all(|n| *n == 1));
    assert!(p.verify_ledger().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_refused_payout_returns_the_money_and_pending_ones_settle_later() {
    let (p, _d) = fresh().await;
    let (gift, stripe) = fakes();
    let rails = rails(&gift, &stripe);
    ready(
        &p,
        "pa",
        5_000,
        Choice::GiftCard {
            product: "visa".into(),
        },
    )
    .await;
    gift.script(&[Mode::Refuse]);
    let r = p.run_payouts(&rails, day("2026-05-01")).await.unwrap();
    assert_eq!(r.voided, 1);
    assert_eq!(
        available(&p, "pa").await,
        5_000,
        "back in the available balance"
    );
    assert_eq!(
        p.payouts(Some("pa")).await.unwrap()[0].failure.as_deref(),
        Some("rejected_400")
    );
    gift.script(&[Mode::Pending]);
    let r = p.run_payouts(&rails, day("2026-05-02")).await.unwrap();
    assert_eq!((r.created, r.submitted, r.posted), (1, 1, 0));
    let clearing = Account::new(AccountKind::RailClearing, "giftcard", Currency::USD);
    assert_eq!(p.balance(&clearing).await.unwrap(), 5_000, "in flight");
    assert!(
        p.reconcile(&rails).await.unwrap().differences.is_empty(),
        "in flight is not a difference"
    );
    gift.settle_all();
    let r = p.run_payouts(&rails, day("2026-05-03")).await.unwrap();
    assert_eq!(r.posted, 1);
    assert_eq!(
        p.balance(&clearing).await.unwrap(),
        0,
        "the clearing account nets to zero once settled"
    );
}

#[tokio::test]
async fn donations_go_to_the_organization_and_reconcile() {
    let (p, _d) = fresh().await;
    let (gift, stripe) = fakes();
    let rails = rails(&gift, &stripe);
    p.add_advocacy_org(&AdvocacyOrg {
        id: "cure-epilepsy".into(),
        name: "Cure Epilepsy".into(),
        disease: "epilepsy".into(),
        stripe_account: "acct_123".into(),
        description: "Funds research toward a cure for epilepsy.".into(),
    })
    .await
    .unwrap();
    assert!(
        p.set_preferences(
            "pa",
            &Preferences {
                choice: Choice::Donation {
                    organization: "nobody".into()
                },
                currency: Currency::USD,
                minimum_minor: 500
            }
        )
        .await
        .is_err()
    );
    ready(
        &p,
        "pa",
        3_000,
        Choice::Donation {
            organization: "cure-epilepsy".into(),
        },
    )
    .await;
    let r = p.run_payouts(&rails, day("2026-05-01")).await.unwrap();
    assert_eq!(r.posted, 1);
    let rec = stripe
        .state
        .lock()
        .unwrap()
        .records
        .values()
        .next()
        .cloned()
        .unwrap();
    assert_eq!(rec.amount, Money::usd(3_000));
    let e = p.earnings("pa", day("2026-05-01"), &rails).await.unwrap();
    assert_eq!(e.donated_minor, 3_000);
    assert_eq!(
        e.donations_by_organization.get("cure-epilepsy"),
        Some(&3_000)
    );
    assert_eq!(
        p.balance(&Account::new(
            AccountKind::OrgClearing,
            "cure-epilepsy",
            Currency::USD
        ))
        .await
        .unwrap(),
        0
    );
    // The connected account the transfer went to is the organization's.
    assert_eq!(
        p.payouts(Some("pa")).await.unwrap()[0].destination,
        "cure-epilepsy"
    );
    let diffs = p.reconcile(&rails).await.unwrap().differences;
    assert!(diffs.is_empty(), "{diffs:?}");
}

#[tokio::test]
async fn reconciliation_reports_every_difference() {
    let (p, _d) = fresh().await;
    let (gift, stripe) = fakes();
    let rails = rails(&gift, &stripe);
    ready(
        &p,
        "pa",
        5_000,
        Choice::GiftCard {
            product: "visa".into(),
        },
    )
    .await;
    gift.script(&[Mode::Pending]);
    p.run_payouts(&rails, day("2026-05-01")).await.unwrap();
    // The provider loses the order, and holds one Tessera never made.
    {
        let mut s = gift.state.lock().unwrap();
        let (k, mut r) = s.records.pop_first().unwrap();
        let _ = k;
        r.payout_id = Some("po_stranger".into());
        s.records.insert("tessera-payout-po_stranger".into(), r);
    }
    let report = p.reconcile(&rails).await.unwrap();
    let kinds: Vec<&str> = report.differences.iter().map(|d| d.kind.as_str()).collect();
    assert!(kinds.contains(&"missing_at_provider"), "{kinds:?}");
    assert!(kinds.contains(&"unknown_to_ledger"), "{kinds:?}");
}

#[tokio::test]
async fn closing_a_deleted_patient_settles_payouts_first_and_keeps_the_books() {
    use tessera_payouts::closure::{Closing, unclaimed_account};
    let (p, _d) = fresh().await;
    let (gift, stripe) = fakes();
    let rails = rails(&gift, &stripe);
    let card = || Choice::GiftCard {
        product: "visa".into(),
    };
    // pa: a payout pending at the provider, and more earned since.
    ready(&p, "pa", 5_000, card()).await;
    gift.script(&[Mode::Pending]);
    let r = p.run_payouts(&rails, day("2026-05-02")).await.unwrap();
    assert_eq!((r.submitted, r.posted), (1, 0));
    funded_patient(&p, "pa", 3_000).await;
    let transactions = p.transaction_count().await.unwrap();
    match p.close_patient("pa", &rails).await.unwrap() {
        Closing::InFlight { payouts } => assert_eq!(payouts.len(), 1),
        other => panic!("a payout on its way must block closing: {other:?}"),
    }
    assert_eq!(
        p.transaction_count().await.unwrap(),
        transactions,
        "a refused closing moves nothing"
    );
    assert_eq!(available(&p, "pa").await, 3_000);
    gift.settle_all();
    let Closing::Closed {
        settled, unclaimed, ..
    } = p.close_patient("pa", &rails).await.unwrap()
    else {
        panic!("closes once the payout has arrived");
    };
    assert_eq!(settled.len(), 1);
    assert_eq!(unclaimed, vec![Money::usd(3_000)]);
    assert_eq!(available(&p, "pa").await, 0);
    assert_eq!(
        p.balance(&unclaimed_account("pa", Currency::USD))
            .await
            .unwrap(),
        3_000
    );
    assert_eq!(
        p.payouts(Some("pa")).await.unwrap()[0].status,
        "posted",
        "the payout's record is kept"
    );
    assert_eq!(
        p.preferences("pa").await.unwrap().choice,
        Choice::Accumulate
    );
    // Closing again changes nothing.
    let n = p.transaction_count().await.unwrap();
    assert!(matches!(
        p.close_patient("pa", &rails).await.unwrap(),
        Closing::Closed { ref unclaimed, .. } if unclaimed.is_empty()
    ));
    assert_eq!(p.transaction_count().await.unwrap(), n);

    // pb: a payout reserved but never sent is voided, and its money kept as unclaimed.
    ready(&p, "pb", 5_000, card()).await;
    let reserved = p
        .create_payout("pb", day("2026-05-02"), &rails)
        .await
        .unwrap()
        .expect("not held");
    assert_eq!(reserved.status, "reserved");
    let Closing::Closed {
        voided, unclaimed, ..
    } = p.close_patient("pb", &rails).await.unwrap()
    else {
        panic!("nothing was at the provider");
    };
    assert_eq!(voided, vec![reserved.id.clone()]);
    assert_eq!(unclaimed, vec![Money::usd(5_000)]);
    assert_eq!(gift.state.lock().unwrap().submits, 1, "pb was never sent");
    assert!(p.verify_ledger().await.unwrap().is_empty());
}
