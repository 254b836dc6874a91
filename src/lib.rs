//! Kindling: bare-metal boot provisioning in one daemon.
//!
//! # Layout
//! Layers, bottom to top; a module uses only modules of lower layers (`tests/layering.rs`
//! enforces it and holds the table):
//!
//! 1. leaves: [`mac`], [`time_fmt`], [`diag`] (file:line diagnostics), [`net`] (sockets,
//!    interfaces, backoff), [`metrics`] (Prometheus).
//! 2. pure decisions: [`pxe`] (the PXE client classifier), [`boot_state`] (the boot-state
//!    machine).
//! 3. [`events`]: typed events and the bus that carries them.
//! 4. [`config`]: `kindling.toml`, plain types, defaults and range checks.
//! 5. [`render`]: the template engine (minijinja, strict, sandboxed) and Ignition validation;
//!    [`bmc`]: the Redfish client of machines' BMCs; [`cluster`]: etcd membership.
//! 6. [`profiles`]: the model, loading, selectors, the documents a machine is served, hot
//!    reload ([`profiles::watch`]) and adoption.
//! 7. [`inventory`]: one durable record per machine, its boot state and history, what it is
//!    served next ([`inventory::plan`]), the store behind it.
//! 8. [`ctx`]: what every service is given.
//! 9. services: [`dhcp`], [`dns`], [`tftp`], [`http`] (boot endpoints, assets, the REST API),
//!    [`wol`].
//! 10. [`app`]: validate, bind, start, supervise; adapters between services.
//! 11. [`cli`]: the command line and the API client.

pub mod app;
pub mod bmc;
pub mod boot_state;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod ctx;
pub mod dhcp;
pub mod diag;
pub mod digest;
pub mod dns;
pub mod events;
pub mod http;
pub mod inventory;
pub mod mac;
pub mod metrics;
pub mod net;
pub mod power;
pub mod profiles;
pub mod pxe;
pub mod render;
#[cfg(test)]
mod testkit;
pub mod tftp;
pub mod time_fmt;
pub mod wol;
