//! The consent registry: per patient and purpose, with scope, validity window and full history.
//!
//! Consent is an append-only list of events. The state at a moment is the latest event recorded
//! at or before it: a grant is in force inside its validity window; a revocation ends it at once.
//! Nothing is ever updated or deleted, so "what did this patient allow on 1 March?" has an answer.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::error::{CatalogError, Result};
use crate::model::SensitiveCategory;
use crate::store::ConsentRow;

/// The purposes Tessera knows. Others may be used if they follow the same `area.name` form.
pub const KNOWN_PURPOSES: [&str; 4] = [
    "research.natural_history",
    "research.synthetic_control",
    "research.drug_development",
    "commercial.licensing",
];

/// What a purpose means, in plain language, for the patients' consent centre: a title and a
/// sentence. A purpose Tessera does not know is described by its name.
pub fn describe_purpose(purpose: &str) -> (String, String) {
    let (title, text) = match purpose {
        "research.natural_history" => (
            "Natural history research",
            "Researchers study how a disease develops over time in people like you, to design better studies and care.",
        ),
        "research.synthetic_control" => (
            "External control arms for trials",
            "Your de-identified history can stand in for a placebo group, so fewer people in a trial need to go without the treatment being tested.",
        ),
        "research.drug_development" => (
            "Drug development research",
            "Companies developing treatments use de-identified data to choose targets, plan trials and check safety.",
        ),
        "commercial.licensing" => (
            "Licensing to companies",
            "Tessera licenses de-identified data to companies under a signed data-use agreement, and shares the revenue with the patients whose data is in it.",
        ),
        other => {
            return (
                other.to_string(),
                format!("Research for the purpose `{other}`."),
            );
        }
    };
    (title.to_string(), text.to_string())
}

/// A research or commercial purpose, e.g. `research.natural_history`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Purpose(String);

impl Purpose {
    /// Accepts the known purposes and any further `area.name` made of lowercase letters,
    /// digits and underscores.
    pub fn parse(s: &str) -> Result<Purpose> {
        let parts: Vec<&str> = s.split('.').collect();
        let well_formed = parts.len() >= 2
            && s.len() <= 100
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    && p.starts_with(|c: char| c.is_ascii_lowercase())
            });
        if !well_formed {
            return Err(CatalogError::invalid(format!(
                "`{}` is not a purpose: use one of {} or another `area.name` in lowercase",
                s.escape_debug(),
                KNOWN_PURPOSES.join(", ")
            )));
        }
        Ok(Purpose(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a grant covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "scope", content = "excluded", rename_all = "snake_case")]
pub enum Scope {
    /// All of the patient's data.
    All,
    /// All data except records in these sensitive categories.
    Excluding(BTreeSet<SensitiveCategory>),
}

impl Scope {
    /// All data except every sensitive category.
    pub fn excluding_all_sensitive() -> Scope {
        Scope::Excluding(SensitiveCategory::ALL.into_iter().collect())
    }

    /// `all`, `exclude-sensitive`, or a comma list of categories to exclude.
    pub fn parse(s: &str) -> Result<Scope> {
        match s.trim() {
            "all" => Ok(Scope::All),
            "exclude-sensitive" | "exclude_sensitive" => Ok(Scope::excluding_all_sensitive()),
            list => {
                let list = list.strip_prefix("exclude:").unwrap_or(list);
                let mut set = BTreeSet::new();
                for item in list.split(',').filter(|x| !x.trim().is_empty()) {
                    set.insert(SensitiveCategory::parse(item).ok_or_else(|| {
                        CatalogError::invalid(format!(
                            "unknown sensitive category `{}`: use hiv, mental_health, substance_use or genetic",
                            item.trim().escape_debug()
                        ))
                    })?);
                }
                if set.is_empty() {
                    return Err(CatalogError::invalid(
                        "a scope is `all`, `exclude-sensitive`, or categories to exclude such as `hiv,genetic`",
                    ));
                }
                Ok(Scope::Excluding(set))
            }
        }
    }

    pub fn to_db(&self) -> String {
        match self {
            Scope::All => "all".into(),
            Scope::Excluding(set) => format!(
                "exclude:{}",
                set.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(",")
            ),
        }
    }

    /// Whether a record with these categories is covered.
    pub fn covers(&self, categories: &[SensitiveCategory]) -> bool {
        match self {
            Scope::All => true,
            Scope::Excluding(set) => !categories.iter().any(|c| set.contains(c)),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_db())
    }
}

/// Timestamps as stored: RFC 3339 UTC with microseconds, which compare as text.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Parses `YYYY-MM-DD` (midnight UTC) or an RFC 3339 timestamp.
pub fn parse_time(s: &str, what: &str) -> Result<DateTime<Utc>> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
            .unwrap_or_default());
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            CatalogError::invalid(format!(
                "{what} must be YYYY-MM-DD or an RFC 3339 timestamp"
            ))
        })
}

