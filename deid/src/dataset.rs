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

/// A sensitive column given to [`Dataset::from_codes`]: its distinct values and each row's
/// index into them.
#[derive(Debug, Clone)]
pub struct EncodedSensitive {
    pub name: String,
    pub hierarchy: Option<Hierarchy>,
    pub values: Vec<String>,
    pub codes: Vec<u32>,
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

    /// Builds a dataset from quasi-identifier columns already encoded against their hierarchies
    /// (`columns[j][row]` is a base code of `qis[j]`), with an optional sensitive column given as
    /// its distinct values and each row's index into them. Returns the dataset and, per row, the
    /// index of its distinct tuple (the link back from the tuples to the rows of a large table).
    pub fn from_codes(
        qis: Vec<Quasi>,
        columns: &[Vec<u32>],
        sensitive: Option<EncodedSensitive>,
    ) -> Result<(Dataset, Vec<u32>)> {
        let q = qis.len();
        if columns.len() != q {
            return Err(DeidError::Internal(format!(
                "{} code columns for {q} quasi-identifiers",
                columns.len()
            )));
        }
        let rows = columns.first().map(Vec::len).unwrap_or(0);
        if columns.iter().any(|c| c.len() != rows)
            || sensitive.as_ref().is_some_and(|s| s.codes.len() != rows)
        {
            return Err(DeidError::Internal("code columns of unequal length".into()));
        }
        let mut value_counts: Vec<Vec<u64>> =
            qis.iter().map(|x| vec![0; x.hierarchy.len()]).collect();
        for (j, col) in columns.iter().enumerate() {
            for &c in col {
                value_counts[j][c as usize] += 1;
            }
        }
        // Rows are grouped on their codes packed into one integer (mixed radix over the domain
        // sizes, the sensitive code last); wider rows fall back to hashing the code vectors.
        let mut radix: Vec<u128> = qis
            .iter()
            .map(|x| x.hierarchy.len().max(1) as u128)
            .collect();
        if let Some(s) = &sensitive {
            radix.push(s.values.len().max(1) as u128);
        }
        let bits: f64 = radix.iter().map(|&r| (r as f64).log2()).sum();
        let code = |r: usize, j: usize| -> u32 {
            if j < q {
                columns[j][r]
            } else {
                sensitive.as_ref().map_or(0, |s| s.codes[r])
            }
        };
        let width = radix.len();
        let mut row_tuple = Vec::with_capacity(rows);
        let mut firsts: Vec<usize> = Vec::new();
        let mut counts: Vec<u32> = Vec::new();
        if bits < 127.0 {
            let mut index: foldhash::HashMap<u128, u32> = foldhash::HashMap::default();
            for r in 0..rows {
                let packed = (0..width).fold(0u128, |acc, j| acc * radix[j] + code(r, j) as u128);
                let next = counts.len() as u32;
                let slot = *index.entry(packed).or_insert(next);
                if slot == next {
                    firsts.push(r);
                    counts.push(0);
                }
                counts[slot as usize] += 1;
                row_tuple.push(slot);
            }
        } else {
            let mut index: foldhash::HashMap<Vec<u32>, u32> = foldhash::HashMap::default();
            let mut key = Vec::with_capacity(width);
            for r in 0..rows {
                key.clear();
                key.extend((0..width).map(|j| code(r, j)));
                let next = counts.len() as u32;
                let slot = match index.get(&key) {
                    Some(&s) => s,
                    None => {
                        index.insert(key.clone(), next);
                        firsts.push(r);
                        counts.push(0);
                        next
                    }
                };
                counts[slot as usize] += 1;
                row_tuple.push(slot);
            }
        }
        let mut tuples = Vec::with_capacity(firsts.len() * q);
        for &r in &firsts {
            tuples.extend((0..q).map(|j| columns[j][r]));
        }
        let (sensitive, sensitive_codes) = match sensitive {
            None => (None, Vec::new()),
            Some(EncodedSensitive {
                name,
                hierarchy: h,
                values,
                codes,
            }) => {
                let mut s_counts = vec![0u64; values.len()];
                for &c in &codes {
                    s_counts[c as usize] += 1;
                }
                let per_tuple = firsts.iter().map(|&r| codes[r]).collect();
                (
                    Some(SensitiveColumn::new(&name, values, s_counts, h)),
                    per_tuple,
                )
            }
        };
        Ok((
            Dataset {
                qis,
                rows,
                tuples,
                counts,
                value_counts,
                sensitive,
                sensitive_codes,
            },
            row_tuple,
        ))
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

    /// The base codes of distinct tuple `t`.
    pub fn tuple(&self, t: usize) -> &[u32] {
        let q = self.qis.len();
        &self.tuples[t * q..(t + 1) * q]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, values: &[&str]) -> Hierarchy {
        let rows: Vec<Vec<String>> = values
            .iter()
            .map(|v| vec![v.to_string(), "*".to_string()])
            .collect();
        Hierarchy::from_rows(name, &rows).expect("hierarchy")
    }

    #[test]
    fn from_codes_groups_rows_as_new_does() {
        let qis = vec![
            Quasi {
                name: "a".into(),
                hierarchy: h("a", &["x", "y"]),
            },
            Quasi {
                name: "b".into(),
                hierarchy: h("b", &["1", "2", "3"]),
            },
        ];
        let rows = [
            ["x", "1", "p"],
            ["y", "2", "q"],
            ["x", "1", "p"],
            ["x", "1", "q"],
        ];
        let by_text = Dataset::with_sensitive(qis.clone(), "s", None, rows).expect("new");
        let columns = vec![vec![0, 1, 0, 0], vec![0, 1, 0, 0]];
        let (by_codes, row_tuple) = Dataset::from_codes(
            qis,
            &columns,
            Some(EncodedSensitive {
                name: "s".into(),
                hierarchy: None,
                values: vec!["p".into(), "q".into()],
                codes: vec![0, 1, 0, 1],
            }),
        )
        .expect("from codes");
        let a: Vec<(Vec<u32>, u32)> = by_text.tuples().map(|(t, n)| (t.to_vec(), n)).collect();
        let b: Vec<(Vec<u32>, u32)> = by_codes.tuples().map(|(t, n)| (t.to_vec(), n)).collect();
        assert_eq!(a, b);
        assert_eq!(by_codes.rows(), 4);
        assert_eq!(row_tuple, [0, 1, 0, 2]);
        assert_eq!(by_codes.tuple(2), [0, 0]);
        assert_eq!(by_codes.value_counts(1), [3, 1, 0]);
        assert_eq!(by_codes.sensitive_codes(), [0, 1, 1]);
    }
}
