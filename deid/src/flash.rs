//! The globally optimal search for monotone privacy models, after ARX's Flash: walk upward
//! paths through the lattice, binary-search each path for its lowest feasible node, and tag
//! what each answer implies (every node above a feasible node is feasible, every node below an
//! infeasible one is not), until every node's feasibility is known. Nodes are evaluated from
//! the classes of the closest evaluated node below them (roll-up), never twice.

use std::collections::HashMap;

use crate::dataset::Dataset;
use crate::lattice::{Evaluation, Privacy};
use crate::metrics::{self, EntropyTable, Metric};
use crate::rollup::Classes;

/// Nodes rolled up from a base of at least this many classes are grouped on all cores (low in
/// tests, so that the golden and property tests run the parallel path).
#[cfg(not(test))]
const PARALLEL_MIN: usize = 100_000;
#[cfg(test)]
const PARALLEL_MIN: usize = 64;
/// Evaluated nodes kept for roll-up, at most.
const CACHE_NODES: usize = 4096;
/// Memory for cached classes beyond the bottom node's, in tuple codes (4 bytes each): the
/// larger of this and four times the bottom node's size. On a 10M-row table a low node can
/// hold millions of classes; without a bound the cache would hold gigabytes.
const CACHE_WORDS: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unknown,
    Feasible,
    Infeasible,
}

/// The lattice as dense node ids (mixed radix over the heights).
struct Lattice {
    heights: Vec<usize>,
    strides: Vec<usize>,
    size: usize,
}

impl Lattice {
    fn new(heights: &[usize]) -> Lattice {
        let mut strides = vec![1; heights.len()];
        for j in (0..heights.len().saturating_sub(1)).rev() {
            strides[j] = strides[j + 1] * heights[j + 1];
        }
        Lattice {
            heights: heights.to_vec(),
            size: heights.iter().product(),
            strides,
        }
    }

    fn levels(&self, id: usize) -> Vec<usize> {
        self.strides
            .iter()
            .zip(&self.heights)
            .map(|(s, h)| (id / s) % h)
            .collect()
    }

    fn level(&self, id: usize, j: usize) -> usize {
        (id / self.strides[j]) % self.heights[j]
    }

    fn successors(&self, id: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.heights.len())
            .filter(move |&j| self.level(id, j) + 1 < self.heights[j])
            .map(move |j| id + self.strides[j])
    }

    fn predecessors(&self, id: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.heights.len())
            .filter(move |&j| self.level(id, j) > 0)
            .map(move |j| id - self.strides[j])
    }
}

/// Evaluates nodes from cached classes of nodes below them.
struct Evaluator<'a> {
    data: &'a Dataset,
    privacy: Privacy,
    entropy: EntropyTable,
    cache: Vec<(Vec<usize>, Classes)>,
    /// Size of the cached classes other than the bottom node's.
    cached_words: usize,
    /// Feasibility of every node evaluated.
    evaluated: HashMap<Vec<usize>, bool>,
}

impl<'a> Evaluator<'a> {
    fn new(data: &'a Dataset, privacy: Privacy) -> Self {
        let mut bottom = Classes::default();
        for (t, n) in data.tuples() {
            bottom.tuples.extend_from_slice(t);
            bottom.sizes.push(n as u64);
        }
        Evaluator {
            data,
            privacy,
            entropy: EntropyTable::new(data),
            cache: vec![(vec![0; data.quasi_identifiers().len()], bottom)],
            cached_words: 0,
            evaluated: HashMap::new(),
        }
    }

