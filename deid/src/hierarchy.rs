//! Generalization hierarchies: for each original value, its generalization at every level, from
//! level 0 (the value itself) to the top (usually `*`). ARX's CSV format is one row per original
//! value, `;`-separated, no header, one column per level.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{DeidError, Result};

/// A hierarchy with its values dictionary-encoded: codes at level 0 index the original values;
/// at each level, generalized values have their own dense codes.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    name: String,
    index: HashMap<String, u32>,
    /// `labels[level][code]`: the text of a generalized value.
    labels: Vec<Vec<String>>,
    /// `up[level][base_code]`: the code at `level` of original value `base_code`.
    up: Vec<Vec<u32>>,
}

impl Hierarchy {
    /// Builds a hierarchy from rows of equal length (value, level 1, ..., top).
    pub fn from_rows(name: &str, rows: &[Vec<String>]) -> Result<Hierarchy> {
        let err = |message: String| DeidError::Hierarchy {
            name: name.to_string(),
            message,
        };
        let height = rows
            .first()
            .map(Vec::len)
            .ok_or_else(|| err("it has no rows".into()))?;
        let mut index = HashMap::new();
        let mut labels: Vec<Vec<String>> = vec![Vec::new(); height];
        let mut label_codes: Vec<HashMap<String, u32>> = vec![HashMap::new(); height];
        let mut up: Vec<Vec<u32>> = vec![Vec::new(); height];
        for (line, row) in rows.iter().enumerate() {
            if row.len() != height {
                return Err(err(format!(
                    "line {} has {} levels but line 1 has {height}: every row needs a value for every level",
                    line + 1,
                    row.len()
                )));
            }
            let base = row[0].clone();
            if index.contains_key(&base) {
                return Err(err(format!(
                    "line {} repeats a value of an earlier line",
                    line + 1
                )));
            }
            index.insert(base, index.len() as u32);
            for (level, cell) in row.iter().enumerate() {
                let next = label_codes[level].len() as u32;
                let code = *label_codes[level].entry(cell.clone()).or_insert_with(|| {
                    labels[level].push(cell.clone());
                    next
                });
                up[level].push(code);
            }
        }
        // Each level must be a coarsening of the one below: values that share a generalization
        // at some level share it at every higher level.
        for level in 1..height {
            let mut parent: HashMap<u32, u32> = HashMap::new();
            for (&below, &here) in up[level - 1].iter().zip(&up[level]) {
                if *parent.entry(below).or_insert(here) != here {
                    return Err(err(format!(
                        "level {level} splits a group of level {}: a hierarchy may only merge values going up",
                        level - 1
                    )));
                }
            }
        }
        Ok(Hierarchy {
            name: name.to_string(),
            index,
            labels,
            up,
        })
    }

    /// Reads an ARX hierarchy CSV (`;`-separated unless `delimiter` says otherwise).
    pub fn from_arx_csv(path: &Path, delimiter: char) -> Result<Hierarchy> {
        let text = std::fs::read_to_string(path).map_err(|source| DeidError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let rows: Vec<Vec<String>> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split(delimiter).map(|c| c.trim().to_string()).collect())
            .collect();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        Self::from_rows(&name, &rows)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of levels, counting level 0.
    pub fn height(&self) -> usize {
        self.labels.len()
    }

    /// Number of original values.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The code of an original value.
    pub fn code(&self, value: &str) -> Option<u32> {
        self.index.get(value).copied()
    }

    /// The code at `level` of original value `base`.
    pub fn generalize(&self, base: u32, level: usize) -> u32 {
        self.up[level][base as usize]
    }

    /// Codes at `level` for every original value, indexed by base code.
    pub fn level_map(&self, level: usize) -> &[u32] {
        &self.up[level]
    }

    /// Number of distinct values at `level`.
    pub fn cardinality(&self, level: usize) -> usize {
        self.labels[level].len()
    }

    /// The text of generalized value `code` at `level`.
    pub fn label(&self, level: usize, code: u32) -> &str {
        &self.labels[level][code as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(spec: &[&str]) -> Vec<Vec<String>> {
        spec.iter()
            .map(|r| r.split(';').map(str::to_string).collect())
            .collect()
    }

    #[test]
    fn encodes_levels() {
        let h = Hierarchy::from_rows("age", &rows(&["1;0-4;*", "2;0-4;*", "7;5-9;*"])).expect("ok");
        assert_eq!(h.height(), 3);
        assert_eq!(h.cardinality(1), 2);
        let c = h.code("7").expect("known");
        assert_eq!(h.label(1, h.generalize(c, 1)), "5-9");
        assert_eq!(h.label(2, h.generalize(c, 2)), "*");
        assert_eq!(h.code("8"), None);
    }

    #[test]
    fn refuses_ragged_split_and_repeated_rows() {
        let e = Hierarchy::from_rows("x", &rows(&["1;a;*", "2;*"])).expect_err("ragged");
        assert!(e.to_string().contains("line 2 has 2 levels"), "{e}");
        let e = Hierarchy::from_rows("x", &rows(&["1;a;p", "2;a;q"])).expect_err("split");
        assert!(e.to_string().contains("splits"), "{e}");
        let e = Hierarchy::from_rows("x", &rows(&["1;a", "1;a"])).expect_err("repeat");
        assert!(e.to_string().contains("repeats"), "{e}");
    }
}
