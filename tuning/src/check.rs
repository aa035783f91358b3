//! `spate-tune check`: inspect the host and give one verdict per item.
//!
//! Each item is a function from what the host shows (through [`Host`]) to a [`Verdict`]: the
//! level, what was found, and the exact command or setting that fixes it. Checks never change
//! the host (the `O_DIRECT` probe writes and removes one file in the data directory) and never
//! panic on what they read: a file that cannot be read becomes an `UNKNOWN` verdict naming it.
//!
//! The list of items is [`ITEMS`]; [`run_checks`] returns exactly one verdict per item, in
//! that order, so the output can be diffed between machines and before/after tuning.

use crate::cpus::CpuSet;
use crate::host::Host;
use crate::irqs::{describe, DeviceIrq, IrqInventory};
use crate::parse::{
    format_bytes, format_limit_bytes, has_cap_ipc_lock, parse_choice, parse_cmdline,
    parse_kernel_version, parse_limits, parse_meminfo, IrqKind, LimitPair, LimitValue,
};
use crate::preflight::{
    check_io_uring_switch, io_uring_setup_fix, memlock_need_bytes, memlock_recommended_bytes,
    IO_MEMORY_DEFAULT_BYTES, KERNEL_MIN, KERNEL_RECOMMENDED,
};
use crate::probe::{probe_io_uring, probe_io_uring_coop_taskrun, probe_o_direct};
use crate::storage::{preferred_schedulers, resolve_disks, DataDirInfo};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// How an item stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Ok,
    /// Works, but costs throughput or tail latency.
    Warn,
    /// The engine will not start, or will not be durable.
    Fail,
    /// Could not be read or probed; the verdict says what.
    Unknown,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
            Level::Unknown => "UNKNOWN",
        }
    }
}

/// The outcome of one item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub item: &'static str,
    pub level: Level,
    pub found: String,
    pub fix: Option<String>,
}

impl Verdict {
    fn new(
        item: &'static str,
        level: Level,
        found: impl Into<String>,
        fix: Option<String>,
    ) -> Self {
        Self {
            item,
            level,
            found: found.into(),
            fix,
        }
    }
    fn ok(item: &'static str, found: impl Into<String>) -> Self {
        Self::new(item, Level::Ok, found, None)
    }
    fn warn(item: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(item, Level::Warn, found, Some(fix.into()))
    }
    fn fail(item: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(item, Level::Fail, found, Some(fix.into()))
    }
    fn unknown(item: &'static str, found: impl Into<String>, fix: Option<String>) -> Self {
        Self::new(item, Level::Unknown, found, fix)
    }
}

/// Width of the item column: the longest item name plus a space.
const ITEM_WIDTH: usize = 15;

/// `FAIL    memlock         found 64 KiB soft limit, ...   fix: ulimit -l unlimited, ...`
impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<7} {:<ITEM_WIDTH$} {}",
            self.level.as_str(),
            self.item,
            self.found
        )?;
        if let Some(fix) = &self.fix {
            write!(f, "   fix: {fix}")?;
        }
        Ok(())
    }
}

/// Every item, in output order.
pub const ITEMS: &[&str] = &[
    "cores",
    "kernel",
    "io_uring",
    "memlock",
    "filesystem",
    "o_direct",
    "scheduler",
    "queue-depth",
    "governor",
    "smt",
    "isolation",
    "irq-nic",
    "irq-nvme",
    "thp",
    "swappiness",
    "somaxconn",
    "socket-buffers",
    "nofile",
    "clocksource",
];

/// What to check the host for.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    pub data_dir: PathBuf,
    /// The engine's cores (`spate serve --cores`); `None` means all online cores.
    pub engine_cores: Option<CpuSet>,
    /// Cores reserved for NIC and NVMe interrupts.
    pub irq_cores: Option<CpuSet>,
    /// Only this interface's IRQs count as the NIC's.
    pub nic: Option<String>,
}

/// Minimum `net.core.somaxconn`: bursts of producer connects beyond the accept queue are
/// dropped and retried by the client after a full second.
pub const SOMAXCONN_MIN: u64 = 4096;
/// Minimum `net.core.rmem_max` / `wmem_max`, so 10 MiB batches fit in one socket buffer.
pub const SOCKET_BUFFER_MAX_MIN_BYTES: u64 = 16 * 1024 * 1024;
/// Minimum open-file soft limit: every connection, segment and index is a descriptor.
pub const NOFILE_MIN: u64 = 65536;
/// Below this many requests per queue, the block layer makes the engine's writes wait.
pub const QUEUE_DEPTH_MIN: u64 = 32;

/// Everything the items share, read once.
struct Ctx<'a> {
    host: &'a Host,
    config: &'a CheckConfig,
    online: Result<CpuSet, String>,
    engine: CpuSet,
    limits: Result<BTreeMap<String, LimitPair>, String>,
    data: DataDirInfo,
    irqs: Result<IrqInventory, String>,
}

impl Ctx<'_> {
    fn executors(&self) -> usize {
        self.engine.len().max(1)
    }

    /// The layout to put in fixes: the engine cores and IRQ cores as given (if apart);
    /// else the online cores the engine leaves free for IRQs; else (engine on every core) all but the first
    /// core for the engine and the first for IRQs.
    fn suggested_layout(&self) -> Option<(CpuSet, CpuSet)> {
        // IRQ cores that overlap the engine's are refused (the `cores` item says so), not
        // recommended back by every other item's fix.
        if let Some(irq) = self
            .config
            .irq_cores
            .as_ref()
            .filter(|irq| irq.intersection(&self.engine).is_empty())
        {
            return Some((self.engine.clone(), irq.clone()));
        }
        let online = self.online.as_ref().ok()?;
        let spare = online.difference(&self.engine);
        if !spare.is_empty() {
            return Some((self.engine.clone(), spare));
        }
        let first = CpuSet::from_cpus(online.iter().take(1));
        let rest = online.difference(&first);
        (!rest.is_empty()).then_some((rest, first))
    }

    /// `tuning/apply --engine-cores E --irq-cores I`, or advice to make room first.
    fn apply_command(&self) -> String {
        match self.suggested_layout() {
            Some((engine, irq)) => {
                format!("tuning/apply --engine-cores {engine} --irq-cores {irq}")
            }
            None => {
                "leave a core for IRQs first, then run tuning/apply --engine-cores E --irq-cores I"
                    .to_string()
            }
        }
    }
}

