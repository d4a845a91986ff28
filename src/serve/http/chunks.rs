//! A bounded cache of artifact chunks shared by every download.
//!
//! A thousand machines booting at once fetch the same kernel and initrd. Each
//! connection reading into its own buffer would cost connections x buffer of
//! memory; here they share immutable `Bytes` chunks read once (by `pread` on
//! the blocking pool). Artifacts never change once committed, so cached
//! chunks never go stale; entries are keyed by path and the file's (device,
//! inode, size).
//!
//! The budget bounds every chunk alive, not only the cached ones: a chunk
//! evicted while a slow client still sends it keeps its memory until that
//! client is done, and counting only the cache would let such orphans grow
//! with the number of clients. So each chunk's memory is counted from its read
//! until its last reference drops. When the budget is all held by clients, a
//! reader gets a small piece of its own instead of a chunk ([`PIECE`]): it
//! never waits on another client (a stalled one could hold memory until its
//! idle timeout), and what it costs stays of the order of the connection's
//! own buffers.
//!
//! Room is made from idle chunks (none being sent), and of those the one the
//! downloads under way reach last: each download tells the cache where it
//! is ([`Reader`]). A storm of machines streams a disk or an initrd front to
//! back, so a chunk just read is soon wanted by the ones behind, and one all
//! of them have passed is not (until a new machine starts over).
//!
//! No byte leaves unchecked: each file's BLAKE3 tree is cut at pieces
//! ([`Outboard`], made once per file by reading it, and checked against the
//! digest its manifest holds), and every chunk read from disk (as its eight
//! pieces) or piece read alone must match its part of the tree. A bit
//! flipped on disk after the build makes that read fail, never a response
//! with other bytes. Cut at pieces, not chunks, so a reader held to a piece
//! reads and hashes that piece only, not the chunk around it.

use crate::hash::Outboard;
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// Chunk size: large enough for few syscalls, small enough that a client only
/// holds little at once.
pub(crate) const CHUNK: u64 = 128 * 1024;

/// What a reader gets, unshared, when the budget is held by other clients.
pub(crate) const PIECE: u64 = 16 * 1024;

/// A file as the cache knows it: its path (for messages and the corrupt
/// list) and its device, inode and size, which tell one file from another.
/// Hashed by the numbers alone: hashing a path walks its components, and
/// with a lookup for every chunk sent (and one for each chunk an eviction
/// looks at) that was ~4% of the server's CPU serving a 64 MiB file to 64
/// clients.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub(crate) struct Key {
    pub(crate) path: PathBuf,
    dev: u64,
    ino: u64,
    pub(crate) size: u64,
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64(self.dev);
        h.write_u64(self.ino);
        h.write_u64(self.size);
    }
}

pub struct ChunkCache {
    budget: usize,
    /// Bytes of every chunk alive: cached, or held by a response.
    live: Arc<AtomicUsize>,
    /// Reads answered with a piece because the budget was held.
    pieces: AtomicU64,
    /// Chunks found in the cache, and chunks read from disk (and checked).
    hits: AtomicU64,
    reads: AtomicU64,
    inner: Mutex<Inner>,
    /// Each file's outboard, made by the first reader (others wait for it),
    /// or why the file does not match its digest.
    outboards: Mutex<HashMap<Key, OutboardSlot>>,
    /// Files found not to match their digest: the boot room stops sending
    /// machines to them.
    corrupt: Mutex<HashSet<PathBuf>>,
    /// Whether `corrupt` holds any: every script asks, and almost always
    /// the answer is no (the lock and the path's hash were ~3% of a render).
    any_corrupt: AtomicBool,
}

type OutboardSlot = Arc<OnceLock<Result<Arc<Outboard>, String>>>;

/// Files whose outboards are kept before unused ones are dropped (and made
/// again, by one read, if asked for): 2 KiB a MiB of file.
const KEEP_OUTBOARDS: usize = 1024;

#[derive(Default)]
struct Inner {
    files: HashMap<Key, File>,
    /// Cached chunks, oldest first (a chunk still being sent is passed
    /// over when its turn to go comes).
    order: VecDeque<(Arc<Key>, u64)>,
}

/// A file's cached chunks and where its downloads are.
#[derive(Default)]
struct File {
    key: Arc<Key>,
    chunks: HashMap<u64, Arc<Counted>>,
    /// The chunk each download of it reads next.
    readers: Vec<Weak<AtomicU64>>,
}

