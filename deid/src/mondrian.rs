//! Mondrian multidimensional partitioning (LeFevre, DeWitt and Ramakrishnan, 2006): local
//! recoding for tables where one generalization level per column loses too much.
//!
//! The table's distinct tuples are split recursively: each partition is cut on the
//! quasi-identifier whose values it spreads widest (as the share of the domain its common
//! generalization covers), at a cut that leaves both halves satisfying the privacy models
//! ("strict" Mondrian: every part at least k records, l-diverse / t-close when asked). A part no
//! cut can split becomes an equivalence class, and each of its quasi-identifiers is released as
//! the lowest generalization in that column's hierarchy that covers all its values, so every
//! released label is one a privacy officer has approved in the hierarchy.
//!
//! Hierarchy-aware cuts: each column's values are ordered as the hierarchy's leaves (siblings
//! together), and among admissible cuts near the median the one on the coarsest hierarchy
//! boundary is taken, so that halves map onto whole hierarchy groups rather than straddling
//! them. Nothing is suppressed: when the whole table fails the models there is no release.

use std::collections::HashMap;

use crate::dataset::Dataset;
use crate::error::Result;
use crate::lattice::Privacy;
use crate::metrics::{self, EntropyTable, Losses};

/// One equivalence class of a Mondrian release.
#[derive(Debug, Clone, PartialEq)]
pub struct MondrianClass {
    /// Per quasi-identifier, the level of the released generalization and its code there.
    pub levels: Vec<usize>,
    pub codes: Vec<u32>,
    pub size: u64,
}

/// The result of partitioning.
#[derive(Debug, Clone)]
pub struct Partitioning {
    /// Per distinct tuple of the dataset (in [`Dataset::tuples`] order), its class.
    pub class_of: Vec<u32>,
    pub classes: Vec<MondrianClass>,
    /// The metrics, defined per record for local recoding: Loss and non-uniform entropy cost
    /// each cell by the generalization it received; precision is the mean over cells of
    /// level / (height − 1); height is the mean over records of the summed levels;
    /// discernibility and AECS as for full-domain releases (nothing is suppressed).
    pub losses: Losses,
}

impl Partitioning {
    pub fn min_class_size(&self) -> u64 {
        self.classes.iter().map(|c| c.size).min().unwrap_or(0)
    }

    pub fn max_class_size(&self) -> u64 {
        self.classes.iter().map(|c| c.size).max().unwrap_or(0)
    }

    /// Per quasi-identifier, the highest level any class uses.
    pub fn max_levels(&self, q: usize) -> Vec<usize> {
        (0..q)
            .map(|j| self.classes.iter().map(|c| c.levels[j]).max().unwrap_or(0))
            .collect()
    }
}

/// Partitions below this many tuples are split on the current thread.
const PARALLEL_MIN: usize = 20_000;

struct Ctx<'a> {
    data: &'a Dataset,
    privacy: Privacy,
    q: usize,
    tuples: Vec<&'a [u32]>,
    counts: Vec<u64>,
    /// `rank[j][base]`: position of the base value among the hierarchy's leaves.
    rank: Vec<Vec<u32>>,
    entropy: EntropyTable,
}

