//! The normalized patient summary that ingest extracts from FHIR, phenopackets and surveys.
//!
//! These types are identified data: they exist decrypted only in memory. The store seals them
//! (see [`crate::crypto`]) and `Debug` is implemented by hand where a value could identify someone,
//! so a stray `{:?}` in a log line shows shape, not content.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A patient identifier as the source gave it (system + value), e.g. an MRN or an SSN.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identifier {
    pub system: String,
    pub value: String,
    /// The identifier's type code (HL7 v2-0203: MR, SS, DL, PPN, ...) when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_code: Option<String>,
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Address(<redacted>)")
    }
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identifier({}, <redacted>)", self.system)
    }
}

#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Address {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

/// Identity and demographics of one patient: the most identifying part of the store.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PatientIdentity {
    #[serde(default)]
    pub identifiers: Vec<Identifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub given_names: Vec<String>,
    /// ISO date (`YYYY`, `YYYY-MM` or `YYYY-MM-DD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth_date: Option<String>,
    /// Administrative sex: `male`, `female`, `other`, `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub race: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ethnicity: Option<String>,
    /// `Some(true)` when deceased with no date given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deceased: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deceased_date: Option<String>,
    /// Age at last encounter as an ISO 8601 duration, when only that is known (phenopackets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_at_last_encounter: Option<String>,
}

impl fmt::Debug for PatientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatientIdentity")
            .field("identifiers", &self.identifiers.len())
            .field("has_birth_date", &self.birth_date.is_some())
            .field("has_address", &self.address.is_some())
            .finish_non_exhaustive()
    }
}

impl PatientIdentity {
    /// Folds a later view of the same patient into this one: identifiers are united, and each
    /// demographic field takes the later value when the later source has one.
    pub fn merge(&mut self, later: PatientIdentity) {
        for id in later.identifiers {
            if !self
                .identifiers
                .iter()
                .any(|x| x.system == id.system && x.value == id.value)
            {
                self.identifiers.push(id);
            }
        }
        macro_rules! later_wins {
            ($($f:ident),*) => { $( if later.$f.is_some() { self.$f = later.$f; } )* };
        }
        later_wins!(
            family_name,
            birth_date,
            sex,
            address,
            race,
            ethnicity,
            deceased,
            deceased_date,
            age_at_last_encounter
        );
        if !later.given_names.is_empty() {
            self.given_names = later.given_names;
        }
    }
}

/// A coded concept: code system, code and display text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Code {
    pub system: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

/// A measured or reported value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Value {
    Quantity {
        value: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unit: Option<String>,
    },
    Coded {
        code: Code,
    },
    Text {
        text: String,
    },
    Boolean {
        value: bool,
    },
    Integer {
        value: i64,
    },
    Date {
        date: String,
    },
}

/// One component of a multi-part observation (e.g. systolic and diastolic blood pressure).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    pub code: Code,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// A survey answer: the question's link id and the answers given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub link_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    pub values: Vec<Value>,
}

/// The kinds of clinical record ingest extracts. Stored as the `kind` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Condition,
    Observation,
    Medication,
    Procedure,
    Encounter,
    Phenotype,
    Variant,
    SurveyResponse,
    /// A patient-linked resource kept raw (claims, care plans, immunizations, documents...).
    Other,
    /// A resource that belongs to no patient (organizations, practitioners, locations).
    Reference,
}

