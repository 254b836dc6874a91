//! Lease allocation for full-mode DHCP: pure logic, time injected.
//!
//! One [`Pool`] per subnet range. The rules, in order, when a client asks for an address:
//! 1. its reservation (from a profile's machine `ip` or the config), which no one else gets;
//! 2. the address it already holds (offered, bound, or expired but not yet reused);
//! 3. the address it requests (option 50), if free, in range and not reserved for another;
//! 4. an address never handed out, lowest first;
//! 5. the address whose lease expired (or was released) longest ago.
//!
//! A declined address (DHCPDECLINE: someone else answers ARP for it) is quarantined for
//! [`QUARANTINE`] and never offered meanwhile. An address is never held by two MACs: the pool
//! keeps one index by address and one by MAC and changes them together.
//!
//! Persistence is not here: the server writes a lease to the store before its DHCPACK leaves.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

/// How long a declined address stays out of use.
pub const QUARANTINE: Duration = Duration::from_secs(600);

/// Seconds since the Unix epoch: the clock the pool is given (never read by it).
pub type Now = u64;

/// Where a lease stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Offered in a DHCPOFFER; held for the client until `expires`.
    Offered,
    /// Acknowledged: the client owns it until `expires`.
    Bound,
    /// Released by the client (DHCPRELEASE): free, but remembered for the same client.
    Released,
    /// Declined: in quarantine until `expires`; belongs to no one.
    Declined,
}

/// One address's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The address.
    pub ip: Ipv4Addr,
    /// Who holds (or last held) it; `None` for a declined address.
    pub mac: Option<MacAddr>,
    /// Its state.
    pub state: State,
    /// When the offer, binding or quarantine ends (Unix seconds).
    pub expires: Now,
    /// The hostname the client sent (option 12), for DNS.
    pub hostname: Option<String>,
    /// The client identifier (option 61, hex) it was bound with: a DECLINE or RELEASE must
    /// carry the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// When it was last bound (ACKed), Unix seconds; 0 when not known.
    #[serde(default)]
    pub bound_at: Now,
}

impl Lease {
    /// Whether the address may go to `mac` now.
    pub fn available_to(&self, mac: MacAddr, now: Now) -> bool {
        match self.state {
            State::Declined => now >= self.expires,
            State::Released => true,
            State::Offered | State::Bound => self.mac == Some(mac) || now >= self.expires,
        }
    }
}

/// Why no address could be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Every address is leased, offered, reserved or quarantined.
    #[error("address pool {first}-{last} is exhausted")]
    Exhausted {
        /// First address of the range.
        first: Ipv4Addr,
        /// Last address of the range.
        last: Ipv4Addr,
    },
}

/// One range of addresses and their leases.
#[derive(Debug, Clone)]
pub struct Pool {
    first: u32,
    last: u32,
    /// MAC → reserved address (inside or outside the range; outside ones are still honoured).
    reservations: HashMap<MacAddr, Ipv4Addr>,
    /// Address → MAC it is reserved for.
    reserved_ips: HashMap<Ipv4Addr, MacAddr>,
    /// Every lease by address.
    by_ip: BTreeMap<Ipv4Addr, Lease>,
    /// The address each MAC holds or last held.
    by_mac: HashMap<MacAddr, Ipv4Addr>,
    /// (expires, address) of every lease in the range: an address is free for anyone once
    /// its `expires` has passed (a released lease's `expires` is its release time), so the
    /// first entries are the ones free longest. Rule 5 without a scan.
    by_expiry: BTreeSet<(Now, u32)>,
    /// Every address of the range below this one has a lease or a reservation, or is
    /// another instance's to hand out: rule 4 without a scan from the start of the range.
    fresh: u64,
    /// With several instances on one segment, the address buckets (address mod their number)
    /// this one hands out new addresses from; `None`: all.
    mine: Option<Vec<bool>>,
}

