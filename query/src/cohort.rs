//! Saved cohort definitions: a small JSON of inclusion and exclusion criteria over codes, ages
//! and dates that the service evaluates in every session of the license it was saved under, as
//! the table `cohort_<name>` of the release family's schema.
//!
//! A definition is compiled to SQL over the session's licensed tables (the views with only the
//! licensed columns and only consenting persons' rows), so a cohort shows nothing its license
//! does not: under an aggregate-only license it can be counted and joined inside an aggregate,
//! never listed. Every name in the SQL comes from this module, never from the definition; codes
//! and dates are quoted literals, numbers are numbers. The table is evaluated anew by each
//! query (a revoked consent leaves it at once), and the decision is asked about the release
//! tables it reads.
//!
//! The table's columns, one row per person:
//!
//! | column | meaning |
//! |---|---|
//! | `person_id` | the release family's pseudonym |
//! | `index_day` | the index event's `days_since_index` (days from the person's first diagnosis) |
//! | `index_date` | the index event's date as released (the year under Safe Harbor) |
//! | `age_at_index` | index year minus birth year (the middle year of a generalized birth-year interval) |
//! | `follow_up_days` | days from the index event to the person's last recorded event |
//!
//! Align an event on the cohort's index with `e.days_since_index - c.index_day`.

use serde::{Deserialize, Serialize};

/// The longest cohort name (the table is `cohort_<name>`).
pub const MAX_NAME: usize = 48;
/// At most this many codes per criterion.
pub const MAX_CODES: usize = 500;
/// At most this many inclusion plus exclusion criteria.
pub const MAX_CRITERIA: usize = 32;

/// A cohort definition as analysts write it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CohortDefinition {
    /// Lower-case letters, digits and `_`, starting with a letter; the table is
    /// `cohort_<name>`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The release family the cohort is drawn from; may be left out when the license covers
    /// one family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// The index event: each person's first event matching it.
    pub index: EventCriterion,
    /// Bounds on the index event's date (`YYYY-MM-DD` or `YYYY`, inclusive), compared with the
    /// date as released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_date: Option<DateRange>,
    /// Bounds on the age at the index event, in whole years, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_at_index: Option<NumberRange>,
    /// Administrative sex as recorded (`female`, `male`, ...): any of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sex: Vec<String>,
    /// At least this many days recorded before the index event (from the person's first
    /// recorded event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_observation_days: Option<u32>,
    /// At least this many days recorded after the index event (to the last recorded event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_up_days: Option<u32>,
    /// Every one of these must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inclusion: Vec<EventCriterion>,
    /// None of these may hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclusion: Vec<EventCriterion>,
}

/// Events of one domain with one of the codes, optionally within days of the index event and
/// with a value in a range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventCriterion {
    pub domain: Domain,
    /// Source codes (`*_source_value`): any of them.
    pub codes: Vec<String>,
    /// The code system (`*_source_vocabulary`), when the codes need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocabulary: Option<String>,
    /// Days relative to the index event (negative: before), inclusive; either end open. Not
    /// allowed on the index criterion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// Bounds on `value_as_number` (measurements only), inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<NumberRange>,
    /// At least this many matching events (default 1). Not allowed on the index criterion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_count: Option<u32>,
}

/// The event tables a criterion can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    Condition,
    Drug,
    Procedure,
    Measurement,
    Observation,
}