/// Runs every check against `host`; one verdict per entry of [`ITEMS`], in that order.
pub fn run_checks(host: &Host, config: &CheckConfig) -> Vec<Verdict> {
    let online = host
        .read_value("/sys/devices/system/cpu/online")
        .map_err(|e| e.to_string())
        .and_then(|t| CpuSet::parse(&t).map_err(|e| e.to_string()));
    let engine = config
        .engine_cores
        .clone()
        .unwrap_or_else(|| online.clone().unwrap_or_default());
    let ctx = Ctx {
        host,
        config,
        limits: host
            .read("/proc/self/limits")
            .map(|t| parse_limits(&t))
            .map_err(|e| e.to_string()),
        data: DataDirInfo::resolve(host, &config.data_dir),
        irqs: IrqInventory::read(host, config.nic.as_deref()),
        online,
        engine,
    };
    let checks: [fn(&Ctx) -> Verdict; 19] = [
        check_cores,
        check_kernel,
        check_io_uring,
        check_memlock,
        check_filesystem,
        check_o_direct,
        check_scheduler,
        check_queue_depth,
        check_governor,
        check_smt,
        check_isolation,
        check_irq_nic,
        check_irq_nvme,
        check_thp,
        check_swappiness,
        check_somaxconn,
        check_socket_buffers,
        check_nofile,
        check_clocksource,
    ];
    let verdicts: Vec<Verdict> = checks.iter().map(|check| check(&ctx)).collect();
    debug_assert_eq!(verdicts.iter().map(|v| v.item).collect::<Vec<_>>(), ITEMS);
    verdicts
}

/// 1 if any item failed, else 0.
pub fn exit_code(verdicts: &[Verdict]) -> i32 {
    i32::from(verdicts.iter().any(|v| v.level == Level::Fail))
}

/// `12 OK, 5 WARN, 0 FAIL, 2 UNKNOWN`.
pub fn summary(verdicts: &[Verdict]) -> String {
    let count = |level| verdicts.iter().filter(|v| v.level == level).count();
    format!(
        "{} OK, {} WARN, {} FAIL, {} UNKNOWN",
        count(Level::Ok),
        count(Level::Warn),
        count(Level::Fail),
        count(Level::Unknown)
    )
}

fn check_cores(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "cores";
    let online = match &ctx.online {
        Ok(online) => online,
        Err(e) => {
            return Verdict::unknown(
                ITEM,
                format!("{e}; engine cores {}", ctx.engine),
                Some("pass --cores".into()),
            )
        }
    };
    if ctx.engine.is_empty() {
        return Verdict::fail(
            ITEM,
            "no engine cores",
            "pass --cores with at least one online core",
        );
    }
    let offline = ctx.engine.difference(online);
    if !offline.is_empty() {
        return Verdict::fail(
            ITEM,
            format!("engine cores {offline} are not online (online: {online})"),
            format!("choose --cores from {online}"),
        );
    }
    if let Some(irq) = &ctx.config.irq_cores {
        let offline = irq.difference(online);
        if !offline.is_empty() {
            return Verdict::fail(
                ITEM,
                format!("IRQ cores {offline} are not online"),
                format!("choose from {online}"),
            );
        }
        let shared = irq.intersection(&ctx.engine);
        if !shared.is_empty() {
            return Verdict::fail(
                ITEM,
                format!("cores {shared} are both engine and IRQ cores"),
                "give interrupts cores of their own: --irq-cores must not overlap --cores",
            );
        }
    }
    let found = format!(
        "engine {} ({} executor(s)), IRQs {}, online {online}",
        ctx.engine,
        ctx.engine.len(),
        ctx.config
            .irq_cores
            .as_ref()
            .map_or("not given".to_string(), |c| c.to_string())
    );
    if ctx.engine == *online && online.len() > 1 {
        let fix = match ctx.suggested_layout() {
            Some((engine, irq)) => {
                format!("leave housekeeping cores, e.g. spate serve --cores {engine} with IRQs on {irq} (tuning/README.md: core layout)")
            }
            None => "leave housekeeping cores (tuning/README.md: core layout)".to_string(),
        };
        return Verdict::warn(
            ITEM,
            format!("{found}: the engine shares every core with IRQs, the kernel and the loadgen"),
            fix,
        );
    }
    Verdict::ok(ITEM, found)
}

fn check_kernel(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "kernel";
    let release = match ctx.host.read_value("/proc/sys/kernel/osrelease") {
        Ok(r) => r,
        Err(e) => {
            return Verdict::unknown(
                ITEM,
                e.to_string(),
                Some("check `uname -r` is >= 5.10".into()),
            )
        }
    };
    match parse_kernel_version(&release) {
        None => Verdict::unknown(ITEM, format!("cannot parse release {release:?}"), None),
        Some(v) if v < KERNEL_MIN => Verdict::fail(
            ITEM,
            format!("{release}: io_uring as glommio uses it needs >= {KERNEL_MIN}"),
            format!("boot a {KERNEL_RECOMMENDED}+ LTS or 6.x kernel"),
        ),
        Some(v) if v < KERNEL_RECOMMENDED => Verdict::warn(
            ITEM,
            format!("{release}: works, but io_uring fixes landed in {KERNEL_RECOMMENDED}"),
            format!("boot a {KERNEL_RECOMMENDED}+ LTS or 6.x kernel"),
        ),
        Some(_) => Verdict::ok(ITEM, release),
    }
}

fn check_io_uring(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "io_uring";
    let switch = ctx.host.read_value("/proc/sys/kernel/io_uring_disabled");
    let disabled: Option<u32> = switch.as_ref().ok().and_then(|v| v.parse().ok());
    let switch_text = match (&switch, disabled) {
        (Ok(_), Some(v)) => format!("kernel.io_uring_disabled={v}"),
        (Err(e), _) if e.not_found => {
            "no kernel.io_uring_disabled switch (kernel < 6.6)".to_string()
        }
        (Err(e), _) => e.to_string(),
        (Ok(raw), None) => format!("kernel.io_uring_disabled={raw:?} (not a number)"),
    };
    if let Err(e) = check_io_uring_switch(disabled) {
        return Verdict::fail(
            ITEM,
            switch_text,
            e.to_string().split("fix: ").nth(1).unwrap_or_default(),
        );
    }
    if !ctx.host.is_live() {
        return Verdict::unknown(
            ITEM,
            format!("{switch_text}; ring setup not tried (not the live host)"),
            None,
        );
    }
    match probe_io_uring() {
        Err(e) => Verdict::fail(
            ITEM,
            format!("{switch_text}; io_uring_setup failed: {e}"),
            io_uring_setup_fix(e.raw_os_error(), disabled),
        ),
        Ok(()) if disabled == Some(1) => Verdict::warn(
            ITEM,
            format!("{switch_text}: rings work for this user (root or kernel.io_uring_group) but may not for the service user"),
            "sysctl -w kernel.io_uring_disabled=0, or run spate in the group named by kernel.io_uring_group",
        ),
        Ok(()) => match probe_io_uring_coop_taskrun() {
            Ok(()) => Verdict::ok(
                ITEM,
                format!("{switch_text}; ring setup works, with IORING_SETUP_COOP_TASKRUN too"),
            ),
            Err(e) => Verdict::warn(
                ITEM,
                format!(
                    "{switch_text}; ring setup works, but not with IORING_SETUP_COOP_TASKRUN ({e}): \
                     io_uring_coop_taskrun falls back to plain rings, and completions interrupt \
                     the engine's cores (an IPI each; tuning/README.md, \"Interrupts\")"
                ),
                "Linux 5.19 or later",
            ),
        },
    }
}