impl Pool {
    /// A pool handing out `first..=last`, with `reservations`.
    pub fn new(first: Ipv4Addr, last: Ipv4Addr, reservations: HashMap<MacAddr, Ipv4Addr>) -> Pool {
        let reserved_ips = reservations.iter().map(|(m, ip)| (*ip, *m)).collect();
        Pool {
            first: u32::from(first),
            last: u32::from(last),
            reservations,
            reserved_ips,
            by_ip: BTreeMap::new(),
            by_mac: HashMap::new(),
            by_expiry: BTreeSet::new(),
            fresh: u64::from(u32::from(first)),
            mine: None,
        }
    }

    /// Hand out new addresses only from the address buckets marked in `mine` (address mod
    /// its length), so instances that split a segment's clients never offer one free address
    /// twice; `None`: from all. A client keeps the address it holds either way.
    pub fn set_share(&mut self, mine: Option<Vec<bool>>) {
        self.mine = mine.filter(|m| !m.is_empty() && !m.iter().all(|b| *b));
        self.fresh = u64::from(self.first);
        self.advance_fresh();
    }

    /// Whether new addresses may come from `ip` here.
    fn ours(&self, ip: Ipv4Addr) -> bool {
        self.mine
            .as_ref()
            .is_none_or(|m| m[u32::from(ip) as usize % m.len()])
    }

    /// Store `lease` in the address index and keep the other indexes in step.
    fn put(&mut self, lease: Lease) {
        let ip = u32::from(lease.ip);
        let key = (lease.expires, ip);
        let in_range = self.in_range(lease.ip);
        if let Some(old) = self.by_ip.insert(lease.ip, lease) {
            self.by_expiry.remove(&(old.expires, ip));
        }
        if in_range {
            self.by_expiry.insert(key);
        }
        self.advance_fresh();
    }

    /// Move [`Pool::fresh`] past addresses that have a lease or a reservation.
    fn advance_fresh(&mut self) {
        while self.fresh <= u64::from(self.last) {
            let ip = Ipv4Addr::from(self.fresh as u32);
            if !self.by_ip.contains_key(&ip)
                && !self.reserved_ips.contains_key(&ip)
                && self.ours(ip)
            {
                break;
            }
            self.fresh += 1;
        }
    }

    /// Replace the reservations (profiles reloaded). Existing leases are kept: a machine whose
    /// reservation moved gets NAKed on its next REQUEST and comes back for the new address.
    pub fn set_reservations(&mut self, reservations: HashMap<MacAddr, Ipv4Addr>) {
        self.reserved_ips = reservations.iter().map(|(m, ip)| (*ip, *m)).collect();
        self.reservations = reservations;
        // A dropped reservation may free an address below the cursor.
        self.fresh = u64::from(self.first);
        self.advance_fresh();
    }

