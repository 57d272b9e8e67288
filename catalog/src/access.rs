//! A patient's right of access (HIPAA 45 CFR 164.524, GDPR articles 15 and 20): everything the
//! catalog holds about one patient, for that patient, and the same as one FHIR R4 Bundle.
//!
//! This is the one reader of records besides [`Catalog::consented_summaries`], and it does not
//! ask the consent registry: a patient's access to their own data is not a research purpose.
//! Callers must have established that the reader is the patient or acts for them (the
//! patients' pages do so through a session bound to the account's links).

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::Catalog;
use crate::consent::Scope;
use crate::error::{CatalogError, Result};
use crate::ingest::parse::record_aad;
use crate::ingest::patient_aad;
use crate::model::{PatientIdentity, RecordBody, RecordKind, SensitiveCategory};
use crate::payload;
use crate::store::ConsentRow;

/// One of the patient's records with where and when it arrived.
#[derive(Debug, Clone)]
pub struct OwnRecord {
    pub record_id: String,
    pub kind: RecordKind,
    /// The ingest source it came through (`--source`), when recorded.
    pub source: Option<String>,
    /// When Tessera first stored it.
    pub received_at: String,
    /// When its content last changed.
    pub updated_at: String,
    pub body: RecordBody,
}

/// Everything about one patient.
#[derive(Clone)]
pub struct OwnData {
    pub patient_id: String,
    pub identity: PatientIdentity,
    pub records: Vec<OwnRecord>,
    /// Every consent event, oldest first.
    pub consents: Vec<ConsentRow>,
}

impl std::fmt::Debug for OwnData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnData")
            .field("patient_id", &self.patient_id)
            .field("records", &self.records.len())
            .field("consents", &self.consents.len())
            .finish_non_exhaustive()
    }
}

impl Catalog {
    /// The identity the catalog holds for a patient (names, birth date, address,
    /// identifiers), for the patient or an account acting for them: one sealed row, no records.
    pub async fn own_identity(&self, patient_id: &str) -> Result<PatientIdentity> {
        let sealed = self
            .store
            .patient_identity(patient_id)
            .await?
            .ok_or_else(|| CatalogError::NotFound {
                what: format!("patient {patient_id}"),
                hint: "the patient may have been deleted".into(),
            })?;
        serde_json::from_slice(
            &self
                .vault
                .open(patient_id, &sealed, &patient_aad(patient_id))
                .await?,
        )
        .map_err(|_| CatalogError::internal("a stored identity does not parse"))
    }

    /// Everything the catalog holds about a patient, for the patient: identity, every record
    /// (every category, whatever the consent), where each came from, and the consent history.
    pub async fn own_data(&self, patient_id: &str) -> Result<OwnData> {
        let identity = self.own_identity(patient_id).await?;
        let mut records = Vec::new();
        for (record_id, kind, source, received_at, updated_at, sealed) in
            self.store.own_records(patient_id).await?
        {
            let body = payload::decode(
                &self
                    .vault
                    .open(patient_id, &sealed, &record_aad(&record_id))
                    .await?,
            )?;
            records.push(OwnRecord {
                kind: RecordKind::parse(&kind).unwrap_or(RecordKind::Other),
                record_id,
                source,
                received_at,
                updated_at,
                body,
            });
        }
        Ok(OwnData {
            patient_id: patient_id.to_string(),
            identity,
            records,
            consents: self.store.consent_history(patient_id).await?,
        })
    }
}

/// Whether a record's resource type is a FHIR resource (phenopacket parts are named by their
/// path, such as `Phenopacket.phenotypicFeatures`).
fn is_fhir_type(t: &str) -> bool {
    !t.is_empty() && !t.contains('.') && t.starts_with(|c: char| c.is_ascii_uppercase())
}

/// HL7 v3 sensitivity codes (ActInformationSensitivityPolicy) of the categories a patient can
/// exclude.
fn security_label(c: SensitiveCategory) -> (&'static str, &'static str) {
    match c {
        SensitiveCategory::Hiv => ("HIV", "HIV/AIDS information sensitivity"),
        SensitiveCategory::MentalHealth => ("PSY", "psychiatry disorder information sensitivity"),
        SensitiveCategory::SubstanceUse => ("ETH", "substance abuse information sensitivity"),
        SensitiveCategory::Genetic => ("GDIS", "genetic disease information sensitivity"),
    }
}

