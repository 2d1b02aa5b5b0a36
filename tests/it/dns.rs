//! The DNS port through resolvers nobody here wrote (DESIGN.md §4, §7 layer 4): Debian's `dig`
//! and hickory-resolver, against real members. Instances are registered through the Registry
//! service; every answer is read back as the resolver saw it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::Resolver;
use latch_client::SessionOptions;
use latch_proto::v1::registry_client::RegistryClient;
use latch_proto::v1::{health_check, HealthCheck, RegisterRequest, ServiceInstance};
use tonic::transport::Channel;

use crate::harness::{eventually, Cluster};

/// What dig printed for one query.
#[derive(Debug, Default)]
struct Dig {
    status: String,
    flags: Vec<String>,
    /// (section, name, ttl, type, data), sections "ANSWER", "AUTHORITY", "ADDITIONAL".
    records: Vec<(String, String, u32, String, String)>,
}

impl Dig {
    fn section(&self, section: &str) -> Vec<(String, String)> {
        self.records.iter().filter(|r| r.0 == section).map(|r| (r.3.clone(), r.4.clone())).collect()
    }

    fn answers(&self, rtype: &str) -> Vec<String> {
        let mut out: Vec<String> =
            self.section("ANSWER").into_iter().filter(|(t, _)| t == rtype).map(|(_, d)| d).collect();
        out.sort();
        out
    }
}