fn check_memlock(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "memlock";
    const FIX: &str =
        "ulimit -l unlimited, or LimitMEMLOCK=infinity in the unit (tuning/spate.service), \
                       or tuning/limits/99-spate.conf in /etc/security/limits.d";
    let limits = match &ctx.limits {
        Ok(l) => l,
        Err(e) => return Verdict::unknown(ITEM, e.clone(), Some("check `ulimit -l`".into())),
    };
    let Some(pair) = limits.get("Max locked memory") else {
        return Verdict::unknown(
            ITEM,
            "no 'Max locked memory' row in /proc/self/limits",
            None,
        );
    };
    let executors = ctx.executors();
    let need = memlock_need_bytes(executors);
    // (For the default `io_memory_bytes`; a configuration with less needs less.)
    let recommended = memlock_recommended_bytes(executors, IO_MEMORY_DEFAULT_BYTES);
    let found = format!(
        "soft {}, hard {} (this shell); {executors} executor(s) need >= {}, {} to register I/O buffers",
        format_limit_bytes(pair.soft),
        format_limit_bytes(pair.hard),
        format_bytes(need),
        format_bytes(recommended)
    );
    let ipc_lock = ctx
        .host
        .read("/proc/self/status")
        .is_ok_and(|s| has_cap_ipc_lock(&s));
    if !pair.hard.at_least(need) {
        Verdict::fail(ITEM, found, FIX)
    } else if !pair.soft.at_least(need) {
        Verdict::warn(
            ITEM,
            format!("{found}; the engine raises the soft limit at start"),
            FIX,
        )
    } else if ipc_lock && !pair.hard.at_least(recommended) {
        Verdict::ok(
            ITEM,
            format!(
                "{found}; this shell has CAP_IPC_LOCK so io_uring charges nothing \
                 (a non-root service user still needs LimitMEMLOCK=infinity)"
            ),
        )
    } else if !pair.hard.at_least(recommended) {
        Verdict::warn(
            ITEM,
            format!("{found}; glommio will fall back to unregistered buffers"),
            FIX,
        )
    } else {
        Verdict::ok(ITEM, found)
    }
}

fn check_filesystem(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "filesystem";
    let mount = match &ctx.data.mount {
        Ok(m) => m,
        Err(e) => {
            return Verdict::unknown(ITEM, e.clone(), Some("check `findmnt -T DATA_DIR`".into()))
        }
    };
    let found = format!(
        "{} is on {} ({}, mounted at {})",
        ctx.data.where_probed(),
        mount.fs_type,
        mount.source,
        mount.mount_point
    );
    const MOVE: &str = "put --data-dir on a local XFS (preferred) or ext4 file system on NVMe";
    match mount.fs_type.as_str() {
        "xfs" | "ext4" if mount.has_option("discard") => Verdict::warn(
            ITEM,
            format!(
                "{found}, with online discard: every large deletion on it (an old data directory, another program's files) stalls fdatasync while its discards run (up to 136 ms for ~2 s after removing 4 GiB on the development VM)"
            ),
            "mount without `discard` and trim periodically instead (`systemctl enable --now fstrim.timer`)",
        ),
        "xfs" | "ext4" => Verdict::ok(ITEM, found),
        "tmpfs" | "ramfs" | "devtmpfs" => Verdict::fail(
            ITEM,
            format!("{found}: memory, not durable across a reboot"),
            MOVE,
        ),
        "btrfs" | "zfs" | "bcachefs" => Verdict::warn(
            ITEM,
            format!("{found}: copy-on-write doubles writes and slows fdatasync"),
            MOVE,
        ),
        "nfs" | "nfs4" | "cifs" | "smb3" | "9p" | "virtiofs" | "ceph" | "glusterfs" | "fuse" => {
            Verdict::warn(
                ITEM,
                format!("{found}: network file system, fdatasync crosses the network"),
                MOVE,
            )
        }
        "overlay" => Verdict::warn(
            ITEM,
            format!("{found}: container layer; use a volume"),
            MOVE,
        ),
        other if other.starts_with("fuse") => {
            Verdict::warn(ITEM, format!("{found}: FUSE adds a user-space hop"), MOVE)
        }
        _ => Verdict::warn(ITEM, format!("{found}: not tested with Spate"), MOVE),
    }
}

fn check_o_direct(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "o_direct";
    let Some(dir) = &ctx.data.probe_dir else {
        return Verdict::unknown(
            ITEM,
            format!(
                "no existing directory above {}",
                ctx.data.requested.display()
            ),
            None,
        );
    };
    match probe_o_direct(dir) {
        Ok(()) => Verdict::ok(
            ITEM,
            format!(
                "4 KiB O_DIRECT write + fdatasync works in {}",
                ctx.data.where_probed()
            ),
        ),
        Err(e) if e.is_permission() => Verdict::unknown(
            ITEM,
            format!(
                "cannot write a probe file in {}: {}",
                ctx.data.where_probed(),
                e.source
            ),
            Some("rerun as root or as the user spate runs as".into()),
        ),
        Err(e) => Verdict::fail(
            ITEM,
            format!("{e}"),
            if e.is_unsupported() {
                "put --data-dir on a local XFS or ext4 file system (this one refuses O_DIRECT)"
            } else {
                "fix the file system or pick another --data-dir"
            },
        ),
    }
}

/// The data dir's disks, or a verdict saying why there are none.
fn disks(ctx: &Ctx, item: &'static str) -> Result<Vec<String>, Verdict> {
    let mount = ctx
        .data
        .mount
        .as_ref()
        .map_err(|e| Verdict::unknown(item, e.clone(), None))?;
    resolve_disks(ctx.host, mount).map_err(|e| Verdict::unknown(item, e, None))
}