impl Ctx<'_> {
    fn size(&self, ids: &[u32]) -> u64 {
        ids.iter().map(|&t| self.counts[t as usize]).sum()
    }

    fn hist(&self, ids: &[u32]) -> Vec<(u32, u64)> {
        let codes = self.data.sensitive_codes();
        let mut h: HashMap<u32, u64> = HashMap::new();
        for &t in ids {
            *h.entry(codes[t as usize]).or_insert(0) += self.counts[t as usize];
        }
        let mut v: Vec<(u32, u64)> = h.into_iter().collect();
        v.sort_unstable();
        v
    }

    fn ok(&self, ids: &[u32], size: u64) -> bool {
        if !self.privacy.needs_sensitive() {
            return size >= self.privacy.k as u64;
        }
        size >= self.privacy.k as u64
            && self
                .privacy
                .class_ok(size, &self.hist(ids), self.data.sensitive())
    }

    /// Lowest level at which two base values of column `j` share their generalization.
    fn meet(&self, j: usize, a: u32, b: u32) -> usize {
        let h = &self.data.quasi_identifiers()[j].hierarchy;
        (0..h.height())
            .find(|&l| h.generalize(a, l) == h.generalize(b, l))
            .unwrap_or(h.height() - 1)
    }

    /// The lowest common generalization of column `j` over a partition: (level, code). In leaf
    /// order it is the meet of the first and last leaves.
    fn cover(&self, j: usize, ids: &[u32]) -> (usize, u32) {
        let (mut lo, mut hi) = (u32::MAX, 0u32);
        let (mut lo_v, mut hi_v) = (0u32, 0u32);
        for &t in ids {
            let v = self.tuples[t as usize][j];
            let r = self.rank[j][v as usize];
            if r < lo {
                lo = r;
                lo_v = v;
            }
            if r >= hi {
                hi = r;
                hi_v = v;
            }
        }
        let level = self.meet(j, lo_v, hi_v);
        let h = &self.data.quasi_identifiers()[j].hierarchy;
        (level, h.generalize(lo_v, level))
    }

    /// Tries to cut `ids` on column `j`; returns the two halves.
    fn cut(&self, j: usize, ids: &mut [u32], total: u64) -> Option<usize> {
        ids.sort_unstable_by_key(|&t| self.rank[j][self.tuples[t as usize][j] as usize]);
        let value = |i: usize| self.tuples[ids[i] as usize][j];
        // Candidate cuts: between runs of equal values, with the weight to their left.
        let mut candidates: Vec<(usize, u64, usize)> = Vec::new(); // (position, left weight, boundary level)
        let mut left = 0u64;
        let k = self.privacy.k as u64;
        for i in 0..ids.len() {
            left += self.counts[ids[i] as usize];
            if i + 1 < ids.len() && value(i) != value(i + 1) && left >= k && total - left >= k {
                candidates.push((i + 1, left, self.meet(j, value(i), value(i + 1))));
            }
        }
        if candidates.is_empty() {
            return None;
        }
        let half = total as f64 / 2.0;
        let off = |w: u64| (w as f64 - half).abs();
        let banded: Vec<&(usize, u64, usize)> = candidates
            .iter()
            .filter(|c| c.1 * 4 >= total && c.1 * 4 <= total * 3)
            .collect();
        let mut order: Vec<&(usize, u64, usize)> = if banded.is_empty() {
            candidates.iter().collect()
        } else {
            banded
        };
        // Coarsest hierarchy boundary first, then nearest the median.
        order.sort_by(|a, b| b.2.cmp(&a.2).then(off(a.1).total_cmp(&off(b.1))));
        let tries = if self.privacy.needs_sensitive() {
            16
        } else {
            1
        };
        order
            .into_iter()
            .take(tries)
            .find(|&&(pos, w, _)| {
                !self.privacy.needs_sensitive()
                    || (self.ok(&ids[..pos], w) && self.ok(&ids[pos..], total - w))
            })
            .map(|&(pos, _, _)| pos)
    }

    /// Splits a partition until no cut is admissible; returns its classes (as tuple ids).
    fn split(&self, mut ids: Vec<u32>) -> Vec<Vec<u32>> {
        let total = self.size(&ids);
        let mut widths: Vec<(f64, usize)> = (0..self.q)
            .map(|j| {
                let (level, code) = self.cover(j, &ids);
                let w = if level == 0 {
                    -1.0
                } else {
                    self.entropy.share(j, level, code)
                };
                (w, j)
            })
            .collect();
        widths.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (w, j) in widths {
            if w < 0.0 {
                break; // one value left in this and every later column
            }
            if let Some(pos) = self.cut(j, &mut ids, total) {
                let right = ids.split_off(pos);
                let left = ids;
                let (mut a, b) = if left.len() + right.len() >= PARALLEL_MIN {
                    rayon::join(|| self.split(left), || self.split(right))
                } else {
                    (self.split(left), self.split(right))
                };
                a.extend(b);
                return a;
            }
        }
        vec![ids]
    }
}

