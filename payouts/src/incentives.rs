//! Survey incentives. A study (run by an advocacy organization or a sponsor) names its
//! questionnaires and an incentive schedule: an amount for enrollment, an amount per completed
//! survey, a cap per survey and a cap per patient. A completed survey credits the patient once
//! per (study, patient, questionnaire), however often the response arrives: the credit row's
//! primary key and the ledger transaction's idempotency key both say so, in one database
//! transaction.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::ledger::{self, Account, AccountKind, Entry, NewTransaction, Posted, Source};
use crate::money::{Currency, Money};
use crate::store::{now_text, sql_err};
use crate::{Backend, Payouts, PayoutsError};

/// A study and its incentive schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Study {
    pub id: String,
    /// The organization running it (an advocacy organization or a sponsor).
    pub sponsor: String,
    /// Canonical URLs of its questionnaires (a `|version` suffix is ignored when matching).
    pub questionnaires: Vec<String>,
    pub enrollment: Money,
    pub per_survey: Money,
    /// At most this much for any one survey.
    pub survey_cap_minor: i64,
    /// At most this much in all for one patient in this study (enrollment included).
    pub patient_cap_minor: i64,
}

/// What a survey credit did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Credit {
    pub study: String,
    pub survey: String,
    /// Credited now (false: credited before; the arrival changed nothing).
    pub new: bool,
    pub amount: Money,
}

pub fn study_account(study: &str, c: Currency) -> Account {
    Account::new(AccountKind::StudyIncentives, study, c)
}

/// The questionnaire's canonical URL without its `|version`.
pub fn canonical(q: &str) -> &str {
    q.split('|').next().unwrap_or(q)
}

impl Payouts {
    /// Registers a study. Amounts are non-negative in one currency; the per-survey amount is
    /// within the per-survey cap.
    pub async fn add_study(&self, s: &Study) -> Result<(), PayoutsError> {
        crate::payout::check_ref("study id", &s.id)?;
        if s.enrollment.currency != s.per_survey.currency {
            return Err(PayoutsError::Invalid(
                "study: enrollment and survey incentives in one currency".into(),
            ));
        }
        if s.enrollment.minor < 0
            || s.per_survey.minor < 0
            || s.survey_cap_minor < 0
            || s.patient_cap_minor < 0
        {
            return Err(PayoutsError::Invalid(
                "study: amounts and caps are non-negative minor units".into(),
            ));
        }
        if s.per_survey.minor > s.survey_cap_minor {
            return Err(PayoutsError::Invalid(format!(
                "study `{}`: the per-survey amount exceeds the per-survey cap",
                s.id
            )));
        }
        if s.questionnaires.is_empty() {
            return Err(PayoutsError::Invalid(format!(
                "study `{}`: name at least one questionnaire",
                s.id
            )));
        }
        let qs: Vec<&str> = s.questionnaires.iter().map(|q| canonical(q)).collect();
        sqlx::query("INSERT INTO studies (id, sponsor, questionnaires, currency, enrollment_minor, per_survey_minor, survey_cap_minor, patient_cap_minor, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING")
            .bind(&s.id)
            .bind(&s.sponsor)
            .bind(serde_json::to_string(&qs).unwrap_or_else(|_| "[]".into()))
            .bind(s.per_survey.currency.as_str())
            .bind(s.enrollment.minor)
            .bind(s.per_survey.minor)
            .bind(s.survey_cap_minor)
            .bind(s.patient_cap_minor)
            .bind(now_text())
            .execute(self.pool())
            .await
            .map_err(sql_err("registering a study"))?;
        Ok(())
    }

    /// Adds a questionnaire to a registered study, so that completing it earns the study's
    /// incentive (nothing changes when the study names it already).
    pub async fn attach_questionnaire(
        &self,
        study: &str,
        questionnaire: &str,
    ) -> Result<(), PayoutsError> {
        let q = canonical(questionnaire).to_string();
        crate::retry(|| async {
            let mut tx = self.begin().await?;
            let current: Option<String> =
                sqlx::query_scalar("SELECT questionnaires FROM studies WHERE id = $1")
                    .bind(study)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(sql_err("reading a study"))?;
            let Some(current) = current else {
                return Err(PayoutsError::NotFound(format!(
                    "study `{study}`: register it first (`tessera payouts study`)"
                )));
            };
            let mut list: Vec<String> = serde_json::from_str(&current).unwrap_or_default();
            if list.contains(&q) {
                return Ok(());
            }
            list.push(q.clone());
            sqlx::query("UPDATE studies SET questionnaires = $2 WHERE id = $1")
                .bind(study)
                .bind(serde_json::to_string(&list).unwrap_or_else(|_| "[]".into()))
                .execute(&mut *tx)
                .await
                .map_err(sql_err("updating a study"))?;
            tx.commit().await.map_err(sql_err("updating a study"))?;
            Ok(())
        })
        .await
    }

