//! Searches for the generalization that satisfies the privacy model at least loss.
//!
//! [`optimal`] evaluates every node of the lattice by roll-up (see [`crate::rollup`]), which is
//! exact for any metric, monotone or not. [`exhaustive`] is the reference it is tested against:
//! every node evaluated directly from the data, one at a time, with the simplest code.

use crate::dataset::Dataset;
use crate::error::Result;
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
pub fn exhaustive(data: &Dataset, privacy: Privacy, metric: Metric) -> Result<Option<Solution>> {
    privacy.check(data)?;
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
    Ok(best.map(|best| Solution {
        best,
        nodes_checked: all.len(),
        lattice_size: all.len(),
    }))
}

/// The feasible node of least `metric`.
///
/// For metrics that depend only on the levels (non-uniform entropy, precision, height), a
/// Flash-style sweep (see [`crate::flash`]) learns every node's feasibility from few
/// evaluations, and the optimum is the feasible node of least loss. For metrics that need the
/// classes (discernibility, AECS) every node is evaluated, by roll-up on all cores.
pub fn optimal(data: &Dataset, privacy: Privacy, metric: Metric) -> Result<Option<Solution>> {
    privacy.check(data)?;
    if privacy.needs_sensitive() {
        // l-diversity and t-closeness with suppression are not monotone: every node is
        // evaluated, by roll-up of classes with their sensitive histograms, on all cores.
        return Ok(best_of(crate::rollup::evaluate_all(data, privacy), metric));
    }
    Ok(match metric {
        Metric::NonUniformEntropy | Metric::Precision | Metric::Height => crate::flash::optimal(
            data, privacy, metric,
        )
        .map(|(best, nodes_checked, lattice_size)| Solution {
            best,
            nodes_checked,
            lattice_size,
        }),
        Metric::Discernibility | Metric::Aecs | Metric::Loss => {
            best_of(crate::rollup::evaluate_all(data, privacy), metric)
        }
    })
}

/// The feasible evaluation of least `metric`; ties go to the earlier node in lattice order.
pub fn best_of(evaluations: Vec<Evaluation>, metric: Metric) -> Option<Solution> {
    let n = evaluations.len();
    let mut sorted = evaluations;
    sorted.sort_by(|a, b| {
        (a.levels.iter().sum::<usize>(), &a.levels)
            .cmp(&(b.levels.iter().sum::<usize>(), &b.levels))
    });
    let mut best: Option<Evaluation> = None;
    for e in sorted.into_iter().filter(|e| e.feasible) {
        if best
            .as_ref()
            .is_none_or(|b| e.losses.get(metric) < b.losses.get(metric))
        {
            best = Some(e);
        }
    }
    best.map(|best| Solution {
        best,
        nodes_checked: n,
        lattice_size: n,
    })
}
