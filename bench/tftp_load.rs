//! TFTP load client for bench/tftp.sh: N concurrent downloads of one file, each from its own
//! socket, with optional blksize and windowsize options.
//!
//!   cargo run --release --example tftp_load -- SERVER:PORT FILE CLIENTS BLKSIZE WINDOW
//!
//! BLKSIZE or WINDOW 0 leaves the option out. A server that ignores windowsize gets one ACK per
//! block. Prints one line: `ok|fail clients=N bytes=B wall_ms=W p50_ms=P p99_ms=Q failed=F`.
//! Every transfer gives up after 10 s without progress, so a run always ends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kindling::tftp::packet;
use tokio::net::UdpSocket;

async fn download(
    server: SocketAddr,
    file: String,
    blksize: u16,
    window: u16,
) -> Result<(u64, Duration), String> {
    let started = Instant::now();
    let sock = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let mut opts = Vec::new();
    let (b, w) = (blksize.to_string(), window.to_string());
    if blksize > 0 {
        opts.push(("blksize", b.as_str()));
    }
    if window > 0 {
        opts.push(("windowsize", w.as_str()));
    }
    let rrq = packet::rrq(&file, &opts);
    sock.send_to(&rrq, server)
        .await
        .map_err(|e| e.to_string())?;
    let mut block_size = 512usize;
    let mut window_size = 1u16;
    let mut tid: Option<SocketAddr> = None;
    let mut expect: u16 = 1;
    let mut in_window = 0u16;
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 65536];
    let mut last_ack: Vec<u8> = Vec::new();
    loop {
        let (n, from) = match tokio::time::timeout(
            Duration::from_millis(500),
            sock.recv_from(&mut buf),
        )
        .await
        {
            Ok(r) => r.map_err(|e| e.to_string())?,
            Err(_) => {
                if started.elapsed()
                    > Duration::from_secs(10) + Duration::from_millis(u64::from(expect) / 4)
                {
                    return Err(format!("stalled at block {expect}"));
                }
                // Nudge: repeat the last ACK (or the request).
                match tid {
                    Some(t) if !last_ack.is_empty() => sock.send_to(&last_ack, t).await,
                    _ => sock.send_to(&rrq, server).await,
                }
                .map_err(|e| e.to_string())?;
                continue;
            }
        };
        if n < 4 {
            continue;
        }
        let op = u16::from_be_bytes([buf[0], buf[1]]);
        if tid.is_none() {
            tid = Some(from);
        }
        let t = tid.unwrap_or(from);
        match op {
            packet::OACK => {
                let parts: Vec<&[u8]> = buf[2..n].split(|&c| c == 0).collect();
                for kv in parts.chunks(2) {
                    if let [k, v] = kv {
                        let v: usize = std::str::from_utf8(v)
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        match std::str::from_utf8(k)
                            .unwrap_or("")
                            .to_ascii_lowercase()
                            .as_str()
                        {
                            "blksize" if v > 0 => block_size = v,
                            "windowsize" if v > 0 => window_size = u16::try_from(v).unwrap_or(1),
                            _ => {}
                        }
                    }
                }
                last_ack = packet::ack(0);
                sock.send_to(&last_ack, t)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            packet::DATA => {
                let block = u16::from_be_bytes([buf[2], buf[3]]);
                if block != expect {
                    // Out of order or a retransmission: re-ACK what we have.
                    if !last_ack.is_empty() {
                        sock.send_to(&last_ack, t)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    in_window = 0;
                    continue;
                }
                let len = n - 4;
                bytes += len as u64;
                in_window += 1;
                let last = len < block_size;
                if in_window >= window_size || last {
                    last_ack = packet::ack(block);
                    sock.send_to(&last_ack, t)
                        .await
                        .map_err(|e| e.to_string())?;
                    in_window = 0;
                }
                if last {
                    return Ok((bytes, started.elapsed()));
                }
                expect = expect.wrapping_add(1);
            }
            packet::ERROR => {
                let msg = String::from_utf8_lossy(&buf[4..n])
                    .trim_end_matches('\0')
                    .to_string();
                return Err(format!("server error: {msg}"));
            }
            _ => {}
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: tftp_load SERVER:PORT FILE CLIENTS BLKSIZE WINDOW");
        std::process::exit(64);
    }
    let server: SocketAddr = args[1].parse().expect("SERVER:PORT");
    let file = args[2].clone();
    let clients: usize = args[3].parse().expect("CLIENTS");
    let blksize: u16 = args[4].parse().expect("BLKSIZE");
    let window: u16 = args[5].parse().expect("WINDOW");
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(download(server, file.clone(), blksize, window)))
        .collect();
    let mut times = Vec::new();
    let mut bytes = 0;
    let mut failed = 0;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok((b, d))) => {
                bytes += b;
                times.push(d);
            }
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let wall = started.elapsed();
    times.sort();
    let pct = |p: f64| {
        times
            .get(((times.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{} clients={clients} bytes={bytes} wall_ms={:.1} p50_ms={:.1} p99_ms={:.1} failed={failed}",
        if failed == 0 { "ok" } else { "fail" },
        wall.as_secs_f64() * 1000.0,
        pct(0.5),
        pct(0.99),
    );
    if let Some(e) = first_error {
        eprintln!("first error: {e}");
    }
}
