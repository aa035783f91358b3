//! A simulated disk for tests: in memory, deterministic from a seed, and hostile.
//!
//! It models what a real disk and file system may do to a store:
//! - file data: writes are acknowledged but not durable until an `fdatasync` of that file;
//!   a crash keeps a random subset of the un-synced writes, each kept whole, torn at a
//!   sector boundary, or lost;
//! - directories: creating, renaming and removing names (files and directories) is not
//!   durable until a `sync_dir` of the directory that holds the name; a crash keeps a random
//!   prefix of each directory's un-synced changes, and a name whose parent directory did not
//!   survive is gone with it;
//! - faults: short writes, I/O errors on write and on fdatasync, a full disk.
//!
//! Every choice comes from one seeded PRNG, so a failing test prints its seed and replays
//! exactly. Files are inodes: a handle keeps working across a rename or an unlink, as on
//! Linux. `write_small_atomic` is durable at once (the real storage fsyncs the file and its
//! directory before it returns).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::io::{IoBuf, SegFile, Storage, BLOCK_BYTES};

/// Sector size: the unit a torn write is cut at.
const SECTOR_BYTES: usize = 512;

/// Fault rates, in parts per million of operations.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimFaults {
    pub write_error_ppm: u32,
    pub short_write_ppm: u32,
    pub sync_error_ppm: u32,
    /// Creating new files fails with ENOSPC while set.
    pub disk_full: bool,
    /// A disk of this many bytes: creating a file that would take more than is free fails
    /// with ENOSPC, and `free_bytes` reports what the named files leave.
    pub capacity_bytes: Option<u64>,
    /// Each flush (an fdatasync, or the flush half of an O_DSYNC write) also blocks the
    /// calling thread this long in real time: a stalled disk, for what times rounds by the
    /// real clock (the stalled-round warning).
    pub flush_delay_ms: u32,
}

/// A small, fast, seedable PRNG (SplitMix64): no dependency, identical on every platform.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn chance_ppm(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.below(1_000_000) < u64::from(ppm)
    }
}

#[derive(Debug, Default)]
struct Inode {
    /// What a reader sees now.
    current: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Writes since the last successful sync, in order: (offset, bytes).
    pending: Vec<(usize, Vec<u8>)>,
}

/// What a name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir,
}

/// One un-synced change of a directory, applied whole or not at all: each `path` now names
/// `entry`, or nothing (removed, with everything under it). A rename within a directory is
/// one change of two edits, atomic as on a real file system.
#[derive(Debug, Clone)]
struct DirChange {
    edits: Vec<(PathBuf, Option<Entry>)>,
}

#[derive(Debug)]
struct Disk {
    /// The namespace as processes see it now.
    names: BTreeMap<PathBuf, Entry>,
    /// The namespace that survives a crash, before un-synced changes.
    durable_names: BTreeMap<PathBuf, Entry>,
    /// Un-synced changes, per directory, in order.
    pending_dirs: BTreeMap<PathBuf, Vec<DirChange>>,
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    rng: SimRng,
    faults: SimFaults,
    /// Extra yields a write or flush may take (`SimStorage::set_io_jitter`).
    io_jitter: u32,
    stats: SimStats,
}

/// Counters a test can assert on.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimStats {
    pub writes: u64,
    pub syncs: u64,
    /// O_DSYNC writes (also counted in `writes`).
    pub dsync_writes: u64,
    pub dir_syncs: u64,
    pub injected_faults: u64,
    pub bytes_written: u64,
}

/// The simulated disk. Cloning gives another handle to the same disk.
#[derive(Debug, Clone)]
pub struct SimStorage {
    disk: Rc<RefCell<Disk>>,
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn apply(names: &mut BTreeMap<PathBuf, Entry>, change: &DirChange) {
    for (path, entry) in &change.edits {
        match entry {
            Some(e) => {
                names.insert(path.clone(), *e);
            }
            None => names.retain(|p, _| !p.starts_with(path)),
        }
    }
}

impl Disk {
    fn change(&mut self, path: &Path, entry: Option<Entry>) {
        self.change_many(parent(path), vec![(path.to_path_buf(), entry)]);
    }

