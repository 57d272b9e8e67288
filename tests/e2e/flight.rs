//! Flight SQL against the real server (`tessera serve`, port 0) with `arrow_flight`'s Flight
//! SQL client: bearer keys and Handshake, statements under aggregate-only and row-level
//! licenses, the catalog browsers' calls (tables with and without a catalog filter, with
//! schemas), SqlInfo, refusals as gRPC statuses, and a forged ticket enforced like any SQL.

use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetTables, ProstMessageExt, SqlInfo, TicketStatementQuery};
use arrow_flight::{FlightInfo, Ticket};
use futures::TryStreamExt;
use prost::Message;
use tessera_query::arrow::array::{Array, Int64Array, StringArray};
use tessera_query::arrow::record_batch::RecordBatch;
use tonic::transport::Channel;

use crate::http::{Server, demo_copy, demo_json, demo_org, flight_uri, persons_by};

pub async fn client(uri: &str, key: Option<&str>) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(uri.replace("grpc://", "http://"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut c = FlightSqlServiceClient::new(channel);
    if let Some(k) = key {
        c.set_header("authorization", format!("Bearer {k}"));
    }
    c
}

async fn fetch(
    c: &mut FlightSqlServiceClient<Channel>,
    info: FlightInfo,
) -> Result<Vec<RecordBatch>, String> {
    let mut out = Vec::new();
    for ep in info.endpoint {
        let ticket = ep.ticket.ok_or("no ticket")?;
        let stream = c.do_get(ticket).await.map_err(|e| e.to_string())?;
        let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(|e| e.to_string())?;
        out.extend(batches);
    }
    Ok(out)
}

pub async fn sql(
    c: &mut FlightSqlServiceClient<Channel>,
    q: &str,
) -> Result<Vec<RecordBatch>, String> {
    let info = c
        .execute(q.to_string(), None)
        .await
        .map_err(|e| e.to_string())?;
    fetch(c, info).await
}

/// A result column as integers (cast from whatever integer type the server sent).
pub fn column_i64(b: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    use tessera_query::arrow::array::AsArray;
    let a = tessera_query::arrow::compute::cast(
        b.column_by_name(name).expect(name),
        &tessera_query::arrow::datatypes::DataType::Int64,
    )
    .expect("int");
    let a = a.as_primitive::<tessera_query::arrow::datatypes::Int64Type>();
    (0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i)))
        .collect()
}

/// A result column as text (cast from Utf8View and friends).
pub fn column_text(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    use tessera_query::arrow::array::AsArray;
    let a = tessera_query::arrow::compute::cast(
        b.column_by_name(name).expect(name),
        &tessera_query::arrow::datatypes::DataType::Utf8,
    )
    .expect("text");
    let a = a.as_string::<i32>();
    (0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i).to_string()))
        .collect()
}

