//! Sessions over a small release written here: 60 persons (two sexes of 30, minus the ones
//! made rare on purpose), their conditions, and licenses in both modes.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use tessera_catalog::release::build::Manifest;
use tessera_licensing::model::*;

use crate::session::{QueryError, ReleaseSource, Scope, Session};

fn write(path: &Path, batch: &RecordBatch) {
    let file = std::fs::File::create(path).expect("create");
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
    w.write(batch).expect("write");
    w.close().expect("close");
}

fn text(v: Vec<String>) -> Arc<StringArray> {
    Arc::new(StringArray::from(v))
}

/// person: p00..p59; sex F for 0..30, M for 30..57, U for 57..60 (a group of 3);
/// zip 021 or 100. condition_occurrence: every person has "C1"; the first 12 also "C2".
fn release(dir: &Path) -> Manifest {
    let ids: Vec<String> = (0..60).map(|i| format!("p{i:02}")).collect();
    let sex: Vec<String> = (0..60)
        .map(|i| match i {
            0..30 => "F",
            30..57 => "M",
            _ => "U",
        })
        .map(str::to_string)
        .collect();
    let zip: Vec<String> = (0..60)
        .map(|i| if i % 2 == 0 { "021" } else { "100" }.to_string())
        .collect();
    let person = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("person_id", DataType::Utf8, false),
            Field::new("gender_source_value", DataType::Utf8, true),
            Field::new("zip", DataType::Utf8, true),
        ])),
        vec![text(ids.clone()), text(sex), text(zip)],
    )
    .expect("person");
    write(&dir.join("person.parquet"), &person);
    let mut cid = Vec::new();
    let mut code = Vec::new();
    let mut days = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        cid.push(id.clone());
        code.push("C1".to_string());
        days.push(i as i64);
        if i < 12 {
            cid.push(id.clone());
            code.push("C2".to_string());
            days.push(100 + i as i64);
        }
    }
    let conditions = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("person_id", DataType::Utf8, false),
            Field::new("condition_source_value", DataType::Utf8, true),
            Field::new("days_since_index", DataType::Int64, true),
        ])),
        vec![text(cid), text(code), Arc::new(Int64Array::from(days))],
    )
    .expect("conditions");
    write(&dir.join("condition_occurrence.parquet"), &conditions);
    let columns = |names: &[&str]| -> Vec<serde_json::Value> {
        names
            .iter()
            .map(|n| serde_json::json!({"name": n, "type": "str", "description": "test"}))
            .collect()
    };
    serde_json::from_value(serde_json::json!({
        "family": "nh-test",
        "version": 1,
        "purpose": "research.natural_history",
        "built_at": "2026-11-23T00:00:00Z",
        "consent_snapshot_at": "2026-11-23T00:00:00Z",
        "policy_sha256": "00",
        "patients_considered": 60,
        "patients_included": 60,
        "patients_excluded": {},
        "files": [
            {"table": "person", "file": "person.parquet", "rows": 60, "sha256": "00",
             "columns": columns(&["person_id", "gender_source_value", "zip"])},
            {"table": "condition_occurrence", "file": "condition_occurrence.parquet", "rows": 72, "sha256": "00",
             "columns": columns(&["person_id", "condition_source_value", "days_since_index"])}
        ],
        "person_deid": null,
        "rare_codes_suppressed": {},
        "date_handling": "year",
        "birth_years_pooled": 0,
        "safe_harbor": []
    }))
    .expect("manifest")
}