impl Inner {
    fn file(&mut self, key: &Key) -> &mut File {
        self.files.entry(key.clone()).or_insert_with(|| File { key: Arc::new(key.clone()), ..File::default() })
    }

    fn chunk(&self, key: &Key, index: u64) -> Option<&Arc<Counted>> {
        self.files.get(key)?.chunks.get(&index)
    }

    /// Takes chunk `index` of `key`'s file out of the cache, and the file's
    /// entry with its last chunk once no download reads it.
    fn remove(&mut self, key: &Key, index: u64) -> Option<Arc<Counted>> {
        let file = self.files.get_mut(key)?;
        let chunk = file.chunks.remove(&index);
        file.readers.retain(|r| r.strong_count() > 0);
        if file.chunks.is_empty() && file.readers.is_empty() {
            self.files.remove(key);
        }
        chunk
    }
}

/// A download's place in its file, for the cache to keep what it will read.
pub(crate) struct Reader(Arc<AtomicU64>);

impl Reader {
    /// The download reads chunk `index` next.
    pub(crate) fn at(&self, index: u64) {
        self.0.store(index, Ordering::Relaxed);
    }
}

/// Downloads of one file whose places choose what to evict.
const PLACES: usize = 2048;

/// Idle chunks looked at, oldest first, to choose the one to evict: a
/// bounded look keeps eviction's cost flat with a large budget.
const EVICTION_LOOK: usize = 64;

/// A cached chunk handed to one response: the cache sees, by the `Arc`'s
/// count, whether any response still holds it.
struct Held(Arc<Counted>);

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        AsRef::<[u8]>::as_ref(&*self.0)
    }
}

/// A chunk's memory, counted in `live` until the cache and every response
/// let go of it. Mapped by itself, not taken from malloc: chunks come and go
/// all day, and malloc keeps what they freed in its per-thread arenas (the
/// serve bench's server held ~50 MiB after its first phases with 16 MiB of
/// chunks); a mapping goes back to the system when its last reader is done.
/// A chunk evicted to make room hands its mapping to the next chunk instead
/// (zeroing, mapping and unmapping with its TLB shootdown were a tenth of
/// the server's CPU on the big-file benchmark).
struct Counted {
    /// Taken out only when the mapping is handed on, counted as it was.
    data: Option<memmap2::MmapMut>,
    live: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        self.data.as_deref().unwrap_or_default()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(d) = &self.data {
            self.live.fetch_sub(d.len(), Ordering::Relaxed);
        }
    }
}

/// Where a new chunk's bytes go, its memory already counted.
enum Room {
    /// A mapping of its own, to be made.
    Fresh,
    /// The mapping of an idle chunk just evicted.
    Reused(memmap2::MmapMut),
}

impl ChunkCache {
    pub(crate) fn new(budget: usize) -> Self {
        ChunkCache {
            budget,
            live: Arc::default(),
            pieces: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
            outboards: Mutex::default(),
            corrupt: Mutex::default(),
            any_corrupt: AtomicBool::new(false),
        }
    }

    pub(crate) fn key(path: &Path, md: &std::fs::Metadata) -> Key {
        Key { path: path.to_path_buf(), dev: md.dev(), ino: md.ino(), size: md.len() }
    }

