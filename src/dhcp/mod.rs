//! DHCP: how machines find Kindling.
//!
//! - [`check`]: the `[dhcp]` section's meaning, checked before anything is served.
//! - [`decide`]: full-mode message handling (DORA, renew, rebind, decline, release, inform) and
//!   the subnet a request belongs to; pure, time passed in.
//! - [`proxy`]: proxy-DHCP answers (PXE 2.1); pure.
//! - [`leases`]: address allocation (reservations, reuse oldest-expired first, quarantine).
//! - [`reply`]: reply addressing (RFC 2131 §4.1), boot fields, padding; defensive reads.
//! - [`service`]: the per-packet path over the service's state: decode, rate-limit, classify
//!   (the PXE classifier is [`crate::pxe`]), decide; no sockets.
//! - [`server`]: the receive loops, the lease writer (group commit before the ACK), lease
//!   expiry and the profile follower.
//! - [`ndp`]: answers the IPv6 router solicitations of machines in their firmware, so that
//!   iPXE does not wait out its IPv6 configuration.
//! - [`store`]: durable leases behind the `LeaseStore` trait (redb), claimed before the ACK.

pub mod check;
pub mod decide;
pub mod leases;
pub mod ndp;
pub mod proxy;
pub mod reply;
pub mod server;
pub mod service;
pub mod store;
pub mod store_etcd;
#[cfg(test)]
pub(crate) mod testkit;
