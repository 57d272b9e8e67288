//! Why a file or an entry was quarantined. A problem names the place (file, entry, field) and the
//! kind of fault, and says what to do; it never quotes the offending value, which may be a name
//! or a birth date.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The kind of fault, stored as a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The file could not be read.
    Unreadable,
    /// The file is larger than the configured limit.
    Oversize,
    /// The file is empty.
    Empty,
    /// Not UTF-8 (FHIR JSON must be UTF-8).
    NotUtf8,
    /// Invalid or truncated JSON.
    InvalidJson,
    /// JSON, but neither FHIR R4 nor a GA4GH phenopacket.
    UnknownFormat,
    /// `resourceType` names no FHIR R4 resource, or one not allowed where it stands.
    WrongResourceType,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type or an invalid value.
    InvalidValue,
    /// A date, dateTime or age that cannot exist.
    InvalidDate,
    /// A reference to a patient that is neither in the batch nor in the store.
    DanglingReference,
    /// The entry depends on an entry that was itself quarantined.
    DependsOnQuarantined,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unreadable => "unreadable",
            Reason::Oversize => "oversize",
            Reason::Empty => "empty",
            Reason::NotUtf8 => "not_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::UnknownFormat => "unknown_format",
            Reason::WrongResourceType => "wrong_resource_type",
            Reason::MissingField => "missing_field",
            Reason::InvalidValue => "invalid_value",
            Reason::InvalidDate => "invalid_date",
            Reason::DanglingReference => "dangling_reference",
            Reason::DependsOnQuarantined => "depends_on_quarantined",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        use Reason::*;
        [
            Unreadable,
            Oversize,
            Empty,
            NotUtf8,
            InvalidJson,
            UnknownFormat,
            WrongResourceType,
            MissingField,
            InvalidValue,
            InvalidDate,
            DanglingReference,
            DependsOnQuarantined,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fault in one place of one input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Index of the bundle entry, NDJSON line (0-based) or phenopacket element; `None` for the
    /// whole file.
    pub entry: Option<usize>,
    /// JSON path of the field at fault, e.g. `entry[3].resource.birthDate`; empty for the file.
    pub field: String,
    pub reason: Reason,
    /// What is wrong and what to do, without the value.
    pub message: String,
}

impl Problem {
    pub fn file(reason: Reason, message: impl Into<String>) -> Self {
        Problem {
            entry: None,
            field: String::new(),
            reason,
            message: message.into(),
        }
    }

    pub fn at(
        entry: Option<usize>,
        field: impl Into<String>,
        reason: Reason,
        message: impl Into<String>,
    ) -> Self {
        Problem {
            entry,
            field: field.into(),
            reason,
            message: message.into(),
        }
    }

    /// Describes a serde_json parse error by position and category only: serde's own messages
    /// for type mismatches quote the value, so they are never passed through.
    pub fn from_json_error(entry: Option<usize>, field: &str, e: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        let what = match e.classify() {
            Category::Eof => "the JSON ends early (truncated file?)",
            Category::Syntax => "the JSON is malformed",
            Category::Data => "the JSON has an unexpected shape",
            Category::Io => "the file could not be read",
        };
        Problem::at(
            entry,
            field,
            Reason::InvalidJson,
            format!(
                "{what} at line {} column {}; fix or re-export the file and ingest it again",
                e.line(),
                e.column()
            ),
        )
    }
}
