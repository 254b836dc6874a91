//! Wake-on-LAN in network namespaces this test creates: Kindling in one, the "sleeping
//! machine" in the other, joined by a veth pair. The API call sends the magic packet; the peer
//! side sees the exact 102-byte payload as a UDP broadcast on port 9 and as a raw Ethernet
//! frame with EtherType 0x0842 (captured with an AF_PACKET socket opened in its namespace).

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::{Daemon, Netns, ip, write};
use kindling::mac::MacAddr;
use kindling::wol::{ETHERTYPE_WOL, magic_packet};

/// Run `f` on a thread that joined namespace `ns` (sockets it opens stay there).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

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
    let udp: UdpSocket = in_netns(&c, || {
        let s = UdpSocket::bind("0.0.0.0:9").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    });
    let (frames_tx, frames) = mpsc::channel::<Vec<u8>>();
    let cns = c.clone();
    std::thread::spawn(move || {
        in_netns(&cns, move || {
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
        "[http]\nlisten = \"127.0.0.1:8080\"\n[wol]\ninterface = \"vs0\"\nrepeat = 2\n[api]\ntoken = \"t0ken\"\n",
    );
    write(
        dir.path(),
        "profiles/p.toml",
        "default = true\n[boot]\nkernel = \"k\"\n",
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

    let rec = Command::new("ip")
        .args(["netns", "exec", &s, "curl", "-s"])
        .arg(format!("http://127.0.0.1:8080/api/v1/machines/{mac}"))
        .output()
        .unwrap();
    let rec = String::from_utf8_lossy(&rec.stdout);
    assert!(rec.contains("\"state\":\"waking\""), "{rec}");
}
