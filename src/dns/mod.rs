//! The DNS port (DESIGN.md §4): every member answers, over UDP and TCP, from its own applied
//! state — services, instances, members, election leaders and static records (`zone`,
//! `names`, `records`). hickory-server owns the sockets, the message codec and UDP truncation
//! (TC set when an answer exceeds 512 bytes or the client's EDNS size; the client retries over
//! TCP); every question is answered here.
//!
//! Invariants:
//! - Bounded staleness: a member answers only while a ReadIndex it *asked* at most
//!   `max_stale` ago has succeeded — its applied state then covered everything the leader had
//!   committed when it asked, so no answer is older than `max_stale` behind the leader. Past
//!   that it answers SERVFAIL, never stale data.
//! - A malformed query gets FORMERR (hickory, or here for a message without exactly one
//!   question), an update or other opcode NOTIMP, a name outside the domain REFUSED; nothing
//!   a client sends can panic the member.

pub mod names;
pub mod records;
pub mod zone;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Name, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use latch_proto::internal::{InstanceRow, LockSpace, Range};
use redb::{ReadTransaction, ReadableDatabase as _};
use tokio::net::{TcpListener, UdpSocket};

use crate::fsm;
use crate::metrics::Metrics;
use crate::node::{Freshness, NodeHandle};
use zone::{Source, Zone};

/// How long a TCP connection may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Responses buffered per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;

/// The DNS settings of a member.
#[derive(Debug, Clone)]
pub struct Settings {
    pub zone: Zone,
    /// Answer SERVFAIL once the member has been out of touch with a leader this long.
    pub max_stale: Duration,
}

/// The instances of the services asked lately, as of one revision: a query for a service asks
/// the store only when the member applied a newer revision since (every change of the
/// registry is a revision, so an entry of the newest revision is exactly the state).
#[derive(Default)]
struct Answered {
    revision: i64,
    services: HashMap<String, Arc<Vec<InstanceRow>>>,
}

/// Services kept in [`Answered`] at most; past that it starts over.
const MAX_CACHED_SERVICES: usize = 4096;

/// The member's state as the zone reads it for one query: services from [`Answered`] when it
/// is as new as the member's newest revision, the rest from a read transaction opened at the
/// first need.
struct State<'a> {
    /// The newest revision the member announced applied when the query came.
    announced: i64,
    answered: &'a Mutex<Answered>,
    txn: OnceLock<Result<(ReadTransaction, i64), String>>,
    db: &'a Arc<redb::Database>,
    members: &'a BTreeMap<u64, String>,
}

impl State<'_> {
    fn txn(&self) -> Result<&(ReadTransaction, i64), String> {
        let opened = self.txn.get_or_init(|| {
            let txn = self.db.begin_read().map_err(|e| e.to_string())?;
            let revision = fsm::applied(&txn).map_err(|e| e.to_string())?.revision;
            Ok((txn, revision))
        });
        opened.as_ref().map_err(Clone::clone)
    }
}

impl Source for State<'_> {
    fn revision(&self) -> i64 {
        self.announced
    }

    fn instances(&self, service: &str) -> Result<Arc<Vec<InstanceRow>>, String> {
        // The registry reads an empty service as every service: no name asks for that.
        if service.is_empty() {
            return Ok(Arc::default());
        }
        if let Ok(answered) = self.answered.lock() {
            if answered.revision >= self.announced {
                if let Some(rows) = answered.services.get(service) {
                    return Ok(rows.clone());
                }
            }
        }
        let (txn, revision) = self.txn()?;
        let rows = Arc::new(fsm::registry::list(txn, service, |_| true).map_err(|e| e.to_string())?);
        if let Ok(mut answered) = self.answered.lock() {
            if *revision > answered.revision || answered.services.len() >= MAX_CACHED_SERVICES {
                answered.services.clear();
                answered.revision = (*revision).max(answered.revision);
            }
            if *revision == answered.revision {
                answered.services.insert(service.to_string(), rows.clone());
            }
        }
        Ok(rows)
    }

    fn instance(&self, service: &str, id: &str) -> Result<Option<InstanceRow>, String> {
        fsm::registry::get(&self.txn()?.0, service, id).map_err(|e| e.to_string())
    }

    fn leader(&self, election: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(fsm::elections::leader(&self.txn()?.0, election).map_err(|e| e.to_string())?.map(|l| l.value))
    }

    fn static_value(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let key = format!("{}{name}", names::STATIC_PREFIX).into_bytes();
        let (_, mut found) = fsm::range(&self.txn()?.0, &Range { key, ..Default::default() }, usize::MAX)
            .map_err(|e| e.to_string())?;
        Ok(found.kvs.pop().map(|kv| kv.value))
    }

    fn member(&self, id: u64) -> Option<String> {
        self.members.get(&id).cloned()
    }
}

