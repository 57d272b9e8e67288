//! Full-domain generalization: a node of the lattice gives one level per quasi-identifier.
//! Evaluating a node groups the distinct tuples into equivalence classes; classes smaller than
//! k are suppressed; the node is feasible when the suppressed rows stay within the limit.

use std::collections::HashMap;

use crate::dataset::Dataset;
use crate::metrics::{self, Losses};

/// k-anonymity with record suppression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Privacy {
    pub k: u32,
    /// Fraction of rows that may be suppressed, 0.0 to 1.0.
    pub suppression_limit: f64,
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

/// Evaluates one node.
pub fn evaluate(
    data: &Dataset,
    levels: &[usize],
    privacy: Privacy,
    entropy: &metrics::EntropyTable,
) -> Evaluation {
    let sizes = class_sizes(data, levels);
    let k = privacy.k as u64;
    let suppressed: u64 = sizes.iter().filter(|&&s| s < k).sum();
    let kept: Vec<u64> = sizes.iter().copied().filter(|&s| s >= k).collect();
    let allowed = (privacy.suppression_limit * data.rows() as f64).floor() as u64;
    let feasible = suppressed <= allowed;
    let losses = metrics::losses(data, levels, &kept, suppressed, entropy);
    Evaluation {
        levels: levels.to_vec(),
        feasible,
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
