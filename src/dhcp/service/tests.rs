//! The per-packet path without sockets: bytes in, the reply (or the lease to make durable
//! first) out.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, OptionCode};

use super::*;
use crate::dhcp::testkit::{pxe_request, request};
use crate::inventory::BootState;
use crate::profiles::Sources;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);

fn mac(n: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0, n])
}

/// Profiles where MAC is `hostname` at `ip` (a reservation), loaded from a fresh directory.
fn profiles(hostname: &str, ip: &str) -> (tempfile::TempDir, Arc<ProfileSet>) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("node.toml"),
        format!(
            "[boot]\nkernel = \"k\"\n[[machine]]\nmac = \"{MAC}\"\nhostname = \"{hostname}\"\nip = \"{ip}\"\n"
        ),
    )
    .unwrap();
    let sources = Sources {
        profiles: p,
        scripts: Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe"),
    };
    let set = ProfileSet::load(&sources, "http://10.0.0.2:8080").unwrap();
    (dir, Arc::new(set))
}

fn config(mode: &str, range: (&str, &str)) -> Config {
    let text = format!(
        "[server]\nbase_url = \"http://10.0.0.2:8080\"\nadvertise_ip = \"10.0.0.2\"\n\
         [dhcp]\nmode = \"{mode}\"\ninterfaces = [\"vs0\"]\n\
         [[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\nrange = [\"{}\", \"{}\"]\n",
        range.0, range.1
    );
    Config::parse(Path::new("/k.toml"), &text).unwrap()
}

fn service(mode: &str, set: Arc<ProfileSet>) -> Service {
    Service::new(
        &config(mode, ("10.0.0.100", "10.0.0.101")),
        set,
        Arc::new(Inventory::default()),
        Metrics::new(),
        Bus::new(),
        "http://10.0.0.2:8080".into(),
    )
}

fn ingress(port: u16) -> Ingress {
    Ingress {
        iface: "vs0".into(),
        port,
        addrs: vec![SERVER],
    }
}

/// A client with no address yet, on the client port.
fn peer() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 68))
}

fn bytes(m: &Message) -> Vec<u8> {
    reply::encode_padded(m).unwrap()
}

fn decoded(out: Option<Out>) -> (Message, SocketAddrV4, Option<(Lease, LeaseChange)>) {
    match out {
        Some(Out::Send(b, to)) => (reply::decode(&b).unwrap(), to, None),
        Some(Out::Write(Write {
            lease,
            change,
            ack: Some((b, to)),
        })) => (reply::decode(&b).unwrap(), to, Some((lease, change))),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn hostname(m: &Message) -> Option<String> {
    match m.opts().get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => Some(h.clone()),
        _ => None,
    }
}

/// A request of `kind` as OVMF's PXE client sends it.
fn uefi(kind: MessageType) -> Message {
    pxe_request(
        kind,
        MAC,
        "PXEClient:Arch:00007:UNDI:003016",
        Architecture::X64,
        vec![0; 17],
    )
}

fn request_for(ip: Ipv4Addr, m: MacAddr) -> Message {
    let mut req = request(MessageType::Request, m);
    req.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    req.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    req
}

#[test]
fn full_mode_dora_grants_then_renews_the_reservation() {
    let (_dir, set) = profiles("worker-1", "10.0.0.50");
    let svc = service("full", set);
    let discover = uefi(MessageType::Discover);
    let (offer, to, lease) = decoded(svc.process(&bytes(&discover), peer(), &ingress(67)));
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(
        offer.yiaddr(),
        Ipv4Addr::new(10, 0, 0, 50),
        "its reservation"
    );
    assert_eq!(hostname(&offer).as_deref(), Some("worker-1"));
    assert_eq!(to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert!(lease.is_none(), "an offer is not written");
    assert_eq!(
        offer.fname_str().unwrap().unwrap().trim_end_matches('\0'),
        "ipxe.efi"
    );

    let req = request_for(offer.yiaddr(), MAC);
    let (ack, _, lease) = decoded(svc.process(&bytes(&req), peer(), &ingress(67)));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    let (lease, change) = lease.expect("an ACK waits for its lease to be durable");
    assert_eq!(
        (lease.ip, lease.mac),
        (Ipv4Addr::new(10, 0, 0, 50), Some(MAC))
    );
    assert_eq!(change, LeaseChange::Granted);
    let (_, _, again) = decoded(svc.process(&bytes(&req), peer(), &ingress(67)));
    assert_eq!(again.unwrap().1, LeaseChange::Renewed);
    assert_eq!(svc.bound_leases().len(), 1);
    let rec = svc.inventory.get(MAC).unwrap();
    assert_eq!(rec.ip, Some(Ipv4Addr::new(10, 0, 0, 50)));
}

#[test]
fn proxy_mode_offers_on_67_and_answers_the_boot_request_on_4011() {
    let (_dir, set) = profiles("worker-1", "10.0.0.50");
    let svc = service("proxy", set);
    let discover = uefi(MessageType::Discover);
    let (offer, _, _) = decoded(svc.process(&bytes(&discover), peer(), &ingress(67)));
    assert_eq!(
        offer.yiaddr(),
        Ipv4Addr::UNSPECIFIED,
        "no address in proxy mode"
    );
    // The REQUEST to 4011 from OVMF comes from port 4011 and goes back there.
    let mut req = uefi(MessageType::Request);
    req.set_ciaddr(Ipv4Addr::new(10, 0, 0, 77));
    let from = SocketAddr::from(([10, 0, 0, 77], 4011));
    let (ack, to, lease) = decoded(svc.process(&bytes(&req), from, &ingress(4011)));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(to, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 77), 4011));
    assert!(lease.is_none(), "proxy mode keeps no leases");
    // A REQUEST on 67 belongs to the LAN's server.
    assert!(svc.process(&bytes(&req), peer(), &ingress(67)).is_none());
}

