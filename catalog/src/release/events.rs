//! The event model of a release: which event tables are items, what an item is made of, and
//! how a row is released under the (k, k^m) anonymization of `tessera_deid::events`.
//!
//! An item is an event's code (with its vocabulary) and, for tables whose time is part of the
//! item, its year and its `days_since_index` band, each as generalized. The released row shows
//! exactly the item: its code column(s), its vocabulary, its date column (the year or band of
//! years, or nothing) and `days_since_index` (the band's lower bound, or nothing). A row whose
//! item is suppressed is not released. Other time columns of an item table (a condition's end
//! date, a phenotype's onset) would be a second, unprotected time: they are not released.
//!
//! Tables whose time is not part of their items (by default `measurement`, `phenotype`,
//! `genomic_variant`), and the tables that are not items (`observation_period`, `death`,
//! `observation`, `survey_response`), release dates as the policy's date transform gives them
//! (cut to the year under Safe Harbor) and every interval floored to the finest band of the
//! policy (`[events] interval_days`), or not at all when that list is empty.

use std::collections::HashMap;

use tessera_deid::events::{Domain, Model, TimeLevel, time_ladder};
use tessera_deid::policy::{EventsSection, Policy};

use crate::error::{CatalogError, Result};

/// Separates the parts of an internal code key (`system`, `code`, a marker).
const SEP: char = '\u{1f}';

/// What makes an item in one event table.
#[derive(Debug, Clone, Copy)]
pub struct ItemTable {
    pub table: &'static str,
    /// The code column (for variants: the gene, with `hgvs` and `vcf` as the exact variant).
    pub code: &'static str,
    pub vocabulary: Option<&'static str>,
    /// The date column that carries the item's year.
    pub date: Option<&'static str>,
    /// Columns not released under the event model.
    pub dropped: &'static [&'static str],
    /// Whether the time is part of the item by default.
    pub time_by_default: bool,
}

/// The event tables that can be items, with the release's defaults.
pub const ITEM_TABLES: [ItemTable; 6] = [
    ItemTable {
        table: "condition_occurrence",
        code: "condition_source_value",
        vocabulary: Some("condition_source_vocabulary"),
        date: Some("condition_start_date"),
        dropped: &["condition_end_date"],
        time_by_default: true,
    },
    ItemTable {
        table: "drug_exposure",
        code: "drug_source_value",
        vocabulary: Some("drug_source_vocabulary"),
        date: Some("drug_exposure_start_date"),
        dropped: &[],
        time_by_default: true,
    },
    ItemTable {
        table: "procedure_occurrence",
        code: "procedure_source_value",
        vocabulary: Some("procedure_source_vocabulary"),
        date: Some("procedure_date"),
        dropped: &[],
        time_by_default: true,
    },
    ItemTable {
        table: "measurement",
        code: "measurement_source_value",
        vocabulary: Some("measurement_source_vocabulary"),
        date: Some("measurement_date"),
        dropped: &[],
        time_by_default: false,
    },
    ItemTable {
        table: "phenotype",
        code: "phenotype_source_value",
        vocabulary: Some("phenotype_source_vocabulary"),
        date: None,
        dropped: &["onset"],
        time_by_default: false,
    },
    ItemTable {
        table: "genomic_variant",
        code: "gene",
        vocabulary: None,
        date: None,
        dropped: &[],
        time_by_default: false,
    },
];

/// The event model of a release, resolved from the policy (or its defaults).
#[derive(Debug, Clone)]
pub struct EventPolicy {
    pub model: Model,
    /// Per item table: its domain index and whether time is in its items.
    pub tables: Vec<(ItemTable, bool)>,
    /// The finest interval band any column shows (`None`: intervals are not released).
    pub interval_days: Option<u32>,
    /// Whether event years are released at all.
    pub years: bool,
    /// Whether the event model runs (`[events] enabled`).
    pub enabled: bool,
    /// Hierarchies matched by prefix, by code system: the vocabulary generalized codes are
    /// released under, and the file's codes with their ancestors.
    prefix_trees: HashMap<String, (String, HashMap<String, Vec<String>>)>,
}