fn check_scheduler(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "scheduler";
    let disks = match disks(ctx, ITEM) {
        Ok(d) => d,
        Err(v) => return v,
    };
    let mut found = Vec::new();
    let mut fixes = Vec::new();
    let mut unknown = false;
    for disk in &disks {
        let path = format!("/sys/block/{disk}/queue/scheduler");
        let choice = ctx.host.read(&path).ok().and_then(|t| parse_choice(&t));
        let Some(choice) = choice else {
            found.push(format!("{disk}: cannot read {path}"));
            unknown = true;
            continue;
        };
        let rotational = ctx
            .host
            .read_u64(&format!("/sys/block/{disk}/queue/rotational"))
            .is_ok_and(|r| r == 1);
        let preferred = preferred_schedulers(disk, rotational);
        found.push(format!("{disk}: {}", choice.selected));
        if !preferred.contains(&choice.selected.as_str()) {
            fixes.push(format!("echo {} > {path}", preferred[0]));
        }
    }
    let found = found.join(", ");
    if !fixes.is_empty() {
        Verdict::warn(
            ITEM,
            found,
            format!(
                "{} (tuning/apply does it at every boot via spate-tune.service)",
                fixes.join("; ")
            ),
        )
    } else if unknown {
        Verdict::unknown(ITEM, found, None)
    } else {
        Verdict::ok(ITEM, found)
    }
}

fn check_queue_depth(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "queue-depth";
    let disks = match disks(ctx, ITEM) {
        Ok(d) => d,
        Err(v) => return v,
    };
    let mut found = Vec::new();
    let mut shallow = Vec::new();
    for disk in &disks {
        let nr_requests = ctx
            .host
            .read_u64(&format!("/sys/block/{disk}/queue/nr_requests"));
        let hw_queues = ctx
            .host
            .list_dir(&format!("/sys/block/{disk}/mq"))
            .map(|q| q.len())
            .unwrap_or(0);
        let tags = ctx
            .host
            .read_u64(&format!("/sys/block/{disk}/mq/0/nr_tags"))
            .ok();
        let hw = match tags {
            Some(tags) => format!(", {hw_queues} hw queue(s) x {tags} tags"),
            None => String::new(),
        };
        match nr_requests {
            Ok(n) => {
                found.push(format!("{disk}: nr_requests {n}{hw}"));
                if n < QUEUE_DEPTH_MIN {
                    shallow.push(format!(
                        "echo {} > /sys/block/{disk}/queue/nr_requests",
                        tags.unwrap_or(QUEUE_DEPTH_MIN).max(QUEUE_DEPTH_MIN)
                    ));
                }
            }
            Err(e) => return Verdict::unknown(ITEM, e.to_string(), None),
        }
    }
    if shallow.is_empty() {
        Verdict::ok(ITEM, found.join(", "))
    } else {
        Verdict::warn(
            ITEM,
            format!(
                "{} (< {QUEUE_DEPTH_MIN} requests in flight)",
                found.join(", ")
            ),
            shallow.join("; "),
        )
    }
}

fn check_governor(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "governor";
    let mut by_governor: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut unreadable = Vec::new();
    for cpu in ctx.engine.iter() {
        match ctx.host.read_value(&format!(
            "/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"
        )) {
            Ok(g) => by_governor.entry(g).or_default().push(cpu),
            Err(_) => unreadable.push(cpu),
        }
    }
    if by_governor.is_empty() {
        return Verdict::unknown(
            ITEM,
            "no cpufreq governor exposed (virtual machine, or frequency owned by firmware)",
            Some("on bare metal set the BIOS/UEFI power profile to maximum performance".into()),
        );
    }
    let mut parts: Vec<String> = by_governor
        .iter()
        .map(|(g, cpus)| format!("{g} on {}", CpuSet::from_cpus(cpus.iter().copied())))
        .collect();
    if !unreadable.is_empty() {
        parts.push(format!("unreadable on {}", CpuSet::from_cpus(unreadable)));
    }
    let found = parts.join(", ");
    if by_governor.keys().all(|g| g == "performance") {
        Verdict::ok(ITEM, found)
    } else {
        Verdict::warn(
            ITEM,
            format!("{found}: ramping up from a low clock adds tens of microseconds after every idle gap"),
            "cpupower frequency-set -g performance (tuning/apply does it)",
        )
    }
}

fn check_smt(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "smt";
    let active = ctx.host.read_value("/sys/devices/system/cpu/smt/active");
    if active.as_deref() == Ok("0") {
        return Verdict::ok(ITEM, "SMT off (one hardware thread per core)");
    }
    let mut shared_engine = Vec::new();
    let mut shared_irq = Vec::new();
    let mut siblings_all = CpuSet::new();
    for cpu in ctx.engine.iter() {
        let path = format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list");
        let siblings = match ctx
            .host
            .read(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| CpuSet::parse(&t).map_err(|e| e.to_string()))
        {
            Ok(s) => s.difference(&CpuSet::from_cpus([cpu])),
            Err(e) => return Verdict::unknown(ITEM, e, None),
        };
        for sibling in siblings.iter() {
            if ctx.engine.contains(sibling) && sibling > cpu {
                shared_engine.push(format!("{cpu}+{sibling}"));
            }
            if ctx
                .config
                .irq_cores
                .as_ref()
                .is_some_and(|irq| irq.contains(sibling))
            {
                shared_irq.push(format!("{cpu}+{sibling}"));
            }
        }
        siblings_all = siblings_all.union(&siblings);
    }
    let state = match active.as_deref() {
        Ok("1") => "SMT on",
        _ => "SMT state unknown",
    };
    const FIX: &str = "use one hardware thread per physical core for --cores (see thread_siblings_list), \
                       or turn SMT off: echo off > /sys/devices/system/cpu/smt/control (nosmt at boot)";
    if !shared_engine.is_empty() {
        Verdict::warn(
            ITEM,
            format!(
                "{state}: engine cores share physical cores ({})",
                shared_engine.join(", ")
            ),
            FIX,
        )
    } else if !shared_irq.is_empty() {
        Verdict::warn(
            ITEM,
            format!(
                "{state}: engine cores share physical cores with IRQ cores ({})",
                shared_irq.join(", ")
            ),
            FIX,
        )
    } else if siblings_all.is_empty() {
        Verdict::ok(
            ITEM,
            format!("{state}; engine cores have no sibling threads"),
        )
    } else {
        Verdict::ok(
            ITEM,
            format!(
                "{state}; keep the engine cores' siblings {siblings_all} idle (no loadgen there)"
            ),
        )
    }
}

