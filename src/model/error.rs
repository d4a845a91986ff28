//! The kinds of failure imgd tells apart, and the exit code each ends a
//! command with. A library error that is the user's mistake is a
//! [`ConfigError`], wherever it is found (a profile, a hardware file, a
//! machines file, a flag, a lock): it names the file, the line and the key,
//! and makes imgd exit with code 2. Every other failure exits with 1.
//!
//! Library layers fail with typed `thiserror` enums (`StoreError`,
//! `RootfsError`, `BuildError`, …) whose variants carry the path, key or id;
//! the commands (`cmd/`) carry them up in `anyhow`. The kind is read from
//! the error's chain of sources, in one place ([`Kind::of`]): so a layer
//! holds a `ConfigError` as the `#[source]` of a variant saying which step
//! found it, never behind `#[error(transparent)]` (which would hide it).

use std::fmt;
use std::path::PathBuf;

/// A mistake in the user's input. `imgd` exits with code 2 on this error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Located(self))]
pub struct ConfigError {
    /// The file the mistake is in, or a pseudo-source such as `--set`.
    pub file: PathBuf,
    /// 1-based line and column of the offending key or value, when known.
    pub pos: Option<(usize, usize)>,
    /// Dotted key, e.g. `disk.size` or `files[2].mode`.
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ConfigError { file: file.into(), pos: None, key: None, message: message.into() }
    }

    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn at(mut self, pos: Option<(usize, usize)>) -> Self {
        self.pos = pos;
        self
    }
}

/// `file:line:col: key `k`: message`.
struct Located<'a>(&'a ConfigError);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        write!(f, "{}", e.file.display())?;
        if let Some((line, col)) = e.pos {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(key) = &e.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", e.message)
    }
}

/// An error with its sources, one line: `what: why: root cause` (what
/// anyhow's `{:#}` prints, for typed errors).
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

/// How a failed command ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The user's input is wrong: fix it and run again (exit code 2).
    BadInput,
    /// Anything else: a tool failed, a disk filled, a network went away (1).
    Failed,
}

impl Kind {
    /// The kind of an error chain: bad input when any error in it is a
    /// [`ConfigError`] (context added on the way up does not change it).
    /// (`anyhow::Error` gives its chain as `e.as_ref()`.)
    pub fn of(e: &(dyn std::error::Error + 'static)) -> Kind {
        let mut next = Some(e);
        while let Some(c) = next {
            if c.is::<ConfigError>() {
                return Kind::BadInput;
            }
            next = c.source();
        }
        Kind::Failed
    }

    pub fn exit_code(self) -> i32 {
        match self {
            Kind::BadInput => 2,
            Kind::Failed => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_config_error_names_file_line_and_key() {
        let e = ConfigError::new("profiles/web.toml", "not a size").key("disk.size").at(Some((4, 8)));
        assert_eq!(e.to_string(), "profiles/web.toml:4:8: key `disk.size`: not a size");
        assert_eq!(ConfigError::new("--set", "no `=`").to_string(), "--set: no `=`");
    }

    #[test]
    fn the_kind_survives_context_and_only_bad_input_exits_2() {
        let bad: anyhow::Result<()> = Err(ConfigError::new("hardware/vm.toml", "unknown arch").into());
        let bad = bad.context("resolving web").context("building web").unwrap_err();
        assert_eq!(Kind::of(bad.as_ref()), Kind::BadInput);
        assert_eq!(Kind::of(bad.as_ref()).exit_code(), 2);
        let io = anyhow::Error::from(std::io::Error::other("disk full")).context("writing the store entry");
        assert_eq!(Kind::of(io.as_ref()).exit_code(), 1);
    }
}
