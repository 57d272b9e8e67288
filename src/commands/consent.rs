//! `tessera consent grant|revoke|show`

use std::process::ExitCode;

use anyhow::Result;
use chrono::Utc;
use clap::Subcommand;
use tessera_catalog::consent::parse_time;
use tessera_catalog::{Grant, Purpose, Scope};

use crate::config::GlobalArgs;
use crate::output;
use crate::output::say;

#[derive(Debug, Subcommand)]
pub enum ConsentCommand {
    /// Record a patient's consent for a purpose.
    Grant {
        /// Internal patient id (see `tessera patients list`).
        #[arg(long)]
        patient: String,
        /// research.natural_history, research.synthetic_control, research.drug_development,
        /// commercial.licensing, or another `area.name`.
        #[arg(long)]
        purpose: String,
        /// `all`, `exclude-sensitive`, or categories to exclude: hiv,mental_health,substance_use,genetic
        #[arg(long, default_value = "all")]
        scope: String,
        /// Start of the consent (YYYY-MM-DD or RFC 3339); default now.
        #[arg(long)]
        from: Option<String>,
        /// End of the consent (exclusive); default open-ended.
        #[arg(long)]
        until: Option<String>,
        /// Who records it: patient, caregiver:<name>, operator...
        #[arg(long, default_value = "operator")]
        actor: String,
    },
    /// Revoke a patient's consent for a purpose, effective immediately.
    Revoke {
        #[arg(long)]
        patient: String,
        #[arg(long)]
        purpose: String,
        #[arg(long, default_value = "operator")]
        actor: String,
    },
    /// A patient's current consent per purpose and its full history.
    Show {
        #[arg(long)]
        patient: String,
        /// JSON on standard output.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(g: &GlobalArgs, c: ConsentCommand) -> Result<ExitCode> {
    let catalog = super::open_catalog(g, false).await?;
    match c {
        ConsentCommand::Grant {
            patient,
            purpose,
            scope,
            from,
            until,
            actor,
        } => {
            let grant = Grant {
                patient_id: patient,
                purpose: Purpose::parse(&purpose)?,
                scope: Scope::parse(&scope)?,
                valid_from: from
                    .as_deref()
                    .map(|f| parse_time(f, "--from"))
                    .transpose()?,
                valid_until: until
                    .as_deref()
                    .map(|u| parse_time(u, "--until"))
                    .transpose()?,
                actor,
            };
            let e = catalog.grant(grant).await?;
            say!(
                "granted {} for patient {} (scope {}, from {}{}), event {}",
                e.purpose,
                e.patient_id,
                e.scope,
                e.valid_from,
                e.valid_until
                    .map(|u| format!(" until {u}"))
                    .unwrap_or_default(),
                e.seq
            );
        }
        ConsentCommand::Revoke {
            patient,
            purpose,
            actor,
        } => {
            let e = catalog
                .revoke(&patient, &Purpose::parse(&purpose)?, &actor)
                .await?;
            say!(
                "revoked {} for patient {} at {}",
                e.purpose,
                e.patient_id,
                e.recorded_at
            );
        }
        ConsentCommand::Show { patient, json } => {
            let history = catalog.consent_history(&patient).await?;
            let mut purposes: Vec<&str> = history.iter().map(|e| e.purpose.as_str()).collect();
            purposes.dedup();
            let now = Utc::now();
            let mut states = Vec::new();
            for p in purposes {
                let purpose = Purpose::parse(p)?;
                states.push((
                    p.to_string(),
                    catalog.consent_state(&patient, &purpose, now).await?,
                ));
            }
            if json {
                let v = serde_json::json!({
                    "patient_id": patient,
                    "current": states.iter().map(|(p, s)| serde_json::json!({"purpose": p, "state": s})).collect::<Vec<_>>(),
                    "history": history.iter().map(|e| serde_json::json!({
                        "purpose": e.purpose, "seq": e.seq, "action": e.action, "scope": e.scope,
                        "valid_from": e.valid_from, "valid_until": e.valid_until,
                        "recorded_at": e.recorded_at, "actor": e.actor,
                    })).collect::<Vec<_>>(),
                });
                say!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                say!("patient {patient}");
                if states.is_empty() {
                    say!("  no consent recorded");
                }
                for (p, s) in &states {
                    say!("  {p}: {}", serde_json::to_string(s)?);
                }
                say!("history:");
                let rows: Vec<Vec<String>> = history
                    .iter()
                    .map(|e| {
                        vec![
                            e.purpose.clone(),
                            e.seq.to_string(),
                            e.action.clone(),
                            e.scope.clone(),
                            e.valid_from.clone(),
                            e.valid_until.clone().unwrap_or_else(|| "-".into()),
                            e.recorded_at.clone(),
                            e.actor.clone(),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "purpose", "seq", "action", "scope", "from", "until", "recorded", "actor",
                    ],
                    &rows,
                );
            }
        }
    }
    catalog.close().await;
    Ok(ExitCode::SUCCESS)
}
