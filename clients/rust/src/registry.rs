//! The service registry: the calls of the Registry service ([`Client::register`],
//! [`Client::deregister`], [`Client::heartbeat`], [`Client::list`], [`Client::services`],
//! [`Client::resolve`]), a watch-fed cache of one service's instances ([`ServiceCache`]), and a
//! registration kept alive by a session of its own and made again whenever that session ends
//! ([`Registration`]).
//!
//! An instance is `(service, id)`, both DNS labels (1 to 63 of a-z, 0-9 and '-'); registering
//! is an upsert. Its health comes from one [`Check`]: its session (the default), heartbeats
//! within a TTL, or the leader's HTTP or TCP probes (registry.proto says how each behaves).
//! Every change is a revision, watchable with [`WatchTarget::Registry`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use latch_proto::v1::event::EventType;
use latch_proto::v1::health_check::Kind;
use latch_proto::v1::registry_client::RegistryClient;
use latch_proto::v1::{
    DeregisterRequest, Event, Health, HealthCheck, HeartbeatRequest, InstanceInfo, KeyValue, ListRequest,
    RegisterRequest, ServiceInstance, ServiceSummary, ServicesRequest,
};
use prost::Message;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Code, Status};

use crate::{Client, Error, Session, SessionOptions, WatchOptions, WatchTarget, WatchUpdate};

/// A duration as the API's milliseconds: a non-zero duration is at least 1 ms, so that it never
/// turns into 0, which means "the default".
fn millis(d: Duration) -> i64 {
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if ms == 0 && !d.is_zero() {
        1
    } else {
        ms
    }
}

/// How an instance's health is found (`HealthCheck` in registry.proto). Build it with
/// [`Check::session`], [`Check::ttl`], [`Check::http`] or [`Check::tcp`]; a zero duration, or
/// one not given, means the server's default.
#[derive(Debug, Clone, PartialEq)]
pub struct Check(HealthCheck);

impl Default for Check {
    fn default() -> Self {
        Check::session()
    }
}

impl Check {
    /// Healthy while registered; an instance registered with a session goes with it.
    pub fn session() -> Check {
        Check(HealthCheck { kind: Kind::Session as i32, ..Default::default() })
    }

    /// The instance must [`heartbeat`](Client::heartbeat) within `ttl` (100 ms … 24 h) or it
    /// turns CRITICAL. It starts PASSING; registering again counts as a heartbeat.
    pub fn ttl(ttl: Duration) -> Check {
        Check(HealthCheck { kind: Kind::Ttl as i32, ttl_ms: millis(ttl), ..Default::default() })
    }

    /// The leader GETs `url` (`http://host:port/path`) every interval: 2xx is PASSING. The
    /// instance starts CRITICAL until the first probe passes.
    pub fn http(url: impl Into<String>) -> Check {
        Check(HealthCheck { kind: Kind::Http as i32, url: url.into(), ..Default::default() })
    }

    /// The leader connects to `address` (`host:port`) every interval: a connection is
    /// PASSING. The instance starts CRITICAL until the first probe passes.
    pub fn tcp(address: impl Into<String>) -> Check {
        Check(HealthCheck { kind: Kind::Tcp as i32, tcp_address: address.into(), ..Default::default() })
    }

    /// HTTP and TCP: how often the leader probes (default 10 s; 100 ms … 1 h).
    pub fn interval(mut self, interval: Duration) -> Check {
        self.0.interval_ms = millis(interval);
        self
    }

    /// HTTP and TCP: how long one probe may take (default 5 s, at most the interval).
    pub fn timeout(mut self, timeout: Duration) -> Check {
        self.0.timeout_ms = millis(timeout);
        self
    }

    /// TTL, HTTP and TCP: remove the instance once it has been CRITICAL this long (default
    /// 1 h; at least 1 s).
    pub fn deregister_after(mut self, after: Duration) -> Check {
        self.0.deregister_after_ms = millis(after);
        self
    }

    /// The check as the API sends it.
    pub fn to_proto(&self) -> HealthCheck {
        self.0.clone()
    }

    pub fn kind(&self) -> Kind {
        Kind::try_from(self.0.kind).unwrap_or(Kind::Session)
    }
}

/// What [`Client::register`] registers. [`RegisterOptions::new`] names the instance; the
/// builder methods add the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterOptions {
    instance: ServiceInstance,
    session: String,
    check: Check,
}

