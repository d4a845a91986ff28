//! The server: a typed route in ([`super::boot::route`]), an answer out. Scripts are
//! rendered from the current [`State`]; files are answered by
//! [`super::http::respond`]'s decision and streamed by [`super::http::stream`]. Accepting
//! connections lives in [`super::http::listener`].

use super::boot::loaders::Loader;
use super::boot::machines::Machine;
use super::boot::render::{self, ipxe_safe, Rendered};
use super::boot::route::{self, Claims, Labels, Refused, Route};
use super::boot::state::{Current, State, Target};
use super::boot::status::{self, Sort, Status, Step};
use super::http::chunks::ChunkCache;
use super::http::listener;
use super::http::metrics::Metrics;
use super::http::respond::{self, Conditions, Decision, FileMeta};
use crate::model::manifest::{ArtifactFile, ArtifactName};
use crate::model::EntryName;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub use super::http::respond::Body;

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
    /// Threads serving HTTP connections (0: one per core).
    pub http_threads: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long shutdown waits for in-flight transfers.
    pub drain: Duration,
    /// Seconds an unknown machine (or a client at the limit) waits to retry.
    pub retry_after: u32,
    /// Memory for artifact chunks shared by all downloads (those being sent
    /// included, see chunks.rs).
    pub cache_bytes: usize,
    /// HTTP keep-alive. On for real clients (iPXE reuses connections); off
    /// behind qemu's guestfwd relay, which serves one connection at a time.
    pub keep_alive: bool,
    /// iPXE builds for UEFI HTTP boot clients (`--proxy-dhcp`); without
    /// them `/loaders/` is 404.
    pub loaders: Option<super::boot::loaders::Loaders>,
    /// Who may see `/status` (it names machines and addresses).
    pub status_allow: Vec<IpNet>,
    /// Machines the status table keeps, least recently seen dropped.
    pub status_machines: usize,
    /// A boot with no progress for this long is shown as stuck.
    pub status_stuck: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            allow: Vec::new(),
            trusted_proxies: Vec::new(),
            artifact_base_url: None,
            max_connections: 10_000,
            http_threads: 0,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            drain: Duration::from_secs(30),
            retry_after: 10,
            cache_bytes: 16 << 20,
            keep_alive: true,
            loaders: None,
            status_allow: ["127.0.0.0/8", "::1/128"].iter().filter_map(|n| n.parse().ok()).collect(),
            status_machines: 10_000,
            status_stuck: Duration::from_secs(120),
        }
    }
}

/// A store file this client may download, and the group that allows it.
struct Allowed<'s> {
    entry: &'s crate::store::Entry,
    art: &'s crate::model::manifest::Artifact,
    group: &'s str,
}

/// Why a script or file is not sent; [`Denied::response`] is the answer.
enum Denied {
    NotFound(String),
    Forbidden,
    Unavailable(String),
}

impl Denied {
    fn response(self) -> Response<Body> {
        match self {
            Denied::NotFound(why) => text(StatusCode::NOT_FOUND, format!("{why}\n")),
            Denied::Forbidden => text(StatusCode::FORBIDDEN, "forbidden\n"),
            Denied::Unavailable(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        }
    }
}

/// What sending a machine's script means besides its bytes.
enum Sent<'s> {
    /// A boot: counted in metrics and logged as a boot step.
    Boot(Boot<'s>),
    /// No boot (unknown machine, nothing to boot): a warning.
    Warn(String),
}

/// Names from the state the script came from.
struct Boot<'s> {
    profile: &'s str,
    group: &'s str,
    entry: &'s str,
}

pub struct Server {
    state: Arc<Current>,
    pub opts: Options,
    pub metrics: Arc<Metrics>,
    /// Artifact chunks shared by all downloads.
    pub chunks: Arc<ChunkCache>,
    /// Which machine got what (`/status`).
    pub status: Arc<Status>,
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = whole(body, "text/plain; charset=utf-8");
    *r.status_mut() = status;
    r
}

/// A 200 answer of `body`, all in memory, of `content_type`.
fn whole(body: impl Into<Bytes>, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed());
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn empty_body() -> Body {
    http_body_util::Empty::new().map_err(|n| match n {}).boxed()
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// An address as text, written without core::fmt's padding machinery:
/// `Ipv4Addr`'s `Display` took 1,100 instructions, and a script request
/// shows its client twice (the script's comment, the log line).
struct Shown(IpAddr);

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(AddrText::of(self.0).as_str())
    }
}

