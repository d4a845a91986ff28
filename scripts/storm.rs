//! The boot-storm load of `scripts/bench.sh storm`: N simulated machines,
//! each with its own MAC and its own source address in 127.0.0.0/8, arriving
//! evenly within a window, each doing what iPXE does on one kept-alive
//! connection: GET /boot.ipxe, GET /ipxe?mac=..&uuid=..&.. (the identity the
//! chain script sends), then GET the kernel and initrd the rendered script
//! names. Prints one line of figures for the bench script to read.
//!
//! Loopback only: the base URL must be http://127.x.y.z:PORT. HTTP/1.1 is
//! written by hand (requests with Content-Length answers only), so the load
//! generator costs little next to the server it measures.
//!
//! `storm dhcp` does the same for proxyDHCP: each machine broadcasts a UEFI
//! PXE DISCOVER (its own MAC and xid) and, once offered a boot file, asks
//! the offering server's port 4011 as the firmware does. It runs inside a
//! network namespace the bench script made (there is no broadcast on
//! loopback), and a lost or unanswered packet counts as an error (no retries).
//!
//! usage: storm BASE_URL MACHINES WINDOW_SECS
//!        storm dhcp MACHINES WINDOW_SECS

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;

#[derive(Default)]
struct Tally {
    /// Milliseconds per script request (/boot.ipxe and /ipxe).
    scripts: Vec<f64>,
    /// Milliseconds per artifact request.
    artifacts: Vec<f64>,
    renders: u64,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
}

type Conn = BufReader<TcpStream>;

/// One GET on a kept-alive connection; the status and the body.
async fn get(c: &mut Conn, path: &str) -> Result<(u16, Vec<u8>), String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: imgd\r\nUser-Agent: iPXE/1.21.1\r\n\r\n");
    c.get_mut().write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    c.read_line(&mut line).await.map_err(|e| format!("read: {e}"))?;
    let status: u16 =
        line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("status line {line:?}"))?;
    let mut len = None;
    loop {
        line.clear();
        c.read_line(&mut line).await.map_err(|e| format!("read: {e}"))?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse::<usize>().ok();
            }
        }
    }
    let len = len.ok_or("no Content-Length")?;
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).await.map_err(|e| format!("body: {e}"))?;
    Ok((status, body))
}

/// The paths of the `kernel` and `initrd` URLs in a rendered script.
fn artifact_paths(script: &str) -> Vec<String> {
    script
        .lines()
        .filter(|l| l.starts_with("kernel ") || l.starts_with("initrd "))
        .filter_map(|l| l.split_whitespace().skip(1).find(|w| w.starts_with('/') || w.starts_with("http://")))
        // Relative to the script (iPXE resolves them so), or absolute: the path.
        .filter_map(|u| match u.strip_prefix("http://") {
            Some(r) => r.find('/').map(|i| r[i..].to_string()),
            None => Some(u.to_string()),
        })
        .collect()
}

