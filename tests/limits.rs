//! Wearing Kindling down over HTTP, with the common limit of 1,024 open files: connections
//! that never finish their headers are capped per client and closed after the header timeout,
//! while other HTTP clients and TFTP keep working.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Daemon, write};
use kindling::tftp::packet;

fn lab() -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("ipxe")).unwrap();
    std::fs::write(root.join("ipxe/ipxe.efi"), vec![7u8; 100_000]).unwrap();
    write(
        root,
        "kindling.toml",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nheader_timeout = \"2s\"\nmax_connections = 600\n\
             max_connections_per_client = 20\n[paths]\nipxe_binaries = \"ipxe\"\nipxe_scripts = \"{}\"\n\
             [tftp]\nenabled = true\nlisten = \"127.0.0.1:0\"\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe").display()
        ),
    );
    write(
        root,
        "profiles/p.toml",
        "default = true\n[boot]\nkernel = \"k\"\n",
    );
    let d = Daemon::start_with_open_files(1024, &root.join("kindling.toml"));
    (dir, d)
}

fn healthz(addr: SocketAddr) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn tftp_works(tftp: SocketAddr) -> bool {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(&packet::rrq("ipxe.efi", &[]), tftp).unwrap();
    let mut buf = [0u8; 600];
    matches!(s.recv_from(&mut buf), Ok((n, _)) if n == 516 && buf[1] as u16 == packet::DATA)
}

/// `count` connections from `addresses` source addresses (127.2.x.y) that send half a request
/// line and stop.
fn half_open(http: SocketAddr, count: u32, addresses: u32) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for n in 0..count {
        let a = n % addresses;
        let src = Ipv4Addr::new(127, 2, (a / 250) as u8, (a % 250 + 2) as u8);
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&SocketAddr::from((src, 0)).into()).unwrap();
        if sock
            .connect_timeout(&http.into(), Duration::from_secs(2))
            .is_err()
        {
            continue;
        }
        let mut s: TcpStream = sock.into();
        let _ = s.write_all(b"GET /healthz HT");
        held.push(s);
    }
    held
}

/// Whether the server has closed `s` (EOF or reset) before `until`.
fn closed_by(s: &mut TcpStream, until: Instant) -> bool {
    let left = until
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(10));
    s.set_read_timeout(Some(left)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn half_open_connections_are_capped_and_closed_and_everyone_else_is_served() {
    let (_dir, d) = lab();
    let http = d.logged_addr("listening for HTTP on ");
    let tftp = d.logged_addr("listening for TFTP on ");

    // One host opens 1,100 connections that never finish their headers: it keeps 20, the
    // others are closed at once; everyone else is served, TFTP too.
    let mut held = half_open(http, 1_100, 1);
    let answer = healthz(http).expect("a normal client is served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(tftp_works(tftp), "TFTP still serves:\n{}", d.log_text());
    let until = Instant::now() + Duration::from_secs(5);
    let closed = held
        .iter_mut()
        .map(|s| closed_by(s, until))
        .filter(|c| *c)
        .count();
    assert_eq!(
        closed,
        held.len(),
        "the header timeout closes every one of them"
    );

    // From 55 addresses they fill the whole service (600): new clients wait for the header
    // timeout to free places, and nothing runs out of file descriptors.
    let started = Instant::now();
    let _held = half_open(http, 1_100, 55);
    let mut served = None;
    while started.elapsed() < Duration::from_secs(8) {
        if let Ok(a) = healthz(http)
            && a.starts_with("HTTP/1.1 200")
        {
            served = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        served.is_some(),
        "served again once the timeout freed places"
    );
    assert!(tftp_works(tftp), "TFTP still serves:\n{}", d.log_text());
    assert!(
        !d.log_text().contains("Too many open files"),
        "{}",
        d.log_text()
    );
}