/// The state of one patient's consent for one purpose at a moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ConsentState {
    /// In force with this scope.
    Granted {
        scope: Scope,
        valid_until: Option<String>,
    },
    /// Granted, but its window has not opened yet.
    NotYetValid { valid_from: String },
    /// Granted, but its window has closed.
    Expired { valid_until: String },
    /// Revoked by the patient.
    Revoked { at: String },
    /// Never given.
    NotGiven,
}

impl ConsentState {
    pub fn scope(&self) -> Option<&Scope> {
        match self {
            ConsentState::Granted { scope, .. } => Some(scope),
            _ => None,
        }
    }

    /// The state given the latest event recorded at or before `at` (`None`: never given).
    pub fn from_latest(latest: Option<&ConsentRow>, at: &str) -> Result<ConsentState> {
        let Some(e) = latest else {
            return Ok(ConsentState::NotGiven);
        };
        if e.action == "revoke" {
            return Ok(ConsentState::Revoked {
                at: e.recorded_at.clone(),
            });
        }
        if e.valid_from.as_str() > at {
            return Ok(ConsentState::NotYetValid {
                valid_from: e.valid_from.clone(),
            });
        }
        if let Some(until) = &e.valid_until
            && until.as_str() <= at
        {
            return Ok(ConsentState::Expired {
                valid_until: until.clone(),
            });
        }
        let scope = Scope::parse(&e.scope)?;
        Ok(ConsentState::Granted {
            scope,
            valid_until: e.valid_until.clone(),
        })
    }
}

/// A request to grant consent.
#[derive(Debug, Clone)]
pub struct Grant {
    pub patient_id: String,
    pub purpose: Purpose,
    pub scope: Scope,
    /// Defaults to now.
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
    /// Who recorded it: `patient`, `caregiver:<id>`, `operator`, `demo`...
    pub actor: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(action: &str, from: &str, until: Option<&str>, scope: &str) -> ConsentRow {
        ConsentRow {
            event_id: "e".into(),
            patient_id: "p".into(),
            purpose: "research.natural_history".into(),
            action: action.into(),
            scope: scope.into(),
            valid_from: from.into(),
            valid_until: until.map(str::to_string),
            recorded_at: "2026-01-01T00:00:00.000000Z".into(),
            seq: 1,
            actor: "t".into(),
        }
    }

    #[test]
    fn purposes() {
        for ok in KNOWN_PURPOSES
            .iter()
            .copied()
            .chain(["research.rare_disease.registry_2"])
        {
            assert!(Purpose::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "research",
            "Research.x",
            "research..x",
            "research.x y",
            ".x",
            "research.9x",
        ] {
            assert!(Purpose::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes() {
        assert_eq!(Scope::parse("all").expect("ok"), Scope::All);
        let s = Scope::parse("hiv, genetic").expect("ok");
        assert_eq!(s.to_db(), "exclude:hiv,genetic");
        assert_eq!(Scope::parse(&s.to_db()).expect("round trip"), s);
        assert!(!s.covers(&[SensitiveCategory::Genetic]));
        assert!(s.covers(&[SensitiveCategory::MentalHealth]));
        assert!(Scope::parse("hiv,astrology").is_err());
        assert_eq!(
            Scope::parse("exclude-sensitive").expect("ok"),
            Scope::excluding_all_sensitive()
        );
    }

    #[test]
    fn state_at_a_moment() {
        let at = "2026-06-01T00:00:00.000000Z";
        assert_eq!(
            ConsentState::from_latest(None, at).expect("ok"),
            ConsentState::NotGiven
        );
        let g = row("grant", "2026-01-01T00:00:00.000000Z", None, "all");
        assert!(matches!(
            ConsentState::from_latest(Some(&g), at).expect("ok"),
            ConsentState::Granted { .. }
        ));
        let later = row("grant", "2026-07-01T00:00:00.000000Z", None, "all");
        assert!(matches!(
            ConsentState::from_latest(Some(&later), at).expect("ok"),
            ConsentState::NotYetValid { .. }
        ));
        let ended = row(
            "grant",
            "2026-01-01T00:00:00.000000Z",
            Some("2026-05-01T00:00:00.000000Z"),
            "all",
        );
        assert!(matches!(
            ConsentState::from_latest(Some(&ended), at).expect("ok"),
            ConsentState::Expired { .. }
        ));
        let revoked = row("revoke", "2026-01-01T00:00:00.000000Z", None, "all");
        assert!(matches!(
            ConsentState::from_latest(Some(&revoked), at).expect("ok"),
            ConsentState::Revoked { .. }
        ));
    }
}