    fn change_many(&mut self, dir: PathBuf, edits: Vec<(PathBuf, Option<Entry>)>) {
        let c = DirChange { edits };
        apply(&mut self.names, &c);
        self.pending_dirs.entry(dir).or_default().push(c);
    }

    /// Bytes of the files that have names now.
    fn used_bytes(&self) -> u64 {
        let ids: std::collections::HashSet<u64> = self
            .names
            .values()
            .filter_map(|e| match e {
                Entry::File(id) => Some(*id),
                _ => None,
            })
            .collect();
        ids.iter()
            .map(|id| self.inodes.get(id).map_or(0, |i| i.current.len() as u64))
            .sum()
    }

    fn free_bytes(&self) -> u64 {
        if self.faults.disk_full {
            return 0;
        }
        match self.faults.capacity_bytes {
            Some(cap) => cap.saturating_sub(self.used_bytes()),
            None => u64::MAX / 2,
        }
    }

    fn new_file(&mut self, path: &Path, inode: Inode) -> u64 {
        let id = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(id, inode);
        self.change(path, Some(Entry::File(id)));
        id
    }

    fn require_parent(&self, path: &Path) -> io::Result<()> {
        let p = parent(path);
        if p.as_os_str().is_empty()
            || p == Path::new("/")
            || self.names.get(&p) == Some(&Entry::Dir)
        {
            Ok(())
        } else {
            Err(not_found(&p))
        }
    }

    fn file(&self, path: &Path) -> io::Result<u64> {
        match self.names.get(path) {
            Some(Entry::File(id)) => Ok(*id),
            _ => Err(not_found(path)),
        }
    }
}

impl SimStorage {
    pub fn new(seed: u64) -> SimStorage {
        SimStorage {
            disk: Rc::new(RefCell::new(Disk {
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                pending_dirs: BTreeMap::new(),
                inodes: HashMap::new(),
                next_inode: 1,
                rng: SimRng::new(seed),
                faults: SimFaults::default(),
                io_jitter: 0,
                stats: SimStats::default(),
            })),
        }
    }

    pub fn set_faults(&self, faults: SimFaults) {
        self.disk.borrow_mut().faults = faults;
    }

    /// From now on every file write and flush stays in flight for 1 to `extra + 1` yields
    /// (seeded), instead of exactly one: completions come out of order (0: off).
    pub fn set_io_jitter(&self, extra: u32) {
        self.disk.borrow_mut().io_jitter = extra;
    }

    pub fn stats(&self) -> SimStats {
        self.disk.borrow().stats
    }

    /// Power loss: every directory keeps a random prefix of its un-synced changes (names
    /// under a directory that did not survive are gone), and every file reverts to its
    /// durable contents plus a random subset of its un-synced writes, each kept whole, torn
    /// at a sector boundary, or lost. Handles opened before the crash must not be used
    /// afterwards (the engine reopens everything).
    pub fn crash(&self) {
        let mut disk = self.disk.borrow_mut();
        let Disk {
            names,
            durable_names,
            pending_dirs,
            inodes,
            rng,
            ..
        } = &mut *disk;
        for changes in std::mem::take(pending_dirs).into_values() {
            let keep = rng.below(changes.len() as u64 + 1) as usize;
            for c in &changes[..keep] {
                apply(durable_names, c);
            }
        }
        // A name survives only if every directory above it did.
        let snapshot = durable_names.clone();
        durable_names.retain(|p, _| {
            p.ancestors()
                .skip(1)
                .filter(|a| !a.as_os_str().is_empty() && *a != Path::new("/"))
                .all(|a| snapshot.get(a) == Some(&Entry::Dir))
        });
        *names = durable_names.clone();
        let live: std::collections::HashSet<u64> = names
            .values()
            .filter_map(|e| match e {
                Entry::File(id) => Some(*id),
                Entry::Dir => None,
            })
            .collect();
        inodes.retain(|id, _| live.contains(id));
        let mut ids: Vec<u64> = inodes.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let inode = inodes.get_mut(&id).expect("inode");
            let mut image = inode.durable.clone();
            for (pos, bytes) in inode.pending.drain(..) {
                let keep = match rng.below(3) {
                    0 => 0,
                    1 => bytes.len(),
                    _ => rng.below((bytes.len() / SECTOR_BYTES) as u64 + 1) as usize * SECTOR_BYTES,
                };
                let keep = keep.min(bytes.len());
                if image.len() < pos + keep {
                    image.resize(pos + keep, 0);
                }
                image[pos..pos + keep].copy_from_slice(&bytes[..keep]);
            }
            inode.current = image.clone();
            inode.durable = image;
        }
    }