fn rows(b: &[RecordBatch]) -> usize {
    b.iter().map(RecordBatch::num_rows).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_sql_with_real_clients_enforces_the_license() {
    let t = demo_copy();
    let server = Server::start(&t, &[]);
    let demo = demo_json(&t);
    let uri = flight_uri(&demo);
    assert!(uri.starts_with("grpc://127.0.0.1:"), "{uri}");
    let (agg_key, _, _) = demo_org(&demo, "demo-aggregate");
    let (row_key, _, _) = demo_org(&demo, "demo-rowlevel");

    // No key: unauthenticated, with a message that says what to send.
    let mut anon = client(&uri, None).await;
    let e = sql(&mut anon, "SELECT 1").await.expect_err("refused");
    assert!(e.contains("no_credential"), "{e}");

    // Aggregate-only: counts by sex equal those made from the Parquet file (groups of 11 or
    // more); a row-level query is refused as PERMISSION_DENIED naming the rule.
    let mut agg = client(&uri, Some(&agg_key)).await;
    let batches = sql(
        &mut agg,
        "SELECT gender_source_value AS sex, count(*) AS n FROM person GROUP BY gender_source_value",
    )
    .await
    .expect("aggregate");
    let expected = persons_by("person", "gender_source_value");
    let mut got = std::collections::BTreeMap::new();
    for b in &batches {
        let sex = b.column(0).as_any().downcast_ref::<StringArray>().map(|a| {
            (0..a.len())
                .map(|i| a.value(i).to_string())
                .collect::<Vec<_>>()
        });
        let sex = match sex {
            Some(s) => s,
            None => {
                let c = tessera_query::arrow::compute::cast(
                    b.column(0),
                    &tessera_query::arrow::datatypes::DataType::Utf8,
                )
                .expect("cast");
                let a = c
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("text")
                    .clone();
                (0..a.len()).map(|i| a.value(i).to_string()).collect()
            }
        };
        let n = b
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("n");
        for (i, s) in sex.into_iter().enumerate() {
            got.insert(s, n.value(i) as u64);
        }
    }
    let want: std::collections::BTreeMap<String, u64> =
        expected.into_iter().filter(|(_, n)| *n >= 11).collect();
    assert_eq!(got, want);
    let e = sql(&mut agg, "SELECT * FROM person")
        .await
        .expect_err("row-level refused");
    assert!(
        e.contains("PermissionDenied") || e.contains("permission"),
        "{e}"
    );
    assert!(e.contains("not_aggregate"), "{e}");

    // A forged ticket (a statement this client never asked GetFlightInfo for) is just SQL from
    // whoever presents it: decided again, and refused here.
    let forged = TicketStatementQuery {
        statement_handle: serde_json::to_vec(
            &serde_json::json!({"sql": "SELECT person_id FROM person", "license": null}),
        )
        .expect("json")
        .into(),
    };
    let ticket = Ticket {
        ticket: forged.as_any().encode_to_vec().into(),
    };
    let e = match agg.do_get(ticket).await {
        Err(e) => e.to_string(),
        Ok(s) => s
            .try_collect::<Vec<_>>()
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
    };
    assert!(e.contains("not_aggregate"), "{e}");

    // Row-level: rows of licensed columns, capped by LIMIT.
    let mut row = client(&uri, Some(&row_key)).await;
    let five = sql(&mut row, "SELECT * FROM person LIMIT 5")
        .await
        .expect("rows");
    assert_eq!(rows(&five), 5);
    let e = sql(&mut row, "CREATE TABLE x AS SELECT * FROM person")
        .await
        .expect_err("read-only");
    assert!(e.contains("read_only"), "{e}");

    // A prepared statement (what ADBC and JDBC send): created, executed, closed.
    let mut prepared = row
        .prepare("SELECT count(*) AS n FROM person".to_string(), None)
        .await
        .expect("prepare");
    assert_eq!(
        prepared.dataset_schema().expect("schema").field(0).name(),
        "n"
    );
    let info = prepared.execute().await.expect("execute prepared");
    assert_eq!(
        rows(&fetch(&mut row, info).await.expect("prepared rows")),
        1
    );
    prepared.close().await.expect("close");
    let e = match agg.prepare("SELECT * FROM person".to_string(), None).await {
        Err(e) => e.to_string(),
        Ok(_) => String::new(),
    };
    assert!(e.contains("not_aggregate"), "{e}");

    // Handshake: basic auth with the key as the password answers a bearer token that works.
    let mut shaken = client(&uri, None).await;
    shaken
        .handshake("analyst", &row_key)
        .await
        .expect("handshake");
    assert_eq!(
        rows(
            &sql(&mut shaken, "SELECT count(*) FROM person")
                .await
                .expect("after handshake")
        ),
        1
    );
    let mut bad = client(&uri, None).await;
    assert!(
        bad.handshake("analyst", "tsk_0000000000000000_00")
            .await
            .is_err()
    );

    // The catalog browsers' calls: GetTables without and with a catalog filter, with schemas.
    for catalog in [None, Some("tessera".to_string())] {
        let info = row
            .get_tables(CommandGetTables {
                catalog: catalog.clone(),
                db_schema_filter_pattern: None,
                table_name_filter_pattern: None,
                table_types: vec![],
                include_schema: true,
            })
            .await
            .expect("get tables");
        let tables = fetch(&mut row, info).await.expect("tables");
        let names: Vec<String> = tables
            .iter()
            .flat_map(|b| {
                let a = b
                    .column_by_name("table_name")
                    .expect("table_name")
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("text")
                    .clone();
                (0..a.len()).map(move |i| a.value(i).to_string())
            })
            .collect();
        assert!(
            names.contains(&"person".to_string()),
            "{catalog:?}: {names:?}"
        );
        assert!(names.contains(&"condition_occurrence".to_string()));
    }
    let info = row.get_catalogs().await.expect("catalogs");
    assert_eq!(rows(&fetch(&mut row, info).await.expect("catalogs")), 1);
    let info = row.get_table_types().await.expect("types");
    assert_eq!(rows(&fetch(&mut row, info).await.expect("types")), 1);
    let info = row
        .get_sql_info(vec![
            SqlInfo::FlightSqlServerName,
            SqlInfo::FlightSqlServerReadOnly,
        ])
        .await
        .expect("sql info");
    assert_eq!(rows(&fetch(&mut row, info).await.expect("sql info")), 2);

    let (status, printed) = server.stop();
    assert_eq!(status, Some(0), "{printed}");
    t.expect(&["audit", "verify"], 0);
}

/// A CA and a server certificate for 127.0.0.1 and localhost, made here: (CA PEM, certificate
/// PEM, key PEM).
fn test_certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL (pyarrow) takes a certificate whose issuer is its own subject
    // for self-signed.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Tessera test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let cert = params.signed_by(&key, &ca, &ca_key).expect("certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// Runs tests/python/flight_clients.py against the server `demo.json` names.
fn run_python_clients(t: &crate::support::Tessera, ca: Option<&std::path::Path>) {
    let demo = demo_json(t);
    let uri = demo["services"]["flight_sql"].as_str().expect("flight uri");
    let (agg_key, _, _) = demo_org(&demo, "demo-aggregate");
    let (row_key, _, _) = demo_org(&demo, "demo-rowlevel");
    let counts = persons_by("person", "gender_source_value");
    let tables: Vec<String> = std::fs::read_dir(crate::http::release_dir())
        .expect("release files")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().to_string();
            name.strip_suffix(".parquet").map(str::to_string)
        })
        .collect();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/flight_clients.py");
    let mut cmd = std::process::Command::new(crate::support::venv_program(
        "TESSERA_FLIGHT_VENV",
        "venv-flight",
        "bin/python",
    ));
    cmd.arg(script)
        .env("TESSERA_FLIGHT_URI", uri)
        .env("AGG_KEY", agg_key)
        .env("ROW_KEY", row_key)
        .env("TABLES", serde_json::to_string(&tables).expect("json"))
        .env("SEX_COUNTS", serde_json::to_string(&counts).expect("json"))
        .env("MIN_CELL", "11");
    if let Some(ca) = ca {
        cmd.env("TESSERA_TLS_CA", ca);
    }
    let out = cmd.output().expect("run python");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the Python clients failed:\n{printed}"
    );
    assert!(printed.contains("checks passed"), "{printed}");
}

