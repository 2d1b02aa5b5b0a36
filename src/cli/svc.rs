//! `latch svc register | deregister | heartbeat | list | services`: the service registry
//! (registry.proto; the client's `registry` module).
//!
//! `register` without `--ttl` or `--heartbeat` registers and exits. With `--ttl` the instance
//! is bound to a session of that TTL ([`latch_client::Registration`]: registered again under a
//! new session should the session end) and the command stays until SIGINT or SIGTERM, then
//! deregisters and closes the session. With `--heartbeat` (and `--check-ttl`) it stays without
//! a session, heartbeating, and deregisters on SIGINT or SIGTERM. While it stays, a TTL check
//! (`--check-ttl D`) is heartbeated every D/3.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand};
use latch_client::proto::health_check::Kind;
use latch_client::{
    Check, Client, Code, Health, InstanceInfo, ListOptions, RegisterOptions, Registration, RegistrationState,
    ServiceSummary, SessionOptions,
};
use serde_json::json;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::{json_line, print_bytes, print_json, stream_bytes, ClientArgs, Output, UsageError};

/// `latch svc`.
#[derive(Debug, Args)]
pub struct SvcCommand {
    #[command(subcommand)]
    pub op: SvcOp,
}

#[derive(Debug, Subcommand)]
pub enum SvcOp {
    /// Register an instance of SERVICE (an upsert); with --ttl or --heartbeat, stay until
    /// interrupted, then deregister it.
    Register(Box<RegisterArgs>),
    /// Remove instance ID of SERVICE.
    Deregister(InstanceArgs),
    /// Heartbeat a TTL-checked instance once: it is passing for another TTL.
    Heartbeat(HeartbeatArgs),
    /// List instances: one line each, `SERVICE ID ADDRESS:PORT HEALTH [TAG,TAG…]`.
    List(ListArgs),
    /// List services with their counts of instances and of passing ones, and their tags.
    Services,
}

/// `latch svc register`.
#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("check").args(["check_ttl", "http", "tcp"]).multiple(false)),
    group(ArgGroup::new("probe").args(["http", "tcp"]).multiple(false)),
    after_help = "Health: without a check flag the instance is passing while registered (and, with \
                  --ttl, while its session lives). --check-ttl D: it must be heartbeated within D \
                  (`latch svc heartbeat`, or this command with --ttl or --heartbeat, every D/3), else \
                  it turns critical. --http URL / --tcp HOST:PORT: the leader probes it every --interval \
                  (critical until the first probe passes). A critical instance is removed after \
                  --deregister-after.\n\
                  Exit status: 0 once registered (or, when staying, after deregistering on SIGINT/SIGTERM); \
                  1 if the server refused or the registration was lost for good; 2 usage error."
)]
pub struct RegisterArgs {
    /// The service: 1 to 63 of a-z, 0-9 and '-'.
    pub service: String,
    /// The instance's id within the service (a DNS label too).
    #[arg(long)]
    pub id: String,
    /// Where it is reached: an IP address or a host name.
    #[arg(long)]
    pub address: String,
    /// Its port.
    #[arg(long)]
    pub port: u16,
    /// A tag (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// A meta entry KEY=VALUE (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = meta_entry)]
    pub meta: Vec<(String, String)>,
    /// Its SRV weight (0 means 1).
    #[arg(long)]
    pub weight: Option<u16>,
    /// Bind the instance to a session of this TTL, kept alive (and made again if it ends) until
    /// the command is interrupted.
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub ttl: Option<Duration>,
    /// A TTL check: the instance must be heartbeated within this long.
    #[arg(long, value_name = "D", value_parser = crate::config::parse_duration)]
    pub check_ttl: Option<Duration>,
    /// An HTTP check run by the leader: GET URL (http://host:port/path), 2xx passes.
    #[arg(long, value_name = "URL")]
    pub http: Option<String>,
    /// A TCP check run by the leader: connect to HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub tcp: Option<String>,
    /// How often the leader probes (--http, --tcp); the server's 10s if not given.
    #[arg(long, value_name = "D", requires = "probe", value_parser = crate::config::parse_duration)]
    pub interval: Option<Duration>,
    /// How long one probe may take (--http, --tcp); at most the interval, 5s if not given.
    #[arg(long, value_name = "D", requires = "probe", value_parser = crate::config::parse_duration)]
    pub check_timeout: Option<Duration>,
    /// Remove the instance once it has been critical this long (a check flag is needed); the
    /// server's 1h if not given.
    #[arg(long, value_name = "D", requires = "check", value_parser = crate::config::parse_duration)]
    pub deregister_after: Option<Duration>,
    /// Stay without a session, heartbeating the --check-ttl check every D/3, until interrupted;
    /// then deregister.
    #[arg(long, requires = "check_ttl", conflicts_with = "ttl")]
    pub heartbeat: bool,
}

