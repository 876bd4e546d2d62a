// SPDX-License-Identifier: Apache-2.0
//! The server on loopback, asked over real UDP and TCP sockets, with a
//! small upstream in the test.

use std::collections::BTreeMap;

use hickory_server::proto::op::{Message, Query};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::dns::zone::{Holder, Key};

fn key(name: &str, addr: Ipv4Addr, holder: &str) -> Key {
    Key {
        name: DnsName::parse(name).unwrap(),
        addr,
        holder: Holder::new(holder).unwrap(),
    }
}

/// A free loopback port for UDP and TCP alike.
fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// An upstream answering every A query with 192.0.2.53 until `cancel`.
async fn upstream(cancel: CancellationToken) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = tokio::select! {
                r = sock.recv_from(&mut buf) => r.unwrap(),
                _ = cancel.cancelled() => return,
            };
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut a = Message::response(q.metadata.id, OpCode::Query);
            a.metadata.recursion_available = true;
            let name = q.queries[0].name().clone();
            a.add_query(q.queries[0].clone());
            a.add_answer(Record::from_rdata(
                name,
                30,
                RData::A(A::new(192, 0, 2, 53)),
            ));
            sock.send_to(&a.to_vec().unwrap(), from).await.unwrap();
        }
    });
    addr
}

struct Bed {
    addr: SocketAddr,
    table: SharedTable,
    stats: Arc<QueryStats>,
    listeners: Listeners,
    _up: watch::Sender<crate::dns::upstream::Servers>,
    _ours: watch::Sender<crate::dns::upstream::Servers>,
}

async fn bed(upstream: Vec<SocketAddr>, timeout: Duration) -> Bed {
    let table = SharedTable::default();
    let stats = Arc::new(QueryStats::default());
    let (up, rx) = watch::channel(Arc::new(upstream));
    let (ours, ours_rx) = watch::channel(Arc::new(Vec::new()));
    let fwd = Arc::new(Forwarder::new(rx, ours_rx, timeout));
    let handler = Handler::new(table.clone(), Domain::default(), 3, fwd, stats.clone());
    let mut listeners = Listeners::new(handler);
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    listeners.bind(addr).await.unwrap();
    Bed {
        addr,
        table,
        stats,
        listeners,
        _up: up,
        _ours: ours,
    }
}

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

async fn ask_udp(server: SocketAddr, q: &[u8]) -> Message {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(server).await.unwrap();
    s.send(q).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, u16::from_be_bytes([q[0], q[1]]));
    m
}

