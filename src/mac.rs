//! `MacAddr`: the one way a hardware address is held, parsed and printed.
//!
//! Machines identify themselves by MAC in every protocol, and each spells it differently:
//! iPXE's `${mac}` gives `52:54:00:12:34:56`, `${mac:hexhyp}` gives `52-54-00-12-34-56`,
//! operators type either in any case. All of them parse to the same value; it prints in
//! lower-case colon form everywhere (logs, templates, API).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 48-bit Ethernet hardware address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// Why a string is not a MAC address (or MAC prefix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {input:?}: expected six hex byte pairs separated by ':' or '-'")]
pub struct MacParseError {
    input: String,
}

impl MacAddr {
    /// The address as `52-54-00-12-34-56` (iPXE's `hexhyp`, Matchbox's file names).
    pub fn to_hyphen_string(&self) -> String {
        self.to_string().replace(':', "-")
    }

    /// Whether the address starts with `prefix` (one to five bytes).
    pub fn has_prefix(&self, prefix: &MacPrefix) -> bool {
        self.0.starts_with(prefix.bytes())
    }
}

/// Parse `N` hex byte pairs separated consistently by ':' or '-' (or one hex run of 2N digits).
fn parse_bytes(s: &str, out: &mut [u8]) -> Option<()> {
    let s = s.trim();
    let sep = if s.contains(':') {
        Some(':')
    } else if s.contains('-') {
        Some('-')
    } else {
        None
    };
    let mut n = 0;
    match sep {
        Some(sep) => {
            for part in s.split(sep) {
                if part.len() != 2 || n >= out.len() {
                    return None;
                }
                out[n] = u8::from_str_radix(part, 16).ok()?;
                n += 1;
            }
        }
        None => {
            if s.len() != out.len() * 2 || !s.is_ascii() {
                return None;
            }
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
            }
            n = out.len();
        }
    }
    (n == out.len()).then_some(())
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 6];
        parse_bytes(s, &mut bytes)
            .map(|()| MacAddr(bytes))
            .ok_or_else(|| MacParseError {
                input: s.to_string(),
            })
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The first one to five bytes of a MAC address, e.g. a vendor OUI `52:54:00`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MacPrefix {
    bytes: [u8; 5],
    len: usize,
}

impl MacPrefix {
    /// The prefix bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Whether one prefix is a prefix of the other (a MAC could match both).
    pub fn overlaps(&self, other: &MacPrefix) -> bool {
        let n = self.len.min(other.len);
        self.bytes[..n] == other.bytes[..n]
    }
}

impl FromStr for MacPrefix {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError {
            input: s.to_string(),
        };
        let sep = if s.contains('-') { '-' } else { ':' };
        let len = s.trim().split(sep).count();
        if !(1..=5).contains(&len) {
            return Err(err());
        }
        let mut bytes = [0u8; 5];
        parse_bytes(s, &mut bytes[..len]).ok_or_else(err)?;
        Ok(MacPrefix { bytes, len })
    }
}

impl fmt::Display for MacPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.bytes().iter().map(|b| format!("{b:02x}")).collect();
        f.write_str(&parts.join(":"))
    }
}

impl fmt::Debug for MacPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling_to_one_value() {
        let want = MacAddr([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
        for s in [
            "52:54:00:ab:cd:ef",
            "52-54-00-AB-CD-EF",
            "52:54:00:AB:cd:EF",
            "525400abcdef",
            " 52:54:00:ab:cd:ef ",
        ] {
            assert_eq!(s.parse::<MacAddr>().unwrap(), want, "{s}");
        }
        assert_eq!(want.to_string(), "52:54:00:ab:cd:ef");
        assert_eq!(want.to_hyphen_string(), "52-54-00-ab-cd-ef");
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:ef:01",
            "52:54:00:ab:cd:eg",
            "52:54:00-ab:cd:ef",
            "5:54:00:ab:cd:ef0",
            "525400abcde",
            "ééééééééééé",
            "52::54:00:ab:cd",
        ] {
            assert!(s.parse::<MacAddr>().is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn prefixes() {
        let p: MacPrefix = "52:54:00".parse().unwrap();
        assert!(
            "52:54:00:01:02:03"
                .parse::<MacAddr>()
                .unwrap()
                .has_prefix(&p)
        );
        assert!(
            !"52:54:01:01:02:03"
                .parse::<MacAddr>()
                .unwrap()
                .has_prefix(&p)
        );
        assert!(p.overlaps(&"52:54".parse().unwrap()));
        assert!(!p.overlaps(&"52:55".parse().unwrap()));
        assert!("52:54:00:01:02:03".parse::<MacPrefix>().is_err());
        assert!("".parse::<MacPrefix>().is_err());
        assert_eq!(p.to_string(), "52:54:00");
    }
}
