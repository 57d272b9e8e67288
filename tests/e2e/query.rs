//! SQL over the demo release through the query service's core (`tessera_query::QueryService`),
//! with the real catalog and licensing store: the decision comes first and is audited, an
//! aggregate-only key gets protected aggregates and nothing row-level, a row-level key gets
//! rows, consent revoked after the release was built takes effect at once, a suspended license
//! and a missing key are refused, and completed queries are metered.

use tessera_catalog::{Catalog, Keyring, Purpose};
use tessera_licensing::Reason;
use tessera_licensing::gate::Gate;
use tessera_licensing::store::LicensingStore;
use tessera_query::arrow::array::{Array, Int64Array};
use tessera_query::{Limits, QueryError, QueryService, ServiceError};

use crate::http::{demo_copy, demo_json, demo_org, persons_by};
use crate::support::test_key;

fn reason(r: Result<tessera_query::QueryOutput, ServiceError>) -> String {
    match r {
        Ok(o) => format!("allowed ({} rows)", o.rows),
        Err(ServiceError::Denied { reason, .. }) => reason.code().to_string(),
        Err(ServiceError::Query(QueryError::Refused { rule, .. })) => rule.to_string(),
        Err(e) => format!("error: {e}"),
    }
}

pub fn single_count(o: &tessera_query::QueryOutput) -> i64 {
    o.batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .map(|a| a.value(0))
        })
        .expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_is_decided_enforced_metered_and_audited() {
    let t = demo_copy();
    let demo = demo_json(&t);
    let (agg_key, agg_license, _) = demo_org(&demo, "demo-aggregate");
    let (row_key, _, _) = demo_org(&demo, "demo-rowlevel");
    let url = t.database_url();
    let catalog = Catalog::open(&url, Keyring::new(&test_key(), &[]))
        .await
        .expect("catalog");
    let store = LicensingStore::connect(&url).await.expect("store");
    let pepper = Keyring::new(&test_key(), &[])
        .application_secret("api-key-pepper")
        .to_vec();
    let gate = Gate::new(store.clone(), pepper);
    let service = QueryService::new(catalog.clone(), gate.clone(), Limits::default());
    let agg = gate.credential(Some(&agg_key)).await.expect("lookup");
    let row = gate.credential(Some(&row_key)).await.expect("lookup");

    // Aggregate-only: counts by sex equal the counts made from the Parquet file, small groups
    // withheld; nothing row-level.
    let out = service
        .query(
            agg.as_ref(),
            None,
            "SELECT gender_source_value AS sex, count(*) AS n FROM person GROUP BY gender_source_value",
        )
        .await
        .expect("aggregate");
    let expected = persons_by("person", "gender_source_value");
    let shown: i64 = out
        .batches
        .iter()
        .flat_map(|b| {
            let n = b
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("n")
                .clone();
            (0..n.len()).map(move |i| n.value(i))
        })
        .sum();
    let want: u64 = expected.values().filter(|n| **n >= 11).sum();
    assert_eq!(shown as u64, want);
    assert_eq!(
        out.groups_suppressed,
        expected.values().filter(|n| **n < 11).count() as u64
    );
    assert_eq!(
        reason(
            service
                .query(agg.as_ref(), None, "SELECT * FROM person")
                .await
        ),
        "not_aggregate"
    );
    assert_eq!(
        reason(
            service
                .query(
                    agg.as_ref(),
                    None,
                    "SELECT person_id, count(*) FROM person GROUP BY person_id"
                )
                .await
        ),
        "group_by_person"
    );

    // Row-level: rows, and consent revoked after the release was built removes a person at once.
    let (pid, pseudonym) = {
        let patients = catalog.list_patients(400, 0).await.expect("patients");
        let key = Keyring::new(&test_key(), &[]).release_family_key("demo-natural-history");
        let ids = persons_by("person", "person_id");
        patients
            .into_iter()
            .map(|p| {
                let pseudo = tessera_catalog::release::family_pseudonym(&key, &p.patient_id);
                (p.patient_id, pseudo)
            })
            .find(|(_, pseudo)| ids.contains_key(pseudo))
            .expect("a released patient")
    };
    let count_one = format!("SELECT count(*) FROM person WHERE person_id = '{pseudonym}'");
    let before = service
        .query(row.as_ref(), None, &count_one)
        .await
        .expect("row-level");
    assert_eq!(single_count(&before), 1);
    let five = service
        .query(row.as_ref(), None, "SELECT * FROM person LIMIT 5")
        .await
        .expect("rows");
    assert_eq!(five.rows, 5);
    let purpose = Purpose::parse("research.natural_history").expect("purpose");
    catalog
        .revoke(&pid, &purpose, "test")
        .await
        .expect("revoke");
    let after = service
        .query(row.as_ref(), None, &count_one)
        .await
        .expect("row-level");
    assert_eq!(
        single_count(&after),
        0,
        "revoked consent hides the person at once"
    );

    // Refusals by the decision: no key, an operator key, a suspended license.
    assert_eq!(
        reason(service.query(None, Some(&agg_license), "SELECT 1").await),
        "no_credential"
    );
    t.expect(&["license", "status", "--id", &agg_license, "suspended"], 0);
    assert_eq!(
        reason(
            service
                .query(agg.as_ref(), None, "SELECT count(*) FROM person")
                .await
        ),
        Reason::LicenseNotActive.code()
    );
    // Read-only, whatever the license.
    assert_eq!(
        reason(service.query(row.as_ref(), None, "DROP VIEW person").await),
        "read_only"
    );

    // Metering and the audit log.
    let (usage, _) = store
        .usage(&agg_license, chrono::Utc::now())
        .await
        .expect("usage");
    assert_eq!(
        usage.queries_today, 1,
        "one completed query under the aggregate license"
    );
    let entries = store.audit_entries().await.expect("audit");
    let decisions: Vec<String> = entries
        .iter()
        .filter(|e| e.event.action.starts_with("sql_query"))
        .map(|e| e.event.decision.clone())
        .collect();
    for d in [
        "allow",
        "deny:not_aggregate",
        "deny:no_credential",
        "deny:license_not_active",
        "deny:read_only",
    ] {
        assert!(
            decisions.iter().any(|x| x == d),
            "{d} audited: {decisions:?}"
        );
    }
    assert!(
        entries
            .iter()
            .all(|e| !e.event.resource.contains(&pseudonym)),
        "query text stays out of the audit log (only its hash)"
    );
    assert_eq!(
        store.verify_audit().await.expect("verify").map(|_| ()),
        Ok(())
    );
    store.close().await;
    catalog.close().await;
}
