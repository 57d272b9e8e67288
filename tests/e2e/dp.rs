//! Differential privacy as deployed: a real `tessera serve`, licenses with privacy terms made
//! through the CLI, every answer fetched over Flight SQL with `arrow_flight`'s client, exact
//! values read under the demo's row-level license of the same release.
//!
//! - the noise of a count has the mean and variance the answer's metadata claims, over many
//!   answers (each a distinct plan, so each is a fresh draw), and the budget spent is the sum
//!   of what the answers say they cost;
//! - a differencing attack (two counts differing by one person) that recovers the person's
//!   diagnosis every time under the exact license does no better under DP than the bound the
//!   budget implies, and running out of budget stops it;
//! - concurrent answers cannot overspend; a repeated query returns the same answer for free;
//! - a group held by too few persons does not show;
//! - the HTTP usage endpoint and the cohort-count endpoint report the budget and the noise.

use std::collections::HashMap;

use tessera_query::arrow::record_batch::RecordBatch;

use crate::flight::{client, column_i64, column_text, sql};
use crate::http::{Server, demo_copy, demo_json, demo_org, flight_uri};
use crate::support::Tessera;

/// An organization `dp` with a license `id` under differential privacy (`terms` over the
/// defaults) and a key for it.
fn dp_license(t: &Tessera, id: &str, terms: serde_json::Value) -> String {
    let mut privacy = serde_json::json!({
        "rho_budget": 1.0, "rho_per_query": 0.05, "max_rho_per_query": 0.25, "delta": 1e-7,
        "max_groups_per_person": 1, "max_rows_per_person": 1
    });
    for (k, v) in terms.as_object().expect("object") {
        privacy[k] = v.clone();
    }
    license_of_dp(
        t,
        id,
        serde_json::json!({
            "mode": "aggregate_only",
            "output": {"min_cell_size": 11, "rounding_base": null, "max_rows": null, "privacy": privacy},
        }),
    )
}

/// A license `id` of organization `dp` over `person` and `condition_occurrence` (row-level
/// unless `body` says otherwise; 600 queries a minute) and a key for it.
fn license_of_dp(t: &Tessera, id: &str, body: serde_json::Value) -> String {
    let key_file = t.dir.path().join("dp.pk8");
    if !key_file.exists() {
        crate::refusals::organization(t, "dp", "DP Org");
    }
    let mut body = body;
    body["organization"] = "dp".into();
    crate::refusals::license(t, &key_file, id, body);
    t.issue_key(&["--org", "dp", "--license", id]).1
}

/// The license's privacy budget as `GET /v1/licenses/{id}/usage` shows it.
async fn budget(server: &Server, license: &str, key: &str) -> serde_json::Value {
    let usage: serde_json::Value = reqwest::Client::new()
        .get(server.url(&format!("/v1/licenses/{license}/usage")))
        .bearer_auth(key)
        .send()
        .await
        .expect("usage")
        .json()
        .await
        .expect("json");
    usage["privacy"].clone()
}

fn meta(b: &[RecordBatch], key: &str) -> String {
    b.first()
        .and_then(|b| b.schema().metadata().get(key).cloned())
        .unwrap_or_else(|| panic!("no {key} in the result's metadata"))
}

fn meta_f64(b: &[RecordBatch], key: &str) -> f64 {
    meta(b, key).parse().expect("a number")
}

fn first_i64(b: &[RecordBatch], column: &str) -> i64 {
    b.iter()
        .flat_map(|b| column_i64(b, column))
        .next()
        .flatten()
        .expect("a value")
}