/// A reload that lands between classifying a packet and deciding it: the answer comes from
/// one profile set, the new one, for the hostname as for the reserved address.
#[test]
fn a_reload_during_a_packet_answers_from_one_snapshot() {
    let (_d1, one) = profiles("one", "10.0.0.50");
    let (_d2, two) = profiles("two", "10.0.0.60");
    let svc = service("full", one.clone());
    let req = request(MessageType::Discover, MAC);
    let (msg, mac) = svc.admit(&bytes(&req), peer(), "vs0").expect("admitted");
    // The packet took its snapshot (`one`); the profiles reload before it is decided.
    svc.use_profiles(two);
    let (offer, _, _) = decoded(svc.decide(&msg, mac, peer(), &ingress(67), &one));
    assert_eq!(
        (offer.yiaddr(), hostname(&offer).as_deref()),
        (Ipv4Addr::new(10, 0, 0, 60), Some("two")),
        "address and hostname from the same set"
    );
    // Without a reload in between, the snapshot is the set of the reservations.
    let (offer, _, _) = decoded(svc.process(&bytes(&req), peer(), &ingress(67)));
    assert_eq!(hostname(&offer).as_deref(), Some("two"));
}

#[test]
fn malformed_foreign_and_flooding_packets_are_dropped_and_counted() {
    let (_dir, set) = profiles("worker-1", "10.0.0.50");
    let svc = service("full", set);
    assert!(
        svc.process(b"\x01\x02garbage", peer(), &ingress(67))
            .is_none()
    );
    let mut token_ring = request(MessageType::Discover, mac(2));
    token_ring.set_htype(dhcproto::v4::HType::Unknown(6));
    assert!(
        svc.process(&bytes(&token_ring), peer(), &ingress(67))
            .is_none()
    );
    // 30 packets per MAC per 10 s, then silence.
    let discover = bytes(&request(MessageType::Discover, mac(3)));
    let answered = (0..40)
        .filter(|_| svc.process(&discover, peer(), &ingress(67)).is_some())
        .count();
    assert_eq!(answered, 30);
    let text = svc.metrics.encode();
    for want in [
        "type=\"malformed\",outcome=\"dropped\"} 1",
        "type=\"discover\",outcome=\"dropped\"} 1",
        "type=\"discover\",outcome=\"rate_limited\"} 10",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
}

#[test]
fn an_exhausted_pool_ignores_new_clients_and_says_why() {
    let (_dir, set) = profiles("worker-1", "10.0.0.50");
    let svc = service("full", set);
    for n in 10..12 {
        let m = mac(n);
        let (offer, _, _) = decoded(svc.process(
            &bytes(&request(MessageType::Discover, m)),
            peer(),
            &ingress(67),
        ));
        decoded(svc.process(
            &bytes(&request_for(offer.yiaddr(), m)),
            peer(),
            &ingress(67),
        ));
    }
    // Both addresses of the range are bound; a third client gets nothing.
    assert!(
        svc.process(
            &bytes(&request(MessageType::Discover, mac(12))),
            peer(),
            &ingress(67)
        )
        .is_none()
    );
    assert!(
        svc.metrics
            .encode()
            .contains("type=\"discover\",outcome=\"ignored\"} 1")
    );
}

#[test]
fn a_relayed_request_is_decided_on_the_relays_subnet_only() {
    let (_dir, set) = profiles("worker-1", "10.0.0.50");
    let svc = service("full", set);
    let mut req = request(MessageType::Discover, mac(4));
    req.set_giaddr(Ipv4Addr::new(10, 9, 9, 1));
    assert!(
        svc.process(&bytes(&req), peer(), &ingress(67)).is_none(),
        "no subnet for the relay's network"
    );
    req.set_giaddr(Ipv4Addr::new(10, 0, 0, 1));
    let (offer, to, _) = decoded(svc.process(&bytes(&req), peer(), &ingress(67)));
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 100));
    assert_eq!(to, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 67));
}