/// The clients analysts use from Python (the ADBC Flight SQL driver with pandas and polars, and
/// pyarrow.flight), over plain gRPC and then over TLS with certificate files; and the Rust
/// client over TLS, trusting the CA only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_over_plain_grpc_and_tls() {
    let t = demo_copy();
    let fast = ["--rate-limit", "1000", "--burst", "1000"];
    let server = Server::start(&t, &fast);
    run_python_clients(&t, None);
    let (status, printed) = server.stop();
    assert_eq!(status, Some(0), "{printed}");

    let (ca, cert, key) = test_certificates();
    let dir = tempfile::tempdir().expect("temp");
    let (ca_file, cert_file, key_file) = (
        dir.path().join("ca.pem"),
        dir.path().join("server.pem"),
        dir.path().join("server.key"),
    );
    std::fs::write(&ca_file, &ca).expect("ca");
    std::fs::write(&cert_file, &cert).expect("cert");
    std::fs::write(&key_file, &key).expect("key");
    let server = Server::start(
        &t,
        &[
            "--tls-cert",
            cert_file.to_str().expect("utf-8"),
            "--tls-key",
            key_file.to_str().expect("utf-8"),
            fast[0],
            fast[1],
            fast[2],
            fast[3],
        ],
    );
    let demo = demo_json(&t);
    let uri = flight_uri(&demo);
    assert!(uri.starts_with("grpc+tls://127.0.0.1:"), "{uri}");
    run_python_clients(&t, Some(&ca_file));

    let (row_key, _, _) = demo_org(&demo, "demo-rowlevel");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name("localhost");
    let channel = Channel::from_shared(uri.replace("grpc+tls://", "https://"))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect over TLS");
    let mut c = FlightSqlServiceClient::new(channel);
    c.set_header("authorization", format!("Bearer {row_key}"));
    assert_eq!(
        rows(
            &sql(&mut c, "SELECT count(*) FROM person")
                .await
                .expect("over TLS")
        ),
        1
    );
    // A plain-text client cannot talk to the TLS server.
    let plain = Channel::from_shared(uri.replace("grpc+tls://", "http://"))
        .expect("uri")
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut c = FlightSqlServiceClient::new(channel);
        c.set_header("authorization", format!("Bearer {row_key}"));
        assert!(sql(&mut c, "SELECT 1").await.is_err());
    }
    let (status, printed) = server.stop();
    assert_eq!(status, Some(0), "{printed}");

    // A certificate file that is not PEM is named in a clear error.
    std::fs::write(&cert_file, "not a certificate").expect("write");
    let out = t
        .command()
        .args(["serve", "--http", "127.0.0.1:0", "--flight", "127.0.0.1:0"])
        .args(["--tls-cert", cert_file.to_str().expect("utf-8")])
        .args(["--tls-key", key_file.to_str().expect("utf-8")])
        .output()
        .expect("serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("server.pem") && err.contains("not PEM"),
        "{err}"
    );
}

/// Calls beyond a key's rate are answered RESOURCE_EXHAUSTED before anything is looked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_calls_are_throttled_per_key() {
    let t = demo_copy();
    let server = Server::start(&t, &["--rate-limit", "1", "--burst", "2"]);
    let demo = demo_json(&t);
    let uri = flight_uri(&demo);
    let (row_key, _, _) = demo_org(&demo, "demo-rowlevel");
    let (agg_key, _, _) = demo_org(&demo, "demo-aggregate");
    let mut row = client(&uri, Some(&row_key)).await;
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        outcomes.push(
            row.get_catalogs()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
    }
    let limited: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        !limited.is_empty(),
        "six calls at once, two allowed: {outcomes:?}"
    );
    assert!(
        limited.iter().all(|e| e.contains("rate_limited")),
        "{limited:?}"
    );
    // Another key has its own budget.
    let mut agg = client(&uri, Some(&agg_key)).await;
    agg.get_catalogs()
        .await
        .expect("another key is not throttled");
    let (status, printed) = server.stop();
    assert_eq!(status, Some(0), "{printed}");
}
