//! The audit log: append-only and hash-chained. Each entry commits to the previous entry's hash,
//! so editing, deleting or reordering any entry breaks the chain from that point, and
//! [`verify`] names the first bad entry. Entries hold no identified data: principals, licenses,
//! actions, resources, decisions, a hash of the query text, and counts.

use serde::{Deserialize, Serialize};

/// The hash the first entry commits to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One decision, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// RFC 3339 UTC.
    pub at: String,
    /// Credential id or `anonymous`.
    pub principal: String,
    pub license: Option<String>,
    pub action: String,
    pub resource: String,
    /// `allow` or `deny:<reason>`.
    pub decision: String,
    /// SHA-256 of the query text, hex (never the text: it can hold literals).
    pub query_sha256: Option<String>,
    pub rows: Option<u64>,
    pub persons: Option<u64>,
}

/// An entry of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Entry {
    pub seq: u64,
    pub event: Event,
    pub prev_hash: String,
    pub hash: String,
}

/// SHA-256 over the sequence number, the previous hash and every field, each length-prefixed
/// (so that no two different entries hash the same bytes).
pub fn entry_hash(seq: u64, prev_hash: &str, e: &Event) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut put = |s: &str| {
        ctx.update(&(s.len() as u64).to_le_bytes());
        ctx.update(s.as_bytes());
    };
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "\u{0}none".into());
    let num = |v: Option<u64>| v.map_or_else(|| "\u{0}none".into(), |n| n.to_string());
    put(&seq.to_string());
    put(prev_hash);
    put(&e.at);
    put(&e.principal);
    put(&opt(&e.license));
    put(&e.action);
    put(&e.resource);
    put(&e.decision);
    put(&opt(&e.query_sha256));
    put(&num(e.rows));
    put(&num(e.persons));
    hex::encode(ctx.finish().as_ref())
}

/// The entry that follows `previous` (or starts the chain).
pub fn chain(previous: Option<&Entry>, event: Event) -> Entry {
    let (seq, prev_hash) = match previous {
        Some(p) => (p.seq + 1, p.hash.clone()),
        None => (1, GENESIS.to_string()),
    };
    Entry {
        hash: entry_hash(seq, &prev_hash, &event),
        seq,
        event,
        prev_hash,
    }
}

/// Why a chain does not verify, naming the first bad entry (by position and sequence number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("entry {position} (seq {seq}): its content does not match its hash (edited)")]
    Edited { position: usize, seq: u64 },
    #[error(
        "entry {position} (seq {seq}): it does not follow the entry before it (deleted or reordered entries)"
    )]
    Broken { position: usize, seq: u64 },
}

/// Verifies a whole chain, in stored order.
pub fn verify(entries: &[Entry]) -> Result<(), ChainError> {
    let mut prev_hash = GENESIS.to_string();
    for (i, e) in entries.iter().enumerate() {
        let position = i + 1;
        if e.seq != position as u64 || e.prev_hash != prev_hash {
            return Err(ChainError::Broken {
                position,
                seq: e.seq,
            });
        }
        if entry_hash(e.seq, &e.prev_hash, &e.event) != e.hash {
            return Err(ChainError::Edited {
                position,
                seq: e.seq,
            });
        }
        prev_hash = e.hash.clone();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: usize) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        for i in 0..n {
            let e = Event {
                at: format!("2026-11-23T12:00:{i:02}Z"),
                principal: "key-1".into(),
                license: Some("lic-1".into()),
                action: "run_query".into(),
                resource: "nh/v3".into(),
                decision: if i % 3 == 0 {
                    "deny:quota_exceeded".into()
                } else {
                    "allow".into()
                },
                query_sha256: Some(format!("{i:064x}")),
                rows: Some(i as u64),
                persons: None,
            };
            let next = chain(out.last(), e);
            out.push(next);
        }
        out
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&log(10)), Ok(()));
        assert_eq!(verify(&[]), Ok(()));
    }

    #[test]
    fn edits_deletions_and_swaps_are_found_at_the_first_bad_entry() {
        // An edited field.
        let mut edited = log(10);
        edited[4].event.decision = "allow".into();
        edited[4].event.rows = Some(999);
        assert_eq!(
            verify(&edited),
            Err(ChainError::Edited {
                position: 5,
                seq: 5
            })
        );
        // An edited field with its own hash recomputed: the next entry no longer follows.
        let mut rehashed = log(10);
        rehashed[4].event.rows = Some(999);
        rehashed[4].hash = entry_hash(5, &rehashed[4].prev_hash, &rehashed[4].event);
        assert_eq!(
            verify(&rehashed),
            Err(ChainError::Broken {
                position: 6,
                seq: 6
            })
        );
        // A deleted entry.
        let mut deleted = log(10);
        deleted.remove(3);
        assert_eq!(
            verify(&deleted),
            Err(ChainError::Broken {
                position: 4,
                seq: 5
            })
        );
        // Two entries swapped.
        let mut swapped = log(10);
        swapped.swap(2, 3);
        assert_eq!(
            verify(&swapped),
            Err(ChainError::Broken {
                position: 3,
                seq: 4
            })
        );
        // The last entry deleted is found only against the stored head (the store keeps the
        // count and head hash apart); the chain itself stays valid.
        let mut truncated = log(10);
        truncated.pop();
        assert_eq!(verify(&truncated), Ok(()));
    }
}
