//! Content digests: files, directory trees, and the input hash that names a build.
//!
//! The input hash covers content only. Paths on the caller's machine and mtimes
//! never enter it, so the same inputs give the same name everywhere.

use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// A signing certificate that could not be read as one.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("reading certificate {}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a PEM certificate", path.display())]
    NotPem {
        path: std::path::PathBuf,
        #[source]
        source: pem::PemError,
    },
    #[error("{}: a PEM {tag}, not a CERTIFICATE", path.display())]
    NotCertificate { path: std::path::PathBuf, tag: String },
}

/// SHA-256 of a PEM certificate's DER bytes, hex: the name of its signed sets.
pub fn cert_fingerprint(cert: &Path) -> Result<String, CertError> {
    let path = || cert.to_path_buf();
    let text = std::fs::read_to_string(cert).map_err(|source| CertError::Read { path: path(), source })?;
    let p = pem::parse(&text).map_err(|source| CertError::NotPem { path: path(), source })?;
    if p.tag() != "CERTIFICATE" {
        return Err(CertError::NotCertificate { path: path(), tag: p.tag().to_string() });
    }
    Ok(sha256_hex(p.contents()))
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha256(bytes))
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// SHA-256 of a file's content, read in large blocks.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    Ok(sha256_state(path)?.hex())
}

/// A SHA-256 in progress. ring's assembly, not sha2: on CPUs without SHA
/// extensions it hashes ~1.8x faster.
struct Sha256State(ring::digest::Context);

impl Sha256State {
    fn new() -> Self {
        Sha256State(ring::digest::Context::new(&ring::digest::SHA256))
    }

    fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn hex(self) -> String {
        hex::encode(self.0.finish())
    }
}

/// The store's digest of an artifact: BLAKE3, hex. Content names in the
/// store (manifest, S3 metadata, ETags) use it because a build hashes
/// gigabytes of disk images and BLAKE3 runs ~7x SHA-256 on CPUs without SHA
/// extensions (`b3sum` checks a file by hand). Inputs and Debian's packages
/// keep SHA-256, the digest their sources publish.
#[derive(Clone, Default)]
pub(crate) struct ArtifactDigest(blake3::Hasher);

impl ArtifactDigest {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    #[cfg_attr(not(feature = "aws"), allow(dead_code))] // for `imgd sync` and the S3 cache
    pub(crate) fn hex(&self) -> String {
        self.0.finalize().to_hex().to_string()
    }

    /// The digest of what was fed so far.
    pub(crate) fn finish(&self) -> blake3::Hash {
        self.0.finalize()
    }

    /// The digest after reading a whole file, to continue with more bytes.
    pub(crate) fn of_file(path: &Path) -> io::Result<Self> {
        let mut h = Self::new();
        h.0.update_reader(std::fs::File::open(path)?)?;
        Ok(h)
    }

    /// Like [`Self::of_file`], for a sparse file (a disk image, half of it
    /// holes): holes are hashed as zeros from memory rather than read, which
    /// would have the kernel zero and copy every page of them.
    pub(crate) fn of_sparse_file(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        let mut h = Self::new();
        let mut buf = vec![0u8; 1 << 20];
        let zeros = vec![0u8; 1 << 20];
        let zero_run = |h: &mut Self, mut n: u64| {
            while n > 0 {
                let k = n.min(zeros.len() as u64) as usize;
                h.update(&zeros[..k]);
                n -= k as u64;
            }
        };
        let mut pos = 0;
        for (start, end) in crate::fsutil::data_regions(&f, len)? {
            zero_run(&mut h, start - pos);
            let mut at = start;
            while at < end {
                let k = ((end - at) as usize).min(buf.len());
                f.read_exact_at(&mut buf[..k], at)?;
                h.update(&buf[..k]);
                at += k as u64;
            }
            pos = end;
        }
        zero_run(&mut h, len - pos);
        Ok(h)
    }
}

/// The artifact digest (hex) of a file.
#[cfg_attr(not(feature = "aws"), allow(dead_code))] // for `imgd sync` and the S3 cache
pub(crate) fn artifact_digest(path: &Path) -> io::Result<String> {
    Ok(ArtifactDigest::of_file(path)?.hex())
}

