//! The engine's start-up checks.
//!
//! glommio assumes a working io_uring, enough locked memory and (for Spate's segments) a data
//! directory that accepts `O_DIRECT`. When one of these is missing, the failure surfaces as a
//! panic or an opaque `ReactorError` deep inside executor start-up, on another thread, after
//! some shards may already have opened. [`preflight`] runs first, on the main thread, and turns
//! each of these into one line that names the problem and the fix.
//!
//! Order matters: locked memory is settled before the io_uring probe because kernels before
//! 5.12 charge ring memory to `RLIMIT_MEMLOCK`, and a ring refused for lack of it would
//! otherwise be misreported as "io_uring unavailable".
//!
//! The decision functions ([`check_kernel`], [`check_io_uring_switch`], [`decide_memlock`]) are
//! pure so their verdicts and error texts are unit-tested without changing the machine.

use crate::host::Host;
use crate::parse::{
    format_bytes, format_limit_bytes, has_cap_ipc_lock, parse_kernel_version, KernelVersion,
    LimitValue,
};
use crate::probe::{probe_io_uring, probe_o_direct, ODirectStep};
use std::ffi::CStr;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

/// Minimum locked memory glommio needs per executor.
///
/// glommio refuses to start a reactor when `RLIMIT_MEMLOCK` is below 512 KiB, and what io_uring
/// locks (ring memory before 5.12, registered buffers always) is charged to the user across all
/// executors, so Spate asks for this much per executor.
pub const MEMLOCK_PER_EXECUTOR_BYTES: u64 = 512 * 1024;

/// The I/O buffer memory each executor allocates up front (`io_memory_bytes`, glommio's
/// `io_memory`): the store's staging, journal and write-behind buffers come from it, reused,
/// and only past it from `malloc`. 128 MiB: against the 2 MiB default of before, `max-1k`'s
/// shape acknowledged 1.1–1.5 M records/s instead of 0.85–0.9 M (BENCHMARKS.md, session o).
pub const IO_MEMORY_DEFAULT_BYTES: u64 = 128 * 1024 * 1024;

/// Locked memory an executor's io_uring rings take beyond registered buffers.
const RING_MEMLOCK_BYTES: u64 = 2 * 1024 * 1024;

/// Locked memory per executor for glommio to also register its I/O buffers: its `io_memory`
/// is registered with each of its three rings and each registration is charged separately.
/// Below this glommio still runs, but logs a warning and uses the same buffers unregistered,
/// which costs a page pin per I/O. Processes with `CAP_IPC_LOCK` (root) are not charged at all.
pub fn memlock_recommended_per_executor_bytes(io_memory_bytes: u64) -> u64 {
    io_memory_bytes
        .saturating_mul(3)
        .saturating_add(RING_MEMLOCK_BYTES)
}

/// The oldest kernel whose io_uring has everything glommio uses.
pub const KERNEL_MIN: KernelVersion = KernelVersion::new(5, 8, 0);

/// The oldest kernel we recommend: the 5.10 LTS fixed io_uring bugs that 5.8 and 5.9 still have.
pub const KERNEL_RECOMMENDED: KernelVersion = KernelVersion::new(5, 10, 0);

/// Where the persistent fixes live, named in error texts so the operator finds them.
const FIX_MEMLOCK: &str =
    "ulimit -l unlimited before starting, or LimitMEMLOCK=infinity in the systemd unit \
     (tuning/spate.service), or install tuning/limits/99-spate.conf in /etc/security/limits.d";
const FIX_IO_URING_SWITCH: &str =
    "sysctl -w kernel.io_uring_disabled=0, and keep it in /etc/sysctl.d (tuning/sysctl/99-spate.conf)";

