//! `tessera demo`: a working catalog from real test data in one command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use chrono::Utc;
use clap::Args;
use tessera_catalog::consent::KNOWN_PURPOSES;
use tessera_catalog::{Grant, IngestOptions, Purpose, Scope};

use crate::config::{DEFAULT_FLIGHT_ADDR, DEFAULT_HTTP_ADDR, GlobalArgs, write_private};
use crate::output::say;

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Synthea-derived patients in the demo: the shipped corpus's 373 patients, then new
    /// persons resampled from them (fresh identities, dates moved back by up to a year)
    /// up to this many; fewer takes the first N of the corpus. The 550 rare-disease
    /// phenopackets come on top.
    #[arg(long, default_value_t = DEFAULT_PATIENTS)]
    pub patients: usize,

    /// Seed of the resampling: the same seed and size give the same demo.
    #[arg(long, default_value_t = 20261205)]
    pub seed: u64,

    /// The fixtures shipped with Tessera (the demo corpus is `corpus/` inside).
    #[arg(long, env = "TESSERA_FIXTURES", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures"))]
    pub fixtures: PathBuf,

    /// The policy of the demo's natural-history release.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/natural-history.toml"))]
    pub release_policy: PathBuf,
}

/// The demo's default size: large enough that the natural-history release keeps common
/// diagnoses with their time under (k, k^m)-anonymity (k = 5, m = 3), which the corpus's 373
/// patients alone do not (`policies/natural-history.toml` gives the figures).
pub const DEFAULT_PATIENTS: usize = 3_000;

/// Synthea patients in the shipped corpus (`fixtures/corpus/synthea-r4-dev.tar.zst`).
pub const CORPUS_PATIENTS: usize = 373;

/// What the demo ingests, all from the repository: the Synthea population (the shipped corpus,
/// resampled to `patients` into `DATA_DIR/corpus/`), the phenopackets and the surveys.
pub fn demo_inputs(
    fixtures: &Path,
    data_dir: &Path,
    patients: usize,
    seed: u64,
) -> Result<(Vec<PathBuf>, String)> {
    let corpus = fixtures.join("corpus");
    let synthea = corpus.join("synthea-r4-dev.tar.zst");
    if !synthea.is_file() {
        anyhow::bail!(
            "the demo corpus is missing: expected {} (it ships in the repository; run from a complete checkout or set TESSERA_FIXTURES)",
            synthea.display()
        );
    }
    let population = data_dir
        .join("corpus")
        .join(format!("synthea-{patients}-seed-{seed}.tar.zst"));
    let made = if population.is_file() {
        format!("{} (made by an earlier run)", population.display())
    } else {
        let r =
            tessera_catalog::synthetic::resample_synthea(&synthea, &population, patients, seed)?;
        format!(
            "{}: {} corpus patients and {} resampled persons",
            population.display(),
            r.originals,
            r.copies
        )
    };
    let mut inputs = vec![population, corpus.join("phenopackets.tar.zst")];
    // The surveys answer for two patients of the corpus, present when the population holds
    // the whole corpus.
    let made = if patients >= CORPUS_PATIENTS {
        inputs.push(fixtures.join("surveys"));
        made
    } else {
        format!(
            "{made}; the demo surveys are left out (their two patients are among the corpus's {CORPUS_PATIENTS}, not necessarily the first {patients})"
        )
    };
    Ok((inputs, made))
}

/// Demo consents, varied so that scopes and purposes differ between patients: everyone
/// allows natural-history research; synthetic-control research excludes sensitive
/// categories; two thirds allow commercial licensing.
fn demo_grants(patient_id: &str) -> Vec<(&'static str, Scope)> {
    let mut grants = vec![
        (KNOWN_PURPOSES[0], Scope::All),
        (KNOWN_PURPOSES[1], Scope::excluding_all_sensitive()),
    ];
    let bucket = u8::from_str_radix(&patient_id[..1], 16).unwrap_or(0);
    if !bucket.is_multiple_of(3) {
        grants.push((KNOWN_PURPOSES[3], Scope::All));
    }
    grants
}

