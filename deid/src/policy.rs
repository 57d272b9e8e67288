//! The de-identification policy file (TOML): per column a role, hierarchies, Safe Harbor
//! transforms, and the privacy models. Documented with examples in `docs/deid-policy.md`.
//! Everything is checked when the policy is loaded and again against the input's columns,
//! before any work.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{DeidError, Result};
use crate::generate::Generator;
use crate::hierarchy::Hierarchy;
use crate::lattice::Privacy;
use crate::metrics::Metric;
use crate::sensitive::{LDiversity, LKind, TCloseness, TDistance};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub privacy: PrivacySection,
    #[serde(default)]
    pub pseudonym: PseudonymSection,
    #[serde(rename = "column", default)]
    pub columns: Vec<ColumnPolicy>,
    /// The event model ((k, k^m)-anonymity of event tables) for research releases; absent: the
    /// release build's protective defaults.
    #[serde(default)]
    pub events: Option<EventsSection>,
    /// Folder of the policy file: relative hierarchy paths start here.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySection {
    #[serde(default = "default_k")]
    pub k: u32,
    #[serde(default)]
    pub suppression_limit: f64,
    #[serde(default = "default_metric")]
    pub metric: String,
    /// `optimal` (full-domain generalization, one level per column, globally optimal) or
    /// `mondrian` (multidimensional local recoding: each class its own levels; no suppression).
    #[serde(default)]
    pub method: Method,
    #[serde(default)]
    pub l_diversity: Option<LSection>,
    #[serde(default)]
    pub t_closeness: Option<TSection>,
    /// Prosecutor-risk threshold for "records at risk" in the report.
    #[serde(default = "default_risk_threshold")]
    pub risk_threshold: f64,
}

fn default_k() -> u32 {
    5
}
fn default_metric() -> String {
    "nu_entropy".into()
}
fn default_risk_threshold() -> f64 {
    0.2
}

/// How the table is generalized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The globally optimal full-domain generalization (Flash / roll-up over the lattice).
    #[default]
    Optimal,
    /// Mondrian multidimensional partitioning (local recoding).
    Mondrian,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Optimal => "optimal",
            Method::Mondrian => "mondrian",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LSection {
    pub attribute: String,
    pub l: f64,
    #[serde(default = "default_l_kind")]
    pub kind: String,
    #[serde(default)]
    pub c: Option<f64>,
}

fn default_l_kind() -> String {
    "distinct".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TSection {
    pub attribute: String,
    pub t: f64,
    #[serde(default = "default_distance")]
    pub distance: String,
}

fn default_distance() -> String {
    "equal".into()
}

/// `[events]`: (k, k^m)-anonymity of the event tables of a release (`crate::events`). The
/// attacker knows a person's released quasi-identifiers and up to `m` items (an event's code
/// and time). See docs/deid-policy.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSection {
    /// `false` releases event tables with only the rare-code rule (not recommended: kept for
    /// comparison and for tables that hold no person's history).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The number of items the attacker knows (default 3).
    #[serde(default = "default_m")]
    pub m: usize,
    /// Persons every combination must match (default: `[privacy] k`).
    #[serde(default)]
    pub k: Option<u32>,
    /// Widths of the year bands of an item's time, finest first; the year is dropped above the
    /// last. Empty: no year in items (and none in the tables' event dates).
    #[serde(default = "default_years")]
    pub years: Vec<u32>,
    /// Widths of the bands of `days_since_index`, finest first; dropped above the last. The
    /// first band is also the finest any interval column of the release shows. Empty: no
    /// interval is released.
    #[serde(default = "default_interval_days")]
    pub interval_days: Vec<u32>,
    /// The highest hierarchy level a code may climb to by global recoding (0: never; beyond
    /// it, violating items are suppressed).
    #[serde(default = "default_max_code_level")]
    pub max_code_level: usize,
    /// Whether global recoding also answers violating combinations of items (AA over every
    /// size), not only single items; default false (combinations are suppressed locally).
    #[serde(default)]
    pub recode_combinations: bool,
    /// The tables whose events are items; absent: the release's defaults.
    #[serde(rename = "table", default)]
    pub tables: Vec<EventTable>,
    /// Code hierarchies, one per code system.
    #[serde(rename = "hierarchy", default)]
    pub hierarchies: Vec<CodeHierarchy>,
}