fn license(mode: AccessMode, tables: &[(&str, ColumnGrant)]) -> License {
    let now = Utc
        .with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
        .single()
        .expect("time");
    License {
        id: "lic".into(),
        organization: "acme".into(),
        releases: [("nh-test".to_string(), VersionPin::Latest)]
            .into_iter()
            .collect(),
        tables: tables
            .iter()
            .map(|(t, g)| (t.to_string(), g.clone()))
            .collect(),
        purpose: "research.natural_history".into(),
        mode,
        output: OutputRules::default(),
        quota: Quota {
            queries_per_minute: 10,
            queries_per_day: 10,
            rows_per_day: 10,
            queries_per_month: 10,
            rows_per_month: 10,
        },
        term_start: now,
        term_end: now + chrono::Duration::days(1),
        fees: Fees {
            flat: None,
            per_contributing_patient: None,
            patient_share_bps: 5000,
        },
        clauses: standard_clauses(),
        status: LicenseStatus::Active,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    source: ReleaseSource,
}

fn fixture(revoked: &[usize]) -> Fixture {
    let dir = tempfile::tempdir().expect("temp");
    let manifest = release(dir.path());
    let withdrawn: HashSet<String> = revoked.iter().map(|i| format!("p{i:02}")).collect();
    Fixture {
        source: ReleaseSource {
            family: "nh-test".into(),
            version: 1,
            dir: dir.path().to_path_buf(),
            manifest,
            withdrawn: Arc::new(withdrawn),
        },
        _dir: dir,
    }
}

async fn session(f: &Fixture, license: License) -> Session {
    Session::new(Scope {
        license,
        releases: vec![f.source.clone()],
        memory_limit: 256 << 20,
        time_limit: Duration::from_secs(30),
        cohorts: Vec::new(),
    })
    .await
    .expect("session")
}

fn row_level() -> License {
    license(
        AccessMode::RowLevel,
        &[(
            "person",
            ColumnGrant::Only(vec!["person_id".into(), "gender_source_value".into()]),
        )],
    )
}

fn aggregate_only() -> License {
    license(
        AccessMode::AggregateOnly,
        &[
            ("person", ColumnGrant::All),
            ("condition_occurrence", ColumnGrant::All),
        ],
    )
}

fn refused_rule(r: Result<crate::QueryOutput, QueryError>) -> String {
    match r {
        Err(QueryError::Refused { rule, .. }) => rule.to_string(),
        Err(QueryError::Invalid(m)) => format!("invalid: {m}"),
        Err(e) => format!("other: {e}"),
        Ok(o) => format!("allowed ({} rows)", o.rows),
    }
}

fn names(o: &crate::QueryOutput) -> Vec<String> {
    o.schema.fields().iter().map(|f| f.name().clone()).collect()
}

#[tokio::test]
async fn only_licensed_tables_and_columns_exist() {
    let f = fixture(&[]);
    let s = session(&f, row_level()).await;
    let all = s.run("SELECT * FROM person").await.expect("select *");
    assert_eq!(names(&all), ["person_id", "gender_source_value"]);
    assert_eq!(all.rows, 60);
    // Qualified names work; the unlicensed column and table do not exist.
    let q = s
        .run("SELECT count(*) FROM tessera.nh_test.person")
        .await
        .expect("qualified");
    assert_eq!(q.rows, 1);
    for sql in [
        "SELECT zip FROM person",
        "SELECT * FROM condition_occurrence",
        "SELECT p.person_id FROM person p JOIN condition_occurrence c ON p.person_id = c.person_id",
        "WITH x AS (SELECT zip FROM person) SELECT * FROM x",
        "SELECT person_id FROM person UNION SELECT person_id FROM condition_occurrence",
        "SELECT * FROM person WHERE person_id IN (SELECT person_id FROM condition_occurrence)",
    ] {
        let r = refused_rule(s.run(sql).await);
        assert!(r.starts_with("invalid:"), "{sql}: {r}");
    }
    // information_schema shows what is licensed and nothing else.
    let cols = s
        .run("SELECT table_name, column_name FROM information_schema.columns WHERE table_catalog = 'tessera'")
        .await
        .expect("information_schema");
    assert_eq!(cols.rows, 2, "person_id and gender_source_value of person");
    let tables = s
        .run("SELECT table_name FROM information_schema.tables WHERE table_schema = 'nh_test'")
        .await
        .expect("tables");
    assert_eq!(tables.rows, 1);
}

#[tokio::test]
async fn nothing_can_be_written_or_read_from_files() {
    let f = fixture(&[]);
    let s = session(&f, row_level()).await;
    let file = f.source.dir.join("person.parquet");
    for sql in [
        "CREATE TABLE t AS SELECT * FROM person".to_string(),
        "CREATE VIEW v AS SELECT * FROM person".to_string(),
        "DROP VIEW person".to_string(),
        "INSERT INTO person VALUES ('x', 'F')".to_string(),
        "COPY person TO '/tmp/out.parquet'".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
        format!(
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{}'",
            file.display()
        ),
    ] {
        assert_eq!(refused_rule(s.run(&sql).await), "read_only", "{sql}");
    }
    let r = refused_rule(s.run(&format!("SELECT * FROM '{}'", file.display())).await);
    assert!(r.starts_with("invalid:"), "a file path is not a table: {r}");
    assert_eq!(
        refused_rule(s.run("EXPLAIN SELECT * FROM person").await),
        "no_explain"
    );
}

#[tokio::test]
async fn revoked_consent_disappears_at_scan_time() {
    let f = fixture(&[0, 1, 2, 40]);
    let s = session(&f, row_level()).await;
    let o = s
        .run("SELECT person_id FROM person WHERE person_id IN ('p00', 'p03', 'p40')")
        .await
        .expect("run");
    assert_eq!(o.rows, 1, "only p03 is still consented");
    assert_eq!(o.persons, Some(1));
}

#[tokio::test]
async fn row_level_results_are_capped() {
    let f = fixture(&[]);
    let mut l = row_level();
    l.output.max_rows = Some(25);
    let s = session(&f, l).await;
    let o = s.run("SELECT * FROM person").await.expect("run");
    assert_eq!(o.rows, 25);
    assert!(o.rows_truncated);
    let o = s.run("SELECT * FROM person LIMIT 10").await.expect("run");
    assert_eq!(o.rows, 10);
    assert!(!o.rows_truncated);
}

#[tokio::test]
async fn aggregates_keep_groups_of_enough_persons() {
    let f = fixture(&[]);
    let s = session(&f, aggregate_only()).await;
    let o = s
        .run("SELECT gender_source_value AS sex, count(*) AS n FROM person GROUP BY gender_source_value ORDER BY sex")
        .await
        .expect("run");
    assert_eq!(names(&o), ["sex", "n"], "the persons column is not shown");
    assert_eq!(o.rows, 2, "F (30) and M (27) shown; U (3) withheld");
    assert_eq!(o.groups_suppressed, 1);
    assert_eq!(o.persons, Some(57));
    // A join counts persons, not rows: C2 is held by 12 persons, C1 by 60.
    let o = s
        .run("SELECT c.condition_source_value, count(*) FROM person p JOIN condition_occurrence c ON p.person_id = c.person_id GROUP BY 1")
        .await
        .expect("join");
    assert_eq!(o.rows, 2);
    // HAVING for small groups finds nothing: they are suppressed anyway.
    let o = s
        .run("SELECT gender_source_value, count(*) FROM person GROUP BY 1 HAVING count(*) < 5")
        .await
        .expect("having");
    assert_eq!((o.rows, o.groups_suppressed), (0, 1));
    // A CTE and a subquery inside the aggregate are fine.
    let o = s
        .run("WITH c2 AS (SELECT person_id FROM condition_occurrence WHERE condition_source_value = 'C2') SELECT count(*) FROM person WHERE person_id IN (SELECT person_id FROM c2)")
        .await
        .expect("cte");
    assert_eq!(o.rows, 1);
    // Rounding.
    let mut l = aggregate_only();
    l.output.rounding_base = Some(5);
    let s = session(&f, l).await;
    let o = s
        .run("SELECT count(*) AS n FROM person WHERE gender_source_value = 'M'")
        .await
        .expect("rounded");
    let n = o.batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("int")
        .value(0);
    assert_eq!(n, 25, "27 rounded to 5");
}

#[tokio::test]
async fn aggregate_only_refusals() {
    let f = fixture(&[]);
    let s = session(&f, aggregate_only()).await;
    let cases = [
        ("SELECT * FROM person", "not_aggregate"),
        ("SELECT person_id FROM person LIMIT 5", "not_aggregate"),
        ("SELECT 1", "not_aggregate"),
        (
            "SELECT person_id, count(*) FROM person GROUP BY person_id",
            "group_by_person",
        ),
        (
            "SELECT substr(person_id, 1, 3), count(*) FROM person GROUP BY 1",
            "group_by_person",
        ),
        (
            "SELECT gender_source_value, min(days_since_index) FROM person p JOIN condition_occurrence c ON p.person_id = c.person_id GROUP BY 1",
            "aggregate_function",
        ),
        (
            "SELECT max(days_since_index) FROM condition_occurrence",
            "aggregate_function",
        ),
        (
            "SELECT median(days_since_index) FROM condition_occurrence",
            "aggregate_function",
        ),
        (
            "SELECT array_agg(person_id) FROM person",
            "aggregate_function",
        ),
        (
            "SELECT string_agg(person_id, ',') FROM person",
            "aggregate_function",
        ),
        (
            "SELECT first_value(person_id) FROM person",
            "aggregate_function",
        ),
        (
            "SELECT person_id, row_number() OVER () FROM person",
            "no_window",
        ),
        (
            "SELECT gender_source_value, count(*) OVER (PARTITION BY gender_source_value) FROM person",
            "no_window",
        ),
        (
            "SELECT count(*) FROM person UNION ALL SELECT count(*) FROM condition_occurrence",
            "not_aggregate",
        ),
        (
            "SELECT count(*), (SELECT person_id FROM person LIMIT 1) FROM person",
            "subquery_outside_aggregate",
        ),
        (
            "SELECT (SELECT person_id FROM person LIMIT 1) AS who, count(*) FROM person GROUP BY 1",
            "subquery_outside_aggregate",
        ),
        (
            "SELECT count(*) FROM (SELECT count(*) AS n FROM person) t",
            "no_persons",
        ),
        (
            "SELECT * FROM (SELECT person_id FROM person) t",
            "not_aggregate",
        ),
    ];
    for (sql, rule) in cases {
        assert_eq!(refused_rule(s.run(sql).await), rule, "{sql}");
    }
}

#[tokio::test]
async fn the_decision_is_asked_about_the_tables_the_plan_reads() {
    let f = fixture(&[]);
    let s = session(&f, aggregate_only()).await;
    let planned = s
        .plan("SELECT c.condition_source_value, count(*) FROM person p JOIN condition_occurrence c ON p.person_id = c.person_id WHERE p.person_id IN (SELECT person_id FROM person) GROUP BY 1")
        .await
        .expect("plan");
    let reads = s.tables_read(&planned.plan).expect("reads");
    let mut tables: Vec<(String, String)> = reads
        .iter()
        .map(|r| (r.schema.clone(), r.table.clone()))
        .collect();
    tables.sort();
    assert_eq!(
        tables,
        [
            ("nh_test".to_string(), "condition_occurrence".to_string()),
            ("nh_test".to_string(), "person".to_string())
        ],
        "{reads:?}"
    );
}

#[tokio::test]
async fn execution_errors_do_not_quote_values() {
    let f = fixture(&[]);
    let s = session(&f, aggregate_only()).await;
    let r = s
        .run("SELECT sum(CAST(person_id AS INT)) FROM person")
        .await;
    let message = match r {
        Err(e) => e.to_string(),
        Ok(o) => format!("allowed ({} rows)", o.rows),
    };
    assert!(!message.contains("p0"), "a person_id leaked: {message}");
}

fn first_int(o: &crate::QueryOutput) -> i64 {
    let b = o.batches.iter().find(|b| b.num_rows() > 0).expect("a row");
    let n = datafusion::arrow::compute::cast(b.column(0), &DataType::Int64).expect("int");
    n.as_any()
        .downcast_ref::<Int64Array>()
        .expect("Int64")
        .value(0)
}

#[tokio::test]
async fn rows_may_be_shaped_freely_below_the_aggregate() {
    let f = fixture(&[]);
    let s = session(&f, aggregate_only()).await;
    // A subquery that drops person_id (the benchmark's q1): persons are still counted.
    let o = s
        .run("SELECT sex, count(*) AS n FROM (SELECT gender_source_value AS sex FROM person) t GROUP BY sex ORDER BY sex")
        .await
        .expect("subquery without person_id");
    assert_eq!(
        (o.rows, o.groups_suppressed),
        (2, 1),
        "U (3 persons) withheld"
    );
    // Time to first event (q4): an inner aggregate grouped by person, bucketed outside.
    let o = s
        .run("SELECT CAST(floor(t / 50.0) AS BIGINT) * 50 AS bucket, count(*) AS n FROM (SELECT person_id, min(days_since_index) AS t FROM condition_occurrence GROUP BY person_id) f GROUP BY 1 ORDER BY 1")
        .await
        .expect("time to first event");
    // First events are days 0..59 (one per person): buckets 0 (50 persons) and 50 (10 withheld).
    assert_eq!((o.rows, o.groups_suppressed), (1, 1));
    assert_eq!(first_int(&o), 0);
    // A cross join cannot borrow persons from the other side: each days_since_index value
    // belongs to one person in condition_occurrence, whatever the 60 persons of person say.
    let o = s
        .run("SELECT c.days_since_index, count(*) FROM person p CROSS JOIN condition_occurrence c GROUP BY 1")
        .await
        .expect("cross join");
    assert_eq!(
        o.rows, 0,
        "every group holds one person of condition_occurrence"
    );
    // DISTINCT below the aggregate must keep person_id, else the count would change.
    assert_eq!(
        refused_rule(
            s.run("SELECT count(*) FROM (SELECT DISTINCT gender_source_value FROM person) t")
                .await
        ),
        "no_persons"
    );
    let o = s
        .run("SELECT count(*) AS n FROM (SELECT DISTINCT person_id FROM condition_occurrence WHERE condition_source_value = 'C2') t")
        .await
        .expect("distinct persons");
    assert_eq!(first_int(&o), 12);
    // A renamed person_id passes the name check and is suppressed group by group.
    let o = s
        .run("SELECT x, count(*) FROM (SELECT person_id AS x FROM person) t GROUP BY x")
        .await
        .expect("renamed identifier");
    assert_eq!((o.rows, o.groups_suppressed), (0, 60));
    // Columns the license marks identifying cannot be grouped by.
    let mut l = aggregate_only();
    l.output.identifying_columns = vec!["zip".into()];
    let s = session(&f, l).await;
    assert_eq!(
        refused_rule(s.run("SELECT zip, count(*) FROM person GROUP BY zip").await),
        "group_by_person"
    );
}

#[tokio::test]
async fn parameters_are_bound_by_position() {
    use datafusion::common::ScalarValue;
    let f = fixture(&[]);
    let s = session(&f, row_level()).await;
    let planned = s
        .plan("SELECT count(*) AS n FROM person WHERE gender_source_value = ? AND person_id < ?")
        .await
        .expect("plan");
    let params = planned.parameter_schema().expect("parameters");
    let names: Vec<&str> = params.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["$1", "$2"], "? is numbered in writing order");
    assert_eq!(params.field(0).data_type(), &DataType::Utf8);
    let bound = planned
        .bind(vec![
            ScalarValue::Utf8(Some("F".into())),
            ScalarValue::Utf8(Some("p10".into())),
        ])
        .expect("bind");
    let o = s.run_planned(bound).await.expect("run");
    assert_eq!(first_int(&o), 10, "F persons p00 to p09");
    let planned = s
        .plan("SELECT count(*) AS n FROM person WHERE gender_source_value = $1")
        .await
        .expect("plan");
    let e = planned.bind(vec![]).expect_err("missing value");
    assert!(e.to_string().contains("1 parameter"), "{e}");
}