pub async fn run(g: &GlobalArgs, args: DemoArgs) -> Result<ExitCode> {
    let catalog = super::open_catalog(g, true).await?;
    let (inputs, made) = demo_inputs(&args.fixtures, &g.data_dir, args.patients, args.seed)?;
    say!(
        "tessera demo: data folder {}; population {made}",
        g.data_dir.display()
    );
    // A second run over the same population ingests nothing again (ingest would find every
    // record unchanged, after parsing them all): the marker names what the catalog holds.
    let marker = g.data_dir.join("corpus/ingested");
    let names: Vec<String> = inputs.iter().map(|i| i.display().to_string()).collect();
    let mut quarantined = false;
    if std::fs::read_to_string(&marker)
        .is_ok_and(|t| t.lines().eq(names.iter().map(String::as_str)))
    {
        say!(
            "the demo population is already in the catalog ({}): nothing ingested again",
            marker.display()
        );
    } else {
        say!("ingesting:");
        for n in &names {
            say!("  {n}");
        }
        let bar = super::ingest::Bar::new();
        let started = Instant::now();
        let report = catalog
            .ingest(&inputs, &IngestOptions::default(), &bar)
            .await?;
        super::ingest::print_report(&report, started.elapsed().as_secs_f64());
        quarantined = !report.quarantined.is_empty();
        if !quarantined {
            std::fs::write(&marker, names.join("\n") + "\n")?;
        }
    }

    let mut granted = 0;
    let mut offset = 0;
    loop {
        let page = catalog.list_patients(500, offset).await?;
        if page.is_empty() {
            break;
        }
        offset += page.len() as i64;
        for p in page {
            let history = catalog.consent_history(&p.patient_id).await?;
            for (purpose, scope) in demo_grants(&p.patient_id) {
                if history.iter().any(|e| e.purpose == purpose) {
                    continue; // the demo never overrides a recorded choice
                }
                catalog
                    .grant(Grant {
                        patient_id: p.patient_id.clone(),
                        purpose: Purpose::parse(purpose)?,
                        scope,
                        valid_from: None,
                        valid_until: None,
                        actor: "demo".into(),
                    })
                    .await?;
                granted += 1;
            }
        }
    }
    say!("granted {granted} demo consents; consent in force now:");
    let now = Utc::now();
    for purpose in KNOWN_PURPOSES {
        let n = catalog
            .consented_patients(&Purpose::parse(purpose)?, now)
            .await?
            .len();
        say!("  {purpose:<28} {n} patients");
    }

    // A research release of the demo data, under the Safe Harbor policy.
    let purpose = Purpose::parse(KNOWN_PURPOSES[0])?;
    let policy_text = std::fs::read_to_string(&args.release_policy)?;
    let policy = tessera_deid::policy::Policy::from_file(&args.release_policy)?;
    let releases_dir = g.data_dir.join("releases");
    let built = catalog
        .build_release(&tessera_catalog::ReleaseRequest {
            family: "demo-natural-history",
            purpose: &purpose,
            policy: &policy,
            policy_text: &policy_text,
            releases_dir: &releases_dir,
        })
        .await;
    match built {
        Ok((row, manifest)) => {
            super::release::print_summary(&row.path, &manifest);
            let tables: Vec<String> = manifest.files.iter().map(|f| f.table.clone()).collect();
            demo_licenses(g, &tables).await?;
            demo_payouts(g, &catalog).await?;
        }
        // A population smaller than the policy's k (`--patients 3`): say so, and go on.
        Err(e) if e.is_user_error() => say!("no demo release: {e}"),
        Err(e) => return Err(e.into()),
    }

    let patients = catalog.count_patients().await?;
    say!("{patients} patients in the catalog. Next:");
    for (what, how) in next_steps(g) {
        say!("  {what:<34} {how}");
    }
    catalog.close().await;
    Ok(if !quarantined {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_QUARANTINED)
    })
}

/// The demo study's questionnaire (`fixtures/questionnaires/seizure-diary.json`), compiled in
/// so the demo needs no file beside the binary.
fn demo_questionnaire() -> Option<serde_json::Value> {
    serde_json::from_str(include_str!(
        "../../fixtures/questionnaires/seizure-diary.json"
    ))
    .ok()
}

/// The demo patient's e-mail address (an example.org address: nothing is delivered there).
pub const DEMO_PATIENT_EMAIL: &str = "demo.patient@example.org";

