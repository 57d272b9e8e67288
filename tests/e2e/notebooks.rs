//! The notebooks in `notebooks/` as end-to-end tests: each is executed top to bottom (nbclient,
//! in the notebooks' own virtual environment) against a real `tessera serve` over a copy of the
//! demo data, exactly as an analyst would run it; any error fails the test, and an HTML
//! rendering of each executed notebook goes to `$CARGO_TARGET_TMPDIR/test-artifacts/notebooks/`.
//!
//! The external-control notebook's numbers are then recomputed here, independently: the
//! registry is read over Flight SQL with this crate's own queries (the cohort table, the
//! conditions, the deaths), the covariates are derived in Rust, and the propensity model
//! (Newton–Raphson logistic regression), the caliper matching (exact on the binary covariates), the standardized mean
//! differences, the Kaplan–Meier estimates and the Cox model (Efron ties) are computed here
//! and compared with what the notebook printed (statsmodels and lifelines).

// Numeric code indexes rows and columns of small matrices; iterator chains would hide the algebra.
#![allow(clippy::needless_range_loop)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::flight::{client, column_i64, column_text, sql};
use crate::http::{Server, demo_copy, demo_json, demo_org, flight_uri};
use crate::support::venv_program;

const NOTEBOOKS: [&str; 3] = [
    "01_cohort_exploration",
    "02_natural_history",
    "03_external_control_arm",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notebooks_run_against_the_demo_server_and_the_external_control_is_reproduced() {
    let t = demo_copy();
    let server = Server::start(&t, &[]);
    let demo = demo_json(&t);
    let uri = flight_uri(&demo);
    let (row_key, _, _) = demo_org(&demo, "demo-rowlevel");

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-artifacts/notebooks");
    let _ = std::fs::remove_dir_all(&artifacts);
    let results = t.data_dir().join("external_control_results.json");
    let python = venv_program("TESSERA_NOTEBOOK_VENV", "venv-notebooks", "bin/python");
    let run = std::process::Command::new(&python)
        .arg(repo().join("tests/python/run_notebooks.py"))
        .arg("--out")
        .arg(&artifacts)
        .env_remove("TESSERA_FLIGHT_URI")
        .env_remove("TESSERA_API_KEY")
        .env_remove("TESSERA_HTTP_URI")
        .env_remove("TESSERA_LICENSE")
        .env("TESSERA_DATA_DIR", t.data_dir())
        .env("TESSERA_NOTEBOOK_RESULTS", &results)
        .output()
        .expect("run the notebooks");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "a notebook failed:\n{stdout}\n{stderr}"
    );
    for name in NOTEBOOKS {
        let html = std::fs::read_to_string(artifacts.join(format!("{name}.html")))
            .unwrap_or_else(|e| panic!("{name}.html: {e}"));
        // Each notebook draws at least one figure, embedded in its rendering.
        assert!(
            html.contains("data:image/png;base64"),
            "{name}: no figure in the executed notebook"
        );
        assert!(
            !html.contains("Traceback (most recent call last)"),
            "{name}: an error in the output"
        );
    }
    let executed =
        std::fs::read_to_string(artifacts.join("01_cohort_exploration.html")).expect("01 html");
    assert!(
        executed.contains("withheld (&lt; 11)") || executed.contains("withheld (< 11)"),
        "01: withheld cells are not shown as such"
    );

    let notebook: Value = serde_json::from_str(
        &std::fs::read_to_string(&results).expect("the external-control notebook's results"),
    )
    .expect("results json");
    let ours = external_control(&server, &uri, &row_key).await;
    compare(&notebook, &ours);
    server.stop();
}

/// What the external-control analysis yields.
#[derive(Debug)]
struct Analysis {
    trial_patients: usize,
    registry_persons: usize,
    coefficients: Vec<f64>,
    caliper: f64,
    matched_trial: Vec<String>,
    smd_before: Vec<f64>,
    smd_after: Vec<f64>,
    deaths: (u64, u64),
    log_hr: f64,
    se: f64,
    survival_20: (f64, f64),
}

