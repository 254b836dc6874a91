//! The inventory driven the way the services drive it, with tokio's clock paused for the
//! timeouts.

use std::time::Duration;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::store::{MachineStore, RedbMachineStore, Remote};
use super::*;
use crate::config::DhcpMode;
use crate::profiles::Facts;

fn mac(n: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0, n])
}

fn seen(event: &'static str, client: DhcpClient, ip: Option<Ipv4Addr>) -> DhcpSeen {
    DhcpSeen {
        event,
        client,
        profile: Some("worker".into()),
        ip,
        vendor_class: None,
        guid: None,
        arch_code: None,
        hostname: None,
        leased: false,
    }
}

fn states(rec: &Record) -> Vec<BootState> {
    rec.history
        .iter()
        .filter(|h| h.from.is_some())
        .map(|h| h.state)
        .collect()
}

/// One UEFI machine's whole install, as DHCP, TFTP, HTTP and the OS report it.
fn walk_install(inv: &Inventory, m: MacAddr) {
    let ip = Ipv4Addr::new(10, 0, 0, 5);
    inv.dhcp(m, seen("offer", DhcpClient::Firmware, Some(ip)));
    inv.dhcp(m, seen("ack", DhcpClient::Firmware, Some(ip)));
    inv.tftp_fetched(m, "ipxe.efi");
    inv.dhcp(m, seen("ack", DhcpClient::Ipxe, Some(ip)));
    inv.served(m, "worker", "ipxe", Some(Step::Script), None, "http");
    inv.asset(m, "/assets/os/vmlinuz");
    inv.asset(m, "/assets/os/initrd");
    inv.dhcp(m, seen("ack", DhcpClient::Os, Some(ip)));
    inv.served(m, "worker", "ignition", Some(Step::Config), None, "http");
    inv.report(m, "provisioned", None);
}

