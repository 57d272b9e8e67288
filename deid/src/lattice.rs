//! Full-domain generalization: a node of the lattice gives one level per quasi-identifier.
//! Evaluating a node groups the distinct tuples into equivalence classes; classes smaller than
//! k are suppressed; the node is feasible when the suppressed rows stay within the limit.

use std::collections::HashMap;

use crate::dataset::Dataset;
use crate::error::{DeidError, Result};
use crate::metrics::{self, Losses};
use crate::sensitive::{self, LDiversity, SensitiveColumn, TCloseness, TDistance};

/// The privacy models a release must satisfy: k-anonymity, optionally l-diversity and
/// t-closeness of the sensitive attribute, with record suppression: the records of every class
/// that fails a model are suppressed, within the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Privacy {
    pub k: u32,
    /// Fraction of rows that may be suppressed, 0.0 to 1.0.
    pub suppression_limit: f64,
    pub l_diversity: Option<LDiversity>,
    pub t_closeness: Option<TCloseness>,
}

impl Privacy {
    /// k-anonymity alone.
    pub fn k_anonymity(k: u32, suppression_limit: f64) -> Privacy {
        Privacy {
            k,
            suppression_limit,
            l_diversity: None,
            t_closeness: None,
        }
    }

    /// Whether a model needs the sensitive attribute.
    pub fn needs_sensitive(&self) -> bool {
        self.l_diversity.is_some() || self.t_closeness.is_some()
    }

    /// Checks the models against the data before any search.
    pub fn check(&self, data: &Dataset) -> Result<()> {
        if self.k == 0 {
            return Err(DeidError::Input {
                message: "k must be at least 1".into(),
            });
        }
        if !(0.0..=1.0).contains(&self.suppression_limit) {
            return Err(DeidError::Input {
                message: "suppression_limit is a fraction of the records, from 0.0 to 1.0".into(),
            });
        }
        if self.needs_sensitive() && data.sensitive().is_none() {
            return Err(DeidError::Input {
                message: "l-diversity and t-closeness need a column with role `sensitive`".into(),
            });
        }
        if let Some(t) = self.t_closeness
            && t.distance == TDistance::Hierarchical
            && data.sensitive().is_some_and(|s| s.hierarchy.is_none())
        {
            return Err(DeidError::Input {
                message: "hierarchical t-closeness needs a hierarchy for the sensitive column"
                    .into(),
            });
        }
        Ok(())
    }

    /// Whether a class with this size and sensitive histogram is kept (else suppressed).
    pub fn class_ok(
        &self,
        size: u64,
        hist: &[(u32, u64)],
        column: Option<&SensitiveColumn>,
    ) -> bool {
        if size < self.k as u64 {
            return false;
        }
        if let Some(l) = self.l_diversity
            && !sensitive::l_diverse(hist, l)
        {
            return false;
        }
        if let (Some(t), Some(col)) = (self.t_closeness, column)
            && sensitive::emd(hist, col, t.distance) > t.t + 1e-12
        {
            return false;
        }
        true
    }
}

/// What one node gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub levels: Vec<usize>,
    pub feasible: bool,
    pub suppressed_records: u64,
    /// Classes kept (of size k or more).
    pub equivalence_classes: usize,
    pub min_class_size: u64,
    pub max_class_size: u64,
    pub losses: Losses,
}

/// Class sizes of the table generalized to `levels`.
pub fn class_sizes(data: &Dataset, levels: &[usize]) -> Vec<u64> {
    let qis = data.quasi_identifiers();
    let maps: Vec<&[u32]> = qis
        .iter()
        .zip(levels)
        .map(|(q, &l)| q.hierarchy.level_map(l))
        .collect();
    let radix: Vec<u128> = qis
        .iter()
        .zip(levels)
        .map(|(q, &l)| q.hierarchy.cardinality(l) as u128)
        .collect();
    let mut classes: HashMap<u128, u64> = HashMap::with_capacity(data.distinct() / 2 + 1);
    for (tuple, count) in data.tuples() {
        let mut key: u128 = 0;
        for j in 0..tuple.len() {
            key = key * radix[j] + maps[j][tuple[j] as usize] as u128;
        }
        *classes.entry(key).or_insert(0) += count as u64;
    }
    classes.into_values().collect()
}

/// Class sizes and sensitive histograms of the table generalized to `levels`.
pub fn classes_with_sensitive(data: &Dataset, levels: &[usize]) -> Vec<(u64, Vec<(u32, u64)>)> {
    let qis = data.quasi_identifiers();
    let maps: Vec<&[u32]> = qis
        .iter()
        .zip(levels)
        .map(|(q, &l)| q.hierarchy.level_map(l))
        .collect();
    let radix: Vec<u128> = qis
        .iter()
        .zip(levels)
        .map(|(q, &l)| q.hierarchy.cardinality(l) as u128)
        .collect();
    let codes = data.sensitive_codes();
    let mut classes: HashMap<u128, (u64, HashMap<u32, u64>)> = HashMap::new();
    for (i, (tuple, count)) in data.tuples().enumerate() {
        let mut key: u128 = 0;
        for j in 0..tuple.len() {
            key = key * radix[j] + maps[j][tuple[j] as usize] as u128;
        }
        let entry = classes.entry(key).or_default();
        entry.0 += count as u64;
        if let Some(&code) = codes.get(i) {
            *entry.1.entry(code).or_insert(0) += count as u64;
        }
    }
    classes
        .into_values()
        .map(|(n, h)| {
            let mut hist: Vec<(u32, u64)> = h.into_iter().collect();
            hist.sort_unstable();
            (n, hist)
        })
        .collect()
}

/// Evaluates one node.
pub fn evaluate(
    data: &Dataset,
    levels: &[usize],
    privacy: Privacy,
    entropy: &metrics::EntropyTable,
) -> Evaluation {
    let (kept, suppressed) = if privacy.needs_sensitive() {
        let column = data.sensitive();
        let mut kept = Vec::new();
        let mut suppressed = 0;
        for (size, hist) in classes_with_sensitive(data, levels) {
            if privacy.class_ok(size, &hist, column) {
                kept.push(size);
            } else {
                suppressed += size;
            }
        }
        (kept, suppressed)
    } else {
        let sizes = class_sizes(data, levels);
        let k = privacy.k as u64;
        let suppressed: u64 = sizes.iter().filter(|&&s| s < k).sum();
        (
            sizes.into_iter().filter(|&s| s >= k).collect::<Vec<_>>(),
            suppressed,
        )
    };
    let allowed = (privacy.suppression_limit * data.rows() as f64).floor() as u64;
    let losses = metrics::losses(data, levels, &kept, suppressed, entropy);
    Evaluation {
        levels: levels.to_vec(),
        feasible: suppressed <= allowed,
        suppressed_records: suppressed,
        equivalence_classes: kept.len(),
        min_class_size: kept.iter().copied().min().unwrap_or(0),
        max_class_size: kept.iter().copied().max().unwrap_or(0),
        losses,
    }
}

/// Every node of the lattice with the given heights, lowest total level first.
pub fn nodes(heights: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new()];
    for &h in heights {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                (0..h).map(move |l| {
                    let mut n = prefix.clone();
                    n.push(l);
                    n
                })
            })
            .collect();
    }
    out.sort_by_key(|n| (n.iter().sum::<usize>(), n.clone()));
    out
}
