//! What can stop the assembly of a root filesystem.

use crate::fsutil::IoError;
use crate::model::ConfigError;
use crate::tools::ToolError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Debian(#[from] crate::debian::DebianError),
    /// The profile asks for what the image cannot give (exit code 2): held
    /// as a source, never transparently, so the kind is found in the chain.
    #[error("the profile does not fit its image")]
    Profile(#[source] ConfigError),
    /// A change to the image's tree (a path in the image, a link, a copy).
    #[error("in the image: {0}")]
    Tree(#[from] std::io::Error),
    #[error(transparent)]
    Remote(#[from] crate::store::remote::RemoteError),
    /// An input (package, tarball, folder) could not be unpacked or copied
    /// into the tree.
    #[error("{doing} {what}")]
    Unpack {
        doing: &'static str,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the Debian base has no lock (run `imgd lock`)")]
    NoLock,
    #[error("assembling a Debian base needs root (mmdebstrap --mode=root creates device nodes and chroots)")]
    NeedsRoot,
    /// One locked package could not be fetched.
    #[error("{name} {version}")]
    Package {
        name: String,
        version: String,
        #[source]
        source: Box<RootfsError>,
    },
    #[error("{0} panicked")]
    Panicked(&'static str),
    /// A `.deb` whose control fields are not its lock line's.
    #[error("the lock line {want} names a .deb (SHA-256 {sha256}) that is {got}: refused (was the lock edited? run `imgd lock`)")]
    NotItsLine { want: String, sha256: String, got: String },
    /// A kernel (package, explicit files or the base's /boot) that is not
    /// laid out as a kernel is.
    #[error("{0}")]
    Kernel(String),
    #[error("no vmlinuz-* in {}", .0.display())]
    NoKernelImage(PathBuf),
    /// What the scratch stage needs from its packages and is not there.
    #[error("{0}")]
    Scratch(String),
    /// A program of the scratch packages that is not an ELF file imgd reads.
    #[error("reading {path} as ELF")]
    Elf {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl From<ConfigError> for RootfsError {
    fn from(e: ConfigError) -> Self {
        RootfsError::Profile(e)
    }
}

/// The error of unpacking or copying `what` into the tree.
pub(crate) fn unpacking(
    doing: &'static str,
    what: &dyn std::fmt::Display,
) -> impl FnOnce(std::io::Error) -> RootfsError {
    let what = what.to_string();
    move |source| RootfsError::Unpack { doing, what, source }
}

pub(crate) type Result<T, E = RootfsError> = std::result::Result<T, E>;
