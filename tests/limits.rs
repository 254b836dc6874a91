//! Wearing Kindling down over HTTP, with the common limit of 1,024 open files: connections
//! that never finish their headers are capped per client and closed after the header timeout,
//! while other HTTP clients and TFTP keep working.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Daemon, rss_kib, write};
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
    healthz_within(addr, Duration::from_secs(2))
}

/// `GET /healthz` on one connection, waiting up to `wait` for the answer.
fn healthz_within(addr: SocketAddr, wait: Duration) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(wait)).unwrap();
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

    // From 55 addresses they fill the whole service (600), and 500 more wait in the listen
    // backlog: a new client's connection waits there too, is not closed, and is served on
    // that one connection once the header timeout frees places. Nothing runs out of file
    // descriptors.
    let _held = half_open(http, 1_100, 55);
    let started = Instant::now();
    let answer = healthz_within(http, Duration::from_secs(10));
    let waited = started.elapsed();
    assert!(
        matches!(&answer, Ok(a) if a.starts_with("HTTP/1.1 200")),
        "served on its first connection once the timeout freed places: {answer:?}"
    );
    assert!(
        waited >= Duration::from_secs(1),
        "it waited for a place: {waited:?}"
    );
    assert!(tftp_works(tftp), "TFTP still serves:\n{}", d.log_text());
    assert!(
        !d.log_text().contains("Too many open files"),
        "{}",
        d.log_text()
    );
}

/// One keep-alive HTTP/1.1 connection from source address `src`.
struct Client {
    s: std::io::BufReader<TcpStream>,
}

impl Client {
    fn new(src: Ipv4Addr, to: SocketAddr) -> Client {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&SocketAddr::from((src, 0)).into()).unwrap();
        sock.connect_timeout(&to.into(), Duration::from_secs(2))
            .unwrap();
        let s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            s: std::io::BufReader::new(s),
        }
    }

    /// `GET target`: the status code.
    fn get(&mut self, target: &str) -> u16 {
        use std::io::BufRead;
        let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        self.s.get_mut().write_all(request.as_bytes()).unwrap();
        let mut status = 0;
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.s.read_line(&mut line).unwrap() > 0,
                "connection closed"
            );
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(rest) = l.strip_prefix("HTTP/1.1 ") {
                status = rest[..3].parse().unwrap();
            } else if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        self.s.read_exact(&mut body).unwrap();
        status
    }
}

/// The sum of the `kindling_machines` gauges.
fn machines(http: SocketAddr) -> u64 {
    let mut c = Client::new(Ipv4Addr::LOCALHOST, http);
    let stream = c.s.get_mut();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    c.s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with("kindling_machines{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The inventory flood: boot requests for 3,000 made-up MACs from one address create records
/// only within that address's budget (burst 256, 32/s); 12,000 more from 120 addresses fill
/// the inventory to its cap (2,000) and no further, evicting the oldest undeclared records and
/// never the declared machine. Memory and the database file stay within stated bounds: RSS
/// grows by less than 64 MiB, inventory.redb stays under 32 MiB. Every request is still served,
/// and a restart loads the 2,000 records in less than 64 MiB. (Measured, release build: 270
/// records from the one address, RSS 13 -> 31 MiB, inventory.redb 8 MiB.)
#[test]
fn an_inventory_flood_is_capped_in_records_memory_and_file() {
    const DECLARED: &str = "52:54:00:aa:00:01";
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "kindling.toml",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[paths]\nipxe_scripts = \"{}\"\nstate = \"state\"\n\
             [inventory]\nmax_machines = 2000\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe").display()
        ),
    );
    write(
        root,
        "profiles/p.toml",
        &format!(
            "default = true\n[boot]\nkernel = \"k\"\n[[machine]]\nmac = \"{DECLARED}\"\nhostname = \"keep\"\n"
        ),
    );
    let d = Daemon::start(&root.join("kindling.toml"));
    let mut warm = Client::new(Ipv4Addr::new(127, 4, 9, 2), d.addr);
    for n in 0..50u32 {
        assert_eq!(
            warm.get(&format!("/ipxe?mac=02:09:00:00:00:{:02x}", n)),
            200
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(d.pid());
    let mac = |a: u32, n: u32| {
        format!(
            "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            a >> 8,
            a & 0xff,
            n >> 16,
            (n >> 8) & 0xff,
            n & 0xff
        )
    };

    // Every fact as large as the wire edge lets it be (128 characters).
    let long = "x".repeat(128);
    let facts = format!(
        "&serial={long}&manufacturer={long}&product={long}&memory=68719476736&uuid=\
         11111111-2222-3333-4444-555555555555&arch=x86_64&platform=efi"
    );

    // One address, 3,000 MACs.
    let started = Instant::now();
    let mut one = Client::new(Ipv4Addr::new(127, 4, 0, 2), d.addr);
    for n in 0..3000 {
        assert_eq!(one.get(&format!("/ipxe?mac={}{facts}", mac(1, n))), 200);
    }
    let secs = started.elapsed().as_secs_f64();
    let from_one = machines(d.addr) - 51;
    let budget = 256.0 + 32.0 * secs;
    assert!(
        from_one as f64 <= budget + 1.0,
        "{from_one} records from one address in {secs:.1} s (budget {budget:.0})"
    );
    eprintln!("one address, 3,000 MACs in {secs:.1} s: {from_one} records");

    // 120 addresses, 100 MACs each: beyond the cap.
    for a in 0..120u32 {
        let src = Ipv4Addr::new(127, 4, 1 + (a / 250) as u8, (a % 250 + 2) as u8);
        let mut c = Client::new(src, d.addr);
        for n in 0..100 {
            assert_eq!(c.get(&format!("/ipxe?mac={}{facts}", mac(2 + a, n))), 200);
        }
    }
    let total = machines(d.addr);
    assert_eq!(total, 2000, "the inventory holds {total} records");
    let mut check = Client::new(Ipv4Addr::LOCALHOST, d.addr);
    assert_eq!(check.get(&format!("/api/v1/machines/{DECLARED}")), 200);
    // The oldest undeclared records went first.
    assert_eq!(check.get(&format!("/api/v1/machines/{}", mac(1, 0))), 404);
    assert_eq!(
        check.get(&format!("/api/v1/machines/{}", mac(121, 99))),
        200
    );

    // Let the writer settle, then measure.
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(d.pid());
    let file = std::fs::metadata(root.join("state/inventory.redb"))
        .unwrap()
        .len();
    let grown = after.saturating_sub(before) / 1024;
    eprintln!(
        "RSS {before} KiB before, {after} KiB after 15,000 boot requests; inventory.redb {} KiB",
        file / 1024
    );
    assert!(
        grown < 64,
        "RSS grew by {grown} MiB ({before} -> {after} KiB)"
    );
    assert!(file < 32 << 20, "inventory.redb is {file} bytes");
    // Still serving everyone.
    assert_eq!(check.get("/ipxe?mac=02:ff:00:00:00:01"), 200);

    // A restart loads what was kept: the cap, not the flood.
    assert!(d.terminate().success());
    let d = Daemon::start(&root.join("kindling.toml"));
    let loaded = machines(d.addr);
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_kib(d.pid());
    eprintln!("after a restart: {loaded} records, RSS {rss} KiB");
    assert_eq!(loaded, 2000);
    assert!(rss < 64 << 10, "RSS after a restart: {rss} KiB");
}
