//! `tessera patients list`, `invite`, `verify`, `delete` and `tessera stats`.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::config::GlobalArgs;
use crate::output;
use crate::output::say;

#[derive(Debug, Subcommand)]
pub enum PatientsCommand {
    /// Internal patient ids with record counts (nothing identifying).
    List {
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long, default_value_t = 0)]
        offset: i64,
        /// JSON lines on standard output.
        #[arg(long)]
        json: bool,
    },
    /// Invites someone to the patients' pages for a stored patient: the patient themself
    /// (`--relation self`) or a caregiver. Prints a single-use link (7 days); with `--email`,
    /// the account's sign-in links go to that address from then on.
    Invite {
        /// The patient's internal id (`tessera patients list`).
        #[arg(
            long,
            conflicts_with = "identifier",
            required_unless_present = "identifier"
        )]
        patient: Option<String>,
        /// Or an identifier the patient's records carry, as SYSTEM|VALUE (matched the way
        /// ingest matches patients).
        #[arg(long)]
        identifier: Option<String>,
        /// self, parent, guardian, spouse, child or other.
        #[arg(long, default_value = "self")]
        relation: String,
        /// The invitee's e-mail address (sign-in links go there).
        #[arg(long)]
        email: Option<String>,
        /// The address patients reach the server at, for the link.
        #[arg(
            long,
            env = "TESSERA_PUBLIC_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        public_url: String,
    },
    /// Deletes a patient at their request (received by the operator, e.g. by letter): closes
    /// their earnings (payouts settled or voided first; the rest kept as unclaimed funds),
    /// deletes their records, identity, accounts and shares, and destroys their data key so
    /// that no copy, backups included, can be read. Consent history, the payments ledger and
    /// the audit trail are kept under the pseudonymous id. Patients do this themselves on
    /// `/me/delete`.
    Delete {
        /// The patient's internal id (`tessera patients list`).
        #[arg(long)]
        patient: String,
        /// Confirms the deletion (it cannot be undone).
        #[arg(long)]
        yes: bool,
    },
    /// Records an identity verification done in person by the registry's staff (attended
    /// proofing, NIST SP 800-63-4): the evidence inspected, the decision recorded as the
    /// patient's latest verification. Record requests and payouts unlock only when approved at
    /// IAL2. Patients verify online on their Providers page where a provider is configured.
    Verify {
        /// The patient's internal id (`tessera patients list`).
        #[arg(long)]
        patient: String,
        #[arg(long, value_parser = ["approved", "declined"])]
        decision: String,
        /// The level the evidence inspected reaches: ial2 (one STRONG piece, such as a
        /// driver's license or passport, checked against the person) or ial1.
        #[arg(long, default_value = "ial2")]
        assurance: String,
    },
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(g: &GlobalArgs, c: PatientsCommand) -> Result<ExitCode> {
    let catalog = super::open_catalog(g, false).await?;
    match c {
        PatientsCommand::List {
            limit,
            offset,
            json,
        } => {
            let list = catalog.list_patients(limit, offset).await?;
            if json {
                for p in &list {
                    say!("{}", serde_json::to_string(p)?);
                }
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|p| {
                        vec![
                            p.patient_id.clone(),
                            p.records.to_string(),
                            p.created_at.clone(),
                        ]
                    })
                    .collect();
                output::table(&["patient id", "records", "first ingested"], &rows);
            }
        }
        PatientsCommand::Delete { patient, yes } => {
            if !yes {
                anyhow::bail!(
                    "deleting patient {patient} cannot be undone: run again with --yes to confirm"
                );
            }
            let code = delete(g, &catalog, &patient).await;
            catalog.close().await;
            return code;
        }
        PatientsCommand::Verify {
            patient,
            decision,
            assurance,
        } => {
            if catalog.ensure_patient(&patient).await.is_err() {
                anyhow::bail!("no patient {patient}: see `tessera patients list`");
            }
            let payouts = tessera_payouts::Payouts::connect(&g.database_url()).await?;
            let store = tessera_records::RecordsStore::connect(&g.database_url()).await?;
            let status = tessera_records::identity::record_attended(
                &store,
                &payouts,
                &patient,
                decision == "approved",
                tessera_records::identity::Assurance::parse(&assurance)?,
            )
            .await?;
            say!(
                "identity of {patient}: {} ({}); record requests and payouts {}",
                status.state.code(),
                assurance,
                if status.unlocked() {
                    "unlocked"
                } else {
                    "stay locked"
                }
            );
        }
        PatientsCommand::Invite {
            patient,
            identifier,
            relation,
            email,
            public_url,
        } => {
            let relation = tessera_catalog::accounts::Relation::parse(&relation)?;
            let patient = match (patient, identifier) {
                (Some(p), _) => p,
                (None, Some(id)) => {
                    let (system, value) = id.split_once('|').ok_or_else(|| {
                        anyhow::anyhow!("--identifier: give SYSTEM|VALUE, such as http://hospital.example.org/mrn|12345")
                    })?;
                    catalog
                        .find_patient_by_identifier(system, value)
                        .await?
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "no single stored patient has that identifier: check the system and value, or give --patient"
                            )
                        })?
                }
                (None, None) => anyhow::bail!("give --patient or --identifier"),
            };
            let (account, token) = catalog
                .invite(&patient, relation, email.as_deref(), "operator")
                .await?;
            say!(
                "invited: account {account} acts for patient {patient} as {}",
                relation.as_str()
            );
            say!(
                "{}/me/sign-in?token={token}",
                public_url.trim_end_matches('/')
            );
        }
    }
    catalog.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn delete(
    g: &GlobalArgs,
    catalog: &tessera_catalog::Catalog,
    patient: &str,
) -> Result<ExitCode> {
    use tessera::payouts::{Erasure, PayoutsConfig, erase_patient};
    use tessera_payouts::closure::Closing;
    use tessera_payouts::rails::decimal_text;
    let keyring = g.keyring(false)?;
    let cfg = PayoutsConfig::from_env(&keyring);
    let payouts = tessera_payouts::Payouts::connect(&g.database_url()).await?;
    let audit = tessera_licensing::store::LicensingStore::connect(&g.database_url()).await?;
    let records = tessera::records::RecordsServices::open(
        &g.database_url(),
        catalog,
        &keyring,
        &payouts,
        &std::env::var("TESSERA_PUBLIC_URL").unwrap_or_else(|_| "http://localhost".into()),
    )
    .await?;
    let erased = erase_patient(
        catalog,
        &payouts,
        &cfg.rails()?,
        &audit,
        Some(&records),
        patient,
        "operator",
        "operator-cli",
    )
    .await?;
    match erased {
        Erasure::PaymentsInFlight(list) => {
            let amounts: Vec<String> = list
                .iter()
                .map(|p| format!("{} ({})", decimal_text(p.amount), p.id))
                .collect();
            anyhow::bail!(
                "nothing was deleted: payouts are still on their way at the provider: {}; run this again once they have settled (`tessera payouts run` looks them up)",
                amounts.join(", ")
            );
        }
        Erasure::Done { deletion, closing } => {
            if deletion.already {
                say!(
                    "patient {patient} was already deleted ({}); data key destroyed now: {}",
                    deletion.deleted_at,
                    if deletion.key_destroyed {
                        "yes"
                    } else {
                        "no (none was left)"
                    }
                );
            } else {
                say!(
                    "deleted patient {patient}: {} records, {} shares, {} accounts; consent revoked for {}; data key destroyed: {}",
                    deletion.deleted.records,
                    deletion.deleted.shares,
                    deletion.deleted.accounts,
                    if deletion.consents_revoked.is_empty() {
                        "no purpose (none was in force)".to_string()
                    } else {
                        deletion.consents_revoked.join(", ")
                    },
                    if deletion.key_destroyed {
                        "yes"
                    } else {
                        "no (the records predate patient keys)"
                    }
                );
            }
            if let Closing::Closed {
                voided, unclaimed, ..
            } = closing
            {
                if !voided.is_empty() {
                    say!("payouts voided (never sent): {}", voided.join(", "));
                }
                for m in unclaimed {
                    say!("kept as unclaimed funds: {}", decimal_text(m));
                }
            }
            say!(
                "kept: the consent history, the payments ledger and the audit trail, under the pseudonymous id {patient}"
            );
        }
    }
    payouts.close().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn stats(g: &GlobalArgs, a: StatsArgs) -> Result<ExitCode> {
    let catalog = super::open_catalog(g, false).await?;
    let patients = catalog.count_patients().await?;
    let kinds = catalog.count_by_kind().await?;
    let types = catalog.count_by_resource_type().await?;
    if a.json {
        let v = serde_json::json!({
            "patients": patients,
            "records_by_kind": kinds.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "records_by_resource_type": types.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        });
        say!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        say!("{patients} patients");
        output::table(
            &["kind", "records"],
            &kinds
                .iter()
                .map(|(k, n)| vec![k.clone(), n.to_string()])
                .collect::<Vec<_>>(),
        );
        output::table(
            &["resource type", "records"],
            &types
                .iter()
                .map(|(k, n)| vec![k.clone(), n.to_string()])
                .collect::<Vec<_>>(),
        );
    }
    catalog.close().await;
    Ok(ExitCode::SUCCESS)
}
