//! `imgd serve --proxy-dhcp IFACE|ADDR`: the PXE side of the netboot path.
//! proxyDHCP on ports 67 and 4011 of one interface (answers from
//! [`super::dhcp`]) and a read-only TFTP server for the [`super::loaders`],
//! so firmware that knows only DHCP + TFTP reaches `/boot.ipxe` with no
//! dnsmasq beside imgd.

use super::dhcp::{self, Ignored};
use super::loaders::{Loader, Loaders};
use anyhow::{bail, Context};
use dhcproto::v4::MessageType;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
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
pub fn resolve_interface(spec: &str) -> anyhow::Result<(String, Ipv4Addr)> {
    let ifs = if_addrs::get_if_addrs().context("listing network interfaces")?;
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
            bail!("--proxy-dhcp {spec}: no interface with that name or IPv4 address here; have {}", have.join(", "))
        }
    }
}

/// A UDP socket on `port` of every address, bound to `iface`: DHCP clients
/// without an address broadcast, so only a wildcard socket hears them, and
/// the device binding keeps it (and its broadcast replies) to that segment.
fn udp_on_device(iface: &str, port: u16) -> anyhow::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(iface.as_bytes())).with_context(|| format!("binding a socket to interface {iface}"))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .with_context(|| format!("binding UDP port {port} on {iface}"))?;
    Ok(UdpSocket::from_std(s.into())?)
}

/// The proxyDHCP sockets, bound (so a port in use fails at start-up, not later).
pub struct ProxyDhcp {
    cfg: Arc<Config>,
    on_dhcp: UdpSocket,
    on_pxe: UdpSocket,
}

impl ProxyDhcp {
    pub fn bind(cfg: Arc<Config>) -> anyhow::Result<ProxyDhcp> {
        let on_dhcp = udp_on_device(&cfg.iface, DHCP_PORT)?;
        let on_pxe = udp_on_device(&cfg.iface, PXE_PORT)?;
        tracing::info!(iface = %cfg.iface, addr = %cfg.addr, "proxyDHCP on ports {} and {}", DHCP_PORT, PXE_PORT);
        Ok(ProxyDhcp { cfg, on_dhcp, on_pxe })
    }

    /// Answers netboot clients until the task is dropped, counting in
    /// `metrics` what it answered and what it left alone.
    pub async fn run(self, server: Arc<super::Server>) -> anyhow::Result<()> {
        let metrics = &server.metrics;
        let ProxyDhcp { cfg, on_dhcp, on_pxe } = self;
        let (mut a, mut b) = ([0u8; 1500], [0u8; 1500]);
        loop {
            let (on_pxe_port, n, from) = tokio::select! {
                r = on_dhcp.recv_from(&mut a) => { let (n, f) = r?; (false, n, f) }
                r = on_pxe.recv_from(&mut b) => { let (n, f) = r?; (true, n, f) }
            };
            let bytes = if on_pxe_port { &b[..n] } else { &a[..n] };
            let req = match dhcp::parse(bytes) {
                Ok(r) => r,
                Err(why) => {
                    tracing::debug!(%from, "proxyDHCP: ignored: {why}");
                    metrics.dhcp("ignored", why.label());
                    continue;
                }
            };
            // Port 67 hears every client's DISCOVER and REQUEST: only a
            // DISCOVER gets a proxy OFFER (the REQUEST is for the site's
            // server). Port 4011 is asked by clients that took the offer.
            let answers = if on_pxe_port {
                matches!(req.kind, MessageType::Request | MessageType::Inform)
            } else {
                req.kind == MessageType::Discover
            };
            if !answers {
                let why = Ignored::Kind(req.kind);
                tracing::debug!(%from, "proxyDHCP: ignored: {why}");
                metrics.dhcp("ignored", why.label());
                continue;
            }
            let uki = match req.client {
                dhcp::Client::UefiHttp => http_boot_uki(&server.state(), &req),
                _ => HttpBootUki::NotAsked,
            };
            let uki = match uki {
                HttpBootUki::Path(p) => Some(p),
                HttpBootUki::NotAsked => None,
                HttpBootUki::Missing => {
                    tracing::info!(mac = %req.mac_text(), "proxyDHCP: ignored: its group's signed UKI is missing");
                    metrics.dhcp("ignored", "no_signed_uki");
                    continue;
                }
            };
            let Some(boot) = dhcp::boot_file(&req, cfg.http, uki.as_deref()) else {
                let why = Ignored::Architecture(req.arch);
                tracing::info!(mac = %req.mac_text(), "proxyDHCP: ignored: {why} (give its group http_boot = \"uki\")");
                metrics.dhcp("ignored", why.label());
                continue;
            };
            let reply = dhcp::reply(&req, cfg.addr, &boot);
            if reply.is_empty() {
                continue;
            }
            // A relayed request goes back to the relay; a client without an
            // address hears a broadcast; on 4011 it has one and is answered there.
            let to: SocketAddr = if !req.giaddr.is_unspecified() {
                (req.giaddr, DHCP_PORT).into()
            } else if on_pxe_port {
                from
            } else {
                (Ipv4Addr::BROADCAST, DHCP_PORT + 1).into()
            };
            let sock = if on_pxe_port { &on_pxe } else { &on_dhcp };
            let what = if req.kind == MessageType::Discover { "offer" } else { "ack" };
            match sock.send_to(&reply, to).await {
                Ok(_) => {
                    metrics.dhcp(req.client.label(), what);
                    tracing::info!(
                    mac = %req.mac_text(), client = ?req.client, arch = req.arch, port = if on_pxe_port { PXE_PORT } else { DHCP_PORT },
                    "proxyDHCP: boot {}", boot.text()
                    )
                }
                Err(e) => tracing::warn!(mac = %req.mac_text(), "proxyDHCP: sending to {to}: {e}"),
            }
        }
    }
}

