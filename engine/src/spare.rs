//! Ready segment files: zero-filled ahead of need, and recycled when retention frees them.
//!
//! On this class of disk an O_DIRECT append that extends a file runs ~8x slower than an
//! overwrite of written blocks and drags fdatasync into extent updates (see MACHINE.md).
//! So a new segment is never grown: it is a file whose every block was written earlier,
//! either by the background filler (`fill`) or by a segment that retention retired.
//!
//! Each core owns one pool in `<data>/spare/core-<n>/` and hands files to its own shards
//! only; nothing is shared between cores. A file enters the pool by rename only after it is
//! complete and durable, so anything named `spare-*.seg` is ready.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};

use crate::io::Storage;
use crate::log::LogError;

/// A core's pool of ready segment files.
pub struct SparePool<S: Storage> {
    dir: PathBuf,
    segment_bytes: u64,
    /// The filler keeps this many files ready; recycling keeps at most twice as many.
    target: usize,
    ready: RefCell<Vec<PathBuf>>,
    counter: Cell<u64>,
    /// Segments created on demand because the pool was empty (a sign it is too small).
    misses: Cell<u64>,
    _storage: std::marker::PhantomData<S>,
}

impl<S: Storage> SparePool<S> {
    /// Opens the pool directory, adopting ready files and deleting unfinished ones.
    pub fn open(
        storage: &S,
        dir: PathBuf,
        segment_bytes: u64,
        target: usize,
    ) -> Result<Self, LogError> {
        storage.create_dir_all(&dir)?;
        let mut ready = Vec::new();
        let mut counter = 0u64;
        for name in storage.list_dir(&dir)? {
            let path = dir.join(&name);
            let n = name
                .strip_prefix("spare-")
                .and_then(|s| s.strip_suffix(".seg"));
            match n.and_then(|n| n.parse::<u64>().ok()) {
                Some(n) => {
                    counter = counter.max(n + 1);
                    ready.push(path);
                }
                // A half-filled temporary from a crash: not ready, and not worth saving.
                None => storage.remove_file(&path)?,
            }
        }
        Ok(SparePool {
            dir,
            segment_bytes,
            target,
            ready: RefCell::new(ready),
            counter: Cell::new(counter),
            misses: Cell::new(0),
            _storage: std::marker::PhantomData,
        })
    }

    pub fn ready_count(&self) -> usize {
        self.ready.borrow().len()
    }

    pub fn misses(&self) -> u64 {
        self.misses.get()
    }

    fn next_name(&self, prefix: &str) -> PathBuf {
        let n = self.counter.get();
        self.counter.set(n + 1);
        self.dir.join(format!("{prefix}-{n:06}.seg"))
    }

    /// Puts a ready file at `path` (a new segment): a spare if one of the right size is
    /// ready, else a file zero-filled now (slow path, counted in `misses`).
    pub async fn provide(
        &self,
        storage: &S,
        path: &Path,
        segment_bytes: u64,
    ) -> Result<(), LogError> {
        assert_eq!(
            segment_bytes, self.segment_bytes,
            "one segment size per pool"
        );
        let spare = self.ready.borrow_mut().pop();
        match spare {
            Some(spare) => storage.rename(&spare, path)?,
            None => {
                self.misses.set(self.misses.get() + 1);
                storage.create_zeroed(path, segment_bytes).await?;
            }
        }
        Ok(())
    }

    /// Fills the pool up to its target. Run by the core's background task; each file is
    /// written completely and synced before it is renamed into the pool.
    pub async fn fill(&self, storage: &S) -> Result<usize, LogError> {
        let mut made = 0;
        while self.ready_count() < self.target {
            let tmp = self.next_name("filling");
            storage.create_zeroed(&tmp, self.segment_bytes).await?;
            let ready = self.next_name("spare");
            storage.rename(&tmp, &ready)?;
            storage.sync_dir(&self.dir)?;
            self.ready.borrow_mut().push(ready);
            made += 1;
        }
        Ok(made)
    }

    /// Takes a segment that retention retired: kept as a spare (its blocks are written)
    /// unless the pool is already full, then deleted.
    pub fn recycle(&self, storage: &S, segment: &Path) -> Result<(), LogError> {
        if self.ready_count() >= self.target * 2 {
            storage.remove_file(segment)?;
            return Ok(());
        }
        let spare = self.next_name("spare");
        storage.rename(segment, &spare)?;
        storage.sync_dir(&self.dir)?;
        self.ready.borrow_mut().push(spare);
        Ok(())
    }
}