fn check_isolation(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "isolation";
    let cmdline = match ctx.host.read("/proc/cmdline") {
        Ok(c) => c,
        Err(e) => return Verdict::unknown(ITEM, e.to_string(), None),
    };
    let params = parse_cmdline(&cmdline);
    let show = |set: &Option<CpuSet>| set.as_ref().map_or("-".to_string(), |s| s.to_string());
    let mut found = format!(
        "isolcpus={} nohz_full={}",
        show(&params.isolcpus),
        show(&params.nohz_full)
    );
    if !params.problems.is_empty() {
        found.push_str(&format!(" (unparsed: {})", params.problems.join("; ")));
    }
    let missing = |set: &Option<CpuSet>| {
        ctx.engine
            .difference(set.as_ref().unwrap_or(&CpuSet::new()))
    };
    let not_isolated = missing(&params.isolcpus).union(&missing(&params.nohz_full));
    if not_isolated.is_empty() && !ctx.engine.is_empty() {
        let mut found = format!("{found} cover engine cores {}", ctx.engine);
        if !params.isolcpus_flags.iter().any(|f| f == "managed_irq") {
            found.push_str(" (add the managed_irq flag to keep managed IRQs off them too)");
        }
        return Verdict::ok(ITEM, found);
    }
    let fix = match ctx.suggested_layout() {
        Some((e, hk)) => format!(
            "add `isolcpus=managed_irq,domain,{e} nohz_full={e} rcu_nocbs={e} irqaffinity={hk}` to \
             GRUB_CMDLINE_LINUX in /etc/default/grub, update-grub (or grub2-mkconfig), reboot"
        ),
        None => {
            "a single core cannot be isolated from itself: use a host with a core for the kernel"
                .into()
        }
    };
    Verdict::warn(
        ITEM,
        format!("{found}: engine cores {not_isolated} still run the tick and other tasks"),
        fix,
    )
}

fn irq_verdict_inputs<'a>(ctx: &'a Ctx, item: &'static str) -> Result<&'a IrqInventory, Verdict> {
    ctx.irqs
        .as_ref()
        .map_err(|e| Verdict::unknown(item, e.clone(), None))
}

/// IRQs that may land on engine cores, or (when IRQ cores were given) outside them.
fn misplaced<'a>(
    ctx: &Ctx,
    irqs: impl Iterator<Item = &'a DeviceIrq>,
) -> (Vec<&'a DeviceIrq>, Vec<&'a DeviceIrq>) {
    let mut bad = Vec::new();
    let mut unreadable = Vec::new();
    for irq in irqs {
        match &irq.affinity {
            Err(_) => unreadable.push(irq),
            Ok(aff) => {
                let on_engine = !aff.intersection(&ctx.engine).is_empty();
                let off_irq_cores = ctx
                    .config
                    .irq_cores
                    .as_ref()
                    .is_some_and(|c| !aff.is_subset(c));
                if on_engine || off_irq_cores {
                    bad.push(irq);
                }
            }
        }
    }
    (bad, unreadable)
}

fn check_irq_nic(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "irq-nic";
    let inv = match irq_verdict_inputs(ctx, ITEM) {
        Ok(i) => i,
        Err(v) => return v,
    };
    let nic: Vec<&DeviceIrq> = inv.of_kind(IrqKind::Nic).collect();
    if nic.is_empty() {
        return Verdict::unknown(
            ITEM,
            format!(
                "no NIC queue IRQs found in /proc/interrupts{}",
                ctx.config
                    .nic
                    .as_ref()
                    .map_or(String::new(), |n| format!(" for {n}"))
            ),
            Some("pass --nic IFACE if the NIC names its IRQs unusually".into()),
        );
    }
    let (bad, unreadable) = misplaced(ctx, nic.iter().copied());
    let balance = if inv.irqbalance_running {
        "; irqbalance is running and moves IRQs back"
    } else {
        ""
    };
    if !bad.is_empty() {
        let engine = ctx
            .suggested_layout()
            .map_or(ctx.engine.clone(), |(engine, _)| engine);
        return Verdict::warn(
            ITEM,
            format!(
                "{} of {} NIC IRQs can land on engine cores {}: {}{balance}",
                bad.len(),
                nic.len(),
                ctx.engine,
                describe(&bad, 3)
            ),
            if inv.irqbalance_running {
                format!(
                    "{} (writes /proc/irq/N/smp_affinity_list); and systemctl disable --now irqbalance, \
                     or IRQBALANCE_BANNED_CPULIST={engine}",
                    ctx.apply_command()
                )
            } else {
                format!(
                    "{} (writes /proc/irq/N/smp_affinity_list)",
                    ctx.apply_command()
                )
            },
        );
    }
    if !unreadable.is_empty() {
        return Verdict::unknown(
            ITEM,
            format!("cannot read the affinity of {}", describe(&unreadable, 3)),
            None,
        );
    }
    Verdict::ok(
        ITEM,
        format!(
            "{} NIC IRQs off the engine cores: {}{balance}",
            nic.len(),
            describe(&nic, 3)
        ),
    )
}

fn check_irq_nvme(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "irq-nvme";
    let inv = match irq_verdict_inputs(ctx, ITEM) {
        Ok(i) => i,
        Err(v) => return v,
    };
    let io: Vec<&DeviceIrq> = inv.of_kind(IrqKind::NvmeIo).collect();
    let admin: Vec<&DeviceIrq> = inv.of_kind(IrqKind::NvmeAdmin).collect();
    if io.is_empty() && admin.is_empty() {
        return Verdict::ok(ITEM, "no NVMe queue IRQs on this host");
    }
    // I/O queue IRQs are kernel-managed and follow the CPUs that submit to them, so the engine
    // core's own completions land on it (no cross-core wake-up); what matters is that each
    // engine core has a queue of its own.
    let own_queue: Vec<u32> = ctx
        .engine
        .iter()
        .filter(|cpu| {
            io.iter().any(|q| {
                q.affinity
                    .as_ref()
                    .is_ok_and(|a| a.len() == 1 && a.contains(*cpu))
            })
        })
        .collect();
    let found = format!(
        "{} I/O queue IRQs (kernel-managed, follow the submitting CPU; engine cores with a queue of their own: {}), \
         admin queue {}",
        io.len(),
        if own_queue.is_empty() { "none".to_string() } else { CpuSet::from_cpus(own_queue).to_string() },
        describe(&admin, 2)
    );
    let (bad_admin, _) = misplaced(ctx, admin.iter().copied());
    if !bad_admin.is_empty() {
        return Verdict::warn(
            ITEM,
            found,
            format!("{} moves the admin queue IRQ", ctx.apply_command()),
        );
    }
    Verdict::ok(ITEM, found)
}

fn check_thp(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "thp";
    const PATH: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
    match ctx.host.read(PATH) {
        Err(e) if e.not_found => {
            Verdict::ok(ITEM, "transparent huge pages not built into this kernel")
        }
        Err(e) => Verdict::unknown(ITEM, e.to_string(), None),
        Ok(text) => match parse_choice(&text) {
            None => Verdict::unknown(
                ITEM,
                format!("cannot parse {PATH}: {:?}", text.trim()),
                None,
            ),
            Some(c) if c.selected == "always" => Verdict::warn(
                ITEM,
                "enabled [always]: page faults and khugepaged compaction stall for milliseconds",
                format!("echo never > {PATH} (tuning/apply does it)"),
            ),
            Some(c) => Verdict::ok(ITEM, format!("enabled [{}]", c.selected)),
        },
    }
}

