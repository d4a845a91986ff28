//! Streaming a file's parts from the shared chunk cache, counting bytes and
//! active transfers. The file is opened (no symlinks followed) and checked on
//! the blocking pool before the response starts, so a missing or swapped
//! file is a 404, not a broken body; the open handle keeps the bytes readable
//! even if `imgd gc` unlinks the entry mid-download.

use super::chunks::{ChunkCache, Key, Reader, CHUNK};
use super::metrics::Metrics;
use super::respond::Body;
use super::respond::Part;
use crate::hash::Outboard;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// An artifact opened for reading.
pub(crate) struct Opened {
    file: Arc<std::fs::File>,
    key: Key,
    outboard: Arc<Outboard>,
}

/// Opens `path` without following symlinks and checks it is a regular file
/// of `size` bytes whose BLAKE3 is `blake3` (what the manifest promises;
/// the file is read once per process to make its outboard). Runs on the pool.
pub(crate) async fn open(chunks: &Arc<ChunkCache>, path: PathBuf, size: u64, blake3: &str) -> std::io::Result<Opened> {
    let (chunks, blake3) = (chunks.clone(), blake3.to_string());
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)?;
        let md = f.metadata()?;
        if !md.file_type().is_file() || md.len() != size {
            return Err(std::io::Error::other(format!(
                "{}: not a regular file of {size} bytes ({:?}, {} bytes)",
                path.display(),
                md.file_type(),
                md.len()
            )));
        }
        let key = ChunkCache::key(&path, &md);
        let outboard = chunks
            .outboard(&key, &f, &blake3)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Opened { key, file: Arc::new(f), outboard })
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Told, when a body ends, the bytes it sent and whether it sent them all.
pub(crate) type OnEnd = Box<dyn FnOnce(u64, bool) + Send + Sync>;

/// A body that sends `parts` of the opened file through the shared `chunks`,
/// counted in `metrics`; `on_end` hears how it ended.
pub(crate) fn body(
    chunks: &Arc<ChunkCache>,
    metrics: &Arc<Metrics>,
    file: Opened,
    parts: Vec<Part>,
    on_end: Option<OnEnd>,
) -> Body {
    let guard = Transfer::start(metrics);
    let expected = parts.iter().map(|p| match p {
        Part::Bytes(b) => b.len() as u64,
        Part::Region(_, len) => *len,
    });
    let end = End { on_end, sent: 0, expected: expected.sum() };
    let first = parts.iter().find_map(|p| match p {
        Part::Region(start, _) => Some(start / CHUNK),
        Part::Bytes(_) => None,
    });
    let reader = chunks.reader(&file.key, first.unwrap_or(0));
    let cursor =
        Cursor { file, parts: parts.into(), pos: None, chunks: chunks.clone(), reader, guard, failed: false, end };
    let s = futures_util::stream::unfold(cursor, |mut c| async move {
        if c.failed {
            return None;
        }
        loop {
            if let Some((off, end)) = c.pos {
                if off >= end {
                    c.pos = None;
                    continue;
                }
                match c.chunk(off, end).await {
                    Ok(piece) => {
                        c.pos = Some((off + piece.len() as u64, end));
                        c.guard.bytes(piece.len());
                        c.end.sent += piece.len() as u64;
                        return Some((Ok(Frame::data(piece)), c));
                    }
                    Err(e) => {
                        // The connection is cut before the bad bytes: a
                        // client sees a short body, never other bytes.
                        tracing::error!("stopped a download: {e}");
                        c.guard.0.corrupt_reads.fetch_add(1, Ordering::Relaxed);
                        c.failed = true;
                        return Some((Err(e), c));
                    }
                }
            }
            let part = c.parts.pop_front()?;
            match part {
                Part::Bytes(b) => {
                    c.end.sent += b.len() as u64;
                    return Some((Ok(Frame::data(b)), c));
                }
                Part::Region(start, len) => c.pos = Some((start, start + len)),
            }
        }
    });
    BodyExt::boxed(StreamBody::new(s))
}

struct Cursor {
    file: Opened,
    parts: VecDeque<Part>,
    /// Next offset and end (exclusive) of the region being sent.
    pos: Option<(u64, u64)>,
    chunks: Arc<ChunkCache>,
    /// Where this download is, so the cache keeps the chunks it will read.
    reader: Reader,
    guard: Transfer,
    failed: bool,
    end: End,
}

/// Calls `on_end` when the body is dropped: after its last part, or cut.
/// (hyper may drop a body once its Content-Length is sent, without asking
/// for the end: so "whole" is every byte handed over.)
struct End {
    on_end: Option<OnEnd>,
    sent: u64,
    expected: u64,
}

impl Drop for End {
    fn drop(&mut self) {
        if let Some(f) = self.on_end.take() {
            f(self.sent, self.sent >= self.expected);
        }
    }
}

impl Cursor {
    /// The bytes from `off` up to the end of its chunk (or `end`): shared
    /// from the chunk cache, or a piece of this response's own when the
    /// cache's budget is held by others.
    async fn chunk(&mut self, off: u64, end: u64) -> std::io::Result<Bytes> {
        let key = &self.file.key;
        let index = off / CHUNK;
        self.reader.at(index);
        let bytes = match self.chunks.cached(key, index) {
            Some(chunk) => chunk.slice(((off - index * CHUNK) as usize).min(chunk.len())..),
            None => {
                let (chunks, key, file) = (self.chunks.clone(), key.clone(), self.file.file.clone());
                let outboard = self.file.outboard.clone();
                tokio::task::spawn_blocking(move || chunks.read(&key, &file, off, &outboard))
                    .await
                    .map_err(std::io::Error::other)??
            }
        };
        if bytes.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "artifact shorter than its manifest"));
        }
        Ok(bytes.slice(..bytes.len().min((end - off) as usize)))
    }
}

/// Counts a transfer as active while its body lives, and its bytes as sent.
struct Transfer(Arc<Metrics>);

impl Transfer {
    fn start(metrics: &Arc<Metrics>) -> Transfer {
        metrics.active_transfers.fetch_add(1, Ordering::Relaxed);
        Transfer(metrics.clone())
    }

    fn bytes(&self, n: usize) {
        self.0.bytes_served.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.0.active_transfers.fetch_sub(1, Ordering::Relaxed);
    }
}
