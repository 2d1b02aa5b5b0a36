//! `dns`: lookups of one name against one DNS port over UDP (issue 11). `--clients` clients,
//! each with a UDP socket of its own and one query in flight, ask the same question again and
//! again until `--ops` queries were started or `--duration` passed. The port may be a Latch
//! member's (`--dns-addr`, by default `127.0.0.1:8600`) or any DNS server's, so that another
//! server (NSD, say) is measured by the same generator in the same run. etcd and ZooKeeper have
//! no DNS port: the workload is Latch's alone.
//!
//! One query is timed from just before its datagram is sent to the arrival of its answer: a
//! datagram from the server with the query's id, the response bit, and the query's question
//! (or none, as some error answers have). Each query gets a new random id; anything else that
//! arrives on the socket meanwhile (the late answer of a query given up on) is discarded and
//! counted (`discarded`). A query with no answer within `--query-timeout` is **lost**: counted
//! as a failed operation of kind `LOST`, and the client asks the next one. Sending or receiving
//! errors (an ICMP port unreachable shows as a refused receive) count as `SEND` and `RECV`.
//!
//! The answers are counted by response code (the report's outcomes: `NOERROR`, `NXDOMAIN`,
//! `SERVFAIL`, …), and from their headers: answer records in all (`answer_records`) and per
//! answer (`answers_min`, `answers_max`), `NOERROR` answers without a record
//! (`empty_answers`), and answers with the TC bit (`truncated`). The answer to the first
//! client's probe (below) is decoded whole and shown (`example`), so that two servers can be
//! seen to answer the same records.
//!
//! The generator is kept cheap, as the servers share the machine with it: the query is encoded
//! once (hickory-proto) and only its id changes; answers are read from their 12-byte header
//! and their question compared byte for byte, not decoded. No EDNS option is sent: answers are
//! held to 512 bytes, as a plain stub resolver's are.
//!
//! Before the clock starts, every client must get an answer (of any code) to one query, in at
//! most [`PROBES`] tries, else the run fails: a port that does not answer is not measured.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use hickory_server::proto::op::{Message, MessageType, OpCode, Query};
use hickory_server::proto::rr::{Name, RecordType};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use tokio::net::UdpSocket;

use super::{Error, OpError, Outcome, Progress, Report, Settings, Shared, Tally};

/// The workload's name.
pub const NAME: &str = "dns";
/// Tries of the probe query every client must get answered before the clock starts.
pub const PROBES: usize = 3;
/// How long a client waits after a send or receive error before its next query, so that a
/// port that refuses is not asked in a busy loop.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Records of the example answer shown in the report.
const EXAMPLE_RECORDS: usize = 8;
/// The largest datagram a client receives.
const MAX_DATAGRAM: usize = 65_535;
/// Bytes of a DNS header.
const HEADER: usize = 12;

/// What `dns` is asked.
#[derive(Debug, Clone)]
pub struct DnsBench {
    /// The DNS port, `host:port`.
    pub server: String,
    /// The name asked, fully qualified.
    pub name: Name,
    /// The type asked.
    pub record_type: RecordType,
    /// How long a query may go unanswered before it is lost.
    pub query_timeout: Duration,
}

impl DnsBench {
    /// The name a service's instances answer at: `SERVICE.service.DOMAIN` (DESIGN.md §4).
    pub fn service_name(service: &str, domain: &str) -> Result<Name, String> {
        if service.is_empty() || service.contains('.') {
            return Err(format!("--service {service:?} is not one DNS label"));
        }
        let domain = domain.trim_end_matches('.');
        fqdn(&format!("{service}.service.{domain}")).map_err(|e| format!("--service {service:?}: {e}"))
    }

    /// `name` as a fully qualified name (a trailing dot is implied).
    pub fn name(name: &str) -> Result<Name, String> {
        fqdn(name).map_err(|e| format!("--name {name:?}: {e}"))
    }

    /// The settings shown in the report.
    fn parameters(&self) -> Map<String, Value> {
        let mut p = Map::new();
        p.insert("name".into(), json!(self.name.to_ascii()));
        p.insert("type".into(), json!(self.record_type.to_string()));
        p.insert("query_timeout_ms".into(), json!(self.query_timeout.as_millis() as u64));
        p
    }