#[tokio::test(start_paused = true)]
async fn a_wake_and_install_records_every_transition_in_order() {
    let metrics = Metrics::new();
    let inv = Inventory::new(Settings::default(), Some(metrics.clone()));
    let mut rx = inv.subscribe();
    let m = mac(1);
    inv.woken(m, "test");
    tokio::time::advance(Duration::from_secs(3)).await;
    walk_install(&inv, m);
    let rec = inv.get(m).unwrap();
    use BootState as B;
    let want = [
        B::Waking,
        B::Dhcp,
        B::Firmware,
        B::Ipxe,
        B::Kernel,
        B::Config,
        B::Provisioned,
    ];
    assert_eq!(states(&rec), want);
    assert_eq!(rec.state, B::Provisioned);
    assert!(rec.provisioned);
    assert_eq!(rec.ip, Some(Ipv4Addr::new(10, 0, 0, 5)));
    for s in want {
        assert!(rec.entered.contains_key(&s), "no time for {s}");
    }
    // The same order on the event stream.
    let mut streamed = Vec::new();
    while let Ok(t) = rx.try_recv() {
        assert_eq!(t.mac, m);
        streamed.push(t.to);
    }
    assert_eq!(streamed, want);
    let wake = rec.wake.unwrap();
    assert_eq!(wake.outcome, WakeOutcome::Answered);
    assert_eq!(wake.answered_after_s, Some(3.0));
    assert_eq!(wake.provisioned_after_s, Some(3.0));
    assert!(
        metrics
            .encode()
            .contains("kindling_wake_to_provisioned_seconds_count 1"),
        "{}",
        metrics.encode()
    );
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_marks_stalls_with_their_phase() {
    let settings = Settings {
        stall_after: Timeouts {
            waking: Duration::from_secs(30),
            kernel: Duration::from_secs(60),
            ..Timeouts::default()
        },
        history: 64,
        ..Settings::default()
    };
    let inv = Arc::new(Inventory::new(settings, None));
    let cancel = CancellationToken::new();
    let sweeper = tokio::spawn(inv.clone().run_sweeper(cancel.clone()));
    let (a, b) = (mac(1), mac(2));
    inv.woken(a, "test");
    inv.observe(Facts::from_mac(b));
    inv.served(b, "worker", "ipxe", Some(Step::Script), None, "http");
    inv.asset(b, "/assets/k");
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(inv.get(a).unwrap().state, BootState::Waking);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ra = inv.get(a).unwrap();
    assert_eq!(ra.state, BootState::Stalled);
    assert_eq!(ra.stalled_in, Some(BootState::Waking));
    assert_eq!(ra.wake.as_ref().unwrap().outcome, WakeOutcome::Unanswered);
    assert!(
        ra.history
            .back()
            .unwrap()
            .event
            .starts_with("no DHCP DISCOVER within 3"),
        "{:?}",
        ra.history.back()
    );
    assert_eq!(inv.get(b).unwrap().state, BootState::Kernel);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let rb = inv.get(b).unwrap();
    assert_eq!(
        (rb.state, rb.stalled_in),
        (BootState::Stalled, Some(BootState::Kernel))
    );
    // The late DISCOVER still counts, as late; the stalled machine moves on when it does.
    inv.dhcp(a, seen("offer", DhcpClient::Firmware, None));
    let ra = inv.get(a).unwrap();
    assert_eq!(ra.state, BootState::Dhcp);
    assert_eq!(ra.wake.unwrap().outcome, WakeOutcome::Late);
    inv.served(b, "worker", "ignition", Some(Step::Config), None, "http");
    assert_eq!(inv.get(b).unwrap().state, BootState::Config);
    // Stalled once, not once per sweep.
    let stalls = rb
        .history
        .iter()
        .filter(|h| h.state == BootState::Stalled)
        .count();
    assert_eq!(stalls, 1);
    cancel.cancel();
    sweeper.await.unwrap();
}

#[test]
fn next_boot_semantics() {
    let after_local = Some(&AfterProvision::Local);
    let other = AfterProvision::Profile("rescue".into());
    // Never provisioned: the install; provisioned: the after-install rule.
    assert_eq!(plan(None, false, after_local), Plan::Selected);
    assert_eq!(plan(None, true, after_local), Plan::Local);
    assert_eq!(
        plan(None, true, Some(&other)),
        Plan::Profile("rescue".into())
    );
    // Without a rule, the profile is served every time (live systems).
    assert_eq!(plan(None, true, None), Plan::Selected);
    // The operator's one-shot choice beats everything.
    assert_eq!(
        plan(Some(&NextBoot::Install), true, after_local),
        Plan::Selected
    );
    assert_eq!(plan(Some(&NextBoot::Local), false, None), Plan::Local);
    assert_eq!(
        plan(
            Some(&NextBoot::Profile {
                profile: "memtest".into()
            }),
            true,
            after_local
        ),
        Plan::Profile("memtest".into())
    );

    // Through the inventory: reinstall is served once, then the machine boots local again.
    let inv = Inventory::default();
    let m = mac(7);
    walk_install(&inv, m);
    assert_eq!(inv.plan(m, after_local), (Plan::Local, false));
    inv.set_next_boot(m, Some(NextBoot::Install), "test");
    assert_eq!(inv.plan(m, after_local), (Plan::Selected, true));
    assert_eq!(inv.take_plan(m, after_local), (Plan::Selected, true));
    assert_eq!(inv.plan(m, after_local), (Plan::Local, false));
    let rec = inv.get(m).unwrap();
    assert!(rec.history.iter().any(|h| h.event.contains("reinstall")));
}

/// Threads taking the plan of one machine at the same moment: the one-shot next boot goes to
/// exactly one of them (reading and using it up is one locked step).
#[test]
fn the_one_shot_next_boot_goes_to_exactly_one_of_racing_requests() {
    let inv = Arc::new(Inventory::default());
    let m = mac(9);
    walk_install(&inv, m);
    for round in 0..300 {
        inv.set_next_boot(m, Some(NextBoot::Install), "test");
        let start = Arc::new(std::sync::Barrier::new(4));
        let racing: Vec<_> = (0..4)
            .map(|_| {
                let (inv, start) = (inv.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    inv.take_plan(m, Some(&AfterProvision::Local))
                })
            })
            .collect();
        let plans: Vec<(Plan, bool)> = racing.into_iter().map(|t| t.join().unwrap()).collect();
        let installs = plans
            .iter()
            .filter(|p| **p == (Plan::Selected, true))
            .count();
        assert_eq!(installs, 1, "round {round}: {plans:?}");
        assert!(plans.contains(&(Plan::Local, false)), "{plans:?}");
    }
}