/// With `[dhcp] relays` set, a relayed request from anyone else is dropped; option 82 in a
/// request that came through no relay is the client's own claim and selects nothing.
#[test]
fn only_listed_relays_relay_and_option_82_counts_only_when_relayed() {
    use dhcproto::v4::relay::{RelayAgentInformation, RelayInfo};
    let (_dir, set) = profiles("worker-1", "10.0.0.50");
    let mut cfg = config("full", ("10.0.0.100", "10.0.0.101"));
    cfg.dhcp.relays = vec!["10.0.0.1/32".parse().unwrap()];
    let svc = Service::new(
        &cfg,
        set,
        Arc::new(Inventory::default()),
        Metrics::new(),
        Bus::new(),
        "http://10.0.0.2:8080".into(),
    );
    let mut req = request(MessageType::Discover, mac(5));
    req.set_giaddr(Ipv4Addr::new(10, 0, 0, 1));
    let forger = SocketAddr::from(([10, 0, 0, 66], 67));
    assert!(svc.process(&bytes(&req), forger, &ingress(67)).is_none());
    let relay = SocketAddr::from(([10, 0, 0, 1], 67));
    assert!(svc.process(&bytes(&req), relay, &ingress(67)).is_some());

    // A profile selected by the relay's circuit-id.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("racked.toml"),
        "[boot]\nkernel = \"k\"\n[[select]]\nlabels = { circuit_id = \"rack-a\" }\n",
    )
    .unwrap();
    let sources = Sources {
        profiles: dir.path().to_path_buf(),
        scripts: Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe"),
    };
    svc.use_profiles(Arc::new(ProfileSet::load(&sources, "http://x").unwrap()));
    let mut unrelayed = request(MessageType::Discover, mac(6));
    let mut info = RelayAgentInformation::default();
    info.insert(RelayInfo::AgentCircuitId(b"rack-a".to_vec()));
    unrelayed
        .opts_mut()
        .insert(DhcpOption::RelayAgentInformation(info));
    let set = svc.snapshot();
    assert_eq!(svc.classify(&unrelayed, mac(6), &set).profile, None);
    let mut relayed = unrelayed.clone();
    relayed.set_giaddr(Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(
        svc.classify(&relayed, mac(6), &set).profile.as_deref(),
        Some("racked")
    );
}

