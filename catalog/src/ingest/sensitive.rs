//! Classification of records into the sensitive categories a patient may exclude from consent
//! (HIV, mental health, substance use, genetic).
//!
//! The rules are code lists plus display-text keywords. They err towards flagging: a record wrongly
//! flagged is withheld from a patient who excluded that category, which is the safe direction.
//! Sources: ICD-10-CM chapters (B20-B24, Z21 HIV; F01-F99 mental and behavioural, of which
//! F10-F19 substance use), SNOMED CT concepts Synthea emits for these conditions, and the LOINC
//! screening instruments (PHQ, GAD-7, AUDIT-C, DAST-10).

use crate::model::{Clinical, Code, SensitiveCategory};

const HIV_SNOMED: &[&str] = &["86406008", "165816005", "62479008", "91947003", "40780007"];
const MENTAL_SNOMED: &[&str] = &[
    "35489007",  // depressive disorder
    "370143000", // major depressive disorder
    "36923009",  // major depression, single episode
    "197480006", // anxiety disorder
    "58214004",  // schizophrenia
    "13746004",  // bipolar disorder
    "47505003",  // post-traumatic stress disorder
    "192127007", // child attention deficit disorder
    "706893006", // victim of intimate partner abuse
    "73595000",  // stress
];
const SUBSTANCE_SNOMED: &[&str] = &[
    "7200002",           // alcoholism
    "55680006",          // drug overdose
    "6525002",           // dependent drug abuse
    "5602001",           // opioid abuse
    "361055000",         // misuses drugs
    "10939881000119105", // unhealthy alcohol drinking behavior
];
const MENTAL_LOINC: &[&str] = &[
    "44249-1", "44261-6", "55757-9", "55758-7", "69737-5", "70274-6", "89204-2",
];
const SUBSTANCE_LOINC: &[&str] = &["72109-2", "75626-2", "82666-9", "82667-7", "68517-2"];

const HIV_WORDS: &[&str] = &[
    "hiv",
    "human immunodeficiency virus",
    "aids-related",
    "acquired immunodeficiency",
];
const MENTAL_WORDS: &[&str] = &[
    "depress",
    "anxiety",
    "schizophren",
    "bipolar",
    "psychos",
    "psychot",
    "suicid",
    "post-traumatic stress",
    "mental",
    "attention deficit",
    "eating disorder",
    "anorexia nervosa",
    "bulimia",
];
const SUBSTANCE_WORDS: &[&str] = &[
    "alcoholism",
    "alcohol abuse",
    "alcohol use disorder",
    "drug abuse",
    "drug overdose",
    "opioid abuse",
    "opioid use disorder",
    "substance",
    "drug dependence",
    "naloxone",
    "buprenorphine",
    "methadone",
];

fn is_system(code: &Code, needle: &str) -> bool {
    code.system.to_ascii_lowercase().contains(needle)
}

fn icd10_category(code: &str) -> Option<SensitiveCategory> {
    let c = code.trim().to_ascii_uppercase();
    let letter = c.chars().next()?;
    let num: u32 = c.get(1..3)?.parse().ok()?;
    match letter {
        'B' if (20..=24).contains(&num) => Some(SensitiveCategory::Hiv),
        'Z' if num == 21 => Some(SensitiveCategory::Hiv),
        'F' if (10..=19).contains(&num) => Some(SensitiveCategory::SubstanceUse),
        'F' => Some(SensitiveCategory::MentalHealth),
        _ => None,
    }
}

fn word_match(text: &str, words: &[&str]) -> bool {
    let lower = text.to_ascii_lowercase();
    words.iter().any(|w| {
        // "hiv" must be a whole word ("archive" is not HIV).
        if w.len() <= 4 {
            lower
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|tok| tok == *w)
        } else {
            lower.contains(w)
        }
    })
}

fn classify_code(code: &Code, out: &mut Vec<SensitiveCategory>) {
    let c = code.code.as_str();
    if is_system(code, "snomed") {
        if HIV_SNOMED.contains(&c) {
            out.push(SensitiveCategory::Hiv);
        }
        if MENTAL_SNOMED.contains(&c) {
            out.push(SensitiveCategory::MentalHealth);
        }
        if SUBSTANCE_SNOMED.contains(&c) {
            out.push(SensitiveCategory::SubstanceUse);
        }
    } else if is_system(code, "icd-10") || is_system(code, "icd10") {
        out.extend(icd10_category(c));
    } else if is_system(code, "loinc") {
        if MENTAL_LOINC.contains(&c) {
            out.push(SensitiveCategory::MentalHealth);
        }
        if SUBSTANCE_LOINC.contains(&c) {
            out.push(SensitiveCategory::SubstanceUse);
        }
    }
    if let Some(text) = &code.display {
        if word_match(text, HIV_WORDS) {
            out.push(SensitiveCategory::Hiv);
        }
        if word_match(text, MENTAL_WORDS) {
            out.push(SensitiveCategory::MentalHealth);
        }
        if word_match(text, SUBSTANCE_WORDS) {
            out.push(SensitiveCategory::SubstanceUse);
        }
    }
}

/// The sensitive categories of a record, sorted and without repeats.
pub fn classify(clinical: &Clinical, resource_type: &str) -> Vec<SensitiveCategory> {
    let mut out = Vec::new();
    match clinical {
        Clinical::Variant { .. } => out.push(SensitiveCategory::Genetic),
        Clinical::Observation { components, .. } => {
            for comp in components {
                classify_code(&comp.code, &mut out);
            }
        }
        _ => {}
    }
    if resource_type == "MolecularSequence" {
        out.push(SensitiveCategory::Genetic);
    }
    if let Some(code) = clinical.code() {
        classify_code(code, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(system: &str, code: &str, display: &str) -> Clinical {
        Clinical::Condition {
            code: Some(Code {
                system: system.into(),
                code: code.into(),
                display: Some(display.into()),
            }),
            onset: None,
            onset_age: None,
            abatement: None,
            clinical_status: None,
            recorded: None,
        }
    }

    #[test]
    fn classifies_by_code_and_text() {
        use SensitiveCategory::*;
        let sct = "http://snomed.info/sct";
        let icd = "http://hl7.org/fhir/sid/icd-10-cm";
        assert_eq!(
            classify(&cond(sct, "86406008", "HIV disease"), "Condition"),
            vec![Hiv]
        );
        assert_eq!(
            classify(&cond(sct, "7200002", "Alcoholism"), "Condition"),
            vec![SubstanceUse]
        );
        assert_eq!(
            classify(&cond(icd, "F32.9", "x"), "Condition"),
            vec![MentalHealth]
        );
        assert_eq!(
            classify(&cond(icd, "F11.20", "x"), "Condition"),
            vec![SubstanceUse]
        );
        assert_eq!(classify(&cond(icd, "B20", "x"), "Condition"), vec![Hiv]);
        assert_eq!(
            classify(&cond(sct, "1", "Major depression disorder"), "Condition"),
            vec![MentalHealth]
        );
        assert!(classify(&cond(sct, "84757009", "Epilepsy"), "Condition").is_empty());
        assert!(classify(&cond(sct, "1", "Archive of shivers"), "Condition").is_empty());
        let variant = Clinical::Variant {
            gene: None,
            hgvs: vec![],
            zygosity: None,
            vcf: None,
            interpretation_status: None,
        };
        assert_eq!(classify(&variant, "Phenopacket.variant"), vec![Genetic]);
    }
}
