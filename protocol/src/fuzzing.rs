//! Properties every decoder must hold on arbitrary input, shared by the libFuzzer targets in
//! `fuzz/` and the deterministic smoke test `tests/fuzz_smoke.rs` (so CI checks the same
//! thing the fuzzer does, on a fixed budget). Not part of the API.
//!
//! Each function takes any bytes and returns whether something in them decoded (so a
//! driver can tell that its inputs reach past the first check). It panics only when a
//! property is broken: a decoder panicked, or a value that decoded did not survive
//! re-encoding.

use crate::batch::{
    check_producer_batch, truncate_records, verify_stored, BatchHeader, RecordIter, RecordRules,
    BATCH_HEADER_LEN,
};
use crate::frame::{decode_frame, peek_header, DEFAULT_MAX_FRAME_BYTES};
use crate::message::{
    decode_request, decode_response, encode_error, encode_request, encode_response, ErrorResponse,
    Request, Response,
};
use crate::read::BatchSlices;
use crate::token::IteratorToken;

/// Frame decoding at two size limits, then the frame's message as request and response.
pub fn frame(data: &[u8]) -> bool {
    let mut decoded = false;
    for max_frame_bytes in [64, DEFAULT_MAX_FRAME_BYTES] {
        let peeked = peek_header(data, max_frame_bytes);
        match decode_frame(data, max_frame_bytes) {
            Ok(Some(frame)) => {
                assert_eq!(peeked, Ok(Some(frame.header)), "peek and decode disagree");
                assert!(frame.encoded_len() <= data.len());
                assert_eq!(frame.payload.len(), frame.header.payload_len());
                if let Ok(request) = decode_request(&frame) {
                    request_survives_reencoding(&request);
                    decoded = true;
                }
                match decode_response(&frame) {
                    Ok(Ok(response)) => {
                        response_survives_reencoding(&response);
                        decoded = true;
                    }
                    Ok(Err(error)) => {
                        error_survives_reencoding(frame.header.opcode, &error);
                        decoded = true;
                    }
                    Err(_) => {}
                }
            }
            Ok(None) => assert!(peeked.is_ok(), "peek failed, decode asked for more"),
            Err(e) => {
                let _ = e.code();
            }
        }
    }
    decoded
}

/// A request payload: the first two bytes pick the opcode.
pub fn request(data: &[u8]) -> bool {
    let Some((opcode, payload)) = split_opcode(data) else {
        return false;
    };
    let Ok(request) = Request::decode(opcode, payload) else {
        return false;
    };
    request_survives_reencoding(&request);
    if let Request::PutRecord(put) = &request {
        let _ = put.hash_key();
    }
    true
}

/// A response payload (or error body): the first two bytes pick the opcode.
pub fn response(data: &[u8]) -> bool {
    let Some((opcode, payload)) = split_opcode(data) else {
        return false;
    };
    let mut decoded = false;
    if let Ok(response) = Response::decode(opcode, payload) {
        decoded = true;
        response_survives_reencoding(&response);
        match &response {
            Response::GetRecords(r) => {
                // The walk verifies checksums; it must end, with records or an error.
                for record in r.records() {
                    let _ = record;
                }
            }
            Response::PutBatch(r) => {
                assert_eq!(r.results(600).len(), 600);
            }
            _ => {}
        }
    }
    if let Ok(error) = ErrorResponse::decode(payload) {
        error_survives_reencoding(opcode, &error);
        decoded = true;
    }
    decoded
}