impl Default for EventsSection {
    fn default() -> Self {
        EventsSection {
            enabled: true,
            m: default_m(),
            k: None,
            years: default_years(),
            interval_days: default_interval_days(),
            max_code_level: default_max_code_level(),
            recode_combinations: false,
            tables: Vec::new(),
            hierarchies: Vec::new(),
        }
    }
}

fn default_m() -> usize {
    3
}
fn default_years() -> Vec<u32> {
    vec![1, 5, 10]
}
fn default_interval_days() -> Vec<u32> {
    vec![365, 1826]
}
fn default_max_code_level() -> usize {
    2
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTable {
    pub name: String,
    /// Whether the event's time (year, interval) is part of its items.
    #[serde(default = "default_true")]
    pub time: bool,
}

/// A code system's hierarchy: a `;`-separated file, one code per line followed by its
/// ancestors, nearest first (rows may differ in length; no `*` needed at the end).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeHierarchy {
    /// The code system as the release's vocabulary column names it (`HP`,
    /// `http://snomed.info/sct`, `http://hl7.org/fhir/sid/icd-10-cm`).
    pub system: String,
    pub file: String,
    /// The vocabulary generalized codes are released under (default: `system`).
    #[serde(default)]
    pub generalized_system: Option<String>,
    /// Codes the file does not list take their longest listed prefix as their first ancestor
    /// (ICD-10-CM: `E11.65` climbs to the category `E11`, then its block and chapter), so a
    /// file of categories covers every code below them.
    #[serde(default)]
    pub prefix: bool,
}

impl CodeHierarchy {
    /// Reads the file (relative to `base_dir`): code → ancestors, nearest first.
    pub fn load(&self, base_dir: &Path) -> Result<std::collections::HashMap<String, Vec<String>>> {
        let path = base_dir.join(&self.file);
        let text = std::fs::read_to_string(&path).map_err(|source| DeidError::Io {
            path: path.clone(),
            source,
        })?;
        let mut out = std::collections::HashMap::new();
        for (line, row) in text.lines().enumerate() {
            let row = row.trim();
            if row.is_empty() || row.starts_with('#') {
                continue;
            }
            let mut cells = row.split(';').map(str::trim);
            let code = cells.next().unwrap_or_default().to_string();
            let ancestors: Vec<String> = cells
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            if out.insert(code, ancestors).is_some() {
                return Err(DeidError::Hierarchy {
                    name: path.display().to_string(),
                    message: format!("line {} repeats a code of an earlier line", line + 1),
                });
            }
        }
        Ok(out)
    }
}

/// Where the pseudonym and date-shift key comes from: an environment variable (64 hex
/// characters, or any text of 16 bytes or more).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PseudonymSection {
    #[serde(default = "default_key_env")]
    pub key_env: String,
}

impl Default for PseudonymSection {
    fn default() -> Self {
        PseudonymSection {
            key_env: default_key_env(),
        }
    }
}

fn default_key_env() -> String {
    "TESSERA_PSEUDONYM_KEY".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Dropped.
    Identifier,
    /// Replaced by a keyed HMAC-SHA-256 pseudonym.
    Pseudonym,
    /// Generalized over its hierarchy.
    QuasiIdentifier,
    /// Kept, and protected by l-diversity / t-closeness when asked.
    Sensitive,
    /// Kept as is.
    Insensitive,
}

impl Role {
    /// The role as the policy file spells it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Identifier => "identifier",
            Role::Pseudonym => "pseudonym",
            Role::QuasiIdentifier => "quasi_identifier",
            Role::Sensitive => "sensitive",
            Role::Insensitive => "insensitive",
        }
    }
}

/// A hierarchy: a CSV file (ARX format), or a generator.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum HierarchySpec {
    File(String),
    Generated(Generator),
}

