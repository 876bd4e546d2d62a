// SPDX-License-Identifier: Apache-2.0
//! The DNS server on hickory-server: answers names in the domain from the
//! lookup table and forwards everything else upstream.
//!
//! Answers for names in the domain (RFC 1034 §4.3.2, RFC 4074):
//! - every live A record of the name, shuffled per query so that clients
//!   taking the first address spread over same-named containers;
//! - an existing name asked for another type (AAAA, MX, …): NOERROR with no
//!   records; an unknown name: NXDOMAIN; both authoritative, TTL
//!   `--dns-ttl`;
//! - a single-label name (`web.`) is looked up in the domain too, then
//!   forwarded if unknown;
//! - PTR for `d.c.b.a.in-addr.arpa.` of a registered address; otherwise
//!   forwarded;
//! - over UDP, an answer larger than the client's EDNS size (512 bytes
//!   without EDNS) is cut with TC set (hickory's encoder), so the client
//!   retries over TCP.
//!
//! Anything but a standard query gets NOTIMP, a message with no or several
//! questions FORMERR; malformed messages are refused by hickory before they
//! reach us. The handler never blocks: the table is read under a short read
//! lock.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, PTR};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use rand::seq::SliceRandom;
use tokio::net::{TcpListener, UdpSocket};
use tracing::debug;

use super::name::{DnsName, Domain};
use super::table::{self, SharedTable};
use super::upstream::Forwarder;

/// Largest UDP answer we send, whatever the client offers (RFC 6891 §6.2.5
/// leaves the choice to the responder; 4096 avoids IP fragments on most paths).
pub const MAX_UDP: u16 = 4096;
/// A TCP client silent this long is disconnected.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// Answers queued per TCP connection.
const TCP_BUFFER: usize = 32;

/// Query types counted separately.
pub const QTYPES: [&str; 4] = ["A", "AAAA", "PTR", "other"];
/// Outcomes counted.
pub const RESULTS: [&str; 6] = [
    "answer",
    "nodata",
    "nxdomain",
    "forwarded",
    "servfail",
    "refused",
];

/// Query counters by type and outcome.
#[derive(Debug, Default)]
pub struct QueryStats {
    counts: [[AtomicU64; RESULTS.len()]; QTYPES.len()],
}

/// What happened to a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Answer = 0,
    NoData = 1,
    NxDomain = 2,
    Forwarded = 3,
    ServFail = 4,
    Refused = 5,
}

impl QueryStats {
    fn count(&self, qtype: RecordType, outcome: Outcome) {
        let t = match qtype {
            RecordType::A => 0,
            RecordType::AAAA => 1,
            RecordType::PTR => 2,
            _ => 3,
        };
        self.counts[t][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Non-zero counters as (type, outcome, count).
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (t, row) in self.counts.iter().enumerate() {
            for (r, c) in row.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    out.push((QTYPES[t], RESULTS[r], n));
                }
            }
        }
        out
    }
}

/// Where a query is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// From the table: the addresses of a known name (maybe none of the
    /// type asked), or NXDOMAIN.
    Local(Option<Vec<Ipv4Addr>>),
    /// A PTR answer.
    Ptr(DnsName),
    /// Upstream.
    Forward,
}

struct Inner {
    table: SharedTable,
    domain: Domain,
    ttl: u32,
    forwarder: Arc<Forwarder>,
    stats: Arc<QueryStats>,
}

/// The request handler: cheap to clone, one per listening address.
#[derive(Clone)]
pub struct Handler(Arc<Inner>);

impl Handler {
    /// A handler answering from `table` for `domain`, forwarding the rest.
    pub fn new(
        table: SharedTable,
        domain: Domain,
        ttl: u32,
        forwarder: Arc<Forwarder>,
        stats: Arc<QueryStats>,
    ) -> Self {
        Self(Arc::new(Inner {
            table,
            domain,
            ttl,
            forwarder,
            stats,
        }))
    }

    /// Decides where the query for `name` (lower case, as hickory gives
    /// it) of type `qtype` is answered.
    fn route(&self, name: &str, qtype: RecordType) -> Route {
        let inner = &self.0;
        if qtype == RecordType::PTR {
            if let Some(addr) = arpa_v4(name) {
                return match table::read(&inner.table, |t| t.name_of(addr)) {
                    Some(n) => Route::Ptr(n),
                    None => Route::Forward,
                };
            }
        }
        let Ok(parsed) = DnsName::parse(name) else {
            // Not a name we could hold (odd bytes, root): ours if in the domain.
            return if name.ends_with(&format!(".{}", inner.domain.name())) {
                Route::Local(None)
            } else {
                Route::Forward
            };
        };
        if parsed == *inner.domain.name() {
            return Route::Local(Some(Vec::new()));
        }
        if parsed.is_in(inner.domain.name()) {
            return Route::Local(table::read(&inner.table, |t| t.lookup(&parsed)));
        }
        if parsed.is_single_label() {
            if let Ok(full) = inner.domain.qualify(parsed.as_str().trim_end_matches('.')) {
                if let Some(addrs) = table::read(&inner.table, |t| t.lookup(&full)) {
                    return Route::Local(Some(addrs));
                }
            }
        }
        Route::Forward
    }
}

/// The IPv4 address of `d.c.b.a.in-addr.arpa.`, if `name` is one.
fn arpa_v4(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa.")?;
    let mut octets = [0u8; 4];
    let mut n = 0;
    for label in rest.split('.') {
        if n == 4 || label.is_empty() || (label.len() > 1 && label.starts_with('0')) {
            return None;
        }
        octets[3 - n] = label.parse().ok()?;
        n += 1;
    }
    (n == 4).then(|| Ipv4Addr::from(octets))
}

