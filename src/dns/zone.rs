//! The answers: what Latch's zone says for a name and type, from a [`Source`] of state — the
//! member's applied state when serving, what the gRPC API returns for `latch dns records`. One
//! function answers both, so the command shows exactly what the port would say.
//!
//! Rules (DESIGN.md §4, RFC 1034/2308/2782):
//! - Only PASSING instances are answered; a service with none does not exist (NXDOMAIN).
//! - A name that exists without records of the asked type is NOERROR with no answer (NODATA);
//!   both that and NXDOMAIN carry the zone's SOA, whose minimum is the negative TTL.
//! - A/AAAA answers of a service are rotated per query (`rotate`); SRV answers carry the
//!   targets' addresses in the additional section.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use latch_proto::internal::InstanceRow;

use super::names::{self, Question};
use super::records;
use crate::fsm::registry;

/// The state a zone is answered from. Errors are reading failures: the query gets SERVFAIL.
pub trait Source {
    /// The revision the state is at (the SOA serial, modulo 2^32).
    fn revision(&self) -> i64;
    /// Every instance of `service`, in id order, whatever its health.
    fn instances(&self, service: &str) -> Result<Arc<Vec<InstanceRow>>, String>;
    /// One instance, whatever its health.
    fn instance(&self, service: &str, id: &str) -> Result<Option<InstanceRow>, String>;
    /// The value the leader of `election` published, if it has a leader.
    fn leader(&self, election: &str) -> Result<Option<Vec<u8>>, String>;
    /// The value of the KV key `/dns/<name>`.
    fn static_value(&self, name: &str) -> Result<Option<Vec<u8>>, String>;
    /// The client address (`host:port`) of member `id`, if known.
    fn member(&self, id: u64) -> Option<String>;
}

/// The zone's settings.
#[derive(Debug, Clone)]
pub struct Zone {
    pub domain: Name,
    /// The domain's labels, lowercase.
    pub labels: Vec<String>,
    /// TTL of every generated answer, and the default of static records.
    pub ttl: u32,
    /// The SOA minimum: how long resolvers keep a negative answer.
    pub negative_ttl: u32,
}

impl Zone {
    /// A zone for `domain` (`latch.`; a missing final dot is added).
    pub fn new(domain: &str, ttl: u32, negative_ttl: u32) -> Result<Zone, String> {
        let mut name =
            Name::from_ascii(domain).map_err(|e| format!("{domain:?} is not a domain name: {e}"))?;
        name.set_fqdn(true);
        let name = name.to_lowercase();
        if name.is_root() {
            return Err("the root cannot be Latch's domain".into());
        }
        let labels = names::labels_of(&name).ok_or_else(|| format!("{domain:?}: labels must be ASCII"))?;
        Ok(Zone { domain: name, labels, ttl, negative_ttl })
    }

    fn name(&self, relative: &str) -> Result<Name, String> {
        Name::from_ascii(relative)
            .and_then(|n| n.append_domain(&self.domain))
            .map_err(|e| format!("{relative:?} makes no domain name: {e}"))
    }

    /// The zone's SOA record; its serial is the revision (modulo 2^32).
    pub fn soa(&self, revision: i64) -> Record {
        let mname = self.name("ns").unwrap_or_else(|_| self.domain.clone());
        let rname = self.name("hostmaster").unwrap_or_else(|_| self.domain.clone());
        let soa = SOA::new(mname, rname, revision as u32, 3600, 600, 86400, self.negative_ttl);
        Record::from_rdata(self.domain.clone(), self.negative_ttl, RData::SOA(soa))
    }
}

/// What the zone says for one question.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub code: ResponseCode,
    pub answers: Vec<Record>,
    pub additionals: Vec<Record>,
    /// The SOA, for NXDOMAIN and NODATA.
    pub soa: Vec<Record>,
}

impl Answer {
    fn code(code: ResponseCode) -> Answer {
        Answer { code, answers: Vec::new(), additionals: Vec::new(), soa: Vec::new() }
    }
}

/// How a service's answer is chosen: rotated by `rotate`, at most `limit` instances (the
/// caller passes more than its message can hold, so that a cut answer is still marked
/// truncated).
#[derive(Debug, Clone, Copy)]
pub struct Pick {
    pub rotate: usize,
    pub limit: usize,
}