    /// Checks what the types cannot; the message names the flag at fault.
    pub fn validate(&self) -> Result<(), Error> {
        if self.query_timeout.is_zero() {
            return Err(Error::Settings("--query-timeout must be more than 0".into()));
        }
        Ok(())
    }
}

fn fqdn(text: &str) -> Result<Name, String> {
    let mut name = Name::from_ascii(text).map_err(|e| e.to_string())?;
    name.set_fqdn(true);
    Ok(name)
}

/// The query's bytes with id 0: one question, no EDNS, recursion not desired (the servers
/// measured are authoritative).
pub fn query_bytes(name: &Name, record_type: RecordType) -> Result<Vec<u8>, String> {
    let mut message = Message::new(0, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = false;
    message.add_query(Query::query(name.clone(), record_type));
    message.to_vec().map_err(|e| format!("cannot encode a query of {name} {record_type}: {e}"))
}

/// What an answer's header says, for the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerHeader {
    /// The response code (its low 4 bits: the extended bits live in EDNS, which is not asked).
    pub code: u8,
    /// The TC bit.
    pub truncated: bool,
    /// Records in the answer section.
    pub answers: u16,
}

/// Reads `datagram` as the answer to `query` (whose id is set): `None` if it is not one — too
/// short, another id, not a response, another opcode, or another question (compared without
/// regard to ASCII case). An answer without a question (as some error answers are) is taken.
pub fn answer_to(query: &[u8], datagram: &[u8]) -> Option<AnswerHeader> {
    if datagram.len() < HEADER || query.len() < HEADER || datagram[..2] != query[..2] {
        return None;
    }
    let flags = u16::from_be_bytes([datagram[2], datagram[3]]);
    let is_response = flags & 0x8000 != 0;
    let op_code = (flags >> 11) & 0xf;
    let asked_op_code = (u16::from_be_bytes([query[2], query[3]]) >> 11) & 0xf;
    if !is_response || op_code != asked_op_code {
        return None;
    }
    let questions = u16::from_be_bytes([datagram[4], datagram[5]]);
    match questions {
        0 => {}
        1 => {
            // The query holds its one question right after the header, and nothing else.
            let asked = &query[HEADER..];
            let echoed = datagram.get(HEADER..HEADER + asked.len())?;
            if !echoed.eq_ignore_ascii_case(asked) {
                return None;
            }
        }
        _ => return None,
    }
    Some(AnswerHeader {
        code: (flags & 0xf) as u8,
        truncated: flags & 0x0200 != 0,
        answers: u16::from_be_bytes([datagram[6], datagram[7]]),
    })
}

/// The report's name of a response code.
pub fn code_name(code: u8) -> Outcome {
    match code {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "OTHER",
    }
}

/// The records of a whole answer, as text (`name ttl class type data`), at most
/// [`EXAMPLE_RECORDS`] of them and a count of the rest; or why it does not decode.
pub fn describe(datagram: &[u8]) -> Vec<String> {
    match Message::from_vec(datagram) {
        Ok(message) => {
            let mut lines: Vec<String> =
                message.answers.iter().take(EXAMPLE_RECORDS).map(|r| r.to_string()).collect();
            if message.answers.len() > EXAMPLE_RECORDS {
                lines.push(format!("… and {} more", message.answers.len() - EXAMPLE_RECORDS));
            }
            if lines.is_empty() {
                lines.push(format!("({}, no answer record)", message.metadata.response_code));
            }
            lines
        }
        Err(e) => vec![format!("(the answer does not decode: {e})")],
    }
}

/// The counts a client keeps besides its [`Tally`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Queries with no answer within the timeout.
    pub lost: u64,
    /// Records in the answer sections of all answers.
    pub answer_records: u64,
    /// Fewest and most answer records of one answer (`u64::MAX`, 0 before any answer).
    pub answers_min: u64,
    pub answers_max: u64,
    /// `NOERROR` answers without an answer record.
    pub empty_answers: u64,
    /// Answers with the TC bit.
    pub truncated: u64,
    /// Datagrams that were not the answer to the query in flight.
    pub discarded: u64,
}

