//! `imgd serve --proxy-dhcp IFACE|ADDR`: the PXE room of the netboot server.
//! [`proxy_dhcp`] on ports 67 and 4011 of one interface (answers from
//! [`dhcp`], pure) and a read-only [`tftp`] server for the iPXE loaders, so
//! firmware that knows only DHCP + TFTP reaches `/boot.ipxe` with no dnsmasq
//! beside imgd. It asks the boot room which machine boots what, and counts
//! in the HTTP room's metrics.

pub mod dhcp;
mod error;
pub mod net;
pub mod proxy_dhcp;
pub mod tftp;

pub use error::PxeError;
pub use net::{resolve_interface, Config, DHCP_PORT, PXE_PORT, TFTP_PORT};
pub use proxy_dhcp::ProxyDhcp;
pub use tftp::{tftp, TFTP_MAX_BLOCK, TFTP_MAX_WINDOW, TFTP_RETRIES};
