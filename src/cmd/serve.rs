//! `imgd serve`: run the netboot server until SIGTERM/SIGINT; SIGHUP reloads
//! machines.toml (an invalid file is logged and the old one keeps serving).

use super::StoreArgs;
use anyhow::Context;
use clap::Args;
use imgd::serve::boot::loaders::Loaders;
use imgd::serve::boot::state::{self, Sources, State};
use imgd::serve::http::listener;
use imgd::serve::http::supervise::supervise;
use imgd::serve::{pxe, Options, Server};
use ipnet::IpNet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  imgd serve --config machines.toml
  imgd serve --config machines.toml --allow 10.0.0.0/8 --build
  imgd serve --serve-all --listen 127.0.0.1:8080
  imgd serve --config machines.toml --artifact-base-url https://bucket.s3.amazonaws.com/imgd
  imgd serve --config machines.toml --proxy-dhcp eth1

iPXE: chain http://SERVER:8080/boot.ipxe (e.g. as the DHCP boot file name).
PXE or UEFI HTTP boot firmware, with no DHCP boot options to set: --proxy-dhcp.")]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on (`[::]:8080` serves IPv4 and IPv6).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// machines.toml: which machine boots what.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Only these client networks may connect (repeatable); others get 403.
    #[arg(long = "allow", value_name = "CIDR")]
    pub allow: Vec<IpNet>,
    /// Proxies whose X-Forwarded-For is trusted (repeatable).
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub trusted_proxy: Vec<IpNet>,
    /// Rendered scripts fetch kernels and initrds from here instead (a mirror).
    #[arg(long)]
    pub artifact_base_url: Option<String>,
    /// Build referenced profiles that are missing from the store at start-up.
    #[arg(long)]
    pub build: bool,
    /// Shared build cache, s3://bucket/prefix: entries this server lacks are
    /// fetched from it (checked) instead of being missing; with --build,
    /// built only when it lacks them too.
    #[arg(long = "cache", env = "IMGD_BUILD_CACHE", value_name = "URL")]
    pub remote_cache: Option<String>,
    /// Serve every store entry, file and built profile to every client, not
    /// only what --config gives to whom.
    #[arg(long)]
    pub serve_all: bool,
    /// Folder holding profiles/ and hardware/.
    #[arg(long, env = "IMGD_ROOT", default_value = ".")]
    pub root: PathBuf,
    /// Connections beyond this get 503 with Retry-After (lowered to what the
    /// open-files limit allows).
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Threads serving HTTP connections, each taking new ones in turn
    /// (0: one per core). Fewer leave cores to other work on the machine.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub http_threads: usize,
    /// Seconds a connection may go with nothing to answer: a request head
    /// that never completes, a keep-alive connection with no next request
    /// (closed within a quarter of this after).
    #[arg(long, default_value_t = 10)]
    pub header_timeout: u64,
    /// Seconds a connection may sit with no bytes moving (it is closed
    /// within a quarter of this after).
    #[arg(long, default_value_t = 60)]
    pub idle_timeout: u64,
    /// Seconds shutdown waits for in-flight downloads.
    #[arg(long, default_value_t = 30)]
    pub drain: u64,
    /// MiB of artifact chunks shared by all downloads, those being sent
    /// included; past it, each download reads 16 KiB pieces of its own.
    /// Peak memory is about 12 MiB + this + 18 KiB per connection.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub cache_mib: u64,
    /// Answer PXE and UEFI HTTP boot firmware on this interface (name or
    /// one of its IPv4 addresses): proxyDHCP beside the site's DHCP server
    /// (never handing out addresses) and read-only TFTP for the iPXE
    /// loaders. Needs ports 67, 69 and 4011 (root or CAP_NET_BIND_SERVICE).
    #[arg(long, value_name = "IFACE|ADDR")]
    pub proxy_dhcp: Option<String>,
    /// Where the iPXE loaders (undionly.kpxe, snponly.efi) are.
    #[arg(long, value_name = "DIR", default_value = imgd::serve::boot::loaders::DEBIAN_IPXE_DIR)]
    pub ipxe_dir: PathBuf,
    /// Who may see /status and /status.json (repeatable; they name machines
    /// and addresses) [default: loopback only].
    #[arg(long = "status-allow", value_name = "CIDR")]
    pub status_allow: Vec<IpNet>,
    /// Machines the status table keeps (least recently seen dropped; a few
    /// hundred bytes each).
    #[arg(long, default_value_t = 10_000)]
    pub status_machines: usize,
    /// Seconds without progress after which a boot is shown as stuck.
    #[arg(long, default_value_t = 120)]
    pub status_stuck: u64,
}