async fn machine(server: SocketAddr, i: u32, tally: Arc<Mutex<Tally>>) -> Result<(), String> {
    // 127.1.0.1 upward: a source address per machine, as a fleet would come.
    let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 1)) + i);
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::from((src, 0))).map_err(|e| format!("bind {src}: {e}"))?;
    let stream = tokio::time::timeout(Duration::from_secs(30), sock.connect(server))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let mut c = BufReader::with_capacity(64 << 10, stream);
    let mac = format!("52-54-00-{:02x}-{:02x}-{:02x}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
    let uuid = format!("{i:08x}-0000-4000-8000-{i:012x}");
    let timed = |kind: usize, ms: f64, bytes: usize| {
        let t = tally.clone();
        async move {
            let mut t = t.lock().await;
            if kind == 0 {
                t.scripts.push(ms)
            } else {
                t.artifacts.push(ms)
            }
            t.bytes += bytes as u64;
        }
    };
    let t = Instant::now();
    let (st, _) = get(&mut c, "/boot.ipxe").await?;
    if st != 200 {
        return Err(format!("/boot.ipxe: {st}"));
    }
    timed(0, t.elapsed().as_secs_f64() * 1e3, 0).await;
    let q = format!("/ipxe?mac={mac}&uuid={uuid}&hostname=&serial=SN{i}&arch=x86_64&platform=efi");
    let t = Instant::now();
    let (st, script) = get(&mut c, &q).await?;
    if st != 200 {
        return Err(format!("/ipxe: {st}"));
    }
    timed(0, t.elapsed().as_secs_f64() * 1e3, 0).await;
    tally.lock().await.renders += 1;
    let paths = artifact_paths(&String::from_utf8_lossy(&script));
    if paths.len() != 2 {
        return Err(format!("script names {} artifacts, not kernel + initrd", paths.len()));
    }
    for p in paths {
        let t = Instant::now();
        let (st, body) = get(&mut c, &p).await?;
        if st != 200 {
            return Err(format!("{p}: {st}"));
        }
        timed(1, t.elapsed().as_secs_f64() * 1e3, body.len()).await;
    }
    Ok(())
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// One machine's DHCP exchange, by xid.
struct Pending {
    sent: Instant,
    offered: Option<f64>,
    acked: Option<f64>,
}

fn discover(i: u32, kind: dhcproto::v4::MessageType, ciaddr: Ipv4Addr) -> Vec<u8> {
    use dhcproto::v4::{Architecture, DhcpOption, Message};
    use dhcproto::{Encodable, Encoder};
    let mac = [0x52, 0x54, 0x01, (i >> 16) as u8, (i >> 8) as u8, i as u8];
    let mut m = Message::default();
    m.set_xid(0x1000_0000 + i).set_chaddr(&mac).set_ciaddr(ciaddr);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003000".to_vec()));
    o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(7)));
    o.insert(DhcpOption::ClientNetworkInterface(1, 3, 0));
    let mut guid = vec![0u8];
    guid.extend_from_slice(&[0x11; 12]);
    guid.extend_from_slice(&i.to_be_bytes());
    o.insert(DhcpOption::ClientMachineIdentifier(guid));
    let mut out = Vec::new();
    let _ = m.encode(&mut Encoder::new(&mut out));
    out
}

