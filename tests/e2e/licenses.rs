//! The operators' CLI twins: an organization with its signatory's key, a license from draft to
//! signed, active and verified, an API key issued once and revoked, and terms edited in the
//! database after signing caught by `tessera license verify`.

use crate::support::Tessera;

#[tokio::test]
async fn license_lifecycle_from_the_cli() {
    let t = Tessera::new();
    t.expect(&["init"], 0);
    let key_file = t.dir.path().join("acme-signatory.pk8");
    let public = t
        .expect(
            &["org", "keygen", "--out", key_file.to_str().expect("utf-8")],
            0,
        )
        .trim()
        .to_string();
    assert_eq!(public.len(), 64, "{public}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    t.expect(
        &[
            "org",
            "add",
            "--id",
            "acme",
            "--name",
            "Acme Pharma",
            "--public-key",
            &public,
        ],
        0,
    );
    let license = serde_json::json!({
        "id": "lic-acme-1",
        "organization": "acme",
        "releases": {"nh": "latest"},
        "tables": {"person": "all", "condition_occurrence": {"only": ["person_id", "condition_source_value"]}},
        "purpose": "research.natural_history",
        "mode": "aggregate_only",
        "output": {"min_cell_size": 11, "rounding_base": null, "max_rows": null},
        "quota": {"queries_per_minute": 10, "queries_per_day": 500, "rows_per_day": 1000000, "queries_per_month": 10000, "rows_per_month": 20000000},
        "term_start": "2026-01-01T00:00:00Z",
        "term_end": "2027-01-01T00:00:00Z",
        "fees": {"flat": {"minor": 2500000, "currency": "USD"}, "per_contributing_patient": {"minor": 500, "currency": "USD"}, "patient_share_bps": 5000},
        "clauses": ["Permitted use: natural-history research.", "No re-identification or contact of individuals."],
        "status": "draft"
    });
    let file = t.dir.path().join("license.json");
    std::fs::write(&file, license.to_string()).expect("license file");
    t.expect(
        &["license", "create", "--file", file.to_str().expect("utf-8")],
        0,
    );
    // Not signed: it cannot become active.
    let early = t.run(&["license", "status", "--id", "lic-acme-1", "active"]);
    assert!(!early.status.success());
    assert!(String::from_utf8_lossy(&early.stderr).contains("not signed"));
    let signed = t.expect(
        &[
            "license",
            "sign",
            "--id",
            "lic-acme-1",
            "--signatory-key",
            key_file.to_str().expect("utf-8"),
        ],
        0,
    );
    assert!(signed.contains("signed and countersigned"), "{signed}");
    t.expect(&["license", "status", "--id", "lic-acme-1", "active"], 0);
    let ok = t.expect(&["license", "verify", "--id", "lic-acme-1"], 0);
    assert!(ok.contains("both signatures verify"), "{ok}");

    let issued = t.expect(
        &[
            "key",
            "issue",
            "--org",
            "acme",
            "--license",
            "lic-acme-1",
            "--days",
            "30",
        ],
        0,
    );
    let key = issued
        .lines()
        .find(|l| l.starts_with("tsk_"))
        .expect("the key is shown");
    let id = &key[4..20];
    // Only a keyed hash is stored: the secret is nowhere in the database file.
    let db = std::fs::read(t.data_dir().join("tessera.db")).unwrap_or_default();
    let wal = std::fs::read(t.data_dir().join("tessera.db-wal")).unwrap_or_default();
    let secret = &key[21..];
    for bytes in [&db, &wal] {
        assert!(
            !String::from_utf8_lossy(bytes).contains(secret),
            "the key's secret is stored"
        );
    }
    t.expect(&["key", "revoke", "--id", id], 0);
    let again = t.run(&["key", "revoke", "--id", id]);
    assert!(
        !again.status.success(),
        "a revoked key cannot be revoked twice"
    );

    // Every change made above is in the audit log, by the `cli` principal, in order.
    {
        let store = tessera_licensing::store::LicensingStore::connect(&t.database_url())
            .await
            .expect("store");
        let actions: Vec<String> = store
            .audit_entries()
            .await
            .expect("audit")
            .into_iter()
            .filter(|e| e.event.principal == "cli")
            .map(|e| e.event.action)
            .collect();
        store.close().await;
        for a in [
            "add_organization",
            "create_license",
            "sign_license",
            "set_license_status",
            "issue_key",
            "revoke_key",
        ] {
            assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
        }
    }
    t.expect(&["audit", "verify"], 0);

    // The terms edited in the database after signing: verification fails and says so.
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&t.database_url())
            .await
            .expect("db");
        sqlx::query("UPDATE licenses SET body = replace(body, 'No re-identification', 'Re-identification allowed')")
            .execute(&mut conn)
            .await
            .expect("tamper");
        conn.close().await.expect("close");
    }
    let bad = t.run(&["license", "verify", "--id", "lic-acme-1"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("changed after signing"));
}
