//! Properties every on-disk decoder must hold on arbitrary input (a damaged or hostile data
//! directory), shared by the libFuzzer targets in `fuzz/` and the deterministic smoke test
//! `engine/tests/fuzz_smoke.rs`. Not part of the API.
//!
//! Each function takes any bytes and returns whether something in them decoded. It panics
//! only when a property is broken: a decoder panicked, or a value that decoded did not
//! survive re-encoding.

use super::layout::{
    decode_entries, encode_batch_entry_header, encode_direct, encode_roll, entry_len, Entry,
    ExtentHeader, JournalHeader, RoundHeader, DIRECT_BODY_LEN, ENTRY_HEADER_LEN, ROLL_BODY_LEN,
    ROUND_HEADER_LEN,
};
use super::manifest;
use crate::io::BLOCK_BYTES;

/// An extent header block.
pub fn extent_header(data: &[u8]) -> bool {
    let Some(h) = ExtentHeader::decode(data) else {
        return false;
    };
    let mut block = vec![0u8; BLOCK_BYTES];
    h.encode_block(&mut block);
    assert_eq!(
        &block[..64],
        &data[..64],
        "an extent header re-encodes to its bytes"
    );
    assert_eq!(ExtentHeader::decode(&block), Some(h));
    true
}

/// A journal file header block.
pub fn journal_header(data: &[u8]) -> bool {
    let Some(h) = JournalHeader::decode(data) else {
        return false;
    };
    let mut block = vec![0u8; BLOCK_BYTES];
    h.encode_block(&mut block);
    assert_eq!(
        &block[..64],
        &data[..64],
        "a journal header re-encodes to its bytes"
    );
    true
}

/// A round: its header, then (when the payload's CRC matches, as replay requires) its
/// entries, each of which re-encodes to its bytes.
pub fn round(data: &[u8]) -> bool {
    let Some(h) = RoundHeader::decode(data) else {
        return false;
    };
    let mut head = [0u8; ROUND_HEADER_LEN];
    h.encode(&mut head);
    assert_eq!(&head[..], &data[..ROUND_HEADER_LEN]);
    let end = ROUND_HEADER_LEN.saturating_add(h.payload_len as usize);
    let Some(payload) = data.get(ROUND_HEADER_LEN..end) else {
        return true;
    };
    if crc32c::crc32c(payload) != h.payload_crc {
        return true;
    }
    entries(payload, h.entry_count);
    true
}

/// A round's payload, its CRC taken as matching.
pub fn entries(payload: &[u8], count: u32) -> bool {
    let Ok(entries) = decode_entries(payload, count) else {
        return false;
    };
    let mut out = Vec::new();
    for e in &entries {
        match e {
            Entry::Batch(k, b) => {
                let mut x = vec![0u8; entry_len(b.len())];
                encode_batch_entry_header(&mut x, *k, b.len());
                x[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + b.len()].copy_from_slice(b);
                out.extend_from_slice(&x);
            }
            Entry::Roll(k, r) => {
                let mut x = vec![0u8; entry_len(ROLL_BODY_LEN)];
                encode_roll(&mut x, *k, r);
                out.extend_from_slice(&x);
            }
            Entry::Direct(k, d) => {
                let mut x = vec![0u8; entry_len(DIRECT_BODY_LEN)];
                encode_direct(&mut x, *k, d);
                out.extend_from_slice(&x);
            }
        }
    }
    assert_eq!(out, payload, "entries re-encode to their bytes");
    true
}

/// A manifest file.
pub fn manifest(data: &[u8]) -> bool {
    let Ok(m) = manifest::decode(data) else {
        return false;
    };
    assert_eq!(manifest::decode(&manifest::encode(&m)), Ok(m));
    true
}

/// A catalog file.
pub fn catalog(data: &[u8]) -> bool {
    let Ok(c) = crate::catalog::Catalog::from_bytes(std::path::Path::new("/x"), Some(data)) else {
        return false;
    };
    let (_, bytes) = c.encoded();
    let again = crate::catalog::Catalog::from_bytes(std::path::Path::new("/x"), Some(&bytes))
        .expect("a re-encoded catalog decodes");
    assert_eq!(again.data, c.data);
    true
}