/// The noise's standard deviation the result claims for `column`.
fn claimed_stddev(b: &[RecordBatch], column: &str) -> f64 {
    let schema = b.first().expect("a batch").schema();
    schema
        .field_with_name(column)
        .expect("column")
        .metadata()
        .get("tessera.dp.stddev")
        .expect("the column's noise")
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_matches_the_accountant_and_the_budget_adds_up() {
    let t = demo_copy();
    let demo = demo_json(&t);
    let key = dp_license(
        &t,
        "dp-stats",
        serde_json::json!({"rho_budget": 100.0, "rho_per_query": 0.02, "max_rho_per_query": 1.0}),
    );
    let (row_key, _, _) = demo_org(&demo, "demo-rowlevel");
    let server = Server::start(&t, &["--rate-limit", "1000", "--burst", "1000"]);
    let uri = flight_uri(&demo_json(&t));
    let mut exact = client(&uri, Some(&row_key)).await;
    let truth = first_i64(
        &sql(&mut exact, "SELECT count(*) AS n FROM person")
            .await
            .expect("exact"),
        "n",
    );
    let mut c = client(&uri, Some(&key)).await;
    // Each answer a distinct plan (the literal differs, the rows counted do not), so each is a
    // fresh draw and is charged.
    let n = 160;
    let mut errors = Vec::with_capacity(n);
    let mut sigma = 0.0;
    let mut charged = 0.0;
    let mut last = Vec::new();
    for i in 0..n {
        let q = format!("SELECT count(*) AS n FROM person WHERE person_id <> 'nobody-{i}'");
        let b = sql(&mut c, &q).await.expect("a noisy count");
        errors.push((first_i64(&b, "n") - truth) as f64);
        sigma = claimed_stddev(&b, "n");
        charged += meta_f64(&b, "tessera.dp.rho_charged");
        assert_eq!(meta(&b, "tessera.dp.cached"), "false");
        last = b;
    }
    // count(*) and the hidden distinct-person count share ρ = 0.02: σ = 1/√(2·0.01).
    assert!((sigma - (1.0f64 / 0.02).sqrt()).abs() < 1e-9, "σ = {sigma}");
    let mean = errors.iter().sum::<f64>() / n as f64;
    let var = errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
    // Mean within 4 standard errors of 0; variance within 4 standard deviations of the
    // sample variance's distribution (√(2/(n-1)) relative) of σ².
    assert!(
        mean.abs() < 4.0 * sigma / (n as f64).sqrt(),
        "mean error {mean} with σ {sigma}"
    );
    println!(
        "noise of {n} counts: mean error {mean:.3}, variance {var:.2} against σ² = {:.2} (ratio {:.3})",
        sigma.powi(2),
        var / sigma.powi(2)
    );
    let rel = 4.0 * (2.0 / (n as f64 - 1.0)).sqrt();
    assert!(
        (var / sigma.powi(2) - 1.0).abs() < rel,
        "variance {var} against σ² {}",
        sigma.powi(2)
    );
    assert!(
        errors.iter().any(|e| *e != 0.0),
        "noise was added to some answers"
    );
    // The spend is the composition (sum) of the answers' costs.
    let spent = meta_f64(&last, "tessera.dp.rho_spent");
    assert!(
        (spent - charged).abs() < 1e-6,
        "spent {spent}, charged {charged}"
    );
    assert!(
        (charged - 0.02 * n as f64).abs() < 1e-6,
        "charged {charged}"
    );
    let usage = budget(&server, "dp-stats", &key).await;
    let p = &usage;
    assert!(
        (p["rho_spent"].as_f64().expect("spent") - charged).abs() < 1e-6,
        "{usage}"
    );
    assert!((p["rho_remaining"].as_f64().expect("left") - (100.0 - charged)).abs() < 1e-6);
    assert_eq!(p["answers"], n as u64);
    assert!(p["epsilon_spent"].as_f64().expect("ε") > 0.0);
}

/// Exact counts under the row-level license: persons with each condition code.
async fn holders(
    c: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
) -> HashMap<String, i64> {
    let b = sql(
        c,
        "SELECT condition_source_value AS code, count(DISTINCT person_id) AS persons FROM condition_occurrence GROUP BY 1",
    )
    .await
    .expect("exact holders");
    let mut out = HashMap::new();
    for b in &b {
        for (code, n) in column_text(b, "code")
            .into_iter()
            .zip(column_i64(b, "persons"))
        {
            if let (Some(code), Some(n)) = (code, n) {
                out.insert(code, n);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differencing_attack_recovers_diagnoses_exactly_but_not_under_dp() {
    let t = demo_copy();
    let dp_key = dp_license(
        &t,
        "dp-attack",
        serde_json::json!({"rho_budget": 50.0, "rho_per_query": 0.05}),
    );
    let small_key = dp_license(
        &t,
        "dp-small",
        serde_json::json!({"rho_budget": 0.1, "max_rho_per_query": 0.1}),
    );
    // The exact license and the row-level one the truth comes from, with room for the
    // attack's queries in their rate limits.
    let agg_key = license_of_dp(
        &t,
        "dp-exact",
        serde_json::json!({"mode": "aggregate_only"}),
    );
    let row_key = license_of_dp(&t, "dp-rows", serde_json::json!({}));
    let _server = Server::start(&t, &["--rate-limit", "1000", "--burst", "1000"]);
    let uri = flight_uri(&demo_json(&t));
    let mut row = client(&uri, Some(&row_key)).await;
    let held = holders(&mut row).await;
    // Targets: persons by pseudonym; diagnoses held by enough persons that both counts of
    // the attack are over the exact license's minimum cell.
    let persons: Vec<String> = sql(
        &mut row,
        "SELECT person_id FROM person ORDER BY person_id LIMIT 40",
    )
    .await
    .expect("persons")
    .iter()
    .flat_map(|b| column_text(b, "person_id"))
    .flatten()
    .collect();
    let mut codes: Vec<(&String, &i64)> = held.iter().filter(|(_, n)| **n >= 40).collect();
    codes.sort();
    assert!(codes.len() >= 2, "common diagnoses in the demo release");
    let mut exact = client(&uri, Some(&agg_key)).await;
    let mut private = client(&uri, Some(&dp_key)).await;
    let trials = 40;
    let (mut exact_right, mut dp_right) = (0, 0);
    for i in 0..trials {
        let (code, _) = codes[i % codes.len()];
        let target = &persons[i];
        let truth = !sql(
            &mut row,
            &format!(
                "SELECT 1 AS x FROM condition_occurrence WHERE person_id = '{target}' AND condition_source_value = '{code}' LIMIT 1"
            ),
        )
        .await
        .expect("truth")
        .iter()
        .all(|b| b.num_rows() == 0);
        // Under the exact license: the difference of the two counts is the target's answer.
        exact_right += usize::from((difference(&mut exact, code, target).await == 1) == truth);
        // Under DP: the same two questions; the attacker's best guess is the difference
        // rounded.
        let d = difference(&mut private, code, target).await;
        dp_right += usize::from((d as f64 > 0.5) == truth);
    }
    println!(
        "differencing attack: right {exact_right}/{trials} under exact aggregates, {dp_right}/{trials} under DP"
    );
    assert_eq!(
        exact_right, trials,
        "exact aggregates give the diagnosis away every time"
    );
    // Each trial's two answers cost ρ = 0.05 each about the target; the Gaussian mechanism
    // with total ρ = 0.1 is μ-GDP with μ = √(2ρ), and no test tells the two worlds apart with
    // accuracy above Φ(μ/2) ≈ 0.59 (balanced); the attacker here knows no prior either. With
    // 40 trials, allow 3.5 binomial standard deviations above the bound.
    let bound = 0.5 * (1.0 + libm_erf((0.2f64).sqrt() / 2.0 / std::f64::consts::SQRT_2));
    let sd = (bound * (1.0 - bound) / trials as f64).sqrt();
    let accuracy = dp_right as f64 / trials as f64;
    assert!(
        accuracy <= bound + 3.5 * sd,
        "the attacker was right {dp_right} of {trials} times under DP; the bound is {bound:.3}"
    );
    // A license whose budget covers two answers: the attack's third question is refused.
    let mut small = client(&uri, Some(&small_key)).await;
    let (code, _) = codes[0];
    sql(&mut small, &count_with(code, None))
        .await
        .expect("first answer");
    sql(&mut small, &count_with(code, Some(&persons[0])))
        .await
        .expect("second answer");
    let e = sql(&mut small, &count_with(code, Some(&persons[1])))
        .await
        .expect_err("the budget is spent");
    assert!(e.contains("privacy_budget"), "{e}");
    // A repeat of an answer released before costs nothing and changes nothing.
    let again = sql(&mut small, &count_with(code, None))
        .await
        .expect("a repeat");
    assert_eq!(meta(&again, "tessera.dp.cached"), "true");
    assert_eq!(meta_f64(&again, "tessera.dp.rho_charged"), 0.0);
}

/// Persons with diagnosis `code`, all of them (`without` none) or all but one.
fn count_with(code: &str, without: Option<&str>) -> String {
    let excluding = without
        .map(|p| format!(" AND person_id <> '{p}'"))
        .unwrap_or_default();
    format!(
        "SELECT count(DISTINCT person_id) AS n FROM condition_occurrence WHERE condition_source_value = '{code}'{excluding}"
    )
}

/// The differencing attack's two questions and its answer: persons with `code` minus persons
/// with `code` other than `target`.
async fn difference(
    c: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    code: &str,
    target: &str,
) -> i64 {
    let all = first_i64(&sql(c, &count_with(code, None)).await.expect("all"), "n");
    let rest = first_i64(
        &sql(c, &count_with(code, Some(target)))
            .await
            .expect("all but one"),
        "n",
    );
    all - rest
}

/// erf by Abramowitz and Stegun 7.1.26 (|error| < 1.5e-7), for the test's bound.
fn libm_erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-x * x).exp();
    if x >= 0.0 { y } else { -y }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_answers_cannot_overspend_and_repeats_are_free() {
    let t = demo_copy();
    let key = dp_license(&t, "dp-race", serde_json::json!({"rho_budget": 0.25}));
    let (row_key, _, _) = demo_org(&demo_json(&t), "demo-rowlevel");
    let server = Server::start(&t, &["--rate-limit", "1000", "--burst", "1000"]);
    let uri = flight_uri(&demo_json(&t));
    // Twelve distinct answers at once, each costing 0.05 of a 0.25 budget.
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (uri, key) = (uri.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = client(&uri, Some(&key)).await;
            sql(
                &mut c,
                &format!("SELECT count(*) AS n FROM person WHERE person_id <> 'nobody-{i}'"),
            )
            .await
        }));
    }
    let mut answered = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => answered += 1,
            Err(e) => assert!(e.contains("privacy_budget"), "{e}"),
        }
    }
    assert_eq!(answered, 5, "exactly the answers the budget pays for");
    let usage = budget(&server, "dp-race", &key).await;
    assert!(
        (usage["rho_spent"].as_f64().expect("spent") - 0.25).abs() < 1e-9,
        "{usage}"
    );
    assert_eq!(usage["answers"], 5);

    // Groups: a code held by few persons does not show; every shown group's noisy persons
    // count cleared the threshold the answer reports.
    let t2 = demo_copy();
    let key2 = dp_license(&t2, "dp-groups", serde_json::json!({"rho_budget": 1.0}));
    let server2 = Server::start(&t2, &["--rate-limit", "1000", "--burst", "1000"]);
    let uri2 = flight_uri(&demo_json(&t2));
    let mut row = client(&uri2, Some(&row_key)).await;
    let held = holders(&mut row).await;
    let mut c = client(&uri2, Some(&key2)).await;
    let q = "SELECT condition_source_value AS code, count(DISTINCT person_id) AS persons FROM condition_occurrence GROUP BY 1 ORDER BY 2 DESC";
    let b = sql(&mut c, q).await.expect("noisy groups");
    let tau = meta_f64(&b, "tessera.dp.threshold");
    assert!(
        tau >= 11.0,
        "the license's minimum cell holds as well: {tau}"
    );
    let mut shown = 0;
    for b in &b {
        for (code, n) in column_text(b, "code")
            .into_iter()
            .zip(column_i64(b, "persons"))
        {
            let (code, n) = (code.expect("code"), n.expect("count"));
            assert!(
                n as f64 >= tau,
                "{code}: {n} shown under the threshold {tau}"
            );
            let exact = held.get(&code).copied().unwrap_or(0);
            assert!(
                exact >= 3,
                "{code} is held by {exact} persons and was shown"
            );
            shown += 1;
        }
    }
    assert!(shown > 0, "common diagnoses show");
    // The same query again: the same answer, not charged.
    let again = sql(&mut c, q).await.expect("a repeat");
    assert_eq!(meta(&again, "tessera.dp.cached"), "true");
    let flatten = |b: &[RecordBatch]| -> Vec<(Option<String>, Option<i64>)> {
        b.iter()
            .flat_map(|b| {
                column_text(b, "code")
                    .into_iter()
                    .zip(column_i64(b, "persons"))
            })
            .collect()
    };
    assert_eq!(flatten(&again), flatten(&b));
    // HAVING and LIMIT run on the noisy values: nothing under the threshold comes back.
    let b = sql(
        &mut c,
        "SELECT condition_source_value AS code, count(DISTINCT person_id) AS persons FROM condition_occurrence GROUP BY 1 HAVING count(DISTINCT person_id) < 1000 ORDER BY 2 LIMIT 3",
    )
    .await
    .expect("having");
    for n in b.iter().flat_map(|b| column_i64(b, "persons")) {
        assert!(n.expect("count") as f64 >= tau);
    }
    // Sums need bounds: the query's, else the data dictionary's (days_since_index: a century
    // either side), else the query is refused.
    let e = sql(
        &mut c,
        "SELECT sum(length(condition_source_value)) AS s FROM condition_occurrence",
    )
    .await
    .expect_err("no bounds");
    assert!(
        e.contains("dp_bounds") && e.contains("bounds.condition_source_value"),
        "{e}"
    );
    let b = sql(
        &mut c,
        "SELECT sum(days_since_index) AS s FROM condition_occurrence",
    )
    .await
    .expect("the dictionary's bounds");
    // The sum and the hidden person count share ρ = 0.05: σ = 36525/√(2·0.025).
    let expected = 36_525.0 / 0.05f64.sqrt();
    assert!((claimed_stddev(&b, "s") - expected).abs() < 1e-6);
    let female = "CASE WHEN gender_source_value = 'female' THEN 1 ELSE 0 END";
    let b = sql(
        &mut c,
        &format!(
            "-- tessera: bounds=0..1\nSELECT avg({female}) AS a, sum({female}) AS s FROM person"
        ),
    )
    .await
    .expect("bounded means and sums");
    assert!(claimed_stddev(&b, "s") > 0.0);
    let noisy_share = b[0]
        .column_by_name("a")
        .and_then(|a| {
            a.as_any()
                .downcast_ref::<tessera_query::arrow::array::Float64Array>()
                .map(|a| a.value(0))
        })
        .expect("avg");
    let exact_share = {
        let b = sql(&mut row, "SELECT gender_source_value AS g FROM person")
            .await
            .expect("rows");
        let all: Vec<Option<String>> = b.iter().flat_map(|b| column_text(b, "g")).collect();
        all.iter()
            .filter(|g| g.as_deref() == Some("female"))
            .count() as f64
            / all.len() as f64
    };
    assert!(
        (noisy_share - exact_share).abs() < 0.1,
        "a noisy share of women {noisy_share} against {exact_share}"
    );

    // The cohort-count endpoint answers with the same mechanism.
    let r: serde_json::Value = reqwest::Client::new()
        .post(server2.url("/v1/releases/demo-natural-history/latest/cohort-count"))
        .bearer_auth(&key2)
        .json(&serde_json::json!({"group_by": "gender_source_value"}))
        .send()
        .await
        .expect("cohort count")
        .json()
        .await
        .expect("json");
    assert!(r["total"].as_u64().is_some(), "{r}");
    assert!(
        r["privacy"]["stddev"]["persons"].as_f64().expect("σ") > 0.0,
        "{r}"
    );
    assert!(
        r["privacy"]["budget"]["rho_spent"].as_f64().expect("spent") > 0.0,
        "{r}"
    );
}