impl Pick {
    /// Every instance, in id order.
    pub const ALL: Pick = Pick { rotate: 0, limit: usize::MAX };

    /// For a message of at most `bytes`: more records than fit (an A record takes at least
    /// 16 bytes), rotated by `rotate`.
    pub fn for_message(bytes: usize, rotate: usize) -> Pick {
        Pick { rotate, limit: bytes / 16 + 1 }
    }
}

/// Answers `qname` (its lowercase `labels`) of type `qtype`.
pub fn answer(
    src: &dyn Source,
    zone: &Zone,
    labels: &[String],
    qname: &Name,
    qtype: RecordType,
    pick: Pick,
) -> Answer {
    let Some(question) = names::parse(labels, &zone.labels) else {
        return Answer::code(ResponseCode::Refused);
    };
    match records_for(src, zone, &question, qname, qtype, pick) {
        Err(why) => {
            tracing::debug!(name = %qname, %why, "DNS: answered SERVFAIL");
            Answer::code(ResponseCode::ServFail)
        }
        Ok(None) => Answer { soa: vec![zone.soa(src.revision())], ..Answer::code(ResponseCode::NXDomain) },
        Ok(Some((answers, additionals))) => {
            let soa = if answers.is_empty() { vec![zone.soa(src.revision())] } else { Vec::new() };
            Answer { code: ResponseCode::NoError, answers, additionals, soa }
        }
    }
}

/// Records and additionals of a name that exists; `None` if it does not.
type Found = Option<(Vec<Record>, Vec<Record>)>;