const COVARIATES: [&str; 5] = ["age", "female", "hypertension", "obesity", "anemia"];
const HYPERTENSION: &str = "38341003";
const OBESITY: &str = "162864005";
const ANEMIA: &str = "271737000";

/// One subject: id, covariates in [`COVARIATES`] order, time (days), death, in the trial.
#[derive(Debug, Clone)]
struct Subject {
    id: String,
    x: [f64; 5],
    time: f64,
    death: bool,
    treated: bool,
}

async fn external_control(server: &Server, uri: &str, key: &str) -> Analysis {
    // The trial arm, as shipped.
    let csv = std::fs::read_to_string(repo().join("notebooks/data/trial_arm.csv")).expect("csv");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let at = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let mut trial: Vec<Subject> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let num = |name: &str| f[at(name)].parse::<f64>().expect(name);
            Subject {
                id: f[at("subject_id")].to_string(),
                x: [
                    num("age"),
                    f64::from(u8::from(f[at("sex")] == "female")),
                    num("hypertension"),
                    num("obesity"),
                    num("anemia"),
                ],
                time: num("time_days"),
                death: num("death") == 1.0,
                treated: true,
            }
        })
        .collect();
    trial.sort_by(|a, b| a.id.cmp(&b.id));

    // The eligibility criteria, saved as the notebook saves them; the server's answer counts
    // the cohort.
    let definition: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("notebooks/data/prediabetes_registry.json"))
            .expect("definition"),
    )
    .expect("json");
    let saved = reqwest::Client::new()
        .put(server.url("/v1/cohorts/prediabetes_registry"))
        .bearer_auth(key)
        .json(&definition)
        .send()
        .await
        .expect("save");
    assert_eq!(saved.status(), 200);
    let saved: Value = saved.json().await.expect("json");
    let cohort_size = saved["persons"]
        .as_u64()
        .expect("row-level: the size shows");

    // The registry, read with plain queries; covariates derived here.
    let mut c = client(uri, Some(key)).await;
    let members = sql(
        &mut c,
        "SELECT c.person_id, c.index_day, c.age_at_index, c.follow_up_days, p.gender_source_value \
         FROM cohort_prediabetes_registry c JOIN person p ON p.person_id = c.person_id",
    )
    .await
    .expect("cohort");
    let codes = sql(
        &mut c,
        &format!(
            "SELECT person_id, condition_source_value, days_since_index FROM condition_occurrence \
             WHERE condition_source_value IN ('{HYPERTENSION}', '{OBESITY}', '{ANEMIA}')"
        ),
    )
    .await
    .expect("conditions");
    let deaths = sql(&mut c, "SELECT person_id, days_since_index FROM death")
        .await
        .expect("deaths");
    let mut diagnosed: BTreeMap<(String, String), i64> = BTreeMap::new();
    for b in &codes {
        let (p, v, d) = (
            column_text(b, "person_id"),
            column_text(b, "condition_source_value"),
            column_i64(b, "days_since_index"),
        );
        for i in 0..b.num_rows() {
            if let (Some(p), Some(v), Some(d)) = (&p[i], &v[i], d[i]) {
                let e = diagnosed.entry((p.clone(), v.clone())).or_insert(d);
                *e = (*e).min(d);
            }
        }
    }
    let mut died: BTreeMap<String, i64> = BTreeMap::new();
    for b in &deaths {
        let (p, d) = (
            column_text(b, "person_id"),
            column_i64(b, "days_since_index"),
        );
        for i in 0..b.num_rows() {
            if let (Some(p), Some(d)) = (&p[i], d[i]) {
                let e = died.entry(p.clone()).or_insert(d);
                *e = (*e).min(d);
            }
        }
    }
    let mut registry = Vec::new();
    let mut members_seen = 0;
    for b in &members {
        let (p, index, age, follow, sex) = (
            column_text(b, "person_id"),
            column_i64(b, "index_day"),
            column_i64(b, "age_at_index"),
            column_i64(b, "follow_up_days"),
            column_text(b, "gender_source_value"),
        );
        for i in 0..b.num_rows() {
            members_seen += 1;
            let (Some(p), Some(index)) = (&p[i], index[i]) else {
                continue;
            };
            let prior = |code: &str| {
                f64::from(u8::from(
                    diagnosed
                        .get(&(p.clone(), code.to_string()))
                        .is_some_and(|d| *d <= index),
                ))
            };
            let death = died.get(p).map(|d| d - index);
            let time = death.or(follow[i]);
            let (Some(age), Some(time)) = (age[i], time) else {
                continue; // complete cases
            };
            if time <= 0 {
                continue; // no follow-up after the index
            }
            registry.push(Subject {
                id: p.clone(),
                x: [
                    age as f64,
                    f64::from(u8::from(sex[i].as_deref() == Some("female"))),
                    prior(HYPERTENSION),
                    prior(OBESITY),
                    prior(ANEMIA),
                ],
                time: time as f64,
                death: death.is_some(),
                treated: false,
            });
        }
    }
    assert_eq!(
        members_seen as u64, cohort_size,
        "the cohort's size as saved"
    );
    registry.sort_by(|a, b| a.id.cmp(&b.id));

    let all: Vec<Subject> = trial.iter().chain(registry.iter()).cloned().collect();
    let design: Vec<Vec<f64>> = all
        .iter()
        .map(|s| std::iter::once(1.0).chain(s.x).collect())
        .collect();
    let y: Vec<f64> = all.iter().map(|s| f64::from(u8::from(s.treated))).collect();
    let beta = logistic(&design, &y);
    let logit: Vec<f64> = design.iter().map(|r| dot(r, &beta)).collect();
    let caliper = 0.2 * sd(&logit);

    // Greedy 1:1 matching without replacement, exact on the binary covariates: trial patients
    // by decreasing logit (ties by id), each to the nearest unmatched control of the same sex
    // and comorbidities, in id order, within the caliper; distances in
    // whole units of 1e-8 (as the notebook: equal distances are ties, broken by the covariates,
    // then by id).
    const UNIT: f64 = 1e-8;
    let distance = |a: f64, b: f64| ((a - b).abs() / UNIT).round() as i64;
    let n_trial = trial.len();
    let mut order: Vec<usize> = (0..n_trial).collect();
    let rank = |i: usize| (logit[i] / UNIT).round() as i64;
    order.sort_by(|&a, &b| {
        rank(b)
            .cmp(&rank(a))
            .then_with(|| all[a].id.cmp(&all[b].id))
    });
    let mut available: Vec<usize> = (n_trial..all.len()).collect();
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    // Equal distances: the control nearest on the covariates (sum of absolute differences),
    // then the earlier id.
    let gap = |a: usize, b: usize| -> f64 {
        all[a]
            .x
            .iter()
            .zip(&all[b].x)
            .map(|(p, q)| (p - q).abs())
            .sum()
    };
    for t in order {
        let mut best: Option<(usize, i64, f64)> = None;
        for (slot, &c) in available.iter().enumerate() {
            // Exact on sex and the three comorbidities (every covariate but age).
            if all[t].x[1..] != all[c].x[1..] {
                continue;
            }
            let d = distance(logit[t], logit[c]);
            let g = gap(t, c);
            if best.is_none_or(|(_, bd, bg)| d < bd || (d == bd && g < bg)) {
                best = Some((slot, d, g));
            }
        }
        if let Some((slot, d, _)) = best
            && d as f64 * UNIT <= caliper
        {
            pairs.push((t, available.remove(slot)));
        }
    }
    let matched: Vec<&Subject> = pairs
        .iter()
        .flat_map(|&(t, c)| [&all[t], &all[c]])
        .collect();
    let everyone: Vec<&Subject> = all.iter().collect();
    let smds = |group: &[&Subject]| -> Vec<f64> {
        (0..COVARIATES.len())
            .map(|k| {
                let t: Vec<f64> = group.iter().filter(|s| s.treated).map(|s| s.x[k]).collect();
                let c: Vec<f64> = group
                    .iter()
                    .filter(|s| !s.treated)
                    .map(|s| s.x[k])
                    .collect();
                let pooled = ((var(&t) + var(&c)) / 2.0).sqrt();
                if pooled == 0.0 {
                    0.0
                } else {
                    (mean(&t) - mean(&c)) / pooled
                }
            })
            .collect()
    };
    let arm = |treated: bool| -> Vec<(f64, bool)> {
        matched
            .iter()
            .filter(|s| s.treated == treated)
            .map(|s| (s.time, s.death))
            .collect()
    };
    let (trial_arm, control_arm) = (arm(true), arm(false));
    let (log_hr, se) = cox_efron(
        &matched
            .iter()
            .map(|s| (s.time, s.death, f64::from(u8::from(s.treated))))
            .collect::<Vec<_>>(),
    );
    let twenty_years = 20.0 * 365.25;
    Analysis {
        trial_patients: n_trial,
        registry_persons: registry.len(),
        coefficients: beta,
        caliper,
        matched_trial: pairs
            .iter()
            .map(|&(t, _)| all[t].id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        smd_before: smds(&everyone),
        smd_after: smds(&matched),
        deaths: (
            trial_arm.iter().filter(|a| a.1).count() as u64,
            control_arm.iter().filter(|a| a.1).count() as u64,
        ),
        log_hr,
        se,
        survival_20: (
            kaplan_meier(&trial_arm, twenty_years),
            kaplan_meier(&control_arm, twenty_years),
        ),
    }
}

