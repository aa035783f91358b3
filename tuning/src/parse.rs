//! Pure parsers for what the kernel prints in `/proc` and `/sys`.
//!
//! Nothing here does I/O: each function takes the text of one file and returns a typed value (or
//! `None`/an error for text it does not understand), so every format is unit-tested with samples
//! copied from real machines. The kernel's formats are stable ABI but vary across versions and
//! drivers; the parsers accept the variants noted beside them and ignore lines they do not know.

use crate::cpus::{CpuListError, CpuSet};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// `/proc/meminfo` as bytes per field (`MemTotal`, `SwapTotal`, `Hugepagesize`, ...).
/// Fields without a `kB` unit (`HugePages_Total`) are counts and kept as they are.
pub fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let Some(Ok(value)) = parts.next().map(str::parse::<u64>) else {
            continue;
        };
        let value = match parts.next() {
            Some("kB") => value.saturating_mul(1024),
            _ => value,
        };
        fields.insert(name.trim().to_string(), value);
    }
    fields
}

/// One resource limit value as `/proc/PID/limits` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LimitValue {
    Value(u64),
    Unlimited,
}

impl LimitValue {
    /// Whether the limit allows at least `need`.
    pub fn at_least(self, need: u64) -> bool {
        match self {
            LimitValue::Unlimited => true,
            LimitValue::Value(v) => v >= need,
        }
    }
}

/// The soft and hard value of one row of `/proc/PID/limits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitPair {
    pub soft: LimitValue,
    pub hard: LimitValue,
}

/// `/proc/self/limits`, keyed by the row name (`Max locked memory`, `Max open files`).
///
/// The columns are aligned with spaces and row names contain single spaces, so a row is split
/// at its first token that is a number or `unlimited`.
pub fn parse_limits(text: &str) -> BTreeMap<String, LimitPair> {
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let Some(first_value) = tokens.iter().position(|t| parse_limit_value(t).is_some()) else {
            continue;
        };
        let (Some(soft), Some(hard)) = (
            tokens.get(first_value).and_then(|t| parse_limit_value(t)),
            tokens
                .get(first_value + 1)
                .and_then(|t| parse_limit_value(t)),
        ) else {
            continue;
        };
        if first_value == 0 {
            continue;
        }
        rows.insert(tokens[..first_value].join(" "), LimitPair { soft, hard });
    }
    rows
}

fn parse_limit_value(token: &str) -> Option<LimitValue> {
    if token == "unlimited" {
        return Some(LimitValue::Unlimited);
    }
    token.parse().ok().map(LimitValue::Value)
}

/// Bit of `CAP_IPC_LOCK` in a capability mask: with it, io_uring charges nothing to
/// `RLIMIT_MEMLOCK` (the ring is created without a user to account against).
pub const CAP_IPC_LOCK_BIT: u32 = 14;

/// The effective capability mask (`CapEff:` in `/proc/PID/status`, hexadecimal).
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let value = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(value.trim(), 16).ok()
}

/// Whether `/proc/PID/status` shows `CAP_IPC_LOCK` in effect.
pub fn has_cap_ipc_lock(status: &str) -> bool {
    parse_cap_eff(status).is_some_and(|caps| caps & (1 << CAP_IPC_LOCK_BIT) != 0)
}

/// A kernel release's numeric prefix (`6.8.0-45-generic` → 6.8.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KernelVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Parses `uname -r` / `/proc/sys/kernel/osrelease`. The patch level is optional (`6.10-rc1`),
/// and everything after the numbers (distribution suffixes) is ignored.
pub fn parse_kernel_version(release: &str) -> Option<KernelVersion> {
    let mut numbers = release
        .trim()
        .split(['.', '-', '+', '_'])
        .map(leading_number);
    let major = numbers.next()??;
    let minor = numbers.next()??;
    let patch = numbers.next().flatten().unwrap_or(0);
    Some(KernelVersion {
        major,
        minor,
        patch,
    })
}