    /// Reads a file's current contents (test inspection).
    pub fn file_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let disk = self.disk.borrow();
        let id = disk.file(path).ok()?;
        Some(disk.inodes[&id].current.clone())
    }

    /// Whether `path` names something now.
    pub fn exists(&self, path: &Path) -> bool {
        self.disk.borrow().names.contains_key(path)
    }

    /// Every file path now, sorted (test inspection).
    pub fn files(&self) -> Vec<PathBuf> {
        let disk = self.disk.borrow();
        disk.names
            .iter()
            .filter(|(_, e)| matches!(e, Entry::File(_)))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Overwrites bytes of a file durably (test corruption).
    pub fn corrupt(&self, path: &Path, pos: usize, bytes: &[u8]) {
        let mut disk = self.disk.borrow_mut();
        let id = disk.file(path).expect("file to corrupt");
        let inode = disk.inodes.get_mut(&id).expect("inode");
        inode.current[pos..pos + bytes.len()].copy_from_slice(bytes);
        inode.durable[pos..pos + bytes.len()].copy_from_slice(bytes);
    }
}

/// A block-aligned-by-contract buffer for the simulated disk.
#[derive(Debug)]
pub struct SimBuf(Vec<u8>);

impl AsRef<[u8]> for SimBuf {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for SimBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl IoBuf for SimBuf {
    fn trim(&mut self, len: usize) {
        assert!(len <= self.0.len());
        self.0.truncate(len);
    }
}

/// An open simulated file.
#[derive(Debug)]
pub struct SimFile {
    disk: Rc<RefCell<Disk>>,
    inode: u64,
}

/// Returns `Pending` once, as a real device would: other tasks run while I/O is in flight,
/// which is what lets appends pile up behind a flush (group commit) in tests.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("injected I/O error on {what}"))
}

impl SimFile {
    /// A write or flush in flight: one yield, or with `set_io_jitter(n)` one to `n + 1`
    /// (seeded), so operations issued together may complete in any order.
    async fn in_flight(&self) {
        let yields = {
            let mut disk = self.disk.borrow_mut();
            let jitter = disk.io_jitter;
            if jitter == 0 {
                1
            } else {
                1 + disk.rng.below(u64::from(jitter) + 1)
            }
        };
        for _ in 0..yields {
            yield_once().await;
        }
    }

    /// The write itself, at once (the caller has yielded as a device would).
    fn write_now(&self, buf: &SimBuf, pos: u64) -> io::Result<usize> {
        let mut disk = self.disk.borrow_mut();
        let bytes: &[u8] = buf.as_ref();
        assert_eq!(
            pos % BLOCK_BYTES as u64,
            0,
            "unaligned direct write at {pos}"
        );
        assert_eq!(
            bytes.len() % BLOCK_BYTES,
            0,
            "unaligned direct write length"
        );
        disk.stats.writes += 1;
        let faults = disk.faults;
        if disk.rng.chance_ppm(faults.write_error_ppm) {
            disk.stats.injected_faults += 1;
            return Err(eio("write"));
        }
        let mut len = bytes.len();
        if disk.rng.chance_ppm(faults.short_write_ppm) && len > BLOCK_BYTES {
            disk.stats.injected_faults += 1;
            len = disk.rng.below((len / BLOCK_BYTES) as u64) as usize * BLOCK_BYTES;
        }
        disk.stats.bytes_written += len as u64;
        let inode = disk
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| eio("stale handle"))?;
        let pos = pos as usize;
        if pos + len > inode.current.len() {
            // Data files are pre-written and never extended by the engine.
            panic!(
                "write of {len} bytes at {pos} past the end of a {} byte file",
                inode.current.len()
            );
        }
        inode.current[pos..pos + len].copy_from_slice(&bytes[..len]);
        inode.pending.push((pos, bytes[..len].to_vec()));
        Ok(len)
    }
}

/// Blocks the thread for `SimFaults::flush_delay_ms`, if set.
fn stall(disk: &RefCell<Disk>) {
    let ms = disk.borrow().faults.flush_delay_ms;
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(u64::from(ms)));
    }
}

