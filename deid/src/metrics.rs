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
    /// ARX's Loss with gs-factor 0.5 and the geometric mean over quasi-identifiers: per
    /// quasi-identifier, each kept record costs the share of the domain its generalized value
    /// covers and each suppressed record costs 1, normalized between N/|domain| and N.
    Loss,
}

impl Metric {
    pub fn parse(name: &str) -> Option<Metric> {
        Some(match name {
            "nu_entropy" => Metric::NonUniformEntropy,
            "discernibility" => Metric::Discernibility,
            "aecs" => Metric::Aecs,
            "precision" => Metric::Precision,
            "height" => Metric::Height,
            "loss" => Metric::Loss,
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
    /// NaN where the classes were not computed (level-only evaluation).
    pub loss: f64,
}

impl Losses {
    pub fn get(&self, m: Metric) -> f64 {
        match m {
            Metric::NonUniformEntropy => self.nu_entropy,
            Metric::Discernibility => self.discernibility,
            Metric::Aecs => self.aecs,
            Metric::Precision => self.precision,
            Metric::Height => self.height,
            Metric::Loss => self.loss,
        }
    }
}

/// Per quasi-identifier and level: non-uniform entropy, and each generalized value's share
/// of the domain (for Loss). Computed once per dataset.
#[derive(Debug, Clone)]
pub struct EntropyTable {
    /// `by_level[j][l]`
    by_level: Vec<Vec<f64>>,
    /// `shares[j][l][code]`: hierarchy rows under the value, over all hierarchy rows.
    shares: Vec<Vec<Vec<f64>>>,
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
        let shares = data
            .quasi_identifiers()
            .iter()
            .map(|q| {
                let h = &q.hierarchy;
                (0..h.height())
                    .map(|l| {
                        let mut under = vec![0u64; h.cardinality(l)];
                        for &c in h.level_map(l) {
                            under[c as usize] += 1;
                        }
                        under.iter().map(|&n| n as f64 / h.len() as f64).collect()
                    })
                    .collect()
            })
            .collect();
        EntropyTable { by_level, shares }
    }

    /// The domain share of generalized value `code` of quasi-identifier `j` at `level`.
    pub fn share(&self, j: usize, level: usize, code: u32) -> f64 {
        self.shares[j][level][code as usize]
    }

    pub fn loss(&self, levels: &[usize]) -> f64 {
        levels
            .iter()
            .enumerate()
            .map(|(j, &l)| self.by_level[j][l])
            .sum()
    }
}

/// Per quasi-identifier, Σ over kept classes of size × domain share of the class's value: the
/// input [`losses`] needs for ARX's Loss. `classes` yields (generalized codes, size, kept).
pub fn loss_sums<'a>(
    q: usize,
    levels: &[usize],
    tables: &EntropyTable,
    classes: impl Iterator<Item = (&'a [u32], u64, bool)>,
) -> Vec<f64> {
    let mut sums = vec![0.0; q];
    for (codes, size, kept) in classes {
        if kept {
            for j in 0..q {
                sums[j] += size as f64 * tables.share(j, levels[j], codes[j]);
            }
        }
    }
    sums
}

/// All metrics for a node, given its kept class sizes, suppressed row count and (for Loss)
/// the per-quasi-identifier sums of [`loss_sums`].
pub fn losses(
    data: &Dataset,
    levels: &[usize],
    kept: &[u64],
    suppressed: u64,
    entropy: &EntropyTable,
    loss_kept: Option<&[f64]>,
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
    let loss = match loss_kept {
        None => f64::NAN,
        Some(sums) => arx_loss(data, sums, suppressed),
    };
    Losses {
        loss,
        nu_entropy: entropy.loss(levels),
        discernibility,
        aecs,
        precision,
        height: levels.iter().sum::<usize>() as f64,
    }
}

/// ARX's Loss from, per quasi-identifier, the sum over released records of the domain share
/// of their generalized value, and the number of suppressed records (each costs 1): each
/// column normalized between N/|domain| and N, then the geometric mean (gs-factor 0.5).
pub fn arx_loss(data: &Dataset, sums: &[f64], suppressed: u64) -> f64 {
    let n = data.rows() as f64;
    let q = data.quasi_identifiers().len().max(1);
    let product: f64 = data
        .quasi_identifiers()
        .iter()
        .zip(sums)
        .map(|(qi, &sum)| {
            let min = n / qi.hierarchy.len() as f64;
            let normalized = if n > min {
                ((sum + suppressed as f64 - min) / (n - min)).max(0.0)
            } else {
                0.0
            };
            (normalized + 1.0).powf(1.0 / q as f64)
        })
        .product();
    product - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{Dataset, Quasi};
    use crate::hierarchy::Hierarchy;

    #[test]
    fn loss_by_hand() {
        // One quasi-identifier over 4 values {a,b | c,d}; rows a,a,b,c.
        let rows: Vec<Vec<String>> = [
            ["a", "ab", "*"],
            ["b", "ab", "*"],
            ["c", "cd", "*"],
            ["d", "cd", "*"],
        ]
        .iter()
        .map(|r| r.iter().map(|s| s.to_string()).collect())
        .collect();
        let h = Hierarchy::from_rows("x", &rows).expect("hierarchy");
        let data = Dataset::new(
            vec![Quasi {
                name: "x".into(),
                hierarchy: h,
            }],
            [["a"], ["a"], ["b"], ["c"]],
        )
        .expect("data");
        let tables = EntropyTable::new(&data);
        // Level 1, k = 2: classes ab (3 rows, share 2/4) kept, cd (1 row) suppressed.
        // sum = 3 · 0.5 = 1.5; + 1 suppressed = 2.5; min = 4 / 4 = 1; (2.5 − 1) / (4 − 1) = 0.5.
        let sums = loss_sums(
            1,
            &[1],
            &tables,
            [(&[0u32][..], 3, true), (&[1u32][..], 1, false)].into_iter(),
        );
        let l = losses(&data, &[1], &[3], 1, &tables, Some(&sums));
        assert!((l.loss - 0.5).abs() < 1e-12, "{}", l.loss);
        // Level 0, nothing suppressed: each value covers 1/4: sum = 4 · 0.25 = 1 = min → 0.
        let sums = loss_sums(
            1,
            &[0],
            &tables,
            [
                (&[0u32][..], 2, true),
                (&[1u32][..], 1, true),
                (&[2u32][..], 1, true),
            ]
            .into_iter(),
        );
        let l = losses(&data, &[0], &[2, 1, 1], 0, &tables, Some(&sums));
        assert!(l.loss.abs() < 1e-12, "{}", l.loss);
    }
}