/// What a UEFI HTTP boot client's group says about UKIs.
enum HttpBootUki {
    /// The group does not ask for one (or has none for this architecture).
    NotAsked,
    /// The server path of the UKI (or its signed copy) to boot.
    Path(String),
    /// The group asks for a signed UKI that is not there: answer nothing
    /// rather than an image the firmware would refuse.
    Missing,
}

/// The unified kernel image a UEFI HTTP boot client gets: its group (found
/// by what DHCP tells: MAC, architecture, platform `efi`) asks for
/// `http_boot = "uki"` and boots an entry with a UKI for its architecture.
fn http_boot_uki(state: &super::state::State, req: &dhcp::Request) -> HttpBootUki {
    http_boot_uki_path(state, req).unwrap_or(HttpBootUki::NotAsked)
}

fn http_boot_uki_path(state: &super::state::State, req: &dhcp::Request) -> Option<HttpBootUki> {
    use super::machines::{Claims, HttpBoot, Machine};
    use crate::config::types::{Arch, Format};
    use crate::store::manifest::ArtifactName;
    let (ipxe_arch, arch) = match req.arch {
        dhcp::ARCH_X64_HTTP => ("x86_64", Arch::X86_64),
        dhcp::ARCH_ARM64_HTTP => ("arm64", Arch::Aarch64),
        _ => return None,
    };
    let claims = Claims {
        mac: Some(req.mac_text()),
        arch: Some(ipxe_arch.into()),
        platform: Some("efi".into()),
        ..Default::default()
    };
    let group = state.machines.select(&Machine { claims, ..Default::default() })?;
    if group.http_boot != HttpBoot::Uki {
        return None;
    }
    let entry = state.group(group)?.entry.as_ref().ok()?;
    let uki = entry.manifest.artifact(Format::Uki, ArtifactName::Uki);
    match uki {
        Some(a) if entry.manifest.arch == arch => Some(match state.signed.get(&group.name) {
            None => HttpBootUki::Path(format!("/artifacts/{}/{}", entry.name, a.file)),
            Some(Ok(set)) => {
                HttpBootUki::Path(format!("/signed/{}/{}/{}", entry.name, &set.record.cert_sha256[..32], a.file))
            }
            // Logged when the state was loaded.
            Some(Err(_)) => HttpBootUki::Missing,
        }),
        _ => {
            tracing::warn!(
                mac = %req.mac_text(),
                "group {} has http_boot = \"uki\" but {} has no {ipxe_arch} UKI (add \"uki\" to the profile's formats)",
                group.name, entry.name
            );
            None
        }
    }
}

/// Serves only the loaders, from memory: any other name is "file not
/// found", and writes are refused. Counts in the server's metrics.
struct LoaderFiles(Loaders, Arc<super::Server>);

impl async_tftp::server::Handler for LoaderFiles {
    type Reader = futures_lite::io::Cursor<bytes::Bytes>;
    type Writer = futures_lite::io::Sink;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), async_tftp::packet::Error> {
        let Some(l) = path.to_str().and_then(Loader::from_name) else {
            tracing::info!(%client, "TFTP: refused {:?}", path.to_string_lossy().escape_debug().to_string());
            self.1.metrics.tftp("-", "refused");
            return Err(async_tftp::packet::Error::FileNotFound);
        };
        let b = self.0.get(l);
        self.1.metrics.tftp(l.file_name(), "sent");
        tracing::info!(%client, "TFTP: sending {} ({} bytes)", l.file_name(), b.len());
        let len = b.len() as u64;
        Ok((futures_lite::io::Cursor::new(b), Some(len)))
    }

    async fn write_req_open(
        &mut self,
        _: &SocketAddr,
        _: &Path,
        _: Option<u64>,
    ) -> Result<Self::Writer, async_tftp::packet::Error> {
        self.1.metrics.tftp("-", "write_refused");
        Err(async_tftp::packet::Error::IllegalOperation)
    }
}

/// Block size cap: 1468 bytes of data fill a 1500-byte Ethernet frame, so
/// no block is ever fragmented (U-Boot and some PXE ROMs cannot reassemble).
pub const TFTP_MAX_BLOCK: u16 = 1468;
/// Window cap (RFC 7440): enough to fill a LAN, bounded for slow firmware.
pub const TFTP_MAX_WINDOW: u16 = 32;
/// A transfer whose client stops acknowledging ends after this many resends.
pub const TFTP_RETRIES: u32 = 5;

/// The read-only TFTP server, bound to `addr:port`; `.serve()` runs it.
pub async fn tftp(
    addr: Ipv4Addr,
    port: u16,
    loaders: Loaders,
    counts_in: Arc<super::Server>,
) -> anyhow::Result<async_tftp::server::TftpServer<impl async_tftp::server::Handler>> {
    let server = async_tftp::server::TftpServerBuilder::with_handler(LoaderFiles(loaders, counts_in))
        .bind(SocketAddr::from((addr, port)))
        .timeout(Duration::from_secs(2))
        .max_send_retries(TFTP_RETRIES)
        .block_size_limit(TFTP_MAX_BLOCK)
        .window_size_limit(TFTP_MAX_WINDOW)
        .build()
        .await
        .with_context(|| format!("TFTP on {addr}:{port}"))?;
    tracing::info!("TFTP on {addr}:{port} (loaders only, read-only)");
    Ok(server)
}
