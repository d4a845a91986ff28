//! What can stop a composition: a machine that does not start or answer, a
//! step whose check fails, or the switch and server it needs.

use std::path::PathBuf;

/// One machine that cannot be started, reached or asked.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Io(#[from] crate::fsutil::IoError),
    #[error("cannot start qemu (apt-get install qemu-system-x86)")]
    Start(#[source] std::io::Error),
    #[error("qemu exited before `{0}` appeared on the console")]
    ConsoleClosed(String),
    #[error("`{text}` did not appear on the console within {secs}s")]
    ConsoleTimeout { text: String, secs: u64 },
    #[error("cannot reach the command port of {name} ({})", path.display())]
    Unreachable {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the node stage of {name} never answered on its command port")]
    NeverAnswered {
        name: String,
        #[source]
        source: Box<VmError>,
    },
    #[error("no answer from {name} within {secs}s")]
    NoAnswer { name: String, secs: u64 },
    #[error("the command port of {0} closed")]
    PortClosed(String),
    /// Reading or writing the command port (a unix socket).
    #[error("the command port: {0}")]
    Port(#[from] std::io::Error),
    #[error("a malformed answer on the command port")]
    Malformed,
    #[error("the command port is not connected")]
    NotConnected,
    #[error("cannot run ssh (apt-get install openssh-client)")]
    NoSsh(#[source] std::io::Error),
    #[error("ssh to {name} ({user}@127.0.0.1:{port}) failed: {said}")]
    Ssh { name: String, user: String, port: u16, said: String },
    #[error("no answer from {0} over ssh in time")]
    SshTimeout(String),
}

/// A composition that cannot come up, or a step that failed on a machine.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error(transparent)]
    Io(#[from] crate::fsutil::IoError),
    #[error(transparent)]
    Qemu(#[from] crate::qemu::QemuError),
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The in-process netboot server.
    #[error(transparent)]
    Serve(#[from] crate::serve::boot::BootError),
    #[error(transparent)]
    Name(#[from] crate::model::BadName),
    #[error("choosing a loopback port for ssh")]
    SshPort(#[source] std::io::Error),
    /// A step's command did not do what the step expects.
    #[error("{0}")]
    Check(String),
    #[error("still failing after {secs}s")]
    StillFailing {
        secs: u64,
        #[source]
        source: Box<ComposeError>,
    },
}
