//! DNS over UDP: one receive loop in front of hickory.
//!
//! A question asked before is answered from the bytes hickory answered it with, kept for as
//! long as the zones they came from are served: only the ID and the question's letter case
//! (which resolvers randomise, and check in the answer) differ between two askings of the
//! same question. Everything else goes to hickory on a task of its own (a forwarded question
//! waits for its upstream without holding up the loop), and an answer from Kindling's own
//! zones that fits a plain 512-byte datagram fills the cache on its way out. The zones are
//! rebuilt whole on every change, and a rebuild empties the cache, so a cached answer is never
//! older than the zones served.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Answered, Dns, DnsError, Served, Source};

/// The most answers kept for one generation of the zones; a full cache starts over. A fleet
/// asks for a few thousand names; more than this is a scan, which hickory still answers.
const MAX_CACHED: usize = 16_384;

/// The largest answer kept: one that fits a plain DNS datagram suits every client, whatever
/// payload size it announced (a larger one may need truncating for some).
const PLAIN_UDP: usize = 512;

/// hickory's own receive buffer: a longer datagram is not a query.
const RECEIVE: usize = 4096;

/// Answers waiting to be cached, from the tasks that asked hickory.
const FILLS: usize = 1024;

/// Where the question of `msg` ends, for a query the cache can key: a standard query (QR 0,
/// opcode QUERY) with one question whose name is spelled out (no compression), no answer or
/// authority records, and no additional record but one OPT (EDNS) without options (a query
/// with a client cookie, as dig sends, is new every time: it would only fill the cache).
fn question_end(msg: &[u8]) -> Option<usize> {
    if msg.len() < 12 + 5 || msg.len() > PLAIN_UDP {
        return None;
    }
    let (flags, count) = (msg[2], |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]));
    if flags & 0xf8 != 0 || count(4) != 1 || count(6) != 0 || count(8) != 0 || count(10) > 1 {
        return None;
    }
    let mut at = 12;
    loop {
        let label = usize::from(*msg.get(at)?);
        at += 1;
        if label == 0 {
            break;
        }
        // 64 and up: a compression pointer or an obsolete label type.
        if label > 63 || at + label - 12 > 255 {
            return None;
        }
        at += label;
    }
    let end = at + 4; // QTYPE, QCLASS
    if end > msg.len() {
        return None;
    }
    let rest = &msg[end..];
    let plain = if count(10) == 0 {
        rest.is_empty()
    } else {
        // root name, type OPT, payload size, extended RCODE, version, flags, no data
        rest.len() == 11 && rest.starts_with(&[0, 0, 41]) && rest[9..] == [0, 0]
    };
    plain.then_some(end)
}

/// The cache's key for `msg` (whose question ends at `end`): the message with its ID zeroed
/// and its question's name in lower case.
fn key_into(msg: &[u8], end: usize, key: &mut Vec<u8>) {
    key.clear();
    key.extend_from_slice(msg);
    key[..2].fill(0);
    // Length octets are below 64, so only the labels' letters change.
    key[12..end - 4].make_ascii_lowercase();
}

/// Whether `answer`, hickory's to `query` (question ending at `end`), may be given to the
/// same question again: from Kindling's own zones, not truncated, small enough for any
/// client, and with the question echoed where the query had it.
fn reusable(query: &[u8], end: usize, answer: &Answered) -> bool {
    let bytes = &answer.bytes;
    answer.source == Source::Zones
        && bytes.len() <= PLAIN_UDP
        && bytes.len() >= end
        && bytes[..2] == query[..2]
        && bytes[2] & 0x02 == 0
        && bytes[4..6] == [0, 1]
        && bytes[12..end].eq_ignore_ascii_case(&query[12..end])
}

/// An answer to cache: the zones it came from, its key, its bytes.
struct Fill {
    served: Arc<Served>,
    key: Box<[u8]>,
    answer: Box<[u8]>,
}

/// The answers given from one generation of the zones.
struct Cache {
    served: Arc<Served>,
    answers: HashMap<Box<[u8]>, Box<[u8]>>,
}

impl Cache {
    /// Empty, when the zones served are no longer the ones the answers came from.
    fn follow(&mut self, dns: &Dns) {
        let now = dns.served.load();
        if !Arc::ptr_eq(&now, &self.served) {
            self.served = arc_swap::Guard::into_inner(now);
            self.answers.clear();
        }
    }

    /// Keep `fill` if it came from the zones served now.
    fn keep(&mut self, fill: Fill) {
        if !Arc::ptr_eq(&fill.served, &self.served) {
            return;
        }
        if self.answers.len() >= MAX_CACHED {
            self.answers.clear();
        }
        self.answers.insert(fill.key, fill.answer);
    }
}

/// The addresses hickory refuses to answer: port 0, an unspecified or broadcast address.
fn answerable(src: SocketAddr) -> bool {
    src.port() != 0
        && !src.ip().is_unspecified()
        && src.ip() != std::net::IpAddr::V4(std::net::Ipv4Addr::BROADCAST)
}