/// The whole zone as the member's state has it now (for a zone transfer).
fn snapshot_of(
    txn: &ReadTransaction,
    members: &BTreeMap<u64, String>,
) -> Result<zone::Snapshot, fsm::FsmError> {
    let mut snap = zone::Snapshot {
        revision: fsm::applied(txn)?.revision,
        members: members.clone(),
        ..Default::default()
    };
    let mut grouped: BTreeMap<String, Vec<InstanceRow>> = BTreeMap::new();
    for row in fsm::registry::list(txn, "", |_| true)? {
        let service = row.instance.as_ref().map(|i| i.service.clone()).unwrap_or_default();
        grouped.entry(service).or_default().push(row);
    }
    snap.instances = grouped.into_iter().map(|(service, rows)| (service, Arc::new(rows))).collect();
    for (name, row) in fsm::locks::list(txn, LockSpace::Elections, "", "", usize::MAX, usize::MAX)?.0 {
        if let Some(leader) = fsm::elections::leader_of(&name, &row) {
            snap.leaders.insert(name, leader.value);
        }
    }
    let prefix = names::STATIC_PREFIX.as_bytes();
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let range = Range { key: prefix.to_vec(), range_end: end, ..Default::default() };
    for kv in fsm::range(txn, &range, usize::MAX)?.1.kvs {
        if let Ok(name) = String::from_utf8(kv.key[prefix.len()..].to_vec()) {
            snap.statics.insert(name, kv.value);
        }
    }
    Ok(snap)
}

/// Records per message of a zone transfer, and about how many bytes (a message holds 64 KiB).
const TRANSFER_RECORDS_PER_MESSAGE: usize = 256;
const TRANSFER_BYTES_PER_MESSAGE: usize = 32 * 1024;