/// A Safe Harbor transform, applied before generalization.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// First three ZIP digits; restricted prefixes to `000`.
    Zip3,
    /// Ages 90 and over to `90+`.
    AgeTopCode,
    /// Dates to their year.
    DateYear,
    /// Dates to year and month.
    DateMonth,
    /// Dates shifted by a per-patient number of days within ±window, keyed by `patient_column`.
    DateShift {
        window_days: u32,
        patient_column: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnPolicy {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub hierarchy: Option<HierarchySpec>,
    #[serde(default)]
    pub transform: Option<Transform>,
    /// Field delimiter of a hierarchy file (default `;`).
    #[serde(default)]
    pub hierarchy_delimiter: Option<char>,
}

impl Policy {
    /// Reads and checks a policy file.
    pub fn from_file(path: &Path) -> Result<Policy> {
        let text = std::fs::read_to_string(path).map_err(|source| DeidError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut policy = Self::parse(&text).map_err(|e| match e {
            DeidError::Input { message } => DeidError::Input {
                message: format!("policy {}: {message}", path.display()),
            },
            other => other,
        })?;
        policy.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(policy)
    }

    /// Parses and checks policy text.
    pub fn parse(text: &str) -> Result<Policy> {
        let policy: Policy = toml::from_str(text).map_err(|e| DeidError::Input {
            message: format!("not a valid policy: {}", e.message()),
        })?;
        policy.check()?;
        Ok(policy)
    }

    fn check(&self) -> Result<()> {
        let bad = |message: String| Err(DeidError::Input { message });
        let mut seen = HashSet::new();
        for c in &self.columns {
            if !seen.insert(c.name.as_str()) {
                return bad(format!("column `{}` appears twice", c.name));
            }
            if c.role == Role::QuasiIdentifier && c.hierarchy.is_none() {
                return bad(format!(
                    "quasi-identifier `{}` needs a hierarchy (a CSV file or a generator)",
                    c.name
                ));
            }
            if let Some(Transform::DateShift { patient_column, .. }) = &c.transform
                && !self.columns.iter().any(|x| &x.name == patient_column)
            {
                return bad(format!(
                    "column `{}` shifts dates per patient by `{patient_column}`, which the policy does not list",
                    c.name
                ));
            }
        }
        if !self.columns.iter().any(|c| c.role == Role::QuasiIdentifier) {
            return bad("the policy declares no quasi-identifier".into());
        }
        if Metric::parse(&self.privacy.metric).is_none() {
            return bad(format!(
                "unknown metric `{}`: use nu_entropy, loss, precision, discernibility, aecs or height",
                self.privacy.metric
            ));
        }
        self.privacy_models()?;
        if let Some(e) = &self.events {
            if e.m == 0 || e.m > 6 {
                return bad(format!(
                    "[events] m = {}: give 1 to 6 (the number of items an attacker knows; 3 is the default)",
                    e.m
                ));
            }
            if e.years.iter().chain(&e.interval_days).any(|&w| w == 0)
                || !e.years.windows(2).all(|w| w[0] < w[1])
                || !e.interval_days.windows(2).all(|w| w[0] < w[1])
            {
                return bad(
                    "[events] years and interval_days are band widths: positive and increasing"
                        .into(),
                );
            }
        }
        let sensitive: Vec<&str> = self
            .columns
            .iter()
            .filter(|c| c.role == Role::Sensitive)
            .map(|c| c.name.as_str())
            .collect();
        for attr in [
            self.privacy.l_diversity.as_ref().map(|l| &l.attribute),
            self.privacy.t_closeness.as_ref().map(|t| &t.attribute),
        ]
        .into_iter()
        .flatten()
        {
            if !sensitive.contains(&attr.as_str()) {
                return bad(format!(
                    "`{attr}` is protected by l-diversity / t-closeness but has no column with role `sensitive`"
                ));
            }
        }
        if let (Some(l), Some(t)) = (&self.privacy.l_diversity, &self.privacy.t_closeness)
            && l.attribute != t.attribute
        {
            return bad("l-diversity and t-closeness must protect the same attribute".into());
        }
        Ok(())
    }

    /// The metric the search minimises.
    pub fn metric(&self) -> Metric {
        Metric::parse(&self.privacy.metric).unwrap_or(Metric::NonUniformEntropy)
    }

    /// The privacy models as the search takes them.
    pub fn privacy_models(&self) -> Result<Privacy> {
        let p = &self.privacy;
        let bad = |message: String| DeidError::Input { message };
        let l_diversity = match &p.l_diversity {
            None => None,
            Some(l) => Some(LDiversity {
                l: l.l,
                kind: match (l.kind.as_str(), l.c) {
                    ("distinct", _) => LKind::Distinct,
                    ("entropy", _) => LKind::Entropy,
                    ("recursive", Some(c)) => LKind::Recursive { c },
                    ("recursive", None) => {
                        return Err(bad("recursive l-diversity needs `c`".into()));
                    }
                    (other, _) => {
                        return Err(bad(format!(
                            "unknown l-diversity kind `{other}`: use distinct, entropy or recursive"
                        )));
                    }
                },
            }),
        };
        let t_closeness = match &p.t_closeness {
            None => None,
            Some(t) => Some(TCloseness {
                t: t.t,
                distance: match t.distance.as_str() {
                    "equal" => TDistance::Equal,
                    "ordered" => TDistance::Ordered,
                    "hierarchical" => TDistance::Hierarchical,
                    other => {
                        return Err(bad(format!(
                            "unknown t-closeness distance `{other}`: use equal, ordered or hierarchical"
                        )));
                    }
                },
            }),
        };
        if p.k == 0 {
            return Err(bad("k must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&p.suppression_limit) {
            return Err(bad(
                "suppression_limit is a fraction of the records, from 0.0 to 1.0".into(),
            ));
        }
        Ok(Privacy {
            k: p.k,
            suppression_limit: p.suppression_limit,
            l_diversity,
            t_closeness,
        })
    }

    /// The policy's columns that the input lacks; a non-empty answer is an error before any work.
    pub fn missing_columns<'a>(&'a self, input: &[String]) -> Vec<&'a str> {
        self.columns
            .iter()
            .map(|c| c.name.as_str())
            .filter(|n| !input.iter().any(|i| i == n))
            .collect()
    }

    /// Loads or generates the hierarchy of a column over its distinct values.
    pub fn hierarchy(&self, column: &ColumnPolicy, values: &[String]) -> Result<Option<Hierarchy>> {
        match &column.hierarchy {
            None => Ok(None),
            Some(HierarchySpec::File(file)) => {
                let path = self.base_dir.join(file);
                Hierarchy::from_arx_csv(&path, column.hierarchy_delimiter.unwrap_or(';')).map(Some)
            }
            Some(HierarchySpec::Generated(g)) => g.build(&column.name, values).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADULT: &str = r#"
[privacy]
k = 5
suppression_limit = 0.04
metric = "nu_entropy"

[[column]]
name = "age"
role = "quasi_identifier"
hierarchy = "adult_hierarchy_age.csv"

[[column]]
name = "zip"
role = "quasi_identifier"
transform = "zip3"
hierarchy = { mask = [1, 2] }

[[column]]
name = "diagnosis"
role = "sensitive"

[[column]]
name = "name"
role = "identifier"
"#;

    #[test]
    fn parses_the_documented_shape() {
        let p = Policy::parse(ADULT).expect("valid");
        assert_eq!(p.columns.len(), 4);
        assert_eq!(p.columns[1].transform, Some(Transform::Zip3));
        assert_eq!(
            p.columns[1].hierarchy,
            Some(HierarchySpec::Generated(Generator::Mask(vec![1, 2])))
        );
        assert_eq!(p.metric(), Metric::NonUniformEntropy);
        assert_eq!(p.privacy_models().expect("models").k, 5);
        assert_eq!(
            p.missing_columns(&["age".into(), "zip".into()]),
            ["diagnosis", "name"]
        );
    }

    #[test]
    fn refuses_what_cannot_work() {
        let cases = [
            (ADULT.replace("metric = \"nu_entropy\"", "metric = \"speed\""), "unknown metric"),
            (ADULT.replace("hierarchy = \"adult_hierarchy_age.csv\"", ""), "needs a hierarchy"),
            (ADULT.replace("k = 5", "k = 5\nl_diversity = { attribute = \"salary\", l = 2 }"), "no column with role `sensitive`"),
            (ADULT.replace("k = 5", "k = 5\nl_diversity = { attribute = \"diagnosis\", l = 2, kind = \"recursive\" }"), "needs `c`"),
            (ADULT.replace("role = \"identifier\"", "role = \"secret\""), "not a valid policy"),
            (ADULT.replace("suppression_limit = 0.04", "suppression_limit = 4"), "fraction"),
        ];
        for (text, want) in cases {
            let e = Policy::parse(&text).expect_err(want);
            assert!(e.to_string().contains(want), "{e}");
        }
    }
}
