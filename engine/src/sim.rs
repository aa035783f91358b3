//! A simulated disk for tests: in memory, deterministic from a seed, and hostile.
//!
//! It models what a real disk may do to a log: writes that are acknowledged but not yet
//! durable, a crash that keeps a random subset of un-synced writes (some torn at a sector
//! boundary), short writes, I/O errors on write and on fdatasync, and a full disk. Every
//! choice comes from one seeded PRNG, so a failing test prints its seed and replays exactly.
//!
//! Files are inodes: a handle keeps working across a rename, as on Linux. Directory
//! operations and atomic small-file replacement are durable at once (the real storage
//! fsyncs the directory for each of them); appends to small files are not, and a crash
//! keeps a random prefix of what was appended since the last crash.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// Small files: length that is durable; bytes past it were appended without sync.
    small_durable_len: Option<usize>,
}

#[derive(Debug)]
struct Disk {
    names: BTreeMap<PathBuf, u64>,
    inodes: HashMap<u64, Inode>,
    dirs: BTreeSet<PathBuf>,
    next_inode: u64,
    rng: SimRng,
    faults: SimFaults,
    stats: SimStats,
}

/// Counters a test can assert on.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimStats {
    pub writes: u64,
    pub syncs: u64,
    pub injected_faults: u64,
    pub bytes_written: u64,
}

/// The simulated disk. Cloning gives another handle to the same disk.
#[derive(Debug, Clone)]
pub struct SimStorage {
    disk: Rc<RefCell<Disk>>,
}

impl SimStorage {
    pub fn new(seed: u64) -> SimStorage {
        SimStorage {
            disk: Rc::new(RefCell::new(Disk {
                names: BTreeMap::new(),
                inodes: HashMap::new(),
                dirs: BTreeSet::new(),
                next_inode: 1,
                rng: SimRng::new(seed),
                faults: SimFaults::default(),
                stats: SimStats::default(),
            })),
        }
    }

    pub fn set_faults(&self, faults: SimFaults) {
        self.disk.borrow_mut().faults = faults;
    }

    pub fn stats(&self) -> SimStats {
        self.disk.borrow().stats
    }

    /// Power loss: every file reverts to its durable contents plus a random subset of its
    /// un-synced writes, each kept whole, torn at a sector boundary, or lost. Handles opened
    /// before the crash must not be used afterwards (the engine reopens everything).
    pub fn crash(&self) {
        let mut disk = self.disk.borrow_mut();
        let Disk { inodes, rng, .. } = &mut *disk;
        let mut ids: Vec<u64> = inodes.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let inode = inodes.get_mut(&id).expect("inode");
            if let Some(durable_len) = inode.small_durable_len {
                let appended = inode.current.len() - durable_len;
                let keep = durable_len + rng.below(appended as u64 + 1) as usize;
                inode.current.truncate(keep);
                inode.small_durable_len = Some(keep);
                continue;
            }
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
        let id = disk.names.get(path)?;
        Some(disk.inodes[id].current.clone())
    }

    /// Overwrites bytes of a file durably (test corruption).
    pub fn corrupt(&self, path: &Path, pos: usize, bytes: &[u8]) {
        let mut disk = self.disk.borrow_mut();
        let id = disk.names[path];
        let inode = disk.inodes.get_mut(&id).expect("inode");
        inode.current[pos..pos + bytes.len()].copy_from_slice(bytes);
        if inode.small_durable_len.is_none() {
            inode.durable[pos..pos + bytes.len()].copy_from_slice(bytes);
        }
    }

    fn new_inode(disk: &mut Disk, path: &Path, inode: Inode) {
        let id = disk.next_inode;
        disk.next_inode += 1;
        disk.inodes.insert(id, inode);
        if let Some(old) = disk.names.insert(path.to_path_buf(), id) {
            disk.inodes.remove(&old);
        }
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

impl SegFile for SimFile {
    type Buf = SimBuf;
    type ReadBuf = Vec<u8>;

    fn alloc_buf(&self, len: usize) -> SimBuf {
        assert_eq!(len % BLOCK_BYTES, 0, "unaligned buffer");
        // Garbage, not zeros: the engine must not rely on fresh buffers being clean.
        SimBuf(vec![0xa5; len])
    }

    async fn write_at(&self, buf: Rc<SimBuf>, pos: u64) -> io::Result<usize> {
        yield_once().await;
        let mut disk = self.disk.borrow_mut();
        let bytes = buf.as_ref().as_ref();
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
        if inode.current.len() < pos + len {
            inode.current.resize(pos + len, 0);
        }
        inode.current[pos..pos + len].copy_from_slice(&bytes[..len]);
        inode.pending.push((pos, bytes[..len].to_vec()));
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
        yield_once().await;
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
            if inode.durable.len() < pos + bytes.len() {
                inode.durable.resize(pos + bytes.len(), 0);
            }
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
    type File = SimFile;

    async fn open(&self, path: &Path) -> io::Result<SimFile> {
        let disk = self.disk.borrow();
        let inode = *disk.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(SimFile {
            disk: self.disk.clone(),
            inode,
        })
    }

    async fn create_zeroed(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        if disk.faults.disk_full {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let zeros = vec![0u8; len as usize];
        let inode = Inode {
            current: zeros.clone(),
            durable: zeros,
            ..Inode::default()
        };
        Self::new_inode(&mut disk, path, inode);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        let id = disk.names.remove(from).ok_or_else(|| not_found(from))?;
        if let Some(old) = disk.names.insert(to.to_path_buf(), id) {
            disk.inodes.remove(&old);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        let id = disk.names.remove(path).ok_or_else(|| not_found(path))?;
        disk.inodes.remove(&id);
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        let doomed: Vec<PathBuf> = disk
            .names
            .keys()
            .filter(|p| p.starts_with(path))
            .cloned()
            .collect();
        for p in doomed {
            let id = disk.names.remove(&p).expect("listed");
            disk.inodes.remove(&id);
        }
        disk.dirs.retain(|d| !d.starts_with(path));
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.disk.borrow_mut().dirs.insert(path.to_path_buf());
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let disk = self.disk.borrow();
        let mut names: Vec<String> = disk
            .names
            .keys()
            .chain(disk.dirs.iter())
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn read_small(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        Ok(self.file_contents(path))
    }

    fn append_small(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        if !disk.names.contains_key(path) {
            Self::new_inode(
                &mut disk,
                path,
                Inode {
                    small_durable_len: Some(0),
                    ..Inode::default()
                },
            );
        }
        let id = disk.names[path];
        let inode = disk.inodes.get_mut(&id).expect("inode");
        inode.current.extend_from_slice(bytes);
        if inode.small_durable_len.is_none() {
            inode.small_durable_len = Some(inode.durable.len());
        }
        Ok(())
    }

    fn write_small_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        let inode = Inode {
            current: bytes.to_vec(),
            durable: bytes.to_vec(),
            small_durable_len: Some(bytes.len()),
            ..Inode::default()
        };
        Self::new_inode(&mut disk, path, inode);
        Ok(())
    }
}
