//! A corpus of broken inputs, made here from real files, is quarantined with reasons that name
//! the file, the entry and the field, while the good files and entries of the same batch go in.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::support::{Tessera, json_files, read_json, synthea_dir, synthea_small};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(v).expect("json")
}

/// Index of the first entry of a type in a bundle.
fn first_of(bundle: &Value, rt: &str) -> usize {
    bundle["entry"]
        .as_array()
        .and_then(|es| es.iter().position(|e| e["resource"]["resourceType"] == rt))
        .expect("entry of type")
}

#[test]
fn broken_inputs_are_quarantined_and_the_rest_goes_in() {
    let t = Tessera::new();
    t.expect(&["init"], 0);
    let input = t.dir.path().join("batch");
    std::fs::create_dir(&input).expect("mkdir");
    let small = json_files(synthea_small());
    let bundle = |i: usize| read_json(&small[i]);
    let raw = |i: usize| std::fs::read(&small[i]).expect("read");

    // Good files, one with a UTF-8 byte-order mark.
    write(&input, "a-good.json", &raw(0));
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(&raw(1));
    write(&input, "b-bom.json", &bom);
    // Truncated and corrupted JSON.
    let c = raw(2);
    write(&input, "c-truncated.json", &c[..c.len() * 6 / 10]);
    let mut d = raw(3);
    let mid = d.len() / 2;
    d.splice(
        mid..mid + 16,
        b"\x00<<garbage>>\x00\x00\x00".iter().copied(),
    );
    write(&input, "d-corrupted.json", &d);
    // A renamed resource type in one entry: that entry out, the rest of the bundle in.
    let mut e = bundle(4);
    let obs = first_of(&e, "Observation");
    e["entry"][obs]["resource"]["resourceType"] = json!("Observashun");
    write(&input, "e-renamed-type.json", &json_bytes(&e));
    // An impossible date on a condition: that entry out.
    let mut f = bundle(5);
    let cond = first_of(&f, "Condition");
    f["entry"][cond]["resource"]["onsetDateTime"] = json!("2019-13-45T10:00:00+00:00");
    write(&input, "f-bad-onset.json", &json_bytes(&f));
    // An impossible birth date: the patient out, and every entry that depends on it.
    let mut g = bundle(6);
    g["entry"][0]["resource"]["birthDate"] = json!("1985-02-30");
    let g_entries = g["entry"].as_array().map(Vec::len).expect("entries");
    write(&input, "g-bad-birthdate.json", &json_bytes(&g));
    // An entry whose patient reference points at nothing.
    let mut h = bundle(7);
    let obs_h = first_of(&h, "Observation");
    h["entry"][obs_h]["resource"]["subject"]["reference"] =
        json!("urn:uuid:00000000-0000-0000-0000-000000000000");
    write(&input, "h-dangling.json", &json_bytes(&h));
    // A resource without an id; a file in UTF-16; an empty file; JSON that is not FHIR.
    write(
        &input,
        "i-no-id.json",
        br#"{"resourceType": "Condition", "subject": {"reference": "Patient/x"}}"#,
    );
    let utf16: Vec<u8> = std::iter::once([0xFFu8, 0xFE])
        .chain(
            r#"{"resourceType":"Patient","id":"u"}"#
                .encode_utf16()
                .map(u16::to_le_bytes),
        )
        .flatten()
        .collect();
    write(&input, "j-utf16.json", &utf16);
    write(&input, "k-empty.json", b"");
    write(&input, "l-not-fhir.json", br#"{"hello": "world"}"#);
    // An oversize file: a real bundle larger than the limit given below.
    let big = json_files(synthea_dir())
        .into_iter()
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.len() > 2_000_000)
                .unwrap_or(false)
        })
        .expect("a bundle over 2 MB");
    std::fs::copy(&big, input.join("m-oversize.json")).expect("copy");

    let report = t.ingest_json(&[&input], &["--max-file-bytes", "1500000"], 3);
    let q = report["quarantined"].as_array().expect("quarantined");
    let name = |v: &Value| {
        Path::new(v["file"].as_str().expect("file"))
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string()
    };
    let seen: BTreeSet<(String, Option<u64>, String, String)> = q
        .iter()
        .map(|v| {
            (
                name(v),
                v["entry"].as_u64(),
                v["field"].as_str().unwrap_or("").to_string(),
                v["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want = |file: &str, entry: Option<usize>, field: &str, reason: &str| {
        let key = (
            file.to_string(),
            entry.map(|e| e as u64),
            field.to_string(),
            reason.to_string(),
        );
        assert!(seen.contains(&key), "missing {key:?} in {seen:#?}");
    };
    want("c-truncated.json", None, "", "invalid_json");
    want("d-corrupted.json", None, "", "invalid_json");
    want(
        "e-renamed-type.json",
        Some(obs),
        &format!("entry[{obs}].resource.resourceType"),
        "wrong_resource_type",
    );
    want(
        "f-bad-onset.json",
        Some(cond),
        &format!("entry[{cond}].resource.onsetDateTime"),
        "invalid_date",
    );
    want(
        "g-bad-birthdate.json",
        Some(0),
        "entry[0].resource.birthDate",
        "invalid_date",
    );
    want(
        "h-dangling.json",
        Some(obs_h),
        &format!("entry[{obs_h}].resource.subject"),
        "dangling_reference",
    );
    want("i-no-id.json", None, "id", "missing_field");
    want("j-utf16.json", None, "", "not_utf8");
    want("k-empty.json", None, "", "empty");
    want("l-not-fhir.json", None, "resourceType", "missing_field");
    want("m-oversize.json", None, "", "oversize");
    // Every other entry of g waits on its quarantined patient and says so (minus the
    // organizations and practitioners, which belong to no patient).
    let g_dependents = q
        .iter()
        .filter(|v| name(v) == "g-bad-birthdate.json" && v["reason"] == "depends_on_quarantined")
        .count();
    assert!(
        g_dependents > g_entries / 2,
        "{g_dependents} of {g_entries}"
    );
    // Nothing else was quarantined: a, b and the good parts of e, f, h went in.
    let files: BTreeSet<String> = q.iter().map(name).collect();
    assert!(
        !files.contains("a-good.json") && !files.contains("b-bom.json"),
        "{files:?}"
    );
    assert_eq!(
        q.iter()
            .filter(|v| name(v) == "e-renamed-type.json")
            .count(),
        1
    );
    assert_eq!(
        q.iter().filter(|v| name(v) == "f-bad-onset.json").count(),
        1
    );
    assert_eq!(q.iter().filter(|v| name(v) == "h-dangling.json").count(), 1);
    assert_eq!(report["patients_new"], json!(5), "a, b, e, f and h");
    // Exactly the good entries went in: every non-patient entry of a, b, e, f and h but the
    // broken ones, and g's organizations and practitioners, which belong to no patient.
    let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
    let mut add = |b: &Value, skip: Option<usize>, unowned_only: bool| {
        for (i, entry) in b["entry"].as_array().into_iter().flatten().enumerate() {
            let r = &entry["resource"];
            let rt = r["resourceType"].as_str().unwrap_or("").to_string();
            let owned = ![
                "Organization",
                "Practitioner",
                "PractitionerRole",
                "Location",
            ]
            .contains(&rt.as_str());
            if Some(i) == skip || rt == "Patient" || (unowned_only && owned) {
                continue;
            }
            let id = r["id"]
                .as_str()
                .or(entry["fullUrl"].as_str())
                .unwrap_or("")
                .to_string();
            expected.insert((rt, id));
        }
    };
    add(&bundle(0), None, false);
    add(&bundle(1), None, false);
    add(&e, Some(obs), false);
    add(&f, Some(cond), false);
    add(&h, Some(obs_h), false);
    add(&g, None, true);
    assert_eq!(
        report["records"]["added"].as_u64(),
        Some(expected.len() as u64)
    );

    // Messages name the place but never echo the value.
    for v in q {
        let m = v["message"].as_str().unwrap_or("");
        for secret in [
            "1985-02-30",
            "2019-13-45",
            "00000000-0000-0000-0000-000000000000",
        ] {
            assert!(!m.contains(secret), "message echoes a value: {m}");
        }
    }

    // `tessera quarantine list` shows the same, with file paths decrypted for the operator.
    let listed = t.expect(&["quarantine", "list", "--json", "--limit", "10000"], 0);
    let listed: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(listed.len(), q.len());
    assert!(listed.iter().any(|v| {
        v["reason"] == "oversize"
            && v["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("m-oversize.json"))
    }));
    let text = t.expect(&["quarantine", "list"], 0);
    assert!(
        text.contains("h-dangling.json") && text.contains("dangling_reference"),
        "{text}"
    );

    // Quarantining the same input again does not pile up duplicates.
    t.ingest_json(&[&input], &["--max-file-bytes", "1500000"], 3);
    let again = t.expect(&["quarantine", "list", "--json", "--limit", "10000"], 0);
    assert_eq!(again.lines().count(), q.len());
}
