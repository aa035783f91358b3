//! Where the data directory lives: its mount, file system and the whole disks behind it.
//!
//! Both `check` (to judge the scheduler and queue depth) and `apply` (to set them) need the
//! block devices under the data directory. The chain is: the data directory (or, if it does not
//! exist yet, its nearest existing ancestor) → the mount holding it (`/proc/self/mountinfo`) →
//! the device (`/sys/dev/block/MAJ:MIN`, or the mount source) → the whole disk (a partition's
//! parent in `/sys/block`) → for device-mapper and md devices, the disks under them (`slaves/`).

use crate::host::Host;
use crate::parse::{find_mount, parse_mountinfo, parse_mounts, Mount};
use crate::probe::nearest_existing;
use std::path::{Path, PathBuf};

/// What we learned about the data directory's storage.
#[derive(Clone, Debug)]
pub struct DataDirInfo {
    /// The directory the user named.
    pub requested: PathBuf,
    /// Whether it exists; if not, `probe_dir` is its nearest existing ancestor.
    pub exists: bool,
    /// The directory to probe and look up (canonical when it exists).
    pub probe_dir: Option<PathBuf>,
    /// The mount holding `probe_dir`, or why it could not be found.
    pub mount: Result<Mount, String>,
}

impl DataDirInfo {
    /// Resolves `data_dir` against the host's mount table. The directory itself is a real path
    /// even under a test root, because the `O_DIRECT` probe writes into it.
    pub fn resolve(host: &Host, data_dir: &Path) -> Self {
        let exists = data_dir.is_dir();
        let probe_dir = nearest_existing(data_dir)
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()));
        let mount = read_mounts(host).and_then(|mounts| {
            let dir = probe_dir.as_deref().unwrap_or(data_dir);
            find_mount(&mounts, dir)
                .cloned()
                .ok_or_else(|| format!("no mount holds {}", dir.display()))
        });
        Self {
            requested: data_dir.to_path_buf(),
            exists,
            probe_dir,
            mount,
        }
    }

    /// "the data dir" or "/tmp (nearest existing parent of the data dir)", for verdict texts.
    pub fn where_probed(&self) -> String {
        match (&self.probe_dir, self.exists) {
            (Some(dir), true) => dir.display().to_string(),
            (Some(dir), false) => {
                format!(
                    "{} (nearest existing parent of {})",
                    dir.display(),
                    self.requested.display()
                )
            }
            (None, _) => self.requested.display().to_string(),
        }
    }
}

fn read_mounts(host: &Host) -> Result<Vec<Mount>, String> {
    match host.read("/proc/self/mountinfo") {
        Ok(text) => Ok(parse_mountinfo(&text)),
        Err(first) => match host.read("/proc/mounts") {
            Ok(text) => Ok(parse_mounts(&text)),
            Err(_) => Err(first.to_string()),
        },
    }
}

/// The whole disks behind a mount (one for a plain partition, several for RAID or LVM), or why
/// there are none (tmpfs, overlay, network file systems).
pub fn resolve_disks(host: &Host, mount: &Mount) -> Result<Vec<String>, String> {
    let device = device_name(host, mount).ok_or_else(|| {
        format!(
            "{} ({}) is not backed by a local block device",
            mount.source, mount.fs_type
        )
    })?;
    let disk = whole_disk(host, &device).ok_or_else(|| {
        format!(
            "cannot find block device {device} (from {}) in /sys/block",
            mount.source
        )
    })?;
    if disk.starts_with("dm-") || disk.starts_with("md") {
        let slaves = host
            .list_dir(&format!("/sys/block/{disk}/slaves"))
            .unwrap_or_default();
        let mut disks: Vec<String> = slaves.iter().filter_map(|s| whole_disk(host, s)).collect();
        disks.sort();
        disks.dedup();
        if !disks.is_empty() {
            return Ok(disks);
        }
    }
    Ok(vec![disk])
}