/// Two instances sharing a store: a lease one of them committed comes to the other through
/// `merge_remote`. The other then offers that address to nobody else, answers the holder's
/// renewal, and takes the same lease twice as one change.
#[test]
fn a_lease_committed_by_another_instance_is_honoured_here() {
    let (_dir, set) = profiles("worker-1", "10.0.0.50");
    let (a, b) = (service("full", set.clone()), service("full", set));
    let holder = mac(7);
    let discover = request(MessageType::Discover, holder);
    let (offer, _, _) = decoded(a.process(&bytes(&discover), peer(), &ingress(67)));
    let req = request_for(offer.yiaddr(), holder);
    let (_, _, written) = decoded(a.process(&bytes(&req), peer(), &ingress(67)));
    let (lease, _) = written.expect("A's lease");

    assert_eq!(b.merge_remote(lease.clone()), Some(LeaseChange::Granted));
    assert_eq!(b.merge_remote(lease.clone()), None, "the same lease again");
    // Another client is offered the other address of the two.
    let other = request(MessageType::Discover, mac(8));
    let (offer, _, _) = decoded(b.process(&bytes(&other), peer(), &ingress(67)));
    assert_ne!(offer.yiaddr(), lease.ip);
    // The holder renews at B (RENEWING: ciaddr, no server id).
    let mut renew = request(MessageType::Request, holder);
    renew.set_ciaddr(lease.ip);
    let (ack, _, renewed) = decoded(b.process(&bytes(&renew), peer(), &ingress(67)));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), lease.ip);
    assert_eq!(renewed.map(|(_, c)| c), Some(LeaseChange::Renewed));
}

#[test]
fn router_solicitations_are_answered_only_while_the_firmware_or_ipxe_runs() {
    let (_dir, set) = profiles("worker-1", "10.0.0.50");
    let svc = service("full", set);
    // Not seen yet: nothing says it is booting.
    assert_eq!(svc.solicited(MAC), Solicited::Ignore);
    // Its PXE ROM asked for an address, then it fetched iPXE, then iPXE asked: answered.
    svc.process(&bytes(&uefi(MessageType::Discover)), peer(), &ingress(67))
        .unwrap();
    assert_eq!(svc.solicited(MAC), Solicited::Answer, "in dhcp");
    svc.inventory.tftp_fetched(MAC, "ipxe.efi");
    assert_eq!(svc.solicited(MAC), Solicited::Answer, "in firmware");
    let mut ipxe = uefi(MessageType::Discover);
    ipxe.opts_mut()
        .insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    svc.process(&bytes(&ipxe), peer(), &ingress(67)).unwrap();
    let rec = svc.inventory.get(MAC).unwrap();
    assert_eq!(
        (rec.state, rec.dhcp_client),
        (BootState::Firmware, Some(DhcpClient::Ipxe))
    );
    assert_eq!(svc.solicited(MAC), Solicited::Answer, "iPXE's own DHCP");
    // It fetched its kernel: its OS may run any moment.
    svc.inventory.asset(MAC, "/assets/vmlinuz");
    assert_eq!(svc.solicited(MAC), Solicited::Ignore, "in kernel");

    // A new boot; then its OS asks for an address in the same phase: no longer answered.
    svc.process(&bytes(&uefi(MessageType::Discover)), peer(), &ingress(67))
        .unwrap();
    assert_eq!(svc.solicited(MAC), Solicited::Answer);
    svc.process(
        &bytes(&request(MessageType::Discover, MAC)),
        peer(),
        &ingress(67),
    )
    .unwrap();
    let rec = svc.inventory.get(MAC).unwrap();
    assert_eq!(
        (rec.state, rec.dhcp_client),
        (BootState::Dhcp, Some(DhcpClient::Os))
    );
    assert_eq!(svc.solicited(MAC), Solicited::Ignore, "an OS asked last");

    // Another instance answers this machine: so does it its solicitations.
    svc.process(&bytes(&uefi(MessageType::Discover)), peer(), &ingress(67))
        .unwrap();
    assert_eq!(svc.solicited(MAC), Solicited::Answer);
    svc.use_share(crate::cluster::buckets::Share::none());
    assert_eq!(svc.solicited(MAC), Solicited::Ignore, "not this instance's");
    svc.use_share(crate::cluster::buckets::Share::all());

    // A flood from one MAC is cut off with its DHCP budget.
    let answered = (0..100)
        .filter(|_| svc.solicited(MAC) == Solicited::Answer)
        .count();
    assert!(answered < RATE_LIMIT as usize, "{answered} answered");
    assert_eq!(svc.solicited(MAC), Solicited::RateLimited);
    // A machine no one knows is never answered.
    assert_eq!(svc.solicited(mac(9)), Solicited::Ignore);
}
