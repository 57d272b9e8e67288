//! Signed terms. The canonical terms document of a license (every term, not its status) is
//! hashed with SHA-256; the licensee's signatory signs the hash with an Ed25519 key registered
//! for the organization, and the platform countersigns the same hash. Verification recomputes
//! the hash from the stored terms, so any change after signing is caught.

use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::model::License;

/// The signatures over a license's terms hash (public keys and signatures as hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedTerms {
    pub terms_sha256: String,
    pub signatory_public_key: String,
    pub signatory_signature: String,
    pub platform_public_key: Option<String>,
    pub platform_signature: Option<String>,
}

/// Why verification failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TermsError {
    #[error(
        "the stored terms are not the terms that were signed (hash differs): the license was changed after signing"
    )]
    TermsChanged,
    #[error("the signatory's signature does not verify with the organization's registered key")]
    BadSignatory,
    #[error("the platform has not countersigned these terms")]
    MissingCountersignature,
    #[error("the platform's countersignature does not verify with the platform key")]
    BadCountersignature,
    #[error("a key or signature is not valid hex")]
    Malformed,
}

/// The canonical document: the license's terms as JSON with sorted keys and no status (which
/// changes over the license's life without changing what was agreed).
pub fn canonical_terms(license: &License) -> String {
    let mut v = serde_json::to_value(license).unwrap_or(serde_json::Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    // serde_json's map is a BTreeMap (no `preserve_order` feature): keys come out sorted.
    v.to_string()
}

/// SHA-256 of the canonical terms, hex.
pub fn terms_hash(license: &License) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical_terms(license).as_bytes(),
    ))
}

/// The signatory signs the terms of `license`.
pub fn sign(license: &License, signatory: &Ed25519KeyPair) -> SignedTerms {
    use ring::signature::KeyPair;
    let hash = terms_hash(license);
    SignedTerms {
        signatory_signature: hex::encode(signatory.sign(hash.as_bytes()).as_ref()),
        signatory_public_key: hex::encode(signatory.public_key().as_ref()),
        terms_sha256: hash,
        platform_public_key: None,
        platform_signature: None,
    }
}

/// The platform countersigns the same hash.
pub fn countersign(signed: &mut SignedTerms, platform: &Ed25519KeyPair) {
    use ring::signature::KeyPair;
    signed.platform_signature = Some(hex::encode(
        platform.sign(signed.terms_sha256.as_bytes()).as_ref(),
    ));
    signed.platform_public_key = Some(hex::encode(platform.public_key().as_ref()));
}

fn check(public_key_hex: &str, message: &[u8], signature_hex: &str) -> Result<bool, TermsError> {
    let key = hex::decode(public_key_hex).map_err(|_| TermsError::Malformed)?;
    let sig = hex::decode(signature_hex).map_err(|_| TermsError::Malformed)?;
    Ok(UnparsedPublicKey::new(&ED25519, key)
        .verify(message, &sig)
        .is_ok())
}

/// Verifies that `license`'s stored terms are the signed ones, signed with the organization's
/// registered key and countersigned with the platform's key (both hex public keys).
pub fn verify(
    license: &License,
    signed: &SignedTerms,
    organization_key: &str,
    platform_key: &str,
) -> Result<(), TermsError> {
    if terms_hash(license) != signed.terms_sha256 {
        return Err(TermsError::TermsChanged);
    }
    let hash = signed.terms_sha256.as_bytes();
    if !check(organization_key, hash, &signed.signatory_signature)? {
        return Err(TermsError::BadSignatory);
    }
    let Some(counter) = &signed.platform_signature else {
        return Err(TermsError::MissingCountersignature);
    };
    if !check(platform_key, hash, counter)? {
        return Err(TermsError::BadCountersignature);
    }
    Ok(())
}

/// The platform's signing key from a 32-byte seed (derived from the master key by the binary).
pub fn platform_key(seed: &[u8; 32]) -> Result<(Ed25519KeyPair, String), ring::error::KeyRejected> {
    use ring::signature::KeyPair;
    let pair = Ed25519KeyPair::from_seed_unchecked(seed)?;
    let public = hex::encode(pair.public_key().as_ref());
    Ok((pair, public))
}

/// A new Ed25519 key pair (PKCS#8 bytes, to be stored by the caller) and its public key (hex).
pub fn generate_key() -> Result<(Vec<u8>, String), ring::error::Unspecified> {
    use ring::signature::KeyPair;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| ring::error::Unspecified)?;
    Ok((
        pkcs8.as_ref().to_vec(),
        hex::encode(pair.public_key().as_ref()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use chrono::{TimeZone, Utc};

    fn license() -> License {
        let mut l = sample_license(
            Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0)
                .single()
                .expect("t"),
        );
        l.status = LicenseStatus::Draft;
        l
    }

    fn pair() -> (Ed25519KeyPair, String) {
        let (pkcs8, public) = generate_key().expect("key");
        (Ed25519KeyPair::from_pkcs8(&pkcs8).expect("pair"), public)
    }

    #[test]
    fn signed_and_countersigned_terms_verify_and_any_change_fails() {
        let (org, org_pub) = pair();
        let (platform, platform_pub) = pair();
        let mut l = license();
        let mut signed = sign(&l, &org);
        assert_eq!(
            verify(&l, &signed, &org_pub, &platform_pub),
            Err(TermsError::MissingCountersignature)
        );
        countersign(&mut signed, &platform);
        assert_eq!(verify(&l, &signed, &org_pub, &platform_pub), Ok(()));
        // The status changes over the license's life without touching the signed terms.
        l.status = LicenseStatus::Active;
        assert_eq!(verify(&l, &signed, &org_pub, &platform_pub), Ok(()));
        // A changed clause.
        let mut changed = l.clone();
        changed.clauses[1].push_str(" Except for marketing.");
        assert_eq!(
            verify(&changed, &signed, &org_pub, &platform_pub),
            Err(TermsError::TermsChanged)
        );
        // A changed fee.
        let mut cheaper = l.clone();
        cheaper.fees.patient_share_bps = 100;
        assert_eq!(
            verify(&cheaper, &signed, &org_pub, &platform_pub),
            Err(TermsError::TermsChanged)
        );
        // A wrong organization key; a countersignature by someone else.
        let (_, other_pub) = pair();
        assert_eq!(
            verify(&l, &signed, &other_pub, &platform_pub),
            Err(TermsError::BadSignatory)
        );
        assert_eq!(
            verify(&l, &signed, &org_pub, &other_pub),
            Err(TermsError::BadCountersignature)
        );
        let mut forged = signed.clone();
        forged.signatory_signature = "zz".into();
        assert_eq!(
            verify(&l, &forged, &org_pub, &platform_pub),
            Err(TermsError::Malformed)
        );
    }
}
