//! Wires one member together: storage → core → node driver → peer transport and the public
//! gRPC services, with the standard gRPC health and reflection services beside them, and the
//! HTTP port (metrics, health, readiness). [`run`] binds nothing itself: it takes bound
//! listeners and a shutdown future, so tests bind port 0 and stop a member cleanly.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;

use latch_proto::v1::cluster_server::ClusterServer;
use latch_proto::v1::election_server::ElectionServer;
use latch_proto::v1::kv_server::KvServer;
use latch_proto::v1::lock_server::LockServer;
use latch_proto::v1::maintenance_server::MaintenanceServer;
use latch_proto::v1::registry_server::RegistryServer;
use latch_proto::v1::session_server::SessionServer;
use latch_proto::wire::watch_server::WatchServer;
use tonic::server::NamedService;
use tonic_health::ServingStatus;

use crate::api::{
    self,
    cluster::ClusterService,
    deadline::DeadlineLayer,
    election::ElectionService,
    kv::KvService,
    lock::LockService,
    maintenance::MaintenanceService,
    registry::RegistryService,
    routing::RoutingLayer,
    session::SessionService,
    watch::{Recent, WatchService},
    Context,
};
use crate::config::Config;
use crate::core::state_check::{Install, StateHashes};
use crate::core::{self, Core, CoreError, Timing};
use crate::fsm;
use crate::metrics::{GrpcMetricsLayer, Metrics};
use crate::node::freshness::{self, Freshness};
use crate::node::hash_points::ThreadHasher;
use crate::node::inbox::FileInbox;
use crate::node::{Budgets, Node};
use crate::storage::{self, StorageError};
use crate::transport::{
    self, peer_status, wire, Admission, Faults, FaultsService, Links, PeerSenders, PeerService, Source,
    WireSenders,
};

pub mod admission;
pub mod marks;
mod sockets;
pub mod state_check;
pub mod upgrade;

/// The public services on the client port, as the gRPC health service names them.
const SERVICES: [&str; 8] = [
    <KvServer<KvService> as NamedService>::NAME,
    <ClusterServer<ClusterService> as NamedService>::NAME,
    <SessionServer<SessionService> as NamedService>::NAME,
    <LockServer<LockService> as NamedService>::NAME,
    <ElectionServer<ElectionService> as NamedService>::NAME,
    <WatchServer<WatchService> as NamedService>::NAME,
    <RegistryServer<RegistryService> as NamedService>::NAME,
    <MaintenanceServer<MaintenanceService> as NamedService>::NAME,
];

/// Where incoming snapshots are staged, inside `--data-dir`.
const SNAPSHOT_INBOX_DIR: &str = "snapshots";

/// How often the client port pings a connection, and how long the answer may take before the
/// connection is closed: a client that vanished without closing (its host or its network gone)
/// has its calls ended, and what they waited for withdrawn (`api::lock`'s `Abandon`), within
/// about half a minute instead of at the kernel's TCP timeout, hours later.
const CLIENT_PING_INTERVAL: Duration = Duration::from_secs(15);
const CLIENT_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The peer port's pings, as often as the members' own dialing side pings (`transport::dial`):
/// a peer whose host or network vanished mid-message has its calls ended within 10 s, and
/// with them the partly received message and the partly staged snapshot they held.
const PEER_PING_INTERVAL: Duration = Duration::from_secs(5);
const PEER_PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Calls one connection to the peer port carries at once. A member uses one message stream,
/// one snapshot call and a few status calls per connection; each stream may hold a message
/// being received (up to `--max-peer-message-bytes`), so their number is bounded too.
const PEER_MAX_STREAMS: u32 = 16;

/// The peer port's server: pinged connections, a bounded number of calls on each.
fn peer_port() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(PEER_PING_INTERVAL))
        .http2_keepalive_timeout(Some(PEER_PING_TIMEOUT))
        .max_concurrent_streams(Some(PEER_MAX_STREAMS))
}