impl EventPolicy {
    /// The model of `policy`'s `[events]` section, or the defaults (m = 3, every item table,
    /// years in bands of 1, 5, 10, intervals in bands of 365 and 1826 days).
    pub fn from_policy(policy: &Policy) -> Result<EventPolicy> {
        let section: EventsSection = policy.events.clone().unwrap_or_default();
        let k = section.k.unwrap_or(policy.privacy.k) as usize;
        let chosen: Vec<(ItemTable, bool)> = if !section.enabled {
            Vec::new()
        } else if section.tables.is_empty() {
            ITEM_TABLES
                .iter()
                .map(|t| (*t, t.time_by_default))
                .collect()
        } else {
            let mut out = Vec::new();
            for t in &section.tables {
                let Some(spec) = ITEM_TABLES.iter().find(|s| s.table == t.name) else {
                    return Err(CatalogError::invalid(format!(
                        "[[events.table]] `{}` is not an event table: use one of {}",
                        t.name,
                        ITEM_TABLES.map(|s| s.table).join(", ")
                    )));
                };
                out.push((*spec, t.time && spec.date.is_some()));
            }
            out
        };
        // Hierarchies by code system, keyed as the model sees codes.
        let mut by_system: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
        let mut prefix_trees = HashMap::new();
        for h in &section.hierarchies {
            let tree = h.load(&policy.base_dir).map_err(|e| {
                CatalogError::invalid(format!("[[events.hierarchy]] for {}: {e}", h.system))
            })?;
            let general = h.generalized_system.clone().unwrap_or(h.system.clone());
            if h.prefix {
                prefix_trees.insert(h.system.clone(), (general.clone(), tree.clone()));
            }
            let keyed = tree
                .into_iter()
                .map(|(code, ancestors)| {
                    (
                        format!("{}{SEP}{code}", h.system),
                        ancestors
                            .into_iter()
                            .map(|a| format!("{general}{SEP}{a}"))
                            .collect(),
                    )
                })
                .collect();
            by_system.insert(h.system.clone(), keyed);
        }
        let domains = chosen
            .iter()
            .map(|(t, time)| {
                let ladder = if *time {
                    time_ladder(&section.years, &section.interval_days)
                } else {
                    vec![TimeLevel::NONE]
                };
                let mut ancestors: HashMap<String, Vec<String>> = HashMap::new();
                if t.vocabulary.is_some() {
                    for tree in by_system.values() {
                        ancestors.extend(tree.iter().map(|(k, v)| (k.clone(), v.clone())));
                    }
                }
                Domain {
                    name: t.table.to_string(),
                    ladder,
                    ancestors,
                    max_code_level: section.max_code_level,
                }
            })
            .collect();
        Ok(EventPolicy {
            model: Model {
                k,
                m: section.m,
                domains,
                recode_combinations: section.recode_combinations,
            },
            tables: chosen,
            interval_days: section.interval_days.first().copied(),
            years: !section.years.is_empty() || !section.enabled,
            enabled: section.enabled,
            prefix_trees,
        })
    }

    /// Gives a code of a prefix-matched hierarchy that its file does not list (`E11.65`) the
    /// ancestors of its longest listed prefix, with that prefix first (`E11`, `E08-E13`, `4`),
    /// in domain `domain`. Codes of other systems, and codes already known, are left alone.
    pub fn add_prefix_ancestors(&mut self, domain: u16, key: &str) {
        let (system, code) = split_key(key);
        let Some((general, tree)) = self.prefix_trees.get(system) else {
            return;
        };
        let Some(d) = self.model.domains.get_mut(domain as usize) else {
            return;
        };
        if d.ancestors.contains_key(key) {
            return;
        }
        let listed = (1..code.len())
            .rev()
            .filter(|end| code.is_char_boundary(*end))
            .map(|end| code[..end].trim_end_matches('.'))
            .find(|prefix| !prefix.is_empty() && tree.contains_key(*prefix));
        if let Some(prefix) = listed {
            let chain = std::iter::once(prefix)
                .chain(tree[prefix].iter().map(String::as_str))
                .map(|a| format!("{general}{SEP}{a}"))
                .collect();
            d.ancestors.insert(key.to_string(), chain);
        }
    }

    /// The domain of a table, when its events are items.
    pub fn domain(&self, table: &str) -> Option<(u16, ItemTable, bool)> {
        self.tables
            .iter()
            .position(|(t, _)| t.table == table)
            .map(|i| (i as u16, self.tables[i].0, self.tables[i].1))
    }

