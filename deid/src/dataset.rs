//! A table's quasi-identifiers, dictionary-encoded against their hierarchies and reduced to
//! distinct tuples with counts: every lattice node is evaluated over these, not over rows.

use std::collections::HashMap;

use crate::error::{DeidError, Result};
use crate::hierarchy::Hierarchy;
use crate::sensitive::SensitiveColumn;

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
    /// The sensitive attribute, when there is one, and each distinct tuple's sensitive code.
    sensitive: Option<SensitiveColumn>,
    sensitive_codes: Vec<u32>,
}

impl Dataset {
    /// Encodes rows of quasi-identifier values, given in the order of `qis`. A value missing
    /// from its hierarchy is an error naming the column and the row (not the value).
    pub fn new<'a, R>(qis: Vec<Quasi>, rows: R) -> Result<Dataset>
    where
        R: IntoIterator,
        R::Item: AsRef<[&'a str]>,
    {
        Self::build(qis, None, rows)
    }

    /// As [`Dataset::new`], with a sensitive attribute as the last value of every row. Its
    /// hierarchy, when given, serves hierarchical t-closeness.
    pub fn with_sensitive<'a, R>(
        qis: Vec<Quasi>,
        name: &str,
        hierarchy: Option<Hierarchy>,
        rows: R,
    ) -> Result<Dataset>
    where
        R: IntoIterator,
        R::Item: AsRef<[&'a str]>,
    {
        Self::build(qis, Some((name.to_string(), hierarchy)), rows)
    }

    fn build<'a, R>(
        qis: Vec<Quasi>,
        sensitive: Option<(String, Option<Hierarchy>)>,
        rows: R,
    ) -> Result<Dataset>
    where
        R: IntoIterator,
        R::Item: AsRef<[&'a str]>,
    {
        let q = qis.len();
        let width = q + usize::from(sensitive.is_some());
        let mut index: HashMap<Vec<u32>, usize> = HashMap::new();
        let mut tuples = Vec::new();
        let mut counts: Vec<u32> = Vec::new();
        let mut sensitive_codes = Vec::new();
        let mut value_counts: Vec<Vec<u64>> =
            qis.iter().map(|x| vec![0; x.hierarchy.len()]).collect();
        let mut s_index: HashMap<String, u32> = HashMap::new();
        let mut s_values: Vec<String> = Vec::new();
        let mut s_counts: Vec<u64> = Vec::new();
        let mut n = 0usize;
        let mut key = Vec::with_capacity(width);
        for (row, values) in rows.into_iter().enumerate() {
            let values = values.as_ref();
            if values.len() != width {
                return Err(DeidError::Input {
                    message: format!("row {row} has {} values; expected {width}", values.len()),
                });
            }
            key.clear();
            for (j, v) in values[..q].iter().enumerate() {
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
            if let Some((name, h)) = &sensitive {
                let v = values[q];
                if let Some(h) = h
                    && h.code(v).is_none()
                {
                    return Err(DeidError::Input {
                        message: format!(
                            "row {row}: the value of sensitive column `{name}` is missing from its hierarchy `{}`",
                            h.name()
                        ),
                    });
                }
                let next = s_values.len() as u32;
                let code = *s_index.entry(v.to_string()).or_insert_with(|| {
                    s_values.push(v.to_string());
                    s_counts.push(0);
                    next
                });
                s_counts[code as usize] += 1;
                key.push(code);
            }
            match index.get(&key) {
                Some(&i) => counts[i] += 1,
                None => {
                    index.insert(key.clone(), counts.len());
                    tuples.extend_from_slice(&key[..q]);
                    if sensitive.is_some() {
                        sensitive_codes.push(key[q]);
                    }
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
            sensitive: sensitive
                .map(|(name, h)| SensitiveColumn::new(&name, s_values, s_counts, h)),
            sensitive_codes,
        })
    }

    /// The sensitive attribute, if the dataset has one.
    pub fn sensitive(&self) -> Option<&SensitiveColumn> {
        self.sensitive.as_ref()
    }

    /// Each distinct tuple's sensitive code (empty without a sensitive attribute).
    pub fn sensitive_codes(&self) -> &[u32] {
        &self.sensitive_codes
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
