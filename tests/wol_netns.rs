//! Wake-on-LAN in network namespaces this test creates: Kindling in one, the "sleeping
//! machine" in the other, joined by a veth pair. The API call sends the magic packet; the peer
//! side sees the exact 102-byte payload as a UDP broadcast on port 9 and as a raw Ethernet
//! frame with EtherType 0x0842 (captured with an AF_PACKET socket opened in its namespace).
//! Then the woken machine's DHCP DISCOVER (udhcpc with its MAC) arrives in time and its
//! record says so, while a machine that never answers is marked stalled in `waking`; waking a
//! group goes by profile and label through `kindling wake`.

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::{Daemon, Netns, ip, write};
use kindling::mac::MacAddr;
use kindling::wol::{ETHERTYPE_WOL, magic_packet};

#[test]
fn wake_sends_the_magic_packet_as_udp_broadcast_and_raw_frame() {
    let uid = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!(
            "SKIP wake_sends_the_magic_packet_as_udp_broadcast_and_raw_frame: needs root for network namespaces"
        );
        return;
    }
    let net = Netns::new(&["ws", "wc"]);
    let (s, c) = (net.names[0].clone(), net.names[1].clone());
    net.veth(&s, "vs0", &c, "vc0");
    ip(&[
        "-n",
        &s,
        "addr",
        "add",
        "10.78.0.2/24",
        "broadcast",
        "10.78.0.255",
        "dev",
        "vs0",
    ]);
    ip(&[
        "-n",
        &c,
        "addr",
        "add",
        "10.78.0.9/24",
        "broadcast",
        "10.78.0.255",
        "dev",
        "vc0",
    ]);
    ip(&["-n", &s, "link", "set", "vs0", "up"]);
    ip(&["-n", &c, "link", "set", "vc0", "up"]);

    // The sleeping machine's side: UDP port 9, and every frame on vc0.
    let udp: UdpSocket = common::in_netns(&c, || {
        let s = UdpSocket::bind("0.0.0.0:9").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    });
    let (frames_tx, frames) = mpsc::channel::<Vec<u8>>();
    let cns = c.clone();
    std::thread::spawn(move || {
        common::in_netns(&cns, move || {
            let nic = pnet_datalink::interfaces()
                .into_iter()
                .find(|i| i.name == "vc0")
                .expect("vc0");
            let config = pnet_datalink::Config {
                read_timeout: Some(Duration::from_millis(200)),
                ..Default::default()
            };
            let Ok(pnet_datalink::Channel::Ethernet(_, mut rx)) =
                pnet_datalink::channel(&nic, config)
            else {
                panic!("no capture channel");
            };
            let end = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < end {
                if let Ok(frame) = rx.next()
                    && frames_tx.send(frame.to_vec()).is_err()
                {
                    break;
                }
            }
        });
    });

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "kindling.toml",
        "[http]\nlisten = \"127.0.0.1:8080\"\n[wol]\ninterface = \"vs0\"\nrepeat = 2\n[api]\ntoken = \"t0ken\"\n\
         [inventory.stall_after]\nwaking = \"3s\"\n\
         [dhcp]\nmode = \"full\"\ninterfaces = [\"vs0\"]\n\
         [[dhcp.subnet]]\nnetwork = \"10.78.0.0/24\"\nrange = [\"10.78.0.100\", \"10.78.0.110\"]\nserver_ip = \"10.78.0.2\"\n",
    );
    write(
        dir.path(),
        "profiles/p.toml",
        "default = true\n[boot]\nkernel = \"k\"\n\
         [[machine]]\nmac = \"52:54:00:78:00:09\"\nlabels = { rack = \"a\" }\n\
         [[machine]]\nmac = \"52:54:00:78:00:0a\"\nlabels = { rack = \"b\" }\n",
    );
    let d = Daemon::start_in(&s, &dir.path().join("kindling.toml"));
    std::thread::sleep(Duration::from_millis(300)); // the capture thread opens its socket
    let mac = "52:54:00:78:00:09";
    let out = Command::new("ip")
        .args(["netns", "exec", &s, "curl", "-sS", "-X", "POST"])
        .args(["-H", "Authorization: Bearer t0ken"])
        .arg(format!("http://127.0.0.1:8080/api/v1/machines/{mac}/wake"))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(body.contains("10.78.0.255:9"), "{body}\n{}", d.log_text());

    let want = magic_packet(mac.parse::<MacAddr>().unwrap(), None);
    assert_eq!(want.len(), 102);
    let mut buf = [0u8; 200];
    let (n, from) = udp.recv_from(&mut buf).expect("a UDP magic packet");
    assert_eq!(&buf[..n], &want[..], "UDP payload from {from}");

    let mut raw = 0;
    while let Ok(frame) = frames.recv_timeout(Duration::from_secs(5)) {
        if frame.len() >= 14 + 102 && frame[12..14] == ETHERTYPE_WOL.to_be_bytes() {
            assert_eq!(&frame[..6], &[0xff; 6], "broadcast destination");
            assert_eq!(&frame[14..14 + 102], &want[..]);
            raw += 1;
            if raw == 2 {
                break;
            }
        }
    }
    assert_eq!(raw, 2, "two raw 0x0842 frames (repeat = 2)");

    let record = |mac: &str| -> serde_json::Value {
        let out = Command::new("ip")
            .args(["netns", "exec", &s, "curl", "-s"])
            .arg(format!("http://127.0.0.1:8080/api/v1/machines/{mac}"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let rec = record(mac);
    assert_eq!(rec["state"], "waking", "{rec}");
    assert_eq!(rec["wake"]["outcome"], "pending", "{rec}");

    // The other machine of the profile, by label, through the CLI.
    let other = "52:54:00:78:00:0a";
    let out = Command::new("ip")
        .args(["netns", "exec", &s, env!("CARGO_BIN_EXE_kindling"), "wake"])
        .args(["--url", "http://127.0.0.1:8080", "--token", "t0ken"])
        .args(["--profile", "p", "--label", "rack=b"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.trim(),
        format!("woken  {other} with Wake-on-LAN"),
        "only rack b"
    );

    // The woken machine boots: its DHCP DISCOVER (udhcpc with its MAC) arrives in time.
    ip(&["-n", &c, "link", "set", "vc0", "address", mac]);
    let dhcp = Command::new("timeout")
        .args([
            "20", "ip", "netns", "exec", &c, "busybox", "udhcpc", "-i", "vc0",
        ])
        .args(["-n", "-q", "-f", "-s", "/bin/true", "-t", "4", "-T", "2"])
        .output()
        .unwrap();
    assert!(dhcp.status.success(), "udhcpc: {dhcp:?}");
    let rec = record(mac);
    assert_eq!(rec["state"], "dhcp", "{rec}");
    assert_eq!(rec["wake"]["outcome"], "answered", "{rec}");
    assert!(
        rec["wake"]["answered_after_s"].as_f64().unwrap() < 3.0,
        "{rec}"
    );

    // The other one never answers: stalled in waking after the configured 3 s.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let rec = loop {
        let rec = record(other);
        if rec["state"] == "stalled" || std::time::Instant::now() > end {
            break rec;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(rec["state"], "stalled", "{rec}");
    assert_eq!(rec["stalled_in"], "waking", "{rec}");
    assert_eq!(rec["wake"]["outcome"], "unanswered", "{rec}");
    let last = rec["history"].as_array().unwrap().last().unwrap().clone();
    assert!(
        last["event"]
            .as_str()
            .unwrap()
            .starts_with("no DHCP DISCOVER within"),
        "{last}"
    );
}
