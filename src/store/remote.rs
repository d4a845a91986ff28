//! A remote build cache: other machines' builds, looked up before building
//! and filled after, so a team (or a CI fleet) builds each input hash once.
//!
//! `s3://bucket/prefix` is the one kind today (`super::s3`, feature `aws`),
//! chosen by [`super::settings::configured`].
//! A remote only moves bytes: what it brings is never trusted. [`crate::build`]
//! reads the manifest with a size limit, checks every name in it and that it
//! is this hash's, fetches each file with the size the manifest promises, and
//! re-hashes it before anything is committed to the store.

use std::path::Path;

/// A remote cache that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// A local file to send could not be read.
    #[error(transparent)]
    Io(#[from] crate::fsutil::IoError),
    /// The remote refused, failed, or sent what was not asked for.
    #[error("{doing} {entry}/{file} at {url}")]
    Transfer {
        doing: &'static str,
        url: String,
        entry: String,
        file: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

type Result<T, E = RemoteError> = std::result::Result<T, E>;

/// Where builds are shared.
pub trait Remote {
    /// Downloads `<entry>/<file>` into `dest` (a new file), refusing more than
    /// `max_size` bytes; `Ok(false)` when the cache does not have it.
    fn get(&self, entry: &str, file: &str, dest: &Path, max_size: u64) -> Result<bool>;
    /// Uploads a committed entry; `overwrite` replaces objects that claim to
    /// be the same (after a fetched copy failed verification).
    fn push(&self, entry: &super::Entry, overwrite: bool) -> Result<()>;
    /// Uploads one file as `<entry>/<file>` (unless an object with its
    /// SHA-256 is there and not `overwrite`): the Debian package pool is
    /// shared this way.
    fn put_file(&self, entry: &str, file: &str, path: &Path, sha256: &str, overwrite: bool) -> Result<()>;
    fn url(&self) -> &str;
}