/// The records of a transfer in messages of at most [`TRANSFER_RECORDS_PER_MESSAGE`] records
/// and about [`TRANSFER_BYTES_PER_MESSAGE`] (a record is at most ~4.4 KiB: a 4 KiB static TXT,
/// or an election's value, capped alike, and a name).
fn transfer_messages(
    records: &[hickory_server::proto::rr::Record],
) -> Vec<&[hickory_server::proto::rr::Record]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, r) in records.iter().enumerate() {
        let size = r.name.len() + 16 + r.data.to_string().len();
        if i > start
            && (i - start >= TRANSFER_RECORDS_PER_MESSAGE || bytes + size > TRANSFER_BYTES_PER_MESSAGE)
        {
            out.push(&records[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < records.len() {
        out.push(&records[start..]);
    }
    out
}

/// Answers every query of the port.
pub struct Handler {
    node: NodeHandle,
    settings: Settings,
    members: Arc<RwLock<BTreeMap<u64, String>>>,
    freshness: Arc<Freshness>,
    rotate: AtomicUsize,
    metrics: Arc<Metrics>,
    /// The newest revision the member applied.
    revisions: tokio::sync::watch::Receiver<i64>,
    answered: Mutex<Answered>,
    /// Zone transfers built or sent at once ([`TRANSFERS_AT_ONCE`]): each holds the whole zone.
    transfers: tokio::sync::Semaphore,
}

/// Zone transfers one member serves at once; one more is refused (REFUSED). A transfer holds
/// every record of the zone in memory while it is built and sent, in proportion to the
/// registry's instances times their tags.
const TRANSFERS_AT_ONCE: usize = 2;

/// How long a transfer's client has to take its messages before the transfer is given up.
const TRANSFER_SEND_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

impl Handler {
    /// A zone transfer's records (AXFR of the domain, over TCP only).
    async fn transfer(
        &self,
        request: &Request,
    ) -> Result<Vec<hickory_server::proto::rr::Record>, ResponseCode> {
        if request.protocol() != Protocol::Tcp {
            return Err(ResponseCode::Refused);
        }
        let info = request.request_info().map_err(|_| ResponseCode::FormErr)?;
        let qname: Name = info.query.name().into();
        if qname.to_lowercase() != self.settings.zone.domain {
            return Err(ResponseCode::Refused);
        }
        if self.freshness.stale_for().is_none_or(|b| b > self.settings.max_stale) {
            return Err(ResponseCode::ServFail);
        }
        let db = self.node.db().clone();
        let members = self.members.read().map_err(|_| ResponseCode::ServFail)?.clone();
        let zone = self.settings.zone.clone();
        // Reading and answering the whole zone is work in proportion to it: off the runtime.
        let built = tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(|_| ResponseCode::ServFail)?;
            let snap = snapshot_of(&txn, &members).map_err(|_| ResponseCode::ServFail)?;
            drop(txn);
            Ok::<_, ResponseCode>(zone::transfer(&snap, &zone))
        });
        let (records, problems) = built.await.map_err(|_| ResponseCode::ServFail)??;
        for p in problems {
            tracing::debug!(problem = %p, "DNS: a name left out of a zone transfer");
        }
        Ok(records)
    }

    /// What to answer `request`: the response code and, for a question, its answer.
    fn decide(&self, request: &Request) -> Result<zone::Answer, ResponseCode> {
        let (qname, labels, qtype) = question_of(request, &self.settings.zone)?;
        match self.freshness.stale_for() {
            Some(behind) if behind <= self.settings.max_stale => {}
            _ => return Err(ResponseCode::ServFail),
        }
        let members = self.members.read().map_err(|_| ResponseCode::ServFail)?;
        let state = State {
            announced: *self.revisions.borrow(),
            answered: &self.answered,
            txn: OnceLock::new(),
            db: self.node.db(),
            members: &members,
        };
        let rotate = self.rotate.fetch_add(1, Ordering::Relaxed);
        // More records than the message holds are never built: over UDP the client's buffer
        // (512 bytes without EDNS), over TCP 64 KiB.
        let bytes: u16 = match request.protocol() {
            Protocol::Udp => request.edns.as_ref().map_or(512, |e| e.max_payload().clamp(512, 4096)),
            _ => u16::MAX,
        };
        let pick = zone::Pick::for_message(usize::from(bytes), rotate);
        Ok(zone::answer(&state, &self.settings.zone, &labels, &qname, qtype, pick))
    }
}

/// The one question of a query inside `zone`: its name, lowercase labels and type; otherwise
/// the response code that refuses it (FORMERR: not one question or not a query; NOTIMP:
/// another opcode; REFUSED: outside the zone; NXDOMAIN: inside it, with a label no name of
/// Latch's has). The first half of the request path (the fuzz target drives it).
pub fn question_of(request: &Request, zone: &Zone) -> Result<(Name, Vec<String>, RecordType), ResponseCode> {
    if request.metadata.message_type != MessageType::Query {
        return Err(ResponseCode::FormErr);
    }
    if request.metadata.op_code != OpCode::Query {
        return Err(ResponseCode::NotImp);
    }
    let info = request.request_info().map_err(|_| ResponseCode::FormErr)?;
    if !matches!(info.query.query_class(), DNSClass::IN | DNSClass::ANY) {
        // Latch's names are Internet-class names only (CHAOS, HESIOD: not here).
        return Err(ResponseCode::Refused);
    }
    let qname: Name = info.query.name().into();
    let Some(labels) = names::labels_of(&qname) else {
        let inside = zone.domain.zone_of(&qname.to_lowercase());
        return Err(if inside { ResponseCode::NXDomain } else { ResponseCode::Refused });
    };
    if names::parse(&labels, &zone.labels).is_none() {
        return Err(ResponseCode::Refused);
    }
    Ok((qname, labels, info.query.query_type()))
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let is_transfer = request.request_info().is_ok_and(|i| i.query.query_type() == RecordType::AXFR);
        if is_transfer {
            return self.send_transfer(request, response_handle).await;
        }
        let mut edns = None;
        if let Some(asked) = request.edns.as_ref() {
            let mut e = Edns::new();
            e.set_max_payload(asked.max_payload().clamp(512, 4096));
            e.set_version(0);
            edns = Some(e);
        }
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = edns.as_ref() {
            builder.edns(e);
        }
        let decided = self.decide(request);
        let code = match &decided {
            Ok(a) => a.code,
            Err(code) => *code,
        };
        self.metrics.dns.answered(code_name(code));
        let sent = match decided {
            Ok(a) => {
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.authoritative = a.code != ResponseCode::Refused;
                metadata.recursion_available = false;
                metadata.response_code = a.code;
                let response =
                    builder.build(metadata, a.answers.iter(), [], a.soa.iter(), a.additionals.iter());
                response_handle.send_response(response).await
            }
            Err(code) => {
                let response = builder.error_msg(&request.metadata, code);
                response_handle.send_response(response).await
            }
        };
        match sent {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "DNS: sending an answer failed");
                failed(request)
            }
        }
    }
}

