//! One input file to patients, sealed records and problems. Pure CPU work with no database: runs
//! on worker threads, in parallel across files. The writer then resolves patients against the store.

use std::collections::{HashMap, HashSet};

use serde_json::value::RawValue;
use serde_json::{Map, Value as Json};

use super::fhir::{self, At, Extracted, R4_RESOURCE_TYPES};
use super::phenopacket;
use super::problem::{Problem, Reason};
use super::sensitive;
use crate::crypto::Keyring;
use crate::model::{Clinical, PatientIdentity, RecordKind};
use crate::payload;

/// How a record names its patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatientLink {
    /// The patient at this index of [`ParsedFile::patients`].
    Local(usize),
    /// A patient elsewhere (the store, or a later file of the batch), by blind-index keys.
    Keys(Vec<String>),
}

/// What a patient key is derived from. Stored, so that conflicts can be told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A business identifier (system + value): matches across sources.
    Identifier,
    /// The FHIR logical id within one source.
    LogicalId,
    /// A globally unique fullUrl (`urn:uuid:`) or absolute URL.
    FullUrl,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Identifier => "identifier",
            KeyKind::LogicalId => "logical_id",
            KeyKind::FullUrl => "full_url",
        }
    }
}

#[derive(Debug)]
pub struct ParsedPatient {
    /// Blind indexes of what matches this patient to a stored one, with their kinds.
    pub keys: Vec<(String, KeyKind)>,
    pub identity: PatientIdentity,
}

#[derive(Debug)]
pub struct ParsedRecord {
    pub record_id: String,
    /// `None` for reference data (organizations, practitioners, ...).
    pub link: Option<PatientLink>,
    pub kind: RecordKind,
    pub resource_type: String,
    pub content_hash: String,
    /// The record as stored once sealed (see `payload`): sealing waits for the writer, which
    /// knows the patient whose data key seals it.
    pub payload: Vec<u8>,
    /// Where it came from, for a later dangling-reference problem.
    pub entry: Option<usize>,
    pub ref_field: String,
}

#[derive(Debug, Default)]
pub struct ParsedFile {
    pub patients: Vec<ParsedPatient>,
    pub records: Vec<ParsedRecord>,
    pub problems: Vec<Problem>,
    /// Entries (resources, lines or phenopacket elements) seen, good or bad.
    pub entries_seen: usize,
}

/// What parsing needs to know besides the bytes.
#[derive(Debug)]
pub struct ParseContext<'a> {
    pub keyring: &'a Keyring,
    /// Namespace of logical ids (see `--source`).
    pub source: &'a str,
    /// Today, `YYYY-MM-DD`.
    pub today: &'a str,
}

pub fn record_aad(record_id: &str) -> Vec<u8> {
    format!("records/{record_id}").into_bytes()
}

impl ParseContext<'_> {
    fn key_fhir_id(&self, resource_type: &str, id: &str) -> String {
        self.keyring
            .blind_index(&["fhir-id", self.source, resource_type, id])
    }

    fn key_identifier(&self, system: &str, value: &str) -> String {
        if system.is_empty() {
            self.keyring
                .blind_index(&["identifier-nosystem", self.source, value])
        } else {
            self.keyring.blind_index(&["identifier", system, value])
        }
    }

    fn record_id(&self, resource_type: &str, logical_id: &str) -> String {
        self.keyring
            .blind_index(&["record", self.source, resource_type, logical_id])
    }

    fn patient_keys(
        &self,
        identity: &PatientIdentity,
        id: Option<&str>,
        full_url: Option<&str>,
    ) -> Vec<(String, KeyKind)> {
        let mut keys: Vec<(String, KeyKind)> = identity
            .identifiers
            .iter()
            .map(|i| {
                (
                    self.key_identifier(&i.system, &i.value),
                    KeyKind::Identifier,
                )
            })
            .collect();
        if let Some(id) = id {
            keys.push((self.key_fhir_id("Patient", id), KeyKind::LogicalId));
        }
        if let Some(u) = full_url.filter(|u| u.starts_with("urn:uuid:") || u.contains("://")) {
            keys.push((
                self.keyring.blind_index(&["fhir-fullurl", u]),
                KeyKind::FullUrl,
            ));
        }
        keys
    }

    fn seal_record(&self, draft: Draft) -> Result<ParsedRecord, Problem> {
        let Draft {
            record_id,
            link,
            resource_type,
            clinical,
            encounter,
            raw,
            minify,
            entry,
            ref_field,
        } = draft;
        let categories = sensitive::classify(&clinical, resource_type);
        let kind = clinical.kind();
        let head = payload::Head {
            resource_type,
            clinical: &clinical,
            categories: &categories,
            encounter: encounter.as_deref(),
        };
        let (payload, json) = payload::encode(&head, &raw, minify)
            .map_err(|e| Problem::at(entry, "", Reason::Unreadable, e.to_string()))?;
        let content_hash = self.keyring.keyed_hash("content", &json);
        Ok(ParsedRecord {
            record_id,
            link,
            kind,
            resource_type: resource_type.to_string(),
            content_hash,
            payload,
            entry,
            ref_field,
        })
    }
}

