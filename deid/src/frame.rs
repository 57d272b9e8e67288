//! The policy applied to a Polars frame: Safe Harbor transforms, identifiers dropped, keyed
//! pseudonyms, the optimal generalization of the quasi-identifiers, suppression (cells written
//! as `*`), and a report. [`Generalization`] applies a chosen result to new data, such as a
//! release's later tables.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use polars::prelude::*;
use ring::hmac;
use serde::Serialize;

use crate::dataset::{Dataset, Quasi};
use crate::error::{DeidError, Result};
use crate::hierarchy::Hierarchy;
use crate::lattice::{self, Privacy};
use crate::metrics::Metric;
use crate::policy::{Policy, Role, Transform};
use crate::risk;
use crate::safe_harbor;
use crate::search;

/// What a privacy officer reads after a run (also written as JSON by `tessera deid --report`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub records: usize,
    pub k: u32,
    pub k_achieved: u64,
    /// Chosen level per quasi-identifier.
    pub levels: BTreeMap<String, usize>,
    /// Every metric's value at the chosen levels.
    pub loss: BTreeMap<String, f64>,
    pub metric: String,
    pub suppressed_records: u64,
    pub suppression_limit: f64,
    pub equivalence_classes: usize,
    pub min_class_size: u64,
    pub max_class_size: u64,
    pub risk: RiskReport,
    pub search: SearchReport,
    pub columns: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RiskReport {
    pub prosecutor_max: f64,
    pub prosecutor_avg: f64,
    pub records_at_risk: f64,
    pub risk_threshold: f64,
    pub sample_uniques: u64,
    pub sample_uniques_input: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchReport {
    pub nodes_checked: usize,
    pub lattice_size: usize,
    pub time_ms: f64,
}

/// A chosen generalization: hierarchy and level per quasi-identifier.
#[derive(Debug, Clone)]
pub struct Generalization {
    pub columns: Vec<(String, Hierarchy, usize)>,
}

impl Generalization {
    /// Generalizes the quasi-identifier columns of another frame to the same levels. A value
    /// outside a hierarchy is an error naming the column and row.
    pub fn apply(&self, df: &DataFrame) -> Result<DataFrame> {
        let mut out = df.clone();
        for (name, h, level) in &self.columns {
            let values = strings(df, name)?;
            let mut generalized = Vec::with_capacity(values.len());
            for (row, v) in values.iter().enumerate() {
                let code = h.code(v).ok_or_else(|| DeidError::Input {
                    message: format!(
                        "row {row}: the value of column `{name}` is missing from its hierarchy"
                    ),
                })?;
                generalized.push(h.label(*level, h.generalize(code, *level)).to_string());
            }
            out.with_column(Column::new(name.as_str().into(), generalized))
                .map_err(polars_err)?;
        }
        Ok(out)
    }
}

/// A Polars error, by kind only: Polars' messages can quote cell values (a malformed CSV line,
/// a value that failed to parse), which may be identifying.
pub(crate) fn polars_err(e: PolarsError) -> DeidError {
    let kind = match &e {
        PolarsError::ColumnNotFound(_) => "a column is missing",
        PolarsError::ComputeError(_) => "the table could not be processed (malformed input?)",
        PolarsError::IO { .. } => "reading or writing failed",
        PolarsError::NoData(_) => "the table is empty",
        PolarsError::SchemaMismatch(_) | PolarsError::ShapeMismatch(_) => {
            "rows or columns do not line up"
        }
        _ => "the table could not be processed",
    };
    DeidError::Input {
        message: format!("table error: {kind}; check the file's delimiter, quoting and header"),
    }
}

/// A column's values as text (nulls as empty text).
fn strings(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    let col = df
        .column(name)
        .map_err(|_| DeidError::Input {
            message: format!("the input has no column `{name}`"),
        })?
        .cast(&DataType::String)
        .map_err(polars_err)?;
    let ca = col.str().map_err(polars_err)?;
    Ok(ca.iter().map(|v| v.unwrap_or("").to_string()).collect())
}

fn transform(
    values: &mut [String],
    t: &Transform,
    patients: Option<&[String]>,
    key: Option<&hmac::Key>,
    column: &str,
) -> Result<()> {
    match t {
        Transform::Zip3 => values.iter_mut().for_each(|v| *v = safe_harbor::zip3(v)),
        Transform::AgeTopCode => values
            .iter_mut()
            .for_each(|v| *v = safe_harbor::age_top_code(v)),
        Transform::DateYear => values
            .iter_mut()
            .for_each(|v| *v = v.chars().take(4).collect()),
        Transform::DateMonth => values
            .iter_mut()
            .for_each(|v| *v = v.chars().take(7).collect()),
        Transform::DateShift { window_days, .. } => {
            let key = key.ok_or_else(|| DeidError::Input {
                message: format!(
                    "column `{column}` shifts dates with a key: set the pseudonym key variable"
                ),
            })?;
            let patients = patients
                .ok_or_else(|| DeidError::Internal("date shift without patients".into()))?;
            for (row, (v, p)) in values.iter_mut().zip(patients).enumerate() {
                if v.is_empty() {
                    continue;
                }
                let date =
                    v.get(..10)
                        .and_then(days_from_date)
                        .ok_or_else(|| DeidError::Input {
                            message: format!(
                                "row {row}: column `{column}` is not a date (YYYY-MM-DD)"
                            ),
                        })?;
                *v = format_days(date + safe_harbor::date_shift_days(key, p, *window_days));
            }
        }
    }
    Ok(())
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (proleptic Gregorian).
fn days_from_date(d: &str) -> Option<i64> {
    let y: i64 = d.get(..4)?.parse().ok()?;
    let m: i64 = d.get(5..7)?.parse().ok()?;
    let day: i64 = d.get(8..10)?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146097 + doe - 719468)
}

fn format_days(z: i64) -> String {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The result of a run.
#[derive(Debug)]
pub struct Outcome {
    pub frame: DataFrame,
    pub report: Report,
    pub generalization: Generalization,
}

/// Applies `policy` to `df`. `pseudonym_key` serves pseudonyms and date shifts.
pub fn anonymize(df: &DataFrame, policy: &Policy, pseudonym_key: Option<&[u8]>) -> Result<Outcome> {
    let names: Vec<String> = df
        .get_column_names_owned()
        .into_iter()
        .map(|n| n.to_string())
        .collect();
    let missing = policy.missing_columns(&names);
    if !missing.is_empty() {
        return Err(DeidError::Input {
            message: format!(
                "the input lacks column(s) the policy names: {}",
                missing.join(", ")
            ),
        });
    }
    let unlisted: Vec<&str> = names
        .iter()
        .filter(|n| !policy.columns.iter().any(|c| &c.name == *n))
        .map(String::as_str)
        .collect();
    if !unlisted.is_empty() {
        return Err(DeidError::Input {
            message: format!(
                "the policy gives no role to column(s) {}: add them (role = \"insensitive\" keeps a column as it is)",
                unlisted.join(", ")
            ),
        });
    }
    let privacy: Privacy = policy.privacy_models()?;
    let metric: Metric = policy.metric();
    let key = pseudonym_key.map(|k| hmac::Key::new(hmac::HMAC_SHA256, k));
    if policy.columns.iter().any(|c| c.role == Role::Pseudonym) && key.is_none() {
        return Err(DeidError::Input {
            message: format!(
                "the policy has pseudonym columns: set {} to the pseudonym key (64 hex characters)",
                policy.pseudonym.key_env
            ),
        });
    }

    // Values, transformed.
    let mut values: HashMap<&str, Vec<String>> = HashMap::new();
    for c in &policy.columns {
        values.insert(c.name.as_str(), strings(df, &c.name)?);
    }
    for c in &policy.columns {
        if let Some(t) = &c.transform {
            let patients = match t {
                Transform::DateShift { patient_column, .. } => Some(strings(df, patient_column)?),
                _ => None,
            };
            let column = values
                .get_mut(c.name.as_str())
                .ok_or_else(|| DeidError::Internal("column vanished".into()))?;
            transform(column, t, patients.as_deref(), key.as_ref(), &c.name)?;
        }
    }

    // Hierarchies over the (transformed) values.
    let mut qis = Vec::new();
    for c in policy
        .columns
        .iter()
        .filter(|c| c.role == Role::QuasiIdentifier)
    {
        let mut distinct: Vec<String> = values[c.name.as_str()].clone();
        distinct.sort();
        distinct.dedup();
        let h = policy
            .hierarchy(c, &distinct)?
            .ok_or_else(|| DeidError::Internal("quasi-identifier without hierarchy".into()))?;
        qis.push(Quasi {
            name: c.name.clone(),
            hierarchy: h,
        });
    }
    let sensitive = policy
        .privacy
        .l_diversity
        .as_ref()
        .map(|l| l.attribute.clone())
        .or_else(|| {
            policy
                .privacy
                .t_closeness
                .as_ref()
                .map(|t| t.attribute.clone())
        });
    let rows = df.height();
    let qi_values: Vec<&Vec<String>> = qis.iter().map(|q| &values[q.name.as_str()]).collect();
    let sens_values: Option<&Vec<String>> = sensitive.as_deref().map(|s| &values[s]);
    let table: Vec<Vec<&str>> = (0..rows)
        .map(|r| {
            qi_values
                .iter()
                .map(|v| v[r].as_str())
                .chain(sens_values.map(|s| s[r].as_str()))
                .collect()
        })
        .collect();
    let data = match &sensitive {
        None => Dataset::new(qis.clone(), &table)?,
        Some(s) => {
            let col = policy
                .columns
                .iter()
                .find(|c| &c.name == s)
                .ok_or_else(|| DeidError::Internal("sensitive".into()))?;
            let mut distinct: Vec<String> = values[s.as_str()].clone();
            distinct.sort();
            distinct.dedup();
            let h = policy.hierarchy(col, &distinct)?;
            Dataset::with_sensitive(qis.clone(), s, h, &table)?
        }
    };

    // Search.
    let started = Instant::now();
    let solution = search::optimal(&data, privacy, metric)?.ok_or_else(|| DeidError::Input {
        message: "no generalization satisfies the policy: raise suppression_limit, lower k / l, or raise t".into(),
    })?;
    let time_ms = started.elapsed().as_secs_f64() * 1000.0;
    let levels = solution.best.levels.clone();

    // Which generalized tuples are released.
    let ok: HashMap<Vec<u32>, bool> = lattice::classes(&data, &levels)
        .into_iter()
        .map(|(codes, n, hist)| {
            let keep = privacy.class_ok(n, &hist, data.sensitive());
            (codes, keep)
        })
        .collect();
    let mut out_columns: Vec<Column> = Vec::new();
    let row_codes: Vec<Vec<u32>> = (0..rows)
        .map(|r| {
            qis.iter()
                .enumerate()
                .map(|(j, q)| {
                    let code = q.hierarchy.code(&values[q.name.as_str()][r]).unwrap_or(0);
                    q.hierarchy.generalize(code, levels[j])
                })
                .collect()
        })
        .collect();
    let released: Vec<bool> = row_codes
        .iter()
        .map(|c| ok.get(c).copied().unwrap_or(false))
        .collect();
    let mut roles = BTreeMap::new();
    for name in &names {
        let c = policy
            .columns
            .iter()
            .find(|c| &c.name == name)
            .ok_or_else(|| DeidError::Internal("unlisted".into()))?;
        roles.insert(name.clone(), format!("{:?}", c.role).to_lowercase());
        let v = &values[name.as_str()];
        let column: Vec<String> = match c.role {
            Role::Identifier => continue,
            Role::Pseudonym => {
                let key = key
                    .as_ref()
                    .ok_or_else(|| DeidError::Internal("key".into()))?;
                v.iter().map(|x| safe_harbor::pseudonym(key, x)).collect()
            }
            Role::QuasiIdentifier => {
                let j = qis
                    .iter()
                    .position(|q| &q.name == name)
                    .ok_or_else(|| DeidError::Internal("qi".into()))?;
                let h = &qis[j].hierarchy;
                (0..rows)
                    .map(|r| {
                        if released[r] {
                            h.label(levels[j], row_codes[r][j]).to_string()
                        } else {
                            "*".to_string()
                        }
                    })
                    .collect()
            }
            Role::Sensitive | Role::Insensitive => v.clone(),
        };
        out_columns.push(Column::new(name.as_str().into(), column));
    }
    let frame = DataFrame::new(rows, out_columns).map_err(polars_err)?;

    let r = risk::assess(&data, &levels, privacy, policy.privacy.risk_threshold, None);
    let e = &solution.best;
    let loss = [
        ("nu_entropy", e.losses.nu_entropy),
        ("loss", e.losses.loss),
        ("precision", e.losses.precision),
        ("discernibility", e.losses.discernibility),
        ("aecs", e.losses.aecs),
        ("height", e.losses.height),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let report = Report {
        records: rows,
        k: privacy.k,
        k_achieved: e.min_class_size,
        levels: qis
            .iter()
            .zip(&levels)
            .map(|(q, &l)| (q.name.clone(), l))
            .collect(),
        loss,
        metric: policy.privacy.metric.clone(),
        suppressed_records: e.suppressed_records,
        suppression_limit: privacy.suppression_limit,
        equivalence_classes: e.equivalence_classes,
        min_class_size: e.min_class_size,
        max_class_size: e.max_class_size,
        risk: RiskReport {
            prosecutor_max: r.prosecutor_max,
            prosecutor_avg: r.prosecutor_avg,
            records_at_risk: r.records_at_risk,
            risk_threshold: r.threshold,
            sample_uniques: r.sample_uniques,
            sample_uniques_input: r.sample_uniques_input,
        },
        search: SearchReport {
            nodes_checked: solution.nodes_checked,
            lattice_size: solution.lattice_size,
            time_ms,
        },
        columns: roles,
    };
    let generalization = Generalization {
        columns: qis
            .iter()
            .zip(&levels)
            .map(|(q, &l)| (q.name.clone(), q.hierarchy.clone(), l))
            .collect(),
    };
    Ok(Outcome {
        frame,
        report,
        generalization,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_round_trip() {
        for d in ["1970-01-01", "2000-02-29", "2024-12-31", "1900-03-01"] {
            assert_eq!(format_days(days_from_date(d).expect("date")), d);
        }
        assert_eq!(days_from_date("1970-01-02"), Some(1));
        assert_eq!(
            format_days(days_from_date("2024-02-28").expect("d") + 2),
            "2024-03-01"
        );
    }
}
