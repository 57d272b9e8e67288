//! `tessera study add-questionnaire`: a study's FHIR R4 Questionnaire, for patients to answer
//! on their pages.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::config::GlobalArgs;
use crate::output::say;

#[derive(Debug, Subcommand)]
pub enum StudyCommand {
    /// Adds (or replaces) a questionnaire patients answer for a registered study's incentive
    /// (`tessera payouts study` registers the study). Refuses, naming the item, what the survey
    /// pages cannot ask.
    AddQuestionnaire {
        /// The FHIR R4 Questionnaire (JSON).
        #[arg(long)]
        file: PathBuf,
        /// The study whose incentive it earns.
        #[arg(long)]
        study: String,
    },
}

pub async fn run(g: &GlobalArgs, c: StudyCommand) -> Result<ExitCode> {
    match c {
        StudyCommand::AddQuestionnaire { file, study } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let resource: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let catalog = super::open_catalog(g, false).await?;
            let payouts = tessera_payouts::Payouts::connect(&g.database_url())
                .await
                .context("cannot open the payouts store")?;
            let stored = catalog
                .add_questionnaire(&resource, Some(&study))
                .await
                .with_context(|| format!("{}", file.display()))?;
            payouts
                .attach_questionnaire(&study, &stored.questionnaire.url)
                .await?;
            say!(
                "questionnaire {} ({}) added for study {study}: patients see it under Surveys",
                stored.questionnaire.url,
                stored.questionnaire.title
            );
            payouts.close().await;
            catalog.close().await;
        }
    }
    Ok(ExitCode::SUCCESS)
}
