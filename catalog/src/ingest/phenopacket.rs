//! Extraction of the normalized summary from GA4GH Phenopacket v2 JSON.

use serde_json::{Map, Value as Json};

use super::dates;
use super::problem::{Problem, Reason};
use crate::model::{Clinical, Code, Identifier, PatientIdentity, Value};

/// The identifier system under which a phenopacket's `id` identifies its subject.
pub const PHENOPACKET_ID_SYSTEM: &str = "urn:ga4gh:phenopacket";

/// Whether a JSON object looks like a phenopacket rather than a FHIR resource.
pub fn looks_like(o: &Map<String, Json>) -> bool {
    !o.contains_key("resourceType")
        && (o.contains_key("phenotypicFeatures")
            || o.contains_key("metaData")
            || o.contains_key("interpretations"))
}

/// One element of a phenopacket that becomes a record.
#[derive(Debug)]
pub struct Element<'a> {
    /// e.g. `phenotypicFeatures[2]`.
    pub path: String,
    /// The source type recorded for it, e.g. `Phenopacket.phenotypicFeature`.
    pub resource_type: &'static str,
    pub clinical: Clinical,
    pub raw: &'a Json,
}

#[derive(Debug)]
pub struct Extracted<'a> {
    pub id: String,
    pub identity: PatientIdentity,
    pub elements: Vec<Element<'a>>,
}

fn s<'a>(o: &'a Map<String, Json>, k: &str) -> Option<&'a str> {
    o.get(k).and_then(Json::as_str).filter(|v| !v.is_empty())
}

fn term(v: Option<&Json>) -> Option<Code> {
    let o = v?.as_object()?;
    let id = s(o, "id")?;
    let (system, code) = id.split_once(':').unwrap_or(("", id));
    Some(Code {
        system: system.to_string(),
        code: code.to_string(),
        display: s(o, "label").map(str::to_string),
    })
}

/// A phenopacket `TimeElement`: an ISO age, an ontology class (onset class), or a timestamp.
fn time_element(
    v: Option<&Json>,
    field: &str,
    entry: Option<usize>,
) -> Result<(Option<String>, Option<String>), Problem> {
    let Some(o) = v.and_then(Json::as_object) else {
        return Ok((None, None));
    };
    if let Some(age) = o
        .get("age")
        .and_then(Json::as_object)
        .and_then(|a| s(a, "iso8601duration"))
    {
        if !dates::is_iso_duration(age) {
            return Err(Problem::at(
                entry,
                format!("{field}.age.iso8601duration"),
                Reason::InvalidDate,
                "not an ISO 8601 duration such as P6M or P8Y1M",
            ));
        }
        return Ok((None, Some(age.to_string())));
    }
    if let Some(ts) = s(o, "timestamp") {
        if !dates::is_date_time(ts) {
            return Err(Problem::at(
                entry,
                format!("{field}.timestamp"),
                Reason::InvalidDate,
                "not a valid timestamp",
            ));
        }
        return Ok((Some(ts.to_string()), None));
    }
    if let Some(label) = o.get("ontologyClass").and_then(|c| term(Some(c))) {
        return Ok((None, label.display.or(Some(label.code))));
    }
    Ok((None, None))
}

fn array<'a>(o: &'a Map<String, Json>, k: &str) -> Result<&'a [Json], Problem> {
    match o.get(k) {
        None | Some(Json::Null) => Ok(&[]),
        Some(Json::Array(a)) => Ok(a),
        Some(_) => Err(Problem::at(
            None,
            k,
            Reason::InvalidValue,
            "must be an array",
        )),
    }
}

