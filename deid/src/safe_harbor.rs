//! HIPAA Safe Harbor transforms (45 CFR 164.514(b)(2)) applied to values before any
//! generalization: ZIP codes to their first three digits (`000` for the restricted prefixes),
//! ages over 89 into one group, dates generalized or shifted consistently per patient, and keyed
//! pseudonyms.

use ring::hmac;

/// Three-digit ZIP prefixes whose areas hold 20,000 people or fewer (Census 2000, the version
/// HHS guidance cites): these become `000`. Version of the list: `census-2000`.
pub const RESTRICTED_ZIP3: [&str; 17] = [
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878",
    "879", "884", "890", "893",
];
pub const RESTRICTED_ZIP3_VERSION: &str = "census-2000";

/// `02139-4307` → `021`; restricted prefixes and values without three leading digits → `000`.
pub fn zip3(zip: &str) -> String {
    let digits: String = zip.trim().chars().take(3).collect();
    if digits.len() < 3
        || !digits.chars().all(|c| c.is_ascii_digit())
        || RESTRICTED_ZIP3.contains(&digits.as_str())
    {
        "000".to_string()
    } else {
        digits
    }
}

/// Ages 90 and over become `90+` (Safe Harbor: "all ages over 89 ... aggregated into a single
/// category of age 90 or older"); other values pass through.
pub fn age_top_code(age: &str) -> String {
    match age.trim().parse::<f64>() {
        Ok(a) if a >= 90.0 => "90+".to_string(),
        _ => age.to_string(),
    }
}

/// Key material from text: 64 hexadecimal characters, or any text of 16 bytes or more.
/// `source` names where it came from, for the error.
pub fn parse_key(text: &str, source: &str) -> crate::error::Result<Vec<u8>> {
    let t = text.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex::decode(t).map_err(|_| crate::error::DeidError::Internal("hex".into()));
    }
    if t.len() >= 16 {
        return Ok(t.as_bytes().to_vec());
    }
    Err(crate::error::DeidError::Input {
        message: format!("the key in {source} is too short: use 64 hex characters (32 bytes)"),
    })
}

/// A keyed pseudonym: HMAC-SHA-256 of the value under the key, hex, truncated to 128 bits.
/// Stable for the same key; scoping (release family, licensee) goes into the key.
pub fn pseudonym(key: &hmac::Key, value: &str) -> String {
    hex::encode(&hmac::sign(key, value.as_bytes()).as_ref()[..16])
}

/// The same shift for every date of one patient: a whole number of days in
/// [−window_days, +window_days], derived from the patient's id under the key.
pub fn date_shift_days(key: &hmac::Key, patient: &str, window_days: u32) -> i64 {
    let tag = hmac::sign(key, format!("date-shift\0{patient}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&tag.as_ref()[..8]);
    let span = 2 * window_days as u64 + 1;
    (u64::from_le_bytes(b) % span) as i64 - window_days as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zip_and_age() {
        assert_eq!(zip3("02139"), "021");
        assert_eq!(zip3("03601-1234"), "000");
        assert_eq!(zip3("89301"), "000");
        assert_eq!(zip3("1"), "000");
        assert_eq!(age_top_code("89"), "89");
        assert_eq!(age_top_code("90"), "90+");
        assert_eq!(age_top_code("104"), "90+");
    }

    #[test]
    fn pseudonyms_and_shifts_are_keyed_and_stable() {
        let k1 = hmac::Key::new(hmac::HMAC_SHA256, b"one");
        let k2 = hmac::Key::new(hmac::HMAC_SHA256, b"two");
        assert_eq!(pseudonym(&k1, "p1"), pseudonym(&k1, "p1"));
        assert_ne!(pseudonym(&k1, "p1"), pseudonym(&k2, "p1"));
        assert_eq!(pseudonym(&k1, "p1").len(), 32);
        let s = date_shift_days(&k1, "p1", 180);
        assert_eq!(s, date_shift_days(&k1, "p1", 180));
        assert!((-180..=180).contains(&s));
        assert_eq!(
            parse_key(&"ab".repeat(32), "K").expect("hex"),
            vec![0xab; 32]
        );
        assert_eq!(
            parse_key("a sixteen-byte pass", "K").expect("text").len(),
            19
        );
        assert!(
            parse_key("short", "K")
                .expect_err("short")
                .to_string()
                .contains("K")
        );
    }
}
