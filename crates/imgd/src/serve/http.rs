//! The HTTP layer: parses requests into routes, answers them from the current
//! [`State`], and runs the accept loop with limits, reload and drain. Machine
//! selection, range planning and rendering live in their own modules.

use super::chunks::{ChunkCache, Key, CHUNK};
use super::idle::IdleTimeout;
use super::machines::Machine;
use super::metrics::Metrics;
use super::range::{self, Ranges};
use super::render::{self, ipxe_safe, render};
use super::state::{State, Target};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;

pub type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Debug, Clone)]
pub struct Options {
    /// Clients allowed to talk to the server; empty means everyone.
    pub allow: Vec<IpNet>,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Where rendered scripts fetch kernels and initrds (a mirror filled by
    /// `imgd sync`); default: this server's `/artifacts`.
    pub artifact_base_url: Option<String>,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long shutdown waits for in-flight transfers.
    pub drain: Duration,
    /// Seconds an unknown machine (or a client at the limit) waits to retry.
    pub retry_after: u32,
    /// Memory for artifact chunks shared by all downloads.
    pub cache_bytes: usize,
    /// HTTP keep-alive. On for real clients (iPXE reuses connections); off
    /// behind qemu's guestfwd relay, which serves one connection at a time.
    pub keep_alive: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            allow: Vec::new(),
            trusted_proxies: Vec::new(),
            artifact_base_url: None,
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            drain: Duration::from_secs(30),
            retry_after: 10,
            cache_bytes: 48 << 20,
            keep_alive: true,
        }
    }
}

pub struct Server {
    state: RwLock<Arc<State>>,
    pub opts: Options,
    pub metrics: Metrics,
    /// Artifact chunks shared by all downloads.
    pub chunks: ChunkCache,
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn empty(status: StatusCode) -> Response<Body> {
    text(status, Bytes::new())
}

/// Splits a path into percent-decoded segments, refusing anything that could
/// name another path once decoded (separators, dot segments, NUL, backslash).
pub fn segments(path: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for raw in path.split('/').skip(1) {
        let seg = percent_encoding::percent_decode_str(raw).decode_utf8().ok()?.into_owned();
        if seg.is_empty() || seg == "." || seg == ".." || seg.contains(['/', '\\', '\0']) || seg.contains('%') {
            if seg.is_empty() && out.is_empty() && path == "/" {
                return Some(out);
            }
            return None;
        }
        out.push(seg);
    }
    Some(out)
}

fn query(q: Option<&str>) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
        m.insert(dec(k), dec(v));
    }
    m
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

const IDENTITY_KEYS: [&str; 6] = ["mac", "uuid", "hostname", "serial", "arch", "platform"];

impl Server {
    pub fn new(state: State, opts: Options) -> Arc<Server> {
        let chunks = ChunkCache::new(opts.cache_bytes);
        Arc::new(Server { state: RwLock::new(Arc::new(state)), opts, metrics: Metrics::default(), chunks })
    }

    pub fn state(&self) -> Arc<State> {
        self.state.read().expect("not poisoned").clone()
    }

    /// Swaps in a new state; requests in flight keep the one they started with.
    pub fn replace_state(&self, s: State) {
        *self.state.write().expect("not poisoned") = Arc::new(s);
    }

