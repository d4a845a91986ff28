//! proxyDHCP answers (PXE spec 2.1, RFC 4578), as pure functions: a packet
//! in, what to boot and the reply's bytes out. The sockets live in
//! [`super::proxy_dhcp`].
//!
//! imgd never hands out addresses: the site's DHCP server does that, and imgd
//! answers beside it, only to clients that say they are netbooting (option 60
//! `PXEClient`/`HTTPClient` with an architecture, option 93), with the boot
//! file alone. What each client gets:
//! - iPXE (user class `iPXE`), whichever firmware it came from: the URL of
//!   `/boot.ipxe`, so the chain ends there and never loops back to TFTP;
//! - legacy BIOS PXE (arch 0): `undionly.kpxe` over TFTP;
//! - x86_64 UEFI PXE (arch 7 or 9): `snponly.efi` over TFTP;
//! - UEFI HTTP boot (class `HTTPClient`; arch 16 x86_64, 19 arm64): the
//!   machine's unified kernel image by URL when its group has
//!   `http_boot = "uki"`, else (x86_64 only) `snponly.efi` by URL.
//!
//! Every field is checked before use (the packet comes from anyone on the
//! segment): a request with a malformed field is ignored, not answered.

use crate::serve::boot::loaders::Loader;
use dhcproto::v4::{self, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use std::net::{Ipv4Addr, SocketAddrV4};

/// How a netbooting client asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Client {
    /// iPXE, already running (user class `iPXE`).
    Ipxe,
    /// Firmware PXE on a legacy BIOS.
    BiosPxe,
    /// Firmware PXE under x86_64 UEFI.
    UefiPxe,
    /// UEFI HTTP boot (x86_64 or arm64: see [`Request::arch`]).
    UefiHttp,
}

impl Client {
    /// The label in metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Client::Ipxe => "ipxe",
            Client::BiosPxe => "bios_pxe",
            Client::UefiPxe => "uefi_pxe",
            Client::UefiHttp => "uefi_http",
        }
    }
}

/// RFC 4578 architecture numbers for UEFI HTTP boot.
pub(crate) const ARCH_X64_HTTP: u16 = 16;
pub(crate) const ARCH_ARM64_HTTP: u16 = 19;

/// A checked boot request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub kind: MessageType,
    pub client: Client,
    /// RFC 4578 client architecture (option 93).
    pub arch: u16,
    pub xid: u32,
    pub mac: crate::model::Mac,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    /// Option 97 (type 0 + 16-byte UUID), echoed back as PXE asks.
    pub guid: Option<Vec<u8>>,
    /// Option 50: the address a REQUEST asks the site's DHCP server for.
    pub requested: Option<Ipv4Addr>,
}

/// Why a packet gets no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Ignored {
    #[error("not a DHCP request: {0}")]
    Malformed(String),
    #[error("not a netboot client (no PXEClient/HTTPClient class with an architecture)")]
    NotNetboot,
    #[error("DHCP message {0:?}, not one this port answers")]
    Kind(MessageType),
    #[error("client architecture {0} has no boot program here")]
    Architecture(u16),
    #[error("malformed client GUID (option 97)")]
    Guid,
}

impl Ignored {
    /// The reason label in metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Ignored::Malformed(_) => "malformed",
            Ignored::NotNetboot => "not_netboot",
            Ignored::Kind(_) => "other_message",
            Ignored::Architecture(_) => "architecture",
            Ignored::Guid => "bad_guid",
        }
    }
}

/// What the client is told to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BootFile {
    /// A loader over TFTP from this server.
    Tftp(Loader),
    /// A URL the client fetches itself.
    Url(String),
}

impl BootFile {
    pub(crate) fn text(&self) -> String {
        match self {
            BootFile::Tftp(l) => l.file_name().to_string(),
            BootFile::Url(u) => u.clone(),
        }
    }
}

/// BOOTP's fixed header (RFC 951) and DHCP's magic cookie (RFC 2131).
const HEADER: usize = 236;
const COOKIE: [u8; 4] = [99, 130, 83, 99];

/// The fixed header's fields checked by hand, before any decoder sees the
/// packet: dhcproto slices `chaddr` by the client's own `hlen` and panics
/// on one over 16. A netboot client is an Ethernet BOOTREQUEST.
fn check_header(bytes: &[u8]) -> Result<(), Ignored> {
    let bad = |what: &str| Err(Ignored::Malformed(what.into()));
    if bytes.len() < HEADER + COOKIE.len() {
        return bad("shorter than a BOOTP header and the DHCP cookie");
    }
    if bytes[0] != 1 {
        return bad("not a BOOTREQUEST");
    }
    if bytes[1] != 1 || bytes[2] != 6 {
        return bad("not Ethernet (htype 1, hlen 6)");
    }
    if bytes[HEADER..HEADER + 4] != COOKIE {
        return bad("no DHCP magic cookie");
    }
    Ok(())
}

