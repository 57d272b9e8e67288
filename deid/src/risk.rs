//! Re-identification risk of a release (El Emam's measures, as ARX reports them).
//!
//! Prosecutor: the attacker knows the person is in the release; a record's risk is one over
//! its class size. Journalist and marketer need a population table: a record's risk is one over
//! the size of its class in the population; journalist risk is the largest, marketer risk the
//! expected fraction of records re-identified (Σ over classes of f/F, over n).

use std::collections::HashMap;

use crate::dataset::Dataset;
use crate::lattice::{self, Privacy};
use crate::mondrian::Partitioning;

/// Risk figures of a release.
#[derive(Debug, Clone, PartialEq)]
pub struct Risk {
    pub prosecutor_max: f64,
    pub prosecutor_avg: f64,
    /// Fraction of released records whose prosecutor risk exceeds the threshold.
    pub records_at_risk: f64,
    pub threshold: f64,
    /// Records unique on their quasi-identifiers before generalization.
    pub sample_uniques_input: u64,
    /// Records unique in the release (zero whenever k ≥ 2).
    pub sample_uniques: u64,
    pub journalist_max: Option<f64>,
    pub marketer: Option<f64>,
}

/// Risk of releasing `data` generalized to `levels` with `privacy`'s suppression. `population`,
/// when given, must have the same quasi-identifiers and hierarchies.
pub fn assess(
    data: &Dataset,
    levels: &[usize],
    privacy: Privacy,
    threshold: f64,
    population: Option<&Dataset>,
) -> Risk {
    let column = data.sensitive();
    let released: Vec<(Vec<u32>, u64)> = lattice::classes(data, levels)
        .into_iter()
        .filter(|(_, n, hist)| privacy.class_ok(*n, hist, column))
        .map(|(codes, n, _)| (codes, n))
        .collect();
    let population_sizes: Option<HashMap<Vec<u32>, u64>> = population.map(|pop| {
        lattice::classes(pop, levels)
            .into_iter()
            .map(|(c, s, _)| (c, s))
            .collect()
    });
    let classes: Vec<(u64, Option<u64>)> = released
        .iter()
        .map(|(codes, f)| {
            (
                *f,
                population_sizes
                    .as_ref()
                    .map(|p| p.get(codes).copied().unwrap_or(0)),
            )
        })
        .collect();
    summarize(&classes, threshold, input_uniques(data))
}

/// Risk of a Mondrian release. A population record counts towards a class when each of its
/// quasi-identifiers generalizes to the class's label (labels of different classes can
/// overlap; each class is measured against every population record it could be).
pub fn assess_mondrian(
    data: &Dataset,
    partitioning: &Partitioning,
    threshold: f64,
    population: Option<&Dataset>,
) -> Risk {
    let population_sizes: Option<Vec<u64>> = population.map(|pop| {
        // Group classes by their level vectors; each pattern generalizes the population once.
        let mut patterns: HashMap<&[usize], Vec<usize>> = HashMap::new();
        for (c, class) in partitioning.classes.iter().enumerate() {
            patterns.entry(&class.levels).or_default().push(c);
        }
        let qis = pop.quasi_identifiers();
        let mut sizes = vec![0u64; partitioning.classes.len()];
        for (levels, members) in patterns {
            let mut counts: HashMap<Vec<u32>, u64> = HashMap::new();
            for (tuple, n) in pop.tuples() {
                let key: Vec<u32> = tuple
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| qis[j].hierarchy.generalize(v, levels[j]))
                    .collect();
                *counts.entry(key).or_insert(0) += n as u64;
            }
            for c in members {
                sizes[c] = counts
                    .get(&partitioning.classes[c].codes)
                    .copied()
                    .unwrap_or(0);
            }
        }
        sizes
    });
    let classes: Vec<(u64, Option<u64>)> = partitioning
        .classes
        .iter()
        .enumerate()
        .map(|(c, class)| (class.size, population_sizes.as_ref().map(|p| p[c])))
        .collect();
    summarize(&classes, threshold, input_uniques(data))
}