/// An address's text in a buffer on the stack (45 bytes hold the longest
/// IPv6 one, `ffff:…:255.255.255.255`).
struct AddrText {
    text: [u8; 45],
    len: usize,
}

impl AddrText {
    fn of(ip: IpAddr) -> AddrText {
        let mut t = AddrText { text: [0; 45], len: 0 };
        let IpAddr::V4(a) = ip else {
            use std::fmt::Write;
            let _ = write!(t, "{ip}");
            return t;
        };
        for (i, o) in a.octets().into_iter().enumerate() {
            if i > 0 {
                t.push(b'.');
            }
            for (at, digit) in [(100, o / 100), (10, o / 10 % 10), (1, o % 10)] {
                if o >= at || at == 1 {
                    t.push(b'0' + digit);
                }
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.text.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text[..self.len]).unwrap_or("?")
    }
}

impl std::fmt::Write for AddrText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.text.get_mut(self.len..self.len + s.len()).ok_or(std::fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len += s.len();
        Ok(())
    }
}

/// `mac 52:54:00:12:34:56 from 10.0.0.5`: a machine in its script's first
/// line and in warnings. Put together without `format!`, which took 1,100
/// instructions of each script request for it.
fn who(mac: Option<crate::model::Mac>, client: IpAddr) -> String {
    let mut who = String::with_capacity(64);
    who.push_str("mac ");
    match mac {
        Some(m) => who.push_str(std::str::from_utf8(&m.text()).unwrap_or("?")),
        None => who.push('?'),
    }
    who.push_str(" from ");
    who.push_str(AddrText::of(client).as_str());
    who
}

/// An address as one family sees it: IPv4 clients of a `[::]` listener
/// arrive as `::ffff:a.b.c.d` and must match IPv4 networks.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The client behind a chain of proxies: walking X-Forwarded-For from the
/// right, the first address that is not a trusted proxy. Unparseable hops
/// stop the walk (nothing left of them can be believed).
pub(crate) fn forwarded_client(peer: IpAddr, xff: &[&str], trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer = canonical(peer);
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = xff.iter().flat_map(|v| v.split(',')).map(str::trim).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !is_trusted(&client) {
                    return client;
                }
            }
            Err(_) => return client,
        }
    }
    client
}

/// What a request gets. Most answers are made at once; a file or a
/// signature is sent by a future of its own, boxed: its room is large, and a
/// script request's future is moved several times on its way through hyper
/// (at 1.5 KB, those moves were ~4% of a render's CPU).
pub(crate) enum Answer {
    Now(std::future::Ready<Response<Body>>),
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>>),
}

impl std::future::Future for Answer {
    type Output = Response<Body>;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Response<Body>> {
        match self.get_mut() {
            Answer::Now(r) => std::pin::Pin::new(r).poll(cx),
            Answer::Later(f) => f.as_mut().poll(cx),
        }
    }
}

/// An answer made at once (with its endpoint for the metrics), or a route
/// whose answer waits.
enum Made {
    Now(&'static str, Response<Body>),
    Later(ToSend),
}

/// A route whose answer waits, with the state it was routed in.
pub(crate) struct ToSend {
    route: Route,
    state: Arc<State>,
}

impl Server {
    pub fn new(state: State, opts: Options) -> Arc<Server> {
        let chunks = Arc::new(ChunkCache::new(opts.cache_bytes));
        let metrics = Arc::new(Metrics::default());
        let status = Arc::new(Status::new(opts.status_machines, opts.status_stuck));
        Arc::new(Server { state: Arc::new(Current::new(state)), opts, metrics, chunks, status })
    }

    pub fn state(&self) -> Arc<State> {
        self.state.get()
    }

    /// The served state, for the PXE room (which answers from it too).
    pub fn current(&self) -> Arc<Current> {
        self.state.clone()
    }

    /// Swaps in a new state; requests in flight keep the one they started with.
    pub fn replace_state(&self, s: State) {
        self.state.replace(s);
    }