/// The seam a shared store uses: a record written by another instance replaces an older
/// local one, and its change of state is announced like a local one.
#[tokio::test]
async fn records_changed_elsewhere_are_taken_and_announced() {
    let inv = Arc::new(Inventory::default());
    let mut events = inv.subscribe();
    let m = mac(4);
    inv.woken(m, "test");
    let _ = events.recv().await;
    let mut elsewhere = inv.get(m).unwrap();
    elsewhere.state = BootState::Dhcp;
    elsewhere.last_seen = Stamp(elsewhere.last_seen.0 + Duration::from_secs(1));
    elsewhere.history.push_back(HistoryEntry {
        at: elsewhere.last_seen,
        source: "dhcp".into(),
        event: "offer 10.0.0.9 (instance b)".into(),
        from: Some(BootState::Waking),
        state: BootState::Dhcp,
        count: 1,
    });
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let cancel = CancellationToken::new();
    let follower = tokio::spawn(inv.clone().run_remote_changes(rx, |_| {}, cancel.clone()));
    // An older copy changes nothing; the newer one is taken.
    let mut older = elsewhere.clone();
    older.last_seen = Stamp(std::time::SystemTime::UNIX_EPOCH);
    older.state = BootState::Kernel;
    tx.send(Remote::Record(Box::new(older))).await.unwrap();
    tx.send(Remote::Record(Box::new(elsewhere.clone())))
        .await
        .unwrap();
    let t = events.recv().await.unwrap();
    assert_eq!((t.from, t.to), (BootState::Waking, BootState::Dhcp));
    assert_eq!(t.event, "offer 10.0.0.9 (instance b)");
    assert_eq!(inv.get(m).unwrap(), elsewhere);
    cancel.cancel();
    follower.await.unwrap();
}