impl Handler {
    async fn send_transfer<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let permit = self.transfers.try_acquire();
        let built = match permit {
            Ok(_) => self.transfer(request).await,
            Err(_) => Err(ResponseCode::Refused),
        };
        let records = match built {
            Ok(r) => r,
            Err(code) => {
                self.metrics.dns.answered(code_name(code));
                let response =
                    MessageResponseBuilder::from_message_request(request).error_msg(&request.metadata, code);
                return match response_handle.send_response(response).await {
                    Ok(info) => info,
                    Err(_) => failed(request),
                };
            }
        };
        self.metrics.dns.answered(code_name(ResponseCode::NoError));
        let send = async {
            let mut info = failed(request);
            for chunk in transfer_messages(&records) {
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.authoritative = true;
                let response = MessageResponseBuilder::new(&request.queries, None).build(
                    metadata,
                    chunk.iter(),
                    [],
                    [],
                    [],
                );
                match response_handle.send_response(response).await {
                    Ok(i) => info = i,
                    Err(_) => return failed(request),
                }
            }
            info
        };
        // The permit is held until the last message went out, or the deadline passed.
        tokio::time::timeout(TRANSFER_SEND_DEADLINE, send).await.unwrap_or_else(|_| failed(request))
    }
}

/// What a response that could not be sent is reported as.
fn failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    hickory_server::proto::op::Header { metadata, counts: Default::default() }.into()
}

fn code_name(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        _ => "OTHER",
    }
}

/// Binds `addr` for UDP and TCP on one port (with port 0: the port UDP got).
pub async fn bind(addr: &str) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr).await?;
        let local = udp.local_addr()?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // Port 0 gave UDP a port whose TCP twin is taken: draw again.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr.ends_with(":0") => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port free for both UDP and TCP")))
}

/// Serves the DNS port until `stop` says so.
pub async fn serve(
    node: NodeHandle,
    freshness: Arc<Freshness>,
    settings: Settings,
    members: Arc<RwLock<BTreeMap<u64, String>>>,
    metrics: Arc<Metrics>,
    sockets: (UdpSocket, TcpListener),
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let revisions = node.revisions();
    let handler = Handler {
        node,
        settings,
        members,
        freshness,
        rotate: AtomicUsize::new(0),
        metrics,
        revisions,
        answered: Mutex::new(Answered::default()),
        transfers: tokio::sync::Semaphore::new(TRANSFERS_AT_ONCE),
    };
    let mut server = hickory_server::Server::new(handler);
    server.register_socket(sockets.0);
    server.register_listener(sockets.1, TCP_IDLE, TCP_RESPONSE_BUFFER);
    let _ = stop.wait_for(|s| *s).await;
    if let Err(e) = server.shutdown_gracefully().await {
        tracing::debug!(error = %e, "DNS server ended with an error");
    }
}

