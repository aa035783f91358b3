//! End-to-end tests of the `spate-tune` binary against a fake host tree (`--root`): the exit
//! codes CI relies on, the JSON shape, and that `apply --dry-run` changes nothing.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn write(root: &Path, abs: &str, contents: &str) {
    let path = root.join(abs.trim_start_matches('/'));
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, contents).expect("write");
}

/// A 2-CPU host with a too-low memlock limit (a FAIL) and an untuned swappiness.
fn fake_host() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "/sys/devices/system/cpu/online", "0-1\n");
    write(root, "/proc/sys/kernel/osrelease", "6.8.0-45-generic\n");
    write(
        root,
        "/proc/self/limits",
        "Limit                     Soft Limit           Hard Limit           Units\n\
         Max open files            1024                 1024                 files\n\
         Max locked memory         65536                65536                bytes\n",
    );
    write(
        root,
        "/proc/self/mountinfo",
        "27 1 252:1 / / rw - ext4 /dev/vda1 rw\n",
    );
    fs::create_dir_all(root.join("sys/block/vda/vda1")).expect("mkdir");
    write(
        root,
        "/sys/block/vda/queue/scheduler",
        "none [mq-deadline] kyber\n",
    );
    write(root, "/sys/block/vda/queue/nr_requests", "256\n");
    write(root, "/proc/sys/vm/swappiness", "60\n");
    write(root, "/proc/meminfo", "SwapTotal: 1048576 kB\n");
    write(
        root,
        "/proc/interrupts",
        "  CPU0 CPU1\n 30: 5 0 PCI-MSIX-0000:00:03.0 1-edge virtio0-input.0\n",
    );
    write(root, "/proc/irq/30/smp_affinity_list", "0-1\n");
    fs::create_dir_all(root.join("sys/class/net/eth0")).expect("mkdir");
    fs::create_dir_all(root.join("sys/class/net/lo")).expect("mkdir");
    dir
}

fn spate_tune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spate-tune"))
        .args(args)
        .output()
        .expect("run spate-tune")
}

#[test]
fn check_exits_1_on_fail_and_prints_json() {
    let host = fake_host();
    let data = tempfile::tempdir().expect("tempdir");
    let root = host.path().to_str().expect("utf-8 path");
    let data_dir = data.path().to_str().expect("utf-8 path");
    let out = spate_tune(&[
        "check",
        "--root",
        root,
        "--data-dir",
        data_dir,
        "--cores",
        "1",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "memlock FAIL must give exit 1: {out:?}"
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let verdicts = doc["verdicts"].as_array().expect("verdicts");
    assert_eq!(verdicts.len(), spate_tuning::check::ITEMS.len());
    let memlock = verdicts
        .iter()
        .find(|v| v["item"] == "memlock")
        .expect("memlock");
    assert_eq!(memlock["level"], "FAIL");
    assert!(memlock["fix"]
        .as_str()
        .expect("fix")
        .contains("LimitMEMLOCK=infinity"));

    let text = spate_tune(&[
        "check",
        "--root",
        root,
        "--data-dir",
        data_dir,
        "--cores",
        "1",
    ]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("FAIL    memlock ")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("summary: ")),
        "{stdout}"
    );
}

#[test]
fn apply_dry_run_prints_plan_and_changes_nothing() {
    let host = fake_host();
    let root = host.path().to_str().expect("utf-8 path");
    let out = spate_tune(&[
        "apply",
        "--root",
        root,
        "--engine-cores",
        "1",
        "--irq-cores",
        "0",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("would set /proc/sys/vm/swappiness: 60 -> 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("would set /proc/irq/30/smp_affinity_list: 0-1 -> 0"),
        "{stdout}"
    );
    assert_eq!(
        fs::read_to_string(host.path().join("proc/sys/vm/swappiness")).expect("read"),
        "60\n"
    );
    assert!(!host.path().join("etc").exists());
}

#[test]
fn bad_arguments_exit_2() {
    assert_eq!(
        spate_tune(&["check", "--cores", "3-1"]).status.code(),
        Some(2)
    );
    let host = fake_host();
    let root = host.path().to_str().expect("utf-8 path");
    let out = spate_tune(&[
        "apply",
        "--root",
        root,
        "--engine-cores",
        "0-1",
        "--irq-cores",
        "1",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cores 1 are in both"));
    // An interface the host does not have is a command-line error, for both commands.
    for cmd in [
        vec!["check", "--root", root, "--nic", "bogus0"],
        vec![
            "apply",
            "--root",
            root,
            "--engine-cores",
            "1",
            "--irq-cores",
            "0",
            "--nic",
            "bogus0",
            "--dry-run",
        ],
    ] {
        let out = spate_tune(&cmd);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--nic bogus0: no such network interface (this host has: eth0, lo)"),
            "{stderr}"
        );
    }
    let ok = spate_tune(&["check", "--root", root, "--nic", "eth0"]);
    assert_ne!(ok.status.code(), Some(2));
}