/// Two writes of one record within a millisecond (facts, then the transition they came with,
/// as one `/ipxe` makes): another instance that took the first takes the second too, by its
/// version; its own echo, and an older version, change nothing.
#[tokio::test]
async fn a_later_write_within_the_same_millisecond_is_taken() {
    let inv = Arc::new(Inventory::default());
    let mut events = inv.subscribe();
    let m = mac(5);
    inv.woken(m, "test");
    let _ = events.recv().await;
    let mut first = inv.get(m).unwrap();
    first.last_seen = Stamp(first.last_seen.0 + Duration::from_secs(1));
    first.version = 7;
    first.hardware.insert("serial".into(), "SN-1".into());
    let mut second = first.clone();
    second.version = 8;
    second.state = BootState::Ipxe;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let cancel = CancellationToken::new();
    let follower = tokio::spawn(inv.clone().run_remote_changes(rx, |_| {}, cancel.clone()));
    for r in [&first, &second, &first] {
        tx.send(Remote::Record(Box::new(r.clone()))).await.unwrap();
    }
    let t = tokio::time::timeout(Duration::from_secs(2), events.recv())
        .await
        .expect("the second write was not taken")
        .unwrap();
    assert_eq!((t.from, t.to), (BootState::Waking, BootState::Ipxe));
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while inv.get(m).unwrap() != second {
        assert!(std::time::Instant::now() < deadline, "{:?}", inv.get(m));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The first came again after the second: still the second.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(inv.get(m).unwrap(), second);
    cancel.cancel();
    follower.await.unwrap();
}

#[test]
fn discovered_machines_and_lan_noise() {
    let inv = Inventory::default();
    let rom = DhcpSeen {
        profile: None,
        ..seen("discover", DhcpClient::Firmware, None)
    };
    inv.dhcp(mac(1), rom);
    assert_eq!(inv.get(mac(1)).unwrap().state, BootState::Discovered);
    // A phone asking the LAN's DHCP (proxy mode sees it) gets no record at all.
    let phone = DhcpSeen {
        profile: None,
        ..seen("discover", DhcpClient::Os, None)
    };
    inv.dhcp(mac(2), phone);
    assert!(inv.get(mac(2)).is_none());
    // A boot request: the request makes the record, what it was served moves it on.
    inv.no_profile(mac(3), "ipxe");
    assert!(
        inv.get(mac(3)).is_none(),
        "only the request itself makes a record"
    );
    inv.observe(Facts::from_mac(mac(3)));
    inv.no_profile(mac(3), "ipxe");
    assert_eq!(inv.get(mac(3)).unwrap().state, BootState::Discovered);
    let filter = Filter {
        state: Some(BootState::Discovered),
        profile: None,
    };
    assert_eq!(inv.list(&filter).len(), 2);
}

#[test]
fn retransmissions_fold_and_history_is_bounded() {
    let inv = Inventory::new(
        Settings {
            history: 8,
            ..Settings::default()
        },
        None,
    );
    let m = mac(1);
    for _ in 0..5 {
        inv.dhcp(m, seen("offer", DhcpClient::Firmware, None));
    }
    let rec = inv.get(m).unwrap();
    assert_eq!(rec.history.len(), 2, "{:?}", rec.history);
    assert_eq!(rec.history[0].from, Some(BootState::Unknown));
    assert_eq!(rec.history[1].count, 4);
    for i in 0..40 {
        inv.asset(m, &format!("/assets/{i}"));
    }
    let rec = inv.get(m).unwrap();
    assert_eq!(rec.history.len(), 8);
    assert_eq!(rec.history.back().unwrap().event, "fetched /assets/39");
}

#[test]
fn addresses_map_back_to_machines() {
    let inv = Inventory::default();
    let ip = Ipv4Addr::new(10, 0, 0, 9);
    inv.dhcp(mac(1), seen("ack", DhcpClient::Firmware, Some(ip)));
    assert_eq!(inv.mac_by_ip(ip), Some(mac(1)));
    // The address moved to another machine.
    inv.dhcp(mac(2), seen("ack", DhcpClient::Firmware, Some(ip)));
    assert_eq!(inv.mac_by_ip(ip), Some(mac(2)));
    inv.learn_ip(mac(3), Ipv4Addr::LOCALHOST);
    assert_eq!(inv.mac_by_ip(Ipv4Addr::LOCALHOST), Some(mac(3)));
}

#[test]
fn later_requests_inherit_earlier_facts() {
    let inv = Inventory::default();
    let m = mac(1);
    let mut first = Facts::from_mac(m);
    first.arch = Some("x86_64".into());
    first.uuid = Some("u1".into());
    first.labels.insert("serial".into(), "S1".into());
    inv.observe(first);
    let later = inv.observe(Facts::from_mac(m));
    assert_eq!(later.arch.as_deref(), Some("x86_64"));
    assert_eq!(later.uuid.as_deref(), Some("u1"));
    assert!(later.labels.is_empty(), "labels are per request");
    let mut changed = Facts::from_mac(m);
    changed.arch = Some("arm64".into());
    assert_eq!(inv.observe(changed).arch.as_deref(), Some("arm64"));
    assert_eq!(inv.get(m).unwrap().hardware["serial"], "S1");
}

#[tokio::test(start_paused = true)]
async fn bounded_and_declared_machines_stay() {
    // No creation budget in the way: this is about the bound.
    let inv = Inventory::new(
        Settings {
            discovery_burst: u32::MAX,
            ..Settings::default()
        },
        None,
    );
    // A declared machine is never evicted, however stale.
    inv.apply_from(
        mac(0),
        Origin::Network(None),
        "test",
        "x".into(),
        None,
        |r, _| r.declared = true,
    );
    for i in 0..(MAX_MACHINES as u32 + 10) {
        tokio::time::advance(Duration::from_millis(1)).await;
        let b = i.to_be_bytes();
        inv.observe(Facts::from_mac(MacAddr([2, 0, b[0], b[1], b[2], b[3]])));
    }
    assert_eq!(inv.len(), MAX_MACHINES);
    assert!(inv.get(mac(0)).is_some(), "declared machine kept");
    assert!(
        inv.get(MacAddr([2, 0, 0, 0, 0, 0])).is_none(),
        "oldest undeclared evicted"
    );
}

/// A storm of new machines on Kindling's own DHCP: the discovery budget holds back records of
/// DISCOVERs, but every ACK of a lease makes one, so each machine's boot script from its
/// leased address counts as its own (before: the ACK went unrecorded beyond the budget, and
/// `/ipxe` from that address was refused with 403 until the machine asked DHCP again).
#[tokio::test(start_paused = true)]
async fn every_leased_machine_is_recorded_beyond_the_discovery_budget() {
    let inv = Inventory::new(
        Settings {
            discovery_burst: 2,
            discovery_per_second: 1,
            ..Settings::default()
        },
        None,
    );
    let ip = |i: u8| Ipv4Addr::new(10, 0, 1, i);
    for i in 1..=20 {
        inv.dhcp(mac(i), seen("discover", DhcpClient::Ipxe, None));
    }
    assert_eq!(inv.len(), 2, "DISCOVERs stay within the budget");
    for i in 1..=20 {
        let ack = DhcpSeen {
            leased: true,
            ..seen("ack", DhcpClient::Ipxe, Some(ip(i)))
        };
        inv.dhcp(mac(i), ack);
    }
    assert_eq!(inv.len(), 20);
    for i in 1..=20 {
        let access = inv.access(mac(i), Some(ip(i)), None, DhcpMode::Full, true);
        assert!(access.from_machine, "machine {i} from its leased address");
    }
    // An ACK not of Kindling's own lease (leased: false) still counts against the budget.
    inv.dhcp(mac(30), seen("ack", DhcpClient::Ipxe, Some(ip(30))));
    assert!(inv.get(mac(30)).is_none());
}

/// A flood of new MACs from one address creates at most its budget of records; another address
/// and the declared machines are unaffected; at the cap, eviction keeps up (O(log n)).
#[tokio::test(start_paused = true)]
async fn new_records_are_created_within_a_budget_per_source_and_evicted_in_log_time() {
    let inv = Inventory::new(
        Settings {
            max_machines: 1_000,
            discovery_burst: 300,
            discovery_per_second: 10,
            ..Settings::default()
        },
        None,
    );
    inv.apply_from(
        mac(0),
        Origin::Declared,
        "test",
        "x".into(),
        None,
        |r, _| r.declared = true,
    );
    let flood = Some(Ipv4Addr::new(10, 0, 0, 66));
    let new_mac = |i: u32| {
        let b = i.to_be_bytes();
        MacAddr([2, 0, b[0], b[1], b[2], b[3]])
    };
    for i in 0..2_500 {
        inv.observe_from(Facts::from_mac(new_mac(i)), flood);
    }
    assert_eq!(inv.len(), 1 + 300, "the burst, no more");
    // Another address has a budget of its own; time refills the flooder's.
    inv.observe_from(Facts::from_mac(mac(7)), Some(Ipv4Addr::new(10, 0, 0, 7)));
    assert!(inv.get(mac(7)).is_some());
    tokio::time::advance(Duration::from_secs(2)).await;
    for i in 10_000..10_100 {
        inv.observe_from(Facts::from_mac(new_mac(i)), flood);
    }
    assert_eq!(inv.len(), 1 + 300 + 1 + 20);
    // At the cap: every new machine evicts the least recently seen undeclared one, fast.
    let inv = Inventory::new(
        Settings {
            max_machines: 10_000,
            discovery_burst: u32::MAX,
            ..Settings::default()
        },
        None,
    );
    inv.apply_from(
        mac(0),
        Origin::Declared,
        "test",
        "x".into(),
        None,
        |r, _| r.declared = true,
    );
    let started = std::time::Instant::now();
    for i in 0..30_000 {
        tokio::time::advance(Duration::from_millis(1)).await;
        inv.observe_from(Facts::from_mac(new_mac(i)), flood);
        if i == 10 {
            // Seen again: no longer among the stalest.
            inv.observe_from(Facts::from_mac(new_mac(1)), flood);
        }
    }
    assert_eq!(inv.len(), 10_000);
    assert!(inv.get(mac(0)).is_some(), "declared machine kept");
    assert!(inv.get(new_mac(29_999)).is_some());
    assert!(inv.get(new_mac(2)).is_none());
    // A scan of every record per eviction (what this replaced) takes many seconds here.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?} for 20,000 evictions",
        started.elapsed()
    );
}