/// The code system of Tessera's consent purposes (an URN: no host name to resolve).
pub const PURPOSE_SYSTEM: &str = "urn:tessera:consent-purpose";

/// One consent event as a FHIR R4 Consent. A grant is `active` while it is the patient's
/// latest event for its purpose and `inactive` after; a revocation is an `inactive` opt-out.
pub fn consent_resource(patient_id: &str, row: &ConsentRow, latest: bool) -> Value {
    let grant = row.action == "grant";
    let mut provision = json!({
        "type": if grant { "permit" } else { "deny" },
        "period": {"start": row.valid_from},
        "purpose": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH", "display": "healthcare research"},
            {"system": PURPOSE_SYSTEM, "code": row.purpose},
        ],
    });
    if let Some(until) = &row.valid_until {
        provision["period"]["end"] = json!(until);
    }
    if grant && let Ok(Scope::Excluding(set)) = Scope::parse(&row.scope) {
        provision["provision"] = json!([{
            "type": "deny",
            "securityLabel": set.iter().map(|c| {
                let (code, display) = security_label(*c);
                json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code, "display": display})
            }).collect::<Vec<_>>(),
        }]);
    }
    json!({
        "resourceType": "Consent",
        "id": row.event_id,
        "status": if grant && latest { "active" } else { "inactive" },
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research", "display": "Research"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "57016-8", "display": "Privacy policy acknowledgment Document"}]}],
        "patient": {"reference": format!("Patient/{patient_id}")},
        "dateTime": row.recorded_at,
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": if grant { "OPTIN" } else { "OPTOUT" }}]},
        "provision": provision,
        "extension": [{"url": "urn:tessera:consent-actor", "valueString": row.actor}],
    })
}

/// The patient as Tessera holds them (identity merged from every source), as a FHIR Patient.
pub fn patient_resource(patient_id: &str, id: &PatientIdentity) -> Value {
    let mut p = json!({
        "resourceType": "Patient",
        "id": patient_id,
        "meta": {"tag": [{"system": "urn:tessera:export", "code": "merged-identity", "display": "Identity as Tessera holds it, merged from the Patient resources received"}]},
    });
    if !id.identifiers.is_empty() {
        p["identifier"] = id
            .identifiers
            .iter()
            .map(|i| {
                let mut v = json!({"system": i.system, "value": i.value});
                if let Some(t) = &i.type_code {
                    v["type"] = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": t}]});
                }
                v
            })
            .collect();
    }
    if id.family_name.is_some() || !id.given_names.is_empty() {
        let mut name = json!({});
        if let Some(f) = &id.family_name {
            name["family"] = json!(f);
        }
        if !id.given_names.is_empty() {
            name["given"] = json!(id.given_names);
        }
        p["name"] = json!([name]);
    }
    if let Some(s) = &id.sex {
        p["gender"] = json!(s);
    }
    if let Some(b) = &id.birth_date {
        p["birthDate"] = json!(b);
    }
    if let Some(d) = &id.deceased_date {
        p["deceasedDateTime"] = json!(d);
    } else if let Some(d) = id.deceased {
        p["deceasedBoolean"] = json!(d);
    }
    if let Some(a) = &id.address {
        let mut addr = json!({});
        if !a.lines.is_empty() {
            addr["line"] = json!(a.lines);
        }
        for (k, v) in [
            ("city", &a.city),
            ("state", &a.state),
            ("postalCode", &a.postal_code),
            ("country", &a.country),
        ] {
            if let Some(v) = v {
                addr[k] = json!(v);
            }
        }
        p["address"] = json!([addr]);
    }
    p
}

