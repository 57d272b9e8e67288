//! The byte format of a stored record before sealing: a version byte, then the record's JSON
//! compressed with LZ4 (block format, uncompressed size first).
//!
//! LZ4 rather than zstd: records are small (a few kB) and zstd spends most of its time building
//! entropy tables for each one; LZ4 compresses JSON two- to three-fold at several times the
//! speed, which measured as the better trade on the ingest benchmark (docs/benchmarks.md).

use crate::error::{CatalogError, Result};
use crate::model::RecordBody;

const FORMAT_LZ4_JSON: u8 = 2;
/// Refuse to inflate anything claiming to be larger than this (a corrupt row).
const MAX_BODY_BYTES: usize = 512 * 1024 * 1024;

/// Serializes and compresses a record body. Returns the payload and the uncompressed JSON
/// (which the caller hashes to detect changed content independently of the compressor).
pub fn encode(body: &RecordBody) -> Result<(Vec<u8>, Vec<u8>)> {
    let json = serde_json::to_vec(body)
        .map_err(|e| CatalogError::internal(format!("serializing a record: {e}")))?;
    let compressed = lz4_flex::block::compress_prepend_size(&json);
    let mut out = Vec::with_capacity(compressed.len() + 1);
    out.push(FORMAT_LZ4_JSON);
    out.extend_from_slice(&compressed);
    Ok((out, json))
}

/// Inverse of [`encode`].
pub fn decode(payload: &[u8]) -> Result<RecordBody> {
    let bad = |what: &str| CatalogError::internal(format!("a stored record is malformed: {what}"));
    let (&format, rest) = payload.split_first().ok_or_else(|| bad("empty"))?;
    if format != FORMAT_LZ4_JSON {
        return Err(bad("unknown format version"));
    }
    let declared = rest
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(|b| u32::from_le_bytes(b) as usize)
        .ok_or_else(|| bad("short header"))?;
    if declared > MAX_BODY_BYTES {
        return Err(bad("declared length too large"));
    }
    let json =
        lz4_flex::block::decompress_size_prepended(rest).map_err(|_| bad("does not decompress"))?;
    serde_json::from_slice(&json).map_err(|e| bad(&format!("JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Clinical;

    #[test]
    fn round_trip_and_corruption() {
        let body = RecordBody {
            resource_type: "Observation".into(),
            clinical: Clinical::Other {
                code: None,
                date: Some("2020-01-01".into()),
            },
            categories: vec![],
            encounter: None,
            raw: serde_json::value::RawValue::from_string(
                r#"{"resourceType":"Observation","id":"x"}"#.into(),
            )
            .expect("raw"),
        };
        let (payload, json) = encode(&body).expect("encode");
        assert_eq!(payload[0], FORMAT_LZ4_JSON);
        let back = decode(&payload).expect("decode");
        assert_eq!(back.raw.get(), body.raw.get());
        assert_eq!(serde_json::to_vec(&back).expect("json"), json);
        assert!(decode(&payload[..payload.len() / 2]).is_err());
        assert!(decode(&[9, 0, 0, 0, 0]).is_err());
    }
}
