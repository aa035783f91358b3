//! The host's NIC and NVMe interrupts and where they are allowed to run.
//!
//! An interrupt that lands on an engine core steals it for the handler and the softirq after it,
//! and evicts the engine's cache lines: a few microseconds each time, at random, which is exactly
//! what shows up at p99.9. `check` reports which NIC and NVMe IRQs can land on engine cores;
//! `apply` moves the movable ones to the IRQ cores.

use crate::cpus::CpuSet;
use crate::host::Host;
use crate::parse::{classify_irq, parse_interrupts, parse_irq_affinity_list, IrqKind};

/// One device interrupt we care about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceIrq {
    pub irq: u32,
    pub name: String,
    pub kind: IrqKind,
    /// `/proc/irq/N/smp_affinity_list`, or why it could not be read.
    pub affinity: Result<CpuSet, String>,
}

/// The NIC and NVMe interrupts of the host.
#[derive(Clone, Debug, Default)]
pub struct IrqInventory {
    pub irqs: Vec<DeviceIrq>,
    /// Whether an `irqbalance` daemon runs; it rewrites affinities every few seconds.
    pub irqbalance_running: bool,
}

impl IrqInventory {
    /// Reads `/proc/interrupts` and each matching IRQ's affinity. With `nic` set, only that
    /// interface's queues count as NIC IRQs; otherwise every NIC the host has.
    pub fn read(host: &Host, nic: Option<&str>) -> Result<Self, String> {
        let text = host.read("/proc/interrupts").map_err(|e| e.to_string())?;
        let hints = nic_hints(host, nic);
        let mut irqs = Vec::new();
        for line in parse_interrupts(&text) {
            for name in &line.names {
                let kind = match (classify_irq(name, &hints), nic) {
                    // With --nic, a generic NIC pattern is not enough: it must be that NIC's.
                    (Some(IrqKind::Nic), Some(_))
                        if !crate::parse::irq_matches_nic_hints(name, &hints) =>
                    {
                        continue
                    }
                    (Some(kind), _) => kind,
                    (None, _) => continue,
                };
                let affinity = host
                    .read(&format!("/proc/irq/{}/smp_affinity_list", line.irq))
                    .map_err(|e| e.to_string())
                    .and_then(|t| parse_irq_affinity_list(&t).map_err(|e| e.to_string()));
                irqs.push(DeviceIrq {
                    irq: line.irq,
                    name: name.clone(),
                    kind,
                    affinity,
                });
                // A shared line is one IRQ: record it once even if two of its names match.
                break;
            }
        }
        Ok(Self {
            irqs,
            irqbalance_running: process_running(host, "irqbalance"),
        })
    }

    pub fn of_kind(&self, kind: IrqKind) -> impl Iterator<Item = &DeviceIrq> {
        self.irqs.iter().filter(move |i| i.kind == kind)
    }
}

/// Names that identify the host's NICs in IRQ names: the interface names, and the device each
/// interface sits on (`virtio2`, or a PCI address like `0000:3b:00.0`). Virtual interfaces
/// (loopback, bridges, veth) have no IRQs and are skipped.
fn nic_hints(host: &Host, only: Option<&str>) -> Vec<String> {
    let ifaces = match only {
        Some(iface) => vec![iface.to_string()],
        None => host.list_dir("/sys/class/net").unwrap_or_default(),
    };
    let mut hints = Vec::new();
    for iface in ifaces {
        let device = host.link_target_name(&format!("/sys/class/net/{iface}/device"));
        if device.is_none() && only.is_none() {
            continue;
        }
        hints.push(iface);
        hints.extend(device);
    }
    hints
}

/// Whether a process with this `comm` runs, from `/proc/PID/comm`.
fn process_running(host: &Host, comm: &str) -> bool {
    let Ok(entries) = host.list_dir("/proc") else {
        return false;
    };
    entries
        .iter()
        .filter(|e| e.chars().all(|c| c.is_ascii_digit()))
        .any(|pid| {
            host.read_value(&format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c == comm)
        })
}

