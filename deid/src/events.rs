//! (k, k^m)-anonymity of event data: an attacker who knows a person's quasi-identifiers (as the
//! person table releases them) and up to `m` items of the person's history (an item is an
//! event's code and time, after generalization) must find at least `k` persons.
//!
//! Formally, with `g(p)` the released quasi-identifier tuple of person `p` and `I(p)` the set of
//! released items of `p`: for every person `p` and every `S ⊆ I(p)` with `|S| <= m`,
//! `|{q : g(q) = g(p), S ⊆ I(q)}| >= k`. Persons are partitioned by `g` ("groups"), and the
//! model is k^m-anonymity (Terrovitis, Mamoulis, Kalnis, PVLDB 2008) inside every group, as in
//! the (k, k^m) model of Poulis et al. (ECML/PKDD 2013). Grouping by the released tuple is the
//! conservative reading: a suppressed person (`*` everywhere) is grouped only with the other
//! suppressed persons, and a group smaller than `k` releases no item at all.
//!
//! Items form one generalization tree per event domain (a table with its code column). A leaf is
//! `(code, time)`. Time climbs first, along the policy's ladder (year → band of years → no year;
//! interval band → wider band → no interval), then the code climbs its hierarchy (HPO is-a,
//! ICD-10-CM category → block → chapter, a declared grouping), and above the code's top the item
//! is suppressed. Keeping the code and losing the time is the research choice: a diagnosis
//! without its year is still a diagnosis.
//!
//! The anonymization has two phases, both on all cores (groups in parallel):
//! 1. **Global recoding**, Apriori-style (AA, Terrovitis et al. 2008): for `i = 1..=m` (or only
//!    `i = 1`, the default: see [`Model::recode_combinations`]), find the itemsets of size `i`
//!    whose support in their group is between 1 and `k - 1`; for each, pick the item whose
//!    generalization adds least normalized certainty penalty (NCP), generalize the picks where
//!    that costs less than suppressing them, and repeat until no violation of size `i` remains,
//!    nothing is worth generalizing, or a code would climb above the policy's
//!    `max_code_level`. A generalized node is released as its parent while its siblings keep
//!    their own values (a rare code joins its group; a common sibling stays exact). The mapping
//!    is global: the same for every person, so an item means the same thing in every row.
//! 2. **Local suppression** of what still violates, per item and not per person: in each group,
//!    repeatedly take the violating itemsets and remove from the persons holding each one the
//!    item of it with the lowest support (ties by item), until none is left. Removing items
//!    only lowers supports, so the loop ends; it ends with no violation because each round
//!    empties the tidset of every violating itemset found.
//!
//! Violations are found by a depth-first enumeration over per-item person bitsets (Eclat), with
//! two prunings that keep it exact: an itemset below `k` is reported and not extended (its
//! supersets' holders are a subset of its holders, and the fix empties them), and an extension
//! that leaves the holders unchanged is not descended into (its subtree repeats the subtree of
//! the same prefix without that item, which is visited as well).

use std::collections::{BTreeMap, HashMap, HashSet};

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{DeidError, Result};

/// One step of the time ladder: how an item's time is released at that level. `None` drops the
/// part (no year, or no interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TimeLevel {
    /// Width of the year band (1 = the year itself).
    pub year_width: Option<u32>,
    /// Width of the band of days since the index event.
    pub days_width: Option<u32>,
}

impl TimeLevel {
    pub const NONE: TimeLevel = TimeLevel {
        year_width: None,
        days_width: None,
    };

    /// Year and interval of an event, generalized to this level.
    pub fn apply(self, year: Option<i32>, days: Option<i64>) -> (Option<i32>, Option<i64>) {
        (
            self.year_width
                .zip(year)
                .map(|(w, y)| y.div_euclid(w.max(1) as i32) * w.max(1) as i32),
            self.days_width
                .zip(days)
                .map(|(w, d)| d.div_euclid(i64::from(w.max(1))) * i64::from(w.max(1))),
        )
    }

    /// The year part as released: `2015`, or `2015-2019` for a band.
    pub fn year_label(self, year: Option<i32>) -> Option<String> {
        let (w, y) = (self.year_width?, year?);
        Some(if w <= 1 {
            y.to_string()
        } else {
            format!("{y}-{}", y + w as i32 - 1)
        })
    }
}

/// The time ladder of a model: `years` (finest first) widen until the year is dropped, then
/// `days` widen until the interval is dropped. `years` empty: no year in items; `days` empty:
/// no interval in items.
pub fn time_ladder(years: &[u32], days: &[u32]) -> Vec<TimeLevel> {
    let first_days = days.first().copied();
    let mut ladder: Vec<TimeLevel> = years
        .iter()
        .map(|&y| TimeLevel {
            year_width: Some(y),
            days_width: first_days,
        })
        .collect();
    ladder.push(TimeLevel {
        year_width: None,
        days_width: first_days,
    });
    for &d in days.iter().skip(1) {
        ladder.push(TimeLevel {
            year_width: None,
            days_width: Some(d),
        });
    }
    if first_days.is_some() {
        ladder.push(TimeLevel::NONE);
    }
    ladder
}

