//! The refusal cases of `tests/refusals/*.test` (format in its README) against a real
//! `tessera serve` through `arrow_flight`'s Flight SQL client: every rule of the query service
//! and the ways around it, each case a query, who sends it, how, and the outcome expected. The
//! runner sets up who's who (licenses in every state, a revoked key, an operator key, a revoked
//! consent) with the operators' CLI, then reports every case that did not come out as written.

use std::collections::HashMap;
use std::path::Path;

use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{ProstMessageExt, TicketStatementQuery};
use arrow_flight::{FlightInfo, Ticket};
use futures::TryStreamExt;
use prost::Message;
use tessera_catalog::{Catalog, Keyring, Purpose};
use tessera_query::arrow::array::Int64Array;
use tessera_query::arrow::compute::cast;
use tessera_query::arrow::datatypes::DataType;
use tessera_query::arrow::record_batch::RecordBatch;
use tonic::transport::Channel;

use crate::http::{Server, demo_copy, demo_json, demo_org, persons_by};
use crate::support::{Tessera, test_key};

/// One case of a `.test` file.
#[derive(Debug)]
struct Case {
    at: String,
    directive: String,
    who: String,
    from: Option<String>,
    times: usize,
    sql: String,
    expect: String,
}

fn parse(path: &Path, vars: &HashMap<&str, String>) -> Vec<Case> {
    let text = std::fs::read_to_string(path).expect("case file");
    let name = path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    let mut cases = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if line.is_empty() || line.starts_with('#') {
            i += 1;
            continue;
        }
        let at = format!("{name}:{}", i + 1);
        let words: Vec<&str> = line.split_whitespace().collect();
        let directive = words[0].to_string();
        assert!(
            ["query", "prepared", "replay", "forge", "forge-bytes"].contains(&directive.as_str()),
            "{at}: unknown directive `{directive}`"
        );
        let who = words.get(1).expect("who").to_string();
        let mut from = None;
        let mut times = 1;
        for w in &words[2..] {
            match w.strip_prefix("times=") {
                Some(n) => times = n.parse().expect("times"),
                None => from = Some(w.to_string()),
            }
        }
        i += 1;
        let mut sql = Vec::new();
        while i < lines.len() && lines[i].trim() != "----" {
            sql.push(lines[i]);
            i += 1;
        }
        i += 1;
        let expect = lines
            .get(i)
            .expect("an outcome after ----")
            .trim()
            .to_string();
        i += 1;
        let mut sql = sql.join("\n");
        for (k, v) in vars {
            sql = sql.replace(&format!("${{{k}}}"), v);
        }
        cases.push(Case {
            at,
            directive,
            who,
            from,
            times,
            sql,
            expect,
        });
    }
    cases
}

/// What came back: rows, or the gRPC status code and message.
enum Outcome {
    Rows(Vec<RecordBatch>),
    Failed(tonic::Code, String),
}

fn failed(e: impl std::fmt::Display) -> Outcome {
    // The client wraps statuses in its own error text; read the code back from it.
    let text = e.to_string();
    let code = [
        tonic::Code::Unauthenticated,
        tonic::Code::PermissionDenied,
        tonic::Code::InvalidArgument,
        tonic::Code::ResourceExhausted,
        tonic::Code::Internal,
    ]
    .into_iter()
    .find(|c| text.contains(&format!("{c:?}")) || text.contains(c.description()))
    .unwrap_or(tonic::Code::Unknown);
    Outcome::Failed(code, text)
}

struct Runner {
    uri: String,
    keys: HashMap<String, Option<String>>,
}

impl Runner {
    async fn client(&self, who: &str) -> FlightSqlServiceClient<Channel> {
        let key = self
            .keys
            .get(who)
            .unwrap_or_else(|| panic!("no principal `{who}` in the runner"));
        crate::flight::client(&self.uri, key.as_deref()).await
    }

