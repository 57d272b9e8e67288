//! The policy applied to a Polars frame: Safe Harbor transforms, identifiers dropped, keyed
//! pseudonyms, the optimal generalization of the quasi-identifiers, suppression (cells written
//! as `*`), and a report. [`Generalization`] applies a chosen result to new data, such as a
//! release's later tables.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use polars::prelude::*;
use ring::hmac;
use serde::Serialize;

use rayon::prelude::*;

use crate::dataset::{Dataset, EncodedSensitive, Quasi};
use crate::error::{DeidError, Result};
use crate::hierarchy::Hierarchy;
use crate::lattice::{self, Privacy};
use crate::metrics::Metric;
use crate::mondrian;
use crate::policy::{Method, Policy, Role, Transform};
use crate::risk;
use crate::safe_harbor;
use crate::search;

/// What a privacy officer reads after a run (also written as JSON by `tessera deid --report`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub records: usize,
    /// `optimal` or `mondrian`.
    pub method: String,
    pub k: u32,
    pub k_achieved: u64,
    /// The l-diversity model asked for, which every released class satisfies (classes that do
    /// not are suppressed), e.g. `distinct l = 2 on diagnosis`.
    pub l_diversity: Option<String>,
    /// The t-closeness model asked for, which every released class satisfies.
    pub t_closeness: Option<String>,
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
    /// With a population table: the largest journalist risk and the marketer risk.
    pub journalist_max: Option<f64>,
    pub marketer: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchReport {
    pub nodes_checked: usize,
    pub lattice_size: usize,
    pub time_ms: f64,
}

/// A chosen generalization: per quasi-identifier, its hierarchy, level, and the Safe Harbor
/// transform applied before generalizing (so raw values of later tables go through the same
/// steps as the released table's).
#[derive(Debug, Clone)]
pub struct Generalization {
    pub columns: Vec<GeneralizedColumn>,
}

#[derive(Debug, Clone)]
pub struct GeneralizedColumn {
    pub name: String,
    pub hierarchy: Hierarchy,
    pub level: usize,
    pub transform: Option<Transform>,
}

impl Generalization {
    /// Generalizes the quasi-identifier columns of another frame to the same levels (after the
    /// same transforms). A value outside a hierarchy is an error naming the column and row.
    /// Date shifts need the pseudonym key: see [`Generalization::apply_with_key`].
    pub fn apply(&self, df: &DataFrame) -> Result<DataFrame> {
        self.apply_with_key(df, None)
    }

