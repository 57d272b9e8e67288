//! Property tests: on random small tables with random hierarchies, the optimized search returns
//! the same optimum as evaluating every node directly, and its output is k-anonymous within the
//! suppression limit.

use proptest::prelude::*;

use crate::dataset::{Dataset, Quasi};
use crate::hierarchy::Hierarchy;
use crate::lattice::{self, Privacy};
use crate::metrics::Metric;
use crate::search;

/// A hierarchy over `values` values with `levels` levels: at level l, value v generalizes to
/// v / fanout^l, and the top is `*`.
fn hierarchy(name: &str, values: u32, levels: usize, fanout: u32) -> Hierarchy {
    let rows: Vec<Vec<String>> = (0..values)
        .map(|v| {
            (0..levels)
                .map(|l| {
                    if l == 0 {
                        v.to_string()
                    } else if l + 1 == levels {
                        "*".to_string()
                    } else {
                        format!("g{l}-{}", v / fanout.pow(l as u32))
                    }
                })
                .collect()
        })
        .collect();
    Hierarchy::from_rows(name, &rows).expect("valid hierarchy")
}

/// Per quasi-identifier: (values, levels, fan-out).
type Shape = Vec<(u32, usize, u32)>;

fn table() -> impl Strategy<Value = (Shape, Vec<Vec<u32>>)> {
    // 2-4 quasi-identifiers, each with 2-8 values, 2-4 levels, fan-out 2-3; 20-200 rows.
    prop::collection::vec((2u32..8, 2usize..5, 2u32..4), 2..5).prop_flat_map(|shape| {
        let row = shape.iter().map(|&(n, _, _)| 0..n).collect::<Vec<_>>();
        (Just(shape), prop::collection::vec(row, 20..200))
    })
}

fn build(shape: &[(u32, usize, u32)], rows: &[Vec<u32>]) -> Dataset {
    let qis = shape
        .iter()
        .enumerate()
        .map(|(j, &(n, levels, fanout))| Quasi {
            name: format!("q{j}"),
            hierarchy: hierarchy(&format!("q{j}"), n, levels, fanout),
        })
        .collect();
    let text: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(u32::to_string).collect())
        .collect();
    let refs: Vec<Vec<&str>> = text
        .iter()
        .map(|r| r.iter().map(String::as_str).collect())
        .collect();
    Dataset::new(qis, refs).expect("dataset")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn optimized_search_equals_brute_force((shape, rows) in table(), k in 1u32..6, limit in prop::sample::select(vec![0.0, 0.02, 0.1, 0.3])) {
        let data = build(&shape, &rows);
        let privacy = Privacy::k_anonymity(k, limit);
        for metric in [Metric::NonUniformEntropy, Metric::Precision, Metric::Height, Metric::Discernibility, Metric::Aecs, Metric::Loss] {
            let fast = search::optimal(&data, privacy, metric).expect("valid");
            let slow = search::exhaustive(&data, privacy, metric).expect("valid");
            match (fast, slow) {
                (None, None) => {}
                (Some(f), Some(s)) => {
                    prop_assert!((f.best.losses.get(metric) - s.best.losses.get(metric)).abs() < 1e-9,
                        "{metric:?}: {:?} vs {:?}", f.best.levels, s.best.levels);
                    prop_assert_eq!(&f.best.levels, &s.best.levels, "{:?}", metric);
                    // The output really is k-anonymous after suppression, within the limit.
                    let sizes = lattice::class_sizes(&data, &f.best.levels);
                    let suppressed: u64 = sizes.iter().filter(|&&c| c < k as u64).sum();
                    prop_assert_eq!(suppressed, f.best.suppressed_records);
                    prop_assert!(suppressed as f64 <= limit * data.rows() as f64 + 1e-9);
                    prop_assert!(sizes.iter().filter(|&&c| c >= k as u64).all(|&c| c >= k as u64));
                }
                (f, s) => prop_assert!(false, "one found a solution, the other not: {:?} / {:?}", f.map(|x| x.best.levels), s.map(|x| x.best.levels)),
            }
        }
    }
}