/// A record extracted and ready to seal.
struct Draft<'a> {
    record_id: String,
    link: Option<PatientLink>,
    resource_type: &'a str,
    clinical: Clinical,
    encounter: Option<String>,
    /// The source JSON text; `minify` when it may hold insignificant whitespace.
    raw: std::borrow::Cow<'a, str>,
    minify: bool,
    entry: Option<usize>,
    ref_field: String,
}

/// Strips a UTF-8 byte-order mark; refuses UTF-16/32.
fn text_body(bytes: &[u8]) -> Result<&[u8], Problem> {
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if body.starts_with(b"\xFF\xFE")
        || body.starts_with(b"\xFE\xFF")
        || body.starts_with(b"\0\0\xFE\xFF")
    {
        return Err(Problem::file(
            Reason::NotUtf8,
            "the file is UTF-16 or UTF-32; FHIR JSON must be UTF-8: convert it (e.g. `iconv -t UTF-8`) and ingest again",
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Problem::file(Reason::Empty, "the file is empty"));
    }
    Ok(body)
}

fn is_ndjson_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".ndjson") || lower.ends_with(".jsonl")
}

/// One resource to extract: where it sits and its content.
struct Entry<'a> {
    index: Option<usize>,
    path: String,
    full_url: Option<&'a str>,
    resource: &'a Map<String, Json>,
    resource_type: &'a str,
    id: Option<&'a str>,
    /// The resource's text exactly as it arrived, when the parser kept it.
    raw: Option<&'a RawValue>,
}

/// The outline of a file, parsed without building values, so that a bundle's resources keep
/// their original text and are parsed one by one.
#[derive(serde::Deserialize)]
struct Outline<'a> {
    #[serde(rename = "resourceType", borrow, default)]
    resource_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    entry: Option<Vec<OutlineEntry<'a>>>,
}

#[derive(serde::Deserialize)]
struct OutlineEntry<'a> {
    #[serde(rename = "fullUrl", borrow, default)]
    full_url: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    resource: Option<&'a RawValue>,
}

/// The fast path for bundles: the outline keeps each resource's raw text. Returns false when
/// the file is not a well-formed bundle, leaving the careful path to find and name the fault.
fn parse_bundle_outline(body: &[u8], ctx: &ParseContext, out: &mut ParsedFile) -> bool {
    let Ok(outline) = serde_json::from_slice::<Outline>(body) else {
        return false;
    };
    if outline.resource_type.as_deref() != Some("Bundle") {
        return false;
    }
    let entries = outline.entry.unwrap_or_default();
    type Parsed<'b> = (usize, Option<&'b str>, Map<String, Json>, &'b RawValue);
    let mut maps: Vec<Parsed> = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        out.entries_seen += 1;
        let path = format!("entry[{i}].resource");
        let Some(raw) = e.resource else {
            out.problems.push(Problem::at(
                Some(i),
                path,
                Reason::MissingField,
                "the entry has no resource (only a request or response); nothing to ingest",
            ));
            continue;
        };
        match serde_json::from_str::<Map<String, Json>>(raw.get()) {
            Ok(m) => maps.push((i, e.full_url.as_deref().filter(|u| !u.is_empty()), m, raw)),
            Err(_) => out.problems.push(Problem::at(
                Some(i),
                path,
                Reason::InvalidValue,
                "entry.resource must be an object",
            )),
        }
    }
    let mut good = Vec::with_capacity(maps.len());
    for (i, full_url, m, raw) in &maps {
        match entry_of(m, Some(*i), format!("entry[{i}].resource"), *full_url) {
            Ok(mut entry) => {
                entry.raw = Some(raw);
                good.push(entry);
            }
            Err(p) => out.problems.push(p),
        }
    }
    extract_entries(good, ctx, out);
    true
}

