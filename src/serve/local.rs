//! An `imgd serve` on loopback, in this process, for machines qemu runs:
//! `imgd test --format ipxe` and `imgd compose`. Their NIC's iPXE firmware
//! netboots from it through a guestfwd relay on an isolated slirp link
//! (`restrict=on`), so a machine boots exactly what a fleet's would: the
//! chain script, its group's script, the kernel and initrd over HTTP.

use super::boot::BootError;
use super::boot::{machines, state};
use super::{Options, Server};
use std::path::Path;
use std::sync::Arc;

pub struct LocalServer {
    rt: tokio::runtime::Runtime,
    pub server: Arc<Server>,
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl LocalServer {
    /// Serves `groups` (each naming its entry in `store`) on a free
    /// loopback port until dropped.
    pub fn start(root: &Path, store: &Path, groups: Vec<machines::Group>) -> Result<LocalServer, BootError> {
        let sources = state::Sources {
            root: root.to_path_buf(),
            cache: crate::dirs::cache(),
            store: store.to_path_buf(),
            machines: None,
            serve_all: false,
            build_missing: false,
            remote_cache: None,
        };
        let st = state::load(&sources, Some(machines::MachinesFile { groups, ..Default::default() }), None)?;
        let loopback = |source| BootError::Loopback { doing: "serving on loopback", source };
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(loopback)?;
        let tcp = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).map_err(loopback)?;
        let port = tcp.local_addr().map_err(loopback)?.port();
        // qemu's guestfwd relay serves one guest connection at a time: a kept-alive
        // connection would hold back iPXE's next one until it timed out.
        let server = Server::new(st, Options { keep_alive: false, http_threads: 1, ..Options::default() });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let srv = server.clone();
        let handle = rt.spawn(async move {
            srv.listen(tcp, async {
                let _ = stopped.await;
            })
            .await
        });
        Ok(LocalServer { rt, server, port, stop: Some(stop), handle: Some(handle) })
    }

    /// What qemu's guestfwd runs per guest connection: this binary's
    /// `imgd relay` to the server (no commas: qemu option syntax).
    pub fn relay(&self) -> Result<String, BootError> {
        let exe = std::env::current_exe()
            .map_err(|source| BootError::Loopback { doing: "finding imgd's own binary", source })?;
        Ok(format!("{} relay 127.0.0.1:{}", exe.display(), self.port))
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = self.rt.block_on(h);
        }
    }
}