impl RegisterOptions {
    /// Instance `id` of `service`, reachable at `address` (an IP address or a host name) and
    /// `port`; no tags, no meta, weight 1, checked by its session ([`Check::session`]).
    pub fn new(
        service: impl Into<String>,
        id: impl Into<String>,
        address: impl Into<String>,
        port: u16,
    ) -> RegisterOptions {
        RegisterOptions {
            instance: ServiceInstance {
                service: service.into(),
                id: id.into(),
                address: address.into(),
                port: u32::from(port),
                ..Default::default()
            },
            session: String::new(),
            check: Check::session(),
        }
    }

    /// Adds a tag (1 to 63 of A-Z, a-z, 0-9, '_' and '-'; at most 64 tags).
    pub fn tag(mut self, tag: impl Into<String>) -> RegisterOptions {
        self.instance.tags.push(tag.into());
        self
    }

    /// Adds these tags.
    pub fn tags(mut self, tags: impl IntoIterator<Item = impl Into<String>>) -> RegisterOptions {
        self.instance.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Sets a meta entry (keys 1 to 128 bytes, values up to 512; at most 64 entries).
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> RegisterOptions {
        self.instance.meta.insert(key.into(), value.into());
        self
    }

    /// The SRV weight (0 means 1).
    pub fn weight(mut self, weight: u16) -> RegisterOptions {
        self.instance.weight = u32::from(weight);
        self
    }

    /// Binds the instance to session `id`: it goes with the session, in the revision that
    /// ends it. See [`Registration`] for a registration that outlives its sessions.
    pub fn session(mut self, id: impl Into<String>) -> RegisterOptions {
        self.session = id.into();
        self
    }

    pub fn check(mut self, check: Check) -> RegisterOptions {
        self.check = check;
        self
    }

    pub fn service(&self) -> &str {
        &self.instance.service
    }

    pub fn id(&self) -> &str {
        &self.instance.id
    }

    /// The instance as the API sends it.
    pub fn instance(&self) -> &ServiceInstance {
        &self.instance
    }

    fn request(&self) -> RegisterRequest {
        RegisterRequest {
            instance: Some(self.instance.clone()),
            session: self.session.clone(),
            check: Some(self.check.to_proto()),
            request_id: uuid::Uuid::now_v7().to_string(),
        }
    }
}

/// What [`Client::list`] lists. By default: every service, PASSING instances only,
/// linearizable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    service: String,
    tag: String,
    include_critical: bool,
    serializable: bool,
    start_after: String,
    limit: i64,
}

impl ListOptions {
    /// The instances of every service.
    pub fn all() -> ListOptions {
        ListOptions::default()
    }

    /// The instances of `service`.
    pub fn service(service: impl Into<String>) -> ListOptions {
        ListOptions { service: service.into(), ..Default::default() }
    }

    /// Only instances with this tag (compared without regard to case).
    pub fn tag(mut self, tag: impl Into<String>) -> ListOptions {
        self.tag = tag.into();
        self
    }

    /// The CRITICAL instances too.
    pub fn include_critical(mut self) -> ListOptions {
        self.include_critical = true;
        self
    }

    /// Read the answering member's state without asking the leader: possibly stale, never
    /// ahead of the leader.
    pub fn serializable(mut self) -> ListOptions {
        self.serializable = true;
        self
    }

    /// Only instances after `service/id` (the last of the page before).
    pub fn start_after(mut self, service: &str, id: &str) -> ListOptions {
        self.start_after = format!("{service}/{id}");
        self
    }

    /// At most `n` instances a page (besides the member's --max-response-bytes).
    pub fn limit(mut self, n: u32) -> ListOptions {
        self.limit = i64::from(n);
        self
    }

    fn request(&self) -> ListRequest {
        ListRequest {
            service: self.service.clone(),
            tag: self.tag.clone(),
            include_critical: self.include_critical,
            serializable: self.serializable,
            start_after: self.start_after.clone(),
            limit: self.limit,
        }
    }
}

/// What [`Client::list`] and [`Client::list_page`] answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceList {
    /// The revision the list was read at (of several pages, the lowest): watch from
    /// `revision + 1` to follow it.
    pub revision: i64,
    /// In the order of their keys `service/id` (by service, then id; `web-a/x` comes before
    /// `web/x`, as '-' sorts before '/').
    pub instances: Vec<InstanceInfo>,
    /// More instances follow the last one ([`Client::list_page`] only): the options of the next
    /// page are [`InstanceList::next_page`]'s.
    pub more: bool,
}