fn records_for(
    src: &dyn Source,
    zone: &Zone,
    question: &Question,
    qname: &Name,
    qtype: RecordType,
    pick: Pick,
) -> Result<Found, String> {
    let wants = |t: RecordType| qtype == t || qtype == RecordType::ANY;
    let addresses = |addrs: Vec<IpAddr>| -> Vec<Record> {
        addrs
            .into_iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) if wants(RecordType::A) => Some(RData::A(A(v4))),
                IpAddr::V6(v6) if wants(RecordType::AAAA) => Some(RData::AAAA(AAAA(v6))),
                _ => None,
            })
            .map(|rdata| Record::from_rdata(qname.clone(), zone.ttl, rdata))
            .collect()
    };
    Ok(match question {
        Question::Apex => Some((
            if wants(RecordType::SOA) { vec![zone.soa(src.revision())] } else { Vec::new() },
            Vec::new(),
        )),
        Question::Nothing => None,
        Question::Structure => Some((Vec::new(), Vec::new())),
        Question::InstancesOf { service } => {
            (!passing(src, service, None)?.1.is_empty()).then(|| (Vec::new(), Vec::new()))
        }
        Question::ElectionOf { election } => src.leader(election)?.map(|_| (Vec::new(), Vec::new())),
        Question::Service { service, tag } => {
            let (rows, healthy) = passing(src, service, tag.as_deref())?;
            if healthy.is_empty() {
                return Ok(None);
            }
            if qtype == RecordType::SRV {
                let chosen: Vec<&InstanceRow> = healthy.iter().map(|at| &rows[*at]).collect();
                Some(srv(zone, qname, &picked(chosen, pick)))
            } else {
                // One record per address, though instances share it (one host, several
                // ports): RFC 2181 §5.
                let mut seen = std::collections::HashSet::new();
                let ips = healthy
                    .iter()
                    .filter_map(|at| ip_of(&rows[*at]))
                    .filter(|ip| wants(if ip.is_ipv4() { RecordType::A } else { RecordType::AAAA }))
                    .filter(|ip| seen.insert(*ip))
                    .collect();
                Some((addresses(picked(ips, pick)), Vec::new()))
            }
        }
        Question::Srv { service, tag } => {
            let (rows, mut healthy) = passing(src, service, tag.as_deref())?;
            if healthy.is_empty() {
                return Ok(None);
            }
            if wants(RecordType::SRV) {
                let n = healthy.len();
                healthy.rotate_left(pick.rotate % n);
                healthy.truncate(pick.limit.max(1));
                let chosen: Vec<&InstanceRow> = healthy.iter().map(|at| &rows[*at]).collect();
                Some(srv(zone, qname, &chosen))
            } else {
                Some((Vec::new(), Vec::new()))
            }
        }
        Question::Instance { service, id } => {
            let Some(row) = src.instance(service, id)?.filter(registry::is_passing) else { return Ok(None) };
            match ip_of(&row) {
                Some(ip) => Some((addresses(vec![ip]), Vec::new())),
                None => {
                    let host = row.instance.as_ref().map(|i| i.address.as_str()).unwrap_or_default();
                    let target = fqdn(host)?;
                    Some((
                        vec![Record::from_rdata(qname.clone(), zone.ttl, RData::CNAME(CNAME(target)))],
                        Vec::new(),
                    ))
                }
            }
        }
        Question::Node { id } => {
            let Some(addr) = src.member(*id) else { return Ok(None) };
            if crate::config::is_wildcard(&addr) {
                // Bound to every interface, advertising nothing: no address to give.
                return Ok(None);
            }
            match addr.parse::<std::net::SocketAddr>().map(|a| a.ip()).or_else(|_| addr.parse::<IpAddr>()) {
                Ok(ip) => Some((addresses(vec![ip]), Vec::new())),
                // A host name it advertises (--advertise-client-addr): that name, as an
                // instance's host name is answered.
                Err(_) => {
                    let host = addr.rsplit_once(':').map_or(addr.as_str(), |(host, _)| host);
                    let target = fqdn(host).map_err(|e| format!("member {id}'s client address: {e}"))?;
                    Some((
                        vec![Record::from_rdata(qname.clone(), zone.ttl, RData::CNAME(CNAME(target)))],
                        Vec::new(),
                    ))
                }
            }
        }
        Question::Leader { election } => {
            let Some(value) = src.leader(election)? else { return Ok(None) };
            let text = String::from_utf8_lossy(&value);
            let ip = text
                .parse::<IpAddr>()
                .ok()
                .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()));
            match ip {
                Some(ip) => Some((addresses(vec![ip]), Vec::new())),
                None if wants(RecordType::TXT) => {
                    // As long as a static TXT record may be.
                    let value = &value[..value.len().min(records::MAX_TXT_BYTES)];
                    let txt = RData::TXT(TXT::new(records::txt_strings(value)));
                    Some((vec![Record::from_rdata(qname.clone(), zone.ttl, txt)], Vec::new()))
                }
                None => Some((Vec::new(), Vec::new())),
            }
        }
        Question::Static { name } => {
            let Some(value) = src.static_value(name)? else { return Ok(None) };
            let all = records::parse(qname, &value, zone.ttl)
                .map_err(|why| format!("static record {}{name}: {why}", names::STATIC_PREFIX))?;
            let cname = all.iter().any(|r| r.record_type() == RecordType::CNAME);
            let answers = all.into_iter().filter(|r| cname || wants(r.record_type())).collect();
            Some((answers, Vec::new()))
        }
    })
}

/// The whole zone at one revision, read once: the source of a zone transfer (AXFR), which
/// `latch dns records` asks for.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub revision: i64,
    /// Instances by service, in id order.
    pub instances: BTreeMap<String, Arc<Vec<InstanceRow>>>,
    /// The values election leaders published, by election.
    pub leaders: BTreeMap<String, Vec<u8>>,
    /// Static records' values, by name relative to the domain.
    pub statics: BTreeMap<String, Vec<u8>>,
    /// Members' client addresses, by id.
    pub members: BTreeMap<u64, String>,
}

impl Source for Snapshot {
    fn revision(&self) -> i64 {
        self.revision
    }
    fn instances(&self, service: &str) -> Result<Arc<Vec<InstanceRow>>, String> {
        Ok(self.instances.get(service).cloned().unwrap_or_default())
    }
    fn instance(&self, service: &str, id: &str) -> Result<Option<InstanceRow>, String> {
        let Some(rows) = self.instances.get(service) else { return Ok(None) };
        // In id order (the registry's key order).
        let at = rows.binary_search_by(|r| r.instance.as_ref().map_or("", |i| i.id.as_str()).cmp(id));
        Ok(at.ok().map(|at| rows[at].clone()))
    }
    fn leader(&self, election: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.leaders.get(election).cloned())
    }
    fn static_value(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.statics.get(name).cloned())
    }
    fn member(&self, id: u64) -> Option<String> {
        self.members.get(&id).cloned()
    }
}

