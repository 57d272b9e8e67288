//! Sharing with the care team: SMART Health Links (HL7 SMART Health Cards and Links IG, STU1).
//!
//! A patient shares all or part of their data as a snapshot taken when the share is made: a
//! FHIR R4 Bundle (see [`crate::access::fhir_bundle`]) encrypted as a compact JWE (`alg`
//! `dir`, `enc` `A256GCM`, AES-256-GCM from ring) under a fresh 256-bit key. The link
//! (`shlink:/…`) carries the manifest URL, the key, the expiry, a label and the `P` flag when a
//! passcode protects it; the key never travels to Tessera again. Tessera keeps the key sealed
//! too, so that it can also show the share as a plain page to whoever holds the link.
//!
//! A share expires (30 days unless chosen otherwise, at most a year), can be revoked at any
//! time, and a passcode allows [`PASSCODE_ATTEMPTS`] wrong tries in all before the share
//! locks. Every use (manifest, file, plain page), granted or refused, is recorded with what the
//! viewer said about themself (sealed) and shown to the patient.

#[cfg(test)]
use std::collections::BTreeSet;
use std::fmt;
use std::num::NonZeroU32;

use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::pbkdf2;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Catalog;
use crate::access::{OwnData, fhir_bundle};
use crate::error::{CatalogError, Result};
use crate::ingest::random_bytes;
use crate::model::RecordKind;
use crate::store::{ShareRow, ShareViewRow};

/// Wrong passcodes a share tolerates, in all, before it locks.
pub const PASSCODE_ATTEMPTS: i64 = 10;
/// A share's default life.
pub const DEFAULT_DAYS: i64 = 30;
/// A share's longest life.
pub const MAX_DAYS: i64 = 365;
const PBKDF2_ROUNDS: u32 = 210_000;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| CatalogError::invalid("not base64url"))
}

/// What a share holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contents {
    /// The kinds of record it holds (every kind when empty).
    #[serde(default)]
    pub kinds: Vec<RecordKind>,
    /// Whether the patient's identity (name, birth date) goes with it. A clinician usually
    /// needs it; a relative may not.
    pub identity: bool,
}

impl Contents {
    pub fn describe(&self) -> String {
        let what = if self.kinds.is_empty() {
            "all records".to_string()
        } else {
            self.kinds
                .iter()
                .map(|k| k.as_str().replace('_', " "))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.identity {
            format!("{what}, with name and birth date")
        } else {
            format!("{what}, without name or birth date")
        }
    }
}

/// The sealed part of a share.
#[derive(Serialize, Deserialize)]
struct Secret {
    label: String,
    contents: Contents,
    key: String,
}

/// A share as its patient lists it.
#[derive(Clone)]
pub struct Share {
    pub share_id: String,
    /// The link's key (base64url), to show the link again to its patient.
    pub key: String,
    pub label: String,
    pub contents: Contents,
    pub passcode: bool,
    pub attempts_left: i64,
    pub created_at: String,
    pub expires_at: String,
    pub revoked_at: Option<String>,
    pub views: Vec<ShareView>,
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("share_id", &self.share_id)
            .field("views", &self.views.len())
            .finish_non_exhaustive()
    }
}

impl Share {
    /// The SMART Health Link of this share, with the manifest at `manifest_url`.
    pub fn link(&self, manifest_url: &str) -> String {
        NewShare {
            share_id: self.share_id.clone(),
            key: self.key.clone(),
            label: self.label.clone(),
            expires_at: DateTime::parse_from_rfc3339(&self.expires_at)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|_| Utc::now()),
            passcode: self.passcode,
        }
        .link(manifest_url)
    }

    /// In force at `now`: not revoked, not expired, not locked by wrong passcodes.
    pub fn live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none()
            && self.attempts_left > 0
            && DateTime::parse_from_rfc3339(&self.expires_at).is_ok_and(|t| now < t)
    }
}

/// One use of a share.
#[derive(Clone)]
pub struct ShareView {
    pub at: String,
    /// `manifest`, `file` or `page`.
    pub what: String,
    /// `ok`, `wrong_passcode`, `locked`, `expired`, `revoked`.
    pub outcome: String,
    /// Who the viewer said they are.
    pub recipient: String,
}

impl fmt::Debug for ShareView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShareView")
            .field("at", &self.at)
            .field("what", &self.what)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