    async fn do_get(c: &mut FlightSqlServiceClient<Channel>, ticket: Ticket) -> Outcome {
        match c.do_get(ticket).await {
            Err(e) => failed(e),
            Ok(stream) => match stream.try_collect::<Vec<_>>().await {
                Ok(b) => Outcome::Rows(b),
                Err(e) => failed(e),
            },
        }
    }

    async fn fetch(c: &mut FlightSqlServiceClient<Channel>, info: FlightInfo) -> Outcome {
        let mut out = Vec::new();
        for ep in info.endpoint {
            match Self::do_get(c, ep.ticket.expect("ticket")).await {
                Outcome::Rows(b) => out.extend(b),
                f => return f,
            }
        }
        Outcome::Rows(out)
    }

    async fn run(&self, case: &Case) -> Outcome {
        let mut c = self.client(&case.who).await;
        match case.directive.as_str() {
            "query" => match c.execute(case.sql.clone(), None).await {
                Ok(info) => Self::fetch(&mut c, info).await,
                Err(e) => failed(e),
            },
            "prepared" => match c.prepare(case.sql.clone(), None).await {
                Ok(mut p) => match p.execute().await {
                    Ok(info) => Self::fetch(&mut c, info).await,
                    Err(e) => failed(e),
                },
                Err(e) => failed(e),
            },
            "replay" => {
                let from = case.from.as_deref().expect("replay AS FROM");
                let mut owner = self.client(from).await;
                let info = owner
                    .execute(case.sql.clone(), None)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {from} could not get a ticket: {e}", case.at));
                let ticket = info.endpoint[0].ticket.clone().expect("ticket");
                Self::do_get(&mut c, ticket).await
            }
            "forge" => {
                let handle = serde_json::json!({"sql": case.sql, "license": null});
                let forged = TicketStatementQuery {
                    statement_handle: serde_json::to_vec(&handle).expect("json").into(),
                };
                let ticket = Ticket {
                    ticket: forged.as_any().encode_to_vec().into(),
                };
                Self::do_get(&mut c, ticket).await
            }
            "forge-bytes" => {
                let forged = TicketStatementQuery {
                    statement_handle: case.sql.clone().into_bytes().into(),
                };
                let ticket = Ticket {
                    ticket: forged.as_any().encode_to_vec().into(),
                };
                Self::do_get(&mut c, ticket).await
            }
            d => panic!("unknown directive {d}"),
        }
    }
}

/// `None` when the outcome is the one expected, else what differed.
fn check(expect: &str, outcome: &Outcome) -> Option<String> {
    let (kind, rest) = expect.split_once(' ').unwrap_or((expect, ""));
    let rest = rest.trim();
    match (kind, outcome) {
        ("ok", Outcome::Rows(batches)) => {
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            for want in rest.split_whitespace() {
                let (k, v) = want.split_once('=').expect("key=value");
                match k {
                    "rows" if rows.to_string() != v => return Some(format!("{rows} rows")),
                    "columns" => {
                        let Some(b) = batches.first() else {
                            return Some("no batches".into());
                        };
                        let names: Vec<String> = b
                            .schema()
                            .fields()
                            .iter()
                            .map(|f| f.name().clone())
                            .collect();
                        if names.join(",") != v {
                            return Some(format!("columns {names:?}"));
                        }
                    }
                    "value" => {
                        let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
                            return Some("no rows".into());
                        };
                        let n = cast(b.column(0), &DataType::Int64).expect("integer");
                        let n = n
                            .as_any()
                            .downcast_ref::<Int64Array>()
                            .expect("Int64")
                            .value(0);
                        if n.to_string() != v {
                            return Some(format!("value {n}"));
                        }
                    }
                    "rows" => {}
                    other => panic!("unknown check {other}"),
                }
            }
            None
        }
        ("refused", Outcome::Failed(code, m)) => {
            let (rule, text) = rest.split_once(' ').unwrap_or((rest, ""));
            (*code == tonic::Code::PermissionDenied
                && m.contains(&format!("refused ({rule})"))
                && m.contains(text))
            .then_some(())
            .map_or_else(|| Some(format!("{code:?}: {m}")), |_| None)
        }
        ("denied", Outcome::Failed(code, m)) => (matches!(
            code,
            tonic::Code::PermissionDenied | tonic::Code::ResourceExhausted
        ) && m.contains(&format!("{rest}:")))
        .then_some(())
        .map_or_else(|| Some(format!("{code:?}: {m}")), |_| None),
        ("invalid", Outcome::Failed(code, m)) => (*code == tonic::Code::InvalidArgument
            && m.to_lowercase().contains(&rest.to_lowercase()))
        .then_some(())
        .map_or_else(|| Some(format!("{code:?}: {m}")), |_| None),
        ("unauthenticated", Outcome::Failed(code, m)) => (*code == tonic::Code::Unauthenticated)
            .then_some(())
            .map_or_else(|| Some(format!("{code:?}: {m}")), |_| None),
        (_, Outcome::Rows(b)) => Some(format!(
            "answered with {} rows",
            b.iter().map(RecordBatch::num_rows).sum::<usize>()
        )),
        (_, Outcome::Failed(code, m)) => Some(format!("{code:?}: {m}")),
    }
}