#[tokio::test]
async fn fingerprints_tell_the_same_and_near_identical_aggregates() {
    let f = fixture(&[]);
    let s = session(&f, aggregate_only()).await;
    let print = |sql: &'static str| {
        let s = &s;
        async move {
            s.plan(sql)
                .await
                .expect("plan")
                .fingerprint()
                .expect("aggregate")
        }
    };
    let a =
        print("SELECT gender_source_value, count(*) AS n FROM person WHERE zip = '021' GROUP BY 1")
            .await;
    let respelled = print("select gender_source_value AS sex, COUNT(*) persons from person where zip = '021' group by gender_source_value order by 2 limit 10").await;
    let other_value =
        print("SELECT gender_source_value, count(*) AS n FROM person WHERE zip = '100' GROUP BY 1")
            .await;
    let other_shape =
        print("SELECT zip, count(*) AS n FROM person WHERE zip = '021' GROUP BY 1").await;
    assert_eq!(
        a, respelled,
        "spelling, aliases, order and limits do not matter"
    );
    assert_ne!(a.same, other_value.same);
    assert_eq!(a.shape, other_value.shape, "only a literal differs");
    assert_ne!(a.shape, other_shape.shape);
    let rows = session(&f, row_level()).await;
    assert!(
        rows.plan("SELECT count(*) FROM person")
            .await
            .expect("plan")
            .fingerprint()
            .is_none(),
        "row-level plans carry no fingerprint"
    );
}