/// What to do after the demo, as `tessera demo` prints it: each line a purpose and a command or
/// address (the addresses `tessera serve` listens on by default).
pub fn next_steps(g: &GlobalArgs) -> Vec<(&'static str, String)> {
    let http = format!("http://{DEFAULT_HTTP_ADDR}");
    let demo_json = g.data_dir.join("demo.json");
    let data_dir = g.data_dir.display();
    let mut steps = vec![
        (
            "serve the demo",
            format!("tessera --data-dir {data_dir} serve"),
        ),
        ("start page (after serve)", format!("{http}/")),
        (
            "analyst console",
            format!("{http}/analyst (sign in with an organization's api_key from demo.json)"),
        ),
        (
            "operator console",
            format!("{http}/operator (sign in with operator.api_key from demo.json)"),
        ),
        ("HTTP API", format!("{http}/openapi.json")),
        (
            "Flight SQL (ADBC, DBeaver)",
            format!(
                "grpc://{DEFAULT_FLIGHT_ADDR}, API keys in {}",
                demo_json.display()
            ),
        ),
    ];
    if let Some(link) = std::fs::read_to_string(&demo_json)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|d| d["patient"]["sign_in"].as_str().map(str::to_string))
    {
        steps.push(("a patient's earnings page", link));
        steps.push((
            "or sign in as the patient by e-mail",
            format!(
                "{http}/me/sign-in with {DEMO_PATIENT_EMAIL}; the link lands in {data_dir}/outbox/"
            ),
        ));
    }
    steps.extend([
        (
            "the notebooks",
            "python3 -m venv .venv && .venv/bin/pip install -r notebooks/requirements.txt jupyterlab && .venv/bin/jupyter lab notebooks/".to_string(),
        ),
        (
            "what the release kept",
            format!("tessera --data-dir {data_dir} release show --family demo-natural-history --version 1"),
        ),
    ]);
    steps
}

/// The pages `tessera serve` offers at `http` (what it prints when it starts).
pub fn console_urls(http: &str) -> Vec<(&'static str, String)> {
    vec![
        ("start page", format!("{http}/")),
        ("analyst console", format!("{http}/analyst")),
        ("operator console", format!("{http}/operator")),
        ("patients' sign-in", format!("{http}/me")),
        ("API reference", format!("{http}/openapi.json")),
    ]
}