impl SegFile for SimFile {
    type Buf = SimBuf;
    type ReadBuf = Vec<u8>;

    async fn write_at(&self, buf: Rc<SimBuf>, pos: u64) -> io::Result<usize> {
        self.in_flight().await;
        self.write_now(&buf, pos)
    }

    async fn write_at_durable(&self, buf: Rc<SimBuf>, pos: u64) -> io::Result<usize> {
        self.in_flight().await;
        let len = self.write_now(&buf, pos)?;
        // The O_DSYNC half: the device flush may fail like an fdatasync, after the bytes
        // reached the page cache (their fate is then unknown: left pending, a crash decides).
        stall(&self.disk);
        let mut disk = self.disk.borrow_mut();
        disk.stats.dsync_writes += 1;
        let faults = disk.faults;
        if disk.rng.chance_ppm(faults.sync_error_ppm) {
            disk.stats.injected_faults += 1;
            return Err(eio("O_DSYNC write"));
        }
        let inode = disk
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| eio("stale handle"))?;
        // Exactly this write's bytes become durable. Earlier unsynced writes stay pending
        // (nothing says the flush covered them), less the bytes this write replaced: a crash
        // must not bring those older bytes back over durable ones.
        let (from, to) = (pos as usize, pos as usize + len);
        let (_, bytes) = inode.pending.pop().expect("the write just made");
        let mut rest = Vec::with_capacity(inode.pending.len());
        for (p, b) in inode.pending.drain(..) {
            let end = p + b.len();
            if end <= from || p >= to {
                rest.push((p, b));
                continue;
            }
            if p < from {
                rest.push((p, b[..from - p].to_vec()));
            }
            if end > to {
                rest.push((to, b[to - p..].to_vec()));
            }
        }
        inode.pending = rest;
        inode.durable[from..to].copy_from_slice(&bytes);
        Ok(len)
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let disk = self.disk.borrow();
        let inode = disk
            .inodes
            .get(&self.inode)
            .ok_or_else(|| eio("stale handle"))?;
        let start = (pos as usize).min(inode.current.len());
        let end = start.saturating_add(len).min(inode.current.len());
        Ok(inode.current[start..end].to_vec())
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.in_flight().await;
        stall(&self.disk);
        let mut disk = self.disk.borrow_mut();
        disk.stats.syncs += 1;
        let faults = disk.faults;
        let fail = disk.rng.chance_ppm(faults.sync_error_ppm);
        if fail {
            disk.stats.injected_faults += 1;
        }
        let inode = disk
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| eio("stale handle"))?;
        if fail {
            // Like Linux after a failed writeback: the error is reported once and the
            // pages' fate is unknown. Keep them pending so a crash decides.
            return Err(eio("fdatasync"));
        }
        for (pos, bytes) in inode.pending.drain(..) {
            inode.durable[pos..pos + bytes.len()].copy_from_slice(&bytes);
        }
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        let disk = self.disk.borrow();
        let inode = disk
            .inodes
            .get(&self.inode)
            .ok_or_else(|| eio("stale handle"))?;
        Ok(inode.current.len() as u64)
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl Storage for SimStorage {
    type Buf = SimBuf;
    type File = SimFile;

    fn alloc_buf(&self, len: usize) -> SimBuf {
        assert_eq!(len % BLOCK_BYTES, 0, "unaligned buffer");
        // Garbage, not zeros: the engine must not rely on fresh buffers being clean.
        SimBuf(vec![0xa5; len])
    }

    async fn pause(&self, _d: std::time::Duration) {
        futures_lite::future::yield_now().await;
    }

    async fn open(&self, path: &Path) -> io::Result<SimFile> {
        let inode = self.disk.borrow().file(path)?;
        Ok(SimFile {
            disk: self.disk.clone(),
            inode,
        })
    }

    async fn create_zeroed(&self, path: &Path, len: u64) -> io::Result<()> {
        yield_once().await;
        let mut disk = self.disk.borrow_mut();
        if disk.faults.disk_full || disk.free_bytes() < len {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        disk.require_parent(path)?;
        let zeros = vec![0u8; len as usize];
        let inode = Inode {
            current: zeros.clone(),
            durable: zeros,
            ..Inode::default()
        };
        disk.new_file(path, inode);
        Ok(())
    }

    async fn create_allocated(&self, path: &Path, len: u64) -> io::Result<()> {
        self.create_zeroed(path, len).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        let id = disk.file(from)?;
        disk.require_parent(to)?;
        if parent(from) == parent(to) {
            disk.change_many(
                parent(to),
                vec![
                    (from.to_path_buf(), None),
                    (to.to_path_buf(), Some(Entry::File(id))),
                ],
            );
        } else {
            // Across directories each side becomes durable with its own directory's sync.
            disk.change(from, None);
            disk.change(to, Some(Entry::File(id)));
        }
        Ok(())
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        disk.file(path)?;
        disk.change(path, None);
        Ok(())
    }

    async fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        if disk.names.contains_key(path) {
            disk.change(path, None);
        }
        Ok(())
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        let mut missing: Vec<PathBuf> = path
            .ancestors()
            .filter(|a| !a.as_os_str().is_empty() && *a != Path::new("/"))
            .filter(|a| !disk.names.contains_key(*a))
            .map(Path::to_path_buf)
            .collect();
        missing.reverse();
        for dir in missing {
            disk.change(&dir, Some(Entry::Dir));
        }
        match disk.names.get(path) {
            Some(Entry::File(_)) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} is a file", path.display()),
            )),
            _ => Ok(()),
        }
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        yield_once().await;
        let mut disk = self.disk.borrow_mut();
        disk.stats.dir_syncs += 1;
        if let Some(changes) = disk.pending_dirs.remove(dir) {
            for c in &changes {
                apply(&mut disk.durable_names, c);
            }
        }
        Ok(())
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let disk = self.disk.borrow();
        let mut names: Vec<String> = disk
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn read_small(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        Ok(self.file_contents(path))
    }

    async fn write_small_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        yield_once().await;
        let mut disk = self.disk.borrow_mut();
        disk.require_parent(path)?;
        let inode = Inode {
            current: bytes.to_vec(),
            durable: bytes.to_vec(),
            ..Inode::default()
        };
        let id = disk.new_file(path, inode);
        // Durable at once: the real storage fsyncs the file and its directory. Earlier
        // un-synced changes of that directory become durable with it (the directory fsync
        // covers them too).
        let dir = parent(path);
        if let Some(changes) = disk.pending_dirs.remove(&dir) {
            for c in &changes {
                apply(&mut disk.durable_names, c);
            }
        }
        disk.durable_names
            .insert(path.to_path_buf(), Entry::File(id));
        Ok(())
    }

    async fn write_small_private(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        // The simulated disk has no permissions to keep.
        self.write_small_atomic(path, bytes).await
    }

    async fn append_durable(&self, path: &Path, bytes: &[u8]) -> io::Result<u64> {
        yield_once().await;
        let mut disk = self.disk.borrow_mut();
        let id = match disk.file(path) {
            Ok(id) => id,
            Err(_) => {
                disk.require_parent(path)?;
                let id = disk.new_file(path, Inode::default());
                // The real storage fsyncs the directory of a file it created.
                let dir = parent(path);
                if let Some(changes) = disk.pending_dirs.remove(&dir) {
                    for c in &changes {
                        apply(&mut disk.durable_names, c);
                    }
                }
                disk.durable_names
                    .insert(path.to_path_buf(), Entry::File(id));
                id
            }
        };
        let inode = disk.inodes.get_mut(&id).expect("named inode");
        inode.current.extend_from_slice(bytes);
        // fdatasync: everything written to the file so far is durable.
        inode.durable = inode.current.clone();
        inode.pending.clear();
        Ok(inode.current.len() as u64)
    }

    async fn free_bytes(&self, _dir: &Path) -> io::Result<u64> {
        // statvfs goes through the blocking pool: other tasks run meanwhile.
        futures_lite::future::yield_now().await;
        Ok(self.disk.borrow().free_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    #[test]
    fn unsynced_directory_changes_may_vanish_synced_ones_stay() {
        let mut lost = 0;
        for seed in 0..64 {
            let s = SimStorage::new(seed);
            block_on(async {
                s.create_dir_all(Path::new("/d")).await.unwrap();
                s.sync_dir(Path::new("/")).await.unwrap();
                s.create_zeroed(Path::new("/d/a"), 4096).await.unwrap();
                s.sync_dir(Path::new("/d")).await.unwrap();
                s.create_zeroed(Path::new("/d/b"), 4096).await.unwrap();
                s.rename(Path::new("/d/a"), Path::new("/d/c"))
                    .await
                    .unwrap();
            });
            s.crash();
            // `a` was durable; the rename may or may not have survived, never both names.
            let a = s.exists(Path::new("/d/a"));
            let c = s.exists(Path::new("/d/c"));
            assert!(a ^ c, "seed {seed}: exactly one of a and c");
            if !s.exists(Path::new("/d/b")) {
                lost += 1;
            }
        }
        assert!(lost > 0, "an un-synced create is lost in some crashes");
    }

    #[test]
    fn a_name_under_a_lost_directory_is_lost() {
        for seed in 0..32 {
            let s = SimStorage::new(seed);
            block_on(async {
                s.create_dir_all(Path::new("/x/y")).await.unwrap();
                s.create_zeroed(Path::new("/x/y/f"), 4096).await.unwrap();
                s.sync_dir(Path::new("/x/y")).await.unwrap();
            });
            s.crash();
            if !s.exists(Path::new("/x/y")) {
                assert!(!s.exists(Path::new("/x/y/f")), "seed {seed}");
            }
        }
    }

    #[test]
    fn unsynced_file_data_is_torn_or_kept_synced_data_stays() {
        let s = SimStorage::new(5);
        let f = block_on(async {
            s.create_zeroed(Path::new("/f"), 8192).await.unwrap();
            s.sync_dir(Path::new("/")).await.unwrap();
            let f = s.open(Path::new("/f")).await.unwrap();
            let mut b = s.alloc_buf(4096);
            b.as_mut().fill(1);
            f.write_at(Rc::new(b), 0).await.unwrap();
            f.fdatasync().await.unwrap();
            let mut b = s.alloc_buf(4096);
            b.as_mut().fill(2);
            f.write_at(Rc::new(b), 4096).await.unwrap();
            f
        });
        drop(f);
        s.crash();
        let c = s.file_contents(Path::new("/f")).unwrap();
        assert!(c[..4096].iter().all(|&b| b == 1));
        assert!(c[4096..].iter().all(|&b| b == 0 || b == 2));
    }

    /// An O_DSYNC write's bytes survive every crash; an earlier unsynced write beside it
    /// may not (the write does not claim it), and one it overwrote never comes back.
    #[test]
    fn a_dsync_write_is_durable_alone_and_is_never_undone_by_older_writes() {
        let mut kept_beside = [false; 2];
        for seed in 0..64 {
            let s = SimStorage::new(seed);
            let f = block_on(async {
                s.create_zeroed(Path::new("/f"), 16384).await.unwrap();
                s.sync_dir(Path::new("/")).await.unwrap();
                let f = s.open(Path::new("/f")).await.unwrap();
                let fill = |v: u8, n: usize| {
                    let mut b = s.alloc_buf(n);
                    b.as_mut().fill(v);
                    Rc::new(b)
                };
                // Unsynced: 8 KiB of 1s, then 4 KiB of 3s beside it.
                f.write_at(fill(1, 8192), 0).await.unwrap();
                f.write_at(fill(3, 4096), 12288).await.unwrap();
                // Durable: 2s over the second half of the 1s.
                f.write_at_durable(fill(2, 4096), 4096).await.unwrap();
                f
            });
            drop(f);
            assert_eq!((s.stats().writes, s.stats().dsync_writes), (3, 1));
            s.crash();
            let c = s.file_contents(Path::new("/f")).unwrap();
            assert!(c[..4096].iter().all(|&b| b == 0 || b == 1), "seed {seed}");
            assert!(c[4096..8192].iter().all(|&b| b == 2), "seed {seed}");
            assert!(c[8192..12288].iter().all(|&b| b == 0), "seed {seed}");
            assert!(c[12288..].iter().all(|&b| b == 0 || b == 3), "seed {seed}");
            kept_beside[usize::from(c[12288] == 3)] = true;
        }
        assert_eq!(
            kept_beside,
            [true, true],
            "a crash may keep or lose the unsynced write"
        );
    }
}