    /// [`Generalization::apply`] with the key that date shifts use.
    pub fn apply_with_key(
        &self,
        df: &DataFrame,
        pseudonym_key: Option<&[u8]>,
    ) -> Result<DataFrame> {
        let key = pseudonym_key.map(|k| hmac::Key::new(hmac::HMAC_SHA256, k));
        let mut out = df.clone();
        for c in &self.columns {
            let text = column_text(df, &c.name, c.transform.as_ref(), key.as_ref())?;
            let (h, level) = (&c.hierarchy, c.level);
            let codes = encode(&text, h, "input", &c.name)?;
            let generalized = StringChunked::from_iter_values(
                c.name.as_str().into(),
                codes
                    .iter()
                    .map(|&v| h.label(level, h.generalize(v, level))),
            );
            out.with_column(generalized.into_column())
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

/// A column's values as text (nulls read as empty text where a value is needed).
fn strings(df: &DataFrame, name: &str) -> Result<StringChunked> {
    let col = df
        .column(name)
        .map_err(|_| DeidError::Input {
            message: format!("the input has no column `{name}`"),
        })?
        .cast(&DataType::String)
        .map_err(polars_err)?;
    Ok(col.str().map_err(polars_err)?.clone())
}

/// A text column transformed value by value; `f` gets the row and the value.
fn map_text(
    ca: &StringChunked,
    mut f: impl FnMut(usize, &str) -> Result<String>,
) -> Result<StringChunked> {
    let values: Vec<Option<String>> = ca
        .iter()
        .enumerate()
        .map(|(row, v)| v.map(|v| f(row, v)).transpose())
        .collect::<Result<_>>()?;
    Ok(values
        .into_iter()
        .collect::<StringChunked>()
        .with_name(ca.name().clone()))
}

fn transform(
    values: &StringChunked,
    t: &Transform,
    patients: Option<&StringChunked>,
    key: Option<&hmac::Key>,
    column: &str,
) -> Result<StringChunked> {
    match t {
        Transform::Zip3 => map_text(values, |_, v| Ok(safe_harbor::zip3(v))),
        Transform::AgeTopCode => map_text(values, |_, v| Ok(safe_harbor::age_top_code(v))),
        Transform::DateYear => map_text(values, |_, v| Ok(v.chars().take(4).collect())),
        Transform::DateMonth => map_text(values, |_, v| Ok(v.chars().take(7).collect())),
        Transform::DateShift { window_days, .. } => {
            let key = key.ok_or_else(|| DeidError::Input {
                message: format!(
                    "column `{column}` shifts dates with a key: set the pseudonym key variable"
                ),
            })?;
            let patients: Vec<&str> = patients
                .ok_or_else(|| DeidError::Internal("date shift without patients".into()))?
                .iter()
                .map(|p| p.unwrap_or(""))
                .collect();
            map_text(values, |row, v| {
                if v.is_empty() {
                    return Ok(String::new());
                }
                let date =
                    v.get(..10)
                        .and_then(days_from_date)
                        .ok_or_else(|| DeidError::Input {
                            message: format!(
                                "row {row}: column `{column}` is not a date (YYYY-MM-DD)"
                            ),
                        })?;
                Ok(format_days(
                    date + safe_harbor::date_shift_days(key, patients[row], *window_days),
                ))
            })
        }
    }
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
    /// The chosen levels, to generalize later tables the same way. `None` for Mondrian: local
    /// recoding gives each class its own levels, so there is no single generalization to
    /// re-apply; later tables join the released rows instead.
    pub generalization: Option<Generalization>,
}

/// Where a run is, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Transforming and encoding the columns.
    Encoding,
    /// Searching: the lattice's size, or the number of distinct tuples for Mondrian.
    Searching { size: usize },
    /// Building the released columns.
    Releasing,
}

/// What a run takes beyond the table, the policy and the key.
#[derive(Default)]
pub struct Options<'a> {
    /// A population table with the same quasi-identifier columns, for journalist and marketer
    /// risk.
    pub population: Option<&'a DataFrame>,
    /// Told each stage as the run reaches it.
    pub progress: Option<&'a (dyn Fn(Stage) + Sync)>,
}

impl std::fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("population", &self.population.map(DataFrame::height))
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Applies `policy` to `df`. `pseudonym_key` serves pseudonyms and date shifts.
pub fn anonymize(df: &DataFrame, policy: &Policy, pseudonym_key: Option<&[u8]>) -> Result<Outcome> {
    anonymize_with(df, policy, pseudonym_key, &Options::default())
}

/// [`anonymize`] on a lazy frame: the plan is collected (with Polars' optimizations) and run.
pub fn anonymize_lazy(
    lf: LazyFrame,
    policy: &Policy,
    pseudonym_key: Option<&[u8]>,
    options: &Options<'_>,
) -> Result<Outcome> {
    let df = lf.collect().map_err(polars_err)?;
    anonymize_with(&df, policy, pseudonym_key, options)
}

/// Encodes a text column against its hierarchy. A value outside it is an error naming the
/// table, the column and the first row holding it (never the value).
fn encode(ca: &StringChunked, h: &Hierarchy, table: &str, column: &str) -> Result<Vec<u32>> {
    let mut lut: foldhash::HashMap<&str, u32> = foldhash::HashMap::default();
    let mut out = Vec::with_capacity(ca.len());
    for (row, v) in ca.iter().enumerate() {
        let v = v.unwrap_or("");
        let code = match lut.get(v) {
            Some(&c) => c,
            None => {
                let c = h.code(v).ok_or_else(|| DeidError::Input {
                    message: format!(
                        "{table} row {row}: the value of column `{column}` is missing from its hierarchy `{}`; add it to the hierarchy",
                        h.name()
                    ),
                })?;
                lut.insert(v, c);
                c
            }
        };
        out.push(code);
    }
    Ok(out)
}

fn distinct(ca: &StringChunked) -> Result<Vec<String>> {
    let mut d: Vec<String> = ca
        .unique()
        .map_err(polars_err)?
        .iter()
        .map(|v| v.unwrap_or("").to_string())
        .collect();
    d.sort();
    d.dedup();
    Ok(d)
}

/// A column's text after its transform, if it has one (a date shift reads its patient column).
fn column_text(
    df: &DataFrame,
    name: &str,
    t: Option<&Transform>,
    key: Option<&hmac::Key>,
) -> Result<StringChunked> {
    let raw = strings(df, name)?;
    let Some(t) = t else {
        return Ok(raw);
    };
    let patients = match t {
        Transform::DateShift { patient_column, .. } => Some(strings(df, patient_column)?),
        _ => None,
    };
    transform(&raw, t, patients.as_ref(), key, name)
}

/// Text of the columns the policy transforms or generalizes, after the transforms.
fn transformed_text(
    df: &DataFrame,
    policy: &Policy,
    key: Option<&hmac::Key>,
    wanted: impl Fn(&crate::policy::ColumnPolicy) -> bool,
) -> Result<HashMap<String, StringChunked>> {
    let mut text = HashMap::new();
    for c in policy.columns.iter().filter(|c| wanted(c)) {
        let value = column_text(df, &c.name, c.transform.as_ref(), key)?;
        text.insert(c.name.clone(), value);
    }
    Ok(text)
}

/// Applies `policy` to `df` with [`Options`].
pub fn anonymize_with(
    df: &DataFrame,
    policy: &Policy,
    pseudonym_key: Option<&[u8]>,
    options: &Options<'_>,
) -> Result<Outcome> {
    let progress = |s: Stage| {
        if let Some(p) = options.progress {
            p(s)
        }
    };
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
    let method = policy.privacy.method;
    let key = pseudonym_key.map(|k| hmac::Key::new(hmac::HMAC_SHA256, k));
    if policy.columns.iter().any(|c| c.role == Role::Pseudonym) && key.is_none() {
        return Err(DeidError::Input {
            message: format!(
                "the policy has pseudonym columns: set {} to the pseudonym key (64 hex characters)",
                policy.pseudonym.key_env
            ),
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
    if let Some(pop) = options.population {
        let pop_names: Vec<String> = pop
            .get_column_names_owned()
            .into_iter()
            .map(|n| n.to_string())
            .collect();
        let lacking: Vec<&str> = policy
            .columns
            .iter()
            .filter(|c| c.role == Role::QuasiIdentifier)
            .map(|c| c.name.as_str())
            .filter(|n| !pop_names.iter().any(|p| p == n))
            .collect();
        if !lacking.is_empty() {
            return Err(DeidError::Input {
                message: format!(
                    "the population table lacks quasi-identifier column(s) {}",
                    lacking.join(", ")
                ),
            });
        }
    }

    // Text of the columns that need it, transformed.
    progress(Stage::Encoding);
    let rows = df.height();
    let mut text = transformed_text(df, policy, key.as_ref(), |c| {
        c.transform.is_some()
            || matches!(c.role, Role::QuasiIdentifier | Role::Pseudonym)
            || sensitive.as_deref() == Some(c.name.as_str())
    })?;

    // Hierarchies over the (transformed) values, then codes, column by column in parallel.
    let qi_columns: Vec<&crate::policy::ColumnPolicy> = policy
        .columns
        .iter()
        .filter(|c| c.role == Role::QuasiIdentifier)
        .collect();
    let encoded_qis: Vec<(Quasi, Vec<u32>)> = qi_columns
        .par_iter()
        .map(|c| {
            let ca = &text[&c.name];
            let h = policy
                .hierarchy(c, &distinct(ca)?)?
                .ok_or_else(|| DeidError::Internal("quasi-identifier without hierarchy".into()))?;
            let codes = encode(ca, &h, "input", &c.name)?;
            Ok((
                Quasi {
                    name: c.name.clone(),
                    hierarchy: h,
                },
                codes,
            ))
        })
        .collect::<Result<_>>()?;
    let (qis, codes): (Vec<Quasi>, Vec<Vec<u32>>) = encoded_qis.into_iter().unzip();
    let sensitive = match &sensitive {
        None => None,
        Some(s) => {
            let col = policy
                .columns
                .iter()
                .find(|c| &c.name == s)
                .ok_or_else(|| DeidError::Internal("sensitive".into()))?;
            let ca = &text[s];
            let values = distinct(ca)?;
            let h = policy.hierarchy(col, &values)?;
            if let Some(h) = &h
                && let Some(row) = ca.iter().position(|v| h.code(v.unwrap_or("")).is_none())
            {
                return Err(DeidError::Input {
                    message: format!(
                        "row {row}: the value of sensitive column `{s}` is missing from its hierarchy `{}`",
                        h.name()
                    ),
                });
            }
            let index: foldhash::HashMap<&str, u32> = values
                .iter()
                .enumerate()
                .map(|(i, v)| (v.as_str(), i as u32))
                .collect();
            let codes = ca
                .iter()
                .map(|v| index.get(v.unwrap_or("")).copied().unwrap_or(0))
                .collect();
            Some(EncodedSensitive {
                name: s.clone(),
                hierarchy: h,
                values,
                codes,
            })
        }
    };
    let (data, row_tuple) = Dataset::from_codes(qis.clone(), &codes, sensitive)?;
    drop(codes);
    let population = match options.population {
        None => None,
        Some(pop) => {
            let ptext = transformed_text(pop, policy, key.as_ref(), |c| {
                c.role == Role::QuasiIdentifier
            })?;
            let pcodes: Vec<Vec<u32>> = qis
                .iter()
                .map(|q| encode(&ptext[&q.name], &q.hierarchy, "population", &q.name))
                .collect::<Result<_>>()?;
            Some(Dataset::from_codes(qis.clone(), &pcodes, None)?.0)
        }
    };

    // Search.
    let started = Instant::now();
    let (release, core, generalization) = match method {
        Method::Optimal => {
            progress(Stage::Searching {
                size: data.heights().iter().product(),
            });
            let solution =
                search::optimal(&data, privacy, metric)?.ok_or_else(|| DeidError::Input {
                    message: "no generalization satisfies the policy: raise suppression_limit, lower k / l, or raise t".into(),
                })?;
            let time_ms = started.elapsed().as_secs_f64() * 1000.0;
            let e = solution.best;
            let levels = e.levels.clone();
            let core = Core {
                risk: risk::assess(
                    &data,
                    &levels,
                    privacy,
                    policy.privacy.risk_threshold,
                    population.as_ref(),
                ),
                levels: levels.clone(),
                losses: e.losses,
                suppressed: e.suppressed_records,
                classes: e.equivalence_classes,
                min: e.min_class_size,
                max: e.max_class_size,
                nodes_checked: solution.nodes_checked,
                lattice_size: solution.lattice_size,
                time_ms,
            };
            let generalization = Generalization {
                columns: qis
                    .iter()
                    .zip(&levels)
                    .map(|(q, &level)| GeneralizedColumn {
                        name: q.name.clone(),
                        hierarchy: q.hierarchy.clone(),
                        level,
                        transform: policy
                            .columns
                            .iter()
                            .find(|c| c.name == q.name)
                            .and_then(|c| c.transform.clone()),
                    })
                    .collect(),
            };
            let released = lattice::released_tuples(&data, &levels, privacy);
            (
                Release::Levels { levels, released },
                core,
                Some(generalization),
            )
        }
        Method::Mondrian => {
            progress(Stage::Searching {
                size: data.distinct(),
            });
            let p = mondrian::partition(&data, privacy)?.ok_or_else(|| DeidError::Input {
                message: "the whole table does not satisfy the policy, so Mondrian cannot release it: lower k / l, or raise t".into(),
            })?;
            let time_ms = started.elapsed().as_secs_f64() * 1000.0;
            let core = Core {
                risk: risk::assess_mondrian(
                    &data,
                    &p,
                    policy.privacy.risk_threshold,
                    population.as_ref(),
                ),
                levels: p.max_levels(qis.len()),
                losses: p.losses,
                suppressed: 0,
                classes: p.classes.len(),
                min: p.min_class_size(),
                max: p.max_class_size(),
                nodes_checked: p.classes.len(),
                lattice_size: data.heights().iter().product(),
                time_ms,
            };
            (Release::Mondrian(p), core, None)
        }
    };

    // The released columns, in the input's order.
    progress(Stage::Releasing);
    let generalized: HashMap<&str, Column> = qis
        .par_iter()
        .enumerate()
        .map(|(j, q)| {
            let h = &q.hierarchy;
            let values = row_tuple
                .iter()
                .map(|&t| release.label(t as usize, j, data.tuple(t as usize)[j], h));
            let ca = StringChunked::from_iter_values(q.name.as_str().into(), values);
            (q.name.as_str(), ca.into_column())
        })
        .collect();
    let mut out_columns: Vec<Column> = Vec::new();
    let mut roles = BTreeMap::new();
    for name in &names {
        let c = policy
            .columns
            .iter()
            .find(|c| &c.name == name)
            .ok_or_else(|| DeidError::Internal("unlisted".into()))?;
        roles.insert(name.clone(), c.role.name().to_string());
        let column: Column = match c.role {
            Role::Identifier => continue,
            Role::Pseudonym => {
                let key = key
                    .as_ref()
                    .ok_or_else(|| DeidError::Internal("key".into()))?;
                map_text(&text[name], |_, v| Ok(safe_harbor::pseudonym(key, v)))?.into_column()
            }
            Role::QuasiIdentifier => generalized
                .get(name.as_str())
                .cloned()
                .ok_or_else(|| DeidError::Internal("qi".into()))?,
            Role::Sensitive | Role::Insensitive => match text.remove(name) {
                Some(t) if c.transform.is_some() => t.into_column(),
                _ => df.column(name).map_err(polars_err)?.clone(),
            },
        };
        out_columns.push(column);
    }
    let frame = DataFrame::new(rows, out_columns).map_err(polars_err)?;

    let loss = [
        ("nu_entropy", core.losses.nu_entropy),
        ("loss", core.losses.loss),
        ("precision", core.losses.precision),
        ("discernibility", core.losses.discernibility),
        ("aecs", core.losses.aecs),
        ("height", core.losses.height),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let r = core.risk;
    let report = Report {
        records: rows,
        method: method.name().to_string(),
        k: privacy.k,
        k_achieved: core.min,
        l_diversity: policy.privacy.l_diversity.as_ref().map(|l| {
            let c = l.c.map(|c| format!(", c = {c}")).unwrap_or_default();
            format!("{} l = {}{c} on {}", l.kind, l.l, l.attribute)
        }),
        t_closeness: policy
            .privacy
            .t_closeness
            .as_ref()
            .map(|t| format!("{} distance t = {} on {}", t.distance, t.t, t.attribute)),
        levels: qis
            .iter()
            .zip(&core.levels)
            .map(|(q, &l)| (q.name.clone(), l))
            .collect(),
        loss,
        metric: policy.privacy.metric.clone(),
        suppressed_records: core.suppressed,
        suppression_limit: privacy.suppression_limit,
        equivalence_classes: core.classes,
        min_class_size: core.min,
        max_class_size: core.max,
        risk: RiskReport {
            prosecutor_max: r.prosecutor_max,
            prosecutor_avg: r.prosecutor_avg,
            records_at_risk: r.records_at_risk,
            risk_threshold: r.threshold,
            sample_uniques: r.sample_uniques,
            sample_uniques_input: r.sample_uniques_input,
            journalist_max: r.journalist_max,
            marketer: r.marketer,
        },
        search: SearchReport {
            nodes_checked: core.nodes_checked,
            lattice_size: core.lattice_size,
            time_ms: core.time_ms,
        },
        columns: roles,
    };
    Ok(Outcome {
        frame,
        report,
        generalization,
    })
}

/// The figures of a run, whichever method found them.
struct Core {
    levels: Vec<usize>,
    losses: crate::metrics::Losses,
    suppressed: u64,
    classes: usize,
    min: u64,
    max: u64,
    risk: risk::Risk,
    nodes_checked: usize,
    lattice_size: usize,
    time_ms: f64,
}

/// What each distinct tuple is released as.
enum Release {
    /// One level per column; `released[t]` is false where the tuple's class is suppressed.
    Levels {
        levels: Vec<usize>,
        released: Vec<bool>,
    },
    Mondrian(mondrian::Partitioning),
}

impl Release {
    /// The label of column `j` of distinct tuple `t` (whose base code there is `base`).
    fn label<'h>(&self, t: usize, j: usize, base: u32, h: &'h Hierarchy) -> &'h str {
        match self {
            Release::Levels { levels, released } => {
                if released[t] {
                    h.label(levels[j], h.generalize(base, levels[j]))
                } else {
                    "*"
                }
            }
            Release::Mondrian(p) => {
                let c = &p.classes[p.class_of[t] as usize];
                h.label(c.levels[j], c.codes[j])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A later table's raw ZIP codes go through the same ZIP3 transform before generalizing.
    #[test]
    fn generalization_applies_the_transforms_to_later_tables() {
        let policy = Policy::parse(
            "[privacy]\nk = 2\n\n[[column]]\nname = \"zip\"\nrole = \"quasi_identifier\"\ntransform = \"zip3\"\nhierarchy = { mask = [1, 2] }\n",
        )
        .expect("policy");
        let df = DataFrame::new(
            4,
            vec![Column::new(
                "zip".into(),
                ["02139", "02138", "02240", "02241"],
            )],
        )
        .expect("frame");
        let out = anonymize(&df, &policy, None).expect("anonymize");
        let released: Vec<Option<&str>> = out
            .frame
            .column("zip")
            .expect("zip")
            .str()
            .expect("text")
            .iter()
            .collect();
        assert_eq!(
            released,
            [Some("021"), Some("021"), Some("022"), Some("022")]
        );
        let later =
            DataFrame::new(2, vec![Column::new("zip".into(), ["02240", "02135"])]).expect("frame");
        let g = out.generalization.expect("full-domain");
        let applied = g.apply(&later).expect("apply");
        let got: Vec<Option<&str>> = applied
            .column("zip")
            .expect("zip")
            .str()
            .expect("text")
            .iter()
            .collect();
        assert_eq!(got, [Some("022"), Some("021")]);
        // A later value outside the hierarchy is named by column and row, never by value.
        let odd = DataFrame::new(1, vec![Column::new("zip".into(), ["99999"])]).expect("frame");
        let e = g.apply(&odd).expect_err("outside");
        assert!(
            e.to_string().contains("row 0") && e.to_string().contains("`zip`"),
            "{e}"
        );
        assert!(!e.to_string().contains("999"), "{e}");
    }

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
