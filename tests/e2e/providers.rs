//! Records from providers through the real server and a real browser: a demo patient verifies
//! their identity at a Persona stand-in, connects their hospital (a SMART on FHIR stand-in
//! from the directory the operator loaded), gets its records ingested as theirs, and prepares
//! a right-of-access letter for a provider without an API; the staff's side runs through the
//! CLI. The stand-ins (`tessera_records::fixture`) check what the real APIs require.

use std::path::Path;

use serde_json::Value;
use tessera_records::fixture::{directory_bundle, fhir_server, persona};

use crate::consoles::{assert_accessible, run_browser};
use crate::http::{Server, demo_copy, demo_json, demo_patient};

#[tokio::test(flavor = "multi_thread")]
async fn a_patient_verifies_connects_their_hospital_and_asks_another_by_letter() {
    let t = demo_copy();
    let demo = demo_json(&t);
    let (patient, token) = demo_patient(&demo);
    let (persona_base, persona_seen) = persona().await;
    let fhir = fhir_server().await;
    let fhir_base = fhir.lock().expect("lock").base.clone();

    // The operator loads the directory vendors publish.
    let directory = t.data_dir().join("directory.json");
    std::fs::write(&directory, directory_bundle(&fhir_base)).expect("write the directory");
    let out = t.expect(
        &[
            "providers",
            "load",
            "--name",
            "vendor",
            directory.to_str().expect("path"),
        ],
        0,
    );
    assert!(
        out.contains("2 providers loaded, 2 endpoints left out"),
        "{out}"
    );

    let server = Server::start_env(
        &t,
        &[],
        &[
            ("TESSERA_IDENTITY_PROVIDER", "persona"),
            ("TESSERA_PERSONA_API_BASE", persona_base.as_str()),
            ("TESSERA_PERSONA_API_KEY", "persona_sandbox_key"),
            ("TESSERA_PERSONA_TEMPLATE", "itmpl_ial2"),
            ("TESSERA_PERSONA_REVIEW", "false"),
            ("TESSERA_SMART_CLIENT_ID", "tessera-test-client"),
        ],
    );
    let public = server.base.replace("127.0.0.1", "localhost");
    let link = format!("{public}/me/sign-in?token={token}");
    let report = run_browser(
        "providers.mjs",
        &[
            ("TESSERA_URL", public.as_str()),
            ("SIGN_IN_LINK", link.as_str()),
        ],
        "providers",
    );
    let pages = report["pages"].as_array().expect("pages");
    assert_eq!(pages.len(), 6, "{report}");
    for p in pages {
        assert_accessible(p);
        assert_ne!(
            p["overflow"],
            Value::Bool(true),
            "{} is wider than the screen",
            p["path"]
        );
    }
    let a = &report["actions"];
    let text = |k: &str| a[k].as_str().unwrap_or_default().to_string();
    assert!(text("identityBefore").contains("Not verified"), "{a}");
    assert!(
        text("connectBefore").contains("once your identity is verified"),
        "no provider is offered before verification: {a}"
    );
    assert!(text("identityAfter").contains("Verified"), "{a}");
    assert!(
        text("found").contains("Riverside General Hospital")
            && text("found").contains("Springfield"),
        "{a}"
    );
    let connected = text("connected");
    assert!(connected.contains("Riverside General Hospital"), "{a}");
    assert!(
        connected.contains("last fetched"),
        "the first fetch finished: {a}"
    );
    assert!(connected.contains("13"), "13 resources fetched: {a}");
    assert!(
        text("letters").contains("Lakeside Family Practice")
            && text("letters").contains("Ready for your signature"),
        "{a}"
    );
    assert_eq!(text("letterType"), "application/pdf");
    assert!(text("scorecard").contains("Provider scorecard"));

    // The letter holds the patient's identity and the rule's terms.
    let letter = text("letter");
    let pdf = std::process::Command::new("pdftotext")
        .args([letter.as_str(), "-"])
        .output()
        .expect("pdftotext (scripts/install-deps installs poppler-utils)");
    let letter_text = String::from_utf8_lossy(&pdf.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        letter_text.contains("To: Lakeside Family Practice"),
        "{letter_text}"
    );
    assert!(letter_text.contains("45 CFR 164.524"));
    assert!(letter_text.contains("Date of birth:"));

    // Persona saw one inquiry, from the template, for this patient's internal id.
    {
        let seen = persona_seen.lock().expect("lock");
        assert_eq!(seen.created.len(), 1);
        assert_eq!(
            seen.created[0]["data"]["attributes"]["reference-id"],
            patient.as_str()
        );
    }
    // The hospital's records are the demo patient's now, from the SMART source; nothing of the
    // other patient at that hospital arrived.
    let (code, log) = server.stop();
    assert_eq!(code, Some(0));
    for secret in ["persona_sandbox_key", "at-1", "rt-1", "code-0"] {
        assert!(!log.contains(secret), "{secret} in the server's log");
    }
    let catalog = t.catalog().await;
    let data = catalog.own_data(&patient).await.expect("own data");
    let fetched: Vec<&str> = data
        .records
        .iter()
        .filter(|r| r.source.as_deref() == Some("smart:ep-1/org-1"))
        .map(|r| r.body.resource_type.as_str())
        .collect();
    assert_eq!(
        fetched.iter().filter(|t| **t == "Condition").count(),
        7,
        "{fetched:?}"
    );
    assert_eq!(
        fetched.iter().filter(|t| **t == "Observation").count(),
        5,
        "{fetched:?}"
    );
    assert!(
        !data
            .records
            .iter()
            .any(|r| r.body.raw.get().contains("pat-b"))
    );
    let revoked_before = fhir.lock().expect("lock").revoked.len();
    assert_eq!(revoked_before, 0);

    // The staff's side of the written request: sent, extended, received with files.
    let out = t.expect(&["providers", "requests", "--patient", &patient], 0);
    let request = out
        .lines()
        .find(|l| l.contains("Lakeside"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the request's id")
        .to_string();
    assert!(
        t.expect(&["providers", "sent", "--request", &request], 0)
            .contains("must answer by")
    );
    t.expect(
        &[
            "providers",
            "extend",
            "--request",
            &request,
            "--reason",
            "records in storage",
        ],
        0,
    );
    let refused = t.run(&[
        "providers",
        "extend",
        "--request",
        &request,
        "--reason",
        "again",
    ]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("one extension"), "{why}");
    let received =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fhir/synthea-patient-1.json");
    let out = t.expect(
        &[
            "providers",
            "receive",
            "--request",
            &request,
            received.to_str().expect("path"),
        ],
        0,
    );
    assert!(out.contains("records added"), "{out}");
    let card = t.expect(&["providers", "scorecard"], 0);
    assert!(card.contains("Lakeside Family Practice"), "{card}");

    // Deleting the patient (the operator's environment configures the same identity provider)
    // redacts the inquiry at Persona and revokes the connection at the hospital first.
    let deleted = t
        .command()
        .args(["patients", "delete", "--patient", &patient, "--yes"])
        .envs([
            ("TESSERA_IDENTITY_PROVIDER", "persona"),
            ("TESSERA_PERSONA_API_BASE", persona_base.as_str()),
            ("TESSERA_PERSONA_API_KEY", "persona_sandbox_key"),
            ("TESSERA_PERSONA_TEMPLATE", "itmpl_ial2"),
        ])
        .output()
        .expect("tessera patients delete");
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    assert_eq!(
        fhir.lock().expect("lock").revoked.len(),
        1,
        "the refresh token was revoked"
    );
    assert!(
        persona_seen.lock().expect("lock").redacted.len() == 1,
        "the inquiry was redacted"
    );
}
