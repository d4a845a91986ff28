//! What can stop the making of an artifact: a tool, a file, or an image that
//! is not laid out as it must be. Each variant says which step it was in.

use crate::fsutil::IoError;
use crate::tools::ToolError;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// Writing or reading an image being made (the path is the artifact's).
    #[error("writing the image: {0}")]
    Write(#[from] std::io::Error),
    /// An input (package, file of the tree) that could not be read or unpacked.
    #[error("{doing} {what}")]
    Input {
        doing: &'static str,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path} from the ESP of {}", disk.display())]
    EspFile {
        path: String,
        disk: std::path::PathBuf,
        #[source]
        source: ToolError,
    },
    /// A disk image whose partitions or boot code are not what imgd writes.
    #[error("{0}")]
    Disk(String),
    #[error("disk.size {size} is too small: at least {min} bytes")]
    DiskTooSmall { size: u64, min: u64 },
    /// A PE file (EFI stub, UKI) that is not laid out as one.
    #[error("{0}")]
    Uki(String),
    /// What was being made or read when `source` happened.
    #[error("{what}")]
    In {
        what: String,
        #[source]
        source: Box<ArtifactError>,
    },
    /// Installing the kernel's modules into the initramfs tree.
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
    /// An ext4 image, or a tree that cannot be put in one.
    #[error("{0}")]
    Ext4(String),
    /// The installed packages do not match the lock.
    #[error("{0}")]
    Sbom(String),
    /// A recipe without an input this format needs.
    #[error("{0}")]
    Missing(&'static str),
    #[error("{0} panicked")]
    Panicked(String),
    #[error(transparent)]
    BadName(#[from] crate::model::BadName),
}

impl ArtifactError {
    pub(crate) fn within(self, what: impl Into<String>) -> ArtifactError {
        ArtifactError::In { what: what.into(), source: Box::new(self) }
    }
}

pub(crate) type Result<T, E = ArtifactError> = std::result::Result<T, E>;

/// The error of reading or unpacking `what`.
pub(crate) fn input(doing: &'static str, what: &dyn std::fmt::Display) -> impl FnOnce(std::io::Error) -> ArtifactError {
    let what = what.to_string();
    move |source| ArtifactError::Input { doing, what, source }
}