/// Three demo organizations, with an aggregate-only license under differential privacy, an
/// exact aggregate-only license and a row-level license over every table of the demo release, signed, countersigned and active, and an API key for each, written with the
/// license ids to `DATA_DIR/demo.json` (mode 0600). Already present from an earlier demo run:
/// left as they are.
async fn demo_licenses(g: &GlobalArgs, tables: &[String]) -> Result<()> {
    use tessera_licensing::decision::Principal;
    use tessera_licensing::model::*;
    use tessera_licensing::store::LicensingStore;
    use tessera_licensing::terms;

    let path = g.data_dir.join("demo.json");
    if path.exists() {
        say!(
            "demo licenses and keys: see {} (from an earlier run)",
            path.display()
        );
        return Ok(());
    }
    let keyring = g.keyring(false)?;
    let store = LicensingStore::connect(&g.database_url()).await?;
    let (platform, platform_public) =
        terms::platform_key(&keyring.application_secret("platform-signing-seed"))
            .map_err(|e| anyhow::anyhow!("platform key: {e}"))?;
    let pepper = keyring.application_secret("api-key-pepper");
    let now = Utc::now();
    let mut entries = Vec::new();
    // The aggregate-only license analysts start with answers under differential privacy;
    // the exact one (small cells suppressed) stays beside it for comparison (the cohort
    // notebook shows both) and for the tests of suppression.
    let private = tessera_licensing::privacy::PrivacyTerms {
        rho_budget: 2.0,
        ..Default::default()
    };
    for (org, mode, privacy) in [
        ("demo-private", AccessMode::AggregateOnly, Some(private)),
        ("demo-aggregate", AccessMode::AggregateOnly, None),
        ("demo-rowlevel", AccessMode::RowLevel, None),
    ] {
        let (pkcs8, public) =
            terms::generate_key().map_err(|_| anyhow::anyhow!("cannot make a signing key"))?;
        let signatory = ring::signature::Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|_| anyhow::anyhow!("cannot read the signing key"))?;
        store.add_organization(org, org, &public).await?;
        let license = License {
            id: format!("{org}-license"),
            organization: org.to_string(),
            releases: [("demo-natural-history".to_string(), VersionPin::Latest)]
                .into_iter()
                .collect(),
            tables: tables
                .iter()
                .map(|t| (t.clone(), ColumnGrant::All))
                .collect(),
            purpose: KNOWN_PURPOSES[0].to_string(),
            mode,
            output: OutputRules {
                privacy: privacy.clone(),
                ..OutputRules::default()
            },
            quota: Quota {
                queries_per_minute: 60,
                queries_per_day: 5_000,
                rows_per_day: 50_000_000,
                queries_per_month: 100_000,
                rows_per_month: 500_000_000,
            },
            term_start: now - chrono::Duration::days(1),
            term_end: now + chrono::Duration::days(365),
            fees: Fees {
                flat: Some(Money {
                    minor: 1_000_000,
                    currency: "USD".into(),
                }),
                per_contributing_patient: Some(Money {
                    minor: 100,
                    currency: "USD".into(),
                }),
                patient_share_bps: 5000,
            },
            clauses: standard_clauses(),
            status: LicenseStatus::Draft,
        };
        store.create_license(&license).await?;
        let mut signed = terms::sign(&license, &signatory);
        terms::countersign(&mut signed, &platform);
        store
            .sign_license(&license.id, &signed, &platform_public)
            .await?;
        store.set_status(&license.id, LicenseStatus::Active).await?;
        let (key, key_id) = store
            .issue_key(
                &Principal::Analyst {
                    organization: org.to_string(),
                    licenses: vec![license.id.clone()],
                },
                Some(now + chrono::Duration::days(90)),
                &pepper,
            )
            .await?;
        entries.push(serde_json::json!({
            "organization": org,
            "license": license.id,
            "mode": mode,
            "differential_privacy": privacy.is_some(),
            "key_id": key_id,
            "api_key": key,
        }));
    }
    // An operator key, for the admin endpoints of the demo server.
    let (operator_key, operator_id) = store
        .issue_key(
            &Principal::Admin,
            Some(now + chrono::Duration::days(90)),
            &pepper,
        )
        .await?;
    store.close().await;
    let doc = serde_json::json!({
        "organizations": entries,
        "operator": {"key_id": operator_id, "api_key": operator_key},
        // `tessera serve` writes the address it listens on here.
        "services": {
            "http": format!("http://{DEFAULT_HTTP_ADDR}"),
            "flight_sql": format!("grpc://{DEFAULT_FLIGHT_ADDR}"),
        },
    });
    write_private(&path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    say!(
        "three demo organizations: aggregate-only with a privacy budget (demo-private), aggregate-only with exact counts (demo-aggregate), row-level (demo-rowlevel); their API keys are in {}",
        path.display()
    );
    say!(
        "after `tessera serve`, a first cohort query from Python (pip install adbc-driver-flightsql pyarrow):"
    );
    say!("  import json, adbc_driver_flightsql.dbapi as fs");
    say!("  demo = json.load(open(\"{}\"))", path.display());
    say!("  key = demo[\"organizations\"][0][\"api_key\"]");
    say!(
        "  conn = fs.connect(demo[\"services\"][\"flight_sql\"], db_kwargs={{\"adbc.flight.sql.authorization_header\": \"Bearer \" + key}})"
    );
    say!(
        "  cur = conn.cursor(); cur.execute(\"SELECT gender_source_value, count(*) AS n FROM person GROUP BY 1\")"
    );
    say!("  print(cur.fetch_arrow_table())");
    Ok(())
}

