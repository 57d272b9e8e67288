//! Searches for the generalization that satisfies the privacy model at least loss.
//!
//! This first version is exhaustive over the lattice (every node evaluated over the distinct
//! tuples), which is exact for any metric, monotone or not. The Flash-style pruned search and
//! Mondrian come next (issue 3); they are checked against this one.

use crate::dataset::Dataset;
use crate::lattice::{self, Evaluation, Privacy};
use crate::metrics::{EntropyTable, Metric};

/// The optimum and how it was found.
#[derive(Debug, Clone)]
pub struct Solution {
    pub best: Evaluation,
    pub nodes_checked: usize,
    pub lattice_size: usize,
}

/// The feasible node of least `metric`; ties go to the lower node in lattice order. `None` when
/// no node is feasible (k larger than the table, say).
pub fn exhaustive(data: &Dataset, privacy: Privacy, metric: Metric) -> Option<Solution> {
    let entropy = EntropyTable::new(data);
    let all = lattice::nodes(&data.heights());
    let mut best: Option<Evaluation> = None;
    for node in &all {
        let e = lattice::evaluate(data, node, privacy, &entropy);
        if !e.feasible {
            continue;
        }
        let better = match &best {
            None => true,
            Some(b) => e.losses.get(metric) < b.losses.get(metric),
        };
        if better {
            best = Some(e);
        }
    }
    best.map(|best| Solution {
        best,
        nodes_checked: all.len(),
        lattice_size: all.len(),
    })
}
