//! The storage interface the store is written against, and its io_uring implementation.
//!
//! The store (`store/`) never names glommio: it is generic over [`Storage`], so the same code
//! runs on [`DmaStorage`] (O_DIRECT files driven by glommio's io_uring reactor) in production
//! and on `sim::SimStorage` (an in-memory disk that tears writes, fails I/O and forgets
//! directory changes that were never synced, all from a seed) in tests.
//!
//! Concurrency contract: a `Storage` value and every file it opens belong to one core; the
//! futures are `!Send` on purpose (thread-per-core), which is why the traits use plain
//! `async fn`.
//!
//! Data goes through io_uring with O_DIRECT. Directory operations (rename, unlink, directory
//! fsync, listing, removing a tree) and small metadata files (the manifest, the catalog) have
//! no io_uring path in glommio that covers all of them, so `DmaStorage` runs them on glommio's
//! blocking-thread pool (`spawn_blocking`): they never stall the executor thread, and with it
//! every other shard's acknowledgements on that core.

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Block size every direct write and its offset are aligned to.
pub const BLOCK_BYTES: usize = 4096;

/// Rounds `v` up to the next multiple of [`BLOCK_BYTES`].
pub fn align_up(v: u64) -> u64 {
    v.div_ceil(BLOCK_BYTES as u64) * BLOCK_BYTES as u64
}

/// Rounds `v` down to a multiple of [`BLOCK_BYTES`].
pub fn align_down(v: u64) -> u64 {
    v / BLOCK_BYTES as u64 * BLOCK_BYTES as u64
}

/// A buffer suitable for a direct write: block-aligned memory of a block-multiple length.
pub trait IoBuf: AsRef<[u8]> + AsMut<[u8]> {
    /// Shrinks the buffer's length (never grows it); the write covers exactly `len` bytes.
    fn trim(&mut self, len: usize);
}

/// One open data file (a journal file or a volume).
pub trait SegFile {
    type Buf: IoBuf;
    type ReadBuf: AsRef<[u8]>;

    /// Writes the whole buffer at `pos` (block-aligned). Returns bytes written, which may be
    /// short; the caller decides what a short write means.
    async fn write_at(&self, buf: Rc<Self::Buf>, pos: u64) -> io::Result<usize>;
    /// Reads up to `len` bytes at `pos` (any alignment); short at end of file.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Self::ReadBuf>;
    /// As [`SegFile::write_at`], and the bytes it wrote are durable when it returns `Ok`
    /// (an O_DSYNC write). Other writes to the file are not made durable by it.
    async fn write_at_durable(&self, buf: Rc<Self::Buf>, pos: u64) -> io::Result<usize>;
    /// Makes every completed write durable.
    async fn fdatasync(&self) -> io::Result<()>;
    /// The file's size in bytes.
    async fn size(&self) -> io::Result<u64>;
}

/// The per-core file system.
pub trait Storage {
    type Buf: IoBuf;
    type File: SegFile<Buf = Self::Buf>;

