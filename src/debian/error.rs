//! What can go wrong between a Debian mirror and a lock: the mirror cannot be
//! read, what it sent is not what was signed or locked, an index or a Release
//! is not one imgd reads, or the requested set cannot be resolved.

use crate::fsutil::IoError;

#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error(transparent)]
    Io(#[from] IoError),
    /// A path of the mirror could not be fetched or read (`GET <url>`).
    #[error("{doing} {url}")]
    Mirror {
        doing: &'static str,
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{mirror}: refusing path `{path}` (it climbs out of the mirror)")]
    Climbs { mirror: String, path: String },
    /// Bytes that differ from the size and SHA-256 the lock or the signed
    /// index promised; they are not kept.
    #[error("{at}got {got} bytes with SHA-256 {actual}, the lock says {size} bytes with {sha256}: refused")]
    NotLocked { at: String, got: u64, actual: String, size: u64, sha256: String },
    #[error("{mirror}: dists/{suite}/{path} does not match the SHA-256 in the signed Release: refused")]
    NotSigned { mirror: String, suite: String, path: String },
    /// gpgv did not find a good signature by a key of the keyring.
    #[error("{mirror}: dists/{suite}/InRelease is not signed by a key in {}", keyring.display())]
    Signature {
        mirror: String,
        suite: String,
        keyring: std::path::PathBuf,
        #[source]
        source: Box<DebianError>,
    },
    #[error("keyring {} not found (Debian's is in package debian-archive-keyring)", .0.display())]
    NoKeyring(std::path::PathBuf),
    #[error("gpgv: {0}")]
    Gpgv(String),
    #[error("running gpgv (package gpgv)")]
    NoGpgv(#[source] std::io::Error),
    /// A signed Release of another suite than the one asked for.
    #[error("{mirror}: dists/{suite}/InRelease is signed but describes suite {got} ({codename}), not {suite}")]
    OtherSuite { mirror: String, suite: String, got: String, codename: String },
    /// A Release, index or relation that is not well formed; `what` names it.
    #[error("{what}")]
    In {
        what: String,
        #[source]
        source: Box<DebianError>,
    },
    /// What is wrong with a Release or index text.
    #[error("{0}")]
    Malformed(String),
    #[error("{mirror}: the Release of {suite} lists no {dir}/Packages(.gz): is {component} a component of it, {arch} one of its architectures?")]
    NoIndex { mirror: String, suite: String, dir: String, component: String, arch: String },
    /// The requested set has no closure in the index.
    #[error("resolving the packages of {suite} from {mirror}")]
    Resolve {
        suite: String,
        mirror: String,
        #[source]
        source: Box<DebianError>,
    },
    #[error("`{name}` is a virtual package provided by {}: name one of them", providers.join(", "))]
    Virtual { name: String, providers: Vec<String> },
    #[error("package `{0}` is not in the index")]
    NotInIndex(String),
    #[error("{package} {version} depends on {wants}, which nothing in the index satisfies")]
    Unsatisfied { package: String, version: String, wants: String },
    /// A mirror URL that is not one imgd uses, or a resolved lock that does
    /// not pass the lock's own checks.
    #[error(transparent)]
    Lock(#[from] crate::config::lock::LockError),
}

impl DebianError {
    /// Wraps `self` in what was being read: `<mirror>: dists/<suite>/<path>`.
    pub(crate) fn within(self, what: impl Into<String>) -> DebianError {
        DebianError::In { what: what.into(), source: Box::new(self) }
    }
}

pub(crate) type Result<T, E = DebianError> = std::result::Result<T, E>;
