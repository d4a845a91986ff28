//! The root filesystem as a zstd-compressed tarball, for deployers that take one.
//!
//! The file is a run of zstd frames, one per segment of the tar stream (whole
//! entries, cut where an entry's path says so), which any zstd reader reads
//! as one stream. Frames are kept in a [`FrameCache`] under the BLAKE3 of the
//! tar bytes they hold: after a profile change only the segments that changed
//! are compressed again (compression was most of a rebuild's CPU time). Cuts
//! depend on paths, not on sizes alone, so a changed file moves no cut
//! beyond its own segment and the next.

use crate::rootfs::tree::{Kind, Tree};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A segment ends after an entry whose path hashes to 0 mod this, once it
/// holds [`MIN_SEGMENT`] bytes, or after any entry past [`MAX_SEGMENT`].
const CUT_EVERY: u8 = 16;
const MIN_SEGMENT: usize = 2 << 20;
const MAX_SEGMENT: usize = 16 << 20;

/// Writes the tarball and returns its artifact digest (hashed as it is
/// written). `workers` threads compress; the bytes do not depend on how many.
pub(crate) fn write(
    tree: &Tree,
    path: &Path,
    mtime: u64,
    workers: u32,
    cache: Option<&FrameCache>,
) -> io::Result<crate::model::Blake3> {
    let file = std::fs::File::create(path)?;
    let _flush = crate::fsutil::Flusher::follow(path)?;
    let mut out = crate::hash::HashingWriter::new(io::BufWriter::with_capacity(1 << 20, file));
    let workers = workers.max(1) as usize;
    let (seg_tx, seg_rx) = std::sync::mpsc::sync_channel::<(usize, Vec<u8>)>(workers * 2);
    let seg_rx = std::sync::Mutex::new(seg_rx);
    let (frame_tx, frame_rx) = std::sync::mpsc::sync_channel::<(usize, io::Result<Vec<u8>>)>(workers * 2);
    std::thread::scope(|s| -> io::Result<()> {
        for _ in 0..workers {
            let (seg_rx, frame_tx) = (&seg_rx, frame_tx.clone());
            s.spawn(move || loop {
                let next = seg_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok((i, seg)) = next else { break };
                if frame_tx.send((i, frame(&seg, cache))).is_err() {
                    break; // the writer stopped on an error
                }
            });
        }
        drop(frame_tx);
        // Frames arrive in any order and are written in segment order.
        let writer = s.spawn(|| -> io::Result<()> {
            let (mut pending, mut next) = (BTreeMap::new(), 0);
            for (i, f) in frame_rx {
                pending.insert(i, f?);
                while let Some(f) = pending.remove(&next) {
                    out.write_all(&f)?;
                    next += 1;
                }
            }
            Ok(())
        });
        let segments = segments(tree, mtime, |i, seg| seg_tx.send((i, seg)).map_err(|_| io::Error::other("stopped")));
        drop(seg_tx);
        let written = writer.join().map_err(|_| io::Error::other("the tarball writer panicked"))?;
        // The writer's error is the cause; the producer's is only its echo.
        written.and(segments)
    })?;
    let (file, digest) = out.finish();
    file.into_inner().map_err(|e| e.into_error())?;
    if let Some(c) = cache {
        c.trim();
    }
    Ok(digest.into())
}

/// The compressed frame of one segment, from the cache when it is there.
fn frame(seg: &[u8], cache: Option<&FrameCache>) -> io::Result<Vec<u8>> {
    let key = blake3::hash(seg).to_hex();
    if let Some(f) = cache.and_then(|c| c.get(&key)) {
        return Ok(f);
    }
    let mut z = zstd::bulk::Compressor::new(super::compress::ZSTD_LEVEL)?;
    z.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
    let f = z.compress(seg)?;
    if let Some(c) = cache {
        c.put(&key, &f);
    }
    Ok(f)
}

