//! Encryption at rest and keyed blind indexes.
//!
//! Every identified value the catalog stores is sealed with AES-256-GCM (ring). Each sealed value
//! carries its own random 96-bit nonce and the id of the key that sealed it, so keys can rotate:
//! a [`Keyring`] holds the current key and any previous ones, and opens whatever it finds.
//! The associated data binds a ciphertext to the row it belongs to, so a ciphertext copied into
//! another row does not open.
//!
//! Lookups over identified values (patient identifiers, resource ids) use blind indexes: an
//! HMAC-SHA-256 of the value under a key derived from the master key, never the value itself.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;
use std::path::Path;

use crate::error::{CatalogError, Result};

/// Length of a master key in bytes (AES-256).
pub const MASTER_KEY_LEN: usize = 32;

/// A sealed value as stored: key id, nonce and ciphertext (with its tag).
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

struct DataKey {
    id: String,
    aead: LessSafeKey,
}

impl DataKey {
    fn seal(&self, rng: &SystemRandom, plaintext: &[u8], aad: &[u8]) -> Result<Sealed> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).map_err(|_| CatalogError::Key {
            message: "the system random number generator failed".into(),
        })?;
        let mut buf = plaintext.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| CatalogError::internal("AES-GCM sealing failed"))?;
        Ok(Sealed {
            key_id: self.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext: buf,
        })
    }

    fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>> {
        let nonce = <[u8; NONCE_LEN]>::try_from(sealed.nonce.as_slice())
            .map_err(|_| CatalogError::internal("stored nonce has the wrong length"))?;
        let mut buf = sealed.ciphertext.clone();
        let len = self
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| CatalogError::Key {
                message: "a stored value failed authentication: wrong key, or the row was altered"
                    .into(),
            })?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// A patient's own data key (crypto-shredding). Everything Tessera holds about one patient
/// (identity, records, survey drafts, shares) is sealed under it; it is stored only wrapped
/// under the master key, in the key vault, apart from the data (see `vault`). Destroying it
/// makes every copy of that patient's rows unreadable, backups included. Its id (`p:` and 16
/// hex digits) goes in each sealed value's key id, so a reader knows which key to ask for.
pub struct PatientKey {
    key: DataKey,
    rng: SystemRandom,
}

impl fmt::Debug for PatientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatientKey")
            .field("id", &self.key.id)
            .finish()
    }
}

impl PatientKey {
    /// How the key id of a value sealed under a patient key starts.
    pub const ID_PREFIX: &'static str = "p:";

    fn from_parts(id: &[u8], material: &[u8]) -> PatientKey {
        let unbound = UnboundKey::new(&AES_256_GCM, material).expect("AES-256 takes a 32-byte key");
        PatientKey {
            key: DataKey {
                id: format!("{}{}", Self::ID_PREFIX, hex::encode(id)),
                aead: LessSafeKey::new(unbound),
            },
            rng: SystemRandom::new(),
        }
    }

    fn wrap_aad(patient_id: &str) -> Vec<u8> {
        format!("vault/{patient_id}").into_bytes()
    }

    pub fn id(&self) -> &str {
        &self.key.id
    }

    /// Seals `plaintext` under this patient's key; `aad` names the row.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Sealed> {
        self.key.seal(&self.rng, plaintext, aad)
    }

    /// Opens a value sealed under this key.
    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>> {
        if sealed.key_id != self.key.id {
            return Err(CatalogError::Key {
                message: "a stored value was sealed under another data key than this patient's \
                          (the row was moved, or the patient's key was replaced)"
                    .into(),
            });
        }
        self.key.open(sealed, aad)
    }
}

/// The master key and its derived keys. Debug output never shows key material.
pub struct Keyring {
    current: DataKey,
    previous: Vec<DataKey>,
    index_key: hmac::Key,
    /// Root of the release families' pseudonym keys.
    family_root: hmac::Key,
    /// Root of the secrets other components derive (API-key pepper, platform signing seed).
    app_root: hmac::Key,
    rng: SystemRandom,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current_key_id", &self.current.id)
            .field("previous_keys", &self.previous.len())
            .finish()
    }
}

struct HkdfLen(usize);
impl hkdf::KeyType for HkdfLen {
    fn len(&self) -> usize {
        self.0
    }
}

fn derive(master: &[u8; MASTER_KEY_LEN], label: &[u8]) -> [u8; 32] {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"tessera-catalog-v1");
    let prk = salt.extract(master);
    let info = [label];
    let okm = prk
        .expand(&info, HkdfLen(32))
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    let mut out = [0u8; 32];
    okm.fill(&mut out)
        .expect("buffer length matches the requested length");
    out
}