    /// The client's address: the peer, or, when the peer is a trusted proxy,
    /// the right-most address in X-Forwarded-For that is not a trusted proxy.
    fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = |ip: &IpAddr| self.opts.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(&peer) {
            return peer;
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        hops.into_iter().rev().find(|ip| !trusted(ip)).unwrap_or(peer)
    }

    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let client = self.client(peer.ip(), req.headers());
        let (endpoint, resp) = self.route(&req, client).await;
        self.metrics.request(endpoint, resp.status().as_u16());
        resp
    }

    async fn route(self: &Arc<Self>, req: &Request<Incoming>, client: IpAddr) -> (&'static str, Response<Body>) {
        if !self.opts.allow.is_empty() && !self.opts.allow.iter().any(|n| n.contains(&client)) {
            tracing::info!(%client, "refused: not in --allow");
            return ("forbidden", text(StatusCode::FORBIDDEN, "forbidden\n"));
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET or HEAD\n");
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return ("other", r);
        }
        let Some(seg) = segments(req.uri().path()) else {
            return ("other", text(StatusCode::BAD_REQUEST, "bad path\n"));
        };
        let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
        let q = query(req.uri().query());
        let state = self.state();
        let resp = match seg.as_slice() {
            ["boot.ipxe"] => ("boot.ipxe", self.chain(&q)),
            ["ipxe"] => ("ipxe", self.machine_script(&state, &q, client)),
            ["profiles", name, "boot.ipxe"] => ("profile", self.profile_script(&state, name)),
            ["artifacts", entry, file] => ("artifacts", self.artifact(&state, req, entry, file).await),
            ["metrics"] => ("metrics", text(StatusCode::OK, self.metrics.render())),
            ["healthz"] => ("healthz", text(StatusCode::OK, "ok\n")),
            _ => ("other", text(StatusCode::NOT_FOUND, "not found\n")),
        };
        if req.method() == Method::HEAD {
            let (parts, _) = resp.1.into_parts();
            return (resp.0, Response::from_parts(parts, http_body_util::Empty::new().map_err(|n| match n {}).boxed()));
        }
        resp
    }

    fn script(body: String) -> Response<Body> {
        let mut r = text(StatusCode::OK, body);
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    fn artifacts_base(&self) -> String {
        self.opts.artifact_base_url.clone().map_or_else(|| "/artifacts".into(), |u| u.trim_end_matches('/').to_string())
    }

    /// `/boot.ipxe`: sends the machine's identity on to `/ipxe`, with any
    /// extra query parameters (labels) passed through.
    fn chain(&self, q: &BTreeMap<String, String>) -> Response<Body> {
        let labels: String = q
            .iter()
            .filter(|(k, _)| !IDENTITY_KEYS.contains(&k.as_str()))
            .map(|(k, v)| format!("&{}={}", encode(k), encode(v)))
            .collect();
        Self::script(render(render::CHAIN, &[("base", ""), ("labels", &labels)]))
    }

    fn unknown(&self, reason: &str, q: &BTreeMap<String, String>) -> Response<Body> {
        let labels: Vec<String> = q
            .iter()
            .filter(|(k, _)| !IDENTITY_KEYS.contains(&k.as_str()))
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let query = if labels.is_empty() { String::new() } else { format!("?{}", labels.join("&")) };
        let retry = self.opts.retry_after.to_string();
        Self::script(render(
            render::UNKNOWN,
            &[("reason", &ipxe_safe(reason)), ("retry", &retry), ("base", ""), ("query", &query)],
        ))
    }

    fn boot_script(
        &self,
        target: &Target,
        group: &str,
        machine: &str,
        extra: &str,
        vars: &[(String, String)],
    ) -> Result<String, String> {
        let entry = target.entry.as_ref().map_err(Clone::clone)?;
        let has = |f: &str| entry.manifest.artifacts.iter().any(|a| a.file == f);
        if !has("vmlinuz") || !has("initrd") {
            return Err(format!("{} has no ipxe artifacts (build it with --format ipxe)", entry.name));
        }
        let cmdline = entry.manifest.recipe.get("cmdline").and_then(|v| v.as_str()).unwrap_or("");
        let cmdline = format!("rdinit=/init {cmdline} {extra}");
        let artifacts = self.artifacts_base();
        let mut all: Vec<(&str, &str)> = vec![
            ("machine", machine),
            ("group", group),
            ("profile", &target.profile),
            ("entry", &entry.name),
            ("artifacts", &artifacts),
            ("cmdline", cmdline.trim()),
        ];
        let named: Vec<(String, &str)> = vars.iter().map(|(k, v)| (format!("var.{k}"), v.as_str())).collect();
        all.extend(named.iter().map(|(k, v)| (k.as_str(), *v)));
        self.metrics.boot(&target.profile, group);
        Ok(render(render::MACHINE, &all))
    }

    /// `/ipxe?mac=..`: the script for this machine's group.
    fn machine_script(&self, state: &State, q: &BTreeMap<String, String>, client: IpAddr) -> Response<Body> {
        let get = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
        let m = Machine {
            mac: get("mac"),
            uuid: get("uuid"),
            hostname: get("hostname"),
            serial: get("serial"),
            arch: get("arch"),
            platform: get("platform"),
            source: Some(client),
            labels: q
                .iter()
                .filter(|(k, _)| !IDENTITY_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let who = format!("mac {} from {client}", m.mac.as_deref().unwrap_or("?"));
        let Some(group) = state.machines.select(&m) else {
            tracing::warn!("unknown machine: {who} (no group matches, no default group)");
            return self.unknown(&format!("no group matches this machine ({who})"), q);
        };
        let target = state.group(group).expect("every group has a target");
        let vars: Vec<(String, String)> = group.vars.iter().map(|(k, v)| (k.clone(), ipxe_safe(v))).collect();
        match self.boot_script(target, &group.name, &ipxe_safe(&who), &group.kernel_args, &vars) {
            Ok(s) => {
                tracing::debug!("{who} -> group {} ({})", group.name, target.profile);
                Self::script(s)
            }
            Err(e) => {
                tracing::warn!("{who} -> group {}: {e}", group.name);
                self.unknown(&e, q)
            }
        }
    }

    fn profile_script(&self, state: &State, name: &str) -> Response<Body> {
        let Some(target) = state.profiles.get(name) else {
            return text(StatusCode::NOT_FOUND, format!("no profile {name} is served here\n"));
        };
        match self.boot_script(target, &format!("profile:{name}"), "any machine", "", &[]) {
            Ok(s) => Self::script(s),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        }
    }

    async fn artifact(
        self: &Arc<Self>,
        state: &State,
        req: &Request<Incoming>,
        entry: &str,
        file: &str,
    ) -> Response<Body> {
        let not_found = || text(StatusCode::NOT_FOUND, "not found\n");
        let Some(e) = state.servable.get(entry) else { return not_found() };
        let Some(art) = e.manifest.artifacts.iter().find(|a| a.file == file) else { return not_found() };
        let path = e.path.join(&art.file);
        // The path comes from the manifest; still refuse anything but a plain
        // file of the size the manifest promises (no symlinks out of the store).
        let md = match std::fs::symlink_metadata(&path) {
            Ok(md) if md.file_type().is_file() && md.len() == art.size => md,
            Ok(md) => {
                tracing::error!(
                    "refusing {}: not a regular file of {} bytes ({:?})",
                    path.display(),
                    art.size,
                    md.file_type()
                );
                return not_found();
            }
            Err(_) => return not_found(),
        };
        let size = md.len();
        let etag = format!("\"{}\"", art.sha256);
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let h = |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
        if let Some(inm) = h(header::IF_NONE_MATCH) {
            let hit = inm.split(',').map(|t| t.trim().trim_start_matches("W/")).any(|t| t == "*" || t == etag);
            if hit {
                let mut r = empty(StatusCode::NOT_MODIFIED);
                r.headers_mut().extend(headers);
                r.headers_mut().remove(header::CONTENT_TYPE);
                return r;
            }
        }
        let range_header = match h(header::IF_RANGE) {
            Some(ir) if ir.trim() != etag => None, // changed since: send it all
            _ => h(header::RANGE),
        };
        let ctype = if file.ends_with(".ipxe") { "text/plain; charset=utf-8" } else { "application/octet-stream" };
        let (status, parts, len) = match range::parse(range_header, size) {
            Ranges::Full => {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
                (StatusCode::OK, vec![Part::Region(0, size)], size)
            }
            Ranges::Single((a, b)) => {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes {a}-{b}/{size}")).expect("ascii"),
                );
                (StatusCode::PARTIAL_CONTENT, vec![Part::Region(a, b - a + 1)], b - a + 1)
            }
            Ranges::Multi(spans) => {
                let boundary = format!("imgd-{}", &art.sha256[..24]);
                let mut parts = Vec::new();
                let mut len = 0;
                for (a, b) in spans {
                    let head = format!(
                        "\r\n--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: bytes {a}-{b}/{size}\r\n\r\n"
                    );
                    len += head.len() as u64 + (b - a + 1);
                    parts.push(Part::Bytes(Bytes::from(head)));
                    parts.push(Part::Region(a, b - a + 1));
                }
                let tail = format!("\r\n--{boundary}--\r\n");
                len += tail.len() as u64;
                parts.push(Part::Bytes(Bytes::from(tail)));
                let ct = format!("multipart/byteranges; boundary={boundary}");
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(&ct).expect("ascii"));
                (StatusCode::PARTIAL_CONTENT, parts, len)
            }
            Ranges::Unsatisfiable => {
                let mut r = empty(StatusCode::RANGE_NOT_SATISFIABLE);
                r.headers_mut().extend(headers);
                r.headers_mut()
                    .insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"));
                return r;
            }
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        let body = if req.method() == Method::HEAD {
            http_body_util::Empty::new().map_err(|n| match n {}).boxed()
        } else {
            self.stream(path, parts)
        };
        let mut r = Response::new(body);
        *r.status_mut() = status;
        *r.headers_mut() = headers;
        r
    }

    /// Streams parts of a file from the shared chunk cache, counting bytes
    /// and active transfers.
    fn stream(self: &Arc<Self>, path: PathBuf, parts: Vec<Part>) -> Body {
        let cursor =
            Cursor { path, file: None, parts: parts.into(), pos: None, guard: Transfer::start(self), failed: false };
        let s = futures_util::stream::unfold(cursor, |mut c| async move {
            if c.failed {
                return None;
            }
            loop {
                if let Some((off, end)) = c.pos {
                    if off >= end {
                        c.pos = None;
                        continue;
                    }
                    match c.chunk(off, end).await {
                        Ok(piece) => {
                            c.pos = Some((off + piece.len() as u64, end));
                            c.guard.bytes(piece.len());
                            return Some((Ok(Frame::data(piece)), c));
                        }
                        Err(e) => {
                            c.failed = true;
                            return Some((Err(e), c));
                        }
                    }
                }
                match c.parts.pop_front()? {
                    Part::Bytes(b) => return Some((Ok(Frame::data(b)), c)),
                    Part::Region(start, len) => c.pos = Some((start, start + len)),
                }
            }
        });
        BodyExt::boxed(StreamBody::new(s))
    }
}

enum Part {
    Bytes(Bytes),
    Region(u64, u64),
}

struct Cursor {
    path: PathBuf,
    file: Option<(Arc<std::fs::File>, Key)>,
    parts: VecDeque<Part>,
    /// Next offset and end (exclusive) of the region being sent.
    pos: Option<(u64, u64)>,
    guard: Transfer,
    failed: bool,
}

impl Cursor {
    /// The bytes from `off` up to the end of its chunk (or `end`).
    async fn chunk(&mut self, off: u64, end: u64) -> std::io::Result<Bytes> {
        if self.file.is_none() {
            let path = self.path.clone();
            let opened = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&path)?;
                let key = ChunkCache::key(&path, &f.metadata()?);
                Ok((Arc::new(f), key))
            })
            .await
            .map_err(std::io::Error::other)??;
            self.file = Some(opened);
        }
        let (file, key) = self.file.clone().expect("opened above");
        let index = off / CHUNK;
        let chunk = match self.guard.0.chunks.cached(&key, index) {
            Some(b) => b,
            None => {
                let server = self.guard.0.clone();
                tokio::task::spawn_blocking(move || server.chunks.load(&key, &file, index))
                    .await
                    .map_err(std::io::Error::other)??
            }
        };
        let base = index * CHUNK;
        let from = (off - base) as usize;
        let to = ((end - base).min(chunk.len() as u64)) as usize;
        if from >= to {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "artifact shorter than its manifest"));
        }
        Ok(chunk.slice(from..to))
    }
}

