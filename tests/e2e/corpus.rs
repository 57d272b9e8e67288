//! Every real input in the shared data goes in, and the store's per-type counts match counts
//! computed independently from the raw JSON.

use std::collections::BTreeMap;

use crate::support::{
    Expected, Tessera, json_files, ms_samples_dir, phenopackets, shared_or_skip, synthea_dir,
    synthea_small,
};

#[test]
fn all_shared_inputs_ingest_and_counts_match_the_raw_json() {
    let Some(shared) = shared_or_skip(
        "corpus::all_shared_inputs_ingest_and_counts_match_the_raw_json",
        "fhir-anonymizer",
    ) else {
        return;
    };
    let synthea = synthea_dir();
    let small = synthea_small().to_path_buf();
    let phenopackets = phenopackets().to_path_buf();
    let ms = ms_samples_dir(&shared);

    let synthea_files = json_files(synthea);
    assert_eq!(
        synthea_files.len(),
        375,
        "373 patient bundles + hospital + practitioner bundles"
    );
    let mut expected = Expected::default();
    for f in synthea_files
        .iter()
        .chain(&json_files(&small))
        .chain(&json_files(ms))
    {
        expected.add_fhir_file(f);
    }
    for f in json_files(&phenopackets) {
        expected.add_phenopacket(&f);
    }

    let t = Tessera::new();
    t.expect(&["init"], 0);
    let report = t.ingest_json(&[synthea, &small, &phenopackets, ms], &[], 0);
    assert_eq!(
        report["quarantined"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );

    let stats = t.stats();
    let stored: BTreeMap<String, i64> =
        serde_json::from_value(stats["records_by_resource_type"].clone()).expect("counts");
    assert_eq!(stored, expected.counts());
    assert_eq!(
        stats["patients"].as_i64(),
        Some(expected.patients.len() as i64)
    );
    // 373 Synthea + 11 Microsoft samples + the phenopacket cases.
    assert!(expected.patients.len() > 373 + 11 + 500);

    let kinds = &stats["records_by_kind"];
    for k in [
        "condition",
        "observation",
        "medication",
        "procedure",
        "encounter",
        "phenotype",
        "variant",
        "other",
        "reference",
    ] {
        assert!(
            kinds[k].as_i64().unwrap_or(0) > 0,
            "no {k} records: {kinds}"
        );
    }
}