    /// Serves HTTP on `tcp` until `shutdown`, then drains (see [`listener::serve`]).
    pub async fn listen(
        self: Arc<Self>,
        tcp: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let o = &self.opts;
        let limits = listener::Limits {
            max_connections: o.max_connections,
            threads: o.http_threads,
            retry_after: o.retry_after,
            header_timeout: o.header_timeout,
            idle_timeout: o.idle_timeout,
            keep_alive: o.keep_alive,
            drain: o.drain,
        };
        let metrics = self.metrics.clone();
        let handle = move |req, peer| self.clone().handle(req, peer);
        listener::serve(tcp, limits, metrics, handle, shutdown).await
    }

    fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        // Only a trusted proxy's headers are read (most servers trust none).
        if self.opts.trusted_proxies.is_empty() {
            return canonical(peer);
        }
        let xff: Vec<&str> = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
        forwarded_client(peer, &xff, &self.opts.trusted_proxies)
    }

    /// The one place that sees the hyper request: it becomes a client
    /// address and a typed route, and nothing below looks at it again.
    pub(crate) fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Answer {
        let client = self.client(peer.ip(), req.headers());
        let parsed = route::parse(req.method(), req.uri(), req.headers());
        let head = req.method() == Method::HEAD;
        drop(req);
        match self.answer(parsed, client) {
            Made::Now(endpoint, resp) => Answer::Now(std::future::ready(self.finish(endpoint, resp, head))),
            Made::Later(file) => Answer::Later(Box::pin(async move {
                let (endpoint, resp) = self.send(file, head, client).await;
                self.finish(endpoint, resp, head)
            })),
        }
    }

