//! Research releases (issue 4), first layer: consented summaries laid out as OMOP-CDM-shaped
//! tables, before de-identification.
//!
//! The tables follow the OMOP Common Data Model v5.4 names (`person`, `observation_period`,
//! `condition_occurrence`, `drug_exposure`, `procedure_occurrence`, `measurement`,
//! `observation`, `death`) plus `phenotype` (HPO), `genomic_variant` and `survey_response`.
//! OMOP's vocabularies are not shipped, so each event keeps its source code and code system
//! (`*_source_value`, `*_source_vocabulary`) instead of a standard concept id.
//!
//! What never enters a table: names, identifiers, street lines, cities, telecoms, free text
//! (a `Text` value, an answer typed by the patient, a code's display text), the raw source
//! resource, and phenopacket metadata. Dates and postal codes do enter, in full: they are the
//! inputs of the policy's Safe Harbor transforms (year, shift, ZIP3), which the release build
//! applies before anything is written. These frames are identified data and live in memory
//! only.
//!
//! Every event row carries `days_since_index`: days from the patient's index date (the first
//! condition onset; natural-history studies measure time from diagnosis) to the event, null
//! when either date is missing. Intervals survive date shifting and generalization this way.

pub mod build;
pub mod cohort;
pub mod events;

use std::collections::BTreeMap;

use chrono::NaiveDate;

use crate::model::{Clinical, Code, PatientSummary, Value};

/// A patient's `person_id` in a release family: hex HMAC-SHA-256 (128 bits) of the internal
/// patient id under the family's key ([`crate::Keyring::release_family_key`]); the same form
/// `tessera-deid` gives pseudonym columns.
pub fn family_pseudonym(family_key: &[u8; 32], patient_id: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, family_key);
    hex::encode(&ring::hmac::sign(&key, patient_id.as_bytes()).as_ref()[..16])
}

/// One table as named columns of optional text or numbers, in a fixed order. Identified data
/// (full dates, ZIP codes) until the release build transforms it: `Debug` shows only the shape.
#[derive(Clone, Default, PartialEq)]
pub struct Table {
    pub name: &'static str,
    pub columns: Vec<(&'static str, Column)>,
}

/// A column's values (`Debug` shows only the kind and length).
#[derive(Clone, PartialEq)]
pub enum Column {
    Text(Vec<Option<String>>),
    Number(Vec<Option<f64>>),
    Integer(Vec<Option<i64>>),
    Boolean(Vec<Option<bool>>),
}

impl std::fmt::Debug for Column {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Column::Text(_) => "Text",
            Column::Number(_) => "Number",
            Column::Integer(_) => "Integer",
            Column::Boolean(_) => "Boolean",
        };
        write!(f, "{kind}(<{} values>)", self.len())
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("name", &self.name)
            .field("rows", &self.rows())
            .field("columns", &self.columns)
            .finish()
    }
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::Text(v) => v.len(),
            Column::Number(v) => v.len(),
            Column::Integer(v) => v.len(),
            Column::Boolean(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Table {
    pub fn rows(&self) -> usize {
        self.columns.first().map_or(0, |(_, c)| c.len())
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c)
    }

    /// Appends the rows of a table of the same shape.
    pub fn append(&mut self, other: Table) {
        for ((_, mine), (_, theirs)) in self.columns.iter_mut().zip(other.columns) {
            match (mine, theirs) {
                (Column::Text(a), Column::Text(b)) => a.extend(b),
                (Column::Number(a), Column::Number(b)) => a.extend(b),
                (Column::Integer(a), Column::Integer(b)) => a.extend(b),
                (Column::Boolean(a), Column::Boolean(b)) => a.extend(b),
                _ => debug_assert!(false, "tables of one name share their shape"),
            }
        }
    }

    /// Keeps the rows whose `keep` is true.
    pub fn retain(&mut self, keep: &[bool]) {
        fn filter<T>(v: &mut Vec<T>, keep: &[bool]) {
            let mut i = 0;
            v.retain(|_| {
                let k = keep.get(i).copied().unwrap_or(false);
                i += 1;
                k
            });
        }
        for (_, c) in self.columns.iter_mut() {
            match c {
                Column::Text(v) => filter(v, keep),
                Column::Number(v) => filter(v, keep),
                Column::Integer(v) => filter(v, keep),
                Column::Boolean(v) => filter(v, keep),
            }
        }
    }

    /// The table as a Polars frame (the same column names and order).
    pub fn to_frame(&self) -> crate::error::Result<polars::prelude::DataFrame> {
        use polars::prelude::{Column as PlColumn, DataFrame};
        let columns: Vec<PlColumn> = self
            .columns
            .iter()
            .map(|(name, c)| match c {
                Column::Text(v) => PlColumn::new((*name).into(), v.clone()),
                Column::Number(v) => PlColumn::new((*name).into(), v.clone()),
                Column::Integer(v) => PlColumn::new((*name).into(), v.clone()),
                Column::Boolean(v) => PlColumn::new((*name).into(), v.clone()),
            })
            .collect();
        DataFrame::new(self.rows(), columns).map_err(|_| {
            crate::error::CatalogError::internal(format!("table {} does not line up", self.name))
        })
    }
}