async fn dhcp_storm(n: u32, window: f64) {
    use dhcproto::v4::{Message, MessageType};
    use dhcproto::{Decodable, Decoder};
    // Port 68 on the namespace's eth0: a limited broadcast needs the device
    // named (the namespace has no default route).
    let bound = || -> std::io::Result<tokio::net::UdpSocket> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_broadcast(true)?;
        s.bind_device(Some(b"eth0"))?;
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())?;
        tokio::net::UdpSocket::from_std(s.into())
    };
    let sock = Arc::new(bound().unwrap_or_else(|e| {
        eprintln!("storm dhcp: port 68 on eth0: {e}");
        std::process::exit(2)
    }));
    let pending: Arc<Mutex<std::collections::HashMap<u32, Pending>>> = Arc::default();
    let (p2, s2) = (pending.clone(), sock.clone());
    let receiver = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((len, _)) = s2.recv_from(&mut buf).await else { return };
            let Ok(m) = Message::decode(&mut Decoder::new(&buf[..len])) else { continue };
            let mut p = p2.lock().await;
            let Some(e) = p.get_mut(&m.xid()) else { continue };
            let ms = e.sent.elapsed().as_secs_f64() * 1e3;
            match m.opts().msg_type() {
                Some(MessageType::Offer) if e.offered.is_none() => {
                    e.offered = Some(ms);
                    e.sent = Instant::now();
                    // As the firmware does: ask the offering server's PXE port.
                    let i = m.xid() - 0x1000_0000;
                    let req = discover(i, MessageType::Request, Ipv4Addr::new(192, 0, 2, 50));
                    let to = SocketAddr::from((m.siaddr(), 4011));
                    let _ = s2.send_to(&req, to).await;
                }
                Some(MessageType::Ack) if e.acked.is_none() => e.acked = Some(ms),
                _ => {}
            }
        }
    });
    let start = Instant::now();
    for i in 0..n {
        let at = start + Duration::from_secs_f64(window * f64::from(i) / f64::from(n));
        tokio::time::sleep_until(at.into()).await;
        pending.lock().await.insert(0x1000_0000 + i, Pending { sent: Instant::now(), offered: None, acked: None });
        let pkt = discover(i, MessageType::Discover, Ipv4Addr::UNSPECIFIED);
        if let Err(e) = sock.send_to(&pkt, "255.255.255.255:67").await {
            eprintln!("storm dhcp: send: {e}");
        }
    }
    // Answers still on their way get 5 s, as a PXE client's first timeout.
    tokio::time::sleep(Duration::from_secs(5)).await;
    receiver.abort();
    let secs = start.elapsed().as_secs_f64() - 5.0;
    let p = pending.lock().await;
    let mut offers: Vec<f64> = p.values().filter_map(|e| e.offered).collect();
    let mut acks: Vec<f64> = p.values().filter_map(|e| e.acked).collect();
    let errors = p.values().filter(|e| e.acked.is_none()).count();
    // machines offers acks secs offer_p50 offer_p99 ack_p50 ack_p99 errors
    println!(
        "{n} {} {} {secs:.1} {:.3} {:.3} {:.3} {:.3} {errors}",
        offers.len(),
        acks.len(),
        pct(&mut offers, 0.5),
        pct(&mut offers, 0.99),
        pct(&mut acks, 0.5),
        pct(&mut acks, 0.99)
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("dhcp") {
        let (Some(n), Some(w)) = (args.get(2).and_then(|a| a.parse().ok()), args.get(3).and_then(|a| a.parse().ok()))
        else {
            eprintln!("usage: storm dhcp MACHINES WINDOW_SECS");
            std::process::exit(2)
        };
        return dhcp_storm(n, w).await;
    }
    let usage = "usage: storm http://127.x.y.z:PORT MACHINES WINDOW_SECS";
    let (Some(base), Some(n), Some(window)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let bad = |what: &str| -> ! {
        eprintln!("storm: bad {what}\n{usage}");
        std::process::exit(2)
    };
    let server: SocketAddr =
        base.trim_start_matches("http://").trim_end_matches('/').parse().unwrap_or_else(|_| bad("BASE_URL"));
    if !server.ip().is_loopback() {
        bad("BASE_URL: storm talks to loopback only");
    }
    let n: u32 = n.parse().unwrap_or_else(|_| bad("MACHINES"));
    let window: f64 = window.parse().unwrap_or_else(|_| bad("WINDOW_SECS"));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let at = start + Duration::from_secs_f64(window * f64::from(i) / f64::from(n));
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let r = tokio::time::timeout(Duration::from_secs(120), machine(server, i, tally.clone())).await;
            let err = match r {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e,
                Err(_) => "machine took over 120 s".to_string(),
            };
            let mut t = tally.lock().await;
            t.errors += 1;
            t.first_error.get_or_insert(err);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let mut t = tally.lock().await;
    let (s50, s99) = (pct(&mut t.scripts, 0.50), pct(&mut t.scripts, 0.99));
    let (a50, a99) = (pct(&mut t.artifacts, 0.50), pct(&mut t.artifacts, 0.99));
    if let Some(e) = &t.first_error {
        eprintln!("storm: first error: {e}");
    }
    // machines renders secs renders/s script_p50 script_p99 artifact_p50 artifact_p99 MB errors
    println!(
        "{n} {} {secs:.1} {:.1} {s50:.2} {s99:.2} {a50:.2} {a99:.2} {:.0} {}",
        t.renders,
        t.renders as f64 / secs,
        t.bytes as f64 / 1e6,
        t.errors
    );
}