    /// The columns an item is made of, as released (for the manifest and the checker).
    pub fn item_columns(&self) -> Vec<(String, Vec<String>)> {
        self.tables
            .iter()
            .map(|(t, time)| {
                let mut cols = vec![t.code.to_string()];
                if t.table == "genomic_variant" {
                    cols.extend(["hgvs".to_string(), "vcf".to_string()]);
                }
                if t.table == "phenotype" {
                    cols.push("excluded".into());
                }
                cols.extend(t.vocabulary.map(str::to_string));
                if *time {
                    cols.extend(t.date.map(str::to_string));
                    cols.push("days_since_index".into());
                }
                (t.table.to_string(), cols)
            })
            .collect()
    }

    /// An interval as any column releases it: floored to the finest band, or nothing.
    pub fn interval(&self, days: Option<i64>) -> Option<i64> {
        if !self.enabled {
            return days;
        }
        let w = i64::from(self.interval_days?.max(1));
        days.map(|d| d.div_euclid(w) * w)
    }
}

/// The model's key of a code: its system and code (and `excluded` for an excluded phenotype,
/// which is information of its own and has no hierarchy: excluding a term says nothing of its
/// parent).
pub fn code_key(system: Option<&str>, code: &str, excluded: bool) -> String {
    let mut key = format!("{}{SEP}{code}", system.unwrap_or(""));
    if excluded {
        key.push(SEP);
        key.push_str("excluded");
    }
    key
}

/// The parts of a key: system and code.
pub fn split_key(key: &str) -> (&str, &str) {
    let mut parts = key.split(SEP);
    let system = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    (system, code)
}

/// A variant's key: the gene as the code, the exact variant after it. Its hierarchy is the gene.
pub fn variant_key(gene: Option<&str>, hgvs: Option<&str>, vcf: Option<&str>) -> (String, String) {
    let gene = gene.unwrap_or("");
    let exact = format!(
        "{SEP}{gene}{SEP}{}{SEP}{}",
        hgvs.unwrap_or(""),
        vcf.unwrap_or("")
    );
    (exact, format!("{SEP}{gene}"))
}

/// Adds every variant's gene as its one ancestor to the genomic domain.
pub fn add_variant_hierarchy(model: &mut Model, domain: u16, exact: &str, gene: &str) {
    if let Some(d) = model.domains.get_mut(domain as usize) {
        d.ancestors
            .entry(exact.to_string())
            .or_insert_with(|| vec![gene.to_string()]);
    }
}

/// The variant's released gene, HGVS and VCF from a key.
pub fn variant_parts(key: &str) -> (Option<String>, Option<String>, Option<String>) {
    let parts: Vec<&str> = key.split(SEP).skip(1).collect();
    let some = |s: Option<&&str>| s.filter(|s| !s.is_empty()).map(|s| s.to_string());
    (some(parts.first()), some(parts.get(1)), some(parts.get(2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icd10cm_codes_climb_to_their_category_block_and_chapter() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/safe-harbor.toml");
        let policy = Policy::from_file(&path).expect("the shipped policy");
        let mut events = EventPolicy::from_policy(&policy).expect("its event model");
        let (domain, _, _) = events.domain("condition_occurrence").expect("conditions");
        let system = "http://hl7.org/fhir/sid/icd-10-cm";
        let key = code_key(Some(system), "E11.65", false);
        events.add_prefix_ancestors(domain, &key);
        let ancestors = &events.model.domains[domain as usize].ancestors[&key];
        let plain: Vec<&str> = ancestors.iter().map(|a| split_key(a).1).collect();
        assert_eq!(plain, ["E11", "E08-E13", "4"]);
        assert!(ancestors.iter().all(|a| split_key(a).0 == system));
        // A listed category keeps the file's own line; a code of another system, or one with
        // no listed prefix, gets nothing.
        let listed = code_key(Some(system), "E11", false);
        assert_eq!(
            events.model.domains[domain as usize].ancestors[&listed].len(),
            2
        );
        for other in [
            code_key(Some("http://snomed.info/sct"), "E11.65", false),
            code_key(Some(system), "ZZ9.9", false),
        ] {
            events.add_prefix_ancestors(domain, &other);
            assert!(
                !events.model.domains[domain as usize]
                    .ancestors
                    .contains_key(&other)
            );
        }
    }
}