/// A start-up check that failed. Each `Display` is one line: the problem, then `fix:` and what
/// to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "kernel {release} is too old: Spate's io_uring use needs Linux >= {KERNEL_MIN}; \
         fix: boot a {KERNEL_RECOMMENDED}+ LTS or 6.x kernel"
    )]
    KernelTooOld { release: String },

    #[error("io_uring is disabled on this host (kernel.io_uring_disabled={value}); fix: {FIX_IO_URING_SWITCH}")]
    IoUringDisabled { value: u32 },

    #[error("cannot create an io_uring: {source}; fix: {fix}")]
    IoUringSetup {
        #[source]
        source: io::Error,
        fix: &'static str,
    },

    #[error(
        "locked-memory limit is {} (hard {}) but {executors} executor(s) need >= {}; fix: {FIX_MEMLOCK}",
        format_limit_bytes(*.soft), format_limit_bytes(*.hard), format_bytes(*.need_bytes)
    )]
    MemlockTooLow {
        soft: LimitValue,
        hard: LimitValue,
        need_bytes: u64,
        executors: usize,
    },

    #[error("cannot {action} RLIMIT_MEMLOCK: {source}; fix: {FIX_MEMLOCK}")]
    Rlimit {
        action: &'static str,
        #[source]
        source: io::Error,
    },

    #[error(
        "cannot create data directory {}: {source}; fix: create it and give it to the user running spate \
         (mkdir -p DIR && chown spate: DIR), or pass another --data-dir",
        .path.display()
    )]
    DataDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "O_DIRECT does not work in {} ({}: {source}); fix: put --data-dir on a local XFS or ext4 file system{}",
        .path.display(), .step.as_str(), permission_hint(.source)
    )]
    ODirect {
        path: PathBuf,
        step: ODirectStep,
        #[source]
        source: io::Error,
    },
}

fn permission_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
            " that is writable by the user running spate"
        }
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => " with free space",
        _ => "",
    }
}

/// What [`preflight`] found; the engine logs [`PreflightReport::summary`] at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreflightReport {
    /// The kernel release string (`uname -r`).
    pub kernel: String,
    /// The `RLIMIT_MEMLOCK` soft limit in effect after preflight; `u64::MAX` means unlimited.
    pub memlock_soft_bytes: u64,
    /// Locked memory the executors need at least.
    pub memlock_need_bytes: u64,
    /// Whether preflight raised the soft limit towards the hard limit.
    pub raised_memlock: bool,
    /// `kernel.io_uring_disabled`, if this kernel has the switch (6.6+).
    pub io_uring_disabled: Option<u32>,
    /// The data directory where `O_DIRECT` was proven to work.
    pub data_dir: PathBuf,
    /// Things that work but are worth knowing (old kernel, no room for registered buffers).
    pub notes: Vec<String>,
}

impl PreflightReport {
    /// One line for the engine's start-up log.
    pub fn summary(&self) -> String {
        let soft = if self.memlock_soft_bytes == u64::MAX {
            "unlimited".to_string()
        } else {
            format_bytes(self.memlock_soft_bytes)
        };
        let mut line = format!(
            "preflight ok: kernel {}, io_uring ok, memlock {soft}{} (need {}), O_DIRECT ok in {}",
            self.kernel,
            if self.raised_memlock { " (raised)" } else { "" },
            format_bytes(self.memlock_need_bytes),
            self.data_dir.display()
        );
        for note in &self.notes {
            let _ = write!(line, "; {note}");
        }
        line
    }
}

