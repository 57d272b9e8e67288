//! Built-in hierarchy generators: numeric intervals, date truncation, masking from the right
//! (ZIP codes), and code prefixes (ICD-10 chapter/block style). Each builds an ARX-style
//! hierarchy over the values a column actually holds, ending in `*`.

use serde::Deserialize;

use crate::error::{DeidError, Result};
use crate::hierarchy::Hierarchy;

/// A generator as written in a policy file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Generator {
    /// Numeric intervals of these widths, one level each: 5 → `[35, 40)`.
    Intervals(Vec<f64>),
    /// Date truncation, one level each: `month` (YYYY-MM) or `year` (YYYY).
    Dates(Vec<DateLevel>),
    /// Mask this many characters from the right, one level each: 1 → `0213*`.
    Mask(Vec<usize>),
    /// Keep this many leading characters, one level each: 3 → `E11`.
    Prefix(Vec<usize>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DateLevel {
    Month,
    Year,
    Decade,
}

fn interval(v: f64, width: f64) -> String {
    let lo = (v / width).floor() * width;
    format!("[{}, {})", trim(lo), trim(lo + width))
}

fn trim(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

impl Generator {
    /// Builds the hierarchy of `column` over `values` (distinct, in any order).
    pub fn build(&self, column: &str, values: &[String]) -> Result<Hierarchy> {
        let err = |message: String| DeidError::Input { message };
        let mut rows = Vec::with_capacity(values.len());
        let levels = match self {
            Generator::Intervals(w) => w.len(),
            Generator::Dates(l) => l.len(),
            Generator::Mask(c) => c.len(),
            Generator::Prefix(l) => l.len(),
        };
        for (i, v) in values.iter().enumerate() {
            let mut row = vec![v.clone()];
            if v.is_empty() {
                // A missing value stays missing up to the top level: it is no number, date or
                // code to generalize, and says nothing more at any level.
                row.extend(std::iter::repeat_n(String::new(), levels));
                row.push("*".to_string());
                rows.push(row);
                continue;
            }
            match self {
                Generator::Intervals(widths) => {
                    let x: f64 = v.trim().parse().map_err(|_| {
                        err(format!("column `{column}`: value #{i} is not a number, so `intervals` cannot generalize it"))
                    })?;
                    row.extend(widths.iter().map(|&w| interval(x, w)));
                }
                Generator::Dates(levels) => {
                    let ok = v.len() >= 4 && v.as_bytes()[..4].iter().all(u8::is_ascii_digit);
                    if !ok {
                        return Err(err(format!(
                            "column `{column}`: value #{i} is not a date (YYYY, YYYY-MM or YYYY-MM-DD)"
                        )));
                    }
                    for level in levels {
                        row.push(match level {
                            DateLevel::Month => v.get(..7).unwrap_or(v).to_string(),
                            DateLevel::Year => v[..4].to_string(),
                            DateLevel::Decade => format!("{}0s", &v[..3]),
                        });
                    }
                }
                Generator::Mask(counts) => {
                    let chars: Vec<char> = v.chars().collect();
                    for &n in counts {
                        let keep = chars.len().saturating_sub(n);
                        row.push(
                            chars[..keep].iter().collect::<String>()
                                + &"*".repeat(chars.len() - keep),
                        );
                    }
                }
                Generator::Prefix(lengths) => {
                    for &n in lengths {
                        row.push(v.chars().take(n).collect());
                    }
                }
            }
            row.push("*".to_string());
            rows.push(row);
        }
        Hierarchy::from_rows(column, &rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn missing_values_stay_missing_until_the_top() {
        let h = Generator::Intervals(vec![5.0, 10.0])
            .build("age", &vals(&["37", ""]))
            .expect("a missing value is not an error");
        let c = h.code("").expect("coded");
        assert_eq!(h.label(1, h.generalize(c, 1)), "");
        assert_eq!(h.label(3, h.generalize(c, 3)), "*");
    }

    #[test]
    fn generators() {
        let h = Generator::Intervals(vec![5.0, 10.0])
            .build("age", &vals(&["37", "42", "39"]))
            .expect("ok");
        assert_eq!(h.height(), 4);
        let c = h.code("37").expect("code");
        assert_eq!(h.label(1, h.generalize(c, 1)), "[35, 40)");
        assert_eq!(h.label(2, h.generalize(c, 2)), "[30, 40)");
        let h = Generator::Mask(vec![1, 2])
            .build("zip", &vals(&["02139", "02141"]))
            .expect("ok");
        assert_eq!(
            h.label(2, h.generalize(h.code("02139").expect("c"), 2)),
            "021**"
        );
        let h = Generator::Prefix(vec![3, 1])
            .build("icd", &vals(&["E11.9", "E10.1", "I10"]))
            .expect("ok");
        assert_eq!(
            h.label(1, h.generalize(h.code("E11.9").expect("c"), 1)),
            "E11"
        );
        assert_eq!(
            h.label(2, h.generalize(h.code("E11.9").expect("c"), 2)),
            "E"
        );
        let h = Generator::Dates(vec![DateLevel::Month, DateLevel::Year])
            .build("d", &vals(&["2020-03-04"]))
            .expect("ok");
        assert_eq!(h.label(2, 0), "2020");
        let e = Generator::Intervals(vec![5.0])
            .build("age", &vals(&["x"]))
            .expect_err("not a number");
        assert!(
            e.to_string().contains("value #0") && !e.to_string().contains('x'),
            "{e}"
        );
    }
}