fn leading_number(text: &str) -> Option<u32> {
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A sysfs "choice" attribute: the options with the active one in brackets, as in
/// `/sys/block/*/queue/scheduler` (`none [mq-deadline] kyber`) and
/// `/sys/kernel/mm/transparent_hugepage/enabled` (`always [madvise] never`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub selected: String,
    pub options: Vec<String>,
}

/// Parses a bracketed choice. A single unbracketed word (`none` on devices without a choice of
/// scheduler) counts as selected.
pub fn parse_choice(text: &str) -> Option<Choice> {
    let mut selected = None;
    let mut options = Vec::new();
    for word in text.split_whitespace() {
        match word.strip_prefix('[').and_then(|w| w.strip_suffix(']')) {
            Some(inner) => {
                selected = Some(inner.to_string());
                options.push(inner.to_string());
            }
            None => options.push(word.to_string()),
        }
    }
    match (selected, options.as_slice()) {
        (Some(selected), _) => Some(Choice { selected, options }),
        (None, [only]) => Some(Choice {
            selected: only.clone(),
            options,
        }),
        _ => None,
    }
}

/// Parses `/sys/block/DEV/queue/scheduler`.
pub fn parse_scheduler(text: &str) -> Option<Choice> {
    parse_choice(text)
}

/// Parses `/proc/irq/N/smp_affinity_list` (or `effective_affinity_list`).
pub fn parse_irq_affinity_list(text: &str) -> Result<CpuSet, CpuListError> {
    CpuSet::parse(text)
}

/// The boot parameters that decide which cores the kernel leaves alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootParams {
    /// `isolcpus=`: cores removed from the scheduler's load balancing.
    pub isolcpus: Option<CpuSet>,
    /// The `isolcpus=` flags (`domain`, `managed_irq`, `nohz`) that preceded the list.
    pub isolcpus_flags: Vec<String>,
    /// `nohz_full=`: cores whose scheduler tick stops while one task runs.
    pub nohz_full: Option<CpuSet>,
    /// `rcu_nocbs=`: cores whose RCU callbacks run elsewhere.
    pub rcu_nocbs: Option<CpuSet>,
    /// `irqaffinity=`: the default affinity of new IRQs.
    pub irqaffinity: Option<CpuSet>,
    /// Parameters we recognised but could not parse, quoted for the verdict.
    pub problems: Vec<String>,
}

/// Parses `/proc/cmdline`. Words after a bare `--` belong to init, not the kernel.
pub fn parse_cmdline(text: &str) -> BootParams {
    let mut params = BootParams::default();
    for word in text.split_whitespace().take_while(|w| *w != "--") {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        let slot = match key {
            "isolcpus" => {
                // `isolcpus=managed_irq,domain,2-5`: leading words are flags, the rest the list.
                let (flags, list): (Vec<&str>, Vec<&str>) = value
                    .split(',')
                    .partition(|p| !p.starts_with(|c: char| c.is_ascii_digit()));
                params.isolcpus_flags = flags.iter().map(|f| f.to_string()).collect();
                store_list(
                    &mut params.isolcpus,
                    &mut params.problems,
                    word,
                    &list.join(","),
                );
                continue;
            }
            "nohz_full" => &mut params.nohz_full,
            "rcu_nocbs" => &mut params.rcu_nocbs,
            "irqaffinity" => &mut params.irqaffinity,
            _ => continue,
        };
        store_list(slot, &mut params.problems, word, value);
    }
    params
}

fn store_list(slot: &mut Option<CpuSet>, problems: &mut Vec<String>, word: &str, list: &str) {
    match CpuSet::parse(list) {
        Ok(set) => *slot = Some(set),
        Err(e) => problems.push(format!("{word}: {}", e.reason)),
    }
}

/// One mounted file system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub mount_point: String,
    pub fs_type: String,
    /// `major:minor` of the file system's device (from `mountinfo` only).
    pub dev: Option<(u32, u32)>,
    /// The mount's and the file system's options together (`rw`, `noatime`, `discard`, …).
    pub options: Vec<String>,
}

impl Mount {
    /// Whether `option` is among the mount's or the file system's options.
    pub fn has_option(&self, option: &str) -> bool {
        self.options.iter().any(|o| o == option)
    }
}

