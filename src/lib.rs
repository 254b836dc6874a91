//! Kindling: bare-metal boot provisioning in one daemon.
//!
//! # Layout
//! - [`config`]: `kindling.toml`, every key with its default; unknown keys are errors.
//! - [`profiles`]: profile TOML files, selectors and their precedence, validation with
//!   file:line errors, hot reload ([`profiles::watch`]).
//! - [`render`]: minijinja templates (strict, sandboxed) and Ignition validation.
//! - [`http`]: the Matchbox-compatible boot endpoints and static assets.
//! - [`inventory`]: what each machine has reported and been served.
//! - [`app`]: composition: bind, load, spawn services, graceful shutdown.
//! - [`mac`], [`diag`]: the `MacAddr` type and `file:line: message` diagnostics.
//!
//! DHCP, TFTP, DNS and Wake-on-LAN have config sections already and plug into [`app`] as
//! services beside HTTP.

pub mod app;
pub mod config;
pub mod dhcp;
pub mod diag;
pub mod http;
pub mod inventory;
pub mod mac;
pub mod net;
pub mod profiles;
pub mod render;
pub mod time_fmt;