/// Cuts the tar stream of `tree` into segments, handing each to `emit` with
/// its index; the last one ends with the archive's end marker.
fn segments(tree: &Tree, mtime: u64, mut emit: impl FnMut(usize, Vec<u8>) -> io::Result<()>) -> io::Result<()> {
    let mut b = tar::Builder::new(Vec::with_capacity(MAX_SEGMENT));
    b.mode(tar::HeaderMode::Deterministic);
    let mut n = 0;
    for (rel, node) in tree.nodes() {
        let name = if rel.is_empty() { "./".to_string() } else { rel.clone() };
        let mut h = tar::Header::new_gnu();
        h.set_mode(node.mode);
        h.set_uid(node.uid as u64);
        h.set_gid(node.gid as u64);
        h.set_mtime(mtime);
        h.set_size(0);
        use tar::EntryType as T;
        match &node.kind {
            Kind::File => {
                let mut f = std::fs::File::open(tree.staged(rel))?;
                h.set_entry_type(T::Regular);
                h.set_size(f.metadata()?.len());
                b.append_data(&mut h, &name, &mut f)?;
            }
            Kind::Dir => {
                h.set_entry_type(T::Directory);
                b.append_data(&mut h, &name, io::empty())?;
            }
            Kind::Symlink(t) => {
                h.set_entry_type(T::Symlink);
                b.append_link(&mut h, &name, t)?;
            }
            Kind::Hardlink(t) => {
                h.set_entry_type(T::Link);
                b.append_link(&mut h, &name, t.as_str())?;
            }
            Kind::Char(a, m) | Kind::Block(a, m) => {
                h.set_entry_type(if matches!(node.kind, Kind::Char(..)) { T::Char } else { T::Block });
                h.set_device_major(*a)?;
                h.set_device_minor(*m)?;
                b.append_data(&mut h, &name, io::empty())?;
            }
            Kind::Fifo => {
                h.set_entry_type(T::Fifo);
                b.append_data(&mut h, &name, io::empty())?;
            }
        }
        let len = b.get_ref().len();
        let cut_here = blake3::hash(rel.as_bytes()).as_bytes()[0].is_multiple_of(CUT_EVERY);
        if (len >= MIN_SEGMENT && cut_here) || len >= MAX_SEGMENT {
            emit(n, std::mem::replace(b.get_mut(), Vec::with_capacity(MAX_SEGMENT)))?;
            n += 1;
        }
    }
    emit(n, b.into_inner()?)
}

/// Compressed frames of tarball segments, by the BLAKE3 of their tar bytes:
/// `<store>/.cache/tar-frames/<hex>.zst`, least recently used dropped past a
/// budget. A frame is written whole (a private temp file, renamed) or not at
/// all, and one that cannot be read is compressed again.
pub(crate) struct FrameCache {
    dir: PathBuf,
    budget: u64,
}

impl FrameCache {
    pub(crate) fn new(dir: PathBuf, budget: u64) -> FrameCache {
        FrameCache { dir, budget }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.zst"))
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let f = std::fs::File::open(self.path(key)).ok()?;
        // The mtime is the last use, for trim.
        let _ = f.set_modified(std::time::SystemTime::now());
        let mut v = Vec::new();
        io::Read::read_to_end(&mut &f, &mut v).ok()?;
        Some(v)
    }

