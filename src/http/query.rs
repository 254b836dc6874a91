//! Parsing a boot request's query string into [`Facts`].

use crate::mac::{MacAddr, MacParseError};
use crate::profiles::Facts;

/// Why a boot request's query names no machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QueryError {
    /// No `mac`.
    #[error("missing mac query parameter (e.g. ?mac=52:54:00:12:34:56)")]
    MissingMac,
    /// A `mac` that is not one.
    #[error(transparent)]
    BadMac(#[from] MacParseError),
}

/// Parse `mac=..&uuid=..&arch=..&...`. `mac` is required; empty values count as absent (iPXE
/// sends `uuid=` when the machine has none); every parameter is also kept as a label.
pub(crate) fn facts(query: &str) -> Result<Facts, QueryError> {
    let mut mac = None;
    let mut facts = Facts::from_mac(MacAddr([0; 6]));
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let value = value.trim();
        if value.is_empty() || key.is_empty() {
            continue;
        }
        match &*key {
            "mac" => {
                mac = Some(value.parse::<MacAddr>()?);
            }
            "uuid" => facts.uuid = Some(value.to_ascii_lowercase()),
            "arch" => facts.arch = Some(value.to_ascii_lowercase()),
            "platform" => facts.platform = Some(value.to_ascii_lowercase()),
            "hostname" => facts.hostname = Some(value.to_string()),
            _ => {}
        }
        facts.labels.insert(key.into_owned(), value.to_string());
    }
    facts.mac = mac.ok_or(QueryError::MissingMac)?;
    if let Some(m) = facts.labels.get_mut("mac") {
        *m = facts.mac.to_string();
    }
    Ok(facts)
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