/// An event domain: one table's code column, its code hierarchy and whether time is part of its
/// items.
#[derive(Debug, Clone)]
pub struct Domain {
    pub name: String,
    /// The time ladder of this domain's items; a single [`TimeLevel::NONE`] for codes only.
    pub ladder: Vec<TimeLevel>,
    /// Ancestors of a code, nearest first (its hierarchy; empty when the code system has none).
    pub ancestors: HashMap<String, Vec<String>>,
    /// The highest code level global recoding may reach (0 = the code itself); beyond it,
    /// violations are suppressed instead.
    pub max_code_level: usize,
}

/// The model's parameters.
#[derive(Debug, Clone)]
pub struct Model {
    pub k: usize,
    pub m: usize,
    pub domains: Vec<Domain>,
    /// Whether global recoding also answers violating combinations (sizes 2..m), as
    /// Terrovitis et al.'s AA does, or only single items (the default), leaving combinations to
    /// local suppression. Measured on the dev release (docs/benchmarks.md): recoding for
    /// combinations generalizes common codes for everyone to fix a few persons, and keeps fewer
    /// diagnoses at their code or first hierarchy level.
    pub recode_combinations: bool,
}

/// An item node: a code at some level of its hierarchy and a time at some level of the ladder.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct NodeKey {
    domain: u16,
    code_level: u8,
    code: String,
    time_level: u8,
    year: Option<i32>,
    days: Option<i64>,
}

pub type NodeId = u32;

/// What an item became in the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// The code (possibly generalized) and the time at its level.
    Item {
        code: String,
        /// How many hierarchy levels the code climbed (0 = kept as it was).
        code_level: usize,
        time: TimeLevel,
        year: Option<i32>,
        days: Option<i64>,
    },
    /// Removed from this person's history.
    Suppressed,
}

/// The event data of a release: per person, a group (the released quasi-identifier tuple) and
/// the leaf items of their events.
#[derive(Debug, Default)]
pub struct EventData {
    nodes: Vec<NodeKey>,
    index: HashMap<NodeKey, NodeId>,
    /// Person → group id.
    groups: Vec<u32>,
    group_ids: HashMap<String, u32>,
    /// Person → distinct leaf items.
    items: Vec<Vec<NodeId>>,
    /// The leaves seen in the data (ancestors are interned later, by the anonymization).
    leaves: HashSet<NodeId>,
}

impl EventData {
    pub fn new() -> EventData {
        EventData::default()
    }

    /// Adds a person (in order: person index = number of persons added before) in the group
    /// named by `group` (the released quasi-identifier values joined).
    pub fn add_person(&mut self, group: &str) -> u32 {
        let next = self.group_ids.len() as u32;
        let g = *self.group_ids.entry(group.to_string()).or_insert(next);
        self.groups.push(g);
        self.items.push(Vec::new());
        (self.groups.len() - 1) as u32
    }

    pub fn persons(&self) -> usize {
        self.groups.len()
    }

    fn intern(&mut self, key: NodeKey) -> NodeId {
        if let Some(&id) = self.index.get(&key) {
            return id;
        }
        let id = self.nodes.len() as NodeId;
        self.nodes.push(key.clone());
        self.index.insert(key, id);
        id
    }

    /// The leaf of an event: its domain, code, year and days since the index event.
    fn leaf_key(
        model: &Model,
        domain: u16,
        code: &str,
        year: Option<i32>,
        days: Option<i64>,
    ) -> NodeKey {
        let level0 = model.domains[domain as usize]
            .ladder
            .first()
            .copied()
            .unwrap_or(TimeLevel::NONE);
        let (year, days) = level0.apply(year, days);
        NodeKey {
            domain,
            code_level: 0,
            code: code.to_string(),
            time_level: 0,
            year,
            days,
        }
    }

    /// Adds one event of `person` (repeated events of one item count once).
    pub fn add_event(
        &mut self,
        model: &Model,
        person: u32,
        domain: u16,
        code: &str,
        year: Option<i32>,
        days: Option<i64>,
    ) {
        let key = EventData::leaf_key(model, domain, code, year, days);
        let id = self.intern(key);
        self.leaves.insert(id);
        let items = &mut self.items[person as usize];
        if !items.contains(&id) {
            items.push(id);
        }
    }
}

/// The result: the global cut, the per-person suppressions, and the report.
#[derive(Debug)]
pub struct Anonymized {
    model: Model,
    data: EventData,
    /// `parent[node]`, `None` at the top (suppressed above it).
    parent: Vec<Option<NodeId>>,
    /// Nodes released as their parent (a leaf's image climbs while its node is in the set). One
    /// node climbing leaves its siblings as they are: a rare code joins its group label, a
    /// common sibling keeps its own code. The mapping is the same for every person, so an
    /// attacker who knows it finds exactly the holders of the released item.
    generalized: HashSet<NodeId>,
    /// (person, released node) removed by local suppression.
    suppressed: HashSet<(u32, NodeId)>,
    pub report: Report,
}

