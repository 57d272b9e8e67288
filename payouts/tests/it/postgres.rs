//! The same ledger code against a real PostgreSQL server (TESSERA_TEST_POSTGRES, else
//! postgres://postgres@127.0.0.1:5432/test). Skips loudly when the variable is unset and no
//! server answers; fails when it is set and the server does not answer.

use std::time::Duration;

use sqlx::Connection;
use tessera_payouts::revenue::InvoiceRequest;
use tessera_payouts::{
    Account, AccountKind, Currency, Entry, Money, NewTransaction, Payouts, PayoutsError, Source,
};

async fn database() -> Option<String> {
    let (url, required) = match std::env::var("TESSERA_TEST_POSTGRES") {
        Ok(u) => (u, true),
        Err(_) => ("postgres://postgres@127.0.0.1:5432/test".to_string(), false),
    };
    let conn =
        tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&url)).await;
    let mut conn = match conn {
        Ok(Ok(c)) => c,
        _ if required => panic!("TESSERA_TEST_POSTGRES is set but {url} does not answer"),
        _ => {
            eprintln!(
                "\n*** SKIPPED: payouts PostgreSQL test: no server at {url} and TESSERA_TEST_POSTGRES is unset ***\n"
            );
            return None;
        }
    };
    let db = format!("tessera_payouts_{}", std::process::id());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = url.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
    Some(format!("{base}/{db}"))
}

#[tokio::test]
async fn ledger_on_postgres() {
    let Some(url) = database().await else { return };
    let p = Payouts::connect(&url).await.expect("open on PostgreSQL");
    assert_eq!(p.backend(), tessera_payouts::Backend::Postgres);
    let contributors: Vec<(String, u64)> = (0..250).map(|i| (format!("p{i}"), 1)).collect();
    let inv = p
        .create_invoice(&InvoiceRequest {
            license: "lic".into(),
            organization: "o".into(),
            amount: Money::usd(1_000_003),
            patient_share_bps: 7000,
            contributors,
            provider: "offline".into(),
        })
        .await
        .unwrap();
    // Concurrent notices of one payment recognize it once.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let p = p.clone();
        let id = inv.id.clone();
        tasks.push(tokio::spawn(async move {
            p.invoice_paid(&id, Money::usd(1_000_003)).await
        }));
    }
    let mut new = 0;
    for t in tasks {
        if t.await.unwrap().unwrap().new {
            new += 1;
        }
    }
    assert_eq!(new, 1);
    let total: i64 = p
        .balances()
        .await
        .unwrap()
        .iter()
        .filter(|b| b.kind == "available")
        .map(|b| b.balance)
        .sum();
    assert_eq!(total, 700_002);
    // An overdraft is refused by the same conditional update on PostgreSQL.
    let err = p
        .post(&NewTransaction {
            key: "x".into(),
            kind: "t".into(),
            source: Source::default(),
            entries: vec![
                Entry::debit(Account::patient_available("p0", Currency::USD), 1_000_000),
                Entry::credit(
                    Account::new(AccountKind::RailClearing, "giftcard", Currency::USD),
                    1_000_000,
                ),
            ],
            reverses: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, PayoutsError::InsufficientFunds(_)), "{err}");
    assert!(p.verify_ledger().await.unwrap().is_empty());
    // Append-only on PostgreSQL too.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    assert!(
        sqlx::query("DELETE FROM ledger_entries")
            .execute(&mut conn)
            .await
            .is_err()
    );
    p.close().await;
}