/// The gRPC paths of the health and reflection services, for the metrics' `method` label.
const STANDARD_METHODS: [&str; 4] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { what: &'static str, addr: String, source: std::io::Error },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Core(#[from] CoreError),
    #[error("cannot start the node thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot open the snapshot inbox {dir}: {source}")]
    Inbox { dir: std::path::PathBuf, source: std::io::Error },
    #[error("cannot accept connections: {0}")]
    Incoming(std::io::Error),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot start serving watches: {0}")]
    Watches(fsm::FsmError),
    #[error("--dns-domain: {0}")]
    DnsDomain(String),
    #[error("{0}")]
    Refused(#[from] admission::NotAdmitted),
    #[error("{0}")]
    Incompatible(#[from] upgrade::Incompatible),
    #[error("{0}")]
    Diverged(#[from] state_check::Diverged),
    #[error("the node stopped while the member was being admitted (its error is logged above)")]
    NodeStopped,
    /// A mark (`server::marks`) in the data dir.
    #[error("cannot write a mark into the data dir {dir}: {source}")]
    Mark { dir: std::path::PathBuf, source: std::io::Error },
    #[error("member {member} does not start while {mark} is there; it says: {why}")]
    Marked { member: u64, mark: std::path::PathBuf, why: String },
}

/// The member's bound sockets.
pub struct Listeners {
    pub client: TcpListener,
    pub peer: TcpListener,
    /// Metrics, health and readiness over HTTP.
    pub http: TcpListener,
    /// The DNS port: UDP and TCP on one address.
    pub dns: (tokio::net::UdpSocket, TcpListener),
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub async fn bind(config: &Config) -> Result<Listeners, ServerError> {
        let bind = |what: &'static str, addr: String| async move {
            TcpListener::bind(&addr).await.map_err(|source| ServerError::Bind { what, addr, source })
        };
        Ok(Listeners {
            client: bind("--client-addr", config.client_addr.clone()).await?,
            peer: bind("--peer-addr", config.peer_addr.clone()).await?,
            http: bind("--http-addr", config.http_addr.clone()).await?,
            dns: crate::dns::bind(&config.dns_addr).await.map_err(|source| ServerError::Bind {
                what: "--dns-addr",
                addr: config.dns_addr.clone(),
                source,
            })?,
        })
    }

    fn addrs(&self) -> [Option<SocketAddr>; 3] {
        [self.client.local_addr().ok(), self.peer.local_addr().ok(), self.http.local_addr().ok()]
    }
}

/// Runs a member until `shutdown` resolves or the node stops on a fatal error.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let cluster_id = config.cluster_id();
    for name in marks::ALL {
        if let Some(why) = marks::read(&config.data_dir, name) {
            return Err(ServerError::Marked { member: config.id, mark: config.data_dir.join(name), why });
        }
    }
    let identity = storage::Identity { cluster_id, member_id: config.id };
    let stores = storage::open(&config.data_dir, identity, config.state_cache_bytes)?;
    let metrics = Arc::new(Metrics::new());
    let fsyncs = metrics.raft.state_fsync_seconds.clone();
    stores.state_syncs.observe(move |took| fsyncs.observe(took.as_secs_f64()));
    let voters: Vec<u64> = config.initial_cluster.iter().map(|p| p.id).collect();
    // A member with no peer: the cluster's only first member, and (as far as its state knows,
    // below) none added to it. Such a cluster is not grown (`membership::check_add`): its only
    // first member, started again on an empty data dir, could not tell it from a new one.
    let mut alone = voters.len() <= 1 && !config.joins();
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let inbox = FileInbox::open(&config.data_dir.join(SNAPSHOT_INBOX_DIR))
        .map_err(|source| ServerError::Inbox { dir: config.data_dir.join(SNAPSHOT_INBOX_DIR), source })?;
    let core_config = core::Config {
        timing: Timing { tick_ms: config.tick_interval.as_millis().max(1) as u64, ..Timing::default() },
        snapshot_entries: config.snapshot_entries,
        bounds: fsm::Bounds {
            max_response_bytes: config.limits.max_response_bytes,
            request_memory_bytes: fsm::REQUEST_MEMORY_BYTES,
            events: false,
            newest_version: fsm::COMMAND_VERSION,
        },
        log_cache_bytes: config.peer_limits.log_cache_bytes,
        max_uncommitted_bytes: config.peer_limits.max_uncommitted_bytes,
        history_retention: config.history_retention,
        history_retention_bytes: config.history_retention_bytes,
        state_check_interval_ms: match alone {
            false => config.state_check_interval.as_millis() as u64,
            true => 0,
        },
        ..core::Config::new(config.id, &voters, rand::random())
    };
    // Raft's randomized election timeout is at most twice `election_tick` ticks.
    let longest_election = config.tick_interval.saturating_mul(2 * core_config.timing.election_tick as u32);
    let (core, applier) = Core::new(core_config, identity, stores, Arc::new(inbox), &logger)?;
    let configuration = core.configuration();
    alone &= configuration.added.is_empty() && !configuration.voters.iter().any(|m| *m != config.id);
    // A member alone has nobody to compare its state with.
    let state_hashes = Arc::new(StateHashes::default());
    let installed_at = core.installed_at()?;
    let confirmed = marks::read(&config.data_dir, marks::COPY_CONFIRMED).and_then(|i| i.parse::<u64>().ok());
    state_hashes
        .started(Install { installed_at, confirmed: installed_at != 0 && confirmed == Some(installed_at) });
    let applier = match alone {
        false => applier.hashing_points(Arc::new(ThreadHasher::new(state_hashes.clone()))),
        true => applier,
    };
    // A member whose log is empty takes part only once its peers confirm it has not run before
    // (and, added at run time, that it was added).
    // So does one whose log is as a restore from a backup left it: a first life, or a later one
    // restored again after its data was lost, which its peers' records of it refuse.
    let first_life = core.log_was_fresh() || core.log_as_restored();
    let restored_from = core.restored_from()?;
    let asks_peers = first_life && !alone;
    let restarted = !first_life;
    // Its peers: the first members, and those added since as far as its state knows.
    // An address `--peers` gives never takes a recorded one's place, and yields to one the
    // cluster records later (`transport::Source`).
    let links = Arc::new(Links::new(config.id, &config.initial_cluster));
    learn_configuration(&links, &configuration, config.id);
    for p in &config.peers {
        links.learn(p.id, &p.peer_addr, Source::Peers);
    }

    // The standard services beside Latch's own, so that grpc-health-probe, Kubernetes gRPC
    // probes and grpcurl work: health reports SERVING for the server ("") and each service.
    let (mut health, health_service) = tonic_health::server::health_reporter();
    for service in SERVICES {
        health.set_service_status(service, ServingStatus::Serving).await;
    }
    let reflection = || {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(latch_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        // Only the services served on this port are listed (the descriptors hold the peer
        // service too).
        [
            &SERVICES[..],
            &[
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ],
        ]
        .concat()
        .into_iter()
        .fold(builder, |b, name| b.with_service_name(name))
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let rt = tokio::runtime::Handle::current();
    let id = config.id;
    let budgets = Budgets {
        max_pending_bytes: config.limits.max_pending_bytes,
        max_peer_queue_bytes: config.peer_limits.max_peer_queue_bytes,
    };
    let shared = transport::Shared {
        metrics: metrics.clone(),
        // Every member with peers takes no part in raft until it has checked their versions.
        admission: if alone { Admission::open() } else { Admission::closed() },
        // Stays empty unless --fault-injection serves the Faults service that fills it.
        faults: Faults::default(),
        links: links.clone(),
        state_hashes: state_hashes.clone(),
    };
    let (faults, admission) = (shared.faults.clone(), shared.admission.clone());
    let senders = shared.clone();
    // Everything that can fail on its own, before the node starts.
    let [client_addr, peer_addr, http_addr] = listeners.addrs();
    let client_addr = client_addr.map_or(config.client_addr.clone(), |a| a.to_string());
    // How this member is named to clients: by its peers (the leader a follower's answers name)
    // and by `cluster status`.
    let advertised = match &config.advertise_client_addr {
        Some(addr) => addr.clone(),
        None => {
            if crate::config::is_wildcard(&client_addr) {
                tracing::warn!(
                    %client_addr,
                    "the client port is bound to a wildcard address, which names no host: no member \
                     names it as the leader's and DNS has no node record of it; set \
                     --advertise-client-addr"
                );
            }
            client_addr.clone()
        }
    };
    let peer_addr = peer_addr.map_or(config.peer_addr.clone(), |a| a.to_string());
    let http_addr = http_addr.map_or(config.http_addr.clone(), |a| a.to_string());
    let dns_addr = listeners.dns.0.local_addr().map_or(config.dns_addr.clone(), |a| a.to_string());
    let zone = crate::dns::zone::Zone::new(
        &config.dns.domain,
        config.dns.ttl.as_secs() as u32,
        config.dns.negative_ttl.as_secs() as u32,
    )
    .map_err(ServerError::DnsDomain)?;
    let client_incoming = sockets::gathered(listeners.client).map_err(ServerError::Incoming)?;

    let node = Node::start(
        core,
        applier,
        cluster_id,
        config.tick_interval,
        budgets,
        metrics.clone(),
        move |handle| match WireSenders::start(&rt, id, handle.clone(), senders.clone()) {
            Ok(wire) => Box::new(wire),
            Err(e) => {
                tracing::warn!(member = id, error = %e, "cannot start the peer wire's threads; sending over gRPC");
                Box::new(PeerSenders::start(&rt, id, handle, senders))
            }
        },
    )
    .map_err(ServerError::Thread)?;
    // Raft messages from members of this version arrive on the wire, everything else (and
    // messages of members of earlier versions) over gRPC: the peer port tells them apart.
    let wire_served = Arc::new(wire::Served::default());
    let peer_incoming = {
        let (served, handle, shared) = (wire_served.clone(), node.handle(), shared.clone());
        let max_message = config.peer_limits.max_peer_message_bytes;
        sockets::sniffed(listeners.peer, wire::MAGIC, move |socket| {
            served.start(socket, handle.clone(), shared.clone(), max_message)
        })
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(follow_configuration(node.handle(), links.clone(), stopped(stop_rx.clone())));
    // However the member stops, its peers' wire connections close with it.
    let closing = stopped(stop_rx.clone());
    tokio::spawn(async move {
        closing.await;
        wire_served.close_all();
    });
    let fault_injection = config.fault_injection.then(|| {
        tracing::warn!(
            member = id,
            "--fault-injection: the Faults service on the peer port can cut this member off from \
             its peers; for tests only"
        );
        FaultsService::server(faults.clone(), id, links.clone())
    });
    let peer_srv = peer_port()
        .add_service(PeerService::new(
            node.handle(),
            advertised.clone(),
            peer_addr.clone(),
            dns_addr.clone(),
            config.peer_limits.max_peer_message_bytes,
            shared,
        ))
        .add_optional_service(fault_injection)
        .serve_with_incoming_shutdown(peer_incoming, stopped(stop_rx.clone()));
    let peer_task = tokio::spawn(peer_srv);
    // `/health` answers from the start (the node runs); `/ready` once a leader is known.
    let http_srv = crate::http::serve(
        listeners.http,
        crate::http::router(node.handle(), metrics.clone(), config.data_dir.clone()),
        stopped(stop_rx.clone()),
    );
    let http_task = tokio::spawn(http_srv);
    tokio::pin!(shutdown);
    // The client port, DNS and health checks start only once the member takes part: a member
    // that will be refused serves nothing from its empty state meanwhile.
    if !admission.admits() {
        let asked = async {
            // Its peers as the transport knows them: the first members and `--peers`, the
            // members added since as its state records them, none removed.
            upgrade::check((id, restarted), cluster_id, &links.peers()).await?;
            // A replaced member's new life, restarted since, is asked nothing (its log is no
            // longer empty): its mark says it lived before.
            let mut lived_before = marks::read(&config.data_dir, marks::LIVED_BEFORE).is_some();
            if asks_peers {
                let admitted = admission::ask_peers(
                    id,
                    cluster_id,
                    (&config.initial_cluster, &config.peers),
                    &config.data_dir,
                    restored_from,
                )
                .await?;
                for (member, addr) in &admitted.added {
                    if *member != id {
                        links.learn(*member, addr, Source::Recorded);
                    }
                }
                if admitted.replaced {
                    let why = match config.joins() {
                        true => "this data dir was started empty as a member added to the running cluster",
                        false => "this data dir was started empty after the member was replaced",
                    };
                    marks::write(&config.data_dir, marks::LIVED_BEFORE, why)
                        .map_err(|source| ServerError::Mark { dir: config.data_dir.clone(), source })?;
                    lived_before = true;
                }
            }
            if lived_before {
                // Before the client port opens: its state, empty at first, is no first life's.
                node.handle().lived_before().await.map_err(|_| ServerError::NodeStopped)?;
            }
            Ok::<(), ServerError>(())
        };
        let node_ended = async {
            while !node.is_finished() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        // None: shutdown, or the node stopped on an error (which `stop` returns).
        let answer = tokio::select! {
            answer = asked => Some(answer),
            _ = &mut shutdown => None,
            _ = node_ended => None,
        };
        match answer {
            Some(Ok(())) => admission.admit(),
            Some(Err(refused)) => {
                tracing::error!(member = id, data_dir = %config.data_dir.display(), "{refused}");
                stop_early(stop_tx, node, peer_task, http_task).await.unwrap_or_else(stop_failed);
                return Err(refused);
            }
            None => return stop_early(stop_tx, node, peer_task, http_task).await,
        }
    }

    let own = (!crate::config::is_wildcard(&advertised)).then(|| (id, advertised.clone()));
    let client_addrs = Arc::new(RwLock::new(own.into_iter().collect::<BTreeMap<_, _>>()));
    // One check for the member that DNS answers, watch streams, waiting acquires and election
    // observers all ask; often enough for `--dns-max-stale`.
    let freshness = Arc::new(Freshness::new(id, longest_election));
    let ctx = Context {
        freshness,
        node: node.handle(),
        limits: config.limits,
        links: links.clone(),
        initial_cluster: (
            (config.initial_cluster.iter())
                .map(|p| format!("{}={}", p.id, p.peer_addr))
                .collect::<Vec<_>>()
                .join(","),
            config.initial_cluster_token.clone(),
        ),
        first_members: config.initial_cluster.clone(),
        client_addr: advertised,
        peer_addr: peer_addr.clone(),
        dns_addr: dns_addr.clone(),
        client_addrs: client_addrs.clone(),
    };
    let learner = tokio::spawn(learn_members(node.handle(), links.clone(), client_addrs));
    tokio::spawn(upgrade::raise((node.handle(), cluster_id), links.clone(), stopped(stop_rx.clone())));
    tracing::info!(member = id, cluster = %format!("{cluster_id:016x}"), %client_addr, %peer_addr, %http_addr, %dns_addr, data_dir = %config.data_dir.display(), "member started");

    let grpc_metrics =
        GrpcMetricsLayer::new(metrics.clone(), api::METHODS.iter().copied().chain(STANDARD_METHODS));

    let recent =
        match Recent::start(node.handle(), config.watch_window_revisions, metrics.clone(), stop_rx.clone()) {
            Ok(recent) => recent,
            Err(e) => {
                learner.abort();
                stop_early(stop_tx, node, peer_task, http_task).await.unwrap_or_else(stop_failed);
                return Err(ServerError::Watches(e));
            }
        };
    let watches = WatchService::server(
        ctx.clone(),
        recent,
        metrics.clone(),
        stop_rx.clone(),
        config.watch_progress_interval,
    );
    let client_srv = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(CLIENT_PING_INTERVAL))
        .http2_keepalive_timeout(Some(CLIENT_PING_TIMEOUT))
        .max_concurrent_streams(u32::try_from(config.limits.max_concurrent_streams).ok())
        .layer(grpc_metrics)
        .layer(RoutingLayer::new(ctx.clone()))
        .layer(DeadlineLayer)
        .add_service(KvService::server(ctx.clone()))
        .add_service(ClusterService::server(ctx.clone()))
        .add_service(SessionService::server(ctx.clone()))
        .add_service(LockService::server(ctx.clone()))
        .add_service(ElectionService::server(ctx.clone()))
        .add_service(RegistryService::server(ctx.clone()))
        .add_service(MaintenanceService::server(ctx.clone(), stop_rx.clone()))
        .add_service(watches)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(client_incoming, stopped(stop_rx.clone()));
    let keeper = {
        let (fresh, node) = (ctx.freshness.clone(), node.handle());
        let every = (config.dns.max_stale / 4).clamp(freshness::RETRY_EVERY, freshness::CHECK_EVERY);
        tokio::spawn(async move {
            fresh
                .keep(every, || {
                    let node = node.clone();
                    async move { node.read_index_for_freshness().await }
                })
                .await
        })
    };
    let checks_task = tokio::spawn(crate::health::run(ctx.clone(), stop_rx.clone()));
    let dns_task = tokio::spawn(crate::dns::serve(
        node.handle(),
        ctx.freshness.clone(),
        crate::dns::Settings { zone, max_stale: config.dns.max_stale },
        ctx.client_addrs.clone(),
        metrics.clone(),
        listeners.dns,
        stop_rx.clone(),
    ));
    let client_task = tokio::spawn(client_srv);

    let state_check = state_check::watch(
        (node.handle(), cluster_id),
        links.clone(),
        state_hashes,
        config.data_dir.clone(),
        (config.state_check_action, metrics.clone()),
    );
    tokio::pin!(state_check);
    let mut diverged = None;
    let mut watchdog = tokio::time::interval(Duration::from_millis(100));
    let (pulse, mut serving) = (node.handle(), true);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = watchdog.tick() => if node.is_finished() { break },
            found = &mut state_check => {
                tracing::error!(member = id, "{found}");
                diverged = Some(found);
                break;
            }
        }
        // The gRPC health service says what `/health` says: a member stuck on its disk is not
        // SERVING, and is again once it turns.
        let live = pulse.liveness().is_ok();
        if live != serving {
            serving = live;
            let status = if live { ServingStatus::Serving } else { ServingStatus::NotServing };
            for service in SERVICES.into_iter().chain([""]) {
                health.set_service_status(service, status).await;
            }
        }
    }
    // Health watchers hear of the end before the connection goes.
    for service in SERVICES.into_iter().chain([""]) {
        health.set_service_status(service, ServingStatus::NotServing).await;
    }
    let _ = stop_tx.send(true);
    learner.abort();
    keeper.abort();
    checks_task.abort();
    let result =
        tokio::task::spawn_blocking(move || node.stop()).await.unwrap_or(Ok(())).map_err(ServerError::from);
    // A member that forgot entries it acknowledged must not take part again, not even until its
    // leader's next heartbeat: it could vote from its older log. One removed from the cluster
    // takes no part again either (its state may not hold its removal: a peer told it).
    let mark = match &result {
        Err(ServerError::Core(e @ CoreError::ForgotEntries { .. })) => Some((marks::FORGOT_ENTRIES, e)),
        Err(ServerError::Core(e @ CoreError::Removed { mark: true, .. })) => Some((marks::REMOVED, e)),
        _ => None,
    };
    if let Some((name, why)) = mark {
        if let Err(e) = marks::write(&config.data_dir, name, &why.to_string()) {
            tracing::error!(member = id, error = %e, "cannot write {name} into the data dir");
        }
    }
    let _ = dns_task.await;
    for t in [client_task, peer_task] {
        // A graceful close waits for every stream in flight: one whose client holds it open
        // without reading (a snapshot's) would hold the stop for good.
        let abort = t.abort_handle();
        match tokio::time::timeout(STOP_GRACE, t).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Err(_) => {
                tracing::warn!(member = id, "streams still open {STOP_GRACE:?} after the stop: not waited for, they end as the member exits");
                abort.abort();
            }
            Ok(_) => {}
        }
    }
    if let Ok(Err(e)) = http_task.await {
        tracing::warn!(error = %e, "HTTP server ended with an error");
    }
    tracing::info!(member = id, "member stopped");
    match diverged {
        Some(found) => Err(found.into()),
        None => result,
    }
}

/// How long a stopping member's gRPC ports get to close their connections gracefully.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long the ports of a member stopped before it served clients get to close their
/// connections: a peer's message stream with nothing to say holds a graceful close open.
const EARLY_STOP_GRACE: Duration = Duration::from_secs(2);

/// A stop that failed after another error, which is the one `run` returns.
fn stop_failed(e: ServerError) {
    tracing::error!(error = %e, "stopping the member failed too");
}

/// Stops a member that never served clients (refused by its peers, shut down while asking
/// them, or failing to start serving): its node, then its peer and HTTP ports.
async fn stop_early<P, H>(
    stop_tx: tokio::sync::watch::Sender<bool>,
    node: Node,
    peer_task: tokio::task::JoinHandle<P>,
    http_task: tokio::task::JoinHandle<H>,
) -> Result<(), ServerError> {
    let _ = stop_tx.send(true);
    let stopped = tokio::task::spawn_blocking(move || node.stop()).await;
    let (peer_abort, http_abort) = (peer_task.abort_handle(), http_task.abort_handle());
    if tokio::time::timeout(EARLY_STOP_GRACE, peer_task).await.is_err() {
        peer_abort.abort();
    }
    if tokio::time::timeout(EARLY_STOP_GRACE, http_task).await.is_err() {
        http_abort.abort();
    }
    stopped.unwrap_or(Ok(())).map_err(ServerError::from)
}

/// Keeps the members' client addresses (for leader hints) by asking each peer for its status:
/// every second until it answers, then every 5 seconds in case it moved (a member restarted
/// with another `--client-addr` or `--advertise-client-addr` is named by its old address
/// until then).
async fn learn_members(
    node: crate::node::NodeHandle,
    links: Arc<Links>,
    addrs: Arc<RwLock<BTreeMap<u64, String>>>,
) {
    loop {
        let mut all_known = true;
        let peers = links.peers();
        // A member removed from the cluster (forgotten by the transport, `learn_configuration`)
        // is no longer named, by DNS nor as a leader.
        if let Ok(mut m) = addrs.write() {
            m.retain(|id, _| *id == node.member_id || peers.iter().any(|p| p.id == *id));
        }
        for p in peers {
            if node.has_removed(p.id) {
                continue;
            }
            match peer_status(p.id, &p.peer_addr, node.cluster_id, Duration::from_secs(1)).await {
                // A member removed while it heard nothing (a learner sends nothing to be refused)
                // learns it here, and stops.
                Ok(s) if s.removed.contains(&node.member_id) => {
                    node.send(crate::node::Event::RemovedBy(p.id));
                }
                Ok(s) if !s.client_addr.is_empty() => {
                    // Members added in changes this member has still to apply (it may be behind
                    // on them, and one of them may lead).
                    for a in s.added.iter().filter(|a| a.id != node.member_id && !node.has_removed(a.id)) {
                        links.learn(a.id, &a.peer_addr, Source::Recorded);
                    }
                    if let Ok(mut m) = addrs.write() {
                        // A wildcard address names no host: no leader hint, no DNS answer.
                        if crate::config::is_wildcard(&s.client_addr) {
                            m.remove(&p.id);
                        } else {
                            m.insert(p.id, s.client_addr);
                        }
                    }
                }
                _ => all_known = false,
            }
        }
        tokio::time::sleep(Duration::from_secs(if all_known { 5 } else { 1 })).await;
    }
}

/// Teaches the transport where the members added at run time listen, and which members were
/// removed, as this member applies the changes (or installs a snapshot holding them), until
/// `stopped`.
async fn follow_configuration(
    node: crate::node::NodeHandle,
    links: Arc<Links>,
    stopped: impl Future<Output = ()>,
) {
    let mut configurations = node.watch_configuration();
    tokio::pin!(stopped);
    loop {
        learn_configuration(&links, &configurations.borrow_and_update().clone(), node.member_id);
        tokio::select! {
            changed = configurations.changed() => if changed.is_err() { return },
            _ = &mut stopped => return,
        }
    }
}

/// Teaches the transport the addresses of `configuration`'s members added at run time, and
/// has it forget the members removed (their senders stop).
fn learn_configuration(links: &Links, configuration: &core::membership::Configuration, me: u64) {
    for (member, addr) in &configuration.added {
        if *member != me && configuration.has(*member) {
            links.learn(*member, addr, Source::Recorded);
        }
    }
    for member in &configuration.removed {
        links.forget(*member);
    }
}

/// Binds the configured addresses and runs until SIGINT or SIGTERM.
pub async fn run_until_signal(config: Config) -> Result<(), ServerError> {
    let listeners = Listeners::bind(&config).await?;
    run(config, listeners, signal()).await
}

async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The HTTP/2 frame types in `bytes`, in order (what a server sent on a connection).
    fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
        let mut types = Vec::new();
        while bytes.len() >= 9 {
            let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            types.push(bytes[3]);
            bytes = &bytes[(9 + len).min(bytes.len())..];
        }
        types
    }

    /// A peer that goes silent mid-connection — its host gone, or its process stopped — is
    /// pinged and, unanswered, cut off within the pings' interval and timeout, not kept (with
    /// whatever its calls hold) until the kernel gives up.
    #[tokio::test(start_paused = true)]
    async fn the_peer_port_closes_a_connection_that_stops_answering_its_pings() {
        const PING: u8 = 0x6;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("a bound address");
        let (_, health) = tonic_health::server::health_reporter();
        let incoming = sockets::accepted(listener).expect("accepting");
        tokio::spawn(peer_port().add_service(health).serve_with_incoming(incoming));

        let mut peer = tokio::net::TcpStream::connect(addr).await.expect("connect to the port");
        // An HTTP/2 client's preface and an empty SETTINGS frame; then it reads, answers nothing.
        peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .expect("write the preface");
        let started = tokio::time::Instant::now();
        let mut sent = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3600), peer.read_to_end(&mut sent)).await;
        let took = started.elapsed();
        assert!(read.is_ok(), "the port kept a connection that answered no ping for an hour");
        assert!(
            frame_types(&sent).contains(&PING),
            "the port closed the connection without pinging it first; it sent frames {:?}",
            frame_types(&sent)
        );
        let most = PEER_PING_INTERVAL + PEER_PING_TIMEOUT + Duration::from_secs(1);
        assert!(
            took >= PEER_PING_INTERVAL && took <= most,
            "closed after {took:?}: expected between the ping interval ({PEER_PING_INTERVAL:?}) and \
             interval + timeout ({most:?})"
        );
    }
}
