//! Validation of FHIR `date`, `dateTime` and `instant` values and ISO 8601 durations (ages).
//! An impossible calendar date (2019-02-30, month 13, hour 25) fails here, and so does a birth
//! date in the future.

fn digits(s: &str, n: usize) -> Option<u32> {
    if s.len() == n && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        _ => 0,
    }
}

/// The calendar part of a FHIR date: `YYYY`, `YYYY-MM` or `YYYY-MM-DD`, each a real date.
/// Returns (year, month, day) with missing parts as 0.
fn calendar(s: &str) -> Option<(u32, u32, u32)> {
    let mut parts = s.split('-');
    let year = digits(parts.next()?, 4)?;
    if year == 0 {
        return None;
    }
    let month = match parts.next() {
        None => return Some((year, 0, 0)),
        Some(m) => digits(m, 2).filter(|m| (1..=12).contains(m))?,
    };
    let day = match parts.next() {
        None => return Some((year, month, 0)),
        Some(d) => digits(d, 2).filter(|d| *d >= 1 && *d <= days_in_month(year, month))?,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((year, month, day))
}

/// A FHIR `date`.
pub fn is_date(s: &str) -> bool {
    calendar(s).is_some()
}

fn is_time(t: &str) -> bool {
    // hh:mm:ss(.fraction)?(Z|+hh:mm|-hh:mm)
    let (clock, zone) = match t.find(['Z', '+', '-']) {
        Some(i) => t.split_at(i),
        None => return false,
    };
    let zone_ok = zone == "Z"
        || (zone.len() == 6
            && digits(&zone[1..3], 2).is_some_and(|h| h <= 14)
            && &zone[3..4] == ":"
            && digits(&zone[4..6], 2).is_some_and(|m| m < 60));
    let (hms, frac) = match clock.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (clock, None),
    };
    let mut p = hms.split(':');
    let ok = matches!(
        (
            p.next().and_then(|h| digits(h, 2)),
            p.next().and_then(|m| digits(m, 2)),
            p.next().and_then(|s| digits(s, 2)),
            p.next()
        ),
        (Some(h), Some(m), Some(s), None) if h < 24 && m < 60 && s <= 60
    );
    ok && zone_ok && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

/// A FHIR `dateTime` (a date, or a full date with a time and a zone) or an `instant`.
pub fn is_date_time(s: &str) -> bool {
    match s.split_once('T') {
        None => is_date(s),
        Some((date, time)) => {
            calendar(date).is_some_and(|(_, m, d)| m > 0 && d > 0) && is_time(time)
        }
    }
}

/// A birth or death date: a valid date not after `today` (`YYYY-MM-DD`).
pub fn is_past_date(s: &str, today: &str) -> bool {
    is_date_time(s) && s.get(..s.len().min(10)).is_some_and(|d| d <= today)
}

/// An ISO 8601 duration as phenopackets use for ages: `P6M`, `P8Y1M`, `P2W`, `P3D`, `P1Y2M3DT4H`.
pub fn is_iso_duration(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('P') else {
        return false;
    };
    if rest.is_empty() {
        return false;
    }
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    fn units(part: &str, allowed: &str) -> bool {
        let mut num = String::new();
        let mut last = 0usize;
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                num.push(c);
            } else {
                let Some(pos) = allowed.find(c) else {
                    return false;
                };
                if num.is_empty() || num.parse::<f64>().is_err() || pos < last {
                    return false;
                }
                last = pos + 1;
                num.clear();
            }
        }
        num.is_empty()
    }
    units(date, "YMWD") && time.is_none_or(|t| !t.is_empty() && units(t, "HMS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        for ok in ["1993", "1993-06", "1993-06-07", "2000-02-29", "2024-12-31"] {
            assert!(is_date(ok), "{ok}");
        }
        for bad in [
            "1993-13",
            "1993-06-31",
            "1900-02-29",
            "2019-02-30",
            "93-06-07",
            "1993-6-7",
            "0000",
            "",
            "1993-06-07-01",
            "abcd",
        ] {
            assert!(!is_date(bad), "{bad}");
        }
    }

    #[test]
    fn date_times() {
        for ok in [
            "2007-06-04T05:28:45+00:00",
            "2012-02-27T05:28:45.267+00:00",
            "2012-02-27T05:28:45Z",
            "2012-02-27",
            "2012",
        ] {
            assert!(is_date_time(ok), "{ok}");
        }
        for bad in [
            "2007-06-04T25:28:45+00:00",
            "2007-06-04T05:61:45Z",
            "2007-06-04T05:28:45",
            "2007-06-32T05:28:45Z",
            "2007-06T05:28:45Z",
            "2007-06-04T05:28:45+0000",
            "2007-06-04T05:28:45.Z",
        ] {
            assert!(!is_date_time(bad), "{bad}");
        }
    }

    #[test]
    fn past_dates() {
        assert!(is_past_date("1993-06-07", "2026-11-23"));
        assert!(is_past_date("2026-11-23", "2026-11-23"));
        assert!(!is_past_date("2027-01-01", "2026-11-23"));
        assert!(!is_past_date("1993-02-30", "2026-11-23"));
    }

    #[test]
    fn durations() {
        for ok in [
            "P6M",
            "P8Y1M",
            "P68Y",
            "P2W",
            "P1Y2M3DT4H",
            "P0.5Y",
            "PT12H",
        ] {
            assert!(is_iso_duration(ok), "{ok}");
        }
        for bad in ["", "P", "6M", "PM", "P1M1Y", "P1YT", "P1X"] {
            assert!(!is_iso_duration(bad), "{bad}");
        }
    }
}
