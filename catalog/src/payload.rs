//! The byte format of a stored record before sealing.
//!
//! `[3] ++ lz4(u32 head length ++ head JSON ++ raw JSON)`, LZ4 in block format with the
//! uncompressed size first. The head is the normalized record (everything of [`RecordBody`] but
//! the raw resource); the raw resource follows as its own JSON text, minified, so ingest never
//! re-encodes or re-validates it.
//!
//! LZ4 rather than zstd: records are small (a few kB) and zstd spends most of its time building
//! entropy tables for each one; LZ4 compresses JSON two- to three-fold at several times the
//! speed, which measured as the better trade on the ingest benchmark (docs/benchmarks.md).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{CatalogError, Result};
use crate::model::{Clinical, RecordBody, SensitiveCategory};

const FORMAT: u8 = 3;
/// Refuse to inflate anything claiming to be larger than this (a corrupt row).
const MAX_BODY_BYTES: usize = 512 * 1024 * 1024;

/// The normalized part of a record, borrowed for encoding.
#[derive(Serialize)]
pub struct Head<'a> {
    pub resource_type: &'a str,
    pub clinical: &'a Clinical,
    pub categories: &'a [SensitiveCategory],
    pub encounter: Option<&'a str>,
}

#[derive(Deserialize)]
struct OwnedHead {
    resource_type: String,
    clinical: Clinical,
    categories: Vec<SensitiveCategory>,
    encounter: Option<String>,
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\n' | b'\r' | b'\t')
}

/// Appends the non-whitespace runs of a stretch outside strings.
fn copy_outside(seg: &[u8], out: &mut Vec<u8>) {
    let mut k = 0;
    while k < seg.len() {
        while k < seg.len() && is_ws(seg[k]) {
            k += 1;
        }
        let start = k;
        while k < seg.len() && !is_ws(seg[k]) {
            k += 1;
        }
        out.extend_from_slice(&seg[start..k]);
    }
}

/// Appends `raw` (valid JSON) without whitespace outside strings.
pub fn minify_into(raw: &[u8], out: &mut Vec<u8>) {
    let n = raw.len();
    let mut i = 0;
    while i < n {
        let Some(p) = raw[i..].iter().position(|&c| c == b'"') else {
            copy_outside(&raw[i..], out);
            return;
        };
        copy_outside(&raw[i..i + p], out);
        let start = i + p;
        i = start + 1;
        // Copy the string through its closing quote, stepping over escapes.
        while i < n {
            match raw[i..].iter().position(|&c| c == b'"' || c == b'\\') {
                None => i = n,
                Some(q) if raw[i + q] == b'\\' => i += q + 2,
                Some(q) => {
                    i += q + 1;
                    break;
                }
            }
        }
        out.extend_from_slice(&raw[start..i.min(n)]);
    }
}

/// Encodes a record: returns the payload to seal and the uncompressed bytes (which the caller
/// hashes to detect changed content independently of the compressor).
pub fn encode(head: &Head, raw: &str, minify: bool) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut plain = Vec::with_capacity(raw.len() + 512);
    plain.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut plain, head)
        .map_err(|e| CatalogError::internal(format!("serializing a record: {e}")))?;
    let head_len = (plain.len() - 4) as u32;
    plain[..4].copy_from_slice(&head_len.to_le_bytes());
    if minify {
        minify_into(raw.as_bytes(), &mut plain);
    } else {
        plain.extend_from_slice(raw.as_bytes());
    }
    let compressed = lz4_flex::block::compress_prepend_size(&plain);
    let mut out = Vec::with_capacity(compressed.len() + 1);
    out.push(FORMAT);
    out.extend_from_slice(&compressed);
    Ok((out, plain))
}

/// Inverse of [`encode`].
pub fn decode(payload: &[u8]) -> Result<RecordBody> {
    let bad = |what: &str| CatalogError::internal(format!("a stored record is malformed: {what}"));
    let (&format, rest) = payload.split_first().ok_or_else(|| bad("empty"))?;
    if format != FORMAT {
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
    let plain =
        lz4_flex::block::decompress_size_prepended(rest).map_err(|_| bad("does not decompress"))?;
    let head_len = plain
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(|b| u32::from_le_bytes(b) as usize)
        .ok_or_else(|| bad("short body"))?;
    let head_bytes = plain
        .get(4..4 + head_len)
        .ok_or_else(|| bad("head length"))?;
    let head: OwnedHead =
        serde_json::from_slice(head_bytes).map_err(|e| bad(&format!("head: {e}")))?;
    let raw_text =
        String::from_utf8(plain[4 + head_len..].to_vec()).map_err(|_| bad("raw is not UTF-8"))?;
    let raw = RawValue::from_string(raw_text).map_err(|e| bad(&format!("raw: {e}")))?;
    Ok(RecordBody {
        resource_type: head.resource_type,
        clinical: head.clinical,
        categories: head.categories,
        encounter: head.encounter,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn round_trip_and_corruption() {
        let clinical = Clinical::Other {
            code: None,
            date: Some("2020-01-01".into()),
        };
        let head = Head {
            resource_type: "Observation",
            clinical: &clinical,
            categories: &[SensitiveCategory::Genetic],
            encounter: Some("e1"),
        };
        let raw = "{\n  \"resourceType\" : \"Observation\",\n  \"id\": \"x\"\n}";
        let (payload, plain) = encode(&head, raw, true).expect("encode");
        assert_eq!(payload[0], FORMAT);
        let back = decode(&payload).expect("decode");
        assert_eq!(back.raw.get(), r#"{"resourceType":"Observation","id":"x"}"#);
        assert_eq!(back.clinical, clinical);
        assert_eq!(back.encounter.as_deref(), Some("e1"));
        assert!(plain.ends_with(back.raw.get().as_bytes()));
        assert!(decode(&payload[..payload.len() / 2]).is_err());
        assert!(decode(&[9, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn minify_keeps_strings_intact() {
        let raw = "{\n  \"a\" : [ 1, 2 ],\n  \"s\": \"x  y \\\" \\\\\" , \"t\":\"\\\\\"\n}";
        let mut out = Vec::new();
        minify_into(raw.as_bytes(), &mut out);
        let text = String::from_utf8(out).expect("utf-8");
        assert!(!text.contains('\n'));
        let a: Value = serde_json::from_str(raw).expect("a");
        let b: Value = serde_json::from_str(&text).expect("b");
        assert_eq!(a, b);
        assert!(text.contains("x  y"), "{text}");
    }
}