/// Runs the essential checks: kernel >= 5.8, io_uring not disabled and a ring can actually be
/// set up, `RLIMIT_MEMLOCK` >= `executors * MEMLOCK_PER_EXECUTOR_BYTES` (raising the soft limit
/// up to the hard limit when that helps), and `O_DIRECT` works in `data_dir` (created if
/// missing; a 4 KiB block is written, fdatasync'ed and removed).
///
/// `io_memory_bytes` is each executor's I/O buffer memory: a memlock limit too low to register
/// it is reported in the notes (the buffers then work unregistered).
///
/// `open_files` is how many descriptors the configuration may use (connections and files):
/// the soft `RLIMIT_NOFILE` is raised towards it, up to the hard limit, and a limit still
/// below it is reported in the notes (connections past it are refused at accept).
///
/// # Panics
/// If `executors` is 0: the caller always starts at least one executor.
pub fn preflight(
    data_dir: &Path,
    executors: usize,
    io_memory_bytes: u64,
    open_files: u64,
) -> Result<PreflightReport, PreflightError> {
    assert!(
        executors > 0,
        "preflight needs the number of executors the engine will start"
    );
    let mut notes = Vec::new();

    let kernel = kernel_release();
    if let Some(version) = check_kernel(&kernel)? {
        if version < KERNEL_RECOMMENDED {
            notes.push(format!(
                "kernel {version} works but {KERNEL_RECOMMENDED}+ is recommended"
            ));
        }
    }

    let (soft, hard) = get_memlock().map_err(|source| PreflightError::Rlimit {
        action: "read",
        source,
    })?;
    let need_bytes = memlock_need_bytes(executors);
    let decision = decide_memlock(soft, hard, executors, io_memory_bytes)?;
    let soft_now = match decision {
        MemlockDecision::Keep => soft,
        MemlockDecision::RaiseTo(target) => {
            set_memlock_soft(target, hard).map_err(|source| PreflightError::Rlimit {
                action: "raise",
                source,
            })?;
            target
        }
    };
    let ipc_lock = Host::live()
        .read("/proc/self/status")
        .is_ok_and(|s| has_cap_ipc_lock(&s));
    let recommended = memlock_recommended_bytes(executors, io_memory_bytes);
    if !ipc_lock && !soft_now.at_least(recommended) {
        notes.push(format!(
            "memlock {} is below the {} glommio needs to register its I/O buffers with \
             io_uring: they work unregistered (glommio warns), a page pin per I/O",
            format_limit_bytes(soft_now),
            format_bytes(recommended)
        ));
    }

    let (soft, hard) =
        get_rlimit(libc::RLIMIT_NOFILE).map_err(|source| PreflightError::Rlimit {
            action: "read",
            source,
        })?;
    let (raise, note) = decide_nofile(soft, hard, open_files);
    if let Some(target) = raise {
        set_rlimit_soft(libc::RLIMIT_NOFILE, target, hard).map_err(|source| {
            PreflightError::Rlimit {
                action: "raise",
                source,
            }
        })?;
    }
    notes.extend(note);

    let io_uring_disabled = Host::live()
        .read_value("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|v| v.parse().ok());
    check_io_uring_switch(io_uring_disabled)?;
    probe_io_uring().map_err(|source| {
        let fix = io_uring_setup_fix(source.raw_os_error(), io_uring_disabled);
        PreflightError::IoUringSetup { source, fix }
    })?;

    std::fs::create_dir_all(data_dir).map_err(|source| PreflightError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    probe_o_direct(data_dir).map_err(|e| PreflightError::ODirect {
        path: e.dir,
        step: e.step,
        source: e.source,
    })?;
    notes.extend(online_discard_note(&Host::live(), data_dir));

    Ok(PreflightReport {
        kernel,
        memlock_soft_bytes: match soft_now {
            LimitValue::Unlimited => u64::MAX,
            LimitValue::Value(v) => v,
        },
        memlock_need_bytes: need_bytes,
        raised_memlock: decision != MemlockDecision::Keep,
        io_uring_disabled,
        data_dir: data_dir.to_path_buf(),
        notes,
    })
}

/// A note when the file system holding `data_dir` is mounted with online discard: every large
/// deletion on it stalls fdatasync while its discards run (`spate-tune check`'s `filesystem`).
pub fn online_discard_note(host: &Host, data_dir: &Path) -> Option<String> {
    let info = crate::storage::DataDirInfo::resolve(host, data_dir);
    let mount = info.mount.ok()?;
    mount.has_option("discard").then(|| {
        format!(
            "{} is mounted with `discard`: large deletions on it stall fdatasync, so acknowledgements, while their discards run (mount without it, trim with fstrim.timer; tuning/README.md)",
            mount.mount_point
        )
    })
}

/// Locked memory `executors` executors need at least.
pub fn memlock_need_bytes(executors: usize) -> u64 {
    (executors as u64).saturating_mul(MEMLOCK_PER_EXECUTOR_BYTES)
}

/// Locked memory `executors` executors need to also register `io_memory_bytes` of I/O
/// buffers each.
pub fn memlock_recommended_bytes(executors: usize, io_memory_bytes: u64) -> u64 {
    (executors as u64).saturating_mul(memlock_recommended_per_executor_bytes(io_memory_bytes))
}

/// Refuses kernels older than [`KERNEL_MIN`]. A release string we cannot parse is let through
/// (the io_uring probe is the real test), so exotic version schemes do not block start-up.
pub fn check_kernel(release: &str) -> Result<Option<KernelVersion>, PreflightError> {
    match parse_kernel_version(release) {
        Some(version) if version < KERNEL_MIN => Err(PreflightError::KernelTooOld {
            release: release.trim().to_string(),
        }),
        other => Ok(other),
    }
}

/// Interprets `kernel.io_uring_disabled`: 2 disables io_uring for everyone; 1 restricts it to
/// `CAP_SYS_ADMIN` and `kernel.io_uring_group`, which the ring probe then settles; absent means a
/// kernel before 6.6 without the switch.
pub fn check_io_uring_switch(value: Option<u32>) -> Result<(), PreflightError> {
    match value {
        Some(value) if value >= 2 => Err(PreflightError::IoUringDisabled { value }),
        _ => Ok(()),
    }
}

/// The fix to print when `io_uring_setup` fails with `errno`.
pub fn io_uring_setup_fix(errno: Option<i32>, io_uring_disabled: Option<u32>) -> &'static str {
    match (errno, io_uring_disabled) {
        (Some(libc::EPERM), Some(1)) => {
            "sysctl -w kernel.io_uring_disabled=0, or run spate in the group named by kernel.io_uring_group"
        }
        (Some(libc::EPERM), _) => {
            "a seccomp profile or container runtime blocks io_uring_setup: allow it (e.g. docker \
             --security-opt seccomp=unconfined) or run spate outside the sandbox"
        }
        (Some(libc::ENOSYS), _) => "this kernel is built without CONFIG_IO_URING: boot a kernel that has it",
        (Some(libc::ENOMEM), _) => FIX_MEMLOCK,
        _ => "run `spate-tune check` (tuning/check) for a full diagnosis",
    }
}

/// What to do about `RLIMIT_MEMLOCK`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemlockDecision {
    /// The soft limit is enough (or as good as it can get).
    Keep,
    /// Raise the soft limit to this value (the hard limit).
    RaiseTo(LimitValue),
}