/// Every record of the zone, as the port answers each name (RFC 5936 order: the SOA first
/// and last). A name whose answer fails (a bad static record) is left out, and said in
/// `problems`.
pub fn transfer(snap: &Snapshot, zone: &Zone) -> (Vec<Record>, Vec<String>) {
    let mut names: Vec<(String, &[RecordType])> = Vec::new();
    const ADDRESSES: &[RecordType] = &[RecordType::A, RecordType::AAAA];
    const SRV_ONLY: &[RecordType] = &[RecordType::SRV];
    for (service, rows) in &snap.instances {
        let healthy: Vec<&InstanceRow> = rows.iter().filter(|r| registry::is_passing(r)).collect();
        if healthy.is_empty() {
            continue;
        }
        names.push((format!("{service}.service"), ADDRESSES));
        names.push((format!("_{service}._tcp.service"), SRV_ONLY));
        let mut tags: Vec<String> = healthy
            .iter()
            .flat_map(|r| r.instance.iter().flat_map(|i| i.tags.iter().map(|t| t.to_ascii_lowercase())))
            .collect();
        tags.sort();
        tags.dedup();
        for tag in tags {
            names.push((format!("{tag}.{service}.service"), ADDRESSES));
            names.push((format!("_{service}._{tag}.service"), SRV_ONLY));
        }
        for r in healthy {
            if let Some(i) = r.instance.as_ref() {
                names.push((format!("{}.{service}.instance", i.id), &[RecordType::ANY]));
            }
        }
    }
    for id in snap.members.keys() {
        // ANY: a member advertising a host name answers one CNAME, not one per address type.
        names.push((format!("{id}.node"), &[RecordType::ANY]));
    }
    for election in snap.leaders.keys() {
        names.push((format!("leader.{election}.election"), &[RecordType::ANY]));
    }
    for name in snap.statics.keys() {
        names.push((name.clone(), &[RecordType::ANY]));
    }
    let soa = zone.soa(snap.revision);
    let (mut out, mut problems) = (vec![soa.clone()], Vec::new());
    for (relative, types) in names {
        let Ok(qname) = zone.name(&relative) else {
            problems.push(format!("{relative}: not a domain name"));
            continue;
        };
        let Some(labels) = names::labels_of(&qname) else { continue };
        for t in types {
            let a = answer(snap, zone, &labels, &qname, *t, Pick::ALL);
            if a.code == ResponseCode::ServFail {
                let why = match names::parse(&labels, &zone.labels) {
                    Some(Question::Static { name }) => snap
                        .statics
                        .get(&name)
                        .map(|v| records::parse(&qname, v, zone.ttl).err().unwrap_or_default())
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                problems.push(format!("{qname}: answered SERVFAIL {why}"));
            }
            out.extend(a.answers);
        }
    }
    out.push(soa);
    (out, problems)
}

/// The instances of `service`, and where the passing ones with `tag` (any, if none) are among
/// them, in id order.
fn passing(
    src: &dyn Source,
    service: &str,
    tag: Option<&str>,
) -> Result<(Arc<Vec<InstanceRow>>, Vec<usize>), String> {
    let rows = src.instances(service)?;
    let at = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| registry::is_passing(r) && tag.is_none_or(|t| crate::api::registry::has_tag(r, t)))
        .map(|(at, _)| at)
        .collect();
    Ok((rows, at))
}

/// `pick`'s share of `items`: rotated by `pick.rotate`, so that successive answers spread the
/// load, and at most `pick.limit` (at least one).
fn picked<T>(mut items: Vec<T>, pick: Pick) -> Vec<T> {
    if !items.is_empty() {
        let n = items.len();
        items.rotate_left(pick.rotate % n);
        items.truncate(pick.limit.max(1));
    }
    items
}

fn ip_of(row: &InstanceRow) -> Option<IpAddr> {
    row.instance.as_ref()?.address.parse().ok()
}