/// Whether `s` has the shape of an artifact digest: 64 hex digits.
pub(crate) fn is_digest_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A writer that digests what passes through it, so a file is hashed as it
/// is written rather than read back.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hash: ArtifactDigest,
}

impl<W: io::Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter { inner, hash: ArtifactDigest::new() }
    }

    /// The inner writer and the artifact digest of everything written.
    pub(crate) fn finish(self) -> (W, blake3::Hash) {
        (self.inner, self.hash.finish())
    }
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The hasher after reading a whole file.
fn sha256_state(path: &Path) -> io::Result<Sha256State> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256State::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h)
}

/// A digest of a directory tree: every entry's relative path, type, permission
/// bits, ownership and content (or link target), in sorted order.
///
/// Ownership by the invoking user is recorded as root, matching how the tree is
/// imported into an image (see `rootfs::Tree::import_dir`).
pub(crate) fn tree_digest(dir: &Path) -> io::Result<String> {
    let mut h = Sha256::new();
    let me = rustix::process::geteuid().as_raw();
    let mut stack = vec![dir.to_path_buf()];
    let mut entries = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p.clone());
            }
            entries.push(p);
        }
    }
    entries.sort();
    for p in entries {
        let md = std::fs::symlink_metadata(&p)?;
        let rel = p.strip_prefix(dir).unwrap_or(&p);
        let owner = |id: u32| if id == me { 0 } else { id };
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update(format!("\0{:o}\0{}\0{}\0", md.permissions().mode(), owner(md.uid()), owner(md.gid())));
        let ft = md.file_type();
        if ft.is_file() {
            h.update(sha256_file(&p)?);
        } else if ft.is_symlink() {
            h.update(std::fs::read_link(&p)?.as_os_str().as_encoded_bytes());
        } else if !ft.is_dir() {
            h.update(format!("dev:{}", md.rdev()));
        }
        h.update(b"\n");
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_cache_line_that_is_not_a_sha256_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let big = d.path().join("big");
        std::fs::write(&big, vec![7u8; 2 << 20]).unwrap();
        let want = sha256_file(&big).unwrap();
        let abs = std::path::absolute(&big).unwrap();
        let key = DigestCache::key(&abs, &std::fs::metadata(&big).unwrap());
        let tsv = d.path().join("digests.tsv");
        std::fs::write(&tsv, format!("{key}\t../../etc\n")).unwrap();
        assert_eq!(DigestCache::open(&tsv).file(&big).unwrap(), want, "the planted value is not used");
        std::fs::write(&tsv, format!("{key}\t{}\n", "a".repeat(64))).unwrap();
        assert_eq!(DigestCache::open(&tsv).file(&big).unwrap(), "a".repeat(64), "a well-formed line is trusted");
    }

    #[test]
    fn a_sparse_file_digests_as_if_read_whole() {
        use std::os::unix::fs::FileExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(9 << 20).unwrap(); // a hole at each end, data at 3 MiB and at 5 MiB + 1
        f.write_all_at(&[7u8; 70_000], 3 << 20).unwrap();
        f.write_all_at(b"x", (5 << 20) + 1).unwrap();
        let sparse = ArtifactDigest::of_sparse_file(&p).unwrap().hex();
        assert_eq!(sparse, artifact_digest(&p).unwrap());
        let mut whole = vec![0u8; 9 << 20];
        whole[3 << 20..(3 << 20) + 70_000].fill(7);
        whole[(5 << 20) + 1] = b'x';
        assert_eq!(sparse, blake3::hash(&whole).to_hex().to_string());
    }

    #[test]
    fn tree_digest_sees_content_and_modes_but_not_mtimes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/a"), "1").unwrap();
        let first = tree_digest(d.path()).unwrap();
        let f = std::fs::File::options().write(true).open(d.path().join("etc/a")).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(tree_digest(d.path()).unwrap(), first, "mtime must not matter");
        std::fs::write(d.path().join("etc/a"), "2").unwrap();
        let second = tree_digest(d.path()).unwrap();
        assert_ne!(second, first);
        std::fs::set_permissions(d.path().join("etc/a"), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(tree_digest(d.path()).unwrap(), second);
    }
}

