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