    /// Best effort: a frame that cannot be kept is only compressed again.
    fn put(&self, key: &str, frame: &[u8]) {
        let put = || -> io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
            tmp.write_all(frame)?;
            tmp.persist(self.path(key))?;
            Ok(())
        };
        if let Err(e) = put() {
            tracing::debug!("tar frame cache {}: {e}", self.dir.display());
        }
    }

    /// Drops the least recently used frames until the cache fits its budget.
    pub(crate) fn trim(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return };
        let mut frames: Vec<(std::time::SystemTime, u64, PathBuf)> = rd
            .flatten()
            .filter_map(|e| {
                let md = e.metadata().ok()?;
                Some((md.modified().ok()?, md.len(), e.path()))
            })
            .collect();
        let mut total: u64 = frames.iter().map(|f| f.1).sum();
        frames.sort();
        for (_, len, p) in frames {
            if total <= self.budget {
                break;
            }
            if std::fs::remove_file(&p).is_ok() {
                total -= len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Incompressible bytes, the same for the same seed.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn tree(dir: &Path, changed: bool) -> Tree {
        let mut t = Tree::new(&dir.join("root")).unwrap();
        for i in 0..80u64 {
            let seed = if changed && i == 40 { 999 } else { i };
            t.add_bytes(&format!("/usr/lib/f{i:03}"), &noise(seed, 150_000), 0o644).unwrap();
        }
        t.add_symlink("/lib", "usr/lib").unwrap();
        t
    }

    /// (path, content) of every regular file in a tarball, read with the
    /// zstd and tar crates' readers (any reader takes the frames as one stream).
    fn files(path: &Path) -> Vec<(String, Vec<u8>)> {
        let z = zstd::Decoder::new(std::fs::File::open(path).unwrap()).unwrap();
        let mut a = tar::Archive::new(z);
        let mut out = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            if e.header().entry_type() == tar::EntryType::Regular {
                let mut v = Vec::new();
                io::Read::read_to_end(&mut e, &mut v).unwrap();
                out.push((e.path().unwrap().display().to_string(), v));
            }
        }
        out
    }

    #[test]
    fn frames_are_reused_and_the_bytes_do_not_depend_on_the_cache_or_workers() {
        let d = tempfile::tempdir().unwrap();
        let cache = FrameCache::new(d.path().join("frames"), 1 << 30);
        let t = tree(&d.path().join("a"), false);
        let out = |name: &str| d.path().join(name);
        let first = write(&t, &out("1.tar.zst"), 0, 1, Some(&cache)).unwrap();
        let frames = std::fs::read_dir(d.path().join("frames")).unwrap().count();
        assert!(frames >= 4, "12 MB of tar in {frames} segments");
        assert_eq!(write(&t, &out("2.tar.zst"), 0, 3, Some(&cache)).unwrap(), first);
        assert_eq!(write(&t, &out("3.tar.zst"), 0, 2, None).unwrap(), first);
        assert_eq!(std::fs::read(out("1.tar.zst")).unwrap(), std::fs::read(out("3.tar.zst")).unwrap());
        assert_eq!(files(&out("1.tar.zst")).len(), 80);

        // One file changed: its segment (and at most the next) is compressed
        // again, the rest comes from the cache; the content is the new one.
        let t2 = tree(&d.path().join("b"), true);
        let changed = write(&t2, &out("4.tar.zst"), 0, 1, Some(&cache)).unwrap();
        assert_ne!(changed, first);
        let added = std::fs::read_dir(d.path().join("frames")).unwrap().count() - frames;
        assert!((1..=2).contains(&added), "{added} new frames");
        let got = files(&out("4.tar.zst"));
        assert_eq!(got[40], ("usr/lib/f040".to_string(), noise(999, 150_000)));
        assert_eq!(got[41].1, noise(41, 150_000));
        assert_eq!(write(&t2, &out("5.tar.zst"), 0, 1, None).unwrap(), changed);
    }

    #[test]
    fn trim_drops_the_least_recently_used_frames() {
        let d = tempfile::tempdir().unwrap();
        let c = FrameCache::new(d.path().to_path_buf(), 2500);
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            c.put(k, &[0u8; 1000]);
            let f = std::fs::File::options().write(true).open(c.path(k)).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(100 * i as u64)).unwrap();
        }
        assert!(c.get("a").is_some()); // used now: the newest
        c.trim();
        let left: Vec<bool> = ["a", "b", "c"].iter().map(|k| c.path(k).exists()).collect();
        assert_eq!(left, [true, false, true]);
    }
}