/// What the manifest tells about the event model.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub k: usize,
    pub m: usize,
    pub persons: usize,
    pub groups: usize,
    pub domains: BTreeMap<String, DomainReport>,
    /// Violating itemsets (support 1..k-1 within a group, size 1..m) before anonymization, by size.
    pub violations_before: Vec<usize>,
    /// The same after (always zeros: the build refuses otherwise).
    pub violations_after: Vec<usize>,
    /// Rounds of global recoding, per itemset size.
    pub recoding_rounds: Vec<usize>,
    /// Re-identification risk for an attacker who knows a person's quasi-identifiers and `m`
    /// released items: 1 / (persons sharing them), maximum and average over every person and
    /// every such combination (the average weights persons equally).
    pub max_risk: f64,
    pub average_risk: f64,
    /// Normalized certainty penalty over item occurrences (0 = as they were, 1 = all suppressed).
    pub ncp: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DomainReport {
    /// Distinct (person, item) pairs before and after.
    pub items_before: usize,
    pub items_after: usize,
    /// Shares of the (person, item) pairs before: kept as they were, generalized (by code
    /// level and by time only), suppressed.
    pub kept: f64,
    pub time_generalized: f64,
    /// `code_generalized[l]`: share whose code climbed `l + 1` levels.
    pub code_generalized: Vec<f64>,
    pub suppressed: f64,
    /// Share whose code is kept exactly or at its first hierarchy level (time may be coarser).
    pub code_kept_or_first_level: f64,
    pub ncp: f64,
}

/// A violation found in a group: an itemset and the persons (group-local indices) holding it.
struct Violation {
    items: Vec<NodeId>,
    holders: Vec<usize>,
}

/// Person bitsets.
#[derive(Clone, PartialEq, Eq)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn all(n: usize) -> Bits {
        let mut b = Bits::new(n);
        for i in 0..n {
            b.set(i);
        }
        b
    }
    fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
    fn and(&self, other: &Bits) -> Bits {
        Bits(self.0.iter().zip(&other.0).map(|(a, b)| a & b).collect())
    }
    fn ones(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for (w, &word) in self.0.iter().enumerate() {
            let mut x = word;
            while x != 0 {
                out.push(w * 64 + x.trailing_zeros() as usize);
                x &= x - 1;
            }
        }
        out
    }
}

/// Each item of a group with the persons (indices into `sets`) holding it, in item order.
fn holders_by_item(sets: &[Vec<NodeId>]) -> Vec<(NodeId, Bits)> {
    let mut tids: BTreeMap<NodeId, Bits> = BTreeMap::new();
    for (p, set) in sets.iter().enumerate() {
        for &i in set {
            tids.entry(i)
                .or_insert_with(|| Bits::new(sets.len()))
                .set(p);
        }
    }
    tids.into_iter().collect()
}

/// Itemsets of size 1..=m held by 1..k-1 persons of a group whose persons hold `sets` (sorted
/// item lists). Returns at most `limit` violations (the caller repeats).
fn violations(sets: &[Vec<NodeId>], k: usize, m: usize, limit: usize) -> Vec<Violation> {
    let n = sets.len();
    let items = holders_by_item(sets);
    /// The walk's fixed inputs and its findings.
    struct Walk<'a> {
        items: &'a [(NodeId, Bits)],
        k: usize,
        m: usize,
        limit: usize,
        prefix: Vec<NodeId>,
        out: Vec<Violation>,
    }
    impl Walk<'_> {
        fn dfs(&mut self, start: usize, tid: &Bits) {
            for j in start..self.items.len() {
                if self.out.len() >= self.limit {
                    return;
                }
                let (item, bits) = &self.items[j];
                let next = tid.and(bits);
                let c = next.count();
                if c == 0 {
                    continue;
                }
                self.prefix.push(*item);
                if c < self.k {
                    self.out.push(Violation {
                        items: self.prefix.clone(),
                        holders: next.ones(),
                    });
                } else if self.prefix.len() < self.m && *tid != next {
                    self.dfs(j + 1, &next);
                }
                self.prefix.pop();
            }
        }
    }
    let mut walk = Walk {
        items: &items,
        k,
        m,
        limit,
        prefix: Vec::new(),
        out: Vec::new(),
    };
    walk.dfs(0, &Bits::all(n));
    walk.out
}

/// Support of every combination of up to `m` items of each person of a group: for the risk,
/// the smallest support over each person's combinations (the group size when the person has no
/// items). Exact, by the same enumeration without the closure pruning's shortcut on reporting:
/// the minimum over a person's combinations is the minimum over the itemsets visited.
fn min_support_per_person(sets: &[Vec<NodeId>], m: usize) -> Vec<usize> {
    let n = sets.len();
    let items = holders_by_item(sets);
    let mut best = vec![n; n];
    let all = Bits::all(n);
    fn dfs(
        items: &[(NodeId, Bits)],
        start: usize,
        tid: Option<&Bits>,
        depth: usize,
        m: usize,
        best: &mut [usize],
    ) {
        for j in start..items.len() {
            let next = match tid {
                Some(t) => t.and(&items[j].1),
                None => items[j].1.clone(),
            };
            let c = next.count();
            if c == 0 {
                continue;
            }
            for p in next.ones() {
                best[p] = best[p].min(c);
            }
            if depth + 1 < m && tid.is_none_or(|t| *t != next) {
                dfs(items, j + 1, Some(&next), depth + 1, m, best);
            }
        }
    }
    dfs(&items, 0, Some(&all), 0, m, &mut best);
    best
}

