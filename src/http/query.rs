//! Parsing a boot request's query string into [`Facts`].

use crate::mac::{MacAddr, MacParseError};
use crate::profiles::Facts;
use std::borrow::Cow;

/// Why a boot request's query is refused (400, with this as the reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QueryError {
    /// No `mac`.
    #[error("missing mac query parameter (e.g. ?mac=52:54:00:12:34:56)")]
    MissingMac,
    /// A `mac` that is not one.
    #[error(transparent)]
    BadMac(#[from] MacParseError),
    /// The query is longer than [`MAX_QUERY`].
    #[error("the query is longer than {MAX_QUERY} bytes")]
    TooLong,
    /// More than [`MAX_PARAMS`] parameters.
    #[error("more than {MAX_PARAMS} query parameters")]
    TooMany,
    /// A parameter name outside the charset or too long.
    #[error("parameter name {0:?}: letters, digits, '_', '-' and '.', at most {MAX_KEY}")]
    BadKey(String),
    /// A value that fails its field's check.
    #[error("{key}: {why}")]
    BadValue {
        /// The parameter.
        key: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// The longest query accepted (iPXE's chain query is a few hundred bytes).
pub(crate) const MAX_QUERY: usize = 4096;
/// The most parameters accepted.
pub(crate) const MAX_PARAMS: usize = 32;
/// The longest parameter name.
pub(crate) const MAX_KEY: usize = 32;
/// The longest value of a free-form fact (SMBIOS strings, labels).
pub(crate) const MAX_VALUE: usize = 128;

/// Parse `mac=..&uuid=..&arch=..&...`. `mac` is required; empty values count as absent (iPXE
/// sends `uuid=` when the machine has none); every parameter is also kept as a label.
///
/// Every value is checked where it enters: a UUID is 32 hex digits (with dashes), `arch` and
/// `platform` are short lower-case words, `hostname` is an RFC 1123 name, `memory` a number,
/// any other value at most 128 characters without control characters. Nothing a request
/// carries can reach a log line, a template, the DNS zone or a terminal as a line break or an
/// escape sequence: such a request is refused with the reason.
/// The query's `key=value` pairs, percent-decoded. A `+` stays a `+`: iPXE's `uristring`
/// encodes a space as `%20` and leaves `+` alone (RFC 3986), so `Standard PC (Q35 + ICH9)`
/// arrives as `...Q35%20+%20ICH9...`; form decoding would turn the `+` into a space.
fn pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    fn decode(s: &str) -> Cow<'_, str> {
        percent_encoding::percent_decode_str(s).decode_utf8_lossy()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(move |p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), Cow::Borrowed("")),
        })
}

pub(crate) fn facts(query: &str) -> Result<Facts, QueryError> {
    if query.len() > MAX_QUERY {
        return Err(QueryError::TooLong);
    }
    let mut mac = None;
    let mut facts = Facts::from_mac(MacAddr([0; 6]));
    // The first value refused; a missing MAC is said first.
    let mut refused = None;
    for (n, (key, value)) in pairs(query).enumerate() {
        if n >= MAX_PARAMS {
            return Err(QueryError::TooMany);
        }
        if key != "mac" && refused.is_some() {
            continue;
        }
        match fact(&mut facts, &key, &value) {
            Ok(Some(m)) => mac = Some(m),
            Ok(None) => {}
            Err(e @ QueryError::BadMac(_)) => return Err(e),
            Err(e) => refused = refused.or(Some(e)),
        }
    }
    facts.mac = mac.ok_or(QueryError::MissingMac)?;
    if let Some(e) = refused {
        return Err(e);
    }
    if let Some(m) = facts.labels.get_mut("mac") {
        *m = facts.mac.to_string();
    }
    Ok(facts)
}

/// Check and keep one parameter; the MAC when it is `mac`.
fn fact(facts: &mut Facts, key: &str, value: &str) -> Result<Option<MacAddr>, QueryError> {
    {
        let value = value.trim();
        if value.is_empty() || key.is_empty() {
            return Ok(None);
        }
        let key_ok = key.len() <= MAX_KEY
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !key_ok {
            return Err(QueryError::BadKey(printable(key)));
        }
        let bad = |why| QueryError::BadValue {
            key: key.to_string(),
            why,
        };
        if value.chars().count() > MAX_VALUE {
            return Err(bad("longer than 128 characters"));
        }
        if value.chars().any(char::is_control) {
            return Err(bad("control characters are not allowed"));
        }
        // What iPXE would run rather than print, if a template put the value on a command
        // line: chained commands and variable expansion.
        if ["&&", "||", "${"].iter().any(|s| value.contains(s)) {
            return Err(bad(
                "'&&', '||' and '${' are not allowed (iPXE would run them)",
            ));
        }
        let mut mac = None;
        match key {
            "mac" => {
                mac = Some(value.parse::<MacAddr>()?);
            }
            "uuid" => {
                let lower = value.to_ascii_lowercase();
                let hex = lower.bytes().filter(|b| *b != b'-');
                if hex.clone().count() != 32 || !hex.clone().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("not a UUID (32 hex digits)"));
                }
                facts.uuid = Some(lower);
            }
            "arch" | "platform" => {
                let word = value.to_ascii_lowercase();
                if word.len() > 16 || !word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(bad("a short word of letters, digits and '_'"));
                }
                if key == "arch" {
                    facts.arch = Some(word);
                } else {
                    facts.platform = Some(word);
                }
            }
            "hostname" => {
                if !crate::profiles::valid_hostname(value) {
                    return Err(bad("not a host name"));
                }
                facts.hostname = Some(value.to_string());
            }
            "memory" if value.len() > 12 || !value.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(bad("not a number"));
            }
            _ => {}
        }
        facts.labels.insert(key.to_string(), value.to_string());
        Ok(mac)
    }
}