impl InstanceList {
    /// The options of the page after this one, if more follow.
    pub fn next_page(&self, options: ListOptions) -> Option<ListOptions> {
        let last = self.instances.last()?.instance.as_ref()?;
        self.more.then(|| options.start_after(&last.service, &last.id))
    }
}

/// An instance's `(address, port)`, as [`Client::resolve`] and [`ServiceCache::addresses`]
/// give them.
fn address_of(info: &InstanceInfo) -> Option<(String, u16)> {
    let i = info.instance.as_ref()?;
    Some((i.address.clone(), u16::try_from(i.port).ok()?))
}

fn is_passing(info: &InstanceInfo) -> bool {
    info.health == Health::Passing as i32
}

impl Client {
    /// Registers (creates or replaces) an instance; answers it as stored, with its health
    /// (CRITICAL until the first probe for an HTTP or TCP check).
    pub async fn register(&self, options: RegisterOptions) -> Result<InstanceInfo, Error> {
        let request = options.request();
        let r = self
            .write("Register", |channel| {
                let request = request.clone();
                async move { RegistryClient::new(channel).register(request).await }
            })
            .await?;
        r.instance.ok_or_else(|| Error::from(Status::internal("the answer carries no instance")))
    }

    /// Removes instance `id` of `service`; answers the revision of its removal. NOT_FOUND if
    /// there is no such instance.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<i64, Error> {
        let request = DeregisterRequest {
            service: service.to_string(),
            id: id.to_string(),
            request_id: uuid::Uuid::now_v7().to_string(),
        };
        let r = self
            .write("Deregister", |channel| {
                let request = request.clone();
                async move { RegistryClient::new(channel).deregister(request).await }
            })
            .await?;
        Ok(r.header.map_or(0, |h| h.revision))
    }

    /// A TTL check's heartbeat: the instance is PASSING for another TTL. INVALID_ARGUMENT for
    /// an instance whose check is not TTL; NOT_FOUND for no instance.
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<Health, Error> {
        self.heartbeat_with_output(service, id, "").await
    }

    /// A heartbeat that leaves `output` (at most 1 KiB) as what the instance says of itself.
    pub async fn heartbeat_with_output(
        &self,
        service: &str,
        id: &str,
        output: &str,
    ) -> Result<Health, Error> {
        let request = HeartbeatRequest {
            service: service.to_string(),
            id: id.to_string(),
            output: output.to_string(),
            request_id: uuid::Uuid::now_v7().to_string(),
        };
        let r = self
            .write("Heartbeat", |channel| {
                let request = request.clone();
                async move { RegistryClient::new(channel).heartbeat(request).await }
            })
            .await?;
        Ok(Health::try_from(r.health).unwrap_or(Health::Critical))
    }

    /// Every instance `options` selects, read a page at a time as the members cut the answer
    /// (at `--max-response-bytes`, or at [`ListOptions::limit`]). Each page is read at its own
    /// revision: `revision` is the lowest, so that a watch from `revision + 1` replays every
    /// change the pages may have missed.
    pub async fn list(&self, options: ListOptions) -> Result<InstanceList, Error> {
        let mut list = self.list_page(options.clone()).await?;
        let mut next = list.next_page(options);
        while let Some(options) = next {
            let page = self.list_page(options.clone()).await?;
            let first = page.instances.first().and_then(|i| i.instance.as_ref());
            moved_on(&options.start_after, first.map(|i| format!("{}/{}", i.service, i.id)))?;
            next = page.next_page(options);
            // A page from a member behind the first page's (another member, serializable):
            // the lowest revision is the one a watch must follow from.
            list.revision = list.revision.min(page.revision);
            list.instances.extend(page.instances);
        }
        list.more = false;
        Ok(list)
    }

    /// One page of the instances `options` selects, with the revision it was read at, and
    /// whether more follow. A serializable page sees at least this client's own acknowledged
    /// writes (as [`Client::range`]).
    pub async fn list_page(&self, options: ListOptions) -> Result<InstanceList, Error> {
        let read = |request: ListRequest| {
            self.call("List", move |channel| {
                let request = request.clone();
                async move {
                    RegistryClient::new(channel).max_decoding_message_size(usize::MAX).list(request).await
                }
            })
        };
        let mut request = options.request();
        let mut r = read(request.clone()).await?;
        if self.behind_own_writes(request.serializable, r.header.as_ref()) {
            request.serializable = false;
            r = read(request).await?;
        }
        Ok(InstanceList {
            revision: r.header.map_or(0, |h| h.revision),
            instances: r.instances,
            more: r.more,
        })
    }

    /// Every service, in the order of the registry's keys (as [`InstanceList::instances`]),
    /// with its counts of instances and of passing ones, and its tags; read a page at a time,
    /// each page linearizable.
    pub async fn services(&self) -> Result<Vec<ServiceSummary>, Error> {
        let mut all: Vec<ServiceSummary> = Vec::new();
        loop {
            let request = ServicesRequest {
                serializable: false,
                start_after: all.last().map(|s| s.name.clone()).unwrap_or_default(),
                limit: 0,
            };
            let r = self
                .call("Services", |channel| {
                    let request = request.clone();
                    async move {
                        RegistryClient::new(channel)
                            .max_decoding_message_size(usize::MAX)
                            .services(request)
                            .await
                    }
                })
                .await?;
            if !request.start_after.is_empty() {
                // Services follow one another as their keys `service/…` do.
                let first = r.services.first().map(|s| format!("{}/", s.name));
                moved_on(&format!("{}/", request.start_after), first)?;
            }
            let done = !r.more || r.services.is_empty();
            all.extend(r.services);
            if done {
                return Ok(all);
            }
        }
    }

    /// Where the PASSING instances of `service` are: `(address, port)` in id order, as
    /// linearizable as [`list`](Client::list). To follow them as they change, use a
    /// [`ServiceCache`].
    pub async fn resolve(&self, service: &str) -> Result<Vec<(String, u16)>, Error> {
        let list = self.list(ListOptions::service(service)).await?;
        Ok(list.instances.iter().filter_map(address_of).collect())
    }
}