/// The request path for one datagram, without sockets or a member: decode (hickory), the
/// question ([`question_of`]), the answer from `snap` ([`zone::answer`]), and the encoded
/// response; `None` when the bytes are not even a header (the server drops those). What the
/// fuzz target (`fuzz/fuzz_targets/dns_request.rs`) and the tests below drive.
pub fn answer_datagram(snap: &zone::Snapshot, zone: &Zone, bytes: &[u8]) -> Option<Vec<u8>> {
    use hickory_server::proto::op::{Header, Message};
    use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder};
    let src = std::net::SocketAddr::from(([127, 0, 0, 1], 53));
    let mut response = match Request::from_bytes(bytes.to_vec(), src, Protocol::Udp) {
        Ok(request) => {
            let mut m = Message::new(request.metadata.id, MessageType::Response, request.metadata.op_code);
            m.metadata = Metadata::response_from_request(&request.metadata);
            for q in request.queries.queries() {
                m.add_query(q.original().clone());
            }
            match question_of(&request, zone) {
                Ok((qname, labels, qtype)) => {
                    let a = zone::answer(snap, zone, &labels, &qname, qtype, zone::Pick::for_message(512, 0));
                    m.metadata.response_code = a.code;
                    m.add_answers(a.answers);
                    m.add_authorities(a.soa);
                    m.add_additionals(a.additionals);
                }
                Err(code) => m.metadata.response_code = code,
            }
            m
        }
        Err(_) => {
            // The header alone, as hickory's server answers a message it cannot decode.
            let header = Header::read(&mut BinDecoder::new(bytes)).ok()?;
            let mut m = Message::new(header.metadata.id, MessageType::Response, header.metadata.op_code);
            m.metadata.response_code = ResponseCode::FormErr;
            m
        }
    };
    response.metadata.message_type = MessageType::Response;
    response.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use hickory_server::proto::op::{Message, Query};
    use rand::{Rng, SeedableRng};

    use super::*;
    use latch_proto::internal::{Health, Instance};

    fn snapshot() -> zone::Snapshot {
        let mut snap = zone::Snapshot { revision: 9, ..Default::default() };
        let row = InstanceRow {
            instance: Some(Instance {
                service: "web".into(),
                id: "w1".into(),
                address: "10.0.0.1".into(),
                port: 80,
                ..Default::default()
            }),
            health: Health::Passing as i32,
            ..Default::default()
        };
        snap.instances.insert("web".into(), Arc::new(vec![row]));
        snap.statics.insert("bad".into(), b"{".to_vec());
        snap
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).expect("a name"), t));
        m.to_vec().expect("encodes")
    }

    #[test]
    fn a_datagram_is_answered_through_the_whole_request_path() {
        let zone = Zone::new("latch.", 5, 5).expect("a zone");
        let snap = snapshot();
        let out =
            answer_datagram(&snap, &zone, &query("web.service.latch.", RecordType::A)).expect("an answer");
        let m = Message::from_vec(&out).expect("decodes");
        assert_eq!((m.metadata.id, m.metadata.response_code, m.answers.len()), (7, ResponseCode::NoError, 1));
        let refused =
            answer_datagram(&snap, &zone, &query("example.com.", RecordType::A)).expect("an answer");
        assert_eq!(
            Message::from_vec(&refused).expect("decodes").metadata.response_code,
            ResponseCode::Refused
        );
        let header_only = [0x12u8, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
        let formerr = answer_datagram(&snap, &zone, &header_only).expect("an answer to a header");
        assert_eq!(
            Message::from_vec(&formerr).expect("decodes").metadata.response_code,
            ResponseCode::FormErr
        );
        assert_eq!(answer_datagram(&snap, &zone, &[1, 2, 3]), None, "less than a header: dropped");
    }

    /// A seeded stand-in for the fuzz target on stable Rust: random bytes, and valid queries
    /// with random bytes flipped, through the whole request path; nothing may panic.
    #[test]
    fn no_datagram_panics_the_request_path() {
        let zone = Zone::new("latch.", 5, 5).expect("a zone");
        let snap = snapshot();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        let seeds = [
            query("web.service.latch.", RecordType::A),
            query("_web._tcp.service.latch.", RecordType::SRV),
            query("bad.latch.", RecordType::TXT),
            query("w1.web.instance.latch.", RecordType::ANY),
        ];
        for i in 0..20_000 {
            let bytes: Vec<u8> = if i % 4 == 0 {
                (0..rng.gen_range(0..80)).map(|_| rng.gen()).collect()
            } else {
                let mut b = seeds[i % seeds.len()].clone();
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..b.len());
                    b[at] = rng.gen();
                }
                b
            };
            let _ = answer_datagram(&snap, &zone, &bytes);
        }
    }
}