impl Counts {
    fn new() -> Counts {
        Counts { answers_min: u64::MAX, ..Counts::default() }
    }

    /// Counts one answer.
    pub fn answered(&mut self, header: AnswerHeader) {
        let n = u64::from(header.answers);
        self.answer_records += n;
        self.answers_min = self.answers_min.min(n);
        self.answers_max = self.answers_max.max(n);
        self.empty_answers += u64::from(header.code == 0 && n == 0);
        self.truncated += u64::from(header.truncated);
    }

    /// Adds another client's counts to these.
    pub fn merge(&mut self, other: Counts) {
        self.lost += other.lost;
        self.answer_records += other.answer_records;
        self.answers_min = self.answers_min.min(other.answers_min);
        self.answers_max = self.answers_max.max(other.answers_max);
        self.empty_answers += other.empty_answers;
        self.truncated += other.truncated;
        self.discarded += other.discarded;
    }

    /// Into the report's parameters.
    fn into_parameters(self, parameters: &mut Map<String, Value>) {
        let min = if self.answers_min == u64::MAX { 0 } else { self.answers_min };
        parameters.insert("lost".into(), json!(self.lost));
        parameters.insert("answer_records".into(), json!(self.answer_records));
        parameters.insert("answers_min".into(), json!(min));
        parameters.insert("answers_max".into(), json!(self.answers_max));
        parameters.insert("empty_answers".into(), json!(self.empty_answers));
        parameters.insert("truncated".into(), json!(self.truncated));
        parameters.insert("discarded".into(), json!(self.discarded));
    }
}

/// One client: its socket (connected to the server, so that only the server's datagrams, and
/// its ICMP errors, reach it), its query, and its id generator.
struct Client {
    socket: UdpSocket,
    query: Vec<u8>,
    buffer: Vec<u8>,
    rng: SmallRng,
    timeout: Duration,
}

/// How one query ended.
enum Asked {
    /// The answer's header, and its length in the client's buffer.
    Answered(AnswerHeader, usize),
    Failed(OpError),
}

impl Client {
    async fn open(
        server: SocketAddr,
        query: Vec<u8>,
        seed: u64,
        timeout: Duration,
    ) -> Result<Client, OpError> {
        let local: SocketAddr =
            if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let socket = UdpSocket::bind(local).await.map_err(|e| io_error("SOCKET", e))?;
        socket.connect(server).await.map_err(|e| io_error("SOCKET", e))?;
        Ok(Client {
            socket,
            query,
            buffer: vec![0; MAX_DATAGRAM],
            rng: SmallRng::seed_from_u64(seed),
            timeout,
        })
    }

    /// Asks the question once, with a new id; discarded datagrams are counted in `counts`.
    async fn ask(&mut self, counts: &mut Counts) -> Asked {
        let last = u16::from_be_bytes([self.query[0], self.query[1]]);
        let id = loop {
            let id: u16 = self.rng.gen();
            if id != last {
                break id;
            }
        };
        self.query[..2].copy_from_slice(&id.to_be_bytes());
        let deadline = tokio::time::Instant::now() + self.timeout;
        if let Err(e) = self.socket.send(&self.query).await {
            return Asked::Failed(io_error("SEND", e));
        }
        loop {
            match tokio::time::timeout_at(deadline, self.socket.recv(&mut self.buffer)).await {
                Err(_) => {
                    return Asked::Failed(OpError {
                        kind: "LOST",
                        message: format!("no answer within {}", humantime::format_duration(self.timeout)),
                    })
                }
                Ok(Err(e)) => return Asked::Failed(io_error("RECV", e)),
                Ok(Ok(n)) => match answer_to(&self.query, &self.buffer[..n]) {
                    Some(header) => return Asked::Answered(header, n),
                    None => counts.discarded += 1,
                },
            }
        }
    }

    /// The first `len` bytes of the last datagram received.
    fn received(&self, len: usize) -> &[u8] {
        &self.buffer[..len.min(self.buffer.len())]
    }
}

fn io_error(kind: &'static str, e: std::io::Error) -> OpError {
    OpError { kind, message: e.to_string() }
}

