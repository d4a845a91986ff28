//! Writes that never leave half a file: a private temporary file in the
//! destination's own folder, synced, then renamed over the destination; and
//! the early start of a big file's writeback.

use std::io::Write;
use std::path::{Path, PathBuf};

/// An I/O failure on a path, saying what was being done: the error every
/// layer reports a file or folder it could not read, write or make with
/// (`reading /var/lib/imgd/store/x: No such file or directory`).
#[derive(Debug, thiserror::Error)]
#[error("{doing} {}", path.display())]
pub struct IoError {
    /// What was being done, as a verb phrase: `reading`, `creating`.
    pub doing: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// `.at("reading", path)` on an `io::Result`: the failure as an [`IoError`].
pub trait IoAt<T> {
    fn at(self, doing: &'static str, path: impl AsRef<Path>) -> Result<T, IoError>;
}

impl<T> IoAt<T> for std::io::Result<T> {
    fn at(self, doing: &'static str, path: impl AsRef<Path>) -> Result<T, IoError> {
        self.map_err(|source| IoError { doing, path: path.as_ref().to_path_buf(), source })
    }
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).at("writing into", dir)?;
    tmp.write_all(bytes).and_then(|()| tmp.as_file().sync_all()).at("writing", tmp.path())?;
    tmp.persist(path).map_err(|e| e.error).at("writing", path)?;
    Ok(())
}

/// Keeps a file's written pages going to disk while it is being written (by
/// imgd or by a tool such as mkfs.ext4 or qemu-img), until dropped. A build
/// writes gigabytes of images and the store's commit fsyncs every file of an
/// entry; left to the kernel, the writeback of all of it would start at that
/// fsync, with the CPUs idle. Here a thread calls fdatasync on its own
/// descriptor every 100 ms, so the disk works beside the build and the
/// commit finds little left to write. (sync_file_range would not block the
/// thread, but neither rustix nor nix offers it and this crate has no unsafe
/// code; fdatasync does not lock out the writer.) The pages stay cached for
/// the steps that read the file next.
pub(crate) struct Flusher {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    /// Follows `path`, which must exist (the writer may truncate it, not
    /// replace it).
    pub(crate) fn follow(path: &Path) -> std::io::Result<Flusher> {
        let f = std::fs::File::open(path)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(std::time::Duration::from_millis(100))
            {
                // Advisory: a failure only loses the head start (the commit's
                // fsync reports real errors).
                let _ = rustix::fs::fdatasync(&f);
            }
        });
        Ok(Flusher { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The data regions `[start, end)` of the first `len` bytes of a sparse file,
/// found with SEEK_DATA/SEEK_HOLE: what a copy or a digest must read.
pub(crate) fn data_regions(f: &std::fs::File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom};
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let data = match seek(f, SeekFrom::Data(pos)) {
            Ok(d) if d < len => d,
            Ok(_) | Err(rustix::io::Errno::NXIO) => break, // only a hole is left
            Err(e) => return Err(e.into()),
        };
        let hole = seek(f, SeekFrom::Hole(data))?.min(len);
        out.push((data, hole));
        pos = hole;
    }
    Ok(out)
}
