//! Envelope and batch-encryption tests: round trips, wrong keys, every flipped bit,
//! rotation, and a search of the ciphertext for the plaintext.

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;
use spate_protocol::batch::{self, BatchBuilder, BATCH_HEADER_LEN};

use super::*;

/// An in-memory provider (the file one is tested in `keys`).
struct MapProvider(BTreeMap<KeyId, MasterKey>);

impl MapProvider {
    fn with(ids: &[u32]) -> MapProvider {
        MapProvider(
            ids.iter()
                .map(|&i| (KeyId(i), MasterKey::from_bytes([i as u8; 32])))
                .collect(),
        )
    }
}

impl KeyProvider for MapProvider {
    fn current(&self) -> Result<(KeyId, MasterKey), CryptoError> {
        let (id, k) = self.0.last_key_value().expect("a key");
        Ok((*id, k.clone()))
    }
    fn get(&self, id: KeyId) -> Result<MasterKey, CryptoError> {
        self.0
            .get(&id)
            .cloned()
            .ok_or(CryptoError::UnknownMasterKey(id))
    }
}

const MARKER: &[u8] = b"PLAINTEXT-MARKER-7f3a";

/// A stamped, stored-form plaintext batch of `n` records carrying `MARKER`.
fn stamped_batch(n: usize, base_seq: u64, segment_nonce: u64) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        let mut data = MARKER.to_vec();
        data.extend_from_slice(format!("-{i}").as_bytes());
        b.push(format!("key-{i}").as_bytes(), &data, None).unwrap();
    }
    let mut out = b.finish();
    batch::stamp(&mut out, base_seq, 1_700_000_000_000, segment_nonce);
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn header_of(b: &[u8]) -> [u8; BATCH_HEADER_LEN] {
    b[..BATCH_HEADER_LEN].try_into().unwrap()
}

#[test]
fn batch_round_trip_restores_the_exact_plaintext_batch() {
    let key = DataKey::generate().unwrap();
    let plain = stamped_batch(5, 1000, 0xDEAD_BEEF_0000_0001);
    let mut b = plain.clone();
    encrypt_batch(&key, &mut b);
    assert_eq!(b.len(), plain.len() + TAG_BYTES);
    assert!(is_encrypted(&header_of(&b)));
    // The clear header is still a valid stored header (the store walks extents by it),
    // but the records CRC is over the plaintext, so the sealed batch does not verify.
    let h = batch::verify_stored_header(&b).unwrap();
    assert_eq!(h.batch_len as usize, b.len());
    assert_eq!(h.base_seq, 1000);
    assert!(batch::verify_stored(&b).is_err());
    assert!(!contains(&b, MARKER), "plaintext marker in the ciphertext");
    decrypt_batch(&key, &mut b).unwrap();
    assert_eq!(b, plain);
    batch::verify_stored(&b).unwrap();
}

#[test]
fn records_round_trip_with_vec_api() {
    let key = DataKey::generate().unwrap();
    let plain = stamped_batch(3, 7, 99);
    let mut header = header_of(&plain);
    mark_encrypted(&mut header);
    let mut records = plain[BATCH_HEADER_LEN..].to_vec();
    encrypt_records(&key, &header, &mut records);
    assert_eq!(records.len(), plain.len() - BATCH_HEADER_LEN + TAG_BYTES);
    assert!(!contains(&records, MARKER));
    decrypt_records(&key, &header, &mut records).unwrap();
    assert_eq!(records, &plain[BATCH_HEADER_LEN..]);
    unmark_encrypted(&mut header);
    assert_eq!(header, header_of(&plain));
}

#[test]
fn wrong_data_key_fails() {
    let key = DataKey::generate().unwrap();
    let other = DataKey::generate().unwrap();
    let mut b = stamped_batch(2, 5, 77);
    encrypt_batch(&key, &mut b);
    let e = decrypt_batch(&other, &mut b).unwrap_err();
    assert!(matches!(e, CryptoError::Decrypt { base_seq: 5 }), "{e}");
    // ring overwrites (zeroes) the buffer on a failed open: no plaintext is left behind.
    assert!(
        !contains(&b, MARKER),
        "a failed decryption left plaintext behind"
    );
}

#[test]
fn every_flipped_bit_of_a_sealed_batch_fails() {
    let key = DataKey::generate().unwrap();
    let mut sealed = stamped_batch(2, 42, 0x0123_4567_89AB_CDEF);
    encrypt_batch(&key, &mut sealed);
    // Header (AAD, nonce fields included), ciphertext and tag: every bit.
    for byte in 0..sealed.len() {
        for bit in 0..8 {
            let mut b = sealed.clone();
            b[byte] ^= 1 << bit;
            let r = decrypt_batch(&key, &mut b);
            assert!(r.is_err(), "flip of byte {byte} bit {bit} went unnoticed");
        }
    }
}