impl Domain {
    /// Table, code column, vocabulary column, date column.
    fn columns(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Domain::Condition => (
                "condition_occurrence",
                "condition_source_value",
                "condition_source_vocabulary",
                "condition_start_date",
            ),
            Domain::Drug => (
                "drug_exposure",
                "drug_source_value",
                "drug_source_vocabulary",
                "drug_exposure_start_date",
            ),
            Domain::Procedure => (
                "procedure_occurrence",
                "procedure_source_value",
                "procedure_source_vocabulary",
                "procedure_date",
            ),
            Domain::Measurement => (
                "measurement",
                "measurement_source_value",
                "measurement_source_vocabulary",
                "measurement_date",
            ),
            Domain::Observation => (
                "observation",
                "observation_source_value",
                "observation_source_vocabulary",
                "observation_date",
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DateRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// What is wrong with a definition, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cohort definition: {field}: {problem}")]
pub struct DefinitionError {
    pub field: String,
    pub problem: String,
}

fn bad(field: impl Into<String>, problem: impl Into<String>) -> DefinitionError {
    DefinitionError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Checks a cohort name: what the table name is made of.
pub fn check_name(name: &str) -> Result<(), DefinitionError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(bad(
            "name",
            format!(
                "use 1 to {MAX_NAME} lower-case letters, digits and `_`, starting with a letter"
            ),
        ))
    }
}

/// A code or vocabulary as a SQL literal: printable text without control characters.
fn literal(field: &str, text: &str) -> Result<String, DefinitionError> {
    if text.is_empty() || text.len() > 256 || text.chars().any(char::is_control) {
        return Err(bad(
            field,
            "a code is 1 to 256 printable characters without control characters",
        ));
    }
    Ok(format!("'{}'", text.replace('\'', "''")))
}

/// A date bound: `YYYY`, `YYYY-MM` or `YYYY-MM-DD`; compared as text with the released dates
/// (ISO 8601 text, cut to the year or month by the policy).
fn date_literal(field: &str, text: &str) -> Result<String, DefinitionError> {
    let parts: Vec<&str> = text.split('-').collect();
    let widths = [4, 2, 2];
    let ok = (1..=3).contains(&parts.len())
        && parts
            .iter()
            .zip(widths)
            .all(|(p, w)| p.len() == w && p.chars().all(|c| c.is_ascii_digit()));
    if !ok {
        return Err(bad(field, "write a date as YYYY, YYYY-MM or YYYY-MM-DD"));
    }
    Ok(format!("'{text}'"))
}

fn number(field: &str, x: f64) -> Result<String, DefinitionError> {
    if !x.is_finite() {
        return Err(bad(field, "a bound is a finite number"));
    }
    Ok(format!("{x:?}"))
}

impl CohortDefinition {
    /// Reads a definition, saying which field is wrong.
    pub fn parse(json: &str) -> Result<CohortDefinition, DefinitionError> {
        let def: CohortDefinition = serde_json::from_str(json).map_err(|e| {
            // serde's message names the field and position, never a value beyond the
            // unknown field's name.
            bad("(document)", format!("{e}"))
        })?;
        def.validate()?;
        Ok(def)
    }

    /// The table the cohort is exposed as.
    pub fn table(&self) -> String {
        format!("cohort_{}", self.name)
    }

    /// Checks everything compiling needs, so that [`CohortDefinition::to_sql`] cannot fail on
    /// the definition's own content.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        check_name(&self.name)?;
        if let Some(d) = &self.description
            && d.len() > 2_000
        {
            return Err(bad("description", "at most 2,000 characters"));
        }
        check_criterion("index", &self.index)?;
        if self.index.window.is_some() || self.index.min_count.is_some() {
            return Err(bad(
                "index",
                "the index event takes no `window` or `min_count`: it is each person's first matching event",
            ));
        }
        if self.inclusion.len() + self.exclusion.len() > MAX_CRITERIA {
            return Err(bad(
                "inclusion",
                format!("at most {MAX_CRITERIA} inclusion and exclusion criteria"),
            ));
        }
        for (i, c) in self.inclusion.iter().enumerate() {
            check_criterion(&format!("inclusion[{i}]"), c)?;
        }
        for (i, c) in self.exclusion.iter().enumerate() {
            check_criterion(&format!("exclusion[{i}]"), c)?;
        }
        if let Some(r) = &self.index_date {
            for (end, v) in [("from", &r.from), ("to", &r.to)] {
                if let Some(v) = v {
                    date_literal(&format!("index_date.{end}"), v)?;
                }
            }
        }
        if let Some(r) = &self.age_at_index {
            check_range("age_at_index", r)?;
        }
        for (i, s) in self.sex.iter().enumerate() {
            literal(&format!("sex[{i}]"), s)?;
        }
        Ok(())
    }

    /// The SQL that evaluates the cohort in `schema` (a release family's schema of the
    /// `tessera` catalog). Call [`CohortDefinition::validate`] first (`parse` does).
    pub fn to_sql(&self, schema: &str) -> Result<String, DefinitionError> {
        self.validate()?;
        let t = |table: &str| format!("\"{}\".\"{schema}\".\"{table}\"", crate::session::CATALOG);
        let (table, _, _, date) = self.index.domain.columns();
        let index_match = matches(&self.index, "e", "index")?;
        // The first matching event of each person and its date (the earliest, when several
        // events share the first day); the person's age, sex and recorded span.
        let mut sql = format!(
            "WITH first_event AS (SELECT e.person_id, min(e.days_since_index) AS index_day FROM {tab} e \
             WHERE {index_match} AND e.days_since_index IS NOT NULL GROUP BY e.person_id), \
             indexed AS (SELECT f.person_id, f.index_day, min(e.{date}) AS index_date FROM first_event f \
             JOIN {tab} e ON e.person_id = f.person_id AND e.days_since_index = f.index_day \
             WHERE {index_match} GROUP BY f.person_id, f.index_day), \
             base AS (SELECT i.person_id, i.index_day, i.index_date, \
             TRY_CAST(substr(i.index_date, 1, 4) AS BIGINT) - {birth_year} AS age_at_index, \
             p.gender_source_value AS sex, op.days_since_index AS first_day, op.end_days_since_index AS last_day \
             FROM indexed i JOIN {person} p ON p.person_id = i.person_id \
             LEFT JOIN {period} op ON op.person_id = i.person_id) \
             SELECT b.person_id, b.index_day, b.index_date, b.age_at_index, b.last_day - b.index_day AS follow_up_days \
             FROM base b WHERE TRUE",
            tab = t(table),
            person = t("person"),
            period = t("observation_period"),
            birth_year = birth_year_sql("p.birth_date"),
        );
        if let Some(r) = &self.index_date {
            if let Some(from) = &r.from {
                sql.push_str(&format!(
                    " AND b.index_date >= {}",
                    date_literal("index_date.from", from)?
                ));
            }
            if let Some(to) = &r.to {
                sql.push_str(&format!(
                    " AND substr(b.index_date, 1, {}) <= {}",
                    to.len(),
                    date_literal("index_date.to", to)?
                ));
            }
        }
        if let Some(r) = &self.age_at_index {
            if let Some(min) = r.min {
                sql.push_str(&format!(
                    " AND b.age_at_index >= {}",
                    number("age_at_index.min", min)?
                ));
            }
            if let Some(max) = r.max {
                sql.push_str(&format!(
                    " AND b.age_at_index <= {}",
                    number("age_at_index.max", max)?
                ));
            }
        }
        if !self.sex.is_empty() {
            let values = self
                .sex
                .iter()
                .enumerate()
                .map(|(i, s)| literal(&format!("sex[{i}]"), s))
                .collect::<Result<Vec<_>, _>>()?;
            sql.push_str(&format!(" AND b.sex IN ({})", values.join(", ")));
        }
        if let Some(days) = self.prior_observation_days {
            sql.push_str(&format!(" AND b.index_day - b.first_day >= {days}"));
        }
        if let Some(days) = self.follow_up_days {
            sql.push_str(&format!(" AND b.last_day - b.index_day >= {days}"));
        }
        for (kind, list) in [
            ("inclusion", &self.inclusion),
            ("exclusion", &self.exclusion),
        ] {
            for (i, c) in list.iter().enumerate() {
                let field = format!("{kind}[{i}]");
                let (table, _, _, _) = c.domain.columns();
                let mut condition =
                    format!("x.person_id = b.person_id AND {}", matches(c, "x", &field)?);
                if let Some(w) = &c.window {
                    if let Some(from) = w.from {
                        condition
                            .push_str(&format!(" AND x.days_since_index - b.index_day >= {from}"));
                    }
                    if let Some(to) = w.to {
                        condition
                            .push_str(&format!(" AND x.days_since_index - b.index_day <= {to}"));
                    }
                }
                let test = match (kind, c.min_count.unwrap_or(1)) {
                    ("inclusion", 1) => {
                        format!("EXISTS (SELECT 1 FROM {} x WHERE {condition})", t(table))
                    }
                    ("inclusion", n) => format!(
                        "(SELECT count(*) FROM {} x WHERE {condition}) >= {n}",
                        t(table)
                    ),
                    (_, 1) => format!(
                        "NOT EXISTS (SELECT 1 FROM {} x WHERE {condition})",
                        t(table)
                    ),
                    (_, n) => format!(
                        "(SELECT count(*) FROM {} x WHERE {condition}) < {n}",
                        t(table)
                    ),
                };
                sql.push_str(" AND ");
                sql.push_str(&test);
            }
        }
        Ok(sql)
    }
}

/// The birth year a released birth date stands for: the year itself, or the middle year of a
/// generalized interval (`[1950, 1955)` is 1950 to 1954: 1952); NULL when suppressed (`*`).
pub fn birth_year_sql(column: &str) -> String {
    let low = format!("TRY_CAST(regexp_match({column}, '[0-9]{{4}}')[1] AS BIGINT)");
    let high = format!("TRY_CAST(regexp_match({column}, ',\\s*([0-9]{{4}})\\)')[1] AS BIGINT) - 1");
    format!("(({low} + coalesce({high}, {low})) / 2)")
}

fn check_range(field: &str, r: &NumberRange) -> Result<(), DefinitionError> {
    for (end, v) in [("min", r.min), ("max", r.max)] {
        if let Some(v) = v {
            number(&format!("{field}.{end}"), v)?;
        }
    }
    if let (Some(a), Some(b)) = (r.min, r.max)
        && a > b
    {
        return Err(bad(field, "min is above max"));
    }
    Ok(())
}

fn check_criterion(field: &str, c: &EventCriterion) -> Result<(), DefinitionError> {
    if c.codes.is_empty() || c.codes.len() > MAX_CODES {
        return Err(bad(
            format!("{field}.codes"),
            format!("give 1 to {MAX_CODES} codes"),
        ));
    }
    for (i, code) in c.codes.iter().enumerate() {
        literal(&format!("{field}.codes[{i}]"), code)?;
    }
    if let Some(v) = &c.vocabulary {
        literal(&format!("{field}.vocabulary"), v)?;
    }
    if let Some(r) = &c.value {
        if c.domain != Domain::Measurement {
            return Err(bad(
                format!("{field}.value"),
                "only measurements have values",
            ));
        }
        check_range(&format!("{field}.value"), r)?;
    }
    if let Some(w) = &c.window
        && let (Some(a), Some(b)) = (w.from, w.to)
        && a > b
    {
        return Err(bad(format!("{field}.window"), "from is after to"));
    }
    if c.min_count == Some(0) {
        return Err(bad(
            format!("{field}.min_count"),
            "at least 1 (leave it out for 1)",
        ));
    }
    Ok(())
}

/// The condition an event row `alias` meets the criterion's codes, vocabulary and value by.
fn matches(c: &EventCriterion, alias: &str, field: &str) -> Result<String, DefinitionError> {
    let (_, code, vocabulary, _) = c.domain.columns();
    let codes = c
        .codes
        .iter()
        .enumerate()
        .map(|(i, x)| literal(&format!("{field}.codes[{i}]"), x))
        .collect::<Result<Vec<_>, _>>()?
        .join(", ");
    let mut out = format!("{alias}.{code} IN ({codes})");
    if let Some(v) = &c.vocabulary {
        out.push_str(&format!(
            " AND {alias}.{vocabulary} = {}",
            literal(&format!("{field}.vocabulary"), v)?
        ));
    }
    if let Some(r) = &c.value {
        if let Some(min) = r.min {
            out.push_str(&format!(
                " AND {alias}.value_as_number >= {}",
                number(field, min)?
            ));
        }
        if let Some(max) = r.max {
            out.push_str(&format!(
                " AND {alias}.value_as_number <= {}",
                number(field, max)?
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epilepsy() -> CohortDefinition {
        CohortDefinition::parse(
            r#"{"name": "epilepsy_adults", "index": {"domain": "condition", "codes": ["84757009"]},
                "age_at_index": {"min": 18}, "sex": ["female", "male"], "prior_observation_days": 365,
                "inclusion": [{"domain": "measurement", "codes": ["39156-5"], "window": {"from": -365, "to": 0}, "value": {"min": 18.5}}],
                "exclusion": [{"domain": "condition", "codes": ["O'Brien"], "window": {"to": -1}, "min_count": 2}]}"#,
        )
        .expect("a valid definition")
    }

    #[test]
    fn compiles_every_criterion_with_quoted_codes() {
        let sql = epilepsy().to_sql("demo_natural_history").expect("sql");
        assert!(sql.contains("\"tessera\".\"demo_natural_history\".\"condition_occurrence\""));
        assert!(sql.contains("e.condition_source_value IN ('84757009')"));
        assert!(sql.contains("b.age_at_index >= 18.0"));
        assert!(sql.contains("b.sex IN ('female', 'male')"));
        assert!(sql.contains("b.index_day - b.first_day >= 365"));
        assert!(sql.contains(
            "EXISTS (SELECT 1 FROM \"tessera\".\"demo_natural_history\".\"measurement\" x"
        ));
        assert!(sql.contains("x.value_as_number >= 18.5"));
        assert!(sql.contains("x.days_since_index - b.index_day >= -365"));
        // A quote in a code is doubled, and min_count 2 on an exclusion is "fewer than 2".
        assert!(sql.contains("IN ('O''Brien')"));
        assert!(sql.contains(") < 2"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"name": "Bad", "index": {"domain": "condition", "codes": ["1"]}}"#,
                "name",
            ),
            (
                r#"{"name": "a", "index": {"domain": "condition", "codes": []}}"#,
                "index.codes",
            ),
            (
                r#"{"name": "a", "index": {"domain": "condition", "codes": ["1"], "window": {"from": 0}}}"#,
                "index",
            ),
            (
                r#"{"name": "a", "index": {"domain": "condition", "codes": ["1"]}, "inclusion": [{"domain": "drug", "codes": ["1"], "value": {"min": 1}}]}"#,
                "inclusion[0].value",
            ),
            (
                r#"{"name": "a", "index": {"domain": "condition", "codes": ["1"]}, "exclusion": [{"domain": "drug", "codes": ["1"], "window": {"from": 5, "to": 1}}]}"#,
                "exclusion[0].window",
            ),
            (
                r#"{"name": "a", "index": {"domain": "condition", "codes": ["1"]}, "index_date": {"from": "2020/01/01"}}"#,
                "index_date.from",
            ),
            (
                r#"{"name": "a", "index": {"domain": "condition", "codes": ["1"]}, "age_at_index": {"min": 60, "max": 20}}"#,
                "age_at_index",
            ),
            (
                r#"{"name": "a", "index": {"domain": "condition", "codes": ["1\n"]}}"#,
                "index.codes[0]",
            ),
            (
                r#"{"name": "a", "index": {"domain": "genes", "codes": ["1"]}}"#,
                "(document)",
            ),
            (
                r#"{"name": "a", "index": {"domain": "condition", "codes": ["1"]}, "sql": "DROP"}"#,
                "(document)",
            ),
        ];
        for (json, field) in cases {
            let e = CohortDefinition::parse(json).expect_err(json);
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }

    #[test]
    fn round_trips_through_json() {
        let def = epilepsy();
        let text = serde_json::to_string(&def).expect("json");
        assert_eq!(CohortDefinition::parse(&text).expect("parse"), def);
        assert_eq!(def.table(), "cohort_epilepsy_adults");
    }
}
