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

/// One equivalence class: its generalized codes (one per quasi-identifier), its size, and the
/// histogram of its sensitive values (empty without a sensitive attribute).
pub type Class = (Vec<u32>, u64, Vec<(u32, u64)>);

/// The classes of the table generalized to `levels`.
pub fn classes(data: &Dataset, levels: &[usize]) -> Vec<Class> {
    grouped(data, levels).1
}

/// The classes at `levels`, and each distinct tuple's class (in [`Dataset::tuples`] order).
fn grouped(data: &Dataset, levels: &[usize]) -> (Vec<usize>, Vec<Class>) {
    let qis = data.quasi_identifiers();
    let maps: Vec<&[u32]> = qis
        .iter()
        .zip(levels)
        .map(|(q, &l)| q.hierarchy.level_map(l))
        .collect();
    let codes = data.sensitive_codes();
    let mut index: foldhash::HashMap<Vec<u32>, usize> = foldhash::HashMap::default();
    let mut out: Vec<(Vec<u32>, u64, HashMap<u32, u64>)> = Vec::new();
    let mut class_of = Vec::with_capacity(data.distinct());
    let mut key = Vec::with_capacity(qis.len());
    for (i, (tuple, count)) in data.tuples().enumerate() {
        key.clear();
        key.extend(tuple.iter().enumerate().map(|(j, &c)| maps[j][c as usize]));
        let slot = match index.get(&key) {
            Some(&slot) => slot,
            None => {
                index.insert(key.clone(), out.len());
                out.push((key.clone(), 0, HashMap::new()));
                out.len() - 1
            }
        };
        out[slot].1 += count as u64;
        if let Some(&code) = codes.get(i) {
            *out[slot].2.entry(code).or_insert(0) += count as u64;
        }
        class_of.push(slot);
    }
    let classes = out
        .into_iter()
        .map(|(k, n, h)| {
            let mut hist: Vec<(u32, u64)> = h.into_iter().collect();
            hist.sort_unstable();
            (k, n, hist)
        })
        .collect();
    (class_of, classes)
}

/// Per distinct tuple (in [`Dataset::tuples`] order), whether its class at `levels` is released
/// (satisfies the privacy models) rather than suppressed.
pub fn released_tuples(data: &Dataset, levels: &[usize], privacy: Privacy) -> Vec<bool> {
    let (class_of, classes) = grouped(data, levels);
    let ok: Vec<bool> = classes
        .iter()
        .map(|(_, n, hist)| privacy.class_ok(*n, hist, data.sensitive()))
        .collect();
    class_of.into_iter().map(|c| ok[c]).collect()
}

/// Class sizes of the table generalized to `levels`.
pub fn class_sizes(data: &Dataset, levels: &[usize]) -> Vec<u64> {
    classes(data, levels)
        .into_iter()
        .map(|(_, n, _)| n)
        .collect()
}

/// A node's evaluation from its classes, each given as (generalized codes, size, released).
pub fn evaluation_from<'a>(
    data: &Dataset,
    levels: &[usize],
    privacy: Privacy,
    entropy: &metrics::EntropyTable,
    classes: impl Iterator<Item = (&'a [u32], u64, bool)>,
) -> Evaluation {
    let classes: Vec<(&[u32], u64, bool)> = classes.collect();
    let kept: Vec<u64> = classes.iter().filter(|c| c.2).map(|c| c.1).collect();
    let suppressed: u64 = classes.iter().filter(|c| !c.2).map(|c| c.1).sum();
    let sums = metrics::loss_sums(levels.len(), levels, entropy, classes.iter().copied());
    let allowed = (privacy.suppression_limit * data.rows() as f64).floor() as u64;
    Evaluation {
        levels: levels.to_vec(),
        feasible: suppressed <= allowed,
        suppressed_records: suppressed,
        equivalence_classes: kept.len(),
        min_class_size: kept.iter().copied().min().unwrap_or(0),
        max_class_size: kept.iter().copied().max().unwrap_or(0),
        losses: metrics::losses(data, levels, &kept, suppressed, entropy, Some(&sums)),
    }
}

/// Evaluates one node directly from the data: the simple reference the faster searches are
/// tested against.
pub fn evaluate(
    data: &Dataset,
    levels: &[usize],
    privacy: Privacy,
    entropy: &metrics::EntropyTable,
) -> Evaluation {
    let column = data.sensitive();
    let all = classes(data, levels);
    evaluation_from(
        data,
        levels,
        privacy,
        entropy,
        all.iter()
            .map(|(codes, n, hist)| (codes.as_slice(), *n, privacy.class_ok(*n, hist, column))),
    )
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
