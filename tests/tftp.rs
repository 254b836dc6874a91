//! TFTP against real clients (curl, tftp-hpa) and a raw-socket client for the option and
//! error cases, on loopback: the OVMF tsize-probe sequence, windowsize, refusals, a client
//! that vanishes, and the transfer bound.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, rss_kib, write};
use kindling::tftp::packet::{self, Packet};

/// A daemon serving TFTP on loopback from a temporary iPXE directory and assets directory.
struct Lab {
    _dir: tempfile::TempDir,
    daemon: Daemon,
    tftp: SocketAddr,
    /// The ~1 MiB "iPXE binary".
    small: Vec<u8>,
    /// A 9 MiB asset (bigger than the 8 MiB cache limit: read per window).
    big: Vec<u8>,
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn lab(extra: &str) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let small = pattern(1_000_000, 7);
    let big = pattern(9 << 20, 11);
    std::fs::create_dir_all(dir.path().join("ipxe")).unwrap();
    std::fs::write(dir.path().join("ipxe/ipxe.efi"), &small).unwrap();
    std::fs::create_dir_all(dir.path().join("assets/os")).unwrap();
    std::fs::write(dir.path().join("assets/os/big.img"), &big).unwrap();
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe");
    write(
        dir.path(),
        "kindling.toml",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[paths]\nipxe_binaries = \"ipxe\"\nipxe_scripts = \"{}\"\n\
             [tftp]\nenabled = true\nlisten = \"127.0.0.1:0\"\n{extra}",
            scripts.display()
        ),
    );
    write(
        dir.path(),
        "profiles/p.toml",
        "default = true\n[boot]\nkernel = \"k\"\n",
    );
    let daemon = Daemon::start(&dir.path().join("kindling.toml"));
    let tftp = daemon.logged_addr("listening for TFTP on ");
    Lab {
        _dir: dir,
        daemon,
        tftp,
        small,
        big,
    }
}

fn tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// Receive one packet: its parsed form, raw bytes and source.
fn recv(s: &UdpSocket) -> (Packet, Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 70_000];
    let (n, from) = s.recv_from(&mut buf).expect("a packet from the server");
    buf.truncate(n);
    let parsed = match u16::from_be_bytes([buf[0], buf[1]]) {
        packet::DATA | packet::OACK => Packet::Other(u16::from_be_bytes([buf[0], buf[1]])),
        _ => packet::parse(&buf).unwrap(),
    };
    (parsed, buf, from)
}