/// Parses one file. `name` is used only to recognise NDJSON by its extension.
pub fn parse_file(bytes: &[u8], name: &str, ctx: &ParseContext) -> ParsedFile {
    let mut out = ParsedFile::default();
    let body = match text_body(bytes) {
        Ok(b) => b,
        Err(p) => {
            out.problems.push(p);
            return out;
        }
    };
    if is_ndjson_name(name) {
        parse_ndjson(body, ctx, &mut out);
        return out;
    }
    if parse_bundle_outline(body, ctx, &mut out) {
        return out;
    }
    match serde_json::from_slice::<Json>(body) {
        Ok(Json::Object(o)) => parse_object(&o, ctx, &mut out),
        Ok(_) => out.problems.push(Problem::file(
            Reason::UnknownFormat,
            "the file holds JSON but not an object: expected a FHIR resource or Bundle, NDJSON, or a phenopacket",
        )),
        Err(e) => {
            // A file of several JSON objects, one per line, is NDJSON whatever its name.
            let first_line_is_object = body
                .split(|b| *b == b'\n')
                .find(|l| !l.iter().all(u8::is_ascii_whitespace))
                .is_some_and(|l| matches!(serde_json::from_slice::<Json>(l), Ok(Json::Object(_))));
            if e.line() > 1 && first_line_is_object {
                parse_ndjson(body, ctx, &mut out);
            } else {
                out.problems.push(Problem::from_json_error(None, "", &e));
            }
        }
    }
    out
}

fn parse_object(o: &Map<String, Json>, ctx: &ParseContext, out: &mut ParsedFile) {
    match o.get("resourceType") {
        None if phenopacket::looks_like(o) => parse_phenopacket(o, ctx, out),
        None => out.problems.push(Problem::at(
            None,
            "resourceType",
            Reason::MissingField,
            "no resourceType: the file is neither a FHIR R4 resource nor a GA4GH phenopacket",
        )),
        Some(Json::String(rt)) if rt == "Bundle" => parse_bundle(o, ctx, out),
        Some(_) => {
            out.entries_seen += 1;
            match entry_of(o, None, String::new(), None) {
                Ok(e) => extract_entries(vec![e], ctx, out),
                Err(p) => out.problems.push(p),
            }
        }
    }
}

fn describe_type(rt: &str) -> String {
    // A resource type is schema, not personal data; still, show only a short, plain token.
    if rt.len() <= 40 && rt.chars().all(|c| c.is_ascii_alphanumeric()) {
        format!("`{rt}`")
    } else {
        "the value".to_string()
    }
}