/// The error of the demo's cohort counts at the demo license's default cost per answer
/// (ρ = 0.05): the twenty most common diagnoses, each counted in persons as its own answer,
/// against the exact counts. Written to the test artifacts for docs/benchmarks.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohort_counts_error_at_the_default_budget() {
    let t = demo_copy();
    let demo = demo_json(&t);
    let (key, license, _) = demo_org(&demo, "demo-private");
    let (row_key, _, _) = demo_org(&demo, "demo-rowlevel");
    let _server = Server::start(&t, &["--rate-limit", "1000", "--burst", "1000"]);
    let uri = flight_uri(&demo_json(&t));
    let mut row = client(&uri, Some(&row_key)).await;
    let mut held: Vec<(String, i64)> = holders(&mut row).await.into_iter().collect();
    held.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    held.truncate(20);
    let mut c = client(&uri, Some(&key)).await;
    let mut lines = vec![
        "| diagnosis code | persons (exact) | noisy | error | relative error |".to_string(),
        "|---|---|---|---|---|".to_string(),
    ];
    let mut relative = Vec::new();
    let mut sigma = 0.0;
    for (code, exact) in &held {
        let b = sql(
            &mut c,
            &format!("SELECT count(DISTINCT person_id) AS persons FROM condition_occurrence WHERE condition_source_value = '{code}'"),
        )
        .await
        .expect("a noisy count");
        let noisy = first_i64(&b, "persons");
        sigma = claimed_stddev(&b, "persons");
        let error = noisy - exact;
        assert!(
            (error as f64).abs() <= 6.0 * sigma,
            "{code}: error {error} beyond 6σ ({sigma})"
        );
        let rel = (error as f64).abs() / *exact as f64;
        relative.push(rel);
        lines.push(format!(
            "| {code} | {exact} | {noisy} | {error:+} | {:.1}% |",
            100.0 * rel
        ));
    }
    relative.sort_by(f64::total_cmp);
    let median = relative[relative.len() / 2];
    let max = relative.last().copied().unwrap_or(0.0);
    let summary = format!(
        "License {license} (ρ = 0.05 per answer, one statistic: σ = {sigma:.2} persons). Median relative error {:.1}%, largest {:.1}%, over the {} most common diagnoses ({} to {} persons).",
        100.0 * median,
        100.0 * max,
        held.len(),
        held.last().map(|h| h.1).unwrap_or(0),
        held.first().map(|h| h.1).unwrap_or(0),
    );
    let report = format!("{summary}\n\n{}\n", lines.join("\n"));
    println!("{report}");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts");
    std::fs::write(dir.join("dp-cohort-error.md"), report).expect("write");
    assert!((sigma - (1.0f64 / 0.1).sqrt()).abs() < 1e-9, "σ = {sigma}");
}