fn oack_fields(raw: &[u8]) -> Vec<(String, String)> {
    let parts: Vec<String> = raw[2..]
        .split(|&c| c == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    parts
        .chunks(2)
        .filter(|c| c.len() == 2 && !c[0].is_empty())
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

/// Download after an OACK (already received from `tid`), windowed: ACK the last block of
/// each window, like OVMF. Returns the file.
fn download_windowed(s: &UdpSocket, tid: SocketAddr, block_size: usize, window: usize) -> Vec<u8> {
    s.send_to(&packet::ack(0), tid).unwrap();
    let mut out = Vec::new();
    let mut expect: u16 = 1;
    let mut in_window = 0;
    loop {
        let (_, raw, from) = recv(s);
        assert_eq!(from, tid, "data from the transfer's own port");
        assert_eq!(u16::from_be_bytes([raw[0], raw[1]]), packet::DATA);
        let block = u16::from_be_bytes([raw[2], raw[3]]);
        assert_eq!(block, expect, "blocks in order on a loss-free link");
        out.extend_from_slice(&raw[4..]);
        let last = raw.len() - 4 < block_size;
        in_window += 1;
        if in_window == window || last {
            s.send_to(&packet::ack(block), tid).unwrap();
            in_window = 0;
        }
        if last {
            return out;
        }
        expect = expect.wrapping_add(1);
    }
}

/// OVMF's sequence: RRQ with tsize/blksize/windowsize, ERROR 8 after the OACK, then the same
/// RRQ again from the same port. The second request must be answered at once, not after the
/// first transfer's retries run out.
#[test]
fn tsize_probe_then_error_then_rrq_again_is_served_at_once() {
    let lab = lab("");
    let s = client();
    let opts = [("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")];
    s.send_to(&packet::rrq("ipxe.efi", &opts), lab.tftp)
        .unwrap();
    let (_, raw, tid) = recv(&s);
    assert_eq!(u16::from_be_bytes([raw[0], raw[1]]), packet::OACK);
    assert_eq!(
        oack_fields(&raw),
        [
            ("blksize".to_string(), "1468".to_string()),
            ("tsize".into(), lab.small.len().to_string()),
            ("windowsize".into(), "4".into()),
        ]
    );
    s.send_to(
        &packet::error(packet::ErrorCode::OptionsRefused, "tsize only"),
        tid,
    )
    .unwrap();
    let asked = Instant::now();
    s.send_to(
        &packet::rrq("ipxe.efi", &[("blksize", "1468"), ("windowsize", "4")]),
        lab.tftp,
    )
    .unwrap();
    let (_, raw, tid2) = recv(&s);
    let waited = asked.elapsed();
    assert_eq!(u16::from_be_bytes([raw[0], raw[1]]), packet::OACK);
    assert!(
        waited < Duration::from_millis(500),
        "the second RRQ waited {waited:?}"
    );
    let started = Instant::now();
    let got = download_windowed(&s, tid2, 1468, 4);
    assert!(got == lab.small, "content differs");
    lab.daemon
        .wait_log(Duration::from_secs(3), |l| {
            // Each window of 4 left in one segmented send (UDP GSO), and still arrived as 4
            // DATA packets (download_windowed checks every block number and size).
            l.contains("TFTP sent")
                && l.contains("file=ipxe.efi")
                && l.contains("window=4")
                && l.contains("sends=segmented")
        })
        .unwrap_or_else(|| panic!("{}", lab.daemon.log_text()));
    eprintln!("1 MB at blksize 1468 windowsize 4: {:?}", started.elapsed());
}

#[test]
fn options_are_clamped_and_plain_requests_get_512_byte_blocks() {
    let lab = lab("max_block_size = 1024\nmax_window_size = 8\n");
    let s = client();
    s.send_to(
        &packet::rrq(
            "os/big.img",
            &[
                ("blksize", "65464"),
                ("windowsize", "1000"),
                ("timeout", "3"),
            ],
        ),
        lab.tftp,
    )
    .unwrap();
    let (_, raw, tid) = recv(&s);
    assert_eq!(
        oack_fields(&raw),
        [
            ("blksize".to_string(), "1024".to_string()),
            ("timeout".into(), "3".into()),
            ("windowsize".into(), "8".into()),
        ]
    );
    let got = download_windowed(&s, tid, 1024, 8);
    assert!(got == lab.big, "9 MiB asset (read per window) differs");

    // No options: no OACK, DATA 1 of 512 bytes straight away, lock-step.
    let s = client();
    s.send_to(&packet::rrq("ipxe.efi", &[]), lab.tftp).unwrap();
    let (_, raw, tid) = recv(&s);
    assert_eq!(u16::from_be_bytes([raw[0], raw[1]]), packet::DATA);
    assert_eq!(raw.len(), 4 + 512);
    // The remaining blocks, lock-step (window 1): ACK 1 then continue.
    let mut got = raw[4..].to_vec();
    s.send_to(&packet::ack(1), tid).unwrap();
    let mut expect = 2u16;
    loop {
        let (_, raw, _) = recv(&s);
        assert_eq!(u16::from_be_bytes([raw[2], raw[3]]), expect);
        got.extend_from_slice(&raw[4..]);
        s.send_to(&packet::ack(expect), tid).unwrap();
        if raw.len() < 4 + 512 {
            break;
        }
        expect = expect.wrapping_add(1);
    }
    assert!(got == lab.small);
}

#[test]
fn refusals_are_tftp_errors() {
    let lab = lab("");
    let cases: [(&[u8], u16, &str); 6] = [
        (&packet::rrq("../etc/passwd", &[]), 2, ".."),
        // A leading '/' is the TFTP root: /etc/passwd is looked up there, not on the host.
        (&packet::rrq("/etc/passwd", &[]), 1, "no such file"),
        (&packet::rrq("os/../../x", &[]), 2, ".."),
        (&packet::rrq("missing.efi", &[]), 1, "no such file"),
        (b"\x00\x02ipxe.efi\x00octet\x00", 2, "read-only"),
        (b"\x00\x01ipxe.efi\x00netascii\x00", 0, "octet"),
    ];
    for (req, code, text) in cases {
        let s = client();
        s.send_to(req, lab.tftp).unwrap();
        match recv(&s).0 {
            Packet::Error(c, msg) => {
                assert_eq!(c, code, "{msg}");
                assert!(msg.contains(text), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }
    // Garbage is dropped, and the server keeps serving.
    let s = client();
    s.send_to(b"\x00\x09junk", lab.tftp).unwrap();
    s.send_to(&packet::rrq("ipxe.efi", &[]), lab.tftp).unwrap();
    assert!(matches!(recv(&s).0, Packet::Other(packet::DATA)));
}

/// A client that stops answering: the transfer ends after its retries (timeout 200 ms × 2),
/// is logged, and frees its slot (max_transfers = 1) for the next client. That client's request
/// waits for the slot instead of getting an ERROR (a PXE ROM gives up its boot on one); its
/// repeated request keeps its place, and it is served once the slot frees.
#[test]
fn a_vanished_client_ends_its_transfer_and_frees_the_slot() {
    let lab = lab("timeout = \"200ms\"\nretries = 2\nmax_transfers = 1\n");
    let gone = client();
    gone.send_to(&packet::rrq("ipxe.efi", &[("blksize", "1024")]), lab.tftp)
        .unwrap();
    let _ = recv(&gone); // the OACK; never acknowledged
    // The only slot is taken: another client waits, asking twice as a ROM does.
    let other = client();
    let asked = std::time::Instant::now();
    other
        .send_to(&packet::rrq("ipxe.efi", &[]), lab.tftp)
        .unwrap();
    other
        .send_to(&packet::rrq("ipxe.efi", &[]), lab.tftp)
        .unwrap();
    let (first, _, from) = recv(&other);
    assert!(
        matches!(first, Packet::Other(packet::DATA)),
        "served once the slot freed, not refused: {first:?}"
    );
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "it waited for the vanished client's retries ({:?})",
        asked.elapsed()
    );
    lab.daemon
        .wait_log(Duration::from_secs(5), |l| {
            l.contains("TFTP transfer abandoned")
        })
        .unwrap_or_else(|| panic!("{}", lab.daemon.log_text()));
    // One transfer for both requests: no second one from another port of the server.
    other
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    while let Ok((_, f)) = other.recv_from(&mut buf) {
        assert_eq!(f, from, "a second transfer answered the repeated request");
    }
    drop(gone);
}

/// A client that goes silent after the first block: the server sends the block again after
/// 200 ms, then waits twice as long each time (400, 800, 1,600, 1,600 ms), and ends the
/// transfer after its retries, as dnsmasq backs off. A constant timeout fails it.
#[test]
fn retransmissions_back_off() {
    let lab = lab("timeout = \"200ms\"\nretries = 4\n");
    let s = client();
    s.send_to(&packet::rrq("ipxe.efi", &[]), lab.tftp).unwrap();
    let (first, _, _) = recv(&s);
    assert!(matches!(first, Packet::Other(packet::DATA)));
    let start = Instant::now();
    let mut at = Vec::new();
    let mut buf = [0u8; 1024];
    s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
    while let Ok((n, _)) = s.recv_from(&mut buf) {
        assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), packet::DATA, "{n}");
        at.push(start.elapsed());
    }
    assert_eq!(at.len(), 4, "4 retransmissions: {at:?}");
    let gaps: Vec<Duration> = std::iter::once(at[0])
        .chain(at.windows(2).map(|w| w[1] - w[0]))
        .collect();
    let ms = Duration::from_millis;
    for (gap, want) in gaps.iter().zip([ms(200), ms(400), ms(800), ms(1600)]) {
        assert!(
            *gap >= want - ms(30) && *gap < want + ms(400),
            "gaps {gaps:?}, wanted about 200, 400, 800, 1600 ms"
        );
    }
    lab.daemon
        .wait_log(Duration::from_secs(5), |l| {
            l.contains("TFTP transfer abandoned")
        })
        .unwrap_or_else(|| panic!("{}", lab.daemon.log_text()));
}

/// A client's repeat of its request that reaches the server after the transfer began (queued
/// behind a storm) does not replace the transfer: the client took that transfer's port as its
/// transfer ID and goes on answering it. The same request after 3 s of silence is a client
/// that started over, and gets a new transfer.
#[test]
fn a_late_repeat_of_a_running_request_does_not_replace_it() {
    let lab = lab("timeout = \"1s\"\n");
    let rrq = packet::rrq("ipxe.efi", &[("blksize", "1024")]);
    let s = client();
    s.send_to(&rrq, lab.tftp).unwrap();
    let (oack, _, tid) = recv(&s);
    assert!(matches!(oack, Packet::Other(packet::OACK)));
    s.send_to(&packet::ack(0), tid).unwrap();
    let (data, raw, from) = recv(&s);
    assert!(matches!(data, Packet::Other(packet::DATA)) && raw[3] == 1 && from == tid);
    // The repeat, then the transfer goes on from the same port.
    s.send_to(&rrq, lab.tftp).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.send_to(&packet::ack(1), tid).unwrap();
    let (data, raw, from) = recv(&s);
    assert_eq!(
        from, tid,
        "answered from another port: the transfer was replaced"
    );
    assert!(
        matches!(data, Packet::Other(packet::DATA)) && raw[3] == 2,
        "{data:?} {:?}",
        &raw[..4]
    );

    // Silent for 3.5 s after its last ACK, the client asks again: a new transfer.
    let again = client();
    again.send_to(&rrq, lab.tftp).unwrap();
    let (_, _, old) = recv(&again);
    again.send_to(&packet::ack(0), old).unwrap();
    let _ = recv(&again); // DATA 1
    std::thread::sleep(Duration::from_millis(3500));
    again.send_to(&rrq, lab.tftp).unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    let mut fresh = None;
    while Instant::now() < until {
        let (p, _, from) = recv(&again);
        if from != old {
            fresh = Some(p);
            break;
        }
    }
    assert!(
        matches!(fresh, Some(Packet::Other(packet::OACK))),
        "a new transfer for a client that started over: {fresh:?}"
    );
}

/// TFTP runs on a thread of its own, apart from DHCP's: thousands of transfers at once cannot
/// hold up DHCP answers (the 10,000-machine storm of bench/storm.sh shows the effect).
#[test]
fn tftp_and_dhcp_have_threads_of_their_own() {
    let lab = lab("");
    let s = client();
    s.send_to(&packet::rrq("ipxe.efi", &[]), lab.tftp).unwrap();
    assert!(matches!(recv(&s).0, Packet::Other(packet::DATA)));
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", lab.daemon.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    for want in ["kindling-tftp", "kindling-dhcp"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
}

/// Real clients: curl at two block sizes and tftp-hpa.
#[test]
fn curl_and_tftp_hpa_download_byte_identical_files() {
    let lab = lab("");
    let out_dir = tempfile::tempdir().unwrap();
    if tool("curl") {
        for blksize in ["512", "1468"] {
            let out = out_dir.path().join(format!("curl-{blksize}"));
            let status = Command::new("curl")
                .args(["-sS", "--max-time", "60", "--tftp-blksize", blksize, "-o"])
                .arg(&out)
                .arg(format!("tftp://{}/os/big.img", lab.tftp))
                .status()
                .unwrap();
            assert!(status.success());
            assert!(
                std::fs::read(&out).unwrap() == lab.big,
                "curl blksize {blksize}"
            );
        }
    } else {
        eprintln!("SKIP curl part: curl is not installed (scripts/setup.sh installs it)");
    }
    if tool("tftp") {
        let out = out_dir.path().join("hpa");
        let o = Command::new("timeout")
            .args(["60", "tftp", "-m", "binary"])
            .arg(lab.tftp.ip().to_string())
            .arg(lab.tftp.port().to_string())
            .arg("-c")
            .arg("get")
            .arg("ipxe.efi")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            std::fs::read(&out).ok().as_deref() == Some(&lab.small[..]),
            "tftp-hpa: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    } else {
        eprintln!("SKIP tftp-hpa part: tftp is not installed (scripts/setup.sh installs tftp-hpa)");
    }
    let metrics = reqwest_get(&lab.daemon.url("/metrics"));
    assert!(
        metrics.contains("kindling_tftp_transfers_total{outcome=\"completed\"}"),
        "{metrics}"
    );
}

fn reqwest_get(url: &str) -> String {
    let out = Command::new("curl").args(["-sf", url]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A client asking for `timeout 255` (a slot held ~25 minutes for two packets) gets no timeout
/// acknowledged: Kindling's own short timeout applies, and the silent transfer ends in seconds.
#[test]
fn a_huge_client_timeout_is_not_granted() {
    let lab = lab("timeout = \"1s\"\nretries = 2\n");
    let s = client();
    s.send_to(
        &packet::rrq("ipxe.efi", &[("timeout", "255"), ("blksize", "1024")]),
        lab.tftp,
    )
    .unwrap();
    let (_, raw, _) = recv(&s);
    assert_eq!(u16::from_be_bytes([raw[0], raw[1]]), packet::OACK);
    let fields = oack_fields(&raw);
    assert!(
        fields.iter().all(|(k, _)| k != "timeout"),
        "timeout 255 acknowledged: {fields:?}"
    );
    assert!(
        fields.contains(&("blksize".into(), "1024".into())),
        "{fields:?}"
    );
    // A timeout within bounds is acknowledged as asked (RFC 2349).
    let s2 = client();
    s2.send_to(&packet::rrq("ipxe.efi", &[("timeout", "3")]), lab.tftp)
        .unwrap();
    let (_, raw, _) = recv(&s2);
    assert!(oack_fields(&raw).contains(&("timeout".into(), "3".into())));
    // The first client never answers: its transfer is given up after 1 + 2 + 4 s (2 retries,
    // backing off).
    let gone = Instant::now();
    lab.daemon
        .wait_log(Duration::from_secs(12), |l| {
            l.contains("TFTP transfer abandoned")
                && l.contains(&s.local_addr().unwrap().to_string())
        })
        .expect("the silent transfer ends");
    assert!(
        gone.elapsed() < Duration::from_secs(9),
        "{:?}",
        gone.elapsed()
    );
}

/// One client address may run `max_transfers_per_client` transfers at once; the next request
/// from it gets an error while other addresses are still served.
#[test]
fn one_address_cannot_take_every_slot() {
    let lab = lab("max_transfers_per_client = 3\nretries = 3\n");
    let held: Vec<UdpSocket> = (0..3)
        .map(|_| {
            let s = client();
            s.send_to(&packet::rrq("ipxe.efi", &[("blksize", "1024")]), lab.tftp)
                .unwrap();
            let (_, raw, _) = recv(&s);
            assert_eq!(u16::from_be_bytes([raw[0], raw[1]]), packet::OACK);
            s
        })
        .collect();
    let fourth = client();
    fourth
        .send_to(&packet::rrq("ipxe.efi", &[]), lab.tftp)
        .unwrap();
    let (p, _, _) = recv(&fourth);
    assert!(
        matches!(&p, Packet::Error(_, msg) if msg.contains("too many transfers")),
        "{p:?}"
    );
    // Another address is served meanwhile.
    let other = UdpSocket::bind("127.0.0.2:0").unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    other
        .send_to(&packet::rrq("ipxe.efi", &[]), lab.tftp)
        .unwrap();
    let (_, raw, _) = recv(&other);
    assert_eq!(u16::from_be_bytes([raw[0], raw[1]]), packet::DATA);
    drop(held);
}

/// 1,000 transfers of a big file that stall after their first window, from 200 addresses:
/// read-ahead memory is bounded (128 x 512 KiB), the rest read one small window each.
#[test]
fn a_thousand_stalled_big_transfers_leave_memory_bounded() {
    let lab = lab("max_transfers = 1100\nretries = 10\n");
    let pid = lab.daemon.pid();
    let before = rss_kib(pid);
    let rrq = packet::rrq("os/big.img", &[("blksize", "8192"), ("windowsize", "64")]);
    let mut buf = vec![0u8; 70_000];
    let mut clients = Vec::new();
    for n in 0..1000u32 {
        let a = n / 5;
        let ip = std::net::Ipv4Addr::new(127, 1, (a / 250) as u8, (a % 250 + 2) as u8);
        let s = UdpSocket::bind((ip, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        // Like a client: ask (again, if the request was lost), ACK the OACK so the server
        // reads and sends a first window, then stay silent.
        let started = (0..4).any(|_| {
            s.send_to(&rrq, lab.tftp).unwrap();
            match s.recv_from(&mut buf) {
                Ok((len, tid))
                    if len >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == packet::OACK =>
                {
                    s.send_to(&packet::ack(0), tid).unwrap();
                    true
                }
                _ => false,
            }
        });
        assert!(
            started,
            "transfer {n} did not start: {}",
            lab.daemon.log_text()
        );
        clients.push(s);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let peak = rss_kib(pid);
    let grown_mib = peak.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 200,
        "RSS grew by {grown_mib} MiB for 1,000 stalled transfers (before {before} KiB, now {peak} KiB)"
    );
    eprintln!("RSS {before} KiB before, {peak} KiB with 1,000 stalled 9 MiB transfers");
    assert!(lab.big.len() > 8 << 20);
}