/// Runs the benchmark; see the module doc. Of `settings`, the clients and the stop rule apply
/// (each client is one socket: the report's connections are the clients).
pub async fn run(
    bench: DnsBench,
    settings: &Settings,
    progress: Progress,
    interrupt: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Report, Error> {
    let mut reported = settings.clone();
    reported.connections = settings.clients;
    reported.validate()?;
    bench.validate()?;
    let target = format!("dns://{}", bench.server);
    let server =
        tokio::net::lookup_host(&bench.server).await.ok().and_then(|mut addrs| addrs.next()).ok_or_else(
            || Error::Settings(format!("--dns-addr {:?} is not a reachable host:port", bench.server)),
        )?;
    let query = query_bytes(&bench.name, bench.record_type).map_err(Error::Settings)?;

    // Every client's socket, each answered once before the clock starts; the first client's
    // answer is the report's example.
    let seed: u64 = rand::random();
    let example: Mutex<Vec<String>> = Mutex::default();
    let clients = try_join_all((0..settings.clients).map(|i| {
        let (query, example) = (query.clone(), &example);
        async move {
            let mut client =
                Client::open(server, query, seed.wrapping_add(i as u64), bench.query_timeout).await?;
            let mut ignored = Counts::new();
            let mut why = None;
            for _ in 0..PROBES {
                match client.ask(&mut ignored).await {
                    Asked::Answered(_, len) => {
                        if i == 0 {
                            *example.lock().unwrap_or_else(PoisonError::into_inner) =
                                describe(client.received(len));
                        }
                        return Ok(client);
                    }
                    Asked::Failed(e) => why = Some(e),
                }
            }
            Err(why.unwrap_or(OpError { kind: "LOST", message: "no probe was sent".into() }))
        }
    }))
    .await
    .map_err(|error| Error::Unreachable { target: target.clone(), error })?;

    let (shared, clock) = super::start_clock(settings.stop, &progress, interrupt);
    let tasks: Vec<_> =
        clients.into_iter().map(|client| tokio::spawn(client_task(client, shared.clone()))).collect();
    let mut tally = Tally::new();
    let mut counts = Counts::new();
    let mut panicked = None;
    for task in tasks {
        match task.await {
            Ok((task_tally, task_counts)) => {
                tally.merge(task_tally);
                counts.merge(task_counts);
            }
            Err(e) => panicked = Some(e.to_string()),
        }
    }
    let elapsed = clock.stop(&shared);
    progress.finish();
    if let Some(why) = panicked {
        return Err(Error::Task(why));
    }
    let mut parameters = bench.parameters();
    counts.into_parameters(&mut parameters);
    let example = example.into_inner().unwrap_or_else(PoisonError::into_inner);
    parameters.insert("example".into(), json!(example));
    let mut report = Report::new(NAME, parameters, &reported, tally, elapsed);
    report.target = target;
    // One name and no value: the key space is the name.
    report.key_size = bench.name.to_ascii().len();
    report.value_size = 0;
    report.keyspace = 1;
    Ok(report)
}

/// The report as JSON ([`Report::to_json`]), its `system` `"dns"`: the generator cannot tell
/// which server answers the port.
pub fn to_json(report: &Report) -> Value {
    let mut json = report.to_json();
    json["system"] = json!("dns");
    json
}

/// The report as text ([`Report::to_text`]), the example answer on lines of its own.
pub fn to_text(report: &Report) -> String {
    let mut report = report.clone();
    let example = report.parameters.remove("example");
    let mut text = report.to_text();
    let lines: Vec<&str> =
        example.as_ref().and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    for (i, line) in lines.iter().enumerate() {
        text.push_str(if i == 0 { "example     " } else { "            " });
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// One client: one query at a time until the budget is spent.
async fn client_task(mut client: Client, shared: Arc<Shared>) -> (Tally, Counts) {
    let mut tally = Tally::new();
    let mut counts = Counts::new();
    while shared.claim() {
        let started = Instant::now();
        match client.ask(&mut counts).await {
            Asked::Answered(header, _) => {
                tally.record(started.elapsed(), code_name(header.code));
                counts.answered(header);
                shared.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            Asked::Failed(error) => {
                let pause = error.kind != "LOST";
                counts.lost += u64::from(error.kind == "LOST");
                tally.record_error(error);
                shared.failed.fetch_add(1, Ordering::Relaxed);
                if pause {
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
        }
    }
    (tally, counts)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_server::proto::op::ResponseCode;
    use hickory_server::proto::rr::rdata::A;
    use hickory_server::proto::rr::{RData, Record};

    use super::*;

    fn web() -> Name {
        DnsBench::service_name("web", "latch.").expect("a valid service")
    }

    /// The query of `web` with `id`.
    fn query(id: u16) -> Vec<u8> {
        let mut bytes = query_bytes(&web(), RecordType::A).expect("encodes");
        bytes[..2].copy_from_slice(&id.to_be_bytes());
        bytes
    }

    /// An answer to `question` with `id`, `code` and `n` A records.
    fn answer(id: u16, question: &Name, code: ResponseCode, n: u8, truncated: bool) -> Vec<u8> {
        let mut message = Message::new(id, MessageType::Response, OpCode::Query);
        message.metadata.response_code = code;
        message.metadata.truncation = truncated;
        message.add_query(Query::query(question.clone(), RecordType::A));
        for i in 0..n {
            message.add_answer(Record::from_rdata(
                question.clone(),
                5,
                RData::A(A(Ipv4Addr::new(10, 0, 0, i))),
            ));
        }
        message.to_vec().expect("encodes")
    }

    #[test]
    fn a_service_is_asked_at_its_name_under_the_domain() {
        assert_eq!(web().to_ascii(), "web.service.latch.");
        assert_eq!(DnsBench::service_name("web", "latch").expect("valid").to_ascii(), "web.service.latch.");
        assert_eq!(
            DnsBench::service_name("api", "example.com.").expect("valid").to_ascii(),
            "api.service.example.com."
        );
        assert!(DnsBench::service_name("a.b", "latch.").expect_err("two labels").contains("--service"));
        assert!(DnsBench::service_name("", "latch.").is_err());
        assert_eq!(
            DnsBench::name("leader.db.election.latch").expect("valid").to_ascii(),
            "leader.db.election.latch."
        );
    }

    #[test]
    fn the_query_is_one_question_without_edns_or_recursion() {
        let bytes = query(0x1234);
        let message = Message::from_vec(&bytes).expect("decodes");
        assert_eq!(message.metadata.id, 0x1234);
        assert_eq!(message.metadata.message_type, MessageType::Query);
        assert!(!message.metadata.recursion_desired);
        assert_eq!(message.queries, vec![Query::query(web(), RecordType::A)]);
        assert!(message.edns.is_none() && message.additionals.is_empty());
    }

    #[test]
    fn an_answer_is_read_from_its_header() {
        let got = answer_to(&query(7), &answer(7, &web(), ResponseCode::NoError, 3, false));
        assert_eq!(got, Some(AnswerHeader { code: 0, truncated: false, answers: 3 }));
        let got = answer_to(&query(7), &answer(7, &web(), ResponseCode::NoError, 30, true));
        assert_eq!(got, Some(AnswerHeader { code: 0, truncated: true, answers: 30 }));
        let got = answer_to(&query(7), &answer(7, &web(), ResponseCode::NXDomain, 0, false));
        assert_eq!(got.map(|h| code_name(h.code)), Some("NXDOMAIN"));
    }

    #[test]
    fn a_datagram_that_does_not_answer_the_query_in_flight_is_not_taken() {
        let q = query(7);
        // The late answer of an earlier query.
        assert_eq!(answer_to(&q, &answer(6, &web(), ResponseCode::NoError, 3, false)), None);
        // Another question.
        let other = DnsBench::service_name("api", "latch.").expect("valid");
        assert_eq!(answer_to(&q, &answer(7, &other, ResponseCode::NoError, 3, false)), None);
        // The query itself (not a response), and scraps.
        assert_eq!(answer_to(&q, &q), None);
        assert_eq!(answer_to(&q, &q[..11]), None);
        assert_eq!(answer_to(&q, &[]), None);
    }

    #[test]
    fn the_question_is_compared_without_regard_to_case_and_may_be_left_out_of_an_error() {
        let upper = DnsBench::name("WEB.Service.LATCH").expect("valid");
        let got = answer_to(&query(9), &answer(9, &upper, ResponseCode::NoError, 1, false));
        assert_eq!(got.map(|h| h.answers), Some(1));
        let formerr = Message::error_msg(9, OpCode::Query, ResponseCode::FormErr).to_vec().expect("encodes");
        let got = answer_to(&query(9), &formerr);
        assert_eq!(got, Some(AnswerHeader { code: 1, truncated: false, answers: 0 }));
    }

    #[test]
    fn response_codes_have_their_names() {
        let names: Vec<_> = (0..=6).map(code_name).collect();
        assert_eq!(names, ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "OTHER"]);
    }

    #[test]
    fn counts_show_empty_and_truncated_answers_and_merge() {
        let mut a = Counts::new();
        a.answered(AnswerHeader { code: 0, truncated: false, answers: 3 });
        a.answered(AnswerHeader { code: 0, truncated: false, answers: 0 });
        let mut b = Counts::new();
        b.answered(AnswerHeader { code: 0, truncated: true, answers: 28 });
        b.answered(AnswerHeader { code: 3, truncated: false, answers: 0 });
        b.lost = 2;
        b.discarded = 1;
        a.merge(b);
        a.merge(Counts::new());
        let expected = Counts {
            lost: 2,
            answer_records: 31,
            answers_min: 0,
            answers_max: 28,
            empty_answers: 1,
            truncated: 1,
            discarded: 1,
        };
        assert_eq!(a, expected);
        let mut parameters = Map::new();
        Counts::new().into_parameters(&mut parameters);
        assert_eq!((parameters["answers_min"].clone(), parameters["lost"].clone()), (json!(0), json!(0)));
    }

    #[test]
    fn reports_say_dns_in_json_and_show_the_example_on_lines_of_their_own() {
        let settings = Settings {
            target: crate::bench::TargetSpec::parse("latch://127.0.0.1:8600").expect("valid"),
            clients: 2,
            connections: 2,
            stop: crate::bench::Stop::Ops(2),
            keys: crate::bench::KeySpace::new(1, 32).expect("valid"),
            value_size: 0,
            timeout: Duration::from_secs(1),
        };
        let mut tally = Tally::new();
        tally.record(Duration::from_micros(80), "NOERROR");
        tally.record_error(OpError { kind: "LOST", message: "no answer within 1s".into() });
        let mut parameters = Map::new();
        parameters.insert("name".into(), json!("web.service.latch."));
        parameters.insert("example".into(), json!(["web.service.latch. 5 IN A 10.0.0.1", "b"]));
        let mut report = Report::new(NAME, parameters, &settings, tally, Duration::from_secs(1));
        report.target = "dns://127.0.0.1:8600".into();
        let json = to_json(&report);
        assert_eq!(
            (json["system"].as_str(), json["target"].as_str()),
            (Some("dns"), Some("dns://127.0.0.1:8600"))
        );
        assert_eq!(json["errors"]["LOST"], 1);
        let text = to_text(&report);
        assert!(text.contains("workload    dns name=web.service.latch.  ("), "{text}");
        assert!(text.contains("\nexample     web.service.latch. 5 IN A 10.0.0.1\n            b\n"), "{text}");
        assert!(text.contains("LOST 1"), "{text}");
    }

    #[test]
    fn the_example_shows_the_records_and_how_many_more() {
        let three = describe(&answer(1, &web(), ResponseCode::NoError, 3, false));
        assert_eq!(three.len(), 3);
        assert!(three[0].starts_with("web.service.latch. 5 IN A 10.0.0.0"), "{three:?}");
        let many = describe(&answer(1, &web(), ResponseCode::NoError, 20, false));
        assert_eq!(many.len(), EXAMPLE_RECORDS + 1);
        assert_eq!(many[EXAMPLE_RECORDS], "… and 12 more");
        let none = describe(&answer(1, &web(), ResponseCode::NXDomain, 0, false));
        assert!(none[0].contains("no answer record"), "{none:?}");
        assert!(describe(&[1, 2, 3])[0].contains("does not decode"));
    }
}
