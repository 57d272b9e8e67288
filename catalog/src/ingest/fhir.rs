//! Extraction of the normalized summary from FHIR R4 resources.

use serde_json::{Map, Value as Json};

use super::dates;
use super::problem::{Problem, Reason};
use crate::model::{
    Address, Answer, Clinical, Code, Component, Identifier, PatientIdentity, Value,
};

/// Every FHIR R4 resource type. A `resourceType` outside this list is quarantined.
pub const R4_RESOURCE_TYPES: &[&str] = &[
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

/// Resource types that describe one patient's care and so must name their patient.
const PATIENT_BOUND: &[&str] = &[
    "AllergyIntolerance",
    "CarePlan",
    "CareTeam",
    "Claim",
    "Condition",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Goal",
    "ImagingStudy",
    "Immunization",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationRequest",
    "MedicationStatement",
    "Observation",
    "Procedure",
    "QuestionnaireResponse",
];

/// Fields that may hold the patient reference, in the order they are tried.
const PATIENT_FIELDS: &[&str] = &["subject", "patient", "beneficiary", "individual", "source"];

/// What one resource yields.
#[derive(Debug)]
pub enum Extracted {
    Patient(PatientIdentity),
    Record {
        clinical: Clinical,
        /// The field and reference string naming the patient, when there is one.
        patient_ref: Option<(&'static str, String)>,
        encounter_ref: Option<String>,
    },
}

/// Context for error messages: which entry, and the JSON path of the resource.
#[derive(Debug)]
pub struct At<'a> {
    pub entry: Option<usize>,
    pub path: &'a str,
    /// Today as `YYYY-MM-DD`, for birth dates in the future.
    pub today: &'a str,
}

impl At<'_> {
    fn field(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn problem(&self, name: &str, reason: Reason, message: impl Into<String>) -> Problem {
        Problem::at(self.entry, self.field(name), reason, message)
    }
}

fn s<'a>(o: &'a Map<String, Json>, k: &str) -> Option<&'a str> {
    o.get(k).and_then(Json::as_str).filter(|v| !v.is_empty())
}

fn coding(c: &Json) -> Option<Code> {
    let o = c.as_object()?;
    Some(Code {
        system: s(o, "system").unwrap_or_default().to_string(),
        code: s(o, "code")?.to_string(),
        display: s(o, "display").map(str::to_string),
    })
}

/// The first coding of a CodeableConcept, or its text alone.
fn concept(c: Option<&Json>) -> Option<Code> {
    let o = c?.as_object()?;
    if let Some(code) = o
        .get("coding")
        .and_then(Json::as_array)
        .and_then(|cs| cs.iter().find_map(coding))
    {
        return Some(Code {
            display: code.display.or_else(|| s(o, "text").map(str::to_string)),
            ..code
        });
    }
    s(o, "text").map(|t| Code {
        system: String::new(),
        code: String::new(),
        display: Some(t.to_string()),
    })
}

fn first_concept(c: Option<&Json>) -> Option<Code> {
    match c? {
        Json::Array(items) => items.iter().find_map(|i| concept(Some(i))),
        other => concept(Some(other)),
    }
}

/// Checks a date-valued field; returns it when present and valid.
fn date_field(o: &Map<String, Json>, at: &At, name: &str) -> Result<Option<String>, Problem> {
    match o.get(name) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(v)) if dates::is_date_time(v) => Ok(Some(v.clone())),
        Some(Json::String(_)) => Err(at.problem(
            name,
            Reason::InvalidDate,
            "not a valid FHIR date or dateTime (YYYY, YYYY-MM, YYYY-MM-DD or a full timestamp with zone, on a real calendar day)",
        )),
        Some(_) => Err(at.problem(name, Reason::InvalidValue, "must be a string holding a date")),
    }
}

/// A `Period`'s start (and end), validated.
fn period(
    o: &Map<String, Json>,
    at: &At,
    name: &str,
) -> Result<(Option<String>, Option<String>), Problem> {
    let Some(p) = o.get(name) else {
        return Ok((None, None));
    };
    let Some(po) = p.as_object() else {
        return Err(at.problem(name, Reason::InvalidValue, "must be a Period object"));
    };
    let sub = At {
        entry: at.entry,
        path: &at.field(name),
        today: at.today,
    };
    Ok((date_field(po, &sub, "start")?, date_field(po, &sub, "end")?))
}

