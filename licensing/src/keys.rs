//! API keys: 256 random bits, shown to their owner once, stored only as a keyed hash.
//!
//! A key reads `tsk_<id>_<secret>`: the id (64 bits, hex) finds the stored record, the secret
//! (256 bits, hex) is checked against its HMAC-SHA-256 under the server's pepper with a
//! constant-time comparison. A database leak gives neither the keys nor a way to test guesses
//! without the pepper, which lives in configuration, not in the database.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// What the store keeps of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub id: String,
    /// HMAC-SHA-256 of the secret under the pepper, hex.
    pub secret_hmac: String,
}

/// Why a presented key was not accepted (before any lookup: the format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a Tessera API key (expected tsk_<id>_<secret>)")]
    Malformed,
    #[error("the system's random number generator failed")]
    Random,
}

/// A new key: the text to show once, and what to store.
pub fn generate(pepper: &[u8]) -> Result<(String, StoredKey), KeyError> {
    let rng = SystemRandom::new();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rng.fill(&mut id).map_err(|_| KeyError::Random)?;
    rng.fill(&mut secret).map_err(|_| KeyError::Random)?;
    let (id, secret) = (hex::encode(id), hex::encode(secret));
    let key = hmac::Key::new(hmac::HMAC_SHA256, pepper);
    let stored = StoredKey {
        secret_hmac: hex::encode(hmac::sign(&key, secret.as_bytes()).as_ref()),
        id: id.clone(),
    };
    Ok((format!("tsk_{id}_{secret}"), stored))
}

/// The id and secret of a presented key.
pub fn parse(presented: &str) -> Result<(&str, &str), KeyError> {
    let rest = presented.strip_prefix("tsk_").ok_or(KeyError::Malformed)?;
    let (id, secret) = rest.split_once('_').ok_or(KeyError::Malformed)?;
    let hexish = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hexish(id, 16) || !hexish(secret, 64) {
        return Err(KeyError::Malformed);
    }
    Ok((id, secret))
}

/// Whether `secret` is the one `stored` was made from (constant time).
pub fn matches(pepper: &[u8], stored: &StoredKey, secret: &str) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, pepper);
    match hex::decode(&stored.secret_hmac) {
        Ok(tag) => hmac::verify(&key, secret.as_bytes(), &tag).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_verify_only_with_their_secret_and_the_pepper() {
        let pepper = b"server pepper, from configuration";
        let (text, stored) = generate(pepper).expect("key");
        let (id, secret) = parse(&text).expect("well formed");
        assert_eq!(id, stored.id);
        assert!(
            !stored.secret_hmac.contains(secret),
            "only a keyed hash is stored"
        );
        assert!(matches(pepper, &stored, secret));
        assert!(!matches(b"another pepper", &stored, secret));
        let mut wrong = secret.to_string();
        wrong.replace_range(0..1, if &wrong[0..1] == "a" { "b" } else { "a" });
        assert!(!matches(pepper, &stored, &wrong));
        let (other, _) = generate(pepper).expect("key");
        assert_ne!(other, text, "keys are random");
        for bad in [
            "",
            "tsk_",
            "Bearer x",
            "tsk_1234_abcd",
            &text.replace("tsk_", "tk_"),
        ] {
            assert_eq!(parse(bad), Err(KeyError::Malformed), "{bad}");
        }
    }
}
