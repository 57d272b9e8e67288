//! Random sequences of fees, allocations, incentives, payouts, provider failures and retries
//! keep every invariant: transactions balance, no balance goes negative, patient credits of a
//! fee sum to its pool, money is neither created nor lost, and nothing is paid twice.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use proptest::prelude::*;
use tessera_payouts::incentives::Study;
use tessera_payouts::payout::{AdvocacyOrg, Choice, IdentityStatus, Preferences};
use tessera_payouts::revenue::InvoiceRequest;
use tessera_payouts::{Currency, Money};

use crate::support::{Mode, fakes, fresh, rails};

#[derive(Debug, Clone)]
enum Op {
    Fee {
        patients: Vec<u8>,
        amount: i64,
        bps: u32,
        notices: u8,
    },
    Survey {
        patient: u8,
        q: u8,
    },
    Prefs {
        patient: u8,
        choice: u8,
        minimum: i64,
    },
    Verify {
        patient: u8,
    },
    Run {
        gift: Vec<u8>,
        stripe: Vec<u8>,
    },
    Settle,
    ReverseShare {
        which: u8,
    },
}

fn mode(m: u8) -> Mode {
    match m % 5 {
        0 => Mode::Ok,
        1 => Mode::LostAnswer,
        2 => Mode::Unreachable,
        3 => Mode::Refuse,
        _ => Mode::Pending,
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (proptest::collection::vec(0u8..6, 0..6), 1i64..5_000_000, 0u32..=10_000, 1u8..3)
            .prop_map(|(patients, amount, bps, notices)| Op::Fee { patients, amount, bps, notices }),
        3 => (0u8..6, 0u8..3).prop_map(|(patient, q)| Op::Survey { patient, q }),
        2 => (0u8..6, 0u8..4, 500i64..20_000).prop_map(|(patient, choice, minimum)| Op::Prefs { patient, choice, minimum }),
        2 => (0u8..6).prop_map(|patient| Op::Verify { patient }),
        3 => (proptest::collection::vec(any::<u8>(), 0..4), proptest::collection::vec(any::<u8>(), 0..4))
            .prop_map(|(gift, stripe)| Op::Run { gift, stripe }),
        1 => Just(Op::Settle),
        1 => (any::<u8>()).prop_map(|which| Op::ReverseShare { which }),
    ]
}

