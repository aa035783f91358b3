//! Envelope and batch-encryption tests: round trips, wrong keys, every flipped bit,
//! rotation, and a search of the ciphertext for the plaintext.

use std::collections::BTreeMap;

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

const CTX: BatchContext = BatchContext {
    stream_id: 7,
    shard_id: 3,
};

/// Seals a stamped plaintext batch the way the store does (room for the tag at the end).
fn seal(key: &DataKey, epoch: u32, ctx: BatchContext, plain: &[u8]) -> Vec<u8> {
    let mut b = plain.to_vec();
    b.resize(plain.len() + TAG_BYTES, 0);
    seal_batch(key, epoch, ctx, &mut b);
    b
}

fn open(key: &DataKey, ctx: BatchContext, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut b = sealed.to_vec();
    let n = open_batch(key, ctx, &mut b)?;
    b.truncate(n);
    Ok(b)
}

#[test]
fn batch_round_trip_restores_the_exact_plaintext_batch() {
    let key = DataKey::generate().unwrap();
    let plain = stamped_batch(5, 1000, 0xDEAD_BEEF_0000_0001);
    let b = seal(&key, 9, CTX, &plain);
    assert!(is_encrypted(&b));
    assert_eq!(sealed_epoch(&b), 9);
    // The sealed batch is an ordinary stored batch to the store: both CRCs verify
    // without the key (recovery and torn-tail checks need none).
    let h = batch::verify_stored(&b).unwrap();
    assert_eq!(h.batch_len as usize, plain.len() + TAG_BYTES);
    assert_eq!(h.base_seq, 1000);
    assert!(!contains(&b, MARKER), "plaintext marker in the ciphertext");
    let back = open(&key, CTX, &b).unwrap();
    assert_eq!(back, plain);
    batch::verify_stored(&back).unwrap();
}

#[test]
fn wrong_data_key_or_wrong_place_fails() {
    let key = DataKey::generate().unwrap();
    let other = DataKey::generate().unwrap();
    let b = seal(&key, 0, CTX, &stamped_batch(2, 5, 77));
    let mut wiped = b.clone();
    let e = open_batch(&other, CTX, &mut wiped).unwrap_err();
    assert!(matches!(e, CryptoError::Decrypt { base_seq: 5 }), "{e}");
    // ring overwrites the buffer on a failed open: no plaintext is left behind.
    assert!(!contains(&wiped, MARKER));
    for ctx in [
        BatchContext {
            stream_id: 8,
            ..CTX
        },
        BatchContext { shard_id: 4, ..CTX },
    ] {
        assert!(open(&key, ctx, &b).is_err(), "{ctx:?}");
    }
}

#[test]
fn every_flipped_bit_of_a_sealed_batch_fails() {
    let key = DataKey::generate().unwrap();
    let sealed = seal(&key, 1, CTX, &stamped_batch(2, 42, 0x0123_4567_89AB_CDEF));
    // Header (magic, CRCs, AAD, nonce fields, epoch), ciphertext and tag: every bit is
    // caught by the store's CRC check of the stored bytes or by the tag.
    for byte in 0..sealed.len() {
        for bit in 0..8 {
            let mut b = sealed.clone();
            b[byte] ^= 1 << bit;
            let served = batch::verify_stored(&b).is_ok() && open(&key, CTX, &b).is_ok();
            assert!(!served, "flip of byte {byte} bit {bit} went unnoticed");
        }
    }
}

#[test]
fn truncated_or_unmarked_batches_are_typed_errors() {
    let key = DataKey::generate().unwrap();
    let plain = stamped_batch(1, 0, 1);
    assert!(matches!(
        open(&key, CTX, &[plain.as_slice(), &[0u8; TAG_BYTES]].concat()),
        Err(CryptoError::NotEncrypted { .. }) | Err(CryptoError::SealedLength { .. })
    ));
    let sealed = seal(&key, 0, CTX, &plain);
    for cut in 0..sealed.len() {
        assert!(open(&key, CTX, &sealed[..cut]).is_err(), "prefix of {cut}");
    }
}

#[test]
fn same_records_at_other_positions_give_other_ciphertexts() {
    let key = DataKey::generate().unwrap();
    let a = seal(&key, 0, CTX, &stamped_batch(1, 10, 5));
    let b = seal(&key, 0, CTX, &stamped_batch(1, 11, 5));
    let c = seal(
        &key,
        0,
        BatchContext { shard_id: 4, ..CTX },
        &stamped_batch(1, 10, 5),
    );
    assert_ne!(a[BATCH_HEADER_LEN..], b[BATCH_HEADER_LEN..]);
    assert_ne!(a[BATCH_HEADER_LEN..], c[BATCH_HEADER_LEN..]);
}

#[test]
fn a_read_of_mixed_batches_opens_the_sealed_ones_under_their_epochs() {
    let k0 = DataKey::generate().unwrap();
    let k1 = DataKey::generate().unwrap();
    let p0 = stamped_batch(2, 0, 1);
    let p1 = stamped_batch(3, 2, 1);
    let p2 = stamped_batch(1, 5, 1);
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&p0); // stored before encryption was started
    bytes.extend_from_slice(&seal(&k0, 0, CTX, &p1));
    let k1_copy = DataKey::generate().unwrap();
    bytes.extend_from_slice(&seal(&k1, 1, CTX, &p2));
    assert!(!contains(&bytes[p0.len()..], MARKER));
    let keys = StreamKeys::new(7, Some(1), vec![(1, k1), (0, k0)]);
    let mut read = bytes.clone();
    open_batches(Some(&keys), CTX, &mut read).unwrap();
    assert_eq!(read, [p0.clone(), p1, p2].concat());
    // An epoch the stream does not have, or no keys at all: an error, nothing served.
    let missing = StreamKeys::new(7, Some(0), vec![(0, k1_copy)]);
    assert!(open_batches(Some(&missing), CTX, &mut bytes.clone()).is_err());
    assert!(open_batches(None, CTX, &mut bytes.clone()).is_err());
    // Clear batches alone need no keys.
    let mut clear = p0.clone();
    open_batches(None, CTX, &mut clear).unwrap();
    assert_eq!(clear, p0);
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
    let plain = stamped_batch(2, 3, 4);
    let b = seal(&dk, 0, CTX, &plain);
    assert_eq!(open(&dk2, CTX, &b).unwrap(), plain);
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
    let plain = stamped_batch(1, 0, 11);
    let b = seal(&dk1, 0, CTX, &plain);
    let again = w1.unwrap(&provider, &aad).unwrap();
    assert_eq!(open(&again, CTX, &b).unwrap(), plain);
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
        let sealed = seal(&key, 3, CTX, &plain);
        prop_assert_eq!(sealed.len(), plain.len() + TAG_BYTES);
        batch::verify_stored(&sealed).unwrap();
        let back = open(&key, CTX, &sealed).unwrap();
        prop_assert_eq!(&back, &plain);
    }
}
