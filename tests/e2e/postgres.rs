//! The same catalog code against a real PostgreSQL server. Uses TESSERA_TEST_POSTGRES (a URL to
//! a database the test may create databases from), else postgres://postgres@127.0.0.1:5432/test.
//! When the variable is unset and no server answers, the test says so loudly and skips; when it
//! is set, an unreachable server fails the test.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use sqlx::Connection;
use tessera_catalog::{Catalog, Grant, IngestOptions, Keyring, NoProgress, Purpose, Scope};

use crate::support::{phenopackets, synthea_small, test_key};

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
    let inputs = [synthea_small().to_path_buf(), phenopackets().join("KCNT1")];
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
    let mut policy = tessera_deid::policy::Policy::parse(&text).expect("policy");
    policy.base_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
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

    licensing_on_postgres(&url, &catalog, &listed[1]).await;

    catalog.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .execute(&mut conn)
        .await
        .expect("drop");
}

/// The HTTP API's path through licensing on PostgreSQL: a signed, active license and a key;
/// twenty concurrent decisions chained into one audit log without a gap; metering read back
/// as usage; a cohort count of the release.
async fn licensing_on_postgres(
    url: &str,
    catalog: &Catalog,
    release: &tessera_catalog::ReleaseRow,
) {
    use ring::signature::Ed25519KeyPair;
    use tessera_licensing::decision::{Principal, Request};
    use tessera_licensing::gate::{Ask, Gate};
    use tessera_licensing::model::*;
    use tessera_licensing::store::LicensingStore;
    use tessera_licensing::terms;

    let store = LicensingStore::connect(url).await.expect("licensing store");
    let (pkcs8, public) = terms::generate_key().expect("key");
    let signatory = Ed25519KeyPair::from_pkcs8(&pkcs8).expect("pair");
    let (platform, platform_public) = terms::platform_key(&[9u8; 32]).expect("platform");
    store
        .add_organization("acme", "Acme", &public)
        .await
        .expect("org");
    let now = Utc::now();
    let license = License {
        id: "acme-pg".into(),
        organization: "acme".into(),
        releases: [("pg".to_string(), VersionPin::Latest)]
            .into_iter()
            .collect(),
        tables: [("person".to_string(), ColumnGrant::All)]
            .into_iter()
            .collect(),
        purpose: "research.natural_history".into(),
        mode: AccessMode::AggregateOnly,
        output: OutputRules::default(),
        quota: Quota {
            queries_per_minute: 100,
            queries_per_day: 1000,
            rows_per_day: 100_000,
            queries_per_month: 10_000,
            rows_per_month: 1_000_000,
        },
        term_start: now - chrono::Duration::days(1),
        term_end: now + chrono::Duration::days(30),
        fees: Fees {
            flat: None,
            per_contributing_patient: None,
            patient_share_bps: 5000,
        },
        clauses: standard_clauses(),
        status: LicenseStatus::Draft,
    };
    store.create_license(&license).await.expect("license");
    let mut signed = terms::sign(&license, &signatory);
    terms::countersign(&mut signed, &platform);
    store
        .sign_license("acme-pg", &signed, &platform_public)
        .await
        .expect("sign");
    store
        .set_status("acme-pg", LicenseStatus::Active)
        .await
        .expect("activate");
    let pepper = b"pepper".to_vec();
    let (key, _) = store
        .issue_key(
            &Principal::Analyst {
                organization: "acme".into(),
                licenses: vec!["acme-pg".into()],
            },
            None,
            &pepper,
        )
        .await
        .expect("key");
    let gate = Gate::new(store.clone(), pepper);
    let credential = gate
        .credential(Some(&key))
        .await
        .expect("lookup")
        .expect("known key");
    let ask = |n: usize| Ask {
        request: Request::RunQuery {
            license: "acme-pg".into(),
            family: "pg".into(),
            version: release.version as u32,
            latest_version: release.version as u32,
            release_purpose: Some(release.purpose.clone()),
            tables: vec![("person".into(), vec!["person_id".into()])],
            row_level: false,
        },
        action: "cohort_count".into(),
        resource: format!("pg/v{n}"),
        query_sha256: None,
    };
    let decisions = futures_join(&gate, &credential, (0..20).map(ask).collect()).await;
    let mut allowed = Vec::new();
    for d in decisions {
        allowed.push(d.expect("allowed"));
    }
    let counts = catalog
        .cohort_count(
            release,
            tessera_catalog::release::cohort::CohortQuery::default(),
        )
        .await
        .expect("count");
    assert!(counts.total > 0);
    for a in &allowed[..3] {
        gate.record_result(a, 1, Some(counts.total), Utc::now())
            .await
            .expect("meter");
    }
    let (usage, _) = store.usage("acme-pg", Utc::now()).await.expect("usage");
    assert_eq!((usage.queries_today, usage.rows_today), (3, 3));
    assert_eq!(usage.queries_last_minute, 3);
    assert_eq!(store.verify_audit().await.expect("read"), Ok(23));

    // Saved cohort definitions: saved, replaced in place (ON CONFLICT ... excluded), listed by
    // name, deleted.
    for (definition, at) in [
        ("{\"v\":1}", now),
        ("{\"v\":2}", now + chrono::Duration::seconds(1)),
    ] {
        store
            .save_cohort("acme-pg", "adults", definition, "key:pg", at)
            .await
            .expect("save cohort");
    }
    store
        .save_cohort("acme-pg", "adolescents", "{}", "key:pg", now)
        .await
        .expect("save cohort");
    let saved = store.cohorts("acme-pg").await.expect("cohorts");
    let names: Vec<(&str, &str)> = saved
        .iter()
        .map(|c| (c.name.as_str(), c.definition.as_str()))
        .collect();
    assert_eq!(names, vec![("adolescents", "{}"), ("adults", "{\"v\":2}")]);
    assert!(
        store
            .delete_cohort("acme-pg", "adults")
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_cohort("acme-pg", "adults")
            .await
            .expect("delete")
    );
    assert!(store.cohorts("other").await.expect("cohorts").is_empty());

    // A privacy budget spent by twelve concurrent answers: the conditional UPDATE lets exactly
    // the five the budget pays for through; a repeated answer key returns the stored answer.
    use tessera_licensing::privacy::Rho;
    use tessera_licensing::store::{Answer, Spend};
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .spend_privacy(
                    "acme-pg",
                    &Answer {
                        key: &format!("answer-{i}"),
                        bytes: format!("bytes-{i}").as_bytes(),
                        cost: Rho::charge(0.05),
                        delta: 1e-7,
                    },
                    Rho::from_f64_down(0.25),
                    Utc::now(),
                )
                .await
                .expect("spend")
        });
    }
    let mut spent = 0;
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            Spend::Spent(_) => spent += 1,
            Spend::Exhausted { .. } => {}
            Spend::Cached(_) => panic!("distinct answers are not repeats"),
        }
    }
    assert_eq!(spent, 5, "exactly what the budget pays for");
    let total = store.privacy_spent("acme-pg").await.expect("spent");
    assert_eq!((total.rho, total.answers), (Rho::from_f64_down(0.25), 5));
    let again = store
        .spend_privacy(
            "acme-pg",
            &Answer {
                key: "repeat",
                bytes: b"first",
                cost: Rho::charge(0.0),
                delta: 0.0,
            },
            Rho::from_f64_down(0.25),
            Utc::now(),
        )
        .await
        .expect("a free answer");
    assert!(
        matches!(again, Spend::Spent(_)),
        "a zero-cost answer fits: {again:?}"
    );
    let repeat = store
        .spend_privacy(
            "acme-pg",
            &Answer {
                key: "repeat",
                bytes: b"second",
                cost: Rho::charge(0.05),
                delta: 0.0,
            },
            Rho::from_f64_down(10.0),
            Utc::now(),
        )
        .await
        .expect("a repeat");
    assert_eq!(
        repeat,
        Spend::Cached(b"first".to_vec()),
        "the first answer stands"
    );
    store.close().await;
}

/// Runs the asks at once, as concurrent requests would.
async fn futures_join(
    gate: &tessera_licensing::gate::Gate,
    credential: &tessera_licensing::Credential,
    asks: Vec<tessera_licensing::gate::Ask>,
) -> Vec<Result<tessera_licensing::gate::Allowed, tessera_licensing::gate::Denied>> {
    let mut tasks = tokio::task::JoinSet::new();
    for ask in asks {
        let (gate, credential) = (gate.clone(), credential.clone());
        tasks.spawn(async move {
            gate.authorize(Some(&credential), ask, Utc::now())
                .await
                .expect("audited decision")
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(r.expect("task"));
    }
    out
}