#[tokio::test]
async fn records_survive_the_store_and_flushed_waits_for_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbMachineStore::open(dir.path()).unwrap());
    let inv = Arc::new(Inventory::default());
    let cancel = CancellationToken::new();
    let writer = tokio::spawn(inv.clone().run_writer(store.clone(), cancel.clone()));
    tokio::task::yield_now().await;
    walk_install(&inv, mac(1));
    inv.set_next_boot(mac(1), Some(NextBoot::Local), "test");
    inv.flushed().await;
    let stored = store.load().await.unwrap();
    assert_eq!(stored, vec![inv.get(mac(1)).unwrap()]);
    // A fresh inventory restored from it answers the same.
    let again = Inventory::default();
    again.restore(stored);
    assert_eq!(again.get(mac(1)), inv.get(mac(1)));
    assert_eq!(again.mac_by_ip(Ipv4Addr::new(10, 0, 0, 5)), Some(mac(1)));
    cancel.cancel();
    writer.await.unwrap();
}

/// A boot secret opens the machine's configs until the next boot mints another, or for
/// [`BootSecret::TTL`] at most; it survives a restart (the store keeps it).
#[tokio::test(start_paused = true)]
async fn a_boot_secret_lasts_for_its_boot_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbMachineStore::open(dir.path()).unwrap());
    let inv = Arc::new(Inventory::default());
    let cancel = CancellationToken::new();
    let writer = tokio::spawn(inv.clone().run_writer(store.clone(), cancel.clone()));
    let m = mac(7);
    let (machine, stranger) = (
        Some(Ipv4Addr::new(10, 0, 0, 7)),
        Some(Ipv4Addr::new(10, 0, 0, 66)),
    );
    inv.observe_from(Facts::from_mac(m), machine);
    let token = inv.begin_boot(m, machine).expect("a secret");
    assert!(
        inv.access(m, stranger, Some(&token), DhcpMode::Off, false)
            .token_ok
    );
    assert!(
        !inv.access(m, stranger, Some(&"0".repeat(32)), DhcpMode::Off, false)
            .token_ok
    );
    // Bound to the address its script went to.
    assert!(
        inv.access(m, machine, None, DhcpMode::Off, false)
            .from_machine
    );
    assert!(
        !inv.access(m, stranger, None, DhcpMode::Off, true)
            .from_machine
    );

    // A restart: the record, secret included, comes back from the store.
    inv.flushed().await;
    cancel.cancel();
    writer.await.unwrap();
    let again = Inventory::default();
    again.restore(store.load().await.unwrap());
    assert!(
        again
            .access(m, stranger, Some(&token), DhcpMode::Off, false)
            .token_ok
    );

    // The next boot mints a new one: the old opens nothing.
    let newer = again.begin_boot(m, machine).unwrap();
    assert_ne!(newer, token);
    assert!(
        !again
            .access(m, stranger, Some(&token), DhcpMode::Off, false)
            .token_ok
    );
    // And a boot that never ends stops counting after the TTL.
    tokio::time::advance(BootSecret::TTL + Duration::from_secs(1)).await;
    let late = again.access(m, stranger, Some(&newer), DhcpMode::Off, false);
    assert!(!late.token_ok && late.secret.is_none());
}