/// Extracts identity and records from one phenopacket.
pub fn extract<'a>(o: &'a Map<String, Json>, today: &str) -> Result<Extracted<'a>, Problem> {
    let id = s(o, "id")
        .ok_or_else(|| {
            Problem::at(
                None,
                "id",
                Reason::MissingField,
                "a phenopacket needs an id",
            )
        })?
        .to_string();
    let subject = o.get("subject").and_then(Json::as_object).ok_or_else(|| {
        Problem::at(
            None,
            "subject",
            Reason::MissingField,
            "a phenopacket needs a subject",
        )
    })?;
    let mut identity = PatientIdentity {
        identifiers: vec![Identifier {
            system: PHENOPACKET_ID_SYSTEM.to_string(),
            value: id.clone(),
            type_code: None,
        }],
        ..Default::default()
    };
    identity.sex = s(subject, "sex").map(|x| match x {
        "MALE" => "male".to_string(),
        "FEMALE" => "female".to_string(),
        "OTHER_SEX" => "other".to_string(),
        _ => "unknown".to_string(),
    });
    if let Some(dob) = s(subject, "dateOfBirth") {
        if !dates::is_past_date(dob, today) {
            return Err(Problem::at(
                None,
                "subject.dateOfBirth",
                Reason::InvalidDate,
                "not a possible date of birth (a real calendar day, not in the future)",
            ));
        }
        identity.birth_date = Some(dob.get(..10).unwrap_or(dob).to_string());
    }
    identity.age_at_last_encounter = time_element(
        subject.get("timeAtLastEncounter"),
        "subject.timeAtLastEncounter",
        None,
    )?
    .1;
    if let Some(vs) = subject.get("vitalStatus").and_then(Json::as_object)
        && s(vs, "status") == Some("DECEASED")
    {
        identity.deceased = Some(true);
    }

    let mut elements = Vec::new();
    for (i, f) in array(o, "phenotypicFeatures")?.iter().enumerate() {
        let path = format!("phenotypicFeatures[{i}]");
        let fo = f.as_object();
        let Some(code) = fo.and_then(|fo| term(fo.get("type"))) else {
            return Err(Problem::at(
                Some(i),
                format!("{path}.type"),
                Reason::MissingField,
                "a phenotypic feature needs a type with an HPO id",
            ));
        };
        let (ts, age) = time_element(
            fo.and_then(|fo| fo.get("onset")),
            &format!("{path}.onset"),
            Some(i),
        )?;
        elements.push(Element {
            clinical: Clinical::Phenotype {
                code,
                excluded: fo
                    .and_then(|fo| fo.get("excluded"))
                    .and_then(Json::as_bool)
                    .unwrap_or(false),
                onset: ts.or(age),
            },
            path,
            resource_type: "Phenopacket.phenotypicFeature",
            raw: f,
        });
    }
    for (i, d) in array(o, "diseases")?.iter().enumerate() {
        let path = format!("diseases[{i}]");
        let dobj = d.as_object();
        let Some(code) = dobj.and_then(|x| term(x.get("term"))) else {
            return Err(Problem::at(
                Some(i),
                format!("{path}.term"),
                Reason::MissingField,
                "a disease needs a term",
            ));
        };
        let (onset, onset_age) = time_element(
            dobj.and_then(|x| x.get("onset")),
            &format!("{path}.onset"),
            Some(i),
        )?;
        elements.push(Element {
            clinical: Clinical::Condition {
                code: Some(code),
                onset,
                onset_age,
                abatement: None,
                clinical_status: dobj
                    .and_then(|x| x.get("excluded"))
                    .and_then(Json::as_bool)
                    .map(|e| if e { "excluded" } else { "present" }.to_string()),
                recorded: None,
            },
            path,
            resource_type: "Phenopacket.disease",
            raw: d,
        });
    }
    for (i, interp) in array(o, "interpretations")?.iter().enumerate() {
        let gis = interp
            .pointer("/diagnosis/genomicInterpretations")
            .and_then(Json::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (j, gi) in gis.iter().enumerate() {
            let Some(vd) = gi
                .pointer("/variantInterpretation/variationDescriptor")
                .and_then(Json::as_object)
            else {
                continue;
            };
            let hgvs = vd
                .get("expressions")
                .and_then(Json::as_array)
                .map(|es| {
                    es.iter()
                        .filter_map(Json::as_object)
                        .filter(|e| s(e, "syntax").is_some_and(|x| x.starts_with("hgvs")))
                        .filter_map(|e| s(e, "value").map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let vcf = vd.get("vcfRecord").and_then(Json::as_object).map(|v| {
                format!(
                    "{}:{}:{}:{}",
                    s(v, "chrom").unwrap_or(""),
                    v.get("pos")
                        .map(|p| p
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| p.to_string()))
                        .unwrap_or_default(),
                    s(v, "ref").unwrap_or(""),
                    s(v, "alt").unwrap_or("")
                )
            });
            elements.push(Element {
                clinical: Clinical::Variant {
                    gene: vd
                        .get("geneContext")
                        .and_then(Json::as_object)
                        .and_then(|g| s(g, "symbol"))
                        .map(str::to_string),
                    hgvs,
                    zygosity: vd
                        .get("allelicState")
                        .and_then(|a| term(Some(a)))
                        .and_then(|c| c.display),
                    vcf,
                    interpretation_status: gi
                        .get("interpretationStatus")
                        .and_then(Json::as_str)
                        .map(str::to_string),
                },
                path: format!("interpretations[{i}].diagnosis.genomicInterpretations[{j}]"),
                resource_type: "Phenopacket.variant",
                raw: gi,
            });
        }
    }
    for (i, m) in array(o, "measurements")?.iter().enumerate() {
        let mo = m.as_object();
        let value = m
            .pointer("/value/quantity")
            .and_then(Json::as_object)
            .and_then(|q| {
                Some(Value::Quantity {
                    value: q.get("value")?.as_f64()?,
                    unit: q
                        .get("unit")
                        .and_then(|u| term(Some(u)))
                        .and_then(|u| u.display.or(Some(u.code))),
                })
            })
            .or_else(|| {
                m.pointer("/value/ontologyClass")
                    .and_then(|c| term(Some(c)))
                    .map(|code| Value::Coded { code })
            });
        let path = format!("measurements[{i}]");
        let (effective, _) = time_element(
            mo.and_then(|x| x.get("timeObserved")),
            &format!("{path}.timeObserved"),
            Some(i),
        )?;
        elements.push(Element {
            clinical: Clinical::Observation {
                code: mo.and_then(|x| term(x.get("assay"))),
                category: Some("measurement".into()),
                value,
                components: vec![],
                effective,
            },
            path,
            resource_type: "Phenopacket.measurement",
            raw: m,
        });
    }
    Ok(Extracted {
        id,
        identity,
        elements,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extracts_features_diseases_variants() {
        let pp = json!({
            "id": "PMID_1_Patient_1",
            "subject": {"id": "Patient 1", "sex": "FEMALE", "timeAtLastEncounter": {"age": {"iso8601duration": "P8Y1M"}}},
            "phenotypicFeatures": [
                {"type": {"id": "HP:0001250", "label": "Seizure"}, "onset": {"age": {"iso8601duration": "P6M"}}},
                {"type": {"id": "HP:0001263", "label": "Global developmental delay"}, "excluded": true}
            ],
            "diseases": [{"term": {"id": "OMIM:612164", "label": "DEE4"}}],
            "interpretations": [{"diagnosis": {"genomicInterpretations": [{
                "interpretationStatus": "PATHOGENIC",
                "variantInterpretation": {"variationDescriptor": {
                    "geneContext": {"symbol": "STXBP1"},
                    "expressions": [{"syntax": "hgvs.c", "value": "NM_003165.6:c.1439C>T"}],
                    "vcfRecord": {"chrom": "chr9", "pos": "127674512", "ref": "C", "alt": "T"},
                    "allelicState": {"id": "GENO:0000135", "label": "heterozygous"}}}}]}}],
            "metaData": {}
        });
        let o = pp.as_object().expect("object");
        assert!(looks_like(o));
        let x = extract(o, "2026-11-23").expect("ok");
        assert_eq!(x.identity.sex.as_deref(), Some("female"));
        assert_eq!(x.identity.age_at_last_encounter.as_deref(), Some("P8Y1M"));
        assert_eq!(x.elements.len(), 4);
        let Clinical::Variant {
            gene,
            zygosity,
            vcf,
            ..
        } = &x.elements[3].clinical
        else {
            panic!()
        };
        assert_eq!(gene.as_deref(), Some("STXBP1"));
        assert_eq!(zygosity.as_deref(), Some("heterozygous"));
        assert_eq!(vcf.as_deref(), Some("chr9:127674512:C:T"));
    }

    #[test]
    fn bad_age_is_an_invalid_date_at_its_path() {
        let pp = json!({"id": "x", "subject": {"id": "s"},
            "phenotypicFeatures": [{"type": {"id": "HP:1"}, "onset": {"age": {"iso8601duration": "6 months"}}}]});
        let err = extract(pp.as_object().expect("o"), "2026-11-23").expect_err("bad");
        assert_eq!(err.reason, Reason::InvalidDate);
        assert_eq!(err.field, "phenotypicFeatures[0].onset.age.iso8601duration");
    }
}
