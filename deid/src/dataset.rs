//! A table's quasi-identifiers, dictionary-encoded against their hierarchies and reduced to
//! distinct tuples with counts: every lattice node is evaluated over these, not over rows.

use std::collections::HashMap;

use crate::error::{DeidError, Result};
use crate::hierarchy::Hierarchy;

/// One quasi-identifier column.
#[derive(Debug, Clone)]
pub struct Quasi {
    pub name: String,
    pub hierarchy: Hierarchy,
}

/// The encoded quasi-identifiers of a table.
#[derive(Debug, Clone)]
pub struct Dataset {
    qis: Vec<Quasi>,
    rows: usize,
    /// Distinct base-code tuples, flattened with stride `qis.len()`.
    tuples: Vec<u32>,
    counts: Vec<u32>,
    /// Per quasi-identifier, how many rows hold each base code.
    value_counts: Vec<Vec<u64>>,
}

impl Dataset {
    /// Encodes rows of quasi-identifier values, given in the order of `qis`. A value missing
    /// from its hierarchy is an error naming the column and the row (not the value).
    pub fn new<'a, R>(qis: Vec<Quasi>, rows: R) -> Result<Dataset>
    where
        R: IntoIterator,
        R::Item: AsRef<[&'a str]>,
    {
        let q = qis.len();
        let mut index: HashMap<Vec<u32>, usize> = HashMap::new();
        let mut tuples = Vec::new();
        let mut counts: Vec<u32> = Vec::new();
        let mut value_counts: Vec<Vec<u64>> =
            qis.iter().map(|x| vec![0; x.hierarchy.len()]).collect();
        let mut n = 0usize;
        let mut key = Vec::with_capacity(q);
        for (row, values) in rows.into_iter().enumerate() {
            let values = values.as_ref();
            if values.len() != q {
                return Err(DeidError::Input {
                    message: format!(
                        "row {row} has {} quasi-identifier values; expected {q}",
                        values.len()
                    ),
                });
            }
            key.clear();
            for (j, v) in values.iter().enumerate() {
                let code = qis[j].hierarchy.code(v).ok_or_else(|| DeidError::Input {
                    message: format!(
                        "row {row}: the value of column `{}` is missing from its hierarchy `{}`; add it to the hierarchy",
                        qis[j].name,
                        qis[j].hierarchy.name()
                    ),
                })?;
                value_counts[j][code as usize] += 1;
                key.push(code);
            }
            match index.get(&key) {
                Some(&i) => counts[i] += 1,
                None => {
                    index.insert(key.clone(), counts.len());
                    tuples.extend_from_slice(&key);
                    counts.push(1);
                }
            }
            n += 1;
        }
        Ok(Dataset {
            qis,
            rows: n,
            tuples,
            counts,
            value_counts,
        })
    }

    pub fn quasi_identifiers(&self) -> &[Quasi] {
        &self.qis
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of distinct quasi-identifier tuples.
    pub fn distinct(&self) -> usize {
        self.counts.len()
    }

    /// The distinct tuples and their counts.
    pub fn tuples(&self) -> impl Iterator<Item = (&[u32], u32)> {
        self.tuples
            .chunks_exact(self.qis.len().max(1))
            .zip(self.counts.iter().copied())
    }

    /// Rows holding each base value of quasi-identifier `j`.
    pub fn value_counts(&self, j: usize) -> &[u64] {
        &self.value_counts[j]
    }

    /// Levels per quasi-identifier (the lattice's shape).
    pub fn heights(&self) -> Vec<usize> {
        self.qis.iter().map(|x| x.hierarchy.height()).collect()
    }
}