    /// Counts the answer; a HEAD one loses its body.
    fn finish(&self, endpoint: &'static str, mut resp: Response<Body>, head: bool) -> Response<Body> {
        self.metrics.request(endpoint, resp.status().as_u16());
        if head {
            // A HEAD answer says the size the GET would send: UEFI HTTP boot
            // sizes its download buffer from it (a 0 there stalls the boot).
            let exact = hyper::body::Body::size_hint(resp.body()).exact();
            if let (false, Some(n)) = (resp.headers().contains_key(header::CONTENT_LENGTH), exact) {
                resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            *resp.body_mut() = empty_body();
        }
        resp
    }

    /// The answer, made at once; or, for a file or a signature, what
    /// [`Self::send`] is to send.
    fn answer(self: &Arc<Self>, parsed: Result<Route, Refused>, client: IpAddr) -> Made {
        // The status page has its own list: it names machines and addresses.
        if let Ok(Route::Status { json, sort }) = parsed {
            return Made::Now("status", self.status_page(client, json, sort));
        }
        if !self.opts.allow.is_empty() && !self.opts.allow.iter().any(|n| n.contains(&client)) {
            tracing::info!(%client, "refused: not in --allow");
            return Made::Now("forbidden", text(StatusCode::FORBIDDEN, "forbidden\n"));
        }
        let route = match parsed {
            Ok(r) => r,
            Err(Refused::Method) => {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET or HEAD\n");
                r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                return Made::Now("other", r);
            }
            Err(Refused::BadRequest(why)) => {
                tracing::info!(%client, "bad request: {why}");
                return Made::Now("other", text(StatusCode::BAD_REQUEST, format!("{why}\n")));
            }
            Err(Refused::NotFound) => return Made::Now("other", text(StatusCode::NOT_FOUND, "not found\n")),
        };
        let state = self.state.load();
        let endpoint = route.endpoint();
        let resp = match route {
            Route::Chain { labels } => Self::script(self.chain(&state, &labels)),
            Route::Signature(_) | Route::Artifact { .. } | Route::Signed { .. } | Route::Loader { .. } => {
                return Made::Later(ToSend { route, state: arc_swap::Guard::into_inner(state) })
            }
            Route::Machine { claims, labels } => self.machine_script(&state, claims, labels, client),
            Route::Profile { name } => self.profile_script(&state, &name, client),
            Route::Metrics => text(StatusCode::OK, self.metrics.render(&state.stale_metrics(), &self.chunks)),
            Route::Healthz => self.health(),
            Route::Status { json, sort } => self.status_page(client, json, sort),
        };
        Made::Now(endpoint, resp)
    }

    /// Sends a file, a loader or a signature: the only answers that wait
    /// (on the disk, or the signing tool).
    async fn send(
        self: &Arc<Self>,
        ToSend { route, state }: ToSend,
        head: bool,
        client: IpAddr,
    ) -> (&'static str, Response<Body>) {
        let endpoint = route.endpoint();
        let resp = match route {
            Route::Signature(of) => self.signature(&state, *of, client).await,
            Route::Artifact { entry, file, conditions } => {
                self.artifact(&state, client, &entry, &file, &conditions, head).await
            }
            Route::Signed { entry, cert, file, conditions } => {
                match state.signed_file(client, &entry, &cert, file.as_str()) {
                    Some((path, f)) => {
                        let what = format!("{}/{cert}/{file}", entry.as_str());
                        self.send_file(&what, path, (f.size, &f.blake3), &conditions, head, None).await
                    }
                    None => {
                        tracing::info!(%client, "refused: no group hands this client {}/{cert}/{file}", entry.as_str());
                        text(StatusCode::FORBIDDEN, "forbidden\n")
                    }
                }
            }
            Route::Loader { loader } => self.loader(loader, client).await,
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        };
        (endpoint, resp)
    }

    /// An iPXE build for UEFI HTTP boot (with `--proxy-dhcp`).
    async fn loader(&self, loader: Loader, client: IpAddr) -> Response<Body> {
        let Some(loaders) = &self.opts.loaders else {
            return text(StatusCode::NOT_FOUND, "not found\n");
        };
        match loaders.get(loader).await {
            Ok(b) => whole(b, "application/efi"),
            Err(e) => {
                tracing::error!(%client, "cannot read {}: {e}", loader.file_name());
                text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the loader\n")
            }
        }
    }

    /// The page's groups (what each boots, how many of the table's machines
    /// booted or are booting in it), parts and last reload.
    fn overview(&self, rows: &[status::Seen]) -> status::Overview {
        let state = self.state();
        let counts = self.status.group_counts(rows);
        let groups = state
            .machines
            .groups
            .iter()
            .map(|g| {
                let target = state.groups.get(&g.name);
                let (boots_last_hour, mid_boot) = counts.get(&g.name).copied().unwrap_or_default();
                let (entry, no_entry) = match target.map(|t| &t.entry) {
                    Some(Ok(e)) => (Some(e.name.to_string()), None),
                    Some(Err(why)) => (None, Some(why.clone())),
                    None => (None, Some("no target".into())),
                };
                status::GroupRow {
                    name: g.name.clone(),
                    selector: g.selector_text(),
                    profile: target.map_or_else(String::new, |t| t.profile.clone()),
                    entry,
                    no_entry,
                    stale: target.is_some_and(|t| t.stale),
                    boots_last_hour,
                    mid_boot,
                }
            })
            .collect();
        // The listener registers http; a server whose listener has not
        // started (a test's) still answers this very request.
        let mut parts = Vec::new();
        if !self.metrics.parts().iter().any(|p| p.0 == "http") {
            parts.push(status::PartRow { name: "http".into(), up: true, why: None, restarts: 0 });
        }
        parts.extend(self.metrics.parts().into_iter().map(|(name, why, restarts)| status::PartRow {
            name: name.into(),
            up: why.is_none(),
            why,
            restarts,
        }));
        status::Overview { groups, parts, reload: self.status.last_reload() }
    }

    /// `/status` and `/status.json`, for `--status-allow` clients only.
    fn status_page(&self, client: IpAddr, json: bool, sort: Sort) -> Response<Body> {
        if !self.opts.status_allow.iter().any(|n| n.contains(&client)) {
            tracing::info!(%client, "refused: not in --status-allow");
            return text(StatusCode::FORBIDDEN, "forbidden\n");
        }
        let rows = self.status.table(sort);
        let over = self.overview(&rows);
        let (body, kind) = if json {
            (status::page::json(&over, &rows), "application/json")
        } else {
            (status::page::html(&over, &rows, sort), "text/html; charset=utf-8")
        };
        let mut r = text(StatusCode::OK, body);
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    /// `/healthz`: 200 `ok`, or 503 naming each background part that is
    /// down and why (it is being started again).
    fn health(&self) -> Response<Body> {
        let down = self.metrics.parts_down();
        if down.is_empty() {
            return text(StatusCode::OK, "ok\n");
        }
        let lines: String = down.iter().map(|(p, why)| format!("{p} down: {}\n", why.escape_debug())).collect();
        text(StatusCode::SERVICE_UNAVAILABLE, lines)
    }

    fn script(body: String) -> Response<Body> {
        let mut r = text(StatusCode::OK, body);
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    fn artifacts_base(&self) -> String {
        self.opts.artifact_base_url.clone().map_or_else(|| "/artifacts".into(), |u| u.trim_end_matches('/').to_string())
    }

    /// `?k=v&…` of the labels, percent-encoded: safe in a script line.
    fn label_query(labels: &Labels, lead: char) -> String {
        let q: Vec<String> = labels.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
        if q.is_empty() {
            String::new()
        } else {
            format!("{lead}{}", q.join("&"))
        }
    }

    /// `/boot.ipxe`: sends the machine's identity on to `/ipxe`, with any
    /// extra query parameters (labels) passed through.
    fn chain(&self, state: &State, labels: &Labels) -> String {
        let labels = Self::label_query(labels, '&');
        let template = if state.signer.is_some() { &render::CHAIN_SIGNED } else { &render::CHAIN };
        template.render(&[("base", ""), ("labels", &labels)])
    }

    fn unknown(&self, state: &State, reason: &str, labels: &Labels) -> String {
        let query = Self::label_query(labels, '?');
        let retry = self.opts.retry_after.to_string();
        let template = if state.signer.is_some() { &render::UNKNOWN_SIGNED } else { &render::UNKNOWN };
        template.render(&[("reason", &ipxe_safe(reason)), ("retry", &retry), ("base", ""), ("query", &query)])
    }

    /// The boot script of `target` for `group`, for `machine`: signed steps
    /// when the server signs (`verify`: refuse to boot what fails them).
    /// Rendered once per state; a request checks only that the files are
    /// still good and fills in the machine's line.
    fn boot_script(
        &self,
        state: &State,
        target: &Target,
        group: &str,
        machine: &str,
        how: (&str, bool),
        vars: &BTreeMap<String, String>,
    ) -> Result<String, String> {
        let entry = target.entry.as_ref().map_err(Clone::clone)?;
        let rendered = target.script.get_or_init(|| self.render_script(state, target, entry, group, how, vars));
        let rendered = rendered.as_ref().map_err(Clone::clone)?;
        // A file found not to match its BLAKE3 (a bad disk): its machines
        // wait as for a missing build rather than fail mid-download.
        use crate::model::manifest::ArtifactName;
        use crate::model::Format;
        let m = &entry.manifest;
        let corrupt = [ArtifactName::Kernel, ArtifactName::Initrd]
            .into_iter()
            .filter(|_| self.chunks.any_corrupt())
            .filter_map(|n| m.artifact(Format::Ipxe, n))
            .find(|a| self.chunks.is_corrupt(&entry.path.join(a.file.as_str())));
        if let Some(a) = corrupt {
            return Err(format!("{}/{} does not match its manifest's BLAKE3 (see `imgd verify`)", entry.name, a.file));
        }
        Ok(rendered.fill(machine))
    }

    /// What [`Server::boot_script`] renders once: the script with the
    /// `{{machine}}` line open, or why the entry cannot netboot.
    fn render_script(
        &self,
        state: &State,
        target: &Target,
        entry: &crate::store::Entry,
        group: &str,
        (extra, verify): (&str, bool),
        vars: &BTreeMap<String, String>,
    ) -> Result<Rendered, String> {
        let m = &entry.manifest;
        use crate::model::manifest::ArtifactName;
        use crate::model::Format;
        if m.artifact(Format::Ipxe, ArtifactName::Kernel).is_none()
            || m.artifact(Format::Ipxe, ArtifactName::Initrd).is_none()
        {
            return Err(format!("{} has no ipxe artifacts (build it with --format ipxe)", entry.name));
        }
        // The profile's command line and the group's kernel_args come from
        // trusted files, checked for control characters when loaded.
        let cmdline = format!("rdinit=/init {} {extra}", m.recipe.cmdline);
        let artifacts = self.artifacts_base();
        let unverified = if verify { render::ON_UNVERIFIED_REFUSE } else { render::ON_UNVERIFIED_WARN };
        let mut all: Vec<(&str, &str)> = vec![
            ("group", group),
            ("profile", &target.profile),
            ("entry", &entry.name),
            ("artifacts", &artifacts),
            ("cmdline", cmdline.trim()),
            ("unverified", unverified),
        ];
        let named: Vec<(String, String)> = vars.iter().map(|(k, v)| (format!("var.{k}"), ipxe_safe(v))).collect();
        all.extend(named.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        // A signed script names no machine: it is the same for the whole
        // group, so one signature serves them all.
        let template = if state.signer.is_some() { &render::MACHINE_SIGNED } else { &render::MACHINE };
        Ok(template.render_around(&all, Some("machine")))
    }

    /// `/ipxe?mac=..`: the script for this machine's group, and what to
    /// count and log when it is sent (not when only its signature is).
    fn machine_body<'s>(
        &self,
        state: &'s State,
        claims: Claims,
        labels: &Labels,
        client: IpAddr,
    ) -> (String, Sent<'s>) {
        // Claims are checked to iPXE's shapes (route.rs), so `who` is safe in
        // a script comment and a log line.
        let who = who(claims.mac, client);
        let m = Machine { claims, source: Some(client), labels: labels.clone() };
        let Some(group) = state.machines.select(&m) else {
            let warn = format!("unknown machine: {who} (no group matches, no default group)");
            return (self.unknown(state, &format!("no group matches this machine ({who})"), labels), Sent::Warn(warn));
        };
        // Why a group cannot boot (a profile's parse error, a store path) is
        // for the server's log: the client is unauthenticated and only
        // learns that it should wait.
        let wait = |why: String| {
            let told = format!("group {} cannot boot yet; the reason is in the server's log", group.name);
            (self.unknown(state, &told, labels), Sent::Warn(format!("{who} -> group {}: {why}", group.name)))
        };
        let Some(target) = state.group(group) else {
            return wait("no target".into());
        };
        let how = (group.kernel_args.as_str(), group.verify);
        match self.boot_script(state, target, &group.name, &who, how, &group.vars) {
            // A script is only made for a target with an entry.
            Ok(s) => match &target.entry {
                Ok(e) => (s, Sent::Boot(Boot { profile: &target.profile, group: &group.name, entry: e.name.as_str() })),
                Err(why) => wait(why.clone()),
            },
            Err(e) => wait(e),
        }
    }

    fn machine_script(&self, state: &State, claims: Claims, labels: Labels, client: IpAddr) -> Response<Body> {
        let (mac, hostname) = (claims.mac, claims.hostname.clone());
        let (body, sent) = self.machine_body(state, claims, &labels, client);
        let to = match &sent {
            Sent::Boot(b) => Ok((b.group, b.entry)),
            Sent::Warn(w) => Err(w.as_str()),
        };
        self.status.script(mac, client, hostname.as_deref(), &labels, to);
        match sent {
            Sent::Boot(b) => {
                // A boot event: one line per step (script here, each file in `artifact`).
                self.metrics.boot(b.profile, b.group);
                // Fields as `str`s: each `%` one cost ~450 instructions of core::fmt.
                let mac_text = mac.map(|m| m.text());
                let mac = mac_text.as_ref().and_then(|t| std::str::from_utf8(t).ok()).unwrap_or("?");
                let source = AddrText::of(client);
                tracing::info!(
                    step = "script",
                    mac,
                    source = source.as_str(),
                    group = b.group,
                    entry = b.entry,
                    "boot step"
                );
            }
            Sent::Warn(w) => tracing::warn!("{w}"),
        }
        Self::script(body)
    }

    /// `/profiles/<name>/boot.ipxe`: the script, or the answer refusing it.
    fn profile_body(&self, state: &State, name: &str, client: IpAddr) -> Result<(String, String), Denied> {
        let Some(target) = state.profiles.get(name) else {
            return Err(Denied::NotFound(format!("no profile {name} is served here")));
        };
        if !state.may_boot_profile(client, name) {
            tracing::info!(%client, "refused: no group that boots {name} admits this client");
            return Err(Denied::Forbidden);
        }
        let group = format!("profile:{name}");
        match self.boot_script(state, target, &group, "any machine", ("", false), &BTreeMap::new()) {
            Ok(s) => Ok((s, target.profile.clone())),
            Err(e) => {
                tracing::warn!(%client, "{group}: {e}");
                Err(Denied::Unavailable(format!("profile {name} cannot boot yet; the reason is in the server's log")))
            }
        }
    }

    fn profile_script(&self, state: &State, name: &str, client: IpAddr) -> Response<Body> {
        match self.profile_body(state, name, client) {
            Ok((s, profile)) => {
                self.metrics.boot(&profile, &format!("profile:{name}"));
                Self::script(s)
            }
            Err(d) => d.response(),
        }
    }

    /// `<path>.sig`: the signature of what `of` answers this client.
    async fn signature(self: &Arc<Self>, state: &State, of: Route, client: IpAddr) -> Response<Body> {
        let Some(signer) = state.signer.clone() else {
            return text(StatusCode::NOT_FOUND, "not found (no [ipxe_signing] in the machines file)\n");
        };
        let sig = match of {
            Route::Chain { labels } => signer.script(&self.chain(state, &labels)).await,
            Route::Machine { claims, labels } => {
                signer.script(&self.machine_body(state, claims, &labels, client).0).await
            }
            Route::Profile { name } => match self.profile_body(state, &name, client) {
                Ok((s, _)) => signer.script(&s).await,
                Err(d) => return d.response(),
            },
            Route::Artifact { entry, file, .. } => {
                let (path, size) = match self.allowed_file(state, client, &entry, &file) {
                    Ok(a) => (a.entry.path.join(a.art.file.as_str()), a.art.size),
                    Err(d) => return d.response(),
                };
                signer.file(path, size).await
            }
            _ => return text(StatusCode::NOT_FOUND, "not found\n"),
        };
        match sig {
            Ok(sig) => {
                let mut r = whole(sig, "application/pkcs7-signature");
                r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            Err(e) => {
                tracing::error!(%client, "signing for imgverify: {}", crate::model::Chain(&e));
                text(StatusCode::SERVICE_UNAVAILABLE, "cannot sign (see the server's log)\n")
            }
        }
    }

    /// An entry's file, if this client may download it: the entry is
    /// served, the manifest lists the file, and a group hands it to the client.
    fn allowed_file<'s>(
        &self,
        state: &'s State,
        client: IpAddr,
        entry: &EntryName,
        file: &ArtifactFile,
    ) -> Result<Allowed<'s>, Denied> {
        let not_found = || Denied::NotFound("not found".into());
        let Some(e) = state.entries.get(entry.as_str()) else { return Err(not_found()) };
        let Some(art) = e.manifest.file(file.as_str()) else { return Err(not_found()) };
        let Some(group) = state.download_group(client, &e.name, art) else {
            tracing::info!(%client, "refused: {}/{} is not for this client", e.name, art.file);
            return Err(Denied::Forbidden);
        };
        Ok(Allowed { entry: e, art, group })
    }

    async fn artifact(
        self: &Arc<Self>,
        state: &State,
        client: IpAddr,
        entry: &EntryName,
        file: &ArtifactFile,
        cond: &Conditions,
        head: bool,
    ) -> Response<Body> {
        let Allowed { entry: e, art, group } = match self.allowed_file(state, client, entry, file) {
            Ok(found) => found,
            Err(d) => return d.response(),
        };
        if !head {
            let step = format!("{:?}", art.name).to_lowercase();
            tracing::info!(step = %step, source = %Shown(client), group = %group, entry = %e.name, file = %art.file, "boot step");
        }
        let what = format!("{}/{}", e.name, art.file);
        let step = match art.name {
            ArtifactName::Kernel => Some(Step::Kernel),
            ArtifactName::Initrd => Some(Step::Initrd),
            ArtifactName::Uki => Some(Step::Uki),
            _ => None,
        };
        let on_end = step.filter(|_| !head).map(|step| {
            self.status.file(client, group, &e.name, step);
            let status = self.status.clone();
            Box::new(move |bytes, whole| status.sent(client, step, bytes, whole)) as super::http::stream::OnEnd
        });
        self.send_file(&what, e.path.join(art.file.as_str()), (art.size, &art.blake3), cond, head, on_end).await
    }

    /// Sends `path`, which its record says is `size` bytes with BLAKE3
    /// `blake3`, as the method, conditionals and ranges ask.
    async fn send_file(
        self: &Arc<Self>,
        what: &str,
        path: std::path::PathBuf,
        (size, blake3): (u64, &str),
        cond: &Conditions,
        head: bool,
        on_end: Option<super::http::stream::OnEnd>,
    ) -> Response<Body> {
        let not_found = || text(StatusCode::NOT_FOUND, "not found\n");
        let meta = FileMeta {
            size,
            etag: format!("\"{blake3}\""),
            content_type: if what.ends_with(".ipxe") {
                "text/plain; charset=utf-8"
            } else {
                "application/octet-stream"
            },
        };
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&meta.etag) {
            headers.insert(header::ETAG, v);
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let (status, body) = match respond::decide(&meta, cond) {
            Decision::NotModified => (StatusCode::NOT_MODIFIED, empty_body()),
            Decision::Unsatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
                (StatusCode::RANGE_NOT_SATISFIABLE, empty_body())
            }
            Decision::Send { status, content_type, content_range, parts, len } => {
                // The path comes from a checked manifest; still refuse anything but a
                // plain file of the size the manifest promises (no symlinks out of the store).
                let opened = match super::http::stream::open(&self.chunks, path, size, blake3).await {
                    Ok(f) => f,
                    Err(err) => {
                        if err.kind() == std::io::ErrorKind::InvalidData {
                            self.metrics.corrupt_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        tracing::error!("refusing {what}: {err}");
                        return not_found();
                    }
                };
                if let Ok(v) = HeaderValue::from_str(&content_type) {
                    headers.insert(header::CONTENT_TYPE, v);
                }
                if let Some(v) = content_range.and_then(|cr| HeaderValue::from_str(&cr).ok()) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                let body = if head {
                    empty_body()
                } else {
                    super::http::stream::body(&self.chunks, &self.metrics, opened, parts, on_end)
                };
                (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body)
            }
        };
        let mut r = Response::new(body);
        *r.status_mut() = status;
        *r.headers_mut() = headers;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let p: IpAddr = "10.0.0.1".parse().unwrap();
        let t = nets(&["10.0.0.0/24"]);
        assert_eq!(
            forwarded_client("192.0.2.9".parse().unwrap(), &["10.9.9.9"], &t),
            "192.0.2.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(forwarded_client(p, &["198.51.100.7"], &t), "198.51.100.7".parse::<IpAddr>().unwrap());
        // The right-most untrusted hop: earlier hops could be forged by the client.
        assert_eq!(
            forwarded_client(p, &["1.1.1.1, 198.51.100.7, 10.0.0.2"], &t),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(forwarded_client(p, &["1.1.1.1", "198.51.100.7"], &t), "198.51.100.7".parse::<IpAddr>().unwrap());
        // A hop that does not parse stops the walk at the last good one.
        assert_eq!(forwarded_client(p, &["198.51.100.7, junk"], &t), p);
        assert_eq!(forwarded_client(p, &[], &t), p);
    }

    #[test]
    fn addresses_are_shown_as_std_shows_them() {
        let mut all: Vec<IpAddr> = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "192.168.1.10",
            "::1",
            "fe80::1:2",
            "::ffff:10.1.2.3",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        all.extend((0..=255u8).map(|o| IpAddr::from([o, 255 - o, o / 7, 99])));
        for a in all {
            assert_eq!(Shown(a).to_string(), a.to_string());
        }
        assert_eq!(format!("[{:>9}]", Shown(IpAddr::from([1, 2, 3, 4]))), "[  1.2.3.4]");
    }

    #[test]
    fn ipv4_mapped_addresses_match_ipv4_networks() {
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let t = nets(&["10.0.0.0/24"]);
        assert_eq!(forwarded_client(mapped, &["::ffff:198.51.100.7"], &t), "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(forwarded_client(mapped, &[], &nets(&[])), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_forwarded_for_parser_never_panics_and_only_returns_what_it_was_given() {
        use proptest::prelude::*;
        proptest!(ProptestConfig::with_cases(2000), |(hops in prop::collection::vec("[0-9a-f:., ]{0,40}", 0..6), peer in any::<[u8; 4]>())| {
            let peer = IpAddr::from(peer);
            let xff: Vec<&str> = hops.iter().map(String::as_str).collect();
            let got = forwarded_client(peer, &xff, &nets(&["0.0.0.0/0", "::/0"]));
            let named = got == peer || hops.iter().flat_map(|h| h.split(',')).any(|h| h.trim().parse::<IpAddr>().is_ok_and(|ip| ip.to_canonical() == got));
            prop_assert!(named, "{got} is neither the peer nor a hop");
        });
    }
}
