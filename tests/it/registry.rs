//! The service registry on real processes (registry.proto; `api::registry`, `fsm::registry`,
//! `health`, `core::instance_timers`), through the Rust client: registrations listed and
//! watched in revision order, instances going with their session's end in its revision, TTL
//! checks turning critical when heartbeats stop (never before the TTL) and removed after
//! `deregister_after`, HTTP checks following the endpoint both ways, bad input refused by
//! name with nothing written, and a [`Registration`] that registers again under a new session
//! when its session ends.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use latch_client::proto::event::EventType;
use latch_client::proto::health_check::Kind;
use latch_client::proto::registry_client::RegistryClient;
use latch_client::proto::{ListRequest, RegisterRequest, ServiceInstance};
use latch_client::{
    Check, Client, Code, Health, InstanceInfo, InstanceList, ListOptions, RegisterOptions, Registration,
    RegistrationState, ServiceCache, SessionOptions, WatchOptions, WatchTarget, WatchUpdate,
};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::harness::{eventually, Cluster, STARTUP};

/// How long a test waits for something the cluster does by itself (a verdict, a probe, an
/// expiry): generous, for debug builds on a shared machine.
const WAIT: Duration = Duration::from_secs(20);

/// Instance `id` of service "web" on 127.0.0.1.
fn web(id: &str, port: u16) -> RegisterOptions {
    RegisterOptions::new("web", id, "127.0.0.1", port)
}

/// One event of a REGISTRY watch: whether it is a DELETE, its key, its revision, and the
/// instance after it (for a PUT).
#[derive(Debug, Clone)]
struct Seen {
    delete: bool,
    key: String,
    revision: i64,
    info: Option<InstanceInfo>,
}

impl Seen {
    fn health(&self) -> Option<Health> {
        self.info.as_ref().map(|i| Health::try_from(i.health).expect("a known health"))
    }
}

type Updates =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<WatchUpdate, latch_client::Error>> + Send>>;

/// A watch of `options` that has started.
async fn started_watch(client: &Client, options: WatchOptions) -> Updates {
    let mut updates: Updates = Box::pin(client.watch(options));
    let first = tokio::time::timeout(WAIT, updates.next()).await.expect("the watch starts within 20 s");
    assert!(matches!(first, Some(Ok(WatchUpdate::Started { .. }))), "the watch starts: {first:?}");
    updates
}

/// The next revision's events of a typed watch: (revision, events).
async fn next_revision(updates: &mut Updates) -> (i64, Vec<Seen>) {
    loop {
        let update = tokio::time::timeout(WAIT, updates.next())
            .await
            .expect("an event within 20 s")
            .expect("the watch goes on")
            .expect("the watch has no error");
        if let WatchUpdate::Events { revision, events } = update {
            let seen = events
                .iter()
                .map(|e| {
                    let kv = e.kv.clone().unwrap_or_default();
                    let delete = e.r#type == EventType::Delete as i32;
                    let info = (!delete).then(|| {
                        InstanceInfo::decode(kv.value.as_slice())
                            .expect("a REGISTRY event's value is an InstanceInfo")
                    });
                    Seen {
                        delete,
                        key: String::from_utf8_lossy(&kv.key).into_owned(),
                        revision: kv.mod_revision,
                        info,
                    }
                })
                .collect();
            return (revision, seen);
        }
    }
}

/// The next revision's events, which must be exactly one event of `key`.
async fn next_event_of(updates: &mut Updates, key: &str) -> Seen {
    let (revision, events) = next_revision(updates).await;
    assert_eq!(events.len(), 1, "one event at revision {revision}: {events:?}");
    let e = events.into_iter().next().expect("one event");
    assert_eq!((e.key.as_str(), e.revision), (key, revision), "the event's key and revision: {e:?}");
    e
}

fn ids(instances: &[InstanceInfo]) -> Vec<String> {
    instances.iter().map(|i| i.instance.as_ref().map(|i| i.id.clone()).unwrap_or_default()).collect()
}

fn health_of(info: &InstanceInfo) -> Health {
    Health::try_from(info.health).expect("a known health")
}

/// Instance `web/id` as a linearizable List sees it, CRITICAL included.
async fn find(client: &Client, id: &str) -> Option<InstanceInfo> {
    let list = client.list(ListOptions::service("web").include_critical()).await.expect("List succeeds");
    list.instances.into_iter().find(|i| i.instance.as_ref().is_some_and(|i| i.id == id))
}

