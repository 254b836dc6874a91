//! Kindling: bare-metal boot provisioning in one daemon.
//!
//! # Layout
//! - [`config`]: `kindling.toml`, every key with its default; unknown keys are errors.
//! - [`profiles`]: profile TOML files, selectors and their precedence, validation with
//!   file:line errors, hot reload ([`profiles::watch`]).
//! - [`render`]: minijinja templates (strict, sandboxed) and Ignition validation.
//! - [`http`]: the Matchbox-compatible boot endpoints and static assets.
//! - [`inventory`]: what each machine has reported and been served.
//! - [`dhcp`]: full and proxy DHCP, relays, the PXE classifier, durable leases.
//! - [`metrics`]: Prometheus metrics at `/metrics`.
//! - [`app`]: composition: bind, load, spawn services, graceful shutdown.
//! - [`mac`], [`diag`]: the `MacAddr` type and `file:line: message` diagnostics.
//!
//! TFTP, DNS and Wake-on-LAN have config sections already and plug into [`app`] as services
//! beside HTTP and DHCP.

pub mod app;
pub mod config;
pub mod dhcp;
pub mod diag;
pub mod http;
pub mod inventory;
pub mod mac;
pub mod metrics;
pub mod net;
pub mod profiles;
pub mod render;
pub mod tftp;
pub mod time_fmt;
pub mod wol;