#[test]
fn truncated_or_unmarked_batches_are_typed_errors() {
    let key = DataKey::generate().unwrap();
    let plain = stamped_batch(1, 0, 1);
    let mut b = plain.clone();
    assert!(matches!(
        decrypt_batch(&key, &mut b),
        Err(CryptoError::NotEncrypted { .. })
    ));
    let mut sealed = plain.clone();
    encrypt_batch(&key, &mut sealed);
    for cut in 0..sealed.len() {
        let mut b = sealed[..cut].to_vec();
        assert!(
            decrypt_batch(&key, &mut b).is_err(),
            "prefix of {cut} bytes"
        );
    }
}

#[test]
fn nonces_differ_between_batches() {
    let mut seen = HashSet::new();
    for segment_nonce in [1u64, 3, 0xFFFF_FFFF_FFFF_FFFF] {
        for base_seq in [0u64, 1, 2, 500, 1 << 20] {
            let h = header_of(&stamped_batch(1, base_seq, segment_nonce));
            assert!(seen.insert(batch_nonce(&h)), "{segment_nonce} {base_seq}");
        }
    }
    // Same plaintext records in two batches: different ciphertexts.
    let key = DataKey::generate().unwrap();
    let mut a = stamped_batch(1, 10, 5);
    let mut b = stamped_batch(1, 11, 5);
    encrypt_batch(&key, &mut a);
    encrypt_batch(&key, &mut b);
    assert_ne!(a[BATCH_HEADER_LEN..], b[BATCH_HEADER_LEN..]);
}

#[test]
fn wrapped_key_round_trip_and_encoding() {
    let provider = MapProvider::with(&[1]);
    let (id, master) = provider.current().unwrap();
    let dk = DataKey::generate().unwrap();
    let aad = key_aad(17, 0);
    let w = dk.wrap(&master, id, &aad).unwrap();
    assert_eq!(w.ciphertext.len(), KEY_BYTES + TAG_BYTES);
    let bytes = w.encode();
    assert_eq!(bytes.len(), WRAPPED_KEY_BYTES);
    let back = WrappedKey::decode(&bytes).unwrap();
    assert_eq!(back, w);
    let dk2 = back.unwrap(&provider, &aad).unwrap();
    // The unwrapped key decrypts what the original sealed.
    let mut b = stamped_batch(2, 3, 4);
    let plain = b.clone();
    encrypt_batch(&dk, &mut b);
    decrypt_batch(&dk2, &mut b).unwrap();
    assert_eq!(b, plain);
    // Every truncation and a trailing byte are refused.
    for cut in 0..bytes.len() {
        assert!(WrappedKey::decode(&bytes[..cut]).is_err());
    }
    let mut long = bytes.to_vec();
    long.push(0);
    assert!(WrappedKey::decode(&long).is_err());
    assert_eq!(format!("{dk:?}"), "DataKey(<redacted>)");
}

#[test]
fn wrong_master_key_and_wrong_context_fail() {
    let dk = DataKey::generate().unwrap();
    let aad = key_aad(17, 2);
    let w = dk
        .wrap(&MasterKey::from_bytes([1; 32]), KeyId(1), &aad)
        .unwrap();
    // Same id, different bytes: the provider has a different key 1.
    let impostor = MapProvider(BTreeMap::from([(KeyId(1), MasterKey::from_bytes([9; 32]))]));
    assert!(matches!(
        w.unwrap(&impostor, &aad),
        Err(CryptoError::Unwrap {
            master_id: KeyId(1)
        })
    ));
    // Unknown master id.
    assert!(matches!(
        w.unwrap(&MapProvider::with(&[2]), &aad),
        Err(CryptoError::UnknownMasterKey(KeyId(1)))
    ));
    let right = MapProvider::with(&[1]);
    // Moved to another stream or epoch.
    assert!(w.unwrap(&right, &key_aad(18, 2)).is_err());
    assert!(w.unwrap(&right, &key_aad(17, 3)).is_err());
    w.unwrap(&right, &aad).unwrap();
}