    pub async fn studies(&self) -> Result<Vec<Study>, PayoutsError> {
        let c = || sql_err("reading studies");
        sqlx::query("SELECT id, sponsor, questionnaires, currency, enrollment_minor, per_survey_minor, survey_cap_minor, patient_cap_minor FROM studies ORDER BY id")
            .fetch_all(self.pool())
            .await
            .map_err(c())?
            .iter()
            .map(|r| {
                let cur = Currency::parse(&r.try_get::<String, _>("currency").map_err(c())?)?;
                Ok(Study {
                    id: r.try_get("id").map_err(c())?,
                    sponsor: r.try_get("sponsor").map_err(c())?,
                    questionnaires: serde_json::from_str(
                        &r.try_get::<String, _>("questionnaires").map_err(c())?,
                    )
                    .unwrap_or_default(),
                    enrollment: Money::new(r.try_get("enrollment_minor").map_err(c())?, cur),
                    per_survey: Money::new(r.try_get("per_survey_minor").map_err(c())?, cur),
                    survey_cap_minor: r.try_get("survey_cap_minor").map_err(c())?,
                    patient_cap_minor: r.try_get("patient_cap_minor").map_err(c())?,
                })
            })
            .collect()
    }

    /// Credits a completed survey of `questionnaire` by `patient` to every study that names
    /// the questionnaire: the enrollment incentive with the first survey, then the survey's.
    pub async fn survey_completed(
        &self,
        patient: &str,
        questionnaire: &str,
    ) -> Result<Vec<Credit>, PayoutsError> {
        let q = canonical(questionnaire);
        let mut out = Vec::new();
        for s in self.studies().await? {
            if s.questionnaires.iter().any(|x| x == q) {
                if s.enrollment.minor > 0 {
                    out.push(
                        self.credit(&s, patient, "enrollment", s.enrollment.minor)
                            .await?,
                    );
                }
                out.push(
                    self.credit(&s, patient, q, s.per_survey.minor.min(s.survey_cap_minor))
                        .await?,
                );
            }
        }
        Ok(out)
    }

    /// Credits `wanted` for `survey` of study `s` to `patient`, once, within the patient cap.
    async fn credit(
        &self,
        s: &Study,
        patient: &str,
        survey: &str,
        wanted: i64,
    ) -> Result<Credit, PayoutsError> {
        crate::payout::check_ref("patient id", patient)?;
        let cur = s.per_survey.currency;
        crate::retry(|| async {
            let mut tx = self.begin().await?;
            if self.backend() == Backend::Postgres {
                // Serializes credits of one study so two surveys cannot both fit under the cap.
                sqlx::query("SELECT id FROM studies WHERE id = $1 FOR UPDATE")
                    .bind(&s.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(sql_err("locking a study"))?;
            }
            if let Some(row) = sqlx::query("SELECT amount_minor FROM survey_credits WHERE study = $1 AND patient = $2 AND survey = $3")
                .bind(&s.id)
                .bind(patient)
                .bind(survey)
                .fetch_optional(&mut *tx)
                .await
                .map_err(sql_err("reading survey credits"))?
            {
                let amount: i64 = row.try_get("amount_minor").map_err(sql_err("reading survey credits"))?;
                return Ok(Credit { study: s.id.clone(), survey: survey.to_string(), new: false, amount: Money::new(amount, cur) });
            }
            let so_far: i64 = sqlx::query_scalar("SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM survey_credits WHERE study = $1 AND patient = $2")
                .bind(&s.id)
                .bind(patient)
                .fetch_one(&mut *tx)
                .await
                .map_err(sql_err("summing survey credits"))?;
            let amount = wanted.min((s.patient_cap_minor - so_far).max(0));
            let txn = if amount > 0 {
                let t = NewTransaction {
                    key: format!("survey_incentive:{}:{patient}:{survey}", s.id),
                    kind: if survey == "enrollment" { "study_enrollment" } else { "survey_incentive" }.into(),
                    source: Source { study: Some(s.id.clone()), survey: Some(survey.to_string()), organization: Some(s.sponsor.clone()), ..Source::default() },
                    entries: vec![
                        Entry::debit(study_account(&s.id, cur), amount),
                        Entry::credit(Account::patient_available(patient, cur), amount),
                    ],
                    reverses: None,
                };
                match ledger::post_in(&mut tx, &t).await? {
                    Posted::New(id) | Posted::Replayed(id) => Some(id),
                }
            } else {
                None
            };
            sqlx::query("INSERT INTO survey_credits (study, patient, survey, transaction_id, amount_minor, credited_at) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(&s.id)
                .bind(patient)
                .bind(survey)
                .bind(txn)
                .bind(amount)
                .bind(now_text())
                .execute(&mut *tx)
                .await
                .map_err(|e| if crate::store::contended(&e) { PayoutsError::Contended } else { PayoutsError::Sql { what: "recording a survey credit", source: e } })?;
            tx.commit().await.map_err(sql_err("committing a survey credit"))?;
            Ok(Credit { study: s.id.clone(), survey: survey.to_string(), new: true, amount: Money::new(amount, cur) })
        })
        .await
    }
}