fn entry_of<'a>(
    resource: &'a Map<String, Json>,
    index: Option<usize>,
    path: String,
    full_url: Option<&'a str>,
) -> Result<Entry<'a>, Problem> {
    let field = |f: &str| {
        if path.is_empty() {
            f.to_string()
        } else {
            format!("{path}.{f}")
        }
    };
    let rt = match resource.get("resourceType") {
        Some(Json::String(rt)) => rt.as_str(),
        Some(_) => {
            return Err(Problem::at(
                index,
                field("resourceType"),
                Reason::WrongResourceType,
                "resourceType must be a string",
            ));
        }
        None => {
            return Err(Problem::at(
                index,
                field("resourceType"),
                Reason::MissingField,
                "the resource has no resourceType",
            ));
        }
    };
    if !R4_RESOURCE_TYPES.contains(&rt) {
        return Err(Problem::at(
            index,
            field("resourceType"),
            Reason::WrongResourceType,
            format!(
                "{} is not a FHIR R4 resource type (check its spelling and case)",
                describe_type(rt)
            ),
        ));
    }
    if rt == "Bundle" {
        return Err(Problem::at(
            index,
            field("resourceType"),
            Reason::WrongResourceType,
            "a Bundle nested inside a Bundle is not supported; ingest it as its own file",
        ));
    }
    let id = match resource.get("id") {
        None => None,
        Some(Json::String(s)) if !s.is_empty() => Some(s.as_str()),
        Some(_) => {
            return Err(Problem::at(
                index,
                field("id"),
                Reason::InvalidValue,
                "id must be a non-empty string",
            ));
        }
    };
    if id.is_none() && full_url.is_none() {
        return Err(Problem::at(
            index,
            field("id"),
            Reason::MissingField,
            "the resource has no id (and no fullUrl): without one it cannot be stored once and updated later",
        ));
    }
    Ok(Entry {
        index,
        path,
        full_url,
        resource,
        resource_type: rt,
        id,
        raw: None,
    })
}

fn parse_bundle(o: &Map<String, Json>, ctx: &ParseContext, out: &mut ParsedFile) {
    let entries = match o.get("entry") {
        None | Some(Json::Null) => return,
        Some(Json::Array(a)) => a,
        Some(_) => {
            out.problems.push(Problem::at(
                None,
                "entry",
                Reason::InvalidValue,
                "Bundle.entry must be an array",
            ));
            return;
        }
    };
    let mut good = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        out.entries_seen += 1;
        let path = format!("entry[{i}]");
        let Some(eo) = e.as_object() else {
            out.problems.push(Problem::at(
                Some(i),
                path,
                Reason::InvalidValue,
                "a bundle entry must be an object",
            ));
            continue;
        };
        let full_url = eo
            .get("fullUrl")
            .and_then(Json::as_str)
            .filter(|u| !u.is_empty());
        match eo.get("resource") {
            Some(Json::Object(r)) => {
                match entry_of(r, Some(i), format!("{path}.resource"), full_url) {
                    Ok(entry) => good.push(entry),
                    Err(p) => out.problems.push(p),
                }
            }
            Some(_) => out.problems.push(Problem::at(
                Some(i),
                format!("{path}.resource"),
                Reason::InvalidValue,
                "entry.resource must be an object",
            )),
            None => out.problems.push(Problem::at(
                Some(i),
                format!("{path}.resource"),
                Reason::MissingField,
                "the entry has no resource (only a request or response); nothing to ingest",
            )),
        }
    }
    extract_entries(good, ctx, out);
}

fn parse_ndjson(body: &[u8], ctx: &ParseContext, out: &mut ParsedFile) {
    let mut objects = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.entries_seen += 1;
        match serde_json::from_slice::<Json>(line) {
            Ok(Json::Object(o)) => objects.push((i, o)),
            Ok(_) => out.problems.push(Problem::at(
                Some(i),
                format!("line[{i}]"),
                Reason::InvalidValue,
                "each NDJSON line must be one JSON object",
            )),
            Err(e) => {
                out.problems
                    .push(Problem::from_json_error(Some(i), &format!("line[{i}]"), &e))
            }
        }
    }
    let mut good = Vec::with_capacity(objects.len());
    for (i, o) in &objects {
        match entry_of(o, Some(*i), format!("line[{i}]"), None) {
            Ok(e) => good.push(e),
            Err(p) => out.problems.push(p),
        }
    }
    extract_entries(good, ctx, out);
}

/// Splits a literal reference into (type, id), for `Type/id` and absolute `.../Type/id` forms.
fn type_and_id(reference: &str) -> Option<(&str, &str)> {
    let r = reference.split("/_history/").next().unwrap_or(reference);
    let mut parts = r.rsplit('/');
    let id = parts.next()?;
    let ty = parts.next()?;
    (!id.is_empty() && R4_RESOURCE_TYPES.contains(&ty)).then_some((ty, id))
}