/// Decides whether the memlock limits let `executors` executors start. Below the amount that
/// registers `io_memory_bytes` of buffers each, the soft limit is raised to the hard limit,
/// which any process may do; refusing is left for when even the hard limit is below glommio's
/// minimum.
pub fn decide_memlock(
    soft: LimitValue,
    hard: LimitValue,
    executors: usize,
    io_memory_bytes: u64,
) -> Result<MemlockDecision, PreflightError> {
    let need_bytes = memlock_need_bytes(executors);
    if soft.at_least(memlock_recommended_bytes(executors, io_memory_bytes)) {
        return Ok(MemlockDecision::Keep);
    }
    if hard > soft && hard.at_least(need_bytes) {
        return Ok(MemlockDecision::RaiseTo(hard));
    }
    if soft.at_least(need_bytes) {
        return Ok(MemlockDecision::Keep);
    }
    Err(PreflightError::MemlockTooLow {
        soft,
        hard,
        need_bytes,
        executors,
    })
}

fn to_limit(raw: libc::rlim_t) -> LimitValue {
    if raw == libc::RLIM_INFINITY {
        LimitValue::Unlimited
    } else {
        LimitValue::Value(raw)
    }
}

fn from_limit(limit: LimitValue) -> libc::rlim_t {
    match limit {
        LimitValue::Unlimited => libc::RLIM_INFINITY,
        LimitValue::Value(v) => v,
    }
}