    fn classes_of(&self, levels: &[usize]) -> Classes {
        // The cached node below `levels` with the fewest classes.
        let (from, base) = self
            .cache
            .iter()
            .filter(|(l, _)| l.iter().zip(levels).all(|(a, b)| a <= b))
            .min_by_key(|(_, c)| c.sizes.len())
            .map(|(l, c)| (l.clone(), c))
            .expect("the bottom node is always cached");
        let qis = self.data.quasi_identifiers();
        let q = qis.len();
        let maps: Vec<Option<Vec<u32>>> = (0..q)
            .map(|j| {
                (from[j] != levels[j]).then(|| {
                    let h = &qis[j].hierarchy;
                    let mut m = vec![0u32; h.cardinality(from[j])];
                    for v in 0..h.len() as u32 {
                        m[h.generalize(v, from[j]) as usize] = h.generalize(v, levels[j]);
                    }
                    m
                })
            })
            .collect();
        // Classes are grouped on the tuple packed into one integer (mixed radix over the
        // target levels' cardinalities); wider tuples fall back to hashing the codes.
        let radix: Vec<u128> = (0..q)
            .map(|j| qis[j].hierarchy.cardinality(levels[j]) as u128)
            .collect();
        let bits: f64 = radix.iter().map(|&r| (r.max(1) as f64).log2()).sum();
        let mut out = Classes::default();
        let mut key = vec![0u32; q];
        let fill = |t: &[u32], key: &mut Vec<u32>| {
            for j in 0..q {
                key[j] = match &maps[j] {
                    Some(m) => m[t[j] as usize],
                    None => t[j],
                };
            }
        };
        // Per column, each base code's contribution to the packed key (its target code times the
        // column's place value): a key is a sum of table lookups, with no multiplication.
        let places: Vec<u128> = {
            let mut p = vec![1u128; q];
            for j in (0..q.saturating_sub(1)).rev() {
                p[j] = p[j + 1] * radix[j + 1].max(1);
            }
            p
        };
        let tables: Vec<Vec<u128>> = if bits < 127.0 {
            (0..q)
                .map(|j| {
                    (0..qis[j].hierarchy.cardinality(from[j]) as u32)
                        .map(|c| {
                            let target = match &maps[j] {
                                Some(m) => m[c as usize],
                                None => c,
                            };
                            target as u128 * places[j]
                        })
                        .collect()
                })
                .collect()
        } else {
            Vec::new()
        };
        let pack = |t: &[u32]| -> u128 {
            t.iter()
                .zip(&tables)
                .map(|(&c, table)| table[c as usize])
                .sum()
        };
        let product: f64 = radix.iter().map(|&r| r.max(1) as f64).product();
        if product <= ((4 * base.sizes.len()).max(1 << 16)) as f64 {
            // Few possible keys: a dense table of slots instead of a hash map.
            let mut slots = vec![u32::MAX; product as usize];
            for (i, t) in base.tuples.chunks_exact(q.max(1)).enumerate() {
                let p = pack(t) as usize;
                match slots[p] {
                    u32::MAX => {
                        slots[p] = out.sizes.len() as u32;
                        fill(t, &mut key);
                        out.tuples.extend_from_slice(&key);
                        out.sizes.push(base.sizes[i]);
                    }
                    slot => out.sizes[slot as usize] += base.sizes[i],
                }
            }
        } else if bits < 127.0 {
            // Large bases are grouped in parallel: each core groups a contiguous share, then
            // the shares merge in order, which keeps first-appearance order (as one pass would).
            let threads = rayon::current_num_threads().max(1);
            let parts = if base.sizes.len() >= PARALLEL_MIN && threads > 1 {
                threads
            } else {
                1
            };
            let chunk = base.sizes.len().div_ceil(parts).max(1);
            let local = |p: usize| {
                let lo = (p * chunk).min(base.sizes.len());
                let hi = ((p + 1) * chunk).min(base.sizes.len());
                let mut index: foldhash::HashMap<u128, usize> =
                    foldhash::HashMap::with_capacity_and_hasher(hi - lo, Default::default());
                let mut keys: Vec<u128> = Vec::new();
                let mut part = Classes::default();
                let mut key = vec![0u32; q];
                for i in lo..hi {
                    let t = &base.tuples[i * q..(i + 1) * q];
                    let packed = pack(t);
                    match index.get(&packed) {
                        Some(&slot) => part.sizes[slot] += base.sizes[i],
                        None => {
                            index.insert(packed, part.sizes.len());
                            keys.push(packed);
                            fill(t, &mut key);
                            part.tuples.extend_from_slice(&key);
                            part.sizes.push(base.sizes[i]);
                        }
                    }
                }
                (index, keys, part)
            };
            let mut shares: Vec<_> = if parts > 1 {
                use rayon::prelude::*;
                (0..parts).into_par_iter().map(local).collect()
            } else {
                vec![local(0)]
            };
            let rest = shares.split_off(1);
            let (mut index, _, first) = shares.pop().expect("one share");
            out = first;
            for (_, keys, part) in rest {
                for (c, packed) in keys.into_iter().enumerate() {
                    match index.get(&packed) {
                        Some(&slot) => out.sizes[slot] += part.sizes[c],
                        None => {
                            index.insert(packed, out.sizes.len());
                            out.tuples
                                .extend_from_slice(&part.tuples[c * q..(c + 1) * q]);
                            out.sizes.push(part.sizes[c]);
                        }
                    }
                }
            }
        } else {
            let mut index: foldhash::HashMap<Vec<u32>, usize> =
                foldhash::HashMap::with_capacity_and_hasher(base.sizes.len(), Default::default());
            for (i, t) in base.tuples.chunks_exact(q).enumerate() {
                fill(t, &mut key);
                match index.get(&key) {
                    Some(&slot) => out.sizes[slot] += base.sizes[i],
                    None => {
                        index.insert(key.clone(), out.sizes.len());
                        out.tuples.extend_from_slice(&key);
                        out.sizes.push(base.sizes[i]);
                    }
                }
            }
        }
        out
    }

