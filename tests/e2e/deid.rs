//! `tessera deid` end to end, checked by an independent tool: pyCANON (PyPI), in the virtual
//! environment `scripts/install-deps` creates, reads the released tables and reports k, l and t.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{Tessera, json_files, read_json, shared_or_skip, synthea_dir};

pub(crate) fn pycanon(
    file: &Path,
    delimiter: &str,
    qis: &[&str],
    sensitive: Option<&str>,
) -> Value {
    let python = crate::support::venv_program("TESSERA_PYCANON_VENV", "venv-pycanon", "bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/pycanon_check.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(file).arg(delimiter).arg(qis.join(","));
    if let Some(s) = sensitive {
        cmd.arg(s);
    }
    let out = cmd.output().expect("run pycanon");
    assert!(
        out.status.success(),
        "pycanon failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("pycanon json")
}

#[test]
fn adult_release_is_k_anonymous_by_pycanon() {
    if shared_or_skip("deid::adult_release_is_k_anonymous_by_pycanon", "adult").is_none() {
        return;
    }
    let t = Tessera::new();
    let qis = [
        "sex",
        "age",
        "race",
        "marital-status",
        "education",
        "native-country",
        "workclass",
        "occupation",
        "salary-class",
    ];
    let (out, r) = adult_run(&t, "adult-k5", &qis, 5, 0.04, &[]);
    assert_eq!(r["k_achieved"], 5);
    assert_eq!(r["suppressed_records"], 906);
    assert_eq!(r["levels"]["education"], 3);
    for key in [
        "nu_entropy",
        "loss",
        "precision",
        "discernibility",
        "aecs",
        "height",
    ] {
        assert!(r["loss"][key].is_number(), "loss.{key}");
    }
    assert!(
        r["risk"]["prosecutor_max"]
            .as_f64()
            .is_some_and(|p| p <= 0.2 + 1e-12)
    );
    let checked = pycanon(&out, ";", &qis, None);
    assert!(checked["k"].as_i64().is_some_and(|k| k >= 5), "{checked}");
    assert_eq!(checked["rows"], 30162 - 906);
}

/// A person table from the Synthea bundles: Safe Harbor transforms, generated hierarchies, and
/// l-diversity on a sensitive attribute, confirmed by pyCANON.
#[test]
fn synthea_person_table_is_k_anonymous_and_l_diverse_by_pycanon() {
    let t = Tessera::new();
    let mut csv = String::from("patient_id,name,birth_date,zip,sex,marital_status\n");
    for f in json_files(synthea_dir()) {
        let v = read_json(&f);
        let Some(p) = v["entry"].as_array().and_then(|es| {
            es.iter()
                .map(|e| &e["resource"])
                .find(|r| r["resourceType"] == "Patient")
        }) else {
            continue;
        };
        let field = |x: &Value| x.as_str().unwrap_or("").replace(',', " ");
        csv.push_str(&format!(
            "{},{},{},{},{},{}\n",
            field(&p["id"]),
            field(&p["name"][0]["family"]),
            field(&p["birthDate"]),
            field(&p["address"][0]["postalCode"]),
            field(&p["gender"]),
            field(&p["maritalStatus"]["coding"][0]["code"]),
        ));
    }
    let input = t.dir.path().join("persons.csv");
    std::fs::write(&input, &csv).expect("csv");
    std::fs::write(t.dir.path().join("sex.csv"), "male;*\nfemale;*\n").expect("sex");
    let policy = r#"
[privacy]
k = 5
suppression_limit = 0.1
metric = "loss"
l_diversity = { attribute = "marital_status", l = 2, kind = "distinct" }

[pseudonym]
key_env = "TESSERA_TEST_PSEUDONYM_KEY"

[[column]]
name = "patient_id"
role = "pseudonym"

[[column]]
name = "name"
role = "identifier"

[[column]]
name = "birth_date"
role = "quasi_identifier"
transform = "date_year"
hierarchy = { intervals = [5, 10, 20, 40] }

[[column]]
name = "zip"
role = "quasi_identifier"
transform = "zip3"
hierarchy = { mask = [1, 2] }

[[column]]
name = "sex"
role = "quasi_identifier"
hierarchy = "sex.csv"

[[column]]
name = "marital_status"
role = "sensitive"
"#;
    let policy_path = t.dir.path().join("persons.toml");
    std::fs::write(&policy_path, policy).expect("policy");
    let out = t.dir.path().join("persons-deid.csv");
    let report_path = t.dir.path().join("persons-report.json");
    let result = t
        .command()
        .env("TESSERA_TEST_PSEUDONYM_KEY", "ab".repeat(32))
        .args([
            "deid",
            "--policy",
            policy_path.to_str().expect("p"),
            "--input",
            input.to_str().expect("i"),
            "--output",
            out.to_str().expect("o"),
            "--report",
            report_path.to_str().expect("r"),
        ])
        .output()
        .expect("run");
    assert_eq!(
        result.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).expect("report"))
            .expect("report JSON");
    assert_eq!(report["l_diversity"], "distinct l = 2 on marital_status");
    assert!(report["t_closeness"].is_null());
    let released = std::fs::read_to_string(&out).expect("out");
    assert!(
        !released.lines().next().unwrap_or("").contains("name"),
        "identifiers are dropped"
    );
    // No plaintext identifier or original value survives: ids are pseudonyms, ZIPs three digits.
    assert!(
        !csv.lines()
            .skip(1)
            .take(50)
            .any(|l| released.contains(l.split(',').next().unwrap_or("-")))
    );
    let checked = pycanon(
        &out,
        ",",
        &["birth_date", "zip", "sex"],
        Some("marital_status"),
    );
    assert!(checked["k"].as_i64().is_some_and(|k| k >= 5), "{checked}");
    assert!(checked["l"].as_i64().is_some_and(|l| l >= 2), "{checked}");
}

/// Writes an Adult policy over `qis` (the other columns insensitive) with `k` and the
/// suppression limit, and runs `tessera deid` with `extra` arguments; returns the output path
/// (`<tag>.csv`) and the report.
/// UCI Adult with ARX's hierarchies, in the shared data (the tests that read it check first
/// with `shared_or_skip`).
fn adult_dir() -> PathBuf {
    crate::support::shared_data().join("adult")
}

fn adult_run(
    t: &Tessera,
    tag: &str,
    qis: &[&str],
    k: u32,
    suppression: f64,
    extra: &[&str],
) -> (PathBuf, Value) {
    let adult = adult_dir();
    let mut policy = format!(
        "[privacy]\nk = {k}\nsuppression_limit = {suppression:?}\nmetric = \"nu_entropy\"\n"
    );
    for c in [
        "sex",
        "age",
        "race",
        "marital-status",
        "education",
        "native-country",
        "workclass",
        "occupation",
        "salary-class",
    ] {
        if qis.contains(&c) {
            policy.push_str(&format!(
                "\n[[column]]\nname = \"{c}\"\nrole = \"quasi_identifier\"\nhierarchy = \"{}\"\n",
                adult.join(format!("adult_hierarchy_{c}.csv")).display()
            ));
        } else {
            policy.push_str(&format!(
                "\n[[column]]\nname = \"{c}\"\nrole = \"insensitive\"\n"
            ));
        }
    }
    let policy_path = t.dir.path().join(format!("{tag}.toml"));
    std::fs::write(&policy_path, policy).expect("policy");
    let out = t.dir.path().join(format!("{tag}.csv"));
    let report = t.dir.path().join(format!("{tag}.json"));
    let input = adult.join("adult.csv");
    let mut args = vec![
        "deid",
        "--policy",
        policy_path.to_str().expect("p"),
        "--input",
        input.to_str().expect("i"),
        "--output",
        out.to_str().expect("o"),
        "--report",
        report.to_str().expect("r"),
    ];
    args.extend_from_slice(extra);
    t.expect(&args, 0);
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    (out, r)
}

/// Mondrian (local recoding) on Adult: every record released (no suppression), k-anonymous by
/// pyCANON, better utility than the full-domain optimum on ARX's Loss. With the table as its
/// own population, journalist and marketer risk equal the prosecutor figures for the
/// full-domain release (its classes are disjoint) and are at most those for Mondrian (whose
/// labels can overlap, so a population record can match several classes).
#[test]
fn mondrian_release_is_k_anonymous_and_keeps_more_than_full_domain() {
    if shared_or_skip(
        "deid::mondrian_release_is_k_anonymous_and_keeps_more_than_full_domain",
        "adult",
    )
    .is_none()
    {
        return;
    }
    let t = Tessera::new();
    let qis = [
        "sex",
        "age",
        "race",
        "marital-status",
        "education",
        "native-country",
        "workclass",
        "salary-class",
    ];
    let population = adult_dir().join("adult.csv");
    let (out, m) = adult_run(
        &t,
        "mondrian",
        &qis,
        5,
        0.0,
        &[
            "--method",
            "mondrian",
            "--population",
            population.to_str().expect("p"),
        ],
    );
    assert_eq!(m["method"], "mondrian");
    assert_eq!(m["suppressed_records"], 0);
    assert!(m["k_achieved"].as_u64().is_some_and(|k| k >= 5), "{m}");
    let checked = pycanon(&out, ";", &qis, None);
    assert!(checked["k"].as_i64().is_some_and(|k| k >= 5), "{checked}");
    assert_eq!(checked["rows"], 30162);
    let risk = &m["risk"];
    let close = |a: &Value, b: &Value| {
        (a.as_f64().expect("number") - b.as_f64().expect("number")).abs() < 1e-12
    };
    let at_most =
        |a: &Value, b: &Value| a.as_f64().expect("number") <= b.as_f64().expect("number") + 1e-12;
    assert!(
        at_most(&risk["journalist_max"], &risk["prosecutor_max"]),
        "{risk}"
    );
    assert!(
        at_most(&risk["marketer"], &risk["prosecutor_avg"]),
        "{risk}"
    );
    assert!(risk["marketer"].as_f64().is_some_and(|m| m > 0.0), "{risk}");

    let (_, o) = adult_run(
        &t,
        "optimal",
        &qis,
        5,
        0.0,
        &["--population", population.to_str().expect("p")],
    );
    assert_eq!(o["method"], "optimal");
    let risk = &o["risk"];
    assert!(
        close(&risk["journalist_max"], &risk["prosecutor_max"]),
        "{risk}"
    );
    assert!(close(&risk["marketer"], &risk["prosecutor_avg"]), "{risk}");
    let (_, plain) = adult_run(&t, "plain", &qis, 5, 0.0, &[]);
    assert!(
        plain["risk"]["journalist_max"].is_null(),
        "no population, no journalist risk"
    );
    let (ml, ol) = (
        m["loss"]["loss"].as_f64().expect("loss"),
        o["loss"]["loss"].as_f64().expect("loss"),
    );
    assert!(
        ml < ol,
        "Mondrian Loss {ml} should be below the full-domain optimum's {ol}"
    );
    assert!(
        m["equivalence_classes"].as_u64() > o["equivalence_classes"].as_u64(),
        "finer classes"
    );
}

/// A population table that lacks a quasi-identifier column is refused before any work.
#[test]
fn population_without_the_quasi_identifiers_is_refused() {
    if shared_or_skip(
        "deid::population_without_the_quasi_identifiers_is_refused",
        "adult",
    )
    .is_none()
    {
        return;
    }
    let t = Tessera::new();
    let pop = t.dir.path().join("population.csv");
    std::fs::write(&pop, "sex;age\nMale;39\n").expect("population");
    let adult = adult_dir();
    let policy = format!(
        "[privacy]\nk = 2\n\n[[column]]\nname = \"race\"\nrole = \"quasi_identifier\"\nhierarchy = \"{}\"\n",
        adult.join("adult_hierarchy_race.csv").display()
    );
    let input = t.dir.path().join("in.csv");
    std::fs::write(&input, "race\nWhite\nWhite\nBlack\nBlack\n").expect("input");
    let policy_path = t.dir.path().join("p.toml");
    std::fs::write(&policy_path, policy).expect("policy");
    let out = t.run(&[
        "deid",
        "--policy",
        policy_path.to_str().expect("p"),
        "--input",
        input.to_str().expect("i"),
        "--output",
        t.dir.path().join("o.csv").to_str().expect("o"),
        "--population",
        pop.to_str().expect("pop"),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("population table lacks quasi-identifier column(s) race"),
        "{stderr}"
    );
}

/// `tessera deid --items`: a transaction table of the dev corpus (one row per patient and
/// distinct diagnosis, grouped by sex) comes out (5, 5^2)-anonymous by the independent checker,
/// with most diagnoses kept.
#[test]
fn transaction_table_is_k_m_anonymous_by_the_independent_checker() {
    let t = Tessera::new();
    let input = t.dir.path().join("diagnoses.csv");
    let mut rows = vec!["person,sex,code".to_string()];
    let mut patients = 0;
    for (i, f) in json_files(synthea_dir()).iter().enumerate() {
        let v = read_json(f);
        let entries = v["entry"].as_array().cloned().unwrap_or_default();
        let Some(sex) = entries
            .iter()
            .find(|e| e["resource"]["resourceType"] == "Patient")
            .and_then(|e| e["resource"]["gender"].as_str().map(str::to_string))
        else {
            continue;
        };
        patients += 1;
        let mut codes: Vec<String> = entries
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Condition")
            .filter_map(|e| {
                e["resource"]["code"]["coding"][0]["code"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        codes.sort();
        codes.dedup();
        for c in codes {
            rows.push(format!("p{i},{sex},{c}"));
        }
    }
    assert!(patients > 300);
    std::fs::write(&input, rows.join("\n") + "\n").expect("write");
    let output = t.dir.path().join("released.csv");
    let hierarchy = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("policies/hierarchies/synthea-snomed-conditions.csv");
    let said = t.expect(
        &[
            "deid",
            "--input",
            input.to_str().expect("utf-8"),
            "--output",
            output.to_str().expect("utf-8"),
            "--items",
            "code",
            "--person-column",
            "person",
            "--group-columns",
            "sex",
            "--k",
            "5",
            "--m",
            "2",
            "--hierarchy",
            hierarchy.to_str().expect("utf-8"),
        ],
        0,
    );
    assert!(said.contains("(k = 5, k^m, m = 2) holds"), "{said}");
    let python = crate::support::venv_program("TESSERA_FLIGHT_VENV", "venv-flight", "bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/km_check.py");
    let out = Command::new(python)
        .arg(script)
        .args([
            "table",
            output.to_str().expect("utf-8"),
            "person",
            "code",
            "5",
            "2",
            "sex",
        ])
        .output()
        .expect("km_check");
    let answer: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(out.status.success(), "{answer}");
    assert_eq!(
        answer["violations_by_size"],
        serde_json::json!([0, 0]),
        "{answer}"
    );
    // The rare diagnoses and combinations went; more than half of the rows stayed (1,325 of
    // 2,387 when this was written: 373 patients in two groups, k = 5, m = 2).
    let released = std::fs::read_to_string(&output)
        .expect("output")
        .lines()
        .count()
        - 1;
    assert!(
        released < rows.len() - 1,
        "something was generalized or suppressed"
    );
    assert!(
        released * 2 >= rows.len() - 1,
        "{released} of {} rows kept",
        rows.len() - 1
    );
}
