//! Output rules applied to counts before they leave Tessera: small-cell suppression (a count of
//! persons below the license's minimum is withheld), secondary suppression (a withheld cell
//! must not be derivable as the total minus the cells shown), and rounding to the license's base.

use serde::Serialize;

use crate::model::OutputRules;

/// One released count: the value, or `None` when withheld.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Cell {
    pub label: String,
    pub count: Option<u64>,
    pub suppressed: bool,
}

/// Protected counts: the total and the cells of a breakdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Protected {
    pub total: Option<u64>,
    pub total_suppressed: bool,
    pub cells: Vec<Cell>,
}

/// Applies the rules to a total and a breakdown whose cells partition it (each person counted
/// in exactly one cell). Zero counts are shown (an empty cell describes nobody).
pub fn protect_counts(total: u64, cells: &[(String, u64)], rules: &OutputRules) -> Protected {
    let min = u64::from(rules.min_cell_size);
    let small = |n: u64| n > 0 && n < min;
    let total_suppressed = small(total);
    let mut withheld: Vec<bool> = cells
        .iter()
        .map(|(_, n)| total_suppressed || small(*n))
        .collect();
    // Secondary suppression: with the total shown, one withheld cell is the total minus the
    // others; withhold the smallest shown non-zero cell as well (repeat until safe).
    if !total_suppressed {
        loop {
            let hidden = withheld.iter().filter(|w| **w).count();
            if hidden != 1 {
                break;
            }
            let next = cells
                .iter()
                .enumerate()
                .filter(|(i, (_, n))| !withheld[*i] && *n > 0)
                .min_by_key(|(_, (_, n))| *n)
                .map(|(i, _)| i);
            match next {
                Some(i) => withheld[i] = true,
                None => break,
            }
        }
    }
    let round = |n: u64| match rules.rounding_base {
        Some(b) if b > 1 => {
            let b = u64::from(b);
            (n + b / 2) / b * b
        }
        _ => n,
    };
    Protected {
        total: (!total_suppressed).then(|| round(total)),
        total_suppressed,
        cells: cells
            .iter()
            .zip(withheld)
            .map(|((label, n), w)| Cell {
                label: label.clone(),
                count: (!w).then(|| round(*n)),
                suppressed: w,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(min: u32, rounding: Option<u32>) -> OutputRules {
        OutputRules {
            min_cell_size: min,
            rounding_base: rounding,
            max_rows: None,
            identifying_columns: Vec::new(),
            privacy: None,
        }
    }

    fn cells(v: &[(&str, u64)]) -> Vec<(String, u64)> {
        v.iter().map(|(l, n)| (l.to_string(), *n)).collect()
    }

    #[test]
    fn small_cells_are_withheld_and_cannot_be_derived_from_the_total() {
        let p = protect_counts(
            60,
            &cells(&[("F", 30), ("M", 25), ("U", 5)]),
            &rules(11, None),
        );
        assert_eq!(p.total, Some(60));
        let shown: Vec<Option<u64>> = p.cells.iter().map(|c| c.count).collect();
        // U (5) is small; M, the smallest other, goes too, or U = 60 - 30 - 25.
        assert_eq!(shown, vec![Some(30), None, None]);
        // No withheld cell can be recovered: at least two are hidden whenever one is.
        assert_ne!(p.cells.iter().filter(|c| c.suppressed).count(), 1);
    }

    #[test]
    fn a_small_total_withholds_everything() {
        let p = protect_counts(7, &cells(&[("F", 4), ("M", 3)]), &rules(11, None));
        assert_eq!(p.total, None);
        assert!(p.total_suppressed);
        assert!(p.cells.iter().all(|c| c.count.is_none()));
    }

    #[test]
    fn zero_is_shown_and_large_cells_pass() {
        let p = protect_counts(40, &cells(&[("F", 40), ("M", 0)]), &rules(11, None));
        assert_eq!(p.total, Some(40));
        assert_eq!(p.cells[1].count, Some(0));
        assert!(!p.cells[0].suppressed);
    }

    #[test]
    fn rounding_applies_to_what_is_shown() {
        let p = protect_counts(123, &cells(&[("F", 61), ("M", 62)]), &rules(11, Some(5)));
        assert_eq!(p.total, Some(125));
        assert_eq!(p.cells[0].count, Some(60));
        assert_eq!(p.cells[1].count, Some(60));
    }
}