    /// Whether `ip` is in the dynamic range.
    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(ip))
    }

    /// Restore a lease read from the store at start-up.
    pub fn restore(&mut self, lease: Lease) {
        if let Some(mac) = lease.mac {
            self.by_mac.insert(mac, lease.ip);
        }
        self.put(lease);
    }

    /// Take a lease another instance sharing the store wrote: it replaces this pool's lease of
    /// the address (whose old holder, if another client, no longer holds it here). Whether
    /// anything changed (this instance's own writes come back unchanged).
    pub fn merge_remote(&mut self, lease: Lease) -> bool {
        if self.by_ip.get(&lease.ip) == Some(&lease) {
            return false;
        }
        if let Some(old) = self.by_ip.get(&lease.ip).and_then(|l| l.mac)
            && Some(old) != lease.mac
            && self.by_mac.get(&old) == Some(&lease.ip)
        {
            self.by_mac.remove(&old);
        }
        self.restore(lease);
        true
    }

    /// Every lease, by address.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.by_ip.values()
    }

    /// The lease of `ip`, if any.
    pub fn lease(&self, ip: Ipv4Addr) -> Option<&Lease> {
        self.by_ip.get(&ip)
    }

    /// The address `mac` holds or last held.
    pub fn address_of(&self, mac: MacAddr) -> Option<Ipv4Addr> {
        self.by_mac.get(&mac).copied()
    }

    /// Whether `ip` may be given to `mac` now.
    pub fn usable_by(&self, ip: Ipv4Addr, mac: MacAddr, now: Now) -> bool {
        if let Some(owner) = self.reserved_ips.get(&ip) {
            return *owner == mac;
        }
        self.in_range(ip) && self.by_ip.get(&ip).is_none_or(|l| l.available_to(mac, now))
    }

    /// Choose an address for `mac` (DISCOVER, or REQUEST in INIT-REBOOT/SELECTING).
    pub fn choose(
        &self,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        now: Now,
    ) -> Result<Ipv4Addr, AllocError> {
        if let Some(ip) = self.reservations.get(&mac) {
            return Ok(*ip);
        }
        if let Some(ip) = self.by_mac.get(&mac)
            && self.usable_by(*ip, mac, now)
        {
            return Ok(*ip);
        }
        if let Some(ip) = requested
            && self.usable_by(ip, mac, now)
            && self.ours(ip)
        {
            return Ok(ip);
        }
        // Never handed out, lowest first.
        for n in self.fresh..=u64::from(self.last) {
            let ip = Ipv4Addr::from(n as u32);
            if !self.by_ip.contains_key(&ip)
                && !self.reserved_ips.contains_key(&ip)
                && self.ours(ip)
            {
                return Ok(ip);
            }
        }
        // Reuse: the one that became free longest ago.
        for &(expires, ip) in &self.by_expiry {
            if expires > now {
                break;
            }
            let ip = Ipv4Addr::from(ip);
            if !self.reserved_ips.contains_key(&ip) && self.ours(ip) {
                return Ok(ip);
            }
        }
        Err(AllocError::Exhausted {
            first: Ipv4Addr::from(self.first),
            last: Ipv4Addr::from(self.last),
        })
    }

    /// Record `ip` as offered to or bound by `mac` until `expires`; returns the lease to persist.
    /// The caller checked [`Pool::usable_by`]; a previous holder of `ip` loses it.
    pub fn assign(
        &mut self,
        ip: Ipv4Addr,
        mac: MacAddr,
        state: State,
        expires: Now,
        hostname: Option<String>,
    ) -> Lease {
        if let Some(old) = self.by_ip.get(&ip).and_then(|l| l.mac)
            && old != mac
            && self.by_mac.get(&old) == Some(&ip)
        {
            self.by_mac.remove(&old);
        }
        if let Some(prev) = self.by_mac.insert(mac, ip)
            && prev != ip
            && let Some(l) = self.by_ip.get(&prev)
            && l.mac == Some(mac)
            && matches!(l.state, State::Offered | State::Bound)
        {
            // A client holds one address per pool: its old one is free again (free since
            // "long ago": first in line for reuse).
            let freed = Lease {
                state: State::Released,
                expires: 0,
                ..l.clone()
            };
            self.put(freed);
        }
        let lease = Lease {
            ip,
            mac: Some(mac),
            state,
            expires,
            hostname,
            client_id: None,
            bound_at: 0,
        };
        self.put(lease.clone());
        lease
    }

    /// Bind `ip` to `mac` (an ACK) until `expires`, remembering the client identifier it was
    /// bound with and when (see [`Pool::assign`]).
    pub fn bind(
        &mut self,
        ip: Ipv4Addr,
        mac: MacAddr,
        expires: Now,
        hostname: Option<String>,
        client_id: Option<String>,
        now: Now,
    ) -> Lease {
        let mut lease = self.assign(ip, mac, State::Bound, expires, hostname);
        lease.client_id = client_id;
        lease.bound_at = now;
        self.put(lease.clone());
        lease
    }

    /// DHCPRELEASE: `mac` gives `ip` back. Returns the updated lease, if it held it.
    pub fn release(&mut self, ip: Ipv4Addr, mac: MacAddr, now: Now) -> Option<Lease> {
        let lease = self.by_ip.get(&ip)?;
        if lease.mac != Some(mac) || lease.state != State::Bound {
            return None;
        }
        let released = Lease {
            state: State::Released,
            expires: now,
            ..lease.clone()
        };
        self.put(released.clone());
        Some(released)
    }

    /// DHCPDECLINE: `ip` is in use by someone else; quarantine it.
    pub fn decline(&mut self, ip: Ipv4Addr, mac: MacAddr, now: Now) -> Option<Lease> {
        let lease = self.by_ip.get(&ip)?;
        if lease.mac != Some(mac) {
            return None;
        }
        self.by_mac.remove(&mac);
        let quarantined = Lease {
            ip,
            mac: None,
            state: State::Declined,
            expires: now + QUARANTINE.as_secs(),
            hostname: None,
            client_id: None,
            bound_at: 0,
        };
        self.put(quarantined.clone());
        Some(quarantined)
    }

    /// Addresses in the range.
    pub fn size(&self) -> u32 {
        (self.last - self.first).saturating_add(1)
    }

    /// A cheap upper bound of [`Pool::usage`]'s `used`: every address with a lease record or a
    /// reservation. When even this is below a threshold, the precise count is not needed.
    pub fn used_at_most(&self) -> u32 {
        let reserved = self
            .reserved_ips
            .keys()
            .filter(|ip| self.in_range(**ip) && !self.by_ip.contains_key(ip))
            .count();
        u32::try_from(self.by_expiry.len() + reserved).unwrap_or(u32::MAX)
    }

    /// Addresses in the range and how many are in use now (bound or offered, not expired),
    /// reserved, or quarantined: for the pool metric and the low-pool warning.
    pub fn usage(&self, now: Now) -> (u32, u32) {
        let size = self.size();
        let used = self
            .by_ip
            .values()
            .filter(|l| self.in_range(l.ip) && now < l.expires && l.state != State::Released)
            .count() as u32;
        let reserved_in_range = self
            .reserved_ips
            .keys()
            .filter(|ip| self.in_range(**ip) && !self.by_ip.contains_key(ip))
            .count() as u32;
        (size, (used + reserved_in_range).min(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }

    fn pool() -> Pool {
        Pool::new(ip(10), ip(13), [(mac(99), ip(12))].into())
    }

    /// Offer and bind in one go, as a DORA would.
    fn bind(p: &mut Pool, m: MacAddr, now: Now) -> Ipv4Addr {
        let a = p.choose(m, None, now).unwrap();
        p.assign(a, m, State::Bound, now + 3600, None);
        a
    }

    /// Two instances splitting a segment hand out disjoint addresses; a client keeps the one
    /// it holds; after a takeover the survivor hands out the rest too.
    #[test]
    fn shares_of_a_pool_never_overlap() {
        let even: Vec<bool> = (0..256).map(|b| b % 2 == 0).collect();
        let odd: Vec<bool> = even.iter().map(|b| !b).collect();
        let (mut a, mut b) = (
            Pool::new(ip(100), ip(109), HashMap::new()),
            Pool::new(ip(100), ip(109), HashMap::new()),
        );
        a.set_share(Some(even.clone()));
        b.set_share(Some(odd));
        let from_a: Vec<_> = (1..=5).map(|n| bind(&mut a, mac(n), 0)).collect();
        let from_b: Vec<_> = (11..=15).map(|n| bind(&mut b, mac(n), 0)).collect();
        assert!(
            from_a.iter().all(|ip| ip.octets()[3] % 2 == 0),
            "{from_a:?}"
        );
        assert!(
            from_b.iter().all(|ip| ip.octets()[3] % 2 == 1),
            "{from_b:?}"
        );
        assert!(a.choose(mac(6), None, 0).is_err(), "a's half is used up");
        // A client asking for an address of b's half gets one of a's.
        assert!(a.choose(mac(7), Some(ip(101)), 0).is_err());
        // The holder of an odd address keeps it at a (its lease came over).
        a.restore(Lease {
            ip: ip(101),
            mac: Some(mac(11)),
            state: State::Bound,
            expires: 3600,
            hostname: None,
            client_id: None,
            bound_at: 0,
        });
        assert_eq!(a.choose(mac(11), None, 0), Ok(ip(101)));
        // b gone: a takes every bucket.
        a.set_share(None);
        assert_eq!(a.choose(mac(6), None, 0), Ok(ip(103)));
    }

    #[test]
    fn reservations_win_and_are_never_given_to_others() {
        let mut p = pool();
        assert_eq!(p.choose(mac(99), Some(ip(10)), 0).unwrap(), ip(12));
        let got: Vec<_> = (1..=3).map(|n| bind(&mut p, mac(n), 0)).collect();
        assert_eq!(got, vec![ip(10), ip(11), ip(13)], "12 is reserved");
        assert!(!p.usable_by(ip(12), mac(1), 0));
        assert_eq!(
            p.choose(mac(4), Some(ip(12)), 0),
            Err(AllocError::Exhausted {
                first: ip(10),
                last: ip(13)
            })
        );
    }

    #[test]
    fn a_client_keeps_its_address_and_requests_are_honoured() {
        let mut p = pool();
        let a = bind(&mut p, mac(1), 0);
        assert_eq!(
            p.choose(mac(1), Some(ip(13)), 10).unwrap(),
            a,
            "renewal keeps the address"
        );
        assert_eq!(
            p.choose(mac(2), Some(ip(13)), 10).unwrap(),
            ip(13),
            "free requested address"
        );
        assert_eq!(
            p.choose(mac(2), Some(a), 10).unwrap(),
            ip(11),
            "held by another: not given"
        );
        assert_eq!(
            p.choose(mac(2), Some(ip(200)), 10).unwrap(),
            ip(11),
            "out of range: not given"
        );
    }

    #[test]
    fn expired_leases_are_reused_oldest_first() {
        let mut p = Pool::new(ip(10), ip(12), HashMap::new());
        for (n, exp) in [(1, 500), (2, 100), (3, 300)] {
            let a = p.choose(mac(n), None, 0).unwrap();
            p.assign(a, mac(n), State::Bound, exp, None);
        }
        assert!(p.choose(mac(4), None, 50).is_err(), "all bound");
        assert_eq!(
            p.choose(mac(4), None, 400).unwrap(),
            ip(11),
            "expired at 100: oldest"
        );
        let a = p.choose(mac(4), None, 400).unwrap();
        p.assign(a, mac(4), State::Bound, 4000, None);
        assert_eq!(
            p.address_of(mac(2)),
            None,
            "the old holder no longer maps to it"
        );
        assert_eq!(
            p.choose(mac(5), None, 400).unwrap(),
            ip(12),
            "then the one expired at 300"
        );
        // The previous holder comes back after expiry and its address is still free: it gets it.
        assert_eq!(p.choose(mac(1), None, 600).unwrap(), ip(10));
    }

    #[test]
    fn no_address_is_ever_held_by_two_macs() {
        let mut p = Pool::new(ip(10), ip(13), HashMap::new());
        let mut now = 0;
        // A churn of 50 clients over 4 addresses with short leases.
        for round in 0..200u64 {
            let m = mac((round * 7 % 50) as u8);
            now += 13;
            if let Ok(a) = p.choose(m, None, now) {
                p.assign(a, m, State::Bound, now + 40, None);
            }
            let mut holders: HashMap<Ipv4Addr, MacAddr> = HashMap::new();
            for l in p
                .by_ip
                .values()
                .filter(|l| l.state == State::Bound && now < l.expires)
            {
                assert!(
                    holders.insert(l.ip, l.mac.unwrap()).is_none(),
                    "{} twice",
                    l.ip
                );
            }
            for (m, a) in &p.by_mac {
                assert_eq!(p.by_ip[a].mac, Some(*m), "indexes agree");
            }
        }
    }

    #[test]
    fn offers_hold_the_address_until_they_expire() {
        let mut p = Pool::new(ip(10), ip(10), HashMap::new());
        let a = p.choose(mac(1), None, 0).unwrap();
        p.assign(a, mac(1), State::Offered, 60, None);
        assert!(p.choose(mac(2), None, 30).is_err(), "offered to mac 1");
        assert_eq!(p.choose(mac(2), None, 61).unwrap(), a, "offer lapsed");
    }

    #[test]
    fn release_and_decline() {
        let mut p = Pool::new(ip(10), ip(11), HashMap::new());
        let a = bind(&mut p, mac(1), 0);
        assert!(
            p.release(a, mac(2), 10).is_none(),
            "only the holder releases"
        );
        assert_eq!(p.release(a, mac(1), 10).unwrap().state, State::Released);
        assert_eq!(
            p.choose(mac(1), None, 11).unwrap(),
            a,
            "the same client gets it back"
        );
        let b = bind(&mut p, mac(2), 20);
        let q = p.decline(b, mac(2), 30).unwrap();
        assert_eq!((q.state, q.mac), (State::Declined, None));
        assert!(
            !p.usable_by(b, mac(3), 30 + QUARANTINE.as_secs() - 1),
            "quarantined"
        );
        assert!(
            p.usable_by(b, mac(3), 30 + QUARANTINE.as_secs()),
            "quarantine over"
        );
        assert_ne!(
            p.choose(mac(2), None, 40).unwrap(),
            b,
            "the decliner gets another address"
        );
    }

    #[test]
    fn usage_counts_live_leases_and_reservations() {
        let mut p = pool();
        assert_eq!(p.usage(0), (4, 1), "one reservation in range");
        bind(&mut p, mac(1), 0);
        assert_eq!(p.usage(0), (4, 2));
        assert_eq!(p.usage(4000), (4, 1), "expired");
    }

    /// A /16 handed out to 60,000 clients, then reused: no step scans the pool, so this is
    /// instant (it took minutes when rule 4 scanned from the start of the range each time).
    #[test]
    fn a_big_pool_allocates_and_reuses_without_scanning() {
        let mut p = Pool::new(
            Ipv4Addr::new(10, 88, 0, 1),
            Ipv4Addr::new(10, 88, 255, 254),
            HashMap::new(),
        );
        let client = |n: u32| {
            let b = n.to_be_bytes();
            MacAddr([0x52, 0x54, b[0], b[1], b[2], b[3]])
        };
        let mut seen = std::collections::HashSet::new();
        for n in 0..60_000 {
            let a = p.choose(client(n), None, 0).unwrap();
            assert!(seen.insert(a), "{a} handed out twice");
            p.assign(a, client(n), State::Bound, 100 + u64::from(n % 7), None);
        }
        // Fresh addresses first, then expired ones, oldest first.
        for n in 60_000..65_534 {
            let a = p.choose(client(n), None, 50).unwrap();
            assert!(seen.insert(a));
            p.assign(a, client(n), State::Bound, 10_000, None);
        }
        assert!(p.choose(client(70_000), None, 50).is_err(), "full");
        let first_reused = p.choose(client(70_000), None, 200).unwrap();
        assert_eq!(
            p.lease(first_reused).map(|l| l.expires),
            Some(100),
            "expired longest ago"
        );
        // A dropped reservation below the cursor is found again.
        let mut p = Pool::new(ip(10), ip(12), [(mac(9), ip(10))].into());
        assert_eq!(bind(&mut p, mac(1), 0), ip(11));
        p.set_reservations(HashMap::new());
        assert_eq!(p.choose(mac(2), None, 0).unwrap(), ip(10));
    }
}
