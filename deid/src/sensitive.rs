//! Models that protect a sensitive attribute inside each equivalence class: l-diversity
//! (distinct, entropy, recursive (c,l)) and t-closeness (equal, ordered and hierarchical earth
//! mover's distance), after Machanavajjhala et al. (2007), Li et al. (2007), and ARX.

use crate::hierarchy::Hierarchy;

/// Which l-diversity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LKind {
    /// At least l distinct sensitive values.
    Distinct,
    /// Entropy of the sensitive values at least log(l).
    Entropy,
    /// Recursive (c,l): the most frequent value is less than c times the sum of all but the
    /// l − 1 most frequent.
    Recursive { c: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LDiversity {
    pub l: f64,
    pub kind: LKind,
}

/// Ground distance for t-closeness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TDistance {
    /// Every pair of distinct values is at distance 1.
    Equal,
    /// Values in their order (numeric when all are numbers); adjacent ones 1/(m−1) apart.
    Ordered,
    /// Distance through the attribute's generalization hierarchy.
    Hierarchical,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TCloseness {
    pub t: f64,
    pub distance: TDistance,
}

/// The sensitive column: its distinct values, their order, optional hierarchy, and the
/// distribution over the whole table.
#[derive(Debug, Clone)]
pub struct SensitiveColumn {
    pub name: String,
    pub values: Vec<String>,
    /// `rank[code]`: position of the value in the attribute's order.
    pub rank: Vec<usize>,
    pub hierarchy: Option<Hierarchy>,
    /// Rows holding each value.
    pub counts: Vec<u64>,
}

impl SensitiveColumn {
    /// Orders values numerically when every one parses as a number, else as text.
    pub fn new(
        name: &str,
        values: Vec<String>,
        counts: Vec<u64>,
        hierarchy: Option<Hierarchy>,
    ) -> SensitiveColumn {
        let mut order: Vec<usize> = (0..values.len()).collect();
        let numbers: Option<Vec<f64>> = values
            .iter()
            .map(|v| v.trim().parse::<f64>().ok())
            .collect();
        match &numbers {
            Some(n) => order.sort_by(|&a, &b| n[a].total_cmp(&n[b])),
            None => order.sort_by(|&a, &b| values[a].cmp(&values[b])),
        }
        let mut rank = vec![0; values.len()];
        for (r, &code) in order.iter().enumerate() {
            rank[code] = r;
        }
        SensitiveColumn {
            name: name.to_string(),
            values,
            rank,
            hierarchy,
            counts,
        }
    }
}

/// Whether a class's sensitive histogram `(code, count)` satisfies l-diversity.
pub fn l_diverse(hist: &[(u32, u64)], model: LDiversity) -> bool {
    let total: u64 = hist.iter().map(|&(_, n)| n).sum();
    let distinct = hist.iter().filter(|&&(_, n)| n > 0).count();
    match model.kind {
        LKind::Distinct => distinct as f64 >= model.l,
        LKind::Entropy => {
            let t = total as f64;
            let h: f64 = hist
                .iter()
                .filter(|&&(_, n)| n > 0)
                .map(|&(_, n)| {
                    let p = n as f64 / t;
                    -p * p.ln()
                })
                .sum();
            h >= model.l.ln() - 1e-12
        }
        LKind::Recursive { c } => {
            let l = model.l.round() as usize;
            let mut counts: Vec<u64> = hist.iter().map(|&(_, n)| n).filter(|&n| n > 0).collect();
            if counts.len() < l || l == 0 {
                return false;
            }
            counts.sort_unstable_by(|a, b| b.cmp(a));
            let tail: u64 = counts[l - 1..].iter().sum();
            (counts[0] as f64) < c * tail as f64
        }
    }
}

/// Earth mover's distance between a class's distribution and the table's.
pub fn emd(hist: &[(u32, u64)], column: &SensitiveColumn, distance: TDistance) -> f64 {
    let m = column.values.len();
    let total_all: u64 = column.counts.iter().sum();
    let total: u64 = hist.iter().map(|&(_, n)| n).sum();
    let mut p = vec![0.0; m];
    for &(code, n) in hist {
        p[code as usize] = n as f64 / total as f64;
    }
    let q: Vec<f64> = column
        .counts
        .iter()
        .map(|&n| n as f64 / total_all as f64)
        .collect();
    match distance {
        TDistance::Equal => 0.5 * p.iter().zip(&q).map(|(a, b)| (a - b).abs()).sum::<f64>(),
        TDistance::Ordered => {
            if m < 2 {
                return 0.0;
            }
            let mut by_rank = vec![0.0; m];
            for code in 0..m {
                by_rank[column.rank[code]] = p[code] - q[code];
            }
            let mut running = 0.0;
            let mut sum = 0.0;
            for d in by_rank {
                running += d;
                sum += f64::abs(running);
            }
            sum / (m - 1) as f64
        }
        TDistance::Hierarchical => match &column.hierarchy {
            None => f64::NAN,
            Some(h) => hierarchical_emd(&p, &q, column, h),
        },
    }
}

/// Li et al.'s hierarchical distance: at each node of the hierarchy, the mass that must move
/// between its children is min(positive extra, negative extra), at a cost of the node's level
/// over the hierarchy's top level.
fn hierarchical_emd(p: &[f64], q: &[f64], column: &SensitiveColumn, h: &Hierarchy) -> f64 {
    let top = h.height() - 1;
    if top == 0 {
        return 0.0;
    }
    // extra of each leaf (the hierarchy's level-0 values), by hierarchy code.
    let mut extra: Vec<f64> = vec![0.0; h.len()];
    for (code, v) in column.values.iter().enumerate() {
        if let Some(c) = h.code(v) {
            extra[c as usize] = p[code] - q[code];
        }
    }
    let mut cost = 0.0;
    // Walk up: at level l, group level-(l−1) nodes under their parents.
    let mut below: Vec<f64> = extra; // indexed by code at level l−1 (level 0: base codes)
    for l in 1..=top {
        let mut pos = vec![0.0; h.cardinality(l)];
        let mut neg = vec![0.0; h.cardinality(l)];
        let mut seen = vec![false; h.cardinality(l - 1)];
        for base in 0..h.len() as u32 {
            let child = h.generalize(base, l - 1) as usize;
            if seen[child] {
                continue;
            }
            seen[child] = true;
            let parent = h.generalize(base, l) as usize;
            let e = below[child];
            if e > 0.0 {
                pos[parent] += e;
            } else {
                neg[parent] -= e;
            }
        }
        cost += pos.iter().zip(&neg).map(|(a, b)| a.min(*b)).sum::<f64>() * l as f64 / top as f64;
        below = pos.iter().zip(&neg).map(|(a, b)| a - b).collect();
    }
    cost
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(values: &[&str], counts: &[u64]) -> SensitiveColumn {
        SensitiveColumn::new(
            "s",
            values.iter().map(|v| v.to_string()).collect(),
            counts.to_vec(),
            None,
        )
    }

    #[test]
    fn l_diversity_kinds() {
        let hist = [(0, 5), (1, 3), (2, 1)];
        assert!(l_diverse(
            &hist,
            LDiversity {
                l: 3.0,
                kind: LKind::Distinct
            }
        ));
        assert!(!l_diverse(
            &hist,
            LDiversity {
                l: 4.0,
                kind: LKind::Distinct
            }
        ));
        // entropy = -(5/9 ln 5/9 + 3/9 ln 3/9 + 1/9 ln 1/9) = 0.9368 → e^0.9368 = 2.55
        assert!(l_diverse(
            &hist,
            LDiversity {
                l: 2.5,
                kind: LKind::Entropy
            }
        ));
        assert!(!l_diverse(
            &hist,
            LDiversity {
                l: 2.6,
                kind: LKind::Entropy
            }
        ));
        // recursive (c,2): 5 < c (3 + 1)
        assert!(l_diverse(
            &hist,
            LDiversity {
                l: 2.0,
                kind: LKind::Recursive { c: 1.5 }
            }
        ));
        assert!(!l_diverse(
            &hist,
            LDiversity {
                l: 2.0,
                kind: LKind::Recursive { c: 1.25 }
            }
        ));
    }

    #[test]
    fn emd_distances() {
        // Li et al.'s salary example: table {3k..11k} uniform; class {3k,4k,5k}.
        let values: Vec<String> = (3..=11).map(|k| format!("{}", k * 1000)).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let col = column(&refs, &[1; 9]);
        let class = [(0, 1), (1, 1), (2, 1)];
        let ordered = emd(&class, &col, TDistance::Ordered);
        assert!((ordered - 0.375).abs() < 1e-12, "{ordered}");
        let class2 = [(3, 1), (5, 1), (8, 1)]; // {6k, 8k, 11k}
        assert!((emd(&class2, &col, TDistance::Ordered) - 0.1667).abs() < 1e-3);
        let equal = emd(&class, &col, TDistance::Equal);
        assert!((equal - 2.0 / 3.0).abs() < 1e-12, "{equal}");
    }

    #[test]
    fn hierarchical_distance() {
        let rows: Vec<Vec<String>> = [
            ["flu", "respiratory", "*"],
            ["cold", "respiratory", "*"],
            ["ulcer", "digestive", "*"],
            ["gastritis", "digestive", "*"],
        ]
        .iter()
        .map(|r| r.iter().map(|s| s.to_string()).collect())
        .collect();
        let h = Hierarchy::from_rows("disease", &rows).expect("hierarchy");
        let values: Vec<String> = ["flu", "cold", "ulcer", "gastritis"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let col = SensitiveColumn::new("d", values, vec![1, 1, 1, 1], Some(h));
        // Same distribution: distance 0. All mass in one leaf of the respiratory branch:
        // 0.25 moves within "respiratory" at cost 1/2, 0.5 moves across the root at cost 1.
        assert!(
            emd(
                &[(0, 1), (1, 1), (2, 1), (3, 1)],
                &col,
                TDistance::Hierarchical
            )
            .abs()
                < 1e-12
        );
        let d = emd(&[(0, 1)], &col, TDistance::Hierarchical);
        assert!((d - (0.25 * 0.5 + 0.5)).abs() < 1e-12, "{d}");
    }
}
