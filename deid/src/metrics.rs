//! Information-loss metrics, as ARX defines them (see `shared/data/adult/arx-expected.json`).

use crate::dataset::Dataset;

/// The metric a search minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Non-uniform entropy, precomputed: per quasi-identifier,
    /// `-Σ_v a_v · log2(a_v / b_g(v))`, summed; suppression is ignored.
    NonUniformEntropy,
    /// `Σ |class|²` over kept classes, plus N for each suppressed record.
    Discernibility,
    /// Average equivalence class size: N / number of classes.
    Aecs,
    /// Mean over quasi-identifiers of level / (height − 1).
    Precision,
    /// Sum of the levels.
    Height,
}

impl Metric {
    pub fn parse(name: &str) -> Option<Metric> {
        Some(match name {
            "nu_entropy" => Metric::NonUniformEntropy,
            "discernibility" => Metric::Discernibility,
            "aecs" => Metric::Aecs,
            "precision" => Metric::Precision,
            "height" => Metric::Height,
            _ => return None,
        })
    }
}

/// Every metric's value for one node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Losses {
    pub nu_entropy: f64,
    pub discernibility: f64,
    pub aecs: f64,
    pub precision: f64,
    pub height: f64,
}

impl Losses {
    pub fn get(&self, m: Metric) -> f64 {
        match m {
            Metric::NonUniformEntropy => self.nu_entropy,
            Metric::Discernibility => self.discernibility,
            Metric::Aecs => self.aecs,
            Metric::Precision => self.precision,
            Metric::Height => self.height,
        }
    }
}

/// Non-uniform entropy per quasi-identifier and level, computed once per dataset.
#[derive(Debug, Clone)]
pub struct EntropyTable {
    /// `by_level[j][l]`
    by_level: Vec<Vec<f64>>,
}

impl EntropyTable {
    pub fn new(data: &Dataset) -> EntropyTable {
        let by_level = data
            .quasi_identifiers()
            .iter()
            .enumerate()
            .map(|(j, q)| {
                let a = data.value_counts(j);
                (0..q.hierarchy.height())
                    .map(|l| {
                        let map = q.hierarchy.level_map(l);
                        let mut b = vec![0u64; q.hierarchy.cardinality(l)];
                        for (v, &count) in a.iter().enumerate() {
                            b[map[v] as usize] += count;
                        }
                        a.iter()
                            .enumerate()
                            .filter(|&(_, &count)| count > 0)
                            .map(|(v, &count)| {
                                let bv = b[map[v] as usize] as f64;
                                -(count as f64) * (count as f64 / bv).log2()
                            })
                            .sum()
                    })
                    .collect()
            })
            .collect();
        EntropyTable { by_level }
    }

    pub fn loss(&self, levels: &[usize]) -> f64 {
        levels
            .iter()
            .enumerate()
            .map(|(j, &l)| self.by_level[j][l])
            .sum()
    }
}

/// All metrics for a node, given its kept class sizes and suppressed row count.
pub fn losses(
    data: &Dataset,
    levels: &[usize],
    kept: &[u64],
    suppressed: u64,
    entropy: &EntropyTable,
) -> Losses {
    let n = data.rows() as f64;
    let discernibility = kept.iter().map(|&s| (s * s) as f64).sum::<f64>() + n * suppressed as f64;
    // Suppressed rows count as one class of their own, as ARX counts them.
    let classes = kept.len() + usize::from(suppressed > 0);
    let aecs = if classes == 0 {
        0.0
    } else {
        n / classes as f64
    };
    let heights = data.heights();
    let precision = levels
        .iter()
        .zip(&heights)
        .map(|(&l, &h)| {
            if h > 1 {
                l as f64 / (h - 1) as f64
            } else {
                0.0
            }
        })
        .sum::<f64>()
        / levels.len().max(1) as f64;
    Losses {
        nu_entropy: entropy.loss(levels),
        discernibility,
        aecs,
        precision,
        height: levels.iter().sum::<usize>() as f64,
    }
}
