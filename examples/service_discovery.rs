//! Service discovery: three instances of `web` register, each bound to a session of its own; a
//! resolver nobody here wrote (hickory-resolver) finds them through the member's DNS port;
//! one instance's session ends (as when its process dies) and it vanishes from DNS.
//!
//! Start a server (`cargo run --release -- server --dev`), then
//! `cargo run --example service_discovery`. `LATCH_ENDPOINTS` and `LATCH_DNS_ADDR` (default
//! 127.0.0.1:8600) point elsewhere.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::Resolver;
use latch_client::{Client, RegisterOptions, SessionOptions};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let endpoints = std::env::var("LATCH_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:7379".into());
    let dns: SocketAddr =
        std::env::var("LATCH_DNS_ADDR").unwrap_or_else(|_| "127.0.0.1:8600".into()).parse()?;
    let client = Client::connect(endpoints.split(',')).await?;

    // Three instances, each owned by a session: if its process stops keeping the session
    // alive, the cluster removes the instance (within the session's TTL).
    let mut sessions = Vec::new();
    for (n, address) in ["10.0.0.1", "10.0.0.2", "10.0.0.3"].into_iter().enumerate() {
        let session = client.session(SessionOptions::new(Duration::from_secs(5))).await?;
        let id = format!("web-{}", n + 1);
        let options = RegisterOptions::new("web", &id, address, 8080).tag("v1").session(session.id());
        client.register(options).await?;
        println!("registered {id} at {address}:8080 (session {})", session.id());
        sessions.push(session);
    }

    // A resolver that asks only the member's DNS port, and keeps nothing cached.
    let mut server = NameServerConfig::udp_and_tcp(dns.ip());
    for connection in &mut server.connections {
        connection.port = dns.port();
    }
    let mut options = ResolverOpts::default();
    options.cache_size = 0;
    let resolver = Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![server]),
        TokioRuntimeProvider::default(),
    )
    .with_options(options)
    .build()?;

    let addresses = |resolver: &Resolver<TokioRuntimeProvider>| {
        let resolver = resolver.clone();
        async move {
            let mut ips: Vec<String> =
                resolver.lookup_ip("web.service.latch.").await?.iter().map(|ip| ip.to_string()).collect();
            ips.sort();
            Ok::<_, Error>(ips)
        }
    };
    println!("web.service.latch. A: {:?}", addresses(&resolver).await?);
    let srv = resolver.srv_lookup("_web._tcp.service.latch.").await?;
    for record in srv.answers() {
        if let RData::SRV(s) = &record.data {
            println!("_web._tcp.service.latch. SRV: {} {} {} {}", s.priority, s.weight, s.port, s.target);
        }
    }

    // web-2's process "dies": its session ends, and its instance goes with it.
    let dying = sessions.remove(1);
    println!("closing web-2's session {}", dying.id());
    dying.close().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ips = addresses(&resolver).await?;
        if !ips.contains(&"10.0.0.2".to_string()) {
            println!("web.service.latch. A: {ips:?} (web-2 is gone)");
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err("web-2 was still answered 10 s after its session ended".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for session in sessions {
        session.close().await?;
    }
    Ok(())
}
