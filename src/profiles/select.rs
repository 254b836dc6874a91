//! Which profile a machine gets: selectors, their precedence, and the conflicts that are
//! load errors.
//!
//! A selector is a conjunction of conditions (exact MACs, UUIDs, a MAC prefix, architectures,
//! a firmware platform, labels). The most specific matching selector wins, compared in this
//! order: exact MAC, then UUID, then MAC-prefix length, then the number of arch/platform
//! conditions, then the number of labels. The default profile answers when nothing matches.
//! Two selectors in different profiles that are equally specific and could match the same
//! machine are a load error: the answer must never depend on file order.
//!
//! Labels follow Matchbox: they match the request's query parameters (`/ipxe?mac=..&os=installed`),
//! and later the facts DHCP learns (option 82 circuit-id and remote-id).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::mac::{MacAddr, MacPrefix};
pub use crate::pxe::{ARCHES, PLATFORMS};

/// What a request (or a DHCP packet) tells about a machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Facts {
    /// The machine's MAC address.
    pub mac: MacAddr,
    /// SMBIOS UUID, lower case, when known.
    pub uuid: Option<String>,
    /// iPXE `${buildarch}`: `x86_64`, `i386`, `arm64`, ...
    pub arch: Option<String>,
    /// iPXE `${platform}`: `pcbios` or `efi`.
    pub platform: Option<String>,
    /// The hostname the machine reported (not the one a profile assigns).
    pub hostname: Option<String>,
    /// Every other key=value the request carried: matched by label selectors and available to
    /// templates as `query`.
    pub labels: BTreeMap<String, String>,
    /// The machine's per-boot secret, when it is being served to the machine itself: put into
    /// the URLs templates hand it (`ignition_url`, `report_url`, ...). Not a selector fact.
    pub secret: Option<String>,
}

impl Facts {
    /// Facts holding only a MAC address.
    pub fn from_mac(mac: MacAddr) -> Self {
        Facts {
            mac,
            uuid: None,
            arch: None,
            platform: None,
            hostname: None,
            labels: BTreeMap::new(),
            secret: None,
        }
    }
}

/// The conditions of one selector; an absent condition matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    /// The machine's MAC is one of these.
    pub macs: BTreeSet<MacAddr>,
    /// The machine's UUID is one of these (lower case).
    pub uuids: BTreeSet<String>,
    /// The machine's MAC starts with this.
    pub mac_prefix: Option<MacPrefix>,
    /// The machine's arch is one of these.
    pub arches: BTreeSet<String>,
    /// The machine's firmware platform is this.
    pub platform: Option<String>,
    /// Every one of these labels is present with this value.
    pub labels: BTreeMap<String, String>,
}

/// How specific a selector is; greater wins. Field order is precedence order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    exact_mac: bool,
    uuid: bool,
    prefix_len: usize,
    firmware: usize,
    labels: usize,
}

impl Conditions {
    /// Whether a machine with these facts satisfies every condition.
    pub fn matches(&self, f: &Facts) -> bool {
        (self.macs.is_empty() || self.macs.contains(&f.mac))
            && (self.uuids.is_empty() || f.uuid.as_ref().is_some_and(|u| self.uuids.contains(u)))
            && self.mac_prefix.as_ref().is_none_or(|p| f.mac.has_prefix(p))
            && (self.arches.is_empty() || f.arch.as_ref().is_some_and(|a| self.arches.contains(a)))
            && self
                .platform
                .as_ref()
                .is_none_or(|p| f.platform.as_ref() == Some(p))
            && self.labels.iter().all(|(k, v)| f.labels.get(k) == Some(v))
    }

    /// The precedence rank of this selector.
    pub fn specificity(&self) -> Specificity {
        Specificity {
            exact_mac: !self.macs.is_empty(),
            uuid: !self.uuids.is_empty(),
            prefix_len: self.mac_prefix.as_ref().map_or(0, |p| p.bytes().len()),
            firmware: usize::from(!self.arches.is_empty()) + usize::from(self.platform.is_some()),
            labels: self.labels.len(),
        }
    }

    /// Whether some machine could satisfy both `self` and `other`.
    pub fn could_overlap(&self, other: &Conditions) -> bool {
        let sets_meet =
            |a: &BTreeSet<_>, b: &BTreeSet<_>| a.is_empty() || b.is_empty() || !a.is_disjoint(b);
        let macs_meet = match (self.macs.is_empty(), other.macs.is_empty()) {
            (false, false) => !self.macs.is_disjoint(&other.macs),
            _ => true,
        };
        let prefix_ok = |macs: &BTreeSet<MacAddr>, prefix: &Option<MacPrefix>| {
            macs.is_empty()
                || prefix
                    .as_ref()
                    .is_none_or(|p| macs.iter().any(|m| m.has_prefix(p)))
        };
        macs_meet
            && prefix_ok(&self.macs, &other.mac_prefix)
            && prefix_ok(&other.macs, &self.mac_prefix)
            && sets_meet(&self.uuids, &other.uuids)
            && match (&self.mac_prefix, &other.mac_prefix) {
                (Some(a), Some(b)) => a.overlaps(b),
                _ => true,
            }
            && sets_meet(&self.arches, &other.arches)
            && match (&self.platform, &other.platform) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
            && self
                .labels
                .iter()
                .all(|(k, v)| other.labels.get(k).is_none_or(|w| w == v))
    }
}

