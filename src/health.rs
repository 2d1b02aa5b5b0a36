//! Active health checks (DESIGN.md §2 `health/`): on the leader only, every instance with an
//! HTTP or TCP check is probed every `interval_ms`, each probe bounded by `timeout_ms`; a result
//! that differs from the stored health is proposed as `SetHealth` for the registration it
//! probed. An unchanged result writes nothing.
//!
//! Invariants:
//! - Only the member that leads probes; one that stops leading forgets its schedule (a new
//!   leader starts its own, probing every instance at once).
//! - A result is proposed for the registration it probed (`registered_revision`) and in the
//!   term its member led when it probed: one that crossed a re-registration in the log, or that
//!   a deposed leader's proposal carried into its successor's term, is a no-op in the state
//!   machine.
//! - At most `MAX_PROBES_IN_FLIGHT` probes run at once; an instance has at most one in flight;
//!   the probes due longest go first, so slow ones cannot starve the rest.
//! - A probe's slot is held until its name lookup (getaddrinfo, on tokio's blocking pool, which
//!   a timeout cannot stop) ended, and an instance is not probed again before (within one
//!   schedule: a new term or registration starts afresh): names that resolve slowly hold at
//!   most `MAX_PROBES_IN_FLIGHT` of the blocking pool's threads, which snapshots, scans and
//!   watch catch-ups share. The price: while a resolver drops queries, that many lookups delay
//!   (in due order, not starve) the probes of the other instances.
//!   Memory: one schedule entry per probed instance.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use latch_proto::internal::{check, command::Body, Check, Health, InstanceRow, SetHealth};
use redb::ReadableDatabase as _;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::api::Context;
use crate::fsm::registry;

/// How often the schedule is looked at, and how often the registry is read again (new and
/// changed registrations, and the stored health a result is compared with: a result whose
/// proposal was lost is proposed again once the stored health says it did not change).
const TURN: Duration = Duration::from_millis(100);
const RESCAN_EVERY: Duration = Duration::from_secs(1);
const MAX_PROBES_IN_FLIGHT: usize = 64;

struct Probed {
    registered_revision: i64,
    check: Check,
    health: i32,
    /// It was never checked (its output says it awaits its first check): the first result is
    /// proposed even when it leaves the health as it is.
    first: bool,
    next_at: Instant,
    in_flight: bool,
    /// The last probe's slot, alive until the probe and its name lookup ended.
    slot: Weak<OwnedSemaphorePermit>,
}

/// What one probe found, in the term its member led when it probed.
struct Finding {
    key: Vec<u8>,
    term: u64,
    registered_revision: i64,
    health: Health,
    output: String,
}

/// Runs the checker until `stop` says so.
pub async fn run(ctx: Context, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut schedule: BTreeMap<Vec<u8>, Probed> = BTreeMap::new();
    let permits = Arc::new(Semaphore::new(MAX_PROBES_IN_FLIGHT));
    let (found_tx, mut found) = mpsc::unbounded_channel::<Finding>();
    let mut ticker = tokio::time::interval(TURN);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scanned: Option<Instant> = None;
    // The term the schedule was built in: a finding of another term is dropped. Its SetHealth
    // would be voided by the fsm, yet noted as the health last read, the next term's probe
    // finding the same would propose nothing until the next rescan.
    let mut schedule_term = 0;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            Some(f) = found.recv() => {
                if f.term == schedule_term {
                    report(&ctx, &mut schedule, f);
                }
                continue;
            }
            _ = ticker.tick() => {}
        }
        let status = ctx.node.status();
        if status.leader != ctx.node.member_id || status.term != schedule_term {
            schedule.clear();
            scanned = None;
            schedule_term = status.term;
            if status.leader != ctx.node.member_id {
                continue;
            }
        }
        let now = Instant::now();
        if scanned.is_none_or(|at| now.duration_since(at) >= RESCAN_EVERY) {
            match rescan(&ctx, &mut schedule, now) {
                Ok(()) => scanned = Some(now),
                Err(e) => tracing::warn!(error = %e, "health checks: reading the registry failed"),
            }
        }
        // The longest-waiting first, so that probes that hang until their timeout cannot keep
        // the others from their turn.
        let mut due: Vec<(Instant, Vec<u8>)> = schedule
            .iter()
            .filter(|(_, p)| !p.in_flight && p.slot.strong_count() == 0 && p.next_at <= now)
            .map(|(key, p)| (p.next_at, key.clone()))
            .collect();
        due.sort();
        for (_, key) in due {
            let Ok(permit) = permits.clone().try_acquire_owned() else { break };
            let Some(p) = schedule.get_mut(&key) else { continue };
            let slot = Arc::new(permit);
            p.in_flight = true;
            p.slot = Arc::downgrade(&slot);
            p.next_at = now + Duration::from_millis(p.check.interval_ms);
            let (check, registered_revision, tx) = (p.check.clone(), p.registered_revision, found_tx.clone());
            let term = status.term;
            tokio::spawn(async move {
                let (health, output) = probe(&check, &slot).await;
                drop(slot);
                let _ = tx.send(Finding { key, term, registered_revision, health, output });
            });
        }
    }
}