/// The kernel name (`nvme0n1p2`, `dm-0`, `vda`) of the device under a mount.
fn device_name(host: &Host, mount: &Mount) -> Option<String> {
    // MAJ:MIN works even for `/dev/root`; major 0 is an anonymous device (tmpfs, btrfs subvols).
    if let Some((major, minor)) = mount.dev.filter(|(major, _)| *major != 0) {
        if let Some(name) = host.link_target_name(&format!("/sys/dev/block/{major}:{minor}")) {
            return Some(name);
        }
    }
    let source = mount.source.strip_prefix("/dev/")?;
    // `/dev/mapper/vg-lv` and `/dev/disk/by-uuid/...` are links to the kernel name.
    host.link_target_name(&mount.source)
        .or_else(|| source.rsplit('/').next().map(str::to_string))
        .filter(|n| !n.is_empty())
}

/// The whole disk a device belongs to: itself if it is in `/sys/block`, else the disk whose
/// directory contains it as a partition (`/sys/block/nvme0n1/nvme0n1p2`).
pub fn whole_disk(host: &Host, device: &str) -> Option<String> {
    if host.exists(&format!("/sys/block/{device}")) {
        return Some(device.to_string());
    }
    host.list_dir("/sys/block")
        .ok()?
        .into_iter()
        .find(|disk| host.exists(&format!("/sys/block/{disk}/{device}")))
}

/// The scheduler we want for a disk. NVMe queues are deep and per-CPU, so any scheduler only
/// adds a lock and latency; virtio disks already have a scheduler on the hypervisor side, where
/// mq-deadline costs little; spinning disks need mq-deadline to bound seek starvation.
pub fn preferred_schedulers(disk: &str, rotational: bool) -> &'static [&'static str] {
    if disk.starts_with("nvme") {
        &["none"]
    } else if rotational {
        &["mq-deadline", "bfq"]
    } else {
        &["none", "mq-deadline"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    fn mount(source: &str, fs_type: &str, dev: Option<(u32, u32)>) -> Mount {
        Mount {
            source: source.into(),
            mount_point: "/".into(),
            fs_type: fs_type.into(),
            dev,
            options: Vec::new(),
        }
    }

    #[test]
    fn partition_resolves_to_its_disk() {
        let fake = FakeHost::new();
        fake.dir("/sys/block/nvme0n1/nvme0n1p2")
            .dir("/sys/block/nvme1n1")
            .dir("/sys/block/loop0");
        let host = fake.host();
        assert_eq!(
            resolve_disks(&host, &mount("/dev/nvme0n1p2", "ext4", None)),
            Ok(vec!["nvme0n1".to_string()])
        );
        assert_eq!(
            resolve_disks(&host, &mount("/dev/nvme1n1", "xfs", None)),
            Ok(vec!["nvme1n1".to_string()])
        );
    }

    #[test]
    fn device_mapper_resolves_to_slaves() {
        let fake = FakeHost::new();
        fake.dir("/sys/block/nvme0n1/nvme0n1p1")
            .dir("/sys/block/nvme1n1/nvme1n1p1")
            .dir("/sys/block/dm-0/slaves/nvme0n1p1")
            .dir("/sys/block/dm-0/slaves/nvme1n1p1");
        fake.dir("/sys/dev/block");
        std::os::unix::fs::symlink(
            "../../block/dm-0",
            fake.dir.path().join("sys/dev/block/253:0"),
        )
        .expect("symlink");
        let host = fake.host();
        let disks = resolve_disks(&host, &mount("/dev/mapper/vg-data", "xfs", Some((253, 0))));
        assert_eq!(
            disks,
            Ok(vec!["nvme0n1".to_string(), "nvme1n1".to_string()])
        );
    }

    #[test]
    fn tmpfs_has_no_disk() {
        let fake = FakeHost::new();
        fake.dir("/sys/block/vda");
        let err = resolve_disks(&fake.host(), &mount("tmpfs", "tmpfs", Some((0, 30))))
            .expect_err("no disk");
        assert_eq!(err, "tmpfs (tmpfs) is not backed by a local block device");
    }

    #[test]
    fn scheduler_preferences() {
        assert_eq!(preferred_schedulers("nvme0n1", false), ["none"]);
        assert_eq!(preferred_schedulers("vda", false), ["none", "mq-deadline"]);
        assert_eq!(preferred_schedulers("sda", true), ["mq-deadline", "bfq"]);
    }
}
