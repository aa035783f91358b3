//! The one door to the host's `/proc`, `/sys` and `/etc`.
//!
//! Every check and every tuning step reads (and `apply` writes) the host through [`Host`], which
//! resolves absolute paths under a root prefix. On a real machine the root is `/`; tests point it
//! at a temporary directory filled with sample `/proc` and `/sys` contents, so the decision logic
//! runs against a known machine without root and without touching the real system.
//!
//! Nothing here panics on what the host returns: a missing or unreadable file is a [`ReadError`]
//! that names the path, and the caller turns it into a verdict that says what could not be read.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where host files are read from: `/` for the live machine, a directory for tests.
#[derive(Clone, Debug)]
pub struct Host {
    root: PathBuf,
}

/// A host file that could not be read, with the path as the host would name it (no test prefix).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot read {path}: {reason}")]
pub struct ReadError {
    pub path: String,
    pub reason: String,
    /// True when the file does not exist, which for optional kernel knobs means "not this kernel".
    pub not_found: bool,
}

impl Host {
    /// The machine we run on.
    pub fn live() -> Self {
        Self {
            root: PathBuf::from("/"),
        }
    }

    /// A fake machine whose `/proc`, `/sys` and `/etc` live under `root`.
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Whether this is the real machine; live-only probes (creating an io_uring) are skipped
    /// otherwise because they would test the machine running the tests, not the sample.
    pub fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// The file system path behind an absolute host path.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    pub fn read(&self, abs: &str) -> Result<String, ReadError> {
        fs::read_to_string(self.path(abs)).map_err(|e| read_error(abs, &e))
    }

    /// Reads a one-value file (`/proc/sys/...`, `/sys/.../scheduler`) without its newline.
    pub fn read_value(&self, abs: &str) -> Result<String, ReadError> {
        self.read(abs).map(|s| s.trim().to_string())
    }

    /// Reads a one-number file.
    pub fn read_u64(&self, abs: &str) -> Result<u64, ReadError> {
        let text = self.read_value(abs)?;
        text.parse().map_err(|_| ReadError {
            path: abs.to_string(),
            reason: format!("expected a number, found {text:?}"),
            not_found: false,
        })
    }

    /// Names in a directory, sorted so output and plans are deterministic.
    pub fn list_dir(&self, abs: &str) -> Result<Vec<String>, ReadError> {
        let entries = fs::read_dir(self.path(abs)).map_err(|e| read_error(abs, &e))?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    pub fn exists(&self, abs: &str) -> bool {
        self.path(abs).exists()
    }

    /// The last component of the path a sysfs symlink resolves to (`/sys/class/net/eth0/device`
    /// → `virtio2`), or `None` if it does not resolve.
    pub fn link_target_name(&self, abs: &str) -> Option<String> {
        let target = fs::canonicalize(self.path(abs)).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// Replaces a file's contents. Sysfs and procfs attributes take the value in one write.
    pub fn write(&self, abs: &str, contents: &str) -> io::Result<()> {
        let path = self.path(abs);
        if let Some(parent) = path.parent() {
            // `/etc/sysctl.d` and `/etc/security/limits.d` may be missing on minimal systems;
            // sysfs directories always exist, so this is a no-op there.
            if !parent.exists() {
                fs::create_dir_all(parent)?;
            }
        }
        fs::write(path, contents)
    }
}

fn read_error(abs: &str, e: &io::Error) -> ReadError {
    let reason = match e.kind() {
        io::ErrorKind::NotFound => "not present".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied (run as root to see it)".to_string(),
        _ => e.to_string(),
    };
    ReadError {
        path: abs.to_string(),
        reason,
        not_found: e.kind() == io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A builder for fake hosts in tests.
    use super::Host;
    use std::fs;

    pub struct FakeHost {
        pub dir: tempfile::TempDir,
    }

    impl FakeHost {
        pub fn new() -> Self {
            Self {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }

        pub fn file(&self, abs: &str, contents: &str) -> &Self {
            let path = self.dir.path().join(abs.trim_start_matches('/'));
            fs::create_dir_all(path.parent().expect("absolute path has a parent")).expect("mkdir");
            fs::write(path, contents).expect("write sample file");
            self
        }

        pub fn dir(&self, abs: &str) -> &Self {
            fs::create_dir_all(self.dir.path().join(abs.trim_start_matches('/'))).expect("mkdir");
            self
        }

        pub fn host(&self) -> Host {
            Host::with_root(self.dir.path())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeHost;

    #[test]
    fn reads_under_the_root_and_names_missing_files() {
        let fake = FakeHost::new();
        fake.file("/proc/sys/vm/swappiness", "60\n");
        let host = fake.host();
        assert!(!host.is_live());
        assert_eq!(host.read_u64("/proc/sys/vm/swappiness"), Ok(60));
        let err = host
            .read("/proc/sys/net/core/somaxconn")
            .expect_err("missing");
        assert!(err.not_found);
        assert_eq!(
            err.to_string(),
            "cannot read /proc/sys/net/core/somaxconn: not present"
        );
        fake.file("/proc/sys/vm/bad", "sixty");
        assert!(host.read_u64("/proc/sys/vm/bad").is_err());
    }

    #[test]
    fn writes_create_missing_etc_directories() {
        let fake = FakeHost::new();
        let host = fake.host();
        host.write("/etc/sysctl.d/99-spate.conf", "vm.swappiness = 1\n")
            .expect("write");
        assert_eq!(
            host.read("/etc/sysctl.d/99-spate.conf").expect("read"),
            "vm.swappiness = 1\n"
        );
    }
}