fn check_swappiness(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "swappiness";
    let swappiness = match ctx.host.read_u64("/proc/sys/vm/swappiness") {
        Ok(s) => s,
        Err(e) => return Verdict::unknown(ITEM, e.to_string(), None),
    };
    let swap_bytes = ctx
        .host
        .read("/proc/meminfo")
        .ok()
        .and_then(|m| parse_meminfo(&m).get("SwapTotal").copied());
    match swap_bytes {
        Some(0) => Verdict::ok(ITEM, format!("vm.swappiness={swappiness}, no swap configured")),
        _ if swappiness <= 1 => Verdict::ok(ITEM, format!("vm.swappiness={swappiness}")),
        swap => Verdict::warn(
            ITEM,
            format!(
                "vm.swappiness={swappiness} with {} swap: the kernel may page out engine memory under page-cache pressure",
                swap.map_or("unknown".to_string(), format_bytes)
            ),
            "sysctl -w vm.swappiness=1 (tuning/sysctl/99-spate.conf)",
        ),
    }
}

fn check_somaxconn(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "somaxconn";
    match ctx.host.read_u64("/proc/sys/net/core/somaxconn") {
        Err(e) => Verdict::unknown(ITEM, e.to_string(), None),
        Ok(v) if v >= SOMAXCONN_MIN => Verdict::ok(ITEM, format!("net.core.somaxconn={v}")),
        Ok(v) => Verdict::warn(
            ITEM,
            format!("net.core.somaxconn={v}: a burst of producer connects overflows the accept queue (1 s SYN retry)"),
            format!("sysctl -w net.core.somaxconn={SOMAXCONN_MIN} (tuning/sysctl/99-spate.conf)"),
        ),
    }
}

fn check_socket_buffers(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "socket-buffers";
    let rmem = ctx.host.read_u64("/proc/sys/net/core/rmem_max");
    let wmem = ctx.host.read_u64("/proc/sys/net/core/wmem_max");
    let (rmem, wmem) = match (rmem, wmem) {
        (Ok(r), Ok(w)) => (r, w),
        (Err(e), _) | (_, Err(e)) => return Verdict::unknown(ITEM, e.to_string(), None),
    };
    let found = format!(
        "net.core.rmem_max={} wmem_max={}",
        format_bytes(rmem),
        format_bytes(wmem)
    );
    if rmem >= SOCKET_BUFFER_MAX_MIN_BYTES && wmem >= SOCKET_BUFFER_MAX_MIN_BYTES {
        Verdict::ok(ITEM, found)
    } else {
        Verdict::warn(
            ITEM,
            format!("{found}: below {} a 10 MiB batch needs several round trips of window", format_bytes(SOCKET_BUFFER_MAX_MIN_BYTES)),
            format!(
                "sysctl -w net.core.rmem_max={SOCKET_BUFFER_MAX_MIN_BYTES} net.core.wmem_max={SOCKET_BUFFER_MAX_MIN_BYTES} \
                 (tuning/sysctl/99-spate.conf)"
            ),
        )
    }
}

fn check_nofile(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "nofile";
    let limits = match &ctx.limits {
        Ok(l) => l,
        Err(e) => return Verdict::unknown(ITEM, e.clone(), None),
    };
    let Some(pair) = limits.get("Max open files") else {
        return Verdict::unknown(ITEM, "no 'Max open files' row in /proc/self/limits", None);
    };
    let show = |l: LimitValue| match l {
        LimitValue::Unlimited => "unlimited".to_string(),
        LimitValue::Value(v) => v.to_string(),
    };
    let found = format!(
        "soft {}, hard {} (this shell)",
        show(pair.soft),
        show(pair.hard)
    );
    if pair.soft.at_least(NOFILE_MIN) {
        Verdict::ok(ITEM, found)
    } else {
        Verdict::warn(
            ITEM,
            format!("{found}: below {NOFILE_MIN}, connections and segment files run out"),
            "ulimit -n 1048576, or LimitNOFILE=1048576 in the unit (tuning/spate.service), or tuning/limits/99-spate.conf",
        )
    }
}