/// `fooDateTime`, else `fooPeriod.start`, else `fooString`/`fooAge` kept aside.
fn choice_date(o: &Map<String, Json>, at: &At, stem: &str) -> Result<Option<String>, Problem> {
    if let Some(d) = date_field(o, at, &format!("{stem}DateTime"))? {
        return Ok(Some(d));
    }
    if let Some(d) = date_field(o, at, &format!("{stem}Instant"))? {
        return Ok(Some(d));
    }
    Ok(period(o, at, &format!("{stem}Period"))?.0)
}

fn value_x(o: &Map<String, Json>, at: &At) -> Result<Option<Value>, Problem> {
    if let Some(q) = o.get("valueQuantity").and_then(Json::as_object) {
        return match q.get("value").and_then(Json::as_f64) {
            Some(value) => Ok(Some(Value::Quantity {
                value,
                unit: s(q, "unit").or_else(|| s(q, "code")).map(str::to_string),
            })),
            None if q.contains_key("value") => Err(at.problem(
                "valueQuantity.value",
                Reason::InvalidValue,
                "must be a number",
            )),
            None => Ok(None),
        };
    }
    if let Some(c) = concept(o.get("valueCodeableConcept")) {
        return Ok(Some(Value::Coded { code: c }));
    }
    if let Some(c) = o.get("valueCoding").and_then(coding) {
        return Ok(Some(Value::Coded { code: c }));
    }
    if let Some(t) = s(o, "valueString") {
        return Ok(Some(Value::Text {
            text: t.to_string(),
        }));
    }
    if let Some(b) = o.get("valueBoolean").and_then(Json::as_bool) {
        return Ok(Some(Value::Boolean { value: b }));
    }
    if let Some(i) = o.get("valueInteger").and_then(Json::as_i64) {
        return Ok(Some(Value::Integer { value: i }));
    }
    if let Some(d) = o.get("valueDecimal").and_then(Json::as_f64) {
        return Ok(Some(Value::Quantity {
            value: d,
            unit: None,
        }));
    }
    for name in ["valueDate", "valueDateTime"] {
        if let Some(d) = date_field(o, at, name)? {
            return Ok(Some(Value::Date { date: d }));
        }
    }
    Ok(None)
}

fn reference(o: &Map<String, Json>, field: &str) -> Option<String> {
    let r = o.get(field)?;
    let r = match r {
        Json::Array(items) => items.first()?,
        other => other,
    };
    r.as_object()
        .and_then(|ro| s(ro, "reference"))
        .map(str::to_string)
}