fn extract_entries(entries: Vec<Entry>, ctx: &ParseContext, out: &mut ParsedFile) {
    fn at<'e>(e: &'e Entry, today: &'e str) -> At<'e> {
        At {
            entry: e.index,
            path: &e.path,
            today,
        }
    }
    // Pass 1: patients, and where each can be found by reference inside this file.
    let mut local: HashMap<String, usize> = HashMap::new();
    let mut failed: HashMap<String, Option<usize>> = HashMap::new();
    let mut record_ids: HashMap<String, String> = HashMap::new();
    for e in &entries {
        let logical = e.id.or(e.full_url).unwrap_or_default();
        let rid = ctx.record_id(e.resource_type, logical);
        if let Some(u) = e.full_url {
            record_ids.insert(u.to_string(), rid.clone());
        }
        if let Some(id) = e.id {
            record_ids.insert(format!("{}/{id}", e.resource_type), rid);
        }
        if e.resource_type != "Patient" {
            continue;
        }
        let names: Vec<String> = e
            .full_url
            .map(str::to_string)
            .into_iter()
            .chain(e.id.map(|id| format!("Patient/{id}")))
            .collect();
        match fhir::extract(e.resource, "Patient", &at(e, ctx.today)) {
            Ok(Extracted::Patient(identity)) => {
                let keys = ctx.patient_keys(&identity, e.id, e.full_url);
                if keys.is_empty() {
                    out.problems.push(Problem::at(
                        e.index,
                        format!("{}.identifier", e.path),
                        Reason::MissingField,
                        "the patient has no id, fullUrl or identifier to match it by",
                    ));
                    continue;
                }
                let idx = out.patients.len();
                out.patients.push(ParsedPatient { keys, identity });
                for n in names {
                    local.insert(n, idx);
                }
            }
            Ok(Extracted::Record { .. }) => out.problems.push(Problem::at(
                e.index,
                e.path.clone(),
                Reason::WrongResourceType,
                "internal: a Patient extracted as a record",
            )),
            Err(p) => {
                out.problems.push(p);
                for n in names {
                    failed.insert(n, e.index);
                }
            }
        }
    }
    // Pass 2: everything else.
    let mut seen_ids: HashSet<String> = HashSet::new();
    for e in &entries {
        if e.resource_type == "Patient" {
            continue;
        }
        let extracted = match fhir::extract(e.resource, e.resource_type, &at(e, ctx.today)) {
            Ok(x) => x,
            Err(p) => {
                out.problems.push(p);
                continue;
            }
        };
        let Extracted::Record {
            clinical,
            patient_ref,
            encounter_ref,
        } = extracted
        else {
            continue;
        };
        let mut ref_field = String::new();
        let link = match patient_ref {
            None => None,
            Some((field, r)) => {
                ref_field = if e.path.is_empty() {
                    field.to_string()
                } else {
                    format!("{}.{field}", e.path)
                };
                let key = type_and_id(&r).map(|(t, id)| format!("{t}/{id}"));
                let found = local
                    .get(&r)
                    .or_else(|| key.as_ref().and_then(|k| local.get(k)));
                if let Some(idx) = found {
                    Some(PatientLink::Local(*idx))
                } else if let Some(bad) = failed
                    .get(&r)
                    .or_else(|| key.as_ref().and_then(|k| failed.get(k)))
                {
                    out.problems.push(Problem::at(
                        e.index,
                        ref_field.clone(),
                        Reason::DependsOnQuarantined,
                        match bad {
                            Some(j) => format!("references the patient in entry {j}, which was quarantined; fix that entry and ingest the file again"),
                            None => "references a patient that was quarantined; fix it and ingest again".to_string(),
                        },
                    ));
                    continue;
                } else if let Some(cond) = r.strip_prefix("Patient?identifier=") {
                    let (system, value) = cond.split_once('|').unwrap_or(("", cond));
                    Some(PatientLink::Keys(vec![ctx.key_identifier(system, value)]))
                } else if let Some((_, id)) = type_and_id(&r).filter(|(t, _)| *t == "Patient") {
                    let mut keys = vec![ctx.key_fhir_id("Patient", id)];
                    if r.contains("://") {
                        keys.push(ctx.keyring.blind_index(&["fhir-fullurl", &r]));
                    }
                    Some(PatientLink::Keys(keys))
                } else if r.starts_with("urn:uuid:") {
                    Some(PatientLink::Keys(vec![
                        ctx.keyring.blind_index(&["fhir-fullurl", &r]),
                    ]))
                } else {
                    out.problems.push(Problem::at(
                        e.index,
                        ref_field.clone(),
                        Reason::DanglingReference,
                        "the patient reference is neither a urn:uuid in this bundle, Patient/<id>, nor Patient?identifier=<system>|<value>",
                    ));
                    continue;
                }
            }
        };
        let encounter = encounter_ref.map(|r| {
            record_ids
                .get(&r)
                .cloned()
                .unwrap_or_else(|| match type_and_id(&r) {
                    Some((t, id)) => ctx.record_id(t, id),
                    None => ctx.record_id("Encounter", &r),
                })
        });
        let logical = e.id.or(e.full_url).unwrap_or_default();
        let record_id = ctx.record_id(e.resource_type, logical);
        if !seen_ids.insert(record_id.clone()) {
            continue; // the same resource twice in one file: the first stands
        }
        let (raw, minify) = match e.raw {
            Some(r) => (std::borrow::Cow::Borrowed(r.get()), true),
            None => match serde_json::to_string(e.resource) {
                Ok(text) => (std::borrow::Cow::Owned(text), false),
                Err(err) => {
                    out.problems
                        .push(Problem::from_json_error(e.index, &e.path, &err));
                    continue;
                }
            },
        };
        match ctx.seal_record(Draft {
            record_id,
            link,
            resource_type: e.resource_type,
            clinical,
            encounter,
            raw,
            minify,
            entry: e.index,
            ref_field,
        }) {
            Ok(r) => out.records.push(r),
            Err(p) => out.problems.push(p),
        }
    }
}