async fn ask_tcp(server: SocketAddr, q: &[u8]) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    let mut framed = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(q);
    s.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn addrs(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn names_in_the_domain_are_answered_from_the_table() {
    let b = bed(Vec::new(), Duration::from_secs(1)).await;
    let web: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(10, 32, 0, i)).collect();
    table::apply(
        &b.table,
        web.iter()
            .map(|a| (key("web.weave.local", *a, "c"), true))
            .chain([(
                key("db.weave.local", Ipv4Addr::new(10, 32, 1, 1), "d"),
                true,
            )])
            .collect(),
    );

    // Every address, shuffled per query: each comes first about a third of the time.
    let mut first: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
    for _ in 0..300 {
        let m = ask_udp(b.addr, &query("web.weave.local.", RecordType::A, None)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        let got = addrs(&m);
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, web);
        assert!(m.answers.iter().all(|r| r.ttl == 3));
        *first.entry(got[0]).or_default() += 1;
    }
    for a in &web {
        let n = first.get(a).copied().unwrap_or(0);
        assert!(
            (60..=140).contains(&n),
            "{a} first {n} times of 300: {first:?}"
        );
    }

    // Case does not matter; the question is echoed as asked.
    let m = ask_udp(b.addr, &query("DB.Weave.LOCAL.", RecordType::A, None)).await;
    assert_eq!(addrs(&m), vec![Ipv4Addr::new(10, 32, 1, 1)]);
    assert_eq!(m.answers[0].name.to_string(), "DB.Weave.LOCAL.");

    // A single label is looked up in the domain.
    let m = ask_udp(b.addr, &query("db.", RecordType::A, None)).await;
    assert_eq!(addrs(&m), vec![Ipv4Addr::new(10, 32, 1, 1)]);

    // AAAA of an A-only name: NOERROR, no data. Unknown name: NXDOMAIN.
    let m = ask_udp(b.addr, &query("web.weave.local.", RecordType::AAAA, None)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    let m = ask_udp(b.addr, &query("nobody.weave.local.", RecordType::A, None)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);

    // PTR of a registered address.
    let m = ask_udp(
        b.addr,
        &query("1.1.32.10.in-addr.arpa.", RecordType::PTR, None),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    match &m.answers[0].data {
        RData::PTR(p) => assert_eq!(p.0.to_string(), "db.weave.local."),
        other => panic!("not a PTR: {other:?}"),
    }

    // TCP answers alike.
    let m = ask_tcp(b.addr, &query("web.weave.local.", RecordType::A, None)).await;
    assert_eq!(addrs(&m).len(), 3);

    // A name leaving the table is unknown at once.
    table::apply(
        &b.table,
        vec![(
            key("db.weave.local", Ipv4Addr::new(10, 32, 1, 1), "d"),
            false,
        )],
    );
    let m = ask_udp(b.addr, &query("db.weave.local.", RecordType::A, None)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    let stats: Vec<_> = b.stats.snapshot();
    assert!(stats.contains(&("A", "answer", 303)), "{stats:?}");
    assert!(stats.contains(&("AAAA", "nodata", 1)), "{stats:?}");
    assert!(stats.contains(&("A", "nxdomain", 2)), "{stats:?}");
    assert!(stats.contains(&("PTR", "answer", 1)), "{stats:?}");
}

#[tokio::test]
async fn a_large_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let b = bed(Vec::new(), Duration::from_secs(1)).await;
    table::apply(
        &b.table,
        (0..200u32)
            .map(|i| {
                (
                    key("many.weave.local", Ipv4Addr::from(0x0a20_0000 + i), "c"),
                    true,
                )
            })
            .collect(),
    );
    let q = query("many.weave.local.", RecordType::A, None);
    let m = ask_udp(b.addr, &q).await;
    assert!(m.metadata.truncation, "200 records do not fit in 512 bytes");
    assert!(m.answers.len() < 200);
    let m = ask_udp(
        b.addr,
        &query("many.weave.local.", RecordType::A, Some(4096)),
    )
    .await;
    assert!(
        m.metadata.truncation,
        "200 records need more than 4096 bytes? {}",
        m.answers.len()
    );
    let m = ask_udp(
        b.addr,
        &query("many.weave.local.", RecordType::A, Some(1232)),
    )
    .await;
    assert!(m.metadata.truncation);
    let m = ask_tcp(b.addr, &q).await;
    assert!(!m.metadata.truncation);
    assert_eq!(addrs(&m).len(), 200);
}

#[tokio::test]
async fn other_names_go_upstream_and_a_silent_upstream_gives_servfail_in_time() {
    let cancel = CancellationToken::new();
    let up = upstream(cancel.clone()).await;
    let b = bed(vec![up], Duration::from_millis(300)).await;
    let m = ask_udp(b.addr, &query("example.com.", RecordType::A, None)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addrs(&m), vec![Ipv4Addr::new(192, 0, 2, 53)]);
    assert!(!m.metadata.authoritative);
    let m = ask_tcp(b.addr, &query("example.com.", RecordType::A, None)).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::ServFail,
        "the test upstream has no TCP"
    );
    // An unknown single label goes upstream too.
    let m = ask_udp(b.addr, &query("db.", RecordType::A, None)).await;
    assert_eq!(addrs(&m), vec![Ipv4Addr::new(192, 0, 2, 53)]);

    // A server that never answers: SERVFAIL after the timeout, not a hang.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let b2 = bed(
        vec![silent.local_addr().unwrap()],
        Duration::from_millis(300),
    )
    .await;
    let start = Instant::now();
    let m = ask_udp(b2.addr, &query("example.com.", RecordType::A, None)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(b2.stats.snapshot().contains(&("A", "servfail", 1)));
    cancel.cancel();
    drop(b);
}

#[test]
fn arpa_names_parse_strictly() {
    assert_eq!(
        arpa_v4("4.3.2.1.in-addr.arpa."),
        Some(Ipv4Addr::new(1, 2, 3, 4))
    );
    assert_eq!(arpa_v4("3.2.1.in-addr.arpa."), None);
    assert_eq!(arpa_v4("5.4.3.2.1.in-addr.arpa."), None);
    assert_eq!(arpa_v4("04.3.2.1.in-addr.arpa."), None);
    assert_eq!(arpa_v4("256.3.2.1.in-addr.arpa."), None);
    assert_eq!(arpa_v4("4.3.2.1.example."), None);
}

impl Drop for Bed {
    fn drop(&mut self) {
        for a in self.listeners.addrs() {
            self.listeners.unbind(&a);
        }
    }
}