/// `s` with control characters shown as `?`, at most 64 characters: for messages.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipxe_chain_query() {
        let f = facts("mac=52-54-00-AB-CD-EF&uuid=&arch=x86_64&platform=efi&hostname=&serial=S%201&os=installed").unwrap();
        assert_eq!(f.mac.to_string(), "52:54:00:ab:cd:ef");
        assert_eq!(f.uuid, None);
        assert_eq!(f.arch.as_deref(), Some("x86_64"));
        assert_eq!(f.platform.as_deref(), Some("efi"));
        assert_eq!(f.hostname, None);
        assert_eq!(f.labels["serial"], "S 1");
        assert_eq!(f.labels["os"], "installed");
        assert_eq!(f.labels["mac"], "52:54:00:ab:cd:ef");
    }

    #[test]
    fn a_plus_is_a_plus_as_ipxe_sends_it() {
        let f = facts("mac=52:54:00:00:00:01&product=Standard%20PC%20(Q35%20+%20ICH9,%202009)")
            .unwrap();
        assert_eq!(f.labels["product"], "Standard PC (Q35 + ICH9, 2009)");
    }

    /// Values that could break a line (of a log, a script, a terminal) or bloat a record are
    /// refused with the reason.
    #[test]
    fn values_are_checked_where_they_enter() {
        let m = "mac=52:54:00:00:00:01";
        for (extra, why) in [
            ("hostname=evil%0Aexit", "hostname: control characters"),
            ("hostname=a%20b", "hostname: not a host name"),
            (
                "serial=S1%0D%0Achain%20http://x",
                "serial: control characters",
            ),
            ("product=%1B%5B31m", "product: control characters"),
            ("uuid=zz", "uuid: not a UUID"),
            ("arch=x86%0A_64", "arch: control characters"),
            ("arch=x86-64;rm", "arch: a short word"),
            ("memory=8G", "memory: not a number"),
            ("product=x%20%26%26%20chain%20http://evil/", "product: '&&'"),
            ("os=${net0/ip}", "os: '&&'"),
            ("bad%20key=1", "parameter name"),
        ] {
            let err = facts(&format!("{m}&{extra}")).unwrap_err().to_string();
            assert!(err.starts_with(why), "{extra}: {err}");
        }
        let long = format!("{m}&serial={}", "x".repeat(129));
        assert!(
            facts(&long)
                .unwrap_err()
                .to_string()
                .contains("longer than 128")
        );
        let many: String = (0..40).map(|i| format!("&k{i}=v")).collect();
        assert_eq!(facts(&format!("{m}{many}")), Err(QueryError::TooMany));
        let huge = format!("{m}&x={}", "y".repeat(5000));
        assert_eq!(facts(&huge), Err(QueryError::TooLong));
        // What iPXE sends passes.
        let f = facts(&format!(
            "{m}&uuid=03000200-0400-0500-0006-000700080009&arch=x86_64&platform=efi\
             &hostname=worker-1&serial=To%20Be%20Filled%20By%20O.E.M.&manufacturer=QEMU\
             &product=Standard%20PC%20(Q35%20%2B%20ICH9%2C%202009)&memory=384"
        ))
        .unwrap();
        assert_eq!(f.labels["product"], "Standard PC (Q35 + ICH9, 2009)");
    }

    #[test]
    fn rejects_missing_or_bad_mac() {
        assert!(facts("").unwrap_err().to_string().contains("missing mac"));
        assert!(
            facts("uuid=x")
                .unwrap_err()
                .to_string()
                .contains("missing mac")
        );
        assert!(
            facts("mac=nonsense")
                .unwrap_err()
                .to_string()
                .contains("invalid MAC")
        );
        assert!(facts("mac=52:54:00:00:00:01&mac=zz").is_err());
        assert!(facts("mac=%ZZ").is_err());
    }
}