/// Parses and checks a packet from a client. A decoder panic (a bug, on a
/// packet nobody foresaw) costs that packet only.
pub(crate) fn parse(bytes: &[u8]) -> Result<Request, Ignored> {
    check_header(bytes)?;
    let decoded = std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(bytes)))
        .map_err(|_| Ignored::Malformed("the DHCP decoder failed on it".into()))?;
    let msg = decoded.map_err(|e| Ignored::Malformed(e.to_string()))?;
    if msg.opcode() != Opcode::BootRequest {
        return Err(Ignored::Malformed("not a BOOTREQUEST".into()));
    }
    let mac: [u8; 6] = match msg.chaddr().get(..6) {
        Some(m) if msg.htype() == v4::HType::Eth => m.try_into().map_err(|_| Ignored::Malformed("chaddr".into()))?,
        _ => return Err(Ignored::Malformed("not Ethernet".into())),
    };
    let opts = msg.opts();
    let kind = opts.msg_type().ok_or_else(|| Ignored::Malformed("no message type".into()))?;
    let class = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(c)) => c.as_slice(),
        _ => return Err(Ignored::NotNetboot),
    };
    let http = class.starts_with(b"HTTPClient");
    if !(http || class.starts_with(b"PXEClient")) {
        return Err(Ignored::NotNetboot);
    }
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => u16::from(*a),
        _ => return Err(Ignored::NotNetboot),
    };
    // RFC 3004 user classes are length-prefixed; iPXE sends a bare "iPXE"
    // (not RFC 3004), as pixiecore and dnsmasq match it. Accept both.
    let ipxe = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(u)) => u.as_slice() == b"iPXE" || u.as_slice() == b"\x04iPXE",
        _ => false,
    };
    let guid = match opts.get(OptionCode::ClientMachineIdentifier) {
        None => None,
        Some(DhcpOption::ClientMachineIdentifier(g)) if g.len() == 17 && g[0] == 0 => Some(g.clone()),
        // PXE ROMs in the wild omit it; a present one must be well formed.
        Some(_) => return Err(Ignored::Guid),
    };
    let client = match (ipxe, http, arch) {
        (true, _, _) => Client::Ipxe,
        (false, false, 0) => Client::BiosPxe,
        (false, false, 7 | 9) => Client::UefiPxe,
        (false, true, ARCH_X64_HTTP | ARCH_ARM64_HTTP) => Client::UefiHttp,
        (false, _, a) => return Err(Ignored::Architecture(a)),
    };
    let requested = match opts.get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) if !ip.is_unspecified() && !ip.is_broadcast() => Some(*ip),
        _ => None,
    };
    Ok(Request {
        kind,
        client,
        arch,
        xid: msg.xid(),
        mac: crate::model::Mac(mac),
        ciaddr: msg.ciaddr(),
        giaddr: msg.giaddr(),
        guid,
        requested,
    })
}

/// What to boot: `http` is imgd serve's HTTP address as the client reaches it.
///
/// `uki` is the server path of the unified kernel image the machine's group
/// gives UEFI HTTP boot firmware, if it gives one. None: nothing to boot
/// (an arm64 HTTP client whose group has no UKI; there is no arm64 iPXE).
pub(crate) fn boot_file(req: &Request, http: SocketAddrV4, uki: Option<&str>) -> Option<BootFile> {
    Some(match (req.client, uki) {
        (Client::Ipxe, _) => BootFile::Url(format!("http://{http}/boot.ipxe")),
        (Client::BiosPxe, _) => BootFile::Tftp(Loader::BiosUndi),
        (Client::UefiPxe, _) => BootFile::Tftp(Loader::UefiSnp),
        (Client::UefiHttp, Some(path)) => BootFile::Url(format!("http://{http}{path}")),
        (Client::UefiHttp, None) if req.arch == ARCH_X64_HTTP => {
            BootFile::Url(format!("http://{http}/loaders/{}", Loader::UefiSnp.file_name()))
        }
        (Client::UefiHttp, None) => return None,
    })
}