/// The full date of an ISO date or date-time (`YYYY-MM-DD...`); partial dates give `None`.
fn day(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s.get(..10)?, "%Y-%m-%d").ok()
}

/// An ISO date or date-time cut to its date part, as the source precision allows
/// (`YYYY-MM-DD`, `YYYY-MM` or `YYYY`); anything else is dropped.
fn date_text(s: Option<&String>) -> Option<String> {
    let s = s?;
    let cut = s.get(..10).unwrap_or(s);
    let ok = match cut.len() {
        4 => cut.chars().all(|c| c.is_ascii_digit()),
        7 | 10 => cut.get(..4)?.chars().all(|c| c.is_ascii_digit()) && cut.as_bytes()[4] == b'-',
        _ => false,
    };
    ok.then(|| cut.to_string())
}

/// Builds rows column by column.
#[derive(Default)]
struct Builder {
    text: BTreeMap<&'static str, Vec<Option<String>>>,
    number: BTreeMap<&'static str, Vec<Option<f64>>>,
    integer: BTreeMap<&'static str, Vec<Option<i64>>>,
    boolean: BTreeMap<&'static str, Vec<Option<bool>>>,
}

impl Builder {
    fn text(&mut self, name: &'static str, v: Option<String>) -> &mut Self {
        self.text.entry(name).or_default().push(v);
        self
    }
    fn number(&mut self, name: &'static str, v: Option<f64>) -> &mut Self {
        self.number.entry(name).or_default().push(v);
        self
    }
    fn integer(&mut self, name: &'static str, v: Option<i64>) -> &mut Self {
        self.integer.entry(name).or_default().push(v);
        self
    }
    fn boolean(&mut self, name: &'static str, v: Option<bool>) -> &mut Self {
        self.boolean.entry(name).or_default().push(v);
        self
    }

    /// The table with its columns in `order` (every name must have been pushed, or the table
    /// is empty and the column comes out empty).
    fn finish(mut self, name: &'static str, order: &[(&'static str, char)]) -> Table {
        let columns = order
            .iter()
            .map(|&(c, kind)| {
                let col = match kind {
                    't' => Column::Text(self.text.remove(c).unwrap_or_default()),
                    'n' => Column::Number(self.number.remove(c).unwrap_or_default()),
                    'i' => Column::Integer(self.integer.remove(c).unwrap_or_default()),
                    _ => Column::Boolean(self.boolean.remove(c).unwrap_or_default()),
                };
                (c, col)
            })
            .collect();
        let table = Table { name, columns };
        debug_assert!(
            table.columns.iter().all(|(_, c)| c.len() == table.rows()),
            "table {name}: columns of unequal length"
        );
        table
    }
}

fn source(code: Option<&Code>) -> (Option<String>, Option<String>) {
    match code {
        Some(c) => (Some(c.code.clone()), Some(c.system.clone())),
        None => (None, None),
    }
}

/// A value as release columns: number, coded value, boolean. Text is free text and is dropped.
fn value_parts(v: Option<&Value>) -> (Option<f64>, Option<String>, Option<String>) {
    match v {
        Some(Value::Quantity { value, unit }) => (Some(*value), None, unit.clone()),
        Some(Value::Integer { value }) => (Some(*value as f64), None, None),
        Some(Value::Coded { code }) => (None, Some(code.code.clone()), None),
        Some(Value::Boolean { value }) => (None, Some(value.to_string()), None),
        Some(Value::Date { .. }) | Some(Value::Text { .. }) | None => (None, None, None),
    }
}

/// A phenotype onset kept only when it is an HPO onset class or an ISO 8601 age.
fn onset_class(s: Option<&String>) -> Option<String> {
    let s = s?;
    let hpo = s.starts_with("HP:") && s[3..].chars().all(|c| c.is_ascii_digit());
    let age = s.starts_with('P')
        && s.len() > 1
        && s[1..]
            .chars()
            .all(|c| c.is_ascii_digit() || "YMWDT".contains(c));
    (hpo || age).then(|| s.clone())
}