/// A new share: its id and the link's key (base64url), which the caller puts in the link.
#[derive(Clone)]
pub struct NewShare {
    pub share_id: String,
    pub key: String,
    pub label: String,
    pub expires_at: DateTime<Utc>,
    pub passcode: bool,
}

impl fmt::Debug for NewShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewShare")
            .field("share_id", &self.share_id)
            .finish_non_exhaustive()
    }
}

impl NewShare {
    /// The SMART Health Link: `shlink:/` and the base64url JSON payload.
    pub fn link(&self, manifest_url: &str) -> String {
        let mut payload = serde_json::json!({
            "url": manifest_url,
            "key": self.key,
            "exp": self.expires_at.timestamp(),
            "label": self.label,
            "v": 1,
        });
        if self.passcode {
            payload["flag"] = Value::String("P".into());
        }
        format!("shlink:/{}", b64(payload.to_string().as_bytes()))
    }
}

/// Why a share was not opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Unknown, revoked or expired: the same to the viewer.
    NotFound,
    /// A passcode is needed, or the one given is wrong; this many tries are left.
    Passcode { remaining: i64 },
}

/// A share opened for a viewer: the snapshot as FHIR JSON.
pub struct Opened {
    pub label: String,
    pub bundle: Value,
    pub jwe: String,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// Encrypts `plaintext` as a compact JWE (`alg` `dir`, `enc` `A256GCM`) under `key`.
pub fn jwe_encrypt(key: &[u8; 32], content_type: &str, plaintext: &[u8]) -> Result<String> {
    let header = serde_json::json!({"alg": "dir", "enc": "A256GCM", "cty": content_type});
    let header = b64(header.to_string().as_bytes());
    let iv = random_bytes::<12>()?;
    let k = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| CatalogError::internal("AES key"))?,
    );
    let mut buf = plaintext.to_vec();
    let tag = k
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(header.as_bytes()),
            &mut buf,
        )
        .map_err(|_| CatalogError::internal("AES-GCM sealing failed"))?;
    Ok(format!(
        "{header}..{}.{}.{}",
        b64(&iv),
        b64(&buf),
        b64(tag.as_ref())
    ))
}

/// Decrypts a compact JWE made by [`jwe_encrypt`].
pub fn jwe_decrypt(key: &[u8; 32], jwe: &str) -> Result<Vec<u8>> {
    let parts: Vec<&str> = jwe.split('.').collect();
    let bad = || CatalogError::invalid("not a compact JWE with alg dir and enc A256GCM");
    if parts.len() != 5 || !parts[1].is_empty() {
        return Err(bad());
    }
    let header: Value = serde_json::from_slice(&unb64(parts[0])?).map_err(|_| bad())?;
    if header["alg"] != "dir" || header["enc"] != "A256GCM" {
        return Err(bad());
    }
    let iv: [u8; 12] = unb64(parts[2])?.try_into().map_err(|_| bad())?;
    let mut buf = unb64(parts[3])?;
    buf.extend(unb64(parts[4])?);
    let k = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| CatalogError::internal("AES key"))?,
    );
    let plain = k
        .open_in_place(
            Nonce::assume_unique_for_key(iv),
            Aad::from(parts[0].as_bytes()),
            &mut buf,
        )
        .map_err(|_| CatalogError::invalid("the JWE does not open with this key"))?;
    Ok(plain.to_vec())
}

fn hash_passcode(passcode: &str) -> Result<String> {
    let salt = random_bytes::<16>()?;
    let mut out = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(PBKDF2_ROUNDS).unwrap_or(NonZeroU32::MIN),
        &salt,
        passcode.as_bytes(),
        &mut out,
    );
    Ok(format!("{}:{}", hex::encode(salt), hex::encode(out)))
}

fn passcode_matches(stored: &str, passcode: &str) -> bool {
    let Some((salt, hash)) = stored.split_once(':') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (hex::decode(salt), hex::decode(hash)) else {
        return false;
    };
    pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(PBKDF2_ROUNDS).unwrap_or(NonZeroU32::MIN),
        &salt,
        passcode.as_bytes(),
        &hash,
    )
    .is_ok()
}

fn share_aad(share_id: &str) -> Vec<u8> {
    format!("shares/{share_id}").into_bytes()
}

fn view_aad(view_id: &str) -> Vec<u8> {
    format!("share_views/{view_id}").into_bytes()
}

