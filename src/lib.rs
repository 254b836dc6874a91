//! Kindling: bare-metal boot provisioning in one daemon.
//!
//! # Layout
//! - [`config`]: `kindling.toml`, every key with its default; unknown keys are errors.
//! - [`profiles`]: profile TOML files, selectors and their precedence, validation with
//!   file:line errors, hot reload ([`profiles::watch`]).
//! - [`render`]: minijinja templates (strict, sandboxed) and Ignition validation.
//! - [`http`]: the Matchbox-compatible boot endpoints, static assets and the REST API
//!   (machines, next boot, adoption, wake, Server-Sent Events, OpenAPI).
//! - [`inventory`]: one durable record per machine, the boot-state machine
//!   ([`inventory::state`]), history and the transition events every service feeds.
//! - [`dhcp`]: full and proxy DHCP, relays, the PXE classifier, durable leases.
//! - [`dns`]: authoritative zones from profiles, leases and static records; forwarding for
//!   allowed clients (hickory-server).
//! - [`tftp`]: the TFTP service (RFC 1350 with blksize, tsize, timeout, windowsize).
//! - [`wol`]: Wake-on-LAN magic packets (UDP broadcast and raw EtherType 0x0842).
//! - [`metrics`]: Prometheus metrics at `/metrics`.
//! - [`client`]: the CLI's client of the API (`kindling machines|watch|wake`).
//! - [`app`]: composition: bind, load, spawn services, graceful shutdown.
//! - [`mac`], [`diag`], [`net`], [`time_fmt`]: shared types and helpers.

pub mod app;
pub mod boot_state;
pub mod client;
pub mod config;
pub mod ctx;
pub mod dhcp;
pub mod diag;
pub mod dns;
pub mod events;
pub mod http;
pub mod inventory;
pub mod mac;
pub mod metrics;
pub mod net;
pub mod profiles;
pub mod pxe;
pub mod render;
#[cfg(test)]
mod testkit;
pub mod tftp;
pub mod time_fmt;
pub mod wol;