/// Everything about a patient as one FHIR R4 Bundle of type `collection`: the Patient as
/// held, every record's original resource byte for byte as received (a phenopacket's parts,
/// which are not FHIR, as `Binary` holding the original JSON), every consent event as a
/// Consent, then `extra` resources the caller adds (survey answers are records already;
/// sharing events come from the patients' pages). Each entry is tagged with its source and
/// arrival time.
pub fn fhir_bundle(d: &OwnData, extra: Vec<Value>, at: DateTime<Utc>) -> Result<Value> {
    let mut entries = vec![json!({"resource": patient_resource(&d.patient_id, &d.identity)})];
    for r in &d.records {
        let raw: Value = serde_json::from_str(r.body.raw.get())
            .map_err(|_| CatalogError::internal("a stored resource does not parse"))?;
        let resource = if is_fhir_type(&r.body.resource_type)
            && raw.get("resourceType").and_then(Value::as_str) == Some(&r.body.resource_type)
        {
            raw
        } else {
            json!({
                "resourceType": "Binary",
                "id": r.record_id,
                "contentType": "application/json",
                "meta": {"tag": [{"system": "urn:tessera:source-path", "code": r.body.resource_type}]},
                "data": base64::engine::general_purpose::STANDARD.encode(r.body.raw.get()),
            })
        };
        let mut tags = BTreeMap::new();
        tags.insert("received", r.received_at.clone());
        if let Some(s) = &r.source {
            tags.insert("source", s.clone());
        }
        entries.push(json!({
            "resource": resource,
            "search": {"mode": "match"},
            "extension": tags.iter().map(|(k, v)| json!({"url": format!("urn:tessera:{k}"), "valueString": v})).collect::<Vec<_>>(),
        }));
    }
    let mut latest: BTreeMap<&str, &str> = BTreeMap::new();
    for c in &d.consents {
        latest.insert(&c.purpose, &c.event_id);
    }
    for c in &d.consents {
        let is_latest = latest.get(c.purpose.as_str()) == Some(&c.event_id.as_str());
        entries.push(json!({"resource": consent_resource(&d.patient_id, c, is_latest)}));
    }
    entries.extend(extra.into_iter().map(|r| json!({"resource": r})));
    Ok(json!({
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "meta": {"tag": [{"system": "urn:tessera:export", "code": "right-of-access", "display": "Everything Tessera holds about this patient"}]},
        "total": entries.len(),
        "entry": entries,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(action: &str, scope: &str, id: &str) -> ConsentRow {
        ConsentRow {
            event_id: id.into(),
            patient_id: "p1".into(),
            purpose: "research.natural_history".into(),
            action: action.into(),
            scope: scope.into(),
            valid_from: "2026-01-01T00:00:00.000000Z".into(),
            valid_until: None,
            recorded_at: "2026-01-01T00:00:00.000000Z".into(),
            seq: 1,
            actor: "patient".into(),
        }
    }

    #[test]
    fn a_scoped_grant_denies_its_sensitive_categories() {
        let c = consent_resource("p1", &row("grant", "exclude:hiv,genetic", "e1"), true);
        assert_eq!(c["status"], "active");
        assert_eq!(c["provision"]["type"], "permit");
        let codes: Vec<&str> = c["provision"]["provision"][0]["securityLabel"]
            .as_array()
            .expect("labels")
            .iter()
            .filter_map(|l| l["code"].as_str())
            .collect();
        assert_eq!(codes, ["HIV", "GDIS"]);
        assert_eq!(
            c["provision"]["purpose"][1]["code"],
            "research.natural_history"
        );
    }

    #[test]
    fn a_revocation_is_an_inactive_opt_out_and_an_old_grant_inactive() {
        let r = consent_resource("p1", &row("revoke", "all", "e2"), true);
        assert_eq!(r["status"], "inactive");
        assert_eq!(r["policyRule"]["coding"][0]["code"], "OPTOUT");
        assert_eq!(r["provision"]["type"], "deny");
        let g = consent_resource("p1", &row("grant", "all", "e1"), false);
        assert_eq!(g["status"], "inactive");
        assert!(g["provision"].get("provision").is_none());
    }

    #[test]
    fn fhir_types_are_told_from_phenopacket_paths() {
        assert!(is_fhir_type("Observation"));
        assert!(!is_fhir_type("Phenopacket.phenotypicFeatures"));
        assert!(!is_fhir_type(""));
    }
}