fn close(what: &str, notebook: f64, ours: f64, tolerance: f64) {
    let scale = notebook.abs().max(ours.abs()).max(1e-3);
    assert!(
        (notebook - ours).abs() <= tolerance * scale,
        "{what}: the notebook says {notebook}, the Rust computation {ours}"
    );
}

fn compare(nb: &Value, ours: &Analysis) {
    let num = |v: &Value, what: &str| v.as_f64().unwrap_or_else(|| panic!("{what}: {v}"));
    assert_eq!(
        nb["trial_patients"].as_u64(),
        Some(ours.trial_patients as u64)
    );
    assert_eq!(
        nb["registry_persons"].as_u64(),
        Some(ours.registry_persons as u64),
        "eligible registry persons with follow-up"
    );
    let names = [
        "const",
        "age",
        "female",
        "hypertension",
        "obesity",
        "anemia",
    ];
    for (name, ours) in names.iter().zip(&ours.coefficients) {
        close(
            &format!("propensity coefficient {name}"),
            num(&nb["propensity_coefficients"][name], name),
            *ours,
            1e-6,
        );
    }
    close(
        "caliper",
        num(&nb["caliper"], "caliper"),
        ours.caliper,
        1e-6,
    );
    let matched: Vec<String> = nb["matched_trial_patients"]
        .as_array()
        .expect("matched")
        .iter()
        .map(|v| v.as_str().expect("id").to_string())
        .collect();
    assert_eq!(matched, ours.matched_trial, "the matched trial patients");
    assert_eq!(nb["pairs"].as_u64(), Some(ours.matched_trial.len() as u64));
    for (k, name) in COVARIATES.iter().enumerate() {
        close(
            &format!("SMD before, {name}"),
            num(&nb["smd_before"][name], name),
            ours.smd_before[k],
            1e-6,
        );
        close(
            &format!("SMD after, {name}"),
            num(&nb["smd_after"][name], name),
            ours.smd_after[k],
            1e-6,
        );
        // The bar: the matched cohort is balanced on every covariate.
        assert!(
            ours.smd_after[k].abs() < 0.1,
            "{name}: |SMD| {} after matching",
            ours.smd_after[k]
        );
    }
    assert_eq!(nb["matched_deaths"]["trial"].as_u64(), Some(ours.deaths.0));
    assert_eq!(
        nb["matched_deaths"]["control"].as_u64(),
        Some(ours.deaths.1)
    );
    let hr = ours.log_hr.exp();
    close("hazard ratio", num(&nb["hazard_ratio"], "hr"), hr, 1e-5);
    close(
        "log hazard ratio standard error",
        num(&nb["log_hazard_ratio_se"], "se"),
        ours.se,
        1e-5,
    );
    let z = 1.959964;
    close(
        "hazard ratio CI low",
        num(&nb["hazard_ratio_ci"][0], "lo"),
        (ours.log_hr - z * ours.se).exp(),
        1e-5,
    );
    close(
        "hazard ratio CI high",
        num(&nb["hazard_ratio_ci"][1], "hi"),
        (ours.log_hr + z * ours.se).exp(),
        1e-5,
    );
    close(
        "trial survival at 20 years",
        num(&nb["survival_20_years"]["trial"], "s"),
        ours.survival_20.0,
        1e-9,
    );
    close(
        "control survival at 20 years",
        num(&nb["survival_20_years"]["control"], "s"),
        ours.survival_20.1,
        1e-9,
    );
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// Sample variance (n - 1).
fn var(x: &[f64]) -> f64 {
    let m = mean(x);
    x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (x.len() as f64 - 1.0)
}

fn sd(x: &[f64]) -> f64 {
    var(x).sqrt()
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .expect("rows");
        a.swap(col, pivot);
        b.swap(col, pivot);
        assert!(a[col][col].abs() > 1e-12, "singular information matrix");
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            for k in col..n {
                a[row][k] -= f * a[col][k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

/// Maximum-likelihood logistic regression by Newton–Raphson.
fn logistic(x: &[Vec<f64>], y: &[f64]) -> Vec<f64> {
    let p = x[0].len();
    let mut beta = vec![0.0; p];
    for _ in 0..100 {
        let mut grad = vec![0.0; p];
        let mut info = vec![vec![0.0; p]; p];
        for (row, yi) in x.iter().zip(y) {
            let mu = 1.0 / (1.0 + (-dot(row, &beta)).exp());
            let w = mu * (1.0 - mu);
            for j in 0..p {
                grad[j] += (yi - mu) * row[j];
                for k in 0..p {
                    info[j][k] += w * row[j] * row[k];
                }
            }
        }
        let step = solve(info, grad);
        for (b, s) in beta.iter_mut().zip(&step) {
            *b += s;
        }
        if step.iter().map(|s| s.abs()).fold(0.0, f64::max) < 1e-12 {
            break;
        }
    }
    beta
}

/// The Kaplan–Meier estimate of survival at `t`.
fn kaplan_meier(arm: &[(f64, bool)], t: f64) -> f64 {
    let mut times: Vec<f64> = arm.iter().filter(|a| a.1).map(|a| a.0).collect();
    times.sort_by(f64::total_cmp);
    times.dedup();
    let mut s = 1.0;
    for &u in times.iter().filter(|&&u| u / 365.25 <= t / 365.25) {
        let at_risk = arm.iter().filter(|a| a.0 >= u).count() as f64;
        let events = arm.iter().filter(|a| a.1 && a.0 == u).count() as f64;
        s *= 1.0 - events / at_risk;
    }
    s
}

/// The Cox model with one covariate, Efron's ties: (beta, its standard error from the observed
/// information).
fn cox_efron(data: &[(f64, bool, f64)]) -> (f64, f64) {
    let mut times: Vec<f64> = data.iter().filter(|d| d.1).map(|d| d.0).collect();
    times.sort_by(f64::total_cmp);
    times.dedup();
    let derivatives = |beta: f64| -> (f64, f64) {
        let (mut u, mut i) = (0.0, 0.0);
        for &t in &times {
            let (mut s0r, mut s1r, mut s2r) = (0.0, 0.0, 0.0);
            let (mut s0d, mut s1d, mut s2d, mut xd, mut d) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for &(time, event, x) in data {
                if time < t {
                    continue;
                }
                let r = (beta * x).exp();
                s0r += r;
                s1r += x * r;
                s2r += x * x * r;
                if event && time == t {
                    s0d += r;
                    s1d += x * r;
                    s2d += x * x * r;
                    xd += x;
                    d += 1.0;
                }
            }
            u += xd;
            for l in 0..d as usize {
                let f = l as f64 / d;
                let a = s0r - f * s0d;
                let b = s1r - f * s1d;
                let c = s2r - f * s2d;
                u -= b / a;
                i += c / a - (b / a).powi(2);
            }
        }
        (u, i)
    };
    let mut beta = 0.0;
    for _ in 0..100 {
        let (u, i) = derivatives(beta);
        let step = u / i;
        beta += step;
        if step.abs() < 1e-12 {
            break;
        }
    }
    let (_, i) = derivatives(beta);
    (beta, 1.0 / i.sqrt())
}