/// Independent check of a release: group the raw rows by their generalized labels, and recount
/// what l-diversity (distinct) and t-closeness (equal distance) require, with plain code.
fn independent_suppressed(
    shape: &[(u32, usize, u32)],
    rows: &[Vec<u32>],
    sens: &[u32],
    levels: &[usize],
    k: u64,
    l: usize,
    t: f64,
) -> u64 {
    use std::collections::{BTreeMap, BTreeSet};
    let hs: Vec<Hierarchy> = shape
        .iter()
        .enumerate()
        .map(|(j, &(n, lv, f))| hierarchy(&format!("q{j}"), n, lv, f))
        .collect();
    let mut groups: BTreeMap<Vec<String>, Vec<u32>> = BTreeMap::new();
    for (r, s) in rows.iter().zip(sens) {
        let key = r
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let h = &hs[j];
                let code = h.code(&v.to_string()).expect("code");
                h.label(levels[j], h.generalize(code, levels[j]))
                    .to_string()
            })
            .collect();
        groups.entry(key).or_default().push(*s);
    }
    let n = sens.len() as f64;
    let domain: BTreeSet<u32> = sens.iter().copied().collect();
    let overall = |v: u32| sens.iter().filter(|&&x| x == v).count() as f64 / n;
    let mut suppressed = 0;
    for members in groups.values() {
        let distinct: BTreeSet<u32> = members.iter().copied().collect();
        let size = members.len() as f64;
        let emd: f64 = 0.5
            * domain
                .iter()
                .map(|&v| {
                    (members.iter().filter(|&&x| x == v).count() as f64 / size - overall(v)).abs()
                })
                .sum::<f64>();
        if (members.len() as u64) < k || distinct.len() < l || emd > t + 1e-12 {
            suppressed += members.len() as u64;
        }
    }
    suppressed
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn l_diverse_and_t_close_releases((shape, rows) in table(), seed in 0u32..1000, k in 1u32..4, l in 1usize..4, t in prop::sample::select(vec![0.2, 0.4, 1.0])) {
        use crate::sensitive::{LDiversity, LKind, TCloseness, TDistance};
        // A sensitive value per row, correlated with the first quasi-identifier.
        let sens: Vec<u32> = rows.iter().enumerate().map(|(i, r)| (r[0] + (i as u32 * 7 + seed) % 3) % 4).collect();
        let qis = shape
            .iter()
            .enumerate()
            .map(|(j, &(n, levels, fanout))| Quasi { name: format!("q{j}"), hierarchy: hierarchy(&format!("q{j}"), n, levels, fanout) })
            .collect();
        let text: Vec<Vec<String>> = rows
            .iter()
            .zip(&sens)
            .map(|(r, s)| r.iter().map(u32::to_string).chain(std::iter::once(format!("s{s}"))).collect())
            .collect();
        let refs: Vec<Vec<&str>> = text.iter().map(|r| r.iter().map(String::as_str).collect()).collect();
        let data = Dataset::with_sensitive(qis, "diagnosis", None, refs).expect("dataset");
        let privacy = Privacy {
            k,
            suppression_limit: 0.2,
            l_diversity: Some(LDiversity { l: l as f64, kind: LKind::Distinct }),
            t_closeness: Some(TCloseness { t, distance: TDistance::Equal }),
        };
        let fast = search::optimal(&data, privacy, Metric::NonUniformEntropy).expect("valid");
        let slow = search::exhaustive(&data, privacy, Metric::NonUniformEntropy).expect("valid");
        prop_assert_eq!(fast.as_ref().map(|s| &s.best.levels), slow.as_ref().map(|s| &s.best.levels));
        if let Some(sol) = fast {
            let independent = independent_suppressed(&shape, &rows, &sens, &sol.best.levels, k as u64, l, t);
            prop_assert_eq!(independent, sol.best.suppressed_records);
            prop_assert!(independent as f64 <= 0.2 * rows.len() as f64 + 1e-9);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// Mondrian: every record is released in a class of at least k records whose labels cover
    /// it, grouped by the labels an attacker sees every group still has k or more, and with
    /// l-diversity each class holds l distinct sensitive values.
    #[test]
    fn mondrian_releases_are_k_anonymous_and_l_diverse((shape, rows) in table(), k in 1u32..6, l in 1usize..4) {
        use std::collections::{BTreeMap, BTreeSet};
        use crate::sensitive::{LDiversity, LKind};
        let sens: Vec<u32> = rows.iter().enumerate().map(|(i, r)| (r[0] + i as u32) % 4).collect();
        let qis: Vec<Quasi> = shape
            .iter()
            .enumerate()
            .map(|(j, &(n, levels, fanout))| Quasi { name: format!("q{j}"), hierarchy: hierarchy(&format!("q{j}"), n, levels, fanout) })
            .collect();
        let text: Vec<Vec<String>> = rows
            .iter()
            .zip(&sens)
            .map(|(r, s)| r.iter().map(u32::to_string).chain(std::iter::once(format!("s{s}"))).collect())
            .collect();
        let refs: Vec<Vec<&str>> = text.iter().map(|r| r.iter().map(String::as_str).collect()).collect();
        let data = Dataset::with_sensitive(qis.clone(), "dx", None, refs).expect("dataset");
        let privacy = Privacy {
            l_diversity: Some(LDiversity { l: l as f64, kind: LKind::Distinct }),
            ..Privacy::k_anonymity(k, 0.0)
        };
        let distinct_all: BTreeSet<u32> = sens.iter().copied().collect();
        let Some(p) = crate::mondrian::partition(&data, privacy).expect("valid") else {
            // No release only when the whole table fails.
            prop_assert!(rows.len() < k as usize || distinct_all.len() < l);
            return Ok(());
        };
        prop_assert_eq!(p.classes.iter().map(|c| c.size).sum::<u64>(), rows.len() as u64);
        // Rows by the labels they are released with.
        let mut by_label: BTreeMap<Vec<String>, (u64, BTreeSet<u32>)> = BTreeMap::new();
        let mut by_class: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for (r, s) in rows.iter().zip(&sens) {
            let codes: Vec<u32> = r.iter().enumerate().map(|(j, v)| qis[j].hierarchy.code(&v.to_string()).expect("code")).collect();
            let t = data.tuples().position(|(tuple, _)| tuple == codes.as_slice()).expect("tuple");
            let c = p.class_of[t];
            let class = &p.classes[c as usize];
            let labels: Vec<String> = (0..qis.len())
                .map(|j| {
                    prop_assert_eq!(qis[j].hierarchy.generalize(codes[j], class.levels[j]), class.codes[j]);
                    Ok(qis[j].hierarchy.label(class.levels[j], class.codes[j]).to_string())
                })
                .collect::<Result<_, TestCaseError>>()?;
            let e = by_label.entry(labels).or_default();
            e.0 += 1;
            e.1.insert(*s);
            by_class.entry(c).or_default().insert(*s);
        }
        for (size, _) in by_label.values() {
            prop_assert!(*size >= k as u64);
        }
        for values in by_class.values() {
            prop_assert!(values.len() >= l);
        }
    }
}