/// Counts a transfer as active while its body lives, and its bytes as sent.
struct Transfer(Arc<Server>);

impl Transfer {
    fn start(server: &Arc<Server>) -> Transfer {
        server.metrics.active_transfers.fetch_add(1, Ordering::Relaxed);
        Transfer(server.clone())
    }

    fn bytes(&self, n: usize) {
        self.0.metrics.bytes_served.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.0.metrics.active_transfers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers 503 with Retry-After on a connection beyond the limit, then closes it.
async fn reject(mut stream: tokio::net::TcpStream, retry_after: u32) {
    use tokio::io::AsyncWriteExt;
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {retry_after}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(msg.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// Decrements the open-connection gauge when a connection task ends.
struct ConnGuard(Arc<Server>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.metrics.active_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until `shutdown` resolves, then stops accepting and
/// waits for in-flight requests (downloads included) up to the drain deadline.
pub async fn serve(
    listener: TcpListener,
    server: Arc<Server>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let open = server.metrics.active_connections.load(Ordering::Relaxed);
                if open >= server.opts.max_connections as i64 {
                    server.metrics.rejected_connections.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(reject(stream, server.opts.retry_after));
                    continue;
                }
                let _ = stream.set_nodelay(true);
                server.metrics.active_connections.fetch_add(1, Ordering::Relaxed);
                let guard = ConnGuard(server.clone());
                let srv = server.clone();
                let service = hyper::service::service_fn(move |req| {
                    let srv = srv.clone();
                    async move { Ok::<_, std::convert::Infallible>(srv.handle(req, peer).await) }
                });
                let io = TokioIo::new(IdleTimeout::new(stream, server.opts.idle_timeout));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(server.opts.header_timeout)
                    .writev(true)
                    .keep_alive(server.opts.keep_alive)
                    .serve_connection(io, service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _guard = guard;
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, "connection: {e}");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let open = server.metrics.active_transfers.load(Ordering::Relaxed);
    tracing::info!("shutting down: draining {open} transfer(s), up to {}s", server.opts.drain.as_secs());
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("drained"),
        _ = tokio::time::sleep(server.opts.drain) => tracing::warn!("drain deadline reached; closing remaining connections"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_in_any_encoding_is_refused() {
        assert_eq!(segments("/artifacts/e/initrd").unwrap(), ["artifacts", "e", "initrd"]);
        assert_eq!(segments("/").unwrap(), Vec::<String>::new());
        for bad in [
            "/artifacts/../etc/passwd",
            "/artifacts/e/..",
            "/artifacts/%2e%2e/x",
            "/artifacts/e/%2fetc%2fpasswd",
            "/artifacts/e/%252e%252e",
            "/artifacts/e/..%5c..%5cx",
            "/artifacts/e/a%00b",
            "/artifacts//x",
            "/artifacts/e\\..\\x",
        ] {
            assert!(segments(bad).is_none(), "{bad} was accepted");
        }
    }
}