#[test]
fn literals_are_masked_but_keywords_and_names_are_not() {
    use crate::session::mask_literals;
    assert_eq!(
        mask_literals(r#"Filter: person.zip = Utf8("0\"21") AND CAST(x AS Int64) > Int64(40)"#),
        "Filter: person.zip = ? AND CAST(x AS Int64) > ?"
    );
    assert_eq!(
        mask_literals("Decimal128(Some(12),5,2) + Float64(1.5)"),
        "? + ?"
    );
}

#[test]
fn cohort_table_names_are_masked_in_fingerprints() {
    use crate::session::mask_cohort_names;
    assert_eq!(
        mask_cohort_names(
            "SubqueryAlias: cohort_adults_40\n  TableScan: my_cohort_x, cohort_b.person_id"
        ),
        "SubqueryAlias: cohort_?\n  TableScan: my_cohort_x, cohort_?.person_id"
    );
}

fn private() -> License {
    let mut l = aggregate_only();
    // Small groups in the fixture: a minimum cell of 5 leaves the noisy threshold in charge.
    l.output.min_cell_size = 5;
    l.output.privacy = Some(tessera_licensing::privacy::PrivacyTerms {
        rho_budget: 10.0,
        rho_per_query: 1.0,
        max_rho_per_query: 10.0,
        ..Default::default()
    });
    l
}

fn stddev(o: &crate::QueryOutput, column: &str) -> Option<f64> {
    o.schema
        .field_with_name(column)
        .ok()?
        .metadata()
        .get(crate::dp::STDDEV)?
        .parse()
        .ok()
}

#[tokio::test]
async fn private_answers_carry_their_noise_and_bound_each_person() {
    let f = fixture(&[]);
    let s = session(&f, private()).await;
    // count(*) and the hidden distinct-person count share ρ = 1: σ = 1/√(2·0.5) = 1.
    let o = s
        .run("SELECT count(*) AS n FROM person")
        .await
        .expect("a noisy count");
    assert_eq!(names(&o), ["n"]);
    assert_eq!(stddev(&o, "n"), Some(1.0));
    let n = first_int(&o);
    assert!((60 - 8..=60 + 8).contains(&n), "60 persons, σ 1: {n}");
    // Each person's rows reach one group and one row per group: rows of C1 (one per person)
    // and C2 (twelve persons, two rows each) count as persons.
    let o = s
        .run("-- tessera: max_groups=2 rho=10\nSELECT condition_source_value AS code, count(*) AS n FROM condition_occurrence GROUP BY 1 ORDER BY 1")
        .await
        .expect("grouped");
    let counts: Vec<i64> = o.batches[0]
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("int")
        .iter()
        .flatten()
        .collect();
    assert_eq!(counts.len(), 2, "{counts:?}");
    // With max_groups = 2 and ρ = 10 over two statistics, σ = √2·1/√(2·5).
    assert_eq!(stddev(&o, "n"), Some(2f64.sqrt() / 10f64.sqrt()));
    assert!(
        (counts[0] - 60).abs() <= 4,
        "C1 counted in persons: {counts:?}"
    );
    assert!(
        (counts[1] - 12).abs() <= 4,
        "C2 counted in persons, not rows: {counts:?}"
    );
    // A group of three persons does not clear the threshold.
    let o = s
        .run("-- tessera: rho=0.1\nSELECT gender_source_value AS sex, count(DISTINCT person_id) AS n FROM person GROUP BY 1")
        .await
        .expect("by sex");
    assert_eq!(o.rows, 2, "F and M shown, U (3 persons) not");
    let p = s
        .plan("-- tessera: rho=0.1\nSELECT gender_source_value AS sex, count(DISTINCT person_id) AS n FROM person GROUP BY 1")
        .await
        .expect("plan");
    let dp = p.dp.expect("a private plan");
    assert_eq!(
        dp.statistics.len(),
        1,
        "the query's own person count is the threshold's"
    );
    // τ = 1 + σ·√(2·ln(1/δ)) with σ = 1/√(2·0.1) (one statistic takes all of ρ = 0.1).
    let tau = 1.0 + (1.0 / 0.2f64).sqrt() * (2.0 * (1e7f64).ln()).sqrt();
    assert!((dp.threshold.expect("grouped") - tau).abs() < 1e-9);
    assert!(
        (dp.rho - 0.1).abs() < 1e-9,
        "charged what opendp's map says: {}",
        dp.rho
    );
}

#[tokio::test]
async fn private_refusals_name_what_to_change() {
    let f = fixture(&[]);
    let s = session(&f, private()).await;
    for (sql, rule) in [
        (
            "SELECT stddev(days_since_index) FROM condition_occurrence",
            "aggregate_function",
        ),
        (
            "SELECT sum(days_since_index) FROM condition_occurrence",
            "dp_bounds",
        ),
        (
            "-- tessera: rho=11\nSELECT count(*) FROM person",
            "privacy_budget",
        ),
        (
            "SELECT person_id, count(*) FROM person GROUP BY 1",
            "group_by_person",
        ),
        (
            "SELECT count(*) FROM person p, condition_occurrence c WHERE c.days_since_index > 3",
            "dp_persons",
        ),
    ] {
        assert_eq!(refused_rule(s.run(sql).await), rule, "{sql}");
    }
    let e = s
        .run("SELECT sum(days_since_index) FROM condition_occurrence")
        .await
        .expect_err("bounds");
    assert!(
        e.to_string()
            .contains("-- tessera: bounds.days_since_index=lo..hi"),
        "{e}"
    );
    let o = s
        .run("-- tessera: bounds.days_since_index=0..100\nSELECT sum(days_since_index) AS s, avg(days_since_index) AS a FROM condition_occurrence")
        .await
        .expect("bounded");
    assert!(
        stddev(&o, "s").is_some() && stddev(&o, "a").is_none(),
        "a mean's noise is not one number"
    );
}

#[tokio::test]
async fn a_shown_group_cleared_the_threshold_with_the_value_shown() {
    // The query's own person count is also the threshold's: drawn once, so no group ever
    // shows a count under the threshold. Every person holds C1 and twelve hold C2 too; with
    // two groups per person and ρ = 0.28, σ = √2/√0.56 ≈ 1.89 and τ = 1 + σ·√(2·ln(2/δ)) ≈
    // 12, so C2 shows in about half of the runs (and, were the shown count drawn apart from
    // the threshold's, would show under τ in about a quarter).
    let f = fixture(&[]);
    let s = session(&f, private()).await;
    let sql = "-- tessera: rho=0.28 max_groups=2\nSELECT condition_source_value AS code, count(DISTINCT person_id) AS n FROM condition_occurrence GROUP BY 1";
    let tau = s
        .plan(sql)
        .await
        .expect("plan")
        .dp
        .and_then(|d| d.threshold)
        .expect("τ");
    assert!((11.0..13.0).contains(&tau), "τ = {tau}");
    let mut shown_near = 0;
    for _ in 0..100 {
        let o = s.run(sql).await.expect("run");
        for b in &o.batches {
            let codes =
                datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8).expect("text");
            let codes = codes.as_any().downcast_ref::<StringArray>().map(|a| {
                a.iter()
                    .map(|c| c.unwrap_or("").to_string())
                    .collect::<Vec<_>>()
            });
            let counts = b
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("int");
            for (i, n) in counts.iter().enumerate() {
                let n = n.expect("count");
                assert!(n as f64 >= tau, "{n} shown under τ = {tau}");
                if codes.as_ref().is_some_and(|c| c[i] == "C2") {
                    shown_near += 1;
                }
            }
        }
    }
    assert!(
        shown_near > 0,
        "the group near the threshold showed sometimes"
    );
}

