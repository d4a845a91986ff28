//! A read-only TFTP server for the iPXE loaders and nothing else.

use crate::serve::boot::loaders::{Loader, Loaders};
use crate::serve::boot::status::Status;
use crate::serve::http::metrics::Metrics;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

/// Transfers at once over all clients: each holds a socket (a file
/// descriptor) for as long as its client keeps it going, and
/// `listener::RESERVED_FDS` keeps room for them beside HTTP.
pub(crate) const TFTP_MAX_TRANSFERS: usize = 128;
/// Transfers at once from one client address: firmware fetches one loader
/// at a time, so more is a flood (one laptop must not take the service).
pub(crate) const TFTP_MAX_PER_CLIENT: usize = 4;
const _: () = assert!(TFTP_MAX_TRANSFERS as u64 + 64 <= crate::serve::http::listener::RESERVED_FDS);

/// Transfers in progress, in total and per client address.
#[derive(Default)]
struct Budget {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// A loader's bytes, holding its place in the budget until the transfer
/// ends (async-tftp drops the reader then, however it ends).
struct Metered {
    bytes: futures_lite::io::Cursor<bytes::Bytes>,
    _place: Place,
}

/// One transfer's place in the budget, given back when dropped.
struct Place {
    budget: Arc<Mutex<Budget>>,
    client: IpAddr,
}

impl futures_lite::AsyncRead for Metered {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.bytes).poll_read(cx, buf)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut b = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        b.total = b.total.saturating_sub(1);
        if let Some(n) = b.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                b.per_client.remove(&self.client);
            }
        }
    }
}

/// Serves only the loaders (see loaders.rs): any other name is "file not
/// found", and writes are refused. Counts in the server's metrics.
struct LoaderFiles(Loaders, Arc<Metrics>, Arc<Mutex<Budget>>, Arc<Status>);

impl LoaderFiles {
    /// A place for one more transfer from `client`, if the budget has one.
    fn admit(&self, client: IpAddr) -> Option<Place> {
        let mut b = self.2.lock().unwrap_or_else(|e| e.into_inner());
        let mine = b.per_client.get(&client).copied().unwrap_or(0);
        if b.total >= TFTP_MAX_TRANSFERS || mine >= TFTP_MAX_PER_CLIENT {
            return None;
        }
        b.total += 1;
        b.per_client.insert(client, mine + 1);
        Some(Place { budget: self.2.clone(), client })
    }
}

impl async_tftp::server::Handler for LoaderFiles {
    type Reader = Metered;
    type Writer = futures_lite::io::Sink;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), async_tftp::packet::Error> {
        let Some(l) = path.to_str().and_then(Loader::from_name) else {
            tracing::info!(%client, "TFTP: refused {:?}", path.to_string_lossy().escape_debug().to_string());
            self.1.tftp("-", "refused");
            return Err(async_tftp::packet::Error::FileNotFound);
        };
        // Admitted first: a client turned away costs no read of the file.
        let Some(place) = self.admit(client.ip()) else {
            // Debug, not info: a flood would otherwise flood the log too.
            tracing::debug!(%client, "TFTP: busy ({TFTP_MAX_PER_CLIENT} per client, {TFTP_MAX_TRANSFERS} in all)");
            self.1.tftp(l.file_name(), "busy");
            return Err(async_tftp::packet::Error::Msg("busy, try again".into()));
        };
        let b = match self.0.get(l).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(%client, "TFTP: cannot read {}: {e}", l.file_name());
                self.1.tftp(l.file_name(), "error");
                return Err(async_tftp::packet::Error::Msg("cannot read the file".into()));
            }
        };
        self.1.tftp(l.file_name(), "sent");
        self.3.loader(client.ip());
        tracing::info!(%client, "TFTP: sending {} ({} bytes)", l.file_name(), b.len());
        let len = b.len() as u64;
        let reader = Metered { bytes: futures_lite::io::Cursor::new(b), _place: place };
        Ok((reader, Some(len)))
    }

    async fn write_req_open(
        &mut self,
        _: &SocketAddr,
        _: &Path,
        _: Option<u64>,
    ) -> Result<Self::Writer, async_tftp::packet::Error> {
        self.1.tftp("-", "write_refused");
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
    counts_in: Arc<Metrics>,
    status: Arc<Status>,
) -> Result<async_tftp::server::TftpServer<impl async_tftp::server::Handler>, super::error::PxeError> {
    let files = LoaderFiles(loaders, counts_in, Arc::default(), status);
    let server = async_tftp::server::TftpServerBuilder::with_handler(files)
        .bind(SocketAddr::from((addr, port)))
        // 2 s per packet whatever the client's `timeout` option asks (up to
        // 255 s, RFC 2349): a client that stops acknowledging lets its
        // transfer go within about 12 s.
        .timeout(Duration::from_secs(2))
        .ignore_client_timeout()
        .max_send_retries(TFTP_RETRIES)
        .block_size_limit(TFTP_MAX_BLOCK)
        .window_size_limit(TFTP_MAX_WINDOW)
        .build()
        .await
        .map_err(|source| super::error::PxeError::Tftp { addr: SocketAddr::from((addr, port)), source })?;
    tracing::info!("TFTP on {addr}:{port} (loaders only, read-only)");
    Ok(server)
}
