//! A read-only TFTP server for the iPXE loaders and nothing else.

use crate::serve::boot::loaders::{Loader, Loaders};
use crate::serve::http::metrics::Metrics;
use anyhow::Context;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Serves only the loaders, from memory: any other name is "file not
/// found", and writes are refused. Counts in the server's metrics.
struct LoaderFiles(Loaders, Arc<Metrics>);

impl async_tftp::server::Handler for LoaderFiles {
    type Reader = futures_lite::io::Cursor<bytes::Bytes>;
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
        let b = self.0.get(l);
        self.1.tftp(l.file_name(), "sent");
        tracing::info!(%client, "TFTP: sending {} ({} bytes)", l.file_name(), b.len());
        let len = b.len() as u64;
        Ok((futures_lite::io::Cursor::new(b), Some(len)))
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
) -> anyhow::Result<async_tftp::server::TftpServer<impl async_tftp::server::Handler>> {
    let server = async_tftp::server::TftpServerBuilder::with_handler(LoaderFiles(loaders, counts_in))
        .bind(SocketAddr::from((addr, port)))
        .timeout(Duration::from_secs(2))
        .max_send_retries(TFTP_RETRIES)
        .block_size_limit(TFTP_MAX_BLOCK)
        .window_size_limit(TFTP_MAX_WINDOW)
        .build()
        .await
        .with_context(|| format!("TFTP on {addr}:{port}"))?;
    tracing::info!("TFTP on {addr}:{port} (loaders only, read-only)");
    Ok(server)
}