#[tokio::test]
async fn declared_bounds_clamp_when_the_query_gives_none() {
    let f = fixture(&[]);
    let mut source = f.source.clone();
    for file in &mut source.manifest.files {
        for c in &mut file.columns {
            if c.name == "days_since_index" {
                c.bounds = Some((0.0, 100.0));
            }
        }
    }
    let s = Session::new(Scope {
        license: private(),
        releases: vec![source],
        memory_limit: 256 << 20,
        time_limit: Duration::from_secs(30),
        cohorts: Vec::new(),
    })
    .await
    .expect("session");
    let p = s
        .plan("SELECT sum(days_since_index) AS s FROM condition_occurrence")
        .await
        .expect("the dictionary's bounds");
    let dp = p.dp.expect("private");
    // ρ = 1 over two statistics; one row per person: c = 100, σ = 100/√(2·0.5).
    assert_eq!(
        dp.stddev_of("sum(condition_occurrence.days_since_index)"),
        Some(100.0)
    );
    // The query's own bounds win.
    let p = s
        .plan("-- tessera: bounds.days_since_index=0..10\nSELECT sum(days_since_index) AS s FROM condition_occurrence")
        .await
        .expect("the query's bounds");
    assert_eq!(
        p.dp.expect("private")
            .stddev_of("sum(condition_occurrence.days_since_index)"),
        Some(10.0)
    );
}

