//! proxyDHCP: answers PXE firmware's DISCOVER (port 67) and REQUEST (port
//! 4011) with where to boot from, leaving addresses to the network's own
//! DHCP server. What to say is decided by [`super::dhcp`] (pure); which
//! UKI a UEFI HTTP boot client gets, by the boot room's state.

use super::dhcp::{self, Ignored};
use super::net::{udp_on_device, Config, DHCP_PORT, PXE_PORT};
use crate::serve::boot::state::{Current, State};
use crate::serve::boot::status::Status;
use crate::serve::http::metrics::Metrics;
use dhcproto::v4::MessageType;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::UdpSocket;

/// The proxyDHCP sockets, bound (so a port in use fails at start-up, not later).
pub struct ProxyDhcp {
    cfg: Arc<Config>,
    on_dhcp: UdpSocket,
    on_pxe: UdpSocket,
}

impl ProxyDhcp {
    pub fn bind(cfg: Arc<Config>) -> Result<ProxyDhcp, super::error::PxeError> {
        let on_dhcp = udp_on_device(&cfg.iface, DHCP_PORT)?;
        let on_pxe = udp_on_device(&cfg.iface, PXE_PORT)?;
        tracing::info!(iface = %cfg.iface, addr = %cfg.addr, "proxyDHCP on ports {} and {}", DHCP_PORT, PXE_PORT);
        Ok(ProxyDhcp { cfg, on_dhcp, on_pxe })
    }

    /// Answers netboot clients until the task is dropped, counting in
    /// `metrics` what it answered and what it left alone.
    /// Each answer is noted in `status` (the machine's `offer` step).
    pub async fn run(
        self,
        metrics: Arc<Metrics>,
        state: Arc<Current>,
        status: Arc<Status>,
    ) -> Result<(), super::error::PxeError> {
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
                // The REQUEST to the site's server names the address this
                // machine will boot from: its status row learns it (UEFI HTTP
                // boot never asks on 4011, so this is the only place).
                if let (MessageType::Request, Some(ip)) = (req.kind, req.requested) {
                    status.address(req.mac, ip.into());
                }
                let why = Ignored::Kind(req.kind);
                tracing::debug!(%from, "proxyDHCP: ignored: {why}");
                metrics.dhcp("ignored", why.label());
                continue;
            }
            let uki = match req.client {
                dhcp::Client::UefiHttp => http_boot_uki(&state.get(), &req),
                _ => HttpBootUki::NotAsked,
            };
            let uki = match uki {
                HttpBootUki::Path(p) => Some(p),
                HttpBootUki::NotAsked => None,
                HttpBootUki::Missing => {
                    tracing::info!(mac = %req.mac, "proxyDHCP: ignored: its group's signed UKI is missing");
                    metrics.dhcp("ignored", "no_signed_uki");
                    continue;
                }
            };
            let Some(boot) = dhcp::boot_file(&req, cfg.http, uki.as_deref()) else {
                let why = Ignored::Architecture(req.arch);
                tracing::info!(mac = %req.mac, "proxyDHCP: ignored: {why} (give its group http_boot = \"uki\")");
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
                    let address = on_pxe_port.then_some(from.ip());
                    status.offer(req.mac, address, req.client != dhcp::Client::Ipxe);
                    tracing::info!(
                    mac = %req.mac, client = ?req.client, arch = req.arch, port = if on_pxe_port { PXE_PORT } else { DHCP_PORT },
                    "proxyDHCP: boot {}", boot.text()
                    )
                }
                Err(e) => tracing::warn!(mac = %req.mac, "proxyDHCP: sending to {to}: {e}"),
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
fn http_boot_uki(state: &State, req: &dhcp::Request) -> HttpBootUki {
    http_boot_uki_path(state, req).unwrap_or(HttpBootUki::NotAsked)
}

fn http_boot_uki_path(state: &State, req: &dhcp::Request) -> Option<HttpBootUki> {
    use crate::model::manifest::ArtifactName;
    use crate::model::{Arch, Format};
    use crate::serve::boot::machines::{Claims, HttpBoot, Machine};
    let (ipxe_arch, arch) = match req.arch {
        dhcp::ARCH_X64_HTTP => ("x86_64", Arch::X86_64),
        dhcp::ARCH_ARM64_HTTP => ("arm64", Arch::Aarch64),
        _ => return None,
    };
    let claims =
        Claims { mac: Some(req.mac), arch: Some(ipxe_arch.into()), platform: Some("efi".into()), ..Default::default() };
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
                mac = %req.mac,
                "group {} has http_boot = \"uki\" but {} has no {ipxe_arch} UKI (add \"uki\" to the profile's formats)",
                group.name, entry.name
            );
            None
        }
    }
}