/// Comma-separated options, each once, in order.
fn options_of<'a>(lists: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut options: Vec<String> = Vec::new();
    for o in lists.into_iter().flat_map(|l| l.split(',')) {
        if !o.is_empty() && !options.iter().any(|x| x == o) {
            options.push(o.to_string());
        }
    }
    options
}

/// Parses `/proc/self/mountinfo`:
/// `27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard`
/// (the optional fields before `-` vary in number, hence the search for the separator).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(dev), Some(mount_point), Some(fs_type), Some(source)) = (
            fields.get(2),
            fields.get(4),
            fields.get(sep + 1),
            fields.get(sep + 2),
        ) else {
            continue;
        };
        let dev = dev
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
        // Field 6: the mount's options; after the source: the file system's (`discard`).
        let options = options_of(
            [fields.get(5), fields.get(sep + 3)]
                .into_iter()
                .flatten()
                .copied(),
        );
        mounts.push(Mount {
            source: unescape_mount(source),
            mount_point: unescape_mount(mount_point),
            fs_type: fs_type.to_string(),
            dev,
            options,
        });
    }
    mounts
}

/// Parses `/proc/mounts` (`/dev/nvme0n1p2 /var/lib/spate xfs rw,noatime 0 0`), the fallback when
/// `mountinfo` is not readable.
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (source, mount_point, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
            Some(Mount {
                source: unescape_mount(source),
                mount_point: unescape_mount(mount_point),
                fs_type: fs_type.to_string(),
                dev: None,
                options: options_of(fields.next()),
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes of space, tab, newline and backslash in mount fields.
fn unescape_mount(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The mount that holds `path`: the one with the longest mount point that is a prefix of it by
/// whole components. Later entries win ties because a later mount hides an earlier one.
pub fn find_mount<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    let mut best: Option<&Mount> = None;
    for mount in mounts {
        if !path.starts_with(&mount.mount_point) {
            continue;
        }
        if best.is_none_or(|b| mount.mount_point.len() >= b.mount_point.len()) {
            best = Some(mount);
        }
    }
    best
}

/// One numbered row of `/proc/interrupts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IrqLine {
    pub irq: u32,
    /// Interrupts taken per CPU, in CPU-number order.
    pub counts: Vec<u64>,
    /// The action names (`nvme0q1`, `virtio2-input.0`); shared IRQs have several.
    pub names: Vec<String>,
}

/// Parses `/proc/interrupts`. The header gives the CPU columns; the name is whatever follows
/// the trigger type (`2-edge`, `PCI-MSI-edge`, `fasteoi`), or the last word when there is none.
/// Rows that are not numbered (`NMI:`, `LOC:`) are per-CPU counters, not device IRQs.
pub fn parse_interrupts(text: &str) -> Vec<IrqLine> {
    let mut lines = text.lines();
    let cpus = lines.next().map_or(0, |h| {
        h.split_whitespace()
            .filter(|w| w.starts_with("CPU"))
            .count()
    });
    let mut irqs = Vec::new();
    for line in lines {
        let mut words = line.split_whitespace();
        let Some(Ok(irq)) = words
            .next()
            .and_then(|w| w.strip_suffix(':'))
            .map(str::parse::<u32>)
        else {
            continue;
        };
        let rest: Vec<&str> = words.collect();
        let counts: Vec<u64> = rest
            .iter()
            .take(cpus)
            .map_while(|w| w.parse().ok())
            .collect();
        let tail = &rest[counts.len()..];
        let is_trigger =
            |w: &&str| w.ends_with("edge") || w.ends_with("level") || w.ends_with("fasteoi");
        let names_text = match tail.iter().rposition(is_trigger) {
            Some(pos) => tail[pos + 1..].join(" "),
            None => tail.last().map(|w| w.to_string()).unwrap_or_default(),
        };
        let names = names_text
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect();
        irqs.push(IrqLine { irq, counts, names });
    }
    irqs
}

/// What an IRQ serves, as far as tuning cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqKind {
    /// A network card queue (or its async/event vector).
    Nic,
    /// An NVMe I/O queue (`nvme0q1` ...). The kernel manages these: each is bound to the CPUs
    /// that submit to that queue and cannot be moved from user space.
    NvmeIo,
    /// The NVMe admin queue (`nvme0q0`), which can be moved.
    NvmeAdmin,
}

/// Name prefixes of NIC driver IRQs that do not contain the interface name: Mellanox, Intel,
/// Broadcom, Amazon ENA, Google gVNIC and friends. Driver names change rarely; a NIC not on this
/// list is still found through its interface name or `--nic`.
const NIC_IRQ_PREFIXES: &[&str] = &[
    "mlx4-",
    "mlx5_comp",
    "mlx5_async",
    "i40e-",
    "ice-",
    "ixgbe",
    "igb",
    "igc",
    "e1000",
    "bnxt",
    "ena-",
    "gve-",
    "qede",
    "nfp",
    "enic",
    "hns3",
    "eth",
    "ens",
    "enp",
    "eno",
    "enx",
];

/// Classifies an IRQ action name. `nic_hints` are interface names, PCI addresses and virtio
/// device names (`virtio2`) of the host's network cards; they catch drivers that name their IRQs
/// after the interface (`ens5f0-TxRx-3`) or the PCI address (`mlx5_comp0@pci:0000:3b:00.0`).
pub fn classify_irq(name: &str, nic_hints: &[String]) -> Option<IrqKind> {
    if let Some(rest) = name.strip_prefix("nvme") {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if let Some(queue) = rest[digits..].strip_prefix('q') {
            if digits > 0 && !queue.is_empty() && queue.chars().all(|c| c.is_ascii_digit()) {
                return Some(if queue.parse::<u32>() == Ok(0) {
                    IrqKind::NvmeAdmin
                } else {
                    IrqKind::NvmeIo
                });
            }
        }
        return None;
    }
    if irq_matches_nic_hints(name, nic_hints) {
        return Some(IrqKind::Nic);
    }
    if let Some(rest) = name.strip_prefix("virtio") {
        // virtio-net names its queues `virtioN-input.Q` / `virtioN-output.Q`; other virtio
        // devices (block `-req.Q`, balloon, vsock `-rx`) must not be mistaken for the NIC.
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        let queue = &rest[digits..];
        return (digits > 0 && is_virtio_net_queue(queue)).then_some(IrqKind::Nic);
    }
    let lower = name.to_ascii_lowercase();
    let queue_like = ["-txrx-", "-rx-", "-tx-", "-rxtx-"]
        .iter()
        .any(|q| lower.contains(q));
    let driver_like = NIC_IRQ_PREFIXES.iter().any(|p| lower.starts_with(p));
    (queue_like || driver_like).then_some(IrqKind::Nic)
}

fn is_virtio_net_queue(suffix: &str) -> bool {
    suffix.starts_with("-input.") || suffix.starts_with("-output.")
}

/// Whether an IRQ name belongs to one of the given NICs: it carries the interface name or PCI
/// address, or it is a queue of the NIC's virtio device (`virtio2` → `virtio2-input.0`).
pub fn irq_matches_nic_hints(name: &str, nic_hints: &[String]) -> bool {
    let lower = name.to_ascii_lowercase();
    nic_hints
        .iter()
        .filter(|h| !h.is_empty())
        .any(|hint| match name.strip_prefix(hint.as_str()) {
            Some(rest) if hint.starts_with("virtio") => is_virtio_net_queue(rest),
            _ => !hint.starts_with("virtio") && lower.contains(&hint.to_ascii_lowercase()),
        })
}

/// Formats a byte count the way people write limits: `512 KiB`, `8 MiB`, `1.5 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Formats a resource limit (`unlimited` or bytes).
pub fn format_limit_bytes(limit: LimitValue) -> String {
    match limit {
        LimitValue::Unlimited => "unlimited".to_string(),
        LimitValue::Value(v) => format_bytes(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "\
MemTotal:       24668920 kB
MemFree:        20123456 kB
SwapTotal:             0 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    #[test]
    fn meminfo_in_bytes() {
        let m = parse_meminfo(MEMINFO);
        assert_eq!(m["MemTotal"], 24_668_920 * 1024);
        assert_eq!(m["SwapTotal"], 0);
        assert_eq!(m["HugePages_Total"], 0);
        assert_eq!(m["Hugepagesize"], 2 << 20);
    }

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max stack size            8388608              unlimited            bytes     
Max open files            20000                20000                files     
Max locked memory         65536                8388608              bytes     
Max realtime priority     0                    0                    
";

    #[test]
    fn limits_rows_with_spaces_in_names() {
        let l = parse_limits(LIMITS);
        assert_eq!(
            l["Max locked memory"],
            LimitPair {
                soft: LimitValue::Value(65536),
                hard: LimitValue::Value(8_388_608)
            }
        );
        assert_eq!(l["Max open files"].soft, LimitValue::Value(20000));
        assert_eq!(l["Max stack size"].hard, LimitValue::Unlimited);
        assert_eq!(l["Max realtime priority"].soft, LimitValue::Value(0));
        assert!(!l.contains_key("Limit"));
        assert!(LimitValue::Unlimited.at_least(u64::MAX));
        assert!(!LimitValue::Value(65536).at_least(524_288));
    }

    #[test]
    fn capabilities() {
        let root = "Name:\tcat\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(root), Some(0x1ff_ffff_ffff));
        assert!(has_cap_ipc_lock(root));
        assert!(!has_cap_ipc_lock("CapEff:\t0000000000000000\n"));
        assert!(!has_cap_ipc_lock("Name: x\n"));
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(
            parse_kernel_version("6.18.44-fc-v669"),
            Some(KernelVersion::new(6, 18, 44))
        );
        assert_eq!(
            parse_kernel_version("5.4.0-150-generic\n"),
            Some(KernelVersion::new(5, 4, 0))
        );
        assert_eq!(
            parse_kernel_version("6.10-rc1"),
            Some(KernelVersion::new(6, 10, 0))
        );
        assert_eq!(
            parse_kernel_version("4.18.0-553.el8_10.x86_64"),
            Some(KernelVersion::new(4, 18, 0))
        );
        assert_eq!(parse_kernel_version("garbage"), None);
        assert!(KernelVersion::new(5, 8, 0) > KernelVersion::new(5, 4, 250));
        assert!(KernelVersion::new(5, 10, 0) > KernelVersion::new(5, 9, 16));
    }

    #[test]
    fn schedulers_and_thp_choices() {
        let s = parse_scheduler("none [mq-deadline] kyber bfq\n").expect("choice");
        assert_eq!(s.selected, "mq-deadline");
        assert_eq!(s.options, ["none", "mq-deadline", "kyber", "bfq"]);
        assert_eq!(
            parse_scheduler("[none] mq-deadline")
                .expect("choice")
                .selected,
            "none"
        );
        assert_eq!(parse_scheduler("none").expect("choice").selected, "none");
        assert_eq!(parse_scheduler(""), None);
        assert_eq!(
            parse_choice("always [madvise] never")
                .expect("choice")
                .selected,
            "madvise"
        );
        assert_eq!(
            parse_choice("always defer defer+madvise [madvise] never")
                .expect("c")
                .selected,
            "madvise"
        );
    }

    #[test]
    fn cmdline_isolation() {
        let p = parse_cmdline(
            "BOOT_IMAGE=/vmlinuz-6.8.0 root=UUID=1234 ro quiet isolcpus=managed_irq,domain,2-5 nohz_full=2-5 \
             rcu_nocbs=2-5 irqaffinity=0-1\n",
        );
        assert_eq!(p.isolcpus.expect("isolcpus").to_string(), "2-5");
        assert_eq!(p.isolcpus_flags, ["managed_irq", "domain"]);
        assert_eq!(p.nohz_full.expect("nohz_full").to_string(), "2-5");
        assert_eq!(p.rcu_nocbs.expect("rcu_nocbs").to_string(), "2-5");
        assert_eq!(p.irqaffinity.expect("irqaffinity").to_string(), "0-1");
        assert!(p.problems.is_empty());

        let plain = parse_cmdline("console=ttyS0 quiet -- isolcpus=1 --init-arg");
        assert_eq!(
            plain,
            BootParams::default(),
            "words after -- belong to init"
        );

        let bad = parse_cmdline("nohz_full=x-y isolcpus=2-5");
        assert_eq!(bad.isolcpus.expect("isolcpus").to_string(), "2-5");
        assert_eq!(bad.nohz_full, None);
        assert_eq!(bad.problems.len(), 1);
    }

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,discard
31 27 259:3 / /var/lib/spate rw,noatime shared:5 master:1 - xfs /dev/nvme1n1 rw,attr2,inode64
32 27 0:30 / /var/lib/spate-old rw - tmpfs tmpfs rw
33 27 259:4 / /mnt/with\\040space rw - ext4 /dev/sdb1 rw
";

    #[test]
    fn mount_lookup_by_longest_component_prefix() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 5);
        let m = find_mount(&mounts, Path::new("/var/lib/spate/shard-0")).expect("mounted");
        assert_eq!(
            (m.fs_type.as_str(), m.source.as_str(), m.dev),
            ("xfs", "/dev/nvme1n1", Some((259, 3)))
        );
        assert_eq!(m.options, ["rw", "noatime", "attr2", "inode64"]);
        assert!(!m.has_option("discard"));
        let root = find_mount(&mounts, Path::new("/etc")).expect("mounted");
        assert_eq!(root.options, ["rw", "relatime", "discard"]);
        assert!(root.has_option("discard"));
        // `/var/lib/spate-old` must not match `/var/lib/spate` by string prefix, nor the reverse.
        assert_eq!(
            find_mount(&mounts, Path::new("/var/lib/spate"))
                .expect("m")
                .fs_type,
            "xfs"
        );
        assert_eq!(
            find_mount(&mounts, Path::new("/var/lib/spatex"))
                .expect("m")
                .fs_type,
            "ext4"
        );
        assert_eq!(
            find_mount(&mounts, Path::new("/var/lib/spate-old/x"))
                .expect("m")
                .fs_type,
            "tmpfs"
        );
        assert_eq!(
            find_mount(&mounts, Path::new("/mnt/with space/d"))
                .expect("m")
                .source,
            "/dev/sdb1"
        );
        assert_eq!(
            find_mount(&mounts, Path::new("/tmp")).expect("m").source,
            "/dev/nvme0n1p2"
        );
    }

    #[test]
    fn proc_mounts_fallback() {
        let mounts = parse_mounts("/dev/vda / ext4 rw,relatime 0 0\ntmpfs /tmp tmpfs rw 0 0\n");
        assert_eq!(
            find_mount(&mounts, Path::new("/tmp/spate"))
                .expect("m")
                .fs_type,
            "tmpfs"
        );
        assert_eq!(
            find_mount(&mounts, Path::new("/srv")).expect("m").source,
            "/dev/vda"
        );
    }

    use super::tests_support::INTERRUPTS;

    #[test]
    fn virtio_hint_only_matches_net_queues() {
        let hints = vec!["virtio2".to_string()];
        assert!(irq_matches_nic_hints("virtio2-input.0", &hints));
        assert!(!irq_matches_nic_hints("virtio2-config", &hints));
        assert!(!irq_matches_nic_hints("virtio0-input.0", &hints));
        let pci = vec!["0000:3b:00.0".to_string()];
        assert!(irq_matches_nic_hints("mlx5_comp3@pci:0000:3b:00.0", &pci));
    }
    #[test]
    fn interrupts_rows_and_names() {
        let irqs = parse_interrupts(INTERRUPTS);
        assert_eq!(irqs.len(), 13, "NMI/LOC/ERR are counters, not IRQs");
        assert_eq!(
            irqs[2],
            IrqLine {
                irq: 24,
                counts: vec![12000, 0, 0, 0],
                names: vec!["nvme0q0".into()]
            }
        );
        assert_eq!(irqs[6].names, ["nvme0q4"]);
        assert_eq!(irqs[11].names, ["eth1-TxRx-0"]);
        assert_eq!(irqs[12].names, ["i801_smbus", "ehci_hcd:usb1"]);
    }

    #[test]
    fn irq_classification() {
        let none: Vec<String> = Vec::new();
        assert_eq!(classify_irq("nvme0q0", &none), Some(IrqKind::NvmeAdmin));
        assert_eq!(classify_irq("nvme12q31", &none), Some(IrqKind::NvmeIo));
        assert_eq!(classify_irq("nvmeq1", &none), None);
        assert_eq!(classify_irq("virtio0-input.0", &none), Some(IrqKind::Nic));
        assert_eq!(classify_irq("virtio0-output.3", &none), Some(IrqKind::Nic));
        assert_eq!(classify_irq("virtio0-config", &none), None);
        assert_eq!(
            classify_irq("virtio1-req.0", &none),
            None,
            "virtio-blk is not a NIC"
        );
        assert_eq!(
            classify_irq("virtio3-rx", &none),
            None,
            "vsock is not a NIC"
        );
        assert_eq!(classify_irq("eth1-TxRx-0", &none), Some(IrqKind::Nic));
        assert_eq!(
            classify_irq("mlx5_comp7@pci:0000:3b:00.0", &none),
            Some(IrqKind::Nic)
        );
        assert_eq!(
            classify_irq("i40e-ens1f0-TxRx-3", &none),
            Some(IrqKind::Nic)
        );
        assert_eq!(classify_irq("timer", &none), None);
        assert_eq!(classify_irq("ehci_hcd:usb1", &none), None);
        let hints = vec!["wan0".to_string()];
        assert_eq!(classify_irq("wan0-q5", &hints), Some(IrqKind::Nic));
        assert_eq!(classify_irq("wan0-q5", &none), None);
    }

    #[test]
    fn affinity_lists() {
        assert_eq!(
            parse_irq_affinity_list("0-1\n").expect("list").to_string(),
            "0-1"
        );
        assert!(parse_irq_affinity_list("zz").is_err());
    }

    #[test]
    fn byte_formatting() {
        assert_eq!(format_bytes(524_288), "512 KiB");
        assert_eq!(format_bytes(8 << 20), "8 MiB");
        assert_eq!(format_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(format_bytes(100), "100 B");
        assert_eq!(format_limit_bytes(LimitValue::Unlimited), "unlimited");
    }
}

/// Sample kernel output shared by the tests of several modules.
#[cfg(test)]
pub(crate) mod tests_support {
    /// `/proc/interrupts` of a 4-CPU machine with one NVMe drive (admin queue and four I/O
    /// queues, one per CPU), a virtio NIC, a virtio disk and an Intel NIC.
    pub(crate) const INTERRUPTS: &str = "\
           CPU0       CPU1       CPU2       CPU3       
  0:         44          0          0          0   IO-APIC   2-edge      timer
  8:          0          0          0          1   IO-APIC   8-edge      rtc0
 24:      12000          0          0          0  IR-PCI-MSIX-0000:01:00.0    0-edge      nvme0q0
 25:       9000          0          0          0  IR-PCI-MSIX-0000:01:00.0    1-edge      nvme0q1
 26:          0       8000          0          0  IR-PCI-MSIX-0000:01:00.0    2-edge      nvme0q2
 27:          0          0       7000          0  IR-PCI-MSIX-0000:01:00.0    3-edge      nvme0q3
 28:          0          0          0       6000  IR-PCI-MSIX-0000:01:00.0    4-edge      nvme0q4
 29:          0          0          0          0  PCI-MSIX-0000:00:03.0   0-edge      virtio0-config
 30:        848          0          0          0  PCI-MSIX-0000:00:03.0   1-edge      virtio0-input.0
 31:          0        794          0          0  PCI-MSIX-0000:00:03.0   2-edge      virtio0-output.0
 32:          0       6499          0          0  PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
 33:         10          0          0          0   PCI-MSI-edge      eth1-TxRx-0
 34:          5          0          0          0   IO-APIC  16-fasteoi   i801_smbus, ehci_hcd:usb1
NMI:          0          0          0          0   Non-maskable interrupts
LOC:      11761      12288      11000      10000   Local timer interrupts
ERR:          0
";
}