    /// A block-aligned buffer of `len` bytes (`len` a multiple of [`BLOCK_BYTES`]); its
    /// contents are unspecified.
    fn alloc_buf(&self, len: usize) -> Self::Buf;
    /// Waits `d` (the store's round pacing). Real storage sleeps on the executor's timer;
    /// the simulated disk only yields (its tests run without timers).
    async fn pause(&self, d: std::time::Duration);
    /// Opens an existing data file for direct reads and writes.
    async fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Creates `path` holding `len` zero bytes, every block written (not merely allocated)
    /// and durable, so later writes are overwrites of written blocks. The new name is
    /// durable only after `sync_dir` of its directory.
    async fn create_zeroed(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Creates `path` with `len` bytes allocated (fallocate) but not written, and makes the
    /// allocation durable. Reads of never-written blocks return zeros; the first write of a
    /// block costs an extent conversion. The new name is durable only after `sync_dir`.
    async fn create_allocated(&self, path: &Path, len: u64) -> io::Result<()>;
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    async fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory tree; a missing one is not an error.
    async fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    async fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals inside `dir` durable.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries in `dir`, sorted (empty if it does not exist).
    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whole contents of a small file, `None` if it does not exist.
    async fn read_small(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
    /// Replaces a small file atomically and durably: write a temporary, fsync, rename,
    /// fsync the directory.
    async fn write_small_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// As [`Storage::write_small_atomic`], the file readable by this user only (mode 0600)
    /// from the moment it exists (credentials).
    async fn write_small_private(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Appends `bytes` to `path` (created if missing) and makes them durable (fdatasync;
    /// the new name too, by a directory fsync, when the file was created). Answers the
    /// file's length after the append. For small logs (the audit trail), not data files.
    async fn append_durable(&self, path: &Path, bytes: &[u8]) -> io::Result<u64>;
    /// Bytes available to this process on the file system holding `dir`.
    async fn free_bytes(&self, dir: &Path) -> io::Result<u64>;
}

/// Production storage: glommio `DmaFile` (O_DIRECT, io_uring) for data, the blocking pool
/// for directory operations. One per core: it keeps a file open only to allocate buffers
/// from the core's reactor.
pub struct DmaStorage {
    allocator: glommio::io::DmaFile,
}

/// A data file opened with O_DIRECT on the current core's io_uring; opened a second time
/// with O_DSYNC at its first durable write (`round_sync = "dsync"`), so a store that
/// never makes one holds one descriptor per file. The second open goes through
/// `/proc/self/fd/N` of the first descriptor: it reaches the same file even if its name
/// has since been renamed, removed or reused.
pub struct DmaSegFile {
    file: glommio::io::DmaFile,
    dsync: std::cell::RefCell<Option<Rc<glommio::io::DmaFile>>>,
}

impl IoBuf for glommio::io::DmaBuffer {
    fn trim(&mut self, len: usize) {
        self.trim_to_size(len);
    }
}

/// Read results of glommio borrow from its buffer pool; this wrapper exposes them as bytes.
pub struct DmaRead(glommio::io::ReadResult);

impl AsRef<[u8]> for DmaRead {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn glommio_err(e: glommio::GlommioError<()>) -> io::Error {
    match e {
        glommio::GlommioError::IoError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

impl SegFile for DmaSegFile {
    type Buf = glommio::io::DmaBuffer;
    type ReadBuf = DmaRead;

    async fn write_at(&self, buf: Rc<Self::Buf>, pos: u64) -> io::Result<usize> {
        self.file.write_rc_at(buf, pos).await.map_err(glommio_err)
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Self::ReadBuf> {
        self.file
            .read_at(pos, len)
            .await
            .map(DmaRead)
            .map_err(glommio_err)
    }

    async fn write_at_durable(&self, buf: Rc<Self::Buf>, pos: u64) -> io::Result<usize> {
        let opened = self.dsync.borrow().clone();
        let dsync = match opened {
            Some(f) => f,
            None => {
                use std::os::fd::AsRawFd;
                let same_file = format!("/proc/self/fd/{}", self.file.as_raw_fd());
                let f = Rc::new(
                    glommio::io::OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_DSYNC)
                        .dma_open(&same_file)
                        .await
                        .map_err(glommio_err)?,
                );
                // Two first writes may race to open it: keep the first, drop the other.
                self.dsync.borrow_mut().get_or_insert(f).clone()
            }
        };
        dsync.write_rc_at(buf, pos).await.map_err(glommio_err)
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(glommio_err)
    }

    async fn size(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(glommio_err)
    }
}

/// Zero-fill chunk for new data files: large enough to stream at disk speed.
const ZERO_FILL_CHUNK_BYTES: usize = 1 << 20;

/// Runs a blocking file-system call on glommio's blocking pool, off the executor thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    glommio::executor().spawn_blocking(f).await
}

impl Storage for DmaStorage {
    type Buf = glommio::io::DmaBuffer;
    type File = DmaSegFile;

    fn alloc_buf(&self, len: usize) -> Self::Buf {
        debug_assert_eq!(len % BLOCK_BYTES, 0);
        self.allocator.alloc_dma_buffer(len)
    }

    async fn pause(&self, d: std::time::Duration) {
        glommio::timer::sleep(d).await;
    }

    async fn open(&self, path: &Path) -> io::Result<DmaSegFile> {
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(path)
            .await
            .map_err(glommio_err)?;
        Ok(DmaSegFile {
            file,
            dsync: std::cell::RefCell::new(None),
        })
    }

    async fn create_zeroed(&self, path: &Path, len: u64) -> io::Result<()> {
        assert_eq!(len % BLOCK_BYTES as u64, 0, "data files are block-aligned");
        // Allocate with a plain fallocate before glommio ever sees the file: an empty file
        // would also trip glommio's iopoll probe (see `DmaStorage::open_core`). Allocating
        // first keeps the extent contiguous; writing zeros then turns "allocated but
        // unwritten" extents into written ones, which is what makes later writes plain
        // overwrites (no extent conversion in the fdatasync path).
        let p = path.to_path_buf();
        blocking(move || allocate(&p, len)).await?;
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(path)
            .await
            .map_err(glommio_err)?;
        let result = async {
            let mut pos = 0u64;
            while pos < len {
                let chunk = ZERO_FILL_CHUNK_BYTES.min((len - pos) as usize);
                let mut buf = file.alloc_dma_buffer(chunk);
                buf.as_bytes_mut().fill(0);
                let n = file.write_at(buf, pos).await.map_err(glommio_err)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "zero-fill wrote nothing",
                    ));
                }
                pos += n as u64;
            }
            file.fdatasync().await.map_err(glommio_err)
        }
        .await;
        let _ = file.close().await;
        if result.is_err() {
            // A failed fill leaves nothing behind.
            let p = path.to_path_buf();
            let _ = blocking(move || std::fs::remove_file(p)).await;
        }
        result
    }

    async fn create_allocated(&self, path: &Path, len: u64) -> io::Result<()> {
        assert_eq!(len % BLOCK_BYTES as u64, 0, "data files are block-aligned");
        let p = path.to_path_buf();
        blocking(move || {
            allocate(&p, len)?;
            std::fs::File::open(&p)?.sync_all()
        })
        .await
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (from.to_path_buf(), to.to_path_buf());
        blocking(move || std::fs::rename(from, to)).await
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        let path = path.to_path_buf();
        blocking(move || std::fs::remove_file(path)).await
    }

    async fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let path = path.to_path_buf();
        blocking(move || match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let path = path.to_path_buf();
        blocking(move || std::fs::create_dir_all(path)).await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let dir = dir.to_path_buf();
        blocking(move || std::fs::File::open(dir)?.sync_all()).await
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let dir = dir.to_path_buf();
        blocking(move || list_dir_blocking(&dir)).await
    }

    async fn read_small(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let path = path.to_path_buf();
        blocking(move || match std::fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    async fn write_small_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let (path, bytes) = (path.to_path_buf(), bytes.to_vec());
        blocking(move || write_atomic(&path, &bytes)).await
    }

    async fn write_small_private(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let (path, bytes) = (path.to_path_buf(), bytes.to_vec());
        blocking(move || write_atomic_mode(&path, &bytes, 0o600)).await
    }

    async fn append_durable(&self, path: &Path, bytes: &[u8]) -> io::Result<u64> {
        let (path, bytes) = (path.to_path_buf(), bytes.to_vec());
        blocking(move || append_durable_blocking(&path, &bytes)).await
    }

    async fn free_bytes(&self, dir: &Path) -> io::Result<u64> {
        let dir = dir.to_path_buf();
        blocking(move || free_bytes_blocking(&dir)).await
    }
}

/// See [`Storage::append_durable`]. Blocking.
pub fn append_durable_blocking(path: &Path, bytes: &[u8]) -> io::Result<u64> {
    use std::io::Write;
    let created = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    if created {
        std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()?;
    }
    f.metadata().map(|m| m.len())
}

/// Names in `dir`, sorted; empty if the directory does not exist.
pub fn list_dir_blocking(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        if let Some(name) = entry?.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// statvfs(2): bytes available to unprivileged writers on `dir`'s file system.
pub fn free_bytes_blocking(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Creates (or truncates) `path` and allocates `len` bytes with fallocate(2).
fn allocate(path: &Path, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    // SAFETY: fallocate on a file descriptor we own; no pointers are involved.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

impl DmaStorage {
    /// Prepares direct I/O on core `core`; must run on each core before any other direct-I/O
    /// file is opened. `dir` is a directory on the data device.
    ///
    /// glommio decides once per block device whether to use its IOPOLL ring, by reading the
    /// first block of the first file opened there. On an empty file that read "succeeds"
    /// with 0 bytes, glommio wrongly enables IOPOLL for the device, and every later direct
    /// read fails with EOPNOTSUPP on devices without poll queues (seen on virtio disks with
    /// kernel 6.18). Opening a non-empty probe file first makes the probe ask the kernel
    /// for real. The probe stays open (buffers are allocated through it), its name removed
    /// once it is open, so that nothing is left in the data directory.
    pub async fn open_core(dir: &Path, core: usize) -> io::Result<DmaStorage> {
        let d = dir.to_path_buf();
        let probe: PathBuf = dir.join(format!(".iopoll-probe-{core}"));
        let p = probe.clone();
        blocking(move || {
            std::fs::create_dir_all(&d)?;
            std::fs::write(&p, vec![0u8; BLOCK_BYTES])
        })
        .await?;
        let file = glommio::io::DmaFile::open(&probe)
            .await
            .map_err(glommio_err)?;
        let read = file.read_at(0, BLOCK_BYTES).await.map(|r| r.len());
        blocking(move || std::fs::remove_file(&probe)).await?;
        match read {
            Ok(n) if n == BLOCK_BYTES => Ok(DmaStorage { allocator: file }),
            Ok(n) => Err(io::Error::other(format!(
                "direct read of the probe file returned {n} bytes"
            ))),
            Err(e) => Err(io::Error::other(format!(
                "direct reads do not work on this device: {e}"
            ))),
        }
    }
}

/// Write-new, fsync, rename, fsync-directory: after a crash the file is either the old or
/// the new contents, never a mix. Blocking: call it from a blocking thread.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, bytes, 0o666)
}

/// [`write_atomic`] with the new file created with `mode` (less the umask). Blocking.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    // A temporary left by a crash may have other permissions: start afresh.
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