/// Records unique on their quasi-identifiers (the sensitive attribute aside) in the input.
fn input_uniques(data: &Dataset) -> u64 {
    lattice::class_sizes(data, &vec![0; data.quasi_identifiers().len()])
        .into_iter()
        .filter(|&s| s == 1)
        .count() as u64
}

/// Risk figures from the released classes: (size in the release, size in the population).
fn summarize(classes: &[(u64, Option<u64>)], threshold: f64, input_uniques: u64) -> Risk {
    let n: u64 = classes.iter().map(|(f, _)| f).sum();
    let at_risk: u64 = classes
        .iter()
        .filter(|(f, _)| 1.0 / *f as f64 > threshold)
        .map(|(f, _)| f)
        .sum();
    let with_population = classes.iter().all(|(_, p)| p.is_some()) && !classes.is_empty();
    let (journalist_max, marketer) = if with_population {
        let mut j_max: f64 = 0.0;
        let mut expected = 0.0;
        for (f, big_f) in classes {
            // A class absent from the population is only as large as in the sample.
            let big_f = big_f.unwrap_or(*f).max(*f);
            j_max = j_max.max(1.0 / big_f as f64);
            expected += *f as f64 / big_f as f64;
        }
        (
            Some(j_max),
            Some(if n == 0 { 0.0 } else { expected / n as f64 }),
        )
    } else {
        (None, None)
    };
    let share = |x: f64| if n == 0 { 0.0 } else { x / n as f64 };
    Risk {
        prosecutor_max: classes
            .iter()
            .map(|(f, _)| 1.0 / *f as f64)
            .fold(0.0, f64::max),
        prosecutor_avg: share(classes.len() as f64),
        records_at_risk: share(at_risk as f64),
        threshold,
        sample_uniques_input: input_uniques,
        sample_uniques: classes
            .iter()
            .filter(|(f, _)| *f == 1)
            .map(|(f, _)| f)
            .sum(),
        journalist_max,
        marketer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Quasi;
    use crate::hierarchy::Hierarchy;

    fn data(rows: &[&str]) -> Dataset {
        let h = Hierarchy::from_rows(
            "x",
            &[
                ["a", "ab", "*"],
                ["b", "ab", "*"],
                ["c", "cd", "*"],
                ["d", "cd", "*"],
            ]
            .iter()
            .map(|r| r.iter().map(|s| s.to_string()).collect())
            .collect::<Vec<_>>(),
        )
        .expect("h");
        Dataset::new(
            vec![Quasi {
                name: "x".into(),
                hierarchy: h,
            }],
            rows.iter().map(|r| [*r]),
        )
        .expect("data")
    }

    #[test]
    fn prosecutor_journalist_marketer() {
        let sample = data(&["a", "a", "b", "c", "d", "d"]);
        // Level 1: classes ab (3) and cd (3); k = 2 keeps both.
        let r = assess(&sample, &[1], Privacy::k_anonymity(2, 0.0), 0.2, None);
        assert!((r.prosecutor_max - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.prosecutor_avg - 2.0 / 6.0).abs() < 1e-12);
        assert_eq!(r.records_at_risk, 1.0, "1/3 > 0.2 for every record");
        assert_eq!(
            r.sample_uniques_input, 2,
            "b and c are unique before generalization"
        );
        assert_eq!(r.sample_uniques, 0);
        let population = data(&["a", "a", "b", "b", "c", "c", "c", "d", "d", "d", "d", "d"]);
        let r = assess(
            &sample,
            &[1],
            Privacy::k_anonymity(2, 0.0),
            0.2,
            Some(&population),
        );
        // Population classes: ab = 4, cd = 8.
        assert!((r.journalist_max.expect("j") - 0.25).abs() < 1e-12);
        assert!((r.marketer.expect("m") - (3.0 / 4.0 + 3.0 / 8.0) / 6.0).abs() < 1e-12);
    }
}