/// Checks that a page begins after the key it was asked to start after: a member that ignores
/// `start_after` (one older than this client) would answer the first page again and again.
fn moved_on(after: &str, first: Option<String>) -> Result<(), Error> {
    match first {
        Some(first) if first.as_bytes() <= after.as_bytes() => {
            Err(Error::from(Status::failed_precondition(format!(
                "the member answered a page starting at {first:?}, not after {after:?}: it does not \
                 page (a member older than this client?)"
            ))))
        }
        _ => Ok(()),
    }
}

/// A copy of an error for a second reader (the error types are not `Clone`).
fn copy(e: &Error) -> Error {
    match e.status() {
        Some(status) => Error::from(status.clone()),
        None => Error::from(Status::new(e.code(), e.to_string())),
    }
}

/// One service's instances at a revision, as a [`ServiceCache`] holds them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceSnapshot {
    /// The revision of the last change reflected (or of the list the cache started from).
    pub revision: i64,
    /// Every instance, CRITICAL ones too, by id.
    pub instances: BTreeMap<String, InstanceInfo>,
}

impl ServiceSnapshot {
    /// The PASSING instances, in id order.
    pub fn healthy(&self) -> impl Iterator<Item = &InstanceInfo> + '_ {
        self.instances.values().filter(|i| is_passing(i))
    }

    /// Where the PASSING instances are: `(address, port)` in id order.
    pub fn addresses(&self) -> Vec<(String, u16)> {
        self.healthy().filter_map(address_of).collect()
    }
}

