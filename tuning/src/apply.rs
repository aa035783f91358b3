//! `spate-tune apply`: bring the host to the recommended settings for a core layout.
//!
//! Applying is split into a pure-ish [`plan`] (read the host, decide every write) and
//! [`execute`] (perform or print the writes). The plan only contains writes whose current value
//! differs from the target, so running apply twice changes nothing the second time, and a dry
//! run is simply printing the plan. Tests compute and execute plans against a fake host tree.
//!
//! What is set: the CPU frequency governor, transparent huge pages, the sysctls listed in
//! `tuning/sysctl/99-spate.conf` (at once and as a drop-in), the data disk's scheduler and
//! request depth, the affinity of NIC and NVMe admin IRQs, and the limits drop-in. What needs a
//! reboot or a service change (core isolation on the kernel command line, the unit's
//! `CPUAffinity=`) is printed as a note with the exact text, never edited behind the user's back.

use crate::check::QUEUE_DEPTH_MIN;
use crate::cpus::CpuSet;
use crate::host::Host;
use crate::irqs::IrqInventory;
use crate::parse::{parse_choice, parse_cmdline, IrqKind};
use crate::storage::{preferred_schedulers, resolve_disks, DataDirInfo};
use std::fmt;
use std::path::PathBuf;

/// The sysctl drop-in, compiled in so the binary installs exactly the reviewed file.
pub const SYSCTL_DROP_IN: &str = include_str!("../sysctl/99-spate.conf");
/// Where the sysctl drop-in is installed.
pub const SYSCTL_DROP_IN_PATH: &str = "/etc/sysctl.d/99-spate.conf";
/// The limits drop-in, compiled in like the sysctl one.
pub const LIMITS_DROP_IN: &str = include_str!("../limits/99-spate.conf");
/// Where the limits drop-in is installed.
pub const LIMITS_DROP_IN_PATH: &str = "/etc/security/limits.d/99-spate.conf";

/// Sysctls that apply only ever raises: a host tuned for more connections or larger buffers
/// than ours keeps its values.
const RAISE_ONLY: &[&str] = &[
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.netdev_max_backlog",
    "net.core.rmem_max",
    "net.core.wmem_max",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];
/// Sysctls that apply only ever lowers (swappiness 0 is as good as 1).
const LOWER_ONLY: &[&str] = &["vm.swappiness"];

/// The layout to tune for.
#[derive(Clone, Debug)]
pub struct ApplyConfig {
    pub engine_cores: CpuSet,
    pub irq_cores: CpuSet,
    /// Only move this interface's IRQs (default: every NIC's).
    pub nic: Option<String>,
    /// The data directory whose disk gets the scheduler and depth settings.
    pub data_dir: PathBuf,
}

/// A layout that cannot be applied.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("--engine-cores and --irq-cores must each name at least one core")]
    EmptyCores,
    #[error(
        "cores {0} are in both --engine-cores and --irq-cores; interrupts need cores of their own"
    )]
    Overlap(CpuSet),
    #[error("cores {cores} are not online (online: {online})")]
    Offline { cores: CpuSet, online: CpuSet },
}

/// One write the plan makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Host path written.
    pub path: String,
    /// The current value as shown to the user.
    pub old: String,
    /// The new value as shown to the user.
    pub new: String,
    /// What is written.
    pub contents: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.path, self.old, self.new)
    }
}

/// Everything apply would do, and what it leaves alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// `(path, value)` already at the target.
    pub unchanged: Vec<(String, String)>,
    /// Skipped items and manual steps, one line each.
    pub notes: Vec<String>,
}

impl Plan {
    fn want(&mut self, path: String, old: &str, new: &str) {
        if old == new {
            self.unchanged.push((path, old.to_string()));
        } else {
            self.changes.push(Change {
                path,
                old: old.to_string(),
                new: new.to_string(),
                contents: format!("{new}\n"),
            });
        }
    }
}

/// The printed result of executing a plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub lines: Vec<String>,
    pub failures: usize,
}