/// Loads the state under the store's GC lock and roots what it serves, so an
/// `imgd gc` never removes an entry this server hands out.
fn load(sources: &Sources, root: &imgd::store::Root, previous: Option<&State>) -> anyhow::Result<State> {
    let store = imgd::store::Store::open(&sources.store)?;
    let _gc = store.gc_lock(false)?;
    let st = state::load(sources, None, previous)?;
    root.set(&st.served())?;
    for (g, t) in st.stale_groups() {
        let e = t.entry.as_ref().map_or("?", |e| e.name.as_str());
        tracing::warn!("group {g} boots {e}, not profile {}'s current build", t.profile);
    }
    Ok(st)
}

/// The PXE side's settings: the interface, and the HTTP address machines on
/// it reach (its address, the --listen port).
fn pxe_config(spec: &str, listen: &str) -> anyhow::Result<pxe::Config> {
    let (iface, addr) = pxe::resolve_interface(spec)?;
    let port = listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .with_context(|| format!("--listen {listen}: no port"))?;
    let http = std::net::SocketAddrV4::new(addr, port);
    Ok(pxe::Config { iface, addr, http })
}

/// Threads of the main runtime's blocking work at once (a reload's load;
/// artifact chunks are read on the HTTP threads' own, listener.rs).
const BLOCKING_THREADS: usize = 4;

pub fn run(a: &ServeArgs) -> anyhow::Result<()> {
    // Signals first: a SIGHUP that arrives while the store loads must not
    // kill the server (its default action), it is queued for the reloader.
    // One thread: it accepts, answers proxyDHCP and reloads; HTTP
    // connections are served by threads of their own, one per core
    // (serve/http/workers.rs).
    let rt =
        tokio::runtime::Builder::new_current_thread().max_blocking_threads(BLOCKING_THREADS).enable_all().build()?;
    use tokio::signal::unix::{signal, SignalKind};
    let (hup, mut term, mut int) = rt.block_on(async {
        anyhow::Ok((signal(SignalKind::hangup())?, signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?))
    })?;
    let sources = Sources {
        root: a.root.clone(),
        cache: imgd::dirs::cache(),
        store: a.store.dir(),
        machines: a.config.clone(),
        serve_all: a.serve_all,
        build_missing: a.build,
        remote_cache: a.remote_cache.clone(),
    };
    let store = imgd::store::Store::open(&sources.store)?;
    let root = store.gc_root(&format!("serve-{}", std::process::id()))?;
    let initial = load(&sources, &root, None)?;
    // The PXE side: where it listens, and the loaders it hands out.
    let pxe = match &a.proxy_dhcp {
        Some(spec) => Some((pxe_config(spec, &a.listen)?, imgd::serve::boot::loaders::Loaders::load(&a.ipxe_dir)?)),
        None => None,
    };
    let opts = Options {
        allow: a.allow.clone(),
        trusted_proxies: a.trusted_proxy.clone(),
        artifact_base_url: a.artifact_base_url.clone(),
        max_connections: listener::connections_that_fit(a.max_connections),
        http_threads: a.http_threads,
        header_timeout: Duration::from_secs(a.header_timeout),
        idle_timeout: Duration::from_secs(a.idle_timeout),
        drain: Duration::from_secs(a.drain),
        cache_bytes: (a.cache_mib << 20) as usize,
        loaders: pxe.as_ref().map(|(_, l)| l.clone()),
        status_machines: a.status_machines,
        status_stuck: Duration::from_secs(a.status_stuck),
        ..Options::default()
    };
    let opts = if a.status_allow.is_empty() { opts } else { Options { status_allow: a.status_allow.clone(), ..opts } };
    rt.block_on(async move {
        let tcp =
            tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("listening on {}", a.listen))?;
        let addr = tcp.local_addr()?;
        let server = Server::new(initial, opts);
        if let Some((cfg, loaders)) = pxe {
            start_pxe(cfg, loaders, &server).await?;
        }
        eprintln!("imgd serve: listening on http://{addr}");
        tracing::info!("serving {} group(s)", server.state().machines.groups.len());

        // The reloader is a part like proxyDHCP: if it ever stops, it is
        // started again (the signal stream outlives it).
        let (hup, root) = (Arc::new(tokio::sync::Mutex::new(hup)), Arc::new(root));
        let (reloader, metrics) = (server.clone(), server.metrics.clone());
        tokio::spawn(supervise("reload", metrics, move || {
            reload_on_sighup(hup.clone(), sources.clone(), root.clone(), reloader.clone())
        }));
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        server.listen(tcp, shutdown).await?;
        Ok(())
    })
}

