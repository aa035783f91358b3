//! CPU sets in the kernel's "cpulist" notation (`0-3,6`, `0-15:2/4`).
//!
//! The same notation appears in `/sys/devices/system/cpu/online`, `/proc/irq/N/smp_affinity_list`,
//! the `isolcpus=`/`nohz_full=` boot parameters and our own `--cores` options, so one parser and
//! one printer serve all of them and a set read from the kernel can be written back verbatim.

use std::collections::BTreeSet;
use std::fmt;

/// Upper bound on a CPU number we accept. Linux's `NR_CPUS` tops out at 8192; anything larger in
/// a list is a typo or garbage, and refusing it keeps `0-4294967295` from allocating gigabytes.
pub const CPU_ID_MAX: u32 = 8191;

/// An ordered set of logical CPU numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuSet(BTreeSet<u32>);

/// Why a cpulist could not be parsed; the message quotes the offending piece.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid CPU list {list:?}: {reason}")]
pub struct CpuListError {
    pub list: String,
    pub reason: String,
}

impl CpuSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `0-3,6`, `0-15:2/4` (the kernel's "use 2 of every 4" group syntax) and the empty
    /// string (an empty set, which is what the kernel writes for "no CPU").
    pub fn parse(list: &str) -> Result<Self, CpuListError> {
        let err = |reason: String| CpuListError {
            list: list.to_string(),
            reason,
        };
        let mut set = BTreeSet::new();
        for piece in list
            .trim()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (range, group) = match piece.split_once(':') {
                Some((range, group)) => (range, Some(group)),
                None => (piece, None),
            };
            let (first, last) = match range.split_once('-') {
                Some((a, b)) => (parse_cpu(a).map_err(&err)?, parse_cpu(b).map_err(&err)?),
                None => {
                    let cpu = parse_cpu(range).map_err(&err)?;
                    (cpu, cpu)
                }
            };
            if first > last {
                return Err(err(format!("range {range:?} runs backwards")));
            }
            let (used, size) = match group {
                None => (1, 1),
                Some(group) => {
                    let (used, size) = group
                        .split_once('/')
                        .ok_or_else(|| err(format!("group {group:?} is not USED/SIZE")))?;
                    let used = parse_cpu(used).map_err(&err)?;
                    let size = parse_cpu(size).map_err(&err)?;
                    if used == 0 || size == 0 || used > size {
                        return Err(err(format!("group {group:?} needs 0 < USED <= SIZE")));
                    }
                    (used, size)
                }
            };
            set.extend((first..=last).filter(|cpu| (cpu - first) % size < used));
        }
        Ok(Self(set))
    }

    pub fn from_cpus(cpus: impl IntoIterator<Item = u32>) -> Self {
        Self(cpus.into_iter().collect())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.intersection(&other.0).copied().collect())
    }

    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.difference(&other.0).copied().collect())
    }

    pub fn union(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.union(&other.0).copied().collect())
    }
}

fn parse_cpu(text: &str) -> Result<u32, String> {
    let cpu: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a CPU number"))?;
    if cpu > CPU_ID_MAX {
        return Err(format!(
            "CPU {cpu} is above the kernel's maximum {CPU_ID_MAX}"
        ));
    }
    Ok(cpu)
}

/// Prints the compact kernel form (`0-3,6`), so the output can be pasted into a boot parameter,
/// an `smp_affinity_list` file or `CPUAffinity=`.
impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut cpus = self.0.iter().copied().peekable();
        let mut first_range = true;
        while let Some(start) = cpus.next() {
            let mut end = start;
            while cpus.peek() == Some(&(end + 1)) {
                end += 1;
                cpus.next();
            }
            if !first_range {
                f.write_str(",")?;
            }
            first_range = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(list: &str) -> Vec<u32> {
        CpuSet::parse(list).expect("valid list").iter().collect()
    }

    #[test]
    fn parses_kernel_cpulists() {
        assert_eq!(cpus("0-3,6"), [0, 1, 2, 3, 6]);
        assert_eq!(cpus("5"), [5]);
        assert_eq!(cpus(" 2-5\n"), [2, 3, 4, 5]);
        assert_eq!(cpus(""), Vec::<u32>::new());
        assert_eq!(cpus("0-15:2/4"), [0, 1, 4, 5, 8, 9, 12, 13]);
        assert_eq!(cpus("3,1,1-2"), [1, 2, 3]);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["a", "3-1", "0-", "1-2:3/2", "1:x", "99999", "0-1:0/4"] {
            assert!(CpuSet::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn prints_compact_ranges_and_round_trips() {
        for list in ["0-3,6", "1", "0,2,4", "0-1,8-15", ""] {
            assert_eq!(CpuSet::parse(list).expect("valid").to_string(), list);
        }
    }

    #[test]
    fn set_operations() {
        let a = CpuSet::parse("0-3").expect("valid");
        let b = CpuSet::parse("2-5").expect("valid");
        assert_eq!(a.intersection(&b).to_string(), "2-3");
        assert_eq!(a.difference(&b).to_string(), "0-1");
        assert_eq!(a.union(&b).to_string(), "0-5");
        assert!(CpuSet::parse("2").expect("valid").is_subset(&a));
    }
}