/// Proxy mode knows a machine's address only once the machine talked to it from there (PXE's
/// 4011 request). Before, its first boot script request binds the boot, as with DHCP off (a
/// UEFI HTTP boot client never talks to the proxy from its address); after, only that address
/// is the machine's. Full mode never binds: only the address it gave counts.
#[test]
fn proxy_mode_binds_the_boot_until_it_saw_the_machines_address() {
    let inv = Inventory::default();
    let m = mac(8);
    let (machine, stranger) = (
        Some(Ipv4Addr::new(10, 0, 0, 8)),
        Some(Ipv4Addr::new(10, 0, 0, 66)),
    );
    inv.observe_from(Facts::from_mac(m), None);
    assert!(
        inv.access(m, machine, None, DhcpMode::Proxy, true)
            .from_machine
    );
    assert!(
        !inv.access(m, machine, None, DhcpMode::Full, true)
            .from_machine
    );
    inv.begin_boot(m, machine).expect("a secret");
    assert!(
        inv.access(m, machine, None, DhcpMode::Proxy, false)
            .from_machine
    );
    assert!(
        !inv.access(m, stranger, None, DhcpMode::Proxy, true)
            .from_machine
    );
    // The proxy saw it use another address: that one is the machine's now.
    let now_at = Some(Ipv4Addr::new(10, 0, 0, 9));
    inv.dhcp(m, seen("proxy_ack", DhcpClient::Firmware, now_at));
    assert!(
        inv.access(m, now_at, None, DhcpMode::Proxy, false)
            .from_machine
    );
    assert!(
        !inv.access(m, machine, None, DhcpMode::Proxy, true)
            .from_machine
    );
}