fn identity(o: &Map<String, Json>, at: &At) -> Result<PatientIdentity, Problem> {
    let mut id = PatientIdentity::default();
    if let Some(ids) = o.get("identifier") {
        let Some(ids) = ids.as_array() else {
            return Err(at.problem(
                "identifier",
                Reason::InvalidValue,
                "must be an array of Identifier",
            ));
        };
        for (i, ident) in ids.iter().enumerate() {
            let Some(io) = ident.as_object() else {
                return Err(at.problem(
                    &format!("identifier[{i}]"),
                    Reason::InvalidValue,
                    "must be an Identifier object",
                ));
            };
            if let Some(value) = s(io, "value") {
                id.identifiers.push(Identifier {
                    system: s(io, "system").unwrap_or_default().to_string(),
                    value: value.to_string(),
                    type_code: io
                        .get("type")
                        .and_then(|t| concept(Some(t)))
                        .map(|c| c.code)
                        .filter(|c| !c.is_empty()),
                });
            }
        }
    }
    if let Some(names) = o.get("name").and_then(Json::as_array) {
        let chosen = names
            .iter()
            .filter_map(Json::as_object)
            .find(|n| s(n, "use") == Some("official"))
            .or_else(|| names.iter().find_map(Json::as_object));
        if let Some(n) = chosen {
            id.family_name = s(n, "family").map(str::to_string);
            id.given_names = n
                .get("given")
                .and_then(Json::as_array)
                .map(|g| {
                    g.iter()
                        .filter_map(Json::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
        }
    }
    match o.get("birthDate") {
        None | Some(Json::Null) => {}
        Some(Json::String(b)) if dates::is_date(b) && dates::is_past_date(b, at.today) => {
            id.birth_date = Some(b.clone());
        }
        Some(_) => {
            return Err(at.problem(
                "birthDate",
                Reason::InvalidDate,
                "not a possible birth date (YYYY, YYYY-MM or YYYY-MM-DD on a real calendar day, not in the future)",
            ));
        }
    }
    id.sex = s(o, "gender").map(str::to_string);
    if let Some(addr) = o
        .get("address")
        .and_then(Json::as_array)
        .and_then(|a| a.iter().find_map(Json::as_object))
    {
        id.address = Some(Address {
            lines: addr
                .get("line")
                .and_then(Json::as_array)
                .map(|l| {
                    l.iter()
                        .filter_map(Json::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            city: s(addr, "city").map(str::to_string),
            state: s(addr, "state").map(str::to_string),
            postal_code: s(addr, "postalCode").map(str::to_string),
            country: s(addr, "country").map(str::to_string),
        });
    }
    if let Some(exts) = o.get("extension").and_then(Json::as_array) {
        for ext in exts.iter().filter_map(Json::as_object) {
            let url = s(ext, "url").unwrap_or_default();
            let text = || {
                ext.get("extension")
                    .and_then(Json::as_array)
                    .and_then(|subs| {
                        let subs: Vec<_> = subs.iter().filter_map(Json::as_object).collect();
                        subs.iter()
                            .find(|x| s(x, "url") == Some("text"))
                            .and_then(|x| s(x, "valueString"))
                            .or_else(|| {
                                subs.iter()
                                    .find(|x| s(x, "url") == Some("ombCategory"))
                                    .and_then(|x| x.get("valueCoding"))
                                    .and_then(Json::as_object)
                                    .and_then(|c| s(c, "display"))
                            })
                            .map(str::to_string)
                    })
            };
            if url.ends_with("us-core-race") {
                id.race = text();
            } else if url.ends_with("us-core-ethnicity") {
                id.ethnicity = text();
            }
        }
    }
    if let Some(b) = o.get("deceasedBoolean").and_then(Json::as_bool) {
        id.deceased = Some(b);
    }
    if let Some(d) = date_field(o, at, "deceasedDateTime")? {
        if !dates::is_past_date(&d, at.today) {
            return Err(at.problem(
                "deceasedDateTime",
                Reason::InvalidDate,
                "a date of death cannot be in the future",
            ));
        }
        id.deceased = Some(true);
        id.deceased_date = Some(d);
    }
    Ok(id)
}

fn answers(items: Option<&Json>, at: &At, out: &mut Vec<Answer>) -> Result<(), Problem> {
    let Some(items) = items.and_then(Json::as_array) else {
        return Ok(());
    };
    for item in items.iter().filter_map(Json::as_object) {
        let Some(link_id) = s(item, "linkId") else {
            return Err(at.problem(
                "item.linkId",
                Reason::MissingField,
                "every QuestionnaireResponse item needs a linkId",
            ));
        };
        let mut values = Vec::new();
        for ans in item
            .get("answer")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(ao) = ans.as_object() {
                if let Some(v) = value_x(ao, at)? {
                    values.push(v);
                }
                answers(ao.get("item"), at, out)?;
            }
        }
        out.push(Answer {
            link_id: link_id.to_string(),
            question: s(item, "text").map(str::to_string),
            values,
        });
        answers(item.get("item"), at, out)?;
    }
    Ok(())
}

/// Extracts the summary content of one FHIR resource (not a Bundle).
pub fn extract(
    resource: &Map<String, Json>,
    resource_type: &str,
    at: &At,
) -> Result<Extracted, Problem> {
    if resource_type == "Patient" {
        return identity(resource, at).map(Extracted::Patient);
    }
    let o = resource;
    let encounter_ref = reference(o, "encounter").or_else(|| reference(o, "context"));
    let clinical = match resource_type {
        "Condition" => Clinical::Condition {
            code: concept(o.get("code")),
            onset: choice_date(o, at, "onset")?,
            onset_age: o
                .get("onsetAge")
                .and_then(Json::as_object)
                .and_then(|a| a.get("value"))
                .map(|v| format!("{v}"))
                .or_else(|| s(o, "onsetString").map(str::to_string)),
            abatement: choice_date(o, at, "abatement")?,
            clinical_status: concept(o.get("clinicalStatus")).map(|c| c.code),
            recorded: date_field(o, at, "recordedDate")?,
        },
        "Observation" => {
            let mut components = Vec::new();
            for comp in o
                .get("component")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(co) = comp.as_object()
                    && let Some(code) = concept(co.get("code"))
                {
                    components.push(Component {
                        code,
                        value: value_x(co, at)?,
                    });
                }
            }
            Clinical::Observation {
                code: concept(o.get("code")),
                category: first_concept(o.get("category")).map(|c| c.code),
                value: value_x(o, at)?,
                components,
                effective: choice_date(o, at, "effective")?,
            }
        }
        "MedicationRequest"
        | "MedicationStatement"
        | "MedicationAdministration"
        | "MedicationDispense" => {
            let code = concept(o.get("medicationCodeableConcept")).or_else(|| {
                o.get("medicationReference")
                    .and_then(Json::as_object)
                    .and_then(|r| s(r, "display"))
                    .map(|d| Code {
                        system: String::new(),
                        code: String::new(),
                        display: Some(d.to_string()),
                    })
            });
            let authored = match date_field(o, at, "authoredOn")? {
                Some(d) => Some(d),
                None => match choice_date(o, at, "effective")? {
                    Some(d) => Some(d),
                    None => date_field(o, at, "whenHandedOver")?,
                },
            };
            Clinical::Medication {
                code,
                status: s(o, "status").map(str::to_string),
                authored,
            }
        }
        "Procedure" => Clinical::Procedure {
            code: concept(o.get("code")),
            performed: choice_date(o, at, "performed")?,
        },
        "Encounter" => {
            let (start, end) = period(o, at, "period")?;
            Clinical::Encounter {
                class: o
                    .get("class")
                    .and_then(Json::as_object)
                    .and_then(|c| s(c, "code"))
                    .map(str::to_string),
                code: first_concept(o.get("type")),
                start,
                end,
            }
        }
        "QuestionnaireResponse" => {
            let mut out = Vec::new();
            answers(o.get("item"), at, &mut out)?;
            Clinical::SurveyResponse {
                questionnaire: s(o, "questionnaire").map(str::to_string),
                status: s(o, "status").map(str::to_string),
                authored: date_field(o, at, "authored")?,
                answers: out,
            }
        }
        _ => {
            let code = ["code", "vaccineCode", "type", "category"]
                .iter()
                .find_map(|k| first_concept(o.get(*k)));
            let mut date = None;
            for k in [
                "occurrenceDateTime",
                "effectiveDateTime",
                "date",
                "started",
                "created",
                "issued",
                "recordedDate",
            ] {
                if let Some(d) = date_field(o, at, k)? {
                    date = Some(d);
                    break;
                }
            }
            Clinical::Other { code, date }
        }
    };
    let mut patient_ref = None;
    for field in PATIENT_FIELDS {
        if let Some(r) = reference(o, field) {
            // `source` of a QuestionnaireResponse counts only when it is a Patient.
            if *field == "source" && !(r.contains("Patient") || r.starts_with("urn:")) {
                continue;
            }
            // A subject may be a Group or a Location: then it is not a patient record.
            let target_type = r.split(['/', '?']).rev().nth(1).unwrap_or("");
            if r.contains('/')
                && !r.starts_with("urn:")
                && target_type != "Patient"
                && !r.contains("Patient?")
            {
                continue;
            }
            patient_ref = Some((*field, r));
            break;
        }
    }
    if patient_ref.is_none() {
        if PATIENT_BOUND.contains(&resource_type) {
            return Err(at.problem(
                "subject",
                Reason::MissingField,
                format!("a {resource_type} must reference its patient (subject or patient); add the reference and ingest again"),
            ));
        }
        let display = s(o, "name").map(str::to_string);
        return Ok(Extracted::Record {
            clinical: Clinical::Reference { display },
            patient_ref: None,
            encounter_ref: None,
        });
    }
    Ok(Extracted::Record {
        clinical,
        patient_ref,
        encounter_ref,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(v: Json) -> Result<Extracted, Problem> {
        let o = v.as_object().expect("object").clone();
        let rt = o["resourceType"].as_str().expect("type").to_string();
        extract(
            &o,
            &rt,
            &At {
                entry: Some(3),
                path: "entry[3].resource",
                today: "2026-11-23",
            },
        )
    }

    #[test]
    fn patient_identity() {
        let Extracted::Patient(p) = run(json!({
            "resourceType": "Patient", "id": "x",
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-61-3984",
                            "type": {"coding": [{"code": "SS"}]}}],
            "name": [{"use": "official", "family": "Atencio", "given": ["Alberto"]}],
            "birthDate": "1993-06-07", "gender": "male",
            "address": [{"line": ["1 Main St"], "postalCode": "02139"}],
            "extension": [{"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                           "extension": [{"url": "text", "valueString": "White"}]}],
            "deceasedDateTime": "2020-01-01T00:00:00Z"
        }))
        .expect("ok") else {
            panic!("not a patient")
        };
        assert_eq!(p.identifiers[0].type_code.as_deref(), Some("SS"));
        assert_eq!(p.family_name.as_deref(), Some("Atencio"));
        assert_eq!(p.race.as_deref(), Some("White"));
        assert_eq!(p.deceased, Some(true));
        assert_eq!(
            p.address.and_then(|a| a.postal_code).as_deref(),
            Some("02139")
        );
    }

    #[test]
    fn impossible_birth_date_names_field_not_value() {
        let err =
            run(json!({"resourceType": "Patient", "birthDate": "1993-02-30"})).expect_err("bad");
        assert_eq!(err.reason, Reason::InvalidDate);
        assert_eq!(err.field, "entry[3].resource.birthDate");
        assert_eq!(err.entry, Some(3));
        assert!(!err.message.contains("1993"));
        let err =
            run(json!({"resourceType": "Patient", "birthDate": "2999-01-01"})).expect_err("future");
        assert_eq!(err.reason, Reason::InvalidDate);
    }

    #[test]
    fn observation_with_components_and_patient_ref() {
        let Extracted::Record { clinical, patient_ref, encounter_ref } = run(json!({
            "resourceType": "Observation",
            "code": {"coding": [{"system": "http://loinc.org", "code": "55284-4", "display": "Blood Pressure"}]},
            "subject": {"reference": "urn:uuid:p1"}, "encounter": {"reference": "urn:uuid:e1"},
            "effectiveDateTime": "2012-02-27T05:28:45+00:00",
            "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                           "valueQuantity": {"value": 120, "unit": "mm[Hg]"}}]
        }))
        .expect("ok") else {
            panic!("not a record")
        };
        assert_eq!(patient_ref, Some(("subject", "urn:uuid:p1".to_string())));
        assert_eq!(encounter_ref.as_deref(), Some("urn:uuid:e1"));
        let Clinical::Observation {
            components,
            effective,
            ..
        } = clinical
        else {
            panic!()
        };
        assert_eq!(components.len(), 1);
        assert!(effective.is_some());
    }

    #[test]
    fn patient_bound_resource_without_subject_is_refused() {
        let err = run(json!({"resourceType": "Condition", "code": {"text": "x"}}))
            .expect_err("no subject");
        assert_eq!(err.reason, Reason::MissingField);
        let ok = run(json!({"resourceType": "Organization", "name": "General Hospital"}))
            .expect("ref data");
        assert!(matches!(
            ok,
            Extracted::Record {
                patient_ref: None,
                ..
            }
        ));
    }

    #[test]
    fn survey_answers_are_flattened() {
        let Extracted::Record { clinical: Clinical::SurveyResponse { answers, status, .. }, .. } = run(json!({
            "resourceType": "QuestionnaireResponse", "status": "completed",
            "subject": {"reference": "Patient/p1"}, "authored": "2026-01-02",
            "item": [{"linkId": "1", "answer": [{"valueInteger": 3}]},
                     {"linkId": "2", "item": [{"linkId": "2.1", "answer": [{"valueBoolean": true}]}]}]
        }))
        .expect("ok") else {
            panic!("not a survey")
        };
        assert_eq!(status.as_deref(), Some("completed"));
        assert_eq!(
            answers
                .iter()
                .map(|a| a.link_id.as_str())
                .collect::<Vec<_>>(),
            ["1", "2", "2.1"]
        );
    }
}