fn pid(i: u8) -> String {
    format!("patient-{i}")
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (p, _d) = fresh().await;
    let (gift, stripe) = fakes();
    let rails = rails(&gift, &stripe);
    let date = NaiveDate::from_ymd_opt(2026, 6, 1).unwrap();
    p.add_advocacy_org(&AdvocacyOrg {
        id: "org-a".into(),
        name: "A".into(),
        disease: "d".into(),
        stripe_account: "acct_a".into(),
        description: String::new(),
    })
    .await
    .unwrap();
    p.add_study(&Study {
        id: "s1".into(),
        sponsor: "org-a".into(),
        questionnaires: vec!["q0".into(), "q1".into(), "q2".into()],
        enrollment: Money::usd(2_000),
        per_survey: Money::usd(3_000),
        survey_cap_minor: 5_000,
        patient_cap_minor: 7_000,
    })
    .await
    .unwrap();
    let mut invoices = Vec::new();
    for op in ops {
        match op {
            Op::Fee {
                patients,
                amount,
                bps,
                notices,
            } => {
                let mut c: Vec<(String, u64)> = patients.iter().map(|i| (pid(*i), 1)).collect();
                c.sort();
                c.dedup();
                let inv = p
                    .create_invoice(&InvoiceRequest {
                        license: format!("lic-{}", amount % 3),
                        organization: "o".into(),
                        amount: Money::usd(amount),
                        patient_share_bps: bps,
                        contributors: c,
                        provider: "offline".into(),
                    })
                    .await
                    .unwrap();
                for _ in 0..notices {
                    p.invoice_paid(&inv.id, Money::usd(amount)).await.unwrap();
                }
                invoices.push(inv.id);
            }
            Op::Survey { patient, q } => {
                p.survey_completed(&pid(patient), &format!("q{q}"))
                    .await
                    .unwrap();
            }
            Op::Prefs {
                patient,
                choice,
                minimum,
            } => {
                let choice = match choice {
                    0 => Choice::Accumulate,
                    1 => Choice::GiftCard {
                        product: "visa".into(),
                    },
                    2 => Choice::Donation {
                        organization: "org-a".into(),
                    },
                    _ => Choice::Direct {
                        stripe_account: format!("acct_p{patient}"),
                    },
                };
                p.set_preferences(
                    &pid(patient),
                    &Preferences {
                        choice,
                        currency: Currency::USD,
                        minimum_minor: minimum,
                    },
                )
                .await
                .unwrap();
            }
            Op::Verify { patient } => p
                .set_identity(&pid(patient), IdentityStatus::Verified, "vs")
                .await
                .unwrap(),
            Op::Run { gift: g, stripe: s } => {
                gift.script(&g.iter().map(|m| mode(*m)).collect::<Vec<_>>());
                stripe.script(&s.iter().map(|m| mode(*m)).collect::<Vec<_>>());
                p.run_payouts(&rails, date).await.unwrap();
            }
            Op::Settle => {
                gift.settle_all();
                stripe.settle_all();
            }
            Op::ReverseShare { which } => {
                // A correction of a fee's allocation: refused when a patient has spent the
                // money (their balance would go negative), applied whole otherwise.
                if let Some(inv) = invoices.get(which as usize % invoices.len().max(1)) {
                    let txs = p
                        .transaction_by_key(&format!("license_share:{inv}"))
                        .await
                        .unwrap();
                    if let Some(t) = txs {
                        match p.reverse(&t).await {
                            Ok(_) | Err(tessera_payouts::PayoutsError::InsufficientFunds(_)) => {}
                            Err(e) => return Err(TestCaseError::fail(format!("reversal: {e}"))),
                        }
                    }
                }
            }
        }
        let problems = p.verify_ledger().await.unwrap();
        prop_assert!(problems.is_empty(), "{problems:?}");
    }

    // Finish everything with healthy providers.
    gift.clear_script();
    stripe.clear_script();
    gift.settle_all();
    stripe.settle_all();
    p.run_payouts(&rails, date).await.unwrap();
    p.run_payouts(&rails, date).await.unwrap();

    // Nothing paid twice; what the providers paid is what the ledger posted.
    for (po, n) in gift
        .paid_per_payout()
        .into_iter()
        .chain(stripe.paid_per_payout())
    {
        prop_assert_eq!(n, 1, "payout {} paid {} times", po, n);
    }
    let posted: BTreeMap<String, i64> = p
        .payouts(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|x| x.status == "posted")
        .map(|x| (x.id, x.amount.minor))
        .collect();
    let provider_paid: usize = gift.paid_per_payout().len() + stripe.paid_per_payout().len();
    prop_assert_eq!(posted.len(), provider_paid);
    for x in p.payouts(None).await.unwrap() {
        prop_assert!(
            matches!(x.status.as_str(), "posted" | "voided"),
            "payout {} left {}",
            x.id,
            x.status
        );
    }

    // Conservation: what patients were credited is what they hold, what is in flight, and
    // what was paid out.
    let balances = p.balances().await.unwrap();
    let sum = |k: &str| {
        balances
            .iter()
            .filter(|b| b.kind == k)
            .map(|b| b.balance)
            .sum::<i64>()
    };
    let credited = sum("incentives");
    let shares: i64 = {
        let mut s = 0;
        for inv in &invoices {
            if let Some(t) = p
                .transaction_by_key(&format!("license_share:{inv}"))
                .await
                .unwrap()
            {
                let tx = p.transaction(&t).await.unwrap().unwrap();
                let credits: i64 = tx
                    .entries
                    .iter()
                    .filter(|e| e.side == tessera_payouts::Side::Credit)
                    .map(|e| e.amount)
                    .sum();
                let debits: i64 = tx
                    .entries
                    .iter()
                    .filter(|e| e.side == tessera_payouts::Side::Debit)
                    .map(|e| e.amount)
                    .sum();
                prop_assert_eq!(credits, debits, "a fee's parts sum to its pool");
                let invoice = p.invoice(inv).await.unwrap().unwrap();
                prop_assert_eq!(
                    debits,
                    invoice.amount.share_bps(invoice.patient_share_bps).minor
                );
                let reversed = p
                    .transaction_by_key(&format!("reversal:{t}"))
                    .await
                    .unwrap()
                    .is_some();
                if !reversed {
                    s += credits;
                }
            }
        }
        s
    };
    let held = sum("available") + sum("reserved") + sum("clearing") + sum("org");
    let paid: i64 = posted.values().sum();
    prop_assert_eq!(credited + shares, held + paid);
    prop_assert_eq!(
        sum("clearing") + sum("org"),
        0,
        "clearing accounts net to zero once settled"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 200, ..ProptestConfig::default() })]
    #[test]
    fn invariants_hold_under_random_operations(ops in proptest::collection::vec(op(), 1..25)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops))?;
    }
}
