//! The composition's private networks: one learning Ethernet switch per
//! network, in imgd, reached by each VM's NIC through a pair of unix
//! datagram sockets (qemu `-netdev dgram`). No root, no bridge, no outside
//! DHCP: frames go nowhere but to the other VMs of the network. Because
//! imgd forwards every frame, a partition is exact: the links between two
//! chosen machines are cut and every other link still carries.
//!
//! Written by hand (about 150 lines) rather than on a crate: the few
//! userspace switches there are (vde, slirp helpers) are C programs to run
//! beside imgd, and a partition needs the forwarding decision in our hands.

use super::error::ComposeError;
use crate::fsutil::IoAt;
use std::collections::{BTreeSet, HashMap};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest frame a virtio NIC sends without offloads (and then some).
const MAX_FRAME: usize = 65_536;

/// One VM's link to one network.
struct Port {
    /// Index of the machine in the composition.
    node: usize,
    /// imgd's end: qemu sends here.
    sock: UnixDatagram,
    /// qemu's end: imgd sends there.
    peer: PathBuf,
}

struct Network {
    ports: Vec<Port>,
    /// Source MAC -> port index, learned from frames.
    learned: Mutex<HashMap<[u8; 6], usize>>,
    /// Every frame a machine sent, as the switch received it (before any
    /// cut): a capture for Wireshark or tcpdump.
    pcap: Option<Mutex<Pcap>>,
}

/// A classic pcap file (microsecond timestamps, Ethernet link type).
struct Pcap(std::io::BufWriter<std::fs::File>);

impl Pcap {
    fn create(path: &Path) -> std::io::Result<Pcap> {
        use std::io::Write;
        let f = std::fs::File::options().write(true).create_new(true).open(path)?;
        let mut w = std::io::BufWriter::new(f);
        // magic, version 2.4, GMT offset, accuracy, snap length, LINKTYPE_ETHERNET.
        for field in
            [0xa1b2_c3d4u32.to_le_bytes(), [2, 0, 4, 0], [0; 4], [0; 4], 65_535u32.to_le_bytes(), 1u32.to_le_bytes()]
        {
            w.write_all(&field)?;
        }
        Ok(Pcap(w))
    }

    fn record(&mut self, frame: &[u8]) {
        use std::io::Write;
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let len = (frame.len() as u32).to_le_bytes();
        let head = [(t.as_secs() as u32).to_le_bytes(), t.subsec_micros().to_le_bytes(), len, len].concat();
        // A capture that cannot be written is not worth stopping the network for.
        let _ = self.0.write_all(&head).and_then(|()| self.0.write_all(frame));
    }
}

impl Drop for Pcap {
    fn drop(&mut self) {
        use std::io::Write;
        let _ = self.0.flush();
    }
}

/// Pairs of machines (lower index first) whose links are cut.
type Cuts = RwLock<BTreeSet<(usize, usize)>>;

pub(crate) struct Switch {
    cuts: Arc<Cuts>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Frames forwarded and frames dropped by a cut, over all networks
    /// (logged when the switch stops).
    forwarded: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

/// (network, machine) -> its link.
pub(crate) type Links = HashMap<(usize, usize), Link>;

/// The socket paths of one VM's NIC on one network.
pub(crate) struct Link {
    /// imgd's end (qemu's `remote.path`).
    pub switch: PathBuf,
    /// qemu's end (its `local.path`).
    pub qemu: PathBuf,
}

impl Switch {
    /// Binds a port for each (network, machine) in `members` (machine
    /// indexes per network) under `dir`, and starts forwarding; with
    /// `pcap`, network N's frames are captured to `pcap[N]`.
    pub(crate) fn start(
        dir: &Path,
        members: &[Vec<usize>],
        pcap: Option<&[PathBuf]>,
    ) -> Result<(Switch, Links), ComposeError> {
        let cuts: Arc<Cuts> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let mut links = HashMap::new();
        let mut threads = Vec::new();
        for (net, nodes) in members.iter().enumerate() {
            let mut ports = Vec::new();
            for &node in nodes {
                // Short names: a unix socket path has at most 107 bytes.
                let link =
                    Link { switch: dir.join(format!("s{net}-{node}")), qemu: dir.join(format!("q{net}-{node}")) };
                let sock = UnixDatagram::bind(&link.switch).at("binding", &link.switch)?;
                sock.set_read_timeout(Some(Duration::from_millis(200))).at("setting a timeout on", &link.switch)?;
                ports.push(Port { node, sock, peer: link.qemu.clone() });
                links.insert((net, node), link);
            }
            let pcap = match pcap.and_then(|p| p.get(net)) {
                Some(path) => Some(Mutex::new(Pcap::create(path).at("creating", path)?)),
                None => None,
            };
            let network = Arc::new(Network { ports, learned: Mutex::default(), pcap });
            for i in 0..network.ports.len() {
                let (network, cuts, stop) = (network.clone(), cuts.clone(), stop.clone());
                let (fw, dr) = (forwarded.clone(), dropped.clone());
                threads.push(std::thread::spawn(move || forward(&network, i, &cuts, &stop, &fw, &dr)));
            }
        }
        Ok((Switch { cuts, stop, threads, forwarded, dropped }, links))
    }

    /// Cuts every link between machines of different groups.
    pub(crate) fn partition(&self, groups: &[Vec<usize>]) {
        let mut cuts = self.cuts.write().unwrap_or_else(|e| e.into_inner());
        for (i, a) in groups.iter().enumerate() {
            for b in &groups[i + 1..] {
                for &x in a {
                    for &y in b {
                        cuts.insert((x.min(y), x.max(y)));
                    }
                }
            }
        }
    }

