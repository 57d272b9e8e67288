//! The audit log cannot be rewritten unnoticed: entries edited, deleted or swapped directly in
//! the database are found by `tessera audit verify`, which exits 1 naming the first bad entry.

use tessera_licensing::audit::Event;
use tessera_licensing::store::LicensingStore;

use crate::support::Tessera;

async fn with_entries(n: usize) -> Tessera {
    let t = Tessera::new();
    t.expect(&["init"], 0);
    let store = LicensingStore::connect(&t.database_url())
        .await
        .expect("store");
    for i in 0..n {
        store
            .append_audit(Event {
                at: format!("2026-11-23T12:00:{i:02}Z"),
                principal: "key-1".into(),
                license: Some("lic-1".into()),
                action: "run_query".into(),
                resource: "nh/v1".into(),
                decision: if i == 2 {
                    "deny:quota_exceeded".into()
                } else {
                    "allow".into()
                },
                query_sha256: Some(format!("{i:064x}")),
                rows: Some(10 * i as u64),
                persons: Some(i as u64),
            })
            .await
            .expect("append");
    }
    store.close().await;
    t
}

async fn tamper(t: &Tessera, statements: &[&str]) {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&t.database_url())
        .await
        .expect("connect");
    for s in statements {
        sqlx::query(sqlx::AssertSqlSafe(s.to_string()))
            .execute(&mut conn)
            .await
            .expect("tamper");
    }
    conn.close().await.expect("close");
}

fn verify_fails_at(t: &Tessera, seq: &str) {
    let out = t.run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(seq), "{stderr}");
}

#[tokio::test]
async fn tampering_is_detected() {
    let t = with_entries(6).await;
    let out = t.expect(&["audit", "verify"], 0);
    assert!(out.contains("intact: 6 entries"), "{out}");

    // An edited field: a denial turned into an allow.
    let t = with_entries(6).await;
    tamper(
        &t,
        &["UPDATE audit_log SET decision = 'allow' WHERE seq = 3"],
    )
    .await;
    verify_fails_at(&t, "entry 3 (seq 3)");

    // A deleted entry.
    let t = with_entries(6).await;
    tamper(&t, &["DELETE FROM audit_log WHERE seq = 2"]).await;
    verify_fails_at(&t, "entry 2 (seq 3)");

    // Two entries swapped.
    let t = with_entries(6).await;
    tamper(
        &t,
        &[
            "UPDATE audit_log SET seq = -1 WHERE seq = 4",
            "UPDATE audit_log SET seq = 4 WHERE seq = 5",
            "UPDATE audit_log SET seq = 5 WHERE seq = -1",
        ],
    )
    .await;
    verify_fails_at(&t, "entry 4 (seq 4)");
}
