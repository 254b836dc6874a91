//! Power through the machine's BMC: a small typed Redfish client ([`redfish`]).
//!
//! Why not an existing crate: the Redfish crates on crates.io either generate the whole DMTF
//! schema (hundreds of types for the four calls Kindling makes) or are young and unmaintained.
//! The calls needed are few and stable since Redfish 1.0: the systems collection, one
//! `ComputerSystem` (`PowerState`, `Boot`, the `ComputerSystem.Reset` action and its allowed
//! values), a `POST` of the reset and a `PATCH` of the boot override. A typed module over
//! hyper and rustls keeps every call under one timeout and every failure a clear error that
//! names the BMC.

pub mod redfish;

pub use redfish::{Auth, Bmc, BmcError, BootOverride, Endpoint, PowerAction, PowerState, System};
