//! What can stop the boot room from loading its state: the machines file,
//! the store, the iPXE loaders, or the `[ipxe_signing]` key and certificate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The machines file or the cache setting is wrong (exit code 2).
    #[error("loading what to serve")]
    Config(#[source] crate::model::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Io(#[from] crate::fsutil::IoError),
    #[error(transparent)]
    Cert(#[from] crate::hash::CertError),
    /// openssl could not be started or fed.
    #[error("{doing} openssl (Debian: apt-get install openssl)")]
    Openssl {
        doing: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The key or certificate does not sign as iPXE needs (which file, why).
    #[error("{0}")]
    Signing(String),
    #[error("signing task")]
    SignTask(#[from] tokio::task::JoinError),
    #[error("{}: not a plain file of {size} bytes, as its manifest says", path.display())]
    NotPlain { path: PathBuf, size: u64 },
    #[error("reading {} (Debian: apt-get install ipxe)", path.display())]
    Loader {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is empty", .0.display())]
    EmptyLoader(PathBuf),
    /// The in-process server of `imgd test` and `imgd compose`.
    #[error("{doing}")]
    Loopback {
        doing: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl From<crate::model::ConfigError> for BootError {
    fn from(e: crate::model::ConfigError) -> Self {
        BootError::Config(e)
    }
}

pub(crate) type Result<T, E = BootError> = std::result::Result<T, E>;
