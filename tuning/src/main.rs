//! `spate-tune`: check a host for Spate (`check`) and tune it (`apply`).
//!
//! Exit status: `check` returns 1 when any item FAILs, else 0; `apply` returns 1 when a write
//! failed; both return 2 for bad arguments (clap's convention), so CI can tell "this machine is
//! not tuned" (1) from "the tool is broken" (2, or 101 for a panic).

use clap::{Parser, Subcommand};
use spate_tuning::apply::{self, ApplyConfig};
use spate_tuning::check::{self, CheckConfig};
use spate_tuning::host::Host;
use spate_tuning::CpuSet;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "spate-tune",
    version,
    about = "Check and tune a Linux host for Spate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect the host: one OK/WARN/FAIL/UNKNOWN line per item with the fix. Changes nothing
    /// (writes and removes one probe file in the data directory).
    Check {
        /// The engine's data directory; if missing, its nearest existing parent is examined.
        #[arg(long, default_value = "/var/lib/spate")]
        data_dir: PathBuf,
        /// The engine's cores (as for `spate serve --cores`), e.g. `2-5`. Default: all.
        #[arg(long, value_parser = parse_cpus)]
        cores: Option<CpuSet>,
        /// Cores reserved for NIC and NVMe interrupts.
        #[arg(long, value_parser = parse_cpus)]
        irq_cores: Option<CpuSet>,
        /// Only this network interface's IRQs count as the NIC's.
        #[arg(long)]
        nic: Option<String>,
        /// Print one JSON object instead of lines.
        #[arg(long)]
        json: bool,
        /// Read /proc, /sys and /etc under this directory (testing).
        #[arg(long, hide = true)]
        root: Option<PathBuf>,
    },
    /// Apply the recommended settings for a core layout. Idempotent; needs root unless
    /// --dry-run.
    Apply {
        /// The engine's cores.
        #[arg(long, value_parser = parse_cpus)]
        engine_cores: CpuSet,
        /// Cores that take NIC and NVMe admin interrupts; must not overlap the engine's.
        #[arg(long, value_parser = parse_cpus)]
        irq_cores: CpuSet,
        /// Print every change as `would set PATH: OLD -> NEW` and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only move this network interface's IRQs (default: every NIC's).
        #[arg(long)]
        nic: Option<String>,
        /// The data directory whose disk gets the scheduler and queue depth settings.
        #[arg(long, default_value = "/var/lib/spate")]
        data_dir: PathBuf,
        /// Read and write /proc, /sys and /etc under this directory (testing).
        #[arg(long, hide = true)]
        root: Option<PathBuf>,
    },
}

fn parse_cpus(list: &str) -> Result<CpuSet, String> {
    CpuSet::parse(list).map_err(|e| e.to_string())
}

fn host(root: Option<PathBuf>) -> Host {
    root.map_or_else(Host::live, Host::with_root)
}

/// A `--nic` that names no interface of the host is a command-line error, not a finding
/// (it said "no NIC queue IRQs found for bogus0", as if the interface existed).
fn check_nic(host: &Host, nic: Option<&str>) -> Result<(), String> {
    let Some(nic) = nic else { return Ok(()) };
    let interfaces = host.list_dir("/sys/class/net").unwrap_or_default();
    if interfaces.is_empty() || interfaces.iter().any(|i| i == nic) {
        return Ok(());
    }
    Err(format!(
        "--nic {nic}: no such network interface (this host has: {})",
        interfaces.join(", ")
    ))
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check {
            data_dir,
            cores,
            irq_cores,
            nic,
            json,
            root,
        } => {
            let config = CheckConfig {
                data_dir,
                engine_cores: cores,
                irq_cores,
                nic,
            };
            let host = host(root);
            if let Err(e) = check_nic(&host, config.nic.as_deref()) {
                eprintln!("spate-tune check: {e}");
                return ExitCode::from(2);
            }
            let verdicts = check::run_checks(&host, &config);
            if json {
                let doc = serde_json::json!({
                    "data_dir": config.data_dir,
                    "engine_cores": config.engine_cores.as_ref().map(|c| c.to_string()),
                    "irq_cores": config.irq_cores.as_ref().map(|c| c.to_string()),
                    "verdicts": verdicts,
                    "summary": check::summary(&verdicts),
                });
                println!("{doc:#}");
            } else {
                println!(
                    "spate-tune check: data dir {}, engine cores {}, IRQ cores {}",
                    config.data_dir.display(),
                    config
                        .engine_cores
                        .as_ref()
                        .map_or("all".to_string(), |c| c.to_string()),
                    config
                        .irq_cores
                        .as_ref()
                        .map_or("not given".to_string(), |c| c.to_string()),
                );
                for verdict in &verdicts {
                    println!("{verdict}");
                }
                println!("summary: {}", check::summary(&verdicts));
            }
            ExitCode::from(check::exit_code(&verdicts) as u8)
        }
        Command::Apply {
            engine_cores,
            irq_cores,
            dry_run,
            nic,
            data_dir,
            root,
        } => {
            let host = host(root);
            if let Err(e) = check_nic(&host, nic.as_deref()) {
                eprintln!("spate-tune apply: {e}");
                return ExitCode::from(2);
            }
            let config = ApplyConfig {
                engine_cores,
                irq_cores,
                nic,
                data_dir,
            };
            let plan = match apply::plan(&host, &config) {
                Ok(plan) => plan,
                Err(e) => {
                    eprintln!("spate-tune apply: {e}");
                    return ExitCode::from(2);
                }
            };
            let outcome = apply::execute(&host, &plan, dry_run);
            for line in &outcome.lines {
                println!("{line}");
            }
            let verb = if dry_run { "would change" } else { "changed" };
            println!(
                "summary: {verb} {}, unchanged {}, failed {}",
                plan.changes.len() - outcome.failures,
                plan.unchanged.len(),
                outcome.failures
            );
            ExitCode::from(u8::from(outcome.failures > 0))
        }
    }
}