/// Partitions `data` under `privacy` (its suppression limit is not used: Mondrian releases
/// every record). `None` when the whole table does not satisfy the models.
pub fn partition(data: &Dataset, privacy: Privacy) -> Result<Option<Partitioning>> {
    privacy.check(data)?;
    let qis = data.quasi_identifiers();
    let q = qis.len();
    let (tuples, counts): (Vec<&[u32]>, Vec<u64>) =
        data.tuples().map(|(t, n)| (t, n as u64)).unzip();
    let rank = qis
        .iter()
        .map(|x| {
            let h = &x.hierarchy;
            let mut leaves: Vec<u32> = (0..h.len() as u32).collect();
            leaves.sort_by_key(|&v| {
                (0..h.height())
                    .rev()
                    .map(|l| h.generalize(v, l))
                    .collect::<Vec<u32>>()
            });
            let mut rank = vec![0u32; h.len()];
            for (r, &v) in leaves.iter().enumerate() {
                rank[v as usize] = r as u32;
            }
            rank
        })
        .collect();
    let ctx = Ctx {
        data,
        privacy,
        q,
        tuples,
        counts,
        rank,
        entropy: EntropyTable::new(data),
    };
    let all: Vec<u32> = (0..data.distinct() as u32).collect();
    if !ctx.ok(&all, data.rows() as u64) {
        return Ok(None);
    }
    let parts = ctx.split(all);
    let mut class_of = vec![0u32; data.distinct()];
    let mut classes = Vec::with_capacity(parts.len());
    for (c, ids) in parts.iter().enumerate() {
        let mut levels = Vec::with_capacity(q);
        let mut codes = Vec::with_capacity(q);
        for j in 0..q {
            let (l, code) = ctx.cover(j, ids);
            levels.push(l);
            codes.push(code);
        }
        for &t in ids {
            class_of[t as usize] = c as u32;
        }
        classes.push(MondrianClass {
            levels,
            codes,
            size: ctx.size(ids),
        });
    }
    let losses = local_losses(&ctx, &class_of, &classes);
    Ok(Some(Partitioning {
        class_of,
        classes,
        losses,
    }))
}

