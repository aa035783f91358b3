//! Arbitrary bytes never panic a decoder (proptest's half of the fuzzing story; the other
//! half, mutations of valid frames, is `fuzz_smoke.rs`).

use proptest::prelude::*;
use spate_protocol::{
    fuzzing, Opcode, FLAG_ERROR, FLAG_RESPONSE, FRAME_HEADER_LEN, PROTOCOL_VERSION,
};

/// A valid frame header in front of arbitrary payload bytes, so the payload decoders are
/// reached rather than the framer refusing the input.
fn framed(opcode: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&((FRAME_HEADER_LEN + payload.len()) as u32).to_le_bytes());
    out.push(PROTOCOL_VERSION);
    out.push(flags);
    out.extend_from_slice(&opcode.to_le_bytes());
    out.extend_from_slice(&7u64.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn raw_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzzing::frame(&bytes);
        fuzzing::request(&bytes);
        fuzzing::response(&bytes);
        fuzzing::batch(&bytes);
    }

    #[test]
    fn framed_payloads(
        op_index in 0..Opcode::ALL.len(),
        flags in prop_oneof![Just(0u8), Just(FLAG_RESPONSE), Just(FLAG_RESPONSE | FLAG_ERROR)],
        payload in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let opcode = Opcode::ALL[op_index].as_u16();
        fuzzing::frame(&framed(opcode, flags, &payload));
        let mut with_opcode = opcode.to_le_bytes().to_vec();
        with_opcode.extend_from_slice(&payload);
        fuzzing::request(&with_opcode);
        fuzzing::response(&with_opcode);
    }
}