#[test]
fn every_flipped_bit_of_a_wrapped_key_or_its_aad_fails() {
    let provider = MapProvider::with(&[1, 2]);
    let (id, master) = provider.current().unwrap();
    let aad = key_aad(5, 1);
    let w = DataKey::generate()
        .unwrap()
        .wrap(&master, id, &aad)
        .unwrap();
    let bytes = w.encode();
    for byte in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes;
            b[byte] ^= 1 << bit;
            let r = WrappedKey::decode(&b).and_then(|k| k.unwrap(&provider, &aad));
            assert!(r.is_err(), "flip of byte {byte} bit {bit} went unnoticed");
        }
    }
    // Past the CRC: flips in the structured fields themselves (as if the CRC were
    // recomputed by whoever altered them) fail authentication.
    for i in 0..w.ciphertext.len() * 8 {
        let mut k = w.clone();
        k.ciphertext[i / 8] ^= 1 << (i % 8);
        assert!(k.unwrap(&provider, &aad).is_err());
    }
    for i in 0..NONCE_BYTES * 8 {
        let mut k = w.clone();
        k.nonce[i / 8] ^= 1 << (i % 8);
        assert!(k.unwrap(&provider, &aad).is_err());
    }
    let mut k = w.clone();
    k.master_id = KeyId(1);
    assert!(k.unwrap(&provider, &aad).is_err(), "re-labelled master id");
    for i in 0..aad.len() * 8 {
        let mut a = aad;
        a[i / 8] ^= 1 << (i % 8);
        assert!(w.unwrap(&provider, &a).is_err(), "aad bit {i}");
    }
}

#[test]
fn rotation_keeps_old_data_keys_readable() {
    let mut provider = MapProvider::with(&[1]);
    let aad = key_aad(9, 0);
    let dk1 = DataKey::generate().unwrap();
    let (id1, m1) = provider.current().unwrap();
    let w1 = dk1.wrap(&m1, id1, &aad).unwrap();
    assert_eq!(w1.master_id, KeyId(1));
    // Key 2 is added and becomes current.
    provider.0.insert(KeyId(2), MasterKey::from_bytes([2; 32]));
    let (id2, m2) = provider.current().unwrap();
    assert_eq!(id2, KeyId(2));
    let aad1 = key_aad(9, 1);
    let w2 = DataKey::generate().unwrap().wrap(&m2, id2, &aad1).unwrap();
    assert_eq!(w2.master_id, KeyId(2));
    // Old data keys still unwrap, and still decrypt old batches.
    let mut b = stamped_batch(1, 0, 11);
    let plain = b.clone();
    encrypt_batch(&dk1, &mut b);
    let again = w1.unwrap(&provider, &aad).unwrap();
    decrypt_batch(&again, &mut b).unwrap();
    assert_eq!(b, plain);
    w2.unwrap(&provider, &aad1).unwrap();
    // Re-wrapping an epoch under the new key (what lets key 1 retire).
    let rewrapped = again.wrap(&m2, id2, &aad).unwrap();
    provider.0.remove(&KeyId(1));
    rewrapped.unwrap(&provider, &aad).unwrap();
    assert!(w1.unwrap(&provider, &aad).is_err());
}

#[test]
fn file_provider_rotation_end_to_end() {
    use base64::Engine as _;
    use std::io::Write;
    let enc = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.keys");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    writeln!(f, "1 {}", enc(&[0x11; 32])).unwrap();
    let mut p = FileKeyProvider::load(&path).unwrap();
    let aad = key_aad(1, 0);
    let dk = DataKey::generate().unwrap();
    let (id, m) = p.current().unwrap();
    let w1 = dk.wrap(&m, id, &aad).unwrap();
    writeln!(f, "2 {}", enc(&[0x22; 32])).unwrap();
    p.reload().unwrap();
    let (id, m) = p.current().unwrap();
    assert_eq!(id, KeyId(2));
    let w2 = dk.wrap(&m, id, &aad).unwrap();
    assert_eq!(w2.master_id, KeyId(2));
    w1.unwrap(&p, &aad).unwrap();
    w2.unwrap(&p, &aad).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn prop_round_trip(
        records in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 1..40),
             proptest::collection::vec(any::<u8>(), 0..300)),
            1..20),
        base_seq in any::<u64>(),
        segment_nonce in any::<u64>(),
    ) {
        let key = DataKey::generate().unwrap();
        let mut b = BatchBuilder::new();
        for (k, d) in &records {
            // Partition keys must be UTF-8: map bytes to ASCII letters.
            let k: Vec<u8> = k.iter().map(|c| b'a' + c % 26).collect();
            b.push(&k, d, None).unwrap();
        }
        let mut plain = b.finish();
        batch::stamp(&mut plain, base_seq, 5, segment_nonce);
        let mut sealed = plain.clone();
        encrypt_batch(&key, &mut sealed);
        prop_assert_eq!(sealed.len(), plain.len() + TAG_BYTES);
        decrypt_batch(&key, &mut sealed).unwrap();
        prop_assert_eq!(&sealed, &plain);
        batch::verify_stored(&sealed).unwrap();
    }
}
