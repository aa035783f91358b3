//! CPU lists (`--cores 1,3-5`) and pinning the load generator's threads to them.
//!
//! The load generator must not share a core with the engine it measures, or every figure
//! mixes the two programs' CPU use; `--cores` names the cores it may run on (the engine gets
//! the others through `spate serve --cores`). Each tokio worker thread is pinned to one of
//! the listed cores, round-robin, as it starts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Parses a CPU list such as `0`, `1,3` or `0-3,8`: ascending, without duplicates.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("empty entry in CPU list {text:?}"));
        }
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (parse_cpu(lo, text)?, parse_cpu(hi, text)?),
            None => {
                let cpu = parse_cpu(part, text)?;
                (cpu, cpu)
            }
        };
        if lo > hi {
            return Err(format!("descending range {part:?} in CPU list {text:?}"));
        }
        if hi - lo >= 4096 {
            return Err(format!("range {part:?} in CPU list {text:?} is too long"));
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    let before = cpus.len();
    cpus.dedup();
    if cpus.len() != before {
        return Err(format!("CPU list {text:?} names a CPU twice"));
    }
    Ok(cpus)
}

fn parse_cpu(s: &str, list: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .map_err(|_| format!("{s:?} is not a CPU number in CPU list {list:?}"))
}

/// Formats a CPU list compactly (`0-3,8`), the inverse of [`parse_cpu_list`].
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// The CPUs this process may run on (its affinity mask), ascending.
pub fn available_cpus() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    ids
}

/// Checks that every CPU of `cpus` is one this process may run on.
pub fn check_available(cpus: &[usize]) -> Result<(), String> {
    let available = available_cpus();
    match cpus.iter().find(|c| !available.contains(c)) {
        Some(c) => Err(format!(
            "CPU {c} is not available to this process (available: {})",
            format_cpu_list(&available)
        )),
        None => Ok(()),
    }
}

/// A thread-start hook pinning each new thread to the next CPU of `cpus`, round-robin.
pub fn pinner(cpus: Vec<usize>) -> impl Fn() + Send + Sync + 'static {
    assert!(!cpus.is_empty(), "pinning needs at least one CPU");
    let next = Arc::new(AtomicUsize::new(0));
    move || {
        let cpu = cpus[next.fetch_add(1, Ordering::Relaxed) % cpus.len()];
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            tracing::warn!(cpu, "could not pin a load-generator thread");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_singles_ranges_and_mixtures() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("1,3").unwrap(), vec![1, 3]);
        assert_eq!(parse_cpu_list("0-3,8").unwrap(), vec![0, 1, 2, 3, 8]);
        assert_eq!(parse_cpu_list(" 5 , 2-3 ").unwrap(), vec![2, 3, 5]);
        assert_eq!(parse_cpu_list("4-4").unwrap(), vec![4]);
    }

    #[test]
    fn refuses_malformed_lists() {
        for bad in [
            "", ",", "1,", "a", "1-", "-1", "3-1", "1,1", "0-2,2", "1.5", "0-99999",
        ] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn formats_back_compactly() {
        for text in ["0", "1,3", "0-3,8", "0-1,3-4,7"] {
            assert_eq!(format_cpu_list(&parse_cpu_list(text).unwrap()), text);
        }
        assert_eq!(format_cpu_list(&[]), "");
    }
}