/// Remembers file digests between runs, keyed by what changes whenever a file's
/// content can have changed: path, device, inode, size, mtime and ctime (ctime
/// cannot be set back by a user). Like git's index: a cache hit must not
/// re-read a 70 MB kernel package to find out nothing changed.
pub(crate) struct DigestCache {
    path: Option<std::path::PathBuf>,
    entries: std::sync::Mutex<(std::collections::BTreeMap<String, String>, bool)>,
}

/// Whether `s` is a SHA-256 as imgd writes it: 64 lowercase hex digits.
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl DigestCache {
    /// A cache stored in `path` (a text file; created on first save).
    pub(crate) fn open(path: &Path) -> DigestCache {
        let map = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit_once('\t').map(|(k, v)| (k.to_string(), v.to_string())))
            // A digest names folders in the cache (unpacked kernels): a
            // damaged or edited line is dropped and the digest computed again.
            .filter(|(_, v)| is_sha256_hex(v))
            .collect();
        DigestCache { path: Some(path.to_path_buf()), entries: std::sync::Mutex::new((map, false)) }
    }

    /// No persistence: every digest is computed.
    pub(crate) fn none() -> DigestCache {
        DigestCache { path: None, entries: Default::default() }
    }

    fn key(path: &Path, md: &std::fs::Metadata) -> String {
        format!(
            "{}\t{}:{}:{}:{}.{}:{}.{}",
            path.display(),
            md.dev(),
            md.ino(),
            md.len(),
            md.mtime(),
            md.mtime_nsec(),
            md.ctime(),
            md.ctime_nsec()
        )
    }

    /// SHA-256 of a file's content, from the cache when the file is unchanged.
    pub(crate) fn file(&self, path: &Path) -> io::Result<String> {
        let md = std::fs::metadata(path)?;
        if self.path.is_none() || md.len() < (1 << 20) {
            return sha256_file(path);
        }
        let abs = std::path::absolute(path)?;
        let key = Self::key(&abs, &md);
        if let Some(d) = self.entries.lock().unwrap_or_else(|p| p.into_inner()).0.get(&key) {
            return Ok(d.clone());
        }
        let d = sha256_file(path)?;
        let mut guard = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // One entry per path: drop digests of the file's earlier states.
        let prefix = format!("{}\t", abs.display());
        guard.0.retain(|k, _| !k.starts_with(&prefix));
        guard.0.insert(key, d.clone());
        guard.1 = true;
        Ok(d)
    }

    /// Writes the cache back (atomically) if it learned anything.
    pub(crate) fn save(&self) -> io::Result<()> {
        let (Some(path), guard) = (&self.path, self.entries.lock().unwrap_or_else(|p| p.into_inner())) else {
            return Ok(());
        };
        if !guard.1 {
            return Ok(());
        }
        let text: String = guard.0.iter().map(|(k, v)| format!("{k}\t{v}\n")).collect();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    #[test]
    fn a_changed_file_is_rehashed() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("big");
        std::fs::write(&f, vec![1u8; 2 << 20]).unwrap();
        let c = DigestCache::open(&d.path().join("cache"));
        let first = c.file(&f).unwrap();
        c.save().unwrap();
        let c = DigestCache::open(&d.path().join("cache"));
        assert_eq!(c.file(&f).unwrap(), first);
        // Same size, same mtime, other content: ctime still tells.
        let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, vec![2u8; 2 << 20]).unwrap();
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(mtime).unwrap();
        assert_ne!(c.file(&f).unwrap(), first);
    }
}

/// A file's BLAKE3 tree cut at `chunk`-byte subtrees (a power of two of at
/// least 1 KiB): the chaining value of each chunk (an "outboard", as bao
/// calls it). Merged up the tree they give the file's BLAKE3, so a chunk
/// read later can be checked on its own against a digest the manifest
/// holds, without hashing the whole file again.
#[derive(Debug)]
pub(crate) struct Outboard {
    chunk: u64,
    len: u64,
    cvs: Vec<blake3::hazmat::ChainingValue>,
    /// The whole file's hash: what a file of one chunk is checked against.
    root: blake3::Hash,
}

