//! The same catalog code against a real PostgreSQL server. Uses TESSERA_TEST_POSTGRES (a URL to
//! a database the test may create databases from), else postgres://postgres@127.0.0.1:5432/test.
//! When the variable is unset and no server answers, the test says so loudly and skips; when it
//! is set, an unreachable server fails the test.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use sqlx::Connection;
use tessera_catalog::{Catalog, Grant, IngestOptions, Keyring, NoProgress, Purpose, Scope};

use crate::support::{shared, test_key};

async fn admin_url() -> Option<String> {
    let (url, required) = match std::env::var("TESSERA_TEST_POSTGRES") {
        Ok(u) => (u, true),
        Err(_) => ("postgres://postgres@127.0.0.1:5432/test".to_string(), false),
    };
    let ok = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&url))
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false);
    match (ok, required) {
        (true, _) => Some(url),
        (false, true) => panic!("TESSERA_TEST_POSTGRES is set but {url} does not answer"),
        (false, false) => {
            eprintln!(
                "\n*** SKIPPED: PostgreSQL tests: no server at {url} and TESSERA_TEST_POSTGRES is unset ***\n"
            );
            None
        }
    }
}

#[tokio::test]
async fn catalog_on_postgres() {
    let Some(admin) = admin_url().await else {
        return;
    };
    let db = format!("tessera_test_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .execute(&mut conn)
        .await
        .expect("drop");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut conn)
        .await
        .expect("create");
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b)
        .expect("url with a database");
    let url = format!("{base}/{db}");

    let catalog = Catalog::open(&url, Keyring::new(&test_key(), &[]))
        .await
        .expect("open on postgres");
    assert_eq!(catalog.backend(), tessera_catalog::Backend::Postgres);
    let inputs = [
        shared().join("synthea/small"),
        shared().join("phenopackets/KCNT1"),
    ];
    let first = catalog
        .ingest(&inputs, &IngestOptions::default(), &NoProgress)
        .await
        .expect("ingest");
    assert!(first.quarantined.is_empty());
    assert_eq!(first.patients_new, 20);
    let second = catalog
        .ingest(&inputs, &IngestOptions::default(), &NoProgress)
        .await
        .expect("ingest");
    assert_eq!(second.records.added, 0);
    assert_eq!(second.records.unchanged, first.records.added);

    let by_type = catalog.count_by_resource_type().await.expect("counts");
    let total: i64 = by_type.iter().map(|(_, n)| n).sum();
    assert_eq!(total as u64, first.records.added);

    let pid = catalog.list_patients(1, 0).await.expect("list")[0]
        .patient_id
        .clone();
    let purpose = Purpose::parse("research.synthetic_control").expect("purpose");
    catalog
        .grant(Grant {
            patient_id: pid.clone(),
            purpose: purpose.clone(),
            scope: Scope::All,
            valid_from: None,
            valid_until: None,
            actor: "test".into(),
        })
        .await
        .expect("grant");
    assert_eq!(
        catalog
            .consented_summaries(&purpose, Utc::now())
            .await
            .expect("read")
            .len(),
        1
    );
    catalog
        .revoke(&pid, &purpose, "test")
        .await
        .expect("revoke");
    assert!(
        catalog
            .consented_summaries(&purpose, Utc::now())
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(
        serde_json::to_value(catalog.consent_history(&pid).await.expect("history").len())
            .expect("n"),
        json!(2)
    );

    // A release on PostgreSQL: every patient consents; two versions recorded with their
    // contributors; retirement.
    let nh = Purpose::parse("research.natural_history").expect("purpose");
    let patients = catalog.list_patients(100, 0).await.expect("list");
    for p in &patients {
        catalog
            .grant(Grant {
                patient_id: p.patient_id.clone(),
                purpose: nh.clone(),
                scope: Scope::All,
                valid_from: None,
                valid_until: None,
                actor: "test".into(),
            })
            .await
            .expect("grant");
    }
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/safe-harbor.toml"),
    )
    .expect("policy")
    .replace("k = 5", "k = 2")
    .replace("suppression_limit = 0.05", "suppression_limit = 0.5");
    let policy = tessera_deid::policy::Policy::parse(&text).expect("policy");
    let releases = tempfile::tempdir().expect("temp");
    let request = tessera_catalog::ReleaseRequest {
        family: "pg",
        purpose: &nh,
        policy: &policy,
        policy_text: &text,
        releases_dir: releases.path(),
    };
    let (v1, manifest) = catalog.build_release(&request).await.expect("release v1");
    assert_eq!(v1.version, 1);
    assert_eq!(manifest.patients_included, patients.len());
    let (v2, _) = catalog.build_release(&request).await.expect("release v2");
    assert_eq!(v2.version, 2);
    assert_eq!(
        catalog
            .release_contributors("pg", 2)
            .await
            .expect("contributors")
            .len(),
        patients.len()
    );
    catalog.retire_release("pg", 1).await.expect("retire");
    let listed = catalog.releases().await.expect("list releases");
    assert_eq!(
        listed
            .iter()
            .map(|r| (r.version, r.status.as_str()))
            .collect::<Vec<_>>(),
        [(1, "retired"), (2, "published")]
    );

    catalog.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .execute(&mut conn)
        .await
        .expect("drop");
}