    /// Bytes of chunk memory alive now (cached or being sent).
    pub(crate) fn live_bytes(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Reads so far that got a piece because the budget was held.
    pub(crate) fn pieces(&self) -> u64 {
        self.pieces.load(Ordering::Relaxed)
    }

    /// Chunks shared from the cache so far, and chunks read from disk.
    pub(crate) fn hits_and_reads(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.reads.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned map still holds whole entries (each is inserted at once).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The outboard of `file` (`key`), which must hash to `blake3` (hex):
    /// made by reading the file once, then kept. Blocking.
    pub(crate) fn outboard(&self, key: &Key, file: &std::fs::File, blake3: &str) -> std::io::Result<Arc<Outboard>> {
        let slot = {
            let mut map = self.outboards.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= KEEP_OUTBOARDS && !map.contains_key(key) {
                // Files of builds no longer served (a long-running server
                // sees many): keep only outboards a download holds now.
                map.retain(|_, slot| matches!(slot.get(), Some(Ok(o)) if Arc::strong_count(o) > 1));
            }
            map.entry(key.clone()).or_default().clone()
        };
        let made = slot.get_or_init(|| {
            let o = Outboard::of_file(file, key.size, PIECE).map_err(|e| e.to_string())?;
            if o.root_hex() != blake3 {
                return Err(format!("its BLAKE3 is {}, its manifest says {blake3}", o.root_hex()));
            }
            Ok(Arc::new(o))
        });
        made.clone().map_err(|e| {
            self.mark_corrupt(&key.path);
            std::io::Error::new(std::io::ErrorKind::InvalidData, e)
        })
    }

    fn mark_corrupt(&self, path: &Path) {
        self.corrupt.lock().unwrap_or_else(|p| p.into_inner()).insert(path.to_path_buf());
        self.any_corrupt.store(true, Ordering::Release);
    }

    /// Whether any file was found not to match its digest since start-up.
    pub(crate) fn any_corrupt(&self) -> bool {
        self.any_corrupt.load(Ordering::Acquire)
    }

    /// Registers a download of `key`'s file, starting at chunk `index`.
    pub(crate) fn reader(&self, key: &Key, index: u64) -> Reader {
        let pos = Arc::new(AtomicU64::new(index));
        let mut inner = self.lock();
        let list = &mut inner.file(key).readers;
        list.retain(|r| r.strong_count() > 0);
        list.push(Arc::downgrade(&pos));
        Reader(pos)
    }

    /// Whether `path` was found not to match its digest (by a read since
    /// start-up; `imgd verify` checks the whole store).
    pub(crate) fn is_corrupt(&self, path: &Path) -> bool {
        self.corrupt.lock().unwrap_or_else(|p| p.into_inner()).contains(path)
    }

    /// The chunk if it is cached (never blocks on I/O).
    pub(crate) fn cached(&self, key: &Key, index: u64) -> Option<Bytes> {
        let held = self.lock().chunk(key, index).cloned()?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(Bytes::from_owner(Held(held)))
    }

    /// Bytes of `file` from `off`: the rest of its chunk (read and cached if
    /// needed), or, when the budget is held by responses in flight, a piece
    /// of at most [`PIECE`] bytes read for this caller alone. Shorter at the
    /// end of the file. Either is checked against `outboard` first.
    /// Blocking: call it off the async workers.
    pub(crate) fn read(
        &self,
        key: &Key,
        file: &std::fs::File,
        off: u64,
        outboard: &Outboard,
    ) -> std::io::Result<Bytes> {
        let size = key.size;
        let index = off / CHUNK;
        let start = index * CHUNK;
        let chunk = match self.cached(key, index) {
            Some(c) => c,
            None => {
                let len = CHUNK.min(size.saturating_sub(start)) as usize;
                let Some(room) = self.make_room(len) else {
                    self.pieces.fetch_add(1, Ordering::Relaxed);
                    // The piece holding `off`, read and checked on its own.
                    let at = off - off % PIECE;
                    let plen = PIECE.min(size.saturating_sub(at)) as usize;
                    let mut piece = vec![0; plen];
                    verified(file, at, &mut piece, outboard, key).inspect_err(|e| {
                        if e.kind() == std::io::ErrorKind::InvalidData {
                            self.mark_corrupt(&key.path);
                        }
                    })?;
                    return Ok(Bytes::from(piece).slice(((off - at) as usize).min(plen)..));
                };
                // Counted from make_room on, so an error uncounts it here.
                // Populated at once: one call, not a page fault per page.
                let data = match room {
                    Room::Reused(d) => Ok(d),
                    Room::Fresh => memmap2::MmapOptions::new().len(len).populate().map_anon(),
                };
                let data = match data.and_then(|mut d| verified(file, start, &mut d, outboard, key).map(|()| d)) {
                    Ok(d) => d,
                    Err(e) => {
                        self.live.fetch_sub(len, Ordering::Relaxed);
                        if e.kind() == std::io::ErrorKind::InvalidData {
                            self.mark_corrupt(&key.path);
                        }
                        return Err(e);
                    }
                };
                self.reads.fetch_add(1, Ordering::Relaxed);
                let chunk = Arc::new(Counted { data: Some(data), live: self.live.clone() });
                let mut inner = self.lock();
                // Another reader may have cached it meanwhile: keep one.
                let file = inner.file(key);
                let cached = file.chunks.entry(index).or_insert_with(|| chunk.clone()).clone();
                if Arc::ptr_eq(&cached, &chunk) {
                    let key = file.key.clone();
                    inner.order.push_back((key, index));
                }
                Bytes::from_owner(Held(cached))
            }
        };
        let from = (off - start) as usize;
        Ok(chunk.slice(from.min(chunk.len())..))
    }

    /// Reserves `len` bytes of the budget for a new chunk, evicting idle
    /// chunks ([`Inner::victim`]) until it fits. None when it cannot fit
    /// because the rest is held by responses in flight.
    fn make_room(&self, len: usize) -> Option<Room> {
        let mut inner = self.lock();
        loop {
            let live = self.live.load(Ordering::Relaxed);
            if live + len <= self.budget {
                // Counted now (the chunk's `Counted` takes it over), so two
                // readers cannot both take the last room.
                self.live.fetch_add(len, Ordering::Relaxed);
                return Some(Room::Fresh);
            }
            let victim = inner.victim()?;
            let (key, index) = inner.order.remove(victim)?;
            // Nobody else holds it (clones are made under this lock): its
            // mapping is the new chunk's if the size fits, else it goes back.
            if let Some(Ok(mut idle)) = inner.remove(&key, index).map(Arc::try_unwrap) {
                if idle.data.as_ref().is_some_and(|d| d.len() == len) {
                    return idle.data.take().map(Room::Reused);
                }
            }
        }
    }
}

impl Inner {
    /// Which cached chunk to evict (its place in `order`): of the oldest
    /// idle ones, the one whose next reader is farthest off. None when every
    /// chunk is being sent.
    ///
    /// A chunk being sent stays cached: evicting it would free nothing (its
    /// response holds it), and the downloads a few chunks behind would read
    /// and hash it again (with 64 downloads holding a chunk or two each, a
    /// 16 MiB budget held little else). Of the idle ones, a chunk that a
    /// download is about to reach is worth more than one every download has
    /// passed: with 64 downloads spread over a 64 MiB file, oldest-first
    /// eviction read half the chunks twice.
    fn victim(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        let mut looked = 0;
        let mut places: Option<(&Arc<Key>, Vec<u64>)> = None;
        for (i, (key, index)) in self.order.iter().enumerate() {
            if self.chunk(key, *index).is_none_or(|c| Arc::strong_count(c) > 1) {
                continue;
            }
            // Chunks in order mostly run file by file: one file's places
            // at a time.
            if places.as_ref().is_none_or(|(k, _)| !Arc::ptr_eq(k, key)) {
                places = Some((key, self.places(key)));
            }
            let at = places.as_ref().map_or(&[][..], |(_, at)| &at[..]);
            let wait = wait(at, *index, key.size.div_ceil(CHUNK));
            if best.is_none_or(|(w, _)| wait > w) {
                best = Some((wait, i));
            }
            looked += 1;
            if wait == u64::MAX || looked == EVICTION_LOOK {
                break;
            }
        }
        best.map(|(_, i)| i)
    }

    /// The chunks the downloads of `key`'s file read next, in order: of
    /// every download, or of an even sample of [`PLACES`] of them (this runs
    /// under the cache's lock, and thousands of downloads would make each
    /// eviction sort thousands of places).
    fn places(&self, key: &Key) -> Vec<u64> {
        let readers = self.files.get(key).map_or(&[][..], |f| &f.readers[..]);
        let step = readers.len().div_ceil(PLACES).max(1);
        let mut at: Vec<u64> =
            readers.iter().step_by(step).filter_map(|r| r.upgrade().map(|p| p.load(Ordering::Relaxed))).collect();
        at.sort_unstable();
        at
    }
}

/// How many chunks the nearest download behind chunk `index` (of a file of
/// `chunks`) has to go to reach it: a download past every cached chunk is
/// taken to start over, as a new machine would. `u64::MAX` with none.
fn wait(places: &[u64], index: u64, chunks: u64) -> u64 {
    match places.partition_point(|&p| p <= index) {
        0 => places.last().map_or(u64::MAX, |&last| index + chunks.saturating_sub(last)),
        n => index - places[n - 1],
    }
}

/// `len` bytes of `file` from `off` (whole pieces: a chunk, or one piece),
/// if they match their part of the tree.
/// Fills `buf` with the file's bytes at `off`, checked against their part
/// of the BLAKE3 tree.
fn verified(file: &std::fs::File, off: u64, buf: &mut [u8], outboard: &Outboard, key: &Key) -> std::io::Result<()> {
    read_at(file, buf, off)?;
    if !outboard.verifies_run(off / outboard.piece(), buf) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: bytes {off}.. do not match the manifest's BLAKE3", key.path.display()),
        ));
    }
    Ok(())
}