/// A local copy of one service's instances, kept up to date by a REGISTRY watch.
///
/// [`ServiceCache::start`] lists the service (linearizable, CRITICAL instances included), then
/// follows the watch from the list's revision + 1: every registration, health change and
/// removal is applied in revision order, each revision at once, so a snapshot is always the
/// service's state at some revision ([`ServiceSnapshot::revision`]), never a mix. The watch
/// resumes by itself on another member after a failure; if the history it needs was compacted
/// meanwhile, the cache lists the service again and follows it from that list's revision. The
/// cache fails (every [`changed`](ServiceCache::changed) then errs) only if the watch or that
/// list is refused.
///
/// Clones share the cache; the watch ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct ServiceCache {
    service: String,
    snapshot: watch::Receiver<Arc<ServiceSnapshot>>,
    failure: Arc<Mutex<Option<Error>>>,
    _task: Arc<AbortOnDrop>,
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ServiceCache {
    /// Lists `service` and follows its changes in the background.
    pub async fn start(client: &Client, service: &str) -> Result<ServiceCache, Error> {
        let first = list_service(client, service).await?;
        let (tx, snapshot) = watch::channel(Arc::new(first.clone()));
        let failure = Arc::new(Mutex::new(None));
        let task = tokio::spawn(keep_cached(client.clone(), service.to_string(), first, tx, failure.clone()));
        Ok(ServiceCache {
            service: service.to_string(),
            snapshot,
            failure,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// The service as the cache holds it now.
    pub fn snapshot(&self) -> Arc<ServiceSnapshot> {
        self.snapshot.borrow().clone()
    }

    /// The PASSING instances now, in id order.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        self.snapshot().healthy().cloned().collect()
    }

    /// Where the PASSING instances are now: `(address, port)` in id order.
    pub fn addresses(&self) -> Vec<(String, u16)> {
        self.snapshot().addresses()
    }

    /// The revision of the last change the cache reflects.
    pub fn revision(&self) -> i64 {
        self.snapshot.borrow().revision
    }

    /// Waits for the next change (a registration, a health change or a removal) after the
    /// last snapshot this handle saw, and answers the new snapshot. Several changes that came
    /// in between are seen as one. Errs once the cache has failed.
    pub async fn changed(&mut self) -> Result<Arc<ServiceSnapshot>, Error> {
        match self.snapshot.changed().await {
            Ok(()) => Ok(self.snapshot.borrow_and_update().clone()),
            Err(_) => Err(self.failure()),
        }
    }

    /// Waits until a snapshot satisfies `ready` (the current one included) and answers it.
    /// Errs if the cache fails first.
    pub async fn wait_for(
        &mut self,
        mut ready: impl FnMut(&ServiceSnapshot) -> bool,
    ) -> Result<Arc<ServiceSnapshot>, Error> {
        let found = self.snapshot.wait_for(|s| ready(s)).await.map(|s| s.clone());
        found.map_err(|_| self.failure())
    }

    fn failure(&self) -> Error {
        let failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        failure.as_ref().map_or_else(|| Error::from(Status::cancelled("the service cache stopped")), copy)
    }
}

/// Every instance of `service`, CRITICAL ones too, at the revision of a linearizable List of
/// one page (a list of several pages, each at its own revision, could mix two states).
async fn list_service(client: &Client, service: &str) -> Result<ServiceSnapshot, Error> {
    let list = client.list_page(ListOptions::service(service).include_critical()).await?;
    if list.more {
        return Err(Error::from(Status::resource_exhausted(format!(
            "the instances of {service:?} do not fit in one answer of the member \
             (--max-response-bytes): a cache cannot start from a partial list"
        ))));
    }
    let instances =
        list.instances.into_iter().filter_map(|i| Some((i.instance.as_ref()?.id.clone(), i))).collect();
    Ok(ServiceSnapshot { revision: list.revision, instances })
}

/// [`list_service`], retried for as long as the cluster is unreachable.
async fn relist(client: &Client, service: &str) -> Result<ServiceSnapshot, Error> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match list_service(client, service).await {
            Err(e) if matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded) => {
                tracing::debug!(service, error = %e, "listing the service again failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// Keeps the cache of `service` up to date until the watch cannot go on; then notes why.
/// When the revision after the cache's is compacted (the watch fell behind the member's
/// history), the service is listed again and followed from there; when a member refuses the
/// watch for its limits (RESOURCE_EXHAUSTED), it is watched again after a pause.
async fn keep_cached(
    client: Client,
    service: String,
    mut state: ServiceSnapshot,
    tx: watch::Sender<Arc<ServiceSnapshot>>,
    failure: Arc<Mutex<Option<Error>>>,
) {
    let prefix = format!("{service}/");
    let mut backoff = Duration::from_millis(100);
    let outcome = loop {
        let updates = client.watch(
            WatchOptions::prefix(prefix.as_bytes())
                .target(WatchTarget::Registry)
                .from_revision(state.revision + 1),
        );
        let followed_from = state.revision;
        let e = follow(updates, &prefix, &mut state, &tx).await;
        if e.code() == Code::ResourceExhausted && e.over_limit() {
            // A member at its watch limits (--max-watches, say) refused the watch: it frees as
            // other watches end, so the cache waits and watches again from where it is. (The
            // client's own RESOURCE_EXHAUSTED, a watch canceled SLOW again and again without
            // progress, is not marked, and ends the cache.)
            if state.revision > followed_from {
                backoff = Duration::from_millis(100);
            }
            tracing::warn!(service = %service, error = %e, "the service cache's watch was refused; watching again");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        if e.code() != Code::OutOfRange {
            break e;
        }
        tracing::debug!(service = %service, error = %e, "the service cache fell behind the history; listing again");
        match relist(&client, &service).await {
            Ok(listed) => {
                state = listed;
                tx.send_replace(Arc::new(state.clone()));
            }
            Err(e) => break e,
        }
    };
    tracing::debug!(service = %service, error = %outcome, "the service cache stopped");
    *failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
    // Dropping `tx` wakes every waiter with the failure.
}

/// Applies the watch's updates to `state`, publishing each revision, until the watch ends;
/// answers why it ended.
async fn follow(
    updates: impl futures::Stream<Item = Result<WatchUpdate, Error>>,
    prefix: &str,
    state: &mut ServiceSnapshot,
    tx: &watch::Sender<Arc<ServiceSnapshot>>,
) -> Error {
    tokio::pin!(updates);
    loop {
        let applied = match updates.next().await {
            None => return Error::from(Status::cancelled("the registry watch ended")),
            Some(Err(e)) => return e,
            Some(Ok(WatchUpdate::Started { .. } | WatchUpdate::Progress { .. })) => continue,
            Some(Ok(WatchUpdate::Events { revision, events })) => {
                apply_events(state, prefix, &events).map(|()| state.revision = state.revision.max(revision))
            }
            Some(Ok(WatchUpdate::Snapshot { revision, kvs })) => decode_all(prefix, &kvs).map(|instances| {
                state.instances = instances;
                state.revision = revision;
            }),
        };
        if let Err(e) = applied {
            return e;
        }
        tx.send_replace(Arc::new(state.clone()));
    }
}

/// The id an event's key names under `prefix` (`service/`).
fn id_of<'k>(prefix: &str, key: &'k [u8]) -> Result<&'k str, Error> {
    std::str::from_utf8(key).ok().and_then(|k| k.strip_prefix(prefix)).ok_or_else(|| {
        Error::from(Status::internal(format!(
            "a registry event for {:?}, not under {prefix:?}",
            key.escape_ascii().to_string()
        )))
    })
}

fn decode(kv: &KeyValue) -> Result<InstanceInfo, Error> {
    InstanceInfo::decode(kv.value.as_slice()).map_err(|e| {
        Error::from(Status::internal(format!(
            "a registry event for {:?} does not decode as an InstanceInfo: {e}",
            kv.key.escape_ascii().to_string()
        )))
    })
}

fn apply_events(state: &mut ServiceSnapshot, prefix: &str, events: &[Event]) -> Result<(), Error> {
    for event in events {
        let Some(kv) = event.kv.as_ref() else { continue };
        let id = id_of(prefix, &kv.key)?.to_string();
        if event.r#type == EventType::Delete as i32 {
            state.instances.remove(&id);
        } else {
            state.instances.insert(id, decode(kv)?);
        }
    }
    Ok(())
}

fn decode_all(prefix: &str, kvs: &[KeyValue]) -> Result<BTreeMap<String, InstanceInfo>, Error> {
    kvs.iter().map(|kv| Ok((id_of(prefix, &kv.key)?.to_string(), decode(kv)?))).collect()
}

/// Where a [`Registration`] stands.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistrationState {
    /// Registered, bound to session `session` (and gone with it should it end).
    /// (`instance` is boxed: it is much larger than the other states.)
    Registered { session: String, instance: Box<InstanceInfo> },
    /// The session ended (and the instance with it): a new session is being made and the
    /// instance registered again, retrying until that works.
    Renewing,
    /// Registering again was refused in a way no retry can change (the refusal's text).
    /// Final: nothing is registered any more.
    Failed(String),
    /// [`Registration::stop`] deregistered the instance and closed the session. Final.
    Stopped,
}

/// An instance registered bound to a session of its own, and registered again under a new
/// session whenever that one ends.
///
/// What it promises:
/// - While [`RegistrationState::Registered`], the instance is in the registry bound to the
///   named session, which a background task keeps alive (see [`Session`]): if this process
///   stops or is cut off, the instance goes with the session once its TTL runs out, in the
///   revision that ends it.
/// - When the session ends (the cluster expired or closed it, or keepalives failed past the
///   lease and the grace period), the state turns [`Renewing`](RegistrationState::Renewing):
///   a new session is created and the same instance registered under it, retrying with
///   backoff for as long as the cluster is unreachable. Registering is an upsert, so should
///   the old session still live on the cluster, the instance simply moves to the new one; the
///   old session is closed in the background. Between the old session's end and the new
///   registration the instance is absent from the registry.
/// - It does not undo anything else: an instance deregistered by someone else, or removed
///   after its TTL check stayed critical past `deregister_after`, stays removed until the
///   next session change. Heartbeats of a TTL check are the caller's
///   ([`Client::heartbeat`]).
/// - [`stop`](Registration::stop) deregisters the instance and closes the session. Dropping
///   the handle stops the task; the session is then closed in the background (best effort),
///   taking the instance with it.
#[derive(Debug)]
pub struct Registration {
    service: String,
    id: String,
    state: watch::Receiver<RegistrationState>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), Error>>>,
}

