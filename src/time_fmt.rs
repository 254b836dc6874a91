//! RFC 3339 timestamps in JSON (`2026-11-21T06:33:15Z`), for `SystemTime` fields.

use std::time::SystemTime;

use serde::Serializer;

/// Format a time as RFC 3339 in UTC, to the second.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Serialize a `SystemTime` as RFC 3339.
pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_seconds(*t))
}

/// For `Option<SystemTime>` fields.
pub mod option {
    use super::*;

    /// Serialize an optional `SystemTime` as RFC 3339 or null.
    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(&humantime::format_rfc3339_seconds(*t)),
            None => s.serialize_none(),
        }
    }
}