fn fqdn(host: &str) -> Result<Name, String> {
    let mut n = Name::from_ascii(host).map_err(|e| format!("address {host:?} is not a host name: {e}"))?;
    n.set_fqdn(true);
    Ok(n)
}

/// SRV records of `instances` (RFC 2782: priority 1, the instance's weight, 1 if none), each
/// targeting `<id>.<service>.instance.<domain>` (whose address goes in the additional section)
/// or its host name.
fn srv(zone: &Zone, qname: &Name, instances: &[&InstanceRow]) -> (Vec<Record>, Vec<Record>) {
    let (mut answers, mut additionals) = (Vec::new(), Vec::new());
    for row in instances {
        let Some(i) = row.instance.as_ref() else { continue };
        let target = match ip_of(row) {
            Some(ip) => {
                let Ok(target) = zone.name(&format!("{}.{}.instance", i.id, i.service)) else { continue };
                let rdata = match ip {
                    IpAddr::V4(v4) => RData::A(A(v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                };
                additionals.push(Record::from_rdata(target.clone(), zone.ttl, rdata));
                target
            }
            None => match fqdn(&i.address) {
                Ok(t) => t,
                Err(_) => continue,
            },
        };
        let weight = if i.weight == 0 { 1 } else { i.weight.min(u32::from(u16::MAX)) as u16 };
        let port = i.port.min(u32::from(u16::MAX)) as u16;
        let rdata = RData::SRV(SRV::new(1, weight, port, target));
        answers.push(Record::from_rdata(qname.clone(), zone.ttl, rdata));
    }
    (answers, additionals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use latch_proto::internal::{check, Health, Instance};

    /// The state as the tests set it.
    #[derive(Default)]
    struct State {
        instances: Vec<InstanceRow>,
        leaders: BTreeMap<String, Vec<u8>>,
        statics: BTreeMap<String, Vec<u8>>,
    }

    impl Source for State {
        fn revision(&self) -> i64 {
            42
        }
        fn instances(&self, service: &str) -> Result<Arc<Vec<InstanceRow>>, String> {
            Ok(Arc::new(
                self.instances
                    .iter()
                    .filter(|r| r.instance.as_ref().is_some_and(|i| i.service == service))
                    .cloned()
                    .collect(),
            ))
        }
        fn instance(&self, service: &str, id: &str) -> Result<Option<InstanceRow>, String> {
            Ok(self
                .instances(service)?
                .iter()
                .find(|r| r.instance.as_ref().is_some_and(|i| i.id == id))
                .cloned())
        }
        fn leader(&self, election: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.leaders.get(election).cloned())
        }
        fn static_value(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.statics.get(name).cloned())
        }
        fn member(&self, id: u64) -> Option<String> {
            // Member 2 advertises a host name (--advertise-client-addr).
            match id {
                1 => Some("127.0.0.1:7379".into()),
                2 => Some("member-2.example:7379".into()),
                // Member 3 is bound to every interface and advertises nothing.
                3 => Some("0.0.0.0:7379".into()),
                _ => None,
            }
        }
    }

    fn row(id: &str, address: &str, tags: &[&str], healthy: bool) -> InstanceRow {
        InstanceRow {
            instance: Some(Instance {
                service: "web".into(),
                id: id.into(),
                address: address.into(),
                port: 8080,
                tags: tags.iter().map(|t| t.to_string()).collect(),
                ..Default::default()
            }),
            check: Some(latch_proto::internal::Check { kind: check::Kind::Ttl as i32, ..Default::default() }),
            health: if healthy { Health::Passing } else { Health::Critical } as i32,
            critical_since: if healthy { 0 } else { 3 },
            ..Default::default()
        }
    }

    fn ask(state: &State, name: &str, t: RecordType) -> Answer {
        ask_rotated(state, name, t, 0)
    }

    fn ask_rotated(state: &State, name: &str, t: RecordType, rotate: usize) -> Answer {
        let zone = Zone::new("latch.", 5, 7).expect("a zone");
        let qname = Name::from_ascii(name).expect("a name");
        let labels = names::labels_of(&qname).expect("ASCII");
        answer(state, &zone, &labels, &qname, t, Pick { rotate, limit: usize::MAX })
    }

    fn data(a: &Answer) -> Vec<String> {
        a.answers.iter().map(|r| r.data.to_string()).collect()
    }

    fn web() -> State {
        State {
            instances: vec![
                row("w1", "10.0.0.1", &["v1"], true),
                row("w2", "10.0.0.2", &["v2"], true),
                row("w3", "fd00::3", &["v1"], true),
                row("w4", "10.0.0.4", &["v1"], false),
                row("w5", "host.example.com", &[], true),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_service_answers_its_passing_addresses_of_the_asked_family_rotated_per_query() {
        let s = web();
        let a = ask(&s, "web.service.latch.", RecordType::A);
        assert_eq!(
            (a.code, data(&a)),
            (ResponseCode::NoError, vec!["10.0.0.1".to_string(), "10.0.0.2".into()])
        );
        assert!(a.answers.iter().all(|r| r.ttl == 5), "the configured TTL, never 0");
        let r = ask_rotated(&s, "WEB.Service.latch.", RecordType::A, 1);
        assert_eq!(data(&r), ["10.0.0.2", "10.0.0.1"], "rotated, and case does not matter");
        assert_eq!(data(&ask(&s, "web.service.latch.", RecordType::AAAA)), ["fd00::3"]);
        let tagged = ask(&s, "v1.web.service.latch.", RecordType::A);
        assert_eq!(data(&tagged), ["10.0.0.1"], "the tag filters, and critical w4 is left out");
    }

    #[test]
    fn instances_sharing_an_address_answer_it_once_and_each_keeps_its_srv_record() {
        let mut s = web();
        let mut w6 = row("w6", "10.0.0.1", &[], true);
        if let Some(i) = w6.instance.as_mut() {
            i.port = 8081;
        }
        s.instances.push(w6);
        let a = ask(&s, "web.service.latch.", RecordType::A);
        assert_eq!(data(&a), ["10.0.0.1", "10.0.0.2"], "no duplicate record in the set (RFC 2181 §5)");
        for rotate in 0..4 {
            let r = ask_rotated(&s, "web.service.latch.", RecordType::A, rotate);
            assert_eq!(r.answers.len(), 2, "rotated over the distinct addresses: {:?}", data(&r));
        }
        let srv = ask(&s, "_web._tcp.service.latch.", RecordType::SRV);
        assert_eq!(srv.answers.len(), 5, "one SRV per passing instance: w1, w2, w3, w5 (by host name), w6");
    }

    #[test]
    fn srv_names_answer_rfc_2782_records_with_the_targets_in_the_additional_section() {
        let s = web();
        let a = ask(&s, "_web._tcp.service.latch.", RecordType::SRV);
        assert_eq!(a.code, ResponseCode::NoError);
        assert_eq!(a.answers.len(), 4, "four passing instances: {:?}", data(&a));
        assert!(data(&a).contains(&"1 1 8080 w1.web.instance.latch.".to_string()), "{:?}", data(&a));
        assert!(
            data(&a).contains(&"1 1 8080 host.example.com.".to_string()),
            "a host name is its own target"
        );
        let extra: Vec<String> = a.additionals.iter().map(|r| format!("{} {}", r.name, r.data)).collect();
        assert!(extra.contains(&"w1.web.instance.latch. 10.0.0.1".to_string()), "{extra:?}");
        let target = ask(&s, "w1.web.instance.latch.", RecordType::A);
        assert_eq!(data(&target), ["10.0.0.1"], "the target resolves");
        let tagged = ask(&s, "_web._v2.service.latch.", RecordType::SRV);
        assert_eq!(tagged.answers.len(), 1);
    }

    #[test]
    fn missing_names_are_nxdomain_and_missing_types_nodata_both_with_the_soa() {
        let s = web();
        for name in [
            "db.service.latch.",
            "w4.web.instance.latch.",
            "9.node.latch.",
            "nope.latch.",
            "x.y.service.latch.",
        ] {
            let a = ask(&s, name, RecordType::A);
            assert_eq!(a.code, ResponseCode::NXDomain, "{name}");
            assert_eq!(a.soa.len(), 1, "{name}: an SOA for the negative TTL");
            assert_eq!(a.soa[0].ttl, 7);
        }
        for (name, t) in [
            ("web.service.latch.", RecordType::MX),
            ("service.latch.", RecordType::A),
            ("web.instance.latch.", RecordType::A),
        ] {
            let nodata = ask(&s, name, t);
            assert_eq!(
                (nodata.code, nodata.answers.len(), nodata.soa.len()),
                (ResponseCode::NoError, 0, 1),
                "{name}: NODATA"
            );
        }
        assert_eq!(ask(&s, "example.com.", RecordType::A).code, ResponseCode::Refused);
    }

    #[test]
    fn a_transfer_holds_every_answered_name_between_two_soas_and_names_bad_static_records() {
        let web = web();
        let mut snap = Snapshot { revision: 42, ..Default::default() };
        snap.instances.insert("web".into(), Arc::new(web.instances));
        snap.leaders.insert("jobs".into(), b"10.1.1.1".to_vec());
        snap.statics.insert("www".into(), br#"{"type":"A","address":"10.7.7.7"}"#.to_vec());
        snap.statics.insert("bad".into(), b"{".to_vec());
        snap.members.insert(1, "127.0.0.1:7379".into());
        let zone = Zone::new("latch.", 5, 7).expect("a zone");
        let (records, problems) = transfer(&snap, &zone);
        assert_eq!(records.first().map(|r| r.record_type()), Some(RecordType::SOA));
        assert_eq!(records.last().map(|r| r.record_type()), Some(RecordType::SOA));
        let has = |name: &str, t: RecordType| {
            records.iter().any(|r| r.name.to_ascii() == name && r.record_type() == t)
        };
        for (name, t) in [
            ("web.service.latch.", RecordType::A),
            ("web.service.latch.", RecordType::AAAA),
            ("v1.web.service.latch.", RecordType::A),
            ("_web._tcp.service.latch.", RecordType::SRV),
            ("w1.web.instance.latch.", RecordType::A),
            ("w5.web.instance.latch.", RecordType::CNAME),
            ("1.node.latch.", RecordType::A),
            ("leader.jobs.election.latch.", RecordType::A),
            ("www.latch.", RecordType::A),
        ] {
            assert!(has(name, t), "the transfer holds {name} {t}");
        }
        assert!(!has("w4.web.instance.latch.", RecordType::A), "no critical instance");
        assert_eq!(problems.len(), 1, "the bad static record is named: {problems:?}");
        assert!(problems[0].contains("bad.latch."), "{problems:?}");
    }

    #[test]
    fn members_leaders_and_static_records_answer_and_a_bad_static_record_is_servfail() {
        let mut s = web();
        s.leaders.insert("jobs".into(), b"10.1.1.1:9000".to_vec());
        s.leaders.insert("cron".into(), b"worker-7".to_vec());
        s.statics.insert("www".into(), br#"{"type":"CNAME","target":"web.service.latch."}"#.to_vec());
        s.statics.insert("bad".into(), b"{".to_vec());
        assert_eq!(data(&ask(&s, "1.node.latch.", RecordType::A)), ["127.0.0.1"]);
        assert_eq!(
            data(&ask(&s, "2.node.latch.", RecordType::A)),
            ["member-2.example."],
            "a member advertising a host name (--advertise-client-addr) is a CNAME to it"
        );
        assert_eq!(
            ask(&s, "3.node.latch.", RecordType::A).code,
            ResponseCode::NXDomain,
            "a wildcard address is no address to give"
        );
        assert_eq!(data(&ask(&s, "leader.jobs.election.latch.", RecordType::A)), ["10.1.1.1"]);
        let txt = ask(&s, "leader.cron.election.latch.", RecordType::TXT);
        assert_eq!(txt.answers.len(), 1);
        assert!(data(&txt)[0].contains("worker-7"), "{:?}", data(&txt));
        assert_eq!(ask(&s, "leader.none.election.latch.", RecordType::A).code, ResponseCode::NXDomain);
        let www = ask(&s, "www.latch.", RecordType::A);
        assert_eq!(data(&www), ["web.service.latch."], "a CNAME answers any type");
        assert_eq!(ask(&s, "bad.latch.", RecordType::A).code, ResponseCode::ServFail);
        let soa = ask(&s, "latch.", RecordType::SOA);
        assert_eq!(soa.answers.len(), 1);
    }
}