/// "IRQ 30 virtio0-input.0 → 0-3, IRQ 31 ..." with at most `max` entries, for verdicts.
pub fn describe(irqs: &[&DeviceIrq], max: usize) -> String {
    let mut parts: Vec<String> = irqs
        .iter()
        .take(max)
        .map(|i| match &i.affinity {
            Ok(set) => format!("{} {} -> {}", i.irq, i.name, set),
            Err(_) => format!("{} {} -> ?", i.irq, i.name),
        })
        .collect();
    if irqs.len() > max {
        parts.push(format!("and {} more", irqs.len() - max));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    pub(crate) fn sample_host() -> FakeHost {
        let fake = FakeHost::new();
        fake.file("/proc/interrupts", crate::parse::tests_support::INTERRUPTS);
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
        fake.file("/proc/812/comm", "irqbalance\n")
            .file("/proc/1/comm", "systemd\n");
        fake
    }

    #[test]
    fn finds_nic_and_nvme_irqs_with_affinity() {
        let fake = sample_host();
        let inv = IrqInventory::read(&fake.host(), None).expect("inventory");
        let nic: Vec<u32> = inv.of_kind(IrqKind::Nic).map(|i| i.irq).collect();
        assert_eq!(nic, [30, 31, 33]);
        let nvme_io: Vec<u32> = inv.of_kind(IrqKind::NvmeIo).map(|i| i.irq).collect();
        assert_eq!(nvme_io, [25, 26, 27, 28]);
        assert_eq!(
            inv.of_kind(IrqKind::NvmeAdmin).next().map(|i| i.irq),
            Some(24)
        );
        assert_eq!(inv.irqs[0].affinity, Ok(CpuSet::parse("0-3").expect("set")));
        assert!(inv.irqbalance_running);
        let nic: Vec<&DeviceIrq> = inv.of_kind(IrqKind::Nic).collect();
        assert_eq!(
            describe(&nic, 2),
            "30 virtio0-input.0 -> 0-3, 31 virtio0-output.0 -> 0, and 1 more"
        );
    }

    #[test]
    fn nic_option_limits_to_that_interface() {
        let fake = sample_host();
        let inv = IrqInventory::read(&fake.host(), Some("eth1")).expect("inventory");
        let nic: Vec<u32> = inv.of_kind(IrqKind::Nic).map(|i| i.irq).collect();
        assert_eq!(nic, [33], "virtio0 queues belong to another NIC");
    }

    #[test]
    fn virtio_nic_found_through_its_device_link() {
        let fake = sample_host();
        fake.dir("/sys/devices/pci0000:00/0000:00:03.0/virtio0/net/eth0");
        fake.dir("/sys/class/net");
        std::os::unix::fs::symlink(
            "../../../virtio0",
            fake.dir
                .path()
                .join("sys/devices/pci0000:00/0000:00:03.0/virtio0/net/eth0/device"),
        )
        .expect("symlink");
        std::os::unix::fs::symlink(
            "../../devices/pci0000:00/0000:00:03.0/virtio0/net/eth0",
            fake.dir.path().join("sys/class/net/eth0"),
        )
        .expect("symlink");
        let inv = IrqInventory::read(&fake.host(), Some("eth0")).expect("inventory");
        let nic: Vec<u32> = inv.of_kind(IrqKind::Nic).map(|i| i.irq).collect();
        assert_eq!(nic, [30, 31]);
    }

    #[test]
    fn unreadable_affinity_is_reported_not_fatal() {
        let fake = FakeHost::new();
        fake.file(
            "/proc/interrupts",
            "  CPU0\n 40:  5  PCI-MSI 1-edge  nvme0q1\n",
        );
        let inv = IrqInventory::read(&fake.host(), None).expect("inventory");
        assert_eq!(inv.irqs.len(), 1);
        assert!(inv.irqs[0]
            .affinity
            .as_ref()
            .expect_err("missing")
            .contains("/proc/irq/40/smp_affinity_list"));
        assert!(!inv.irqbalance_running);
    }
}