    /// Every link carries again.
    pub(crate) fn heal(&self) {
        self.cuts.write().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        tracing::info!(
            "switch: {} frames forwarded, {} dropped by cut links",
            self.forwarded.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed)
        );
    }
}

/// Port `from`'s loop: each frame goes to the port that learned its
/// destination MAC, else to every other port (broadcast, multicast,
/// unknown), unless the link between the two machines is cut.
fn forward(net: &Network, from: usize, cuts: &Cuts, stop: &AtomicBool, forwarded: &AtomicU64, dropped: &AtomicU64) {
    let mut buf = vec![0u8; MAX_FRAME];
    let me = &net.ports[from];
    while !stop.load(Ordering::Relaxed) {
        let n = match me.sock.recv(&mut buf) {
            Ok(n) if n >= 14 => n,
            // Runts, timeouts (to look at `stop`), a VM gone: nothing to do.
            _ => continue,
        };
        let frame = &buf[..n];
        if let Some(p) = &net.pcap {
            p.lock().unwrap_or_else(|e| e.into_inner()).record(frame);
        }
        let (dst, src) = (mac(&frame[0..6]), mac(&frame[6..12]));
        let known = {
            let mut learned = net.learned.lock().unwrap_or_else(|e| e.into_inner());
            if src[0] & 1 == 0 {
                learned.insert(src, from);
            }
            if dst[0] & 1 == 0 {
                learned.get(&dst).copied()
            } else {
                None
            }
        };
        let targets: Vec<usize> = match known {
            Some(to) if to != from => vec![to],
            Some(_) => continue,
            None => (0..net.ports.len()).filter(|&i| i != from).collect(),
        };
        let cut = cuts.read().unwrap_or_else(|e| e.into_inner());
        for to in targets {
            let other = &net.ports[to];
            if cut.contains(&(me.node.min(other.node), me.node.max(other.node))) {
                dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // From the receiving machine's own port: qemu hears from the
            // address it sends to. A VM not up yet (or stopped) drops it.
            if other.sock.send_to(frame, &other.peer).is_ok() {
                forwarded.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn mac(b: &[u8]) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.copy_from_slice(b);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: [u8; 6], src: [u8; 6], body: &[u8]) -> Vec<u8> {
        [&dst[..], &src[..], &[0x08, 0x00], body].concat()
    }

    fn recv(s: &UnixDatagram) -> Option<Vec<u8>> {
        let mut b = vec![0u8; 2048];
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        s.recv(&mut b).ok().map(|n| b[..n].to_vec())
    }

    /// Three machines on one network, as qemu would attach: broadcast
    /// reaches the others, unicast only its learned port, a cut only the
    /// named pair, and heal restores it.
    #[test]
    fn frames_follow_macs_and_a_partition_cuts_only_its_links() {
        let d = tempfile::tempdir().unwrap();
        let cap = d.path().join("lan.pcap");
        let (sw, links) = Switch::start(d.path(), &[vec![0, 1, 2]], Some(std::slice::from_ref(&cap))).unwrap();
        let vm: Vec<UnixDatagram> = (0..3)
            .map(|n| {
                let l = &links[&(0, n)];
                let s = UnixDatagram::bind(&l.qemu).unwrap();
                s.connect(&l.switch).unwrap();
                s
            })
            .collect();
        let m = |i: u8| [0x52, 0x54, 0, 0, 0, i];
        vm[0].send(&frame([0xff; 6], m(0), b"hello all")).unwrap();
        assert!(recv(&vm[1]).is_some() && recv(&vm[2]).is_some());
        vm[1].send(&frame(m(0), m(1), b"to 0")).unwrap();
        assert_eq!(recv(&vm[0]).unwrap(), frame(m(0), m(1), b"to 0"));
        assert!(recv(&vm[2]).is_none(), "a learned unicast goes to one port");
        sw.partition(&[vec![0], vec![1]]);
        vm[1].send(&frame(m(0), m(1), b"cut")).unwrap();
        vm[2].send(&frame(m(0), m(2), b"not cut")).unwrap();
        assert_eq!(recv(&vm[0]).unwrap(), frame(m(0), m(2), b"not cut"));
        assert!(recv(&vm[0]).is_none(), "node 1 -> node 0 is cut");
        sw.heal();
        vm[1].send(&frame(m(0), m(1), b"healed")).unwrap();
        assert_eq!(recv(&vm[0]).unwrap(), frame(m(0), m(1), b"healed"));
        assert_eq!(sw.dropped.load(Ordering::Relaxed), 1);
        drop(sw);
        // The capture: a pcap header, then every frame sent (the cut one too).
        let pcap = std::fs::read(&cap).unwrap();
        assert_eq!(&pcap[..4], &0xa1b2_c3d4u32.to_le_bytes());
        let (mut at, mut frames) = (24, Vec::new());
        while at + 16 <= pcap.len() {
            let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
            frames.push(pcap[at + 16..at + 16 + len].to_vec());
            at += 16 + len;
        }
        assert_eq!(at, pcap.len());
        assert_eq!(frames.len(), 5);
        // Ports record from threads of their own: frames sent at once may
        // land in either order.
        assert!(frames.contains(&frame(m(0), m(1), b"cut")) && frames.contains(&frame(m(0), m(2), b"not cut")));
    }
}