impl fmt::Display for Conditions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.macs.is_empty() {
            let macs: Vec<String> = self.macs.iter().map(|m| m.to_string()).collect();
            parts.push(format!("mac in [{}]", macs.join(", ")));
        }
        if !self.uuids.is_empty() {
            parts.push(format!(
                "uuid in [{}]",
                self.uuids.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some(p) = &self.mac_prefix {
            parts.push(format!("mac_prefix {p}"));
        }
        if !self.arches.is_empty() {
            parts.push(format!(
                "arch in [{}]",
                self.arches.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some(p) = &self.platform {
            parts.push(format!("platform {p}"));
        }
        for (k, v) in &self.labels {
            parts.push(format!("{k}={v}"));
        }
        if parts.is_empty() {
            f.write_str("(no conditions)")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn facts(m: &str) -> Facts {
        Facts::from_mac(mac(m))
    }

    #[test]
    fn absent_conditions_match_anything() {
        assert!(Conditions::default().matches(&facts("00:00:00:00:00:01")));
    }

    #[test]
    fn each_condition_must_hold() {
        let c = Conditions {
            mac_prefix: Some("52:54:00".parse().unwrap()),
            arches: ["x86_64".to_string()].into(),
            labels: [("os".to_string(), "installed".to_string())].into(),
            ..Default::default()
        };
        let mut f = facts("52:54:00:00:00:01");
        assert!(!c.matches(&f), "no arch, no label");
        f.arch = Some("x86_64".into());
        assert!(!c.matches(&f), "no label");
        f.labels.insert("os".into(), "installed".into());
        assert!(c.matches(&f));
        f.arch = Some("arm64".into());
        assert!(!c.matches(&f));
    }

    #[test]
    fn precedence_order() {
        let exact = Conditions {
            macs: [mac("52:54:00:00:00:01")].into(),
            ..Default::default()
        };
        let uuid = Conditions {
            uuids: ["u".to_string()].into(),
            ..Default::default()
        };
        let long = Conditions {
            mac_prefix: Some("52:54:00:00".parse().unwrap()),
            ..Default::default()
        };
        let short = Conditions {
            mac_prefix: Some("52:54".parse().unwrap()),
            ..Default::default()
        };
        let arch = Conditions {
            arches: ["x86_64".to_string()].into(),
            ..Default::default()
        };
        let label = Conditions {
            labels: [("a".to_string(), "b".to_string())].into(),
            ..Default::default()
        };
        let mut exact_label = exact.clone();
        exact_label.labels = label.labels.clone();
        let order = [
            &exact_label,
            &exact,
            &uuid,
            &long,
            &short,
            &arch,
            &label,
            &Conditions::default(),
        ];
        for pair in order.windows(2) {
            assert!(
                pair[0].specificity() > pair[1].specificity(),
                "{} !> {}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn overlap_detection() {
        let p1 = Conditions {
            mac_prefix: Some("52:54:00".parse().unwrap()),
            ..Default::default()
        };
        let p2 = Conditions {
            mac_prefix: Some("52:54:01".parse().unwrap()),
            ..Default::default()
        };
        assert!(!p1.could_overlap(&p2));
        assert!(p1.could_overlap(&p1.clone()));
        let a = Conditions {
            arches: ["x86_64".to_string()].into(),
            ..Default::default()
        };
        let b = Conditions {
            arches: ["arm64".to_string()].into(),
            ..Default::default()
        };
        assert!(!a.could_overlap(&b));
        let l1 = Conditions {
            labels: [("rack".to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        let l2 = Conditions {
            labels: [("rack".to_string(), "2".to_string())].into(),
            ..Default::default()
        };
        let l3 = Conditions {
            labels: [("role".to_string(), "x".to_string())].into(),
            ..Default::default()
        };
        assert!(!l1.could_overlap(&l2));
        assert!(l1.could_overlap(&l3), "a machine can carry both labels");
        let m = Conditions {
            macs: [mac("52:54:01:00:00:01")].into(),
            ..Default::default()
        };
        assert!(!m.could_overlap(&p1));
        assert!(m.could_overlap(&p2));
    }
}