impl Model {
    /// Checks the parameters.
    pub fn check(&self) -> Result<()> {
        if self.k == 0 {
            return Err(DeidError::Input {
                message: "the event model needs k >= 1".into(),
            });
        }
        if self.m == 0 || self.m > 6 {
            return Err(DeidError::Input {
                message: format!(
                    "the event model's m is {}: give 1 to 6 (the attacker's number of known items; 3 is the default)",
                    self.m
                ),
            });
        }
        for d in &self.domains {
            if d.ladder.is_empty() {
                return Err(DeidError::Input {
                    message: format!("event domain {}: its time ladder is empty", d.name),
                });
            }
        }
        Ok(())
    }
}

impl EventData {
    /// Anonymizes under `model`: global recoding, then local suppression.
    pub fn anonymize(mut self, model: &Model) -> Result<Anonymized> {
        model.check()?;
        // Build every leaf's chain of ancestors (time first, then code) up front, so the tree
        // is fixed before the search.
        let mut parent: Vec<Option<NodeId>> = Vec::new();
        let mut leaf_codes: HashMap<(u16, u8, String), String> = HashMap::new();
        let mut i = 0;
        while i < self.nodes.len() {
            let key = self.nodes[i].clone();
            let d = &model.domains[key.domain as usize];
            let top_time = d.ladder.len() - 1;
            let up = if (key.time_level as usize) < top_time {
                let level = d.ladder[key.time_level as usize + 1];
                let (year, days) = level.apply(key.year, key.days);
                Some(NodeKey {
                    time_level: key.time_level + 1,
                    year,
                    days,
                    ..key.clone()
                })
            } else {
                let leaf_code = leaf_codes
                    .entry((key.domain, key.code_level, key.code.clone()))
                    .or_insert_with(|| self.leaf_code(&key, model))
                    .clone();
                let chain = d.ancestors.get(&leaf_code);
                chain
                    .and_then(|c| c.get(key.code_level as usize))
                    .map(|code| NodeKey {
                        code_level: key.code_level + 1,
                        code: code.clone(),
                        ..key.clone()
                    })
            };
            let p = up.map(|k| self.intern(k));
            parent.push(p);
            i += 1;
        }
        let mut out = Anonymized {
            model: model.clone(),
            parent,
            generalized: HashSet::new(),
            suppressed: HashSet::new(),
            report: Report {
                k: model.k,
                m: model.m,
                persons: self.persons(),
                groups: self.group_ids.len(),
                domains: BTreeMap::new(),
                violations_before: Vec::new(),
                violations_after: Vec::new(),
                recoding_rounds: vec![0; model.m],
                max_risk: 0.0,
                average_risk: 0.0,
                ncp: 0.0,
            },
            data: std::mem::take(&mut self),
        };
        out.report.violations_before = out.count_violations();
        out.recode();
        out.suppress();
        out.report.violations_after = out.count_violations();
        if out.report.violations_after.iter().any(|&v| v > 0) {
            return Err(DeidError::Internal(format!(
                "the event model left violations {:?} after suppression",
                out.report.violations_after
            )));
        }
        out.finish_report();
        Ok(out)
    }

    /// The leaf code a node's code chain starts from: for a code at level 0, itself; above, the
    /// chain is looked up from any leaf (every leaf of a code shares its chain), so the node
    /// remembers its level and the chain of its level-0 code. Codes above level 0 are ancestors:
    /// their own chain is the rest of the leaf's chain.
    fn leaf_code(&self, key: &NodeKey, model: &Model) -> String {
        if key.code_level == 0 {
            return key.code.clone();
        }
        // Find a level-0 code whose chain has this code at this level.
        let d = &model.domains[key.domain as usize];
        d.ancestors
            .iter()
            .filter(|(_, chain)| chain.get(key.code_level as usize - 1) == Some(&key.code))
            .map(|(c, _)| c.clone())
            .min()
            .unwrap_or_else(|| key.code.clone())
    }
}

impl Anonymized {
    /// The node a leaf is released as under the cut (before local suppression): its topmost
    /// ancestor in the cut, or the leaf itself.
    fn image(&self, leaf: NodeId) -> NodeId {
        let mut n = leaf;
        while self.generalized.contains(&n) {
            match self.parent[n as usize] {
                Some(p) => n = p,
                None => break,
            }
        }
        n
    }

    /// Each group's persons and their item sets under the cut and the local suppressions.
    fn group_sets(&self) -> Vec<(Vec<u32>, Vec<Vec<NodeId>>)> {
        let mut by_group: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (p, &g) in self.data.groups.iter().enumerate() {
            by_group.entry(g).or_default().push(p as u32);
        }
        by_group
            .into_values()
            .map(|persons| {
                let sets = persons
                    .iter()
                    .map(|&p| {
                        let mut s: Vec<NodeId> = self.data.items[p as usize]
                            .iter()
                            .map(|&l| self.image(l))
                            .filter(|&n| !self.suppressed.contains(&(p, n)))
                            .collect();
                        s.sort_unstable();
                        s.dedup();
                        s
                    })
                    .collect();
                (persons, sets)
            })
            .collect()
    }