fn read_at(file: &std::fs::File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::io::pread(file, &mut buf[filled..], off + filled as u64)? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "artifact shorter than its manifest",
                ))
            }
            n => filled += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(len: u64) -> (tempfile::TempDir, std::fs::File, Key, Vec<u8>, Outboard) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let k = ChunkCache::key(&p, &f.metadata().unwrap());
        let o = Outboard::of_file(&f, len, PIECE).unwrap();
        (d, f, k, data, o)
    }

    #[test]
    fn chunks_are_shared_and_the_budget_holds() {
        let (_d, f, k, data, o) = file(CHUNK * 3 + 10);
        let c = ChunkCache::new(2 * CHUNK as usize);
        assert!(c.cached(&k, 0).is_none());
        let a = c.read(&k, &f, 0, &o).unwrap();
        let b = c.cached(&k, 0).unwrap();
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same memory");
        assert_eq!(&a[..], &data[..CHUNK as usize]);
        drop((a, b));
        assert_eq!(&c.read(&k, &f, 3 * CHUNK + 4, &o).unwrap()[..], &data[3 * CHUNK as usize + 4..]);
        assert_eq!(&c.read(&k, &f, CHUNK + 7, &o).unwrap()[..], &data[CHUNK as usize + 7..2 * CHUNK as usize]);
        c.read(&k, &f, 2 * CHUNK, &o).unwrap();
        assert!(c.live_bytes() <= 2 * CHUNK as usize, "{}", c.live_bytes());
    }

    #[test]
    fn chunks_held_by_responses_count_and_past_the_budget_readers_get_pieces() {
        let (_d, f, k, data, o) = file(CHUNK * 4);
        let c = ChunkCache::new(2 * CHUNK as usize);
        // Two slow clients hold chunks 0 and 1: the whole budget.
        let held = [c.read(&k, &f, 0, &o).unwrap(), c.read(&k, &f, CHUNK, &o).unwrap()];
        assert_eq!(c.live_bytes(), 2 * CHUNK as usize);
        // A third client gets a small piece of its own (the rest of the
        // piece holding its offset), right bytes, no wait, and the chunks in
        // flight are neither copied nor over the budget.
        let off = 2 * CHUNK + 5;
        let piece = c.read(&k, &f, off, &o).unwrap();
        assert_eq!(piece.len() as u64, PIECE - 5);
        assert_eq!(c.pieces(), 1);
        assert_eq!(&piece[..], &data[off as usize..(2 * CHUNK + PIECE) as usize]);
        assert_eq!(c.live_bytes(), 2 * CHUNK as usize, "the chunks in flight are still counted");
        assert!(c.cached(&k, 0).is_some() && c.cached(&k, 1).is_some(), "and still shared: evicting frees nothing");
        // Once the clients are done, their chunks are only cached: room is
        // made of them, and chunks are shared again.
        drop(held);
        let chunk = c.read(&k, &f, off, &o).unwrap();
        assert_eq!(chunk.len() as u64, CHUNK - 5);
        assert_eq!(c.live_bytes(), 2 * CHUNK as usize);
        assert_eq!(c.pieces(), 1);
    }

    /// Room is made from chunks nobody is sending: a chunk a response holds
    /// stays shared for the downloads behind it, and the hits and reads show.
    #[test]
    fn chunks_in_flight_stay_cached_and_idle_ones_make_room() {
        let (_d, f, k, _, o) = file(CHUNK * 4);
        let c = ChunkCache::new(2 * CHUNK as usize);
        let sending = c.read(&k, &f, 0, &o).unwrap();
        drop(c.read(&k, &f, CHUNK, &o).unwrap());
        c.read(&k, &f, 2 * CHUNK, &o).unwrap();
        assert!(c.cached(&k, 0).is_some(), "chunk 0 is being sent: kept, though oldest");
        assert!(c.cached(&k, 1).is_none(), "chunk 1 was idle: it made the room");
        assert_eq!(c.hits_and_reads(), (1, 3));
        drop(sending);
        c.read(&k, &f, 3 * CHUNK, &o).unwrap();
        assert!(c.live_bytes() <= 2 * CHUNK as usize);
    }

    /// With a download at chunk 4 of 8: chunk 5 is its next read, chunk 0
    /// its read after it starts over, chunk 2 the farthest off. Room is
    /// made of chunk 2, though chunk 0 is older.
    #[test]
    fn room_is_made_of_the_chunk_read_last_by_the_downloads_under_way() {
        let (_d, f, k, _, o) = file(CHUNK * 8);
        let c = ChunkCache::new(3 * CHUNK as usize);
        for i in [0, 5, 2] {
            drop(c.read(&k, &f, i * CHUNK, &o).unwrap());
        }
        let download = c.reader(&k, 4);
        c.read(&k, &f, 6 * CHUNK, &o).unwrap();
        let kept: Vec<u64> = (0..8).filter(|&i| c.cached(&k, i).is_some()).collect();
        assert_eq!(kept, [0, 5, 6]);
        // Once it is done, the oldest goes first again.
        drop(download);
        c.read(&k, &f, 7 * CHUNK, &o).unwrap();
        let kept: Vec<u64> = (0..8).filter(|&i| c.cached(&k, i).is_some()).collect();
        assert_eq!(kept, [5, 6, 7]);
    }

    #[test]
    fn the_wait_is_to_the_nearest_download_behind() {
        assert_eq!(wait(&[], 3, 8), u64::MAX, "no download: evicted first");
        assert_eq!(wait(&[2, 6], 5, 8), 3);
        assert_eq!(wait(&[2, 6], 6, 8), 0);
        assert_eq!(wait(&[2, 6], 1, 8), 3, "after the one at 6 starts over");
    }

    #[test]
    fn a_failed_read_leaves_nothing_counted() {
        let (_d, f, mut k, _, o) = file(CHUNK);
        k.size = 2 * CHUNK; // the manifest promised more than the file has
        let c = ChunkCache::new(4 * CHUNK as usize);
        assert!(c.read(&k, &f, CHUNK, &o).is_err());
        assert_eq!(c.live_bytes(), 0);
    }

    /// A byte flipped on disk after the build: the chunk holding it is
    /// refused (whole or as a piece), the others are still served, and a
    /// file whose tree does not hash to its manifest's digest is refused.
    #[test]
    fn a_flipped_byte_fails_its_chunk_only() {
        let (d, f, k, data, o) = file(CHUNK * 3);
        let digest = blake3::hash(&data).to_hex().to_string();
        let c = ChunkCache::new(8 * CHUNK as usize);
        assert!(c.outboard(&k, &f, &digest).is_ok());
        let mut bad = data.clone();
        bad[CHUNK as usize + 9] ^= 0x10;
        std::fs::write(d.path().join("f"), &bad).unwrap();
        assert!(!c.is_corrupt(&k.path) && !c.any_corrupt());
        let err = c.read(&k, &f, CHUNK + 3, &o).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(c.is_corrupt(&k.path) && c.any_corrupt(), "marked for the boot room");
        assert_eq!(c.live_bytes(), 0, "nothing kept of it");
        assert_eq!(&c.read(&k, &f, 2 * CHUNK, &o).unwrap()[..], &data[2 * CHUNK as usize..]);
        let tight = ChunkCache::new(0);
        assert!(tight.read(&k, &f, CHUNK, &o).is_err(), "a piece is checked too");
        assert_eq!(&tight.read(&k, &f, 0, &o).unwrap()[..], &data[..PIECE as usize]);
        // A piece is checked on its own: the next one in the same chunk is good.
        let next = (CHUNK + PIECE) as usize;
        assert_eq!(&tight.read(&k, &f, CHUNK + PIECE, &o).unwrap()[..], &data[next..next + PIECE as usize]);
        let fresh = ChunkCache::new(CHUNK as usize);
        let e = fresh.outboard(&k, &f, &digest).unwrap_err();
        assert!(e.to_string().contains("its manifest says"), "{e}");
    }
}