/// The money side of the demo: a study with an incentive schedule and its completed surveys
/// credited, an advocacy organization, both demo licenses invoiced (through Stripe when
/// TESSERA_STRIPE_SECRET_KEY is set, else recorded offline) and marked paid by a test webhook
/// signed with the server's Stripe webhook secret and handled by the same code as
/// `POST /v1/webhooks/stripe`, and a sign-in link for a demo patient's earnings page.
async fn demo_payouts(g: &GlobalArgs, catalog: &tessera_catalog::Catalog) -> Result<()> {
    use tessera_payouts::incentives::Study;
    use tessera_payouts::payout::AdvocacyOrg;
    use tessera_payouts::webhook::{self, Provider};
    use tessera_payouts::{Money, Payouts};

    let keyring = g.keyring(false)?;
    let cfg = tessera::payouts::PayoutsConfig::from_env(&keyring);
    let payouts = Payouts::connect(&g.database_url()).await?;
    payouts
        .add_study(&Study {
            id: "demo-quality-of-life".into(),
            sponsor: "demo-epilepsy-advocates".into(),
            questionnaires: vec!["https://tessera.example/Questionnaire/quality-of-life".into()],
            enrollment: Money::usd(2_500),
            per_survey: Money::usd(1_500),
            survey_cap_minor: 10_000,
            patient_cap_minor: 20_000,
        })
        .await?;
    payouts
        .add_advocacy_org(&AdvocacyOrg {
            id: "demo-epilepsy-advocates".into(),
            name: "Demo Epilepsy Advocates".into(),
            disease: "epilepsy".into(),
            stripe_account: "acct_demoepilepsy".into(),
            description: "Supports families living with epilepsy and funds research on rare epilepsies (a made-up organization for the demo).".into(),
        })
        .await?;
    let credited = tessera::payouts::credit_surveys(&payouts, catalog).await?;
    say!("survey incentives: {credited} new credits (study demo-quality-of-life)");
    // A survey patients answer on their pages, for the same study's incentive.
    if let Some(q) = demo_questionnaire() {
        let stored = catalog
            .add_questionnaire(&q, Some("demo-quality-of-life"))
            .await?;
        payouts
            .attach_questionnaire("demo-quality-of-life", &stored.questionnaire.url)
            .await?;
        say!(
            "survey open to patients: {} (study demo-quality-of-life)",
            stored.questionnaire.title
        );
    }

    let store = tessera_licensing::store::LicensingStore::connect(&g.database_url()).await?;
    let invoiced: Vec<String> = payouts
        .invoices()
        .await?
        .into_iter()
        .map(|i| i.license)
        .collect();
    for license_id in ["demo-aggregate-license", "demo-rowlevel-license"] {
        if invoiced.iter().any(|l| l == license_id) {
            continue;
        }
        let Some(license) = store.find_license(license_id).await? else {
            continue;
        };
        let inv = tessera::payouts::invoice_license(&payouts, catalog, &license, &cfg).await?;
        // The payment notice a provider would send, signed and verified as the server does.
        let event = serde_json::to_vec(&serde_json::json!({
            "id": format!("evt_demo_{}", inv.id), "object": "event", "type": "invoice.paid",
            "data": {"object": {"id": inv.provider_ref.clone().unwrap_or_else(|| format!("in_demo_{}", inv.id)), "object": "invoice",
                "amount_paid": inv.amount.minor, "currency": inv.amount.currency.as_str().to_ascii_lowercase(),
                "metadata": {"tessera_invoice": inv.id, "tessera_license": license_id}}}
        }))?;
        let now = Utc::now().timestamp();
        let header = webhook::sign_stripe(&cfg.stripe_webhook_secret, &event, now);
        webhook::verify_stripe(&cfg.stripe_webhook_secret, &header, &event, now)?;
        let out = payouts
            .handle_stripe_event(Provider::Stripe, &event)
            .await?;
        say!(
            "invoiced {license_id}: {} to {} contributing patients, paid ({})",
            inv.amount,
            inv.contributors,
            out.result
        );
    }
    store.close().await;

    // A demo patient: the one with the most earnings among those who answered the survey,
    // else anyone with earnings.
    let surveyed: std::collections::BTreeSet<String> = catalog
        .completed_surveys()
        .await?
        .into_iter()
        .map(|s| s.0)
        .collect();
    let mut earners: Vec<_> = payouts
        .balances()
        .await?
        .into_iter()
        .filter(|b| b.kind == "available" && b.balance > 0)
        .collect();
    earners.sort_by_key(|b| (!surveyed.contains(&b.owner), -b.balance));
    if let Some(patient) = earners.into_iter().next().map(|b| b.owner) {
        let server = format!("http://{DEFAULT_HTTP_ADDR}");
        let link = super::payouts::sign_in_link(g, catalog, &patient, &server, 30).await?;
        // The demo patient's account, with an address for e-mailed sign-in links (written to
        // DATA_DIR/outbox by a server without an SMTP relay).
        let (account, _) = catalog
            .invite(
                &patient,
                tessera_catalog::accounts::Relation::Own,
                Some(DEMO_PATIENT_EMAIL),
                "demo",
            )
            .await?;
        // A share the demo patient made for their clinician (passcode 1234), on their Share page.
        if catalog.shares(&patient).await?.is_empty() {
            catalog
                .create_share(
                    &patient,
                    &account,
                    "For my neurologist (demo)",
                    tessera_catalog::sharing::Contents {
                        kinds: Vec::new(),
                        identity: true,
                    },
                    tessera_catalog::sharing::DEFAULT_DAYS,
                    Some("1234"),
                )
                .await?;
        }
        let path = g.data_dir.join("demo.json");
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(&text)
        {
            doc["patient"] = serde_json::json!({
                "patient_id": patient,
                "sign_in": link,
                "email": DEMO_PATIENT_EMAIL,
            });
            crate::config::replace_private(&path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
        }
        say!("a demo patient's earnings page, after `tessera serve`: {link}");
    }
    payouts.close().await;
    Ok(())
}
