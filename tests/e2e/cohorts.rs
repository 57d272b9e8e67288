//! Saved cohort definitions against the real server: saved over HTTP, evaluated by the query
//! service under the license, and exposed as `cohort_<name>` in Flight SQL sessions. The
//! cohort's members are checked against a computation made here from the release's Parquet
//! files; the aggregate-only rules hold over the cohort table; definitions are checked field by
//! field; cohorts belong to their license; a revoked consent leaves the cohort at once; and a sweep of near-identical definitions is
//! refused as differencing.

use std::collections::{BTreeMap, BTreeSet};

use arrow_flight::sql::CommandGetTables;
use futures::TryStreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::flight::{client, column_i64, column_text, sql};
use crate::http::{Server, demo_copy, demo_json, demo_org, flight_uri, release_dir};

const PREDIABETES: &str = "15777000";
const DIABETES: &str = "44054006";

fn definition(name: &str, min_age: u32) -> Value {
    json!({
        "name": name,
        "index": {"domain": "condition", "codes": [PREDIABETES]},
        "age_at_index": {"min": min_age, "max": 64},
        "exclusion": [{"domain": "condition", "codes": [DIABETES], "window": {"to": 0}}]
    })
}

fn text_column(df: &polars::prelude::DataFrame, name: &str) -> Vec<Option<String>> {
    use polars::prelude::*;
    df.column(name)
        .expect("column")
        .cast(&DataType::String)
        .expect("text")
        .str()
        .expect("str")
        .iter()
        .map(|v| v.map(str::to_string))
        .collect()
}

/// The persons of [`definition`] (with `min_age`), computed from the Parquet files without
/// Tessera's code: each person's first prediabetes diagnosis is the index; its year minus the
/// birth year (the middle of a generalized interval) is the age; anyone with diabetes on or
/// before the index day is left out.
fn expected_members(min_age: i64) -> BTreeSet<String> {
    use polars::prelude::*;
    let read = |table: &str| {
        ParquetReader::new(
            std::fs::File::open(release_dir().join(format!("{table}.parquet"))).expect(table),
        )
        .finish()
        .expect("read")
    };
    let conditions = read("condition_occurrence");
    let ids = text_column(&conditions, "person_id");
    let codes = text_column(&conditions, "condition_source_value");
    let dates = text_column(&conditions, "condition_start_date");
    let days: Vec<Option<i64>> = conditions
        .column("days_since_index")
        .expect("days")
        .cast(&DataType::Int64)
        .expect("int")
        .i64()
        .expect("i64")
        .iter()
        .collect();
    // person -> (first day, earliest date that day)
    let mut index: BTreeMap<String, (i64, String)> = BTreeMap::new();
    let mut diabetes: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..ids.len() {
        let (Some(id), Some(code), Some(day)) = (&ids[i], &codes[i], days[i]) else {
            continue;
        };
        if code == PREDIABETES {
            let date = dates[i].clone().unwrap_or_default();
            let e = index.entry(id.clone()).or_insert((day, date.clone()));
            if day < e.0 || (day == e.0 && date < e.1) {
                *e = (day, date);
            }
        } else if code == DIABETES {
            let e = diabetes.entry(id.clone()).or_insert(day);
            *e = (*e).min(day);
        }
    }
    let person = read("person");
    let birth: BTreeMap<String, i64> = text_column(&person, "person_id")
        .into_iter()
        .zip(text_column(&person, "birth_date"))
        .filter_map(|(id, b)| {
            // A year, or the middle year of an interval: `[1950, 1955)` is 1950 to 1954.
            let years: Vec<i64> = b?
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| s.len() == 4)
                .filter_map(|s| s.parse().ok())
                .collect();
            let year = match years.as_slice() {
                [y] => *y,
                [low, high] => (low + high - 1) / 2,
                _ => return None,
            };
            Some((id?, year))
        })
        .collect();
    index
        .into_iter()
        .filter(|(id, (day, date))| {
            let year: Option<i64> = date.get(..4).and_then(|y| y.parse().ok());
            let age = year.zip(birth.get(id)).map(|(y, b)| y - b);
            age.is_some_and(|a| (min_age..=64).contains(&a))
                && diabetes.get(id).is_none_or(|d| d > day)
        })
        .map(|(id, _)| id)
        .collect()
}

