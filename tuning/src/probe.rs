//! Live probes: things that can only be learned by trying them on the real machine.
//!
//! Reading `kernel.io_uring_disabled` does not prove a ring can be created (a seccomp profile,
//! a container runtime or an old kernel can still refuse), and a file system's name does not
//! prove it accepts `O_DIRECT`. So both `spate-tune check` and the engine's preflight try the
//! real thing, in the smallest form that exercises the same kernel paths the engine will use.
//! These probes run on the calling thread and hold nothing once they return.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Size and alignment of the probe write: one page, which satisfies the logical block size of
/// every disk in use (512 B or 4 KiB) and the memory alignment `O_DIRECT` demands.
pub const O_DIRECT_PROBE_BYTES: usize = 4096;

/// Creates and drops an 8-entry io_uring, which is what the engine's executors will do first.
pub fn probe_io_uring() -> io::Result<()> {
    io_uring::IoUring::new(8).map(drop)
}

/// Creates and drops an 8-entry io_uring set up with `IORING_SETUP_COOP_TASKRUN |
/// IORING_SETUP_TASKRUN_FLAG` (Linux 5.19+), as `io_uring_coop_taskrun` asks of each core's
/// main ring. Where the kernel refuses them, the engine makes its rings without, and
/// completions interrupt its cores (tuning/README.md, "Interrupts").
pub fn probe_io_uring_coop_taskrun() -> io::Result<()> {
    io_uring::IoUring::<io_uring::squeue::Entry>::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(8)
        .map(drop)
}

/// The step of the `O_DIRECT` probe that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ODirectStep {
    Open,
    Write,
    Fdatasync,
}

impl ODirectStep {
    pub fn as_str(self) -> &'static str {
        match self {
            ODirectStep::Open => "open with O_DIRECT",
            ODirectStep::Write => "4 KiB direct write",
            ODirectStep::Fdatasync => "fdatasync",
        }
    }
}

/// Why the `O_DIRECT` probe failed.
#[derive(Debug, thiserror::Error)]
#[error("{} in {} failed: {source}", step.as_str(), dir.display())]
pub struct ODirectProbeError {
    pub dir: PathBuf,
    pub step: ODirectStep,
    #[source]
    pub source: io::Error,
}

impl ODirectProbeError {
    /// `EINVAL` on open or on an aligned write means the file system refuses direct I/O, as
    /// opposed to a permission or space problem that a different user or disk would not have.
    pub fn is_unsupported(&self) -> bool {
        self.source.raw_os_error() == Some(libc::EINVAL)
    }

    /// Whether the probe could not even create its file for lack of rights (not a verdict on
    /// the file system).
    pub fn is_permission(&self) -> bool {
        matches!(
            self.source.raw_os_error(),
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS)
        )
    }
}

/// Removes the probe file however the probe ends, so a failed check leaves nothing behind.
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        // Nothing useful can be done if removal fails; the name is unique and dot-prefixed.
        let _ = fs::remove_file(self.0);
    }
}

/// Opens a fresh file in `dir` with `O_DIRECT | O_CREAT | O_EXCL`, writes one aligned 4 KiB
/// block, `fdatasync`s it and removes it: the same syscalls the engine's segment appender makes.
pub fn probe_o_direct(dir: &Path) -> Result<(), ODirectProbeError> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = dir.join(format!(".spate-probe-{}-{nanos}", std::process::id()));
    let fail = |step, source| ODirectProbeError {
        dir: dir.to_path_buf(),
        step,
        source,
    };
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(|e| fail(ODirectStep::Open, e))?;
    let _remove = RemoveOnDrop(&path);

    // O_DIRECT needs the buffer itself aligned; over-allocate and write from the aligned
    // window rather than reach for an aligned allocator (and `unsafe`) for one probe.
    let buf = vec![0xA5u8; 2 * O_DIRECT_PROBE_BYTES];
    let misalignment = buf.as_ptr() as usize % O_DIRECT_PROBE_BYTES;
    let start = (O_DIRECT_PROBE_BYTES - misalignment) % O_DIRECT_PROBE_BYTES;
    let block = &buf[start..start + O_DIRECT_PROBE_BYTES];
    assert_eq!(
        block.as_ptr() as usize % O_DIRECT_PROBE_BYTES,
        0,
        "probe buffer must be page aligned"
    );

    file.write_all(block)
        .map_err(|e| fail(ODirectStep::Write, e))?;
    file.sync_data()
        .map_err(|e| fail(ODirectStep::Fdatasync, e))?;
    Ok(())
}

/// The nearest ancestor of `path` that exists (itself if it does). The checker probes there when
/// the data directory has not been created yet: it will live on the same file system.
pub fn nearest_existing(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where plain rings work, a 5.19+ kernel takes `COOP_TASKRUN` rings too (what
    /// `io_uring_coop_taskrun` relies on); older kernels may refuse them (the engine then
    /// falls back) or have them backported, and a host without io_uring proves nothing.
    #[test]
    fn coop_taskrun_probe_follows_the_kernel_version() {
        if probe_io_uring().is_err() {
            return;
        }
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        let version = crate::parse::parse_kernel_version(&release).expect("kernel version");
        if (version.major, version.minor) >= (5, 19) {
            assert!(
                probe_io_uring_coop_taskrun().is_ok(),
                "kernel {release} refuses IORING_SETUP_COOP_TASKRUN: {:?}",
                probe_io_uring_coop_taskrun()
            );
        }
    }

    #[test]
    fn o_direct_probe_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        match probe_o_direct(dir.path()) {
            Ok(()) => {}
            // Some CI sandboxes put temp dirs on tmpfs without O_DIRECT; the error must say so.
            Err(e) => assert!(e.is_unsupported(), "unexpected probe failure: {e}"),
        }
        assert_eq!(fs::read_dir(dir.path()).expect("read dir").count(), 0);
    }

    #[test]
    fn o_direct_probe_reports_the_failing_step() {
        let missing = Path::new("/nonexistent-spate-probe-dir");
        let err = probe_o_direct(missing).expect_err("cannot create files in a missing dir");
        assert_eq!(err.step, ODirectStep::Open);
        assert!(err
            .to_string()
            .starts_with("open with O_DIRECT in /nonexistent-spate-probe-dir failed"));
    }

    #[test]
    fn nearest_existing_walks_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a/b/c");
        assert_eq!(nearest_existing(&deep), Some(dir.path()));
        assert_eq!(nearest_existing(dir.path()), Some(dir.path()));
    }
}