#[derive(Debug, Args)]
pub struct InstanceArgs {
    pub service: String,
    pub id: String,
}

#[derive(Debug, Args)]
pub struct HeartbeatArgs {
    pub service: String,
    pub id: String,
    /// What the instance says of itself, kept as its check's output (at most 1 KiB).
    #[arg(long, default_value = "")]
    pub note: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this service's instances (every service's when not given).
    pub service: Option<String>,
    /// Only instances with this tag (compared without regard to case).
    #[arg(long)]
    pub tag: Option<String>,
    /// Critical instances too, each with what its last check said (by default only passing ones).
    #[arg(long)]
    pub all: bool,
    /// Read this member's applied state without asking the leader: faster, possibly stale.
    #[arg(long)]
    pub serializable: bool,
}

/// `KEY=VALUE`, the key not empty.
fn meta_entry(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE with a non-empty KEY")),
    }
}

pub async fn run(command: SvcCommand, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let output = client.output;
    let client = client.connect().await?;
    match command.op {
        SvcOp::Register(args) => register(*args, &client, output).await,
        SvcOp::Deregister(InstanceArgs { service, id }) => {
            let revision = client.deregister(&service, &id).await?;
            match output {
                Output::Json => print_json(&json!({"service": service, "id": id, "revision": revision}))?,
                Output::Text => print_bytes(format!("deregistered {service}/{id}\n").as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        SvcOp::Heartbeat(HeartbeatArgs { service, id, note }) => {
            let health = client.heartbeat_with_output(&service, &id, &note).await?;
            match output {
                Output::Json => {
                    print_json(&json!({"service": service, "id": id, "health": health_name(health as i32)}))?
                }
                Output::Text => {
                    print_bytes(format!("{service}/{id}: {}\n", health_name(health as i32)).as_bytes())?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SvcOp::List(args) => {
            let mut options = match &args.service {
                Some(service) => ListOptions::service(service),
                None => ListOptions::all(),
            };
            if let Some(tag) = &args.tag {
                options = options.tag(tag);
            }
            if args.all {
                options = options.include_critical();
            }
            if args.serializable {
                options = options.serializable();
            }
            let list = client.list(options).await?;
            match output {
                Output::Json => print_json(&json!({
                    "revision": list.revision,
                    "instances": list.instances.iter().map(instance_json).collect::<Vec<_>>(),
                    "more": list.more,
                }))?,
                Output::Text => {
                    let text: String = list.instances.iter().map(instance_line).collect();
                    print_bytes(text.as_bytes())?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SvcOp::Services => {
            let services = client.services().await?;
            match output {
                Output::Json => print_json(&json!({
                    "services": services.iter().map(service_json).collect::<Vec<_>>(),
                }))?,
                Output::Text => {
                    let text: String = services
                        .iter()
                        .map(|s| {
                            format!(
                                "{} instances={} passing={} tags={}{}\n",
                                s.name,
                                s.instances,
                                s.passing,
                                s.tags.join(","),
                                if s.tags_cut { ",…" } else { "" }
                            )
                        })
                        .collect();
                    print_bytes(text.as_bytes())?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `latch svc register`.
async fn register(args: RegisterArgs, client: &Client, output: Output) -> anyhow::Result<ExitCode> {
    let check = match (args.check_ttl, &args.http, &args.tcp) {
        (Some(ttl), _, _) => Check::ttl(ttl),
        (_, Some(url), _) => Check::http(url),
        (_, _, Some(address)) => Check::tcp(address),
        _ => Check::session(),
    };
    let mut check = check;
    if let Some(d) = args.interval {
        check = check.interval(d);
    }
    if let Some(d) = args.check_timeout {
        check = check.timeout(d);
    }
    if let Some(d) = args.deregister_after {
        check = check.deregister_after(d);
    }
    for (flag, d) in [
        ("--ttl", args.ttl),
        ("--check-ttl", args.check_ttl),
        ("--check-timeout", args.check_timeout),
        ("--interval", args.interval),
        ("--deregister-after", args.deregister_after),
    ] {
        if d.is_some_and(|d| d.is_zero()) {
            return Err(UsageError(format!("{flag} must be more than 0")).into());
        }
    }
    let mut options = RegisterOptions::new(&args.service, &args.id, &args.address, args.port)
        .tags(args.tags.iter().cloned())
        .check(check);
    for (k, v) in &args.meta {
        options = options.meta(k, v);
    }
    if let Some(weight) = args.weight {
        options = options.weight(weight);
    }
    // A TTL check is heartbeated every third of its TTL, by a command that stays.
    let stays = args.ttl.is_some() || args.heartbeat;
    let beat_every = args.check_ttl.filter(|_| stays).map(|ttl| (ttl / 3).max(Duration::from_millis(10)));
    let name = format!("{}/{}", args.service, args.id);
    if !stays {
        let info = client.register(options).await?;
        print_bytes(&registered(output, &info)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    // Before anything is registered, so that no signal meant to stop us kills us.
    let mut signals = Signals::new()?;
    let mut beats = Beats::new(beat_every);
    let Some(ttl) = args.ttl else {
        // --heartbeat: no session, only heartbeats.
        let info = client.register(options).await?;
        if let Err(e) = stream_bytes(&registered(output, &info)?) {
            // Nobody reads what it does (a closed output): it stays no longer.
            client.deregister(&args.service, &args.id).await?;
            return Err(e);
        }
        loop {
            tokio::select! {
                () = signals.next() => {
                    client.deregister(&args.service, &args.id).await?;
                    return Ok(ExitCode::SUCCESS);
                }
                () = beats.due() => match client.heartbeat(&args.service, &args.id).await {
                    Ok(_) => {}
                    Err(e) if e.code() == Code::NotFound => {
                        eprintln!("latch svc register: {name} is gone (deregistered, or removed after being critical too long)");
                        return Ok(ExitCode::from(1));
                    }
                    Err(e) => tracing::warn!(instance = %name, error = %e, "heartbeat failed; retrying"),
                },
            }
        }
    };
    let session = SessionOptions::new(ttl).name(format!("latch svc register {name}"));
    // A signal that comes meanwhile waits in `signals`: the registration is then undone at once.
    let registration = Registration::start(client, options, session).await?;
    let mut states = registration.watch();
    let mut printed = None;
    loop {
        let state = states.borrow_and_update().clone();
        match state {
            RegistrationState::Registered { session, instance } => {
                if printed.as_ref() != Some(&session) {
                    if let Err(e) = stream_bytes(&registered(output, &instance)?) {
                        registration.stop().await?;
                        return Err(e);
                    }
                    printed = Some(session);
                }
            }
            RegistrationState::Renewing => {}
            RegistrationState::Failed(why) => {
                eprintln!("latch svc register: registering {name} again was refused: {why}");
                return Ok(ExitCode::from(1));
            }
            RegistrationState::Stopped => return Ok(ExitCode::SUCCESS),
        }
        tokio::select! {
            () = signals.next() => {
                registration.stop().await?;
                return Ok(ExitCode::SUCCESS);
            }
            changed = states.changed() => if changed.is_err() {
                return Err(anyhow::anyhow!("the registration of {name} ended unexpectedly"));
            },
            () = beats.due(), if printed.is_some() => {
                if let Err(e) = client.heartbeat(&args.service, &args.id).await {
                    let gone_for_good = e.code() == Code::NotFound
                        && match registration.session_id() {
                            // The session lives but the instance does not: someone removed it.
                            Some(session) => client.session_info(&session).await.is_ok(),
                            None => false,
                        };
                    if gone_for_good {
                        eprintln!("latch svc register: {name} was deregistered while its session lives; stopping");
                        registration.stop().await?;
                        return Ok(ExitCode::from(1));
                    }
                    tracing::warn!(instance = %name, error = %e, "heartbeat failed; retrying");
                }
            }
        }
    }
}

/// When the next heartbeat is due; never, without a TTL check.
struct Beats {
    every: Option<Duration>,
    next: tokio::time::Instant,
}

impl Beats {
    fn new(every: Option<Duration>) -> Beats {
        Beats { every, next: tokio::time::Instant::now() + every.unwrap_or_default() }
    }

    async fn due(&mut self) {
        match self.every {
            Some(every) => {
                tokio::time::sleep_until(self.next).await;
                self.next = tokio::time::Instant::now() + every;
            }
            None => std::future::pending().await,
        }
    }
}

/// SIGINT and SIGTERM: the signals that stop a staying `latch svc register`.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// What `svc register` prints once registered.
fn registered(output: Output, info: &InstanceInfo) -> anyhow::Result<Vec<u8>> {
    match output {
        Output::Json => json_line(&instance_json(info)),
        Output::Text => {
            let i = info.instance.clone().unwrap_or_default();
            let mut line = format!("registered {}/{} at {}", i.service, i.id, host_port(&i.address, i.port));
            line.push_str(&format!(" ({}", health_name(info.health)));
            if !info.output.is_empty() {
                line.push_str(&format!(": {}", info.output));
            }
            if !info.session.is_empty() {
                line.push_str(&format!(", session {}", info.session));
            }
            line.push_str(")\n");
            Ok(line.into_bytes())
        }
    }
}

fn host_port(address: &str, port: u32) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

fn health_name(health: i32) -> &'static str {
    if health == Health::Passing as i32 {
        "passing"
    } else {
        "critical"
    }
}

fn kind_name(kind: i32) -> &'static str {
    match Kind::try_from(kind) {
        Ok(Kind::Ttl) => "ttl",
        Ok(Kind::Http) => "http",
        Ok(Kind::Tcp) => "tcp",
        _ => "session",
    }
}

/// `SERVICE ID ADDRESS:PORT HEALTH [TAG,TAG…]`.
fn instance_line(info: &InstanceInfo) -> String {
    let i = info.instance.clone().unwrap_or_default();
    let mut line =
        format!("{} {} {} {}", i.service, i.id, host_port(&i.address, i.port), health_name(info.health));
    if !i.tags.is_empty() {
        line.push(' ');
        line.push_str(&i.tags.join(","));
    }
    // Why it is critical, as its last check said: quoted, so that the line stays one line.
    if info.health != Health::Passing as i32 && !info.output.is_empty() {
        line.push_str(&format!(" output={:?}", info.output));
    }
    line.push('\n');
    line
}

fn instance_json(info: &InstanceInfo) -> serde_json::Value {
    let i = info.instance.clone().unwrap_or_default();
    let c = info.check.clone().unwrap_or_default();
    let meta: BTreeMap<&String, &String> = i.meta.iter().collect();
    let mut check = json!({"kind": kind_name(c.kind)});
    let fields = [
        ("ttl_ms", json!(c.ttl_ms)),
        ("url", json!(c.url)),
        ("tcp_address", json!(c.tcp_address)),
        ("interval_ms", json!(c.interval_ms)),
        ("timeout_ms", json!(c.timeout_ms)),
        ("deregister_after_ms", json!(c.deregister_after_ms)),
    ];
    for (name, value) in fields {
        let unset = value == json!(0) || value == json!("");
        if let (false, Some(map)) = (unset, check.as_object_mut()) {
            map.insert(name.to_string(), value);
        }
    }
    json!({
        "service": i.service,
        "id": i.id,
        "address": i.address,
        "port": i.port,
        "tags": i.tags,
        "meta": meta,
        "weight": i.weight,
        "session": info.session,
        "check": check,
        "health": health_name(info.health),
        "output": info.output,
        "registered_revision": info.registered_revision,
        "mod_revision": info.mod_revision,
        "critical_since_revision": info.critical_since_revision,
    })
}

fn service_json(s: &ServiceSummary) -> serde_json::Value {
    json!({"name": s.name, "instances": s.instances, "passing": s.passing, "tags": s.tags, "tags_cut": s.tags_cut})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_args(std::iter::once("latch").chain(args.iter().copied()))
    }

    fn register_args(args: &[&str]) -> RegisterArgs {
        let base = ["svc", "register", "web", "--id", "web-1", "--address", "10.0.0.1", "--port", "80"];
        let all: Vec<&str> = base.iter().chain(args).copied().collect();
        match parse(&all).unwrap_or_else(|e| panic!("{all:?} should parse: {e}")).command {
            Command::Svc(SvcCommand { op: SvcOp::Register(args) }) => *args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn register_takes_repeated_tags_and_meta_and_one_check() {
        let args = register_args(&["--tag", "a", "--tag", "b", "--meta", "zone=eu=1", "--check-ttl", "3s"]);
        assert_eq!(args.tags, ["a", "b"]);
        assert_eq!(args.meta, [("zone".to_string(), "eu=1".to_string())], "the first '=' splits");
        assert_eq!(args.check_ttl, Some(Duration::from_secs(3)));
        let args =
            register_args(&["--http", "http://h:1/", "--interval", "200ms", "--deregister-after", "2s"]);
        assert_eq!(
            (args.interval, args.deregister_after),
            (Some(Duration::from_millis(200)), Some(Duration::from_secs(2)))
        );
    }

    #[test]
    fn bad_register_lines_are_usage_errors_naming_the_problem() {
        let base = ["svc", "register", "web", "--id", "w", "--address", "10.0.0.1"];
        for (extra, needle) in [
            (&["--port", "80", "--meta", "novalue"][..], "KEY=VALUE"),
            (&["--port", "80", "--check-ttl", "1s", "--http", "http://h:1/"][..], "--http"),
            (&["--port", "80", "--interval", "1s"][..], "--interval"),
            (&["--port", "80", "--deregister-after", "1s"][..], "--deregister-after"),
            (&["--port", "80", "--heartbeat"][..], "--check-ttl"),
            (&["--port", "80", "--heartbeat", "--check-ttl", "1s", "--ttl", "5s"][..], "--ttl"),
            (&["--port", "70000"][..], "--port"),
            (&[][..], "--port"),
        ] {
            let all: Vec<&str> = base.iter().chain(extra).copied().collect();
            let e = parse(&all).expect_err("a bad command line");
            assert_eq!(e.exit_code(), 2, "{all:?}");
            assert!(e.to_string().contains(needle), "{all:?} should name {needle}: {e}");
        }
    }

    #[test]
    fn an_instance_is_one_line_of_service_id_address_health_and_tags() {
        let info = InstanceInfo {
            instance: Some(latch_client::ServiceInstance {
                service: "web".into(),
                id: "1".into(),
                address: "::1".into(),
                port: 80,
                tags: vec!["a".into(), "b".into()],
                ..Default::default()
            }),
            health: Health::Critical as i32,
            ..Default::default()
        };
        assert_eq!(instance_line(&info), "web 1 [::1]:80 critical a,b\n");
        let said =
            InstanceInfo { output: "GET http://[::1]:80/health:\nconnection refused".into(), ..info.clone() };
        assert_eq!(
            instance_line(&said),
            "web 1 [::1]:80 critical a,b output=\"GET http://[::1]:80/health:\\nconnection refused\"\n",
            "a critical instance's line says why, on one line"
        );
        let passing =
            InstanceInfo { health: Health::Passing as i32, output: "HTTP 200".into(), ..info.clone() };
        assert_eq!(
            instance_line(&passing),
            "web 1 [::1]:80 passing a,b\n",
            "a passing one's output is left out"
        );
        let doc = instance_json(&info);
        assert_eq!(
            (doc["health"].as_str(), doc["check"]["kind"].as_str()),
            (Some("critical"), Some("session"))
        );
    }
}
