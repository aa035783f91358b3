//! Master keys and where they come from: the `KeyProvider` interface and its first
//! implementation, a key file (the KMS stand-in).
//!
//! Key file format, one master key per line:
//! ```text
//! # comment lines and blank lines are ignored
//! 1 q8n0...base64 of exactly 32 bytes...=
//! 2 Zm9v...                                  <- the highest id is the current key
//! ```
//! Rotation appends a line with a higher id and reloads; old lines stay, so data keys wrapped
//! under an old master key still unwrap. The file must not be readable by group or others.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::{zeroize, CryptoError, KEY_BYTES};

/// Identifies a master key in its provider (the number at the start of a key-file line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A 256-bit master key. Its bytes are never printed and are zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey([u8; KEY_BYTES]);

impl MasterKey {
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> MasterKey {
        MasterKey(bytes)
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        zeroize(&mut self.0);
    }
}

/// Where master keys come from. `current` is the key new data keys are wrapped under;
/// `get` finds any key a stored data key names (old ones included, after a rotation).
pub trait KeyProvider {
    fn current(&self) -> Result<(KeyId, MasterKey), CryptoError>;
    fn get(&self, id: KeyId) -> Result<MasterKey, CryptoError>;
}

/// Master keys read from a key file. Loading is blocking file I/O: do it at startup or on a
/// thread that may block, never on an executor thread.
#[derive(Debug)]
pub struct FileKeyProvider {
    path: PathBuf,
    keys: BTreeMap<KeyId, MasterKey>,
}

impl FileKeyProvider {
    /// Reads and checks the key file: permissions (no group or other access), then every
    /// line. Any problem is an error naming the file (and the line).
    pub fn load(path: impl AsRef<Path>) -> Result<FileKeyProvider, CryptoError> {
        let path = path.as_ref().to_path_buf();
        let io_err = |e: std::io::Error| CryptoError::KeyFileIo {
            path: path.clone(),
            source: e,
        };
        let meta = std::fs::metadata(&path).map_err(io_err)?;
        check_mode(&path, &meta)?;
        let text = std::fs::read_to_string(&path).map_err(io_err)?;
        let keys = parse_key_file(&path, &text)?;
        Ok(FileKeyProvider { path, keys })
    }

    /// Re-reads the file after a rotation (a line appended). On any error the keys loaded
    /// before stay in use. A key that was loaded before must still be there with the same
    /// bytes: removing or changing it would make data wrapped under it unreadable.
    pub fn reload(&mut self) -> Result<(), CryptoError> {
        let next = FileKeyProvider::load(&self.path)?;
        for (id, key) in &self.keys {
            match next.keys.get(id) {
                Some(k) if k == key => {}
                Some(_) => return Err(self.file_error(None, format!("master key {id} changed"))),
                None => return Err(self.file_error(None, format!("master key {id} removed"))),
            }
        }
        self.keys = next.keys;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ids of the keys loaded, in increasing order.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.keys.keys().copied().collect()
    }

    fn file_error(&self, line: Option<usize>, why: String) -> CryptoError {
        CryptoError::KeyFile {
            path: self.path.clone(),
            line,
            why,
        }
    }
}

impl KeyProvider for FileKeyProvider {
    fn current(&self) -> Result<(KeyId, MasterKey), CryptoError> {
        // `load` refuses an empty file, so there is always a current key.
        let (id, key) = self
            .keys
            .last_key_value()
            .expect("a loaded key file has a key");
        Ok((*id, key.clone()))
    }

    fn get(&self, id: KeyId) -> Result<MasterKey, CryptoError> {
        self.keys
            .get(&id)
            .cloned()
            .ok_or(CryptoError::UnknownMasterKey(id))
    }
}

#[cfg(unix)]
fn check_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), CryptoError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CryptoError::KeyFilePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), CryptoError> {
    Ok(())
}