/// Adds organization `id` with a new signatory key; returns the key's file.
pub(crate) fn organization(t: &Tessera, id: &str, name: &str) -> std::path::PathBuf {
    let key_file = t.dir.path().join(format!("{id}.pk8"));
    let public = t
        .expect(
            &["org", "keygen", "--out", key_file.to_str().expect("utf-8")],
            0,
        )
        .trim()
        .to_string();
    t.expect(
        &[
            "org",
            "add",
            "--id",
            id,
            "--name",
            name,
            "--public-key",
            &public,
        ],
        0,
    );
    key_file
}

/// An organization with a signatory key, for the licenses the cases need.
pub(crate) fn license(t: &Tessera, key_file: &Path, id: &str, body: serde_json::Value) {
    let now = chrono::Utc::now();
    let mut l = serde_json::json!({
        "id": id,
        "organization": "refusals",
        "releases": {"demo-natural-history": "latest"},
        "tables": {"person": "all", "condition_occurrence": "all"},
        "purpose": "research.natural_history",
        "mode": "row_level",
        "output": {"min_cell_size": 11, "rounding_base": null, "max_rows": null},
        "quota": {"queries_per_minute": 600, "queries_per_day": 100000, "rows_per_day": 100000000, "queries_per_month": 1000000, "rows_per_month": 1000000000},
        "term_start": (now - chrono::Duration::days(1)).to_rfc3339(),
        "term_end": (now + chrono::Duration::days(30)).to_rfc3339(),
        "fees": {"flat": null, "per_contributing_patient": null, "patient_share_bps": 5000},
        "clauses": ["Permitted use: natural-history research."],
        "status": "draft"
    });
    for (k, v) in body.as_object().expect("object") {
        l[k] = v.clone();
    }
    let file = t.dir.path().join(format!("{id}.json"));
    std::fs::write(&file, l.to_string()).expect("license file");
    t.expect(
        &["license", "create", "--file", file.to_str().expect("utf-8")],
        0,
    );
    t.expect(
        &[
            "license",
            "sign",
            "--id",
            id,
            "--signatory-key",
            key_file.to_str().expect("utf-8"),
        ],
        0,
    );
    t.expect(&["license", "status", "--id", id, "active"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_cases() {
    let t = demo_copy();
    let demo = demo_json(&t);
    let (agg_key, _, _) = demo_org(&demo, "demo-aggregate");
    let (row_key, _, _) = demo_org(&demo, "demo-rowlevel");

    // Who's who.
    let key_file = organization(&t, "refusals", "Refusal Cases");
    let narrow =
        serde_json::json!({"tables": {"person": {"only": ["person_id", "gender_source_value"]}}});
    license(&t, &key_file, "lic-narrow", narrow.clone());
    let mut narrow_agg = narrow.clone();
    narrow_agg["mode"] = "aggregate_only".into();
    license(&t, &key_file, "lic-narrow-agg", narrow_agg);
    license(
        &t,
        &key_file,
        "lic-diff",
        serde_json::json!({"mode": "aggregate_only"}),
    );
    for (id, status) in [
        ("lic-suspended", "suspended"),
        ("lic-terminated", "terminated"),
        ("lic-expired", "expired"),
    ] {
        license(&t, &key_file, id, serde_json::json!({}));
        t.expect(&["license", "status", "--id", id, status], 0);
    }
    let past = chrono::Utc::now() - chrono::Duration::days(10);
    license(
        &t,
        &key_file,
        "lic-ended",
        serde_json::json!({
            "term_start": (past - chrono::Duration::days(30)).to_rfc3339(),
            "term_end": past.to_rfc3339(),
        }),
    );
    let mut keys: HashMap<String, Option<String>> = HashMap::new();
    keys.insert("agg".into(), Some(agg_key));
    keys.insert("row".into(), Some(row_key));
    keys.insert("none".into(), None);
    keys.insert("forged-key".into(), Some("tsk_0000000000000000_00".into()));
    for who in [
        "narrow",
        "narrow-agg",
        "diff",
        "suspended",
        "terminated",
        "expired",
        "ended",
    ] {
        let license = format!("lic-{who}");
        let (_, key) = t.issue_key(&["--org", "refusals", "--license", &license]);
        keys.insert(who.into(), Some(key));
    }
    let (revoked_id, revoked_key) = t.issue_key(&["--org", "refusals", "--license", "lic-narrow"]);
    t.expect(&["key", "revoke", "--id", &revoked_id], 0);
    keys.insert("revoked".into(), Some(revoked_key));
    let (_, operator) = t.issue_key(&["--admin"]);
    keys.insert("operator".into(), Some(operator));

    // Two released persons: one whose consent is revoked now, one who still consents.
    let catalog = Catalog::open(&t.database_url(), Keyring::new(&test_key(), &[]))
        .await
        .expect("catalog");
    let released = persons_by("person", "person_id");
    let mut pairs = crate::http::demo_pseudonyms(&catalog)
        .await
        .into_iter()
        .filter(|(_, pseudonym)| released.contains_key(pseudonym));
    let (revoked_patient, revoked) = pairs.next().expect("a released patient");
    let (_, person) = pairs.next().expect("another released patient");
    catalog
        .revoke(
            &revoked_patient,
            &Purpose::parse("research.natural_history").expect("purpose"),
            "refusal cases",
        )
        .await
        .expect("revoke");
    catalog.close().await;
    let vars: HashMap<&str, String> = [("REVOKED", revoked), ("PERSON", person)].into();

    let server = Server::start(
        &t,
        &[
            "--repeat-limit",
            "3",
            "--near-repeat-limit",
            "6",
            // The cases come faster than an analyst would: the throttle has its own test.
            "--rate-limit",
            "1000",
            "--burst",
            "1000",
        ],
    );
    let runner = Runner {
        uri: demo_json(&t)["services"]["flight_sql"]
            .as_str()
            .expect("uri")
            .to_string(),
        keys,
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/refusals");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/refusals")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "test"))
        .collect();
    files.sort();
    let mut ran = 0;
    let mut wrong = Vec::new();
    for file in &files {
        for case in parse(file, &vars) {
            for _ in 0..case.times {
                let outcome = runner.run(&case).await;
                ran += 1;
                if let Some(got) = check(&case.expect, &outcome) {
                    wrong.push(format!(
                        "{}: expected `{}`, got {got}",
                        case.at, case.expect
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {ran} refusal cases came out wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(ran >= 70, "only {ran} cases ran");
    let (status, printed) = server.stop();
    assert_eq!(status, Some(0), "{printed}");
    t.expect(&["audit", "verify"], 0);
}
