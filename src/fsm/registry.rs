//! The registry domain: service instances, each with a health status (DESIGN.md §3). An
//! instance is `(service, id)`, stored under the key `service/id`; its health comes from one
//! check: its session (SESSION), heartbeats (TTL), or the leader's probes (HTTP, TCP). Time
//! enters only through the log: the leader proposes `MarkCritical` when a heartbeat is overdue
//! on its clock, `SetHealth` when a probe's result differs from the stored health, and `Reap`
//! when an instance has been critical for its `deregister_after_ms` (`core::instance_timers`,
//! `health`).
//!
//! Invariants:
//! - `registry` holds every registered instance; a row's key is `service/id` of its instance,
//!   which passes [`check_instance`], and its check passes [`check_check`].
//! - `session_instances` names exactly the instances bound to a session, each under its
//!   session, and only live sessions. A session's end removes them, in its revision.
//! - A row is CRITICAL iff `critical_since != 0`; only TTL, HTTP and TCP checks turn critical.
//! - Every change a reader can see (register, deregister, health, a check's output, removal)
//!   raises one revision and is recorded in the history (space REGISTRY) as the row after it;
//!   a heartbeat that changes neither the health nor the output writes only its count, without
//!   a revision (like a session's checkpoint).
//! - `MarkCritical`, `SetHealth` and `Reap` carry what the leader saw (registration and
//!   heartbeat count, registration, critical-since revision): one that crossed a newer change in the log is a
//!   no-op, so no heartbeat, registration or recovery is ever overridden by a stale verdict.

use latch_proto::internal::{
    check, outcome, Check, Deregister, Health, Heartbeat, Instance, InstanceRow, MarkCritical, NotFound,
    Reap, Register, RegistryResult, SetHealth,
};
use std::ops::{Bound, ControlFlow};

use super::tables::Tables;
use prost::Message;
use redb::{ReadTransaction, ReadableTable};

use super::apply::{Apply, InstanceChange, InstanceTimer};
use super::history::Space;
use super::{open_read, sessions, Applied, Domain, FsmError, TableDef};
use crate::storage::schema::{REGISTRY, SESSION_INSTANCES};

/// The separator of service and id in a registry key (never part of either).
pub const KEY_SEPARATOR: u8 = b'/';
/// Most tags of an instance, and most entries of its meta.
pub const MAX_TAGS: usize = 64;
pub const MAX_META: usize = 64;
pub const MAX_META_KEY_BYTES: usize = 128;
pub const MAX_META_VALUE_BYTES: usize = 512;
/// Most bytes of a check's output kept.
pub const MAX_OUTPUT_BYTES: usize = 1024;
/// Bounds of a check's durations, and its defaults.
pub const MIN_TTL_MS: u64 = 100;
pub const MAX_TTL_MS: u64 = 24 * 3600 * 1000;
pub const MIN_INTERVAL_MS: u64 = 100;
pub const MAX_INTERVAL_MS: u64 = 3600 * 1000;
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// The longest a probe may wait: the leader runs a bounded number at once, and probes that
/// hang to a long timeout would hold every place for that long.
pub const MAX_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_DEREGISTER_AFTER_MS: u64 = 3600 * 1000;
pub const MIN_DEREGISTER_AFTER_MS: u64 = 1_000;
pub const MAX_DEREGISTER_AFTER_MS: u64 = 30 * 24 * 3600 * 1000;

/// What an instance registered with an active check says until the leader first checks it.
pub const AWAITING_FIRST_CHECK: &str = "awaiting its first check";

pub(crate) struct RegistryDomain;

impl Domain for RegistryDomain {
    fn name(&self) -> &'static str {
        "registry"
    }

    fn tables(&self) -> &'static [TableDef] {
        &[REGISTRY, SESSION_INSTANCES]
    }

    fn check_row(&self, table: &str, key: &[u8], value: &[u8], at: &Applied) -> Result<(), FsmError> {
        let corrupt = |why: String| FsmError::Corrupt(format!("table {table}, key {:?}: {why}", show(key)));
        if table == "registry" {
            let row = decode_row(key, value)?;
            if row.mod_revision > at.revision || row.registered_revision > row.mod_revision {
                return Err(corrupt(format!(
                    "impossible revisions: registered {}, modified {}, store at {}",
                    row.registered_revision, row.mod_revision, at.revision
                )));
            }
        } else {
            let ok = key.iter().position(|b| *b == 0).is_some_and(|at| {
                sessions::check_id(&key[..at]).is_ok() && split_key(&key[at + 1..]).is_some()
            });
            if !ok || !value.is_empty() {
                return Err(corrupt("not a session id, a 0 byte and an instance key, with no value".into()));
            }
        }
        Ok(())
    }
}

/// A problem with a request's field: (field, what is wrong).
pub type FieldError = (&'static str, String);

/// Whether `s` is a DNS label as service names and instance ids must be: 1 to 63 of a-z, 0-9
/// and '-', not beginning or ending with '-'.
pub fn check_label(field: &'static str, s: &str) -> Result<(), FieldError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err((field, format!("{s:?} is not 1 to 63 of a-z, 0-9 and '-' (not first or last)")))
    }
}

/// Whether `tag` can tag an instance: 1 to 63 of A-Z, a-z, 0-9, '_' and '-'.
pub fn check_tag(tag: &str) -> Result<(), FieldError> {
    let ok = !tag.is_empty()
        && tag.len() <= 63
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(("tags", format!("{tag:?} is not 1 to 63 of A-Z, a-z, 0-9, '_' and '-'")))
    }
}

/// Whether `address` is an IPv4 or IPv6 address or a host name (labels of letters, digits and
/// '-', at most 253 bytes).
pub fn check_address(address: &str) -> Result<(), FieldError> {
    if address.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let name = address.strip_suffix('.').unwrap_or(address);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(("address", format!("{address:?} is neither an IP address nor a host name")))
    }
}