/// The release tables of `summaries`; `person_id` maps an internal patient id to the release
/// family's pseudonym.
pub fn omop_tables(summaries: &[PatientSummary], person_id: &dyn Fn(&str) -> String) -> Vec<Table> {
    let mut person = Builder::default();
    let mut period = Builder::default();
    let mut death = Builder::default();
    let mut condition = Builder::default();
    let mut drug = Builder::default();
    let mut procedure = Builder::default();
    let mut measurement = Builder::default();
    let mut observation = Builder::default();
    let mut phenotype = Builder::default();
    let mut variant = Builder::default();
    let mut survey = Builder::default();

    for s in summaries {
        let pid = person_id(&s.patient_id);
        let index = s
            .records
            .iter()
            .filter_map(|r| match &r.body.clinical {
                Clinical::Condition { onset, .. } => onset.as_deref().and_then(day),
                _ => None,
            })
            .min();
        let since = |d: Option<&String>| -> Option<i64> { Some((day(d?)? - index?).num_days()) };
        let mut first: Option<NaiveDate> = None;
        let mut last: Option<NaiveDate> = None;
        let mut seen = |d: Option<&String>| {
            if let Some(d) = d.and_then(|d| day(d)) {
                first = Some(first.map_or(d, |f| f.min(d)));
                last = Some(last.map_or(d, |l| l.max(d)));
            }
        };
        for r in &s.records {
            match &r.body.clinical {
                Clinical::Condition {
                    code,
                    onset,
                    abatement,
                    clinical_status,
                    ..
                } => {
                    seen(onset.as_ref());
                    let (value, vocabulary) = source(code.as_ref());
                    condition
                        .text("person_id", Some(pid.clone()))
                        .text("condition_source_value", value)
                        .text("condition_source_vocabulary", vocabulary)
                        .text("condition_start_date", date_text(onset.as_ref()))
                        .text("condition_end_date", date_text(abatement.as_ref()))
                        .text("condition_status_source_value", clinical_status.clone())
                        .integer("days_since_index", since(onset.as_ref()));
                }
                Clinical::Medication {
                    code,
                    status,
                    authored,
                } => {
                    seen(authored.as_ref());
                    let (value, vocabulary) = source(code.as_ref());
                    drug.text("person_id", Some(pid.clone()))
                        .text("drug_source_value", value)
                        .text("drug_source_vocabulary", vocabulary)
                        .text("drug_exposure_start_date", date_text(authored.as_ref()))
                        .text("drug_status_source_value", status.clone())
                        .integer("days_since_index", since(authored.as_ref()));
                }
                Clinical::Procedure { code, performed } => {
                    seen(performed.as_ref());
                    let (value, vocabulary) = source(code.as_ref());
                    procedure
                        .text("person_id", Some(pid.clone()))
                        .text("procedure_source_value", value)
                        .text("procedure_source_vocabulary", vocabulary)
                        .text("procedure_date", date_text(performed.as_ref()))
                        .integer("days_since_index", since(performed.as_ref()));
                }
                Clinical::Observation {
                    code,
                    category,
                    value,
                    components,
                    effective,
                } => {
                    seen(effective.as_ref());
                    let (source_value, vocabulary) = source(code.as_ref());
                    // Numeric results (and each numeric component, such as systolic and
                    // diastolic pressure) are measurements; the rest are observations.
                    let mut parts: Vec<(Option<String>, Option<String>, Option<&Value>)> =
                        Vec::new();
                    if value.is_some() || components.is_empty() {
                        parts.push((source_value, vocabulary, value.as_ref()));
                    }
                    for c in components {
                        parts.push((
                            Some(c.code.code.clone()),
                            Some(c.code.system.clone()),
                            c.value.as_ref(),
                        ));
                    }
                    for (sv, voc, v) in parts {
                        let (number, coded, unit) = value_parts(v);
                        if number.is_some() {
                            measurement
                                .text("person_id", Some(pid.clone()))
                                .text("measurement_source_value", sv)
                                .text("measurement_source_vocabulary", voc)
                                .text("measurement_date", date_text(effective.as_ref()))
                                .number("value_as_number", number)
                                .text("unit_source_value", unit)
                                .integer("days_since_index", since(effective.as_ref()));
                        } else {
                            observation
                                .text("person_id", Some(pid.clone()))
                                .text("observation_source_value", sv)
                                .text("observation_source_vocabulary", voc)
                                .text("observation_category", category.clone())
                                .text("observation_date", date_text(effective.as_ref()))
                                .text("value_source_value", coded)
                                .integer("days_since_index", since(effective.as_ref()));
                        }
                    }
                }
                Clinical::Phenotype {
                    code,
                    excluded,
                    onset,
                } => {
                    phenotype
                        .text("person_id", Some(pid.clone()))
                        .text("phenotype_source_value", Some(code.code.clone()))
                        .text("phenotype_source_vocabulary", Some(code.system.clone()))
                        .boolean("excluded", Some(*excluded))
                        .text("onset", onset_class(onset.as_ref()));
                }
                Clinical::Variant {
                    gene,
                    hgvs,
                    zygosity,
                    vcf,
                    interpretation_status,
                } => {
                    variant
                        .text("person_id", Some(pid.clone()))
                        .text("gene", gene.clone())
                        .text("hgvs", (!hgvs.is_empty()).then(|| hgvs.join(";")))
                        .text("zygosity", zygosity.clone())
                        .text("vcf", vcf.clone())
                        .text("interpretation_status", interpretation_status.clone());
                }
                Clinical::SurveyResponse {
                    questionnaire,
                    authored,
                    answers,
                    ..
                } => {
                    for a in answers {
                        for v in &a.values {
                            let (number, coded, _) = value_parts(Some(v));
                            if number.is_none() && coded.is_none() {
                                continue; // free text and dates never pass
                            }
                            survey
                                .text("person_id", Some(pid.clone()))
                                .text("questionnaire", questionnaire.clone())
                                .text("question_link_id", Some(a.link_id.clone()))
                                .number("value_as_number", number)
                                .text("value_source_value", coded)
                                .text("survey_date", date_text(authored.as_ref()))
                                .integer("days_since_index", since(authored.as_ref()));
                        }
                    }
                }
                Clinical::Encounter { start, end, .. } => {
                    seen(start.as_ref());
                    seen(end.as_ref());
                }
                Clinical::Other { .. } | Clinical::Reference { .. } => {}
            }
        }
        let id = &s.identity;
        person
            .text("person_id", Some(pid.clone()))
            .text("birth_date", date_text(id.birth_date.as_ref()))
            .text("gender_source_value", id.sex.clone())
            .text("race_source_value", id.race.clone())
            .text("ethnicity_source_value", id.ethnicity.clone())
            .text(
                "zip",
                id.address.as_ref().and_then(|a| a.postal_code.clone()),
            )
            .text("index_date", index.map(|d| d.to_string()));
        if let (Some(f), Some(l)) = (first, last) {
            period
                .text("person_id", Some(pid.clone()))
                .text("observation_period_start_date", Some(f.to_string()))
                .text("observation_period_end_date", Some(l.to_string()))
                .integer("days_since_index", index.map(|i| (f - i).num_days()))
                .integer("end_days_since_index", index.map(|i| (l - i).num_days()));
        }
        if id.deceased_date.is_some() || id.deceased == Some(true) {
            death
                .text("person_id", Some(pid.clone()))
                .text("death_date", date_text(id.deceased_date.as_ref()))
                .integer("days_since_index", since(id.deceased_date.as_ref()));
        }
    }

    let t = |n| (n, 't');
    let i = |n| (n, 'i');
    vec![
        person.finish(
            "person",
            &[
                t("person_id"),
                t("birth_date"),
                t("gender_source_value"),
                t("race_source_value"),
                t("ethnicity_source_value"),
                t("zip"),
                t("index_date"),
            ],
        ),
        period.finish(
            "observation_period",
            &[
                t("person_id"),
                t("observation_period_start_date"),
                t("observation_period_end_date"),
                i("days_since_index"),
                i("end_days_since_index"),
            ],
        ),
        condition.finish(
            "condition_occurrence",
            &[
                t("person_id"),
                t("condition_source_value"),
                t("condition_source_vocabulary"),
                t("condition_start_date"),
                t("condition_end_date"),
                t("condition_status_source_value"),
                i("days_since_index"),
            ],
        ),
        drug.finish(
            "drug_exposure",
            &[
                t("person_id"),
                t("drug_source_value"),
                t("drug_source_vocabulary"),
                t("drug_exposure_start_date"),
                t("drug_status_source_value"),
                i("days_since_index"),
            ],
        ),
        procedure.finish(
            "procedure_occurrence",
            &[
                t("person_id"),
                t("procedure_source_value"),
                t("procedure_source_vocabulary"),
                t("procedure_date"),
                i("days_since_index"),
            ],
        ),
        measurement.finish(
            "measurement",
            &[
                t("person_id"),
                t("measurement_source_value"),
                t("measurement_source_vocabulary"),
                t("measurement_date"),
                ("value_as_number", 'n'),
                t("unit_source_value"),
                i("days_since_index"),
            ],
        ),
        observation.finish(
            "observation",
            &[
                t("person_id"),
                t("observation_source_value"),
                t("observation_source_vocabulary"),
                t("observation_category"),
                t("observation_date"),
                t("value_source_value"),
                i("days_since_index"),
            ],
        ),
        death.finish(
            "death",
            &[t("person_id"), t("death_date"), i("days_since_index")],
        ),
        phenotype.finish(
            "phenotype",
            &[
                t("person_id"),
                t("phenotype_source_value"),
                t("phenotype_source_vocabulary"),
                ("excluded", 'b'),
                t("onset"),
            ],
        ),
        variant.finish(
            "genomic_variant",
            &[
                t("person_id"),
                t("gene"),
                t("hgvs"),
                t("zygosity"),
                t("vcf"),
                t("interpretation_status"),
            ],
        ),
        survey.finish(
            "survey_response",
            &[
                t("person_id"),
                t("questionnaire"),
                t("question_link_id"),
                ("value_as_number", 'n'),
                t("value_source_value"),
                t("survey_date"),
                i("days_since_index"),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::KNOWN_PURPOSES;
    use crate::{Catalog, Grant, IngestOptions, Keyring, NoProgress, Purpose, Scope};

    pub(super) async fn summaries() -> Vec<PatientSummary> {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let catalog = Catalog::open(&url, Keyring::new(&[9; 32], &[]))
            .await
            .expect("catalog");
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
        let inputs = [
            fixtures.join("fhir"),
            fixtures.join("phenopackets"),
            fixtures.join("surveys"),
        ];
        catalog
            .ingest(&inputs, &IngestOptions::default(), &NoProgress)
            .await
            .expect("ingest");
        let purpose = Purpose::parse(KNOWN_PURPOSES[0]).expect("purpose");
        for p in catalog.list_patients(100, 0).await.expect("patients") {
            catalog
                .grant(Grant {
                    patient_id: p.patient_id,
                    purpose: purpose.clone(),
                    scope: Scope::All,
                    valid_from: None,
                    valid_until: None,
                    actor: "test".into(),
                })
                .await
                .expect("grant");
        }
        catalog
            .consented_summaries(&purpose, chrono::Utc::now())
            .await
            .expect("summaries")
    }

    /// Names, identifiers, street lines, cities, full birth dates and internal ids of the
    /// summaries: none may reach a release.
    pub(super) fn identity_secrets(summaries: &[PatientSummary]) -> Vec<String> {
        let mut secrets = Vec::new();
        for s in summaries {
            let id = &s.identity;
            secrets.extend(id.family_name.clone());
            secrets.extend(id.given_names.iter().cloned());
            secrets.extend(id.identifiers.iter().map(|i| i.value.clone()));
            secrets.extend(id.birth_date.clone().filter(|d| d.len() == 10));
            secrets.push(s.patient_id.clone());
            if let Some(a) = &id.address {
                secrets.extend(a.lines.iter().cloned());
                secrets.extend(a.city.clone());
            }
        }
        secrets
    }

    fn texts(t: &Table) -> Vec<&str> {
        t.columns
            .iter()
            .flat_map(|(_, c)| match c {
                Column::Text(v) => v.iter().flatten().map(String::as_str).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn debug_shows_shape_not_values() {
        let t = Table {
            name: "person",
            columns: vec![("zip", Column::Text(vec![Some("02139".into())]))],
        };
        let shown = format!("{t:?}");
        assert!(shown.contains("Text(<1 values>)"), "{shown}");
        assert!(!shown.contains("02139"));
    }

    #[tokio::test]
    async fn fixtures_become_omop_tables_without_identifiers_or_free_text() {
        let summaries = summaries().await;
        assert!(
            summaries.len() >= 4,
            "fixtures: 2 Synthea patients, 2 phenopackets"
        );
        let keyring = Keyring::new(&[9; 32], &[]);
        let key = keyring.release_family_key("natural-history");
        let tables = omop_tables(&summaries, &|id| family_pseudonym(&key, id));
        let by_name = |n: &str| tables.iter().find(|t| t.name == n).expect("table");
        for t in &tables {
            let rows = t.rows();
            for (c, col) in &t.columns {
                assert_eq!(col.len(), rows, "{}.{c}", t.name);
            }
        }
        assert_eq!(by_name("person").rows(), summaries.len());
        // person_id is the family pseudonym: no internal id leaks, and it differs per family.
        let Some(Column::Text(ids)) = by_name("person").column("person_id") else {
            panic!("person_id");
        };
        let other = keyring.release_family_key("another-family");
        for (s, id) in summaries.iter().zip(ids) {
            let id = id.as_deref().expect("person_id");
            assert_eq!(id.len(), 32);
            assert_ne!(id, s.patient_id);
            assert_ne!(id, family_pseudonym(&other, &s.patient_id));
        }
        let count = |kind: crate::model::RecordKind| {
            summaries
                .iter()
                .flat_map(|s| &s.records)
                .filter(|r| r.body.clinical.kind() == kind)
                .count()
        };
        assert_eq!(
            by_name("condition_occurrence").rows(),
            count(crate::model::RecordKind::Condition)
        );
        assert_eq!(
            by_name("drug_exposure").rows(),
            count(crate::model::RecordKind::Medication)
        );
        assert_eq!(
            by_name("procedure_occurrence").rows(),
            count(crate::model::RecordKind::Procedure)
        );
        assert_eq!(
            by_name("phenotype").rows(),
            count(crate::model::RecordKind::Phenotype)
        );
        assert!(by_name("measurement").rows() > 0);
        assert!(by_name("survey_response").rows() > 0);

        // Conditions are measured from the first diagnosis: the earliest is day 0, none before.
        let Some(Column::Integer(days)) =
            by_name("condition_occurrence").column("days_since_index")
        else {
            panic!("days_since_index");
        };
        assert!(days.iter().flatten().all(|&d| d >= 0));
        assert!(days.contains(&Some(0)));

        // Nothing identifying and no free text in any cell.
        let mut secrets = identity_secrets(&summaries);
        // Full birth dates do enter these tables: they are the input of the policy's date
        // transform, applied before anything is written (tested with the build).
        let births: Vec<String> = summaries
            .iter()
            .filter_map(|s| s.identity.birth_date.clone())
            .collect();
        secrets.retain(|s| !births.contains(s));
        for s in &summaries {
            for r in &s.records {
                let mut values: Vec<&Value> = Vec::new();
                match &r.body.clinical {
                    Clinical::Observation {
                        value, components, ..
                    } => {
                        values.extend(value.iter());
                        values.extend(components.iter().filter_map(|c| c.value.as_ref()));
                    }
                    Clinical::SurveyResponse { answers, .. } => {
                        values.extend(answers.iter().flat_map(|a| &a.values));
                    }
                    _ => {}
                }
                for v in values {
                    if let Value::Text { text } = v {
                        secrets.push(text.clone());
                    }
                }
            }
        }
        secrets.retain(|s| s.len() >= 4);
        assert!(
            !secrets.is_empty(),
            "the fixtures hold names and identifiers"
        );
        for t in &tables {
            for cell in texts(t) {
                for secret in &secrets {
                    assert!(
                        !cell.contains(secret.as_str()),
                        "an identifying or free-text value reached {}",
                        t.name
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod build_tests {
    use super::build::{BuildSpec, build_files};
    use super::*;
    use crate::Keyring;
    use polars::prelude::{DataType, ParquetReader, SerReader};

    fn read(path: &std::path::Path) -> polars::prelude::DataFrame {
        ParquetReader::new(std::fs::File::open(path).expect("open"))
            .finish()
            .expect("parquet")
    }

    /// Expert Determination policy (k lowered to 2 for the five fixture patients): files and
    /// manifest agree, intervals between a patient's dates survive the shift, nothing
    /// identifying reaches a file, and a version cannot be written twice.
    #[tokio::test]
    async fn a_release_version_is_written_atomically_and_keeps_intervals() {
        let summaries = super::tests::summaries().await;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join("policies/expert-determination.toml"))
            .expect("policy")
            .replace("k = 5", "k = 2")
            .replace("suppression_limit = 0.05", "suppression_limit = 0.5");
        let mut policy = tessera_deid::policy::Policy::parse(&text).expect("valid policy");
        policy.base_dir = root.join("policies");
        build::check_person_policy(&policy).expect("person columns covered");
        let keyring = Keyring::new(&[9; 32], &[]);
        let family_key = keyring.release_family_key("nh");
        let originals = omop_tables(&summaries, &|id| family_pseudonym(&family_key, id));
        let dir = tempfile::tempdir().expect("temp");
        let spec = BuildSpec {
            family: "nh",
            version: 1,
            purpose: "research.natural_history",
            policy: &policy,
            policy_text: &text,
            consent_at: chrono::Utc::now(),
            family_key,
            family_dir: dir.path(),
            patients_considered: summaries.len(),
        };
        let manifest = build_files(&summaries, &spec).expect("build");
        let v1 = dir.path().join("v1");
        assert!(v1.join("manifest.json").is_file());
        assert!(!dir.path().join("v1.partial").exists());
        assert_eq!(manifest.patients_included, summaries.len());
        assert_eq!(manifest.files.len(), originals.len());
        for f in &manifest.files {
            let bytes = std::fs::read(v1.join(&f.file)).expect("file");
            let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
            assert_eq!(sha, f.sha256, "{}", f.file);
            assert_eq!(read(&v1.join(&f.file)).height(), f.rows);
            assert!(f.columns.iter().all(|c| !c.description.is_empty()));
        }
        assert!(
            manifest.person_deid["k_achieved"]
                .as_u64()
                .is_some_and(|k| k >= 2)
        );

        // Intervals: per person, days between consecutive event dates are unchanged, in every
        // event table.
        let mut checked = 0;
        let mut shifted = 0;
        // Dates outside the event model's items stay shifted. (Diagnoses, drugs and
        // procedures are items whose time is their year or band of years: tested in
        // `event_tables_release_items_as_the_model_decides`.)
        for (table, date) in [
            ("observation", "observation_date"),
            ("survey_response", "survey_date"),
        ] {
            let original = originals.iter().find(|t| t.name == table).expect("table");
            let (Some(Column::Text(ids)), Some(Column::Text(starts))) =
                (original.column("person_id"), original.column(date))
            else {
                panic!("columns of {table}");
            };
            let released = read(&v1.join(format!("{table}.parquet")));
            let rel = |c: &str| -> Vec<Option<String>> {
                released
                    .column(c)
                    .expect("column")
                    .cast(&DataType::String)
                    .expect("text")
                    .str()
                    .expect("text")
                    .iter()
                    .map(|v| v.map(str::to_string))
                    .collect()
            };
            let (rel_ids, rel_starts) = (rel("person_id"), rel(date));
            assert_eq!(&rel_ids, ids, "{table}: row order and person ids are kept");
            let day = |v: &Option<String>| {
                v.as_deref()
                    .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            };
            for i in 1..ids.len() {
                if ids[i] != ids[i - 1] {
                    continue;
                }
                if let (Some(a), Some(b), Some(x), Some(y)) = (
                    day(&starts[i - 1]),
                    day(&starts[i]),
                    day(&rel_starts[i - 1]),
                    day(&rel_starts[i]),
                ) {
                    assert_eq!(b - a, y - x, "{table}: interval of row {i}");
                    checked += 1;
                    shifted += usize::from(a != x);
                }
            }
        }
        assert!(checked >= 4, "dated events to compare: {checked} pairs");
        assert!(shifted > 0, "dates were shifted");

        // Nothing identifying in any released cell or in the manifest.
        let mut secrets = super::tests::identity_secrets(&summaries);
        secrets.retain(|s| s.len() >= 4);
        let manifest_text = std::fs::read_to_string(v1.join("manifest.json")).expect("manifest");
        for f in &manifest.files {
            let df = read(&v1.join(&f.file));
            for c in df.columns() {
                let text = c.cast(&DataType::String).expect("text");
                for v in text.str().expect("text").iter().flatten() {
                    for s in &secrets {
                        assert!(!v.contains(s.as_str()), "an identifier reached {}", f.file);
                    }
                }
            }
        }
        for s in &secrets {
            assert!(
                !manifest_text.contains(s.as_str()),
                "an identifier reached the manifest"
            );
        }

        // Immutable: the same version cannot be written again.
        let again = build_files(&summaries, &spec).expect_err("immutable");
        assert!(again.to_string().contains("immutable"), "{again}");
    }
}

#[cfg(test)]
mod policy_tests {
    /// The shipped release policies parse and give every person column a role.
    #[test]
    fn shipped_policies_cover_the_person_table() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        for name in ["safe-harbor.toml", "expert-determination.toml"] {
            let policy =
                tessera_deid::policy::Policy::from_file(&root.join(name)).expect("valid policy");
            super::build::check_person_policy(&policy).expect(name);
            assert_eq!(policy.privacy.k, 5, "{name}");
        }
    }
}

#[cfg(test)]
mod safe_harbor_tests {
    use super::build::{BuildSpec, build_files};
    use crate::Keyring;
    use chrono::TimeZone;
    use polars::prelude::{DataType, ParquetReader, SerReader};

    /// Under Safe Harbor, birth years of patients 90 or older at build time are pooled: built
    /// "in 2100", every fixture patient is over 89, so every released birth year is the
    /// threshold 2010 (or a generalization of it), and the manifest counts them.
    #[tokio::test]
    async fn birth_years_over_89_are_pooled() {
        let summaries = super::tests::summaries().await;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join("policies/safe-harbor.toml"))
            .expect("policy")
            .replace("k = 5", "k = 2")
            .replace("suppression_limit = 0.05", "suppression_limit = 0.5");
        let mut policy = tessera_deid::policy::Policy::parse(&text).expect("policy");
        policy.base_dir = root.join("policies");
        let family_key = Keyring::new(&[9; 32], &[]).release_family_key("sh");
        let with_birth = summaries
            .iter()
            .filter(|s| {
                s.identity
                    .birth_date
                    .as_deref()
                    .is_some_and(|d| d.len() >= 4)
            })
            .count();
        assert!(with_birth >= 2);
        let dir = tempfile::tempdir().expect("temp");
        let spec = BuildSpec {
            family: "sh",
            version: 1,
            purpose: "research.natural_history",
            policy: &policy,
            policy_text: &text,
            consent_at: chrono::Utc.with_ymd_and_hms(2100, 1, 1, 0, 0, 0).unwrap(),
            family_key,
            family_dir: dir.path(),
            patients_considered: summaries.len(),
        };
        let manifest = build_files(&summaries, &spec).expect("build");
        assert_eq!(manifest.birth_years_pooled, with_birth);
        assert!(manifest.safe_harbor[2].handling.contains("2010 or earlier"));
        let person = ParquetReader::new(
            std::fs::File::open(dir.path().join("v1/person.parquet")).expect("open"),
        )
        .finish()
        .expect("parquet");
        let births = person
            .column("birth_date")
            .expect("birth_date")
            .cast(&DataType::String)
            .expect("text");
        for v in births.str().expect("text").iter().flatten() {
            assert!(
                v.is_empty() || v == "*" || v.contains("2010") || v.contains("2000"),
                "a birth year escaped the pooling: {v}"
            );
        }
    }
}

#[cfg(test)]
mod event_model_tests {
    use super::build::{BuildSpec, build_files};
    use crate::Keyring;
    use polars::prelude::{DataType, ParquetReader, SerReader};
    use std::collections::{BTreeMap, BTreeSet};

    fn texts(df: &polars::prelude::DataFrame, c: &str) -> Vec<Option<String>> {
        df.column(c)
            .expect("column")
            .cast(&DataType::String)
            .expect("text")
            .str()
            .expect("text")
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    }

    /// Under the natural-history policy (k lowered to 2 for the fixture patients): the released
    /// item tables satisfy (k, k^m) by brute force over every person's combinations (code here,
    /// apart from the engine), item dates are years or bands, no condition end date and no
    /// phenotype onset is released, and every interval is a multiple of the 365-day band.
    #[tokio::test]
    async fn event_tables_release_items_as_the_model_decides() {
        let summaries = super::tests::summaries().await;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        // The shipped natural-history policy (event model on), with k lowered for a handful
        // of patients.
        let text = std::fs::read_to_string(root.join("policies/natural-history.toml"))
            .expect("policy")
            .replace("k = 5", "k = 2")
            .replace("suppression_limit = 0.05", "suppression_limit = 0.5");
        let mut policy = tessera_deid::policy::Policy::parse(&text).expect("policy");
        policy.base_dir = root.join("policies");
        let family_key = Keyring::new(&[9; 32], &[]).release_family_key("ev");
        let dir = tempfile::tempdir().expect("temp");
        let spec = BuildSpec {
            family: "ev",
            version: 1,
            purpose: "research.natural_history",
            policy: &policy,
            policy_text: &text,
            consent_at: chrono::Utc::now(),
            family_key,
            family_dir: dir.path(),
            patients_considered: summaries.len(),
        };
        let manifest = build_files(&summaries, &spec).expect("build");
        let events = &manifest.events;
        assert_eq!(events["k"], 2);
        assert_eq!(events["m"], 3);
        let report = &events["report"];
        assert_eq!(
            report["violations_after"],
            serde_json::json!([0, 0, 0]),
            "{report}"
        );
        assert!(
            report["violations_before"][0]
                .as_u64()
                .is_some_and(|v| v > 0),
            "the fixtures hold rare items: {report}"
        );
        let v1 = dir.path().join("v1");
        let read = |t: &str| {
            ParquetReader::new(std::fs::File::open(v1.join(format!("{t}.parquet"))).expect("open"))
                .finish()
                .expect("parquet")
        };
        // Groups: every person column but person_id, as released.
        let person = read("person");
        let ids = texts(&person, "person_id");
        let others: Vec<Vec<Option<String>>> = person
            .get_column_names()
            .iter()
            .filter(|c| c.as_str() != "person_id")
            .map(|c| texts(&person, c))
            .collect();
        let mut group: BTreeMap<String, String> = BTreeMap::new();
        for (i, id) in ids.iter().enumerate() {
            let key: Vec<String> = others.iter().map(|c| format!("{:?}", c[i])).collect();
            group.insert(id.clone().expect("id"), key.join("|"));
        }
        let mut items: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let declared = events["items"].as_object().expect("items");
        let mut released_items = 0;
        for (table, cols) in declared {
            let df = read(table);
            let persons = texts(&df, "person_id");
            let cols: Vec<Vec<Option<String>>> = cols
                .as_array()
                .expect("columns")
                .iter()
                .map(|c| texts(&df, c.as_str().expect("name")))
                .collect();
            for (r, p) in persons.iter().enumerate() {
                let item: Vec<String> = cols.iter().map(|c| format!("{:?}", c[r])).collect();
                items
                    .entry(p.clone().expect("person"))
                    .or_default()
                    .insert(format!("{table}:{}", item.join("|")));
                released_items += 1;
            }
        }
        assert!(released_items > 0, "some items survive");
        // Brute force: every subset of up to 3 items of every person.
        for (p, mine) in &items {
            let mine: Vec<&String> = mine.iter().collect();
            let mut subsets: Vec<Vec<&String>> = Vec::new();
            for a in 0..mine.len() {
                subsets.push(vec![mine[a]]);
                for b in a + 1..mine.len() {
                    subsets.push(vec![mine[a], mine[b]]);
                    for c in b + 1..mine.len() {
                        subsets.push(vec![mine[a], mine[b], mine[c]]);
                    }
                }
            }
            for s in subsets {
                let support = items
                    .iter()
                    .filter(|(q, theirs)| {
                        group[*q] == group[p] && s.iter().all(|i| theirs.contains(*i))
                    })
                    .count();
                assert!(
                    support >= 2,
                    "an itemset of size {} is held by {support}",
                    s.len()
                );
            }
        }
        // Time: item dates are a year or a band; no end dates, no onsets; intervals banded.
        let cond = read("condition_occurrence");
        for d in texts(&cond, "condition_start_date").into_iter().flatten() {
            let ok = d.len() == 4 || (d.len() == 9 && d.as_bytes()[4] == b'-');
            assert!(ok, "an item date finer than a year: {d}");
        }
        assert!(
            texts(&cond, "condition_end_date")
                .iter()
                .all(Option::is_none)
        );
        assert!(
            texts(&read("phenotype"), "onset")
                .iter()
                .all(Option::is_none)
        );
        for table in [
            "condition_occurrence",
            "measurement",
            "observation",
            "death",
            "observation_period",
            "survey_response",
        ] {
            let df = read(table);
            for c in ["days_since_index", "end_days_since_index"] {
                if df.column(c).is_err() {
                    continue;
                }
                for v in df
                    .column(c)
                    .expect("c")
                    .i64()
                    .expect("int")
                    .iter()
                    .flatten()
                {
                    assert_eq!(
                        v.rem_euclid(365),
                        0,
                        "{table}.{c} = {v} is finer than the band"
                    );
                }
            }
        }
    }
}