/// The metrics of a local recoding, cell by cell.
fn local_losses(ctx: &Ctx<'_>, class_of: &[u32], classes: &[MondrianClass]) -> Losses {
    let data = ctx.data;
    let q = ctx.q;
    let n = data.rows() as f64;
    // Rows per generalized value, per column and level, for non-uniform entropy.
    let level_counts: Vec<Vec<Vec<u64>>> = data
        .quasi_identifiers()
        .iter()
        .enumerate()
        .map(|(j, x)| {
            let h = &x.hierarchy;
            (0..h.height())
                .map(|l| {
                    let mut b = vec![0u64; h.cardinality(l)];
                    for (v, &a) in data.value_counts(j).iter().enumerate() {
                        b[h.generalize(v as u32, l) as usize] += a;
                    }
                    b
                })
                .collect()
        })
        .collect();
    let mut nu_entropy = 0.0;
    for (t, (tuple, count)) in data.tuples().enumerate() {
        let c = &classes[class_of[t] as usize];
        for j in 0..q {
            let v = tuple[j];
            let a = data.value_counts(j)[v as usize] as f64;
            let b = level_counts[j][c.levels[j]][c.codes[j] as usize] as f64;
            nu_entropy -= count as f64 * (a / b).log2();
        }
    }
    let mut sums = vec![0.0; q];
    let mut precision = 0.0;
    let mut height = 0.0;
    let heights = data.heights();
    for c in classes {
        for j in 0..q {
            sums[j] += c.size as f64 * ctx.entropy.share(j, c.levels[j], c.codes[j]);
            if heights[j] > 1 {
                precision += c.size as f64 * c.levels[j] as f64 / (heights[j] - 1) as f64;
            }
            height += c.size as f64 * c.levels[j] as f64;
        }
    }
    Losses {
        nu_entropy,
        discernibility: classes.iter().map(|c| (c.size * c.size) as f64).sum(),
        aecs: if classes.is_empty() {
            0.0
        } else {
            n / classes.len() as f64
        },
        precision: precision / (n * q.max(1) as f64),
        height: height / n,
        loss: metrics::arx_loss(data, &sums, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Quasi;
    use crate::hierarchy::Hierarchy;
    use crate::lattice;
    use crate::sensitive::{LDiversity, LKind};

    fn ages() -> Hierarchy {
        let rows: Vec<Vec<String>> = (0..8)
            .map(|a| {
                vec![
                    a.to_string(),
                    format!("{}-{}", a / 2 * 2, a / 2 * 2 + 1),
                    format!("{}-{}", a / 4 * 4, a / 4 * 4 + 3),
                    "*".into(),
                ]
            })
            .collect();
        Hierarchy::from_rows("age", &rows).expect("hierarchy")
    }

    fn sexes() -> Hierarchy {
        Hierarchy::from_rows(
            "sex",
            &[vec!["F".into(), "*".into()], vec!["M".into(), "*".into()]],
        )
        .expect("hierarchy")
    }

    fn table(rows: &[(u32, &str, &str)]) -> Dataset {
        let owned: Vec<[String; 3]> = rows
            .iter()
            .map(|(a, s, d)| [a.to_string(), s.to_string(), d.to_string()])
            .collect();
        let refs: Vec<Vec<&str>> = owned
            .iter()
            .map(|r| r.iter().map(String::as_str).collect())
            .collect();
        Dataset::with_sensitive(
            vec![
                Quasi {
                    name: "age".into(),
                    hierarchy: ages(),
                },
                Quasi {
                    name: "sex".into(),
                    hierarchy: sexes(),
                },
            ],
            "dx",
            None,
            &refs,
        )
        .expect("data")
    }

    #[test]
    fn classes_are_k_anonymous_and_finer_than_one_level_per_column() {
        // Young women and old men: full-domain must generalize age or sex for everyone;
        // Mondrian keeps sex and narrows age per group.
        let mut rows = Vec::new();
        for a in 0..4 {
            rows.push((a, "F", "x"));
            rows.push((a, "F", "y"));
        }
        for a in 4..8 {
            rows.push((a, "M", "x"));
            rows.push((a, "M", "y"));
        }
        let data = table(&rows);
        let p = partition(&data, Privacy::k_anonymity(2, 0.0))
            .expect("valid")
            .expect("feasible");
        assert!(p.classes.iter().all(|c| c.size >= 2));
        assert_eq!(p.classes.iter().map(|c| c.size).sum::<u64>(), 16);
        assert_eq!(p.classes.len(), 8, "every age alone: {:?}", p.classes);
        // Each class's labels cover its members.
        let qis = data.quasi_identifiers();
        for (t, (tuple, _)) in data.tuples().enumerate() {
            let c = &p.classes[p.class_of[t] as usize];
            for j in 0..2 {
                assert_eq!(
                    qis[j].hierarchy.generalize(tuple[j], c.levels[j]),
                    c.codes[j]
                );
            }
        }
        assert_eq!(p.losses.loss, 0.0);
        // k = 4: pairs of ages, sex kept.
        let p = partition(&data, Privacy::k_anonymity(4, 0.0))
            .expect("valid")
            .expect("feasible");
        assert_eq!(p.classes.len(), 4);
        assert!(
            p.classes.iter().all(|c| c.levels == vec![1, 0]),
            "{:?}",
            p.classes
        );
        // Beats the full-domain optimum on Loss.
        let fd =
            crate::search::exhaustive(&data, Privacy::k_anonymity(4, 0.0), metrics::Metric::Loss)
                .expect("valid")
                .expect("feasible");
        assert!(p.losses.loss <= fd.best.losses.loss + 1e-12);
    }

    #[test]
    fn l_diversity_constrains_cuts_and_infeasible_tables_have_no_release() {
        let mut rows = Vec::new();
        for a in 0..8 {
            rows.push((a, "F", if a < 4 { "x" } else { "y" }));
            rows.push((a, "M", if a % 2 == 0 { "x" } else { "y" }));
        }
        let data = table(&rows);
        let l2 = Privacy {
            l_diversity: Some(LDiversity {
                l: 2.0,
                kind: LKind::Distinct,
            }),
            ..Privacy::k_anonymity(2, 0.0)
        };
        let p = partition(&data, l2).expect("valid").expect("feasible");
        for c in 0..p.classes.len() as u32 {
            let mut dx: Vec<u32> = data
                .sensitive_codes()
                .iter()
                .zip(&p.class_of)
                .filter(|&(_, &k)| k == c)
                .map(|(&d, _)| d)
                .collect();
            dx.sort_unstable();
            dx.dedup();
            assert!(dx.len() >= 2, "class {c} has one diagnosis");
        }
        let none = partition(&data, Privacy::k_anonymity(17, 0.0)).expect("valid");
        assert!(none.is_none());
        // The classes agree with a recount from the data.
        let total: u64 = lattice::class_sizes(&data, &[3, 1]).iter().sum();
        assert_eq!(total, p.classes.iter().map(|c| c.size).sum::<u64>());
    }
}
