//! Where the PXE room listens: the interface facing the machines, its
//! address, and UDP sockets bound to that segment.

use super::error::PxeError;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use tokio::net::UdpSocket;

/// DHCP's server port; clients answer on the next one.
pub const DHCP_PORT: u16 = 67;
/// The PXE port where firmware sends its second request (PXE spec 2.1).
pub const PXE_PORT: u16 = 4011;
/// TFTP's port.
pub const TFTP_PORT: u16 = 69;

/// Where the PXE side listens and what it points clients at.
#[derive(Debug, Clone)]
pub struct Config {
    /// The interface facing the machines.
    pub iface: String,
    /// This host's address on it: the DHCP server identifier, the TFTP server.
    pub addr: Ipv4Addr,
    /// imgd serve's HTTP address as machines reach it.
    pub http: SocketAddrV4,
}

/// `IFACE` or `ADDR` (one of this host's IPv4 addresses) to the interface
/// and its address.
pub fn resolve_interface(spec: &str) -> Result<(String, Ipv4Addr), PxeError> {
    let ifs = if_addrs::get_if_addrs().map_err(PxeError::Interfaces)?;
    let v4 = |i: &if_addrs::Interface| match i.ip() {
        std::net::IpAddr::V4(a) => Some(a),
        _ => None,
    };
    let found = match spec.parse::<Ipv4Addr>() {
        Ok(want) => ifs.iter().find(|i| v4(i) == Some(want)),
        Err(_) => ifs.iter().find(|i| i.name == spec && v4(i).is_some()),
    };
    match found.and_then(|i| Some((i.name.clone(), v4(i)?))) {
        Some(f) => Ok(f),
        None => {
            let mut have: Vec<String> = ifs.iter().filter_map(|i| Some(format!("{} ({})", i.name, v4(i)?))).collect();
            have.dedup();
            Err(PxeError::NoInterface { spec: spec.to_string(), have: have.join(", ") })
        }
    }
}

/// A UDP socket on `port` of every address, bound to `iface`: DHCP clients
/// without an address broadcast, so only a wildcard socket hears them, and
/// the device binding keeps it (and its broadcast replies) to that segment.
pub(crate) fn udp_on_device(iface: &str, port: u16) -> Result<UdpSocket, PxeError> {
    let socket = |what: String| move |source| PxeError::Socket { what, source };
    let setup = || format!("setting up a UDP socket for port {port} on {iface}");
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(socket(setup()))?;
    s.set_reuse_address(true).and_then(|()| s.set_broadcast(true)).map_err(socket(setup()))?;
    s.bind_device(Some(iface.as_bytes())).map_err(socket(format!("binding a socket to interface {iface}")))?;
    s.set_nonblocking(true).map_err(socket(setup()))?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .map_err(socket(format!("binding UDP port {port} on {iface}")))?;
    UdpSocket::from_std(s.into()).map_err(socket(setup()))
}