    /// Violations by size, over every group (exact counts, capped per group at a million).
    fn count_violations(&self) -> Vec<usize> {
        let (k, m) = (self.model.k, self.model.m);
        let per_group: Vec<Vec<usize>> = self
            .group_sets()
            .par_iter()
            .map(|(_, sets)| {
                let mut by_size = vec![0; m];
                for v in violations(sets, k, m, 1_000_000) {
                    by_size[v.items.len() - 1] += 1;
                }
                by_size
            })
            .collect();
        let mut total = vec![0; m];
        for g in per_group {
            for (t, v) in total.iter_mut().zip(g) {
                *t += v;
            }
        }
        total
    }

    /// NCP of a node: the share of its domain's leaves it covers, minus one leaf (0 for a leaf,
    /// 1 for suppression).
    fn node_leaves(&self) -> Vec<u64> {
        let mut under = vec![0u64; self.parent.len()];
        for leaf in 0..self.parent.len() {
            if !self.data.leaves.contains(&(leaf as NodeId)) {
                continue;
            }
            let mut n = Some(leaf as NodeId);
            while let Some(x) = n {
                under[x as usize] += 1;
                n = self.parent[x as usize];
            }
        }
        under
    }

    /// Distinct codes under each node (1 for a code at any time level), and per domain the
    /// number of distinct codes: the NCP of a code's climb is the share of the domain's codes
    /// its new node covers (a climb by time costs by time leaves instead).
    fn node_codes(&self) -> (Vec<u64>, Vec<u64>) {
        let mut under = vec![0u64; self.parent.len()];
        let mut per_domain = vec![0u64; self.model.domains.len()];
        for (i, key) in self.data.nodes.iter().enumerate() {
            let d = &self.model.domains[key.domain as usize];
            let top_time = key.time_level as usize + 1 == d.ladder.len();
            if key.code_level != 0 {
                continue;
            }
            if !top_time {
                under[i] = under[i].max(1);
                continue;
            }
            per_domain[key.domain as usize] += 1;
            let mut n = Some(i as NodeId);
            while let Some(x) = n {
                under[x as usize] += 1;
                n = self.parent[x as usize];
            }
        }
        (under, per_domain)
    }