/// A boot request's look changes the record (and wakes the writer) only when it reports
/// something new or uses up the next boot; what it was served, with its new secret, is one
/// more change: a repeated `/ipxe` of a known machine is one change, not five.
#[test]
fn a_boot_request_marks_the_record_only_for_what_changed() {
    let inv = Inventory::default();
    let m = mac(9);
    let ip = Some(Ipv4Addr::new(10, 0, 0, 9));
    let generation = || inv.lock().generation;
    let ask = Ask {
        peer: ip,
        token: None,
        dhcp: DhcpMode::Off,
        boot_script: true,
    };
    let mut facts = Facts::from_mac(m);
    facts.arch = Some("x86_64".into());
    let look = |facts: Facts, next: bool| match inv.boot_request(
        ask,
        facts,
        |a| Some(a.from_machine),
        |_, f, view| (f.arch.clone(), view.next_boot.clone()),
        |_| next,
    ) {
        Asked::Decided(d) => d,
        Asked::Refused(a) => panic!("refused: {a:?}"),
    };
    let first = look(facts.clone(), false);
    assert!(first.own && first.recorded && first.access.from_machine);
    let after_first = generation();
    assert!(after_first > 0, "a new record with new facts is a change");

    // The same facts again: a look, no change.
    inv.lock().dirty.clear();
    let again = look(Facts::from_mac(m), false);
    assert_eq!(
        again.facts.arch.as_deref(),
        Some("x86_64"),
        "filled in from the record"
    );
    assert_eq!(generation(), after_first, "nothing changed, nothing marked");
    assert!(inv.lock().dirty.is_empty());

    // What went out, and the secret it began: one change.
    let secret = mint_secret();
    assert_eq!(secret.len(), 32);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(secret, mint_secret());
    let served = Served {
        profile: "worker",
        what: "ipxe",
        step: Some(Step::Script),
        booting_profile: None,
        source: "http",
    };
    inv.served_boot(m, Some((secret.clone(), ip)), served);
    assert_eq!(generation(), after_first + 1);
    assert!(inv.lock().dirty.contains(&m));
    let rec = inv.get(m).unwrap();
    assert_eq!(
        rec.secret.as_ref().map(|s| s.token.as_str()),
        Some(secret.as_str())
    );
    assert_eq!(rec.last_served.as_deref(), Some("ipxe"));
    assert!(
        inv.access(
            m,
            Some(Ipv4Addr::new(10, 0, 0, 66)),
            Some(&secret),
            DhcpMode::Off,
            false
        )
        .token_ok
    );

    // Using up the next boot is a change, made in the same look.
    inv.set_next_boot(m, Some(NextBoot::Install), "test");
    let before = generation();
    let used = look(Facts::from_mac(m), true);
    assert_eq!(used.decision.1, Some(NextBoot::Install));
    assert_eq!(generation(), before + 1);
    assert_eq!(inv.get(m).unwrap().next_boot, None);

    // Refused: nothing at all.
    let before = generation();
    let refused = inv.boot_request(
        ask,
        Facts::from_mac(mac(10)),
        |_| None,
        |_, _, _| (),
        |_| false,
    );
    assert!(matches!(refused, Asked::Refused(_)));
    assert_eq!(generation(), before);
    assert!(inv.get(mac(10)).is_none());
}