/// Serve `socket` until cancelled (an error only when the socket itself is gone).
pub(super) async fn serve(
    dns: Arc<Dns>,
    socket: UdpSocket,
    cancel: CancellationToken,
) -> Result<(), DnsError> {
    let socket = Arc::new(socket);
    let (fills, mut filled) = mpsc::channel::<Fill>(FILLS);
    let mut cache = Cache {
        served: dns.served.load_full(),
        answers: HashMap::new(),
    };
    let mut asked = JoinSet::new();
    let (mut buf, mut key, mut reply) = (vec![0u8; RECEIVE], Vec::new(), Vec::new());
    loop {
        let (len, src) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(got) => got,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::NotConnected | std::io::ErrorKind::ConnectionAborted) => {
                    asked.abort_all();
                    return Err(DnsError::Server(format!("UDP socket: {e}")));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "DNS: receive failed");
                    continue;
                }
            },
            _ = cancel.cancelled() => break,
        };
        while asked.try_join_next().is_some() {}
        if !answerable(src) {
            tracing::debug!(%src, "DNS: cannot answer this source address, dropped");
            continue;
        }
        let msg = &buf[..len];
        cache.follow(&dns);
        while let Ok(fill) = filled.try_recv() {
            cache.keep(fill);
        }
        let end = question_end(msg);
        if let Some(end) = end {
            key_into(msg, end, &mut key);
            if let Some(answer) = cache.answers.get(key.as_slice()) {
                reply.clear();
                reply.extend_from_slice(answer);
                reply[..2].copy_from_slice(&msg[..2]);
                reply[12..end].copy_from_slice(&msg[12..end]);
                dns.count("cache", &reply);
                tracing::debug!(%src, "DNS: answered again");
                if let Err(e) = socket.send_to(&reply, src).await {
                    tracing::debug!(%src, error = %e, "DNS: cannot send");
                }
                continue;
            }
        }
        let (dns, socket, fills, query) =
            (dns.clone(), socket.clone(), fills.clone(), msg.to_vec());
        asked.spawn(async move {
            let served = dns.served.load_full();
            let Some(answer) = dns.answer_from(&served, query.clone(), src).await else {
                return;
            };
            tracing::debug!(%src, source = answer.source.label(), "DNS: answered");
            dns.count(answer.source.label(), &answer.bytes);
            if let Err(e) = socket.send_to(&answer.bytes, src).await {
                tracing::debug!(%src, error = %e, "DNS: cannot send");
            }
            if let Some(end) = end.filter(|&end| reusable(&query, end, &answer)) {
                let mut key = Vec::new();
                key_into(&query, end, &mut key);
                // A full queue only means this answer is not kept this time.
                let _ = fills.try_send(Fill {
                    served,
                    key: key.into(),
                    answer: answer.bytes.into(),
                });
            }
        });
    }
    asked.abort_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` (as written: its case is kept) of type `qtype`, with an OPT record
    /// when `edns`.
    fn query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
        for label in name.trim_end_matches('.').split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&[0, 1]);
        if edns {
            m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        }
        m
    }

    /// How many answers the cache gave (`kindling_dns_answers_total{source="cache"}`).
    fn from_cache(dns: &Dns) -> u64 {
        let labels = crate::metrics::DnsLabels {
            source: "cache",
            rcode: "noerror",
        };
        dns.metrics.dns_answers.get_or_create(&labels).get()
    }

    /// `box` moves to 10.0.0.8: the profile is rewritten, reloaded, and the zones rebuilt.
    fn move_box(dir: &tempfile::TempDir, live: &crate::profiles::watch::Live, dns: &Dns) {
        std::fs::write(
            dir.path().join("p/n.toml"),
            "[boot]\nkernel = \"k\"\n[[machine]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"box\"\nip = \"10.0.0.8\"\n",
        )
        .unwrap();
        live.reload().unwrap();
        dns.refresh(live, None, 1_900_000_001);
    }

    #[test]
    fn only_plain_queries_are_keyed() {
        let q = query(7, "box.lab.example", 1, false);
        assert_eq!(question_end(&q), Some(q.len()));
        let e = query(7, "box.lab.example", 1, true);
        assert_eq!(
            question_end(&e),
            Some(q.len()),
            "the OPT record follows the question"
        );
        let mut response = q.clone();
        response[2] |= 0x80;
        assert_eq!(question_end(&response), None, "a response");
        let mut update = q.clone();
        update[2] |= 5 << 3;
        assert_eq!(question_end(&update), None, "opcode UPDATE");
        let mut two = q.clone();
        two[5] = 2;
        assert_eq!(question_end(&two), None, "two questions");
        let mut pointer = q.clone();
        pointer[12] = 0xc0;
        assert_eq!(question_end(&pointer), None, "a compressed name");
        assert_eq!(question_end(&q[..q.len() - 1]), None, "cut short");
        let mut trailing = q.clone();
        trailing.push(0);
        assert_eq!(question_end(&trailing), None, "bytes after the question");
        let mut other = e.clone();
        other[q.len() + 2] = 250; // TSIG, not OPT
        assert_eq!(
            question_end(&other),
            None,
            "an additional record that is not OPT"
        );
        let mut cookie = e.clone();
        cookie[q.len() + 10] = 12;
        cookie.extend_from_slice(&[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            question_end(&cookie),
            None,
            "EDNS with an option (a cookie)"
        );
        assert_eq!(question_end(&[0; 11]), None);
        let long = format!("{}.example", vec!["a".repeat(63); 4].join("."));
        assert_eq!(
            question_end(&query(1, &long, 1, false)),
            None,
            "a name over 255 octets"
        );
    }

    #[test]
    fn the_key_ignores_the_id_and_the_case_of_the_name() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let q1 = query(1, "Box.LAB.example", 1, false);
        let q2 = query(2, "box.lab.EXAMPLE", 1, false);
        key_into(&q1, q1.len(), &mut a);
        key_into(&q2, q2.len(), &mut b);
        assert_eq!(a, b);
        let q3 = query(1, "box.lab.example", 28, false);
        key_into(&q3, q3.len(), &mut b);
        assert_ne!(a, b, "another type is another question");
        let q4 = query(1, "box.lab.example", 1, true);
        key_into(&q4, q1.len(), &mut b);
        assert_ne!(a, b, "EDNS is part of the question");
    }

    /// Only an answer from Kindling's own zones, whole, small, and echoing the question is
    /// kept; and only for the zones it came from.
    #[tokio::test]
    async fn what_is_kept_and_for_how_long() {
        let (dir, live, dns) = super::super::tests::lab_dns();
        let served = dns.served.load_full();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        let q = query(9, "box.lab.example", 1, false);
        let ours = dns.answer_from(&served, q.clone(), local).await.unwrap();
        assert!(reusable(&q, q.len(), &ours));
        let outside = query(9, "example.org", 1, false);
        let refused = dns
            .answer_from(&served, outside.clone(), stranger)
            .await
            .unwrap();
        assert_eq!(refused.source, Source::Refused);
        assert!(!reusable(&outside, outside.len(), &refused));
        let mut truncated = Answered {
            bytes: ours.bytes.clone(),
            source: Source::Zones,
        };
        truncated.bytes[2] |= 0x02;
        assert!(!reusable(&q, q.len(), &truncated), "TC set");
        let big = Answered {
            bytes: [ours.bytes.clone(), vec![0; PLAIN_UDP]].concat(),
            source: Source::Zones,
        };
        assert!(!reusable(&q, q.len(), &big), "over 512 bytes");
        let other = query(10, "box.lab.example", 1, false);
        assert!(
            !reusable(&other, other.len(), &ours),
            "another ID: not this query's answer"
        );

        let mut cache = Cache {
            served: served.clone(),
            answers: HashMap::new(),
        };
        let fill = |served: &Arc<Served>| Fill {
            served: served.clone(),
            key: q.clone().into(),
            answer: ours.bytes.clone().into(),
        };
        cache.keep(fill(&served));
        assert_eq!(cache.answers.len(), 1);
        // New zones: the cache empties, and an answer from the old ones is not taken in.
        move_box(&dir, &live, &dns);
        cache.follow(&dns);
        assert!(cache.answers.is_empty());
        cache.keep(fill(&served));
        assert!(cache.answers.is_empty(), "an answer from the old zones");
    }

    /// Through a socket: the second asking of a question is answered from the cache, byte for
    /// byte what hickory answers it with (its own ID, its own letter case), and a change of
    /// the zones is answered at once.
    #[tokio::test]
    async fn a_question_asked_again_gets_hickorys_answer_from_the_cache() {
        use std::time::Duration;
        let (dir, live, dns) = super::super::tests::lab_dns();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = socket.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let serving = tokio::spawn(serve(dns.clone(), socket, cancel.clone()));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let me = client.local_addr().unwrap();
        let ask = |q: Vec<u8>| {
            let client = &client;
            async move {
                client.send_to(&q, server).await.unwrap();
                let mut b = vec![0; RECEIVE];
                let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut b))
                    .await
                    .expect("an answer")
                    .unwrap();
                b.truncate(n);
                b
            }
        };
        // The first asking fills the cache on its way out; asked again until it answers.
        let mut id = 0;
        while from_cache(&dns) == 0 {
            id += 1;
            assert!(id < 50, "never answered from the cache");
            ask(query(id, "box.lab.example", 1, true)).await;
        }
        let again = query(1000, "BOX.Lab.example", 1, true);
        let before = from_cache(&dns);
        let cached = ask(again.clone()).await;
        assert_eq!(from_cache(&dns), before + 1, "from the cache");
        assert_eq!(
            cached,
            dns.answer(again.clone(), me).await.unwrap(),
            "hickory's answer"
        );
        assert_eq!(cached[..2], again[..2]);
        assert_eq!(
            cached[12..again.len() - 11],
            again[12..again.len() - 11],
            "the case asked"
        );

        move_box(&dir, &live, &dns);
        let moved = ask(again.clone()).await;
        assert_ne!(moved, cached);
        assert_eq!(moved, dns.answer(again, me).await.unwrap());
        assert!(
            moved.windows(4).any(|w| w == [10, 0, 0, 8]),
            "the new address"
        );
        cancel.cancel();
        serving.await.unwrap().unwrap();
    }
}