/// Each SIGHUP loads the store and machines file afresh; a load that fails
/// keeps the previous configuration (the status page shows why).
async fn reload_on_sighup(
    hup: Arc<tokio::sync::Mutex<tokio::signal::unix::Signal>>,
    sources: Sources,
    root: Arc<imgd::store::Root>,
    server: Arc<Server>,
) -> anyhow::Result<()> {
    while hup.lock().await.recv().await.is_some() {
        let (src, root, previous) = (sources.clone(), root.clone(), server.state());
        match tokio::task::spawn_blocking(move || load(&src, &root, Some(&previous))).await {
            Ok(Ok(s)) => {
                server.replace_state(s);
                server.status.reloaded(None);
                tracing::info!("reloaded configuration");
            }
            Ok(Err(e)) => {
                server.status.reloaded(Some(format!("{e:#}")));
                tracing::error!("reload failed, still serving the previous configuration: {e:#}")
            }
            Err(e) => {
                server.status.reloaded(Some(e.to_string()));
                tracing::error!("reload failed: {e}")
            }
        }
    }
    anyhow::bail!("the SIGHUP stream ended")
}

/// proxyDHCP and TFTP, each kept running by a supervisor. Bound here first,
/// so a port in use fails at start-up; bound again whenever a part has to
/// be started afresh.
async fn start_pxe(cfg: pxe::Config, loaders: Loaders, server: &Server) -> anyhow::Result<()> {
    let cfg = std::sync::Arc::new(cfg);
    let mut proxy = Some(pxe::ProxyDhcp::bind(cfg.clone())?);
    let status = server.status.clone();
    let mut tftp =
        Some(pxe::tftp(cfg.addr, pxe::TFTP_PORT, loaders.clone(), server.metrics.clone(), status.clone()).await?);
    let (metrics, current) = (server.metrics.clone(), server.current());
    let (c, st) = (cfg.clone(), status.clone());
    tokio::spawn(supervise("proxydhcp", metrics.clone(), move || {
        let (first, cfg, metrics, current, st) =
            (proxy.take(), c.clone(), metrics.clone(), current.clone(), st.clone());
        async move {
            let proxy = match first {
                Some(p) => p,
                None => pxe::ProxyDhcp::bind(cfg)?,
            };
            proxy.run(metrics, current, st).await
        }
    }));
    let (metrics, addr) = (server.metrics.clone(), cfg.addr);
    tokio::spawn(supervise("tftp", metrics.clone(), move || {
        let (first, loaders, metrics, st) = (tftp.take(), loaders.clone(), metrics.clone(), status.clone());
        async move {
            let tftp = match first {
                Some(t) => t,
                None => pxe::tftp(addr, pxe::TFTP_PORT, loaders, metrics, st).await?,
            };
            let addr = std::net::SocketAddr::from((addr, pxe::TFTP_PORT));
            tftp.serve().await.map_err(|source| pxe::PxeError::Tftp { addr, source })
        }
    }));
    eprintln!("imgd serve: proxyDHCP and TFTP on {} ({})", cfg.iface, cfg.addr);
    Ok(())
}