/// The refusals a new attempt cannot change: the registration itself is wrong.
fn refused_for_good(e: &Error) -> bool {
    matches!(
        e.code(),
        Code::InvalidArgument | Code::PermissionDenied | Code::Unauthenticated | Code::Unimplemented
    )
}

impl Registration {
    /// Creates a session as `session` says, registers `options` bound to it (any session
    /// named in `options` is replaced), and keeps it so (see [`Registration`]). Fails, leaving
    /// nothing behind, if the first session or registration fails.
    pub async fn start(
        client: &Client,
        options: RegisterOptions,
        session: SessionOptions,
    ) -> Result<Registration, Error> {
        let (held, instance) = register_bound(client, &options, &session).await?;
        let (state_tx, state) = watch::channel(RegistrationState::Registered {
            session: held.id().to_string(),
            instance: Box::new(instance),
        });
        let (stop, stop_rx) = watch::channel(false);
        let (service, id) = (options.service().to_string(), options.id().to_string());
        let task = tokio::spawn(keep_registered(client.clone(), options, session, held, state_tx, stop_rx));
        Ok(Registration { service, id, state, stop, task: Some(task) })
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn state(&self) -> RegistrationState {
        self.state.borrow().clone()
    }

    /// A receiver of every change of [`state`](Registration::state).
    pub fn watch(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// The session the instance is bound to now; `None` while renewing, or once failed or
    /// stopped.
    pub fn session_id(&self) -> Option<String> {
        match &*self.state.borrow() {
            RegistrationState::Registered { session, .. } => Some(session.clone()),
            _ => None,
        }
    }

    /// The instance as last registered; `None` while renewing, or once failed or stopped.
    pub fn instance(&self) -> Option<InstanceInfo> {
        match &*self.state.borrow() {
            RegistrationState::Registered { instance, .. } => Some(instance.as_ref().clone()),
            _ => None,
        }
    }

    /// Stops renewing, deregisters the instance and closes its session. A registration
    /// attempt under way is finished first (and then undone), so nothing is left behind.
    /// Missing instances or sessions are no error (they may have just ended by themselves).
    pub async fn stop(mut self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        let Some(task) = self.task.take() else { return Ok(()) };
        match task.await {
            Ok(result) => result,
            Err(e) => Err(Error::from(Status::internal(format!("the registration task failed: {e}")))),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Dropping the task's future drops its session, which closes itself in the background.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A new session, and the instance registered bound to it. On failure the session is dropped,
/// which closes it in the background.
async fn register_bound(
    client: &Client,
    options: &RegisterOptions,
    session: &SessionOptions,
) -> Result<(Session, InstanceInfo), Error> {
    let held = client.session(session.clone()).await?;
    let instance = client.register(options.clone().session(held.id())).await?;
    Ok((held, instance))
}

/// Deregisters and closes; NOT_FOUND from either is no error.
async fn undo(client: &Client, options: &RegisterOptions, session: Session) -> Result<(), Error> {
    let gone = |r: Result<(), Error>| match r {
        Err(e) if e.code() == Code::NotFound => Ok(()),
        other => other,
    };
    let deregistered = gone(client.deregister(options.service(), options.id()).await.map(|_| ()));
    let closed = gone(session.close().await.map(|_| ()));
    deregistered.and(closed)
}

/// Resolves once a stop is asked (or the handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The registration's task: waits for the session's end and registers again under a new one,
/// until stopped.
async fn keep_registered(
    client: Client,
    options: RegisterOptions,
    session_options: SessionOptions,
    mut session: Session,
    state: watch::Sender<RegistrationState>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    const FIRST_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    loop {
        tokio::select! {
            () = stopped(&mut stop) => {
                let result = undo(&client, &options, session).await;
                state.send_replace(RegistrationState::Stopped);
                return result;
            }
            () = session.done() => {}
        }
        tracing::debug!(
            service = options.service(),
            id = options.id(),
            session = session.id(),
            "the registration's session ended; registering again under a new one"
        );
        state.send_replace(RegistrationState::Renewing);
        let mut backoff = FIRST_BACKOFF;
        session = loop {
            // An attempt runs to its end (bounded by the client's retry budget) even if a stop
            // comes meanwhile: cut short, it could leave a registration nobody undoes.
            let attempt = register_bound(&client, &options, &session_options).await;
            let stopping = *stop.borrow();
            match attempt {
                Ok((held, _)) if stopping => {
                    let result = undo(&client, &options, held).await;
                    state.send_replace(RegistrationState::Stopped);
                    return result;
                }
                Ok((held, instance)) => {
                    let session = held.id().to_string();
                    state.send_replace(RegistrationState::Registered {
                        session,
                        instance: Box::new(instance),
                    });
                    break held;
                }
                Err(e) if refused_for_good(&e) => {
                    tracing::warn!(service = options.service(), id = options.id(), error = %e, "registering again was refused");
                    state.send_replace(RegistrationState::Failed(e.to_string()));
                    // Nothing is registered: a stop has nothing to undo.
                    stopped(&mut stop).await;
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(service = options.service(), id = options.id(), error = %e, "registering again failed; retrying");
                    if stopping {
                        state.send_replace(RegistrationState::Stopped);
                        return Ok(());
                    }
                    tokio::select! {
                        () = stopped(&mut stop) => {
                            state.send_replace(RegistrationState::Stopped);
                            return Ok(());
                        }
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, health: Health, port: u32) -> InstanceInfo {
        InstanceInfo {
            instance: Some(ServiceInstance {
                service: "web".into(),
                id: id.into(),
                address: "10.0.0.1".into(),
                port,
                ..Default::default()
            }),
            health: health as i32,
            ..Default::default()
        }
    }

    fn put(id: &str, i: &InstanceInfo) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: format!("web/{id}").into_bytes(),
                value: i.encode_to_vec(),
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn delete(id: &str) -> Event {
        Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue { key: format!("web/{id}").into_bytes(), ..Default::default() }),
            prev_kv: None,
        }
    }

    #[test]
    fn durations_are_whole_milliseconds_and_never_round_down_to_the_default() {
        assert_eq!(millis(Duration::from_secs(2)), 2_000);
        assert_eq!(millis(Duration::from_micros(10)), 1, "a non-zero duration is not 0 (the default)");
        assert_eq!(millis(Duration::ZERO), 0);
        let c = Check::http("http://h:1/")
            .interval(Duration::from_millis(200))
            .timeout(Duration::from_millis(150));
        assert_eq!((c.to_proto().interval_ms, c.to_proto().timeout_ms, c.kind()), (200, 150, Kind::Http));
    }

    #[test]
    fn a_cache_applies_puts_health_changes_and_deletes_and_keeps_only_passing_as_healthy() {
        let mut s = ServiceSnapshot::default();
        let events = [put("a", &info("a", Health::Passing, 80)), put("b", &info("b", Health::Critical, 81))];
        apply_events(&mut s, "web/", &events).expect("applies");
        assert_eq!(s.addresses(), vec![("10.0.0.1".to_string(), 80)], "only the passing instance");
        apply_events(&mut s, "web/", &[put("b", &info("b", Health::Passing, 81)), delete("a")])
            .expect("applies");
        assert_eq!(s.addresses(), vec![("10.0.0.1".to_string(), 81)]);
        assert_eq!(s.instances.len(), 1, "a DELETE removes the instance");
    }

    #[test]
    fn a_cache_refuses_an_event_outside_its_service_or_an_undecodable_one() {
        let mut s = ServiceSnapshot::default();
        let mut e = put("a", &info("a", Health::Passing, 80));
        if let Some(kv) = e.kv.as_mut() {
            kv.key = b"api/a".to_vec();
        }
        assert_eq!(apply_events(&mut s, "web/", &[e]).expect_err("not web's").code(), Code::Internal);
        let mut e = put("a", &info("a", Health::Passing, 80));
        if let Some(kv) = e.kv.as_mut() {
            kv.value = vec![0xff, 0xff];
        }
        assert_eq!(apply_events(&mut s, "web/", &[e]).expect_err("undecodable").code(), Code::Internal);
    }
}
