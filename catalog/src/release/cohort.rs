//! Cohort counts over a published release: how many persons meet every criterion (each a
//! table, a column and the values that qualify), in total and broken down by one column of the
//! person table. The counts are exact; the caller applies the license's output rules
//! (`tessera_licensing::output`) before any leaves the service.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use polars::prelude::{DataFrame, DataType, ParquetReader, SerReader};

use super::build::Manifest;
use crate::error::{CatalogError, Result};

/// Persons with at least one row of `table` whose `column` (as text) is one of `any_of`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Criterion {
    pub table: String,
    pub column: String,
    pub any_of: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CohortQuery {
    /// All must hold (AND); none means every person of the release.
    pub criteria: Vec<Criterion>,
    /// A column of the person table to break the count down by.
    pub group_by: Option<String>,
}

/// Exact counts of distinct persons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CohortCounts {
    pub total: u64,
    /// Value of the `group_by` column (`null` for a missing value) → persons; sorted by value.
    pub groups: Vec<(String, u64)>,
}

/// The columns of `table` in the release, or a clear error naming what exists.
fn columns_of<'m>(manifest: &'m Manifest, table: &str) -> Result<Vec<&'m str>> {
    manifest
        .files
        .iter()
        .find(|f| f.table == table)
        .map(|f| f.columns.iter().map(|c| c.name.as_str()).collect())
        .ok_or_else(|| CatalogError::NotFound {
            what: format!(
                "table `{table}` in release {} v{}",
                manifest.family, manifest.version
            ),
            hint: format!(
                "the release holds {}",
                manifest
                    .files
                    .iter()
                    .map(|f| f.table.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

fn check_column(manifest: &Manifest, table: &str, column: &str) -> Result<()> {
    if columns_of(manifest, table)?.contains(&column) {
        Ok(())
    } else {
        Err(CatalogError::NotFound {
            what: format!("column `{column}` of table `{table}`"),
            hint: "the data dictionary lists the columns".into(),
        })
    }
}

fn read(dir: &Path, manifest: &Manifest, table: &str, columns: &[&str]) -> Result<DataFrame> {
    let entry = manifest
        .files
        .iter()
        .find(|f| f.table == table)
        .ok_or_else(|| CatalogError::internal(format!("no file for table {table}")))?;
    let path = dir.join(&entry.file);
    let file = std::fs::File::open(&path).map_err(|source| CatalogError::Io {
        path: path.clone(),
        source,
    })?;
    ParquetReader::new(file)
        .with_columns(Some(columns.iter().map(|c| c.to_string()).collect()))
        .finish()
        .map_err(|e| CatalogError::internal(format!("reading {}: {e}", path.display())))
}

/// A column's values as text (`None` for null).
fn text_values(df: &DataFrame, column: &str) -> Result<Vec<Option<String>>> {
    let bad = |e: polars::error::PolarsError| {
        CatalogError::internal(format!("column {column} as text: {e}"))
    };
    let c = df
        .column(column)
        .map_err(bad)?
        .cast(&DataType::String)
        .map_err(bad)?;
    Ok(c.str()
        .map_err(bad)?
        .iter()
        .map(|v| v.map(str::to_string))
        .collect())
}

/// Counts the cohort in the release files under `dir` described by `manifest`.
pub fn count(dir: &Path, manifest: &Manifest, query: &CohortQuery) -> Result<CohortCounts> {
    for c in &query.criteria {
        check_column(manifest, &c.table, &c.column)?;
        check_column(manifest, &c.table, "person_id")?;
        if c.any_of.is_empty() {
            return Err(CatalogError::invalid(format!(
                "criterion on {}.{}: give at least one value in `any_of`",
                c.table, c.column
            )));
        }
    }
    if let Some(g) = &query.group_by {
        check_column(manifest, "person", g)?;
    }
    // Persons meeting every criterion, as a set intersected criterion by criterion.
    let mut cohort: Option<HashSet<String>> = None;
    for c in &query.criteria {
        let df = read(dir, manifest, &c.table, &["person_id", c.column.as_str()])?;
        let wanted: HashSet<&str> = c.any_of.iter().map(String::as_str).collect();
        let ids = text_values(&df, "person_id")?;
        let values = text_values(&df, &c.column)?;
        let hits: HashSet<String> = ids
            .into_iter()
            .zip(values)
            .filter_map(|(id, v)| match (id, v) {
                (Some(id), Some(v)) if wanted.contains(v.as_str()) => Some(id),
                _ => None,
            })
            .collect();
        cohort = Some(match cohort {
            None => hits,
            Some(prev) => prev.intersection(&hits).cloned().collect(),
        });
    }
    let mut person_columns = vec!["person_id"];
    if let Some(g) = query.group_by.as_deref().filter(|g| *g != "person_id") {
        person_columns.push(g);
    }
    let people = read(dir, manifest, "person", &person_columns)?;
    let ids = text_values(&people, "person_id")?;
    let groups_of = match &query.group_by {
        Some(g) => Some(text_values(&people, g)?),
        None => None,
    };
    let mut total = 0u64;
    let mut groups: BTreeMap<String, u64> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let Some(id) = id else { continue };
        if cohort.as_ref().is_some_and(|c| !c.contains(id)) {
            continue;
        }
        total += 1;
        if let Some(values) = &groups_of {
            let label = values[i].clone().unwrap_or_else(|| "null".into());
            *groups.entry(label).or_default() += 1;
        }
    }
    Ok(CohortCounts {
        total,
        groups: groups.into_iter().collect(),
    })
}
