//! DHCP: how machines find Kindling.
//!
//! - [`decide`]: full-mode message handling (DORA, renew, rebind, decline, release, inform).
//! - [`leases`]: address allocation (reservations, reuse oldest-expired first, quarantine).
//! - [`reply`]: reply addressing (RFC 2131 §4.1), boot fields, padding; defensive reads.
//! - [`store`]: durable leases in redb, committed before the ACK.
//! - [`pxe`]: the PXE client classifier, a pure function from what a DHCP request says
//!   (options 60, 77, 93, 175) and the machine's profile to the boot file it gets, and why.
//!
//! The DHCP server itself (full, proxy and relay modes; leases) is the next step and plugs in
//! beside the HTTP service in [`crate::app`].

pub mod check;
pub mod decide;
pub mod leases;
pub mod proxy;
pub mod reply;
pub mod server;
pub mod store;