impl Outboard {
    /// Reads `file` (`len` bytes) once, in reads of at least 1 MiB.
    pub(crate) fn of_file(file: &std::fs::File, len: u64, chunk: u64) -> io::Result<Outboard> {
        use std::os::unix::fs::FileExt;
        let mut cvs = Vec::with_capacity(len.div_ceil(chunk) as usize);
        let step = chunk * (1u64 << 20).div_ceil(chunk);
        let mut buf = vec![0u8; step.min(len) as usize];
        let mut whole = blake3::Hasher::new();
        let mut off = 0;
        while off < len {
            let n = step.min(len - off) as usize;
            file.read_exact_at(&mut buf[..n], off)?;
            if len <= chunk {
                whole.update(&buf[..n]);
            } else {
                for (i, piece) in buf[..n].chunks(chunk as usize).enumerate() {
                    cvs.push(chunk_cv(off + i as u64 * chunk, piece));
                }
            }
            off += n as u64;
        }
        let mut o = Outboard { chunk, len, cvs, root: whole.finalize() };
        if len > chunk {
            o.root = o.merge(0, len);
        }
        Ok(o)
    }

    /// The file's BLAKE3, as hex (compare with the manifest's).
    pub(crate) fn root_hex(&self) -> String {
        self.root.to_hex().to_string()
    }

    /// The size of the pieces it checks.
    pub(crate) fn piece(&self) -> u64 {
        self.chunk
    }

    /// Whether `data`, starting at piece `first`, is that run of whole
    /// pieces of the file (the last piece of the file may be short).
    pub(crate) fn verifies_run(&self, first: u64, data: &[u8]) -> bool {
        !data.is_empty()
            && data.chunks(self.chunk as usize).enumerate().all(|(i, p)| self.verifies(first + i as u64, p))
    }

    /// Whether `data` is chunk `index` of the file this outboard was made from.
    pub(crate) fn verifies(&self, index: u64, data: &[u8]) -> bool {
        let off = index * self.chunk;
        if data.len() as u64 != self.chunk.min(self.len.saturating_sub(off)) {
            return false;
        }
        if self.len <= self.chunk {
            return blake3::hash(data) == self.root;
        }
        self.cvs.get(index as usize).is_some_and(|cv| *cv == chunk_cv(off, data))
    }

    fn merge(&self, start: u64, len: u64) -> blake3::Hash {
        let (l, r) = self.halves(start, len);
        blake3::hazmat::merge_subtrees_root(&l, &r, blake3::hazmat::Mode::Hash)
    }

    /// The chaining values of the two subtrees under the node at `start`.
    fn halves(&self, start: u64, len: u64) -> (blake3::hazmat::ChainingValue, blake3::hazmat::ChainingValue) {
        let left = blake3::hazmat::left_subtree_len(len);
        (self.node(start, left), self.node(start + left, len - left))
    }

    fn node(&self, start: u64, len: u64) -> blake3::hazmat::ChainingValue {
        if len <= self.chunk {
            return self.cvs[(start / self.chunk) as usize];
        }
        let (l, r) = self.halves(start, len);
        blake3::hazmat::merge_subtrees_non_root(&l, &r, blake3::hazmat::Mode::Hash)
    }
}

/// Any aligned piece of a file checked against the BLAKE3 its manifest
/// holds, with no whole-file hash per piece: one [`Outboard`] per piece
/// size, made (and checked whole against the manifest) the first time a
/// piece of that size is asked for. What `imgd sync` checks each S3 part
/// and EBS block with before it is sent.
#[cfg_attr(not(feature = "aws"), allow(dead_code))] // for `imgd sync` and the S3 cache
pub(crate) struct Pieces {
    path: std::path::PathBuf,
    len: u64,
    blake3: String,
    trees: std::sync::Mutex<std::collections::BTreeMap<u64, std::sync::Arc<Outboard>>>,
}

#[cfg_attr(not(feature = "aws"), allow(dead_code))] // for `imgd sync` and the S3 cache
impl Pieces {
    /// `len` and `blake3` (hex) are what the manifest says of `path`.
    pub(crate) fn new(path: &Path, len: u64, blake3: &str) -> Pieces {
        Pieces { path: path.to_path_buf(), len, blake3: blake3.to_string(), trees: Default::default() }
    }

