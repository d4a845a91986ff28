//! Counters for `/metrics` (Prometheus text format).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use super::shards::Sharded;

type Boots = BTreeMap<String, BTreeMap<String, u64>>;

#[derive(Default)]
pub struct Metrics {
    /// Written by every request: one copy per thread (see shards.rs).
    requests: Sharded<BTreeMap<(&'static str, u16), u64>>,
    /// Profile -> group -> boots (nested: a boot counts without copying its
    /// names), one copy per thread as `requests`.
    boots: Sharded<Boots>,
    /// proxyDHCP answers by (client kind, reply), and packets left alone by reason.
    dhcp: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// TFTP requests by (file or "-", outcome).
    tftp: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    pub bytes_served: AtomicU64,
    pub active_transfers: AtomicI64,
    pub active_connections: AtomicI64,
    pub rejected_connections: AtomicU64,
    /// Files or chunks refused because their bytes do not match the
    /// manifest's BLAKE3 (a bad disk, a careless hand).
    pub corrupt_reads: AtomicU64,
    /// Background parts (proxyDHCP, TFTP): why each is down, if it is, and
    /// how often it was started again.
    parts: Mutex<BTreeMap<&'static str, Part>>,
}

#[derive(Default)]
struct Part {
    down: Option<String>,
    restarts: u64,
}

impl Metrics {
    pub(crate) fn request(&self, endpoint: &'static str, status: u16) {
        *self.requests.mine().entry((endpoint, status)).or_default() += 1;
    }

    pub(crate) fn boot(&self, profile: &str, group: &str) {
        let mut boots = self.boots.mine();
        let groups = match boots.get_mut(profile) {
            Some(g) => g,
            None => boots.entry(profile.to_string()).or_default(),
        };
        match groups.get_mut(group) {
            Some(n) => *n += 1,
            None => {
                groups.insert(group.to_string(), 1);
            }
        }
    }

    /// A proxyDHCP packet: `client` is its kind or `ignored`, `what` the
    /// reply (offer, ack) or why it got none.
    pub(crate) fn dhcp(&self, client: &'static str, what: &'static str) {
        *self.dhcp.lock().unwrap_or_else(|p| p.into_inner()).entry((client, what)).or_default() += 1;
    }

    /// A TFTP read request: the loader sent, or refused.
    pub fn tftp(&self, file: &'static str, outcome: &'static str) {
        *self.tftp.lock().unwrap_or_else(|p| p.into_inner()).entry((file, outcome)).or_default() += 1;
    }

    /// `part` runs (again).
    pub(crate) fn part_up(&self, part: &'static str) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let p = parts.entry(part).or_default();
        if p.down.take().is_some() {
            p.restarts += 1;
        }
    }

    /// `part` stopped, for `why`.
    pub(crate) fn part_down(&self, part: &'static str, why: &str) {
        self.parts.lock().unwrap_or_else(|p| p.into_inner()).entry(part).or_default().down = Some(why.to_string());
    }

    /// The parts that are down now, and why.
    pub(crate) fn parts_down(&self) -> Vec<(&'static str, String)> {
        self.parts().into_iter().filter_map(|(n, down, _)| Some((n, down?))).collect()
    }

    /// Every background part: name, why it is down (None: up), restarts.
    pub(crate) fn parts(&self) -> Vec<(&'static str, Option<String>, u64)> {
        let parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        parts.iter().map(|(n, p)| (*n, p.down.clone(), p.restarts)).collect()
    }

    /// Requests answered so far at `endpoint` with `status`.
    pub fn requests(&self, endpoint: &str, status: u16) -> u64 {
        let mut n = 0;
        self.requests.each(|r| n += r.get(&(endpoint, status)).copied().unwrap_or(0));
        n
    }

    /// The shards' counts added up, in order.
    fn all_requests(&self) -> BTreeMap<(&'static str, u16), u64> {
        let mut all = BTreeMap::new();
        self.requests.each(|r| r.iter().for_each(|(k, n)| *all.entry(*k).or_default() += n));
        all
    }

    fn all_boots(&self) -> Boots {
        let mut all = Boots::new();
        self.boots.each(|b| {
            for (p, groups) in b {
                let to = all.entry(p.clone()).or_default();
                groups.iter().for_each(|(g, n)| *to.entry(g.clone()).or_default() += n);
            }
        });
        all
    }

    /// The background parts' health and restarts.
    fn render_parts(&self, s: &mut String) {
        let parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        s.push_str("# HELP imgd_part_up Whether a part of the server (http, proxydhcp, tftp, reload) runs.\n");
        s.push_str("# TYPE imgd_part_up gauge\n");
        for (n, p) in parts.iter() {
            let _ = writeln!(s, "imgd_part_up{{part=\"{n}\"}} {}", u8::from(p.down.is_none()));
        }
        s.push_str("# HELP imgd_part_restarts_total Times a background part was started again after it stopped.\n");
        s.push_str("# TYPE imgd_part_restarts_total counter\n");
        for (n, p) in parts.iter() {
            let _ = writeln!(s, "imgd_part_restarts_total{{part=\"{n}\"}} {}", p.restarts);
        }
    }

