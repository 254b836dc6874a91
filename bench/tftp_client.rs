//! The TFTP client of the benchmarks (`tftp_load`, `storm`): one read request on a socket the
//! caller bound, with blksize / windowsize / tsize options, retransmitting like firmware does.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kindling::tftp::packet;
use tokio::net::UdpSocket;

/// How one transfer went.
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    /// File bytes received (0 for a probe).
    pub(crate) bytes: u64,
    /// The size the server announced in its OACK (`tsize`), if any.
    pub(crate) tsize: Option<u64>,
    /// Requests and ACKs sent again after a silence.
    pub(crate) retransmits: u32,
}

/// What to do once the server answered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Read the whole file.
    Read,
    /// OVMF's size probe: read the OACK's `tsize`, then end the transfer with error 8.
    Probe,
}

/// Read `file` from `server` on `sock`. `timeout` is the silence after which the last packet
/// goes out again; the transfer fails after `give_up` without progress.
pub(crate) async fn fetch(
    sock: &UdpSocket,
    server: SocketAddr,
    file: &str,
    options: &[(&str, &str)],
    mode: Mode,
    timeout: Duration,
    give_up: Duration,
) -> Result<Fetched, String> {
    let io = |e: std::io::Error| e.to_string();
    let rrq = packet::rrq(file, options);
    sock.send_to(&rrq, server).await.map_err(io)?;
    let mut got = Fetched::default();
    let mut block_size = 512usize;
    let mut window_size = 1u16;
    let mut tid: Option<SocketAddr> = None;
    let mut expect: u16 = 1;
    let mut in_window = 0u16;
    let mut last_ack: Vec<u8> = Vec::new();
    let mut progress = Instant::now();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = match tokio::time::timeout(timeout, sock.recv_from(&mut buf)).await {
            Ok(r) => r.map_err(io)?,
            Err(_) => {
                if progress.elapsed() > give_up {
                    return Err(format!("no progress for {give_up:?} at block {expect}"));
                }
                // Silence: send the last ACK (or the request) again.
                got.retransmits += 1;
                match tid {
                    Some(t) if !last_ack.is_empty() => sock.send_to(&last_ack, t).await,
                    _ => sock.send_to(&rrq, server).await,
                }
                .map_err(io)?;
                continue;
            }
        };
        if n < 4 || tid.is_some_and(|t| t != from) {
            continue;
        }
        let t = *tid.get_or_insert(from);
        match u16::from_be_bytes([buf[0], buf[1]]) {
            packet::OACK => {
                progress = Instant::now();
                let parts: Vec<&[u8]> = buf[2..n].split(|&c| c == 0).collect();
                for kv in parts.chunks(2) {
                    if let [k, v] = kv {
                        let v: u64 = std::str::from_utf8(v)
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        match std::str::from_utf8(k)
                            .unwrap_or("")
                            .to_ascii_lowercase()
                            .as_str()
                        {
                            "blksize" if v > 0 => block_size = v as usize,
                            "windowsize" if v > 0 => window_size = u16::try_from(v).unwrap_or(1),
                            "tsize" => got.tsize = Some(v),
                            _ => {}
                        }
                    }
                }
                if mode == Mode::Probe {
                    let abort = packet::error(packet::ErrorCode::OptionsRefused, "size probe");
                    sock.send_to(&abort, t).await.map_err(io)?;
                    return Ok(got);
                }
                last_ack = packet::ack(0);
                sock.send_to(&last_ack, t).await.map_err(io)?;
            }
            packet::DATA => {
                let block = u16::from_be_bytes([buf[2], buf[3]]);
                if block != expect {
                    // Out of order or a retransmission: ACK what we have.
                    if !last_ack.is_empty() {
                        sock.send_to(&last_ack, t).await.map_err(io)?;
                    }
                    in_window = 0;
                    continue;
                }
                progress = Instant::now();
                let len = n - 4;
                got.bytes += len as u64;
                in_window += 1;
                let last = len < block_size;
                if in_window >= window_size || last {
                    last_ack = packet::ack(block);
                    sock.send_to(&last_ack, t).await.map_err(io)?;
                    in_window = 0;
                }
                if last {
                    return Ok(got);
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
