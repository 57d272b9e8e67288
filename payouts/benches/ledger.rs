//! Ledger throughput on SQLite (WAL, synchronous=FULL), each figure beside a baseline measured
//! in the same run on the same file system:
//!
//! - single: one two-entry transaction per commit, vs a bare `INSERT` of one row per commit
//!   (the commit cost SQLite itself imposes);
//! - batched: 100 transactions per commit, vs bare inserts of the same rows, 100 per commit;
//! - allocation: one license fee shared across 100,000 patients (one transaction with 100,001
//!   entries), vs bare inserts of 100,000 rows in one commit.
//!
//! `cargo bench -p tessera-payouts --bench ledger` prints a Markdown table for
//! docs/benchmarks.md.

use std::time::Instant;

use sqlx::Connection;
use tessera_payouts::revenue::InvoiceRequest;
use tessera_payouts::{
    Account, AccountKind, Currency, Entry, Money, NewTransaction, Payouts, Source,
};

fn txn(i: usize) -> NewTransaction {
    let usd = Currency::USD;
    NewTransaction {
        key: format!("bench:{i}"),
        kind: "bench".into(),
        source: Source::default(),
        entries: vec![
            Entry::debit(Account::new(AccountKind::StudyIncentives, "s", usd), 100),
            Entry::credit(
                Account::patient_available(&format!("p{}", i % 1000), usd),
                100,
            ),
        ],
        reverses: None,
    }
}

async fn baseline(url: &str, rows: usize, per_commit: usize) -> f64 {
    let mut c = sqlx::SqliteConnection::connect(url).await.expect("connect");
    for p in ["PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL"] {
        sqlx::query(p).execute(&mut c).await.expect("pragma");
    }
    sqlx::query("CREATE TABLE t (k TEXT PRIMARY KEY, a TEXT, b BIGINT)")
        .execute(&mut c)
        .await
        .expect("table");
    let start = Instant::now();
    let mut i = 0;
    while i < rows {
        let mut tx = c.begin().await.expect("begin");
        for _ in 0..per_commit.min(rows - i) {
            sqlx::query("INSERT INTO t (k, a, b) VALUES ($1, $2, $3)")
                .bind(format!("k{i}"))
                .bind("x")
                .bind(i as i64)
                .execute(&mut *tx)
                .await
                .expect("insert");
            i += 1;
        }
        tx.commit().await.expect("commit");
    }
    start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().expect("dir");
    let url = |n: &str| format!("sqlite://{}?mode=rwc", dir.path().join(n).display());
    let p = Payouts::connect(&url("ledger.db")).await.expect("open");
    let n_single = 1_000;
    let start = Instant::now();
    for i in 0..n_single {
        p.post(&txn(i)).await.expect("post");
    }
    let single = start.elapsed().as_secs_f64();
    let base_single = baseline(&url("b1.db"), n_single, 1).await;

    let n_batched = 20_000;
    let start = Instant::now();
    let all: Vec<NewTransaction> = (n_single..n_single + n_batched).map(txn).collect();
    for chunk in all.chunks(100) {
        p.post_batch(chunk).await.expect("batch");
    }
    let batched = start.elapsed().as_secs_f64();
    let base_batched = baseline(&url("b2.db"), n_batched, 100).await;

    let patients = 100_000;
    let contributors: Vec<(String, u64)> = (0..patients)
        .map(|i| (format!("patient-{i:06}"), 1))
        .collect();
    let inv = p
        .create_invoice(&InvoiceRequest {
            license: "lic".into(),
            organization: "o".into(),
            amount: Money::usd(123_456_789),
            patient_share_bps: 5000,
            contributors,
            provider: "offline".into(),
        })
        .await
        .expect("invoice");
    let start = Instant::now();
    let out = p
        .invoice_paid(&inv.id, Money::usd(123_456_789))
        .await
        .expect("allocate");
    let alloc = start.elapsed().as_secs_f64();
    assert_eq!(out.patients_credited, patients);
    let base_alloc = baseline(&url("b3.db"), patients, patients).await;
    assert!(p.verify_ledger().await.expect("verify").is_empty());

    println!("| measure | Tessera ledger | bare SQLite inserts, same run | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| single: transactions/s (1 per commit) | {:.0} | {:.0} rows/s | {:.2}x the time |",
        n_single as f64 / single,
        n_single as f64 / base_single,
        single / base_single
    );
    println!(
        "| batched: transactions/s (100 per commit) | {:.0} | {:.0} rows/s | {:.2}x the time |",
        n_batched as f64 / batched,
        n_batched as f64 / base_batched,
        batched / base_batched
    );
    println!(
        "| one fee allocated to 100,000 patients | {:.2} s | {:.2} s for 100,000 rows | {:.2}x |",
        alloc,
        base_alloc,
        alloc / base_alloc
    );
}