fn text(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The part of a patient's data a share holds.
fn select(d: &OwnData, contents: &Contents) -> OwnData {
    let mut out = d.clone();
    if !contents.kinds.is_empty() {
        out.records.retain(|r| contents.kinds.contains(&r.kind));
    }
    if !contents.identity {
        out.identity = crate::model::PatientIdentity {
            sex: d.identity.sex.clone(),
            ..Default::default()
        };
    }
    // Consent is the patient's business with Tessera, not the care team's.
    out.consents.clear();
    out
}

impl Catalog {
    /// Makes a share of a patient's data, by an account that acts for them.
    pub async fn create_share(
        &self,
        patient_id: &str,
        account_id: &str,
        label: &str,
        contents: Contents,
        days: i64,
        passcode: Option<&str>,
    ) -> Result<NewShare> {
        let label: String = label
            .trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(80)
            .collect();
        if label.is_empty() {
            return Err(CatalogError::invalid(
                "name the share (for example: For Dr. Rivera), so you know it again later",
            ));
        }
        if !(1..=MAX_DAYS).contains(&days) {
            return Err(CatalogError::invalid(format!(
                "a share lasts 1 to {MAX_DAYS} days"
            )));
        }
        let passcode = passcode.map(str::trim).filter(|p| !p.is_empty());
        if let Some(p) = passcode
            && p.chars().count() < 4
        {
            return Err(CatalogError::invalid(
                "a passcode has at least 4 characters",
            ));
        }
        let data = select(&self.own_data(patient_id).await?, &contents);
        let now = Utc::now();
        let bundle = fhir_bundle(&data, Vec::new(), now)?;
        let key = random_bytes::<32>()?;
        let jwe = jwe_encrypt(&key, "application/fhir+json", bundle.to_string().as_bytes())?;
        let share_id = b64(&random_bytes::<32>()?);
        let key_text = b64(&key);
        let secret = Secret {
            label: label.clone(),
            contents,
            key: key_text.clone(),
        };
        let sealed = self
            .vault
            .seal(
                patient_id,
                &serde_json::to_vec(&secret)
                    .map_err(|e| CatalogError::internal(format!("sealing a share: {e}")))?,
                &share_aad(&share_id),
            )
            .await?;
        let expires_at = now + Duration::days(days);
        self.store
            .insert_share(&ShareRow {
                share_id: share_id.clone(),
                patient_id: patient_id.to_string(),
                account_id: account_id.to_string(),
                sealed,
                jwe,
                passcode_hash: passcode.map(hash_passcode).transpose()?,
                attempts_left: PASSCODE_ATTEMPTS,
                created_at: text(now),
                expires_at: text(expires_at),
                revoked_at: None,
            })
            .await?;
        tracing::info!(share = %share_id.get(..8).unwrap_or(""), "share made");
        Ok(NewShare {
            share_id,
            key: key_text,
            label,
            expires_at,
            passcode: passcode.is_some(),
        })
    }

    async fn open_secret(&self, row: &ShareRow) -> Result<Secret> {
        serde_json::from_slice(
            &self
                .vault
                .open(&row.patient_id, &row.sealed, &share_aad(&row.share_id))
                .await?,
        )
        .map_err(|_| CatalogError::internal("a stored share does not parse"))
    }

    /// A patient's shares, newest first, each with its views.
    pub async fn shares(&self, patient_id: &str) -> Result<Vec<Share>> {
        let mut out = Vec::new();
        for row in self.store.shares_of(patient_id).await? {
            let secret = self.open_secret(&row).await?;
            let mut views = Vec::new();
            for v in self.store.share_views(&row.share_id).await? {
                let recipient = String::from_utf8(
                    self.vault
                        .open(patient_id, &v.recipient, &view_aad(&v.view_id))
                        .await?,
                )
                .unwrap_or_default();
                views.push(ShareView {
                    at: v.at,
                    what: v.what,
                    outcome: v.outcome,
                    recipient,
                });
            }
            out.push(Share {
                share_id: row.share_id,
                key: secret.key,
                label: secret.label,
                contents: secret.contents,
                passcode: row.passcode_hash.is_some(),
                attempts_left: row.attempts_left,
                created_at: row.created_at,
                expires_at: row.expires_at,
                revoked_at: row.revoked_at,
                views,
            });
        }
        Ok(out)
    }

    /// Revokes one of a patient's shares; `false` when the patient has no such live share.
    pub async fn revoke_share(&self, patient_id: &str, share_id: &str) -> Result<bool> {
        self.store
            .revoke_share(patient_id, share_id, &text(Utc::now()))
            .await
    }

    /// Opens a share for a viewer (`what`: `manifest`, `file` or `page`), checking the
    /// passcode; records the use whatever its outcome.
    pub async fn open_share(
        &self,
        share_id: &str,
        passcode: Option<&str>,
        recipient: &str,
        what: &str,
    ) -> std::result::Result<Opened, ShareError> {
        self.open_share_as(share_id, Some(passcode), recipient, what)
            .await
    }

    /// Opens a share for a file request whose ticket the manifest issued (the passcode was
    /// checked there); still refused once revoked, expired or locked.
    pub async fn open_share_by_ticket(
        &self,
        share_id: &str,
        what: &str,
    ) -> std::result::Result<Opened, ShareError> {
        self.open_share_as(share_id, None, "(file of a manifest request)", what)
            .await
    }

    /// `passcode`: `Some(given)` to check it, `None` when a ticket stands for it.
    async fn open_share_as(
        &self,
        share_id: &str,
        passcode: Option<Option<&str>>,
        recipient: &str,
        what: &str,
    ) -> std::result::Result<Opened, ShareError> {
        let Some(row) = self.store.share(share_id).await? else {
            return Err(ShareError::Refused(Refused::NotFound));
        };
        let now = Utc::now();
        let recipient: String = recipient
            .trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(120)
            .collect();
        let expired = DateTime::parse_from_rfc3339(&row.expires_at).map_or(true, |t| now >= t);
        let refusal = if row.revoked_at.is_some() {
            Some(("revoked", Refused::NotFound))
        } else if expired {
            Some(("expired", Refused::NotFound))
        } else if row.attempts_left <= 0 {
            Some(("locked", Refused::NotFound))
        } else if let (Some(hash), Some(passcode)) = (&row.passcode_hash, passcode) {
            match passcode {
                Some(p) if passcode_matches(hash, p) => None,
                Some(_) => {
                    let left = self.store.spend_share_attempt(share_id).await?;
                    Some(("wrong_passcode", Refused::Passcode { remaining: left }))
                }
                None => Some((
                    "no_passcode",
                    Refused::Passcode {
                        remaining: row.attempts_left,
                    },
                )),
            }
        } else {
            None
        };
        let view_id = format!("shv_{}", hex::encode(random_bytes::<10>()?));
        let sealed = self
            .vault
            .seal(&row.patient_id, recipient.as_bytes(), &view_aad(&view_id))
            .await?;
        let outcome = refusal.as_ref().map_or("ok", |(o, _)| *o);
        self.store
            .insert_share_view(&ShareViewRow {
                view_id,
                share_id: share_id.to_string(),
                at: text(now),
                what: what.to_string(),
                outcome: outcome.to_string(),
                recipient: sealed,
            })
            .await?;
        if let Some((_, r)) = refusal {
            return Err(ShareError::Refused(r));
        }
        let secret = self.open_secret(&row).await?;
        let key: [u8; 32] = unb64(&secret.key)?
            .try_into()
            .map_err(|_| CatalogError::internal("a stored share key has the wrong length"))?;
        let bundle = serde_json::from_slice(&jwe_decrypt(&key, &row.jwe)?)
            .map_err(|_| CatalogError::internal("a stored share does not parse"))?;
        Ok(Opened {
            label: secret.label,
            bundle,
            jwe: row.jwe,
        })
    }
}

/// Why opening a share failed: the viewer's side, or the store's.
#[derive(Debug)]
pub enum ShareError {
    Refused(Refused),
    Catalog(CatalogError),
}

impl From<CatalogError> for ShareError {
    fn from(e: CatalogError) -> Self {
        ShareError::Catalog(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_share_opens_with_its_passcode_locks_after_wrong_ones_and_stops_when_revoked() {
        let (_dir, c, a, _) = crate::accounts::tests::two_patients().await;
        let (acc, _) = c
            .invite(&a, crate::accounts::Relation::Own, None, "test")
            .await
            .expect("invite");
        let conditions = Contents {
            kinds: vec![RecordKind::Condition],
            identity: false,
        };
        assert!(
            c.create_share(&a, &acc, " ", conditions.clone(), 30, None)
                .await
                .is_err(),
            "a name is needed"
        );
        assert!(
            c.create_share(&a, &acc, "x", conditions.clone(), 400, None)
                .await
                .is_err(),
            "at most a year"
        );
        let s = c
            .create_share(&a, &acc, "For Dr. Rivera", conditions, 30, Some("4321"))
            .await
            .expect("share");
        let opened = c
            .open_share(&s.share_id, Some("4321"), "Dr. Rivera", "page")
            .await
            .expect("opens");
        let types: BTreeSet<&str> = opened.bundle["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| e["resource"]["resourceType"].as_str())
            .collect();
        assert_eq!(
            types,
            BTreeSet::from(["Condition", "Patient"]),
            "conditions only, no consents"
        );
        let patient = opened.bundle["entry"][0]["resource"].clone();
        assert!(
            patient.get("name").is_none() && patient.get("birthDate").is_none(),
            "no identity"
        );
        match c.open_share(&s.share_id, None, "x", "manifest").await {
            Err(ShareError::Refused(Refused::Passcode { remaining })) => {
                assert_eq!(remaining, PASSCODE_ATTEMPTS)
            }
            other => panic!("{other:?}"),
        }
        for i in 1..=PASSCODE_ATTEMPTS {
            match c
                .open_share(&s.share_id, Some("0000"), "x", "manifest")
                .await
            {
                Err(ShareError::Refused(Refused::Passcode { remaining })) => {
                    assert_eq!(remaining, PASSCODE_ATTEMPTS - i)
                }
                Err(ShareError::Refused(Refused::NotFound)) if i == PASSCODE_ATTEMPTS => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(
            matches!(
                c.open_share(&s.share_id, Some("4321"), "x", "page").await,
                Err(ShareError::Refused(Refused::NotFound))
            ),
            "locked after the wrong tries, even with the right passcode"
        );
        let listed = c.shares(&a).await.expect("shares");
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].views.first().map(|v| v.recipient.as_str()),
            Some("Dr. Rivera")
        );
        assert_eq!(listed[0].views.len() as i64, 3 + PASSCODE_ATTEMPTS);
        // Revocation.
        let t = c
            .create_share(
                &a,
                &acc,
                "For my sister",
                Contents {
                    kinds: vec![],
                    identity: true,
                },
                1,
                None,
            )
            .await
            .expect("share");
        assert!(c.open_share(&t.share_id, None, "Sis", "page").await.is_ok());
        assert!(c.revoke_share(&a, &t.share_id).await.expect("revoke"));
        assert!(matches!(
            c.open_share(&t.share_id, None, "Sis", "page").await,
            Err(ShareError::Refused(Refused::NotFound))
        ));
    }

    #[test]
    fn a_jwe_opens_with_its_key_and_no_other() {
        let key = [7u8; 32];
        let jwe = jwe_encrypt(
            &key,
            "application/fhir+json",
            b"{\"resourceType\":\"Bundle\"}",
        )
        .expect("encrypt");
        assert_eq!(jwe.split('.').count(), 5);
        assert_eq!(jwe.split('.').nth(1), Some(""), "alg dir: no encrypted key");
        assert_eq!(
            jwe_decrypt(&key, &jwe).expect("decrypt"),
            b"{\"resourceType\":\"Bundle\"}"
        );
        assert!(jwe_decrypt(&[8u8; 32], &jwe).is_err());
        let mut tampered = jwe.clone();
        tampered.replace_range(0..1, "f");
        assert!(
            jwe_decrypt(&key, &tampered).is_err(),
            "the header is authenticated"
        );
    }

    #[test]
    fn passcodes_verify_only_themselves() {
        let h = hash_passcode("1234").expect("hash");
        assert!(passcode_matches(&h, "1234"));
        assert!(!passcode_matches(&h, "1235"));
        assert_ne!(h, hash_passcode("1234").expect("hash"), "salted");
    }

    #[test]
    fn a_link_carries_the_manifest_url_key_expiry_and_flag() {
        let s = NewShare {
            share_id: "abc".into(),
            key: b64(&[1u8; 32]),
            label: "For Dr. Rivera".into(),
            expires_at: DateTime::from_timestamp(1_900_000_000, 0).expect("time"),
            passcode: true,
        };
        let link = s.link("https://tessera.example/shl/abc");
        let payload: Value = serde_json::from_slice(
            &unb64(link.strip_prefix("shlink:/").expect("prefix")).expect("b64"),
        )
        .expect("json");
        assert_eq!(payload["url"], "https://tessera.example/shl/abc");
        assert_eq!(payload["key"].as_str().map(str::len), Some(43));
        assert_eq!(payload["exp"], 1_900_000_000);
        assert_eq!(payload["flag"], "P");
        assert_eq!(payload["v"], 1);
    }
}