    /// Everything counted, in the Prometheus text format, with `groups` (the
    /// boot room's own gauges, already rendered) after the boots.
    pub(crate) fn render(&self, groups: &str, chunks: &super::chunks::ChunkCache) -> String {
        let mut s = String::new();
        s.push_str("# HELP imgd_http_requests_total HTTP requests by endpoint and status.\n");
        s.push_str("# TYPE imgd_http_requests_total counter\n");
        for ((e, st), n) in self.all_requests() {
            let _ = writeln!(s, "imgd_http_requests_total{{endpoint=\"{e}\",status=\"{st}\"}} {n}");
        }
        s.push_str("# HELP imgd_boots_total Boot scripts served, by profile and group.\n");
        s.push_str("# TYPE imgd_boots_total counter\n");
        for (p, groups) in self.all_boots() {
            for (g, n) in groups {
                let _ = writeln!(s, "imgd_boots_total{{profile=\"{}\",group=\"{}\"}} {n}", esc(&p), esc(&g));
            }
        }
        s.push_str(groups);
        // Every family is announced even before it has samples (no PXE side,
        // nothing yet): dashboards and alerts find the names either way.
        s.push_str("# HELP imgd_proxydhcp_packets_total proxyDHCP packets by client kind and reply (or why none).\n");
        s.push_str("# TYPE imgd_proxydhcp_packets_total counter\n");
        for ((c, w), n) in self.dhcp.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(s, "imgd_proxydhcp_packets_total{{client=\"{c}\",reply=\"{w}\"}} {n}");
        }
        s.push_str("# HELP imgd_tftp_requests_total TFTP read requests by file and outcome.\n");
        s.push_str("# TYPE imgd_tftp_requests_total counter\n");
        for ((f, o), n) in self.tftp.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(s, "imgd_tftp_requests_total{{file=\"{f}\",outcome=\"{o}\"}} {n}");
        }
        self.render_parts(&mut s);
        let gauge = |s: &mut String, name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        gauge(
            &mut s,
            "imgd_bytes_served_total",
            "Artifact bytes sent.",
            "counter",
            self.bytes_served.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut s,
            "imgd_active_transfers",
            "Artifact downloads in progress.",
            "gauge",
            self.active_transfers.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut s,
            "imgd_active_connections",
            "Open client connections.",
            "gauge",
            self.active_connections.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut s,
            "imgd_rejected_connections_total",
            "Connections answered 503 at the connection limit.",
            "counter",
            self.rejected_connections.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut s,
            "imgd_corrupt_reads_total",
            "Artifact files or chunks refused: their bytes do not match the manifest's BLAKE3.",
            "counter",
            self.corrupt_reads.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut s,
            "imgd_chunk_bytes",
            "Memory in artifact chunks, cached or being sent (bounded by --cache-mib).",
            "gauge",
            chunks.live_bytes().to_string(),
        );
        gauge(
            &mut s,
            "imgd_chunk_budget_full_total",
            "Reads that found the chunk budget held by downloads and sent a piece of their own instead.",
            "counter",
            chunks.pieces().to_string(),
        );
        let (hits, reads) = chunks.hits_and_reads();
        gauge(
            &mut s,
            "imgd_chunk_hits_total",
            "Artifact chunks sent from the shared cache, not read again.",
            "counter",
            hits.to_string(),
        );
        gauge(
            &mut s,
            "imgd_chunk_reads_total",
            "Artifact chunks read from disk and checked against their BLAKE3.",
            "counter",
            reads.to_string(),
        );
        s
    }
}

/// A label value as the Prometheus text format wants it.
pub(crate) fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_endpoint_and_status_hot_or_not() {
        let m = Metrics::default();
        for _ in 0..3 {
            m.request("ipxe", 200);
        }
        m.request("ipxe", 400);
        m.request("artifacts", 206);
        m.request("metrics", 200);
        assert_eq!((m.requests("ipxe", 200), m.requests("ipxe", 400), m.requests("artifacts", 206)), (3, 1, 1));
        assert_eq!(m.requests("artifacts", 200), 0);
        let text = m.render("", &super::super::chunks::ChunkCache::new(1 << 20));
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("imgd_http_requests_total")).collect();
        assert_eq!(
            lines,
            [
                r#"imgd_http_requests_total{endpoint="artifacts",status="206"} 1"#,
                r#"imgd_http_requests_total{endpoint="ipxe",status="200"} 3"#,
                r#"imgd_http_requests_total{endpoint="ipxe",status="400"} 1"#,
                r#"imgd_http_requests_total{endpoint="metrics",status="200"} 1"#,
            ]
        );
    }
}
