//! Which instance answers which client, when several serve one segment (the load-balancing
//! idea of RFC 3074 that Kea HA uses): a client's MAC falls into one of [`BUCKETS`] buckets,
//! and each bucket belongs to one live member, chosen by rendezvous hashing over the members'
//! names. Every instance computes the same table from the same member list, so each bucket is
//! answered by exactly one of them; when a member joins or leaves, only its own buckets move.
//!
//! A member that left keeps its buckets for the takeover delay (a restart or a short network
//! hiccup does not move its clients around); after that the others take them over. Time is
//! passed in, so the rules are tested without waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::mac::MacAddr;

/// Buckets clients are split into.
pub const BUCKETS: usize = 256;

fn fnv(parts: &[&[u8]]) -> u64 {
    crate::digest::fnv64(parts)
}

/// The bucket of `mac`.
pub fn bucket(mac: MacAddr) -> usize {
    (fnv(&[&mac.0]) % BUCKETS as u64) as usize
}

/// The owner of `bucket` among `members` (rendezvous: the highest hash of member and bucket).
pub fn owner<'a>(bucket: usize, members: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let b = (bucket as u16).to_be_bytes();
    members
        .into_iter()
        .max_by_key(|m| (fnv(&[m.as_bytes(), &b]), *m))
}

/// The buckets this instance answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    mine: Vec<bool>,
}

impl Share {
    /// Every bucket: a single instance answers everyone.
    pub fn all() -> Share {
        Share {
            mine: vec![true; BUCKETS],
        }
    }

    /// No bucket: an instance that has not yet seen its segment's members answers nobody
    /// (rather than everybody, beside a member that answers its share).
    pub fn none() -> Share {
        Share {
            mine: vec![false; BUCKETS],
        }
    }

    /// Whether this instance answers `mac`.
    pub fn answers(&self, mac: MacAddr) -> bool {
        self.mine[bucket(mac)]
    }

    /// Which buckets are this instance's, by number.
    pub fn buckets(&self) -> &[bool] {
        &self.mine
    }

    /// How many buckets are this instance's.
    pub fn count(&self) -> usize {
        self.mine.iter().filter(|m| **m).count()
    }
}

/// The members as this instance sees them: live ones, and ones that left less than the
/// takeover delay ago (still owning their buckets).
#[derive(Debug, Clone)]
pub struct Membership {
    me: String,
    takeover: Duration,
    live: BTreeSet<String>,
    left: BTreeMap<String, Instant>,
}

impl Membership {
    /// This instance (`me`) alone; departed members keep their buckets for `takeover`.
    pub fn new(me: &str, takeover: Duration) -> Membership {
        Membership {
            me: me.to_string(),
            takeover,
            live: BTreeSet::from([me.to_string()]),
            left: BTreeMap::new(),
        }
    }

    /// How long a departed member keeps its buckets.
    pub fn takeover(&self) -> Duration {
        self.takeover
    }

    /// `node` is live (its membership key exists).
    pub fn joined(&mut self, node: &str) {
        self.left.remove(node);
        self.live.insert(node.to_string());
    }

    /// The members are exactly `nodes` now (read after a gap in which changes may have been
    /// missed): the others left at `now`, and keep their buckets for the takeover delay.
    pub fn reset_to(&mut self, nodes: &BTreeSet<String>, now: Instant) {
        let gone: Vec<String> = self.live.difference(nodes).cloned().collect();
        for node in gone {
            self.left(&node, now);
        }
        for node in nodes {
            self.joined(node);
        }
    }

    /// `node`'s membership ended at `now` (its key expired or was deleted). This instance
    /// never leaves its own view.
    pub fn left(&mut self, node: &str, now: Instant) {
        if node != self.me && self.live.remove(node) {
            self.left.insert(node.to_string(), now);
        }
    }