/// A member at its watch limit refuses a cache's watch RESOURCE_EXHAUSTED; the cache waits and
/// watches again once a place frees, rather than stopping for good.
#[tokio::test]
async fn a_service_cache_refused_a_watch_for_a_members_limit_watches_again_once_it_frees() {
    let c = Cluster::start(1, &["--max-watches", "1"]).await;
    c.leader().await;
    let client = c.client().await;
    let taken = started_watch(&client, WatchOptions::prefix("other/")).await;
    let mut cache = ServiceCache::start(&client, "web").await.expect("the cache lists the service");
    client.register(web("web-1", 8001)).await.expect("web-1 registers");
    drop(taken); // the member's one place frees
    let seen = tokio::time::timeout(STARTUP, cache.wait_for(|s| s.instances.contains_key("web-1")))
        .await
        .expect("the cache sees web-1 once it could watch again")
        .expect("the cache goes on after a refused watch");
    assert!(seen.instances.contains_key("web-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_listed_and_the_registry_watch_sees_registration_health_change_and_removal_in_order() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let mut watch = started_watch(&client, WatchOptions::prefix("web/").target(WatchTarget::Registry)).await;
    let mut cache = ServiceCache::start(&client, "web").await.expect("a cache of an empty service starts");
    assert!(cache.instances().is_empty());

    let one = client
        .register(web("web-1", 8001).tag("v1").meta("zone", "a").weight(5))
        .await
        .expect("web-1 registers");
    assert_eq!(health_of(&one), Health::Passing, "a session-checked instance is passing");
    assert_eq!(one.mod_revision, one.registered_revision);
    client.register(RegisterOptions::new("api", "api-1", "127.0.0.1", 9000)).await.expect("api-1 registers");

    let list = client.list(ListOptions::service("web")).await.expect("List");
    assert_eq!(ids(&list.instances), ["web-1"]);
    assert!(list.revision > one.registered_revision, "read after api-1's registration: {}", list.revision);
    let i = list.instances[0].instance.clone().expect("an instance");
    assert_eq!((i.address.as_str(), i.port, i.weight), ("127.0.0.1", 8001, 5));
    assert_eq!((i.tags, i.meta.get("zone").map(String::as_str)), (vec!["v1".to_string()], Some("a")));
    let check = list.instances[0].check.clone().expect("a check");
    assert_eq!((check.kind, list.instances[0].session.as_str()), (Kind::Session as i32, ""));
    let all = client.list(ListOptions::all()).await.expect("List of every service");
    assert_eq!(ids(&all.instances), ["api-1", "web-1"], "in (service, id) order");
    let tagged = client.list(ListOptions::all().tag("V1")).await.expect("List by tag");
    assert_eq!(ids(&tagged.instances), ["web-1"], "tags match without regard to case");
    let services = client.services().await.expect("Services");
    let summary: Vec<_> = services.iter().map(|s| (s.name.as_str(), s.instances, s.passing)).collect();
    assert_eq!(summary, [("api", 1, 1), ("web", 1, 1)]);
    assert_eq!(services[1].tags, ["v1"]);
    assert_eq!(client.resolve("web").await.expect("resolve"), [("127.0.0.1".to_string(), 8001)]);

    // web-2 is never heartbeated: it turns critical once its TTL has passed.
    let ttl = Duration::from_secs(1);
    let two = client
        .register(web("web-2", 8002).check(Check::ttl(ttl).deregister_after(Duration::from_secs(60))))
        .await
        .expect("web-2 registers");
    assert_eq!(health_of(&two), Health::Passing, "a TTL check starts passing");

    let registered_one = next_event_of(&mut watch, "web/web-1").await;
    assert_eq!(registered_one.revision, one.registered_revision);
    assert_eq!(registered_one.info.as_ref(), Some(&one), "the event carries the instance as registered");
    let registered_two = next_event_of(&mut watch, "web/web-2").await;
    assert_eq!(
        (registered_two.revision, registered_two.health()),
        (two.registered_revision, Some(Health::Passing)),
        "api-1's registration in between is not in a watch of web/"
    );
    let critical = next_event_of(&mut watch, "web/web-2").await;
    let info = critical.info.clone().expect("a PUT");
    assert_eq!(health_of(&info), Health::Critical, "no heartbeat within the TTL: {info:?}");
    assert_eq!((info.critical_since_revision, info.mod_revision), (critical.revision, critical.revision));
    assert_eq!(info.registered_revision, two.registered_revision, "a health change is no registration");
    assert!(info.output.contains("no heartbeat"), "the output says why: {:?}", info.output);

    let healthy = client.list(ListOptions::service("web")).await.expect("List");
    assert_eq!(ids(&healthy.instances), ["web-1"], "a critical instance is not listed by default");
    assert_eq!(
        find(&client, "web-2").await.map(|i| health_of(&i)),
        Some(Health::Critical),
        "include_critical lists it"
    );
    assert_eq!(client.resolve("web").await.expect("resolve"), [("127.0.0.1".to_string(), 8001)]);
    let web_summary = client.services().await.expect("Services").into_iter().find(|s| s.name == "web");
    assert_eq!(web_summary.map(|s| (s.instances, s.passing)), Some((2, 1)));
    let snapshot = tokio::time::timeout(WAIT, cache.wait_for(|s| s.revision >= critical.revision))
        .await
        .expect("the cache catches up within 20 s")
        .expect("the cache goes on");
    assert_eq!(snapshot.revision, critical.revision);
    assert_eq!(ids(&cache.instances()), ["web-1"], "the cache's healthy instances");
    assert_eq!(snapshot.instances.get("web-2").map(health_of), Some(Health::Critical));

    // A heartbeat brings it back; deregistering right after removes it (well within its TTL).
    let health = client.heartbeat("web", "web-2").await.expect("heartbeat");
    let gone_two = client.deregister("web", "web-2").await.expect("deregister web-2");
    assert_eq!(health, Health::Passing);
    let recovered = next_event_of(&mut watch, "web/web-2").await;
    let info = recovered.info.clone().expect("a PUT");
    assert_eq!((health_of(&info), info.critical_since_revision), (Health::Passing, 0), "{info:?}");
    let removed = next_event_of(&mut watch, "web/web-2").await;
    assert!(removed.delete && removed.info.is_none(), "a deregistration is a DELETE: {removed:?}");
    assert_eq!(removed.revision, gone_two);
    let gone_one = client.deregister("web", "web-1").await.expect("deregister web-1");
    let removed_one = next_event_of(&mut watch, "web/web-1").await;
    assert!(removed_one.delete);
    assert_eq!(removed_one.revision, gone_one);
    let order = [
        registered_one.revision,
        registered_two.revision,
        critical.revision,
        recovered.revision,
        removed.revision,
        removed_one.revision,
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "the events' revisions increase: {order:?}");

    let snapshot = tokio::time::timeout(WAIT, cache.wait_for(|s| s.revision >= gone_one))
        .await
        .expect("the cache catches up within 20 s")
        .expect("the cache goes on");
    assert!(snapshot.instances.is_empty(), "the cache applied both DELETEs: {snapshot:?}");
    assert!(client
        .list(ListOptions::service("web").include_critical())
        .await
        .expect("List")
        .instances
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_expiry_removes_its_instances_in_the_revision_that_ends_it() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    // Created and never kept alive: it expires by itself, after the registrations below.
    let (session, _) = client.create_session(Duration::from_secs(3), "registrant").await.expect("a session");
    let mut sessions =
        started_watch(&client, WatchOptions::key(session.as_bytes()).target(WatchTarget::Sessions)).await;
    let mut registry = started_watch(&client, WatchOptions::prefix("").target(WatchTarget::Registry)).await;
    let bound = [
        web("web-1", 8001).session(&session),
        web("web-2", 8002).session(&session).check(Check::ttl(Duration::from_secs(30))),
        RegisterOptions::new("api", "api-1", "127.0.0.1", 9000).session(&session),
    ];
    for options in bound {
        let info = client.register(options).await.expect("registers bound to the session");
        assert_eq!(info.session, session);
    }
    client.register(web("web-3", 8003)).await.expect("web-3 registers without a session");
    for _ in 0..4 {
        let (_, events) = next_revision(&mut registry).await;
        assert!(events.iter().all(|e| !e.delete), "registrations: {events:?}");
    }

    let (ended_at, ended) = next_revision(&mut sessions).await;
    assert!(ended.len() == 1 && ended[0].delete, "the session's end is one DELETE: {ended:?}");
    let (revision, removed) = next_revision(&mut registry).await;
    assert_eq!(revision, ended_at, "its instances went in the revision that ended the session");
    let mut keys: Vec<&str> = removed.iter().map(|e| e.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["api/api-1", "web/web-1", "web/web-2"], "every bound instance, and only those");
    assert!(removed.iter().all(|e| e.delete && e.revision == ended_at), "DELETEs at {ended_at}: {removed:?}");
    let left = client.list(ListOptions::all().include_critical()).await.expect("List");
    assert_eq!(ids(&left.instances), ["web-3"]);
    let err = client.session_info(&session).await.expect_err("the session is gone");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_check_turns_critical_when_heartbeats_stop_and_is_removed_after_deregister_after() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let (ttl, deregister_after) = (Duration::from_secs(1), Duration::from_secs(2));
    let check = Check::ttl(ttl).deregister_after(deregister_after);
    client.register(web("web-1", 8001).check(check)).await.expect("registers");
    let mut watch =
        started_watch(&client, WatchOptions::key("web/web-1").target(WatchTarget::Registry)).await;

    // Heartbeats every quarter TTL for three TTLs: it stays passing. An instance can only be
    // critical in a List read less than a TTL after a heartbeat was sent if it was marked
    // early, so only such reads are asserted on.
    let mut last_sent = Instant::now();
    let until = Instant::now() + 3 * ttl;
    let mut asserted = 0;
    while Instant::now() < until {
        last_sent = Instant::now();
        assert_eq!(client.heartbeat("web", "web-1").await.expect("heartbeat"), Health::Passing);
        let info = find(&client, "web-1").await.expect("registered");
        if last_sent.elapsed() < ttl {
            assert_eq!(health_of(&info), Health::Passing, "heartbeated within its TTL: {info:?}");
            asserted += 1;
        }
        tokio::time::sleep(ttl / 4).await;
    }
    assert!(asserted > 0, "at least one List was read within a TTL of a heartbeat");

    let critical_seen = eventually("web-1 to turn critical", WAIT, || {
        let client = client.clone();
        async move {
            match find(&client, "web-1").await {
                Some(info) if health_of(&info) == Health::Critical => Ok((Instant::now(), info)),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let (seen_at, info) = critical_seen;
    assert!(
        seen_at - last_sent >= ttl,
        "critical {:?} after the last heartbeat was sent, before its TTL of {ttl:?}",
        seen_at - last_sent
    );
    assert!(info.critical_since_revision > 0 && info.output.contains("no heartbeat"), "{info:?}");
    let healthy = client.list(ListOptions::service("web")).await.expect("List");
    assert!(healthy.instances.is_empty(), "a healthy-only List leaves it out: {:?}", healthy.instances);
    assert!(client.resolve("web").await.expect("resolve").is_empty());

    let gone_at = eventually("web-1 to be removed", WAIT, || {
        let client = client.clone();
        async move {
            match find(&client, "web-1").await {
                None => Ok(Instant::now()),
                Some(info) => Err(format!("still there: {info:?}")),
            }
        }
    })
    .await;
    assert!(
        gone_at - last_sent >= ttl + deregister_after,
        "removed {:?} after the last heartbeat; no sooner than TTL + deregister_after = {:?}",
        gone_at - last_sent,
        ttl + deregister_after
    );
    // The watch saw the same: passing (heartbeats write no revision), critical, then removed.
    let critical = next_event_of(&mut watch, "web/web-1").await;
    assert_eq!(critical.health(), Some(Health::Critical), "{critical:?}");
    assert_eq!(critical.revision, info.critical_since_revision);
    let removed = next_event_of(&mut watch, "web/web-1").await;
    assert!(removed.delete, "removed after deregister_after: {removed:?}");
}

/// A local HTTP endpoint answering every request 200 while `healthy`, else 503; counts them.
struct Endpoint {
    url: String,
    healthy: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

async fn endpoint() -> Endpoint {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds port 0");
    let addr = listener.local_addr().expect("a bound address");
    let (healthy, requests) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicUsize::new(0)));
    let (h, n) = (healthy.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (h, n) = (h.clone(), n.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut read = 0;
                // The whole request head, then one answer.
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") && read < buf.len() {
                    match s.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => read += k,
                    }
                }
                assert!(buf.starts_with(b"GET /health "), "the probe GETs the URL's path");
                n.fetch_add(1, Ordering::SeqCst);
                let status = if h.load(Ordering::SeqCst) { "200 OK" } else { "503 Service Unavailable" };
                let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    Endpoint { url: format!("http://{addr}/health"), healthy, requests }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_check_follows_the_endpoint_both_ways_in_list_watch_and_cache() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let server = endpoint().await;
    let mut watch =
        started_watch(&client, WatchOptions::key("web/web-1").target(WatchTarget::Registry)).await;
    let mut cache = ServiceCache::start(&client, "web").await.expect("the cache starts");
    let check = Check::http(&server.url).interval(Duration::from_millis(200));
    let info = client.register(web("web-1", 8001).check(check)).await.expect("registers");
    assert_eq!(health_of(&info), Health::Critical, "an HTTP check starts critical");
    assert_eq!(info.output, "awaiting its first check");
    let c0 = info.check.clone().expect("the check as stored");
    assert_eq!((c0.interval_ms, c0.timeout_ms), (200, 200), "the timeout defaults to at most the interval");
    assert_eq!(next_event_of(&mut watch, "web/web-1").await.health(), Some(Health::Critical));
    let registered = info.registered_revision;

    let mut healths = vec![Health::Critical];
    for (answer, expected) in [(true, Health::Passing), (false, Health::Critical), (true, Health::Passing)] {
        server.healthy.store(answer, Ordering::SeqCst);
        let event = next_event_of(&mut watch, "web/web-1").await;
        let info = event.info.clone().expect("a PUT");
        healths.push(health_of(&info));
        assert_eq!(health_of(&info), expected, "the endpoint answers {answer}: {info:?}");
        assert_eq!(info.registered_revision, registered, "a probe's result is no registration: {info:?}");
        let said = if answer { "200" } else { "503" };
        assert!(info.output.contains(said), "the output names the status {said}: {:?}", info.output);
        // List, include_critical and the cache agree at that revision.
        let healthy = client.list(ListOptions::service("web")).await.expect("List");
        assert_eq!(
            healthy.instances.len(),
            usize::from(answer),
            "healthy-only List: {:?}",
            healthy.instances
        );
        let listed = find(&client, "web-1").await.expect("include_critical lists it");
        assert_eq!(health_of(&listed), expected);
        let snapshot = tokio::time::timeout(WAIT, cache.wait_for(|s| s.revision >= event.revision))
            .await
            .expect("the cache catches up within 20 s")
            .expect("the cache goes on");
        assert_eq!(snapshot.addresses().len(), usize::from(answer), "the cache's healthy instances");
    }
    assert_eq!(healths, [Health::Critical, Health::Passing, Health::Critical, Health::Passing]);
    assert!(server.requests.load(Ordering::SeqCst) >= 3, "the leader probed the endpoint");
    let gone = client.deregister("web", "web-1").await.expect("deregister");
    let removed = next_event_of(&mut watch, "web/web-1").await;
    assert!(removed.delete && removed.revision == gone, "only a change of status is written: {removed:?}");
}

#[tokio::test]
async fn bad_registry_requests_are_refused_by_name_and_write_nothing() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let before = client.list(ListOptions::all().include_critical()).await.expect("List").revision;

    for (options, field) in [
        (RegisterOptions::new("Web", "1", "127.0.0.1", 80), "instance.service"),
        (web("a/b", 80), "instance.id"),
        (RegisterOptions::new("web", "1", "not an address!", 80), "instance.address"),
        (web("1", 80).tag("a.b"), "instance.tags"),
        (web("1", 80).check(Check::ttl(Duration::from_millis(5))), "check.ttl_ms"),
        (web("1", 80).check(Check::http("https://h:1/")), "check.url"),
        // URLs the prober could not read: an instance would stay critical for a typo.
        (web("1", 80).check(Check::http("http://h:abc/")), "check.url"),
        (web("1", 80).check(Check::http("http://h/a<b>")), "check.url"),
        (web("1", 80).check(Check::http("http://:80/")), "check.url"),
        (web("1", 80).check(Check::http("http://[::1]:0/")), "check.url"),
        (
            web("1", 80)
                .check(Check::tcp("h:1").interval(Duration::from_secs(1)).timeout(Duration::from_secs(2))),
            "check.timeout_ms",
        ),
        // A field its kind does not use (a session check's, here) is refused, not dropped.
        (web("1", 80).check(Check::session().interval(Duration::from_secs(1))), "check.interval_ms"),
        (
            web("1", 80).check(Check::ttl(Duration::from_secs(1)).timeout(Duration::from_secs(1))),
            "check.timeout_ms",
        ),
    ] {
        let err = client.register(options).await.expect_err("a bad registration is refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err}");
        assert!(err.to_string().contains(field), "the refusal names {field}: {err}");
    }
    let mut raw =
        RegistryClient::connect(format!("http://{}", c.member(1).client_addr)).await.expect("connects");
    let missing = RegisterRequest { request_id: uuid::Uuid::now_v7().to_string(), ..Default::default() };
    let err = raw.register(missing).await.expect_err("no instance");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("instance"), "names the instance: {}", err.message());
    let too_high = RegisterRequest {
        instance: Some(ServiceInstance {
            service: "web".into(),
            id: "1".into(),
            address: "127.0.0.1".into(),
            port: 70_000,
            ..Default::default()
        }),
        request_id: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    };
    let err = raw.register(too_high).await.expect_err("a port over 65535");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("instance.port"), "names the port: {}", err.message());
    let ghost = uuid::Uuid::now_v7().to_string();
    let err = client.register(web("1", 80).session(&ghost)).await.expect_err("an unknown session");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.to_string().contains(&ghost), "names the session: {err}");
    let err = client.list(ListOptions::service("Web")).await.expect_err("a bad service name");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.to_string().contains("service"), "{err}");

    let after = client.list(ListOptions::all().include_critical()).await.expect("List");
    assert!(after.instances.is_empty(), "nothing was registered: {:?}", after.instances);
    assert_eq!(after.revision, before, "no refused request raised the revision");

    let registered =
        client.register(web("web-1", 80)).await.expect("a good registration").registered_revision;
    let err = client.heartbeat("web", "web-1").await.expect_err("a session-checked instance has no TTL");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.to_string().contains("not a TTL check"), "says why: {err}");
    let err = client.deregister("web", "nope").await.expect_err("no such instance");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.to_string().contains("web/nope"), "names the instance: {err}");
    let err = client.heartbeat("web", "nope").await.expect_err("no such instance");
    assert_eq!(err.code(), Code::NotFound);
    let after = client.list(ListOptions::all().include_critical()).await.expect("List");
    assert_eq!(after.revision, registered, "the refused heartbeat and deregister wrote nothing");
    assert_eq!(ids(&after.instances), ["web-1"]);
    assert_eq!(after.instances[0].mod_revision, registered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_registers_again_under_a_new_session_when_its_session_ends_and_stop_removes_it() {
    let c = Cluster::start(1, &[]).await;
    c.leader().await;
    let client = c.client().await;
    let registration = Registration::start(
        &client,
        web("web-1", 8001).tag("v1"),
        SessionOptions::new(Duration::from_secs(1)),
    )
    .await
    .expect("registers");
    let first = registration.session_id().expect("registered under a session");
    let listed = find(&client, "web-1").await.expect("registered");
    assert_eq!(listed.session, first);

    // The session ends under it (closed by someone else): the instance goes with it, and the
    // registration makes a new session and registers again.
    client.close_session(&first).await.expect("closes the session");
    let mut states = registration.watch();
    let renewed = tokio::time::timeout(
        STARTUP,
        states.wait_for(|s| matches!(s, RegistrationState::Registered { session, .. } if *session != first)),
    )
    .await
    .expect("registered again within 20 s")
    .expect("the registration goes on")
    .clone();
    let RegistrationState::Registered { session: second, instance } = renewed else {
        unreachable!("waited for Registered")
    };
    assert_eq!(instance.session, second);
    assert_eq!(
        instance.instance.as_ref().map(|i| i.tags.clone()),
        Some(vec!["v1".to_string()]),
        "the same instance"
    );
    let listed = find(&client, "web-1").await.expect("registered again");
    assert_eq!(listed.session, second, "bound to the new session");
    client.session_info(&second).await.expect("the new session lives");
    assert_eq!(registration.session_id(), Some(second.clone()));

    let mut states = registration.watch();
    registration.stop().await.expect("stops");
    assert_eq!(*states.borrow_and_update(), RegistrationState::Stopped);
    assert!(find(&client, "web-1").await.is_none(), "stop deregisters the instance");
    let err = client.session_info(&second).await.expect_err("stop closes the session");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_cache_whose_history_was_compacted_while_it_was_cut_off_lists_again_and_goes_on() {
    let c = Cluster::start(3, &["--fault-injection"]).await;
    let leader = c.leader().await;
    let cut = c.ids().into_iter().find(|id| *id != leader).expect("a follower");
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != cut).collect();
    // The cache reads and watches through the member that will be cut off.
    let reader = c.client_of_many(&[cut, others[0], others[1]]).await;
    let writer = c.client_of_many(&others).await;
    writer.register(web("web-1", 8001)).await.expect("web-1 registers");
    let mut cache = ServiceCache::start(&reader, "web").await.expect("the cache starts");
    assert_eq!(ids(&cache.instances()), ["web-1"]);

    c.isolate(cut).await;
    writer.register(web("web-2", 8002)).await.expect("web-2 registers");
    writer.deregister("web", "web-1").await.expect("web-1 deregisters");
    let last = writer.register(web("web-3", 8003)).await.expect("web-3 registers").registered_revision;
    writer.compact(last).await.expect("compacts the history the cache has not read");

    // Its watch gives up on the cut-off member, finds the revisions it needs compacted
    // elsewhere, and the cache lists the service again.
    let snapshot = tokio::time::timeout(Duration::from_secs(30), cache.wait_for(|s| s.revision >= last))
        .await
        .expect("the cache catches up within 30 s")
        .expect("the cache goes on after the compaction");
    assert_eq!(snapshot.instances.keys().collect::<Vec<_>>(), ["web-2", "web-3"], "{snapshot:?}");
    c.heal_all().await;

    // And it follows the changes after the list.
    let gone = writer.deregister("web", "web-2").await.expect("web-2 deregisters");
    let snapshot = tokio::time::timeout(WAIT, cache.wait_for(|s| s.revision >= gone))
        .await
        .expect("the cache catches up within 20 s")
        .expect("the cache goes on");
    assert_eq!(snapshot.instances.keys().collect::<Vec<_>>(), ["web-3"], "{snapshot:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_watch_from_a_compacted_revision_gets_the_instances_then_the_changes_after() {
    let c = Cluster::start(1, &[]).await;
    let client = c.client().await;
    client.register(web("web-1", 8001)).await.expect("web-1 registers");
    let last = client.register(web("web-2", 8002)).await.expect("web-2 registers").registered_revision;
    client.deregister("web", "web-1").await.expect("web-1 deregisters");
    let now = client.register(web("web-3", 8003)).await.expect("web-3 registers").registered_revision;
    client.compact(now).await.expect("compacts");
    let options = WatchOptions::range("web/", "web0")
        .target(WatchTarget::Registry)
        .from_revision(last)
        .snapshot_on_compacted();
    let mut updates: Updates = Box::pin(client.watch(options));
    let (revision, kvs) = loop {
        let update = tokio::time::timeout(WAIT, updates.next())
            .await
            .expect("an update within 20 s")
            .expect("the watch goes on")
            .expect("a compacted start with SNAPSHOT is no error");
        if let WatchUpdate::Snapshot { revision, kvs } = update {
            break (revision, kvs);
        }
    };
    assert!(revision >= now, "the snapshot is at or after the compact revision {now}: {revision}");
    let ids: Vec<String> = kvs
        .iter()
        .map(|kv| {
            let info =
                InstanceInfo::decode(kv.value.as_slice()).expect("a snapshot kv's value is an InstanceInfo");
            let id = info.instance.expect("an instance").id;
            assert_eq!(String::from_utf8_lossy(&kv.key), format!("web/{id}"), "keyed service/id");
            id
        })
        .collect();
    assert_eq!(ids, ["web-2", "web-3"], "the instances as they were at the snapshot's revision");
    let after = client.register(web("web-4", 8004)).await.expect("web-4 registers").registered_revision;
    let (rev, events) = next_revision(&mut updates).await;
    assert_eq!(rev, after, "then the revision after the snapshot");
    assert_eq!(events.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["web/web-4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_services_answer_pages_cut_at_max_response_bytes_or_the_limit_and_read_on_after_the_last() {
    let c = Cluster::start(1, &["--max-response-bytes", "2048"]).await;
    let client = c.client().await;
    for n in 0..100 {
        let options =
            RegisterOptions::new(format!("svc-{n:03}"), "i", "127.0.0.1", 9000).tag(format!("t{n}"));
        client.register(options).await.expect("registers");
    }
    let list = client.list_page(ListOptions::default()).await.expect("List");
    assert!(list.more, "100 instances do not fit in 2,048 bytes: the answer says more follow");
    let bytes: usize = list.instances.iter().map(|i| i.encoded_len() + 4).sum();
    assert!(bytes <= 2048, "the instances answered fit the bound: {bytes} bytes");
    let want: Vec<String> = (0..list.instances.len()).map(|n| format!("svc-{n:03}")).collect();
    let got: Vec<String> =
        list.instances.iter().filter_map(|i| Some(i.instance.as_ref()?.service.clone())).collect();
    assert_eq!(got, want, "the first instances in key order");

    let mut registry =
        RegistryClient::connect(format!("http://{}", c.member(1).client_addr)).await.expect("connects");
    let answer = registry
        .services(latch_client::proto::ServicesRequest { serializable: true, ..Default::default() })
        .await
        .expect("Services")
        .into_inner();
    assert!(answer.more, "100 summaries do not fit either");
    assert!(
        !answer.services.is_empty() && answer.services.len() < 100,
        "{} summaries",
        answer.services.len()
    );
    for (n, s) in answer.services.iter().enumerate() {
        assert_eq!(
            (s.name.clone(), s.instances, s.passing, s.tags.clone()),
            (format!("svc-{n:03}"), 1, 1, vec![format!("t{n}")]),
            "the first services in name order, each summed up"
        );
    }

    // Read on: a page starts after the last of the one before, and the clients read them all.
    let names = |n: std::ops::Range<usize>| n.map(|n| format!("svc-{n:03}")).collect::<Vec<_>>();
    let services_of = |list: &InstanceList| {
        list.instances.iter().filter_map(|i| Some(i.instance.as_ref()?.service.clone())).collect::<Vec<_>>()
    };
    let ten = client.list_page(ListOptions::all().limit(10)).await.expect("a page of ten");
    assert_eq!((services_of(&ten), ten.more), (names(0..10), true), "the limit cuts the page");
    let next = ten.next_page(ListOptions::all().limit(10)).expect("more follow: a next page");
    let second = client.list_page(next).await.expect("the second page");
    assert_eq!(services_of(&second), names(10..20), "the second page starts after svc-009/i");
    let last = client.list_page(ListOptions::all().start_after("svc-095", "i")).await.expect("the last page");
    assert_eq!((services_of(&last), last.more), (names(96..100), false), "nothing follows svc-099");
    let all = client.list(ListOptions::all()).await.expect("List of every page");
    assert_eq!((services_of(&all), all.more), (names(0..100), false), "every instance, each once, in order");
    let every: Vec<String> = client.services().await.expect("Services").into_iter().map(|s| s.name).collect();
    assert_eq!(every, names(0..100), "every service, each once, in order");
    let page = registry
        .services(latch_client::proto::ServicesRequest {
            start_after: "svc-049".into(),
            limit: 5,
            ..Default::default()
        })
        .await
        .expect("Services after svc-049")
        .into_inner();
    let got: Vec<String> = page.services.into_iter().map(|s| s.name).collect();
    assert_eq!((got, page.more), (names(50..55), true), "five services after svc-049");

    for (request, field) in [
        (ListRequest { start_after: "svc-001".into(), ..Default::default() }, "start_after"),
        (ListRequest { start_after: "svc-001/I".into(), ..Default::default() }, "start_after"),
        (ListRequest { limit: -1, ..Default::default() }, "limit"),
    ] {
        let e = registry.list(request.clone()).await.expect_err("a bad page is refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{request:?}: {e:?}");
        assert!(e.message().starts_with(field), "{request:?}: the error names {field}: {}", e.message());
    }
    let e = registry
        .services(latch_client::proto::ServicesRequest { start_after: "Svc".into(), ..Default::default() })
        .await
        .expect_err("a service name that is no DNS label");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("start_after"), "the error names the field: {}", e.message());
}