/// Brings the schedule in line with the registry: new or re-registered probed instances are
/// due at once; gone ones are dropped.
fn rescan(
    ctx: &Context,
    schedule: &mut BTreeMap<Vec<u8>, Probed>,
    now: Instant,
) -> Result<(), crate::fsm::FsmError> {
    let txn = ctx.node.db().begin_read().map_err(|e| crate::fsm::FsmError::Corrupt(e.to_string()))?;
    let rows = registry::list(&txn, "", |row| {
        matches!(registry::kind_of(row), check::Kind::Http | check::Kind::Tcp)
    })?;
    let mut next = BTreeMap::new();
    for row in rows {
        let Some(i) = row.instance.as_ref() else { continue };
        let key = registry::instance_key(&i.service, &i.id);
        let check = row.check.clone().unwrap_or_default();
        let entry = match schedule.remove(&key) {
            Some(mut p) if p.registered_revision == row.registered_revision && p.check == check => {
                p.health = row.health;
                p.first = row.output == registry::AWAITING_FIRST_CHECK;
                p
            }
            _ => fresh(&row, check, now),
        };
        next.insert(key, entry);
    }
    *schedule = next;
    Ok(())
}

fn fresh(row: &InstanceRow, check: Check, now: Instant) -> Probed {
    Probed {
        registered_revision: row.registered_revision,
        check,
        health: row.health,
        first: row.output == registry::AWAITING_FIRST_CHECK,
        next_at: now,
        in_flight: false,
        slot: Weak::new(),
    }
}

/// Proposes a finding that differs from the health last read, and notes it.
fn report(ctx: &Context, schedule: &mut BTreeMap<Vec<u8>, Probed>, f: Finding) {
    let Some(p) = schedule.get_mut(&f.key) else { return };
    if p.registered_revision != f.registered_revision {
        // A probe of a registration since replaced: its own probe is scheduled apart.
        return;
    }
    p.in_flight = false;
    if p.health == f.health as i32 && !p.first {
        return;
    }
    p.first = false;
    let Some((service, id)) = registry::split_key(&f.key) else { return };
    p.health = f.health as i32;
    let body = Body::SetHealth(SetHealth {
        service: service.to_string(),
        id: id.to_string(),
        registered_revision: f.registered_revision,
        health: f.health as i32,
        output: f.output,
        term: f.term,
    });
    let ctx = ctx.clone();
    tokio::spawn(async move {
        if let Err(e) = ctx.write("", body).await {
            // The next rescan reads the stored health again, and the next probe proposes anew.
            tracing::debug!(error = %e, "health checks: proposing a result failed");
        }
    });
}

/// Probes once, in `slot`: (health, what it found).
async fn probe(check: &Check, slot: &Arc<OwnedSemaphorePermit>) -> (Health, String) {
    let timeout = Duration::from_millis(check.timeout_ms.max(1));
    let run = async {
        match check::Kind::try_from(check.kind) {
            Ok(check::Kind::Tcp) => connect(&check.tcp_address, slot)
                .await
                .map(|_| "TCP connect succeeded".to_string())
                .map_err(|e| format!("TCP connect to {}: {e}", check.tcp_address)),
            Ok(check::Kind::Http) => http_get(&check.url, slot).await,
            _ => Err("not an active check".to_string()),
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(output)) => (Health::Passing, output),
        Ok(Err(output)) => (Health::Critical, output),
        Err(_) => (Health::Critical, format!("no answer within {} ms", check.timeout_ms)),
    }
}

