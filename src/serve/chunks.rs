//! A bounded cache of artifact chunks shared by every download.
//!
//! A thousand machines booting at once fetch the same kernel and initrd. Each
//! connection reading into its own buffer would cost connections x buffer of
//! memory; here they share immutable `Bytes` chunks read once (by `pread` on
//! the blocking pool), so memory is bounded by the cache, not by the number of
//! clients. Artifacts never change once committed, so cached chunks never go
//! stale; entries are keyed by path and the file's (device, inode, size).

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Chunk size: large enough for few syscalls, small enough that a client only
/// holds little at once.
pub const CHUNK: u64 = 128 * 1024;

pub type Key = (PathBuf, u64, u64, u64);

pub struct ChunkCache {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<(Key, u64), Bytes>,
    order: VecDeque<(Key, u64)>,
    bytes: usize,
}

impl ChunkCache {
    pub fn new(budget: usize) -> Self {
        ChunkCache { budget, inner: Mutex::new(Inner::default()) }
    }

    pub fn key(path: &Path, md: &std::fs::Metadata) -> Key {
        (path.to_path_buf(), md.dev(), md.ino(), md.len())
    }

    /// The chunk if it is cached (never blocks on I/O).
    pub fn cached(&self, key: &Key, index: u64) -> Option<Bytes> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).map.get(&(key.clone(), index)).cloned()
    }

    /// The chunk of `file` starting at `index * CHUNK` (shorter at the end),
    /// read and cached if needed. Blocking: call it off the async workers.
    pub fn load(&self, key: &Key, file: &std::fs::File, index: u64) -> std::io::Result<Bytes> {
        if let Some(b) = self.cached(key, index) {
            return Ok(b);
        }
        let key = (key.clone(), index);
        let start = index * CHUNK;
        let len = CHUNK.min(key.0 .3.saturating_sub(start)) as usize;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, start)?;
        let b = Bytes::from(buf);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.map.insert(key.clone(), b.clone()).is_none() {
            inner.order.push_back(key);
            inner.bytes += len;
        }
        while inner.bytes > self.budget {
            let Some(old) = inner.order.pop_front() else { break };
            if let Some(v) = inner.map.remove(&old) {
                inner.bytes -= v.len();
            }
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_shared_and_the_budget_holds() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let data: Vec<u8> = (0..(CHUNK * 3 + 10)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let k = ChunkCache::key(&p, &f.metadata().unwrap());
        let c = ChunkCache::new(2 * CHUNK as usize);
        assert!(c.cached(&k, 0).is_none());
        let a = c.load(&k, &f, 0).unwrap();
        let b = c.cached(&k, 0).unwrap();
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same memory");
        assert_eq!(&a[..], &data[..CHUNK as usize]);
        assert_eq!(&c.load(&k, &f, 3).unwrap()[..], &data[3 * CHUNK as usize..]);
        c.load(&k, &f, 1).unwrap();
        c.load(&k, &f, 2).unwrap();
        assert!(c.inner.lock().unwrap().bytes <= 2 * CHUNK as usize);
    }
}