/// The response's EDNS: present when the client sent one, with the size we
/// allow (the smaller of the client's and [`MAX_UDP`]).
fn response_edns(request: &Request) -> Option<Edns> {
    request.edns.as_ref().map(|_| {
        let mut e = Edns::new();
        e.set_max_payload(request.max_payload().clamp(512, MAX_UDP));
        e.set_version(0);
        e
    })
}

fn failed(meta: Metadata) -> ResponseInfo {
    ResponseInfo::from(Header {
        metadata: meta,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let inner = &self.0;
        let edns = response_edns(request);
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = true;
        if request.metadata.op_code != OpCode::Query
            || request.metadata.message_type != MessageType::Query
        {
            meta.response_code = ResponseCode::NotImp;
            inner.stats.count(RecordType::Unknown(0), Outcome::Refused);
            return match response.send_response(builder.build_no_records(meta)).await {
                Ok(info) => info,
                Err(_) => failed(meta),
            };
        }
        let Ok(info) = request.request_info() else {
            meta.response_code = ResponseCode::FormErr;
            inner.stats.count(RecordType::Unknown(0), Outcome::Refused);
            return match response.send_response(builder.build_no_records(meta)).await {
                Ok(info) => info,
                Err(_) => failed(meta),
            };
        };
        let qtype = info.query.query_type();
        let qname: Name = info.query.original().name().clone();
        let lower = info.query.name().to_string();
        let route = self.route(&lower, qtype);
        let records: Vec<Record>;
        let sent = match route {
            Route::Local(found) => {
                meta.authoritative = true;
                let outcome = match found {
                    None => {
                        meta.response_code = ResponseCode::NXDomain;
                        records = Vec::new();
                        Outcome::NxDomain
                    }
                    Some(mut addrs)
                        if matches!(qtype, RecordType::A | RecordType::ANY)
                            && !addrs.is_empty() =>
                    {
                        addrs.shuffle(&mut rand::thread_rng());
                        records = addrs
                            .into_iter()
                            .map(|a| Record::from_rdata(qname.clone(), inner.ttl, RData::A(A(a))))
                            .collect();
                        Outcome::Answer
                    }
                    Some(_) => {
                        records = Vec::new();
                        Outcome::NoData
                    }
                };
                inner.stats.count(qtype, outcome);
                response
                    .send_response(builder.build(meta, records.iter(), [], [], []))
                    .await
            }
            Route::Ptr(name) => {
                meta.authoritative = true;
                let target = Name::from_ascii(name.as_str()).unwrap_or_default();
                records = vec![Record::from_rdata(
                    qname,
                    inner.ttl,
                    RData::PTR(PTR(target)),
                )];
                inner.stats.count(qtype, Outcome::Answer);
                response
                    .send_response(builder.build(meta, records.iter(), [], [], []))
                    .await
            }
            Route::Forward => {
                let tcp = request.protocol() == Protocol::Tcp;
                match inner
                    .forwarder
                    .forward(request.as_slice(), tcp, request.max_payload(), &lower)
                    .await
                {
                    Ok(answer) => {
                        let mut m = answer.metadata;
                        m.id = request.metadata.id;
                        inner.stats.count(qtype, Outcome::Forwarded);
                        response
                            .send_response(builder.build(
                                m,
                                answer.answers.iter(),
                                answer.authorities.iter(),
                                [],
                                answer.additionals.iter(),
                            ))
                            .await
                    }
                    Err(_) => {
                        meta.response_code = ResponseCode::ServFail;
                        inner.stats.count(qtype, Outcome::ServFail);
                        response.send_response(builder.build_no_records(meta)).await
                    }
                }
            }
        };
        match sent {
            Ok(info) => info,
            Err(e) => {
                debug!(error = %e, "DNS answer not sent");
                failed(meta)
            }
        }
    }
}

/// The listening servers, one per address: UDP and TCP on each.
pub struct Listeners {
    handler: Handler,
    servers: BTreeMap<SocketAddr, Server<Handler>>,
}

impl Listeners {
    /// No listener yet.
    pub fn new(handler: Handler) -> Self {
        Self {
            handler,
            servers: BTreeMap::new(),
        }
    }

    /// Starts serving on `addr` (UDP and TCP); serving starts at once.
    pub async fn bind(&mut self, addr: SocketAddr) -> std::io::Result<()> {
        if self.servers.contains_key(&addr) {
            return Ok(());
        }
        let udp = UdpSocket::bind(addr).await?;
        let tcp = TcpListener::bind(addr).await?;
        let mut server = Server::new(self.handler.clone());
        server.register_socket(udp);
        server.register_listener(tcp, TCP_TIMEOUT, TCP_BUFFER);
        self.servers.insert(addr, server);
        Ok(())
    }

    /// Stops serving on `addr`.
    pub fn unbind(&mut self, addr: &SocketAddr) {
        if let Some(s) = self.servers.remove(addr) {
            // Dropping the server aborts its tasks.
            s.shutdown_token().cancel();
        }
    }

    /// Addresses served now.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.servers.keys().copied().collect()
    }

    /// Stops everything, waiting for the tasks to end.
    pub async fn shutdown(&mut self) {
        for (_, mut s) in std::mem::take(&mut self.servers) {
            let _ = s.shutdown_gracefully().await;
        }
    }
}

#[cfg(test)]
mod tests;