    /// Phase 1: global recoding, size by size. A generalization is made only when it costs
    /// less than suppressing what it would fix: the NCP it adds to every occurrence of the
    /// generalized node's children against one unit (a suppressed item's NCP) per person
    /// holding a violating itemset it is picked for. Groups smaller than `k` do not drive the
    /// recoding: none of their items can be released whatever the cut.
    fn recode(&mut self) {
        let (k, m) = (self.model.k, self.model.m);
        let under = self.node_leaves();
        let domain_leaves = self.domain_leaves();
        let (codes_under, domain_codes) = self.node_codes();
        let recode_up_to = if self.model.recode_combinations { m } else { 1 };
        for size in 1..=recode_up_to {
            loop {
                let groups = self.group_sets();
                // Violations with their holders as person numbers.
                let found: Vec<(Vec<NodeId>, Vec<u32>)> = groups
                    .par_iter()
                    .filter(|(persons, _)| persons.len() >= k)
                    .flat_map_iter(|(persons, sets)| {
                        violations(sets, k, size, 200_000)
                            .into_iter()
                            .filter(move |v| v.items.len() == size)
                            .map(|v| {
                                let holders = v.holders.iter().map(|&h| persons[h]).collect();
                                (v.items, holders)
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect();
                if found.is_empty() {
                    break;
                }
                // Persons holding each released node now (for the cost of generalizing it).
                let mut held: HashMap<NodeId, u64> = HashMap::new();
                for (_, sets) in &groups {
                    for s in sets {
                        for &n in s {
                            *held.entry(n).or_default() += 1;
                        }
                    }
                }
                // For each violating itemset, the item whose generalization adds least NCP
                // (the NCP it adds to each holder, times its holders), among those allowed to
                // climb. It climbs only where that costs less than suppressing it from the
                // persons of the violations it is picked for (an item suppressed costs NCP 1):
                // an item common everywhere but rare in one group is suppressed there rather
                // than generalized for everyone.
                let mut saves: HashMap<NodeId, HashSet<u32>> = HashMap::new();
                let mut cost_of: HashMap<NodeId, f64> = HashMap::new();
                for (items, holders) in &found {
                    let best = items
                        .iter()
                        .filter_map(|&n| {
                            let p = self.parent[n as usize]?;
                            let key = &self.data.nodes[p as usize];
                            let d = &self.model.domains[key.domain as usize];
                            if key.code_level as usize > d.max_code_level {
                                return None;
                            }
                            let climbs_code =
                                key.code_level > self.data.nodes[n as usize].code_level;
                            let per_holder = if climbs_code {
                                let total = domain_codes[key.domain as usize].max(2) as f64;
                                (codes_under[p as usize] as f64 - codes_under[n as usize] as f64)
                                    / (total - 1.0)
                            } else {
                                let total = domain_leaves[key.domain as usize].max(2) as f64;
                                (under[p as usize] as f64 - under[n as usize] as f64)
                                    / (total - 1.0)
                            };
                            let cost = per_holder * held.get(&n).copied().unwrap_or(0) as f64;
                            Some((cost, n))
                        })
                        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                    if let Some((cost, n)) = best {
                        cost_of.insert(n, cost);
                        saves.entry(n).or_default().extend(holders.iter().copied());
                    }
                }
                let before = self.generalized.len();
                for (n, persons) in saves {
                    if cost_of[&n] <= persons.len() as f64 {
                        self.generalized.insert(n);
                    }
                }
                if self.generalized.len() == before {
                    break; // generalizing costs more than suppressing what is left
                }
                self.report.recoding_rounds[size - 1] += 1;
            }
        }
    }

    fn domain_leaves(&self) -> Vec<u64> {
        let mut out = vec![0u64; self.model.domains.len()];
        for &leaf in &self.data.leaves {
            out[self.data.nodes[leaf as usize].domain as usize] += 1;
        }
        out
    }

    /// Phase 2: local suppression of the remaining violations, group by group.
    fn suppress(&mut self) {
        let (k, m) = (self.model.k, self.model.m);
        let groups = self.group_sets();
        let removed: Vec<Vec<(u32, NodeId)>> = groups
            .into_par_iter()
            .map(|(persons, mut sets)| {
                let mut removed = Vec::new();
                loop {
                    let found = violations(&sets, k, m, 100_000);
                    if found.is_empty() {
                        break;
                    }
                    let mut support: HashMap<NodeId, usize> = HashMap::new();
                    for s in &sets {
                        for &i in s {
                            *support.entry(i).or_default() += 1;
                        }
                    }
                    let mut found = found;
                    found.sort_by_key(|v| v.items.len());
                    for v in found {
                        for h in v.holders {
                            if !v.items.iter().all(|i| sets[h].contains(i)) {
                                continue; // already fixed for this holder
                            }
                            let item = v
                                .items
                                .iter()
                                .copied()
                                .min_by_key(|&i| (support.get(&i).copied().unwrap_or(0), i));
                            let Some(item) = item else { continue };
                            if let Some(pos) = sets[h].iter().position(|&i| i == item) {
                                sets[h].remove(pos);
                                removed.push((persons[h], item));
                            }
                        }
                    }
                }
                removed
            })
            .collect();
        self.suppressed.extend(removed.into_iter().flatten());
    }

    fn finish_report(&mut self) {
        let m = self.model.m;
        // Risk: per person, 1 / the smallest support over their combinations of up to m items
        // (the group size for a person without items).
        let risks: Vec<f64> = self
            .group_sets()
            .par_iter()
            .flat_map_iter(|(_, sets)| {
                min_support_per_person(sets, m)
                    .into_iter()
                    .map(|s| 1.0 / s.max(1) as f64)
                    .collect::<Vec<_>>()
            })
            .collect();
        self.report.max_risk = risks.iter().copied().fold(0.0, f64::max);
        self.report.average_risk = if risks.is_empty() {
            0.0
        } else {
            risks.iter().sum::<f64>() / risks.len() as f64
        };
        let under = self.node_leaves();
        let domain_leaves = self.domain_leaves();
        let mut reports: Vec<DomainReport> =
            vec![DomainReport::default(); self.model.domains.len()];
        let mut code_levels: Vec<Vec<usize>> = vec![Vec::new(); self.model.domains.len()];
        let mut ncp_sum = vec![0.0f64; self.model.domains.len()];
        let mut after: Vec<HashSet<(u32, NodeId)>> = vec![HashSet::new(); self.model.domains.len()];
        let (mut all_ncp, mut all_n) = (0.0, 0usize);
        for (p, items) in self.data.items.iter().enumerate() {
            for &leaf in items {
                let d = self.data.nodes[leaf as usize].domain as usize;
                let r = &mut reports[d];
                r.items_before += 1;
                let image =
                    Some(self.image(leaf)).filter(|n| !self.suppressed.contains(&(p as u32, *n)));
                let ncp = match image {
                    None => {
                        r.suppressed += 1.0;
                        1.0
                    }
                    Some(n) => {
                        after[d].insert((p as u32, n));
                        let key = &self.data.nodes[n as usize];
                        let cl = key.code_level as usize;
                        if n == leaf {
                            r.kept += 1.0;
                        } else if cl == 0 {
                            r.time_generalized += 1.0;
                        } else {
                            if code_levels[d].len() < cl {
                                code_levels[d].resize(cl, 0);
                            }
                            code_levels[d][cl - 1] += 1;
                        }
                        if cl <= 1 {
                            r.code_kept_or_first_level += 1.0;
                        }
                        let total = domain_leaves[d].max(2) as f64;
                        (under[n as usize] as f64 - 1.0) / (total - 1.0)
                    }
                };
                ncp_sum[d] += ncp;
                all_ncp += ncp;
                all_n += 1;
            }
        }
        for (d, r) in reports.iter_mut().enumerate() {
            let n = r.items_before.max(1) as f64;
            r.items_after = after[d].len();
            r.kept /= n;
            r.time_generalized /= n;
            r.suppressed /= n;
            r.code_kept_or_first_level /= n;
            r.code_generalized = code_levels[d].iter().map(|&c| c as f64 / n).collect();
            r.ncp = ncp_sum[d] / n;
            self.report
                .domains
                .insert(self.model.domains[d].name.clone(), r.clone());
        }
        self.report.ncp = if all_n == 0 {
            0.0
        } else {
            all_ncp / all_n as f64
        };
    }

    /// How an event of `person` is released: its code and time after the cut, or suppressed.
    pub fn release(
        &self,
        person: u32,
        domain: u16,
        code: &str,
        year: Option<i32>,
        days: Option<i64>,
    ) -> Released {
        let key = EventData::leaf_key(&self.model, domain, code, year, days);
        let Some(&leaf) = self.data.index.get(&key) else {
            return Released::Suppressed; // never seen in the scan: nothing vouches for it
        };
        match self.image(leaf) {
            n if !self.suppressed.contains(&(person, n)) => {
                let key = &self.data.nodes[n as usize];
                let d = &self.model.domains[key.domain as usize];
                Released::Item {
                    code: key.code.clone(),
                    code_level: key.code_level as usize,
                    time: d.ladder[key.time_level as usize],
                    year: key.year,
                    days: key.days,
                }
            }
            _ => Released::Suppressed,
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference: every person's every combination of up to m released items, counted
    /// across the persons of their group by brute force.
    fn brute_force_ok(groups: &[u32], released: &[Vec<String>], k: usize, m: usize) -> bool {
        fn subsets(items: &[String], m: usize) -> Vec<Vec<String>> {
            let mut out: Vec<Vec<String>> = vec![Vec::new()];
            for it in items {
                let more: Vec<Vec<String>> = out
                    .iter()
                    .filter(|s| s.len() < m)
                    .map(|s| {
                        let mut s = s.clone();
                        s.push(it.clone());
                        s
                    })
                    .collect();
                out.extend(more);
            }
            out.into_iter().filter(|s| !s.is_empty()).collect()
        }
        for (p, items) in released.iter().enumerate() {
            for s in subsets(items, m) {
                let support = (0..released.len())
                    .filter(|&q| {
                        groups[q] == groups[p] && s.iter().all(|i| released[q].contains(i))
                    })
                    .count();
                if support < k {
                    return false;
                }
            }
        }
        true
    }

    fn model(k: usize, m: usize, hierarchy: bool) -> Model {
        let mut ancestors = HashMap::new();
        if hierarchy {
            for c in 0..12 {
                ancestors.insert(format!("c{c}"), vec![format!("g{}", c / 4), "all".into()]);
            }
        }
        Model {
            k,
            m,
            recode_combinations: hierarchy,
            domains: vec![Domain {
                name: "condition_occurrence".into(),
                ladder: time_ladder(&[1, 5], &[]),
                ancestors,
                max_code_level: 2,
            }],
        }
    }

    type Person = (u32, Vec<(u8, Option<i32>)>);

    fn run(persons: &[Person], model: &Model) -> (Vec<u32>, Vec<Vec<String>>, Anonymized) {
        let mut data = EventData::new();
        for (g, events) in persons {
            let p = data.add_person(&format!("group{g}"));
            for (c, y) in events {
                data.add_event(model, p, 0, &format!("c{c}"), *y, None);
            }
        }
        let out = data.anonymize(model).expect("anonymize");
        let mut released = Vec::new();
        for (p, (_, events)) in persons.iter().enumerate() {
            let mut items: Vec<String> = events
                .iter()
                .filter_map(
                    |(c, y)| match out.release(p as u32, 0, &format!("c{c}"), *y, None) {
                        Released::Item {
                            code, year, time, ..
                        } => Some(format!("{code}|{:?}", time.year_label(year))),
                        Released::Suppressed => None,
                    },
                )
                .collect();
            items.sort();
            items.dedup();
            released.push(items);
        }
        (persons.iter().map(|(g, _)| *g).collect(), released, out)
    }

    fn persons() -> impl Strategy<Value = Vec<Person>> {
        prop::collection::vec(
            (
                0u32..3,
                prop::collection::vec((0u8..12, prop::option::of(2000i32..2012)), 0..6),
            ),
            1..40,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the data, the released items satisfy (k, k^m) by brute force, and the
        /// report says there are no violations left.
        #[test]
        fn released_items_are_k_m_anonymous(
            persons in persons(), k in 2usize..5, m in 1usize..4, hierarchy in any::<bool>()
        ) {
            let model = model(k, m, hierarchy);
            let (groups, released, out) = run(&persons, &model);
            prop_assert!(brute_force_ok(&groups, &released, k, m));
            prop_assert!(out.report.violations_after.iter().all(|&v| v == 0));
        }
    }

    /// Items every person shares survive untouched; a rare one is generalized or suppressed.
    #[test]
    fn common_items_are_kept_and_rare_ones_are_not() {
        let mut persons: Vec<Person> = (0..10).map(|_| (0, vec![(0, Some(2005))])).collect();
        persons[0].1.push((5, Some(2003)));
        let model = model(3, 2, false);
        let (_, released, out) = run(&persons, &model);
        assert!(
            released
                .iter()
                .all(|r| r.contains(&"c0|Some(\"2005\")".to_string()))
        );
        assert!(!released[0].iter().any(|r| r.starts_with("c5")));
        let d = &out.report.domains["condition_occurrence"];
        assert_eq!(d.items_before, 11);
        assert!((d.kept - 10.0 / 11.0).abs() < 1e-9, "{d:?}");
        assert!(out.report.violations_before[0] >= 1);
        assert!(out.report.max_risk <= 1.0 / 3.0);
    }

    /// Years widen before codes climb: five persons each diagnosed with c0 in a different year
    /// of one five-year band keep the code with the band.
    #[test]
    fn time_widens_before_the_code_climbs() {
        let persons: Vec<Person> = (0..5).map(|i| (0, vec![(0, Some(2000 + i))])).collect();
        let model = model(5, 1, true);
        let (_, released, _) = run(&persons, &model);
        for r in &released {
            assert_eq!(r, &vec!["c0|Some(\"2000-2004\")".to_string()]);
        }
    }

    /// The violation finder reports {2, 3} (held by persons 0 and 3 of 4, k = 3) and not its
    /// superset {1, 2, 3}: item 1 is held by everyone, so the superset has the same holders and
    /// the walk does not descend into it.
    #[test]
    fn violations_are_found_exactly() {
        let sets = vec![vec![1, 2, 3], vec![1, 2], vec![1, 3], vec![1, 2, 3]];
        let v = violations(&sets, 3, 3, 100);
        let found: Vec<(Vec<u32>, Vec<usize>)> =
            v.into_iter().map(|v| (v.items, v.holders)).collect();
        assert_eq!(found, vec![(vec![2, 3], vec![0, 3])]);
    }
}

/// A transaction table for `tessera deid --items`: one row per person and item, with the
/// person's quasi-identifier columns (already released as they are) beside.
#[derive(Debug, Clone)]
pub struct TransactionSpec {
    pub person: String,
    pub item: String,
    pub groups: Vec<String>,
    pub k: usize,
    pub m: usize,
    /// Item → ancestors, nearest first.
    pub ancestors: HashMap<String, Vec<String>>,
    pub max_code_level: usize,
}

/// (k, k^m)-anonymizes a transaction table: items generalized over their hierarchy where that
/// costs less than suppressing, the rest suppressed per person and item. Returns the released
/// rows (the same columns; rows of suppressed items left out) and the report.
pub fn anonymize_transactions(
    df: &polars::prelude::DataFrame,
    spec: &TransactionSpec,
) -> Result<(polars::prelude::DataFrame, Report)> {
    use polars::prelude::{BooleanChunked, DataType, IntoColumn, NamedFrom, Series};
    let text = |name: &str| -> Result<Vec<Option<String>>> {
        let c = df.column(name).map_err(|_| DeidError::Input {
            message: format!("the transaction table has no column `{name}`"),
        })?;
        let s = c.cast(&DataType::String).map_err(|_| DeidError::Input {
            message: format!("column `{name}` cannot be read as text"),
        })?;
        Ok(s.str()
            .map_err(|_| DeidError::Internal(format!("column `{name}` as text")))?
            .iter()
            .map(|v| v.map(str::to_string))
            .collect())
    };
    let persons = text(&spec.person)?;
    let items = text(&spec.item)?;
    let groups: Vec<Vec<Option<String>>> =
        spec.groups.iter().map(|g| text(g)).collect::<Result<_>>()?;
    let model = Model {
        k: spec.k,
        m: spec.m,
        recode_combinations: false,
        domains: vec![Domain {
            name: spec.item.clone(),
            ladder: vec![TimeLevel::NONE],
            ancestors: spec.ancestors.clone(),
            max_code_level: spec.max_code_level,
        }],
    };
    let mut data = EventData::new();
    let mut index: HashMap<String, u32> = HashMap::new();
    let mut group_of: HashMap<String, String> = HashMap::new();
    for row in 0..df.height() {
        let Some(p) = &persons[row] else {
            return Err(DeidError::Input {
                message: format!("row {}: `{}` is empty", row + 1, spec.person),
            });
        };
        let key: String = groups
            .iter()
            .map(|g| g[row].clone().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\u{1e}");
        match group_of.get(p) {
            Some(existing) if *existing != key => {
                return Err(DeidError::Input {
                    message: format!(
                        "row {}: person differs in the group columns from an earlier row of the same person",
                        row + 1
                    ),
                });
            }
            Some(_) => {}
            None => {
                group_of.insert(p.clone(), key.clone());
                let i = data.add_person(&key);
                index.insert(p.clone(), i);
            }
        }
        if let Some(item) = &items[row] {
            data.add_event(&model, index[p], 0, item, None, None);
        }
    }
    let out = data.anonymize(&model)?;
    let mut keep = Vec::with_capacity(df.height());
    let mut released: Vec<Option<String>> = Vec::with_capacity(df.height());
    for row in 0..df.height() {
        let p = persons[row].as_deref().and_then(|p| index.get(p)).copied();
        match (p, &items[row]) {
            (Some(p), Some(item)) => match out.release(p, 0, item, None, None) {
                Released::Item { code, .. } => {
                    keep.push(true);
                    released.push(Some(code));
                }
                Released::Suppressed => {
                    keep.push(false);
                    released.push(None);
                }
            },
            _ => {
                keep.push(true);
                released.push(None);
            }
        }
    }
    let mut frame = df.clone();
    frame
        .with_column(Series::new(spec.item.as_str().into(), released).into_column())
        .map_err(|e| DeidError::Internal(format!("replacing the item column: {e}")))?;
    let mask = BooleanChunked::new("keep".into(), keep);
    let frame = frame
        .filter(&mask)
        .map_err(|e| DeidError::Internal(format!("filtering suppressed rows: {e}")))?;
    Ok((frame, out.report))
}