fn check_clocksource(ctx: &Ctx) -> Verdict {
    const ITEM: &str = "clocksource";
    const BASE: &str = "/sys/devices/system/clocksource/clocksource0";
    let current = match ctx.host.read_value(&format!("{BASE}/current_clocksource")) {
        Ok(c) => c,
        Err(e) => return Verdict::unknown(ITEM, e.to_string(), None),
    };
    // tsc (x86) and arch_sys_counter (arm64) are read in user space by the vDSO in a few ns.
    if current == "tsc" || current == "arch_sys_counter" {
        return Verdict::ok(ITEM, current);
    }
    let available = ctx
        .host
        .read_value(&format!("{BASE}/available_clocksource"))
        .unwrap_or_default();
    let fix = if available.split_whitespace().any(|c| c == "tsc") {
        format!("echo tsc > {BASE}/current_clocksource (and tsc=reliable clocksource=tsc at boot)")
    } else {
        "use a host whose CPUs have an invariant TSC; on VMs prefer instance types that expose it"
            .to_string()
    };
    Verdict::warn(
        ITEM,
        format!(
            "{current} (available: {available}): every latency timestamp costs more than with tsc"
        ),
        fix,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use crate::parse::tests_support::INTERRUPTS;

    const LIMITS_LOW: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max open files            1024                 4096                 files     
Max locked memory         65536                65536                bytes     
";

    /// A 4-CPU NVMe machine as it comes out of a distribution install: nothing tuned.
    fn untuned() -> FakeHost {
        let fake = FakeHost::new();
        fake.file("/sys/devices/system/cpu/online", "0-3\n")
            .file("/proc/sys/kernel/osrelease", "5.15.0-91-generic\n")
            .file("/proc/sys/kernel/io_uring_disabled", "0\n")
            .file("/proc/self/limits", LIMITS_LOW)
            .file(
                "/proc/self/mountinfo",
                "27 1 259:2 / / rw,relatime - ext4 /dev/nvme0n1p2 rw\n",
            )
            .dir("/sys/block/nvme0n1/nvme0n1p2")
            .file(
                "/sys/block/nvme0n1/queue/scheduler",
                "[mq-deadline] kyber none\n",
            )
            .file("/sys/block/nvme0n1/queue/rotational", "0\n")
            .file("/sys/block/nvme0n1/queue/nr_requests", "16\n")
            .file("/sys/block/nvme0n1/mq/0/nr_tags", "1023\n")
            .file(
                "/proc/cmdline",
                "BOOT_IMAGE=/vmlinuz root=/dev/nvme0n1p2 ro quiet splash\n",
            )
            .file("/proc/interrupts", INTERRUPTS)
            .file(
                "/sys/kernel/mm/transparent_hugepage/enabled",
                "[always] madvise never\n",
            )
            .file("/proc/sys/vm/swappiness", "60\n")
            .file(
                "/proc/meminfo",
                "MemTotal: 16000000 kB\nSwapTotal: 2097148 kB\n",
            )
            .file("/proc/sys/net/core/somaxconn", "128\n")
            .file("/proc/sys/net/core/rmem_max", "212992\n")
            .file("/proc/sys/net/core/wmem_max", "212992\n")
            .file(
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
                "hpet\n",
            )
            .file(
                "/sys/devices/system/clocksource/clocksource0/available_clocksource",
                "tsc hpet acpi_pm\n",
            )
            .file("/sys/devices/system/cpu/smt/active", "1\n");
        for cpu in 0..4 {
            fake.file(
                &format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"),
                "powersave\n",
            );
            // cpu0+cpu2 and cpu1+cpu3 are sibling hyperthreads.
            fake.file(
                &format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"),
                &format!("{},{}\n", cpu % 2, cpu % 2 + 2),
            );
        }
        for (irq, list) in [
            (24, "0-3"),
            (25, "0"),
            (26, "1"),
            (27, "2"),
            (28, "3"),
            (30, "0-3"),
            (31, "0-3"),
            (33, "0-3"),
        ] {
            fake.file(&format!("/proc/irq/{irq}/smp_affinity_list"), list);
        }
        fake
    }

    /// The same machine after `tuning/apply --engine-cores 2-3 --irq-cores 0` and a reboot with
    /// `isolcpus=managed_irq,domain,2-5 nohz_full=2-5`.
    fn tuned() -> FakeHost {
        let fake = untuned();
        let limits = LIMITS_LOW
            .replace("1024                 4096", "1048576              1048576")
            .replace(
                "65536                65536",
                "unlimited            unlimited",
            );
        fake.file("/proc/self/limits", &limits)
            .file(
                "/sys/block/nvme0n1/queue/scheduler",
                "[none] mq-deadline kyber\n",
            )
            .file("/sys/block/nvme0n1/queue/nr_requests", "1023\n")
            .file(
                "/proc/cmdline",
                "ro quiet isolcpus=managed_irq,domain,2-3 nohz_full=2-3 rcu_nocbs=2-3\n",
            )
            .file(
                "/sys/kernel/mm/transparent_hugepage/enabled",
                "always [madvise] never\n",
            )
            .file("/proc/sys/vm/swappiness", "1\n")
            .file("/proc/sys/net/core/somaxconn", "4096\n")
            .file("/proc/sys/net/core/rmem_max", "16777216\n")
            .file("/proc/sys/net/core/wmem_max", "16777216\n")
            .file(
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
                "tsc\n",
            )
            .file("/sys/devices/system/cpu/smt/active", "0\n");
        for cpu in 0..4 {
            fake.file(
                &format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"),
                "performance\n",
            );
        }
        for irq in [24, 30, 31, 33] {
            fake.file(&format!("/proc/irq/{irq}/smp_affinity_list"), "0\n");
        }
        fake
    }

    fn levels(verdicts: &[Verdict]) -> BTreeMap<&'static str, Level> {
        verdicts.iter().map(|v| (v.item, v.level)).collect()
    }

    fn config(dir: &std::path::Path, engine: Option<&str>, irq: Option<&str>) -> CheckConfig {
        CheckConfig {
            data_dir: dir.to_path_buf(),
            engine_cores: engine.map(|c| CpuSet::parse(c).expect("cores")),
            irq_cores: irq.map(|c| CpuSet::parse(c).expect("cores")),
            nic: None,
        }
    }

    /// IRQ cores that overlap the engine's fail the `cores` item and are not what the other
    /// items' fixes recommend (they recommended `--irq-cores 1` back, which apply refuses).
    #[test]
    fn overlapping_irq_cores_fail_and_are_not_recommended() {
        let fake = untuned();
        let data = tempfile::tempdir().expect("tempdir");
        let verdicts = run_checks(&fake.host(), &config(data.path(), Some("1-3"), Some("1")));
        assert_eq!(levels(&verdicts)["cores"], Level::Fail);
        for v in &verdicts {
            let fix = v.fix.as_deref().unwrap_or_default();
            assert!(!fix.contains("--irq-cores 1 "), "{}: {fix}", v.item);
            assert!(!fix.contains("irqaffinity=1`"), "{}: {fix}", v.item);
        }
        assert!(verdicts.iter().any(|v| v
            .fix
            .as_deref()
            .unwrap_or_default()
            .contains("--engine-cores 1-3 --irq-cores 0")));
    }

    #[test]
    fn untuned_host_gets_warnings_and_a_memlock_failure() {
        let fake = untuned();
        let data = tempfile::tempdir().expect("tempdir");
        let verdicts = run_checks(&fake.host(), &config(data.path(), None, None));
        assert_eq!(verdicts.iter().map(|v| v.item).collect::<Vec<_>>(), ITEMS);
        let l = levels(&verdicts);
        assert_eq!(l["cores"], Level::Warn, "engine on every core");
        assert_eq!(l["kernel"], Level::Ok);
        assert_eq!(
            l["io_uring"],
            Level::Unknown,
            "no ring probe on a fake host"
        );
        assert_eq!(l["memlock"], Level::Fail);
        assert_eq!(l["scheduler"], Level::Warn);
        assert_eq!(l["queue-depth"], Level::Warn);
        assert_eq!(l["governor"], Level::Warn);
        assert_eq!(l["smt"], Level::Warn);
        assert_eq!(l["isolation"], Level::Warn);
        assert_eq!(l["irq-nic"], Level::Warn);
        assert_eq!(l["thp"], Level::Warn);
        assert_eq!(l["swappiness"], Level::Warn);
        assert_eq!(l["somaxconn"], Level::Warn);
        assert_eq!(l["socket-buffers"], Level::Warn);
        assert_eq!(l["nofile"], Level::Warn);
        assert_eq!(l["clocksource"], Level::Warn);
        assert_eq!(exit_code(&verdicts), 1);

        let memlock = &verdicts[3];
        assert_eq!(
            memlock.to_string(),
            "FAIL    memlock         soft 64 KiB, hard 64 KiB (this shell); 4 executor(s) need >= 2 MiB, 1.5 GiB to \
             register I/O buffers   fix: ulimit -l unlimited, or LimitMEMLOCK=infinity in the unit \
             (tuning/spate.service), or tuning/limits/99-spate.conf in /etc/security/limits.d"
        );
        assert!(memlock.found.contains("4 executor(s) need >= 2 MiB"));
        let sched = &verdicts[6];
        assert_eq!(sched.found, "nvme0n1: mq-deadline");
        assert!(sched
            .fix
            .as_deref()
            .unwrap_or_default()
            .starts_with("echo none > /sys/block/nvme0n1/queue/scheduler"));
        assert!(
            verdicts[12].found.starts_with("4 I/O queue IRQs"),
            "{}",
            verdicts[12].found
        );
    }

    #[test]
    fn tuned_host_is_all_ok() {
        let fake = tuned();
        let data = tempfile::tempdir().expect("tempdir");
        let verdicts = run_checks(&fake.host(), &config(data.path(), Some("2-3"), Some("0")));
        for v in &verdicts {
            let allowed = match v.item {
                "io_uring" => Level::Unknown,
                _ => Level::Ok,
            };
            // O_DIRECT depends on where the test's temp dir lives; everything else is the sample.
            if v.item != "o_direct" {
                assert_eq!(v.level, allowed, "{v}");
            }
        }
        assert_eq!(
            verdicts[10].found,
            "isolcpus=2-3 nohz_full=2-3 cover engine cores 2-3"
        );
        assert!(
            verdicts[12]
                .found
                .contains("engine cores with a queue of their own: 2-3"),
            "{}",
            verdicts[12].found
        );
    }

    #[test]
    fn overlapping_or_offline_cores_fail() {
        let fake = tuned();
        let data = tempfile::tempdir().expect("tempdir");
        let v = run_checks(&fake.host(), &config(data.path(), Some("1-3"), Some("1")));
        assert_eq!(v[0].level, Level::Fail);
        assert_eq!(v[0].found, "cores 1 are both engine and IRQ cores");
        let v = run_checks(&fake.host(), &config(data.path(), Some("2-7"), None));
        assert_eq!(
            (v[0].level, v[0].found.as_str()),
            (Level::Fail, "engine cores 4-7 are not online (online: 0-3)")
        );
    }

    #[test]
    fn empty_host_yields_unknowns_not_panics() {
        let fake = FakeHost::new();
        let data = tempfile::tempdir().expect("tempdir");
        let verdicts = run_checks(&fake.host(), &config(data.path(), None, None));
        assert_eq!(verdicts.len(), ITEMS.len());
        for v in &verdicts {
            if v.level == Level::Unknown {
                assert!(!v.found.is_empty(), "{v}");
            }
        }
        assert_eq!(levels(&verdicts)["kernel"], Level::Unknown);
        assert!(
            verdicts[1].found.contains("/proc/sys/kernel/osrelease"),
            "{}",
            verdicts[1]
        );
    }

    #[test]
    fn io_uring_disabled_fails_and_old_kernel_fails() {
        let fake = tuned();
        fake.file("/proc/sys/kernel/io_uring_disabled", "2\n")
            .file("/proc/sys/kernel/osrelease", "5.4.0-150-generic\n");
        let data = tempfile::tempdir().expect("tempdir");
        let v = run_checks(&fake.host(), &config(data.path(), Some("2-3"), Some("0")));
        assert_eq!(v[1].level, Level::Fail);
        assert_eq!(v[2].level, Level::Fail);
        assert!(v[2]
            .fix
            .as_deref()
            .unwrap_or_default()
            .starts_with("sysctl -w kernel.io_uring_disabled=0"));
        assert_eq!(exit_code(&v), 1);
    }

    #[test]
    fn missing_data_dir_is_probed_at_its_parent() {
        let fake = tuned();
        let data = tempfile::tempdir().expect("tempdir");
        let missing = data.path().join("not/yet");
        let v = run_checks(&fake.host(), &config(&missing, Some("2-3"), Some("0")));
        assert!(
            v[4].found.contains("nearest existing parent of"),
            "{}",
            v[4]
        );
        assert!(!missing.exists(), "check must not create the data dir");
    }

    #[test]
    fn online_discard_warns() {
        let fake = tuned();
        let data = tempfile::tempdir().expect("tempdir");
        let mountinfo = format!(
            "27 1 259:2 / / rw - ext4 /dev/nvme0n1p2 rw\n40 27 259:3 / {} rw,noatime - xfs /dev/nvme1n1 rw,discard\n",
            data.path().display()
        );
        fake.file("/proc/self/mountinfo", &mountinfo);
        let v = run_checks(&fake.host(), &config(data.path(), Some("2-3"), Some("0")));
        assert_eq!(v[4].item, "filesystem");
        assert_eq!(v[4].level, Level::Warn, "{}", v[4]);
        assert!(v[4].found.contains("online discard"), "{}", v[4]);
        // Without it: ok.
        let mountinfo = mountinfo.replace("rw,discard", "rw");
        fake.file("/proc/self/mountinfo", &mountinfo);
        let v = run_checks(&fake.host(), &config(data.path(), Some("2-3"), Some("0")));
        assert_eq!(v[4].level, Level::Ok, "{}", v[4]);
    }

    #[test]
    fn tmpfs_data_dir_fails() {
        let fake = tuned();
        let data = tempfile::tempdir().expect("tempdir");
        let mountinfo = format!(
            "27 1 259:2 / / rw - ext4 /dev/nvme0n1p2 rw\n40 27 0:41 / {} rw - tmpfs tmpfs rw\n",
            data.path().display()
        );
        fake.file("/proc/self/mountinfo", &mountinfo);
        let v = run_checks(&fake.host(), &config(data.path(), Some("2-3"), Some("0")));
        assert_eq!(v[4].level, Level::Fail, "{}", v[4]);
        assert_eq!(v[6].level, Level::Unknown, "{}", v[6]);
        assert!(v[6].found.contains("not backed by a local block device"));
    }

    /// The real check against the real host: every item gets a verdict, nothing panics. The
    /// levels depend on the machine and are not asserted.
    #[test]
    fn live_host_gets_a_verdict_for_every_item() {
        let data = tempfile::tempdir().expect("tempdir");
        let verdicts = run_checks(
            &Host::live(),
            &config(&data.path().join("spate"), None, None),
        );
        assert_eq!(verdicts.iter().map(|v| v.item).collect::<Vec<_>>(), ITEMS);
        for v in &verdicts {
            assert!(!v.found.is_empty(), "{v}");
            assert!(!v.to_string().contains('\n'), "one line per item: {v:?}");
            eprintln!("{v}");
        }
        let json = serde_json::to_string(&verdicts).expect("json");
        assert!(json.contains("\"item\":\"memlock\""));
    }
}