impl RecordKind {
    pub const ALL: [RecordKind; 10] = [
        RecordKind::Condition,
        RecordKind::Observation,
        RecordKind::Medication,
        RecordKind::Procedure,
        RecordKind::Encounter,
        RecordKind::Phenotype,
        RecordKind::Variant,
        RecordKind::SurveyResponse,
        RecordKind::Other,
        RecordKind::Reference,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Condition => "condition",
            RecordKind::Observation => "observation",
            RecordKind::Medication => "medication",
            RecordKind::Procedure => "procedure",
            RecordKind::Encounter => "encounter",
            RecordKind::Phenotype => "phenotype",
            RecordKind::Variant => "variant",
            RecordKind::SurveyResponse => "survey_response",
            RecordKind::Other => "other",
            RecordKind::Reference => "reference",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Sensitive categories a patient may exclude from their consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensitiveCategory {
    Hiv,
    MentalHealth,
    SubstanceUse,
    Genetic,
}

impl SensitiveCategory {
    pub const ALL: [SensitiveCategory; 4] = [
        SensitiveCategory::Hiv,
        SensitiveCategory::MentalHealth,
        SensitiveCategory::SubstanceUse,
        SensitiveCategory::Genetic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SensitiveCategory::Hiv => "hiv",
            SensitiveCategory::MentalHealth => "mental_health",
            SensitiveCategory::SubstanceUse => "substance_use",
            SensitiveCategory::Genetic => "genetic",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        Self::ALL.into_iter().find(|c| c.as_str() == norm)
    }
}

/// The clinical content of one record, normalized across sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Clinical {
    Condition {
        code: Option<Code>,
        onset: Option<String>,
        /// Onset given as an age (ISO 8601 duration) or an HPO onset class label.
        onset_age: Option<String>,
        abatement: Option<String>,
        clinical_status: Option<String>,
        recorded: Option<String>,
    },
    Observation {
        code: Option<Code>,
        category: Option<String>,
        value: Option<Value>,
        components: Vec<Component>,
        effective: Option<String>,
    },
    Medication {
        code: Option<Code>,
        status: Option<String>,
        authored: Option<String>,
    },
    Procedure {
        code: Option<Code>,
        performed: Option<String>,
    },
    Encounter {
        class: Option<String>,
        code: Option<Code>,
        start: Option<String>,
        end: Option<String>,
    },
    Phenotype {
        code: Code,
        excluded: bool,
        onset: Option<String>,
    },
    Variant {
        gene: Option<String>,
        hgvs: Vec<String>,
        zygosity: Option<String>,
        /// hg38 VCF coordinates as `chrom:pos:ref:alt`.
        vcf: Option<String>,
        interpretation_status: Option<String>,
    },
    SurveyResponse {
        questionnaire: Option<String>,
        status: Option<String>,
        authored: Option<String>,
        answers: Vec<Answer>,
    },
    Other {
        code: Option<Code>,
        date: Option<String>,
    },
    Reference {
        display: Option<String>,
    },
}

impl Clinical {
    pub fn kind(&self) -> RecordKind {
        match self {
            Clinical::Condition { .. } => RecordKind::Condition,
            Clinical::Observation { .. } => RecordKind::Observation,
            Clinical::Medication { .. } => RecordKind::Medication,
            Clinical::Procedure { .. } => RecordKind::Procedure,
            Clinical::Encounter { .. } => RecordKind::Encounter,
            Clinical::Phenotype { .. } => RecordKind::Phenotype,
            Clinical::Variant { .. } => RecordKind::Variant,
            Clinical::SurveyResponse { .. } => RecordKind::SurveyResponse,
            Clinical::Other { .. } => RecordKind::Other,
            Clinical::Reference { .. } => RecordKind::Reference,
        }
    }

    /// The main code of the record, if it has one.
    pub fn code(&self) -> Option<&Code> {
        match self {
            Clinical::Condition { code, .. }
            | Clinical::Observation { code, .. }
            | Clinical::Medication { code, .. }
            | Clinical::Procedure { code, .. }
            | Clinical::Encounter { code, .. }
            | Clinical::Other { code, .. } => code.as_ref(),
            Clinical::Phenotype { code, .. } => Some(code),
            Clinical::Variant { .. }
            | Clinical::SurveyResponse { .. }
            | Clinical::Reference { .. } => None,
        }
    }
}

/// One stored record: its normalized content, its sensitive categories, and the raw source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordBody {
    /// The source's resource type (`Observation`, `Phenopacket.phenotypicFeatures`, ...).
    pub resource_type: String,
    pub clinical: Clinical,
    #[serde(default)]
    pub categories: Vec<SensitiveCategory>,
    /// Internal id of the encounter this record belongs to, when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    /// The raw source resource, byte for byte as it arrived (minus any BOM).
    pub raw: Box<serde_json::value::RawValue>,
}

/// Everything a consented reader gets for one patient: identity and the records their consent
/// covers. Produced only by [`crate::Catalog::consented_summaries`].
#[derive(Clone, Serialize)]
pub struct PatientSummary {
    pub patient_id: String,
    pub identity: PatientIdentity,
    pub records: Vec<StoredRecord>,
}

impl fmt::Debug for PatientSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatientSummary")
            .field("patient_id", &self.patient_id)
            .field("records", &self.records.len())
            .finish_non_exhaustive()
    }
}

/// A record as read back from the store.
#[derive(Debug, Clone, Serialize)]
pub struct StoredRecord {
    pub record_id: String,
    pub body: RecordBody,
}