/// The batch checks and the iterator token: everything that reads stored or produced bytes.
/// The batch checks run twice: on the bytes as given, and re-sealed (length and both CRCs
/// made right), so the record parser sees the mutation instead of the checksum refusing it.
pub fn batch(data: &[u8]) -> bool {
    let mut decoded = batch_checks(data);
    if let Some(mut sealed) = resealed(data) {
        decoded |= batch_checks(&sealed);
        // A valid batch cut to a prefix is a valid batch of that many records.
        if let Ok(summary) = check_producer_batch(&sealed, &RecordRules::default()) {
            let keep = summary.record_count.div_ceil(2);
            let len = truncate_records(&mut sealed, keep).expect("a checked batch truncates");
            let cut = check_producer_batch(&sealed[..len], &RecordRules::default());
            assert_eq!(
                cut.map(|s| s.record_count),
                Ok(keep),
                "truncated batch does not check"
            );
        }
    }
    let key = crate::token::TokenKey::new([0x5a; crate::token::TOKEN_KEY_LEN]);
    if let Ok(token) = IteratorToken::decode(data, &key) {
        assert_eq!(IteratorToken::decode(&token.encode(&key), &key), Ok(token));
        let _ = token.is_expired(i64::MAX);
        decoded = true;
    }
    let count = data.first().map_or(0, |&b| u32::from(b));
    if let Ok(slices) = BatchSlices::parse(data, count) {
        assert_eq!(slices.iter().count() as u32, count);
        assert_eq!(slices.iter().map(<[u8]>::len).sum::<usize>(), data.len());
    }
    decoded
}

fn resealed(data: &[u8]) -> Option<Vec<u8>> {
    let len = u32::try_from(data.len()).ok()?;
    if data.len() < BATCH_HEADER_LEN {
        return None;
    }
    let mut out = data.to_vec();
    out[8..12].copy_from_slice(&len.to_le_bytes());
    let records_crc = crc32c::crc32c(&out[BATCH_HEADER_LEN..]);
    out[20..24].copy_from_slice(&records_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&out[8..BATCH_HEADER_LEN]);
    out[4..8].copy_from_slice(&header_crc.to_le_bytes());
    Some(out)
}

fn batch_checks(data: &[u8]) -> bool {
    let mut decoded = check_producer_batch(data, &RecordRules::default()).is_ok();
    let tight = RecordRules {
        max_record_data_bytes: 16,
        hash_range: Some((1 << 64, u128::MAX)),
    };
    let _ = check_producer_batch(data, &tight);
    if let Ok(header) = verify_stored(data) {
        assert_eq!(header.batch_len as usize, data.len());
        decoded = true;
    }
    if let Ok(header) = BatchHeader::decode(data) {
        // Bounded by the bytes, whatever the count claims.
        for record in RecordIter::new(data, header.record_count).take(data.len() + 1) {
            let _ = record;
        }
    }
    decoded
}

fn split_opcode(data: &[u8]) -> Option<(u16, &[u8])> {
    let (op, payload) = data.split_first_chunk::<2>()?;
    Some((u16::from_le_bytes(*op), payload))
}

fn request_survives_reencoding(request: &Request<'_>) {
    let mut out = Vec::new();
    encode_request(&mut out, 1, request);
    let frame = decode_frame(&out, usize::MAX)
        .expect("own frame")
        .expect("whole frame");
    let again = decode_request(&frame).expect("re-encoded request decodes");
    assert_eq!(&again, request, "request changed through re-encoding");
}

fn response_survives_reencoding(response: &Response<'_>) {
    let mut out = Vec::new();
    encode_response(&mut out, 1, response);
    let frame = decode_frame(&out, usize::MAX)
        .expect("own frame")
        .expect("whole frame");
    let again = decode_response(&frame).expect("re-encoded response decodes");
    assert_eq!(
        again.as_ref(),
        Ok(response),
        "response changed through re-encoding"
    );
}

fn error_survives_reencoding(opcode: u16, error: &ErrorResponse<'_>) {
    let mut out = Vec::new();
    encode_error(&mut out, opcode, 1, error);
    let frame = decode_frame(&out, usize::MAX)
        .expect("own frame")
        .expect("whole frame");
    let again = decode_response(&frame).expect("re-encoded error decodes");
    assert_eq!(again, Err(*error), "error changed through re-encoding");
}