fn data_key(master: &[u8; MASTER_KEY_LEN]) -> DataKey {
    let enc = derive(master, b"aead");
    let id_bytes = derive(master, b"key-id");
    let unbound = UnboundKey::new(&AES_256_GCM, &enc).expect("AES-256 takes a 32-byte key");
    DataKey {
        id: hex::encode(&id_bytes[..8]),
        aead: LessSafeKey::new(unbound),
    }
}

impl Keyring {
    /// A keyring whose current key is `master`; `previous` keys only open old values.
    pub fn new(master: &[u8; MASTER_KEY_LEN], previous: &[[u8; MASTER_KEY_LEN]]) -> Self {
        // The blind-index key comes from the current master key. Rotating the master key means
        // re-sealing rows and rebuilding blind indexes (see docs/operations.md).
        let index = derive(master, b"blind-index");
        Keyring {
            current: data_key(master),
            previous: previous.iter().map(data_key).collect(),
            index_key: hmac::Key::new(hmac::HMAC_SHA256, &index),
            family_root: hmac::Key::new(hmac::HMAC_SHA256, &derive(master, b"release-family")),
            app_root: hmac::Key::new(hmac::HMAC_SHA256, &derive(master, b"application")),
            rng: SystemRandom::new(),
        }
    }

    /// Parses a master key written as 64 hexadecimal characters (surrounding whitespace ignored).
    pub fn parse_master_key(text: &str, source: &str) -> Result<[u8; MASTER_KEY_LEN]> {
        let trimmed = text.trim();
        let bytes = hex::decode(trimmed).map_err(|_| CatalogError::Key {
            message: format!(
                "the master key from {source} is not hexadecimal; it must be 64 hex characters (32 bytes), e.g. from `tessera init`"
            ),
        })?;
        <[u8; MASTER_KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| CatalogError::Key {
            message: format!(
                "the master key from {source} is {} bytes; it must be 32 bytes (64 hex characters)",
                bytes.len()
            ),
        })
    }

    /// Reads a key file written by [`Keyring::generate_key_file`].
    pub fn read_key_file(path: &Path) -> Result<[u8; MASTER_KEY_LEN]> {
        let text = std::fs::read_to_string(path).map_err(|e| CatalogError::Key {
            message: format!("cannot read the key file {}: {e}", path.display()),
        })?;
        Self::parse_master_key(&text, &path.display().to_string())
    }

