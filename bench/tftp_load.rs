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

use tokio::net::UdpSocket;

#[path = "tftp_client.rs"]
mod tftp_client;

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
    let got = tftp_client::fetch(
        &sock,
        server,
        &file,
        &opts,
        tftp_client::Mode::Read,
        Duration::from_millis(500),
        Duration::from_secs(10),
    )
    .await?;
    Ok((got.bytes, started.elapsed()))
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