/// Runs `dig @addr -p port name type [extra]` and parses its sections.
fn dig(addr: &str, name: &str, rtype: &str, extra: &[&str]) -> Result<Dig, String> {
    let sa: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let out = Command::new("dig")
        .arg(format!("@{}", sa.ip()))
        .args(["-p", &sa.port().to_string(), name, rtype, "+time=2", "+tries=1", "+nocookie"])
        .args(extra)
        .output()
        .map_err(|e| format!("running dig (Debian's dnsutils; .ci/run installs it): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut d = Dig::default();
    let mut section = String::new();
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or("").to_string();
        }
        if let Some(rest) = line.strip_prefix(";; flags: ") {
            d.flags = rest.split(';').next().unwrap_or("").split_whitespace().map(str::to_string).collect();
        }
        if let Some(s) = line.strip_prefix(";; ").and_then(|l| l.strip_suffix(" SECTION:")) {
            section = s.to_string();
            continue;
        }
        if line.starts_with(';') || line.trim().is_empty() || section.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 5 && f[2] == "IN" {
            let ttl = f[1].parse().unwrap_or(0);
            d.records.push((section.clone(), f[0].to_string(), ttl, f[3].to_string(), f[4..].join(" ")));
        }
    }
    if d.status.is_empty() {
        return Err(format!("dig printed no status: {text} {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(d)
}

async fn registry(addr: &str) -> RegistryClient<Channel> {
    RegistryClient::connect(format!("http://{addr}")).await.expect("connects to the member")
}

fn instance(id: &str, address: &str, tags: &[&str]) -> ServiceInstance {
    ServiceInstance {
        service: "web".into(),
        id: id.into(),
        address: address.into(),
        port: 8080,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

async fn register(r: &mut RegistryClient<Channel>, i: ServiceInstance, check: Option<HealthCheck>) {
    r.register(RegisterRequest {
        instance: Some(i),
        session: String::new(),
        check,
        request_id: String::new(),
    })
    .await
    .expect("registers");
}

/// Waits until `addr` answers `name` A with NOERROR and exactly `want` (sorted).
async fn until_a(addr: &str, name: &str, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    eventually(&format!("{name} A = {want:?} from {addr}"), Duration::from_secs(15), || {
        let got = dig(addr, name, "A", &[]);
        let want = want.clone();
        async move {
            let got = got?;
            if got.status == "NOERROR" && got.answers("A") == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_name_of_design_4_answers_dig_from_a_follower() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let follower = c.ids().into_iter().find(|id| *id != leader).expect("a follower");
    let dns = c.member(follower).dns_addr.clone();
    let client = c.client().await;
    let mut r = registry(&c.member(leader).client_addr).await;
    register(&mut r, instance("w1", "10.0.0.1", &["v1"]), None).await;
    register(&mut r, instance("w2", "10.0.0.2", &["v2"]), None).await;
    // Probed on a port nobody listens on: critical, never answered.
    let dead = HealthCheck {
        kind: health_check::Kind::Tcp as i32,
        tcp_address: "127.0.0.1:1".into(),
        interval_ms: 200,
        timeout_ms: 100,
        ..Default::default()
    };
    register(&mut r, instance("w3", "10.0.0.3", &["v1"]), Some(dead)).await;
    client
        .put("/dns/www", r#"[{"type":"A","address":"10.7.7.7","ttl":60},{"type":"TXT","text":"hello"}]"#)
        .await
        .expect("put");
    let session = client.session(SessionOptions::new(Duration::from_secs(10))).await.expect("a session");
    client.election("jobs").campaign(session.id(), "10.9.9.9").await.expect("leads");

    until_a(&dns, "web.service.latch.", &["10.0.0.1", "10.0.0.2"]).await;
    let a = dig(&dns, "web.service.latch.", "A", &[]).expect("dig");
    assert!(a.flags.contains(&"aa".to_string()), "authoritative: {a:?}");
    assert!(a.records.iter().all(|r| r.2 == 5), "TTL 5 s by default, never 0: {a:?}");
    assert_eq!(
        dig(&dns, "v1.web.service.latch.", "A", &[]).expect("dig").answers("A"),
        ["10.0.0.1"],
        "tag filter"
    );

    let srv = dig(&dns, "_web._tcp.service.latch.", "SRV", &[]).expect("dig");
    assert_eq!(
        srv.answers("SRV"),
        ["1 1 8080 w1.web.instance.latch.", "1 1 8080 w2.web.instance.latch."],
        "RFC 2782 SRV of the passing instances: {srv:?}"
    );
    let mut extra = srv.section("ADDITIONAL");
    extra.sort();
    assert_eq!(
        extra,
        [("A".to_string(), "10.0.0.1".to_string()), ("A".into(), "10.0.0.2".into())],
        "{srv:?}"
    );

    let node = dig(&dns, &format!("{leader}.node.latch."), "A", &[]).expect("dig");
    assert_eq!(node.answers("A"), ["127.0.0.1"], "a member by id: {node:?}");
    until_a(&dns, "leader.jobs.election.latch.", &["10.9.9.9"]).await;
    assert_eq!(dig(&dns, "www.latch.", "A", &[]).expect("dig").answers("A"), ["10.7.7.7"]);
    assert_eq!(dig(&dns, "www.latch.", "TXT", &[]).expect("dig").answers("TXT"), ["\"hello\""]);

    let nx = dig(&dns, "nope.service.latch.", "A", &[]).expect("dig");
    assert_eq!(nx.status, "NXDOMAIN");
    let soa: Vec<_> = nx.records.iter().filter(|r| r.0 == "AUTHORITY" && r.3 == "SOA").collect();
    assert_eq!(soa.len(), 1, "NXDOMAIN carries the SOA: {nx:?}");
    assert_eq!(soa[0].2, 5, "with the negative TTL");
    assert_eq!(dig(&dns, "example.com.", "A", &[]).expect("dig").status, "REFUSED", "outside the domain");
    let tcp = dig(&dns, "web.service.latch.", "A", &["+tcp"]).expect("dig over TCP");
    assert_eq!(tcp.answers("A"), ["10.0.0.1", "10.0.0.2"], "over TCP too");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_domain_and_both_ttls_are_what_the_member_was_started_with() {
    let c =
        Cluster::start(1, &["--dns-domain", "corp.example.", "--dns-ttl", "30s", "--dns-negative-ttl", "7s"])
            .await;
    let m = c.member(1);
    let mut r = registry(&m.client_addr).await;
    register(&mut r, instance("w1", "10.0.0.1", &[]), None).await;
    until_a(&m.dns_addr, "web.service.corp.example.", &["10.0.0.1"]).await;
    let a = dig(&m.dns_addr, "web.service.corp.example.", "A", &[]).expect("dig");
    assert!(a.records.iter().all(|rec| rec.2 == 30), "answers carry --dns-ttl 30s: {a:?}");
    let nx = dig(&m.dns_addr, "nope.service.corp.example.", "A", &[]).expect("dig");
    assert_eq!(nx.status, "NXDOMAIN");
    let soa: Vec<_> = nx.records.iter().filter(|rec| rec.0 == "AUTHORITY" && rec.3 == "SOA").collect();
    assert_eq!(soa.len(), 1, "NXDOMAIN carries the SOA: {nx:?}");
    assert_eq!(soa[0].2, 7, "with --dns-negative-ttl 7s: {nx:?}");
    let outside = dig(&m.dns_addr, "web.service.latch.", "A", &[]).expect("dig");
    assert_eq!(outside.status, "REFUSED", "the default domain is outside this member's: {outside:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let c = Cluster::start(1, &[]).await;
    let m = c.member(1);
    let mut r = registry(&m.client_addr).await;
    for n in 0..100u32 {
        let ip = Ipv4Addr::from(0x0a01_0000 + n);
        register(&mut r, instance(&format!("i{n}"), &ip.to_string(), &[]), None).await;
    }
    until_a(&m.dns_addr, "i0.web.instance.latch.", &["10.1.0.0"]).await;
    let udp = dig(&m.dns_addr, "web.service.latch.", "A", &["+noedns", "+ignore"]).expect("dig");
    assert!(udp.flags.contains(&"tc".to_string()), "100 A records do not fit 512 bytes: TC set: {udp:?}");
    assert!(udp.answers("A").len() < 100);
    let tcp = dig(&m.dns_addr, "web.service.latch.", "A", &["+tcp"]).expect("dig");
    assert_eq!(tcp.answers("A").len(), 100, "over TCP the whole answer: {:?}", tcp.status);
    // dig's default: retry over TCP on TC.
    assert_eq!(
        dig(&m.dns_addr, "web.service.latch.", "A", &["+noedns"]).expect("dig").answers("A").len(),
        100
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_cut_off_from_the_leader_answers_servfail_after_max_stale_and_recovers() {
    let c = Cluster::start(3, &["--fault-injection", "--dns-max-stale", "1s"]).await;
    let leader = c.leader().await;
    let follower = c.ids().into_iter().find(|id| *id != leader).expect("a follower");
    let dns = c.member(follower).dns_addr.clone();
    let mut r = registry(&c.member(leader).client_addr).await;
    register(&mut r, instance("w1", "10.0.0.1", &[]), None).await;
    until_a(&dns, "web.service.latch.", &["10.0.0.1"]).await;
    c.isolate(follower).await;
    eventually("SERVFAIL from the isolated member", Duration::from_secs(15), || {
        let got = dig(&dns, "web.service.latch.", "A", &[]);
        async move {
            match got? {
                d if d.status == "SERVFAIL" => Ok(()),
                d => Err(format!("{d:?}")),
            }
        }
    })
    .await;
    c.heal_all().await;
    until_a(&dns, "web.service.latch.", &["10.0.0.1"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_query_gets_formerr_and_the_member_keeps_answering() {
    let c = Cluster::start(1, &[]).await;
    let dns: SocketAddr = c.member(1).dns_addr.parse().expect("an address");
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("binds");
    // A header claiming one question, and no question.
    let header = [0x12u8, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    sock.send_to(&header, dns).await.expect("sends");
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("an answer to a malformed query")
        .expect("receives");
    assert!(n >= 12, "a whole header");
    assert_eq!(&buf[..2], &header[..2], "the query's id");
    assert_eq!(buf[3] & 0x0f, 1, "RCODE FORMERR");
    // Garbage shorter than a header, and random bytes: no crash.
    sock.send_to(&[1, 2, 3], dns).await.expect("sends");
    sock.send_to(&[0xff; 300], dns).await.expect("sends");
    let mut r = registry(&c.member(1).client_addr).await;
    register(&mut r, instance("w1", "10.0.0.1", &[]), None).await;
    until_a(&c.member(1).dns_addr, "web.service.latch.", &["10.0.0.1"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hickory_resolver_resolves_a_service_and_its_srv_records() {
    let c = Cluster::start(1, &[]).await;
    let m = c.member(1);
    let mut r = registry(&m.client_addr).await;
    register(&mut r, instance("w1", "10.0.0.1", &[]), None).await;
    register(&mut r, instance("w2", "fd00::2", &[]), None).await;
    until_a(&m.dns_addr, "web.service.latch.", &["10.0.0.1"]).await;
    let dns: SocketAddr = m.dns_addr.parse().expect("an address");
    let mut server = NameServerConfig::udp_and_tcp(dns.ip());
    for c in &mut server.connections {
        c.port = dns.port();
    }
    let config = ResolverConfig::from_name_servers(vec![server]);
    let resolver =
        Resolver::builder_with_config(config, TokioRuntimeProvider::default()).build().expect("a resolver");
    let ips: Vec<IpAddr> = resolver.lookup_ip("web.service.latch.").await.expect("resolves").iter().collect();
    assert!(
        ips.contains(&"10.0.0.1".parse().expect("ip")) && ips.contains(&"fd00::2".parse().expect("ip")),
        "{ips:?}"
    );
    let srv = resolver.srv_lookup("_web._tcp.service.latch.").await.expect("SRV resolves");
    let mut targets: Vec<String> = srv
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s.target.to_string()),
            _ => None,
        })
        .collect();
    targets.sort();
    assert_eq!(targets, ["w1.web.instance.latch.", "w2.web.instance.latch."]);
}