async fn put(server: &Server, name: &str, key: Option<&str>, body: &Value) -> (StatusCode, Value) {
    let mut r = reqwest::Client::new()
        .put(server.url(&format!("/v1/cohorts/{name}")))
        .json(body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_cohorts_are_tables_in_the_licenses_sessions() {
    let t = demo_copy();
    let server = Server::start(&t, &["--near-repeat-limit", "4"]);
    let demo = demo_json(&t);
    let uri = flight_uri(&demo);
    let (agg_key, agg_license, _) = demo_org(&demo, "demo-aggregate");
    let (row_key, _, _) = demo_org(&demo, "demo-rowlevel");
    let expected = expected_members(18);
    assert!(
        expected.len() >= 11,
        "the demo holds a cohort large enough to show: {}",
        expected.len()
    );

    // Saved under the row-level license: its size, and its members are the persons computed
    // here.
    let (status, saved) = put(
        &server,
        "prediabetes",
        Some(&row_key),
        &definition("prediabetes", 18),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!(saved["table"], "cohort_prediabetes");
    assert_eq!(saved["persons"].as_u64(), Some(expected.len() as u64));
    let mut rows = client(&uri, Some(&row_key)).await;
    let batches = sql(
        &mut rows,
        "SELECT person_id, index_day, age_at_index, follow_up_days FROM cohort_prediabetes",
    )
    .await
    .expect("row-level query of the cohort");
    let mut members = BTreeSet::new();
    for b in &batches {
        let ids = column_text(b, "person_id");
        for (id, age) in ids.into_iter().zip(column_i64(b, "age_at_index")) {
            assert!(
                age.is_some_and(|a| (18..=64).contains(&a)),
                "age at index within the bounds"
            );
            members.insert(id.expect("person_id"));
        }
    }
    assert_eq!(members, expected, "the cohort's members");

    // The table is in the catalog the license browses.
    let info = rows
        .get_tables(CommandGetTables {
            catalog: Some("tessera".into()),
            db_schema_filter_pattern: None,
            table_name_filter_pattern: Some("cohort%".into()),
            table_types: vec![],
            include_schema: false,
        })
        .await
        .expect("get tables");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let listed: Vec<_> = rows
        .do_get(ticket)
        .await
        .expect("do_get")
        .try_collect()
        .await
        .expect("batches");
    let names: Vec<String> = listed
        .iter()
        .flat_map(|b| column_text(b, "table_name"))
        .map(|n| n.expect("table_name"))
        .collect();
    assert_eq!(names, vec!["cohort_prediabetes".to_string()]);

    // Cohorts belong to their license: the aggregate license does not see it.
    let mut agg = client(&uri, Some(&agg_key)).await;
    let e = sql(&mut agg, "SELECT count(*) FROM cohort_prediabetes")
        .await
        .expect_err("another license's cohort");
    assert!(
        e.contains("cohort_prediabetes") && e.contains("not found"),
        "{e}"
    );

    // Under the aggregate-only license: counted with its rules, never listed.
    let (status, saved) = put(
        &server,
        "prediabetes",
        Some(&agg_key),
        &definition("prediabetes", 18),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!(saved["license"], agg_license.as_str());
    assert_eq!(saved["persons"].as_u64(), Some(expected.len() as u64));
    let e = sql(&mut agg, "SELECT * FROM cohort_prediabetes")
        .await
        .expect_err("rows of a cohort under an aggregate-only license");
    assert!(e.contains("not_aggregate"), "{e}");
    let e = sql(&mut agg, "SELECT max(age_at_index) FROM cohort_prediabetes")
        .await
        .expect_err("a person-level value");
    assert!(e.contains("aggregate_function"), "{e}");
    let counted = sql(
        &mut agg,
        "SELECT p.gender_source_value AS sex, count(*) AS n FROM cohort_prediabetes c JOIN person p ON p.person_id = c.person_id GROUP BY 1",
    )
    .await
    .expect("an aggregate over the cohort");
    let shown: i64 = counted
        .iter()
        .flat_map(|b| column_i64(b, "n"))
        .map(|n| n.unwrap_or(0))
        .sum();
    assert!(
        shown as usize <= expected.len() && shown > 0,
        "counts by sex (small groups withheld) add up to at most the cohort: {shown}"
    );

    // Definitions are checked field by field, before anything is saved.
    for (body, field) in [
        (
            json!({"name": "x", "index": {"domain": "condition", "codes": [PREDIABETES]}, "sql": "DROP TABLE person"}),
            "unknown field `sql`",
        ),
        (
            json!({"name": "x", "index": {"domain": "condition", "codes": []}}),
            "index.codes",
        ),
        (
            json!({"name": "y", "index": {"domain": "condition", "codes": [PREDIABETES]}}),
            "differs from the name in the path",
        ),
        (
            json!({"name": "x", "index": {"domain": "condition", "codes": [PREDIABETES]}, "age_at_index": {"min": 70, "max": 20}}),
            "age_at_index",
        ),
    ] {
        let (status, answer) = put(&server, "x", Some(&row_key), &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(field), "{message} names {field}");
    }
    let (status, _) = put(&server, "x", None, &definition("x", 18)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let listed: Value = reqwest::Client::new()
        .get(server.url("/v1/cohorts"))
        .bearer_auth(&row_key)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let names: Vec<&str> = listed["cohorts"]
        .as_array()
        .expect("cohorts")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        vec!["prediabetes"],
        "nothing half-saved by the refusals"
    );

    // Differencing: the same criteria with the age bound swept, under ever new names, are one
    // shape of aggregate; past the near-repeat limit (4 here) the next is refused.
    let mut refused = None;
    for (i, age) in (19..30).enumerate() {
        let name = format!("sweep_{i}");
        let (status, answer) = put(&server, &name, Some(&agg_key), &definition(&name, age)).await;
        if status != StatusCode::OK {
            refused = Some((i, status, answer));
            break;
        }
    }
    let (i, status, answer) = refused.expect("a sweep is refused");
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(answer["error"]["code"], "differencing", "{answer}");
    assert!(i <= 4, "refused after at most the limit: at {i}");

    // Consent is live in a cohort too: a member who revokes leaves it on the next query.
    let catalog = tessera_catalog::Catalog::open(
        &t.database_url(),
        tessera_catalog::Keyring::new(&crate::support::test_key(), &[]),
    )
    .await
    .expect("catalog");
    let leaving = crate::http::demo_pseudonyms(&catalog)
        .await
        .into_iter()
        .find(|(_, pseudonym)| members.contains(pseudonym))
        .expect("a cohort member among the patients");
    catalog
        .revoke(
            &leaving.0,
            &tessera_catalog::Purpose::parse("research.natural_history").expect("purpose"),
            "cohort test",
        )
        .await
        .expect("revoke");
    catalog.close().await;
    let after = sql(
        &mut rows,
        &format!(
            "SELECT count(*) AS n, sum(CASE WHEN person_id = '{}' THEN 1 ELSE 0 END) AS gone FROM cohort_prediabetes",
            leaving.1
        ),
    )
    .await
    .expect("the cohort after a revocation");
    let counts: Vec<i64> = ["n", "gone"]
        .iter()
        .map(|c| column_i64(&after[0], c)[0].unwrap_or(0))
        .collect();
    assert_eq!(
        counts,
        vec![expected.len() as i64 - 1, 0],
        "the revoked member left the cohort"
    );

    // Deleted, the table is gone from the license's sessions.
    let deleted = reqwest::Client::new()
        .delete(server.url("/v1/cohorts/prediabetes"))
        .bearer_auth(&row_key)
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let e = sql(&mut rows, "SELECT count(*) FROM cohort_prediabetes")
        .await
        .expect_err("deleted");
    assert!(e.contains("not found"), "{e}");
    server.stop();
}