/// A store that keeps the batches it is given, at once.
#[derive(Default)]
struct Batches(std::sync::Mutex<Vec<usize>>);

#[async_trait::async_trait]
impl MachineStore for Batches {
    async fn load(&self) -> Result<Vec<Record>, store::StoreError> {
        Ok(Vec::new())
    }

    async fn write(&self, changes: Vec<store::Change>) -> Result<(), store::StoreError> {
        self.0.lock().unwrap().push(changes.len());
        Ok(())
    }
}

/// An inventory whose writer runs into a [`Batches`] store, started.
async fn batches_writer() -> (
    Arc<Batches>,
    Arc<Inventory>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let store = Arc::new(Batches::default());
    let inv = Arc::new(Inventory::default());
    let cancel = CancellationToken::new();
    let writer = tokio::spawn(inv.clone().run_writer(store.clone(), cancel.clone()));
    tokio::task::yield_now().await;
    (store, inv, cancel, writer)
}

/// A report waits for its change to be on disk: the writer, gathering changes after its last
/// commit, writes at once what gathered so far instead of finishing its pause.
#[tokio::test(start_paused = true)]
async fn a_waiting_report_ends_the_writers_pause() {
    let (store, inv, cancel, writer) = batches_writer().await;
    walk_install(&inv, mac(1));
    inv.flushed().await;
    // The writer now pauses; a change that nobody waits for gathers, then a report comes.
    inv.woken(mac(2), "test");
    let started = tokio::time::Instant::now();
    inv.report(mac(1), "provisioned", None);
    inv.flushed().await;
    assert!(
        started.elapsed() < writer::WRITE_GATHER,
        "the report waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        store.0.lock().unwrap().last(),
        Some(&2),
        "both gathered changes in one batch"
    );
    cancel.cancel();
    writer.await.unwrap();
}

/// A change nobody waits for (a DHCP exchange's) is not written at once: it gathers for
/// `WRITE_GATHER` with those that follow, so its fsync does not run beside the lease's that
/// its ACK waits for.
#[tokio::test(start_paused = true)]
async fn a_change_nobody_waits_for_gathers_before_it_is_written() {
    let (store, inv, cancel, writer) = batches_writer().await;
    inv.woken(mac(1), "test");
    tokio::time::sleep(writer::WRITE_GATHER / 2).await;
    assert!(
        store.0.lock().unwrap().is_empty(),
        "written before the gather ended: {:?}",
        store.0.lock().unwrap()
    );
    inv.woken(mac(2), "test");
    tokio::time::sleep(writer::WRITE_GATHER).await;
    assert_eq!(
        *store.0.lock().unwrap(),
        vec![2],
        "both changes in one batch, once the gather ended"
    );
    // Stopping writes what gathered at once.
    inv.woken(mac(3), "test");
    tokio::task::yield_now().await;
    cancel.cancel();
    writer.await.unwrap();
    assert_eq!(*store.0.lock().unwrap(), vec![2, 1]);
}