    /// The full evaluation of a node (all metrics): computed once, for the optimum.
    fn evaluate(&mut self, levels: &[usize]) -> Evaluation {
        let classes = self.classes_of(levels);
        crate::rollup::evaluate_classes(self.data, levels, &classes, self.privacy, &self.entropy)
    }

    /// Whether a node is feasible: the suppressed records (classes under k) within the limit.
    /// Its classes are cached for roll-up.
    fn feasible(&mut self, levels: &[usize]) -> bool {
        if let Some(&f) = self.evaluated.get(levels) {
            return f;
        }
        let classes = self.classes_of(levels);
        let k = self.privacy.k as u64;
        let suppressed: u64 = classes.sizes.iter().filter(|&&s| s < k).sum();
        let allowed = (self.privacy.suppression_limit * self.data.rows() as f64).floor() as u64;
        let feasible = suppressed <= allowed;
        // Keep a bounded set of evaluated nodes to roll up from: when full, drop the ones with
        // the most classes (the least useful starting points), never the bottom.
        let words = |c: &Classes| c.tuples.len() + c.sizes.len() * 2;
        let budget = CACHE_WORDS.max(4 * words(&self.cache[0].1));
        self.cached_words += words(&classes);
        while self.cache.len() > 1
            && (self.cache.len() >= CACHE_NODES || self.cached_words > budget)
        {
            let Some((worst, _)) = self
                .cache
                .iter()
                .enumerate()
                .skip(1)
                .max_by_key(|(_, (_, c))| c.sizes.len())
            else {
                break;
            };
            self.cached_words -= words(&self.cache[worst].1);
            self.cache.swap_remove(worst);
        }
        if self.cached_words <= budget {
            self.cache.push((levels.to_vec(), classes));
        } else {
            self.cached_words -= words(&classes);
        }
        self.evaluated.insert(levels.to_vec(), feasible);
        feasible
    }
}

