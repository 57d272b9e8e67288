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

fn table() -> impl Strategy<Value = (Vec<(u32, usize, u32)>, Vec<Vec<u32>>)> {
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
        let privacy = Privacy { k, suppression_limit: limit };
        for metric in [Metric::NonUniformEntropy, Metric::Precision, Metric::Height, Metric::Discernibility, Metric::Aecs] {
            let fast = search::optimal(&data, privacy, metric);
            let slow = search::exhaustive(&data, privacy, metric);
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
