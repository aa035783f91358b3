//! The storage interface the shard log is written against, and its io_uring implementation.
//!
//! The shard log (`log.rs`) never names glommio: it is generic over [`Storage`], so the same
//! code runs on [`DmaStorage`] (O_DIRECT files driven by glommio's io_uring reactor) in
//! production and on `sim::SimStorage` (an in-memory disk that tears writes and fails I/O
//! from a seed) in tests, under any single-threaded executor.
//!
//! Concurrency contract: a `Storage` value and every file it opens belong to one core; the
//! futures are `!Send` on purpose (thread-per-core), which is why the traits use plain
//! `async fn`.
//!
//! Segment data goes through io_uring with O_DIRECT. Small metadata files (the sparse index,
//! the catalog) and directory operations use blocking std calls: they happen once per
//! segment roll or index interval, cost microseconds, and io_uring offers nothing for
//! rename/fsync-of-a-directory that glommio exposes.

use std::io;
use std::path::Path;
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

/// One open segment file.
pub trait SegFile {
    type Buf: IoBuf;
    type ReadBuf: AsRef<[u8]>;

    /// A block-aligned buffer of `len` bytes (`len` a multiple of [`BLOCK_BYTES`]); its
    /// contents are unspecified.
    fn alloc_buf(&self, len: usize) -> Self::Buf;
    /// Writes the whole buffer at `pos` (block-aligned). Returns bytes written, which may be
    /// short; the caller decides what a short write means.
    async fn write_at(&self, buf: Rc<Self::Buf>, pos: u64) -> io::Result<usize>;
    /// Reads up to `len` bytes at `pos` (any alignment); short at end of file.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Self::ReadBuf>;
    /// Makes every completed write durable.
    async fn fdatasync(&self) -> io::Result<()>;
    /// The file's size in bytes.
    async fn size(&self) -> io::Result<u64>;
}

/// The per-core file system: segment files plus small metadata files.
pub trait Storage {
    type File: SegFile;

    /// Opens an existing segment file for direct reads and writes.
    async fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Creates `path` holding `len` zero bytes, every block written (not merely allocated)
    /// and durable, so later appends are overwrites of written blocks.
    async fn create_zeroed(&self, path: &Path, len: u64) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes renames and creations inside `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries in `dir` (empty if it does not exist).
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whole contents of a small file, `None` if it does not exist.
    fn read_small(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
    /// Appends to a small file (created if missing) without syncing: used for index hints
    /// that recovery validates against the log.
    fn append_small(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Replaces a small file atomically: write a temporary, fsync, rename, fsync the dir.
    fn write_small_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
}

/// Production storage: glommio `DmaFile` (O_DIRECT, io_uring) for segments.
#[derive(Debug, Default, Clone, Copy)]
pub struct DmaStorage;

/// A segment file opened with O_DIRECT on the current core's io_uring.
pub struct DmaSegFile {
    file: glommio::io::DmaFile,
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

    fn alloc_buf(&self, len: usize) -> Self::Buf {
        debug_assert_eq!(len % BLOCK_BYTES, 0);
        self.file.alloc_dma_buffer(len)
    }

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

    async fn fdatasync(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(glommio_err)
    }

    async fn size(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(glommio_err)
    }
}

/// Zero-fill chunk for new segment files: large enough to stream at disk speed.
const ZERO_FILL_CHUNK_BYTES: usize = 1 << 20;

impl Storage for DmaStorage {
    type File = DmaSegFile;

    async fn open(&self, path: &Path) -> io::Result<DmaSegFile> {
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(path)
            .await
            .map_err(glommio_err)?;
        Ok(DmaSegFile { file })
    }

    async fn create_zeroed(&self, path: &Path, len: u64) -> io::Result<()> {
        assert_eq!(
            len % BLOCK_BYTES as u64,
            0,
            "segment size must be block-aligned"
        );
        // Allocate with a plain fallocate before glommio ever sees the file: an empty file
        // would also trip glommio's iopoll probe (see `DmaStorage::warm_up`). Allocating
        // first keeps the extent contiguous; writing zeros then turns "allocated but
        // unwritten" extents into written ones, which is what makes later appends plain
        // overwrites (no extent conversion in the fdatasync path).
        allocate(path, len)?;
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(path)
            .await
            .map_err(glommio_err)?;
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
        file.fdatasync().await.map_err(glommio_err)?;
        file.close().await.map_err(glommio_err)?;
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
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

    fn read_small(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn append_small(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?
            .write_all(bytes)
    }

    fn write_small_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        write_atomic(path, bytes)
    }
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
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl DmaStorage {
    /// Must run on each core before any other direct-I/O file is opened.
    ///
    /// glommio decides once per block device whether to use its IOPOLL ring, by reading the
    /// first block of the first file opened there. On an empty file that read "succeeds"
    /// with 0 bytes, glommio wrongly enables IOPOLL for the device, and every later direct
    /// read fails with EOPNOTSUPP on devices without poll queues (seen on virtio disks with
    /// kernel 6.18). Opening a non-empty probe file first makes the probe ask the kernel
    /// for real.
    pub async fn warm_up(dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let probe = dir.join(".iopoll-probe");
        std::fs::write(&probe, vec![0u8; BLOCK_BYTES])?;
        let file = glommio::io::DmaFile::open(&probe)
            .await
            .map_err(glommio_err)?;
        let read = file.read_at(0, BLOCK_BYTES).await.map(|r| r.len());
        let _ = file.close().await;
        std::fs::remove_file(&probe)?;
        match read {
            Ok(n) if n == BLOCK_BYTES => Ok(()),
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
/// the new contents, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