/// One `key = value` line of a sysctl drop-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysctlSetting {
    pub key: String,
    pub value: String,
    /// Written with a leading `-`: skip it if this kernel lacks the key.
    pub optional: bool,
}

/// Parses a sysctl.d file: `key = value` lines, `#`/`;` comments, optional leading `-`.
pub fn parse_sysctl_conf(text: &str) -> Vec<SysctlSetting> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            let key = key.trim();
            let (key, optional) = match key.strip_prefix('-') {
                Some(k) => (k, true),
                None => (key, false),
            };
            Some(SysctlSetting {
                key: key.to_string(),
                value: normalize(value),
                optional,
            })
        })
        .collect()
}

/// Collapses runs of whitespace, since the kernel prints `4096\t131072\t16777216`.
fn normalize(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Combines two equally long lists of numbers field by field (`tcp_rmem` has three: min,
/// default, max), or `None` if either is not such a list.
fn merge_numbers(current: &str, wanted: &str, pick: fn(u64, u64) -> u64) -> Option<String> {
    let parse = |s: &str| {
        s.split_whitespace()
            .map(str::parse::<u64>)
            .collect::<Result<Vec<u64>, _>>()
            .ok()
    };
    let (current, wanted) = (parse(current)?, parse(wanted)?);
    if current.len() != wanted.len() || current.is_empty() {
        return None;
    }
    let merged: Vec<String> = current
        .iter()
        .zip(&wanted)
        .map(|(c, w)| pick(*c, *w).to_string())
        .collect();
    Some(merged.join(" "))
}

/// Reads the host and decides every write for `config`.
pub fn plan(host: &Host, config: &ApplyConfig) -> Result<Plan, ApplyError> {
    let online = host
        .read_value("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|t| CpuSet::parse(&t).ok());
    validate(config, online.as_ref())?;
    let mut plan = Plan::default();
    if online.is_none() {
        plan.notes
            .push("cannot read /sys/devices/system/cpu/online; core numbers not validated".into());
    }
    let all_cores = online.unwrap_or_else(|| config.engine_cores.union(&config.irq_cores));
    plan_governors(host, &all_cores, &mut plan);
    plan_thp(host, &mut plan);
    plan_sysctls(host, &mut plan);
    plan_block(host, config, &mut plan);
    plan_irqs(host, config, &mut plan);
    plan_drop_in(
        host,
        SYSCTL_DROP_IN_PATH,
        SYSCTL_DROP_IN,
        "tuning/sysctl/99-spate.conf",
        &mut plan,
    );
    plan_drop_in(
        host,
        LIMITS_DROP_IN_PATH,
        LIMITS_DROP_IN,
        "tuning/limits/99-spate.conf",
        &mut plan,
    );
    plan_manual_steps(host, config, &mut plan);
    Ok(plan)
}

fn validate(config: &ApplyConfig, online: Option<&CpuSet>) -> Result<(), ApplyError> {
    if config.engine_cores.is_empty() || config.irq_cores.is_empty() {
        return Err(ApplyError::EmptyCores);
    }
    let overlap = config.engine_cores.intersection(&config.irq_cores);
    if !overlap.is_empty() {
        return Err(ApplyError::Overlap(overlap));
    }
    if let Some(online) = online {
        let offline = config
            .engine_cores
            .union(&config.irq_cores)
            .difference(online);
        if !offline.is_empty() {
            return Err(ApplyError::Offline {
                cores: offline,
                online: online.clone(),
            });
        }
    }
    Ok(())
}

/// Every core, not just the engine's: an IRQ core stuck at a low clock delays the packets
/// the engine is waiting for.
fn plan_governors(host: &Host, cores: &CpuSet, plan: &mut Plan) {
    let mut missing = Vec::new();
    for cpu in cores.iter() {
        let base = format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq");
        let Ok(current) = host.read_value(&format!("{base}/scaling_governor")) else {
            missing.push(cpu);
            continue;
        };
        let available = host
            .read_value(&format!("{base}/scaling_available_governors"))
            .ok();
        if available
            .as_deref()
            .is_some_and(|a| !a.split_whitespace().any(|g| g == "performance"))
        {
            plan.notes.push(format!(
                "cpu{cpu}: no performance governor (available: {})",
                available.unwrap_or_default()
            ));
            continue;
        }
        plan.want(format!("{base}/scaling_governor"), &current, "performance");
    }
    if !missing.is_empty() {
        plan.notes.push(format!(
            "no cpufreq governor on cores {} (VM or firmware-managed): set the BIOS power profile to performance",
            CpuSet::from_cpus(missing)
        ));
    }
}

fn plan_thp(host: &Host, plan: &mut Plan) {
    const PATH: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
    match host.read(PATH).ok().and_then(|t| parse_choice(&t)) {
        None => plan.notes.push(format!(
            "skipped transparent huge pages: cannot read {PATH}"
        )),
        // madvise is fine: only regions that ask for huge pages get them, and Spate does not ask.
        Some(c) if c.selected == "always" => plan.want(PATH.to_string(), "always", "never"),
        Some(c) => plan.unchanged.push((PATH.to_string(), c.selected)),
    }
}

fn plan_sysctls(host: &Host, plan: &mut Plan) {
    for setting in parse_sysctl_conf(SYSCTL_DROP_IN) {
        let path = format!("/proc/sys/{}", setting.key.replace('.', "/"));
        let current = match host.read_value(&path) {
            Ok(v) => normalize(&v),
            Err(e) if e.not_found && setting.optional => {
                plan.notes
                    .push(format!("skipped {}: not on this kernel", setting.key));
                continue;
            }
            Err(e) => {
                plan.notes.push(format!("skipped {}: {e}", setting.key));
                continue;
            }
        };
        let target = if RAISE_ONLY.contains(&setting.key.as_str()) {
            merge_numbers(&current, &setting.value, u64::max)
        } else if LOWER_ONLY.contains(&setting.key.as_str()) {
            merge_numbers(&current, &setting.value, u64::min)
        } else {
            None
        };
        let target = target.unwrap_or_else(|| setting.value.clone());
        plan.want(path, &current, &target);
    }
}

fn plan_block(host: &Host, config: &ApplyConfig, plan: &mut Plan) {
    let data = DataDirInfo::resolve(host, &config.data_dir);
    let disks = match data
        .mount
        .as_ref()
        .map_err(String::clone)
        .and_then(|m| resolve_disks(host, m))
    {
        Ok(d) => d,
        Err(e) => {
            plan.notes.push(format!(
                "skipped block device settings for {}: {e}",
                data.where_probed()
            ));
            return;
        }
    };
    for disk in disks {
        let queue = format!("/sys/block/{disk}/queue");
        let Some(choice) = host
            .read(&format!("{queue}/scheduler"))
            .ok()
            .and_then(|t| parse_choice(&t))
        else {
            plan.notes
                .push(format!("skipped {disk}: cannot read {queue}/scheduler"));
            continue;
        };
        let rotational = host
            .read_u64(&format!("{queue}/rotational"))
            .is_ok_and(|r| r == 1);
        let preferred = preferred_schedulers(&disk, rotational);
        let mut scheduler_changes = false;
        if !preferred.contains(&choice.selected.as_str()) {
            match preferred
                .iter()
                .find(|p| choice.options.iter().any(|o| o == *p))
            {
                Some(target) => {
                    plan.want(format!("{queue}/scheduler"), &choice.selected, target);
                    scheduler_changes = true;
                }
                None => plan.notes.push(format!(
                    "{disk}: none of {preferred:?} is available ({:?})",
                    choice.options
                )),
            }
        } else {
            plan.unchanged
                .push((format!("{queue}/scheduler"), choice.selected.clone()));
        }
        if scheduler_changes {
            // Switching the scheduler resets nr_requests to that scheduler's default for the
            // device, so a value computed now would be stale.
            plan.notes.push(format!(
                "{disk}: nr_requests follows the new scheduler's default; rerun apply to check it"
            ));
            continue;
        }
        let Ok(nr_requests) = host.read_u64(&format!("{queue}/nr_requests")) else {
            plan.notes
                .push(format!("skipped {disk}: cannot read {queue}/nr_requests"));
            continue;
        };
        let tags = host
            .read_u64(&format!("/sys/block/{disk}/mq/0/nr_tags"))
            .unwrap_or(QUEUE_DEPTH_MIN);
        let target = if nr_requests < QUEUE_DEPTH_MIN {
            tags.max(QUEUE_DEPTH_MIN)
        } else {
            nr_requests
        };
        plan.want(
            format!("{queue}/nr_requests"),
            &nr_requests.to_string(),
            &target.to_string(),
        );
    }
}

fn plan_irqs(host: &Host, config: &ApplyConfig, plan: &mut Plan) {
    let inv = match IrqInventory::read(host, config.nic.as_deref()) {
        Ok(inv) => inv,
        Err(e) => {
            plan.notes.push(format!("skipped IRQ affinity: {e}"));
            return;
        }
    };
    let target = config.irq_cores.to_string();
    let mut nics = 0;
    for irq in inv
        .irqs
        .iter()
        .filter(|i| matches!(i.kind, IrqKind::Nic | IrqKind::NvmeAdmin))
    {
        nics += usize::from(irq.kind == IrqKind::Nic);
        let path = format!("/proc/irq/{}/smp_affinity_list", irq.irq);
        match &irq.affinity {
            Ok(current) => plan.want(path, &current.to_string(), &target),
            Err(e) => plan
                .notes
                .push(format!("skipped IRQ {} ({}): {e}", irq.irq, irq.name)),
        }
    }
    if nics == 0 {
        plan.notes.push(match &config.nic {
            Some(nic) => format!("no IRQs found for NIC {nic} in /proc/interrupts"),
            None => "no NIC queue IRQs found in /proc/interrupts (pass --nic IFACE if it names them unusually)".into(),
        });
    }
    let managed = inv.of_kind(IrqKind::NvmeIo).count();
    if managed > 0 {
        plan.notes.push(format!(
            "left {managed} NVMe I/O queue IRQs alone: the kernel binds each to the CPUs that submit to it, \
             so engine completions stay on their core"
        ));
    }
    if inv.irqbalance_running {
        plan.notes.push(format!(
            "irqbalance is running and will move these IRQs back: systemctl disable --now irqbalance, \
             or set IRQBALANCE_BANNED_CPULIST={} in /etc/default/irqbalance (or /etc/sysconfig/irqbalance)",
            config.engine_cores
        ));
    }
}

fn plan_drop_in(host: &Host, path: &str, contents: &str, source: &str, plan: &mut Plan) {
    let new = format!("{source} ({} bytes)", contents.len());
    match host.read(path) {
        Ok(current) if current == contents => plan
            .unchanged
            .push((path.to_string(), format!("same as {source}"))),
        current => plan.changes.push(Change {
            path: path.to_string(),
            old: if current.is_ok() {
                "differs".to_string()
            } else {
                "absent".to_string()
            },
            new,
            contents: contents.to_string(),
        }),
    }
}

fn plan_manual_steps(host: &Host, config: &ApplyConfig, plan: &mut Plan) {
    let e = &config.engine_cores;
    let params = host
        .read("/proc/cmdline")
        .map(|c| parse_cmdline(&c))
        .unwrap_or_default();
    let covers = |set: &Option<crate::CpuSet>| set.as_ref().is_some_and(|s| e.is_subset(s));
    if !(covers(&params.isolcpus) && covers(&params.nohz_full)) {
        plan.notes.push(format!(
            "manual (needs a reboot): add `isolcpus=managed_irq,domain,{e} nohz_full={e} rcu_nocbs={e} irqaffinity={}` \
             to GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub (or grub2-mkconfig -o /boot/grub2/grub.cfg)",
            config.irq_cores
        ));
    }
    plan.notes.push(format!(
        "manual: run the engine on {e}: `spate serve --cores {e}` and CPUAffinity={e} in /etc/systemd/system/spate.service; \
         keep the loadgen off {e} and {}",
        config.irq_cores
    ));
}

/// Performs the plan's writes, or only prints them with `dry_run`. Failed writes are reported
/// and counted; the rest of the plan still runs, since the items are independent.
pub fn execute(host: &Host, plan: &Plan, dry_run: bool) -> Outcome {
    let mut out = Outcome::default();
    for change in &plan.changes {
        if dry_run {
            out.lines.push(format!("would set {change}"));
            continue;
        }
        match host.write(&change.path, &change.contents) {
            Ok(()) => out.lines.push(format!("set {change}")),
            Err(e) => {
                out.failures += 1;
                let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    " (run as root)"
                } else {
                    ""
                };
                out.lines.push(format!("FAILED {change}: {e}{hint}"));
            }
        }
    }
    for (path, value) in &plan.unchanged {
        out.lines.push(format!("unchanged {path}: {value}"));
    }
    for note in &plan.notes {
        out.lines.push(format!("note: {note}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use crate::parse::tests_support::INTERRUPTS;

    fn untuned() -> FakeHost {
        let fake = FakeHost::new();
        fake.file("/sys/devices/system/cpu/online", "0-3\n")
            .file(
                "/sys/kernel/mm/transparent_hugepage/enabled",
                "[always] madvise never\n",
            )
            .file("/proc/sys/vm/swappiness", "60\n")
            .file("/proc/sys/kernel/io_uring_disabled", "2\n")
            .file("/proc/sys/net/core/somaxconn", "8192\n")
            .file("/proc/sys/net/ipv4/tcp_max_syn_backlog", "512\n")
            .file("/proc/sys/net/core/netdev_max_backlog", "1000\n")
            .file("/proc/sys/net/core/rmem_max", "212992\n")
            .file("/proc/sys/net/core/wmem_max", "212992\n")
            .file("/proc/sys/net/ipv4/tcp_rmem", "4096\t131072\t6291456\n")
            .file("/proc/sys/net/ipv4/tcp_wmem", "4096\t16384\t16777216\n")
            .file("/proc/sys/net/ipv4/tcp_slow_start_after_idle", "1\n")
            .file(
                "/proc/self/mountinfo",
                "27 1 259:2 / / rw,relatime - xfs /dev/nvme0n1p2 rw\n",
            )
            .dir("/sys/block/nvme0n1/nvme0n1p2")
            .file(
                "/sys/block/nvme0n1/queue/scheduler",
                "[mq-deadline] kyber none\n",
            )
            .file("/sys/block/nvme0n1/queue/rotational", "0\n")
            .file("/sys/block/nvme0n1/queue/nr_requests", "1023\n")
            .file("/proc/interrupts", INTERRUPTS)
            .file("/proc/cmdline", "ro quiet\n");
        for cpu in 0..4 {
            let base = format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq");
            fake.file(
                &format!("{base}/scaling_governor"),
                if cpu == 0 {
                    "performance\n"
                } else {
                    "powersave\n"
                },
            )
            .file(
                &format!("{base}/scaling_available_governors"),
                "performance powersave\n",
            );
        }
        for (irq, list) in [
            (24, "0-3"),
            (25, "0"),
            (26, "1"),
            (27, "2"),
            (28, "3"),
            (30, "0-3"),
            (31, "0"),
            (33, "0-3"),
        ] {
            fake.file(
                &format!("/proc/irq/{irq}/smp_affinity_list"),
                &format!("{list}\n"),
            );
        }
        fake
    }

    fn config(engine: &str, irq: &str) -> ApplyConfig {
        ApplyConfig {
            engine_cores: CpuSet::parse(engine).expect("cores"),
            irq_cores: CpuSet::parse(irq).expect("cores"),
            nic: None,
            data_dir: PathBuf::from("/var/lib/spate"),
        }
    }

    fn changed_paths(plan: &Plan) -> Vec<&str> {
        plan.changes.iter().map(|c| c.path.as_str()).collect()
    }

    #[test]
    fn plan_writes_exactly_what_differs() {
        let fake = untuned();
        let plan = plan(&fake.host(), &config("1-3", "0")).expect("plan");
        assert_eq!(
            changed_paths(&plan),
            [
                "/sys/devices/system/cpu/cpu1/cpufreq/scaling_governor",
                "/sys/devices/system/cpu/cpu2/cpufreq/scaling_governor",
                "/sys/devices/system/cpu/cpu3/cpufreq/scaling_governor",
                "/sys/kernel/mm/transparent_hugepage/enabled",
                "/proc/sys/kernel/io_uring_disabled",
                "/proc/sys/vm/swappiness",
                "/proc/sys/net/ipv4/tcp_max_syn_backlog",
                "/proc/sys/net/core/netdev_max_backlog",
                "/proc/sys/net/core/rmem_max",
                "/proc/sys/net/core/wmem_max",
                "/proc/sys/net/ipv4/tcp_rmem",
                "/proc/sys/net/ipv4/tcp_wmem",
                "/proc/sys/net/ipv4/tcp_slow_start_after_idle",
                "/sys/block/nvme0n1/queue/scheduler",
                "/proc/irq/24/smp_affinity_list",
                "/proc/irq/30/smp_affinity_list",
                "/proc/irq/33/smp_affinity_list",
                "/etc/sysctl.d/99-spate.conf",
                "/etc/security/limits.d/99-spate.conf",
            ]
        );
        let show: Vec<String> = plan.changes.iter().map(|c| c.to_string()).collect();
        assert!(show
            .contains(&"/sys/kernel/mm/transparent_hugepage/enabled: always -> never".to_string()));
        assert!(show.contains(
            &"/proc/sys/net/ipv4/tcp_rmem: 4096 131072 6291456 -> 4096 131072 16777216".to_string()
        ));
        assert!(show.contains(&"/proc/irq/30/smp_affinity_list: 0-3 -> 0".to_string()));
        let drop_in = format!(
            "/etc/sysctl.d/99-spate.conf: absent -> tuning/sysctl/99-spate.conf ({} bytes)",
            SYSCTL_DROP_IN.len()
        );
        assert!(show.contains(&drop_in));
        // somaxconn 8192 is above our 4096 and stays; irq 31 is already on core 0.
        assert!(plan.unchanged.contains(&(
            "/proc/sys/net/core/somaxconn".to_string(),
            "8192".to_string()
        )));
        assert!(plan.unchanged.contains(&(
            "/proc/irq/31/smp_affinity_list".to_string(),
            "0".to_string()
        )));
        assert!(plan
            .notes
            .iter()
            .any(|n| n.starts_with("skipped kernel.numa_balancing: not on this kernel")));
        assert!(plan
            .notes
            .iter()
            .any(|n| n.starts_with("left 4 NVMe I/O queue IRQs alone")));
        assert!(plan.notes.iter().any(|n| n.contains(
            "isolcpus=managed_irq,domain,1-3 nohz_full=1-3 rcu_nocbs=1-3 irqaffinity=0"
        )));
    }

    #[test]
    fn dry_run_prints_and_changes_nothing() {
        let fake = untuned();
        let host = fake.host();
        let plan = plan(&host, &config("1-3", "0")).expect("plan");
        let out = execute(&host, &plan, true);
        assert_eq!(out.failures, 0);
        assert!(out
            .lines
            .contains(&"would set /proc/sys/vm/swappiness: 60 -> 1".to_string()));
        assert!(out
            .lines
            .iter()
            .any(|l| l == "unchanged /proc/sys/net/core/somaxconn: 8192"));
        assert_eq!(
            host.read_value("/proc/sys/vm/swappiness").expect("read"),
            "60"
        );
        assert!(!host.exists(SYSCTL_DROP_IN_PATH));
    }

    #[test]
    fn apply_then_plan_again_is_a_no_op() {
        let fake = untuned();
        let host = fake.host();
        let first = plan(&host, &config("1-3", "0")).expect("plan");
        let out = execute(&host, &first, false);
        assert_eq!(out.failures, 0, "{:?}", out.lines);
        assert!(out
            .lines
            .contains(&"set /proc/sys/vm/swappiness: 60 -> 1".to_string()));
        assert_eq!(
            host.read(SYSCTL_DROP_IN_PATH).expect("installed"),
            SYSCTL_DROP_IN
        );
        let second = plan(&host, &config("1-3", "0")).expect("plan");
        assert_eq!(second.changes, [], "second run must change nothing");
        assert!(execute(&host, &second, false)
            .lines
            .iter()
            .all(|l| !l.starts_with("set ")));
    }

    #[test]
    fn shallow_queue_is_raised_to_the_hardware_depth() {
        let fake = untuned();
        fake.file("/sys/block/nvme0n1/queue/scheduler", "[none] mq-deadline\n")
            .file("/sys/block/nvme0n1/queue/nr_requests", "8\n")
            .file("/sys/block/nvme0n1/mq/0/nr_tags", "1023\n");
        let plan = plan(&fake.host(), &config("1-3", "0")).expect("plan");
        assert!(plan
            .changes
            .iter()
            .any(|c| c.to_string() == "/sys/block/nvme0n1/queue/nr_requests: 8 -> 1023"));
    }

    #[test]
    fn bad_layouts_are_refused() {
        let fake = untuned();
        let host = fake.host();
        assert_eq!(
            plan(&host, &config("0-2", "2")),
            Err(ApplyError::Overlap(CpuSet::parse("2").expect("set")))
        );
        assert!(matches!(
            plan(&host, &config("1-9", "0")),
            Err(ApplyError::Offline { .. })
        ));
        assert_eq!(plan(&host, &config("", "0")), Err(ApplyError::EmptyCores));
    }

    #[test]
    fn failed_writes_are_counted_not_fatal() {
        let fake = untuned();
        let host = fake.host();
        let mut plan = plan(&host, &config("1-3", "0")).expect("plan");
        // A path whose parent is a file cannot be written.
        plan.changes.insert(
            0,
            Change {
                path: "/proc/sys/vm/swappiness/x".into(),
                old: "a".into(),
                new: "b".into(),
                contents: "b".into(),
            },
        );
        let out = execute(&host, &plan, false);
        assert_eq!(out.failures, 1);
        assert!(out.lines[0].starts_with("FAILED /proc/sys/vm/swappiness/x: a -> b: "));
        assert_eq!(
            host.read_value("/proc/sys/vm/swappiness").expect("read"),
            "1",
            "later changes still ran"
        );
    }

    #[test]
    fn raise_only_keeps_larger_fields() {
        assert_eq!(
            merge_numbers("4096 131072 33554432", "4096 131072 16777216", u64::max).as_deref(),
            Some("4096 131072 33554432")
        );
        assert_eq!(merge_numbers("60", "1", u64::min).as_deref(), Some("1"));
        assert_eq!(merge_numbers("1 2", "1 2 3", u64::max), None);
        assert_eq!(merge_numbers("cubic", "bbr", u64::max), None);
    }

    #[test]
    fn sysctl_drop_in_parses() {
        let settings = parse_sysctl_conf(SYSCTL_DROP_IN);
        let keys: Vec<&str> = settings.iter().map(|s| s.key.as_str()).collect();
        assert!(keys.contains(&"vm.swappiness") && keys.contains(&"net.core.somaxconn"));
        let io = settings
            .iter()
            .find(|s| s.key == "kernel.io_uring_disabled")
            .expect("io_uring key");
        assert!(io.optional);
        assert_eq!(io.value, "0");
        for key in RAISE_ONLY.iter().chain(LOWER_ONLY) {
            assert!(
                keys.contains(key),
                "{key} is in the code but not in the drop-in"
            );
        }
        assert_eq!(
            parse_sysctl_conf("; c\n -a.b =  1   2 \nc.d=x\nnot a setting\n"),
            [
                SysctlSetting {
                    key: "a.b".into(),
                    value: "1 2".into(),
                    optional: true
                },
                SysctlSetting {
                    key: "c.d".into(),
                    value: "x".into(),
                    optional: false
                },
            ]
        );
    }
}