#[tokio::test]
async fn by_default_each_person_counts_once_in_one_group() {
    // Sixty persons hold C1 (one row each); twelve of them hold C2 too (two rows each): 84
    // rows in two groups. Under the default bounds every person counts once, in one group.
    let f = fixture(&[]);
    let s = session(&f, private()).await;
    let o = s
        .run("-- tessera: rho=10\nSELECT condition_source_value AS code, count(*) AS n FROM condition_occurrence GROUP BY 1")
        .await
        .expect("grouped");
    let total: i64 = o
        .batches
        .iter()
        .flat_map(|b| {
            b.column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("int")
                .iter()
                .flatten()
                .collect::<Vec<_>>()
        })
        .sum();
    assert!(
        total <= 63,
        "60 persons, one row each, noise σ ≈ 0.3: {total}"
    );
    assert!(total >= 40, "the groups show: {total}");
}

#[tokio::test]
async fn the_person_table_needs_no_contribution_bound() {
    let f = fixture(&[]);
    let s = session(&f, private()).await;
    let windows = |p: &crate::session::Planned| {
        use datafusion::common::tree_node::TreeNode;
        p.plan
            .exists(|n| {
                Ok(matches!(
                    n,
                    datafusion::logical_expr::LogicalPlan::Window(_)
                ))
            })
            .expect("walk")
    };
    let person = s
        .plan("SELECT gender_source_value, count(*) FROM person WHERE zip <> '000' GROUP BY 1")
        .await
        .expect("plan");
    assert!(!windows(&person), "one row per person already");
    let events = s
        .plan("SELECT condition_source_value, count(*) FROM condition_occurrence GROUP BY 1")
        .await
        .expect("plan");
    assert!(windows(&events), "events are bounded per person");
    let first = s
        .plan("SELECT t, count(*) FROM (SELECT person_id, min(days_since_index) AS t FROM condition_occurrence GROUP BY person_id) f GROUP BY 1")
        .await
        .expect("plan");
    assert!(
        !windows(&first),
        "one row per person after grouping by person"
    );
}
