//! Fast evaluation of the whole lattice: each node's equivalence classes are computed from the
//! classes of one of its predecessors (one quasi-identifier one level lower) by mapping that
//! column's codes one level up and merging, rather than from the data (ARX's "roll-up"). Nodes
//! of one height are independent and are spread over all cores.

use std::collections::HashMap;

use crate::dataset::Dataset;
use crate::lattice::{Evaluation, Privacy};
use crate::metrics::EntropyTable;

/// A node's equivalence classes: generalized tuples (flattened) and their sizes.
#[derive(Debug, Clone, Default)]
pub struct Classes {
    pub tuples: Vec<u32>,
    pub sizes: Vec<u64>,
    /// Per class, the histogram of its sensitive values `(code, count)`, sorted by code; empty
    /// when the dataset has no sensitive attribute (or the caller does not need them).
    pub hists: Vec<Vec<(u32, u64)>>,
}

/// Adds histogram `b` into `a` (both sorted by code).
fn merge_hist(a: &mut Vec<(u32, u64)>, b: &[(u32, u64)]) {
    for &(code, n) in b {
        match a.binary_search_by_key(&code, |x| x.0) {
            Ok(i) => a[i].1 += n,
            Err(i) => a.insert(i, (code, n)),
        }
    }
}

/// Per quasi-identifier and level `l ≥ 1`, the code at `l` of each code at `l − 1`.
fn step_maps(data: &Dataset) -> Vec<Vec<Vec<u32>>> {
    data.quasi_identifiers()
        .iter()
        .map(|q| {
            let h = &q.hierarchy;
            let mut per_level = vec![Vec::new()];
            for l in 1..h.height() {
                let mut m = vec![0u32; h.cardinality(l - 1)];
                for base in 0..h.len() as u32 {
                    m[h.generalize(base, l - 1) as usize] = h.generalize(base, l);
                }
                per_level.push(m);
            }
            per_level
        })
        .collect()
}

/// The bottom node's classes: distinct tuples grouped on their quasi-identifiers (a dataset
/// with a sensitive attribute holds one tuple per quasi-identifiers and sensitive value).
fn bottom(data: &Dataset) -> Classes {
    let q = data.quasi_identifiers().len();
    let codes = data.sensitive_codes();
    let mut index: foldhash::HashMap<&[u32], usize> = foldhash::HashMap::default();
    let mut c = Classes::default();
    for (i, (t, n)) in data.tuples().enumerate() {
        let slot = match index.get(t) {
            Some(&slot) => {
                c.sizes[slot] += n as u64;
                slot
            }
            None => {
                index.insert(t, c.sizes.len());
                c.tuples.extend_from_slice(t);
                c.sizes.push(n as u64);
                if !codes.is_empty() {
                    c.hists.push(Vec::new());
                }
                c.sizes.len() - 1
            }
        };
        if let Some(&s) = codes.get(i) {
            merge_hist(&mut c.hists[slot], &[(s, n as u64)]);
        }
    }
    debug_assert_eq!(c.tuples.len(), c.sizes.len() * q);
    c
}

/// Classes of `parent` with column `j` raised one level through `map`.
fn raise(parent: &Classes, q: usize, j: usize, map: &[u32]) -> Classes {
    let mut index: foldhash::HashMap<&[u32], usize> =
        foldhash::HashMap::with_capacity_and_hasher(parent.sizes.len(), Default::default());
    let mut scratch: Vec<u32> = parent.tuples.clone();
    for t in scratch.chunks_exact_mut(q) {
        t[j] = map[t[j] as usize];
    }
    let mut out = Classes::default();
    let with_hists = !parent.hists.is_empty();
    let mut order: Vec<usize> = Vec::with_capacity(parent.sizes.len());
    for (i, t) in scratch.chunks_exact(q).enumerate() {
        match index.get(t) {
            Some(&slot) => {
                out.sizes[slot] += parent.sizes[i];
                if with_hists {
                    merge_hist(&mut out.hists[slot], &parent.hists[i]);
                }
            }
            None => {
                index.insert(t, out.sizes.len());
                out.sizes.push(parent.sizes[i]);
                if with_hists {
                    out.hists.push(parent.hists[i].clone());
                }
                order.push(i);
            }
        }
    }
    drop(index);
    out.tuples.reserve(order.len() * q);
    for i in order {
        out.tuples.extend_from_slice(&scratch[i * q..(i + 1) * q]);
    }
    out
}

/// A node's evaluation from its classes: with histograms, under every model of `privacy`;
/// without, under k-anonymity. Classes failing a model are suppressed.
pub(crate) fn evaluate_classes(
    data: &Dataset,
    levels: &[usize],
    classes: &Classes,
    privacy: Privacy,
    entropy: &EntropyTable,
) -> Evaluation {
    let k = privacy.k as u64;
    let q = levels.len().max(1);
    crate::lattice::evaluation_from(
        data,
        levels,
        privacy,
        entropy,
        classes
            .tuples
            .chunks_exact(q)
            .zip(&classes.sizes)
            .enumerate()
            .map(|(i, (t, &s))| {
                let ok = match classes.hists.get(i) {
                    Some(h) => privacy.class_ok(s, h, data.sensitive()),
                    None => s >= k,
                };
                (t, s, ok)
            }),
    )
}

/// Evaluates every node of the lattice, height by height, using all cores.
pub fn evaluate_all(data: &Dataset, privacy: Privacy) -> Vec<Evaluation> {
    let heights = data.heights();
    let q = heights.len();
    let entropy = EntropyTable::new(data);
    let steps = step_maps(data);
    let max_sum: usize = heights.iter().map(|h| h - 1).sum();
    let mut by_height: Vec<Vec<Vec<usize>>> = vec![Vec::new(); max_sum + 1];
    for n in crate::lattice::nodes(&heights) {
        let s = n.iter().sum::<usize>();
        by_height[s].push(n);
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut out = Vec::new();
    let mut previous: HashMap<Vec<usize>, Classes> = HashMap::new();
    for (h, nodes) in by_height.into_iter().enumerate() {
        let computed: Vec<(Vec<usize>, Classes)> = if h == 0 {
            nodes.into_iter().map(|n| (n, bottom(data))).collect()
        } else {
            let prev = &previous;
            let steps = &steps;
            let chunk = nodes.len().div_ceil(threads).max(1);
            std::thread::scope(|s| {
                let handles: Vec<_> = nodes
                    .chunks(chunk)
                    .map(|part| {
                        s.spawn(move || {
                            part.iter()
                                .map(|n| {
                                    let j = n.iter().position(|&l| l > 0).unwrap_or(0);
                                    let mut p = n.clone();
                                    p[j] -= 1;
                                    let parent = &prev[&p];
                                    (n.clone(), raise(parent, q, j, &steps[j][n[j]]))
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect()
            })
        };
        for (n, c) in &computed {
            out.push(evaluate_classes(data, n, c, privacy, &entropy));
        }
        previous = computed.into_iter().collect();
    }
    out
}