/// What to do about `RLIMIT_NOFILE` when `need` descriptors may be used: the soft limit to
/// raise to (never past the hard limit), and a note when even that is short.
pub fn decide_nofile(
    soft: LimitValue,
    hard: LimitValue,
    need: u64,
) -> (Option<LimitValue>, Option<String>) {
    if soft.at_least(need) {
        return (None, None);
    }
    let target = if hard.at_least(need) {
        LimitValue::Value(need)
    } else {
        hard
    };
    let raise = (target > soft).then_some(target);
    let note = (!hard.at_least(need)).then(|| {
        format!(
            "open-file limit {} is below the {need} the configured connections and files may use \
             (connections past it are refused); raise it with LimitNOFILE in the systemd unit or ulimit -n",
            match hard {
                LimitValue::Unlimited => "unlimited".to_string(),
                LimitValue::Value(v) => v.to_string(),
            }
        )
    });
    (raise, note)
}

fn get_memlock() -> io::Result<(LimitValue, LimitValue)> {
    get_rlimit(libc::RLIMIT_MEMLOCK)
}

fn set_memlock_soft(soft: LimitValue, hard: LimitValue) -> io::Result<()> {
    set_rlimit_soft(libc::RLIMIT_MEMLOCK, soft, hard)
}

fn get_rlimit(resource: libc::__rlimit_resource_t) -> io::Result<(LimitValue, LimitValue)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(resource, &mut rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((to_limit(rl.rlim_cur), to_limit(rl.rlim_max)))
}