/// The answer to `req` from `server` (this host's address on the client's
/// segment): an OFFER to a DISCOVER on port 67, an ACK to a REQUEST on the
/// PXE port 4011. No address is offered (yiaddr stays 0.0.0.0).
pub(crate) fn reply(req: &Request, server: Ipv4Addr, boot: &BootFile) -> Vec<u8> {
    let kind = if req.kind == MessageType::Discover { MessageType::Offer } else { MessageType::Ack };
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_xid(req.xid)
        .set_chaddr(&req.mac.0)
        .set_ciaddr(req.ciaddr)
        .set_giaddr(req.giaddr)
        .set_siaddr(server)
        .set_flags(v4::Flags::default().set_broadcast())
        .set_sname_str(server.to_string())
        .set_fname_str(boot.text());
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(server));
    let class: &[u8] = if req.client == Client::UefiHttp { b"HTTPClient" } else { b"PXEClient" };
    opts.insert(DhcpOption::ClassIdentifier(class.to_vec()));
    if let Some(g) = &req.guid {
        opts.insert(DhcpOption::ClientMachineIdentifier(g.clone()));
    }
    if req.client == Client::BiosPxe {
        // PXE discovery control = 8: skip boot server discovery, boot the
        // file named here. UEFI firmware is left without it: several ignore
        // proxy offers that carry it and instead ask port 4011 (pixiecore's
        // finding), which imgd answers.
        opts.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    }
    let mut out = Vec::with_capacity(400);
    // Encoding a message built from checked values cannot fail; an empty
    // packet would be dropped by the caller.
    if m.encode(&mut Encoder::new(&mut out)).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::Architecture;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

    fn packet(kind: MessageType, class: Option<&[u8]>, arch: Option<u16>, user: Option<&[u8]>) -> Vec<u8> {
        let mut m = Message::default();
        m.set_xid(0xabcd1234).set_chaddr(&MAC);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        if let Some(c) = class {
            o.insert(DhcpOption::ClassIdentifier(c.to_vec()));
        }
        if let Some(a) = arch {
            o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(a)));
        }
        if let Some(u) = user {
            o.insert(DhcpOption::UserClass(u.to_vec()));
        }
        let mut g = vec![0u8];
        g.extend(1..=16u8);
        o.insert(DhcpOption::ClientMachineIdentifier(g));
        let mut out = Vec::new();
        m.encode(&mut Encoder::new(&mut out)).unwrap();
        out
    }

    fn http() -> SocketAddrV4 {
        SocketAddrV4::new(SERVER, 8080)
    }

    #[test]
    fn each_firmware_gets_the_boot_file_it_can_run() {
        let pxe = b"PXEClient:Arch:00000:UNDI:002001".as_slice();
        type Case<'a> = (&'a [u8], u16, Option<&'a [u8]>, BootFile);
        let cases: [Case; 5] = [
            (pxe, 0, None, BootFile::Tftp(Loader::BiosUndi)),
            (b"PXEClient:Arch:00007:UNDI:003000", 7, None, BootFile::Tftp(Loader::UefiSnp)),
            (b"PXEClient:Arch:00009:UNDI:003000", 9, None, BootFile::Tftp(Loader::UefiSnp)),
            (
                b"HTTPClient:Arch:00016:UNDI:003001",
                16,
                None,
                BootFile::Url("http://192.0.2.1:8080/loaders/snponly.efi".into()),
            ),
            // iPXE, from any firmware, goes straight to the script: no loop.
            (
                b"PXEClient:Arch:00007:UNDI:003010",
                7,
                Some(b"iPXE"),
                BootFile::Url("http://192.0.2.1:8080/boot.ipxe".into()),
            ),
        ];
        for (class, arch, user, want) in cases {
            let req = parse(&packet(MessageType::Discover, Some(class), Some(arch), user)).unwrap();
            assert_eq!(boot_file(&req, http(), None), Some(want), "{}", String::from_utf8_lossy(class));
        }
    }

    #[test]
    fn http_boot_gets_the_groups_uki_and_arm64_gets_nothing_else() {
        let uki = "/artifacts/0123456789abcdef0123456789abcdef-hello/hello.efi";
        let url = format!("http://192.0.2.1:8080{uki}");
        let x64 = parse(&packet(MessageType::Discover, Some(b"HTTPClient:Arch:00016"), Some(16), None)).unwrap();
        assert_eq!(boot_file(&x64, http(), Some(uki)), Some(BootFile::Url(url.clone())));
        let arm = parse(&packet(MessageType::Discover, Some(b"HTTPClient:Arch:00019"), Some(19), None)).unwrap();
        assert_eq!((arm.client, arm.arch), (Client::UefiHttp, 19));
        assert_eq!(boot_file(&arm, http(), Some(uki)), Some(BootFile::Url(url)));
        // No arm64 iPXE to fall back to: no answer at all.
        assert_eq!(boot_file(&arm, http(), None), None);
        // PXE clients get their loader whatever the group says.
        let pxe = parse(&packet(MessageType::Discover, Some(b"PXEClient:Arch:00007"), Some(7), None)).unwrap();
        assert_eq!(boot_file(&pxe, http(), Some(uki)), Some(BootFile::Tftp(Loader::UefiSnp)));
    }

    #[test]
    fn ordinary_dhcp_and_unknown_architectures_get_no_answer() {
        let plain = packet(MessageType::Discover, None, None, None);
        assert_eq!(parse(&plain), Err(Ignored::NotNetboot));
        let no_arch = packet(MessageType::Discover, Some(b"PXEClient"), None, None);
        assert_eq!(parse(&no_arch), Err(Ignored::NotNetboot));
        let other = packet(MessageType::Discover, Some(b"android-dhcp-13"), Some(0), None);
        assert_eq!(parse(&other), Err(Ignored::NotNetboot));
        // arm64 UEFI: Debian has no iPXE for it.
        let arm = packet(MessageType::Discover, Some(b"PXEClient:Arch:00011"), Some(11), None);
        assert_eq!(parse(&arm), Err(Ignored::Architecture(11)));
        assert!(matches!(parse(b"\x01\x01\x06\x00garbage"), Err(Ignored::Malformed(_))));
        assert!(matches!(parse(&[]), Err(Ignored::Malformed(_))));
    }

    #[test]
    fn out_of_range_header_fields_are_ignored_and_a_good_packet_still_parses() {
        let good = packet(MessageType::Discover, Some(b"PXEClient:Arch:00007"), Some(7), None);
        assert!(parse(&good).is_ok());
        // Every value of each of the first four header bytes (op, htype, hlen, hops).
        for field in 0..4 {
            for v in 0..=255u8 {
                let mut p = good.clone();
                p[field] = v;
                let r = parse(&p);
                let fine = match field {
                    0 => v == 1,
                    1 => v == 1,
                    2 => v == 6,
                    _ => true,
                };
                assert_eq!(r.is_ok(), fine, "byte {field} = {v}: {r:?}");
            }
        }
        // Every length, cut short.
        for n in 0..good.len() {
            let _ = parse(&good[..n]);
        }
        assert!(parse(&good).is_ok());
    }

    proptest::proptest! {
        /// Any datagram: parse answers, never panics (a panic would take
        /// the proxyDHCP task with it).
        #[test]
        fn any_datagram_is_answered_or_ignored(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..700)) {
            let _ = parse(&bytes);
        }

        /// A real DISCOVER with any bytes anywhere changed, and any length.
        #[test]
        fn any_mutation_of_a_discover_is_answered_or_ignored(
            edits in proptest::collection::vec((0usize..400, proptest::num::u8::ANY), 1..12),
            cut in 0usize..400,
        ) {
            let mut p = packet(MessageType::Discover, Some(b"PXEClient:Arch:00007"), Some(7), None);
            for (at, v) in edits {
                if let Some(b) = p.get_mut(at) {
                    *b = v;
                }
            }
            p.truncate(cut.max(1));
            let _ = parse(&p);
        }
    }

    #[test]
    fn a_malformed_guid_is_not_answered() {
        let mut m = Message::default();
        m.set_chaddr(&MAC).opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
        m.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        m.opts_mut().insert(DhcpOption::ClientSystemArchitecture(Architecture::from(7)));
        m.opts_mut().insert(DhcpOption::ClientMachineIdentifier(vec![1; 17]));
        let mut b = Vec::new();
        m.encode(&mut Encoder::new(&mut b)).unwrap();
        assert_eq!(parse(&b), Err(Ignored::Guid));
    }

    #[test]
    fn the_reply_offers_no_address_and_names_the_boot_file() {
        let req = parse(&packet(MessageType::Discover, Some(b"PXEClient:Arch:00000"), Some(0), None)).unwrap();
        let bytes = reply(&req, SERVER, &boot_file(&req, http(), None).unwrap());
        let m = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(m.opcode(), Opcode::BootReply);
        assert_eq!(m.xid(), 0xabcd1234);
        assert_eq!(&m.chaddr()[..6], &MAC);
        assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED, "a proxy never offers an address");
        assert_eq!(m.siaddr(), SERVER);
        // The file field on the wire: the name, NUL-padded (offset 108, 128 bytes).
        assert_eq!(&bytes[108..108 + 14], b"undionly.kpxe\0");
        assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(m.opts().get(OptionCode::ServerIdentifier), Some(&DhcpOption::ServerIdentifier(SERVER)));
        let class = m.opts().get(OptionCode::ClassIdentifier);
        assert_eq!(class, Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec())));
        let vendor = m.opts().get(OptionCode::VendorExtensions);
        assert_eq!(vendor, Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255])));
        assert!(m.opts().get(OptionCode::ClientMachineIdentifier).is_some(), "the GUID is echoed");

        // Port 4011: a REQUEST gets an ACK; HTTP boot's answer says HTTPClient.
        let req = parse(&packet(MessageType::Request, Some(b"HTTPClient:Arch:00016"), Some(16), None)).unwrap();
        let m =
            Message::decode(&mut Decoder::new(&reply(&req, SERVER, &boot_file(&req, http(), None).unwrap()))).unwrap();
        assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(
            m.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
        );
        assert!(m.opts().get(OptionCode::VendorExtensions).is_none());
    }
}