    /// Creates a new random master key in `path` with owner-only permissions (0600).
    /// Refuses to overwrite an existing file: losing a key loses every record sealed with it.
    pub fn generate_key_file(path: &Path) -> Result<[u8; MASTER_KEY_LEN]> {
        use std::io::Write;
        let mut key = [0u8; MASTER_KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| CatalogError::Key {
                message: "the system random number generator failed".into(),
            })?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|e| CatalogError::Key {
            message: format!("cannot create the key file {}: {e}", path.display()),
        })?;
        file.write_all(format!("{}\n", hex::encode(key)).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| CatalogError::Key {
                message: format!("cannot write the key file {}: {e}", path.display()),
            })?;
        Ok(key)
    }

    /// The id of the key that seals new values.
    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    /// Seals `plaintext`; `aad` names the row (table and id) the value belongs to.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Sealed> {
        self.current.seal(&self.rng, plaintext, aad)
    }

    /// Opens a sealed value. Fails when the key is unknown or the value was tampered with or
    /// moved to another row.
    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>> {
        let key = std::iter::once(&self.current)
            .chain(self.previous.iter())
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| CatalogError::Key {
                message: if sealed.key_id.starts_with(PatientKey::ID_PREFIX) {
                    "a stored value was sealed with a patient's data key, and was read without it \
                     (please report this)"
                        .to_string()
                } else {
                    format!(
                        "a stored value was sealed with key {}, which this keyring does not hold; \
                         supply that master key (TESSERA_MASTER_KEY or --key-file)",
                        sealed.key_id
                    )
                },
            })?;
        key.open(sealed, aad)
    }

    /// A fresh random patient data key, and its wrapped form (sealed under the current master
    /// key, bound to the patient) for the key vault.
    pub fn new_patient_key(&self, patient_id: &str) -> Result<(PatientKey, Sealed)> {
        let mut material = [0u8; 32];
        let mut id = [0u8; 8];
        self.rng
            .fill(&mut material)
            .and_then(|()| self.rng.fill(&mut id))
            .map_err(|_| CatalogError::Key {
                message: "the system random number generator failed".into(),
            })?;
        let mut plain = id.to_vec();
        plain.extend_from_slice(&material);
        let wrapped = self.seal(&plain, &PatientKey::wrap_aad(patient_id))?;
        Ok((PatientKey::from_parts(&id, &material), wrapped))
    }

    /// Unwraps a patient data key read from the key vault.
    pub fn unwrap_patient_key(&self, patient_id: &str, wrapped: &Sealed) -> Result<PatientKey> {
        let plain = self.open(wrapped, &PatientKey::wrap_aad(patient_id))?;
        if plain.len() != 8 + 32 {
            return Err(CatalogError::internal(
                "a wrapped patient data key has the wrong length",
            ));
        }
        Ok(PatientKey::from_parts(&plain[..8], &plain[8..]))
    }

    /// A keyed hash (HMAC-SHA-256, hex, 160 bits) of bytes under a label, for change detection
    /// without revealing content.
    pub fn keyed_hash(&self, label: &str, bytes: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.index_key);
        ctx.update(&(label.len() as u64).to_le_bytes());
        ctx.update(label.as_bytes());
        ctx.update(bytes);
        hex::encode(&ctx.sign().as_ref()[..20])
    }

    /// The pseudonym key of a release family: the same for every version of the family (so a
    /// patient's rows link across versions), unrelated between families (so they do not link
    /// across families), derived from the current master key. Used for `person_id` pseudonyms
    /// and per-patient date shifts.
    pub fn release_family_key(&self, family: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.family_root, family.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// A 256-bit secret for another component, derived from the current master key and named
    /// by its purpose (`api-key-pepper`, `platform-signing-seed`): nothing extra to store, and
    /// unrelated to the keys that seal data.
    pub fn application_secret(&self, purpose: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.app_root, purpose.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// A blind index of `parts`: hex HMAC-SHA-256 over the parts, each length-prefixed so that
    /// ("ab", "c") and ("a", "bc") differ.
    pub fn blind_index(&self, parts: &[&str]) -> String {
        let mut ctx = hmac::Context::with_key(&self.index_key);
        for part in parts {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part.as_bytes());
        }
        hex::encode(&ctx.sign().as_ref()[..20])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_family_keys_are_stable_per_family_and_apart_between_families() {
        let a = Keyring::new(&[1; 32], &[]);
        let again = Keyring::new(&[1; 32], &[]);
        let other_master = Keyring::new(&[2; 32], &[]);
        assert_eq!(a.release_family_key("nhs"), again.release_family_key("nhs"));
        assert_ne!(a.release_family_key("nhs"), a.release_family_key("nhs2"));
        assert_ne!(
            a.release_family_key("nhs"),
            other_master.release_family_key("nhs")
        );
        // Not the blind-index key either.
        assert_ne!(
            hex::encode(a.release_family_key("x")),
            a.blind_index(&["x"])
        );
    }

    fn ring_with(byte: u8) -> Keyring {
        Keyring::new(&[byte; 32], &[])
    }

    #[test]
    fn seal_open_round_trip_and_fresh_nonce() {
        let k = ring_with(7);
        let a = k.seal(b"Alberto Atencio", b"patients/1").expect("seal");
        let b = k.seal(b"Alberto Atencio", b"patients/1").expect("seal");
        assert_ne!(a.nonce, b.nonce, "each seal draws a new nonce");
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_eq!(k.open(&a, b"patients/1").expect("open"), b"Alberto Atencio");
    }

    #[test]
    fn moved_or_altered_ciphertext_does_not_open() {
        let k = ring_with(7);
        let mut s = k.seal(b"secret", b"records/a").expect("seal");
        assert!(k.open(&s, b"records/b").is_err(), "bound to its row");
        s.ciphertext[0] ^= 1;
        assert!(k.open(&s, b"records/a").is_err(), "tag detects tampering");
    }

    #[test]
    fn rotation_opens_old_values_and_seals_with_new_key() {
        let old = ring_with(1);
        let sealed = old.seal(b"v", b"r").expect("seal");
        let rotated = Keyring::new(&[2; 32], &[[1; 32]]);
        assert_ne!(rotated.current_key_id(), old.current_key_id());
        assert_eq!(rotated.open(&sealed, b"r").expect("open"), b"v");
        let err = ring_with(3).open(&sealed, b"r").expect_err("unknown key");
        assert!(err.to_string().contains(&sealed.key_id));
    }

    #[test]
    fn blind_index_is_keyed_and_unambiguous() {
        let k = ring_with(9);
        assert_eq!(k.blind_index(&["a", "b"]), k.blind_index(&["a", "b"]));
        assert_ne!(k.blind_index(&["ab", ""]), k.blind_index(&["a", "b"]));
        assert_ne!(k.blind_index(&["a"]), ring_with(8).blind_index(&["a"]));
    }

    #[test]
    fn key_parsing_names_the_problem() {
        let err = Keyring::parse_master_key("zz", "TESSERA_MASTER_KEY").expect_err("bad");
        assert!(err.to_string().contains("TESSERA_MASTER_KEY"));
        let err = Keyring::parse_master_key("abcd", "TESSERA_MASTER_KEY").expect_err("short");
        assert!(err.to_string().contains("2 bytes"));
        let ok = Keyring::parse_master_key(&format!(" {} \n", "11".repeat(32)), "x").expect("ok");
        assert_eq!(ok, [0x11; 32]);
    }
}
