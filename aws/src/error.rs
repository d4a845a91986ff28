//! The crate's one error type: opaque, so what fails inside (the SDK's
//! error types, retries, I/O) is not part of imgd-aws's public surface.
//! It prints the whole chain of what went wrong in one line.

use std::future::Future;
use std::pin::Pin;

/// Why an AWS operation failed.
pub struct Error(anyhow::Error);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::error::Error for Error {}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Error(e)
    }
}

/// What the crate's public functions return.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the crate's entry points return: a boxed future, so the code that
/// polls the whole AWS state machine is compiled once, here. Returned as
/// `impl Future`, it was compiled again in every crate that awaited it: in
/// imgd's binary, its library and the library's tests (some 40 s of each CI
/// build on two cores).
pub type Task<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Boxes one of the crate's futures as a [`Task`], its error made opaque.
pub(crate) fn task<'a, T>(work: impl Future<Output = anyhow::Result<T>> + Send + 'a) -> Task<'a, T> {
    Box::pin(async move { work.await.map_err(Error::from) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_chain_is_printed_once() {
        let inner = anyhow::anyhow!("throttled").context("CreateImage in eu-west-1");
        let e = Error::from(inner);
        assert_eq!(e.to_string(), "CreateImage in eu-west-1: throttled");
        let outer = anyhow::Error::from(e).context("syncing hello");
        assert_eq!(format!("{outer:#}"), "syncing hello: CreateImage in eu-west-1: throttled");
    }
}