/// A connection to `host_port` (an address, or a name looked up on the blocking pool in
/// `slot`, which the lookup keeps until it ended, however long that is).
async fn connect(host_port: &str, slot: &Arc<OwnedSemaphorePermit>) -> std::io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = match host_port.parse() {
        Ok(addr) => vec![addr],
        Err(_) => {
            let (name, slot) = (host_port.to_string(), slot.clone());
            let lookup = tokio::task::spawn_blocking(move || {
                let _slot = slot;
                name.to_socket_addrs().map(Vec::from_iter)
            });
            lookup.await.map_err(std::io::Error::other)??
        }
    };
    TcpStream::connect(&addrs[..]).await
}

/// GET `url` (http:// only), in `slot`: Ok with the status when it is 2xx.
async fn http_get(url: &str, slot: &Arc<OwnedSemaphorePermit>) -> Result<String, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    // `Uri::host` keeps an IPv6 address's brackets.
    let host_port = format!("{host}:{port}");
    let stream = connect(&host_port, slot).await.map_err(|e| format!("HTTP GET {url}: connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP GET {url}: {e}"))?;
    let driver = tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, host_port)
        .header(hyper::header::USER_AGENT, "latch-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("HTTP GET {url}: {e}"))?;
    let answer = sender.send_request(req).await;
    driver.abort();
    let status = answer.map_err(|e| format!("HTTP GET {url}: {e}"))?.status();
    let said = format!("HTTP GET {url}: {status}");
    if status.is_success() {
        Ok(said)
    } else {
        Err(said)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-line HTTP server answering every request with `status`.
    async fn server(status: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("has an address");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        addr.to_string()
    }

    /// A probe's slot.
    fn slot() -> Arc<OwnedSemaphorePermit> {
        Arc::new(Arc::new(Semaphore::new(1)).try_acquire_owned().expect("a free slot"))
    }

    fn http(url: String) -> Check {
        Check {
            kind: check::Kind::Http as i32,
            url,
            interval_ms: 1_000,
            timeout_ms: 1_000,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn an_http_check_passes_on_2xx_and_fails_otherwise_saying_why() {
        let ok = server("200 OK").await;
        let (h, out) = probe(&http(format!("http://{ok}/health")), &slot()).await;
        assert_eq!(h, Health::Passing, "200 passes: {out}");
        let bad = server("503 Service Unavailable").await;
        let (h, out) = probe(&http(format!("http://{bad}/health")), &slot()).await;
        assert_eq!(h, Health::Critical, "503 fails");
        assert!(out.contains("503"), "the output names the status: {out}");
    }

    #[tokio::test]
    async fn a_tcp_check_passes_when_it_connects_and_fails_when_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("has an address").to_string();
        let tcp = |a: &str| Check {
            kind: check::Kind::Tcp as i32,
            tcp_address: a.into(),
            interval_ms: 1_000,
            timeout_ms: 1_000,
            ..Default::default()
        };
        assert_eq!(probe(&tcp(&addr), &slot()).await.0, Health::Passing);
        // A name is looked up in the probe's slot, which it gives back once the lookup ended.
        let port = addr.rsplit_once(':').expect("host:port").1;
        let held = slot();
        let (h, out) = probe(&tcp(&format!("localhost:{port}")), &held).await;
        assert_eq!(h, Health::Passing, "a name resolving to the listener passes: {out}");
        assert_eq!(Arc::strong_count(&held), 1, "the lookup gave the slot back");
        drop(listener);
        let (h, out) = probe(&tcp(&addr), &slot()).await;
        assert_eq!(h, Health::Critical, "refused fails");
        assert!(out.contains(&addr), "the output names the target: {out}");
    }
}