/// Parses the text of a key file (pure, so it is tested without files).
pub(crate) fn parse_key_file(
    path: &Path,
    text: &str,
) -> Result<BTreeMap<KeyId, MasterKey>, CryptoError> {
    let err = |line: Option<usize>, why: String| CryptoError::KeyFile {
        path: path.to_path_buf(),
        line,
        why,
    };
    let mut keys = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = Some(i + 1);
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(id), Some(b64), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(err(line_no, "expected `ID BASE64-KEY`".into()));
        };
        let id = id
            .parse::<u32>()
            .map(KeyId)
            .map_err(|_| err(line_no, format!("key id {id:?} is not a u32")))?;
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| err(line_no, format!("key {id}: bad base64 ({e})")))?;
        if bytes.len() != KEY_BYTES {
            let n = bytes.len();
            zeroize(&mut bytes);
            return Err(err(
                line_no,
                format!("key {id}: {n} bytes, a master key is {KEY_BYTES}"),
            ));
        }
        let mut key = [0u8; KEY_BYTES];
        key.copy_from_slice(&bytes);
        zeroize(&mut bytes);
        if keys.insert(id, MasterKey(key)).is_some() {
            return Err(err(line_no, format!("duplicate key id {id}")));
        }
    }
    if keys.is_empty() {
        return Err(err(None, "no master key in the file".into()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    pub(crate) fn write_key_file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("master.keys");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        path
    }

    #[test]
    fn loads_keys_and_highest_id_is_current() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "# master keys\n\n7 {}\n  3 {}  \n",
            b64(&[7u8; 32]),
            b64(&[3u8; 32])
        );
        let p = FileKeyProvider::load(write_key_file(dir.path(), &text, 0o600)).unwrap();
        let (id, key) = p.current().unwrap();
        assert_eq!(id, KeyId(7));
        assert_eq!(key.bytes(), &[7u8; 32]);
        assert_eq!(p.get(KeyId(3)).unwrap().bytes(), &[3u8; 32]);
        assert!(matches!(
            p.get(KeyId(4)),
            Err(CryptoError::UnknownMasterKey(KeyId(4)))
        ));
        assert_eq!(p.key_ids(), vec![KeyId(3), KeyId(7)]);
    }

    #[test]
    fn bad_lines_are_refused_with_file_and_line() {
        let good = b64(&[1u8; 32]);
        let cases = [
            (format!("1 {good}\n2 not*base64\n"), 2, "bad base64"),
            (format!("# c\n1 {}\n", b64(&[1u8; 31])), 2, "31 bytes"),
            (format!("1 {good}\n\n1 {good}\n"), 3, "duplicate key id 1"),
            (format!("x {good}\n"), 1, "not a u32"),
            ("1\n".to_string(), 1, "expected"),
            (format!("1 {good} extra\n"), 1, "expected"),
        ];
        for (text, line, what) in cases {
            let e = parse_key_file(Path::new("/etc/spate/master.keys"), &text).unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(e, CryptoError::KeyFile { line: Some(l), .. } if l == line),
                "{text:?}: {msg}"
            );
            assert!(msg.contains("/etc/spate/master.keys"), "{msg}");
            assert!(msg.contains(&format!("line {line}")), "{msg}");
            assert!(msg.contains(what), "{msg}");
        }
        let e = parse_key_file(Path::new("k"), "# nothing\n\n").unwrap_err();
        assert!(e.to_string().contains("no master key"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn loose_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("1 {}\n", b64(&[1u8; 32]));
        for mode in [0o640, 0o604, 0o644, 0o660] {
            let path = write_key_file(dir.path(), &text, mode);
            let e = FileKeyProvider::load(&path).unwrap_err();
            assert!(
                matches!(e, CryptoError::KeyFilePermissions { mode: m, .. } if m == mode),
                "{e}"
            );
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
        let missing = FileKeyProvider::load(dir.path().join("absent")).unwrap_err();
        assert!(missing.to_string().contains("absent"), "{missing}");
    }

    #[test]
    fn debug_does_not_print_key_bytes() {
        let k = MasterKey::from_bytes([0xAB; 32]);
        let s = format!("{k:?}");
        assert!(
            !s.contains("171") && !s.to_lowercase().contains("ab, "),
            "{s}"
        );
        assert!(s.contains("redacted"));
    }

    #[test]
    fn reload_keeps_old_keys_and_refuses_removal() {
        let dir = tempfile::tempdir().unwrap();
        let one = format!("1 {}\n", b64(&[1u8; 32]));
        let path = write_key_file(dir.path(), &one, 0o600);
        let mut p = FileKeyProvider::load(&path).unwrap();
        let two = format!("{one}2 {}\n", b64(&[2u8; 32]));
        write_key_file(dir.path(), &two, 0o600);
        p.reload().unwrap();
        assert_eq!(p.current().unwrap().0, KeyId(2));
        // Dropping key 1 would strand data wrapped under it: refused, old keys kept.
        write_key_file(dir.path(), &format!("2 {}\n", b64(&[2u8; 32])), 0o600);
        let e = p.reload().unwrap_err();
        assert!(e.to_string().contains("master key 1 removed"), "{e}");
        assert_eq!(p.key_ids(), vec![KeyId(1), KeyId(2)]);
    }
}