    /// The members that own buckets at `now`.
    pub fn owners(&self, now: Instant) -> Vec<&str> {
        let leaving = self
            .left
            .iter()
            .filter(|(_, at)| now < **at + self.takeover)
            .map(|(n, _)| n.as_str());
        let mut out: Vec<&str> = self
            .live
            .iter()
            .map(String::as_str)
            .chain(leaving)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// When the next departed member's buckets are taken over (to recompute then).
    pub fn next_takeover(&self, now: Instant) -> Option<Instant> {
        self.left
            .values()
            .map(|at| *at + self.takeover)
            .filter(|t| *t > now)
            .min()
    }

    /// This instance's share at `now`.
    pub fn share(&self, now: Instant) -> Share {
        let owners = self.owners(now);
        Share {
            mine: (0..BUCKETS)
                .map(|b| owner(b, owners.iter().copied()) == Some(self.me.as_str()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn macs(n: u32) -> impl Iterator<Item = MacAddr> {
        (0..n).map(|i| {
            let b = i.to_be_bytes();
            MacAddr([0x52, 0x54, b[0], b[1], b[2], b[3]])
        })
    }

    #[test]
    fn every_bucket_has_exactly_one_owner_and_the_split_is_even() {
        let names = ["kindling-a", "kindling-b", "kindling-c"];
        let views: Vec<Share> = names
            .iter()
            .map(|me| {
                let mut m = Membership::new(me, Duration::from_secs(5));
                for n in names {
                    m.joined(n);
                }
                m.share(Instant::now())
            })
            .collect();
        for b in 0..BUCKETS {
            let owners = views.iter().filter(|v| v.mine[b]).count();
            assert_eq!(owners, 1, "bucket {b} has {owners} owners");
        }
        // Clients spread: each of three members gets a fair share of 30,000 MACs.
        for v in &views {
            let n = macs(30_000).filter(|m| v.answers(*m)).count();
            assert!((7_000..13_000).contains(&n), "{n} of 30,000");
        }
    }

    #[test]
    fn a_departed_member_keeps_its_buckets_for_the_takeover_delay() {
        let t0 = Instant::now();
        let delay = Duration::from_secs(5);
        let mut a = Membership::new("a", delay);
        a.joined("b");
        let both = a.share(t0);
        assert!(both.count() > 64 && both.count() < 192, "{}", both.count());
        a.left("b", t0);
        assert_eq!(a.share(t0 + Duration::from_secs(4)), both, "still b's");
        assert_eq!(a.next_takeover(t0), Some(t0 + delay));
        assert_eq!(a.share(t0 + delay), Share::all(), "taken over");
        // b comes back: its buckets are its own again at once.
        a.joined("b");
        assert_eq!(a.share(t0 + delay), both);
        // Only the departed member's buckets move.
        let mut three = Membership::new("a", delay);
        three.joined("b");
        three.joined("c");
        let before = three.share(t0);
        three.left("c", t0);
        let after = three.share(t0 + delay);
        for b in 0..BUCKETS {
            if before.mine[b] {
                assert!(after.mine[b], "a lost bucket {b} when c left");
            }
        }
    }

    #[test]
    fn a_fresh_member_list_retires_members_missed_leaving() {
        let t0 = Instant::now();
        let mut a = Membership::new("a", Duration::from_secs(5));
        a.joined("b");
        a.joined("c");
        let now = BTreeSet::from(["a".to_string(), "c".to_string()]);
        a.reset_to(&now, t0);
        assert_eq!(
            a.owners(t0),
            vec!["a", "b", "c"],
            "b keeps its buckets a while"
        );
        assert_eq!(a.owners(t0 + Duration::from_secs(5)), vec!["a", "c"]);
    }

    #[test]
    fn an_instance_never_leaves_its_own_view() {
        let mut a = Membership::new("a", Duration::ZERO);
        a.left("a", Instant::now());
        assert_eq!(a.share(Instant::now()), Share::all());
    }

    #[test]
    fn the_hash_is_stable() {
        // Instances built by different compilers must agree: fixed values.
        assert_eq!(fnv(&[b"kindling"]), 10_744_042_741_005_277_237);
        assert_eq!(bucket(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])), 3);
        assert_eq!(
            owner(7, ["kindling-a", "kindling-b", "kindling-c"]),
            Some("kindling-a")
        );
        assert_ne!(fnv(&[b"ab", b"c"]), fnv(&[b"a", b"bc"]));
    }
}