fn tag(lattice: &Lattice, state: &mut [State], id: usize, feasible: bool) {
    let (mark, stop) = if feasible {
        (State::Feasible, State::Feasible)
    } else {
        (State::Infeasible, State::Infeasible)
    };
    let mut stack = vec![id];
    while let Some(n) = stack.pop() {
        if state[n] == stop {
            continue;
        }
        state[n] = mark;
        if feasible {
            stack.extend(lattice.successors(n));
        } else {
            stack.extend(lattice.predecessors(n));
        }
    }
}

/// The optimum for a metric that depends only on the levels (entropy, precision, height) and
/// grows with generalization, under a monotone privacy model. Returns the optimum's evaluation,
/// the number of nodes evaluated, and the lattice size; `None` when no node is feasible.
///
/// On each upward path the lowest feasible node is found by binary search; nodes whose loss is no better than the best feasible node
/// found so far are never evaluated (nothing at or above them can win).
pub fn optimal(
    data: &Dataset,
    privacy: Privacy,
    metric: Metric,
) -> Option<(Evaluation, usize, usize)> {
    let lattice = Lattice::new(&data.heights());
    let entropy = EntropyTable::new(data);
    let no_classes: [u64; 0] = [];
    let loss: Vec<f64> = (0..lattice.size)
        .map(|id| {
            let levels = lattice.levels(id);
            match metric {
                // The common case, without the other metrics' work.
                Metric::NonUniformEntropy => entropy.loss(&levels),
                _ => metrics::losses(data, &levels, &no_classes, 0, &entropy, None).get(metric),
            }
        })
        .collect();
    let mut state = vec![State::Unknown; lattice.size];
    let mut eval = Evaluator::new(data, privacy);
    let mut order: Vec<usize> = (0..lattice.size).collect();
    // Increasing loss; equal losses in lattice order (lower nodes first), so ties resolve as
    // the exhaustive reference resolves them. Ids are mixed-radix with the first column most
    // significant, so id order is the lexicographic order of the levels.
    let heights: Vec<usize> = (0..lattice.size)
        .map(|id| {
            (0..lattice.heights.len())
                .map(|j| lattice.level(id, j))
                .sum()
        })
        .collect();
    order.sort_by(|&a, &b| {
        loss[a]
            .total_cmp(&loss[b])
            .then_with(|| (heights[a], a).cmp(&(heights[b], b)))
    });
    let rank: Vec<usize> = {
        let mut r = vec![0; lattice.size];
        for (i, &id) in order.iter().enumerate() {
            r[id] = i;
        }
        r
    };
    // Paths start from nodes in lattice order (lowest first), as Flash does: long upward paths
    // from low nodes tag the most.
    let mut starts: Vec<usize> = (0..lattice.size).collect();
    starts.sort_by_key(|&id| (heights[id], id));
    let mut best: Option<usize> = None;
    for &start in &starts {
        if best.is_some_and(|b| rank[start] >= rank[b]) {
            continue; // no better than the best feasible node found
        }
        if state[start] != State::Unknown {
            if state[start] == State::Feasible && best.is_none_or(|b| rank[start] < rank[b]) {
                best = Some(start);
            }
            continue;
        }
        let mut path = vec![start];
        let mut cur = start;
        while let Some(next) = lattice
            .successors(cur)
            .find(|&s| state[s] == State::Unknown)
        {
            path.push(next);
            cur = next;
        }
        let (mut lo, mut hi) = (0usize, path.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let id = path[mid];
            if best.is_some_and(|b| rank[id] >= rank[b]) {
                hi = mid; // cannot improve on the best: only the part below matters
                continue;
            }
            let feasible = match state[id] {
                State::Feasible => true,
                State::Infeasible => false,
                State::Unknown => {
                    let f = eval.feasible(&lattice.levels(id));
                    tag(&lattice, &mut state, id, f);
                    f
                }
            };
            if feasible {
                if best.is_none_or(|b| rank[id] < rank[b]) {
                    best = Some(id);
                }
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
    }
    let id = best?;
    let e = eval.evaluate(&lattice.levels(id));
    Some((e, eval.evaluated.len(), lattice.size))
}