/// Checks an instance's fields.
pub fn check_instance(i: &Instance) -> Result<(), FieldError> {
    check_label("service", &i.service)?;
    check_label("id", &i.id)?;
    check_address(&i.address)?;
    if i.port > u32::from(u16::MAX) {
        return Err(("port", format!("{} is over 65535", i.port)));
    }
    if i.weight > u32::from(u16::MAX) {
        return Err(("weight", format!("{} is over 65535", i.weight)));
    }
    if i.tags.len() > MAX_TAGS {
        return Err(("tags", format!("{} tags, over the limit of {MAX_TAGS}", i.tags.len())));
    }
    for t in &i.tags {
        check_tag(t)?;
    }
    if i.meta.len() > MAX_META {
        return Err(("meta", format!("{} entries, over the limit of {MAX_META}", i.meta.len())));
    }
    for (k, v) in &i.meta {
        if k.is_empty() || k.len() > MAX_META_KEY_BYTES || v.len() > MAX_META_VALUE_BYTES {
            return Err((
                "meta",
                format!(
                    "entry {k:?}: keys are 1 to {MAX_META_KEY_BYTES} bytes, values at most {MAX_META_VALUE_BYTES}"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a health check and fills in its defaults; what it returns passes again unchanged.
pub fn check_check(c: &Check) -> Result<Check, FieldError> {
    let kind = check::Kind::try_from(c.kind)
        .map_err(|_| ("check.kind", format!("{} is none of SESSION, TTL, HTTP, TCP", c.kind)))?;
    let mut out = Check { kind: c.kind, ..Default::default() };
    let within = |field: &'static str, v: u64, min: u64, max: u64| -> Result<u64, FieldError> {
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err((field, format!("{v} ms is outside {min} … {max} ms")))
        }
    };
    let or = |v: u64, default: u64| if v == 0 { default } else { v };
    match kind {
        check::Kind::Session => return Ok(out),
        check::Kind::Ttl => out.ttl_ms = within("check.ttl_ms", c.ttl_ms, MIN_TTL_MS, MAX_TTL_MS)?,
        check::Kind::Http | check::Kind::Tcp => {
            if kind == check::Kind::Http {
                check_url(&c.url)?;
                out.url = c.url.clone();
            } else {
                check_host_port(&c.tcp_address)?;
                out.tcp_address = c.tcp_address.clone();
            }
            out.interval_ms = within(
                "check.interval_ms",
                or(c.interval_ms, DEFAULT_INTERVAL_MS),
                MIN_INTERVAL_MS,
                MAX_INTERVAL_MS,
            )?;
            let timeout = or(c.timeout_ms, DEFAULT_TIMEOUT_MS.min(out.interval_ms));
            out.timeout_ms = within("check.timeout_ms", timeout, 1, out.interval_ms.min(MAX_TIMEOUT_MS))?;
        }
    }
    out.deregister_after_ms = within(
        "check.deregister_after_ms",
        or(c.deregister_after_ms, DEFAULT_DEREGISTER_AFTER_MS),
        MIN_DEREGISTER_AFTER_MS,
        MAX_DEREGISTER_AFTER_MS,
    )?;
    Ok(out)
}

/// An HTTP check's URL: `http://host:port/path` (no TLS: an `https` check needs a client this
/// build does not carry).
fn check_url(url: &str) -> Result<(), FieldError> {
    let bad = |why: &str| Err(("check.url", format!("{url:?}: {why}")));
    let Some(rest) = url.strip_prefix("http://") else {
        return bad("must begin with http:// (https checks are not supported)");
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("must name a host, have no spaces, and be at most 2048 bytes");
    }
    Ok(())
}

/// A TCP check's target: `host:port`.
fn check_host_port(address: &str) -> Result<(), FieldError> {
    let ok = address.rsplit_once(':').is_some_and(|(host, port)| {
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        port.parse::<u16>().is_ok_and(|p| p != 0) && check_address(host).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(("check.tcp_address", format!("{address:?} is not host:port")))
    }
}

/// The registry key of an instance: `service/id`.
pub fn instance_key(service: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(service.len() + 1 + id.len());
    k.extend_from_slice(service.as_bytes());
    k.push(KEY_SEPARATOR);
    k.extend_from_slice(id.as_bytes());
    k
}

/// A registry key as (service, id).
pub fn split_key(key: &[u8]) -> Option<(&str, &str)> {
    let s = std::str::from_utf8(key).ok()?;
    let (service, id) = s.split_once(KEY_SEPARATOR as char)?;
    (check_label("service", service).is_ok() && check_label("id", id).is_ok()).then_some((service, id))
}

/// Applies a registration; `fresh_period` (command version 6 on): a critical instance
/// registered again with the same check starts its deregister period anew.
pub(crate) fn register(
    ap: &mut Apply,
    req: Register,
    fresh_period: bool,
) -> Result<outcome::Result, FsmError> {
    let Some(instance) = req.instance else {
        return Ok(rejected("register: instance is missing"));
    };
    if let Err((field, why)) = check_instance(&instance) {
        return Ok(rejected(&format!("register: instance.{field}: {why}")));
    }
    let check = match check_check(&req.check.unwrap_or_default()) {
        Ok(c) => c,
        Err((field, why)) => return Ok(rejected(&format!("register: {field}: {why}"))),
    };
    if !req.session.is_empty() && !sessions::exists(ap.tables, &req.session)? {
        return Ok(sessions::not_found(req.session));
    }
    let key = instance_key(&instance.service, &instance.id);
    let old = read_row(ap.tables, &key)?;
    let revision = ap.write_revision()?;
    let kind = check::Kind::try_from(check.kind).unwrap_or(check::Kind::Session);
    let mut row = InstanceRow {
        instance: Some(instance),
        session: req.session,
        check: Some(check.clone()),
        registered_revision: revision,
        mod_revision: revision,
        ..Default::default()
    };
    match (kind, &old) {
        // A probed instance registered again with the same check keeps what its probes found;
        // if that is critical, it is critical since this registration (as a new one is), or a
        // process restarting an hour into its instance's critical spell would see it removed
        // a moment after it registered.
        (check::Kind::Http | check::Kind::Tcp, Some(old)) if old.check.as_ref() == Some(&check) => {
            row.health = old.health;
            row.output = old.output.clone();
            row.critical_since = if fresh_period && old.health == Health::Critical as i32 {
                revision
            } else {
                old.critical_since
            };
        }
        (check::Kind::Http | check::Kind::Tcp, _) => {
            row.health = Health::Critical as i32;
            row.output = AWAITING_FIRST_CHECK.into();
            row.critical_since = revision;
        }
        // A registration is a heartbeat.
        (check::Kind::Ttl, _) => row.beats = old.as_ref().map_or(0, |o| o.beats + 1),
        (check::Kind::Session, _) => {}
    }
    let old_session = old.as_ref().map(|o| o.session.as_str()).unwrap_or("");
    if old_session != row.session {
        let mut index = ap.tables.open(SESSION_INSTANCES)?;
        if !old_session.is_empty() {
            index.remove(index_key(old_session, &key).as_slice())?;
        }
        if !row.session.is_empty() {
            index.insert(index_key(&row.session, &key).as_slice(), [].as_slice())?;
        }
    }
    write(ap, &key, &row)?;
    Ok(result(Some(row), true))
}

pub(crate) fn deregister(ap: &mut Apply, req: Deregister) -> Result<outcome::Result, FsmError> {
    let key = instance_key(&req.service, &req.id);
    match read_row(ap.tables, &key)? {
        None => Ok(not_found(&req.service, &req.id)),
        Some(row) => {
            ap.write_revision()?;
            remove(ap, &key, &row)?;
            Ok(result(None, true))
        }
    }
}

pub(crate) fn heartbeat(ap: &mut Apply, req: Heartbeat) -> Result<outcome::Result, FsmError> {
    let key = instance_key(&req.service, &req.id);
    let Some(mut row) = read_row(ap.tables, &key)? else {
        return Ok(not_found(&req.service, &req.id));
    };
    if kind_of(&row) != check::Kind::Ttl {
        return Ok(rejected(&format!(
            "heartbeat: instance {}/{} has a {} check, not a TTL check",
            req.service,
            req.id,
            kind_of(&row).as_str_name()
        )));
    }
    if req.output.len() > MAX_OUTPUT_BYTES {
        return Ok(rejected(&format!("heartbeat: output is over {MAX_OUTPUT_BYTES} bytes")));
    }
    row.beats += 1;
    if row.health == Health::Critical as i32 || row.output != req.output {
        // A change a reader sees (health, or what the check says): a revision.
        row.health = Health::Passing as i32;
        row.critical_since = 0;
        row.output = req.output;
        row.mod_revision = ap.write_revision()?;
        write(ap, &key, &row)?;
    } else {
        // Only the heartbeat count moved, which no reader sees: no revision.
        ap.tables.open(REGISTRY)?.insert(key.as_slice(), row.encode_to_vec().as_slice())?;
        ap.instance_changed(InstanceChange { key, timer: timer_of(&row) });
    }
    Ok(result(Some(row), true))
}

pub(crate) fn mark_critical(ap: &mut Apply, req: MarkCritical) -> Result<outcome::Result, FsmError> {
    let key = instance_key(&req.service, &req.id);
    let Some(mut row) = read_row(ap.tables, &key)? else {
        return Ok(not_found(&req.service, &req.id));
    };
    let counted = row.registered_revision == req.registered_revision && row.beats == req.beats;
    if kind_of(&row) != check::Kind::Ttl || row.health != Health::Passing as i32 || !counted {
        return Ok(result(Some(row), false));
    }
    let ttl_ms = row.check.as_ref().map_or(0, |c| c.ttl_ms);
    row.health = Health::Critical as i32;
    row.critical_since = ap.write_revision()?;
    row.mod_revision = row.critical_since;
    row.output = format!("no heartbeat within its TTL of {ttl_ms} ms");
    write(ap, &key, &row)?;
    Ok(result(Some(row), true))
}

/// Applies a probe's result proposed by the leader of `req.term`, in an entry of `term`.
pub(crate) fn set_health(ap: &mut Apply, req: SetHealth, term: u64) -> Result<outcome::Result, FsmError> {
    let key = instance_key(&req.service, &req.id);
    let Some(mut row) = read_row(ap.tables, &key)? else {
        return Ok(not_found(&req.service, &req.id));
    };
    let Ok(health) = Health::try_from(req.health) else {
        return Ok(rejected(&format!("set_health: health {} is unknown", req.health)));
    };
    let probed = matches!(kind_of(&row), check::Kind::Http | check::Kind::Tcp);
    // The first result is written even when it leaves the health as it was (critical), so
    // that the output says what the check found rather than that it was never run.
    let unchanged = row.health == health as i32 && row.output != AWAITING_FIRST_CHECK;
    // A result of another term is a deposed leader's, forwarded: void (as an expiry's is).
    if !probed || row.registered_revision != req.registered_revision || unchanged || req.term != term {
        return Ok(result(Some(row), false));
    }
    let revision = ap.write_revision()?;
    if row.health != health as i32 {
        row.critical_since = if health == Health::Critical { revision } else { 0 };
    }
    row.health = health as i32;
    row.mod_revision = revision;
    row.output = truncate(req.output, MAX_OUTPUT_BYTES);
    write(ap, &key, &row)?;
    Ok(result(Some(row), true))
}

pub(crate) fn reap(ap: &mut Apply, req: Reap) -> Result<outcome::Result, FsmError> {
    let key = instance_key(&req.service, &req.id);
    let Some(row) = read_row(ap.tables, &key)? else {
        return Ok(not_found(&req.service, &req.id));
    };
    if row.health != Health::Critical as i32 || row.critical_since != req.critical_since {
        return Ok(result(Some(row), false));
    }
    ap.write_revision()?;
    remove(ap, &key, &row)?;
    Ok(result(None, true))
}

/// Removes every instance of session `id` (ending, at the write revision); how many.
pub(crate) fn session_ended(ap: &mut Apply, id: &str) -> Result<u64, FsmError> {
    let keys = owned(ap.tables, id)?;
    for key in &keys {
        let Some(row) = read_row(ap.tables, key)? else {
            return Err(FsmError::Corrupt(format!(
                "table session_instances: session {id:?} owns instance {:?}, which does not exist",
                show(key)
            )));
        };
        remove(ap, key, &row)?;
    }
    Ok(keys.len() as u64)
}

fn write(ap: &mut Apply, key: &[u8], row: &InstanceRow) -> Result<(), FsmError> {
    let bytes = row.encode_to_vec();
    ap.tables.open(REGISTRY)?.insert(key, bytes.as_slice())?;
    ap.state_changed(Space::Registry, key, Some(bytes))?;
    ap.instance_changed(InstanceChange { key: key.to_vec(), timer: timer_of(row) });
    Ok(())
}

fn remove(ap: &mut Apply, key: &[u8], row: &InstanceRow) -> Result<(), FsmError> {
    ap.tables.open(REGISTRY)?.remove(key)?;
    if !row.session.is_empty() {
        ap.tables.open(SESSION_INSTANCES)?.remove(index_key(&row.session, key).as_slice())?;
    }
    ap.state_changed(Space::Registry, key, None)?;
    ap.instance_changed(InstanceChange { key: key.to_vec(), timer: None });
    Ok(())
}

/// The leader's timer an instance row calls for: a TTL check's next heartbeat while passing,
/// the removal of a critical instance.
pub fn timer_of(row: &InstanceRow) -> Option<InstanceTimer> {
    let check = row.check.as_ref()?;
    if row.health == Health::Critical as i32 {
        return Some(InstanceTimer::Reap {
            since_revision: row.critical_since,
            after_ms: check.deregister_after_ms,
        });
    }
    (kind_of(row) == check::Kind::Ttl).then_some(InstanceTimer::Heartbeat {
        ttl_ms: check.ttl_ms,
        beats: row.beats,
        registered_revision: row.registered_revision,
    })
}

pub fn kind_of(row: &InstanceRow) -> check::Kind {
    row.check.as_ref().and_then(|c| check::Kind::try_from(c.kind).ok()).unwrap_or(check::Kind::Session)
}

pub fn is_passing(row: &InstanceRow) -> bool {
    row.health == Health::Passing as i32
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
    s
}

fn result(instance: Option<InstanceRow>, changed: bool) -> outcome::Result {
    outcome::Result::Registry(RegistryResult { instance: instance.map(Box::new), changed })
}

fn rejected(why: &str) -> outcome::Result {
    outcome::Result::Rejected(why.to_string())
}

fn not_found(service: &str, id: &str) -> outcome::Result {
    outcome::Result::NotFound(NotFound { kind: "instance".into(), name: format!("{service}/{id}") })
}

fn read_row(tables: &Tables, key: &[u8]) -> Result<Option<InstanceRow>, FsmError> {
    match tables.open(REGISTRY)?.get(key)? {
        Some(v) => Ok(Some(decode_row(key, v.value())?)),
        None => Ok(None),
    }
}

/// One instance, as stored.
pub fn get(txn: &ReadTransaction, service: &str, id: &str) -> Result<Option<InstanceRow>, FsmError> {
    let Some(table) = open_read(txn, REGISTRY)? else { return Ok(None) };
    let key = instance_key(service, id);
    match table.get(key.as_slice())? {
        Some(v) => Ok(Some(decode_row(&key, v.value())?)),
        None => Ok(None),
    }
}

/// The instances of `service` (every service when empty), in key order, that `keep` keeps.
pub fn list(
    txn: &ReadTransaction,
    service: &str,
    mut keep: impl FnMut(&InstanceRow) -> bool,
) -> Result<Vec<InstanceRow>, FsmError> {
    let mut out = Vec::new();
    visit(txn, service, Start::First, |row| {
        if keep(&row) {
            out.push(row);
        }
        ControlFlow::Continue(())
    })?;
    Ok(out)
}

/// Where a walk of the registry starts (a page's: after the last row or service of the page
/// before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start<'a> {
    First,
    /// After the instance `service/id`.
    AfterInstance(&'a str, &'a str),
    /// After every instance of the service.
    AfterService(&'a str),
}

/// Hands the instances of `service` (every service when empty) to `f` in key order from
/// `from`, one at a time, until it breaks: a caller that answers within a bound holds no more
/// than it answers.
pub fn visit(
    txn: &ReadTransaction,
    service: &str,
    from: Start<'_>,
    mut f: impl FnMut(InstanceRow) -> ControlFlow<()>,
) -> Result<(), FsmError> {
    let Some(table) = open_read(txn, REGISTRY)? else { return Ok(()) };
    let (mut start, mut end) = (Bound::Unbounded, Bound::Unbounded);
    if !service.is_empty() {
        let (first, past) = service_span(service);
        (start, end) = (Bound::Included(first), Bound::Excluded(past));
    }
    let after = match from {
        Start::First => Bound::Unbounded,
        Start::AfterInstance(service, id) => Bound::Excluded(instance_key(service, id)),
        // Every key of the service is below its span's end and every later key at or above it.
        Start::AfterService(service) => Bound::Included(service_span(service).1),
    };
    let start = later(start, after);
    if let (Bound::Included(s) | Bound::Excluded(s), Bound::Excluded(e)) = (&start, &end) {
        if s >= e {
            return Ok(());
        }
    }
    let bounds = (bound_ref(&start), bound_ref(&end));
    for row in table.range::<&[u8]>(bounds)? {
        let (k, v) = row?;
        if f(decode_row(k.value(), v.value())?).is_break() {
            break;
        }
    }
    Ok(())
}

/// The later of two lower bounds (at the same key, the one that excludes it).
fn later(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    use Bound::{Excluded, Included, Unbounded};
    match (&a, &b) {
        (Unbounded, _) => b,
        (_, Unbounded) => a,
        (Included(x) | Excluded(x), Included(y) | Excluded(y)) => {
            if x > y || (x == y && matches!(a, Excluded(_))) {
                a
            } else {
                b
            }
        }
    }
}

fn bound_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    b.as_ref().map(Vec::as_slice)
}

/// One page of the instances whose keys `key`/`range_end` select (as keys are selected), from
/// `from` (inclusive; `key` when empty): at most `limit` rows and about `max_bytes`, and
/// whether more follow. For a watch's snapshot of the registry.
pub fn read_page(
    txn: &ReadTransaction,
    key: &[u8],
    range_end: &[u8],
    from: &[u8],
    limit: usize,
    max_bytes: usize,
) -> Result<(Vec<InstanceRow>, bool), FsmError> {
    let mut rows = Vec::new();
    let Some(table) = open_read(txn, REGISTRY)? else { return Ok((rows, false)) };
    let Some((start, end)) = super::kv::selection(key, range_end) else { return Ok((rows, false)) };
    let start = if from.is_empty() { start } else { std::ops::Bound::Included(from) };
    let mut bytes = 0;
    for row in table.range::<&[u8]>((start, end))? {
        let (k, v) = row?;
        if rows.len() >= limit.max(1) || bytes >= max_bytes {
            return Ok((rows, true));
        }
        bytes += k.value().len() + v.value().len();
        rows.push(decode_row(k.value(), v.value())?);
    }
    Ok((rows, false))
}

/// The keys `service/` … of one service: [`service/`, `service0`) ('0' follows '/').
pub fn service_span(service: &str) -> (Vec<u8>, Vec<u8>) {
    let mut start = service.as_bytes().to_vec();
    start.push(KEY_SEPARATOR);
    let mut end = service.as_bytes().to_vec();
    end.push(KEY_SEPARATOR + 1);
    (start, end)
}

/// How many instances session `id` owns.
pub fn count_of(txn: &ReadTransaction, id: &str) -> Result<u64, FsmError> {
    let Some(index) = open_read(txn, SESSION_INSTANCES)? else { return Ok(0) };
    let (start, end) = session_span(id);
    Ok(index.range::<&[u8]>(start.as_slice()..end.as_slice())?.count() as u64)
}

/// Every instance's timer, for a member's timers after it loaded a state: (key, timer).
pub fn timers(txn: &ReadTransaction) -> Result<Vec<(Vec<u8>, InstanceTimer)>, FsmError> {
    let Some(table) = open_read(txn, REGISTRY)? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        if let Some(t) = timer_of(&decode_row(k.value(), v.value())?) {
            out.push((k.value().to_vec(), t));
        }
    }
    Ok(out)
}

fn owned(tables: &Tables, id: &str) -> Result<Vec<Vec<u8>>, FsmError> {
    let index = tables.open(SESSION_INSTANCES)?;
    let (start, end) = session_span(id);
    let mut keys = Vec::new();
    for row in index.range::<&[u8]>(start.as_slice()..end.as_slice())? {
        keys.push(row?.0.value()[start.len()..].to_vec());
    }
    Ok(keys)
}

fn session_span(id: &str) -> (Vec<u8>, Vec<u8>) {
    let start = index_key(id, b"");
    let mut end = id.as_bytes().to_vec();
    end.push(1);
    (start, end)
}

fn index_key(session: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(session.len() + 1 + key.len());
    k.extend_from_slice(session.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

fn decode_row(key: &[u8], bytes: &[u8]) -> Result<InstanceRow, FsmError> {
    let corrupt = |why: String| FsmError::Corrupt(format!("table registry, key {:?}: {why}", show(key)));
    let row = InstanceRow::decode(bytes).map_err(|e| corrupt(format!("undecodable row: {e}")))?;
    let named = row.instance.as_ref().map(|i| instance_key(&i.service, &i.id));
    if named.as_deref() != Some(key) {
        return Err(corrupt("the row's instance is not the one its key names".into()));
    }
    if (row.health == Health::Critical as i32) != (row.critical_since != 0) {
        return Err(corrupt(format!("health {} with critical_since {}", row.health, row.critical_since)));
    }
    Ok(row)
}

fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// An instance as the tests write it.
#[cfg(test)]
pub(crate) fn instance(service: &str, id: &str) -> Instance {
    Instance {
        service: service.into(),
        id: id.into(),
        address: "10.0.0.1".into(),
        port: 80,
        tags: vec!["v1".into()],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use latch_proto::internal::command::Body;
    use latch_proto::internal::{CloseSession, CreateSession, ExpireSession};

    fn register(s: &mut Store, id: &str, session: &str, check: Check) -> outcome::Result {
        let req =
            Register { instance: Some(instance("web", id)), session: session.into(), check: Some(check) };
        s.apply("", Body::Register(req)).result.expect("an outcome")
    }

    fn row(s: &Store, id: &str) -> Option<InstanceRow> {
        s.read(|t| get(t, "web", id)).expect("get succeeds")
    }

    fn ttl(ms: u64) -> Check {
        Check { kind: check::Kind::Ttl as i32, ttl_ms: ms, deregister_after_ms: 60_000, ..Default::default() }
    }

    fn http() -> Check {
        check_check(&Check {
            kind: check::Kind::Http as i32,
            url: "http://127.0.0.1:1/h".into(),
            ..Default::default()
        })
        .expect("a valid check")
    }

    fn session(s: &mut Store, id: &str) {
        let req = CreateSession { id: id.into(), name: String::new(), ttl_ms: 10_000 };
        s.apply("", Body::CreateSession(req));
    }

    #[test]
    fn bad_instances_and_checks_are_refused_naming_the_field_and_write_nothing() {
        let mut s = Store::new();
        let before = s.applied().revision;
        for (mut i, field) in [
            (instance("Web", "1"), "service"),
            (instance("web", "a/b"), "id"),
            (Instance { address: "not an address!".into(), ..instance("web", "1") }, "address"),
            (Instance { port: 70_000, ..instance("web", "1") }, "port"),
            (Instance { tags: vec!["a.b".into()], ..instance("web", "1") }, "tags"),
        ] {
            let err = check_instance(&i).expect_err("a bad instance is refused");
            assert_eq!(err.0, field, "the error names {field}: {err:?}");
            i.meta.clear();
            let req = Register { instance: Some(i), session: String::new(), check: None };
            let out = s.apply("", Body::Register(req)).result;
            assert!(matches!(out, Some(outcome::Result::Rejected(ref w)) if w.contains(field)), "{out:?}");
        }
        for (c, field) in [
            (Check { kind: 9, ..Default::default() }, "check.kind"),
            (ttl(5), "check.ttl_ms"),
            (
                Check { kind: check::Kind::Http as i32, url: "https://x/".into(), ..Default::default() },
                "check.url",
            ),
            (
                Check { kind: check::Kind::Tcp as i32, tcp_address: "host".into(), ..Default::default() },
                "check.tcp_address",
            ),
            (
                Check {
                    kind: check::Kind::Tcp as i32,
                    tcp_address: "h:1".into(),
                    interval_ms: 1_000,
                    timeout_ms: 2_000,
                    ..Default::default()
                },
                "check.timeout_ms",
            ),
            (
                Check {
                    kind: check::Kind::Http as i32,
                    url: "http://h:1/".into(),
                    interval_ms: MAX_INTERVAL_MS,
                    timeout_ms: MAX_TIMEOUT_MS + 1,
                    ..Default::default()
                },
                "check.timeout_ms",
            ),
        ] {
            assert_eq!(check_check(&c).expect_err("a bad check is refused").0, field);
        }
        assert_eq!(s.applied().revision, before, "nothing refused raised the revision");
        assert!(s.read(|t| list(t, "", |_| true)).expect("list").is_empty());
    }

    #[test]
    fn a_walk_starts_after_an_instance_or_after_a_whole_service_in_key_order() {
        let mut s = Store::new();
        for (service, id) in [("web", "1"), ("web", "2"), ("web-a", "1"), ("webb", "1"), ("api", "1")] {
            let req = Register { instance: Some(instance(service, id)), session: String::new(), check: None };
            s.apply("", Body::Register(req));
        }
        let walk = |service: &str, from: Start<'_>| {
            let mut keys = Vec::new();
            s.read(|t| {
                visit(t, service, from, |row| {
                    let i = row.instance.unwrap_or_default();
                    keys.push(format!("{}/{}", i.service, i.id));
                    ControlFlow::Continue(())
                })
            })
            .expect("the walk reads");
            keys
        };
        let all = ["api/1", "web-a/1", "web/1", "web/2", "webb/1"];
        assert_eq!(walk("", Start::First), all, "key order: '-' sorts before '/'");
        assert_eq!(walk("", Start::AfterInstance("web", "1")), all[3..], "after web/1");
        assert_eq!(walk("", Start::AfterService("web")), ["webb/1"], "after every instance of web");
        assert_eq!(walk("", Start::AfterService("web-a")), all[2..], "web comes after web-a");
        assert_eq!(walk("web", Start::AfterInstance("web", "1")), ["web/2"], "within the service");
        assert_eq!(
            walk("web", Start::AfterInstance("api", "9")),
            ["web/1", "web/2"],
            "a start before the service"
        );
        assert!(walk("web", Start::AfterInstance("web", "2")).is_empty(), "after the service's last");
        assert!(walk("web", Start::AfterService("web")).is_empty(), "a start past the service's end");
        assert!(walk("web", Start::AfterInstance("zzz", "1")).is_empty(), "a start past every key");
    }

    #[test]
    fn register_is_an_upsert_and_deregister_removes_it_each_in_one_revision() {
        let mut s = Store::new();
        let out = register(&mut s, "1", "", Check::default());
        let r1 = s.applied().revision;
        assert!(matches!(out, outcome::Result::Registry(RegistryResult { changed: true, .. })));
        let first = row(&s, "1").expect("registered");
        assert_eq!((first.registered_revision, first.health), (r1, Health::Passing as i32));
        let req = Register {
            instance: Some(Instance { port: 81, ..instance("web", "1") }),
            session: String::new(),
            check: None,
        };
        s.apply("", Body::Register(req));
        assert_eq!(row(&s, "1").expect("still there").instance.expect("instance").port, 81, "replaced");
        assert_eq!(s.applied().revision, r1 + 1);
        s.apply("", Body::Deregister(Deregister { service: "web".into(), id: "1".into() }));
        assert!(row(&s, "1").is_none(), "deregistered");
        let again = s.apply("", Body::Deregister(Deregister { service: "web".into(), id: "1".into() }));
        assert!(
            matches!(again.result, Some(outcome::Result::NotFound(_))),
            "a second deregister finds nothing"
        );
        assert_eq!(s.applied().revision, r1 + 2);
    }

    /// A heartbeat's answer is the instance's health, and that is all the request memory keeps
    /// of it (from command version 4): heartbeats of instances with large metadata do not flush
    /// the memory every other request's retry depends on. A version-3 heartbeat (a log an
    /// older build wrote) is remembered whole, as that build remembered it.
    #[test]
    fn a_heartbeat_is_remembered_by_its_health_alone() {
        let mut s = Store::new();
        let mut big = instance("web", "1");
        big.meta = (0..32).map(|i| (format!("key-{i}"), "x".repeat(400))).collect();
        let req = Register { instance: Some(big), session: String::new(), check: Some(ttl(10_000)) };
        s.apply("", Body::Register(req));
        let beat =
            || Body::Heartbeat(Heartbeat { service: "web".into(), id: "1".into(), output: String::new() });
        let remembered = |s: &Store, id: &str| {
            s.read(|t| {
                let requests =
                    crate::fsm::open_read(t, crate::storage::schema::REQUESTS)?.expect("requests exists");
                Ok(requests.get(id.as_bytes())?.map(|v| v.value().len()))
            })
            .expect("reads")
            .expect("remembered")
        };
        let health = |o: &latch_proto::internal::Outcome| match &o.result {
            Some(outcome::Result::Registry(r)) => r.instance.as_ref().map(|i| i.health),
            other => panic!("a registry outcome, not {other:?}"),
        };

        let first = s.apply("hb", beat());
        assert!(remembered(&s, "hb") < 200, "a heartbeat is remembered in {} bytes", remembered(&s, "hb"));
        let retried = s.apply("hb", beat());
        assert!(!retried.data_omitted, "the retry's answer holds all a heartbeat answers");
        assert_eq!(health(&retried), health(&first), "the retry answers the first heartbeat's health");
        assert_eq!(retried.revision, first.revision);

        let v3 =
            latch_proto::internal::Command { version: 3, request_id: "hb-v3".into(), body: Some(beat()) };
        s.apply_data(&prost::Message::encode_to_vec(&v3));
        assert!(remembered(&s, "hb-v3") > 12_000, "a version-3 heartbeat is remembered whole");
    }

    #[test]
    fn a_sessions_end_removes_its_instances_in_the_revision_that_ends_it() {
        let mut s = Store::new();
        session(&mut s, "s1");
        session(&mut s, "s2");
        register(&mut s, "1", "s1", Check::default());
        register(&mut s, "2", "s1", ttl(1_000));
        register(&mut s, "3", "s2", Check::default());
        assert!(matches!(register(&mut s, "4", "nope", Check::default()), outcome::Result::NotFound(_)));
        assert_eq!(s.read(|t| count_of(t, "s1")).expect("count"), 2);
        // Moving an instance to another session moves it in the index.
        register(&mut s, "3", "s1", Check::default());
        assert_eq!(s.read(|t| count_of(t, "s2")).expect("count"), 0);
        let before = s.applied().revision;
        let ended = s.apply_full("", Body::CloseSession(CloseSession { id: "s1".into() }));
        assert_eq!(ended.outcome.revision, before + 1, "one revision");
        assert!(s.read(|t| list(t, "", |_| true)).expect("list").is_empty(), "all three went with s1");
        assert_eq!(s.read(|t| count_of(t, "s1")).expect("count"), 0);
        let gone: Vec<_> =
            ended.instances.iter().filter(|c| c.timer.is_none()).map(|c| c.key.clone()).collect();
        assert_eq!(gone.len(), 3, "the timers hear of every removal: {:?}", ended.instances);
    }

    #[test]
    fn an_expired_session_takes_its_instances_too() {
        let mut s = Store::new();
        session(&mut s, "s");
        register(&mut s, "1", "s", Check::default());
        s.apply("", Body::ExpireSession(ExpireSession { id: "s".into(), checkpoints: 0, term: 1 }));
        assert!(row(&s, "1").is_none());
    }

    #[test]
    fn a_ttl_check_turns_critical_only_when_no_heartbeat_crossed_the_verdict_and_recovers_on_one() {
        let mut s = Store::new();
        register(&mut s, "1", "", ttl(1_000));
        let r = row(&s, "1").expect("registered");
        assert_eq!((r.health, r.beats), (Health::Passing as i32, 0));
        let beat =
            || Body::Heartbeat(Heartbeat { service: "web".into(), id: "1".into(), output: "ok".into() });
        s.apply("", beat());
        let rev = s.applied().revision;
        s.apply("", beat());
        assert_eq!(
            s.applied().revision,
            rev,
            "a heartbeat that changes nothing a reader sees raises no revision"
        );
        assert_eq!(row(&s, "1").expect("there").beats, 2);
        // A verdict that crossed that heartbeat in the log is a no-op.
        let reg = row(&s, "1").expect("there").registered_revision;
        let stale =
            MarkCritical { service: "web".into(), id: "1".into(), beats: 1, registered_revision: reg };
        s.apply("", Body::MarkCritical(stale));
        assert!(is_passing(&row(&s, "1").expect("there")), "the heartbeat wins");
        let other =
            MarkCritical { service: "web".into(), id: "1".into(), beats: 2, registered_revision: reg - 1 };
        s.apply("", Body::MarkCritical(other));
        assert!(is_passing(&row(&s, "1").expect("there")), "a verdict on another registration is a no-op");
        s.apply(
            "",
            Body::MarkCritical(MarkCritical {
                service: "web".into(),
                id: "1".into(),
                beats: 2,
                registered_revision: reg,
            }),
        );
        let r = row(&s, "1").expect("kept while critical");
        assert_eq!((r.health, r.critical_since), (Health::Critical as i32, rev + 1));
        assert_eq!(timer_of(&r), Some(InstanceTimer::Reap { since_revision: rev + 1, after_ms: 60_000 }));
        // A verdict counted on a registration since replaced never reaches the new one, even
        // when the new one's heartbeat count starts over.
        s.apply("", beat());
        let r = row(&s, "1").expect("there");
        assert!(is_passing(&r) && r.critical_since == 0, "a heartbeat brings it back");
        assert_eq!(s.applied().revision, rev + 2, "and that is a revision");
        let not_ttl = register(&mut s, "2", "", Check::default());
        assert!(matches!(not_ttl, outcome::Result::Registry(_)));
        let out = s.apply(
            "",
            Body::Heartbeat(Heartbeat { service: "web".into(), id: "2".into(), output: String::new() }),
        );
        assert!(
            matches!(out.result, Some(outcome::Result::Rejected(ref w)) if w.contains("not a TTL check"))
        );
    }

    #[test]
    fn a_reap_removes_only_an_instance_still_critical_since_the_same_revision() {
        let mut s = Store::new();
        register(&mut s, "1", "", ttl(1_000));
        let reg = row(&s, "1").expect("there").registered_revision;
        s.apply(
            "",
            Body::MarkCritical(MarkCritical {
                service: "web".into(),
                id: "1".into(),
                beats: 0,
                registered_revision: reg,
            }),
        );
        let since = row(&s, "1").expect("there").critical_since;
        s.apply("", Body::Reap(Reap { service: "web".into(), id: "1".into(), critical_since: since - 1 }));
        assert!(row(&s, "1").is_some(), "a reap of another critical spell is a no-op");
        s.apply("", Body::Reap(Reap { service: "web".into(), id: "1".into(), critical_since: since }));
        assert!(row(&s, "1").is_none(), "reaped");
    }

    #[test]
    fn an_active_check_starts_critical_and_only_a_changed_result_for_the_same_registration_writes() {
        let mut s = Store::new();
        register(&mut s, "1", "", http());
        let r = row(&s, "1").expect("there");
        assert_eq!((r.health, r.output.as_str()), (Health::Critical as i32, AWAITING_FIRST_CHECK));
        let set = |reg: i64, h: Health| {
            Body::SetHealth(SetHealth {
                service: "web".into(),
                id: "1".into(),
                registered_revision: reg,
                health: h as i32,
                output: "HTTP 200".into(),
                term: 1,
            })
        };
        let rev = s.applied().revision;
        s.apply("", set(r.registered_revision - 1, Health::Passing));
        assert_eq!(s.applied().revision, rev, "a result for another registration writes nothing");
        let mut deposed = set(r.registered_revision, Health::Passing);
        if let Body::SetHealth(h) = &mut deposed {
            h.term = 2;
        }
        s.apply("", deposed);
        assert_eq!(
            s.applied().revision,
            rev,
            "a result proposed in another term (a deposed leader's, forwarded) writes nothing"
        );
        s.apply("", set(r.registered_revision, Health::Passing));
        assert!(is_passing(&row(&s, "1").expect("there")));
        assert_eq!(s.applied().revision, rev + 1);
        s.apply("", set(r.registered_revision, Health::Passing));
        assert_eq!(s.applied().revision, rev + 1, "an unchanged status writes nothing");
        // A first result that leaves it critical says why, once.
        register(&mut s, "2", "", http());
        let r2 = row(&s, "2").expect("there");
        let fail = |reg: i64| {
            Body::SetHealth(SetHealth {
                service: "web".into(),
                id: "2".into(),
                registered_revision: reg,
                health: Health::Critical as i32,
                output: "connection refused".into(),
                term: 1,
            })
        };
        s.apply("", fail(r2.registered_revision));
        let after = row(&s, "2").expect("there");
        assert_eq!(after.output, "connection refused", "the first result's output is kept");
        assert_eq!(after.critical_since, r2.critical_since, "still critical since its registration");
        let rev2 = s.applied().revision;
        s.apply("", fail(r2.registered_revision));
        assert_eq!(s.applied().revision, rev2, "a second unchanged result writes nothing");
        // Registered again with the same check: what the probes found stands.
        register(&mut s, "1", "", http());
        assert!(is_passing(&row(&s, "1").expect("there")));
        // … and a critical one is critical since it registered again: its deregister period
        // starts anew, as a new registration's does.
        register(&mut s, "2", "", http());
        let again = row(&s, "2").expect("there");
        assert_eq!(again.output, "connection refused", "what the probes found stands");
        assert_eq!(
            (again.critical_since, timer_of(&again)),
            (
                again.registered_revision,
                Some(InstanceTimer::Reap { since_revision: again.registered_revision, after_ms: 3_600_000 })
            ),
            "critical since the new registration, {} before",
            r2.critical_since
        );
        // A version-5 registration (a log an older build wrote) kept the old period.
        let v5 = super::super::Command {
            version: 5,
            request_id: String::new(),
            body: Some(Body::Register(Register {
                instance: Some(instance("web", "2")),
                session: String::new(),
                check: Some(http()),
            })),
        };
        s.apply_data(&v5.encode_to_vec());
        let v5 = row(&s, "2").expect("there");
        assert_eq!(v5.critical_since, again.critical_since, "version 5 keeps the period it found");
        assert!(v5.registered_revision > again.registered_revision);
    }

    #[test]
    fn an_instance_with_meta_encodes_the_same_bytes_however_its_map_was_filled() {
        let build = |order: &[usize]| {
            let mut i = instance("web", "1");
            for n in order {
                i.meta.insert(format!("k{n}"), format!("v{n}"));
            }
            Register { instance: Some(i), session: String::new(), check: None }.encode_to_vec()
        };
        assert_eq!(
            build(&[0, 1, 2, 3, 4, 5, 6, 7]),
            build(&[7, 3, 5, 1, 0, 6, 2, 4]),
            "the log and the state must carry the same bytes on every member and every retry"
        );
        let mut a = Store::new();
        let mut b = Store::new();
        let data = build(&[0, 1, 2, 3, 4, 5, 6, 7]);
        let cmd = |d: &[u8]| {
            super::super::Command {
                version: super::super::COMMAND_VERSION,
                request_id: "r".into(),
                body: Some(Body::Register(Register::decode(d).expect("decodes"))),
            }
            .encode_to_vec()
        };
        a.apply_data(&cmd(&data));
        b.apply_data(&cmd(&build(&[7, 6, 5, 4, 3, 2, 1, 0])));
        assert_eq!(a.hash(), b.hash(), "equal states, equal hashes");
    }

    #[test]
    fn registry_changes_are_in_the_history_and_the_snapshot() {
        let mut s = Store::new();
        register(&mut s, "1", "", ttl(1_000));
        let rev = s.applied().revision;
        let changes = s.read(|t| crate::fsm::history::changes(t, rev, rev, usize::MAX)).expect("changes").0;
        assert!(
            changes.iter().any(|c| c.space == Space::Registry && c.kv.key == b"web/1" && !c.delete),
            "{changes:?}"
        );
        let snap = s.snapshot();
        let mut other = Store::new();
        restore_into(&mut other, &snap, s.index, 1).expect("restores");
        assert_eq!(other.hash(), s.hash());
        assert_eq!(other.read(|t| get(t, "web", "1")).expect("get"), row(&s, "1"));
    }
}
