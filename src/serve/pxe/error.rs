//! What can stop proxyDHCP or TFTP: the interface, a socket, a port in use.

#[derive(Debug, thiserror::Error)]
pub enum PxeError {
    #[error("listing network interfaces")]
    Interfaces(#[source] std::io::Error),
    #[error("--proxy-dhcp {spec}: no interface with that name or IPv4 address here; have {have}")]
    NoInterface { spec: String, have: String },
    /// A socket could not be made, set up or bound (`what`: which, where).
    #[error("{what}")]
    Socket {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TFTP on {addr}")]
    Tftp {
        addr: std::net::SocketAddr,
        #[source]
        source: async_tftp::Error,
    },
    /// A bound socket stopped receiving.
    #[error("receiving: {0}")]
    Recv(#[from] std::io::Error),
}