    /// Whether `data` is piece `index` of pieces of `piece` bytes (a power
    /// of two of at least 1 KiB). An error when the file as a whole no
    /// longer matches its manifest, or cannot be read.
    pub(crate) fn verifies(&self, piece: u64, index: u64, data: &[u8]) -> io::Result<bool> {
        if !piece.is_power_of_two() || piece < 1024 {
            return Err(io::Error::other(format!("pieces of {piece} bytes cannot be checked on their own")));
        }
        let tree = {
            // Held while the tree is made: the other readers need it too.
            let mut trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
            match trees.get(&piece) {
                Some(t) => t.clone(),
                None => {
                    let t = std::sync::Arc::new(self.outboard(piece)?);
                    trees.insert(piece, t.clone());
                    t
                }
            }
        };
        Ok(tree.verifies(index, data))
    }

    fn outboard(&self, piece: u64) -> io::Result<Outboard> {
        let f = std::fs::File::open(&self.path)?;
        let len = f.metadata()?.len();
        if len != self.len {
            return Err(io::Error::other(format!("it is {len} bytes; its manifest says {}", self.len)));
        }
        let tree = Outboard::of_file(&f, len, piece)?;
        if tree.root_hex() != self.blake3 {
            let (is, says) = (tree.root_hex(), &self.blake3);
            return Err(io::Error::other(format!("its BLAKE3 is {is}; its manifest says {says} (`imgd verify`)")));
        }
        Ok(tree)
    }
}

/// The chaining value of the subtree holding `data` at offset `off`.
fn chunk_cv(off: u64, data: &[u8]) -> blake3::hazmat::ChainingValue {
    use blake3::hazmat::HasherExt;
    let mut h = blake3::Hasher::new();
    h.set_input_offset(off);
    h.update(data);
    h.finalize_non_root()
}

#[cfg(test)]
mod outboard_tests {
    use super::{Outboard, Pieces};

    /// Pieces of any power-of-two size check against the manifest's BLAKE3;
    /// a changed byte fails its piece, and a file changed before the tree is
    /// made fails as a whole.
    #[test]
    fn pieces_of_any_size_are_checked_against_the_manifests_digest() {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, &data).unwrap();
        let digest = blake3::hash(&data).to_hex().to_string();
        let pieces = Pieces::new(&p, data.len() as u64, &digest);
        for size in [1024usize, 4096, 65536] {
            for (i, c) in data.chunks(size).enumerate() {
                assert!(pieces.verifies(size as u64, i as u64, c).unwrap(), "piece {i} of {size}");
            }
            let mut bad = data[..size.min(data.len())].to_vec();
            bad[7] ^= 1;
            assert!(!pieces.verifies(size as u64, 0, &bad).unwrap());
        }
        assert!(pieces.verifies(3000, 0, &data[..3000]).is_err(), "not a power of two");
        // Changed on disk before any tree was made: refused whole.
        let mut changed = data.clone();
        changed[20_000] ^= 1;
        std::fs::write(&p, &changed).unwrap();
        let e = Pieces::new(&p, data.len() as u64, &digest).verifies(4096, 0, &changed[..4096]).unwrap_err();
        assert!(e.to_string().contains("its manifest says"), "{e}");
    }

    /// Any length (one chunk, a partial last chunk, many chunks): the merged
    /// tree is the file's BLAKE3, and a flipped byte fails only its chunk.
    #[test]
    fn the_outboard_merges_to_the_files_blake3_and_catches_a_flipped_byte() {
        let chunk = 4096;
        for len in [0usize, 1, 1024, 4096, 4097, 3 * 4096, 5 * 4096 + 77, 64 * 4096 + 1] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("f");
            std::fs::write(&p, &data).unwrap();
            let o = Outboard::of_file(&std::fs::File::open(&p).unwrap(), len as u64, chunk).unwrap();
            assert_eq!(o.root_hex(), blake3::hash(&data).to_hex().to_string(), "len {len}");
            for (i, c) in data.chunks(chunk as usize).enumerate() {
                assert!(o.verifies(i as u64, c), "len {len} chunk {i}");
                let mut bad = c.to_vec();
                bad[c.len() / 2] ^= 1;
                assert!(!o.verifies(i as u64, &bad), "len {len} chunk {i} flipped");
            }
        }
    }
}