fn parse_phenopacket(o: &Map<String, Json>, ctx: &ParseContext, out: &mut ParsedFile) {
    out.entries_seen += 1;
    let x = match phenopacket::extract(o, ctx.today) {
        Ok(x) => x,
        Err(p) => {
            out.problems.push(p);
            return;
        }
    };
    out.entries_seen += x.elements.len();
    let keys = ctx.patient_keys(&x.identity, None, None);
    out.patients.push(ParsedPatient {
        keys,
        identity: x.identity,
    });
    for el in x.elements {
        let record_id =
            ctx.keyring
                .blind_index(&["record", ctx.source, "phenopacket", &x.id, &el.path]);
        let raw = match serde_json::to_string(el.raw) {
            Ok(text) => std::borrow::Cow::Owned(text),
            Err(err) => {
                out.problems
                    .push(Problem::from_json_error(None, &el.path, &err));
                continue;
            }
        };
        match ctx.seal_record(Draft {
            record_id,
            link: Some(PatientLink::Local(0)),
            resource_type: el.resource_type,
            clinical: el.clinical,
            encounter: None,
            raw,
            minify: false,
            entry: None,
            ref_field: el.path,
        }) {
            Ok(r) => out.records.push(r),
            Err(p) => out.problems.push(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: &Json, name: &str) -> ParsedFile {
        let k = Keyring::new(&[5; 32], &[]);
        let ctx = ParseContext {
            keyring: &k,
            source: "default",
            today: "2026-11-23",
        };
        parse_file(&serde_json::to_vec(v).expect("json"), name, &ctx)
    }

    fn bundle() -> Json {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient", "id": "p1",
                "identifier": [{"system": "urn:mrn", "value": "42"}]}},
            {"fullUrl": "urn:uuid:c1", "resource": {"resourceType": "Condition", "id": "c1",
                "code": {"text": "x"}, "subject": {"reference": "urn:uuid:p1"}}},
            {"fullUrl": "urn:uuid:c2", "resource": {"resourceType": "Condition", "id": "c2",
                "code": {"text": "x"}, "subject": {"reference": "urn:uuid:nobody"}}},
            {"fullUrl": "urn:uuid:o1", "resource": {"resourceType": "Observaton", "id": "o1"}},
            {"fullUrl": "urn:uuid:o2", "resource": {"resourceType": "Observation",
                "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2019-02-30"}},
            {"request": {"method": "DELETE", "url": "Patient/9"}}
        ]})
    }

    #[test]
    fn bad_entries_are_named_and_good_ones_kept() {
        let f = parse(&bundle(), "b.json");
        assert_eq!(f.entries_seen, 6);
        assert_eq!(f.patients.len(), 1);
        let kept: Vec<_> = f.records.iter().map(|r| r.resource_type.as_str()).collect();
        assert_eq!(
            kept,
            ["Condition", "Condition"],
            "c1 and c2 parse; c2's urn is resolved later"
        );
        assert_eq!(f.records[0].link, Some(PatientLink::Local(0)));
        assert!(matches!(f.records[1].link, Some(PatientLink::Keys(_))));
        let mut probs: Vec<_> = f
            .problems
            .iter()
            .map(|p| (p.entry, p.field.as_str(), p.reason))
            .collect();
        probs.sort();
        assert_eq!(
            probs,
            [
                (
                    Some(3),
                    "entry[3].resource.resourceType",
                    Reason::WrongResourceType
                ),
                (
                    Some(4),
                    "entry[4].resource.effectiveDateTime",
                    Reason::InvalidDate
                ),
                (Some(5), "entry[5].resource", Reason::MissingField),
            ]
        );
    }

    #[test]
    fn entries_of_a_quarantined_patient_say_so() {
        let mut b = bundle();
        b["entry"][0]["resource"]["birthDate"] = json!("1990-13-01");
        let f = parse(&b, "b.json");
        assert!(f.patients.is_empty());
        assert!(
            f.problems
                .iter()
                .any(|p| p.entry == Some(1) && p.reason == Reason::DependsOnQuarantined)
        );
    }

    #[test]
    fn truncated_bom_and_ndjson() {
        let k = Keyring::new(&[5; 32], &[]);
        let ctx = ParseContext {
            keyring: &k,
            source: "default",
            today: "2026-11-23",
        };
        let full = serde_json::to_vec(&bundle()).expect("json");
        let cut = parse_file(&full[..full.len() / 2], "b.json", &ctx);
        assert_eq!(cut.problems.len(), 1);
        assert_eq!(cut.problems[0].reason, Reason::InvalidJson);
        assert!(cut.records.is_empty());

        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend_from_slice(&full);
        assert_eq!(parse_file(&bom, "b.json", &ctx).records.len(), 2);

        let nd = b"{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Observation\",\"id\":\"o\",\"subject\":{\"reference\":\"Patient/a\"}}\n{\"resourceType\":\n";
        let f = parse_file(nd, "Patient.ndjson", &ctx);
        assert_eq!(
            (f.patients.len(), f.records.len(), f.problems.len()),
            (1, 1, 1)
        );
        assert_eq!(f.problems[0].entry, Some(2));
        let sniffed = parse_file(nd, "export.json", &ctx);
        assert_eq!(
            sniffed.records.len(),
            1,
            "NDJSON is recognised by content too"
        );

        let utf16 = parse_file(b"\xFF\xFE{\0}\0", "x.json", &ctx);
        assert_eq!(utf16.problems[0].reason, Reason::NotUtf8);
    }

    #[test]
    fn record_ids_are_stable_and_payload_decodes() {
        let a = parse(&bundle(), "b.json");
        let b = parse(&bundle(), "b.json");
        assert_eq!(a.records[0].record_id, b.records[0].record_id);
        assert_eq!(a.records[0].content_hash, b.records[0].content_hash);
        let body = payload::decode(&a.records[0].payload).expect("body");
        assert_eq!(body.resource_type, "Condition");
    }
}