fn set_rlimit_soft(
    resource: libc::__rlimit_resource_t,
    soft: LimitValue,
    hard: LimitValue,
) -> io::Result<()> {
    let rl = libc::rlimit {
        rlim_cur: from_limit(soft),
        rlim_max: from_limit(hard),
    };
    // SAFETY: `rl` is a valid rlimit that the kernel only reads.
    if unsafe { libc::setrlimit(resource, &rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `uname -r`, which unlike `/proc/sys/kernel/osrelease` works without `/proc` mounted.
fn kernel_release() -> String {
    // SAFETY: `utsname` is plain old data; all-zero bytes are a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname for the duration of the call.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".to_string();
    }
    // SAFETY: on success the kernel NUL-terminates `release` within the array.
    unsafe { CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;

    #[test]
    fn online_discard_is_noted() {
        let fake = crate::host::fake::FakeHost::new();
        let data = tempfile::tempdir().expect("tempdir");
        let line = |opts: &str| {
            format!(
                "27 1 259:2 / / rw - ext4 /dev/nvme0n1p2 rw\n40 27 259:3 / {} rw,noatime - xfs /dev/nvme1n1 {opts}\n",
                data.path().display()
            )
        };
        fake.file("/proc/self/mountinfo", &line("rw,discard"));
        let note = online_discard_note(&fake.host(), data.path()).expect("a note");
        assert!(note.contains("mounted with `discard`"), "{note}");
        fake.file("/proc/self/mountinfo", &line("rw"));
        assert_eq!(online_discard_note(&fake.host(), data.path()), None);
    }

    #[test]
    fn open_file_limit_is_raised_to_what_the_configuration_needs() {
        use LimitValue::{Unlimited, Value};
        assert_eq!(
            decide_nofile(Value(50_000), Value(50_000), 20_000),
            (None, None)
        );
        assert_eq!(
            decide_nofile(Value(1024), Value(1 << 20), 20_000),
            (Some(Value(20_000)), None)
        );
        assert_eq!(
            decide_nofile(Value(1024), Unlimited, 20_000),
            (Some(Value(20_000)), None)
        );
        let (raise, note) = decide_nofile(Value(1024), Value(4096), 20_000);
        assert_eq!(raise, Some(Value(4096)));
        let note = note.expect("a short hard limit is reported");
        assert!(note.contains("4096") && note.contains("20000"), "{note}");
        let (raise, note) = decide_nofile(Value(4096), Value(4096), 20_000);
        assert_eq!(raise, None);
        assert!(note.is_some());
    }

    #[test]
    fn memlock_too_low_names_both_fixes() {
        let err = decide_memlock(
            LimitValue::Value(64 * KIB),
            LimitValue::Value(64 * KIB),
            2,
            IO_MEMORY_DEFAULT_BYTES,
        )
        .expect_err("too low");
        let text = err.to_string();
        assert_eq!(
            text,
            format!("locked-memory limit is 64 KiB (hard 64 KiB) but 2 executor(s) need >= 1 MiB; fix: {FIX_MEMLOCK}")
        );
        assert!(text.contains("ulimit -l") && text.contains("LimitMEMLOCK"));
        assert!(!text.contains('\n'));
    }

    #[test]
    fn memlock_soft_raised_when_hard_allows() {
        let d = decide_memlock(
            LimitValue::Value(64 * KIB),
            LimitValue::Unlimited,
            4,
            IO_MEMORY_DEFAULT_BYTES,
        )
        .expect("hard allows");
        assert_eq!(d, MemlockDecision::RaiseTo(LimitValue::Unlimited));
        // Enough for glommio but not for registered buffers, and the hard limit has room: raise.
        let d = decide_memlock(
            LimitValue::Value(8 * MIB),
            LimitValue::Value(64 * MIB),
            2,
            IO_MEMORY_DEFAULT_BYTES,
        )
        .expect("ok");
        assert_eq!(d, MemlockDecision::RaiseTo(LimitValue::Value(64 * MIB)));
    }

    #[test]
    fn registering_advice_follows_io_memory() {
        // Three registrations of the pool, plus the rings.
        assert_eq!(memlock_recommended_bytes(2, 4 * MIB), 2 * (3 * 4 + 2) * MIB);
        assert_eq!(
            memlock_recommended_bytes(1, IO_MEMORY_DEFAULT_BYTES),
            386 * MIB
        );
        // 32 MiB registers a 4 MiB pool on two executors: kept. Not a 128 MiB one: the soft
        // limit goes up to the hard limit.
        let (soft, hard) = (LimitValue::Value(32 * MIB), LimitValue::Unlimited);
        assert_eq!(
            decide_memlock(soft, hard, 2, 4 * MIB).expect("ok"),
            MemlockDecision::Keep
        );
        assert_eq!(
            decide_memlock(soft, hard, 2, IO_MEMORY_DEFAULT_BYTES).expect("ok"),
            MemlockDecision::RaiseTo(LimitValue::Unlimited)
        );
    }

    #[test]
    fn memlock_kept_when_enough_or_as_good_as_it_gets() {
        assert_eq!(
            decide_memlock(
                LimitValue::Unlimited,
                LimitValue::Unlimited,
                64,
                IO_MEMORY_DEFAULT_BYTES
            )
            .expect("ok"),
            MemlockDecision::Keep
        );
        // This machine's shape: 8 MiB soft = hard is enough for 2 executors' minimum.
        assert_eq!(
            decide_memlock(
                LimitValue::Value(8 * MIB),
                LimitValue::Value(8 * MIB),
                2,
                IO_MEMORY_DEFAULT_BYTES
            )
            .expect("ok"),
            MemlockDecision::Keep
        );
        // Exactly the minimum passes.
        assert_eq!(
            decide_memlock(
                LimitValue::Value(2 * MIB),
                LimitValue::Value(2 * MIB),
                4,
                IO_MEMORY_DEFAULT_BYTES
            )
            .expect("ok"),
            MemlockDecision::Keep
        );
        // A hard limit above soft but still below the minimum does not help.
        assert!(decide_memlock(
            LimitValue::Value(64 * KIB),
            LimitValue::Value(MIB),
            4,
            IO_MEMORY_DEFAULT_BYTES
        )
        .is_err());
    }

    #[test]
    fn io_uring_switch() {
        let err = check_io_uring_switch(Some(2)).expect_err("disabled");
        let text = err.to_string();
        assert!(
            text.contains("sysctl -w kernel.io_uring_disabled=0"),
            "{text}"
        );
        assert!(text.starts_with("io_uring is disabled on this host (kernel.io_uring_disabled=2)"));
        assert!(check_io_uring_switch(Some(0)).is_ok());
        assert!(
            check_io_uring_switch(Some(1)).is_ok(),
            "1 is settled by the ring probe"
        );
        assert!(
            check_io_uring_switch(None).is_ok(),
            "kernels before 6.6 have no switch"
        );
        assert!(io_uring_setup_fix(Some(libc::EPERM), Some(1)).contains("io_uring_disabled=0"));
        assert!(io_uring_setup_fix(Some(libc::EPERM), Some(0)).contains("seccomp"));
        assert!(io_uring_setup_fix(Some(libc::ENOSYS), None).contains("CONFIG_IO_URING"));
    }

    #[test]
    fn kernel_versions() {
        let err = check_kernel("5.4.0-150-generic").expect_err("5.4 is too old");
        assert_eq!(
            err.to_string(),
            "kernel 5.4.0-150-generic is too old: Spate's io_uring use needs Linux >= 5.8.0; \
             fix: boot a 5.10.0+ LTS or 6.x kernel"
        );
        assert_eq!(
            check_kernel("5.8.0").expect("ok"),
            Some(KernelVersion::new(5, 8, 0))
        );
        assert_eq!(
            check_kernel("6.18.44-fc-v669").expect("ok"),
            Some(KernelVersion::new(6, 18, 44))
        );
        assert_eq!(
            check_kernel("weird").expect("unparsable is let through"),
            None
        );
    }

    #[test]
    fn o_direct_error_is_one_line_with_fix() {
        let err = PreflightError::ODirect {
            path: PathBuf::from("/dev/shm/spate"),
            step: ODirectStep::Open,
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        let text = err.to_string();
        assert!(
            text.starts_with("O_DIRECT does not work in /dev/shm/spate (open with O_DIRECT: "),
            "{text}"
        );
        assert!(
            text.ends_with("fix: put --data-dir on a local XFS or ext4 file system"),
            "{text}"
        );
    }

    /// A tuned host (the dev box: root, 8 MiB memlock, 6.x kernel, ext4) passes. Hosts that lack
    /// io_uring or memlock (some CI sandboxes) must fail with a one-line error rather than panic.
    #[test]
    fn preflight_on_this_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        match preflight(&data_dir, 2, IO_MEMORY_DEFAULT_BYTES, 64) {
            Ok(report) => {
                assert!(!report.kernel.is_empty());
                assert_eq!(report.memlock_need_bytes, MIB);
                assert!(report.memlock_soft_bytes >= MIB);
                assert!(data_dir.is_dir(), "preflight creates the data dir");
                assert_eq!(
                    std::fs::read_dir(&data_dir).expect("read").count(),
                    0,
                    "probe file removed"
                );
                assert!(report.summary().starts_with("preflight ok: kernel "));
            }
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("fix: ") && !text.contains('\n'), "{text}");
                // Set on machines known to be tuned (the dev box) so a regression there fails.
                assert!(
                    std::env::var_os("SPATE_PREFLIGHT_MUST_PASS").is_none(),
                    "preflight refused: {text}"
                );
                eprintln!("preflight refused on this host (allowed unless SPATE_PREFLIGHT_MUST_PASS): {text}");
            }
        }
    }
}
